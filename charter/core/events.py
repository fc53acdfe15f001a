"""Events: the `Event` envelope and every event kind, as frozen attrs classes.

Kinds and field names are upstream's (JamJet's event log; docs/semantics.md §7), so the
JSON form (``"type": "<snake_case>"`` plus the fields; optional fields omitted when
``None``) stays compatible.
Charter adds a few fields and kinds its fixes need; each is optional or new, so an upstream
reader of a kind it knows is unaffected:

* ``node_parked``, ``segment_boundary`` (upstream has them outside the seed);
* ``node_completed.idempotency_key`` (upstream's later versions);
* ``tool_approval_required.request_digest`` / ``.attempt`` and
  ``approval_received.request_digest``: an approval binds to one exact request (fix 7);
* ``approval_consumed``: an approval is single-use;
* ``approval_expired``, ``approval_received.expires_at`` and
  ``tool_approval_required.expires_after_secs``: an approval stops counting after a while;
* ``node_gated``: every gate decision, with what it saw, so audits can recompute it;
* ``usage_recorded``: what one settled attempt consumed, so the budget ledger is the sum of
  recorded usage, including the usage of the attempt that tripped a budget (fix 5);
* ``circuit_breaker_opened`` / ``_half_opened`` / ``_closed`` / ``_counted``: the transitions
  and counter changes of a `charter.core.breaker.CircuitBreaker` (the worker pool's, one per
  worker), so its state can be rebuilt from the log. Upstream's ``circuit_breaker_tripped``
  keeps its meaning: an agent's consecutive-error breaker tripped at the gate.

JSON values (outputs, state patches, contexts) are typed `JsonValue` and must be plain JSON:
dicts with string keys, lists, strings, finite numbers, booleans and ``None``.
"""

from __future__ import annotations

import enum
import typing
from datetime import datetime
from typing import Any, Final

import attrs

__all__ = [
    "EVENT_KINDS",
    "AgentToolCompleted",
    "AgentToolFailed",
    "AgentToolInvoked",
    "AgentToolProgress",
    "AgentToolTerminated",
    "AgentToolTurn",
    "ApprovalConsumed",
    "ApprovalDecision",
    "ApprovalExpired",
    "ApprovalReceived",
    "AutonomyLimitReached",
    "BudgetExceeded",
    "ChildWorkflowCompleted",
    "ChildWorkflowFailed",
    "ChildWorkflowStarted",
    "CircuitBreakerClosed",
    "CircuitBreakerCounted",
    "CircuitBreakerHalfOpened",
    "CircuitBreakerOpened",
    "CircuitBreakerTripped",
    "CoordinatorDecision",
    "CoordinatorDiscovery",
    "CoordinatorScoring",
    "CostBudgetExceeded",
    "CriticVerdict",
    "EscalationRequired",
    "Event",
    "EventKind",
    "ExternalEventReceived",
    "InterruptRaised",
    "IterationCompleted",
    "IterationStarted",
    "JsonValue",
    "LimitCharged",
    "NodeCancelled",
    "NodeCompleted",
    "NodeFailed",
    "NodeGated",
    "NodeParked",
    "NodeScheduled",
    "NodeSkipped",
    "NodeStarted",
    "OutcomeResolved",
    "OutcomeUnknown",
    "PlanGenerated",
    "PolicyViolation",
    "ProvenanceMetadata",
    "RateLimitExceeded",
    "RetryScheduled",
    "SegmentBoundary",
    "StrategyCompleted",
    "StrategyLimitHit",
    "StrategyStarted",
    "TimerCreated",
    "TimerFired",
    "TokenBudgetExceeded",
    "ToolApprovalRequired",
    "ToolCalled",
    "UsageRecorded",
    "WorkflowCancelled",
    "WorkflowCompleted",
    "WorkflowFailed",
    "WorkflowStarted",
    "event_type",
    "type_tag",
]

#: A JSON value (object, array, string, number, boolean or null).
JsonValue = Any


