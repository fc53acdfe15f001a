"""The gate: one pure decision before a node runs, and one pure settlement after.

`gate_node` composes, in this order (docs/semantics.md, "The gate"):

1. **policy** — Block fails the node; RequireApproval marks it as needing approval (final
   layers, a tenant's by default, are never relaxed by more specific ones, and the rule they
   overruled is recorded: docs/semantics.md §2.5);
2. **autonomy** (when an agent card applies) — a circuit-breaker trip or an escalated limit
   fails the node; RequireToolApproval marks it as needing approval;
3. **budget, before** (``>=``) — a spent budget fails the node; then **windowed limits**
   (``>=``) — a reached limit of the tenant's fails the node, naming the limit, its window
   and when it frees up (`charter.core.limits`);
4. **approvals** — a node that needs approval runs only with an unused, unexpired approval
   of this exact request (same digest), is failed if that request was rejected, and is
   otherwise held, raising a new request unless the same one is already pending. An
   approval past its ``expires_at`` is not used: ``approval_expired`` records it and a new
   request is raised (docs/semantics.md §5.2).

Every denial is terminal: the events end with ``node_failed{retryable: false}`` (fix 4), to
be committed in the same transaction as the governance events before it. Every call emits
one ``node_gated`` event first, recording what the decision was computed from.

`settle_node` applies an attempt's usage to the budget, checks it after the fact (``>``) and
returns the new budget, any trip and the events (``usage_recorded`` always, so the ledger
counts the tripping attempt's spend too).

Same inputs, same outputs: nothing here reads a clock, draws randomness or does I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from datetime import datetime

import attrs

from charter.core import _check
from charter.core.approvals import (
    ANY_HUMAN,
    GROUP_PREFIX,
    ApprovalStatus,
    Approved,
    Consumed,
    Expired,
    NotRequested,
    Pending,
    Rejected,
    approval_expired,
    named_groups,
    rejection_reason,
)
from charter.core.autonomy import (
    AgentCard,
    AutonomyContext,
    AutonomyDecision,
    AutonomyEnforcer,
    AutonomyLevel,
    EscalateLimit,
    Proceed,
    RequireToolApproval,
    TripCircuitBreaker,
)
from charter.core.budget import (
    BudgetDimension,
    BudgetLimits,
    BudgetState,
    BudgetTrip,
    Usage,
    check_after,
    check_before,
)
from charter.core.canonical import (
    canonical_json,
    content_digest,
    fast_text,
    string_text,
    text_digest,
)
from charter.core.errors import InvalidInput, child, describe
from charter.core.events import (
    ApprovalConsumed,
    ApprovalExpired,
    AutonomyLimitReached,
    CircuitBreakerTripped,
    CostBudgetExceeded,
    EscalationRequired,
    EventKind,
    JsonValue,
    NodeFailed,
    NodeGated,
    PolicyViolation,
    TokenBudgetExceeded,
    ToolApprovalRequired,
    UsageRecorded,
)
from charter.core.expiry import approval_validity
from charter.core.limits import WindowUsage, limit_refusal
from charter.core.policy import (
    Allow,
    Block,
    CombiningMode,
    EvaluationContext,
    Overruled,
    PolicyLayer,
    PolicyScope,
    PolicyVerdict,
    RequireApproval,
    layer_verdict,
)

__all__ = [
    "GateInputError",
    "GateRequest",
    "GateResult",
    "Outcome",
    "SettleRequest",
    "Settlement",
    "SettlementOutcome",
    "gate_node",
    "request_digest",
    "settle_node",
]


class GateInputError(InvalidInput):
    """A gate or settle request built with a wrong type (misuse of the API)."""


def _layers(value: Iterable[PolicyLayer]) -> tuple[PolicyLayer, ...]:
    if not isinstance(value, list | tuple):
        raise GateInputError("policies", f"expected a list of PolicyLayer, got {describe(value)}")
    return tuple(value)


def _usages(value: Iterable[WindowUsage] | None) -> tuple[WindowUsage, ...] | None:
    # None when empty, so a request without limits encodes exactly as before the field.
    if value is None:
        return None
    if not isinstance(value, list | tuple):
        raise GateInputError(
            "rate_limits", f"expected a list of WindowUsage, got {describe(value)}"
        )
    return tuple(value) or None


# Frozen, hence safe to share as defaults.
_NO_BUDGET = BudgetState()
_NO_LIMITS = BudgetLimits()
_NO_USAGE = Usage()
_NOT_REQUESTED = NotRequested()


class Outcome(enum.Enum):
    """What the worker must do with a node about to run."""

    RUN = "run"
    HOLD = "hold"
    FAIL = "fail"


@attrs.frozen(kw_only=True)
class GateRequest:
    """Everything the gate decides from. ``now`` is the caller's clock reading;
    ``run_started_at`` (for the agent's time budget) is when the run began; ``as_of`` (only
    recorded) is the log position the caller read the budget, approval and state from."""

    context: EvaluationContext
    attempt: int = 0
    policies: tuple[PolicyLayer, ...] = attrs.field(default=(), converter=_layers)
    combining: CombiningMode = CombiningMode.MOST_SPECIFIC
    agent: AgentCard | None = None
    circuit_breaker_threshold: int = 3
    delegation_target: str | None = None
    budget: BudgetState = _NO_BUDGET
    limits: BudgetLimits = _NO_LIMITS
    approval: ApprovalStatus = _NOT_REQUESTED
    call: JsonValue = None
    now: datetime
    run_started_at: datetime | None = None
    as_of: int | None = None
    #: The usage of each of the tenant's windowed limits that matches the node, in its
    #: window at ``now`` (read by the caller: `charter.core.limits`).
    rate_limits: tuple[WindowUsage, ...] | None = attrs.field(default=None, converter=_usages)

    # The call's canonical text and digest, computed once when the request is built (the
    # check that the call is JSON is the same work); every digest of the gate reuses them.
    _call_text: str = attrs.field(init=False, repr=False, eq=False)
    _call_digest: str = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        # Misuse is refused here, before any decision, so it can never turn into a decision.
        # Each check tests the common, valid case first and names the problem otherwise.
        if type(self.context) is not EvaluationContext:
            _expect(self.context, EvaluationContext, "context")
        if not _is_count(self.attempt):
            _check.count(self.attempt, "attempt", GateInputError)
        if self.as_of is not None and not _is_count(self.as_of):
            _check.count(self.as_of, "as_of", GateInputError)
        if not _is_count(self.circuit_breaker_threshold):
            _check.count(
                self.circuit_breaker_threshold, "circuit_breaker_threshold", GateInputError
            )
        if self.delegation_target is not None and type(self.delegation_target) is not str:
            _check.optional_text(self.delegation_target, "delegation_target", GateInputError)
        if type(self.combining) is not CombiningMode:
            _expect(self.combining, CombiningMode, "combining")
        if type(self.budget) is not BudgetState:
            _expect(self.budget, BudgetState, "budget")
        if type(self.limits) is not BudgetLimits:
            _expect(self.limits, BudgetLimits, "limits")
        if self.agent is not None:
            _expect(self.agent, AgentCard, "agent")
        if type(self.approval) not in _STATUS_NOTES and not isinstance(
            self.approval, NotRequested | Pending | Approved | Rejected | Consumed | Expired
        ):
            raise GateInputError(
                "approval", f"expected an approval status, got {describe(self.approval)}"
            )
        for index, usage in enumerate(self.rate_limits or ()):
            if type(usage) is not WindowUsage:
                _expect(usage, WindowUsage, f"rate_limits[{index}]")
        for index, layer in enumerate(self.policies):
            if type(layer) is not PolicyLayer:
                _expect(layer, PolicyLayer, f"policies[{index}]")
        _aware(self.now, "now")
        if self.run_started_at is not None:
            _aware(self.run_started_at, "run_started_at")
        elif _needs_clock(self.agent):
            raise GateInputError(
                "run_started_at",
                "required: the agent card sets time_budget_secs, which is measured from it",
            )
        text = fast_text(self.call)
        try:
            if text is None:
                text = canonical_json(self.call)  # the exact encoder names what is wrong
            digest = text_digest(text)
        except InvalidInput:
            try:
                canonical_json(self.call)
            except InvalidInput as error:
                where = error.where
                path = f"call{where}" if where.startswith("[") else child("call", where)
                raise GateInputError(path, error.problem) from None
            raise  # pragma: no cover - the exact encoder refuses whatever the digest does
        object.__setattr__(self, "_call_text", text)
        object.__setattr__(self, "_call_digest", digest)

    @property
    def node_id(self) -> str:
        return self.context.node_id


def _is_count(value: object) -> bool:
    return type(value) is int and 0 <= value <= _check.MAX_COUNT


def _aware(value: object, where: str) -> None:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise GateInputError(where, f"expected a timezone-aware datetime, got {describe(value)}")


def _needs_clock(card: AgentCard | None) -> bool:
    return (
        card is not None
        and card.autonomy is AutonomyLevel.BOUNDED_AUTONOMOUS
        and card.constraints is not None
        and card.constraints.time_budget_secs is not None
    )


def _expect(value: object, cls: type, where: str) -> None:
    if not isinstance(value, cls):
        raise GateInputError(where, f"expected {cls.__name__}, got {describe(value)}")


@attrs.frozen(kw_only=True)
class GateResult:
    """The gate's outcome, its reason (for hold and fail) and the events to commit."""

    outcome: Outcome
    reason: str | None
    events: tuple[EventKind, ...]
    policy: PolicyVerdict
    autonomy: AutonomyDecision | None = None
    budget_trip: BudgetTrip | None = None
    request_digest: str | None = None


