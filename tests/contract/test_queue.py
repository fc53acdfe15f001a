"""The work queue: how an item is enqueued, claimed, kept, put back and failed.

In the order a reader should learn them:

1. Enqueue is idempotent per item id: the same content again is a no-op that returns the
   stored item, other content under the same id is a `Conflict`.
2. Claim. A claim takes the first available pending item of the asked queues (by
   availability, then enqueue order), marks it claimed by the worker until its lease
   expires, mints the item's next fence (1 for the first claim) and appends
   ``node_started``. A claimed item, an item of another queue or one not yet available is
   not handed out; nothing available gives ``None``. A claim may be limited to one
   execution's items.
3. Heartbeat extends the lease of the current claim and appends no event.
4. Park puts a claimed item back as pending until ``retry_after`` (recorded in UTC),
   counting the attempt or not; a counted park with no attempt left dead-letters the item.
   Park leaves the ledger alone, and an item's attempt number only grows.
5. Fail records ``node_failed``: a retryable failure schedules a retry after the backoff
   (``retry_scheduled``), the last attempt dead-letters the item, a non-retryable failure
   fails it. The attempt's own events are appended before the failure.

What happens when a lease expires, and to operations made with an old fence, is in
`test_reclaim_and_fences`; claims racing each other are in `test_concurrency`.
"""

from __future__ import annotations

from datetime import UTC, timedelta, timezone
from typing import Any

import pytest

from charter.adapters.clock import ManualClock
from charter.core.budget import BudgetState
from charter.core.errors import Conflict
from charter.core.events import NodeFailed, NodeParked, NodeStarted, RetryScheduled, ToolCalled
from charter.core.ports import ReclaimResult, Store
from charter.core.queue import backoff_delay_ms
from charter.core.records import WorkItemStatus
from tests.contract.helpers import (
    CLAIMED,
    EXEC,
    LEASE,
    PENDING,
    QUEUE,
    WORKER,
    claim,
    names,
    new_item,
    node_of,
    observe,
    seconds,
    start,
)

# ── enqueue ────────────────────────────────────────────────────────────────────────────


def test_enqueue_same_id_with_same_content_is_a_noop(store: Store, clock: ManualClock) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    before = observe(store, item_id)
    again = store.enqueue([new_item(item_id)])
    assert again == (claimed.item,)
    assert observe(store, item_id) == before
    assert store.claim(WORKER, [QUEUE], lease_secs=LEASE) is None


@pytest.mark.parametrize(
    "change",
    [
        {"payload": {"other": 1}},
        {"node_id": "other-node"},
        {"queue": "other-queue"},
        {"max_attempts": 9},
        {"backoff_base_ms": 7},
    ],
    ids=lambda change: next(iter(change)),
)
def test_enqueue_same_id_with_other_content_is_conflict(
    store: Store, clock: ManualClock, change: dict[str, Any]
) -> None:
    (item_id,) = start(store, clock)
    before = observe(store, item_id)
    with pytest.raises(Conflict):
        store.enqueue([new_item(item_id, **change)])
    assert observe(store, item_id) == before


# ── claiming ───────────────────────────────────────────────────────────────────────────


def test_claim_mints_fence_one_and_a_lease(store: Store, clock: ManualClock) -> None:
    (item_id,) = start(store, clock)
    clock.advance(2)
    claimed = claim(store, lease=45)
    expires = clock.now() + seconds(45)
    assert (claimed.fence, claimed.lease_expires_at) == (1, expires)
    assert claimed.item == store.get_item(item_id)
    assert (claimed.item.status, claimed.item.worker_id, claimed.item.fence) == (CLAIMED, WORKER, 1)
    assert (claimed.item.lease_expires_at, claimed.item.attempt) == (expires, 0)


def test_claim_appends_node_started_with_worker_and_attempt(
    store: Store, clock: ManualClock
) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store, worker="worker-7")
    store.fail(item_id, claimed.fence, error="boom", delay_ms=0)
    claim(store, worker="worker-8")
    started_events = [e for e in store.read_events(EXEC) if isinstance(e.kind, NodeStarted)]
    assert [e.kind for e in started_events] == [
        NodeStarted(node_id=node_of(item_id), worker_id="worker-7", attempt=0),
        NodeStarted(node_id=node_of(item_id), worker_id="worker-8", attempt=1),
    ]
    assert [e.sequence for e in started_events] == [2, 5]


