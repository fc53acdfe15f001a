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
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

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
    NeedsExact,
    canonical_json,
    content_digest,
    evict_oldest,
    fast_text,
    json_text,
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
    PolicySet,
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
    "reference_gate_node",
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


@attrs.frozen(kw_only=True, init=False, weakref_slot=False)  # built through `_twin`
class GateRequest:
    """Everything the gate decides from. ``now`` is the caller's clock reading;
    ``run_started_at`` (for the agent's time budget) is when the run began; ``as_of`` (only
    recorded) is the log position the caller read the budget, approval and state from.

    Every input is checked when the request is built (a wrong type is a `GateInputError`
    naming the field), and the call's canonical text and digest are computed then, once;
    the gate trusts the request and checks nothing again."""

    context: EvaluationContext
    attempt: int = 0
    policies: tuple[PolicyLayer, ...] = ()
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
    rate_limits: tuple[WindowUsage, ...] | None = None

    # The call's canonical text and digest, computed once when the request is built (the
    # check that the call is JSON is the same work); every digest of the gate reuses them.
    _call_text: str = attrs.field(init=False, repr=False, eq=False)
    _call_digest: str = attrs.field(init=False, repr=False, eq=False)

    # Written out rather than generated by attrs: this constructor is on every gate's path,
    # so it checks each input once (the common, valid case first) and sets each slot
    # directly. `attrs.evolve` and the codec build requests through it too.
    def __init__(
        self,
        *,
        context: EvaluationContext,
        attempt: int = 0,
        policies: Iterable[PolicyLayer] = (),
        combining: CombiningMode = CombiningMode.MOST_SPECIFIC,
        agent: AgentCard | None = None,
        circuit_breaker_threshold: int = 3,
        delegation_target: str | None = None,
        budget: BudgetState = _NO_BUDGET,
        limits: BudgetLimits = _NO_LIMITS,
        approval: ApprovalStatus = _NOT_REQUESTED,
        call: JsonValue = None,
        now: datetime,
        run_started_at: datetime | None = None,
        as_of: int | None = None,
        rate_limits: Iterable[WindowUsage] | None = None,
    ) -> None:
        # Misuse is refused here, before any decision, so it can never turn into a decision.
        layers = policies if type(policies) is tuple else _layers(policies)
        if type(context) is not EvaluationContext:
            _expect(context, EvaluationContext, "context")
        if type(attempt) is not int or not 0 <= attempt <= _MAX_COUNT:
            _check.count(attempt, "attempt", GateInputError)
        if as_of is not None and not _is_count(as_of):
            _check.count(as_of, "as_of", GateInputError)
        if (
            type(circuit_breaker_threshold) is not int
            or not 0 <= circuit_breaker_threshold <= _MAX_COUNT
        ):
            _check.count(circuit_breaker_threshold, "circuit_breaker_threshold", GateInputError)
        if delegation_target is not None and type(delegation_target) is not str:
            _check.optional_text(delegation_target, "delegation_target", GateInputError)
        if type(combining) is not CombiningMode:
            _expect(combining, CombiningMode, "combining")
        if type(budget) is not BudgetState:
            _expect(budget, BudgetState, "budget")
        if type(limits) is not BudgetLimits:
            _expect(limits, BudgetLimits, "limits")
        if agent is not None:
            _expect(agent, AgentCard, "agent")
        if type(approval) not in _STATUS_NOTES and not isinstance(
            approval, NotRequested | Pending | Approved | Rejected | Consumed | Expired
        ):
            raise GateInputError(
                "approval", f"expected an approval status, got {describe(approval)}"
            )
        usages = None
        if rate_limits is not None:
            usages = _usages(rate_limits)
            for index, usage in enumerate(usages or ()):
                if type(usage) is not WindowUsage:
                    _expect(usage, WindowUsage, f"rate_limits[{index}]")
        if layers is not _checked_layers[0]:  # a caller holding its chain has it checked once
            for index, layer in enumerate(layers):
                if type(layer) is not PolicyLayer:
                    _expect(layer, PolicyLayer, f"policies[{index}]")
            _checked_layers[0] = layers
        if type(now) is not datetime or now.tzinfo is None:
            _aware(now, "now")
        if run_started_at is not None:
            if type(run_started_at) is not datetime or run_started_at.tzinfo is None:
                _aware(run_started_at, "run_started_at")
        elif agent is not None and _needs_clock(agent):
            raise GateInputError(
                "run_started_at",
                "required: the agent card sets time_budget_secs, which is measured from it",
            )
        if call is None:
            text, digest = "null", _NULL_DIGEST
        else:
            text, digest = _call_digest(call)
        if type(self) is not GateRequest:  # a subclass: slot by slot
            _set_context(self, context)
            _set_attempt(self, attempt)
            _set_policies(self, layers)
            _set_combining(self, combining)
            _set_agent(self, agent)
            _set_threshold(self, circuit_breaker_threshold)
            _set_delegation_target(self, delegation_target)
            _set_budget(self, budget)
            _set_limits(self, limits)
            _set_approval(self, approval)
            _set_call(self, call)
            _set_now(self, now)
            _set_run_started_at(self, run_started_at)
            _set_as_of(self, as_of)
            _set_rate_limits(self, usages)
            _set_call_text(self, text)
            _set_call_digest(self, digest)
            return
        # Every input is checked: the slots are set as a plain object's, then the object is
        # made a `GateRequest` again (`_twin`), equal to one set slot by slot.
        _set_class(self, _REQUEST_TWIN)
        building: Any = self
        building.context = context
        building.attempt = attempt
        building.policies = layers
        building.combining = combining
        building.agent = agent
        building.circuit_breaker_threshold = circuit_breaker_threshold
        building.delegation_target = delegation_target
        building.budget = budget
        building.limits = limits
        building.approval = approval
        building.call = call
        building.now = now
        building.run_started_at = run_started_at
        building.as_of = as_of
        building.rate_limits = usages
        building._call_text = text
        building._call_digest = digest
        building.__class__ = GateRequest

    @property
    def node_id(self) -> str:
        return self.context.node_id


