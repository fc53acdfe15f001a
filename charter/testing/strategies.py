"""Hypothesis strategies for Charter's values: property-test your own policies with them.

Every strategy is a plural noun, takes keyword-only bounds, and builds values constructively
(nothing is filtered away), so failures shrink to small, readable examples::

    from hypothesis import given
    from charter import PolicyEvaluator, Block
    from charter.testing.strategies import evaluation_contexts, policy_sets

    @given(evaluation_contexts(), policy_sets())
    def test_my_tenant_rule_is_never_weakened(ctx, workflow):
        ...

Names are drawn from a small alphabet by default (``a``, ``b``, ``.``, ``_``) so that
generated patterns and names actually collide; pass ``alphabet=`` to widen it.
"""

from __future__ import annotations

import types
import typing
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import attrs
from hypothesis import strategies as st

from charter.adapters.pool.protocol import (
    LlmOperation,
    ToolOperation,
    WorkerErrorCode,
    WorkerFailure,
    WorkerOperation,
    WorkerProtocolError,
    WorkerRequest,
    WorkerResponse,
    WorkerSuccess,
)
from charter.core.approvals import (
    ApprovalRequest,
    ApprovalStatus,
    Approved,
    Consumed,
    Expired,
    NotRequested,
    Pending,
    Rejected,
)
from charter.core.autonomy import (
    AgentCard,
    AutonomyConstraints,
    AutonomyContext,
    AutonomyLevel,
)
from charter.core.breaker import CircuitBreaker
from charter.core.budget import MAX_COST_USD, BudgetLimits, BudgetState, Usage
from charter.core.events import (
    EVENT_KINDS,
    ApprovalDecision,
    Event,
    EventKind,
    ProvenanceMetadata,
)
from charter.core.gate import GateRequest, request_digest
from charter.core.nodes import NODE_KINDS
from charter.core.policy import (
    CombiningMode,
    ConditionalRule,
    EvaluationContext,
    PolicyLayer,
    PolicyScope,
    PolicySet,
)

__all__ = [
    "agent_cards",
    "approval_rules",
    "approval_statuses",
    "autonomy_constraints",
    "autonomy_contexts",
    "budget_limits",
    "budget_states",
    "calls",
    "circuit_breakers",
    "conditional_rules",
    "conditions",
    "datetimes",
    "evaluation_contexts",
    "event_kinds",
    "events",
    "gate_requests",
    "glob_patterns",
    "json_floats",
    "json_values",
    "names",
    "policy_chains",
    "policy_sets",
    "usages",
    "worker_requests",
    "worker_responses",
    "workflow_documents",
]

DEFAULT_ALPHABET = "ab._"
_MAX_TOKENS = 10**12
_MAX_USD = 10.0**6


def names(
    *, alphabet: str = DEFAULT_ALPHABET, min_size: int = 0, max_size: int = 8
) -> st.SearchStrategy[str]:
    """Tool, model or node names."""
    return st.text(alphabet=alphabet, min_size=min_size, max_size=max_size)


def glob_patterns(*, alphabet: str = DEFAULT_ALPHABET, max_size: int = 8) -> st.SearchStrategy[str]:
    """Glob patterns over ``alphabet`` plus the wildcards ``*`` and ``?``."""
    return st.text(alphabet=alphabet + "*?", max_size=max_size)


def _flag(value: bool | None) -> st.SearchStrategy[bool]:
    return st.booleans() if value is None else st.just(value)


#: Conditions of conditional rules, over the fields `calls` draws (``amount``, ``table``,
#: ``urgent``) and the node: comparisons, ``in``, and the three boolean operators.
_CONDITIONS = (
    "call.args.amount > 100",
    "call.args.amount <= 10",
    "call.args.table == 'users'",
    "call.args.table in ['users', 'secrets']",
    "call.args.urgent",
    "not call.args.urgent",
    "call.args.amount > 100 and call.args.table != 'logs'",
    "call.args.amount > 100 or call.args.urgent == true",
    "node.kind == 'tool'",
    "'amount' in call.args",
)