def request_digest(
    ctx: EvaluationContext, attempt: int, call: JsonValue, approver: str = ANY_HUMAN
) -> str:
    """The digest an approval binds to: node, attempt, policy names, call arguments and who
    must approve (so an approval given under one approver rule never satisfies another).

    It is the `content_digest` of ``{node_id, node_kind, attempt, tool_name, model_ref,
    resolved_model, call, approver}``; the gate assembles that canonical text around the
    call's text it already has."""
    text = fast_text(call, 1)
    if (
        text is not None
        and type(attempt) is int
        and -(2**63) <= attempt < 2**63
        and type(approver) is str
        and isinstance(ctx, EvaluationContext)
    ):
        try:
            return _request_digest(ctx, attempt, text, approver)
        except InvalidInput:
            pass  # a lone surrogate somewhere: the exact encoder below says where
    return content_digest(
        {
            "node_id": ctx.node_id,
            "node_kind": ctx.node_kind_tag,
            "attempt": attempt,
            "tool_name": ctx.tool_name,
            "model_ref": ctx.model_ref,
            "resolved_model": ctx.resolved_model,
            "call": call,
            "approver": approver,
        }
    )


def _text(value: str | None) -> str:
    return "null" if value is None else string_text(value)


def _request_digest(ctx: EvaluationContext, attempt: int, call_text: str, approver: str) -> str:
    """`request_digest` from the call's canonical text: the object's canonical text, its keys
    in canonical (sorted) order, each string a checked ``str`` (`EvaluationContext` checks
    its names; the approver comes from a checked policy set or is `ANY_HUMAN`)."""
    return text_digest(
        f'{{"approver":{string_text(approver)},"attempt":{attempt},"call":{call_text},'
        f'"model_ref":{_text(ctx.model_ref)},"node_id":{string_text(ctx.node_id)},'
        f'"node_kind":{string_text(ctx.node_kind_tag)},'
        f'"resolved_model":{_text(ctx.resolved_model)},"tool_name":{_text(ctx.tool_name)}}}'
    )


