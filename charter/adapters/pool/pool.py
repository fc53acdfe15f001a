"""The in-process worker pool (asyncio): bounded queues, health-aware routing, timeouts that
cancel, and a circuit breaker per worker.

``pool = WorkerPool(handlers, options)`` (inside a running event loop; `WorkerPool.new_inprocess`
is the seed's name for the same) starts one consumer task and one probe task per handler;
workers are named ``worker-0``, ``worker-1``… by position. ``await pool.submit(request)``
answers a `WorkerResponse` whose result is a success, or raises a `WorkerPoolError`:

1. the request is checked against the security policy (`check_request`), and refused if its
   ``request_id`` is already in flight → ``InvalidRequest``;
2. workers are tried round-robin from a cursor that advances once per submit, skipping
   unavailable ones; the first with room in its queue whose hooks allow the request gets it
   (a full queue spills to the next worker). None → ``QueueFull`` if some queue was full,
   else ``CircuitOpen`` if some breaker refused, else ``NoHealthyWorker``;
3. each worker runs its requests one at a time, in order. The answer comes back as a
   response (success), ``Worker(error)`` (the handler's error), or ``Timeout`` when the
   request's ``timeout_ms`` (else the pool's default) runs out first — and then the request
   is taken off the queue, or its handler call cancelled.

Health (`health_snapshot`): a worker is *unavailable* while its breaker is open and inside
its reset timeout, or while its last probe said so; *degraded* after recent failures, while
its breaker is half-open (or ready to be), or when its probe said so; *healthy* otherwise.
Probes never clear failures or close a breaker: recovery goes through the breaker's trial
calls (or `restart_worker`). See docs/pool.md for every rule and each divergence from the
seed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol, cast

from charter.adapters.pool.hooks import NEUTRAL_CODES, BreakerHooks, CircuitBreakerHooks
from charter.adapters.pool.options import (
    WorkerPoolError,
    WorkerPoolOptions,
    WorkerSecurityPolicy,
    check_request,
    request_payload_bytes,
)
from charter.adapters.pool.protocol import (
    LlmOperation,
    ToolOperation,
    WorkerErrorCode,
    WorkerFailure,
    WorkerHealth,
    WorkerHealthStatus,
    WorkerOperation,
    WorkerProtocolError,
    WorkerRequest,
    WorkerResponse,
    WorkerResult,
    WorkerSuccess,
)
from charter.core.breaker import BreakerEvent, BreakerState, BreakerStatus
from charter.core.errors import CharterError, InvalidInput
from charter.core.events import JsonValue

__all__ = [
    "BreakerHooks",
    "CircuitBreakerHooks",
    "LlmOperation",
    "ToolOperation",
    "WorkerErrorCode",
    "WorkerFailure",
    "WorkerHandler",
    "WorkerHealth",
    "WorkerHealthStatus",
    "WorkerOperation",
    "WorkerPool",
    "WorkerPoolError",
    "WorkerPoolOptions",
    "WorkerProtocolError",
    "WorkerRequest",
    "WorkerResponse",
    "WorkerResult",
    "WorkerSecurityPolicy",
    "WorkerSuccess",
    "check_request",
    "request_payload_bytes",
]

log = logging.getLogger("charter.adapters.pool")

_HEALTHY: Final = WorkerHealthStatus.HEALTHY
_DEGRADED: Final = WorkerHealthStatus.DEGRADED
_UNAVAILABLE: Final = WorkerHealthStatus.UNAVAILABLE
_CLOSED: Final = BreakerStatus.CLOSED
_OPEN: Final = BreakerStatus.OPEN
_TIMED_OUT: Final = WorkerProtocolError(
    code=WorkerErrorCode.TIMEOUT, message="worker request timed out", retryable=True
)
_ROUTING_ERRORS: Final[dict[WorkerErrorCode, type[WorkerPoolError]]] = {
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


# ── internals ──────────────────────────────────────────────────────────────────────────

_QUEUED: Final = 0
_RUNNING: Final = 1
_DONE: Final = 2


class _Item:
    """One accepted request on its way through a worker. Made by `WorkerPool.submit`
    (``object.__new__`` and each field set there: a call less on every request)."""

    __slots__ = ("deadline", "deadlines", "future", "request", "slot", "state")

    request: WorkerRequest
    future: asyncio.Future[WorkerResponse]
    slot: _Slot  # its worker; while running, on `slot.consumer`
    state: int  # _QUEUED, _RUNNING or _DONE
    deadline: float  # when it times out (the pool's clock), or infinity
    deadlines: dict[_Item, None] | None  # its timeout's group, while pending


class _Consumer:
    """One generation of a worker's consumer task (a restart starts a new one)."""

    __slots__ = ("abandoning", "current", "retired", "task")

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.current: _Item | None = None
        self.abandoning: _Item | None = None
        self.retired = False

    # Methods, not attribute reads: the flags change while the consumer awaits, and a type
    # checker would otherwise assume they keep the value last tested.
    def is_retired(self) -> bool:
        return self.retired

    def abandoned(self, item: _Item) -> bool:
        return self.abandoning is item

    def interrupted(self) -> bool:
        """Whether anything but the handler's own answer ended the current request."""
        return self.retired or self.abandoning is not None


