"""The event log of an execution: append-only, numbered without gaps.

In the order a reader should learn them:

1. `append_events` numbers the events it appends with the next sequences, stamps them with
   the store's clock and gives each its own id; appending nothing appends nothing; an
   unknown execution is `NotFound`.
2. `read_events` reads after a sequence (exclusive), ascending, at most ``limit`` events; an
   unknown execution is `NotFound`.
3. An append may enqueue work items in the same transaction.
4. Compare-and-append: with ``expected_last_sequence`` an append happens only if the log
   still ends there; otherwise it is a `Conflict` and writes nothing (neither its events nor
   its items).
5. Every operation that writes the log (claims, commits, failures, parks, reclaims,
   appends) shares one sequence: the log never has a gap.
"""

from __future__ import annotations

import pytest

from charter.adapters.clock import ManualClock
from charter.core.errors import Conflict, NotFound
from charter.core.events import ToolCalled, WorkflowCancelled, WorkflowCompleted, WorkflowFailed
from charter.core.ports import Store
from tests.contract.helpers import (
    EXEC,
    LEASE,
    claim,
    complete,
    names,
    new_item,
    node_of,
    observe,
    seconds,
    start,
)

# ── append and read ────────────────────────────────────────────────────────────────────


def test_append_events_assigns_the_next_sequences(store: Store, clock: ManualClock) -> None:
    start(store, clock)
    clock.advance(3)
    appended = store.append_events(EXEC, [WorkflowFailed("a"), WorkflowCancelled("b")])
    assert [(e.sequence, e.execution_id, e.created_at) for e in appended] == [
        (2, EXEC, clock.now()),
        (3, EXEC, clock.now()),
    ]
    assert [e.kind for e in appended] == [WorkflowFailed("a"), WorkflowCancelled("b")]
    assert store.read_events(EXEC)[1:] == appended
    assert len({e.id for e in store.read_events(EXEC)}) == 3


def test_append_no_events_appends_nothing(store: Store, clock: ManualClock) -> None:
    start(store, clock)
    before = observe(store)
    assert store.append_events(EXEC, []) == ()
    assert observe(store) == before


def test_append_events_to_unknown_execution_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        store.append_events("ghost", [WorkflowFailed("x")])
    assert store.get_execution("ghost") is None


def test_read_events_after_is_exclusive_and_ascending(store: Store, clock: ManualClock) -> None:
    start(store, clock)
    store.append_events(EXEC, [WorkflowFailed(str(n)) for n in range(6)])
    assert [e.sequence for e in store.read_events(EXEC, after=3)] == [4, 5, 6, 7]
    assert [e.sequence for e in store.read_events(EXEC, after=0)] == list(range(1, 8))
    assert store.read_events(EXEC, after=7) == ()


def test_read_events_limit_caps_the_count(store: Store, clock: ManualClock) -> None:
    start(store, clock)
    store.append_events(EXEC, [WorkflowFailed(str(n)) for n in range(6)])
    assert [e.sequence for e in store.read_events(EXEC, after=2, limit=2)] == [3, 4]


def test_read_events_of_unknown_execution_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        store.read_events("ghost")


# ── append with items, compare-and-append ──────────────────────────────────────────────


def test_append_with_items_enqueues_them_atomically(store: Store, clock: ManualClock) -> None:
    start(store, clock, 0)
    appended = store.append_events(
        EXEC,
        [ToolCalled(node_id="a", tool="t")],
        items=[new_item("late-1"), new_item("late-2")],
    )
    assert names(appended) == ["ToolCalled"]
    assert [store.get_item(i) is not None for i in ("late-1", "late-2")] == [True, True]


def test_append_expecting_the_current_sequence_succeeds(store: Store, clock: ManualClock) -> None:
    start(store, clock, 0)
    last = len(store.read_events(EXEC))
    appended = store.append_events(
        EXEC, [ToolCalled(node_id="a", tool="t")], expected_last_sequence=last
    )
    assert [e.sequence for e in appended] == [last + 1]


def test_append_expecting_a_stale_sequence_is_conflict_and_writes_nothing(
    store: Store, clock: ManualClock
) -> None:
    start(store, clock, 0)
    last = len(store.read_events(EXEC))
    store.append_events(EXEC, [ToolCalled(node_id="a", tool="t")])  # someone else moved on
    before = observe(store)
    with pytest.raises(Conflict):
        store.append_events(
            EXEC,
            [ToolCalled(node_id="b", tool="t")],
            items=[new_item("never")],
            expected_last_sequence=last,
        )
    assert observe(store) == before
    assert store.get_item("never") is None


# ── one sequence for every writer ──────────────────────────────────────────────────────


def test_sequences_have_no_gaps_across_queue_operations(store: Store, clock: ManualClock) -> None:
    first, second, third = start(store, clock, 3, max_attempts=5)
    complete(store, claim(store))  # first
    retried = claim(store)  # second
    store.fail(second, retried.fence, error="boom", delay_ms=0)
    again = claim(store)  # second again: available now, enqueued before third
    store.park(second, again.fence, retry_after=clock.now() + seconds(600))
    claim(store)  # third
    clock.advance(LEASE + 1)
    store.reclaim_expired()
    store.append_events(EXEC, [WorkflowCompleted(None)])
    events = store.read_events(EXEC)
    assert names(events) == [
        "WorkflowStarted",
        "NodeStarted",
        "NodeCompleted",
        "NodeStarted",
        "NodeFailed",
        "RetryScheduled",
        "NodeStarted",
        "NodeParked",
        "NodeStarted",
        "NodeFailed",
        "RetryScheduled",
        "WorkflowCompleted",
    ]
    assert [e.sequence for e in events] == list(range(1, 13))
    nodes = [node_of(first)] * 2 + [node_of(second)] * 5 + [node_of(third)] * 3
    assert [e.node_id for e in events[1:11]] == nodes
    last = store.get_execution(EXEC)
    assert last is not None
    assert last.last_sequence == 12
