"""Properties of the materialized-state fold that stores rely on."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import attrs
from hypothesis import given
from hypothesis import strategies as st

from charter.core import EventKind, ExecutionStatus
from charter.core.events import Event, type_tag
from charter.core.materialize import (
    MATERIALIZED_KINDS,
    MATERIALIZED_TYPES,
    STATUS_KINDS,
    Materialized,
    apply_event,
    apply_events,
    materialize,
    status_after,
)
from charter.testing.strategies import event_kinds, json_values


@given(
    event_kinds().filter(lambda kind: not isinstance(kind, STATUS_KINDS)),
    st.sampled_from(ExecutionStatus),
)
def test_only_status_kinds_change_a_status(kind: EventKind, status: ExecutionStatus) -> None:
    # Stores skip the status fold for appends without a status kind: that is only sound if
    # every other kind leaves every status alone. (Status kinds are filtered out of the
    # draw, so every example checks something.)
    assert status_after(status, kind) is status


@given(event_kinds(), st.sampled_from([s for s in ExecutionStatus if s.terminal]))
def test_a_terminal_status_never_changes(kind: EventKind, status: ExecutionStatus) -> None:
    assert status_after(status, kind) is status


_NODES = ("a", "b", "c")
_KINDS = (
    "workflow_started", "workflow_completed", "workflow_failed", "node_scheduled",
    "node_started", "node_completed", "node_failed", "node_skipped", "node_cancelled",
    "approval_received", "node_gated", "usage_recorded", "tool_called", "interrupt_raised",
)  # fmt: skip


def _logs() -> st.SearchStrategy[list[Event]]:
    """Short logs over a few nodes, numbered 1…n, mixing kinds that matter with ones that
    do not."""

    def numbered(kinds: list[EventKind]) -> list[Event]:
        return [
            Event(
                id=f"e{index}",
                execution_id="x",
                sequence=index,
                kind=attrs.evolve(cast(Any, kind), node_id=_NODES[index % 3])
                if hasattr(kind, "node_id")
                else kind,
                created_at=datetime(2026, 1, 1, tzinfo=UTC),
            )
            for index, kind in enumerate(kinds, start=1)
        ]

    return st.lists(event_kinds(kinds=_KINDS), max_size=25).map(numbered)


@given(_logs(), json_values())
def test_the_batch_fold_equals_the_event_by_event_fold(log: list[Event], initial: Any) -> None:
    one_by_one = Materialized(state=initial if isinstance(initial, dict) else {})
    for event in log:
        one_by_one = apply_event(one_by_one, event)
    assert materialize(initial, log) == one_by_one


@given(_logs(), json_values())
def test_kinds_outside_the_materialized_ones_only_move_the_sequence(
    log: list[Event], initial: Any
) -> None:
    start = Materialized(state=initial if isinstance(initial, dict) else {})
    relevant = [e for e in log if isinstance(e.kind, MATERIALIZED_KINDS)]
    last = log[-1].sequence if log else None
    assert apply_events(start, relevant, last_sequence=last) == apply_events(start, log)
    assert all(type_tag(type(e.kind)) in MATERIALIZED_TYPES for e in relevant)
