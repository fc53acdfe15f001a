"""The examples, end to end on SQLite: through the API and through the CLI.

Each example's event trace is asserted in full (kind and node of every event, in order), so a
change in what Charter decides or records shows up here as a readable diff.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from charter.adapters.files import load_policy_file, load_workflow_file
from charter.adapters.sqlite import SqliteStore
from charter.cli import main
from charter.core.approvals import ApprovalRefused
from charter.core.budget import BudgetState, budget_after
from charter.core.events import (
    ApprovalDecision,
    ApprovalReceived,
    CircuitBreakerTripped,
    Event,
    NodeCompleted,
    NodeFailed,
    NodeGated,
    PolicyViolation,
    TokenBudgetExceeded,
    UsageRecorded,
    WorkflowCompleted,
    WorkflowFailed,
    event_type,
)
from charter.core.policy import PolicyScope
from charter.core.records import Tenant
from charter.core.runs import RunStatus, StepStatus, run_record, run_steps
from charter.worker import RunOutcome, Worker, drive, start_run

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TENANT_POLICY = EXAMPLES / "tenant-acme.yaml"

Trace = list[tuple[str, str]]


def trace(events: Sequence[Event]) -> Trace:
    return [(event_type(e.kind), getattr(e.kind, "node_id", "") or "") for e in events]


def attempt(node: str, *, usage: bool = True) -> Trace:
    """The events of one attempt that the gate lets run and that completes."""
    rows = [("node_scheduled", node), ("node_started", node), ("node_gated", node)]
    return [*rows, ("usage_recorded", node), ("node_completed", node)] if usage else rows


def open_store(tmp_path: Path) -> SqliteStore:
    store = SqliteStore(tmp_path / "charter.db")
    policy = load_policy_file(TENANT_POLICY, PolicyScope.TENANT)
    now = store.clock.now()
    store.put_tenant(
        Tenant(
            tenant_id="acme",
            name="Acme",
            policy=policy.layers[0].policy,
            created_at=now,
            updated_at=now,
        )
    )
    return store


def run_example(store: SqliteStore, name: str, run_id: str) -> RunOutcome:
    workflow, _ = load_workflow_file(EXAMPLES / name)
    execution = start_run(store, workflow, execution_id=run_id)
    return drive(Worker(store), execution.execution_id, sleep=lambda _: None)


# ── through the API ────────────────────────────────────────────────────────────────────

REFUND_UNTIL_HOLD: Trace = [
    ("workflow_started", ""),
    *attempt("classify"),
    *attempt("lookup_order"),
    *attempt("route"),
    ("node_scheduled", "issue_refund"),
    ("node_skipped", "store_credit"),
    ("node_started", "issue_refund"),
    ("node_gated", "issue_refund"),
    ("tool_approval_required", "issue_refund"),
]
REFUND_AFTER_APPROVAL: Trace = [
    ("approval_received", "issue_refund"),
    ("node_scheduled", "issue_refund"),
    ("node_started", "issue_refund"),
    ("node_gated", "issue_refund"),
    ("approval_consumed", "issue_refund"),
    ("usage_recorded", "issue_refund"),
    ("node_completed", "issue_refund"),
    *attempt("notify"),
    ("workflow_completed", ""),
]


def test_refund_holds_for_the_named_approver_then_resumes(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    outcome = run_example(store, "refund.yaml", "refund-1")
    assert outcome.status == "waiting"
    events = store.read_events("refund-1")
    assert trace(events) == REFUND_UNTIL_HOLD
    hold = events[-2].kind
    assert isinstance(hold, NodeGated)
    assert (hold.outcome, hold.policy_scope, hold.policy_rule) == (
        "hold",
        "workflow",
        "require_approval_for",
    )
    record = run_record(store.get_execution("refund-1"), events)  # type: ignore[arg-type]
    assert record.status is RunStatus.WAITING
    assert record.blocked_on is not None
    assert record.blocked_on.gate_name == "issue_refund"
    (pending,) = store.pending_approvals(execution_id="refund-1")
    assert (pending.node_id, pending.approver, pending.tool_name) == (
        "issue_refund",
        "finance-lead",
        "payments.refund",
    )

    answer = store.decide_approval(
        "refund-1",
        "issue_refund",
        user_id="finance-lead",
        decision=ApprovalDecision.APPROVED,
        comment="known customer",
    )
    assert isinstance(answer, Event)
    outcome = drive(Worker(store), "refund-1", sleep=lambda _: None)
    assert outcome.status == "completed"
    events = store.read_events("refund-1")
    assert trace(events) == REFUND_UNTIL_HOLD + REFUND_AFTER_APPROVAL
    final = events[-1].kind
    assert isinstance(final, WorkflowCompleted)
    assert final.final_state["refund"] == {"status": "issued"}
    assert final.final_state["customer_notified"] is True
    assert "store_credit" not in str(final.final_state)
    # Budgets: the model call's tokens and cost are in the ledger.
    ledger = store.get_ledger("refund-1")
    assert ledger.total_input_tokens + ledger.total_output_tokens == 70
    assert ledger.tool_call_count == 3
    assert ledger.total_cost_usd > 0
    steps = run_steps("refund-1", events)
    gate = next(s for s in steps if s.gate_type == "human_approval")
    assert (gate.status, gate.gate_approved_by, gate.gate_feedback) == (
        StepStatus.COMPLETED,
        "finance-lead",
        "known customer",
    )


def test_an_approval_by_the_wrong_approver_is_refused_and_changes_nothing(
    tmp_path: Path,
) -> None:
    store = open_store(tmp_path)
    run_example(store, "refund.yaml", "refund-2")
    before = store.read_events("refund-2")
    answer = store.decide_approval(
        "refund-2", "issue_refund", user_id="mallory", decision=ApprovalDecision.APPROVED
    )
    assert isinstance(answer, ApprovalRefused)
    assert "mallory" in answer.reason
    assert "finance-lead" in answer.reason
    assert store.read_events("refund-2") == before
    assert drive(Worker(store), "refund-2", sleep=lambda _: None).status == "waiting"
    assert len(store.pending_approvals(execution_id="refund-2")) == 1


def test_a_rejection_fails_the_run_with_its_reason(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    run_example(store, "refund.yaml", "refund-3")
    answer = store.decide_approval(
        "refund-3",
        "issue_refund",
        user_id="finance-lead",
        decision=ApprovalDecision.REJECTED,
        comment="order was already refunded",
    )
    assert isinstance(answer, Event)
    assert isinstance(answer.kind, ApprovalReceived)
    outcome = drive(Worker(store), "refund-3", sleep=lambda _: None)
    assert outcome.status == "failed"
    assert outcome.error is not None
    assert "order was already refunded" in outcome.error
    events = store.read_events("refund-3")
    failed = [e.kind for e in events if isinstance(e.kind, NodeFailed)]
    assert [(f.node_id, f.retryable) for f in failed] == [("issue_refund", False)]
    assert "rejected by finance-lead" in failed[0].error
    assert not any(
        isinstance(e.kind, NodeCompleted) and e.kind.node_id in ("issue_refund", "notify")
        for e in events
    )
    record = run_record(store.get_execution("refund-3"), events)  # type: ignore[arg-type]
    assert record.status is RunStatus.FAILED
    assert record.error is not None
    assert "order was already refunded" in record.error


def test_cleanup_is_refused_by_the_tenant_block(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    outcome = run_example(store, "cleanup.yaml", "cleanup-1")
    assert outcome.status == "failed"
    events = store.read_events("cleanup-1")
    assert trace(events) == [
        ("workflow_started", ""),
        *attempt("snapshot"),
        ("node_scheduled", "drop_table"),
        ("node_started", "drop_table"),
        ("node_gated", "drop_table"),
        ("policy_violation", "drop_table"),
        ("node_failed", "drop_table"),
        ("workflow_failed", ""),
    ]
    gated, violation, failed = (e.kind for e in events[-4:-1])
    assert isinstance(gated, NodeGated)
    assert isinstance(violation, PolicyViolation)
    assert (gated.outcome, gated.policy_scope, gated.policy_pattern) == (
        "fail",
        "tenant",
        "db.drop_*",
    )
    # tenant-acme.yaml is a tenant file, so its rules are final (docs/semantics.md §2.5);
    # the workflow relaxes nothing here, so nothing is overruled.
    assert isinstance(gated.policies, list)
    assert gated.policies[0] == {"scope": "tenant", "digest": gated.policies[0]["digest"],
                                 "final": True}  # fmt: skip
    assert gated.overruled is None
    assert isinstance(failed, NodeFailed)
    assert not failed.retryable
    assert "db.drop_*" in failed.error
    # Nothing after the refusal ran.
    assert "announce" not in {getattr(e.kind, "node_id", None) for e in events}


def test_research_trips_its_token_budget(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    outcome = run_example(store, "research.yaml", "research-1")
    assert outcome.status == "failed"
    events = store.read_events("research-1")
    assert trace(events) == [
        ("workflow_started", ""),
        *attempt("draft"),
        *attempt("critique")[:-1],
        ("token_budget_exceeded", "critique"),
        ("node_failed", "critique"),
        ("workflow_failed", ""),
    ]
    usages = [e.kind for e in events if isinstance(e.kind, UsageRecorded)]
    trip = next(e.kind for e in events if isinstance(e.kind, TokenBudgetExceeded))
    spent = sum(u.input_tokens + u.output_tokens for u in usages)
    assert trip.limit == 120
    assert (trip.kind, trip.current) == ("total_tokens", spent)
    assert spent == 141  # recomputable from the recorded usage
    failed = events[-2].kind
    assert isinstance(failed, NodeFailed)
    assert not failed.retryable
    assert failed.error == "token budget exceeded: total_tokens 141 > 120"


def test_flaky_agent_trips_its_circuit_breaker(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    outcome = run_example(store, "flaky-agent.yaml", "flaky-1")
    assert outcome.status == "failed"
    events = store.read_events("flaky-1")
    failed_attempt = [
        ("node_started", "search"),
        ("node_gated", "search"),
        ("usage_recorded", "search"),
        ("node_failed", "search"),
    ]
    assert trace(events) == [
        ("workflow_started", ""),
        ("node_scheduled", "search"),
        *failed_attempt,
        ("retry_scheduled", "search"),
        *failed_attempt,
        ("retry_scheduled", "search"),
        *failed_attempt,
        ("retry_scheduled", "search"),
        ("node_started", "search"),
        ("node_gated", "search"),
        ("circuit_breaker_tripped", "search"),
        ("escalation_required", "search"),
        ("node_failed", "search"),
        ("workflow_failed", ""),
    ]
    trip = next(e.kind for e in events if isinstance(e.kind, CircuitBreakerTripped))
    assert (trip.consecutive_errors, trip.threshold) == (3, 3)
    assert trip.agent_ref == "agent://acme/researcher"
    retryable = [e.kind.retryable for e in events if isinstance(e.kind, NodeFailed)]
    assert retryable == [True, True, True, False]
    final = events[-1].kind
    assert isinstance(final, WorkflowFailed)
    assert "circuit breaker tripped" in final.error


# ── through the CLI ────────────────────────────────────────────────────────────────────


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("example", "code", "ending"),
    [
        ("refund.yaml", 3, "waiting for approval of issue_refund (approver finance-lead)"),
        ("cleanup.yaml", 4, "policy blocked: tool 'db.drop_table' matches blocked pattern"),
        ("research.yaml", 4, "token budget exceeded: total_tokens 141 > 120"),
        ("flaky-agent.yaml", 4, "circuit breaker tripped"),
    ],
)
def test_cli_run_of_each_example(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], example: str, code: int, ending: str
) -> None:
    db = str(tmp_path / "charter.db")
    args = ["run", str(EXAMPLES / example), "--db", db, "--run-id", "r"]
    status, out, err = cli(capsys, *args, "--tenant-policy", str(TENANT_POLICY))
    assert (status, err) == (code, "")
    assert ending in out.splitlines()[-1] or ending in out
    # The live timeline is the log: `events --json` prints the same events, in order.
    status, logged, _ = cli(capsys, "events", "r", "--db", db, "--json")
    assert status == 0
    kinds = [json.loads(line)["kind"]["type"] for line in logged.splitlines()]
    printed = [line.split()[1] for line in out.splitlines() if line[:5].strip().isdigit()]
    assert printed == kinds


def test_cli_approval_flow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "charter.db")
    run = ["run", str(EXAMPLES / "refund.yaml"), "--db", db, "--run-id", "r"]
    status, out, _ = cli(capsys, *run, "--tenant-policy", str(TENANT_POLICY), "--quiet")
    assert status == 3
    assert f"charter approve r issue_refund --user finance-lead --db {db}" in out

    status, out, _ = cli(capsys, "approvals", "--db", db)
    assert status == 0
    assert "issue_refund" in out
    assert "finance-lead" in out

    status, out, _ = cli(capsys, "status", "r", "--db", db)
    assert "status:    waiting" in out
    assert "blocked on: approval of issue_refund" in out

    status, out, err = cli(capsys, "approve", "r", "issue_refund", "--user", "mallory", "--db", db)
    assert status == 2
    assert out == ""
    assert err.strip() == (
        "charter: error: r issue_refund: refused: user 'mallory' may not answer this request "
        "(approver: 'finance-lead')"
    )

    approve = ["approve", "r", "issue_refund", "--user", "finance-lead", "--comment", "ok"]
    status, out, _ = cli(capsys, *approve, "--db", db)
    assert status == 0
    lines = out.splitlines()
    # Only what happened after the answer is printed: the answer, then the rest of the run.
    assert "approval_received" in lines[0]
    assert "approved by finance-lead (ok)" in lines[0]
    assert "workflow_started" not in out
    assert lines[-1] == "run r: completed"

    status, out, _ = cli(capsys, "approvals", "--db", db)
    assert out.strip() == "no approvals pending"
    status, out, _ = cli(capsys, "status", "--db", db, "--json")
    assert [(r["id"], r["status"]) for r in json.loads(out)] == [("r", "completed")]


def test_cli_reject_fails_the_run_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "charter.db")
    run = ["run", str(EXAMPLES / "refund.yaml"), "--db", db, "--run-id", "r", "--quiet"]
    assert cli(capsys, *run, "--tenant-policy", str(TENANT_POLICY))[0] == 3
    reject = ["reject", "r", "issue_refund", "--user", "finance-lead", "--comment", "duplicate"]
    status, out, _ = cli(capsys, *reject, "--db", db, "--quiet")
    assert status == 4
    assert out.startswith("run r: failed:")
    assert "duplicate" in out


def test_cli_cancel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "charter.db")
    run = ["run", str(EXAMPLES / "refund.yaml"), "--db", db, "--run-id", "r", "--quiet"]
    assert cli(capsys, *run, "--tenant-policy", str(TENANT_POLICY))[0] == 3
    status, out, _ = cli(capsys, "cancel", "r", "--reason", "customer withdrew", "--db", db)
    assert status == 0
    assert "workflow_cancelled" in out
    status, out, _ = cli(capsys, "status", "r", "--db", db)
    assert "status:    cancelled" in out
    assert "customer withdrew" in out
    # An answer after the cancellation does not run the refund.
    approve = ["approve", "r", "issue_refund", "--user", "finance-lead", "--db", db, "--quiet"]
    status, out, err = cli(capsys, *approve)
    assert status == 2
    assert "refused: execution 'r' is cancelled" in err
    events = SqliteStore(Path(db)).read_events("r")
    assert not any(
        isinstance(e.kind, NodeCompleted) and e.kind.node_id == "issue_refund" for e in events
    )
    status, _, err = cli(capsys, "cancel", "r", "--db", db)
    assert status == 2
    assert "already cancelled" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "missing.yaml"], "missing.yaml"),
        (["status", "r"], "no such database"),
        (["run", str(EXAMPLES / "refund.yaml")], "tenant 'acme' is not in"),
        (["run", str(EXAMPLES / "refund.yaml"), "--input", "{bad"], "--input: not JSON"),
        (["worker", "--concurrency", "0"], "--concurrency: expected at least 1"),
        (["run", str(EXAMPLES / "refund.yaml"), "--executors", "nope"], "module:function"),
    ],
)
def test_cli_bad_input_is_one_line_with_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    status, _out, err = cli(capsys, *argv)
    assert status == 2
    assert len(err.strip().splitlines()) == 1
    assert message in err
    assert "Traceback" not in err


def test_cli_validate_reports_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "workflow_id: w\nversion: '1'\nstart_node: a\n"
        "nodes:\n  a: {kind: {type: tool, tool_ref: t}}\n  b: {kind: {type: teleport}}\n"
        "edges:\n  - {from: a, to: c}\n",
        encoding="utf-8",
    )
    status, out, err = cli(capsys, "validate", str(bad))
    assert status == 2
    assert f"{bad}" in err
    assert "nodes.b.kind.type: unknown node kind 'teleport'" in err
    assert "edges[0].to" in err
    status, out, _ = cli(capsys, "validate", str(EXAMPLES / "refund.yaml"))
    assert status == 0
    assert "OK" in out
    assert "6 nodes" in out


def test_the_installed_entry_point_runs_an_example(tmp_path: Path) -> None:
    # The README's main command, minus the install: a real process, a real exit code.
    db = str(tmp_path / "charter.db")
    env = {**os.environ, "PYTHONUTF8": "1"}
    command = [sys.executable, "-m", "charter", "run", str(EXAMPLES / "refund.yaml")]
    done = subprocess.run(
        [*command, "--db", db, "--tenant-policy", str(TENANT_POLICY), "--run-id", "r"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 3, done.stderr
    assert "tool_approval_required" in done.stdout
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "charter",
            "approve",
            "r",
            "issue_refund",
            "--user",
            "finance-lead",
            "--db",
            db,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "run r: completed"


@pytest.mark.parametrize(
    "example", ["refund.yaml", "cleanup.yaml", "research.yaml", "flaky-agent.yaml"]
)
def test_the_stored_ledger_is_the_fold_of_the_log(tmp_path: Path, example: str) -> None:
    # What lets an auditor recompute the budget every decision saw from the log alone.
    store = open_store(tmp_path)
    run_example(store, example, "r")
    events = store.read_events("r")
    assert store.get_ledger("r") == budget_after(BudgetState(), events)
    gated = [e.kind for e in events if isinstance(e.kind, NodeGated)]
    assert gated
    for kind in gated:  # each decision records the log position its inputs came from
        assert kind.as_of is not None
        position = kind.as_of
        seen = budget_after(BudgetState(), [e for e in events if e.sequence <= position])
        assert kind.budget == seen.to_dict()
