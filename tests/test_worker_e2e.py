"""The worker across real processes on one SQLite file: crashes and concurrency.

* A worker SIGKILLed after a non-idempotent tool fired (its result recorded, the commit not
  made): after the lease expires the node runs again, replays the recorded result instead of
  firing a second time, and the run ends with exactly one ``node_completed`` for it.
* A worker SIGKILLed *during* the call (outcome unknown): the next attempt does not fire
  again; the node waits for a person (``outcome_unknown``), whose answer completes it.
* Two worker processes drain a 200-node workflow: every node runs exactly once.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from charter.adapters.sqlite import SqliteStore
from charter.core.approvals import ApprovalRefused
from charter.core.events import (
    Event,
    NodeCompleted,
    NodeFailed,
    NodeStarted,
    OutcomeUnknown,
    WorkflowCompleted,
)
from charter.core.policy import PolicySet
from charter.core.records import Tenant
from charter.core.workflow import parse_workflow
from charter.worker import Scheduler, Worker, drive, start_run
from tests.e2e_worker import LEASE_SECS, registry

ROOT = Path(__file__).resolve().parent.parent


def _store(tmp_path: Path) -> SqliteStore:
    store = SqliteStore(tmp_path / "charter.db")
    now = store.clock.now()
    store.put_tenant(
        Tenant(
            tenant_id="default",
            name="default",
            policy=PolicySet(blocked_tools=("shell.*",)),
            created_at=now,
            updated_at=now,
        )
    )
    return store


def _start(store: SqliteStore, definition: dict[str, Any], run_id: str) -> None:
    start_run(store, parse_workflow(definition), execution_id=run_id)


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.e2e_worker", *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _completed(events: Sequence[Event], node: str) -> list[NodeCompleted]:
    return [e.kind for e in events if isinstance(e.kind, NodeCompleted) and e.kind.node_id == node]


PAYMENT: dict[str, Any] = {
    "workflow_id": "payment",
    "version": "1",
    "start_node": "prepare",
    "tools": {
        "work.prepare": {"idempotent": True},
        "ledger.post": {"idempotent": False},
        "work.receipt": {"idempotent": True},
    },
    "nodes": {
        "prepare": {"kind": {"type": "tool", "tool_ref": "work.prepare"}},
        "pay": {
            "kind": {"type": "tool", "tool_ref": "ledger.post", "args": {"amount": 120}},
            "retry_policy": {"max_attempts": 3, "backoff_ms": 10},
        },
        "receipt": {"kind": {"type": "tool", "tool_ref": "work.receipt"}},
    },
    "edges": [{"from": "prepare", "to": "pay"}, {"from": "pay", "to": "receipt"}],
}


def _crash_then_recover(tmp_path: Path, when: str) -> tuple[SqliteStore, list[str], str]:
    store = _store(tmp_path)
    _start(store, PAYMENT, "pay-1")
    effects = tmp_path / "effects.txt"
    crashed = _spawn("crash", str(store.path), "pay-1", str(effects), when)
    out, err = crashed.communicate(timeout=120)
    assert crashed.returncode == -signal.SIGKILL, (out, err)
    # A new worker (this process) finds the dead worker's claim, waits out its lease, and
    # carries on.
    worker = Worker(store, executors=registry(effects), lease_secs=LEASE_SECS)
    outcome = drive(worker, "pay-1")
    lines = effects.read_text(encoding="utf-8").splitlines()
    return store, lines, outcome.status


def test_sigkill_after_the_effect_replays_it_instead_of_firing_again(tmp_path: Path) -> None:
    store, lines, status = _crash_then_recover(tmp_path, "after-effect")
    assert status == "completed"
    events = store.read_events("pay-1")
    paid = [line for line in lines if line.startswith("pay ")]
    assert len(paid) == 1, lines  # the payment happened once, in the process that died
    (completed,) = _completed(events, "pay")  # and is recorded as completed once
    assert completed.output == {"posted": {"amount": 120}}
    assert completed.idempotency_key == paid[0].split()[2]
    starts = [e.kind for e in events if isinstance(e.kind, NodeStarted) and e.kind.node_id == "pay"]
    assert len(starts) == 2  # the killed attempt, and the one that replayed its result
    assert starts[0].worker_id != starts[1].worker_id
    assert [len(_completed(events, n)) for n in ("prepare", "receipt")] == [1, 1]
    assert isinstance(events[-1].kind, WorkflowCompleted)


def test_sigkill_mid_call_does_not_fire_the_effect_again(tmp_path: Path) -> None:
    store, lines, status = _crash_then_recover(tmp_path, "mid-call")
    assert status == "waiting"  # for a person: the payment may or may not have happened
    paid = [line for line in lines if line.startswith("pay ")]
    assert len(paid) == 1
    events = store.read_events("pay-1")
    assert _completed(events, "pay") == []
    assert not [e for e in events if isinstance(e.kind, NodeFailed) and not e.kind.retryable]
    (lost,) = [e.kind for e in events if isinstance(e.kind, OutcomeUnknown)]
    assert lost.node_id == "pay"
    assert lost.idempotency_key == paid[0].split()[2]  # the key the lost call was given
    assert "stopped mid-call" in lost.reason
    assert "receipt" not in {getattr(e.kind, "node_id", None) for e in events}

    # A person checks the ledger: the payment went through. The run carries on from there.
    answer = store.resolve_outcome(
        "pay-1", "pay", user_id="ops", resolution="succeeded", output={"posted": {"amount": 120}}
    )
    assert not isinstance(answer, ApprovalRefused)
    worker = Worker(store, executors=registry(tmp_path / "effects.txt"), lease_secs=LEASE_SECS)
    assert drive(worker, "pay-1").status == "completed"
    events = store.read_events("pay-1")
    (completed,) = _completed(events, "pay")
    assert completed.output == {"posted": {"amount": 120}}
    assert completed.idempotency_key == lost.idempotency_key
    lines = (tmp_path / "effects.txt").read_text(encoding="utf-8").splitlines()
    assert len([line for line in lines if line.startswith("pay ")]) == 1  # still once
    assert [len(_completed(events, n)) for n in ("prepare", "receipt")] == [1, 1]


def _tree(size: int) -> dict[str, Any]:
    """``n0`` → ``n1``, ``n2``; ``n1`` → ``n3``, ``n4``; …: dependencies and parallelism."""
    return {
        "workflow_id": "tree",
        "version": "1",
        "start_node": "n0",
        "tools": {"work.step": {"idempotent": True}},
        "nodes": {
            f"n{i}": {"kind": {"type": "tool", "tool_ref": "work.step"}} for i in range(size)
        },
        "edges": [{"from": f"n{(i - 1) // 2}", "to": f"n{i}"} for i in range(1, size)],
    }


def test_two_worker_processes_run_each_of_200_nodes_exactly_once(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _start(store, _tree(200), "tree-1")
    Scheduler(store).advance("tree-1")
    effects = tmp_path / "effects.txt"
    workers = [_spawn("serve", str(store.path), "tree-1", str(effects)) for _ in range(2)]
    for process in workers:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
    for process in workers:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    for process in workers:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        assert out.strip() == "done"

    calls = [line.split() for line in effects.read_text(encoding="utf-8").splitlines()]
    per_node = Counter(node for node, _ in calls)
    assert len(per_node) == 200
    assert set(per_node.values()) == {1}
    assert len({pid for _, pid in calls}) == 2  # both processes did part of the work
    events = store.read_events("tree-1")
    assert isinstance(events[-1].kind, WorkflowCompleted)
    completed = Counter(e.kind.node_id for e in events if isinstance(e.kind, NodeCompleted))
    started = Counter(e.kind.node_id for e in events if isinstance(e.kind, NodeStarted))
    assert completed == started == per_node
    # Dependencies held across processes: every node completed after its parent.
    order = {e.kind.node_id: e.sequence for e in events if isinstance(e.kind, NodeCompleted)}
    starts = {e.kind.node_id: e.sequence for e in events if isinstance(e.kind, NodeStarted)}
    assert all(order[f"n{(i - 1) // 2}"] < starts[f"n{i}"] for i in range(1, 200))
    assert sorted(e.sequence for e in events) == list(range(1, len(events) + 1))


def test_the_worker_command_resumes_approved_runs_and_stops_on_sigterm(tmp_path: Path) -> None:
    db = str(tmp_path / "charter.db")
    refund = str(ROOT / "examples" / "refund.yaml")
    tenant = str(ROOT / "examples" / "tenant-acme.yaml")

    def charter(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "charter", *args, "--db", db],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    assert charter("run", refund, "--run-id", "r", "--tenant-policy", tenant).returncode == 3
    answer = charter("approve", "r", "issue_refund", "--user", "finance-lead", "--no-continue")
    assert answer.returncode == 0, answer.stderr
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "charter",
            "worker",
            "--db",
            db,
            "--concurrency",
            "2",
            "--batch",
            "1",
            "--chain-limit",
            "0",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        store = SqliteStore(db)
        for _ in range(600):  # the worker's tick finds the answered run and finishes it
            if isinstance(store.read_events("r")[-1].kind, WorkflowCompleted):
                break
            time.sleep(0.1)
        assert isinstance(store.read_events("r")[-1].kind, WorkflowCompleted)
        store.close()
    finally:
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert "2 thread(s), batch 1, chain limit 0," in out
    assert "finishing the items in hand" in err
