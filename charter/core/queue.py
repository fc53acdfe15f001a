"""The work queue's lifecycle rules, as pure functions every store adapter applies.

A store decides *whether* it may change an item (fences, status); these functions decide
*what* the change is: the item's next status, attempt and availability, and the events that
record it. Because every adapter calls the same functions, they cannot disagree.

Attempts count previous failed tries, from 0: an item with ``max_attempts = 3`` may run at
attempts 0, 1 and 2. A failure (an executor error or an expired lease) with attempts left
puts the item back to ``pending`` at ``attempt + 1`` after a backoff and records
``node_failed{retryable: true}`` then ``retry_scheduled``; with none left it is
dead-lettered with ``node_failed{retryable: false, error: "exhausted N attempts: …"}``; a
failure that is not retryable fails it with ``node_failed{retryable: false}``.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Final

import attrs

from charter.core.events import EventKind, NodeFailed, NodeParked, RetryScheduled
from charter.core.records import WorkItem, WorkItemStatus

__all__ = [
    "LEASE_EXPIRED",
    "MAX_ATTEMPTS",
    "MAX_BACKOFF_MS",
    "FailurePlan",
    "ParkPlan",
    "backoff_delay_ms",
    "plan_failure",
    "plan_park",
]

#: The error recorded when a claim's lease ran out (its worker is presumed dead).
LEASE_EXPIRED: Final = "lease expired: worker presumed dead"
#: No backoff is longer than an hour.
MAX_BACKOFF_MS: Final = 3_600_000
#: The most attempts an item may have (every store's integer columns hold it with room).
MAX_ATTEMPTS: Final = 1_000_000


def backoff_delay_ms(
    attempt: int, base_ms: int, *, jitter_key: str = "", max_ms: int = MAX_BACKOFF_MS
) -> int:
    """Exponential backoff before retry ``attempt`` (1, 2, …): ``base × 2^min(attempt, 6)``
    (upstream's doubling, capped at 64× the base) plus up to 25 % jitter, capped at
    ``max_ms``.

    The jitter is derived from ``jitter_key`` (e.g. the item id) by hashing, so that retries
    of different items spread out while a replay computes exactly the same delay.
    """
    exponent = min(max(attempt, 0), 6)
    delay = base_ms * (1 << exponent)
    if jitter_key:
        digest = hashlib.sha256(f"{jitter_key}:{attempt}".encode()).digest()
        fraction = int.from_bytes(digest[:4], "big") / 2**32  # in [0, 1)
        delay += int(delay * 0.25 * fraction)
    return min(delay, max_ms)


@attrs.frozen(kw_only=True)
class FailurePlan:
    """What a failed attempt turns an item into, and the events that say so."""

    status: WorkItemStatus
    attempt: int
    available_at: datetime | None
    events: tuple[EventKind, ...]
    last_error: str


def plan_failure(
    item: WorkItem,
    *,
    error: str,
    retryable: bool,
    now: datetime,
    delay_ms: int | None = None,
) -> FailurePlan:
    """The outcome of a failed attempt of ``item`` (see the module doc).

    ``delay_ms`` overrides the item's own backoff (a retry policy may choose it)."""
    next_attempt = item.attempt + 1
    if not retryable:
        failed = NodeFailed(
            node_id=item.node_id, error=error, attempt=item.attempt, retryable=False
        )
        return FailurePlan(
            status=WorkItemStatus.FAILED,
            attempt=item.attempt,
            available_at=None,
            events=(failed,),
            last_error=error,
        )
    if next_attempt >= item.max_attempts:
        message = f"exhausted {item.max_attempts} attempts: {error}"
        failed = NodeFailed(
            node_id=item.node_id, error=message, attempt=item.attempt, retryable=False
        )
        return FailurePlan(
            status=WorkItemStatus.DEAD_LETTERED,
            attempt=next_attempt,
            available_at=None,
            events=(failed,),
            last_error=message,
        )
    if delay_ms is None:
        delay_ms = backoff_delay_ms(next_attempt, item.backoff_base_ms, jitter_key=item.item_id)
    return FailurePlan(
        status=WorkItemStatus.PENDING,
        attempt=next_attempt,
        available_at=now + timedelta(milliseconds=delay_ms),
        events=(
            NodeFailed(node_id=item.node_id, error=error, attempt=item.attempt, retryable=True),
            RetryScheduled(node_id=item.node_id, attempt=next_attempt, delay_ms=delay_ms),
        ),
        last_error=error,
    )


@attrs.frozen(kw_only=True)
class ParkPlan:
    """A claimed item put back to wait until ``available_at`` (e.g. a provider rate limit),
    or, when a counted park leaves no attempt, dead-lettered (``status``)."""

    status: WorkItemStatus
    attempt: int
    available_at: datetime | None
    events: tuple[EventKind, ...]
    last_error: str | None = None


def plan_park(item: WorkItem, *, retry_after: datetime, count_attempt: bool) -> ParkPlan:
    """Park ``item`` until ``retry_after`` (kept in UTC), counting the attempt or not;
    records ``node_parked{attempt, retry_after}`` with the attempt it will run at.

    A counted park obeys ``max_attempts`` like a failure does: when no attempt is left the
    item is dead-lettered with ``node_failed{retryable: false, error: "exhausted N attempts:
    parked until …"}`` (upstream's rate-limit park makes the same check, docs/store.md). An
    uncounted park never uses up an attempt."""
    moment = retry_after.astimezone(UTC)
    attempt = item.attempt + 1 if count_attempt else item.attempt
    if count_attempt and attempt >= item.max_attempts:
        message = f"exhausted {item.max_attempts} attempts: parked until {moment.isoformat()}"
        failed = NodeFailed(
            node_id=item.node_id, error=message, attempt=item.attempt, retryable=False
        )
        return ParkPlan(
            status=WorkItemStatus.DEAD_LETTERED,
            attempt=attempt,
            available_at=None,
            events=(failed,),
            last_error=message,
        )
    parked = NodeParked(node_id=item.node_id, attempt=attempt, retry_after=moment)
    return ParkPlan(
        status=WorkItemStatus.PENDING, attempt=attempt, available_at=moment, events=(parked,)
    )
