"""Properties of the composed gate and of the approval fold."""

from __future__ import annotations

from datetime import UTC, datetime

import attrs
from hypothesis import given
from hypothesis import strategies as st

from charter.core import (
    ApprovalConsumed,
    ApprovalDecision,
    ApprovalReceived,
    Approved,
    Block,
    EscalateLimit,
    Event,
    EventKind,
    GateRequest,
    NodeFailed,
    NodeGated,
    NotRequested,
    Outcome,
    Pending,
    PolicyEvaluator,
    PolicyLayer,
    PolicyScope,
    PolicySet,
    RequireApproval,
    RequireToolApproval,
    ToolApprovalRequired,
    TripCircuitBreaker,
    approver_allows,
    check_before,
    gate_node,
    node_approval_status,
    pending_approvals,
    request_digest,
)
from charter.core.autonomy import AutonomyEnforcer
from charter.core.gate import _autonomy_context, _autonomy_tool
from charter.testing.strategies import gate_requests

NOW = datetime(2026, 11, 21, tzinfo=UTC)


@given(gate_requests())
def test_the_gate_is_deterministic(request: GateRequest) -> None:
    assert gate_node(request) == gate_node(request)


@given(gate_requests())
def test_the_gate_never_runs_a_node_any_component_refuses_or_holds(request: GateRequest) -> None:
    result = gate_node(request)
    ctx = request.context
    policy = PolicyEvaluator(request.combining).evaluate(ctx, request.policies)
    autonomy = (
        AutonomyEnforcer().check(_autonomy_context(request, request.agent), _autonomy_tool(ctx))
        if request.agent is not None
        else None
    )
    trip = check_before(request.budget, request.limits)

    refused = (
        isinstance(policy, Block)
        or isinstance(autonomy, TripCircuitBreaker | EscalateLimit)
        or trip is not None
    )
    needs_approval = isinstance(policy, RequireApproval) or isinstance(
        autonomy, RequireToolApproval
    )
    digest = request_digest(ctx, request.attempt, request.call)
    approved = (
        isinstance(request.approval, Approved) and request.approval.request.request_digest == digest
    )
    if refused:
        assert result.outcome is Outcome.FAIL
    if needs_approval and not approved:
        assert result.outcome is not Outcome.RUN
    if result.outcome is Outcome.RUN:
        assert not refused
        assert not needs_approval or approved


@given(gate_requests())
def test_every_gate_result_is_recorded_and_every_failure_is_terminal(
    request: GateRequest,
) -> None:
    result = gate_node(request)
    first, *rest = result.events
    assert isinstance(first, NodeGated)
    assert first.outcome == result.outcome.value
    assert first.decided_at == request.now
    if result.outcome is Outcome.FAIL:
        last = result.events[-1]
        assert isinstance(last, NodeFailed)
        assert last.retryable is False
        assert last.attempt == request.attempt
        assert result.reason
    else:
        assert not any(isinstance(event, NodeFailed) for event in result.events)
    consumed = [e for e in rest if isinstance(e, ApprovalConsumed)]
    if consumed:
        assert result.outcome is Outcome.RUN
        assert consumed[0].request_digest == result.request_digest


def _log(kinds: list[EventKind]) -> list[Event]:
    return [
        Event(id=f"e{i}", execution_id="x", sequence=i, kind=kind, created_at=NOW)
        for i, kind in enumerate(kinds, start=1)
    ]


@given(gate_requests(), st.sampled_from(["alice", "bob", "anonymous"]))
def test_a_held_node_runs_after_approval_then_needs_a_new_one(
    request: GateRequest, user: str
) -> None:
    """Hold → approve → run once (consuming the approval) → held again."""
    # Make approval necessary by construction: a node layer asking approval for everything.
    ask_all = PolicyLayer(PolicyScope.NODE, PolicySet(require_approval_for=["*"]))
    request = attrs.evolve(request, policies=(*request.policies, ask_all), approval=NotRequested())
    first = gate_node(request)
    if first.outcome is not Outcome.HOLD:
        # Only a refusal (policy block under deny-overrides, autonomy, budget) or a model
        # node (no tool rules) may keep an ask-everything layer from holding the node.
        assert first.outcome is Outcome.FAIL or request.context.tool_name is None
        return
    node = request.context.node_id
    log = list(first.events)
    status = node_approval_status(_log(log), node)
    assert isinstance(status, Pending)
    ask = status.request
    log.append(
        ApprovalReceived(
            node_id=node,
            user_id=user,
            decision=ApprovalDecision.APPROVED,
            request_digest=ask.request_digest,
        )
    )
    status = node_approval_status(_log(log), node)
    if not approver_allows(ask.approver, user):
        assert isinstance(status, Pending)  # a wrong approver changes nothing
        return
    assert isinstance(status, Approved)
    second = gate_node(attrs.evolve(request, approval=status))
    assert second.outcome is Outcome.RUN
    log.extend(second.events)
    third = gate_node(attrs.evolve(request, approval=node_approval_status(_log(log), node)))
    assert third.outcome is Outcome.HOLD
    assert any(isinstance(e, ToolApprovalRequired) for e in third.events)


@given(st.lists(st.sampled_from(["ask:a", "ask:b", "yes:a", "no:b", "use:a"]), max_size=12))
def test_pending_approvals_agrees_with_the_per_node_fold(script: list[str]) -> None:
    kinds: list[EventKind] = []
    for step in script:
        action, node = step.split(":")
        digest = f"d-{node}"
        if action == "ask":
            kinds.append(
                ToolApprovalRequired(
                    node_id=node,
                    tool_name="t",
                    approver="human",
                    context={},
                    request_digest=digest,
                    attempt=0,
                )
            )
        elif action in ("yes", "no"):
            decision = ApprovalDecision.APPROVED if action == "yes" else ApprovalDecision.REJECTED
            kinds.append(
                ApprovalReceived(
                    node_id=node, user_id="alice", decision=decision, request_digest=digest
                )
            )
        else:
            kinds.append(ApprovalConsumed(node_id=node, request_digest=digest, attempt=0))
    log = _log(kinds)
    pending = {request.node_id for request in pending_approvals(log)}
    for node in ("a", "b"):
        assert (node in pending) == isinstance(node_approval_status(log, node), Pending)
