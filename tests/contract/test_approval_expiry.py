"""Approval expiry under the store contract (docs/semantics.md §5.2), on every store:

1. An approval of a request that carries ``expires_after_secs`` is recorded with
   ``expires_at`` = its event's time plus that validity; a rejection carries none.
2. A commit with ``approval_expired`` and the request raised anew turns the node's record back
   into a pending request; the expired approval can then no longer be consumed (`Conflict`,
   nothing written), and the new request can be answered.
3. ``approval_expired`` for an approval that is not there to expire (never given, rejected,
   used) is a `Conflict` and the whole commit writes nothing.
"""

from __future__ import annotations

from datetime import timedelta

import attrs
import pytest

from charter.adapters.clock import ManualClock
from charter.core.errors import Conflict
from charter.core.events import (
    ApprovalConsumed,
    ApprovalDecision,
    ApprovalExpired,
    ApprovalReceived,
    Event,
    ToolApprovalRequired,
)
from charter.core.ports import Store
from tests.contract.helpers import (
    APPROVAL_NODE,
    DIGEST,
    EXEC,
    HELD,
    approval_request,
    approve,
    claim,
    commit,
    completed,
    new_item,
    observe,
    start,
)

VALIDITY = 90.0


def _ask() -> ToolApprovalRequired:
    return attrs.evolve(approval_request(), expires_after_secs=VALIDITY)


def _hold(store: Store, clock: ManualClock) -> None:
    start(store, clock, node_id=APPROVAL_NODE)
    commit(store, claim(store), _ask(), outcome=HELD)


def _approved(store: Store) -> tuple[Event, ApprovalReceived]:
    answer = approve(store, "alice")
    assert isinstance(answer, Event)
    assert isinstance(answer.kind, ApprovalReceived)
    return answer, answer.kind


def _expired(kind: ApprovalReceived) -> ApprovalExpired:
    assert kind.expires_at is not None
    return ApprovalExpired(
        node_id=APPROVAL_NODE,
        request_digest=DIGEST,
        attempt=0,
        user_id=kind.user_id,
        expires_at=kind.expires_at,
    )


def test_an_approval_records_its_expiry_and_a_rejection_none(
    store: Store, clock: ManualClock
) -> None:
    _hold(store, clock)
    clock.advance(5)
    event, kind = _approved(store)
    assert kind.expires_at == event.created_at + timedelta(seconds=VALIDITY)
    stored = [e for e in store.read_events(EXEC) if isinstance(e.kind, ApprovalReceived)]
    assert [e.kind for e in stored] == [kind]  # read back exactly as recorded


def test_a_rejection_carries_no_expiry(store: Store, clock: ManualClock) -> None:
    _hold(store, clock)
    answer = store.decide_approval(
        EXEC, APPROVAL_NODE, user_id="alice", decision=ApprovalDecision.REJECTED
    )
    assert isinstance(answer, Event)
    assert isinstance(answer.kind, ApprovalReceived)
    assert answer.kind.expires_at is None


def test_an_expiry_reopens_the_request_and_the_old_approval_is_spent(
    store: Store, clock: ManualClock
) -> None:
    _hold(store, clock)
    _, kind = _approved(store)
    clock.advance(VALIDITY)
    store.enqueue([new_item("run-1", node_id=APPROVAL_NODE)])
    events = commit(store, claim(store), _expired(kind), _ask(), outcome=HELD)
    assert [type(e.kind) for e in events] == [ApprovalExpired, ToolApprovalRequired]
    (pending,) = store.pending_approvals(execution_id=EXEC)
    assert pending.request_digest == DIGEST
    assert pending.sequence == events[1].sequence
    assert pending.expires_after_secs == VALIDITY

    # The expired approval cannot be used any more.
    store.enqueue([new_item("run-2", node_id=APPROVAL_NODE)])
    second = claim(store)
    before = observe(store, "run-2")
    with pytest.raises(Conflict):
        commit(
            store,
            second,
            ApprovalConsumed(node_id=APPROVAL_NODE, request_digest=DIGEST, attempt=0),
            completed(APPROVAL_NODE, "paid"),
        )
    assert observe(store, "run-2") == before

    # The request raised anew is answered as any request, with an expiry of its own.
    event, renewed = _approved(store)
    assert renewed.expires_at == event.created_at + timedelta(seconds=VALIDITY)
    assert store.pending_approvals(execution_id=EXEC) == ()


@pytest.mark.parametrize("state", ["pending", "rejected", "consumed", "expired"])
def test_an_expiry_of_no_usable_approval_is_conflict_and_writes_nothing(
    store: Store, clock: ManualClock, state: str
) -> None:
    _hold(store, clock)
    expires_at = clock.now() + timedelta(seconds=VALIDITY)
    kind = ApprovalReceived(
        node_id=APPROVAL_NODE,
        user_id="alice",
        decision=ApprovalDecision.APPROVED,
        expires_at=expires_at,
    )
    if state == "rejected":
        store.decide_approval(
            EXEC, APPROVAL_NODE, user_id="alice", decision=ApprovalDecision.REJECTED
        )
    elif state in ("consumed", "expired"):
        _, kind = _approved(store)
        store.enqueue([new_item("first", node_id=APPROVAL_NODE)])
        used: ApprovalConsumed | ApprovalExpired = (
            ApprovalConsumed(node_id=APPROVAL_NODE, request_digest=DIGEST, attempt=0)
            if state == "consumed"
            else _expired(kind)
        )
        commit(store, claim(store), used, completed(APPROVAL_NODE, "paid"))
    store.enqueue([new_item("run-1", node_id=APPROVAL_NODE)])
    claimed = claim(store)
    before = observe(store, "run-1")
    with pytest.raises(Conflict):
        commit(store, claimed, _expired(kind), _ask(), outcome=HELD)
    assert observe(store, "run-1") == before