def conditions() -> st.SearchStrategy[str]:
    """``when:`` conditions of policy rules over ``call`` and ``node``, of every shape the
    language has (comparisons, ``in``, ``and``/``or``/``not``); judged on `calls` they hold,
    fail or cannot be evaluated, all often."""
    return st.sampled_from(_CONDITIONS)


def calls() -> st.SearchStrategy[Any]:
    """Calls as the gate passes them to policy: ``{"args": {…}, "state_digest": …}`` whose
    ``amount``, ``table`` and ``urgent`` are each absent, of the expected type or of another
    one; sometimes a call without ``args``, or none at all."""
    amount = st.integers(min_value=-5, max_value=500) | st.sampled_from(["150", None, True])
    table = st.sampled_from(["users", "secrets", "logs", 5, None])
    urgent = st.sampled_from([True, False, "yes", None])
    args = st.fixed_dictionaries({}, optional={"amount": amount, "table": table, "urgent": urgent})
    digest = st.just("0" * 64)
    workflow_call = st.fixed_dictionaries({"args": args, "state_digest": digest})
    return workflow_call | st.just({"input_hash": "ab" * 32}) | st.none()


def conditional_rules(
    *, subject: str = "tool", alphabet: str = DEFAULT_ALPHABET
) -> st.SearchStrategy[ConditionalRule]:
    """``{tool: PATTERN, when: CONDITION}`` rules (``subject="model"``: allowlist entries),
    the pattern non-empty and the condition drawn from `conditions`."""
    pattern = st.text(alphabet=alphabet + "*?", min_size=1, max_size=8)
    return st.builds(ConditionalRule, st.just(subject), pattern, conditions())


def approval_rules(*, alphabet: str = DEFAULT_ALPHABET) -> st.SearchStrategy[ConditionalRule]:
    """``require_approval_for`` rule objects with an approval expiry
    (``expires_after_secs``, docs/semantics.md §5.2), with or without a condition."""
    pattern = st.text(alphabet=alphabet + "*?", min_size=1, max_size=8)
    seconds = st.integers(min_value=1, max_value=86_400).map(float)
    return st.builds(
        lambda p, when, secs: ConditionalRule("tool", p, when, expires_after_secs=secs),
        pattern,
        st.none() | conditions(),
        seconds,
    )


def policy_sets(
    *,
    alphabet: str = DEFAULT_ALPHABET,
    max_patterns: int = 4,
    patterns: st.SearchStrategy[str] | None = None,
    final: bool | None = False,
    approvers: st.SearchStrategy[str] | None = None,
    conditional: bool = False,
) -> st.SearchStrategy[PolicySet]:
    """Policy sets whose three lists hold up to ``max_patterns`` patterns each.

    ``final`` fixes `PolicySet.final` (``None``: either). With ``approvers``, a set names an
    approver drawn from it, or none (then approval is by ``"human"``). With ``conditional``,
    any rule may be a `ConditionalRule` (`conditional_rules`) instead of a bare pattern.
    """
    pats = patterns if patterns is not None else glob_patterns(alphabet=alphabet)
    named = st.none() if approvers is None else st.none() | approvers
    if not conditional:
        lists = st.lists(pats, max_size=max_patterns)
        return st.builds(
            PolicySet,
            blocked_tools=lists,
            require_approval_for=lists,
            model_allowlist=lists,
            approver=named,
            final=_flag(final),
        )
    tools = st.lists(pats | conditional_rules(alphabet=alphabet), max_size=max_patterns)
    asks = st.lists(
        pats | conditional_rules(alphabet=alphabet) | approval_rules(alphabet=alphabet),
        max_size=max_patterns,
    )
    models = st.lists(
        pats | conditional_rules(subject="model", alphabet=alphabet), max_size=max_patterns
    )
    return st.builds(
        PolicySet,
        blocked_tools=tools,
        require_approval_for=asks,
        model_allowlist=models,
        approver=named,
        final=_flag(final),
    )