class ApprovalDecision(enum.Enum):
    """A person's answer to an approval request."""

    APPROVED = "approved"
    REJECTED = "rejected"


@attrs.frozen(kw_only=True)
class ProvenanceMetadata:
    """Where a node's output came from (upstream's research traceability record)."""

    model_id: str | None = None
    model_version: str | None = None
    confidence: float | None = None
    verified: bool = False
    source: str | None = None
    trust_domain: str | None = None
    evidence_refs: tuple[str, ...] = ()


# ── workflow lifecycle ─────────────────────────────────────────────────────────────────


@attrs.frozen(kw_only=True)
class WorkflowStarted:
    workflow_id: str
    workflow_version: str
    initial_input: JsonValue


@attrs.frozen
class WorkflowCompleted:
    final_state: JsonValue


@attrs.frozen
class WorkflowFailed:
    error: str


@attrs.frozen
class WorkflowCancelled:
    reason: str | None = None


@attrs.frozen(kw_only=True)
class SegmentBoundary:
    segment_number: int
    next_execution_id: str


# ── node lifecycle ─────────────────────────────────────────────────────────────────────


@attrs.frozen
class NodeScheduled:
    node_id: str
    queue_type: str


@attrs.frozen(kw_only=True)
class NodeStarted:
    node_id: str
    worker_id: str
    attempt: int


@attrs.frozen(kw_only=True)
class NodeCompleted:
    node_id: str
    output: JsonValue
    state_patch: JsonValue
    duration_ms: int
    gen_ai_system: str | None = None
    gen_ai_model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    finish_reason: str | None = None
    cost_usd: float | None = None
    provenance: ProvenanceMetadata | None = None
    idempotency_key: str | None = None


@attrs.frozen(kw_only=True)
class NodeFailed:
    node_id: str
    error: str
    attempt: int
    retryable: bool


@attrs.frozen
class NodeSkipped:
    node_id: str
    reason: str


@attrs.frozen
class NodeCancelled:
    node_id: str


@attrs.frozen(kw_only=True)
class NodeParked:
    node_id: str
    attempt: int
    retry_after: datetime


@attrs.frozen(kw_only=True)
class RetryScheduled:
    node_id: str
    attempt: int
    delay_ms: int


# ── human approval / interrupt ─────────────────────────────────────────────────────────


@attrs.frozen(kw_only=True)
class InterruptRaised:
    node_id: str
    reason: str
    state_for_review: JsonValue


@attrs.frozen(kw_only=True)
class ApprovalReceived:
    node_id: str
    user_id: str
    decision: ApprovalDecision
    comment: str | None = None
    state_patch: JsonValue = None
    #: Charter: the digest of the request this decision answers (binds it to that request).
    request_digest: str | None = None
    #: Charter, signed answers (docs/semantics.md §5): the attempt answered, when the answer
    #: was given (the statement's time), the digest of the tenant policy in force, the
    #: signer's public key and the signature over the canonical statement.
    attempt: int | None = None
    decided_at: str | None = None
    policy_digest: str | None = None
    key: str | None = None
    signature: str | None = None
    #: Charter: the operating-system account that recorded the answer (``{user, uid,
    #: host}``): evidence of who typed it, not proof of who approved.
    recorded_by: JsonValue = None
    #: Charter, approval expiry (docs/semantics.md §5.2): when an approval stops counting,
    #: fixed when it is recorded (the event's time plus the request's
    #: ``expires_after_secs``); ``None``: it never expires. Rejections carry none.
    expires_at: datetime | None = None


@attrs.frozen(kw_only=True)
class OutcomeUnknown:
    """Charter: a non-idempotent node's earlier attempt may or may not have happened (its
    worker stopped mid-call and no result was recorded), so it is not fired again: the node
    waits for a person to say what happened (`OutcomeResolved`)."""

    node_id: str
    attempt: int
    idempotency_key: str
    reason: str


