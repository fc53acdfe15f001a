"""Charter's deliberate divergences from upstream (ARCHITECTURE fixes 1, 2, 6) and bad input."""

from __future__ import annotations

import math
from typing import Any

import pytest

from charter.core import (
    ALLOW,
    AgentCard,
    AutonomyConstraints,
    AutonomyContext,
    AutonomyEnforcer,
    AutonomyError,
    AutonomyLevel,
    Block,
    BudgetError,
    BudgetLimits,
    BudgetState,
    EscalateLimit,
    EvaluationContext,
    InvalidInput,
    PolicyError,
    PolicyEvaluator,
    PolicySet,
    Proceed,
    RequireToolApproval,
    UnknownNodeKind,
    constraints_from_dict,
)
from charter.core.nodes import queue_type_for

# ── fix 1: every acting node kind has a policy name ──


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ({"type": "tool", "tool_ref": "search"}, "search"),
        ({"type": "finalizer", "tool_ref": "notify", "run_on": "always"}, "notify"),
        ({"type": "mcp_tool", "server": "db", "tool": "drop_db"}, "drop_db"),
        ({"type": "python_fn", "module": "etl.jobs", "function": "run"}, "etl.jobs.run"),
        ({"type": "java_fn", "class": "com.acme.Pay", "method": "send"}, "com.acme.Pay.send"),
        ({"type": "agent", "agent_ref": "agents/pay"}, "agents/pay"),
        ({"type": "a2a_task", "remote_agent": "r", "skill": "transfer"}, "transfer"),
        ({"type": "agent_discovery", "skill": "triage"}, "triage"),
        ({"type": "agent_tool", "agent": {"explicit": "jamjet://org/a"}}, "jamjet://org/a"),
        ({"type": "agent_tool", "agent": "jamjet://org/a"}, "jamjet://org/a"),
        ({"type": "agent_tool", "agent": "auto"}, "agent_tool:n1"),
        ({"type": "coordinator", "task": "route"}, "coordinator:n1"),
    ],
    ids=lambda v: v["type"] if isinstance(v, dict) else v,
)
def test_acting_node_kinds_are_named_for_policy(kind: dict[str, object], name: str) -> None:
    ctx = EvaluationContext.from_node_kind("n1", kind)
    assert ctx.tool_name == name
    decision = PolicyEvaluator().evaluate(ctx, [PolicySet(blocked_tools=["*"])])
    assert isinstance(decision, Block)


@pytest.mark.parametrize("tag", ["condition", "parallel", "join", "human_approval", "wait", "eval"])
def test_routing_node_kinds_have_no_policy_name(tag: str) -> None:
    ctx = EvaluationContext.from_node_kind("n1", {"type": tag})
    assert ctx.tool_name is None
    assert ctx.model_ref is None


def test_unknown_node_kind_is_an_error_not_an_allow() -> None:
    with pytest.raises(UnknownNodeKind, match=r"kind\.type: unknown node kind 'teleport'"):
        EvaluationContext.from_node_kind("n1", {"type": "teleport"})


def test_node_kind_missing_its_name_field_is_an_error() -> None:
    with pytest.raises(InvalidInput, match=r"kind\.tool_ref: expected a string, got NoneType"):
        EvaluationContext.from_node_kind("n1", {"type": "tool"})


def test_queue_types_follow_upstream() -> None:
    assert queue_type_for("python_fn") == "python_tool"
    assert queue_type_for("mcp_tool") == "tool"
    assert queue_type_for("memory_retrieval") == "retrieval"


# ── fix 2: allowlists match the resolved model ──


def test_alias_resolving_to_an_unlisted_model_is_blocked() -> None:
    ctx = EvaluationContext.from_node_kind(
        "m",
        {"type": "model", "model_ref": "claude-fast"},
        models={"claude-fast": {"provider": "openai", "model": "gpt-4o"}},
    )
    assert ctx.resolved_model == "openai/gpt-4o"
    decision = PolicyEvaluator().evaluate(ctx, [PolicySet(model_allowlist=["claude-*"])])
    assert isinstance(decision, Block)
    assert "resolved to 'openai/gpt-4o'" in decision.reason


