"""Tool effects: a side effect keyed by the caller runs at most once as far as the store can
tell, and its recorded result is replayed to every later claim.

In the order a reader should learn them:

1. `reserve_effect` made with a live claim acquires a free effect key
   (`EffectAcquired`); the same claim may reserve it again. A key reserved by another live
   claim is `EffectHeld` until the reservation's TTL. A reservation whose TTL ran out, or
   whose claim was reclaimed, is taken over as `EffectAbandoned` — the effect may or may not
   have happened.
2. `record_effect` (fenced) stores the effect's result; later reservations get
   `EffectRecorded` with it, and the first recorded result wins. A commit may record the
   result too (``effect=``). An unknown key has no result (``None``).
3. A park, a failure, or a commit that records no result releases the reservation.

A reservation made with a stale fence is in `test_reclaim_and_fences`.
"""

from __future__ import annotations

import pytest

from charter.adapters.clock import ManualClock
from charter.core.errors import FenceLost
from charter.core.ports import EffectResult, Store
from charter.core.records import (
    Claim,
    EffectAbandoned,
    EffectAcquired,
    EffectHeld,
    EffectRecorded,
    WorkItemStatus,
)
from tests.contract.helpers import (
    COMPLETED,
    EFFECT,
    claim,
    commit,
    complete,
    completed,
    seconds,
    start,
)


def reserve(store: Store, claimed: Claim, ttl: float = 60) -> object:
    return store.reserve_effect(
        EFFECT, item_id=claimed.item.item_id, fence=claimed.fence, ttl_secs=ttl
    )


# ── reserving ──────────────────────────────────────────────────────────────────────────


def test_reserving_a_free_effect_acquires_it(store: Store, clock: ManualClock) -> None:
    start(store, clock)
    assert reserve(store, claim(store)) == EffectAcquired()
    assert store.get_effect(EFFECT) is None


def test_effect_reserved_by_another_live_claim_is_held(store: Store, clock: ManualClock) -> None:
    start(store, clock, 2)
    first, second = claim(store), claim(store)
    reserve(store, first, ttl=60)
    expires = clock.now() + seconds(60)
    clock.advance(10)
    assert reserve(store, second) == EffectHeld(
        item_id=first.item.item_id, fence=first.fence, expires_at=expires
    )


def test_same_claim_may_reserve_its_effect_again(store: Store, clock: ManualClock) -> None:
    start(store, clock)
    claimed = claim(store)
    reserve(store, claimed)
    assert reserve(store, claimed) == EffectAcquired()


def test_expired_reservation_is_taken_over_as_abandoned(store: Store, clock: ManualClock) -> None:
    # The TTL ran out without a result: the effect may or may not have happened.
    start(store, clock, 2)
    first, second = claim(store, lease=600), claim(store, lease=600)
    reserve(store, first, ttl=60)
    clock.advance(61)
    assert reserve(store, second) == EffectAbandoned(
        item_id=first.item.item_id, fence=first.fence, expired_at=clock.now() - seconds(1)
    )
    assert isinstance(reserve(store, first), EffectHeld)


def test_reservation_of_a_reclaimed_claim_is_abandoned_before_its_ttl(
    store: Store, clock: ManualClock
) -> None:
    # The owner's claim is gone (lease expired, item reclaimed): no need to wait for the TTL.
    start(store, clock)
    dead = claim(store, lease=10)
    reserve(store, dead, ttl=3600)
    clock.advance(11)
    store.reclaim_expired()
    clock.advance(3600)
    again = claim(store)
    outcome = reserve(store, again)
    assert isinstance(outcome, EffectAbandoned)
    assert (outcome.item_id, outcome.fence) == (dead.item.item_id, dead.fence)
    assert reserve(store, again) == EffectAcquired()  # now it is this claim's


# ── recording a result ─────────────────────────────────────────────────────────────────