def test_every_new_claim_of_an_item_mints_the_next_fence(store: Store, clock: ManualClock) -> None:
    (item_id,) = start(store, clock, max_attempts=10)
    fences = []
    first = claim(store)
    fences.append(first.fence)
    store.fail(item_id, first.fence, error="boom", delay_ms=0)
    second = claim(store)
    fences.append(second.fence)
    store.park(item_id, second.fence, retry_after=clock.now())
    third = claim(store)
    fences.append(third.fence)
    clock.advance(LEASE + 1)
    assert store.reclaim_expired().retried != ()
    clock.advance(3600)
    fences.append(claim(store).fence)
    assert fences == [1, 2, 3, 4]


def test_claim_returns_none_when_nothing_is_pending(store: Store, clock: ManualClock) -> None:
    start(store, clock, 0)
    assert store.claim(WORKER, [QUEUE], lease_secs=LEASE) is None


def test_claimed_item_is_not_claimed_again(store: Store, clock: ManualClock) -> None:
    start(store, clock)
    claim(store)
    before = observe(store)
    assert store.claim("worker-2", [QUEUE], lease_secs=LEASE) is None
    assert observe(store) == before


def test_claim_takes_items_by_availability_then_enqueue_order(
    store: Store, clock: ManualClock
) -> None:
    start(store, clock, 0)
    store.enqueue([new_item("zulu"), new_item("alpha"), new_item("mike")])
    clock.advance(1)
    store.enqueue([new_item("yankee", available_at=clock.now() - seconds(10))])
    order = [claim(store).item.item_id for _ in range(4)]
    assert order == ["yankee", "zulu", "alpha", "mike"]


def test_claim_ignores_items_of_other_queues(store: Store, clock: ManualClock) -> None:
    start(store, clock, 0)
    store.enqueue([new_item("elsewhere", queue="other"), new_item("here", queue="mine")])
    assert claim(store, queues=["mine", "third"]).item.item_id == "here"
    assert store.claim(WORKER, ["mine", "third"], lease_secs=LEASE) is None
    stored = store.get_item("elsewhere")
    assert stored is not None
    assert stored.status is PENDING


def test_claim_ignores_items_not_yet_available(store: Store, clock: ManualClock) -> None:
    start(store, clock, 0)
    store.enqueue([new_item("later", available_at=clock.now() + seconds(60))])
    clock.advance(59)
    assert store.claim(WORKER, [QUEUE], lease_secs=LEASE) is None
    clock.advance(2)
    assert claim(store).item.item_id == "later"


def test_a_claim_for_one_execution_takes_only_its_items(store: Store, clock: ManualClock) -> None:
    (theirs,) = start(store, clock, 1, execution_id="exec-theirs")  # older: claimed first…
    clock.advance(1)
    (ours,) = start(store, clock, 1, execution_id="exec-ours")
    clock.advance(1)
    claimed = store.claim(WORKER, [QUEUE], lease_secs=LEASE, execution_id="exec-ours")
    assert claimed is not None
    assert claimed.item.item_id == ours
    assert store.claim(WORKER, [QUEUE], lease_secs=LEASE, execution_id="exec-ours") is None
    other = store.get_item(theirs)
    assert other is not None
    assert other.status is PENDING
    assert claim(store).item.item_id == theirs  # …by a claim for any execution


# ── heartbeat ──────────────────────────────────────────────────────────────────────────


def test_heartbeat_extends_the_lease(store: Store, clock: ManualClock) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store, lease=30)
    clock.advance(20)
    expires = store.heartbeat(item_id, claimed.fence, lease_secs=30)
    assert expires == clock.now() + seconds(30)
    stored = store.get_item(item_id)
    assert stored is not None
    assert stored.lease_expires_at == expires
    clock.advance(20)  # past the first lease, within the extended one
    before = observe(store, item_id)
    assert store.reclaim_expired() == ReclaimResult()
    assert observe(store, item_id) == before


