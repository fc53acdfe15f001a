"""Approval expiry end to end (docs/semantics.md §5.2), on SQLite and Postgres: a worker does
not use an approval past its expiry, records ``approval_expired`` and holds the node anew; a
new answer lets it run once; the log verifies and replays clean, and a forged expiry is
caught. Also the configuration's errors, each naming its field."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from charter.adapters.clock import ManualClock
from charter.adapters.executors import default_registry
from charter.adapters.files import load_policy_file
from charter.adapters.sqlite import SqliteStore
from charter.audit import replay_run, verify_log
from charter.core.approvals import ApprovalRefused
from charter.core.errors import PolicyError
from charter.core.events import (
    ApprovalConsumed,
    ApprovalDecision,
    ApprovalExpired,
    ApprovalReceived,
    Event,
    NodeCompleted,
    NodeGated,
    ToolApprovalRequired,
)
from charter.core.policy import PolicyLayer, PolicyScope, PolicySet
from charter.core.ports import NodeCall, NodeResult, Store
from charter.core.records import Tenant
from charter.core.workflow import WorkflowInvalid, parse_workflow
from charter.worker import Worker, drive, start_run
from tests.stores import drop_schema, make_store, postgres_url, unique_schema_name


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    made = make_store(request.param, tmp_path, ManualClock())
    try:
        yield made
    finally:
        made.close()


def _clock(store: Store) -> ManualClock:
    clock = store.clock
    assert isinstance(clock, ManualClock)
    return clock


def _workflow(rule: Any = "payments.*") -> Any:
    return parse_workflow(
        {
            "workflow_id": "w",
            "version": "1",
            "tenant_id": "acme",
            "start_node": "refund",
            "nodes": {
                "refund": {"kind": {"type": "tool", "tool_ref": "payments.refund"}},
            },
            "edges": [],
            "tools": {"payments.refund": {"idempotent": True}},
            "policy": {"require_approval_for": [rule]},
        }
    )


def _tenant(store: Store, policy: PolicySet) -> None:
    now = store.clock.now()
    store.put_tenant(
        Tenant(tenant_id="acme", name="Acme", policy=policy, created_at=now, updated_at=now)
    )


def _worker(store: Store, calls: list[str]) -> Worker:
    def refund(call: NodeCall) -> NodeResult:
        calls.append(call.node_id)
        return NodeResult(output={"refunded": True})

    registry = default_registry()
    registry.register_tool("payments.*", refund)
    return Worker(store, executors=registry)


def _kinds(events: tuple[Event, ...], *types: type) -> list[Any]:
    return [e.kind for e in events if isinstance(e.kind, types)]


def _approve(store: Store) -> ApprovalReceived:
    answer = store.decide_approval(
        "r", "refund", user_id="lead", decision=ApprovalDecision.APPROVED
    )
    assert isinstance(answer, Event), answer
    assert isinstance(answer.kind, ApprovalReceived)
    return answer.kind


def _postgres(store: Store) -> bool:
    """Whether the store stamps events with the database's clock (not the test's)."""
    return type(store).__name__.endswith("PostgresStore")


def _no_sleep(_: float) -> None:
    pass


def _clean(store: Store) -> None:
    assert verify_log(store, runs=["r"]).ok
    report = replay_run(store, "r")
    assert report.divergences == ()
    assert report.gates >= 1


def test_an_expired_approval_holds_the_node_anew_and_a_new_answer_runs_it(store: Store) -> None:
    clock = _clock(store)
    _tenant(store, PolicySet(approval_expiry_secs=60))
    calls: list[str] = []
    start_run(store, _workflow(), execution_id="r")
    assert drive(_worker(store, calls), "r", sleep=_no_sleep).status == "waiting"
    (ask,) = _kinds(store.read_events("r"), ToolApprovalRequired)
    assert ask.expires_after_secs == 60.0  # the tenant's default, fixed with the request

    answered_at = clock.now()
    received = _approve(store)
    # Fixed when recorded: the answer's own time plus the request's validity.
    (event,) = [e for e in store.read_events("r") if isinstance(e.kind, ApprovalReceived)]
    assert received.expires_at is not None
    assert (received.expires_at - event.created_at).total_seconds() == 60.0
    assert received.expires_at >= answered_at + timedelta(seconds=60) or _postgres(store)

    clock.advance(60)  # exactly at the expiry: already too late
    assert drive(_worker(store, calls), "r", sleep=_no_sleep).status == "waiting"
    assert calls == []
    events = store.read_events("r")
    (expired,) = _kinds(events, ApprovalExpired)
    assert expired.expires_at == received.expires_at
    assert expired.user_id == "lead"
    assert _kinds(events, ApprovalConsumed) == []
    first, again = _kinds(events, ToolApprovalRequired)
    assert again.request_digest == first.request_digest == expired.request_digest
    gated = _kinds(events, NodeGated)
    assert gated[-1].outcome == "hold"
    assert gated[-1].approval == "approved"  # what the gate saw, and did not use
    pending = store.pending_approvals()
    assert [(p.execution_id, p.node_id) for p in pending] == [("r", "refund")]

    # A person answers the new request; used in time, it runs the node once.
    _approve(store)
    clock.advance(59)
    assert drive(_worker(store, calls), "r", sleep=_no_sleep).status == "completed"
    assert calls == ["refund"]
    events = store.read_events("r")
    assert len(_kinds(events, ApprovalConsumed)) == 1
    assert len(_kinds(events, NodeCompleted)) == 1
    _clean(store)


def test_an_approval_used_in_time_runs_the_node(store: Store) -> None:
    clock = _clock(store)
    _tenant(store, PolicySet(approval_expiry_secs=60))
    calls: list[str] = []
    start_run(store, _workflow(), execution_id="r")
    drive(_worker(store, calls), "r", sleep=_no_sleep)
    _approve(store)
    clock.advance(59.999)
    assert drive(_worker(store, calls), "r", sleep=_no_sleep).status == "completed"
    assert calls == ["refund"]
    assert _kinds(store.read_events("r"), ApprovalExpired) == []
    _clean(store)


def test_a_rule_may_shorten_the_tenants_expiry(store: Store) -> None:
    clock = _clock(store)
    _tenant(store, PolicySet(approval_expiry_secs=3600))
    calls: list[str] = []
    rule = {"tool": "payments.*", "when": "node.id == 'refund'", "expires_after_secs": 10}
    start_run(store, _workflow(rule), execution_id="r")
    drive(_worker(store, calls), "r", sleep=_no_sleep)
    (ask,) = _kinds(store.read_events("r"), ToolApprovalRequired)
    assert ask.expires_after_secs == 10.0
    _approve(store)
    clock.advance(11)
    assert drive(_worker(store, calls), "r", sleep=_no_sleep).status == "waiting"
    assert calls == []
    assert len(_kinds(store.read_events("r"), ApprovalExpired)) == 1
    _clean(store)


def test_a_rule_cannot_lengthen_the_tenants_expiry(store: Store) -> None:
    clock = _clock(store)
    _tenant(store, PolicySet(approval_expiry_secs=30))
    calls: list[str] = []
    start_run(
        store,
        _workflow({"tool": "payments.*", "expires_after_secs": 86_400}),
        execution_id="r",
    )
    drive(_worker(store, calls), "r", sleep=_no_sleep)
    (ask,) = _kinds(store.read_events("r"), ToolApprovalRequired)
    assert ask.expires_after_secs == 30.0
    _approve(store)
    clock.advance(31)
    assert drive(_worker(store, calls), "r", sleep=_no_sleep).status == "waiting"
    assert calls == []
    _clean(store)


def test_without_an_expiry_an_approval_waits_as_before(store: Store) -> None:
    clock = _clock(store)
    _tenant(store, PolicySet())
    calls: list[str] = []
    start_run(store, _workflow(), execution_id="r")
    drive(_worker(store, calls), "r", sleep=_no_sleep)
    received = _approve(store)
    assert received.expires_at is None
    clock.advance(366 * 86_400)
    assert drive(_worker(store, calls), "r", sleep=_no_sleep).status == "completed"
    assert calls == ["refund"]
    _clean(store)


def test_a_rejection_does_not_expire(store: Store) -> None:
    clock = _clock(store)
    _tenant(store, PolicySet(approval_expiry_secs=60))
    calls: list[str] = []
    start_run(store, _workflow(), execution_id="r")
    drive(_worker(store, calls), "r", sleep=_no_sleep)
    answer = store.decide_approval(
        "r", "refund", user_id="lead", decision=ApprovalDecision.REJECTED, comment="no"
    )
    assert isinstance(answer, Event)
    assert isinstance(answer.kind, ApprovalReceived)
    assert answer.kind.expires_at is None
    clock.advance(3600)
    outcome = drive(_worker(store, calls), "r", sleep=_no_sleep)
    assert outcome.status == "failed"
    assert calls == []
    assert _kinds(store.read_events("r"), ApprovalExpired) == []
    _clean(store)


def test_an_expired_approval_cannot_be_answered_twice_nor_used(store: Store) -> None:
    """Once expired, the old answer is spent: the node's record is a new pending request,
    and answering the expired one again is refused only if nothing is pending."""
    clock = _clock(store)
    _tenant(store, PolicySet(approval_expiry_secs=5))
    calls: list[str] = []
    start_run(store, _workflow(), execution_id="r")
    drive(_worker(store, calls), "r", sleep=_no_sleep)
    _approve(store)
    refused = store.decide_approval(
        "r", "refund", user_id="lead", decision=ApprovalDecision.APPROVED
    )
    assert isinstance(refused, ApprovalRefused)  # approved already: nothing pending
    clock.advance(5)
    drive(_worker(store, calls), "r", sleep=_no_sleep)
    clock.advance(3600)
    assert drive(_worker(store, calls), "r", sleep=_no_sleep).status == "waiting"
    assert calls == []
    # Held once more for the same request, not once per drive.
    assert len(_kinds(store.read_events("r"), ToolApprovalRequired)) == 2
    _clean(store)


def test_replay_catches_a_lengthened_expiry(tmp_path: Path) -> None:
    """An approval whose ``expires_at`` is not its time plus its request's validity (a
    writer that lengthened it, with SQL on the database) diverges on replay."""
    store = SqliteStore(tmp_path / "charter.db", clock=ManualClock())
    _tenant(store, PolicySet(approval_expiry_secs=60))
    start_run(store, _workflow(), execution_id="r")
    drive(_worker(store, []), "r", sleep=_no_sleep)
    received = _approve(store)
    assert replay_run(store, "r").divergences == ()
    assert received.expires_at is not None
    conn = sqlite3.connect(store.path, isolation_level=None)
    try:
        ((sequence, text),) = conn.execute(
            "SELECT sequence, kind_json FROM events WHERE execution_id = 'r' "
            "AND kind_json LIKE '%approval_received%'"
        ).fetchall()
        year = str(received.expires_at.year)
        assert f'"expires_at":"{year}' in text
        forged = text.replace(f'"expires_at":"{year}', f'"expires_at":"{int(year) + 1}')
        conn.execute(
            "UPDATE events SET kind_json = ? WHERE execution_id = 'r' AND sequence = ?",
            (forged, sequence),
        )
    finally:
        conn.close()
    report = replay_run(store, "r")
    problems = [d.problem for d in report.divergences]
    assert any("expires at" in p and "its request and its time give" in p for p in problems), (
        problems
    )
    store.close()


def test_on_the_databases_clock_an_expiry_is_the_answers_event_time_plus_its_validity() -> None:
    """Postgres without an injected clock stamps events with the database's clock when the
    run's row is locked; the answer is planned at that same time, so its ``expires_at``
    is exactly its event's time plus the validity, and replay agrees."""
    from charter.adapters.postgres import PostgresStore

    url = postgres_url()
    schema = unique_schema_name()
    store = PostgresStore(url, schema=schema)
    try:
        _tenant(store, PolicySet(approval_expiry_secs=0.25))
        start_run(store, _workflow(), execution_id="r")
        assert drive(_worker(store, []), "r", sleep=_no_sleep).status == "waiting"
        _approve(store)
        (event,) = [e for e in store.read_events("r") if isinstance(e.kind, ApprovalReceived)]
        assert isinstance(event.kind, ApprovalReceived)
        assert event.kind.expires_at == event.created_at + timedelta(seconds=0.25)
        assert replay_run(store, "r").divergences == ()
    finally:
        store.close()
        drop_schema(url, schema)