def policy_chains(
    *,
    alphabet: str = DEFAULT_ALPHABET,
    max_patterns: int = 4,
    scoped: bool = True,
    tenant_final: bool | None = False,
    approvers: st.SearchStrategy[str] | None = None,
    conditional: bool = False,
) -> st.SearchStrategy[tuple[PolicyLayer, ...]]:
    """Chains of 0–3 layers, least specific first, each at its own scope (tenant, workflow,
    node), any of them possibly absent. ``tenant_final`` fixes whether the tenant layer is
    final (``None``: either; workflow and node layers never are); ``approvers`` and
    ``conditional`` as in `policy_sets`."""
    tenant = policy_sets(
        alphabet=alphabet,
        max_patterns=max_patterns,
        final=tenant_final,
        approvers=approvers,
        conditional=conditional,
    )
    sets = policy_sets(
        alphabet=alphabet,
        max_patterns=max_patterns,
        approvers=approvers,
        conditional=conditional,
    )
    # The tenant's default approval expiry (docs/semantics.md §5.2), a tenant-only setting.
    expiry = st.none() | st.integers(min_value=1, max_value=86_400).map(float)
    tenant = st.tuples(tenant, expiry).map(
        lambda drawn: attrs.evolve(drawn[0], approval_expiry_secs=drawn[1])
    )
    return st.tuples(st.none() | tenant, st.none() | sets, st.none() | sets).map(
        lambda layers: tuple(
            PolicyLayer(scope, policy)
            for scope, policy in zip(PolicyScope, layers, strict=True)
            if policy is not None
        )
    )


def evaluation_contexts(
    *, alphabet: str = DEFAULT_ALPHABET, kinds: tuple[str, ...] | None = None
) -> st.SearchStrategy[EvaluationContext]:
    """Contexts of model nodes (with a model reference and maybe a resolved model) and of
    named nodes of every acting kind (with a tool name), plus unnamed routing nodes."""
    tags = kinds if kinds is not None else tuple(sorted(NODE_KINDS))
    name = names(alphabet=alphabet)

    def build(tag: str) -> st.SearchStrategy[EvaluationContext]:
        if tag == "model":
            return st.builds(
                EvaluationContext,
                node_id=name,
                node_kind_tag=st.just(tag),
                model_ref=name,
                resolved_model=st.none() | name,
            )
        if NODE_KINDS[tag].acting:
            return st.builds(
                EvaluationContext, node_id=name, node_kind_tag=st.just(tag), tool_name=name
            )
        return st.builds(EvaluationContext, node_id=name, node_kind_tag=st.just(tag))

    return st.sampled_from(tags).flatmap(build)


def autonomy_constraints(
    *, alphabet: str = DEFAULT_ALPHABET
) -> st.SearchStrategy[AutonomyConstraints]:
    """Constraints with every field independently set or absent."""
    small = st.none() | st.integers(min_value=0, max_value=20)
    pattern_lists = st.lists(glob_patterns(alphabet=alphabet), max_size=3)
    return st.builds(
        AutonomyConstraints,
        max_iterations=small,
        max_tool_calls=small,
        token_budget=st.none() | st.integers(min_value=0, max_value=10_000),
        cost_budget_usd=st.none() | st.floats(min_value=0, max_value=100, allow_nan=False),
        allowed_tools=pattern_lists,
        blocked_tools=pattern_lists,
        allowed_delegations=st.lists(names(alphabet=alphabet), max_size=3),
        require_approval_for=pattern_lists,
        time_budget_secs=small,
    )


def agent_cards(*, alphabet: str = DEFAULT_ALPHABET) -> st.SearchStrategy[AgentCard]:
    """Agent cards at every autonomy level, with or without constraints."""
    return st.builds(
        AgentCard,
        uri=names(alphabet=alphabet, min_size=1),
        autonomy=st.sampled_from(AutonomyLevel),
        constraints=st.none() | autonomy_constraints(alphabet=alphabet),
        id=names(alphabet=alphabet),
        name=names(alphabet=alphabet),
    )


