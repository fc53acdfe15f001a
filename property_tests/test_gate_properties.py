"""Properties of the composed gate and of the approval fold."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from charter.adapters.codec import converter, event_text
from charter.core import (
    ApprovalConsumed,
    ApprovalDecision,
    ApprovalReceived,
    Approved,
    AutonomyLevel,
    CombiningMode,
    Event,
    EventKind,
    GateRequest,
    NodeFailed,
    NodeGated,
    NotRequested,
    Outcome,
    Pending,
    PolicyLayer,
    PolicyScope,
    PolicySet,
    RequireApproval,
    ToolApprovalRequired,
    gate_node,
    node_approval_status,
    pending_approvals,
)
from charter.core.approvals import approver_allows
from charter.core.canonical import canonical_json, text_digest
from charter.core.gate import reference_gate_node
from charter.core.limits import RateLimit, WindowUsage
from charter.core.policy import ConditionalRule
from charter.testing import strategies as s
from charter.testing.strategies import gate_requests

NOW = datetime(2026, 11, 21, tzinfo=UTC)


@given(gate_requests())
def test_the_gate_is_deterministic(request: GateRequest) -> None:
    assert gate_node(request) == gate_node(request)


@st.composite
def _request_arguments(draw: st.DrawFn) -> dict[str, object]:
    """Every argument of `GateRequest`, drawn here (not read back from a built request, so a
    constructor that dropped or swapped a value cannot hide it), as lists or tuples."""
    now = draw(s.datetimes())
    limit = RateLimit(name="calls", window=60, max_calls=draw(st.integers(0, 3)))
    usages = st.lists(
        st.builds(WindowUsage, limit=st.just(limit), calls=st.integers(0, 5)), max_size=2
    )
    many = st.lists if draw(st.booleans()) else lambda x, **k: st.lists(x, **k).map(tuple)
    return {
        "context": draw(s.evaluation_contexts()),
        "attempt": draw(st.integers(min_value=0, max_value=3)),
        "policies": list(draw(s.policy_chains(tenant_final=None)))
        if draw(st.booleans())
        else draw(s.policy_chains(tenant_final=None)),
        "combining": draw(st.sampled_from(CombiningMode)),
        "agent": draw(st.none() | s.agent_cards()),
        "circuit_breaker_threshold": draw(st.integers(min_value=0, max_value=5)),
        "delegation_target": draw(st.none() | st.sampled_from(["agent:x", "y"])),
        "budget": draw(s.budget_states(max_tokens=2_000, max_cost_usd=20.0)),
        "limits": draw(s.budget_limits(max_tokens=4_000, max_cost_usd=40.0)),
        "approval": draw(s.approval_statuses()),
        "call": draw(st.none() | s.json_values(max_leaves=3)),
        "now": now,
        "run_started_at": now,  # an agent card with a time budget needs it
        "as_of": draw(st.none() | st.integers(min_value=0, max_value=10)),
        "rate_limits": draw(st.none() | many(usages.map(tuple), max_size=0) | usages),
    }


class _SlotBySlot(GateRequest):
    """A subclass: its constructor sets each slot through the slot's own setter, the way a
    frozen attrs class does, rather than through `GateRequest`'s plain twin."""

    __slots__ = ()


@given(_request_arguments())
def test_a_request_built_through_its_twin_equals_one_set_slot_by_slot(
    kwargs: dict[str, object],
) -> None:
    """`GateRequest(...)` sets its slots on a plain twin and makes it a `GateRequest` again
    (charter.core.gate, `_twin`): the result is a frozen `GateRequest` holding, slot by
    slot, what the setters put in a subclass built from the same arguments, which hold the
    arguments given, and the call's text and digest are the exact encoder's."""
    built = GateRequest(**kwargs)  # type: ignore[arg-type]
    reference = _SlotBySlot(**kwargs)  # type: ignore[arg-type]
    assert type(built) is GateRequest
    assert type(reference) is _SlotBySlot
    for name in GateRequest.__slots__:  # type: ignore[attr-defined]
        mine, theirs = getattr(built, name), getattr(reference, name)
        assert type(mine) is type(theirs), name
        assert mine == theirs, name
    for name, given_value in kwargs.items():
        if name in ("policies", "rate_limits") and given_value is not None:
            given_value = tuple(given_value) or None  # type: ignore[arg-type]
            if name == "policies":
                given_value = given_value or ()
        assert getattr(built, name) == given_value, name
    assert built._call_text == canonical_json(kwargs["call"])
    assert built._call_digest == text_digest(canonical_json(kwargs["call"]))
    assert attrs.evolve(built) == built
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        built.attempt = 1  # type: ignore[misc]


