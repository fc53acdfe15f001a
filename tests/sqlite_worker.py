"""A separate worker process for the SQLite multi-process tests (run with ``python -m``).

Modes:

* ``drain DB WORKER``: print ``ready``, wait for a line on stdin, then claim and commit items
  of queue ``q`` until none is left; print one ``claimed <item> <fence>`` line per successful
  claim and ``committed <item>`` per commit.
* ``append DB EXECUTION COUNT``: append COUNT events to EXECUTION, one transaction each.
* ``claim-and-hang DB WORKER``: claim one item with a short lease, print ``claimed <item>
  <fence>``, then wait forever (the test kills this process with SIGKILL).
"""

from __future__ import annotations

import sys
import threading
import time

from charter.adapters.sqlite import SqliteStore
from charter.core.events import NodeCompleted, ToolCalled
from charter.core.ports import CommitRequest
from charter.core.records import WorkItemStatus


def _drain(store: SqliteStore, worker: str) -> None:
    print("ready", flush=True)
    sys.stdin.readline()  # the test releases all workers at once
    while True:
        claim = store.claim(worker, ["q"], lease_secs=60)
        if claim is None:
            return
        print(f"claimed {claim.item.item_id} {claim.fence}", flush=True)
        # The node's "work", outside any transaction: without it one process can take the
        # write lock back before the other's busy handler wakes (SQLite's lock is not fair)
        # and drain every item alone, and the two would not really compete.
        time.sleep(0.001)
        completed = NodeCompleted(
            node_id=claim.item.node_id, output={"by": worker}, state_patch={}, duration_ms=0
        )
        store.commit(
            CommitRequest(
                item_id=claim.item.item_id,
                fence=claim.fence,
                outcome=WorkItemStatus.COMPLETED,
                events=(completed,),
            )
        )
        print(f"committed {claim.item.item_id}", flush=True)


def _append(store: SqliteStore, execution_id: str, count: int, worker: str) -> None:
    for index in range(count):
        store.append_events(execution_id, [ToolCalled(node_id=worker, tool=str(index))])


def _claim_and_hang(store: SqliteStore, worker: str) -> None:
    claim = store.claim(worker, ["q"], lease_secs=5)
    if claim is None:
        print("nothing to claim", flush=True)
        return
    print(f"claimed {claim.item.item_id} {claim.fence}", flush=True)
    threading.Event().wait()  # until SIGKILL


def main(argv: list[str]) -> None:
    mode, db = argv[0], argv[1]
    store = SqliteStore(db, synchronous="NORMAL", busy_timeout_ms=30_000)
    try:
        if mode == "drain":
            _drain(store, argv[2])
        elif mode == "append":
            _append(store, argv[2], int(argv[3]), argv[4])
        elif mode == "claim-and-hang":
            _claim_and_hang(store, argv[2])
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    finally:
        store.close()


if __name__ == "__main__":
    main(sys.argv[1:])
