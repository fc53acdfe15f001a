"""Approvals: a held tool call waits for a permitted approver, and its approval is used once.

In the order a reader should learn them:

1. An item committed ``held`` with ``tool_approval_required`` is a pending approval
   (`pending_approvals`, filterable by tenant and execution).
2. A decision by the permitted approver is appended as ``approval_received``, bound to the
   request's digest, and the request is no longer pending. A decision by anyone else, with
   nothing pending, on an already decided request or on a terminal execution is refused
   (`ApprovalRefused`) and writes nothing; an unknown execution is `NotFound`.
3. A commit that consumes an approval (``approval_consumed``) succeeds once; consuming it
   again, or consuming a rejected or still pending approval, is a `Conflict` and the whole
   commit writes nothing.
"""

from __future__ import annotations

from typing import Any

import pytest

from charter.adapters.clock import ManualClock
from charter.core.approvals import ApprovalRefused
from charter.core.budget import Usage
from charter.core.errors import Conflict, NotFound
from charter.core.events import (
    ApprovalConsumed,
    ApprovalDecision,
    ApprovalReceived,
    Event,
    WorkflowFailed,
)
from charter.core.ports import EffectResult, Store
from charter.core.records import DEFAULT_TENANT, Claim, PendingApprovalRecord
from tests.contract.helpers import (
    APPROVAL_NODE,
    CLAIMED,
    COMPLETED,
    DIGEST,
    EFFECT,
    EXEC,
    approve,
    claim,
    commit,
    completed,
    hold_for_approval,
    names,
    new_item,
    observe,
    start,
    tenant,
)

# ── requests and decisions ─────────────────────────────────────────────────────────────


def test_approval_request_is_pending(store: Store, clock: ManualClock) -> None:
    requested = hold_for_approval(store, clock)
    assert store.pending_approvals() == (
        PendingApprovalRecord(
            execution_id=EXEC,
            tenant_id=DEFAULT_TENANT,
            node_id=APPROVAL_NODE,
            tool_name="payments.transfer",
            approver="alice",
            request_digest=DIGEST,
            attempt=0,
            context={"amount": 5},
            sequence=requested.sequence,
            requested_at=clock.now(),
        ),
    )


def test_pending_approvals_filter_by_tenant_and_execution(store: Store, clock: ManualClock) -> None:
    store.put_tenant(tenant(clock, "acme"))
    hold_for_approval(store, clock, execution_id="exec-a")
    hold_for_approval(store, clock, execution_id="exec-b", tenant_id="acme")
    everyone = store.pending_approvals()
    assert [(r.execution_id, r.tenant_id) for r in everyone] == [
        ("exec-a", DEFAULT_TENANT),
        ("exec-b", "acme"),
    ]
    assert [r.execution_id for r in store.pending_approvals(tenant_id="acme")] == ["exec-b"]
    assert [r.execution_id for r in store.pending_approvals(execution_id="exec-a")] == ["exec-a"]
    assert store.pending_approvals(tenant_id="acme", execution_id="exec-a") == ()


def test_permitted_approver_decision_is_recorded_bound_to_the_request(
    store: Store, clock: ManualClock
) -> None:
    requested = hold_for_approval(store, clock)
    clock.advance(60)
    decided = approve(store, "alice", comment="ok", state_patch={"approved": True})
    assert isinstance(decided, Event)
    assert decided.kind == ApprovalReceived(
        node_id=APPROVAL_NODE,
        user_id="alice",
        decision=ApprovalDecision.APPROVED,
        comment="ok",
        state_patch={"approved": True},
        request_digest=DIGEST,
        attempt=0,  # the attempt of the request it answers
        decided_at=clock.now().isoformat(timespec="microseconds").replace("+00:00", "Z"),
    )
    assert (decided.sequence, decided.created_at) == (requested.sequence + 1, clock.now())
    assert store.read_events(EXEC)[-1] == decided


def test_decided_request_is_no_longer_pending(store: Store, clock: ManualClock) -> None:
    hold_for_approval(store, clock)
    store.decide_approval(EXEC, APPROVAL_NODE, user_id="alice", decision=ApprovalDecision.REJECTED)
    assert store.pending_approvals() == ()


