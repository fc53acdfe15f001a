"""The worker's commit requests built directly are exactly what `attrs.evolve` would give."""

from __future__ import annotations

import attrs
from hypothesis import given
from hypothesis import strategies as st

from charter.core.events import EventKind
from charter.core.ports import CommitRequest, EffectResult
from charter.core.records import NewWorkItem, WorkItemStatus
from charter.testing.strategies import event_kinds, json_values, names, usages
from charter.worker.commits import with_then

_items = st.builds(
    NewWorkItem,
    item_id=names(),
    execution_id=names(),
    node_id=names(),
    queue=names(),
    payload=json_values(),
    max_attempts=st.integers(1, 9),
    backoff_base_ms=st.integers(0, 5000),
)

_requests = st.builds(
    CommitRequest,
    item_id=names(),
    fence=st.integers(0, 10**6),
    outcome=st.sampled_from(WorkItemStatus),
    events=st.lists(event_kinds(), max_size=3).map(tuple),
    usage=st.none() | usages(),
    succeeded=st.none() | st.booleans(),
    write_snapshot=st.none() | st.booleans(),
    effect=st.none() | st.builds(EffectResult, key=names(), result=json_values()),
    then_events=st.lists(event_kinds(), max_size=2).map(tuple),
    then_items=st.lists(_items, max_size=2).map(tuple),
    then_if_last_sequence=st.none() | st.integers(0, 10**6),
)


@given(
    _requests,
    st.lists(event_kinds(), max_size=3).map(tuple),
    st.lists(_items, max_size=2).map(tuple),
    st.integers(0, 10**6),
)
def test_with_then_is_evolve(
    request: CommitRequest,
    events: tuple[EventKind, ...],
    items: tuple[NewWorkItem, ...],
    last: int,
) -> None:
    expected = attrs.evolve(
        request, then_events=events, then_items=items, then_if_last_sequence=last
    )
    built = with_then(request, events, items, last)
    assert built == expected
    # Every field, by name: equality of the whole would hide a field both left at its default.
    for field in attrs.fields(CommitRequest):
        assert getattr(built, field.name) == getattr(expected, field.name), field.name
