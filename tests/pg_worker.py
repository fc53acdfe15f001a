"""A separate Charter worker process on a Postgres store, for `tests/test_postgres_store.py`
(run with ``python -m tests.pg_worker``).

``serve URL SCHEMA RUN EFFECTS [--lease SECS] [--die-at N]``: print ``ready``, wait for a
line on stdin, then run the real `charter.worker.Worker` loop (`Worker.run`: reclaim expired
leases, advance running executions, claim, gate, execute, commit) until execution RUN has
finished, and print ``done``. The executors are `tests.e2e_worker.registry`'s: each call of
``work.*`` appends one ``<node> <pid>`` line to the EFFECTS file, the outside world's record
of how many times each node really ran. With ``--die-at N``, the process SIGKILLs itself
just before its N-th commit (its node's effect has happened, the commit has not). The URL
may carry ``application_name``, by which the tests find this worker's connections.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from charter.adapters.postgres import PostgresStore
from charter.core.errors import StoreError
from charter.core.records import Claim
from charter.worker import Worker, WorkerHooks
from tests.e2e_worker import registry


def _die_at(count: int) -> WorkerHooks:
    commits = 0

    def before_commit(claim: Claim) -> None:
        nonlocal commits
        commits += 1
        if commits == count:
            print(f"dying {claim.item.node_id}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    return WorkerHooks(before_commit=before_commit)


def _serve(store: PostgresStore, run_id: str, effects: Path, lease: float, die_at: int) -> None:
    worker = Worker(
        store,
        executors=registry(effects, pause=0.002),
        lease_secs=lease,
        hooks=_die_at(die_at) if die_at else None,
    )
    stop = threading.Event()
    thread = threading.Thread(
        target=worker.run, args=(stop,), kwargs={"idle_secs": 0.01, "tick_secs": 0.5}
    )
    print("ready", flush=True)
    sys.stdin.readline()  # the test releases every worker at once
    thread.start()
    try:
        while not stop.wait(0.1):
            try:
                execution = store.get_execution(run_id)
            except StoreError:  # the store will be back; the worker loop carries on meanwhile
                continue
            if execution is not None and execution.status.terminal:
                stop.set()
    finally:
        stop.set()
        thread.join()
    print("done", flush=True)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.pg_worker")
    parser.add_argument("mode", choices=["serve"])
    parser.add_argument("url")
    parser.add_argument("schema")
    parser.add_argument("run_id")
    parser.add_argument("effects", type=Path)
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--die-at", type=int, default=0)
    args = parser.parse_args(argv)
    store = PostgresStore(args.url, schema=args.schema, create=False)
    try:
        _serve(store, args.run_id, args.effects, args.lease, args.die_at)
    finally:
        store.close()


if __name__ == "__main__":
    main(sys.argv[1:])