def test_heartbeat_appends_no_event(store: Store, clock: ManualClock) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    events = store.read_events(EXEC)
    store.heartbeat(item_id, claimed.fence, lease_secs=LEASE)
    assert store.read_events(EXEC) == events


# ── park ───────────────────────────────────────────────────────────────────────────────


def test_park_counting_the_attempt_puts_the_item_back_one_attempt_later(
    store: Store, clock: ManualClock
) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    retry_after = clock.now() + seconds(120)
    parked = store.park(item_id, claimed.fence, retry_after=retry_after, count_attempt=True)
    assert [e.kind for e in parked] == [
        NodeParked(node_id=node_of(item_id), attempt=1, retry_after=retry_after)
    ]
    assert parked == store.read_events(EXEC)[-1:]
    stored = store.get_item(item_id)
    assert stored is not None
    assert (stored.status, stored.attempt, stored.available_at) == (PENDING, 1, retry_after)
    assert (stored.worker_id, stored.lease_expires_at) == (None, None)


def test_park_without_counting_the_attempt_keeps_the_attempt(
    store: Store, clock: ManualClock
) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    retry_after = clock.now() + seconds(120)
    parked = store.park(item_id, claimed.fence, retry_after=retry_after, count_attempt=False)
    assert [e.kind for e in parked] == [
        NodeParked(node_id=node_of(item_id), attempt=0, retry_after=retry_after)
    ]
    stored = store.get_item(item_id)
    assert stored is not None
    assert (stored.status, stored.attempt, stored.available_at) == (PENDING, 0, retry_after)


def test_a_counted_park_with_no_attempt_left_dead_letters_the_item(
    store: Store, clock: ManualClock
) -> None:
    (item_id,) = start(store, clock, max_attempts=2)
    first = claim(store)
    store.park(item_id, first.fence, retry_after=clock.now())
    second = claim(store)
    assert second.item.attempt == 1
    until = clock.now() + seconds(60)
    events = store.park(item_id, second.fence, retry_after=until, count_attempt=True)
    message = f"exhausted 2 attempts: parked until {until.astimezone(UTC).isoformat()}"
    assert [e.kind for e in events] == [
        NodeFailed(node_id=node_of(item_id), error=message, attempt=1, retryable=False)
    ]
    stored = store.get_item(item_id)
    assert stored is not None
    assert (stored.status, stored.attempt) == (WorkItemStatus.DEAD_LETTERED, 2)
    assert stored.last_error == message
    clock.advance(3600)
    assert store.claim(WORKER, [QUEUE], lease_secs=LEASE) is None  # it never runs again


def test_an_uncounted_park_never_uses_up_attempts(store: Store, clock: ManualClock) -> None:
    (item_id,) = start(store, clock, max_attempts=1)
    for fence in (1, 2, 3):
        claimed = claim(store)
        assert (claimed.item.attempt, claimed.fence) == (0, fence)
        store.park(item_id, claimed.fence, retry_after=clock.now(), count_attempt=False)


def test_park_records_retry_after_in_utc(store: Store, clock: ManualClock) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    local = (clock.now() + seconds(30)).astimezone(timezone(timedelta(hours=2)))
    (event,) = store.park(item_id, claimed.fence, retry_after=local)
    assert isinstance(event.kind, NodeParked)
    assert event.kind.retry_after == local
    assert event.kind.retry_after.utcoffset() == timedelta(0)


def test_parked_item_is_claimable_only_after_retry_after(store: Store, clock: ManualClock) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    store.park(item_id, claimed.fence, retry_after=clock.now() + seconds(120))
    clock.advance(119)
    assert store.claim(WORKER, [QUEUE], lease_secs=LEASE) is None
    clock.advance(2)
    again = claim(store)
    assert (again.item.item_id, again.item.attempt, again.fence) == (item_id, 1, 2)


def test_park_with_a_past_retry_after_is_claimable_at_once(
    store: Store, clock: ManualClock
) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    clock.advance(10)
    store.park(item_id, claimed.fence, retry_after=clock.now() - seconds(5))
    assert claim(store).item.item_id == item_id


def test_park_leaves_the_ledger_alone(store: Store, clock: ManualClock) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    store.park(item_id, claimed.fence, retry_after=clock.now())
    assert store.get_ledger(EXEC) == BudgetState()