def _slot_setters(cls: type) -> tuple[Callable[[object, object], None], ...]:
    """The setter of each slot of a frozen attrs class, in field order: what its generated
    ``__init__`` does for each field (``object.__setattr__``), without the attribute
    lookup. Only for classes whose fields have no converter or validator."""
    fields = attrs.fields(cls)
    if any(f.converter is not None or f.validator is not None for f in fields):
        raise TypeError(f"{cls.__name__} converts or validates a field")  # pragma: no cover
    return tuple(cls.__dict__[f.name].__set__ for f in fields)


def _twin(cls: type) -> type:
    """A plain class with the same slots as the frozen attrs class ``cls``, for building
    its instances cheaply: set each slot of a twin as an ordinary attribute (the
    interpreter's fast slot store, where a frozen class's ``__setattr__`` refuses and its
    slot setters cost a call each), then assign ``__class__ = cls``. The result is an
    ordinary, frozen ``cls`` equal to the one its constructor builds from the same values
    (property-checked). Only for classes whose fields have no converter or validator and
    that have no ``__weakref__`` slot (with one, CPython refuses the assignment); a class
    the twin cannot stand for is refused here, when the module is imported."""
    fields = attrs.fields(cls)
    if any(f.converter is not None or f.validator is not None for f in fields):
        raise TypeError(f"{cls.__name__} converts or validates a field")  # pragma: no cover
    twin = type(f"_{cls.__name__}Twin", (), {"__slots__": cls.__dict__["__slots__"]})
    probe: Any = _new(twin)
    probe.__class__ = cls  # TypeError now if the layouts differ
    return twin


_new = object.__new__
_set_class: Callable[[object, type], None] = object.__dict__["__class__"].__set__
_REQUEST_TWIN = _twin(GateRequest)