class _Slot:
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
        self.queue: deque[_Item] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.consumer = _Consumer()
        self.probe_task: asyncio.Task[None] | None = None
        self.probe_status = _HEALTHY
        self.consecutive_failures = 0
        # When the last probe or outcome happened, as a `time.perf_counter` stamp (cheap to
        # take on every outcome), and that stamp in wall-clock milliseconds once asked for.
        self.last_seen: float | None = None
        self.last_seen_ms: tuple[float, int] | None = None

    def last_probe_unix_ms(self) -> int | None:
        """The wall time of ``last_seen``: now, less the time elapsed since (computed once
        per stamp, so a snapshot never changes without an event)."""
        stamp = self.last_seen
        if stamp is None:
            return None
        known = self.last_seen_ms
        if known is None or known[0] != stamp:
            elapsed_ms = int((time.perf_counter() - stamp) * 1000)
            known = self.last_seen_ms = (stamp, time.time_ns() // 1_000_000 - elapsed_ms)
        return known[1]


_new: Final = object.__new__


def _slot_setter(cls: type, name: str) -> Callable[[object, object], None]:
    """The ``__set__`` of a frozen attrs class's slot: what its ``__init__`` ends up doing,
    without the lookup ``object.__setattr__`` repeats on every call."""
    descriptor = cls.__dict__[name]
    setter: Callable[[object, object], None] = descriptor.__set__
    return setter


_set_output: Final = _slot_setter(WorkerSuccess, "output")
_set_request_id: Final = _slot_setter(WorkerResponse, "request_id")
_set_worker_id: Final = _slot_setter(WorkerResponse, "worker_id")
_set_result: Final = _slot_setter(WorkerResponse, "result")
_set_elapsed_ms: Final = _slot_setter(WorkerResponse, "elapsed_ms")


def _success_response(
    request_id: str, worker_id: str, output: JsonValue, elapsed_ms: int
) -> WorkerResponse:
    """``WorkerResponse(…, result=WorkerSuccess(output), …)`` without attrs' ``__init__``:
    every answer of the pool passes here, the fields are known to be well-typed, and the
    generated ``__init__`` of a frozen class sets each field through a slower path (this is
    a third of the cost)."""
    result: WorkerSuccess = _new(WorkerSuccess)
    _set_output(result, output)
    response: WorkerResponse = _new(WorkerResponse)
    _set_request_id(response, request_id)
    _set_worker_id(response, worker_id)
    _set_result(response, result)
    _set_elapsed_ms(response, elapsed_ms)
    return response


_INT_LIMIT: Final = 2**63
#: How early the event loop may run a timer (asyncio's own tolerance).
_CLOCK_RESOLUTION: Final = time.get_clock_info("monotonic").resolution


def _plain_json(value: object, depth: int = 0) -> bool:
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
            isinstance(key, str) and _plain_json(item, depth + 1) for key, item in value.items()
        )
    if isinstance(value, list | tuple):
        return all(_plain_json(item, depth + 1) for item in value)
    return False