def _same_as_the_reference(request: GateRequest) -> None:
    """`gate_node` (memoised policy facts, slots set directly, digests around the call's
    text) gives exactly what `reference_gate_node` (everything from scratch, exact encoder,
    attrs constructors) gives, and every event has the same bytes in the log."""
    expected = reference_gate_node(request)
    for _ in range(2):  # the second time from the remembered policy facts
        result = gate_node(request)
        assert result == expected
        assert [type(kind) for kind in result.events] == [type(e) for e in expected.events]
        for kind, reference in zip(result.events, expected.events, strict=True):
            text = canonical_json(converter.unstructure(reference))
            assert event_text(kind) == text


@given(gate_requests(), st.data())
def test_the_fast_gate_equals_the_reference_gate(request: GateRequest, data: st.DataObject) -> None:
    _same_as_the_reference(request)
    # The same chain (equal content, so the same remembered facts) for another node.
    other = data.draw(s.evaluation_contexts())
    _same_as_the_reference(attrs.evolve(request, context=other))
    copied = tuple(
        PolicyLayer(layer.scope, attrs.evolve(layer.policy)) for layer in request.policies
    )
    _same_as_the_reference(attrs.evolve(request, context=other, policies=copied))
    # Inputs the drawn requests leave at their defaults, recorded as given.
    as_of = data.draw(st.integers(min_value=0, max_value=2**40))
    target = data.draw(st.sampled_from(["agent:x", "y"]))
    _same_as_the_reference(attrs.evolve(request, as_of=as_of, delegation_target=target))


@given(gate_requests(), st.data())
def test_the_fast_gate_equals_the_reference_gate_under_conditional_rules(
    request: GateRequest, data: st.DataObject
) -> None:
    """Conditional rules depend on the call: their chains' facts are never remembered, so
    the same chain decides differently on different calls, on both paths."""
    chain = data.draw(
        s.policy_chains(conditional=True, tenant_final=None, approvers=st.sampled_from(["alice"]))
    )
    for call in data.draw(st.lists(s.calls(), min_size=1, max_size=3)):
        _same_as_the_reference(attrs.evolve(request, policies=chain, call=call))


def _glob(pattern: str, value: str) -> bool:
    """An independent glob: the same language as a regular expression."""
    translated = "".join(
        ".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern
    )
    return re.fullmatch(translated, value, re.DOTALL) is not None


def _pattern(rule: str | ConditionalRule) -> str:
    # The drawn requests carry unconditional rules only (`gate_requests`).
    assert isinstance(rule, str), rule
    return rule


def _oracle(request: GateRequest) -> tuple[bool, bool]:
    """(refused, needs approval) for a request, transcribed from docs/semantics.md §2–§6
    without calling the code under test."""
    ctx = request.context
    refused = needs_approval = False
    # policy: most specific first; deny-overrides lets any block win
    for layer in reversed(request.policies):
        policy = layer.policy
        if ctx.node_kind_tag == "model" and policy.model_allowlist:
            names = ctx.model_candidates()
            if any(_glob(_pattern(p), n) for p in policy.model_allowlist for n in names):
                if request.combining is CombiningMode.MOST_SPECIFIC:
                    break
                continue
            refused = True
            break
        if ctx.tool_name is None:
            continue
        if any(_glob(_pattern(p), ctx.tool_name) for p in policy.blocked_tools):
            refused = True
            break
        if any(_glob(_pattern(p), ctx.tool_name) for p in policy.require_approval_for):
            needs_approval = True
            if request.combining is CombiningMode.MOST_SPECIFIC:
                break
    # a final layer's own rules hold whatever the more specific layers said
    for layer in request.policies:
        policy = layer.policy
        if not policy.final:
            continue
        if ctx.node_kind_tag == "model":
            names = ctx.model_candidates()
            if policy.model_allowlist and not any(
                _glob(_pattern(p), n) for p in policy.model_allowlist for n in names
            ):
                refused = True
        elif ctx.tool_name is not None:
            if any(_glob(_pattern(p), ctx.tool_name) for p in policy.blocked_tools):
                refused = True
            elif any(_glob(_pattern(p), ctx.tool_name) for p in policy.require_approval_for):
                needs_approval = True
    # autonomy
    card = request.agent
    if card is not None and not refused:
        budget = request.budget
        tool = None if ctx.node_kind_tag == "agent" else ctx.tool_name
        c = card.constraints
        if (
            budget.consecutive_error_count >= request.circuit_breaker_threshold
            or budget.circuit_breaker_tripped
        ):
            refused = True
        elif c is not None:
            target = request.delegation_target or ctx.delegation_target
            if target is None and ctx.node_kind_tag in (
                "agent", "agent_tool", "a2a_task", "agent_discovery", "coordinator",
            ):  # fmt: skip
                target = f"{ctx.node_kind_tag}:{ctx.node_id}"
            elapsed = 0.0
            if request.run_started_at is not None:
                elapsed = (request.now - request.run_started_at).total_seconds()
            limits = (
                (c.max_iterations, budget.iteration_count),
                (c.max_tool_calls, budget.tool_call_count),
                (c.cost_budget_usd, budget.total_cost_usd),
                (c.token_budget, budget.total_tokens),
                (c.time_budget_secs, elapsed),
            )
            if (
                (tool is not None and any(_glob(p, tool) for p in c.blocked_tools))
                or (
                    tool is not None
                    and c.allowed_tools
                    and not any(_glob(p, tool) for p in c.allowed_tools)
                )
                or (
                    target is not None
                    and c.allowed_delegations
                    and target not in c.allowed_delegations
                )
                or (
                    card.autonomy is AutonomyLevel.BOUNDED_AUTONOMOUS
                    and any(limit is not None and value >= limit for limit, value in limits)
                )
            ):
                refused = True
            elif tool is not None and any(_glob(p, tool) for p in c.require_approval_for):
                needs_approval = True
        if not refused and card.autonomy is AutonomyLevel.GUIDED and tool is not None:
            needs_approval = True
    # budget before the node: any limit reached
    b, lim = request.budget, request.limits
    for limit, value in (
        (lim.total_tokens, b.total_tokens),
        (lim.input_tokens, b.total_input_tokens),
        (lim.output_tokens, b.total_output_tokens),
        (lim.cost_usd, b.total_cost_usd),
    ):
        if limit is not None and value >= limit:
            refused = True
    return refused, needs_approval


