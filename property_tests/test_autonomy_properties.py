"""The autonomy enforcer equals its documented order (docs/semantics.md §3)."""

from __future__ import annotations

import re

import attrs
from hypothesis import given
from hypothesis import strategies as st

from charter.core import (
    AutonomyContext,
    AutonomyEnforcer,
    AutonomyLevel,
    EscalateLimit,
    Proceed,
    RequireToolApproval,
    TripCircuitBreaker,
)
from charter.testing.strategies import autonomy_contexts, names


def _glob(pattern: str, value: str) -> bool:
    translated = "".join(
        ".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern
    )
    return re.fullmatch(translated, value, re.DOTALL) is not None


def documented(ctx: AutonomyContext, tool: str | None) -> tuple[str, str | None]:
    """(decision, limit type) by the documented order, written without the enforcer."""
    if ctx.consecutive_errors >= ctx.circuit_breaker_threshold:
        return ("trip", None)
    c = ctx.constraints
    if c is not None:
        if tool is not None:
            if any(_glob(p, tool) for p in c.blocked_tools):
                return ("escalate", "blocked_tools")
            if c.allowed_tools and not any(_glob(p, tool) for p in c.allowed_tools):
                return ("escalate", "allowed_tools")
        target = ctx.delegation_target
        if target is not None and c.allowed_delegations and target not in c.allowed_delegations:
            return ("escalate", "allowed_delegations")
        if ctx.autonomy_level is AutonomyLevel.BOUNDED_AUTONOMOUS:
            for limit_type, limit, value in (
                ("max_iterations", c.max_iterations, ctx.current_iterations),
                ("max_tool_calls", c.max_tool_calls, ctx.current_tool_calls),
                ("cost_budget", c.cost_budget_usd, ctx.current_cost_usd),
                ("token_budget", c.token_budget, ctx.current_tokens),
                ("time_budget", c.time_budget_secs, ctx.elapsed_secs),
            ):
                if limit is not None and value >= limit:
                    return ("escalate", limit_type)
        if tool is not None and any(_glob(p, tool) for p in c.require_approval_for):
            return ("approve", None)
    if ctx.autonomy_level is AutonomyLevel.GUIDED and tool is not None:
        return ("approve", None)
    return ("proceed", None)


@st.composite
def near_limits(draw: st.DrawFn) -> AutonomyContext:
    """Contexts whose counters sit just below, at or just above their limits (where `>=`
    and `>` differ), with the circuit breaker usually closed."""
    ctx = draw(autonomy_contexts())
    c = ctx.constraints
    if c is None:
        return ctx

    def near(limit: float | None, fallback: float) -> float:
        if limit is None:
            return fallback
        return max(0, limit + draw(st.sampled_from((-1, 0, 1))))

    return attrs.evolve(
        ctx,
        autonomy_level=draw(
            st.sampled_from((AutonomyLevel.BOUNDED_AUTONOMOUS, ctx.autonomy_level))
        ),
        current_iterations=int(near(c.max_iterations, ctx.current_iterations)),
        current_tool_calls=int(near(c.max_tool_calls, ctx.current_tool_calls)),
        current_cost_usd=float(near(c.cost_budget_usd, ctx.current_cost_usd)),
        current_tokens=int(near(c.token_budget, ctx.current_tokens)),
        elapsed_secs=float(near(c.time_budget_secs, ctx.elapsed_secs)),
        consecutive_errors=min(ctx.consecutive_errors, max(ctx.circuit_breaker_threshold - 1, 0)),
    )


@given(autonomy_contexts() | near_limits(), st.none() | names())
def test_enforcer_follows_the_documented_order(ctx: AutonomyContext, tool: str | None) -> None:
    decision = AutonomyEnforcer().check(ctx, tool)
    kind, limit_type = documented(ctx, tool)
    match decision:
        case TripCircuitBreaker():
            assert kind == "trip"
        case EscalateLimit():
            assert (kind, limit_type) == ("escalate", decision.limit_type)
        case RequireToolApproval():
            assert kind == "approve"
            assert decision.tool_name == tool
        case Proceed():
            assert kind == "proceed"


@given(autonomy_contexts() | near_limits(), names())
def test_an_approval_rule_never_hides_a_refusal(ctx: AutonomyContext, tool: str) -> None:
    # Whatever the card asks approval for, a call it refuses stays refused.
    decision = AutonomyEnforcer().check(ctx, tool)
    if documented(ctx, tool)[0] in ("trip", "escalate"):
        assert not isinstance(decision, RequireToolApproval | Proceed)