def test_attempt_only_grows_across_park_and_reclaim(store: Store, clock: ManualClock) -> None:
    (item_id,) = start(store, clock, max_attempts=5)
    attempts = []
    claimed = claim(store)
    store.park(item_id, claimed.fence, retry_after=clock.now(), count_attempt=True)
    attempts.append(claim(store).item.attempt)
    clock.advance(LEASE + 1)
    store.reclaim_expired()
    clock.advance(3600)
    attempts.append(claim(store).item.attempt)
    assert attempts == [1, 2]


# ── fail ───────────────────────────────────────────────────────────────────────────────


def test_retryable_failure_schedules_a_retry_after_the_backoff(
    store: Store, clock: ManualClock
) -> None:
    (item_id,) = start(store, clock, backoff_base_ms=1000)
    claimed = claim(store)
    failed = store.fail(item_id, claimed.fence, error="boom")
    delay = backoff_delay_ms(1, 1000, jitter_key=item_id)
    node = node_of(item_id)
    assert [e.kind for e in failed] == [
        NodeFailed(node_id=node, error="boom", attempt=0, retryable=True),
        RetryScheduled(node_id=node, attempt=1, delay_ms=delay),
    ]
    assert failed == store.read_events(EXEC)[-2:]
    stored = store.get_item(item_id)
    assert stored is not None
    assert (stored.status, stored.attempt, stored.last_error) == (PENDING, 1, "boom")
    assert stored.available_at == clock.now() + timedelta(milliseconds=delay)
    assert (stored.worker_id, stored.lease_expires_at) == (None, None)


def test_failed_item_is_claimable_only_after_its_retry_delay(
    store: Store, clock: ManualClock
) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    failed = store.fail(item_id, claimed.fence, error="boom", delay_ms=5000)
    assert failed[-1].kind == RetryScheduled(node_id=node_of(item_id), attempt=1, delay_ms=5000)
    clock.advance(4.9)
    assert store.claim(WORKER, [QUEUE], lease_secs=LEASE) is None
    clock.advance(0.2)
    again = claim(store)
    assert (again.item.item_id, again.item.attempt, again.fence) == (item_id, 1, 2)


def test_failure_at_the_last_attempt_dead_letters_the_item(
    store: Store, clock: ManualClock
) -> None:
    (item_id,) = start(store, clock, max_attempts=2)
    store.fail(item_id, claim(store).fence, error="boom", delay_ms=0)
    last = claim(store)
    failed = store.fail(item_id, last.fence, error="boom again")
    message = "exhausted 2 attempts: boom again"
    assert [e.kind for e in failed] == [
        NodeFailed(node_id=node_of(item_id), error=message, attempt=1, retryable=False)
    ]
    stored = store.get_item(item_id)
    assert stored is not None
    assert (stored.status, stored.attempt, stored.last_error) == (
        WorkItemStatus.DEAD_LETTERED,
        2,
        message,
    )
    clock.advance(86_400)
    assert store.claim(WORKER, [QUEUE], lease_secs=LEASE) is None


def test_non_retryable_failure_fails_the_item(store: Store, clock: ManualClock) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    failed = store.fail(item_id, claimed.fence, error="bad request", retryable=False)
    assert [e.kind for e in failed] == [
        NodeFailed(node_id=node_of(item_id), error="bad request", attempt=0, retryable=False)
    ]
    stored = store.get_item(item_id)
    assert stored is not None
    assert (stored.status, stored.attempt, stored.last_error) == (
        WorkItemStatus.FAILED,
        0,
        "bad request",
    )
    clock.advance(86_400)
    assert store.claim(WORKER, [QUEUE], lease_secs=LEASE) is None


def test_fail_appends_the_attempts_own_events_first(store: Store, clock: ManualClock) -> None:
    start(store, clock)
    claimed = claim(store)
    appended = store.fail(
        claimed.item.item_id,
        claimed.fence,
        error="boom",
        events=[ToolCalled(node_id=claimed.item.node_id, tool="t")],
    )
    assert names(appended) == ["ToolCalled", "NodeFailed", "RetryScheduled"]