@given(gate_requests())
def test_the_gate_never_runs_a_node_any_component_refuses_or_holds(request: GateRequest) -> None:
    result = gate_node(request)
    refused, needs_approval = _oracle(request)
    status = request.approval
    # An approval counts only strictly before its expiry (docs/semantics.md §5.2).
    approved_this_call = (
        isinstance(status, Approved)
        and status.request.request_digest == result.request_digest
        and (status.expires_at is None or request.now < status.expires_at)
    )
    if refused:
        assert result.outcome is Outcome.FAIL
    elif needs_approval and not approved_this_call:
        assert result.outcome is not Outcome.RUN
    if result.outcome is Outcome.RUN:
        assert not refused
        assert not needs_approval or approved_this_call


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


@given(gate_requests(), st.sampled_from(["human", "*", "alice"]), st.sampled_from(["*", "bob"]))
def test_a_final_tenant_approval_is_asked_of_the_tenant_approver(
    request: GateRequest, tenant_approver: str, lower_approver: str
) -> None:
    """Whatever a workflow or node rule says about a tool the final tenant requires approval
    for, the node is blocked or needs the tenant's approver, and the recorded decision names
    the workflow or node rule it overruled."""
    tool = request.context.tool_name
    if tool is None or request.context.node_kind_tag == "model":
        return
    tenant = PolicySet(require_approval_for=[tool], approver=tenant_approver, final=True)
    relax = PolicySet(require_approval_for=[tool], approver=lower_approver)
    nodes = tuple(layer for layer in request.policies if layer.scope is PolicyScope.NODE)
    layers = (PolicyLayer(PolicyScope.TENANT, tenant), PolicyLayer(PolicyScope.WORKFLOW, relax))
    result = gate_node(attrs.evolve(request, policies=(*layers, *nodes)))
    gated = result.events[0]
    assert isinstance(gated, NodeGated)
    decision = result.policy.decision
    assert gated.policy_decision in ("block", "require_approval")
    if gated.policy_decision == "require_approval":
        assert decision == RequireApproval(tenant_approver)
        if gated.policy_scope != "tenant":  # a lower rule asking the same approver decides
            assert gated.overruled is None
        for ask in (e for e in result.events if isinstance(e, ToolApprovalRequired)):
            assert ask.approver == tenant_approver
        if result.outcome is Outcome.RUN:
            assert isinstance(request.approval, Approved)
            assert request.approval.request.approver == tenant_approver
        if tenant_approver != lower_approver and not nodes:
            assert gated.overruled == {
                "scope": "workflow",
                "rule": "require_approval_for",
                "pattern": tool,
                "decision": "require_approval",
                "approver": lower_approver,
            }
    if gated.overruled is None:
        assert result.policy.overruled is None
    else:
        assert isinstance(gated.overruled, dict)
        assert gated.overruled["scope"] in ("workflow", "node")