(
    _set_context,
    _set_attempt,
    _set_policies,
    _set_combining,
    _set_agent,
    _set_threshold,
    _set_delegation_target,
    _set_budget,
    _set_limits,
    _set_approval,
    _set_call,
    _set_now,
    _set_run_started_at,
    _set_as_of,
    _set_rate_limits,
    _set_call_text,
    _set_call_digest,
) = _slot_setters(GateRequest)

_NULL_DIGEST = text_digest("null")
_MAX_COUNT = _check.MAX_COUNT
#: The last chain (a tuple, immutable) whose layers were checked to be `PolicyLayer`s.
_checked_layers: list[tuple[PolicyLayer, ...]] = [()]


def _call_digest(call: JsonValue) -> tuple[str, str]:
    """The call's canonical text and its digest; a call that is not JSON is refused naming
    the place (``call.args[2]``) the exact encoder names."""
    try:
        text: str | None = json_text(call)
    except NeedsExact:
        text = None
    try:
        if text is None:
            text = canonical_json(call)  # the exact encoder names what is wrong
        return text, text_digest(text)
    except InvalidInput:
        try:
            canonical_json(call)
        except InvalidInput as error:
            where = error.where
            path = f"call{where}" if where.startswith("[") else child("call", where)
            raise GateInputError(path, error.problem) from None
        raise  # pragma: no cover - the exact encoder refuses whatever the digest does


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


@attrs.frozen(kw_only=True, weakref_slot=False)  # built through `_twin`
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


# ── what policy contributes ────────────────────────────────────────────────────────────


class _PolicyFacts:
    """Everything the gate takes from the policy chain for one node: the verdict, the
    texts its decision gives (a block's reasons, an approval's reason and approver) and the
    policy part of the ``node_gated`` record. A function of the chain's content, the mode
    and the node's names (and, for conditional rules, of the call)."""

    __slots__ = (
        "approval_reason",
        "approver",
        "block_reason",
        "block_rule",
        "block_scope",
        "decision_tag",
        "layers",
        "overruled",
        "pattern",
        "rule",
        "scope",
        "verdict",
    )

    def __init__(self, verdict: PolicyVerdict, layers: tuple[PolicyLayer, ...]) -> None:
        self.verdict = verdict
        scope, rule, decision = verdict.scope, verdict.rule, verdict.decision
        self.decision_tag = _decision_tag(decision)
        self.scope = scope._value_ if scope is not None else None
        self.rule = rule._value_ if rule is not None else None
        self.pattern = verdict.pattern
        self.overruled = _overruled_record(verdict.overruled)
        self.layers = [_layer_record(layer) for layer in layers]
        self.block_rule: str | None = None
        self.block_scope = "unknown"
        self.block_reason: str | None = None
        self.approver: str | None = None
        self.approval_reason: str | None = None
        if type(decision) is Block:
            self.block_rule = decision.reason
            self.block_scope = self.scope if self.scope is not None else "unknown"
            self.block_reason = decision.reason + _overruled_note(verdict)
        elif type(decision) is RequireApproval:
            self.approver = decision.approver
            where = f"{self.scope} policy" if self.scope is not None else "policy"
            self.approval_reason = (
                f"{where} requires approval for '{verdict.pattern}'{verdict.condition_note}"
                f"{_overruled_note(verdict)}"
            )

    def overruled_record(self) -> JsonValue:
        """A copy of the overruled rule's record (each event gets its own JSON values)."""
        overruled = self.overruled
        return None if overruled is None else dict(overruled)

    def layer_records(self) -> list[JsonValue]:
        """A copy of the layers' records, ``[{scope, digest[, final]}]``."""
        return list(map(dict.copy, self.layers))


def _policy_facts(request: GateRequest) -> _PolicyFacts:
    """The policy facts of a request, computed from scratch."""
    verdict = layer_verdict(request.combining, request.context, request.policies, request.call)
    return _PolicyFacts(verdict, request.policies)