@attrs.frozen(kw_only=True)
class OutcomeResolved:
    """Charter: a person's answer about an unknown outcome: ``resolution`` is ``succeeded``
    (the node completes with ``output``), ``failed`` (it fails with ``reason``) or
    ``retry`` (it runs once more). Authorised and signed like an approval (the statement's
    ``decision`` is the resolution)."""

    node_id: str
    attempt: int
    resolution: str
    user_id: str
    output: JsonValue = None
    reason: str | None = None
    comment: str | None = None
    decided_at: str | None = None
    policy_digest: str | None = None
    key: str | None = None
    signature: str | None = None
    recorded_by: JsonValue = None


@attrs.frozen(kw_only=True)
class ToolApprovalRequired:
    node_id: str
    tool_name: str
    approver: str
    context: JsonValue
    #: Charter: digest of (node, attempt, names, call arguments) — what an approval binds to.
    request_digest: str | None = None
    #: Charter: the attempt the request was raised for.
    attempt: int | None = None
    #: Charter, approval expiry (docs/semantics.md §5.2): how long an approval of this
    #: request stays usable once recorded, from the policy in force when it was raised
    #: (``None``: no expiry).
    expires_after_secs: float | None = None


@attrs.frozen(kw_only=True)
class ApprovalConsumed:
    """Charter: an approval was used to run its request; it cannot be used again."""

    node_id: str
    request_digest: str
    attempt: int


@attrs.frozen(kw_only=True)
class ApprovalExpired:
    """Charter: the gate found an approval of this request past its ``expires_at`` and did
    not use it; the node is held anew (a fresh ``tool_approval_required`` follows in the
    same commit). ``user_id`` is who had approved."""

    node_id: str
    request_digest: str
    attempt: int
    user_id: str
    expires_at: datetime


# ── timers, external events, child workflows ───────────────────────────────────────────


@attrs.frozen(kw_only=True)
class TimerCreated:
    node_id: str
    fire_at: datetime
    correlation_key: str | None = None


@attrs.frozen
class TimerFired:
    node_id: str
    correlation_key: str | None = None


@attrs.frozen
class ExternalEventReceived:
    correlation_key: str
    payload: JsonValue


@attrs.frozen(kw_only=True)
class ChildWorkflowStarted:
    node_id: str
    child_execution_id: str
    child_workflow_id: str


@attrs.frozen(kw_only=True)
class ChildWorkflowCompleted:
    node_id: str
    child_execution_id: str
    result: JsonValue


@attrs.frozen(kw_only=True)
class ChildWorkflowFailed:
    node_id: str
    child_execution_id: str
    error: str


# ── budget / autonomy / policy ─────────────────────────────────────────────────────────


@attrs.frozen(kw_only=True)
class BudgetExceeded:
    node_id: str
    kind: str
    limit: int
    current: int


@attrs.frozen(kw_only=True)
class TokenBudgetExceeded:
    node_id: str
    kind: str  # "input_tokens" | "output_tokens" | "total_tokens"
    limit: int
    current: int


@attrs.frozen(kw_only=True)
class CostBudgetExceeded:
    node_id: str
    limit_usd: float
    current_usd: float


@attrs.frozen(kw_only=True)
class AutonomyLimitReached:
    node_id: str
    agent_ref: str
    limit_type: str
    limit_value: JsonValue
    actual_value: JsonValue


@attrs.frozen(kw_only=True)
class CircuitBreakerTripped:
    node_id: str
    agent_ref: str
    consecutive_errors: int
    threshold: int


# ── circuit breakers (Charter) ─────────────────────────────────────────────────────────
#
# ``breaker`` names the breaker (the pool's are named after their workers); ``at`` is the
# moment of the change in seconds on the breaker's own clock (the pool's is monotonic), the
# ``now`` its caller passed. Each event carries the values it sets, so replaying a breaker's
# events in order rebuilds its state exactly (`CircuitBreaker.rebuild`).