# ── configuration ──────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("data", "tenant", "where", "problem"),
    [
        ({"approval_expiry_secs": 60}, False, "policy.approval_expiry_secs", "belong to a tenant"),
        ({"approval_expiry_secs": 0}, True, "policy.approval_expiry_secs", "0 < seconds"),
        ({"approval_expiry_secs": "1h"}, True, "policy.approval_expiry_secs", "expected seconds"),
        ({"approval_expiry_secs": True}, True, "policy.approval_expiry_secs", "expected seconds"),
        (
            {"approval_expiry_secs": 400 * 86_400},
            True,
            "policy.approval_expiry_secs",
            "one year",
        ),
        (
            {"require_approval_for": [{"tool": "a", "expires_after_secs": -1}]},
            False,
            "policy.require_approval_for[0].expires_after_secs",
            "0 < seconds",
        ),
        (
            {"blocked_tools": [{"tool": "a", "expires_after_secs": 5}]},
            False,
            "policy.blocked_tools[0]",
            "belongs on a require_approval_for rule",
        ),
        (
            {"model_allowlist": [{"model": "m", "when": "true", "expires_after_secs": 5}]},
            False,
            "policy.model_allowlist[0]",
            "belongs on a require_approval_for rule",
        ),
        (
            {"require_approval_for": [{"tool": "a", "expires_after": 5}]},
            False,
            "policy.require_approval_for[0]",
            "unknown key 'expires_after'",
        ),
    ],
)
def test_a_bad_expiry_is_refused_naming_its_field(
    data: dict[str, Any], tenant: bool, where: str, problem: str
) -> None:
    with pytest.raises(PolicyError) as caught:
        PolicySet.from_dict(data, tenant=tenant)
    assert caught.value.where == where
    assert problem in caught.value.problem