class WorkerPool:
    """The pool (see the module doc). Create it inside a running event loop; use it from
    that loop only (`charter.adapters.pool.executor.PoolThread` serves other threads).

    ``hooks`` are called after the pool's own breakers (`BreakerHooks`, ``self.breakers``);
    ``clock`` gives the breakers' time in seconds (default: the loop's monotonic clock; tests
    pass a manual one); ``on_breaker_event(worker_id, event)`` receives every breaker event.
    No handlers is ``NoHealthyWorker`` (the seed); an object without ``handle`` is
    `InvalidInput`.
    """

    def __init__(
        self,
        handlers: Sequence[WorkerHandler],
        options: WorkerPoolOptions | None = None,
        hooks: CircuitBreakerHooks | None = None,
        *,
        clock: Callable[[], float] | None = None,
        on_breaker_event: Callable[[str, BreakerEvent], None] | None = None,
    ) -> None:
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            raise CharterError(
                "WorkerPool needs a running event loop: create it inside `async` code "
                "(or use charter.adapters.pool.executor.PoolThread from synchronous code)"
            ) from None
        if not handlers:
            raise WorkerPoolError.NoHealthyWorker()
        self.options = options if options is not None else WorkerPoolOptions()
        if not isinstance(self.options, WorkerPoolOptions):
            raise InvalidInput("options", "expected WorkerPoolOptions")
        self._policy = self.options.security_policy
        self._capacity = self.options.queue_capacity
        self._default_timeout = self.options.default_request_timeout
        # The loop's clock, for deadlines: `time.monotonic` itself when the loop's `time` is
        # asyncio's (which only calls it), saving a call per request.
        self._time: Callable[[], float] = (
            time.monotonic
            if getattr(type(self._loop), "time", None) is asyncio.BaseEventLoop.time
            else self._loop.time
        )
        self.breakers = BreakerHooks(
            fail_max=self.options.unavailable_after_failures,
            reset_timeout=self.options.reset_timeout,
            half_open_max_calls=self.options.breaker_half_open_max_calls,
            success_threshold=self.options.breaker_success_threshold,
            clock=clock if clock is not None else self._loop.time,
            on_event=on_breaker_event,
        )
        self._hooks = hooks
        for index, handler in enumerate(handlers):
            if not callable(getattr(handler, "handle", None)):
                raise InvalidInput(
                    f"handlers[{index}]",
                    "expected a WorkerHandler (an object with `async def handle(request)`), "
                    f"got {type(handler).__name__}",
                )
        self._slots = [_Slot(f"worker-{index}", handler) for index, handler in enumerate(handlers)]
        self._by_id = {slot.worker_id: slot for slot in self._slots}
        self._cursor = 0
        self._in_flight: dict[str, _Item] = {}
        # Timeouts: items grouped by their timeout, each group in deadline order (insertion
        # order, since one timeout and a monotonic clock), and one timer for the earliest
        # deadline of all. Cheaper than a timer per request, which the pool would create and
        # cancel on every submit.
        self._deadlines: dict[float, dict[_Item, None]] = {}
        self._sweep_at = math.inf
        self._sweep_timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._stopped = asyncio.Event()
        self._retired: set[asyncio.Task[None]] = set()
        for slot in self._slots:
            self.breakers.breaker(slot.worker_id)
            self._start(slot)

    @classmethod
    def new_inprocess(
        cls,
        handlers: Sequence[WorkerHandler],
        options: WorkerPoolOptions | None = None,
        hooks: CircuitBreakerHooks | None = None,
    ) -> WorkerPool:
        """The seed's constructor name."""
        return cls(handlers, options, hooks)

    async def __aenter__(self) -> WorkerPool:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.shutdown()

    @property
    def worker_ids(self) -> tuple[str, ...]:
        return tuple(slot.worker_id for slot in self._slots)

    @property
    def closed(self) -> bool:
        """Whether `shutdown` has begun."""
        return self._closed

    def in_flight(self) -> int:
        """Requests accepted and not yet answered."""
        return len(self._in_flight)

    # ── submitting ──

    async def submit(self, request: WorkerRequest) -> WorkerResponse:
        """Run ``request`` on a worker and answer its response (see the module doc)."""
        if self._closed:
            self._rejected(None, request, WorkerErrorCode.CANCELLED)
            raise WorkerPoolError.ShuttingDown()
        reason = check_request(request, self._policy)
        in_flight = self._in_flight
        request_id = request.request_id
        if reason is None and request_id in in_flight:
            reason = f"request_id {request_id!r} is already in flight"
        if reason is not None:
            self._rejected(None, request, WorkerErrorCode.INVALID_REQUEST)
            raise WorkerPoolError.InvalidRequest(reason)
        # Routing, the common case first: the worker at the cursor is schedulable, its
        # breaker closed and steady (no failures: admitting changes nothing), its queue has
        # room and no hooks of the caller's are asked. Exactly what `_route` decides there,
        # without its loop.
        slots = self._slots
        start = self._cursor % len(slots)
        self._cursor = start + 1
        slot = slots[start]
        worker_id = slot.worker_id
        breakers = self.breakers
        permit = breakers._steady[worker_id]
        if (
            permit is not None
            and slot.probe_status is not _UNAVAILABLE
            and len(slot.queue) < self._capacity
            and self._hooks is None
        ):
            breakers._permits[request_id] = permit
        else:
            routed = self._route(request, start)
            if type(routed) is WorkerErrorCode:
                self._rejected(None, request, routed)
                raise _ROUTING_ERRORS[routed]()
            slot = cast(_Slot, routed)
        timeout_ms = request.timeout_ms
        timeout = self._default_timeout if timeout_ms is None else timeout_ms / 1000
        item: _Item = _new(_Item)  # what `_Item.__init__` does, without its call
        item.request = request
        item.future = self._loop.create_future()
        item.slot = slot
        item.state = _QUEUED
        if timeout is None:
            item.deadline = math.inf
            item.deadlines = None
        else:
            group = self._deadlines.get(timeout)
            if group is None:
                group = self._deadlines[timeout] = {}
            deadline = item.deadline = self._time() + timeout
            item.deadlines = group
            group[item] = None
            if deadline < self._sweep_at:
                self._sweep_soon(deadline)
        in_flight[request_id] = item
        slot.queue.append(item)
        waiter = slot.waiter
        if waiter is not None:
            slot.waiter = None
            if not waiter.done():
                waiter.set_result(None)
        if self._hooks is not None:
            self._observe(self._hooks.on_request_accepted, slot.worker_id, request)
        try:
            return await item.future
        except asyncio.CancelledError:
            if item.state != _DONE:  # the caller gave up: so does the worker
                self._abandon(item)
                self._settle(item)
                self._rejected(slot.worker_id, request, WorkerErrorCode.CANCELLED)
            raise

    def _route(self, request: WorkerRequest, start: int) -> _Slot | WorkerErrorCode:
        """The first worker from ``start`` on, in rotation, that is schedulable, has room
        and whose breaker (and hooks) allow ``request``; else why none did."""
        slots = self._slots
        count = len(slots)
        states = self.breakers._states  # the hot path reads the map directly
        capacity = self._capacity
        saw_full = saw_refused = False
        for offset in range(count):
            slot = slots[(start + offset) % count]
            if slot.probe_status is _UNAVAILABLE:
                continue
            if states[slot.worker_id].status is _OPEN and self.breakers.waiting(slot.worker_id):
                continue
            if len(slot.queue) >= capacity:
                saw_full = True
                continue
            if not (
                self.breakers.allow_request(slot.worker_id, request)
                if self._hooks is None
                else self._allow(slot.worker_id, request)
            ):
                saw_refused = True
                continue
            return slot
        if saw_full:
            return WorkerErrorCode.QUEUE_FULL
        if saw_refused:
            return WorkerErrorCode.CIRCUIT_OPEN
        return WorkerErrorCode.UNAVAILABLE

    # ── the worker side ──

    def _start(self, slot: _Slot) -> None:
        consumer = _Consumer()
        slot.consumer = consumer
        consumer.task = self._loop.create_task(
            self._consume(slot, consumer), name=f"charter-pool-{slot.worker_id}"
        )
        consumer.task.add_done_callback(lambda _task: self._consumer_ended(slot, consumer))
        slot.probe_task = self._loop.create_task(
            self._probe(slot), name=f"charter-pool-{slot.worker_id}-probe"
        )

    async def _consume(self, slot: _Slot, consumer: _Consumer) -> None:
        queue = slot.queue
        handle = slot.handler.handle
        perf_counter = time.perf_counter
        in_flight = self._in_flight
        breakers = self.breakers
        permits = breakers._permits
        steady = breakers._steady
        worker_id = slot.worker_id
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - always run as a task
            return
        while not consumer.is_retired():
            if not queue:
                waiter: asyncio.Future[None] = self._loop.create_future()
                slot.waiter = waiter
                await waiter  # cancelled only by a restart or shutdown: ends the task
                continue
            item = queue.popleft()
            item.state = _RUNNING
            consumer.current = item
            started = perf_counter()
            outcome: Any
            try:
                outcome = await handle(item.request)
            except asyncio.CancelledError:
                consumer.current = None
                if consumer.is_retired():
                    raise  # restart or shutdown: they answered the request
                if not consumer.abandoned(item) and task.cancelling():
                    # Someone else cancelled the pool's task (the loop is closing?): the
                    # request must not wait for an answer that will never come.
                    self._cancel(item, f"{slot.worker_id} was cancelled before answering")
                    raise
                outcome = WorkerProtocolError(
                    code=WorkerErrorCode.CANCELLED,
                    message="the handler was cancelled",
                    retryable=True,
                )
            except Exception as error:  # noqa: BLE001 - any handler exception fails the request
                outcome = WorkerProtocolError(
                    code=WorkerErrorCode.EXECUTION_FAILED,
                    message=f"handler raised {type(error).__name__}: {error}",
                    retryable=True,
                )
            finished = perf_counter()
            consumer.current = None
            if consumer.retired or consumer.abandoning is not None:
                if consumer.abandoned(item):  # timed out or given up: already answered
                    consumer.abandoning = None
                    task.uncancel()  # balance the cancel() that abandoned it
                    continue
                if consumer.is_retired():
                    return
            elapsed_ms = int((finished - started) * 1000)
            if (
                item.state != _DONE
                and self._hooks is None
                and (
                    outcome is None
                    or (type(outcome) is not WorkerProtocolError and _plain_json(outcome))
                )
            ):
                # A success, without hooks of the caller's: `_complete` inlined.
                item.state = _DONE
                group = item.deadlines
                if group is not None:
                    del group[item]
                    item.deadlines = None
                request = item.request
                request_id = request.request_id
                del in_flight[request_id]
                slot.last_seen = finished
                slot.consecutive_failures = 0
                result: WorkerSuccess = _new(WorkerSuccess)  # `_success_response`, inlined
                _set_output(result, outcome)
                response: WorkerResponse = _new(WorkerResponse)
                _set_request_id(response, request_id)
                _set_worker_id(response, worker_id)
                _set_result(response, result)
                _set_elapsed_ms(response, elapsed_ms)
                permit = permits.get(request_id)
                if permit is not None and permit is steady[worker_id]:
                    # Closed, no failures, this epoch: the success changes nothing
                    # (`BreakerHooks.on_request_success`'s fast path).
                    del permits[request_id]
                else:
                    breakers.on_request_success(worker_id, request, response)
                future = item.future
                if not future.done():
                    future.set_result(response)
                continue
            self._complete(slot, item, outcome, elapsed_ms, finished)

    def _consumer_ended(self, slot: _Slot, consumer: _Consumer) -> None:
        """A consumer that was not retired stopped (a bug, or its task was cancelled from
        outside): fail closed — the worker takes no more work until restarted, and what
        waits in its queue is answered now rather than never."""
        if consumer.retired or self._closed:
            return
        consumer.retired = True
        task = consumer.task
        error = None if task is None or task.cancelled() else task.exception()
        log.error(
            "%s: its consumer stopped (%r); unavailable until restarted", slot.worker_id, error
        )
        slot.probe_status = _UNAVAILABLE
        if slot.probe_task is not None:
            slot.probe_task.cancel()  # its next answer would make the worker available again
        for item in tuple(slot.queue):
            self._cancel(item, f"{slot.worker_id} stopped before answering")

    def _complete(
        self, slot: _Slot, item: _Item, outcome: Any, elapsed_ms: int, finished: float
    ) -> None:
        if item.state == _DONE:
            return
        self._settle(item)
        request = item.request
        worker_id = slot.worker_id
        slot.last_seen = finished
        if outcome is None or (type(outcome) is not WorkerProtocolError and _plain_json(outcome)):
            response = _success_response(request.request_id, worker_id, outcome, elapsed_ms)
            slot.consecutive_failures = 0
            self.breakers.on_request_success(worker_id, request, response)
            if self._hooks is not None:
                self._observe(self._hooks.on_request_success, worker_id, request, response)
            future = item.future
            if not future.done():
                future.set_result(response)
            return
        if not isinstance(outcome, WorkerProtocolError):
            outcome = WorkerProtocolError(
                code=WorkerErrorCode.EXECUTION_FAILED,
                message=f"handler returned {type(outcome).__name__}, which is not plain JSON",
                retryable=False,
            )
        if isinstance(outcome, WorkerProtocolError):
            response = WorkerResponse(
                request_id=request.request_id,
                worker_id=worker_id,
                result=WorkerFailure(outcome),
                elapsed_ms=elapsed_ms,
            )
            if outcome.code not in NEUTRAL_CODES:
                slot.consecutive_failures += 1
            self._failure(worker_id, request, outcome)
        if not item.future.done():
            item.future.set_exception(WorkerPoolError.Worker(outcome, response))

    def _settle(self, item: _Item) -> None:
        """Mark ``item`` answered: no deadline, not in flight."""
        item.state = _DONE
        group = item.deadlines
        if group is not None:
            del group[item]
            item.deadlines = None
        del self._in_flight[item.request.request_id]

    def _sweep_soon(self, when: float) -> None:
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
        self._sweep_at = when
        self._sweep_timer = self._loop.call_at(when, self._sweep)

    def _sweep(self) -> None:
        """Time out every request whose deadline has come; wait for the next one."""
        self._sweep_timer = None
        self._sweep_at = math.inf
        now = self._loop.time() + _CLOCK_RESOLUTION  # the loop may run a timer this early
        earliest = math.inf
        for timeout, group in tuple(self._deadlines.items()):
            while group:
                item = next(iter(group))
                if item.deadline > now:
                    earliest = min(earliest, item.deadline)
                    break
                self._expire(item)
            if not group:
                del self._deadlines[timeout]
        if earliest < math.inf and not self._closed:
            self._sweep_soon(earliest)

    def _abandon(self, item: _Item) -> None:
        """Stop working on ``item``: take it off its queue, or cancel its handler call."""
        if item.state == _QUEUED:
            with contextlib.suppress(ValueError):  # already taken off by a shutdown
                item.slot.queue.remove(item)
        elif item.state == _RUNNING:
            consumer = item.slot.consumer
            if consumer.current is item and not consumer.retired:
                consumer.abandoning = item
                if consumer.task is not None:
                    consumer.task.cancel()

    def _expire(self, item: _Item) -> None:
        """The request's timeout ran out: cancel the work, fail the request."""
        if item.state == _DONE:  # pragma: no cover - settled items leave their group
            return
        self._abandon(item)
        self._settle(item)
        slot = item.slot
        slot.consecutive_failures += 1
        slot.last_seen = time.perf_counter()
        self._failure(slot.worker_id, item.request, _TIMED_OUT)
        if not item.future.done():
            item.future.set_exception(WorkerPoolError.Timeout())

    def _cancel(self, item: _Item, message: str) -> None:
        """Answer ``item`` with ``ShuttingDown`` (restart or shutdown); its work stops."""
        if item.state == _DONE:
            return
        self._abandon(item)
        self._settle(item)
        self._rejected(item.slot.worker_id, item.request, WorkerErrorCode.CANCELLED)
        if not item.future.done():
            item.future.set_exception(WorkerPoolError.ShuttingDown(message))

    async def _probe(self, slot: _Slot) -> None:
        interval = self.options.health_probe_interval
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
                answer = _UNAVAILABLE
            if isinstance(answer, WorkerHealthStatus):
                slot.probe_status = answer
            else:
                log.warning("%s: probe answered %r, not a health status", slot.worker_id, answer)
                slot.probe_status = _UNAVAILABLE
            slot.last_seen = time.perf_counter()
            await asyncio.sleep(interval)

    # ── hooks: the built-in breakers first, then the caller's ──

    def _allow(self, worker_id: str, request: WorkerRequest) -> bool:
        if not self.breakers.allow_request(worker_id, request):
            return False
        hooks = self._hooks
        if hooks is None:
            return True
        try:
            allowed = hooks.allow_request(worker_id, request) is True
        except Exception:
            log.exception("allow_request hook failed; refusing")
            allowed = False
        if not allowed:
            self.breakers.on_request_rejected(worker_id, request, WorkerErrorCode.CIRCUIT_OPEN)
        return allowed

    def _failure(self, worker_id: str, request: WorkerRequest, error: WorkerProtocolError) -> None:
        self.breakers.on_request_failure(worker_id, request, error)
        if self._hooks is not None:
            self._observe(self._hooks.on_request_failure, worker_id, request, error)

    def _rejected(
        self, worker_id: str | None, request: WorkerRequest, reason: WorkerErrorCode
    ) -> None:
        self.breakers.on_request_rejected(worker_id, request, reason)
        if self._hooks is not None:
            self._observe(self._hooks.on_request_rejected, worker_id, request, reason)

    @staticmethod
    def _observe(hook: Callable[..., object], *args: object) -> None:
        try:
            hook(*args)
        except Exception:
            log.exception("pool hook %s failed", getattr(hook, "__name__", hook))

    # ── health and lifecycle ──

    def _status(self, slot: _Slot) -> WorkerHealthStatus:
        if self._closed or slot.probe_status is _UNAVAILABLE:
            return _UNAVAILABLE
        state: BreakerState = self.breakers.state(slot.worker_id)
        if state.status is _OPEN:
            return _UNAVAILABLE if self.breakers.waiting(slot.worker_id) else _DEGRADED
        if (
            state.status is not _CLOSED
            or state.failures
            or slot.consecutive_failures
            or slot.probe_status is _DEGRADED
        ):
            return _DEGRADED
        return _HEALTHY

    def health_snapshot(self) -> tuple[WorkerHealth, ...]:
        """Every worker's health, in worker order."""
        return tuple(
            WorkerHealth(
                worker_id=slot.worker_id,
                status=self._status(slot),
                consecutive_failures=slot.consecutive_failures,
                last_probe_unix_ms=slot.last_probe_unix_ms(),
            )
            for slot in self._slots
        )

    async def restart_worker(self, worker_id: str) -> None:
        """Replace a worker's tasks: its running request is cancelled (answered
        ``ShuttingDown``), its queue is kept for the new consumer, its probe restarts and
        an open breaker becomes half-open at once (trial calls decide; failures are not
        forgotten). An unknown id is `InvalidInput`."""
        if self._closed:
            raise WorkerPoolError.ShuttingDown()
        slot = self._by_id.get(worker_id)
        if slot is None:
            known = ", ".join(self._by_id)
            raise InvalidInput("worker_id", f"no worker {worker_id!r} (workers: {known})")
        old = slot.consumer
        old.retired = True
        if old.current is not None:
            self._cancel(old.current, f"{worker_id} was restarted before answering")
        self._retire(old.task)
        self._retire(slot.probe_task)
        slot.probe_status = _HEALTHY
        self.breakers.expedite(worker_id)
        self._start(slot)
        await asyncio.sleep(0)  # let the old tasks see their cancellation

    def _retire(self, task: asyncio.Task[None] | None) -> None:
        if task is not None and not task.done():
            task.cancel()
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)

    async def shutdown(self) -> None:
        """Stop the pool: every request queued or running is answered ``ShuttingDown`` and
        its work cancelled, later submits answer ``ShuttingDown``, and every worker is
        unavailable. Waits up to ``options.shutdown_grace`` for the tasks to end (a handler
        that ignores cancellation is left behind, logged). Calling it again waits for the
        first call."""
        if self._closed:
            await self._stopped.wait()
            return
        self._closed = True
        tasks: list[asyncio.Task[None]] = []
        for slot in self._slots:
            consumer = slot.consumer
            consumer.retired = True
            if consumer.current is not None:
                self._cancel(consumer.current, "worker pool is shutting down")
            for item in tuple(slot.queue):
                self._cancel(item, "worker pool is shutting down")
            slot.queue.clear()
            for task in (consumer.task, slot.probe_task):
                if task is not None and not task.done():
                    task.cancel()
                    tasks.append(task)
            slot.probe_status = _UNAVAILABLE
            slot.last_seen = time.perf_counter()
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None
        tasks.extend(self._retired)
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=self.options.shutdown_grace)
            for task in pending:
                log.warning("%s did not stop within the shutdown grace", task.get_name())
        self._stopped.set()