@attrs.frozen(kw_only=True)
class CircuitBreakerOpened:
    """Charter: a breaker opened after ``failures`` consecutive failures (1 when a half-open
    trial failed); it refuses calls until ``retry_at``. Its counters restart at zero."""

    breaker: str
    at: float
    failures: int
    retry_at: float


@attrs.frozen(kw_only=True)
class CircuitBreakerHalfOpened:
    """Charter: an open breaker's reset timeout ran out (or it was expedited): a bounded
    number of trial calls may go through. Its counters restart at zero."""

    breaker: str
    at: float


@attrs.frozen(kw_only=True)
class CircuitBreakerClosed:
    """Charter: ``successes`` trial calls succeeded; the breaker lets every call through
    again. Its counters restart at zero."""

    breaker: str
    at: float
    successes: int


@attrs.frozen(kw_only=True)
class CircuitBreakerCounted:
    """Charter: a breaker's counters changed without a transition (a failure counted or
    forgiven while closed, a trial admitted, succeeded or released while half-open); the
    fields are the new values."""

    breaker: str
    at: float
    failures: int
    successes: int
    trials: int


@attrs.frozen(kw_only=True)
class EscalationRequired:
    node_id: str
    agent_ref: str
    reason: str  # "circuit_breaker" | "autonomy_limit:<type>" | "budget_exceeded"
    escalation_target: str  # "supervisor_agent:<id>" | "human_approval"


@attrs.frozen(kw_only=True)
class PolicyViolation:
    node_id: str
    rule: str
    decision: str  # "blocked" | "require_approval"
    policy_scope: str  # "tenant" | "workflow" | "node" | "unknown"


# No ``__weakref__`` slot: the gate builds each one through a plain class of the same slots
# and then makes it a `NodeGated` (charter.core.gate, `_twin`), which a weakref slot forbids.
@attrs.frozen(kw_only=True, weakref_slot=False)
class NodeGated:
    """Charter: one gate decision and every input it was computed from.

    ``outcome`` is ``run`` | ``hold`` | ``fail``. The policy part names the deciding
    decision, scope, rule and pattern, and ``policies`` lists each layer consulted in chain
    order as ``{scope, digest}`` (plus ``final: true`` for a final layer); ``combining`` is
    the mode. ``overruled`` (omitted when none) is the more specific rule a final layer's rule
    decided against: ``{scope, rule, pattern, decision}`` (and ``approver`` when that rule
    asked for approval) — what the chain would have decided had no layer been final
    (docs/semantics.md §2.5). When an agent card applied:
    ``autonomy`` (the decision's tag), ``agent`` (``{uri, autonomy, constraints_digest}``),
    ``circuit_breaker_threshold``, ``elapsed_secs`` and ``delegation_target``. Always:
    ``budget`` (the counters seen), ``limits``, ``approval`` (the node's approval status
    going in), ``call_digest`` (of the call's arguments), ``request_digest`` (when approval
    was involved), ``decided_at`` (the clock value given) and ``as_of`` (the sequence of the
    last event of the log the caller read its inputs from — state, approvals, budget — so a
    replay can rebuild them from the log). ``rate_limits`` (omitted when no windowed limit
    matched) lists each matching limit of the tenant with the usage the decision saw in its
    window (``calls``, ``tokens``, ``usd_nanos``, ``frees_at``): other runs charge those
    limits too, so a replay takes the usage from here (docs/semantics.md, "Windowed limits").
    """

    node_id: str
    attempt: int
    outcome: str
    reason: str | None = None
    policy_decision: str = "allow"
    policy_scope: str | None = None
    policy_rule: str | None = None
    policy_pattern: str | None = None
    overruled: JsonValue = None
    policies: JsonValue = None
    combining: str = "most-specific"
    autonomy: str | None = None
    agent: JsonValue = None
    circuit_breaker_threshold: int | None = None
    elapsed_secs: float | None = None
    delegation_target: str | None = None
    budget: JsonValue = None
    limits: JsonValue = None
    approval: str | None = None
    call_digest: str | None = None
    request_digest: str | None = None
    decided_at: datetime | None = None
    as_of: int | None = None
    rate_limits: JsonValue = None


