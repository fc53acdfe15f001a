"""The worker pool's health side: each worker's probe task, and a worker's status as
`WorkerPool.health_snapshot` reports it (docs/pool.md §6).

A worker is *unavailable* while its breaker is open and inside its reset timeout, while its
last probe said so, or once the pool is shut down; *degraded* after recent failures, while
its breaker is half-open (or ready to be), or when its probe said so; *healthy* otherwise.
Probes never clear failures or close a breaker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import cast

from charter.adapters.pool.hooks import BreakerHooks
from charter.adapters.pool.protocol import WorkerHealth, WorkerHealthStatus
from charter.adapters.pool.slots import CLOSED, DEGRADED, HEALTHY, OPEN, UNAVAILABLE, Slot
from charter.core.breaker import BreakerState

log = logging.getLogger("charter.adapters.pool")


async def probe(slot: Slot, interval: float) -> None:
    """Ask ``slot``'s handler for its health every ``interval`` seconds, for ever: a probe
    that raises, outlasts the interval or answers something else counts as unavailable."""
    if getattr(slot.handler, "probe_health", None) is None:
        return  # a handler without a probe is healthy as far as probes go (the seed)
    while True:
        answer: object
        try:
            # Not asyncio.wait_for: on Python 3.11 it swallows a cancellation that
            # arrives as the probe finishes, and the task would outlive shutdown.
            async with asyncio.timeout(interval):
                answer = cast(object, await slot.handler.probe_health())  # checked below
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("%s: health probe failed", slot.worker_id, exc_info=True)
            answer = UNAVAILABLE
        if isinstance(answer, WorkerHealthStatus):
            slot.probe_status = answer
        else:
            log.warning("%s: probe answered %r, not a health status", slot.worker_id, answer)
            slot.probe_status = UNAVAILABLE
        slot.last_seen = time.perf_counter_ns()
        await asyncio.sleep(interval)


def status(slot: Slot, breakers: BreakerHooks, closed: bool) -> WorkerHealthStatus:
    """``slot``'s health, from its probe, its failures and its breaker (``closed``: whether
    the pool is shut down)."""
    if closed or slot.probe_status is UNAVAILABLE:
        return UNAVAILABLE
    state: BreakerState = breakers.state(slot.worker_id)
    if state.status is OPEN:
        return UNAVAILABLE if breakers.waiting(slot.worker_id) else DEGRADED
    if (
        state.status is not CLOSED
        or state.failures
        or slot.consecutive_failures
        or slot.probe_status is DEGRADED
    ):
        return DEGRADED
    return HEALTHY


def snapshot(
    slots: Sequence[Slot], breakers: BreakerHooks, closed: bool
) -> tuple[WorkerHealth, ...]:
    """Every worker's health, in worker order."""
    return tuple(
        WorkerHealth(
            worker_id=slot.worker_id,
            status=status(slot, breakers, closed),
            consecutive_failures=slot.consecutive_failures,
            last_probe_unix_ms=slot.last_probe_unix_ms(),
        )
        for slot in slots
    )