def test_record_effect_makes_later_claims_replay_the_result(
    store: Store, clock: ManualClock
) -> None:
    start(store, clock)
    first = claim(store, lease=10)
    reserve(store, first)
    assert store.record_effect(
        EFFECT, item_id=first.item.item_id, fence=first.fence, result={"charged": 40}
    )
    assert store.get_effect(EFFECT) == {"charged": 40}
    clock.advance(11)
    store.reclaim_expired()  # the worker died after recording, before its commit
    clock.advance(3600)
    again = claim(store)
    assert reserve(store, again) == EffectRecorded({"charged": 40})
    assert not store.record_effect(
        EFFECT, item_id=again.item.item_id, fence=again.fence, result={"charged": 41}
    )
    assert store.get_effect(EFFECT) == {"charged": 40}  # the first result stays


def test_record_effect_is_fenced(store: Store, clock: ManualClock) -> None:
    start(store, clock)
    claimed = claim(store, lease=10)
    complete(store, claimed)
    with pytest.raises(FenceLost):
        store.record_effect(EFFECT, item_id=claimed.item.item_id, fence=claimed.fence, result=1)
    assert store.get_effect(EFFECT) is None


def test_committed_effect_result_is_recorded_for_every_later_claim(
    store: Store, clock: ManualClock
) -> None:
    start(store, clock, 2)
    first, second = claim(store), claim(store)
    reserve(store, first)
    complete(store, first, effect=EffectResult(key=EFFECT, result={"transfer": 7}))
    assert store.get_effect(EFFECT) == {"transfer": 7}
    assert reserve(store, second) == EffectRecorded({"transfer": 7})


def test_effect_of_unknown_key_is_none(store: Store) -> None:
    assert store.get_effect("never-recorded") is None


def test_first_recorded_effect_result_wins(store: Store, clock: ManualClock) -> None:
    start(store, clock, 2)
    first, second = claim(store), claim(store)
    complete(store, first, effect=EffectResult(key=EFFECT, result="first"))
    complete(store, second, effect=EffectResult(key=EFFECT, result="second"))
    assert store.get_effect(EFFECT) == "first"


# ── releasing a reservation ────────────────────────────────────────────────────────────


def test_park_releases_the_effect_reservation(store: Store, clock: ManualClock) -> None:
    first_id, _ = start(store, clock, 2)
    first = claim(store)
    reserve(store, first, ttl=600)
    store.park(first_id, first.fence, retry_after=clock.now() + seconds(300))
    assert reserve(store, claim(store)) == EffectAcquired()


def test_fail_releases_the_effect_reservation(store: Store, clock: ManualClock) -> None:
    first_id, _ = start(store, clock, 2)
    first = claim(store)
    reserve(store, first, ttl=600)
    store.fail(first_id, first.fence, error="boom", delay_ms=300_000)
    assert reserve(store, claim(store)) == EffectAcquired()


@pytest.mark.parametrize("outcome", [COMPLETED, WorkItemStatus.HELD, WorkItemStatus.FAILED])
def test_commit_releases_an_unrecorded_effect_reservation(
    store: Store, clock: ManualClock, outcome: WorkItemStatus
) -> None:
    start(store, clock, 2)
    first = claim(store)
    reserve(store, first, ttl=600)
    commit(store, first, completed(first.item.node_id), outcome=outcome)
    assert reserve(store, claim(store)) == EffectAcquired()


def test_commit_releases_a_reservation_taken_over_by_a_later_claim(
    store: Store, clock: ManualClock
) -> None:
    # The item's first claim reserved and was reclaimed (its reservation stays); its second
    # claim takes the reservation over and commits: that releases it, as for any claim.
    start(store, clock, 2)
    dead = claim(store, lease=10)
    reserve(store, dead, ttl=3600)
    clock.advance(11)
    store.reclaim_expired()
    clock.advance(3600)
    other, again = claim(store), claim(store)  # the never-claimed item is older
    assert again.item.item_id == dead.item.item_id
    assert isinstance(reserve(store, again), EffectAbandoned)
    commit(store, again, completed(again.item.node_id))
    assert reserve(store, other) == EffectAcquired()


def test_commit_of_an_item_that_never_reserved_leaves_other_reservations(
    store: Store, clock: ManualClock
) -> None:
    start(store, clock, 2)
    holder, other = claim(store), claim(store)
    reserve(store, holder, ttl=600)
    commit(store, other, completed(other.item.node_id))
    outcome = store.reserve_effect(
        EFFECT, item_id=holder.item.item_id, fence=holder.fence, ttl_secs=60
    )
    assert outcome == EffectAcquired()  # still the holder's own reservation
