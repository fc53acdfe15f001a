"""The one fenced commit: everything an attempt produced, written in one transaction.

In the order a reader should learn them:

1. A commit made with the item's current fence settles the item in its outcome (completed,
   held or failed — any other outcome is `InvalidInput` and writes nothing), releases the
   claim and appends the attempt's events after the log's last sequence. A settled item is
   not handed out again.
2. A commit may carry the scheduler's follow-up — events and items for the next step —
   written in the same transaction only if the log still ends where the scheduler assumed
   (``then_if_last_sequence``); if the log moved, the commit itself still happens without
   the follow-up. A malformed follow-up refuses the whole commit.
3. With ``write_snapshot`` the commit stores the execution's state folded from all its
   events at the last sequence (including events appended outside commits); a later
   snapshot supersedes an earlier one and keeps sibling nodes' patches.

The commit's other parts have modules of their own: usage (`test_ledger`), approval
consumption (`test_approvals`), effect results (`test_effects`); a commit with a stale fence
is in `test_reclaim_and_fences`, racing commits in `test_concurrency`.
"""

from __future__ import annotations

from typing import Any

import pytest

from charter.adapters.clock import ManualClock
from charter.core.budget import Usage
from charter.core.errors import InvalidInput
from charter.core.events import ToolCalled, WorkflowCompleted
from charter.core.ports import Store
from charter.core.records import WorkItemStatus
from tests.contract.helpers import (
    COMPLETED,
    EXEC,
    LEASE,
    PENDING,
    QUEUE,
    WORKER,
    claim,
    commit,
    complete,
    completed,
    names,
    new_item,
    node_of,
    observe,
    start,
)

# ── settle and append ──────────────────────────────────────────────────────────────────


def test_commit_with_current_fence_settles_and_appends_its_events(
    store: Store, clock: ManualClock
) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    clock.advance(4)
    node = node_of(item_id)
    appended = commit(
        store, claimed, completed(node, {"answer": 42}), WorkflowCompleted({"answer": 42})
    )
    assert [(e.sequence, e.created_at) for e in appended] == [(3, clock.now()), (4, clock.now())]
    assert [e.kind for e in appended] == [
        completed(node, {"answer": 42}),
        WorkflowCompleted({"answer": 42}),
    ]
    assert store.read_events(EXEC)[2:] == appended
    settled = store.get_item(item_id)
    assert settled is not None
    assert (settled.status, settled.worker_id, settled.lease_expires_at) == (COMPLETED, None, None)


@pytest.mark.parametrize(
    "outcome", [WorkItemStatus.COMPLETED, WorkItemStatus.HELD, WorkItemStatus.FAILED]
)
def test_commit_settles_the_item_in_its_outcome(
    store: Store, clock: ManualClock, outcome: WorkItemStatus
) -> None:
    (item_id,) = start(store, clock)
    commit(store, claim(store), outcome=outcome)
    settled = store.get_item(item_id)
    assert settled is not None
    assert settled.status is outcome
    assert store.claim(WORKER, [QUEUE], lease_secs=LEASE) is None


@pytest.mark.parametrize(
    "outcome", [WorkItemStatus.PENDING, WorkItemStatus.CLAIMED, WorkItemStatus.DEAD_LETTERED]
)
def test_commit_outcome_must_be_completed_held_or_failed(
    store: Store, clock: ManualClock, outcome: WorkItemStatus
) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    before = observe(store, item_id)
    with pytest.raises(InvalidInput):
        commit(
            store, claimed, completed(node_of(item_id)), outcome=outcome, usage=Usage(iterations=1)
        )
    assert observe(store, item_id) == before


# ── commit with a follow-up (the scheduler's next step in the same transaction) ────────


def test_a_commits_follow_up_is_written_when_the_log_is_where_it_assumed(
    store: Store, clock: ManualClock
) -> None:
    start(store, clock)
    claimed = claim(store)
    last = len(store.read_events(EXEC))
    appended = complete(
        store,
        claimed,
        then_events=(ToolCalled(node_id="next", tool="t"),),
        then_items=(new_item("next-item"),),
        then_if_last_sequence=last,
    )
    assert names(appended) == ["NodeCompleted", "ToolCalled"]
    assert [e.sequence for e in appended] == [last + 1, last + 2]
    assert appended == store.read_events(EXEC)[-2:]
    next_item = store.get_item("next-item")
    assert next_item is not None
    assert next_item.status is PENDING
    assert claim(store).item.item_id == "next-item"