def test_decision_by_someone_else_is_refused_and_writes_nothing(
    store: Store, clock: ManualClock
) -> None:
    hold_for_approval(store, clock, approver="alice")
    before = observe(store)
    assert isinstance(approve(store, "bob"), ApprovalRefused)
    assert observe(store) == before


def test_decision_with_nothing_pending_is_refused(store: Store, clock: ManualClock) -> None:
    start(store, clock)
    before = observe(store)
    assert isinstance(approve(store, "alice"), ApprovalRefused)
    assert observe(store) == before


def test_second_decision_on_one_request_is_refused(store: Store, clock: ManualClock) -> None:
    hold_for_approval(store, clock)
    approve(store, "alice")
    before = observe(store)
    refused = store.decide_approval(
        EXEC, APPROVAL_NODE, user_id="alice", decision=ApprovalDecision.REJECTED
    )
    assert isinstance(refused, ApprovalRefused)
    assert observe(store) == before


def test_decision_on_a_terminal_execution_is_refused(store: Store, clock: ManualClock) -> None:
    hold_for_approval(store, clock)
    store.append_events(EXEC, [WorkflowFailed("gave up")])
    before = observe(store)
    assert isinstance(approve(store, "alice"), ApprovalRefused)
    assert observe(store) == before


def test_decision_on_an_unknown_execution_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        store.decide_approval(
            "ghost", APPROVAL_NODE, user_id="alice", decision=ApprovalDecision.APPROVED
        )


# ── consuming an approval ──────────────────────────────────────────────────────────────


def consume(store: Store, claimed: Claim, **options: Any) -> tuple[Event, ...]:
    """Commit a run of the approved node that uses its approval."""
    return commit(
        store,
        claimed,
        ApprovalConsumed(node_id=APPROVAL_NODE, request_digest=DIGEST, attempt=0),
        completed(APPROVAL_NODE, "paid"),
        **options,
    )


def test_commit_consuming_an_approval_succeeds(store: Store, clock: ManualClock) -> None:
    hold_for_approval(store, clock)
    approve(store, "alice")
    store.enqueue([new_item("run-1", node_id=APPROVAL_NODE)])
    consumed = consume(store, claim(store))
    assert names(consumed) == ["ApprovalConsumed", "NodeCompleted"]
    stored = store.get_item("run-1")
    assert stored is not None
    assert stored.status is COMPLETED


def test_second_consumption_of_one_approval_is_conflict_and_writes_nothing(
    store: Store, clock: ManualClock
) -> None:
    hold_for_approval(store, clock)
    approve(store, "alice")
    store.enqueue(
        [new_item("run-1", node_id=APPROVAL_NODE), new_item("run-2", node_id=APPROVAL_NODE)]
    )
    consume(store, claim(store))
    second = claim(store)
    before = observe(store, "run-2", effect_keys=[EFFECT])
    with pytest.raises(Conflict):
        consume(
            store,
            second,
            usage=Usage(input_tokens=50),
            succeeded=True,
            write_snapshot=True,
            effect=EffectResult(key=EFFECT, result="paid twice"),
        )
    assert observe(store, "run-2", effect_keys=[EFFECT]) == before
    stored = store.get_item("run-2")
    assert stored is not None
    assert (stored.status, stored.fence) == (CLAIMED, second.fence)


def test_consuming_a_rejected_approval_is_conflict(store: Store, clock: ManualClock) -> None:
    hold_for_approval(store, clock)
    store.decide_approval(EXEC, APPROVAL_NODE, user_id="alice", decision=ApprovalDecision.REJECTED)
    store.enqueue([new_item("run-1", node_id=APPROVAL_NODE)])
    claimed = claim(store)
    before = observe(store, "run-1")
    with pytest.raises(Conflict):
        consume(store, claimed)
    assert observe(store, "run-1") == before


def test_consuming_a_pending_approval_is_conflict(store: Store, clock: ManualClock) -> None:
    hold_for_approval(store, clock)
    store.enqueue([new_item("run-1", node_id=APPROVAL_NODE)])
    claimed = claim(store)
    before = observe(store, "run-1")
    with pytest.raises(Conflict):
        consume(store, claimed)
    assert observe(store, "run-1") == before