#: Policy facts of recent (mode, node names, chain) questions. The key names each layer by
#: its scope and its set's content digest, so equal chains share an entry whatever objects
#: hold them and an entry never outlives its meaning. Chains with conditional rules depend
#: on the call and are never kept. Bounded: the oldest entry goes first.
_FACTS: dict[tuple[object, ...], _PolicyFacts] = {}
_FACTS_MAX = 4096
#: The last chain asked about, with its part of the key (its layers' scopes and digests).
_LAST_CHAIN: tuple[tuple[PolicyLayer, ...], tuple[tuple[str, str], ...]] = ((), ())


def _policy_facts_kept(request: GateRequest) -> _PolicyFacts:
    """`_policy_facts`, remembered per (mode, node kind, tool, model, resolved model, chain)
    when no layer of the chain has a conditional rule."""
    global _LAST_CHAIN
    ctx = request.context
    layers = request.policies
    last = _LAST_CHAIN  # read once: another thread may replace it
    if last[0] is layers:  # a caller holding its chain skips building its part of the key
        chain = last[1]
    else:
        chain = tuple([(layer.scope._value_, layer.policy._digest) for layer in layers])
        _LAST_CHAIN = (layers, chain)
    key = (
        chain,
        request.combining._value_,
        ctx.node_kind_tag,
        ctx.tool_name,
        ctx.model_ref,
        ctx.resolved_model,
    )
    facts = _FACTS.get(key)
    if facts is not None:
        return facts
    facts = _policy_facts(request)
    if not any(_conditional(layer.policy) for layer in layers):
        if len(_FACTS) >= _FACTS_MAX:
            evict_oldest(_FACTS)
        _FACTS[key] = facts
    return facts


def _conditional(policy: PolicySet) -> bool:
    return bool(policy._blocked.conditional or policy._approval.conditional) or bool(
        policy._allow.conditional
    )


# ── building the results ───────────────────────────────────────────────────────────────

_NODE_GATED_TWIN = _twin(NodeGated)
_RESULT_TWIN = _twin(GateResult)


#: The last budget state and limits recorded, with their records: both are frozen, so the
#: same object always has the same record; each event gets its own copy (JSON values in
#: events are plain, mutable dicts). Gates between two settlements share one budget state,
#: and a run keeps its limits.
_LAST_BUDGET: tuple[BudgetState | None, dict[str, JsonValue]] = (None, {})
_LAST_LIMITS: tuple[BudgetLimits | None, dict[str, JsonValue]] = (None, {})


def _budget_record(budget: BudgetState) -> dict[str, JsonValue]:
    global _LAST_BUDGET
    last = _LAST_BUDGET  # read once: another thread may replace it
    if last[0] is budget:
        return last[1].copy()
    record: dict[str, JsonValue] = budget.to_dict()
    _LAST_BUDGET = (budget, record)
    return record.copy()


def _limits_record(limits: BudgetLimits) -> dict[str, JsonValue]:
    global _LAST_LIMITS
    last = _LAST_LIMITS  # read once: another thread may replace it
    if last[0] is limits:
        return last[1].copy()
    record: dict[str, JsonValue] = {
        "total_tokens": limits.total_tokens,
        "input_tokens": limits.input_tokens,
        "output_tokens": limits.output_tokens,
        "cost_usd": limits.cost_usd,
    }
    _LAST_LIMITS = (limits, record)
    return record.copy()