def test_a_commits_follow_up_is_left_out_when_the_log_moved(
    store: Store, clock: ManualClock
) -> None:
    start(store, clock)
    claimed = claim(store)
    last = len(store.read_events(EXEC))
    store.append_events(EXEC, [ToolCalled(node_id="other", tool="t")])  # someone else
    appended = complete(
        store,
        claimed,
        then_events=(ToolCalled(node_id="next", tool="t"),),
        then_items=(new_item("next-item"),),
        then_if_last_sequence=last,
    )
    assert names(appended) == ["NodeCompleted"]  # the commit itself still happens
    assert store.get_item("next-item") is None
    stored = store.get_item(claimed.item.item_id)
    assert stored is not None
    assert stored.status is COMPLETED


@pytest.mark.parametrize(
    ("options", "where"),
    [
        ({"then_events": (ToolCalled(node_id="n", tool="t"),)}, "then_if_last_sequence"),
        (
            {
                "then_items": (new_item("x", execution_id="exec-other"),),
                "then_if_last_sequence": 0,
            },
            "then_items[0].execution_id",
        ),
    ],
    ids=["no-assumed-sequence", "foreign-item"],
)
def test_a_bad_follow_up_refuses_the_whole_commit(
    store: Store, clock: ManualClock, options: dict[str, Any], where: str
) -> None:
    start(store, clock)
    start(store, clock, 0, execution_id="exec-other")
    claimed = claim(store)
    before = observe(store)
    with pytest.raises(InvalidInput) as refused:
        complete(store, claimed, **options)
    assert refused.value.where == where
    assert observe(store) == before


# ── snapshots ──────────────────────────────────────────────────────────────────────────


def test_no_snapshot_until_a_commit_writes_one(store: Store, clock: ManualClock) -> None:
    start(store, clock)
    complete(store, claim(store), write_snapshot=False)
    assert store.latest_snapshot(EXEC) is None


def test_commit_with_write_snapshot_folds_the_events_at_the_last_sequence(
    store: Store, clock: ManualClock
) -> None:
    (item_id,) = start(store, clock, initial_input={"topic": "x", "drop": 1})
    node = node_of(item_id)
    claimed = claim(store)
    clock.advance(2)
    patch = {"drop": None, "found": [1], "nested": {"k": "v"}}
    commit(store, claimed, completed(node, {"r": 1}, patch), write_snapshot=True)
    snapshot = store.latest_snapshot(EXEC)
    assert snapshot is not None
    assert (snapshot.execution_id, snapshot.at_sequence, snapshot.created_at) == (
        EXEC,
        3,
        clock.now(),
    )
    assert snapshot.state == {
        "status": "running",
        "state": {"topic": "x", "found": [1], "nested": {"k": "v"}},
        "completed_nodes": {node: {"r": 1}},
        "active_nodes": [],
    }


def test_later_snapshot_supersedes_and_keeps_sibling_patches(
    store: Store, clock: ManualClock
) -> None:
    # Upstream: concurrent sibling commits keep both patches (no write skew).
    first_id, second_id = start(store, clock, 2, initial_input={"base": 0})
    first, second = claim(store), claim(store)
    commit(store, first, completed(node_of(first_id), "a", {"a": 1}), write_snapshot=True)
    early = store.latest_snapshot(EXEC)
    commit(store, second, completed(node_of(second_id), "b", {"b": 2}), write_snapshot=True)
    late = store.latest_snapshot(EXEC)
    assert early is not None
    assert late is not None
    assert (early.at_sequence, late.at_sequence) == (4, 5)
    assert early.state == {
        "status": "running",
        "state": {"base": 0, "a": 1},
        "completed_nodes": {node_of(first_id): "a"},
        "active_nodes": [node_of(second_id)],
    }
    assert late.state == {
        "status": "running",
        "state": {"base": 0, "a": 1, "b": 2},
        "completed_nodes": {node_of(first_id): "a", node_of(second_id): "b"},
        "active_nodes": [],
    }


def test_snapshot_includes_events_appended_outside_commits(
    store: Store, clock: ManualClock
) -> None:
    start(store, clock, 2)
    complete(store, claim(store), write_snapshot=True)
    store.append_events(EXEC, [WorkflowCompleted({"final": True})])
    complete(store, claim(store), write_snapshot=True)
    snapshot = store.latest_snapshot(EXEC)
    assert snapshot is not None
    assert isinstance(snapshot.state, dict)
    assert (snapshot.at_sequence, snapshot.state["status"], snapshot.state["state"]) == (
        6,
        "completed",
        {"final": True},
    )