def _card_record(card: AgentCard) -> dict[str, object]:
    constraints = None
    if card.constraints is not None:
        constraints = content_digest(attrs.asdict(card.constraints))
    return {"uri": card.uri, "autonomy": card.autonomy.value, "constraints_digest": constraints}


def _elapsed(request: GateRequest) -> float:
    if request.run_started_at is None:
        return 0.0
    return max(0.0, (request.now - request.run_started_at).total_seconds())


#: Kinds that hand work to another agent (their target is checked against a card's
#: ``allowed_delegations``).
_DELEGATING = frozenset({"agent", "agent_tool", "a2a_task", "agent_discovery", "coordinator"})


def _delegation_target(request: GateRequest) -> str | None:
    """Whom this node delegates to: the caller's word, else the node's own (its kind's
    target). A delegating node whose target is unknown gets a name no card allows."""
    ctx = request.context
    target = request.delegation_target or ctx.delegation_target
    if target is None and ctx.node_kind_tag in _DELEGATING:
        target = f"{ctx.node_kind_tag}:{ctx.node_id}"
    return target


def _autonomy_context(request: GateRequest, card: AgentCard) -> AutonomyContext:
    budget = request.budget
    return AutonomyContext(
        agent_ref=card.uri,
        autonomy_level=card.autonomy,
        constraints=card.constraints,
        current_iterations=budget.iteration_count,
        current_tool_calls=budget.tool_call_count,
        current_cost_usd=budget.total_cost_usd,
        current_tokens=budget.total_tokens,
        consecutive_errors=budget.consecutive_error_count,
        circuit_breaker_threshold=request.circuit_breaker_threshold,
        elapsed_secs=_elapsed(request),
        delegation_target=_delegation_target(request),
    )


