"""Every core value survives JSON exactly, in upstream's shape."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charter.adapters.codec import dump, dumps, loads
from charter.core import (
    EVENT_KINDS,
    AgentCard,
    ApprovalStatus,
    AutonomyContext,
    AutonomyDecision,
    AutonomyEnforcer,
    BudgetLimits,
    BudgetState,
    Event,
    EventKind,
    GateRequest,
    GateResult,
    PolicyEvaluator,
    PolicyVerdict,
    event_type,
    gate_node,
)
from charter.testing import strategies as s


@pytest.mark.parametrize("tag", sorted(EVENT_KINDS))
@settings(max_examples=40)  # x 49 kinds
@given(data=st.data())
def test_every_event_kind_round_trips_through_json(tag: str, data: st.DataObject) -> None:
    kind = data.draw(s.event_kinds(kinds=(tag,)))
    encoded = dumps(kind)
    assert loads(encoded, EventKind) == kind
    assert loads(encoded, EVENT_KINDS[tag]) == kind
    as_data = dump(kind)
    assert as_data["type"] == tag == event_type(kind)
    # upstream's convention: optional fields are omitted, never written as null
    for name, value in as_data.items():
        if value is None:
            assert attrs.fields_dict(type(kind))[name].default is not None


@given(s.events())
def test_event_envelopes_round_trip(event: Event) -> None:
    assert loads(dumps(event), Event) == event


@pytest.mark.parametrize(
    ("strategy", "cls"),
    [
        (s.agent_cards(), AgentCard),
        (s.autonomy_contexts(), AutonomyContext),
        (s.budget_states(), BudgetState),
        (s.budget_limits(), BudgetLimits),
        (s.approval_statuses(), ApprovalStatus),
        (s.gate_requests(), GateRequest),
    ],
    ids=lambda v: getattr(v, "__name__", "strategy"),
)
@given(data=st.data())
def test_core_values_round_trip(strategy: Any, cls: Any, data: st.DataObject) -> None:
    value = data.draw(strategy)
    assert loads(dumps(value), cls) == value


@given(s.gate_requests())
def test_gate_results_round_trip(request: GateRequest) -> None:
    result = gate_node(request)
    assert loads(dumps(result), GateResult) == result


@given(s.evaluation_contexts(), s.policy_chains())
def test_policy_verdicts_round_trip(ctx: Any, chain: Any) -> None:
    verdict = PolicyEvaluator().explain(ctx, chain)
    assert loads(dumps(verdict), PolicyVerdict) == verdict


@given(s.autonomy_contexts(), st.none() | s.names())
def test_autonomy_decisions_round_trip(ctx: AutonomyContext, tool: str | None) -> None:
    decision = AutonomyEnforcer().check(ctx, tool)
    assert loads(dumps(decision), AutonomyDecision) == decision
