"""Agent autonomy: levels, constraints, the enforcer and its decisions.

`AutonomyEnforcer.check` keeps upstream's order and comparisons (docs/semantics.md §3):

1. circuit breaker, at every level: ``consecutive_errors >= circuit_breaker_threshold`` trips;
2. by level: ``guided`` needs approval for any named tool; ``bounded_autonomous`` escalates on
   the first limit reached, in the order iterations, tool calls, cost, tokens, each with
   ``>=``; ``fully_autonomous`` and ``deterministic`` proceed.

Upstream declares five more constraint fields and never reads them. Charter enforces each
(docs/semantics.md, "Autonomy"):

* ``blocked_tools`` (globs) and ``allowed_tools`` (globs; when non-empty, a tool matching none
  is refused) escalate as ``EscalateLimit`` with limit type ``blocked_tools`` /
  ``allowed_tools``, at every level, right after the circuit breaker;
* ``allowed_delegations`` (agent ids or URIs; when non-empty) refuses a delegation to any
  other agent (limit type ``allowed_delegations``), at every level;
* ``time_budget_secs`` is a fifth bounded limit, checked after the four upstream ones with
  ``>=`` against ``AutonomyContext.elapsed_secs`` (limit type ``time_budget``);
* ``require_approval_for`` (globs) asks for approval of a matching tool, at every level —
  but only after every refusal and limit above, so an approval can never authorise a call
  that a restriction or an exhausted limit refuses.

The full order is therefore: circuit breaker; card refusals; bounded limits; card approval
rules; guided mode's approval of any named tool; proceed.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import assert_never

import attrs

from charter.core import _check
from charter.core.errors import AutonomyError, describe
from charter.core.glob import glob_match

__all__ = [
    "AgentCard",
    "AutonomyConstraints",
    "AutonomyContext",
    "AutonomyDecision",
    "AutonomyEnforcer",
    "AutonomyLevel",
    "EscalateLimit",
    "EscalationTarget",
    "HumanApproval",
    "LimitValue",
    "Proceed",
    "RequireToolApproval",
    "SupervisorAgent",
    "TripCircuitBreaker",
    "constraints_from_dict",
    "parse_escalation_target",
]

#: A limit or counter as recorded in events: a count, an amount, a name or a list of names.
LimitValue = int | float | str | tuple[str, ...]


class AutonomyLevel(enum.Enum):
    """How much an agent may do without a human (upstream's four levels)."""

    DETERMINISTIC = "deterministic"
    GUIDED = "guided"
    BOUNDED_AUTONOMOUS = "bounded_autonomous"
    FULLY_AUTONOMOUS = "fully_autonomous"

    @classmethod
    def parse(cls, value: object, where: str = "autonomy") -> AutonomyLevel:
        if isinstance(value, AutonomyLevel):
            return value
        for level in cls:
            if value == level.value:
                return level
        known = ", ".join(level.value for level in cls)
        raise AutonomyError(where, f"expected one of {known}, got {describe(value)}")


def _level(value: AutonomyLevel | str) -> AutonomyLevel:
    return AutonomyLevel.parse(value, "autonomy_level")


# attrs converters must be named functions for mypy to type `__init__`; one per field.
def _max_iterations(value: int | None) -> int | None:
    return _check.optional_count(value, "max_iterations", AutonomyError)


def _max_tool_calls(value: int | None) -> int | None:
    return _check.optional_count(value, "max_tool_calls", AutonomyError)


def _token_budget(value: int | None) -> int | None:
    return _check.optional_count(value, "token_budget", AutonomyError)


def _cost_budget_usd(value: float | None) -> float | None:
    return _check.optional_amount(value, "cost_budget_usd", AutonomyError)


def _time_budget_secs(value: int | None) -> int | None:
    return _check.optional_count(value, "time_budget_secs", AutonomyError)


def _allowed_tools(value: Iterable[str]) -> tuple[str, ...]:
    return _check.patterns(value, "allowed_tools", AutonomyError)


def _blocked_tools(value: Iterable[str]) -> tuple[str, ...]:
    return _check.patterns(value, "blocked_tools", AutonomyError)


def _allowed_delegations(value: Iterable[str]) -> tuple[str, ...]:
    return _check.patterns(value, "allowed_delegations", AutonomyError, what="agent id")


def _require_approval_for(value: Iterable[str]) -> tuple[str, ...]:
    return _check.patterns(value, "require_approval_for", AutonomyError)


@attrs.frozen(kw_only=True)
class AutonomyConstraints:
    """Upstream's nine constraint fields; every one is enforced (see the module doc)."""

    max_iterations: int | None = attrs.field(default=None, converter=_max_iterations)
    max_tool_calls: int | None = attrs.field(default=None, converter=_max_tool_calls)
    token_budget: int | None = attrs.field(default=None, converter=_token_budget)
    cost_budget_usd: float | None = attrs.field(default=None, converter=_cost_budget_usd)
    allowed_tools: tuple[str, ...] = attrs.field(default=(), converter=_allowed_tools)
    blocked_tools: tuple[str, ...] = attrs.field(default=(), converter=_blocked_tools)
    allowed_delegations: tuple[str, ...] = attrs.field(default=(), converter=_allowed_delegations)
    require_approval_for: tuple[str, ...] = attrs.field(default=(), converter=_require_approval_for)
    time_budget_secs: int | None = attrs.field(default=None, converter=_time_budget_secs)


def _agent_ref(value: str) -> str:
    return _check.text(value, "agent_ref", AutonomyError)


def _constraints(value: AutonomyConstraints | None) -> AutonomyConstraints | None:
    if value is not None and not isinstance(value, AutonomyConstraints):
        raise AutonomyError("constraints", f"expected AutonomyConstraints, got {describe(value)}")
    return value


def _current_iterations(value: int) -> int:
    return _check.count(value, "current_iterations", AutonomyError)


def _current_tool_calls(value: int) -> int:
    return _check.count(value, "current_tool_calls", AutonomyError)


def _current_cost_usd(value: float) -> float:
    return _check.amount(value, "current_cost_usd", AutonomyError)


def _current_tokens(value: int) -> int:
    return _check.count(value, "current_tokens", AutonomyError)


def _consecutive_errors(value: int) -> int:
    return _check.count(value, "consecutive_errors", AutonomyError)


def _circuit_breaker_threshold(value: int) -> int:
    return _check.count(value, "circuit_breaker_threshold", AutonomyError)


def _elapsed_secs(value: float) -> float:
    return _check.amount(value, "elapsed_secs", AutonomyError)


def _delegation_target(value: str | None) -> str | None:
    return _check.optional_text(value, "delegation_target", AutonomyError)


@attrs.frozen(kw_only=True)
class AutonomyContext:
    """What the enforcer sees: the agent, its limits and its counters so far.

    ``elapsed_secs`` (time since the agent's run began, computed by the caller from its clock)
    and ``delegation_target`` (the agent this node hands work to, if any) are Charter's
    additions, needed to enforce ``time_budget_secs`` and ``allowed_delegations``.
    """

    agent_ref: str = attrs.field(default="", converter=_agent_ref)
    autonomy_level: AutonomyLevel = attrs.field(default=AutonomyLevel.GUIDED, converter=_level)
    constraints: AutonomyConstraints | None = attrs.field(default=None, converter=_constraints)
    current_iterations: int = attrs.field(default=0, converter=_current_iterations)
    current_tool_calls: int = attrs.field(default=0, converter=_current_tool_calls)
    current_cost_usd: float = attrs.field(default=0.0, converter=_current_cost_usd)
    current_tokens: int = attrs.field(default=0, converter=_current_tokens)
    consecutive_errors: int = attrs.field(default=0, converter=_consecutive_errors)
    circuit_breaker_threshold: int = attrs.field(default=3, converter=_circuit_breaker_threshold)
    elapsed_secs: float = attrs.field(default=0.0, converter=_elapsed_secs)
    delegation_target: str | None = attrs.field(default=None, converter=_delegation_target)


# ── escalation targets and decisions ───────────────────────────────────────────────────


@attrs.frozen
class HumanApproval:
    """Escalate to a person (string form ``human_approval``)."""

    def as_str(self) -> str:
        return "human_approval"


@attrs.frozen
class SupervisorAgent:
    """Escalate to a supervising agent (string form ``supervisor_agent:<id>``)."""

    agent_id: str

    def as_str(self) -> str:
        return f"supervisor_agent:{self.agent_id}"


EscalationTarget = HumanApproval | SupervisorAgent


def parse_escalation_target(text: str) -> EscalationTarget:
    """The target named by its string form (``human_approval``, ``supervisor_agent:<id>``)."""
    _check.text(text, "escalation_target", AutonomyError)
    if text == "human_approval":
        return HumanApproval()
    if text.startswith("supervisor_agent:"):
        return SupervisorAgent(text.removeprefix("supervisor_agent:"))
    raise AutonomyError(
        "escalation_target",
        f"expected 'human_approval' or 'supervisor_agent:<id>', got {text!r}",
    )


@attrs.frozen
class Proceed:
    """Nothing in the agent's autonomy stops the node."""


@attrs.frozen
class RequireToolApproval:
    """The agent may call ``tool_name`` only with a person's approval."""

    tool_name: str


@attrs.frozen(kw_only=True)
class EscalateLimit:
    """A limit was reached; the node must not run and the case goes to ``escalation_target``."""

    limit_type: str
    limit_value: LimitValue
    actual_value: LimitValue
    escalation_target: EscalationTarget = HumanApproval()


@attrs.frozen(kw_only=True)
class TripCircuitBreaker:
    """Too many consecutive errors; the agent is stopped until someone intervenes."""

    consecutive_errors: int
    threshold: int
    escalation_target: EscalationTarget = HumanApproval()


AutonomyDecision = Proceed | RequireToolApproval | EscalateLimit | TripCircuitBreaker

_PROCEED = Proceed()


@attrs.frozen
class AutonomyEnforcer:
    """Stateless checker of an agent's autonomy (see the module doc for the order)."""

    def check(self, ctx: AutonomyContext, tool_name: str | None = None) -> AutonomyDecision:
        if not isinstance(ctx, AutonomyContext):
            raise AutonomyError("ctx", f"expected an AutonomyContext, got {describe(ctx)}")
        _check.optional_text(tool_name, "tool_name", AutonomyError)
        if ctx.consecutive_errors >= ctx.circuit_breaker_threshold:
            return TripCircuitBreaker(
                consecutive_errors=ctx.consecutive_errors,
                threshold=ctx.circuit_breaker_threshold,
            )
        constraints = ctx.constraints
        # Refusals first, then limits, approvals last: an approval must never be able to
        # authorise a call that a restriction or an exhausted limit refuses.
        if constraints is not None:
            refused = _refusals(ctx, constraints, tool_name)
            if refused is not None:
                return refused
            if ctx.autonomy_level is AutonomyLevel.BOUNDED_AUTONOMOUS:
                reached = _bounded(ctx, constraints)
                if reached is not None:
                    return reached
            if tool_name is not None and any(
                glob_match(pattern, tool_name) for pattern in constraints.require_approval_for
            ):
                return RequireToolApproval(tool_name)
        match ctx.autonomy_level:
            case AutonomyLevel.GUIDED:
                return RequireToolApproval(tool_name) if tool_name is not None else _PROCEED
            case (
                AutonomyLevel.BOUNDED_AUTONOMOUS
                | AutonomyLevel.FULLY_AUTONOMOUS
                | AutonomyLevel.DETERMINISTIC
            ):
                return _PROCEED
            case _:  # pragma: no cover - the converter admits only the four levels
                assert_never(ctx.autonomy_level)


def _refusals(
    ctx: AutonomyContext, constraints: AutonomyConstraints, tool_name: str | None
) -> EscalateLimit | None:
    if tool_name is not None:
        for pattern in constraints.blocked_tools:
            if glob_match(pattern, tool_name):
                return EscalateLimit(
                    limit_type="blocked_tools", limit_value=pattern, actual_value=tool_name
                )
        if constraints.allowed_tools and not any(
            glob_match(pattern, tool_name) for pattern in constraints.allowed_tools
        ):
            return EscalateLimit(
                limit_type="allowed_tools",
                limit_value=constraints.allowed_tools,
                actual_value=tool_name,
            )
    target = ctx.delegation_target
    if (
        target is not None
        and constraints.allowed_delegations
        and target not in constraints.allowed_delegations
    ):
        return EscalateLimit(
            limit_type="allowed_delegations",
            limit_value=constraints.allowed_delegations,
            actual_value=target,
        )
    return None


def _bounded(ctx: AutonomyContext, c: AutonomyConstraints) -> EscalateLimit | None:
    checks: tuple[tuple[str, int | float | None, int | float], ...] = (
        ("max_iterations", c.max_iterations, ctx.current_iterations),
        ("max_tool_calls", c.max_tool_calls, ctx.current_tool_calls),
        ("cost_budget", c.cost_budget_usd, ctx.current_cost_usd),
        ("token_budget", c.token_budget, ctx.current_tokens),
        ("time_budget", c.time_budget_secs, ctx.elapsed_secs),
    )
    for limit_type, limit, actual in checks:
        if limit is not None and actual >= limit:
            return EscalateLimit(limit_type=limit_type, limit_value=limit, actual_value=actual)
    return None


# ── agent cards ────────────────────────────────────────────────────────────────────────


def _uri(value: str) -> str:
    return _check.text(value, "uri", AutonomyError)


def _card_id(value: str) -> str:
    return _check.text(value, "id", AutonomyError)


def _card_name(value: str) -> str:
    return _check.text(value, "name", AutonomyError)


def _card_level(value: AutonomyLevel | str) -> AutonomyLevel:
    return AutonomyLevel.parse(value, "autonomy")


@attrs.frozen(kw_only=True)
class AgentCard:
    """The governance-relevant part of an agent card: who it is and how free it is."""

    uri: str = attrs.field(converter=_uri)
    autonomy: AutonomyLevel = attrs.field(default=AutonomyLevel.GUIDED, converter=_card_level)
    constraints: AutonomyConstraints | None = attrs.field(default=None, converter=_constraints)
    id: str = attrs.field(default="", converter=_card_id)
    name: str = attrs.field(default="", converter=_card_name)

    @classmethod
    def from_dict(cls, data: object, where: str = "agent") -> AgentCard:
        """A card from upstream's JSON shape. Keys upstream's card has that do not bear on
        governance (capabilities, auth, …) are accepted and ignored; any other key is an
        error, so a misspelt constraint cannot silently disable itself."""
        if not isinstance(data, Mapping):
            raise AutonomyError(where, f"expected a mapping, got {describe(data)}")
        ignored = {
            "capabilities", "auth", "latency_class", "cost_class", "reasoning_modes",
            "labels", "description", "version",
        }  # fmt: skip
        for key in data:
            if key not in {"id", "uri", "name", "autonomy", "constraints"} | ignored:
                raise AutonomyError(f"{where}.{key}", "unknown agent card key")
        try:
            constraints = data.get("constraints")
            return cls(
                uri=_check.text(data.get("uri"), f"{where}.uri", AutonomyError),
                id=_check.text(data.get("id", ""), f"{where}.id", AutonomyError),
                name=_check.text(data.get("name", ""), f"{where}.name", AutonomyError),
                autonomy=AutonomyLevel.parse(data.get("autonomy", "guided"), f"{where}.autonomy"),
                constraints=(
                    None
                    if constraints is None
                    else constraints_from_dict(constraints, f"{where}.constraints")
                ),
            )
        except AutonomyError as error:
            if error.where.startswith(where):
                raise
            raise error.within(where) from None


_CONSTRAINT_KEYS = tuple(f.name for f in attrs.fields(AutonomyConstraints))


def constraints_from_dict(data: object, where: str = "constraints") -> AutonomyConstraints:
    """Constraints from upstream's JSON shape; unknown keys and bad values name the field."""
    if not isinstance(data, Mapping):
        raise AutonomyError(where, f"expected a mapping, got {describe(data)}")
    for key in data:
        if key not in _CONSTRAINT_KEYS:
            raise AutonomyError(
                f"{where}.{key}",
                f"unknown constraint (expected one of: {', '.join(_CONSTRAINT_KEYS)})",
            )
    try:
        return AutonomyConstraints(**{str(k): v for k, v in data.items()})
    except AutonomyError as error:
        raise error.within(where) from None
