"""The worker pool's deadline side (docs/pool.md §8): when each pending request times out,
the one timer that times them out, and how the pool stops working on a request it has
answered early (`abandon`). `WorkerPool` decides what an expired or cancelled request is
answered; this module only keeps the time.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable

from charter.adapters.pool.slots import CLOCK_RESOLUTION, QUEUED, RUNNING, Item


class Deadlines(dict[float, dict[Item, None]]):
    """The pending requests' deadlines: items grouped by their timeout, each group in
    deadline order (insertion order, since one timeout and a monotonic clock), and one timer
    for the earliest deadline of all. Cheaper than a timer per request, which the pool would
    create and cancel on every submit.

    A mapping of its own, so `WorkerPool.submit` files a request through the dict's methods
    alone (``deadlines.get(timeout)``…, then ``deadlines.soon(deadline)`` only when the
    deadline is earlier than ``deadlines.at``). ``expire(item)`` is called for each item
    whose deadline has come, and must take it out of its group (`WorkerPool._expire`).
    """

    __slots__ = ("at", "expire", "loop", "stopped", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, expire: Callable[[Item], None]) -> None:
        super().__init__()
        self.loop = loop
        self.expire = expire
        self.at = math.inf  # when the timer runs
        self.timer: asyncio.TimerHandle | None = None
        self.stopped = False

    def soon(self, when: float) -> None:
        """Sweep at ``when`` instead."""
        if self.timer is not None:
            self.timer.cancel()
        self.at = when
        self.timer = self.loop.call_at(when, self.sweep)

    def sweep(self) -> None:
        """Time out every request whose deadline has come; wait for the next one."""
        self.timer = None
        self.at = math.inf
        now = self.loop.time() + CLOCK_RESOLUTION  # the loop may run a timer this early
        earliest = math.inf
        for timeout, group in tuple(self.items()):
            while group:
                item = next(iter(group))
                if item.deadline > now:
                    earliest = min(earliest, item.deadline)
                    break
                self.expire(item)
            if not group:
                del self[timeout]
        if earliest < math.inf and not self.stopped:
            self.soon(earliest)

    def stop(self) -> None:
        """No more sweeps: the pool is shutting down."""
        self.stopped = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def abandon(item: Item) -> None:
    """Stop working on ``item``: take it off its queue, or cancel its handler call."""
    if item.state == QUEUED:
        with contextlib.suppress(ValueError):  # already taken off by a shutdown
            item.slot.queue.remove(item)
    elif item.state == RUNNING:
        consumer = item.slot.consumer
        if consumer.current is item and not consumer.retired:
            consumer.abandoning = item
            if consumer.task is not None:
                consumer.task.cancel()