def autonomy_contexts(*, alphabet: str = DEFAULT_ALPHABET) -> st.SearchStrategy[AutonomyContext]:
    """Contexts with counters around typical limits (0–25) and any level."""
    counter = st.integers(min_value=0, max_value=25)
    return st.builds(
        AutonomyContext,
        agent_ref=names(alphabet=alphabet),
        autonomy_level=st.sampled_from(AutonomyLevel),
        constraints=st.none() | autonomy_constraints(alphabet=alphabet),
        current_iterations=counter,
        current_tool_calls=counter,
        current_cost_usd=st.floats(min_value=0, max_value=200, allow_nan=False),
        current_tokens=st.integers(min_value=0, max_value=20_000),
        consecutive_errors=st.integers(min_value=0, max_value=5),
        circuit_breaker_threshold=st.integers(min_value=0, max_value=5),
        elapsed_secs=st.floats(min_value=0, max_value=100, allow_nan=False),
        delegation_target=st.none() | names(alphabet=alphabet),
    )


def _costs(max_usd: float = _MAX_USD) -> st.SearchStrategy[float]:
    return st.floats(min_value=0, max_value=min(max_usd, MAX_COST_USD), allow_nan=False)


def usages(*, max_tokens: int = 100_000, max_cost_usd: float = 100.0) -> st.SearchStrategy[Usage]:
    """What one node might consume."""
    tokens = st.integers(min_value=0, max_value=max_tokens)
    return st.builds(
        Usage,
        input_tokens=tokens,
        output_tokens=tokens,
        cost_usd=_costs(max_cost_usd),
        tool_calls=st.integers(min_value=0, max_value=10),
        iterations=st.integers(min_value=0, max_value=10),
    )


def budget_states(
    *,
    max_tokens: int = _MAX_TOKENS,
    max_cost_usd: float = _MAX_USD,
    max_consecutive_errors: int = 10,
    max_count: int = 1000,
) -> st.SearchStrategy[BudgetState]:
    """Budget states with any valid totals."""
    tokens = st.integers(min_value=0, max_value=max_tokens)
    counts = st.integers(min_value=0, max_value=max_count)
    return st.builds(
        BudgetState,
        total_input_tokens=tokens,
        total_output_tokens=tokens,
        total_cost_usd=_costs(max_cost_usd),
        iteration_count=counts,
        tool_call_count=counts,
        consecutive_error_count=st.integers(min_value=0, max_value=max_consecutive_errors),
        circuit_breaker_tripped=st.booleans(),
    )


def budget_limits(
    *, max_tokens: int = _MAX_TOKENS, max_cost_usd: float = _MAX_USD
) -> st.SearchStrategy[BudgetLimits]:
    """Limits with each dimension independently set or absent."""
    tokens = st.none() | st.integers(min_value=0, max_value=max_tokens)
    return st.builds(
        BudgetLimits,
        total_tokens=tokens,
        input_tokens=tokens,
        output_tokens=tokens,
        cost_usd=st.none() | _costs(max_cost_usd),
    )


def json_floats() -> st.SearchStrategy[float]:
    """Floats canonical JSON keeps: finite, and not from 2**63 up to 1e21 in magnitude (those
    would be written as integers beyond 64 bits; `charter.core.canonical`)."""
    return st.floats(allow_nan=False, allow_infinity=False).filter(
        lambda x: not 2**63 <= abs(x) < 1e21
    )


def json_values(*, max_leaves: int = 8) -> st.SearchStrategy[Any]:
    """Plain JSON values: objects with string keys, lists, strings, finite numbers, booleans
    and null (what events carry as outputs, patches and contexts)."""
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**63), max_value=2**63 - 1)
        | json_floats()
        | st.text(max_size=10)
    )
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
        ),
        max_leaves=max_leaves,
    )


