"""The worker pool's building blocks (`charter.adapters.pool.pool` puts them together): what a
worker runs (`WorkerHandler`), one accepted request (`Item`), a worker (`Slot`) and its
consumer generation (`Consumer`), the request states, the plain-JSON check on answers and the
fast construction of a success response. Internal to the package, except `WorkerHandler`
(re-exported by `charter.adapters.pool`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from typing import Any, Final, Protocol, cast

from charter.adapters.pool.options import WorkerPoolError
from charter.adapters.pool.protocol import (
    WorkerErrorCode,
    WorkerHealthStatus,
    WorkerProtocolError,
    WorkerRequest,
    WorkerResponse,
    WorkerSuccess,
)
from charter.core.breaker import BreakerStatus, Permit
from charter.core.events import JsonValue

HEALTHY: Final = WorkerHealthStatus.HEALTHY
DEGRADED: Final = WorkerHealthStatus.DEGRADED
UNAVAILABLE: Final = WorkerHealthStatus.UNAVAILABLE
CLOSED: Final = BreakerStatus.CLOSED
OPEN: Final = BreakerStatus.OPEN
TIMED_OUT: Final = WorkerProtocolError(
    code=WorkerErrorCode.TIMEOUT, message="worker request timed out", retryable=True
)
ROUTING_ERRORS: Final[dict[WorkerErrorCode, type[WorkerPoolError]]] = {
    WorkerErrorCode.QUEUE_FULL: WorkerPoolError.QueueFull,
    WorkerErrorCode.CIRCUIT_OPEN: WorkerPoolError.CircuitOpen,
    WorkerErrorCode.UNAVAILABLE: WorkerPoolError.NoHealthyWorker,
}


class WorkerHandler(Protocol):
    """What a worker runs (the seed's trait). Subclass it to inherit the default probe."""

    async def handle(self, request: WorkerRequest) -> JsonValue | WorkerProtocolError:
        """Do the work: return the output (plain JSON), or a `WorkerProtocolError`. An
        exception counts as ``execution_failed`` (retryable)."""
        ...

    async def probe_health(self) -> WorkerHealthStatus:
        """The worker's own view of its health (default: healthy). A probe that raises or
        outlasts the probe interval counts as unavailable."""
        return WorkerHealthStatus.HEALTHY


# ── a request on its way through a worker, and the worker ──

QUEUED: Final = 0
RUNNING: Final = 1
DONE: Final = 2


class Item:
    """One accepted request on its way through a worker. Made by `WorkerPool.submit`
    (``object.__new__`` and each field set there: a call less on every request)."""

    __slots__ = ("deadline", "deadlines", "future", "permit", "request", "slot", "state")

    request: WorkerRequest
    future: asyncio.Future[WorkerResponse]
    slot: Slot  # its worker; while running, on `slot.consumer`
    state: int  # QUEUED, RUNNING or DONE
    deadline: float  # when it times out (the pool's clock), or infinity
    deadlines: dict[Item, None] | None  # its timeout's group, while pending
    # The breaker's steady permit when routing took the fast path (`WorkerPool.submit`):
    # lodged with `BreakerHooks` only if an outcome needs the breaker; else None.
    permit: Permit | None


class Consumer:
    """One generation of a worker's consumer task (a restart starts a new one)."""

    __slots__ = ("abandoning", "current", "retired", "task")

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.current: Item | None = None
        self.abandoning: Item | None = None
        self.retired = False

    # Methods, not attribute reads: the flags change while the consumer awaits, and a type
    # checker would otherwise assume they keep the value last tested.
    def is_retired(self) -> bool:
        return self.retired

    def abandoned(self, item: Item) -> bool:
        return self.abandoning is item

    def interrupted(self) -> bool:
        """Whether anything but the handler's own answer ended the current request."""
        return self.retired or self.abandoning is not None


class Slot:
    """One worker: its handler, queue, consumer, probe and health counters."""

    __slots__ = (
        "consecutive_failures",
        "consumer",
        "handler",
        "last_seen",
        "last_seen_ms",
        "probe_status",
        "probe_task",
        "queue",
        "waiter",
        "worker_id",
    )

    def __init__(self, worker_id: str, handler: WorkerHandler) -> None:
        self.worker_id = worker_id
        self.handler = handler
        self.queue: deque[Item] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.consumer = Consumer()
        self.probe_task: asyncio.Task[None] | None = None
        self.probe_status = HEALTHY
        self.consecutive_failures = 0
        # When the last probe or outcome happened, as a `time.perf_counter_ns` stamp (cheap
        # to take on every outcome), and that stamp in wall-clock milliseconds once asked for.
        self.last_seen: int | None = None
        self.last_seen_ms: tuple[int, int] | None = None

    def last_probe_unix_ms(self) -> int | None:
        """The wall time of ``last_seen``: now, less the time elapsed since (computed once
        per stamp, so a snapshot never changes without an event)."""
        stamp = self.last_seen
        if stamp is None:
            return None
        known = self.last_seen_ms
        if known is None or known[0] != stamp:
            elapsed_ms = (time.perf_counter_ns() - stamp) // 1_000_000
            known = self.last_seen_ms = (stamp, time.time_ns() // 1_000_000 - elapsed_ms)
        return known[1]


# ── answers ──


class NewSuccess(WorkerSuccess):
    """A `WorkerSuccess` being built: the same layout (no slot of its own) with plain
    attribute stores and no ``__init__``. Made with ``NewSuccess()``, filled in, then turned
    into a `WorkerSuccess` by ``result.__class__ = WorkerSuccess`` (allowed between classes of
    one layout): the frozen class's ``__init__`` sets each field through
    ``object.__setattr__``, several times slower. Never seen outside `success_response` and
    its inlined copy in `WorkerPool`."""

    __slots__ = ()
    __init__ = object.__init__
    __setattr__ = object.__setattr__
    __delattr__ = object.__delattr__


class NewResponse(WorkerResponse):
    """A `WorkerResponse` being built (see `NewSuccess`)."""

    __slots__ = ()
    __init__ = object.__init__
    __setattr__ = object.__setattr__
    __delattr__ = object.__delattr__


def success_response(
    request_id: str, worker_id: str, output: JsonValue, elapsed_ms: int
) -> WorkerResponse:
    """``WorkerResponse(…, result=WorkerSuccess(output), …)`` without attrs' ``__init__``:
    every answer of the pool passes here and the fields are known to be well-typed. Each
    object is built as its mutable twin (`NewSuccess`, `NewResponse`) and then given its
    class; the result is an exact `WorkerResponse` holding an exact `WorkerSuccess`,
    equal to the one ``__init__`` builds (property-tested)."""
    result: Any = NewSuccess()  # a WorkerSuccess once its class is set
    result.output = output
    result.__class__ = WorkerSuccess
    response: Any = NewResponse()
    response.request_id = request_id
    response.worker_id = worker_id
    response.result = result
    response.elapsed_ms = elapsed_ms
    response.__class__ = WorkerResponse
    return cast(WorkerResponse, response)


_INT_LIMIT: Final = 2**63
#: How early the event loop may run a timer (asyncio's own tolerance).
CLOCK_RESOLUTION: Final = time.get_clock_info("monotonic").resolution


def plain_json(value: object, depth: int = 0) -> bool:
    """Whether ``value`` is plain JSON (what a response may carry): objects with string
    keys, arrays, strings, finite numbers, 64-bit integers, booleans and null, nested at
    most 64 deep."""
    if value is None or isinstance(value, str | bool):
        return True
    if isinstance(value, int):
        return -_INT_LIMIT <= value < _INT_LIMIT
    if isinstance(value, float):
        return math.isfinite(value)
    if depth >= 64:
        return False
    if isinstance(value, dict):
        return all(
            isinstance(key, str) and plain_json(item, depth + 1) for key, item in value.items()
        )
    if isinstance(value, list | tuple):
        return all(plain_json(item, depth + 1) for item in value)
    return False
