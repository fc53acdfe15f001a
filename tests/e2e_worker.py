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
* ``pool DB RUN EFFECTS NODE`` (DB: a SQLite file, or a ``postgresql://…?schema=NAME``
  URL): as ``serve``, with a short lease and reclaiming expired leases, until RUN has
  finished or waits for a person (then print ``waiting``); the executor of node NODE
  records its effect and then hangs (the test SIGKILLs the process that runs it, mid-call).

`cli_executors` registers the effect-recording executors for ``charter … --executors
tests.e2e_worker:cli_executors``, writing to the file named by ``CHARTER_E2E_EFFECTS``.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

from charter.adapters.executors import ExecutorRegistry, default_registry
from charter.bootstrap import open_store
from charter.core.ports import NodeCall, NodeResult, Store
from charter.core.records import Claim
from charter.core.scheduler import NodeState
from charter.worker import Worker, WorkerHooks

LEASE_SECS = 1.0


def _effect(path: Path, line: str) -> None:
    with path.open("a", encoding="utf-8") as out:
        out.write(line + "\n")


def registry(
    effects: Path, *, die_mid_call: bool = False, pause: float = 0.0, hang_at: str | None = None
) -> ExecutorRegistry:
    """``ledger.post`` and ``work.step`` record each call in ``effects``; ``ledger.post``
    at node ``hang_at`` then hangs until the process is killed."""
    executors = default_registry()
    _register(executors, effects, die_mid_call=die_mid_call, pause=pause, hang_at=hang_at)
    return executors


def _register(
    executors: ExecutorRegistry,
    effects: Path,
    *,
    die_mid_call: bool = False,
    pause: float = 0.0,
    hang_at: str | None = None,
) -> None:
    def post(call: NodeCall) -> NodeResult:
        _effect(effects, f"{call.node_id} {os.getpid()} {call.idempotency_key}")
        if die_mid_call:
            os.kill(os.getpid(), signal.SIGKILL)
        if call.node_id == hang_at:
            threading.Event().wait()  # mid-call, until SIGKILL
        if pause:
            time.sleep(pause)
        return NodeResult(output={"posted": call.args}, state_patch={"posted": True})

    def step(call: NodeCall) -> NodeResult:
        _effect(effects, f"{call.node_id} {os.getpid()}")
        if pause:
            time.sleep(pause)
        return NodeResult(output={"node": call.node_id}, state_patch={})

    executors.register_tool("ledger.*", post)
    executors.register_tool("work.*", step)


def cli_executors(executors: ExecutorRegistry) -> None:
    """For ``--executors tests.e2e_worker:cli_executors``: the effect-recording executors,
    writing to ``$CHARTER_E2E_EFFECTS``."""
    _register(executors, Path(os.environ["CHARTER_E2E_EFFECTS"]))


def _finished(worker: Worker, run_id: str) -> bool:
    return worker.scheduler.progress(run_id).finished is not None


_BUSY = frozenset({NodeState.SCHEDULED, NodeState.RUNNING, NodeState.ANSWERED})


def _settled(worker: Worker, run_id: str) -> bool:
    """Finished, or waiting for a person: nothing queued, running or answered, and some
    node held."""
    progress = worker.scheduler.progress(run_id)
    if progress.finished is not None:
        return True
    states = {entry.state for entry in progress.nodes.values()}
    return not (states & _BUSY) and NodeState.HELD in states


def _crash(store: Store, run_id: str, effects: Path, when: str) -> None:
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


def _serve(store: Store, run_id: str, effects: Path) -> None:
    worker = Worker(store, executors=registry(effects, pause=0.005), lease_secs=30.0)
    print("ready", flush=True)
    sys.stdin.readline()  # the test releases every worker at once
    while not _finished(worker, run_id):
        if not worker.step():
            worker.scheduler.advance(run_id)
            time.sleep(0.005)
    print("done", flush=True)


def _pool(store: Store, run_id: str, effects: Path, hang_at: str) -> None:
    worker = Worker(
        store, executors=registry(effects, pause=0.002, hang_at=hang_at), lease_secs=LEASE_SECS
    )
    print("ready", flush=True)
    sys.stdin.readline()  # the test releases every worker at once
    while not _settled(worker, run_id):
        if not worker.step():
            worker.reclaim()  # a killed worker's claims, once their lease has expired
            worker.scheduler.advance(run_id)
            time.sleep(0.005)
    print("finished" if _finished(worker, run_id) else "waiting", flush=True)
    worker.close()


def main(argv: list[str]) -> None:
    mode, db, run_id, effects = argv[:4]
    store = open_store(db)  # a SQLite file, or a postgresql:// URL (``?schema=NAME``)
    try:
        if mode == "crash":
            _crash(store, run_id, Path(effects), argv[4])
        elif mode == "serve":
            _serve(store, run_id, Path(effects))
        elif mode == "pool":
            _pool(store, run_id, Path(effects), argv[4])
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    finally:
        store.close()


if __name__ == "__main__":
    main(sys.argv[1:])