def datetimes() -> st.SearchStrategy[datetime]:
    """Timezone-aware datetimes (UTC or a whole-minute offset), as events carry them."""
    zones = st.just(UTC) | st.integers(min_value=-14 * 60, max_value=14 * 60).map(
        lambda minutes: timezone(timedelta(minutes=minutes))
    )
    return st.datetimes(
        min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30), timezones=zones
    )


def _for_type(tp: Any) -> st.SearchStrategy[Any]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        return st.one_of(*(_for_type(option) for option in options))
    if origin is tuple:
        (item, _ellipsis) = typing.get_args(tp)
        return st.lists(_for_type(item), max_size=3).map(tuple)
    if tp is type(None):
        return st.none()
    if tp is Any:
        return json_values()
    if tp is str:
        return st.text(max_size=12)
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(min_value=0, max_value=2**63 - 1)
    if tp is float:
        return json_floats()
    if tp is datetime:
        return datetimes()
    if tp is ApprovalDecision:
        return st.sampled_from(ApprovalDecision)
    if tp is ProvenanceMetadata:
        return _builds_from_types(ProvenanceMetadata)
    raise TypeError(f"no strategy for field type {tp!r}")  # pragma: no cover - new field type


def _builds_from_types(cls: type) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls)
    fields = {f.name: _for_type(hints[f.name]) for f in attrs.fields(cls) if f.init}
    return st.builds(cls, **fields)


def event_kinds(*, kinds: tuple[str, ...] | None = None) -> st.SearchStrategy[EventKind]:
    """Event kinds (all of them, or those whose ``type`` tags are in ``kinds``) with every
    field drawn from its declared type."""
    tags = kinds if kinds is not None else tuple(sorted(EVENT_KINDS))
    return st.sampled_from(tags).flatmap(lambda tag: _builds_from_types(EVENT_KINDS[tag]))


def events(
    *, execution_id: str | None = None, kinds: tuple[str, ...] | None = None
) -> st.SearchStrategy[Event]:
    """Event envelopes around `event_kinds`."""
    return st.builds(
        Event,
        id=st.uuids().map(str),
        execution_id=st.just(execution_id) if execution_id is not None else names(min_size=1),
        sequence=st.integers(min_value=1, max_value=2**31),
        kind=event_kinds(kinds=kinds),
        created_at=datetimes(),
    )


def _approval_requests(node_id: str) -> st.SearchStrategy[ApprovalRequest]:
    return st.builds(
        ApprovalRequest,
        node_id=st.just(node_id),
        tool_name=names(),
        approver=st.sampled_from(("human", "alice", "a*")),
        context=json_values(max_leaves=3),
        request_digest=st.none() | st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
        attempt=st.none() | st.integers(min_value=0, max_value=3),
        sequence=st.integers(min_value=1, max_value=1000),
        expires_after_secs=st.none() | st.integers(min_value=1, max_value=86_400).map(float),
    )


def approval_statuses(*, node_id: str = "n") -> st.SearchStrategy[ApprovalStatus]:
    """Every approval status of one node, with arbitrary requests."""
    requests = _approval_requests(node_id)
    users = st.sampled_from(("alice", "bob"))
    comments = st.none() | st.text(max_size=8)
    seqs = st.integers(min_value=1, max_value=1000)
    return st.one_of(
        st.just(NotRequested()),
        st.builds(Pending, requests),
        st.builds(
            Approved,
            request=requests,
            user_id=users,
            comment=comments,
            sequence=seqs,
            expires_at=st.none() | datetimes(),
        ),
        st.builds(Rejected, request=requests, user_id=users, comment=comments, sequence=seqs),
        st.builds(Consumed, request=requests, user_id=users, sequence=seqs),
        st.builds(Expired, request=requests, user_id=users, expires_at=datetimes(), sequence=seqs),
    )


