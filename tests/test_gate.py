"""The gate's event traces, one behaviour per test."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest

from charter.adapters.codec import dump
from charter.core import (
    AgentCard,
    ApprovalConsumed,
    ApprovalDecision,
    ApprovalReceived,
    AutonomyConstraints,
    AutonomyLevel,
    AutonomyLimitReached,
    BudgetDimension,
    BudgetLimits,
    BudgetState,
    CircuitBreakerTripped,
    CombiningMode,
    CostBudgetExceeded,
    EscalationRequired,
    EvaluationContext,
    Event,
    EventKind,
    GateInputError,
    GateRequest,
    NodeFailed,
    NodeGated,
    Outcome,
    PolicySet,
    PolicyViolation,
    SettlementOutcome,
    SettleRequest,
    TokenBudgetExceeded,
    ToolApprovalRequired,
    Usage,
    UsageRecorded,
    gate_node,
    node_approval_status,
    policy_chain,
    settle_node,
)

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
REFUND = EvaluationContext("refund", "tool", tool_name="payments.refund")


def _request(**changes: Any) -> GateRequest:
    return attrs.evolve(GateRequest(context=REFUND, now=NOW), **changes)


def _types(events: tuple[EventKind, ...]) -> list[str]:
    return [type(e).__name__ for e in events]


def _log(kinds: list[EventKind]) -> list[Event]:
    return [
        Event(id=f"e{i}", execution_id="x", sequence=i, kind=k, created_at=NOW)
        for i, k in enumerate(kinds, 1)
    ]


def test_allowed_node_runs_with_one_gated_event() -> None:
    result = gate_node(_request())
    assert result.outcome is Outcome.RUN
    assert _types(result.events) == ["NodeGated"]
    gated = result.events[0]
    assert isinstance(gated, NodeGated)
    assert gated.outcome == "run"
    assert gated.policy_decision == "allow"
    assert gated.decided_at == NOW


def test_policy_block_fails_terminally_with_violation_and_scope() -> None:
    chain = policy_chain(tenant=PolicySet(blocked_tools=["payments.*"]))
    result = gate_node(_request(policies=chain))
    assert result.outcome is Outcome.FAIL
    assert _types(result.events) == ["NodeGated", "PolicyViolation", "NodeFailed"]
    violation = result.events[1]
    assert violation == PolicyViolation(
        node_id="refund",
        rule="tool 'payments.refund' matches blocked pattern 'payments.*'",
        decision="blocked",
        policy_scope="tenant",
    )
    assert result.events[2] == NodeFailed(
        node_id="refund",
        error="policy blocked: tool 'payments.refund' matches blocked pattern 'payments.*'",
        attempt=0,
        retryable=False,
    )


def test_gated_event_records_the_digest_of_every_policy_set_consulted() -> None:
    tenant, workflow = PolicySet(blocked_tools=["x"]), PolicySet(require_approval_for=["y"])
    result = gate_node(_request(policies=policy_chain(tenant=tenant, workflow=workflow)))
    gated = result.events[0]
    assert isinstance(gated, NodeGated)
    assert gated.policies == [
        {"scope": "tenant", "digest": tenant.digest},
        {"scope": "workflow", "digest": workflow.digest},
    ]


def test_approval_requirement_holds_and_raises_one_bound_request() -> None:
    chain = policy_chain(workflow=PolicySet(require_approval_for=["payments.*"]))
    result = gate_node(_request(policies=chain, call={"amount": 40}))
    assert result.outcome is Outcome.HOLD
    assert _types(result.events) == ["NodeGated", "ToolApprovalRequired"]
    ask = result.events[1]
    assert isinstance(ask, ToolApprovalRequired)
    assert ask.tool_name == "payments.refund"
    assert ask.approver == "human"
    assert ask.request_digest == result.request_digest
    assert ask.attempt == 0
    assert ask.context["call"] == {"amount": 40}


def test_a_pending_request_for_the_same_call_holds_without_asking_again() -> None:
    chain = policy_chain(workflow=PolicySet(require_approval_for=["payments.*"]))
    first = gate_node(_request(policies=chain))
    status = node_approval_status(_log(list(first.events)), "refund")
    again = gate_node(_request(policies=chain, approval=status))
    assert again.outcome is Outcome.HOLD
    assert _types(again.events) == ["NodeGated"]


def _approved(request: GateRequest, user: str = "alice") -> GateRequest:
    first = gate_node(request)
    log = [
        *first.events,
        ApprovalReceived(
            node_id="refund",
            user_id=user,
            decision=ApprovalDecision.APPROVED,
            request_digest=first.request_digest,
        ),
    ]
    return attrs.evolve(request, approval=node_approval_status(_log(log), "refund"))


def test_an_approval_of_this_exact_call_runs_once_and_is_consumed() -> None:
    chain = policy_chain(workflow=PolicySet(require_approval_for=["payments.*"]))
    request = _approved(_request(policies=chain, call={"amount": 40}))
    result = gate_node(request)
    assert result.outcome is Outcome.RUN
    assert _types(result.events) == ["NodeGated", "ApprovalConsumed"]
    assert result.events[1] == ApprovalConsumed(
        node_id="refund", request_digest=result.request_digest or "", attempt=0
    )


def test_an_approval_does_not_cover_a_different_call() -> None:
    chain = policy_chain(workflow=PolicySet(require_approval_for=["payments.*"]))
    request = _approved(_request(policies=chain, call={"amount": 40}))
    changed = gate_node(attrs.evolve(request, call={"amount": 4000}))
    assert changed.outcome is Outcome.HOLD
    assert _types(changed.events) == ["NodeGated", "ToolApprovalRequired"]


def test_an_approval_does_not_cover_another_attempt() -> None:
    chain = policy_chain(workflow=PolicySet(require_approval_for=["payments.*"]))
    request = _approved(_request(policies=chain))
    retried = gate_node(attrs.evolve(request, attempt=1))
    assert retried.outcome is Outcome.HOLD


def test_a_rejection_fails_the_node_with_the_rejecters_reason() -> None:
    chain = policy_chain(workflow=PolicySet(require_approval_for=["payments.*"]))
    request = _request(policies=chain)
    first = gate_node(request)
    log: list[EventKind] = [
        *first.events,
        ApprovalReceived(
            node_id="refund",
            user_id="bob",
            decision=ApprovalDecision.REJECTED,
            comment="too large",
            request_digest=first.request_digest,
        ),
    ]
    result = gate_node(attrs.evolve(request, approval=node_approval_status(_log(log), "refund")))
    assert result.outcome is Outcome.FAIL
    assert result.events[-1] == NodeFailed(
        node_id="refund",
        error="approval rejected by bob: too large",
        attempt=0,
        retryable=False,
    )


def test_an_approval_by_someone_other_than_the_named_approver_does_not_count() -> None:
    card = AgentCard(uri="agents/pay", autonomy=AutonomyLevel.GUIDED)
    request = _request(agent=card)
    first = gate_node(request)
    assert first.outcome is Outcome.HOLD
    ask = first.events[1]
    assert isinstance(ask, ToolApprovalRequired)
    named = attrs.evolve(ask, approver="alice")
    log: list[EventKind] = [
        named,
        ApprovalReceived(
            node_id="refund",
            user_id="mallory",
            decision=ApprovalDecision.APPROVED,
            request_digest=named.request_digest,
        ),
    ]
    status = node_approval_status(_log(log), "refund")
    assert gate_node(attrs.evolve(request, approval=status)).outcome is Outcome.HOLD


def test_circuit_breaker_trips_with_escalation_before_anything_runs() -> None:
    card = AgentCard(uri="agents/pay", autonomy=AutonomyLevel.FULLY_AUTONOMOUS)
    result = gate_node(_request(agent=card, budget=BudgetState(consecutive_error_count=3)))
    assert result.outcome is Outcome.FAIL
    assert _types(result.events) == [
        "NodeGated",
        "CircuitBreakerTripped",
        "EscalationRequired",
        "NodeFailed",
    ]
    assert result.events[1] == CircuitBreakerTripped(
        node_id="refund", agent_ref="agents/pay", consecutive_errors=3, threshold=3
    )
    assert result.events[2] == EscalationRequired(
        node_id="refund",
        agent_ref="agents/pay",
        reason="circuit_breaker",
        escalation_target="human_approval",
    )
    assert result.events[3] == NodeFailed(
        node_id="refund", error="circuit breaker tripped", attempt=0, retryable=False
    )


def test_autonomy_limit_escalates_and_fails_with_the_limit_recorded() -> None:
    card = AgentCard(
        uri="agents/research",
        autonomy=AutonomyLevel.BOUNDED_AUTONOMOUS,
        constraints=AutonomyConstraints(max_iterations=5),
    )
    result = gate_node(_request(agent=card, budget=BudgetState(iteration_count=5)))
    assert result.outcome is Outcome.FAIL
    assert result.events[1] == AutonomyLimitReached(
        node_id="refund",
        agent_ref="agents/research",
        limit_type="max_iterations",
        limit_value=5,
        actual_value=5,
    )
    assert isinstance(result.events[2], EscalationRequired)
    assert result.events[2].reason == "autonomy_limit:max_iterations"
    assert result.events[-1] == NodeFailed(
        node_id="refund", error="autonomy limit: max_iterations", attempt=0, retryable=False
    )


def test_guided_agent_sees_the_tool_name_and_holds_for_approval() -> None:
    # Upstream always passed no tool name, so guided mode never asked (reference §4.5).
    card = AgentCard(uri="agents/exec", autonomy=AutonomyLevel.GUIDED)
    result = gate_node(_request(agent=card))
    assert result.outcome is Outcome.HOLD
    ask = result.events[1]
    assert isinstance(ask, ToolApprovalRequired)
    assert "agents/exec" in ask.context["reasons"][0]


def test_time_budget_uses_the_run_start_and_the_given_clock() -> None:
    card = AgentCard(
        uri="agents/slow",
        autonomy=AutonomyLevel.BOUNDED_AUTONOMOUS,
        constraints=AutonomyConstraints(time_budget_secs=60),
    )
    within = _request(agent=card, run_started_at=NOW - timedelta(seconds=59))
    over = _request(agent=card, run_started_at=NOW - timedelta(seconds=60))
    assert gate_node(within).outcome is Outcome.RUN
    assert gate_node(over).outcome is Outcome.FAIL


def test_spent_token_budget_refuses_to_start_the_node() -> None:
    result = gate_node(
        _request(budget=BudgetState(total_input_tokens=600, total_output_tokens=400),
                 limits=BudgetLimits(total_tokens=1000))
    )  # fmt: skip
    assert result.outcome is Outcome.FAIL
    assert result.events[1] == TokenBudgetExceeded(
        node_id="refund", kind="total_tokens", limit=1000, current=1000
    )
    trip = result.budget_trip
    assert trip is not None
    assert (trip.dimension, trip.limit, trip.value) == (BudgetDimension.TOTAL_TOKENS, 1000, 1000)


def test_zero_limit_refuses_every_node() -> None:
    result = gate_node(_request(limits=BudgetLimits(cost_usd=0.0)))
    assert result.outcome is Outcome.FAIL
    assert result.events[1] == CostBudgetExceeded(node_id="refund", limit_usd=0.0, current_usd=0.0)


def test_policy_is_decided_before_budget() -> None:
    chain = policy_chain(node=PolicySet(blocked_tools=["*"]))
    result = gate_node(_request(policies=chain, limits=BudgetLimits(total_tokens=0)))
    assert _types(result.events)[1] == "PolicyViolation"


def test_deny_overrides_keeps_a_tenant_block_that_a_node_approval_would_weaken() -> None:
    chain = policy_chain(
        tenant=PolicySet(blocked_tools=["payments.*"]),
        node=PolicySet(require_approval_for=["payments.refund"]),
    )
    assert gate_node(_request(policies=chain)).outcome is Outcome.HOLD
    strict = gate_node(_request(policies=chain, combining=CombiningMode.DENY_OVERRIDES))
    assert strict.outcome is Outcome.FAIL


def test_a_final_tenant_block_fails_whatever_the_node_says_and_records_the_overruled_rule() -> None:
    chain = policy_chain(
        tenant=PolicySet(blocked_tools=["payments.*"], final=True),
        node=PolicySet(require_approval_for=["payments.refund"], approver="*"),
    )
    result = gate_node(_request(policies=chain))
    assert result.outcome is Outcome.FAIL
    assert _types(result.events) == ["NodeGated", "PolicyViolation", "NodeFailed"]
    gated, violation, failed = result.events
    assert isinstance(gated, NodeGated)
    assert (gated.policy_scope, gated.policy_rule, gated.policy_pattern) == (
        "tenant",
        "blocked_tools",
        "payments.*",
    )
    assert gated.overruled == {
        "scope": "node",
        "rule": "require_approval_for",
        "pattern": "payments.refund",
        "decision": "require_approval",
        "approver": "*",
    }
    assert gated.policies == [
        {"scope": "tenant", "digest": chain[0].policy.digest, "final": True},
        {"scope": "node", "digest": chain[1].policy.digest},
    ]
    assert violation == PolicyViolation(
        node_id="refund",
        rule="tool 'payments.refund' matches blocked pattern 'payments.*'",
        decision="blocked",
        policy_scope="tenant",
    )
    assert isinstance(failed, NodeFailed)
    assert failed.error == (
        "policy blocked: tool 'payments.refund' matches blocked pattern 'payments.*' "
        "(final tenant rule: the node rule require_approval_for 'payments.refund' may not "
        "relax it)"
    )
    # deny-overrides keeps the tenant block by itself: nothing to overrule
    strict = gate_node(_request(policies=chain, combining=CombiningMode.DENY_OVERRIDES))
    assert strict.outcome is Outcome.FAIL
    assert isinstance(strict.events[0], NodeGated)
    assert strict.events[0].overruled is None


def test_a_final_tenant_approval_is_asked_of_the_tenant_approver() -> None:
    chain = policy_chain(
        tenant=PolicySet(require_approval_for=["payments.*"], approver="finance-lead", final=True),
        workflow=PolicySet(require_approval_for=["payments.*"], approver="*"),
    )
    result = gate_node(_request(policies=chain))
    assert result.outcome is Outcome.HOLD
    gated, ask = result.events
    assert isinstance(ask, ToolApprovalRequired)
    assert ask.approver == "finance-lead"
    assert isinstance(gated, NodeGated)
    assert gated.policy_scope == "tenant"
    assert isinstance(gated.overruled, dict)
    assert gated.overruled["approver"] == "*"
    assert result.reason == (
        "tenant policy requires approval for 'payments.*' (final tenant rule: the workflow rule "
        "require_approval_for 'payments.*' may not replace its approver 'finance-lead' with '*')"
    )


def test_no_overruled_field_is_recorded_when_nothing_was_overruled() -> None:
    chain = policy_chain(tenant=PolicySet(blocked_tools=["payments.*"], final=True))
    gated = gate_node(_request(policies=chain)).events[0]
    assert isinstance(gated, NodeGated)
    assert gated.overruled is None
    assert "overruled" not in dump(gated)


# ── settle ─────────────────────────────────────────────────────────────────────────────


def test_settle_records_usage_and_resets_the_error_run_on_success() -> None:
    settled = settle_node(
        SettleRequest(
            node_id="summarise",
            budget=BudgetState(consecutive_error_count=2),
            usage=Usage(input_tokens=80, output_tokens=40, cost_usd=0.002, tool_calls=1),
        )
    )
    assert settled.outcome is SettlementOutcome.COMPLETED
    assert settled.budget == BudgetState(
        total_input_tokens=80, total_output_tokens=40, total_cost_usd=0.002, tool_call_count=1
    )
    assert settled.events == (
        UsageRecorded(
            node_id="summarise",
            attempt=0,
            input_tokens=80,
            output_tokens=40,
            cost_usd=0.002,
            tool_calls=1,
        ),
    )


def test_settle_counts_an_error_and_leaves_the_retry_to_the_caller() -> None:
    settled = settle_node(SettleRequest(node_id="n", succeeded=False))
    assert settled.outcome is SettlementOutcome.ERRORED
    assert settled.budget.consecutive_error_count == 1


def test_settle_trip_fails_terminally_and_still_records_the_spend() -> None:
    # Reference §5.5: upstream discarded the tripping node's usage; Charter records it.
    settled = settle_node(
        SettleRequest(
            node_id="draft",
            attempt=1,
            budget=BudgetState(total_input_tokens=600, total_output_tokens=300),
            limits=BudgetLimits(total_tokens=1000),
            usage=Usage(input_tokens=80, output_tokens=40),
        )
    )
    assert settled.outcome is SettlementOutcome.FAILED
    assert settled.budget.total_tokens == 1020
    assert _types(settled.events) == ["UsageRecorded", "TokenBudgetExceeded", "NodeFailed"]
    assert settled.events[1] == TokenBudgetExceeded(
        node_id="draft", kind="total_tokens", limit=1000, current=1020
    )
    assert settled.events[2] == NodeFailed(
        node_id="draft",
        error="token budget exceeded: total_tokens 1020 > 1000",
        attempt=1,
        retryable=False,
    )


@pytest.mark.parametrize(
    ("spent", "usage", "tripped"),
    [(14.9, 0.1, False), (14.9, 0.2, True)],
    ids=["at-limit-ok", "over-limit-trips"],
)
def test_settle_cost_check_is_strict(spent: float, usage: float, tripped: bool) -> None:
    settled = settle_node(
        SettleRequest(
            node_id="n",
            budget=BudgetState(total_cost_usd=spent),
            limits=BudgetLimits(cost_usd=15.0),
            usage=Usage(cost_usd=usage),
        )
    )
    assert (settled.trip is not None) is tripped


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"now": datetime(2026, 11, 21)}, "now: expected a timezone-aware datetime"),
        ({"attempt": -1}, "attempt: expected a non-negative integer"),
        ({"policies": [PolicySet()]}, r"policies\[0\]: expected PolicyLayer, got PolicySet"),
        ({"budget": {"total_input_tokens": 1}}, "budget: expected BudgetState, got dict"),
        ({"approval": "approved"}, "approval: expected an approval status, got str"),
        ({"call": {"a": float("nan")}}, "^call.a: expected a finite number"),
        ({"call": [1, {"b": float("inf")}]}, r"^call\[1\].b: expected a finite number"),
    ],
    ids=[
        "naive-clock",
        "negative-attempt",
        "unscoped-set",
        "dict-budget",
        "string-approval",
        "nan-in-call",
        "inf-deep-in-call",
    ],
)
def test_misbuilt_gate_requests_are_refused_before_any_decision(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(GateInputError, match=message):
        _request(**changes)
