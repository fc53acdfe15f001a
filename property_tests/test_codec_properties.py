"""Every core value survives JSON exactly, in upstream's shape."""

from __future__ import annotations

from datetime import UTC, timedelta, timezone
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charter.adapters.codec import converter, dump, dumps, event_text, loads
from charter.core import (
    EVENT_KINDS,
    AgentCard,
    ApprovalConsumed,
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
    NodeFailed,
    NodeGated,
    PolicyEvaluator,
    PolicyVerdict,
    PolicyViolation,
    ToolApprovalRequired,
    event_type,
    gate_node,
)
from charter.core.canonical import canonical_json
from charter.core.errors import InvalidInput
from charter.core.events import LimitCharged
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


@pytest.mark.parametrize("tag", sorted(EVENT_KINDS))
@settings(max_examples=40)  # x every kind
@given(data=st.data())
def test_each_kinds_encoder_gives_exactly_the_reference_text(tag: str, data: st.DataObject) -> None:
    """`event_text` (a per-kind encoder) is the exact canonical JSON of the generic cattrs
    encoding, and refuses exactly what the exact encoder refuses."""
    kind = data.draw(s.event_kinds(kinds=(tag,)))
    try:
        expected: str | None = canonical_json(converter.unstructure(kind))
    except InvalidInput:
        expected = None
    if expected is None:
        with pytest.raises(InvalidInput):
            event_text(kind)
    else:
        assert event_text(kind) == expected


_odd_values = st.sampled_from(
    [0.0, -0.0, 1.0, 2.0**53, 1e16, 1e21, 1e-7, 0.1, 5e-324, 2**63, -(2**63) - 1, True, "\ud800"]
)


@given(data=st.data(), odd=_odd_values)
def test_event_text_falls_back_exactly_on_values_the_fast_path_cannot_print(
    data: st.DataObject, odd: Any
) -> None:
    """Hand-built kinds with floats, out-of-range integers, wrongly typed fields and lone
    surrogates in any field: the text is still the exact encoder's, or both refuse."""
    kind = data.draw(s.event_kinds())
    fields = [f.name for f in attrs.fields(type(kind))]
    name = data.draw(st.sampled_from(fields))
    odd_kind = attrs.evolve(kind, **{name: odd})
    try:
        expected: str | None = canonical_json(converter.unstructure(odd_kind))
    except Exception:  # noqa: BLE001 - a wrongly typed value: whatever the generic path raises
        expected = None
    if expected is None:
        with pytest.raises(Exception):  # noqa: B017, PT011 - the same path raises it
            event_text(odd_kind)
    else:
        assert event_text(odd_kind) == expected


def test_gate_events_are_encoded_by_their_kinds_encoders() -> None:
    """The kinds the gate returns have their own encoders (the fast path is in use)."""
    from charter.adapters import codec

    for cls in (NodeGated, ToolApprovalRequired, ApprovalConsumed, NodeFailed, PolicyViolation):
        assert cls in codec._KIND_ENCODERS


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


_odd_numbers = [None, 0, 1, 0.0, -0.0, 1.0, 2.5, 2.0**53, 1e21, 1e-7, 2**63, -(2**63) - 1]
_odd_members: st.SearchStrategy[Any] = st.sampled_from(
    [*_odd_numbers, True, False, "x", "\ud800", [], {}, (), float("nan"), float("inf")]
)
_zones = st.sampled_from(
    [UTC, timezone(timedelta(0)), timezone(timedelta(hours=1)), timezone(timedelta(hours=-5))]
)


def _near_shapes(gated: NodeGated, odd: Any, zone: Any) -> list[tuple[str, Any]]:
    """``node_gated``'s budget, limits and layer records each with one member changed to
    ``odd`` or dropped (every member in turn), and its timestamp in ``zone``."""
    assert gated.decided_at is not None  # the gate always records its clock reading
    changed: list[tuple[str, Any]] = [("decided_at", gated.decided_at.astimezone(zone))]
    for field in ("budget", "limits"):
        members = getattr(gated, field)
        for name in members:
            changed.append((field, {**members, name: odd}))
            changed.append((field, {key: v for key, v in members.items() if key != name}))
    records = gated.policies or [{"scope": "tenant", "digest": "d"}]
    for index, record in enumerate(records):
        for name in [*record, "final"]:
            dropped = {key: v for key, v in record.items() if key != name}
            # True first: a remembered text for True must not answer for an equal 1 or 1.0
            changed += [
                ("policies", [*records[:index], new, *records[index + 1 :]])
                for new in ({**record, name: True}, {**record, name: odd}, dropped)
            ]
    return changed


@given(request=s.gate_requests(), odd=_odd_members, zone=_zones)
def test_node_gated_writers_give_the_reference_text_on_near_shapes(
    request: GateRequest, odd: Any, zone: Any
) -> None:
    """`node_gated`'s own writers (the budget and limits objects, the layer records, whose
    texts are remembered, the timestamp, whose last text is remembered): the gate's own
    event, then the same event with each member of those values changed to an odd one or
    dropped, or the timestamp in another zone, each the exact encoder's text, encoded after
    the original so that a remembered text is asked for each changed value."""
    gated = gate_node(request).events[0]
    assert isinstance(gated, NodeGated)
    kinds = [gated, gated]
    kinds += [attrs.evolve(gated, **{f: v}) for f, v in _near_shapes(gated, odd, zone)]
    for kind in kinds:
        try:
            expected: str | None = canonical_json(converter.unstructure(kind))
        except Exception:  # noqa: BLE001 - a wrongly typed value: whatever the generic path raises
            expected = None
        if expected is None:
            with pytest.raises(Exception):  # noqa: B017, PT011 - the same path raises it
                event_text(kind)
        else:
            assert event_text(kind) == expected


@given(
    start=s.datetimes(),
    steps=st.lists(
        st.sampled_from([0, 1, 59, 60, 61, 3_600, 86_400, 366 * 86_400])
        | st.integers(min_value=-(10**8), max_value=10**8),
        max_size=6,
    ),
    micros=st.lists(st.sampled_from([0, 1, 999_999]) | st.integers(0, 999_999), max_size=6),
    zone=_zones,
)
def test_the_utc_timestamp_writer_gives_the_reference_text(
    start: Any, steps: list[int], micros: list[int], zone: Any
) -> None:
    """`decided_at` and every datetime field of an event, written by the UTC writer (the
    last minute's text kept, seconds and microseconds appended), is what `dump` writes:
    timestamps in the same minute, the next one, the same minute of another hour, day or
    year, with and without microseconds, and in another zone, each after the one before."""
    moments = [start.astimezone(UTC)]
    for step, micro in zip(steps, micros, strict=False):
        try:
            moments.append((moments[-1] + timedelta(seconds=step)).replace(microsecond=micro))
        except OverflowError:
            break
    moments.append(moments[-1].astimezone(zone))
    moments.append(moments[-1].replace(fold=1))
    for moment in moments:
        kind = LimitCharged(node_id="n", attempt=0, at=moment, limits=[])
        gated = NodeGated(node_id="n", attempt=0, outcome="run", decided_at=moment)
        for event in (gated, kind):
            assert event_text(event) == canonical_json(converter.unstructure(event))
        assert event_text(gated).count(dumps(moment)) == 1