def _autonomy_tool(ctx: EvaluationContext) -> str | None:
    # The agent node itself is not a tool call of the agent; every other named node is.
    return None if ctx.node_kind_tag == "agent" else ctx.tool_name


_DECISION_TAGS: dict[type, str] = {
    Allow: "allow",
    Block: "block",
    RequireApproval: "require_approval",
    Proceed: "proceed",
    RequireToolApproval: "require_tool_approval",
    EscalateLimit: "escalate_limit",
    TripCircuitBreaker: "trip_circuit_breaker",
}


def _decision_tag(decision: object) -> str:
    tag = _DECISION_TAGS.get(type(decision))
    if tag is not None:
        return tag
    for cls, name in _DECISION_TAGS.items():  # a subclass of a decision
        if isinstance(decision, cls):
            return name
    raise TypeError(f"not a decision: {decision!r}")  # pragma: no cover - closed unions


def _layer_record(layer: PolicyLayer) -> dict[str, JsonValue]:
    policy = layer.policy
    record: dict[str, JsonValue] = {"scope": layer.scope._value_, "digest": policy.digest}
    if policy.final:
        record["final"] = True
    return record


def _overruled_record(overruled: Overruled | None) -> JsonValue:
    """``{scope, rule, pattern, decision[, approver]}`` of the rule a final layer overruled."""
    if overruled is None:
        return None
    record: dict[str, JsonValue] = {
        "scope": overruled.scope.value if overruled.scope is not None else None,
        "rule": overruled.rule.value if overruled.rule is not None else None,
        "pattern": overruled.pattern,
        "decision": _decision_tag(overruled.decision),
    }
    if isinstance(overruled.decision, RequireApproval):
        record["approver"] = overruled.decision.approver
    return record


def _overruled_note(verdict: PolicyVerdict) -> str:
    """`` (final tenant rule: …)`` naming the more specific rule a final rule overruled;
    empty when none was."""
    overruled = verdict.overruled
    if overruled is None:
        return ""
    final = f"final {verdict.scope.value} rule" if verdict.scope is not None else "final rule"
    where = overruled.scope.value if overruled.scope is not None else "more specific"
    rule = overruled.rule.value if overruled.rule is not None else "rule"
    pattern = f" '{overruled.pattern}'" if overruled.pattern is not None else ""
    if overruled.condition is not None:
        pattern += f" (when {overruled.condition})"
    decision, now = overruled.decision, verdict.decision
    if isinstance(decision, RequireApproval) and isinstance(now, RequireApproval):
        what = f"may not replace its approver '{now.approver}' with '{decision.approver}'"
    else:
        what = "may not relax it"
    return f" ({final}: the {where} rule {rule}{pattern} {what})"


def _json_limit(value: object) -> JsonValue:
    return list(value) if isinstance(value, tuple) else value


def _trip_event(node_id: str, trip: BudgetTrip) -> EventKind:
    if trip.dimension is BudgetDimension.COST_USD:
        return CostBudgetExceeded(
            node_id=node_id, limit_usd=float(trip.limit), current_usd=float(trip.value)
        )
    return TokenBudgetExceeded(
        node_id=node_id, kind=trip.dimension.value, limit=int(trip.limit), current=int(trip.value)
    )


_STATUS_NOTES: dict[type, str] = {
    NotRequested: "not_requested",
    Pending: "pending",
    Approved: "approved",
    Rejected: "rejected",
    Consumed: "consumed",
    Expired: "expired",
}


