"""Properties of the one commit path: the lifecycle table and the commit planner.

These are the properties that would catch a wrong design rather than a wrong line: a plan
that writes for a stale claim, a settled item that comes back to life, an append that leaves
a gap or skips a projection, a ledger charged by anything but the planner's arithmetic, a
follow-up written onto a log that moved.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from charter.core.budget import BudgetState, Usage
from charter.core.commit import (
    SNAPSHOT_EVERY,
    AppendEvents,
    ChainSpec,
    CommitReads,
    CommitSpec,
    Head,
    InsertItem,
    PutLedger,
    SetStatus,
    UpdateItem,
    Write,
    WriteSnapshot,
    apply_ledger,
    plan_claim,
    plan_commit,
    plan_commit_then_claim,
    snapshot_due,
)
from charter.core.errors import FenceLost, InvalidInput
from charter.core.events import EventKind, NodeCompleted, WorkflowCompleted
from charter.core.lifecycle import TRANSITIONS, ItemAction, apply_action, transition
from charter.core.records import ExecutionStatus, NewWorkItem, WorkItem, WorkItemStatus
from charter.testing.strategies import budget_states, usages

NOW = datetime(2026, 1, 1, tzinfo=UTC)
_NON_APPROVAL_KINDS = (NodeCompleted, WorkflowCompleted)


def _item(status: WorkItemStatus, fence: int) -> WorkItem:
    return WorkItem(
        item_id="i",
        tenant_id="t",
        execution_id="e",
        node_id="n",
        queue="general",
        payload=None,
        attempt=0,
        max_attempts=3,
        backoff_base_ms=10,
        status=status,
        available_at=NOW,
        created_at=NOW,
        worker_id="w" if status is WorkItemStatus.CLAIMED else None,
        lease_expires_at=NOW + timedelta(seconds=30) if status is WorkItemStatus.CLAIMED else None,
        fence=fence,
    )


statuses = st.sampled_from(WorkItemStatus)
actions = st.sampled_from(ItemAction)


@given(statuses, actions)
def test_the_table_is_the_only_way_a_status_changes(
    status: WorkItemStatus, action: ItemAction
) -> None:
    allowed = TRANSITIONS[status]
    if action in allowed:
        assert transition(status, action) is allowed[action]
    else:
        with pytest.raises(InvalidInput):
            transition(status, action)


@given(st.lists(actions, max_size=12), st.integers(0, 5))
def test_fences_only_grow_and_a_settled_item_never_comes_back(
    sequence: list[ItemAction], start_fence: int
) -> None:
    item = _item(WorkItemStatus.PENDING, start_fence)
    for action in sequence:
        before = item
        try:
            item = apply_action(
                item,
                action,
                fence=item.fence if action is not ItemAction.CLAIM else None,
                worker_id="w",
                lease_expires_at=NOW + timedelta(seconds=5),
            )
        except (InvalidInput, FenceLost):
            continue
        assert item.fence >= before.fence
        assert not before.status.terminal, "a terminal item moved"
        assert item.status is TRANSITIONS[before.status][action]
        if action is ItemAction.CLAIM:
            assert item.fence == before.fence + 1


def _kinds() -> st.SearchStrategy[tuple[EventKind, ...]]:
    completed = st.builds(
        NodeCompleted,
        node_id=st.sampled_from(["n", "m"]),
        output=st.none(),
        duration_ms=st.just(1),
        state_patch=st.just({}),
    )
    finished = st.builds(WorkflowCompleted, final_state=st.just({}))
    either: st.SearchStrategy[EventKind] = st.one_of(completed, finished)
    return st.lists(either, max_size=4).map(tuple)


@st.composite
def commits(draw: st.DrawFn) -> tuple[CommitSpec, CommitReads]:
    fence = draw(st.integers(1, 4))
    stale = draw(st.booleans())
    status = WorkItemStatus.CLAIMED if not stale else draw(statuses)
    item = _item(status, fence if not stale else draw(st.integers(0, 5)))
    last = draw(st.integers(0, 600))
    head = Head(
        execution_id="e",
        tenant_id="t",
        status=draw(st.sampled_from(ExecutionStatus)),
        last_sequence=last,
        head_hash="a" * 64 if last else None,
    )
    usage = draw(st.none() | usages())
    succeeded = draw(st.none() | st.booleans())
    then_events = draw(_kinds())
    then_items = tuple(
        NewWorkItem(item_id=f"next-{k}", execution_id="e", node_id="m", queue="general")
        for k in range(draw(st.integers(0, 2)))
    )
    follows = bool(then_events or then_items)
    spec = CommitSpec(
        item_id="i",
        fence=fence,
        outcome=draw(st.sampled_from(list(WorkItemStatus)[2:5])),
        events=draw(_kinds()),
        usage=usage,
        succeeded=succeeded,
        write_snapshot=draw(st.none() | st.booleans()),
        then_events=then_events,
        then_items=then_items,
        then_if_last_sequence=draw(st.sampled_from([last, last - 1])) if follows else None,
    )
    reads = CommitReads(
        item=item,
        head=head,
        ledger=draw(budget_states()) if usage is not None or succeeded is not None else None,
    )
    return spec, reads


@given(commits())
def test_a_commit_plan_is_all_or_nothing_and_keeps_every_rule(
    drawn: tuple[CommitSpec, CommitReads],
) -> None:
    spec, reads = drawn
    assert reads.item is not None
    assert reads.head is not None
    current = reads.item.status is WorkItemStatus.CLAIMED and reads.item.fence == spec.fence
    try:
        plan = plan_commit(spec, reads, now=NOW)
    except FenceLost:
        assert not current  # refused exactly when the claim is not current
        return
    except InvalidInput:
        return  # a total out of bounds: refused before anything is written
    assert current
    writes = plan.writes
    # The claim is settled first, guarded by what was read.
    first = writes[0]
    assert isinstance(first, UpdateItem)
    assert (first.expect_status, first.expect_fence) == (WorkItemStatus.CLAIMED, spec.fence)
    assert first.item.status is spec.outcome
    assert first.item.worker_id is None
    # Appends continue the log without a gap, the commit's events before the follow-up.
    appends = [w for w in writes if isinstance(w, AppendEvents)]
    expected_next = reads.head.last_sequence + 1
    for append in appends:
        assert append.first_sequence == expected_next
        expected_next = append.last_sequence + 1
    follow_up = spec.then_if_last_sequence == reads.head.last_sequence
    appended = tuple(k for a in appends for k in a.kinds)
    assert appended == spec.events + (spec.then_events if follow_up else ())
    # The ledger is charged by the planner's arithmetic, exactly when there is something
    # to charge.
    ledgers = [w for w in writes if isinstance(w, PutLedger)]
    if spec.usage is None and spec.succeeded is None:
        assert ledgers == []
    else:
        assert reads.ledger is not None
        assert [w.state for w in ledgers] == [
            apply_ledger(reads.ledger, spec.usage, spec.succeeded)
        ]
    # A snapshot when asked, or at the cadence's boundary when not said.
    snapshots = [w for w in writes if isinstance(w, WriteSnapshot)]
    assert len(snapshots) <= 1
    if spec.write_snapshot is not None:
        assert bool(snapshots) is spec.write_snapshot
    # A status changes only through a status kind.
    for write in writes:
        if isinstance(write, SetStatus):
            assert any(isinstance(k, WorkflowCompleted) for k in appended)


@st.composite
def chained_commits(draw: st.DrawFn) -> tuple[CommitSpec, CommitReads, ChainSpec]:
    """A commit whose follow-up items differ in queue and availability, and who chains."""
    spec, reads = draw(commits())
    offsets = st.sampled_from([None, -5, 0, 5])  # seconds from now; None: enqueued now
    items = tuple(
        NewWorkItem(
            item_id=f"next-{k}",
            execution_id="e",
            node_id=f"m{k}",
            queue=draw(st.sampled_from(["general", "llm", "io"])),
            available_at=None if (offset := draw(offsets)) is None else NOW + timedelta(0, offset),
        )
        for k in range(draw(st.integers(0, 4)))
    )
    if draw(st.integers(0, 9)):  # mostly a current claim: the chain is what is checked
        reads = attrs.evolve(reads, item=_item(WorkItemStatus.CLAIMED, spec.fence))
    last = reads.head.last_sequence if reads.head is not None else 0
    moved = st.sampled_from([last, last, last, last - 1])
    when = draw(moved) if items or spec.then_events else None
    spec = attrs.evolve(spec, then_items=items, then_if_last_sequence=when)
    queues = tuple(draw(st.lists(st.sampled_from(["general", "llm", "io"]), max_size=3)))
    chain = ChainSpec(worker_id="w2", queues=queues, lease_secs=draw(st.sampled_from([1.0, 30.0])))
    wait = draw(st.booleans())
    if queues and wait:  # an item of the run already waiting in the queues
        waiting = attrs.evolve(
            _item(WorkItemStatus.PENDING, draw(st.integers(0, 3))),
            item_id="waiting",
            queue=draw(st.sampled_from(queues)),
            available_at=NOW - timedelta(seconds=draw(st.sampled_from([0, 5, 10]))),
            attempt=draw(st.integers(0, 2)),
        )
        reads = attrs.evolve(reads, claimable=waiting)
    return spec, reads, chain


@given(chained_commits())
def test_a_chained_claim_is_the_commit_then_the_claim_a_worker_would_make(
    drawn: tuple[CommitSpec, CommitReads, ChainSpec],
) -> None:
    """`plan_commit_then_claim` writes exactly `plan_commit`'s writes and then what
    `plan_claim` would write for the item a claim would take — of the one waiting before
    the commit and those the commit enqueues, in the worker's queues and available now, by
    availability then enqueue order — an enqueued item inserted already claimed; with
    nothing to take (or no chain) the commit alone."""
    spec, reads, chain = drawn
    try:
        alone = plan_commit(spec, reads, now=NOW)
    except (FenceLost, InvalidInput) as refused:
        with pytest.raises(type(refused)):
            plan_commit_then_claim(spec, reads, chain, now=NOW)
        return
    assert plan_commit_then_claim(spec, reads, None, now=NOW) == (alone, None)
    plan, claimed = plan_commit_then_claim(spec, reads, chain, now=NOW)
    inserted = [
        (w.item.available_at, index, w.item)
        for index, w in enumerate(alone.writes)
        if isinstance(w, InsertItem) and w.item.queue in chain.queues and w.item.available_at <= NOW
    ]
    if reads.claimable is not None:  # enqueued before anything this commit enqueues
        inserted.append((reads.claimable.available_at, -1, reads.claimable))
    if not inserted:
        assert (plan, claimed) == (alone, None)
        return
    _, index, pending = min(inserted, key=lambda found: found[:2])
    assert reads.head is not None
    appends = [w for w in alone.writes if isinstance(w, AppendEvents)]
    statuses = [w.status for w in alone.writes if isinstance(w, SetStatus)]
    after = attrs.evolve(
        reads.head,
        last_sequence=appends[-1].last_sequence if appends else reads.head.last_sequence,
        status=statuses[-1] if statuses else reads.head.status,
    )
    claim_plan, expected = plan_claim(
        pending, after, worker_id=chain.worker_id, lease_secs=chain.lease_secs, now=NOW
    )
    update, *claim_writes = claim_plan.writes
    assert isinstance(update, UpdateItem)
    assert update.item == expected
    writes: list[Write] = list(alone.writes)
    if index < 0:  # the waiting item: claimed as a claim of its own claims it
        writes.append(update)
    else:  # an item this commit enqueues: inserted as the claim leaves it
        writes[index] = InsertItem(item=expected)
    assert plan.writes == (*writes, *claim_writes)
    assert claimed == expected


def test_ledger_rule_is_the_budget_arithmetic() -> None:
    state = BudgetState(consecutive_error_count=2)
    usage = Usage(input_tokens=5, cost_usd=0.25)
    assert apply_ledger(state, usage, True) == attrs.evolve(
        state.apply(usage), consecutive_error_count=0
    )
    assert apply_ledger(state, None, False).consecutive_error_count == 3
    assert apply_ledger(state, None, None) == state


@given(
    last=st.integers(0, 70_000)
    | st.integers(1, 270).map(lambda k: k * SNAPSHOT_EVERY - 1)  # right before a multiple
)
def test_a_claim_that_crosses_the_snapshot_interval_folds_a_snapshot(last: int) -> None:
    """Claims append too: a claim whose ``node_started`` crosses the interval writes the
    snapshot a commit would (with groups, claims come k in a row and a commit might never
    cross it), after the event, and only then."""
    head = Head(
        execution_id="e",
        tenant_id="t",
        status=ExecutionStatus.RUNNING,
        last_sequence=last,
        head_hash="a" * 64 if last else None,
    )
    plan, _ = plan_claim(
        _item(WorkItemStatus.PENDING, 0), head, worker_id="w", lease_secs=30, now=NOW
    )
    snapshots = [w for w in plan.writes if isinstance(w, WriteSnapshot)]
    assert snapshots == ([WriteSnapshot(execution_id="e")] if snapshot_due(last, last + 1) else [])
    if snapshots:
        assert plan.writes[-1] == snapshots[0]  # folded after the claim's own event