def test_allowlist_may_name_the_provider_qualified_model() -> None:
    ctx = EvaluationContext("m", "model", model_ref="fast", resolved_model="anthropic/claude-x")
    allow = PolicyEvaluator().evaluate(ctx, [PolicySet(model_allowlist=["anthropic/*"])])
    assert allow == ALLOW


# ── fix 6: every autonomy constraint is enforced ──


def _ctx(level: AutonomyLevel = AutonomyLevel.FULLY_AUTONOMOUS, **limits: Any) -> AutonomyContext:
    return AutonomyContext(
        agent_ref="a", autonomy_level=level, constraints=AutonomyConstraints(**limits)
    )


def test_card_blocked_tools_escalate_at_every_level() -> None:
    decision = AutonomyEnforcer().check(_ctx(blocked_tools=["shell.*"]), "shell.exec")
    assert decision == EscalateLimit(
        limit_type="blocked_tools", limit_value="shell.*", actual_value="shell.exec"
    )


def test_card_allowed_tools_refuse_any_other_tool() -> None:
    ctx = _ctx(allowed_tools=["search.*", "read_*"])
    assert AutonomyEnforcer().check(ctx, "search.web") == Proceed()
    decision = AutonomyEnforcer().check(ctx, "write_file")
    assert isinstance(decision, EscalateLimit)
    assert decision.limit_type == "allowed_tools"
    assert decision.limit_value == ("search.*", "read_*")


def test_card_allowed_delegations_refuse_other_agents() -> None:
    ctx = AutonomyContext(
        autonomy_level=AutonomyLevel.FULLY_AUTONOMOUS,
        constraints=AutonomyConstraints(allowed_delegations=["agents/a"]),
        delegation_target="agents/b",
    )
    decision = AutonomyEnforcer().check(ctx)
    assert isinstance(decision, EscalateLimit)
    assert decision.limit_type == "allowed_delegations"


def test_card_require_approval_for_asks_even_a_fully_autonomous_agent() -> None:
    decision = AutonomyEnforcer().check(_ctx(require_approval_for=["pay*"]), "payments.send")
    assert decision == RequireToolApproval("payments.send")


def test_card_blocked_tool_beats_its_approval_rule() -> None:
    ctx = _ctx(blocked_tools=["pay*"], require_approval_for=["pay*"])
    assert isinstance(AutonomyEnforcer().check(ctx, "payments.send"), EscalateLimit)


def test_time_budget_escalates_bounded_agents_at_the_limit() -> None:
    ctx = AutonomyContext(
        autonomy_level=AutonomyLevel.BOUNDED_AUTONOMOUS,
        constraints=AutonomyConstraints(time_budget_secs=30),
        elapsed_secs=30.0,
    )
    assert AutonomyEnforcer().check(ctx) == EscalateLimit(
        limit_type="time_budget", limit_value=30, actual_value=30.0
    )


def test_circuit_breaker_still_comes_first() -> None:
    ctx = AutonomyContext(
        autonomy_level=AutonomyLevel.FULLY_AUTONOMOUS,
        constraints=AutonomyConstraints(blocked_tools=["*"]),
        consecutive_errors=3,
    )
    assert type(AutonomyEnforcer().check(ctx, "x")).__name__ == "TripCircuitBreaker"


