"""A lost outcome waits for a person (docs/workflows.md §3.3), end to end.

* Three worker processes on one SQLite file (and on one Postgres schema, when
  ``CHARTER_TEST_POSTGRES_URL`` is set) run a 200-node workflow whose every node is a
  side effect that is not idempotent; one of them is SIGKILLed in the middle of a call. The
  run ends waiting on a person — not failed — with that node held; ``charter status`` says
  so and names the command; ``charter resolve … --succeeded`` completes the run; no side
  effect happened twice.
* ``charter run`` whose node lost its outcome exits 3, naming the node and the command;
  ``charter resolve --retry`` runs it once more, under a new idempotency key.
* ``charter resolve``'s refusals and usage errors.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from charter.adapters.sqlite import SqliteStore
from charter.bootstrap import open_store
from charter.cli.commands import main
from charter.core.errors import FenceLost
from charter.core.events import (
    NodeCompleted,
    NodeFailed,
    OutcomeResolved,
    OutcomeUnknown,
    WorkflowCompleted,
)
from charter.core.policy import PolicySet
from charter.core.ports import Store
from charter.core.records import Claim, Tenant
from charter.core.runs import LostOutcome, RunStatus, run_record
from charter.core.workflow import parse_workflow
from charter.worker import Scheduler, WorkerHooks, start_run
from tests.stores import drop_schema, postgres_url, unique_schema_name

ROOT = Path(__file__).resolve().parent.parent
SIZE = 200
VICTIM = "n3"  # an inner node: its subtree can only run once its outcome is resolved


def _store(target: str | Path) -> Store:
    store = open_store(target)
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


def _ledger_tree(size: int) -> dict[str, Any]:
    """``n0`` → ``n1``, ``n2``; ``n1`` → ``n3``, ``n4``; …: every node posts to a ledger that
    is not idempotent."""
    return {
        "workflow_id": "ledger-tree",
        "version": "1",
        "start_node": "n0",
        "tools": {"ledger.post": {"idempotent": False}},
        "nodes": {
            f"n{i}": {
                "kind": {"type": "tool", "tool_ref": "ledger.post", "args": {"n": i}},
                "retry_policy": {"max_attempts": 3, "backoff_ms": 10},
            }
            for i in range(size)
        },
        "edges": [{"from": f"n{(i - 1) // 2}", "to": f"n{i}"} for i in range(1, size)],
    }


def _effects(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split() for line in path.read_text(encoding="utf-8").splitlines()]


def _charter(db: str | Path, effects: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "charter", *args, "--db", str(db)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "CHARTER_E2E_EFFECTS": str(effects)},
    )


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where the worker processes meet: a SQLite file, or a Postgres schema of this test's
    own (skipped when ``CHARTER_TEST_POSTGRES_URL`` is unset), dropped afterwards."""
    if request.param == "sqlite":
        yield str(tmp_path / "charter.db")
        return
    url = postgres_url()
    schema = unique_schema_name()
    try:
        yield f"{url}{'&' if '?' in url else '?'}schema={schema}"
    finally:
        drop_schema(url, schema)