@st.composite
def _gate_requests(draw: st.DrawFn, alphabet: str) -> GateRequest:
    now = draw(datetimes())
    request = GateRequest(
        context=draw(evaluation_contexts(alphabet=alphabet)),
        attempt=draw(st.integers(min_value=0, max_value=3)),
        policies=draw(policy_chains(alphabet=alphabet, tenant_final=None)),
        combining=draw(st.sampled_from(CombiningMode)),
        agent=draw(st.none() | agent_cards(alphabet=alphabet)),
        circuit_breaker_threshold=draw(st.integers(min_value=0, max_value=5)),
        budget=draw(
            budget_states(
                max_tokens=2_000, max_cost_usd=20.0, max_consecutive_errors=3, max_count=25
            )
        ),
        limits=draw(st.just(BudgetLimits()) | budget_limits(max_tokens=4_000, max_cost_usd=40.0)),
        call=draw(st.none() | json_values(max_leaves=3)),
        now=now,
        run_started_at=now - timedelta(seconds=draw(st.integers(min_value=0, max_value=25))),
    )
    # Half the time, an approval status about *this* request (its real digest, under each
    # approver the gate may ask for), so that approved, rejected and pending requests for the
    # same call are exercised, not only unrelated ones.
    status: ApprovalStatus
    if draw(st.booleans()):
        approver = draw(st.sampled_from(("human", "alice")))
        digest = request_digest(request.context, request.attempt, request.call, approver)
        ask = ApprovalRequest(
            node_id=request.context.node_id,
            tool_name=request.context.tool_name or "t",
            approver=approver,
            context={},
            request_digest=digest,
            attempt=request.attempt,
            sequence=1,
        )
        user = draw(st.sampled_from(("alice", "bob")))
        # An approval that expires a little before, at or after the gate's clock reading
        # (docs/semantics.md §5.2), as well as one that never does.
        expires_at = now + timedelta(seconds=draw(st.integers(min_value=-5, max_value=5)))
        choices: tuple[ApprovalStatus, ...] = (
            Pending(ask),
            Approved(request=ask, user_id=user, comment=None, sequence=2),
            Approved(request=ask, user_id=user, comment=None, sequence=2, expires_at=expires_at),
            Rejected(request=ask, user_id=user, comment="no", sequence=2),
            Consumed(request=ask, user_id=user, sequence=3),
            Expired(request=ask, user_id=user, expires_at=expires_at, sequence=3),
        )
        status = draw(st.sampled_from(choices))
    else:
        status = draw(approval_statuses(node_id=request.context.node_id))
    return attrs.evolve(request, approval=status)


def gate_requests(*, alphabet: str = DEFAULT_ALPHABET) -> st.SearchStrategy[GateRequest]:
    """Complete gate inputs: a node, its policy chain, maybe an agent card, a budget and its
    limits, an approval status (often one bound to this very request), a clock reading and
    the run's start. Budgets, limits and error counts are drawn so that every outcome (run,
    hold, fail) is common."""
    return _gate_requests(alphabet)