def test_a_default_expiry_outside_a_tenant_layer_is_refused() -> None:
    with pytest.raises(PolicyError) as caught:
        PolicyLayer(PolicyScope.WORKFLOW, PolicySet(approval_expiry_secs=60))
    assert caught.value.where == "approval_expiry_secs"


def test_a_tenant_file_sets_the_default_and_a_rule_its_override(tmp_path: Path) -> None:
    path = tmp_path / "tenant.yaml"
    path.write_text(
        "approval_expiry_secs: 3600\n"
        "require_approval_for:\n"
        "  - {tool: payments.refund, when: 'call.amount > 100', expires_after_secs: 600}\n"
        "  - {tool: 'db.*', expires_after_secs: 60}\n"
    )
    loaded = load_policy_file(path, scope=PolicyScope.TENANT)
    (layer,) = loaded.layers
    policy = layer.policy
    assert policy.approval_expiry_secs == 3600.0
    first, second = policy.require_approval_for
    assert not isinstance(first, str)
    assert (first.when, first.expires_after_secs) == ("call.amount > 100", 600.0)
    assert not isinstance(second, str)
    assert (second.when, second.expires_after_secs) == (None, 60.0)
    # The expiry is part of what the policy's digest covers.
    assert (
        PolicySet(require_approval_for=["db.*"]).digest
        != PolicySet(require_approval_for=[{"tool": "db.*", "expires_after_secs": 60}]).digest
    )


