"""Properties of approval expiry (docs/semantics.md §5.2), through the public core: the gate
raises a request, `plan_decision` records a person's answer at some time, and the gate is
asked again at another time.

* an approval is used iff the gate asks strictly before its expiry; an expired one is never
  used, is recorded as expired, and the node is held anew until a new answer;
* the validity a request carries is the tenant's default, a rule's override, never longer
  than the tenant's default when the rule is not the tenant's, and never longer than a final
  layer's own rule.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import attrs
from hypothesis import given
from hypothesis import strategies as st

from charter.core import (
    ApprovalConsumed,
    ApprovalDecision,
    ApprovalExpired,
    ApprovalReceived,
    Approved,
    EvaluationContext,
    ExecutionStatus,
    Expired,
    GateRequest,
    GateResult,
    NodeGated,
    NotRequested,
    Outcome,
    Pending,
    PolicyLayer,
    PolicyScope,
    PolicySet,
    ToolApprovalRequired,
    gate_node,
)
from charter.core.answers import plan_decision
from charter.core.approvals import ApprovalStatus, approval_after
from charter.core.commit import AppendEvents, ApprovalRow, Head, Plan
from charter.core.events import EventKind

T0 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
CTX = EvaluationContext("refund", "tool", tool_name="payments.refund")
CALL = {"amount": 120}


def _never_verify(key: bytes, message: bytes, signature: bytes) -> bool:
    raise AssertionError("no signature is involved here")


def _fold(status: ApprovalStatus, kinds: tuple[EventKind, ...], first: int) -> ApprovalStatus:
    for offset, kind in enumerate(kinds):
        status = approval_after(status, kind, first + offset)
    return status


def _answer(status: ApprovalStatus, at: datetime, decision: ApprovalDecision) -> ApprovalReceived:
    """What the store records for a person's answer at ``at`` (the planner's own event)."""
    head = Head(execution_id="e", tenant_id="t", status=ExecutionStatus.PAUSED, last_sequence=10)
    planned = plan_decision(
        "e",
        head,
        ApprovalRow(status=status, requested_at=T0),
        None,
        node_id=CTX.node_id,
        user_id="alice",
        decision=decision,
        comment=None,
        state_patch=None,
        now=at,
        verify=_never_verify,
    )
    assert isinstance(planned, Plan), planned
    (kind,) = next(w for w in planned.writes if isinstance(w, AppendEvents)).kinds
    assert isinstance(kind, ApprovalReceived)
    return kind


def _gate(layers: tuple[PolicyLayer, ...], status: ApprovalStatus, now: datetime) -> GateResult:
    return gate_node(GateRequest(context=CTX, policies=layers, approval=status, call=CALL, now=now))


_TENANT_EXPIRY = st.none() | st.integers(min_value=1, max_value=7 * 86_400).map(float)


@given(
    validity_ms=st.integers(min_value=1, max_value=10 * 86_400_000),
    asked_after_us=st.integers(min_value=0, max_value=10**9),
    answered_after_us=st.integers(min_value=0, max_value=10**9),
    # How long after the answer the gate asks: anywhere, or right at the expiry (the
    # boundary is where a wrong comparison shows).
    used_after_us=st.integers(min_value=0, max_value=11 * 86_400 * 10**6) | st.just(None),
    boundary_us=st.integers(min_value=-2, max_value=2),
    later_us=st.lists(st.integers(min_value=0, max_value=10**12), max_size=3),
)
def test_an_approval_is_used_iff_it_has_not_expired(
    validity_ms: int,
    asked_after_us: int,
    answered_after_us: int,
    used_after_us: int | None,
    boundary_us: int,
    later_us: list[int],
) -> None:
    if used_after_us is None:
        used_after_us = max(0, validity_ms * 1000 + boundary_us)
    validity = validity_ms / 1000
    tenant = PolicySet(require_approval_for=["payments.*"], approval_expiry_secs=validity)
    layers = (PolicyLayer(PolicyScope.TENANT, tenant),)
    asked = T0 + timedelta(microseconds=asked_after_us)
    first = _gate(layers, NotRequested(), asked)
    assert first.outcome is Outcome.HOLD
    (ask,) = [e for e in first.events if isinstance(e, ToolApprovalRequired)]
    assert ask.expires_after_secs == validity
    status = _fold(NotRequested(), (ask,), 1)

    answered = asked + timedelta(microseconds=answered_after_us)
    received = _answer(status, answered, ApprovalDecision.APPROVED)
    # Independent of the code under test: whole milliseconds, in microseconds.
    assert received.expires_at == answered + timedelta(microseconds=validity_ms * 1000)
    status = _fold(status, (received,), 2)
    assert isinstance(status, Approved)

    used = answered + timedelta(microseconds=used_after_us)
    result = _gate(layers, status, used)
    kinds = [type(e) for e in result.events]
    if used_after_us < validity_ms * 1000:
        assert result.outcome is Outcome.RUN
        assert kinds == [NodeGated, ApprovalConsumed]
        return
    # Expired: not used, recorded, and asked again for the same request.
    assert result.outcome is Outcome.HOLD
    assert kinds == [NodeGated, ApprovalExpired, ToolApprovalRequired]
    expired = result.events[1]
    assert isinstance(expired, ApprovalExpired)
    assert expired.expires_at == received.expires_at
    assert expired.request_digest == ask.request_digest
    assert expired.user_id == "alice"
    assert result.events[2] == ask
    status = _fold(status, result.events[1:], 3)
    assert isinstance(status, Pending)
    assert status.request.request_digest == ask.request_digest
    # However long one waits, the node does not run until someone answers again.
    for offset in later_us:
        again = _gate(layers, status, used + timedelta(microseconds=offset))
        assert again.outcome is Outcome.HOLD
        assert not any(isinstance(e, ApprovalConsumed) for e in again.events)


@given(
    answered_after_us=st.integers(min_value=0, max_value=10**12),
    used_after_us=st.integers(min_value=0, max_value=10**12),
    validity=_TENANT_EXPIRY,
)
def test_a_rejection_never_expires(
    answered_after_us: int, used_after_us: int, validity: float | None
) -> None:
    tenant = PolicySet(require_approval_for=["payments.*"], approval_expiry_secs=validity)
    layers = (PolicyLayer(PolicyScope.TENANT, tenant),)
    first = _gate(layers, NotRequested(), T0)
    status = _fold(NotRequested(), first.events[1:], 1)
    answered = T0 + timedelta(microseconds=answered_after_us)
    received = _answer(status, answered, ApprovalDecision.REJECTED)
    assert received.expires_at is None
    status = _fold(status, (received,), 2)
    result = _gate(layers, status, answered + timedelta(microseconds=used_after_us))
    assert result.outcome is Outcome.FAIL


@given(
    tenant_default=_TENANT_EXPIRY,
    tenant_rule=_TENANT_EXPIRY,
    workflow_rule=_TENANT_EXPIRY,
    tenant_final=st.booleans(),
    workflow_decides=st.booleans(),
)
def test_the_validity_is_the_rules_never_longer_than_the_tenant_allows(
    tenant_default: float | None,
    tenant_rule: float | None,
    workflow_rule: float | None,
    tenant_final: bool,
    workflow_decides: bool,
) -> None:
    def rule(expiry: float | None) -> object:
        return (
            "payments.*" if expiry is None else {"tool": "payments.*", "expires_after_secs": expiry}
        )

    tenant = PolicySet.from_dict(
        {"require_approval_for": [rule(tenant_rule)], "approval_expiry_secs": tenant_default},
        tenant=True,
    )
    tenant = attrs.evolve(tenant, final=tenant_final)
    layers = [PolicyLayer(PolicyScope.TENANT, tenant)]
    if workflow_decides:
        workflow = PolicySet.from_dict({"require_approval_for": [rule(workflow_rule)]})
        layers.append(PolicyLayer(PolicyScope.WORKFLOW, workflow))
    result = _gate(tuple(layers), NotRequested(), T0)
    (ask,) = [e for e in result.events if isinstance(e, ToolApprovalRequired)]
    got = ask.expires_after_secs

    def shortest(*values: float | None) -> float | None:
        present = [v for v in values if v is not None]
        return min(present) if present else None

    tenants_own = tenant_rule if tenant_rule is not None else tenant_default
    if not workflow_decides:
        assert got == tenants_own
        return
    # The workflow's rule decides (most specific): it may shorten the tenant's default,
    # never lengthen it, and a final tenant's own rule bounds it as well.
    expected = shortest(workflow_rule, tenant_default)
    if tenant_final:
        expected = shortest(expected, tenant_rule)
    assert got == expected
    if tenant_default is not None:
        assert got is not None
        assert got <= tenant_default
    if tenant_final and tenants_own is not None:
        assert got is not None
        assert got <= tenants_own


@given(
    expires_in_us=st.integers(min_value=-(10**9), max_value=10**9),
    attempt=st.integers(min_value=0, max_value=3),
)
def test_the_fold_of_an_expiry_needs_the_approval_it_names(
    expires_in_us: int, attempt: int
) -> None:
    """``approval_expired`` turns only the matching approval into `Expired`."""
    tenant = PolicySet(require_approval_for=["payments.*"], approval_expiry_secs=60.0)
    layers = (PolicyLayer(PolicyScope.TENANT, tenant),)
    first = _gate(layers, NotRequested(), T0)
    status = _fold(NotRequested(), first.events[1:], 1)
    assert isinstance(status, Pending)
    digest = status.request.request_digest
    assert digest is not None
    when = T0 + timedelta(microseconds=expires_in_us)
    stray = ApprovalExpired(
        node_id=CTX.node_id, request_digest="0" * 64, attempt=attempt, user_id="a", expires_at=when
    )
    assert approval_after(status, stray, 2) == status  # nothing approved: nothing expires
    received = _answer(status, T0, ApprovalDecision.APPROVED)
    approved = _fold(status, (received,), 2)
    assert approval_after(approved, stray, 3) == approved  # another request's digest
    real = attrs.evolve(stray, request_digest=digest)
    expired = approval_after(approved, real, 3)
    assert isinstance(expired, Expired)
    assert expired.expires_at == when