def _gated(
    request: GateRequest,
    verdict: PolicyVerdict,
    outcome: Outcome,
    reason: str | None,
    autonomy: AutonomyDecision | None,
    digest: str | None,
) -> NodeGated:
    """The ``node_gated`` record of a decision (docs/semantics.md, "The gate")."""
    card = request.agent
    scope, rule = verdict.scope, verdict.rule
    limits = request.limits
    return NodeGated(
        node_id=request.context.node_id,
        attempt=request.attempt,
        outcome=outcome._value_,
        reason=reason,
        policy_decision=_decision_tag(verdict.decision),
        policy_scope=scope._value_ if scope is not None else None,
        policy_rule=rule._value_ if rule is not None else None,
        policy_pattern=verdict.pattern,
        overruled=_overruled_record(verdict.overruled),
        policies=[_layer_record(layer) for layer in request.policies],
        combining=request.combining._value_,
        autonomy=_decision_tag(autonomy) if autonomy is not None else None,
        agent=_card_record(card) if card is not None else None,
        circuit_breaker_threshold=request.circuit_breaker_threshold if card else None,
        elapsed_secs=_elapsed(request) if card else None,
        delegation_target=_delegation_target(request) if card else None,
        budget=request.budget.to_dict(),
        limits={
            "total_tokens": limits.total_tokens,
            "input_tokens": limits.input_tokens,
            "output_tokens": limits.output_tokens,
            "cost_usd": limits.cost_usd,
        },
        approval=_STATUS_NOTES[type(request.approval)],
        call_digest=request._call_digest,
        request_digest=digest,
        decided_at=request.now,
        as_of=request.as_of,
        rate_limits=[usage.record() for usage in request.rate_limits or ()] or None,
    )


def _result(
    request: GateRequest,
    verdict: PolicyVerdict,
    outcome: Outcome,
    reason: str | None,
    events: tuple[EventKind, ...] = (),
    autonomy: AutonomyDecision | None = None,
    digest: str | None = None,
    trip: BudgetTrip | None = None,
) -> GateResult:
    gated = _gated(request, verdict, outcome, reason, autonomy, digest)
    return GateResult(
        outcome=outcome,
        reason=reason,
        events=(gated, *events),
        policy=verdict,
        autonomy=autonomy,
        budget_trip=trip,
        request_digest=digest,
    )


def _fail(
    request: GateRequest,
    verdict: PolicyVerdict,
    reason: str,
    error: str,
    events: tuple[EventKind, ...] = (),
    autonomy: AutonomyDecision | None = None,
    digest: str | None = None,
    trip: BudgetTrip | None = None,
) -> GateResult:
    failed = NodeFailed(
        node_id=request.context.node_id, error=error, attempt=request.attempt, retryable=False
    )
    return _result(
        request, verdict, Outcome.FAIL, reason, (*events, failed), autonomy, digest, trip
    )