@attrs.frozen(kw_only=True)
class UsageRecorded:
    """Charter: what one settled attempt of a node consumed (the ledger's unit of account)."""

    node_id: str
    attempt: int
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    tool_calls: int = 0
    iterations: int = 0
    succeeded: bool = True


@attrs.frozen(kw_only=True)
class LimitCharged:
    """Charter: an admitted attempt charged to the tenant's windowed limits its decision
    matched (docs/semantics.md, "Windowed limits"): ``limits`` lists ``{name, window}``;
    one call, ``tokens`` (input + output) and ``usd_nanos`` (cost in 1e-9 USD), at ``at``
    (the decision's time). The store keeps the charge per tenant and limit, written in the
    same transaction as this event."""

    node_id: str
    attempt: int
    at: datetime
    limits: JsonValue
    calls: int = 1
    tokens: int = 0
    usd_nanos: int = 0


@attrs.frozen(kw_only=True)
class RateLimitExceeded:
    """Charter: the gate refused a node because a windowed limit was reached: which limit,
    its window and mode, the maximum (``dimension``: ``max_calls``, ``max_tokens`` or
    ``max_usd``, USD in nano-dollars), what was used, and when the window frees up
    (``None``: a maximum of 0 admits nothing)."""

    node_id: str
    limit: str
    window_secs: int
    mode: str
    dimension: str
    maximum: int
    used: int
    frees_at: datetime | None = None


# ── reasoning strategies ───────────────────────────────────────────────────────────────


@attrs.frozen
class StrategyStarted:
    strategy: str
    config: JsonValue


@attrs.frozen
class PlanGenerated:
    steps: tuple[str, ...]


@attrs.frozen
class IterationStarted:
    iteration: int


@attrs.frozen
class ToolCalled:
    node_id: str
    tool: str


@attrs.frozen(kw_only=True)
class CriticVerdict:
    node_id: str
    score: float
    passed: bool
    feedback: str | None = None


@attrs.frozen(kw_only=True)
class IterationCompleted:
    iteration: int
    cost_delta_usd: float | None = None
    input_tokens: int
    output_tokens: int


@attrs.frozen(kw_only=True)
class StrategyLimitHit:
    limit_type: str
    limit_value: JsonValue
    actual_value: JsonValue


@attrs.frozen(kw_only=True)
class StrategyCompleted:
    iterations: int
    total_cost_usd: float | None = None


# ── coordinator ────────────────────────────────────────────────────────────────────────


@attrs.frozen(kw_only=True)
class CoordinatorDiscovery:
    node_id: str
    query_skills: tuple[str, ...]
    query_trust_domain: str | None = None
    candidates: tuple[JsonValue, ...]
    filtered_out: tuple[JsonValue, ...]


@attrs.frozen(kw_only=True)
class CoordinatorScoring:
    node_id: str
    rankings: tuple[JsonValue, ...]
    spread: float
    weights: JsonValue


@attrs.frozen(kw_only=True)
class CoordinatorDecision:
    node_id: str
    selected: str | None = None
    method: str
    reasoning: str | None = None
    confidence: float
    rejected: tuple[JsonValue, ...]
    tiebreaker_tokens: JsonValue = None
    tiebreaker_cost: float | None = None


# ── agent as tool ──────────────────────────────────────────────────────────────────────


@attrs.frozen(kw_only=True)
class AgentToolInvoked:
    node_id: str
    agent_uri: str
    mode: str
    protocol: str
    input_hash: str


@attrs.frozen(kw_only=True)
class AgentToolProgress:
    node_id: str
    chunk_index: int
    partial_output_summary: str


@attrs.frozen(kw_only=True)
class AgentToolTurn:
    node_id: str
    turn_number: int
    direction: str
    content_summary: str
    tokens: int
    cost: float