def test_sigkill_of_one_of_three_workers_waits_on_a_person_then_resolve_completes_it(
    tmp_path: Path, database: str
) -> None:
    db = database
    effects = tmp_path / "effects.txt"
    store = _store(db)
    start_run(store, parse_workflow(_ledger_tree(SIZE)), execution_id="tree-1")
    Scheduler(store).advance("tree-1")
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.e2e_worker",
                "pool",
                str(db),
                "tree-1",
                *(str(effects), VICTIM),
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        for process in workers:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"
        for process in workers:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        # The worker that calls the victim node records the effect, then hangs mid-call:
        # SIGKILL it there (its claim and its effect reservation stay behind).
        victim_pid = None
        for _ in range(6000):
            victim = [fields for fields in _effects(effects) if fields[0] == VICTIM]
            if victim:
                victim_pid = int(victim[0][1])
                break
            time.sleep(0.01)
        assert victim_pid is not None, "no worker called the victim node"
        (killed,) = [p for p in workers if p.pid == victim_pid]
        killed.send_signal(signal.SIGKILL)
        killed.communicate(timeout=60)
        assert killed.returncode == -signal.SIGKILL
        survivors = [p for p in workers if p is not killed]
        for process in survivors:
            out, err = process.communicate(timeout=300)
            assert process.returncode == 0, err
            assert out.strip() == "waiting", (out, err)
    finally:
        for process in workers:
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=60)

    # Waiting on a person, not failed: the victim is held on its lost outcome.
    events = store.read_events("tree-1")
    assert not [e for e in events if isinstance(e.kind, NodeFailed) and not e.kind.retryable]
    (lost,) = [e.kind for e in events if isinstance(e.kind, OutcomeUnknown)]
    assert lost.node_id == VICTIM
    calls = _effects(effects)
    assert [fields[2] for fields in calls if fields[0] == VICTIM] == [lost.idempotency_key]
    execution = store.get_execution("tree-1")
    assert execution is not None
    record = run_record(execution, events)
    assert record.status is RunStatus.WAITING
    assert isinstance(record.blocked_on, LostOutcome)
    assert record.blocked_on.gate_name == VICTIM

    status = _charter(db, effects, "status", "tree-1")
    assert status.returncode == 0, status.stderr
    assert "status:    waiting" in status.stdout
    assert f"blocked on: lost outcome of {VICTIM}" in status.stdout
    assert f"resolve with: charter resolve tree-1 {VICTIM} --user USER" in status.stdout

    # A person checks the ledger: the posting went through. The run completes from there.
    output = json.dumps({"posted": {"n": 3}})
    resolved = _charter(
        db,
        effects,
        *("resolve", "tree-1", VICTIM, "--user", "ops", "--succeeded", "--output", output),
        *("--executors", "tests.e2e_worker:cli_executors"),
    )
    assert resolved.returncode == 0, resolved.stdout + resolved.stderr
    assert "run tree-1: completed" in resolved.stdout

    events = store.read_events("tree-1")
    assert isinstance(events[-1].kind, WorkflowCompleted)
    completed = Counter(e.kind.node_id for e in events if isinstance(e.kind, NodeCompleted))
    assert completed == Counter(f"n{i}" for i in range(SIZE))  # each node completed once
    victim_done = next(
        e.kind for e in events if isinstance(e.kind, NodeCompleted) and e.kind.node_id == VICTIM
    )
    assert victim_done.output == {"posted": {"n": 3}}
    (answer,) = [e.kind for e in events if isinstance(e.kind, OutcomeResolved)]
    assert (answer.resolution, answer.user_id) == ("succeeded", "ops")
    # No side effect happened twice, whatever the log says: one call per node.
    per_node = Counter(fields[0] for fields in _effects(effects))
    assert per_node == Counter(f"n{i}" for i in range(SIZE))
    assert victim_pid in {int(fields[1]) for fields in _effects(effects)}
    store.close()


# ── charter run / status / resolve in one process ──────────────────────────────────────

PAYMENT = """
workflow_id: payment
version: "1"
start_node: pay
tools:
  ledger.post: {idempotent: false}
nodes:
  pay:
    kind: {type: tool, tool_ref: ledger.post, args: {amount: 120}}
    retry_policy: {max_attempts: 3, backoff_ms: 10}
  receipt:
    kind: {type: tool, tool_ref: ledger.post, args: {receipt: true}}
edges:
  - {from: pay, to: receipt}
"""


def _losing_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """``charter run``'s worker, with a short lease, abandons its first claim of ``pay``
    after reserving the effect and before calling it — as a worker that dies there would
    (the claim and the reservation stay until the lease expires)."""
    import charter.cli.runs as cli_runs
    from charter.bootstrap import build_worker as build

    abandoned: list[str] = []

    def abandon_first_pay(claim: Claim) -> None:
        if claim.item.node_id == "pay" and not abandoned:
            abandoned.append(claim.item.item_id)
            raise FenceLost("the worker died here")

    def build_worker(store: Any, **options: Any) -> Any:
        hooks = WorkerHooks(before_execute=abandon_first_pay)
        return build(store, lease_secs=0.2, hooks=hooks, **options)

    monkeypatch.setattr(cli_runs, "build_worker", build_worker)