def test_a_workflow_file_cannot_set_the_tenants_default(tmp_path: Path) -> None:
    bad = dict(_workflow().raw)
    bad["policy"] = {"approval_expiry_secs": 5, "require_approval_for": ["payments.*"]}
    with pytest.raises(WorkflowInvalid) as caught:
        parse_workflow(bad)
    assert "approval_expiry_secs" in str(caught.value)


# ── the CLI ────────────────────────────────────────────────────────────────────────────


def test_the_cli_shows_each_approvals_expiry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from charter.cli import main

    db = tmp_path / "charter.db"
    clock = ManualClock()
    store = SqliteStore(db, clock=clock)
    _tenant(store, PolicySet(approval_expiry_secs=90))
    start_run(store, _workflow(), execution_id="r")
    drive(_worker(store, []), "r", sleep=_no_sleep)
    _approve(store)
    clock.advance(90)
    drive(_worker(store, []), "r", sleep=_no_sleep)
    capsys.readouterr()

    assert main(["approvals", "--db", str(db)]) == 0
    header, row = capsys.readouterr().out.strip().splitlines()
    assert header.endswith("VALID FOR")
    assert row.startswith("r ")
    assert row.endswith(" 1m30s")

    assert main(["events", "r", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "usable until 2026-01-01T00:01:30+00:00" in out
    assert "approval by lead expired at 2026-01-01T00:01:30+00:00: not used, asked again" in out

    assert main(["status", "r", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "approvals:" in out
    assert (
        "refund         approved by lead at 2026-01-01T00:00:00+00:00; "
        "expired at 2026-01-01T00:01:30+00:00, not used"
    ) in out

    _approve(store)
    clock.advance(30)
    assert main(["status", "r", "--db", str(db)]) == 0
    assert "usable until 2026-01-01T00:03:00+00:00" in capsys.readouterr().out
    assert drive(_worker(store, []), "r", sleep=_no_sleep).status == "completed"
    assert main(["status", "r", "--db", str(db)]) == 0
    assert "; used at 2026-01-01T00:02:00+00:00" in capsys.readouterr().out
    store.close()
    # The log with its approval_expired verifies and replays clean through the CLI too.
    assert main(["audit", "verify", "--db", str(db)]) == 0
    assert main(["audit", "replay", "r", "--db", str(db)]) == 0


def test_charter_tenant_says_when_approvals_expire(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from charter.cli import main

    policy = tmp_path / "acme.yaml"
    policy.write_text("require_approval_for: ['payments.*']\napproval_expiry_secs: 3600\n")
    db = str(tmp_path / "charter.db")
    assert main(["tenant", "acme", "--policy", str(policy), "--db", db]) == 0
    assert "approvals expire 1h after they are given" in capsys.readouterr().out
    workflow = tmp_path / "w.yaml"
    workflow.write_text("approval_expiry_secs: 60\nrequire_approval_for: ['x']\n")
    assert main(["check", str(workflow), "--tool", "x"]) == 2
    err = capsys.readouterr().err
    assert f"{workflow}: approval_expiry_secs: unknown" in err, err
    assert "approval_expiry_secs belongs to a tenant's policy" in err


def test_charter_check_says_how_long_an_approval_stays_usable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from charter.cli import main

    policy = tmp_path / "layers.yaml"
    policy.write_text(
        "tenant:\n"
        "  approval_expiry_secs: 3600\n"
        "  require_approval_for: ['payments.*']\n"
        "workflow:\n"
        "  require_approval_for:\n"
        "    - {tool: payments.refund, when: 'call.args.amount > 100', expires_after_secs: 600}\n"
    )
    big = ["--call", '{"args": {"amount": 500}}']
    assert main(["check", str(policy), "--tool", "payments.refund", *big]) == 3
    assert "  expiry: an approval stays usable 10m once given" in capsys.readouterr().out
    small = ["--call", '{"args": {"amount": 5}}', "--json"]
    assert main(["check", str(policy), "--tool", "payments.refund", *small]) == 3
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert result["expires_after_secs"] == 3600.0  # the tenant's rule decided: its default
    assert main(["check", str(policy), "--tool", "search.web"]) == 0
    assert "expiry" not in capsys.readouterr().out
