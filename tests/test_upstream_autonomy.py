"""Upstream JamJet autonomy tests, ported (reference §4.4 and §9).

Sources ported: ``policy/src/autonomy.rs`` unit tests and
``policy/tests/trading_agent_autonomy.rs``. Charter keeps upstream's check order and ``>=``
comparisons; the constraint fields upstream never reads are not exercised here (their
values in these fixtures never trigger them: no tool lists, no delegation, no elapsed time).
"""

from __future__ import annotations

import pytest

from charter.core import (
    AutonomyConstraints,
    AutonomyContext,
    AutonomyEnforcer,
    AutonomyLevel,
    EscalateLimit,
    HumanApproval,
    Proceed,
    RequireToolApproval,
    TripCircuitBreaker,
)

ENFORCER = AutonomyEnforcer()


# ── policy/src/autonomy.rs unit tests ───────────────────────────────────────────────────


def _bounded_ctx(iterations: int, cost: float, tokens: int) -> AutonomyContext:
    return AutonomyContext(
        agent_ref="test-agent",
        autonomy_level=AutonomyLevel.BOUNDED_AUTONOMOUS,
        constraints=AutonomyConstraints(
            max_iterations=5, max_tool_calls=10, token_budget=1000, cost_budget_usd=1.0
        ),
        current_iterations=iterations,
        current_cost_usd=cost,
        current_tokens=tokens,
        consecutive_errors=0,
        circuit_breaker_threshold=3,
    )


def test_guided_requires_approval_for_tool() -> None:
    ctx = AutonomyContext(agent_ref="a", autonomy_level=AutonomyLevel.GUIDED)
    assert ENFORCER.check(ctx, "search") == RequireToolApproval("search")


def test_bounded_under_limits_proceeds() -> None:
    assert ENFORCER.check(_bounded_ctx(2, 0.5, 500), None) == Proceed()


def test_bounded_iteration_limit_escalates() -> None:
    assert ENFORCER.check(_bounded_ctx(5, 0.0, 0), None) == EscalateLimit(
        limit_type="max_iterations",
        limit_value=5,
        actual_value=5,
        escalation_target=HumanApproval(),
    )


def test_bounded_cost_limit_escalates() -> None:
    assert ENFORCER.check(_bounded_ctx(0, 1.5, 0), None) == EscalateLimit(
        limit_type="cost_budget",
        limit_value=1.0,
        actual_value=1.5,
        escalation_target=HumanApproval(),
    )


def test_circuit_breaker_fires_at_threshold() -> None:
    ctx = AutonomyContext(
        agent_ref="a",
        autonomy_level=AutonomyLevel.FULLY_AUTONOMOUS,
        consecutive_errors=3,
        circuit_breaker_threshold=3,
    )
    assert ENFORCER.check(ctx, None) == TripCircuitBreaker(
        consecutive_errors=3, threshold=3, escalation_target=HumanApproval()
    )


def test_fully_autonomous_below_cb_threshold_proceeds() -> None:
    ctx = AutonomyContext(
        agent_ref="a",
        autonomy_level=AutonomyLevel.FULLY_AUTONOMOUS,
        consecutive_errors=2,
        circuit_breaker_threshold=3,
    )
    assert ENFORCER.check(ctx, None) == Proceed()


# ── policy/tests/trading_agent_autonomy.rs ──────────────────────────────────────────────


def _research_agent(
    iterations: int, cost: float, tokens: int, consecutive_errors: int
) -> AutonomyContext:
    return AutonomyContext(
        agent_ref="quant-research-v2",
        autonomy_level=AutonomyLevel.BOUNDED_AUTONOMOUS,
        constraints=AutonomyConstraints(
            max_iterations=10,
            max_tool_calls=50,
            token_budget=100_000,
            cost_budget_usd=2.0,
            time_budget_secs=300,
        ),
        current_iterations=iterations,
        current_tool_calls=0,
        current_cost_usd=cost,
        current_tokens=tokens,
        consecutive_errors=consecutive_errors,
        circuit_breaker_threshold=3,
    )


def _execution_agent(consecutive_errors: int) -> AutonomyContext:
    return AutonomyContext(
        agent_ref="trade-executor-v1",
        autonomy_level=AutonomyLevel.GUIDED,
        constraints=None,
        consecutive_errors=consecutive_errors,
        circuit_breaker_threshold=3,
    )


def test_research_agent_within_limits_proceeds() -> None:
    assert ENFORCER.check(_research_agent(3, 0.80, 40_000, 0), None) == Proceed()


def test_research_agent_iteration_limit_escalates() -> None:
    decision = ENFORCER.check(_research_agent(10, 1.50, 80_000, 0), None)
    assert decision == EscalateLimit(limit_type="max_iterations", limit_value=10, actual_value=10)