def test_charter_run_exits_3_naming_the_node_and_resolve_retry_runs_it_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "charter.db"
    effects = tmp_path / "effects.txt"
    workflow = tmp_path / "payment.yaml"
    workflow.write_text(PAYMENT, encoding="utf-8")
    tenant = tmp_path / "tenant.yaml"
    tenant.write_text("blocked_tools: ['shell.*']\n", encoding="utf-8")
    monkeypatch.setenv("CHARTER_E2E_EFFECTS", str(effects))
    plugin = ("--executors", "tests.e2e_worker:cli_executors")
    _losing_worker(monkeypatch)

    code = main(
        [
            "run",
            str(workflow),
            "--db",
            str(db),
            "--run-id",
            "p",
            "--tenant-policy",
            str(tenant),
            *plugin,
        ]
    )
    out = capsys.readouterr().out
    assert code == 3, out
    assert "outcome_unknown" in out
    assert "run p: waiting for a person to resolve the lost outcome of pay" in out
    db_option = f" --db {db}"
    assert f"charter resolve p pay --user USER --succeeded [--output JSON]{db_option}" in out
    assert f"charter resolve p pay --user USER --failed [--reason TEXT]{db_option}" in out
    assert f"charter resolve p pay --user USER --retry{db_option}" in out
    assert _effects(effects) == []  # the abandoned claim never called it

    assert main(["status", "p", "--db", str(db)]) == 0
    status = capsys.readouterr().out
    assert "status:    waiting" in status
    assert "blocked on: lost outcome of pay" in status
    assert "charter resolve p pay --user USER" in status

    code = main(["resolve", "p", "pay", "--user", "ops", "--retry", "--db", str(db), *plugin])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "outcome_resolved" in out
    assert "retry by ops" in out
    assert "run p: completed" in out
    calls = _effects(effects)
    assert [fields[0] for fields in calls] == ["pay", "receipt"]  # pay fired once, now
    store = SqliteStore(db)
    (lost,) = [e.kind for e in store.read_events("p") if isinstance(e.kind, OutcomeUnknown)]
    assert calls[0][2] != lost.idempotency_key  # the retry runs under a new key
    store.close()


def test_charter_resolve_refuses_what_is_not_waiting_and_mixed_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "charter.db"
    workflow = tmp_path / "payment.yaml"
    workflow.write_text(PAYMENT, encoding="utf-8")
    tenant = tmp_path / "tenant.yaml"
    tenant.write_text("blocked_tools: ['shell.*']\n", encoding="utf-8")
    monkeypatch.setenv("CHARTER_E2E_EFFECTS", str(tmp_path / "effects.txt"))
    plugin = ["--executors", "tests.e2e_worker:cli_executors"]
    args = ["--db", str(db), "--run-id", "p", "--tenant-policy", str(tenant), *plugin]
    assert main(["run", str(workflow), "--quiet", *args]) == 0  # nothing lost: completed
    capsys.readouterr()

    code = main(["resolve", "p", "pay", "--user", "ops", "--failed", "--db", str(db)])
    err = capsys.readouterr().err
    assert code == 2
    assert "refused" in err
    assert "execution 'p' is completed" in err or "no lost outcome" in err

    for wrong in (["--succeeded", "--reason", "why"], ["--failed", "--output", "{}"]):
        code = main(["resolve", "p", "pay", "--user", "ops", *wrong, "--db", str(db)])
        assert code == 2, wrong
        assert "only --" in capsys.readouterr().err
    for wrong in (["--succeeded", "--retry"], []):  # exactly one answer: argparse's usage
        with pytest.raises(SystemExit) as usage:
            main(["resolve", "p", "pay", "--user", "ops", *wrong, "--db", str(db)])
        assert usage.value.code == 2, wrong
        capsys.readouterr()

    code = main(["resolve", "p", "pay", "--user", "ops", "--succeeded", "--output", "{nope"])
    assert code == 2
    assert "--output" in capsys.readouterr().err