@attrs.frozen(kw_only=True)
class AgentToolCompleted:
    node_id: str
    output: JsonValue
    provenance: JsonValue = None
    total_cost: float
    latency_ms: int
    total_turns: int | None = None


@attrs.frozen(kw_only=True)
class AgentToolTerminated:
    node_id: str
    reason: str
    chunks_received: int
    partial_output: JsonValue = None
    cost: float


@attrs.frozen(kw_only=True)
class AgentToolFailed:
    node_id: str
    failure_type: str
    message: str
    retryable: bool


EventKind = (
    WorkflowStarted
    | WorkflowCompleted
    | WorkflowFailed
    | WorkflowCancelled
    | SegmentBoundary
    | NodeScheduled
    | NodeStarted
    | NodeCompleted
    | NodeFailed
    | NodeSkipped
    | NodeCancelled
    | NodeParked
    | RetryScheduled
    | InterruptRaised
    | ApprovalReceived
    | ToolApprovalRequired
    | ApprovalConsumed
    | ApprovalExpired
    | OutcomeUnknown
    | OutcomeResolved
    | TimerCreated
    | TimerFired
    | ExternalEventReceived
    | ChildWorkflowStarted
    | ChildWorkflowCompleted
    | ChildWorkflowFailed
    | BudgetExceeded
    | TokenBudgetExceeded
    | CostBudgetExceeded
    | AutonomyLimitReached
    | CircuitBreakerTripped
    | CircuitBreakerOpened
    | CircuitBreakerHalfOpened
    | CircuitBreakerClosed
    | CircuitBreakerCounted
    | EscalationRequired
    | PolicyViolation
    | NodeGated
    | UsageRecorded
    | LimitCharged
    | RateLimitExceeded
    | StrategyStarted
    | PlanGenerated
    | IterationStarted
    | ToolCalled
    | CriticVerdict
    | IterationCompleted
    | StrategyLimitHit
    | StrategyCompleted
    | CoordinatorDiscovery
    | CoordinatorScoring
    | CoordinatorDecision
    | AgentToolInvoked
    | AgentToolProgress
    | AgentToolTurn
    | AgentToolCompleted
    | AgentToolTerminated
    | AgentToolFailed
)


def type_tag(cls: type) -> str:
    """The snake_case ``type`` tag of a class in a tagged union (``NodeFailed`` →
    ``node_failed``); the same rule names event kinds, decisions and approval statuses."""
    out = []
    for index, ch in enumerate(cls.__name__):
        if ch.isupper() and index:
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


#: Every event kind class by its JSON ``type`` tag.
EVENT_KINDS: Final[dict[str, type[EventKind]]] = {
    type_tag(cls): cls for cls in typing.get_args(EventKind)
}


def event_type(kind: EventKind) -> str:
    """The snake_case ``type`` tag of an event kind (``NodeFailed`` → ``node_failed``)."""
    return _TAGS[type(kind)]


_TAGS: Final[dict[type, str]] = {cls: tag for tag, cls in EVENT_KINDS.items()}


@attrs.frozen(kw_only=True)
class Event:
    """The envelope of a logged event. The store assigns ``sequence`` (1, 2, 3… per
    execution, no gaps); ``id`` and ``created_at`` are given by the caller's adapters.

    A stored event also carries ``hash`` — the SHA-256 of its canonical envelope, which
    includes ``prev_hash``, the hash of the execution's previous event — so the log is a
    chain: changing, removing, inserting or reordering any event breaks it (docs/audit.md).
    Both are empty on events not (yet) stored."""

    id: str
    execution_id: str
    sequence: int
    kind: EventKind
    created_at: datetime
    prev_hash: str = ""
    hash: str = ""

    @property
    def node_id(self) -> str | None:
        """The node the event concerns, if any."""
        value = getattr(self.kind, "node_id", None)
        return value if isinstance(value, str) else None