@st.composite
def workflow_documents(
    draw: st.DrawFn,
    *,
    max_nodes: int = 7,
    edge_conditions: tuple[str, ...] = ("output.ok == true", "output.ok == false"),
) -> dict[str, Any]:
    """Valid workflow files (as dicts): a random DAG over ``n0 … n<k>`` (``n0`` the start
    node, every other node with 1–3 sources of a lower number, so every node is reachable and
    there is no cycle), its nodes listed in any order; tool, condition (only where there are
    targets) and human_approval nodes, each with its own retry policy; tool nodes' edges
    sometimes carry one of ``edge_conditions``. Parse them with `parse_workflow`."""
    count = draw(st.integers(min_value=1, max_value=max_nodes))
    names = [f"n{i}" for i in range(count)]
    sources = {
        i: draw(st.sets(st.integers(0, i - 1), min_size=1, max_size=min(i, 3)))
        for i in range(1, count)
    }
    nodes: dict[str, Any] = {}
    edges: list[dict[str, str]] = []
    for i, name in enumerate(names):
        targets = [names[j] for j in range(count) if i in sources.get(j, set())]
        tags = ["tool", "condition", "human_approval"] if targets else ["tool", "human_approval"]
        tag = draw(st.sampled_from(tags))
        kind: dict[str, Any]
        if tag == "tool":
            kind = {"type": "tool", "tool_ref": f"t.{name}"}
        elif tag == "condition":
            branches: list[dict[str, str]] = [
                {"target": t, "condition": f"state.go == {t!r}"} for t in targets[:-1]
            ]
            kind = {"type": "condition", "branches": [*branches, {"target": targets[-1]}]}
        else:
            kind = {"type": "human_approval", "description": f"may {name} go ahead?"}
            if draw(st.booleans()):
                kind["timeout_secs"] = draw(st.integers(min_value=1, max_value=3600))
            with_fallback = draw(st.booleans())
            if targets and with_fallback:
                kind["fallback_node"] = draw(st.sampled_from(targets))
        backoff = draw(st.integers(min_value=0, max_value=5000))
        retry = {
            "max_attempts": draw(st.integers(min_value=1, max_value=3)),
            "backoff_ms": backoff,
            "max_backoff_ms": backoff + draw(st.integers(min_value=0, max_value=60_000)),
        }
        nodes[name] = {"kind": kind, "retry_policy": retry}
        for target in targets:
            edge = {"from": name, "to": target}
            condition = draw(st.sampled_from([None, *edge_conditions])) if tag == "tool" else None
            if condition is not None:
                edge["condition"] = condition
            edges.append(edge)
    # The order of the file's nodes is not an order of execution: shuffle it.
    order = draw(st.permutations(names))
    return {
        "workflow_id": "random",
        "version": "1",
        "start_node": "n0",
        "nodes": {name: nodes[name] for name in order},
        "edges": edges,
    }


def circuit_breakers(*, name: str = "b", max_count: int = 4) -> st.SearchStrategy[CircuitBreaker]:
    """Breakers with small settings (counts from 1 to ``max_count``, a reset timeout from 0
    to 10 s), so that every transition is reached in a few calls."""
    counts = st.integers(min_value=1, max_value=max_count)
    return st.builds(
        CircuitBreaker,
        name=st.just(name),
        fail_max=counts,
        reset_timeout=st.sampled_from((0.0, 1.0, 10.0)) | st.floats(min_value=0, max_value=10),
        half_open_max_calls=counts,
        success_threshold=counts,
    )


def _operations() -> st.SearchStrategy[WorkerOperation]:
    text = st.text(max_size=12)
    return st.builds(
        LlmOperation, model=text, prompt=text, scoped_input=json_values(max_leaves=4)
    ) | st.builds(
        ToolOperation,
        tool=text,
        input=json_values(max_leaves=4),
        scoped_input=json_values(max_leaves=4),
    )


def worker_requests() -> st.SearchStrategy[WorkerRequest]:
    """Worker-pool requests of either operation, with any JSON payloads (not necessarily
    within a security policy's limits)."""
    return st.builds(
        WorkerRequest,
        request_id=st.text(max_size=12),
        workflow_name=st.text(max_size=12),
        node_id=st.text(max_size=12),
        timeout_ms=st.none() | st.integers(min_value=0, max_value=2**64 - 1),
        operation=_operations(),
    )


def worker_responses() -> st.SearchStrategy[WorkerResponse]:
    """Worker-pool responses, successes and errors with every error code."""
    errors = st.builds(
        WorkerProtocolError,
        code=st.sampled_from(WorkerErrorCode),
        message=st.text(max_size=20),
        retryable=st.booleans(),
    )
    return st.builds(
        WorkerResponse,
        request_id=st.text(max_size=12),
        worker_id=st.text(max_size=12),
        result=st.builds(WorkerSuccess, json_values()) | st.builds(WorkerFailure, errors),
        elapsed_ms=st.integers(min_value=0, max_value=2**64 - 1),
    )
