"""Expired leases and stale fences: a claim that lapsed loses the item, and nothing done
under its fence afterwards reaches the store.

In the order a reader should learn them:

1. `reclaim_expired` fails every claim whose lease has expired: the item is retried after
   the backoff (``node_failed`` with `LEASE_EXPIRED`, then ``retry_scheduled``) or, at its
   last attempt, dead-lettered. It is idempotent, handles at most ``limit`` items, leaves
   live leases, settled and pending items and the ledger alone.
2. A worker that crashed before committing and wakes up after its item was reclaimed and
   run again cannot commit: the node has exactly one terminal event.
3. A fence is stale once it is no longer the item's current claim: after a reclaim (with or
   without a new claim), a settle, a park or a retry, or when it is simply the wrong number
   (including a forged fence 0 on a pending item). Every fenced operation — commit,
   heartbeat, park, fail, reserve_effect — made with a stale fence raises `FenceLost` and
   writes nothing at all; on an unknown item it raises `NotFound` and writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Final

import pytest

from charter.adapters.clock import ManualClock
from charter.core.budget import BudgetState, Usage
from charter.core.errors import FenceLost, NotFound
from charter.core.events import NodeFailed, OutcomeUnknown, RetryScheduled
from charter.core.ports import CommitRequest, EffectResult, ReclaimResult, Store
from charter.core.queue import LEASE_EXPIRED, backoff_delay_ms
from charter.core.records import WorkItemStatus
from tests.contract.helpers import (
    COMPLETED,
    EFFECT,
    EXEC,
    HELD,
    LEASE,
    PENDING,
    claim,
    commit,
    complete,
    completed,
    node_of,
    observe,
    seconds,
    start,
    terminal_node_events,
)

# ── reclaim ────────────────────────────────────────────────────────────────────────────


def test_reclaim_retries_an_expired_claim(store: Store, clock: ManualClock) -> None:
    (item_id,) = start(store, clock, max_attempts=3, backoff_base_ms=1000)
    claim(store)
    clock.advance(LEASE + 1)
    result = store.reclaim_expired()
    stored = store.get_item(item_id)
    assert stored is not None
    assert result == ReclaimResult(retried=(stored,), dead_lettered=())
    delay = backoff_delay_ms(1, 1000, jitter_key=item_id)
    assert (stored.status, stored.attempt, stored.last_error) == (PENDING, 1, LEASE_EXPIRED)
    assert stored.available_at == clock.now() + timedelta(milliseconds=delay)
    assert (stored.worker_id, stored.lease_expires_at) == (None, None)
    node = node_of(item_id)
    assert [e.kind for e in store.read_events(EXEC)[-2:]] == [
        NodeFailed(node_id=node, error=LEASE_EXPIRED, attempt=0, retryable=True),
        RetryScheduled(node_id=node, attempt=1, delay_ms=delay),
    ]


def test_reclaim_dead_letters_an_expired_claim_at_its_last_attempt(
    store: Store, clock: ManualClock
) -> None:
    (item_id,) = start(store, clock, max_attempts=1)
    claim(store)
    clock.advance(LEASE + 1)
    result = store.reclaim_expired()
    stored = store.get_item(item_id)
    assert stored is not None
    assert result == ReclaimResult(retried=(), dead_lettered=(stored,))
    message = f"exhausted 1 attempts: {LEASE_EXPIRED}"
    assert (stored.status, stored.attempt, stored.last_error) == (
        WorkItemStatus.DEAD_LETTERED,
        1,
        message,
    )
    assert [e.kind for e in store.read_events(EXEC)[-1:]] == [
        NodeFailed(node_id=node_of(item_id), error=message, attempt=0, retryable=False)
    ]


def test_reclaim_holds_a_last_attempt_whose_side_effect_may_have_happened(
    store: Store, clock: ManualClock
) -> None:
    # The worker reserved the effect, then died mid-call on its last attempt: the effect
    # may or may not have happened, so the node is neither failed nor fired again — it
    # waits for a person (outcome_unknown), holding the claim's reservation's key.
    (item_id,) = start(store, clock, max_attempts=1)
    claimed = claim(store)
    store.reserve_effect("effect-1", item_id=item_id, fence=claimed.fence, ttl_secs=600)
    clock.advance(LEASE + 1)
    result = store.reclaim_expired()
    stored = store.get_item(item_id)
    assert stored is not None
    assert result == ReclaimResult(held=(stored,))
    assert stored.status is WorkItemStatus.HELD
    (last,) = [e.kind for e in store.read_events(EXEC)[-1:]]
    assert isinstance(last, OutcomeUnknown)
    assert (last.node_id, last.attempt, last.idempotency_key) == (node_of(item_id), 0, "effect-1")
    assert store.reclaim_expired() == ReclaimResult()  # held is settled: never reclaimed again


def test_reclaim_is_idempotent(store: Store, clock: ManualClock) -> None:
    (item_id,) = start(store, clock)
    claim(store)
    clock.advance(LEASE + 1)
    store.reclaim_expired()
    before = observe(store, item_id)
    assert store.reclaim_expired() == ReclaimResult()
    assert observe(store, item_id) == before


def test_reclaim_leaves_live_leases_alone(store: Store, clock: ManualClock) -> None:
    (item_id,) = start(store, clock)
    claim(store, lease=30)
    clock.advance(29)
    before = observe(store, item_id)
    assert store.reclaim_expired() == ReclaimResult()
    assert observe(store, item_id) == before


def test_reclaim_never_touches_settled_or_pending_items(store: Store, clock: ManualClock) -> None:
    items = start(store, clock, 6, max_attempts=1)
    commit(store, claim(store), outcome=COMPLETED)
    commit(store, claim(store), outcome=HELD)
    commit(store, claim(store), outcome=WorkItemStatus.FAILED)
    store.fail(items[3], claim(store).fence, error="x", retryable=False)  # failed
    store.fail(items[4], claim(store).fence, error="x")  # dead-lettered
    clock.advance(10 * 3600)  # items[5] stays pending
    before = observe(store, *items)
    assert store.reclaim_expired() == ReclaimResult()
    assert observe(store, *items) == before


def test_reclaim_handles_at_most_limit_items(store: Store, clock: ManualClock) -> None:
    items = start(store, clock, 3)
    for _ in items:
        claim(store)
    clock.advance(LEASE + 1)
    first = store.reclaim_expired(limit=2)
    second = store.reclaim_expired(limit=2)
    assert (len(first.retried), len(second.retried)) == (2, 1)
    assert sorted(i.item_id for i in first.retried + second.retried) == sorted(items)


def test_reclaim_leaves_the_ledger_alone(store: Store, clock: ManualClock) -> None:
    start(store, clock, 1, max_attempts=1)
    claim(store)
    clock.advance(LEASE + 1)
    store.reclaim_expired()
    assert store.get_ledger(EXEC) == BudgetState()


def test_crash_before_commit_then_reclaim_gives_exactly_one_terminal_event(
    store: Store, clock: ManualClock
) -> None:
    (item_id,) = start(store, clock)
    crashed = claim(store, worker="worker-dead")
    clock.advance(LEASE + 1)
    store.reclaim_expired()
    clock.advance(3600)
    alive = claim(store, worker="worker-alive")
    complete(store, alive)
    with pytest.raises(FenceLost):
        complete(store, crashed)  # the "dead" worker wakes up and tries to commit
    assert terminal_node_events(store) == [completed(node_of(item_id))]
    stored = store.get_item(item_id)
    assert stored is not None
    assert stored.status is COMPLETED


# ── stale fences ───────────────────────────────────────────────────────────────────────
#
# Each scenario leaves an item and a fence that is no longer the item's current claim; each
# operation must then raise FenceLost and write nothing at all.


def _stale_after_reclaim(store: Store, clock: ManualClock) -> tuple[str, int]:
    # Upstream's race: the item is pending again but its fence column still holds the
    # old fence; only the status check rejects it.
    (item_id,) = start(store, clock)
    claimed = claim(store)
    clock.advance(LEASE + 1)
    store.reclaim_expired()
    return item_id, claimed.fence


def _stale_after_reclaim_and_new_claim(store: Store, clock: ManualClock) -> tuple[str, int]:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    clock.advance(LEASE + 1)
    store.reclaim_expired()
    clock.advance(3600)
    claim(store, worker="worker-2")
    return item_id, claimed.fence


def _stale_after_settle(store: Store, clock: ManualClock) -> tuple[str, int]:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    complete(store, claimed)
    return item_id, claimed.fence


def _stale_after_park(store: Store, clock: ManualClock) -> tuple[str, int]:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    store.park(item_id, claimed.fence, retry_after=clock.now() + seconds(60))
    return item_id, claimed.fence


def _stale_after_retry(store: Store, clock: ManualClock) -> tuple[str, int]:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    store.fail(item_id, claimed.fence, error="boom", delay_ms=0)
    claim(store, worker="worker-2")
    return item_id, claimed.fence


def _wrong_fence_number(store: Store, clock: ManualClock) -> tuple[str, int]:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    return item_id, claimed.fence + 1


def _forged_fence_zero_on_pending_item(store: Store, clock: ManualClock) -> tuple[str, int]:
    (item_id,) = start(store, clock)
    return item_id, 0


STALE_FENCES: Final[dict[str, Callable[[Store, ManualClock], tuple[str, int]]]] = {
    "after-reclaim": _stale_after_reclaim,
    "after-reclaim-and-new-claim": _stale_after_reclaim_and_new_claim,
    "after-settle": _stale_after_settle,
    "after-park": _stale_after_park,
    "after-retry-and-new-claim": _stale_after_retry,
    "wrong-number": _wrong_fence_number,
    "forged-zero-on-pending": _forged_fence_zero_on_pending_item,
}


def _commit_with_everything(store: Store, clock: ManualClock, item_id: str, fence: int) -> object:
    return store.commit(
        CommitRequest(
            item_id=item_id,
            fence=fence,
            outcome=COMPLETED,
            events=(completed(node_of(item_id), {"late": True}, {"late": True}),),
            usage=Usage(input_tokens=10, cost_usd=0.5),
            succeeded=True,
            write_snapshot=True,
            effect=EffectResult(key=EFFECT, result="late"),
        )
    )


def _heartbeat(store: Store, clock: ManualClock, item_id: str, fence: int) -> object:
    return store.heartbeat(item_id, fence, lease_secs=LEASE)


def _park(store: Store, clock: ManualClock, item_id: str, fence: int) -> object:
    return store.park(item_id, fence, retry_after=clock.now() + seconds(5))


def _fail(store: Store, clock: ManualClock, item_id: str, fence: int) -> object:
    return store.fail(item_id, fence, error="late", usage=Usage(output_tokens=3))


def _reserve_effect(store: Store, clock: ManualClock, item_id: str, fence: int) -> object:
    return store.reserve_effect(EFFECT, item_id=item_id, fence=fence, ttl_secs=60)


FENCED_OPERATIONS: Final[dict[str, Callable[[Store, ManualClock, str, int], object]]] = {
    "commit": _commit_with_everything,
    "heartbeat": _heartbeat,
    "park": _park,
    "fail": _fail,
    "reserve_effect": _reserve_effect,
}


@pytest.mark.parametrize("operation", FENCED_OPERATIONS.values(), ids=FENCED_OPERATIONS.keys())
@pytest.mark.parametrize("scenario", STALE_FENCES.values(), ids=STALE_FENCES.keys())
def test_stale_fence_is_refused_and_writes_nothing(
    store: Store,
    clock: ManualClock,
    scenario: Callable[[Store, ManualClock], tuple[str, int]],
    operation: Callable[[Store, ManualClock, str, int], object],
) -> None:
    item_id, fence = scenario(store, clock)
    before = observe(store, item_id, effect_keys=[EFFECT])
    with pytest.raises(FenceLost):
        operation(store, clock, item_id, fence)
    assert observe(store, item_id, effect_keys=[EFFECT]) == before


@pytest.mark.parametrize("operation", FENCED_OPERATIONS.values(), ids=FENCED_OPERATIONS.keys())
def test_fenced_operation_on_unknown_item_is_not_found(
    store: Store,
    clock: ManualClock,
    operation: Callable[[Store, ManualClock, str, int], object],
) -> None:
    start(store, clock)
    before = observe(store)
    with pytest.raises(NotFound):
        operation(store, clock, "ghost-item", 1)
    assert observe(store) == before
