"""Approval expiry for governed calls (docs/semantics.md §5.2), on SQLite and Postgres:
`govern` decides with the same core as the worker, so an approval past its expiry is not
used, ``approval_expired`` is recorded, the call is held anew, and a fresh answer lets
exactly one call run; the run verifies and replays clean."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from charter.adapters.clock import ManualClock
from charter.audit.replay import replay_run, verify_log
from charter.core.events import (
    ApprovalConsumed,
    ApprovalDecision,
    ApprovalExpired,
    ToolApprovalRequired,
)
from charter.core.policy import PolicySet
from charter.core.ports import Store
from charter.core.records import Tenant
from charter.integrations.govern import Governor, Held, govern
from tests.stores import make_store


@pytest.fixture(params=("sqlite", "postgres"))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    made = make_store(request.param, tmp_path, ManualClock())
    yield made
    made.close()


def _clock(store: Store) -> ManualClock:
    clock = store.clock
    assert isinstance(clock, ManualClock)
    return clock


def _approve(store: Store, run: str) -> None:
    store.decide_approval(run, "pay", user_id="alice", decision=ApprovalDecision.APPROVED)


def test_a_governed_call_is_held_anew_when_its_approval_expired(store: Store) -> None:
    clock = _clock(store)
    calls: list[int] = []

    def pay_out(amount: int) -> int:
        calls.append(amount)
        return amount

    pay = govern(
        pay_out,
        store=store,
        policy={"require_approval_for": [{"tool": "pay", "expires_after_secs": 30}]},
        tool_name="pay",
        run_id="g1",
    )
    with pytest.raises(Held):
        pay(10)
    _approve(store, "g1")
    clock.advance(30)
    with pytest.raises(Held) as held:
        pay(10)
    assert "the approval by alice expired at" in str(held.value)
    assert calls == []
    events = [e.kind for e in store.read_events("g1")]
    (expired,) = [k for k in events if isinstance(k, ApprovalExpired)]
    asks = [k for k in events if isinstance(k, ToolApprovalRequired)]
    assert len(asks) == 2
    assert asks[0].request_digest == asks[1].request_digest == expired.request_digest
    assert all(ask.expires_after_secs == 30.0 for ask in asks)
    assert not any(isinstance(k, ApprovalConsumed) for k in events)

    with pytest.raises(Held):  # still the same new request: not asked a third time
        pay(10)
    _approve(store, "g1")
    clock.advance(29)
    assert pay(10) == 10
    assert calls == [10]
    assert verify_log(store, runs=["g1"]).ok
    assert replay_run(store, "g1").divergences == ()


def test_a_governed_call_under_the_tenants_default_expiry(store: Store) -> None:
    clock = _clock(store)
    now = clock.now()
    store.put_tenant(
        Tenant(
            tenant_id="acme",
            name="Acme",
            policy=PolicySet(approval_expiry_secs=5),
            created_at=now,
            updated_at=now,
        )
    )
    pay = govern(
        lambda amount: amount,
        store=store,
        policy={"require_approval_for": ["pay"]},
        tool_name="pay",
        run_id="g2",
        tenant="acme",
    )
    with pytest.raises(Held):
        pay(1)
    _approve(store, "g2")
    clock.advance(4.5)
    assert pay(1) == 1  # in time
    with pytest.raises(Held):  # used up: a repeat asks again
        pay(1)
    _approve(store, "g2")
    clock.advance(5)
    with pytest.raises(Held):  # expired
        pay(1)
    kinds = [type(e.kind) for e in store.read_events("g2")]
    assert kinds.count(ApprovalExpired) == 1
    assert kinds.count(ApprovalConsumed) == 1
    assert replay_run(store, "g2").divergences == ()


def test_a_governed_policy_may_hold_rule_objects(store: Store) -> None:
    """A session policy's rule objects (a condition, an expiry) are stored with its
    definition as the JSON objects they stand for (they once failed to encode)."""
    policy = {
        "require_approval_for": [
            {"tool": "pay*", "when": "node.id == 'payout'", "expires_after_secs": 60}
        ]
    }
    governor = Governor(store=store, run_id="g3", policy=policy)
    pay = governor.tool(tool_name="pay")(lambda amount: amount)
    payout = governor.tool(tool_name="payout")(lambda amount: amount)
    assert pay(5) == 5  # the condition does not hold for this node: no approval needed
    with pytest.raises(Held):
        payout(500)
    assert replay_run(store, "g3").divergences == ()