def _gated(
    request: GateRequest,
    facts: _PolicyFacts,
    outcome: Outcome,
    reason: str | None,
    autonomy: AutonomyDecision | None,
    digest: str | None,
    call_digest: str,
) -> NodeGated:
    """The ``node_gated`` record of a decision (docs/semantics.md, "The gate"), its slots
    set directly (the same value `NodeGated(...)` builds: every input is already checked)."""
    card = request.agent
    gated: Any = _new(_NODE_GATED_TWIN)
    gated.node_id = request.context.node_id
    gated.attempt = request.attempt
    gated.outcome = outcome._value_
    gated.reason = reason
    gated.policy_decision = facts.decision_tag
    gated.policy_scope = facts.scope
    gated.policy_rule = facts.rule
    gated.policy_pattern = facts.pattern
    overruled = facts.overruled  # copies: each event gets its own JSON values
    gated.overruled = None if overruled is None else overruled.copy()
    gated.policies = list(map(dict.copy, facts.layers))
    gated.combining = request.combining._value_
    gated.autonomy = _decision_tag(autonomy) if autonomy is not None else None
    if card is None:
        gated.agent = None
        gated.circuit_breaker_threshold = None
        gated.elapsed_secs = None
        gated.delegation_target = None
    else:
        gated.agent = _card_record(card)
        gated.circuit_breaker_threshold = request.circuit_breaker_threshold
        gated.elapsed_secs = _elapsed(request)
        gated.delegation_target = _delegation_target(request)
    budget, limits = request.budget, request.limits
    last_budget, last_limits = _LAST_BUDGET, _LAST_LIMITS  # read once: see `_budget_record`
    gated.budget = last_budget[1].copy() if last_budget[0] is budget else _budget_record(budget)
    gated.limits = last_limits[1].copy() if last_limits[0] is limits else _limits_record(limits)
    gated.approval = _STATUS_NOTES[type(request.approval)]
    gated.call_digest = call_digest
    gated.request_digest = digest
    gated.decided_at = request.now
    gated.as_of = request.as_of
    usages = request.rate_limits
    gated.rate_limits = [usage.record() for usage in usages] if usages else None
    gated.__class__ = NodeGated
    result: NodeGated = gated
    return result


def _gated_reference(
    request: GateRequest,
    facts: _PolicyFacts,
    outcome: Outcome,
    reason: str | None,
    autonomy: AutonomyDecision | None,
    digest: str | None,
    call_digest: str,
) -> NodeGated:
    """`_gated` through the attrs constructor, field by field from the verdict."""
    card = request.agent
    verdict = facts.verdict
    scope, rule = verdict.scope, verdict.rule
    limits = request.limits
    return NodeGated(
        node_id=request.context.node_id,
        attempt=request.attempt,
        outcome=outcome.value,
        reason=reason,
        policy_decision=_decision_tag(verdict.decision),
        policy_scope=scope.value if scope is not None else None,
        policy_rule=rule.value if rule is not None else None,
        policy_pattern=verdict.pattern,
        overruled=_overruled_record(verdict.overruled),
        policies=[_layer_record(layer) for layer in request.policies],
        combining=request.combining.value,
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
        call_digest=call_digest,
        request_digest=digest,
        decided_at=request.now,
        as_of=request.as_of,
        rate_limits=[usage.record() for usage in request.rate_limits or ()] or None,
    )


def _new_result(
    outcome: Outcome,
    reason: str | None,
    events: tuple[EventKind, ...],
    policy: PolicyVerdict,
    autonomy: AutonomyDecision | None,
    trip: BudgetTrip | None,
    digest: str | None,
) -> GateResult:
    building: Any = _new(_RESULT_TWIN)
    building.outcome = outcome
    building.reason = reason
    building.events = events
    building.policy = policy
    building.autonomy = autonomy
    building.budget_trip = trip
    building.request_digest = digest
    building.__class__ = GateResult
    result: GateResult = building
    return result


def _result_reference(
    outcome: Outcome,
    reason: str | None,
    events: tuple[EventKind, ...],
    policy: PolicyVerdict,
    autonomy: AutonomyDecision | None,
    trip: BudgetTrip | None,
    digest: str | None,
) -> GateResult:
    return GateResult(
        outcome=outcome,
        reason=reason,
        events=events,
        policy=policy,
        autonomy=autonomy,
        budget_trip=trip,
        request_digest=digest,
    )