# ── bad input: a CharterError naming the field, never an Allow ──


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: PolicySet(blocked_tools="delete_*"), r"blocked_tools: expected a list"),
        (
            lambda: PolicySet(blocked_tools=["ok", 7]),  # type: ignore[list-item]  # on purpose
            r"blocked_tools\[1\]: expected a string",
        ),
        (
            lambda: PolicySet(model_allowlist=[None]),  # type: ignore[list-item]  # on purpose
            r"model_allowlist\[0\]",
        ),
        (lambda: PolicySet.from_dict({"blocked": []}), r"policy\.blocked: unknown policy key"),
        (lambda: PolicySet.from_dict(["x"]), r"policy: expected a mapping"),
    ],
    ids=["bare-string", "non-string-pattern", "none-pattern", "unknown-key", "not-a-mapping"],
)
def test_malformed_policy_sets_raise_policy_error(build: object, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        build()  # type: ignore[operator]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: BudgetState(total_cost_usd=math.nan), r"total_cost_usd: expected a finite"),
        (lambda: BudgetState(total_cost_usd=math.inf), r"total_cost_usd"),
        (lambda: BudgetState(total_input_tokens=-1), r"total_input_tokens: expected a non-neg"),
        (lambda: BudgetState(tool_call_count=True), r"tool_call_count: expected a non-neg"),
        (lambda: BudgetLimits(cost_usd=-0.5), r"cost_usd: expected a finite non-negative"),
        (lambda: BudgetLimits(total_tokens=1.5),  # type: ignore[arg-type]  # on purpose
         r"total_tokens: expected a non-negative int"),
        (lambda: BudgetState().accumulate(cost_usd=math.nan), r"cost_usd"),
        (lambda: BudgetLimits.from_workflow({"total": 5}), r"token_budget\.total: unknown"),
        (
            lambda: BudgetLimits.from_workflow(None, "ten dollars"),
            r"cost_budget_usd: expected a finite non-negative number, got str",
        ),
    ],
    ids=["nan", "inf", "negative", "bool", "negative-limit", "float-tokens", "nan-usage",
         "unknown-token-key", "string-cost"],
)  # fmt: skip
def test_malformed_budgets_raise_budget_error(build: object, message: str) -> None:
    with pytest.raises(BudgetError, match=message):
        build()  # type: ignore[operator]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: AutonomyConstraints(max_iterations=-1), r"max_iterations"),
        (lambda: AutonomyConstraints(cost_budget_usd=math.nan), r"cost_budget_usd"),
        (lambda: AutonomyContext(autonomy_level="reckless"), r"autonomy_level: expected one of"),
        (lambda: constraints_from_dict({"max_iteration": 3}), r"max_iteration: unknown"),
        (
            lambda: AgentCard.from_dict({"uri": "a", "autonomy": "yolo"}),
            r"agent\.autonomy: expected one of deterministic",
        ),
        (
            lambda: AgentCard.from_dict({"uri": "a", "constraints": {"max_tool_calls": "9"}}),
            r"agent\.constraints\.max_tool_calls: expected a non-negative integer, got str",
        ),
        (lambda: AgentCard.from_dict({"uri": "a", "autonomyy": "guided"}), r"unknown agent"),
    ],
    ids=["negative-limit", "nan-cost", "unknown-level", "misspelt-constraint",
         "card-unknown-level", "card-string-count", "card-misspelt-key"],
)  # fmt: skip
def test_malformed_autonomy_input_raises_autonomy_error(build: object, message: str) -> None:
    with pytest.raises(AutonomyError, match=message):
        build()  # type: ignore[operator]


def test_agent_card_from_upstream_json_ignores_non_governance_keys() -> None:
    card = AgentCard.from_dict(
        {
            "id": "1",
            "uri": "agents/research",
            "name": "Research",
            "capabilities": {"skills": []},
            "autonomy": "bounded_autonomous",
            "constraints": {"max_iterations": 10, "cost_budget_usd": 2.0},
            "labels": {},
        }
    )
    assert card.autonomy is AutonomyLevel.BOUNDED_AUTONOMOUS
    assert card.constraints == AutonomyConstraints(max_iterations=10, cost_budget_usd=2.0)
