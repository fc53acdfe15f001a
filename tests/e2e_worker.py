"""A separate Charter worker process for the end-to-end crash and concurrency tests (run with
``python -m tests.e2e_worker``).

Executors used by the tests write one line per call to an effects file (opened in append
mode, one ``write`` per line), which stands for the outside world: it shows how many times a
side effect really happened, whatever the event log says.

Modes:

* ``crash DB RUN EFFECTS after-effect``: process RUN; when node ``pay`` is about to commit
  (its effect fired and recorded), SIGKILL this process.
* ``crash DB RUN EFFECTS mid-call``: process RUN; node ``pay``'s executor fires its effect and
  SIGKILLs this process before returning (the outcome is never recorded).
* ``serve DB RUN EFFECTS``: print ``ready``, wait for a line on stdin, then process work
  until RUN has finished; each node's executor sleeps a few milliseconds so that two
  processes interleave.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from charter.adapters.executors import ExecutorRegistry, default_registry
from charter.adapters.sqlite import SqliteStore
from charter.core.ports import NodeCall, NodeResult
from charter.core.records import Claim
from charter.worker import Worker, WorkerHooks

LEASE_SECS = 1.0


def _effect(path: Path, line: str) -> None:
    with path.open("a", encoding="utf-8") as out:
        out.write(line + "\n")


def registry(effects: Path, *, die_mid_call: bool = False, pause: float = 0.0) -> ExecutorRegistry:
    """``ledger.post`` and ``work.step`` record each call in ``effects``."""

    def post(call: NodeCall) -> NodeResult:
        _effect(effects, f"{call.node_id} {os.getpid()} {call.idempotency_key}")
        if die_mid_call:
            os.kill(os.getpid(), signal.SIGKILL)
        return NodeResult(output={"posted": call.args}, state_patch={"posted": True})

    def step(call: NodeCall) -> NodeResult:
        _effect(effects, f"{call.node_id} {os.getpid()}")
        if pause:
            time.sleep(pause)
        return NodeResult(output={"node": call.node_id}, state_patch={})

    executors = default_registry()
    executors.register_tool("ledger.*", post)
    executors.register_tool("work.*", step)
    return executors


def _finished(worker: Worker, run_id: str) -> bool:
    return worker.scheduler.progress(run_id).finished is not None


def _crash(store: SqliteStore, run_id: str, effects: Path, when: str) -> None:
    def die_before_commit(claim: Claim) -> None:
        if claim.item.node_id == "pay":
            os.kill(os.getpid(), signal.SIGKILL)

    hooks = WorkerHooks(before_commit=die_before_commit if when == "after-effect" else None)
    worker = Worker(
        store,
        executors=registry(effects, die_mid_call=when == "mid-call"),
        lease_secs=LEASE_SECS,
        hooks=hooks,
    )
    worker.scheduler.advance(run_id)
    while not _finished(worker, run_id):
        if not worker.step():
            time.sleep(0.01)
    print("finished without crashing", flush=True)


def _serve(store: SqliteStore, run_id: str, effects: Path) -> None:
    worker = Worker(store, executors=registry(effects, pause=0.005), lease_secs=30.0)
    print("ready", flush=True)
    sys.stdin.readline()  # the test releases every worker at once
    while not _finished(worker, run_id):
        if not worker.step():
            worker.scheduler.advance(run_id)
            time.sleep(0.005)
    print("done", flush=True)


def main(argv: list[str]) -> None:
    mode, db, run_id, effects = argv[:4]
    store = SqliteStore(db)
    try:
        if mode == "crash":
            _crash(store, run_id, Path(effects), argv[4])
        elif mode == "serve":
            _serve(store, run_id, Path(effects))
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    finally:
        store.close()


if __name__ == "__main__":
    main(sys.argv[1:])