def _check_before(budget: BudgetState, limits: BudgetLimits) -> BudgetTrip | None:
    """`check_before`, answering the common "nothing is reached" without building anything:
    counts compare as integers, and amounts on the budget's 1e-9 USD grid compare as floats
    exactly as their nano-dollar integers do (docs/semantics.md, "Budgets")."""
    total, given_in, given_out, cost = (
        limits.total_tokens,
        limits.input_tokens,
        limits.output_tokens,
        limits.cost_usd,
    )
    spent_in, spent_out = budget.total_input_tokens, budget.total_output_tokens
    if (
        (total is None or spent_in + spent_out < total)
        and (given_in is None or spent_in < given_in)
        and (given_out is None or spent_out < given_out)
        and (cost is None or budget.total_cost_usd < cost)
    ):
        return None
    return check_before(budget, limits)


def _reference_call_digest(request: GateRequest) -> str:
    return text_digest(canonical_json(request.call))


def _reference_request_digest(request: GateRequest, approver: str) -> str:
    ctx = request.context
    return text_digest(
        canonical_json(
            {
                "node_id": ctx.node_id,
                "node_kind": ctx.node_kind_tag,
                "attempt": request.attempt,
                "tool_name": ctx.tool_name,
                "model_ref": ctx.model_ref,
                "resolved_model": ctx.resolved_model,
                "call": request.call,
                "approver": approver,
            }
        )
    )


def _kept_call_digest(request: GateRequest) -> str:
    return request._call_digest


def _kept_request_digest(request: GateRequest, approver: str) -> str:
    return _request_digest(request.context, request.attempt, request._call_text, approver)


class _Path:
    """How the gate computes each part of its answer: `_FAST` (what `gate_node` uses) or
    `_REFERENCE` (every part from scratch, through the attrs constructors and the exact
    canonical encoder). One composition (`_gate`) runs on either, and a property test
    checks that they give equal results (property_tests/test_gate_properties.py)."""

    __slots__ = ("before", "call_digest", "facts", "gated", "request_digest", "result")

    def __init__(
        self,
        facts: Callable[[GateRequest], _PolicyFacts],
        gated: Callable[
            [
                GateRequest,
                _PolicyFacts,
                Outcome,
                str | None,
                AutonomyDecision | None,
                str | None,
                str,
            ],
            NodeGated,
        ],
        result: Callable[
            [
                Outcome,
                str | None,
                tuple[EventKind, ...],
                PolicyVerdict,
                AutonomyDecision | None,
                BudgetTrip | None,
                str | None,
            ],
            GateResult,
        ],
        before: Callable[[BudgetState, BudgetLimits], BudgetTrip | None],
        call_digest: Callable[[GateRequest], str],
        request_digest: Callable[[GateRequest, str], str],
    ) -> None:
        self.facts = facts
        self.gated = gated
        self.result = result
        self.before = before
        self.call_digest = call_digest
        self.request_digest = request_digest


_FAST = _Path(
    _policy_facts_kept,
    _gated,
    _new_result,
    _check_before,
    _kept_call_digest,
    _kept_request_digest,
)
_REFERENCE = _Path(
    _policy_facts,
    _gated_reference,
    _result_reference,
    check_before,
    _reference_call_digest,
    _reference_request_digest,
)


def _result(
    path: _Path,
    request: GateRequest,
    facts: _PolicyFacts,
    outcome: Outcome,
    reason: str | None,
    events: tuple[EventKind, ...] = (),
    autonomy: AutonomyDecision | None = None,
    digest: str | None = None,
    trip: BudgetTrip | None = None,
) -> GateResult:
    gated = path.gated(request, facts, outcome, reason, autonomy, digest, path.call_digest(request))
    return path.result(outcome, reason, (gated, *events), facts.verdict, autonomy, trip, digest)


def _fail(
    path: _Path,
    request: GateRequest,
    facts: _PolicyFacts,
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
        path, request, facts, Outcome.FAIL, reason, (*events, failed), autonomy, digest, trip
    )


def gate_node(request: GateRequest) -> GateResult:
    """Decide whether a node may run now (see the module doc for the order).

    The request checked its inputs when it was built, so nothing is checked again here; the
    call's digest was computed then too, and the request digest (when an approval is
    involved) is computed once, around the call's canonical text. What the policy chain
    says about a node's names is remembered per chain content (never for conditional rules,
    which depend on the call)."""
    return _gate(request, _FAST)