def gate_node(request: GateRequest) -> GateResult:
    """Decide whether a node may run now (see the module doc for the order).

    The request checked its inputs when it was built, so nothing is checked again here; the
    call's digest was computed then too, and the request digest (when an approval is
    involved) is computed once, around the call's canonical text."""
    ctx = request.context
    node_id = ctx.node_id
    verdict = layer_verdict(request.combining, ctx, request.policies, request.call)
    approver: str | None = None
    approval_reasons: list[str] = []

    # 1. policy
    decision = verdict.decision
    if type(decision) is Block:
        scope = verdict.scope._value_ if verdict.scope is not None else "unknown"
        violation = PolicyViolation(
            node_id=node_id, rule=decision.reason, decision="blocked", policy_scope=scope
        )
        reason = decision.reason + _overruled_note(verdict)
        return _fail(request, verdict, reason, f"policy blocked: {reason}", (violation,))
    if type(decision) is RequireApproval:
        approver = decision.approver
        where = f"{verdict.scope._value_} policy" if verdict.scope is not None else "policy"
        approval_reasons.append(
            f"{where} requires approval for '{verdict.pattern}'{verdict.condition_note}"
            f"{_overruled_note(verdict)}"
        )

    # 2. autonomy
    autonomy: AutonomyDecision | None = None
    card = request.agent
    if card is not None:
        autonomy = AutonomyEnforcer().check(_autonomy_context(request, card), _autonomy_tool(ctx))
        if request.budget.circuit_breaker_tripped and not isinstance(autonomy, TripCircuitBreaker):
            # A breaker recorded as tripped stays tripped until someone resets it.
            autonomy = TripCircuitBreaker(
                consecutive_errors=request.budget.consecutive_error_count,
                threshold=request.circuit_breaker_threshold,
            )
        match autonomy:
            case TripCircuitBreaker(consecutive_errors=errors, threshold=threshold):
                events: tuple[EventKind, ...] = (
                    CircuitBreakerTripped(
                        node_id=node_id,
                        agent_ref=card.uri,
                        consecutive_errors=errors,
                        threshold=threshold,
                    ),
                    EscalationRequired(
                        node_id=node_id,
                        agent_ref=card.uri,
                        reason="circuit_breaker",
                        escalation_target=autonomy.escalation_target.as_str(),
                    ),
                )
                reason = (
                    f"circuit breaker tripped: {errors} consecutive errors >= {threshold}"
                    if errors >= threshold
                    else f"circuit breaker tripped: the budget records it as tripped "
                    f"({errors} consecutive errors, threshold {threshold})"
                )
                return _fail(
                    request,
                    verdict,
                    reason,
                    "circuit breaker tripped",
                    events,
                    autonomy,
                    _bound_digest(request, approver),
                )
            case EscalateLimit(limit_type=limit_type, limit_value=limit, actual_value=actual):
                events = (
                    AutonomyLimitReached(
                        node_id=node_id,
                        agent_ref=card.uri,
                        limit_type=limit_type,
                        limit_value=_json_limit(limit),
                        actual_value=_json_limit(actual),
                    ),
                    EscalationRequired(
                        node_id=node_id,
                        agent_ref=card.uri,
                        reason=f"autonomy_limit:{limit_type}",
                        escalation_target=autonomy.escalation_target.as_str(),
                    ),
                )
                reason = f"autonomy limit: {limit_type} (limit {limit!r}, actual {actual!r})"
                return _fail(
                    request,
                    verdict,
                    reason,
                    f"autonomy limit: {limit_type}",
                    events,
                    autonomy,
                    _bound_digest(request, approver),
                )
            case RequireToolApproval(tool_name=tool):
                if approver is None:
                    approver = ANY_HUMAN
                approval_reasons.append(f"agent {card.uri} needs approval to call '{tool}'")
            case Proceed():
                pass

    # 3. budget, before the node runs
    trip = check_before(request.budget, request.limits)
    if trip is not None:
        return _fail(
            request,
            verdict,
            trip.reason,
            trip.reason,
            (_trip_event(node_id, trip),),
            autonomy,
            _bound_digest(request, approver),
            trip,
        )

    # 3b. windowed limits (docs/semantics.md, "Windowed limits")
    if request.rate_limits:
        refusal = limit_refusal(request.rate_limits, node_id)
        if refusal is not None:
            reason, exceeded = refusal
            return _fail(
                request,
                verdict,
                reason,
                reason,
                (exceeded,),
                autonomy,
                _bound_digest(request, approver),
            )

    # 4. approvals
    if approver is None:
        return _result(request, verdict, Outcome.RUN, None, (), autonomy)
    digest = _request_digest(ctx, request.attempt, request._call_text, approver)
    status = request.approval
    same = not isinstance(status, NotRequested) and status.request.request_digest == digest
    if type(status) is Approved and same and approval_expired(status, request.now):
        assert status.expires_at is not None  # approval_expired says it has one
        expired = ApprovalExpired(
            node_id=node_id,
            request_digest=digest,
            attempt=request.attempt,
            user_id=status.user_id,
            expires_at=status.expires_at,
        )
        reason = "; ".join(approval_reasons)
        reason = (
            f"{reason} (a new request: the approval by {status.user_id} expired at "
            f"{status.expires_at.isoformat()})"
        )
        ask = _ask(request, verdict, approver, approval_reasons, digest)
        return _result(request, verdict, Outcome.HOLD, reason, (expired, ask), autonomy, digest)
    if type(status) is Approved and same:
        reason = f"approved by {status.user_id}"
        consumed = ApprovalConsumed(node_id=node_id, request_digest=digest, attempt=request.attempt)
        return _result(request, verdict, Outcome.RUN, reason, (consumed,), autonomy, digest)
    if type(status) is Rejected and same:
        reason = rejection_reason(status)
        return _fail(request, verdict, reason, reason, (), autonomy, digest)
    reason = "; ".join(approval_reasons)
    if type(status) is Pending and same:
        return _result(request, verdict, Outcome.HOLD, reason, (), autonomy, digest)
    if type(status) is not NotRequested:
        reason = f"{reason} (a new request: the earlier one does not cover this call)"
    ask = _ask(request, verdict, approver, approval_reasons, digest)
    return _result(request, verdict, Outcome.HOLD, reason, (ask,), autonomy, digest)