def test_research_agent_cost_budget_escalates() -> None:
    decision = ENFORCER.check(_research_agent(5, 2.10, 95_000, 0), None)
    assert decision == EscalateLimit(limit_type="cost_budget", limit_value=2.0, actual_value=2.10)


def test_research_agent_token_budget_escalates() -> None:
    decision = ENFORCER.check(_research_agent(4, 0.50, 100_000, 0), None)
    assert decision == EscalateLimit(
        limit_type="token_budget", limit_value=100_000, actual_value=100_000
    )


def test_execution_agent_guided_mode_requires_approval() -> None:
    decision = ENFORCER.check(_execution_agent(0), "submit_market_order")
    assert decision == RequireToolApproval("submit_market_order")


def test_execution_agent_cancel_also_requires_approval() -> None:
    assert ENFORCER.check(_execution_agent(0), "cancel_order") == RequireToolApproval(
        "cancel_order"
    )


@pytest.mark.parametrize("errors", [1, 2])
def test_circuit_breaker_does_not_trip_before_threshold(errors: int) -> None:
    # First half of upstream's `circuit_breaker_trips_after_consecutive_errors`.
    assert ENFORCER.check(_execution_agent(errors), None) == Proceed()


def test_circuit_breaker_trips_after_consecutive_errors() -> None:
    assert ENFORCER.check(_execution_agent(3), None) == TripCircuitBreaker(
        consecutive_errors=3, threshold=3, escalation_target=HumanApproval()
    )


def test_circuit_breaker_overrides_bounded_autonomous_limits() -> None:
    decision = ENFORCER.check(_research_agent(2, 0.50, 20_000, 3), None)
    assert decision == TripCircuitBreaker(consecutive_errors=3, threshold=3)


def test_fully_autonomous_agent_only_has_circuit_breaker() -> None:
    ctx = AutonomyContext(
        agent_ref="market-data-ingest-v1",
        autonomy_level=AutonomyLevel.FULLY_AUTONOMOUS,
        constraints=AutonomyConstraints(
            max_iterations=1000,
            max_tool_calls=10_000,
            token_budget=1_000_000,
            cost_budget_usd=100.0,
        ),
        current_iterations=500,
        current_tool_calls=5000,
        current_cost_usd=50.0,
        current_tokens=500_000,
        consecutive_errors=0,
        circuit_breaker_threshold=3,
    )
    assert ENFORCER.check(ctx, None) == Proceed()


# ── reference §4.4 examples and gaps upstream leaves untested (§9 note) ─────────────────


def test_guided_without_tool_name_proceeds() -> None:
    ctx = AutonomyContext(agent_ref="a", autonomy_level=AutonomyLevel.GUIDED)
    assert ENFORCER.check(ctx, None) == Proceed()


def test_bounded_earlier_check_wins_iterations_before_cost() -> None:
    ctx = AutonomyContext(
        autonomy_level=AutonomyLevel.BOUNDED_AUTONOMOUS,
        constraints=AutonomyConstraints(max_iterations=5, cost_budget_usd=2.0),
        current_iterations=5,
        current_cost_usd=2.10,
    )
    assert ENFORCER.check(ctx, None) == EscalateLimit(
        limit_type="max_iterations", limit_value=5, actual_value=5
    )


def test_bounded_tool_call_limit_escalates() -> None:
    ctx = AutonomyContext(
        autonomy_level=AutonomyLevel.BOUNDED_AUTONOMOUS,
        constraints=AutonomyConstraints(max_tool_calls=50),
        current_tool_calls=50,
    )
    assert ENFORCER.check(ctx, None) == EscalateLimit(
        limit_type="max_tool_calls", limit_value=50, actual_value=50
    )


def test_bounded_without_constraints_proceeds() -> None:
    ctx = AutonomyContext(autonomy_level=AutonomyLevel.BOUNDED_AUTONOMOUS, current_iterations=999)
    assert ENFORCER.check(ctx, None) == Proceed()


def test_deterministic_proceeds_past_bounded_limits() -> None:
    ctx = AutonomyContext(
        autonomy_level=AutonomyLevel.DETERMINISTIC,
        constraints=AutonomyConstraints(max_iterations=1),
        current_iterations=5,
    )
    assert ENFORCER.check(ctx, None) == Proceed()


def test_circuit_breaker_threshold_zero_always_trips() -> None:
    ctx = AutonomyContext(
        autonomy_level=AutonomyLevel.FULLY_AUTONOMOUS, circuit_breaker_threshold=0
    )
    assert ENFORCER.check(ctx, None) == TripCircuitBreaker(consecutive_errors=0, threshold=0)