def reference_gate_node(request: GateRequest) -> GateResult:
    """`gate_node` with every part computed from scratch: the policy verdict, every digest
    through the exact canonical encoder, every value through its attrs constructor. Slower,
    and equal to `gate_node` on every request (property-checked): the reference the fast
    path is held to."""
    return _gate(request, _REFERENCE)


def _gate(request: GateRequest, path: _Path) -> GateResult:
    ctx = request.context
    node_id = ctx.node_id
    facts = path.facts(request)
    approver = facts.approver
    approval_reasons: list[str] = []

    # 1. policy
    block_rule = facts.block_rule
    if block_rule is not None:
        violation = PolicyViolation(
            node_id=node_id,
            rule=block_rule,
            decision="blocked",
            policy_scope=facts.block_scope,
        )
        reason = facts.block_reason or block_rule
        return _fail(path, request, facts, reason, f"policy blocked: {reason}", (violation,))
    if facts.approval_reason is not None:
        approval_reasons.append(facts.approval_reason)

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
                    path,
                    request,
                    facts,
                    reason,
                    "circuit breaker tripped",
                    events,
                    autonomy,
                    _bound_digest(path, request, approver),
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
                    path,
                    request,
                    facts,
                    reason,
                    f"autonomy limit: {limit_type}",
                    events,
                    autonomy,
                    _bound_digest(path, request, approver),
                )
            case RequireToolApproval(tool_name=tool):
                if approver is None:
                    approver = ANY_HUMAN
                approval_reasons.append(f"agent {card.uri} needs approval to call '{tool}'")
            case Proceed():
                pass

    # 3. budget, before the node runs
    trip = path.before(request.budget, request.limits)
    if trip is not None:
        return _fail(
            path,
            request,
            facts,
            trip.reason,
            trip.reason,
            (_trip_event(node_id, trip),),
            autonomy,
            _bound_digest(path, request, approver),
            trip,
        )

    # 3b. windowed limits (docs/semantics.md, "Windowed limits")
    if request.rate_limits:
        refusal = limit_refusal(request.rate_limits, node_id)
        if refusal is not None:
            reason, exceeded = refusal
            return _fail(
                path,
                request,
                facts,
                reason,
                reason,
                (exceeded,),
                autonomy,
                _bound_digest(path, request, approver),
            )

    # 4. approvals
    if approver is None:
        return _result(path, request, facts, Outcome.RUN, None, (), autonomy)
    digest = path.request_digest(request, approver)
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
        ask = _ask(request, facts.verdict, approver, approval_reasons, digest)
        both: tuple[EventKind, ...] = (expired, ask)
        return _result(path, request, facts, Outcome.HOLD, reason, both, autonomy, digest)
    if type(status) is Approved and same:
        reason = f"approved by {status.user_id}"
        consumed = ApprovalConsumed(node_id=node_id, request_digest=digest, attempt=request.attempt)
        return _result(path, request, facts, Outcome.RUN, reason, (consumed,), autonomy, digest)
    if type(status) is Rejected and same:
        reason = rejection_reason(status)
        return _fail(path, request, facts, reason, reason, (), autonomy, digest)
    reason = "; ".join(approval_reasons)
    if type(status) is Pending and same:
        return _result(path, request, facts, Outcome.HOLD, reason, (), autonomy, digest)
    if type(status) is not NotRequested:
        reason = f"{reason} (a new request: the earlier one does not cover this call)"
    ask = _ask(request, facts.verdict, approver, approval_reasons, digest)
    return _result(path, request, facts, Outcome.HOLD, reason, (ask,), autonomy, digest)


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


def _bound_digest(path: _Path, request: GateRequest, approver: str | None) -> str | None:
    """The request digest a failing decision records when an approval was involved."""
    if approver is None:
        return None
    return path.request_digest(request, approver)


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