def _ask(
    request: GateRequest,
    verdict: PolicyVerdict,
    approver: str,
    reasons: list[str],
    digest: str,
) -> ToolApprovalRequired:
    """The request for approval the gate raises, with how long an approval of it will
    stay usable (docs/semantics.md §5.2) and, when its approver names groups, who they
    hold now (docs/semantics.md §5)."""
    ctx = request.context
    node_id = ctx.node_id
    context: dict[str, JsonValue] = {
        "node_id": node_id,
        "node_kind": ctx.node_kind_tag,
        "attempt": request.attempt,
        "reasons": reasons,
        "call": request.call,
    }
    if GROUP_PREFIX in approver:
        # Who the groups it names hold now (the tenant's), so the log says who may answer.
        tenant = next((x.policy for x in request.policies if x.scope is PolicyScope.TENANT), None)
        groups = named_groups(approver, tenant.groups if tenant is not None else {})
        context["approver_groups"] = {name: list(users) for name, users in groups.items()}
    return ToolApprovalRequired(
        node_id=node_id,
        tool_name=ctx.tool_name or ctx.model_ref or node_id,
        approver=approver,
        context=context,
        request_digest=digest,
        attempt=request.attempt,
        expires_after_secs=approval_validity(request.policies, verdict, ctx, request.call),
    )


def _bound_digest(request: GateRequest, approver: str | None) -> str | None:
    """The request digest a failing decision records when an approval was involved."""
    if approver is None:
        return None
    return _request_digest(request.context, request.attempt, request._call_text, approver)


# ── after execution ────────────────────────────────────────────────────────────────────


class SettlementOutcome(enum.Enum):
    """How an executed attempt ends."""

    COMPLETED = "completed"  # the executor succeeded and no budget tripped
    ERRORED = "errored"  # the executor failed; retry policy (the caller's) decides what next
    FAILED = "failed"  # a budget tripped: terminal, whatever the executor said


@attrs.frozen(kw_only=True)
class SettleRequest:
    """An executed attempt: its usage, whether the executor succeeded, and the limits."""

    node_id: str
    attempt: int = 0
    budget: BudgetState = _NO_BUDGET
    limits: BudgetLimits = _NO_LIMITS
    usage: Usage = _NO_USAGE
    succeeded: bool = True

    def __attrs_post_init__(self) -> None:
        _check.text(self.node_id, "node_id", GateInputError)
        _check.count(self.attempt, "attempt", GateInputError)
        _expect(self.budget, BudgetState, "budget")
        _expect(self.limits, BudgetLimits, "limits")
        _expect(self.usage, Usage, "usage")
        if not isinstance(self.succeeded, bool):
            raise GateInputError("succeeded", f"expected a bool, got {describe(self.succeeded)}")


@attrs.frozen(kw_only=True)
class Settlement:
    """The new budget, any trip, and the events to commit with the attempt's result."""

    outcome: SettlementOutcome
    budget: BudgetState
    trip: BudgetTrip | None
    events: tuple[EventKind, ...]
    reason: str | None = None


def settle_node(request: SettleRequest) -> Settlement:
    """Apply an attempt's usage and outcome to the budget and check it (``>``)."""
    usage = request.usage
    budget = request.budget.apply(usage)
    budget = budget.record_success() if request.succeeded else budget.record_error()
    recorded = UsageRecorded(
        node_id=request.node_id,
        attempt=request.attempt,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cost_usd=usage.cost_usd,
        tool_calls=usage.tool_calls,
        iterations=usage.iterations,
        succeeded=request.succeeded,
    )
    trip = check_after(budget, request.limits)
    if trip is None:
        outcome = SettlementOutcome.COMPLETED if request.succeeded else SettlementOutcome.ERRORED
        return Settlement(outcome=outcome, budget=budget, trip=None, events=(recorded,))
    exceeded = _trip_event(request.node_id, trip)
    failed = NodeFailed(
        node_id=request.node_id, error=trip.reason, attempt=request.attempt, retryable=False
    )
    return Settlement(
        outcome=SettlementOutcome.FAILED,
        budget=budget,
        trip=trip,
        events=(recorded, exceeded, failed),
        reason=trip.reason,
    )
