"""A commit that claims its follow-up (`Store.commit_and_claim`): one transaction instead of
a commit and then a claim, and indistinguishable from them in what it records.

In the order a reader should learn them:

1. The combined commit records exactly what the commit followed by a claim would: the
   same item rows (the successor claimed with the next fence, the worker and the lease),
   the same events at the same sequences (``node_started`` last), the same ledger and
   snapshot — checked side by side on two runs of one store, over several follow-ups;
   and it hands back the same `Claim` the claim would.
2. It claims what a claim by that worker of that run would take: of the run's items
   waiting before the commit and those the commit enqueues, one of its queues, available
   now, by availability then enqueue order; nothing when none is (a follow-up left out
   because the log moved enqueues nothing to take).
3. A commit refused (a stale fence) claims nothing and writes nothing.
4. A worker that dies after the combined commit leaves the successor claimed under a
   lease that expires: reclaim then retries it as it would any claim.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import attrs
import pytest

from charter.adapters.clock import ManualClock
from charter.core.errors import FenceLost, InvalidInput
from charter.core.events import NodeScheduled, NodeStarted
from charter.core.ports import CommitRequest, Store
from charter.core.records import Claim, WorkItem
from tests.contract.helpers import (
    CLAIMED,
    COMPLETED,
    LEASE,
    PENDING,
    QUEUE,
    WORKER,
    completed,
    names,
    new_item,
    observe,
    start,
)

OTHER_QUEUE = "other"


def _follow_up(run: str, plans: list[dict[str, Any]], now: datetime) -> tuple[Any, ...]:
    """The follow-up items of ``plans`` for ``run`` (ids and nodes named after the run's
    position, so two runs' records compare equal once the run id is replaced)."""
    return tuple(
        new_item(
            f"{run}-next-{index}",
            execution_id=run,
            node_id=f"next-{index}",
            queue=plan.get("queue", QUEUE),
            available_at=None if "delay" not in plan else now + timedelta(seconds=plan["delay"]),
        )
        for index, plan in enumerate(plans)
    )


def _request(store: Store, claimed: Claim, plans: list[dict[str, Any]], now: datetime) -> Any:
    run = claimed.item.execution_id
    last = store.read_events(run)[-1].sequence
    items = _follow_up(run, plans, now)
    return CommitRequest(
        item_id=claimed.item.item_id,
        fence=claimed.fence,
        outcome=COMPLETED,
        events=(completed(claimed.item.node_id),),
        then_events=tuple(
            NodeScheduled(node_id=item.node_id, queue_type=item.queue) for item in items
        ),
        then_items=items,
        then_if_last_sequence=last,
    )


def _first_claim(store: Store, run: str) -> Claim:
    claimed = store.claim(WORKER, [QUEUE], lease_secs=LEASE, execution_id=run)
    assert claimed is not None
    return claimed


def _normalised(store: Store, run: str, item_ids: list[str]) -> dict[str, Any]:
    """What the store shows about ``run``, with its id taken out of every name."""

    def item(found: WorkItem | None) -> WorkItem | None:
        if found is None:
            return None
        return attrs.evolve(found, item_id=found.item_id.replace(run, "RUN"), execution_id="RUN")

    execution = store.get_execution(run)
    assert execution is not None
    snapshot = store.latest_snapshot(run)
    return {
        "status": execution.status,
        "last_sequence": execution.last_sequence,
        "events": [(e.sequence, e.kind, e.created_at) for e in store.read_events(run)],
        "ledger": store.get_ledger(run),
        "snapshot": None if snapshot is None else (snapshot.at_sequence, snapshot.state),
        "approvals": store.pending_approvals(execution_id=run),
        "items": {i.replace(run, "RUN"): item(store.get_item(i)) for i in item_ids},
    }


def _claim_fields(claimed: Claim | None, run: str) -> Any:
    if claimed is None:
        return None
    item = attrs.evolve(
        claimed.item, item_id=claimed.item.item_id.replace(run, "RUN"), execution_id="RUN"
    )
    kinds = [event.kind for event in claimed.events]
    return (item, claimed.fence, claimed.lease_expires_at, kinds, claimed.tenant)


FOLLOW_UPS = [
    pytest.param([{}], id="one-successor"),
    pytest.param([{}, {}, {}], id="fan-out"),
    pytest.param([{"delay": 5}, {}], id="first-not-yet-available"),
    pytest.param([{}, {"delay": -5}], id="second-available-earlier"),
    pytest.param([{"queue": OTHER_QUEUE}, {}], id="first-in-another-queue"),
    pytest.param([{"queue": OTHER_QUEUE}], id="none-in-the-queues"),
    pytest.param([{"delay": 5}], id="none-available"),
    pytest.param([], id="no-follow-up-items"),
]


@pytest.mark.parametrize("waiting", [0, 1, 2], ids=["alone", "one-waiting", "two-waiting"])
@pytest.mark.parametrize("plans", FOLLOW_UPS)
def test_a_chained_claim_records_exactly_what_a_commit_then_a_claim_would(
    store: Store, clock: ManualClock, plans: list[dict[str, Any]], waiting: int
) -> None:
    """``waiting``: items of the run already pending when the commit is made (a fan-out's
    siblings): a claim takes the oldest of them before anything the commit enqueues."""
    results = {}
    for run, chained in (("run-a", False), ("run-b", True)):
        first, *others = start(store, clock, 1 + waiting, execution_id=run, node_id="first")
        claimed = _first_claim(store, run)
        request = _request(store, claimed, plans, clock.now())
        if chained:
            done = store.commit_and_claim(request, WORKER, [QUEUE], lease_secs=LEASE)
            written, second = done.events, done.claim
        else:
            written = store.commit(request)
            second = store.claim(WORKER, [QUEUE], lease_secs=LEASE, execution_id=run)
            if second is not None:
                written = (*written, *second.events)
        item_ids = [first, *others, *(f"{run}-next-{index}" for index in range(len(plans)))]
        results[chained] = (
            _normalised(store, run, item_ids),
            _claim_fields(second, run),
            [(e.sequence, e.kind) for e in written],
        )
    assert results[True] == results[False]
    claimed_any = results[True][1] is not None
    assert claimed_any == (
        waiting > 0
        or any(plan.get("queue", QUEUE) == QUEUE and plan.get("delay", 0) <= 0 for plan in plans)
    )


def test_the_chained_claim_is_the_claim_a_worker_holds(store: Store, clock: ManualClock) -> None:
    (first,) = start(store, clock)
    claimed = _first_claim(store, "exec-1")
    request = _request(store, claimed, [{}], clock.now())
    done = store.commit_and_claim(request, WORKER, [QUEUE], lease_secs=LEASE)
    assert done.claim is not None
    chained = done.claim
    assert chained.item.status is CLAIMED
    assert chained.item.worker_id == WORKER
    assert chained.lease_expires_at == clock.now() + timedelta(seconds=LEASE)
    assert names(done.events)[-1] == "NodeStarted"
    assert done.events[-1].kind == NodeStarted(node_id="next-0", worker_id=WORKER, attempt=0)
    assert chained.events == done.events[-1:]
    assert chained.tenant is not None
    assert chained.tenant.tenant_id == chained.item.tenant_id
    # Nothing else is left to claim, and the claim is fenced like any other: its heartbeat
    # and its commit work with its fence.
    assert store.claim(WORKER, [QUEUE], lease_secs=LEASE) is None
    store.heartbeat(chained.item.item_id, chained.fence, lease_secs=LEASE)
    store.commit(
        CommitRequest(
            item_id=chained.item.item_id,
            fence=chained.fence,
            outcome=COMPLETED,
            events=(completed("next-0"),),
        )
    )
    assert store.get_item(first) is not None


def test_no_claim_when_the_follow_up_is_left_out(store: Store, clock: ManualClock) -> None:
    start(store, clock)
    claimed = _first_claim(store, "exec-1")
    request = _request(store, claimed, [{}], clock.now())
    # Someone else appended meanwhile: the follow-up is not written, so nothing to claim.
    store.append_events("exec-1", [NodeScheduled(node_id="elsewhere", queue_type=QUEUE)])
    done = store.commit_and_claim(request, WORKER, [QUEUE], lease_secs=LEASE)
    assert done.claim is None
    assert names(done.events) == ["NodeCompleted"]
    assert store.get_item("exec-1-next-0") is None


def test_a_refused_commit_claims_and_writes_nothing(store: Store, clock: ManualClock) -> None:
    start(store, clock)
    claimed = _first_claim(store, "exec-1")
    request = _request(store, claimed, [{}], clock.now())
    before = observe(store, claimed.item.item_id, "exec-1-next-0")
    stale = attrs.evolve(request, fence=claimed.fence + 1)
    with pytest.raises(FenceLost):
        store.commit_and_claim(stale, WORKER, [QUEUE], lease_secs=LEASE)
    assert observe(store, claimed.item.item_id, "exec-1-next-0") == before


def test_a_chained_claim_whose_worker_dies_is_reclaimed_when_its_lease_expires(
    store: Store, clock: ManualClock
) -> None:
    start(store, clock, max_attempts=3)
    claimed = _first_claim(store, "exec-1")
    request = _request(store, claimed, [{}], clock.now())
    done = store.commit_and_claim(request, WORKER, [QUEUE], lease_secs=LEASE)
    assert done.claim is not None
    # The worker dies here. Before the lease ends nothing is reclaimed.
    clock.advance(LEASE - 1)
    assert store.reclaim_expired().retried == ()
    clock.advance(2)
    result = store.reclaim_expired()
    assert [item.item_id for item in result.retried] == ["exec-1-next-0"]
    retried = store.get_item("exec-1-next-0")
    assert retried is not None
    assert (retried.status, retried.attempt) == (PENDING, 1)
    # The stale claim's commit is refused; a new claim takes the item with a new fence.
    with pytest.raises(FenceLost):
        store.commit(
            CommitRequest(
                item_id="exec-1-next-0",
                fence=done.claim.fence,
                outcome=COMPLETED,
            )
        )
    clock.advance(3600)
    again = store.claim("worker-2", [QUEUE], lease_secs=LEASE)
    assert again is not None
    assert again.item.item_id == "exec-1-next-0"
    assert again.fence > done.claim.fence


def test_chaining_takes_the_arguments_a_claim_takes(store: Store, clock: ManualClock) -> None:
    start(store, clock)
    claimed = _first_claim(store, "exec-1")
    request = _request(store, claimed, [{}], clock.now())
    before = observe(store, claimed.item.item_id)
    with pytest.raises(InvalidInput, match="lease_secs"):
        store.commit_and_claim(request, WORKER, [QUEUE], lease_secs=-1.0)
    assert observe(store, claimed.item.item_id) == before
