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

The pool's parts live beside it: its building blocks (the worker, a request on its way, the
answers) in `slots`, the probes and health statuses in `health`, the timeouts in `deadlines`
and the order of the hooks in `chain`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from charter.adapters.pool import health
from charter.adapters.pool.chain import HookChain, observe
from charter.adapters.pool.deadlines import Deadlines, abandon
from charter.adapters.pool.hooks import NEUTRAL_CODES, BreakerHooks, CircuitBreakerHooks
from charter.adapters.pool.options import (
    WorkerPoolError,
    WorkerPoolOptions,
    WorkerSecurityPolicy,
    check_request,
    encode_pieces,
    quick_limits,
    request_checker,
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
from charter.adapters.pool.slots import (
    DONE,
    HEALTHY,
    OPEN,
    QUEUED,
    ROUTING_ERRORS,
    RUNNING,
    TIMED_OUT,
    UNAVAILABLE,
    Consumer,
    Item,
    NewResponse,
    NewSuccess,
    Slot,
    WorkerHandler,
    plain_json,
    success_response,
)
from charter.core.breaker import BreakerEvent
from charter.core.errors import CharterError, InvalidInput

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
        # `asyncio.Future()` is what the loop's `create_future` makes when the loop is
        # asyncio's own, without a Python call (`submit` checks it took this loop).
        self._new_future: Callable[[], asyncio.Future[Any]] | None = (
            asyncio.Future
            if getattr(type(self._loop), "create_future", None)
            is asyncio.BaseEventLoop.create_future
            else None
        )
        self._check = request_checker(self._policy)
        self._quick = quick_limits(self._policy)
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
        self._chain = HookChain(self.breakers, hooks)
        for index, handler in enumerate(handlers):
            if not callable(getattr(handler, "handle", None)):
                raise InvalidInput(
                    f"handlers[{index}]",
                    "expected a WorkerHandler (an object with `async def handle(request)`), "
                    f"got {type(handler).__name__}",
                )
        self._slots = [Slot(f"worker-{index}", handler) for index, handler in enumerate(handlers)]
        self._by_id = {slot.worker_id: slot for slot in self._slots}
        self._cursor = 0
        self._in_flight: dict[str, Item] = {}
        self._deadlines = Deadlines(self._loop, self._expire)
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
            self._chain.rejected(None, request, WorkerErrorCode.CANCELLED)
            raise WorkerPoolError.ShuttingDown()
        # The security check. Its usual case — `options.request_checker`'s first test, the
        # same conditions — is made here without the call; whatever that does not settle
        # goes to the checker itself, which answers the exact verdict and message.
        settled = False
        if type(request) is WorkerRequest:
            operation = request.operation
            timeout_ms = request.timeout_ms
            request_id = request.request_id
            workflow_name = request.workflow_name
            node_id = request.node_id
            quick = self._quick
            limit = quick.identifier_limit
            if (
                type(request_id) is str
                and type(workflow_name) is str
                and type(node_id) is str
                and type(operation) is ToolOperation
                and (
                    timeout_ms is None
                    or (type(timeout_ms) is int and 0 < timeout_ms <= quick.max_timeout)
                )
                and len(request_id) <= limit
                and len(workflow_name) <= limit
                and len(node_id) <= limit
                and request_id.isascii()
                and workflow_name.isascii()
                and node_id.isascii()
            ):
                tool = operation.tool
                if type(tool) is str and tool.isascii():
                    try:
                        chunks = encode_pieces((operation.input, operation.scoped_input), 0)
                    except (TypeError, ValueError, RecursionError):
                        chunks = ()
                    if chunks:
                        text = chunks[0] if len(chunks) == 1 else "".join(chunks)
                        settled = text.isascii() and len(text) + 6 * len(tool) <= quick.room
        reason = None if settled else self._check(request)
        if reason is None:
            request_id = request.request_id
            if request_id in self._in_flight:
                reason = f"request_id {request_id!r} is already in flight"
        if reason is not None:
            self._chain.rejected(None, request, WorkerErrorCode.INVALID_REQUEST)
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
            permit is None
            or slot.probe_status is UNAVAILABLE
            or len(slot.queue) >= self._capacity
            or self._hooks is not None
        ):
            routed = self._route(request, start)
            if type(routed) is WorkerErrorCode:
                self._chain.rejected(None, request, routed)
                raise ROUTING_ERRORS[routed]()
            slot = cast(Slot, routed)
            permit = None  # `_route` lodged the breaker's permit with it
        timeout_ms = request.timeout_ms
        timeout = self._default_timeout if timeout_ms is None else timeout_ms / 1000
        item = Item()  # no `__init__`: each field is set below
        item.request = request
        # `loop.create_future()` without its call (`_new_future`). A bare `Future()` takes
        # the running loop: from another one (a misuse), make it the pool's as before.
        new_future = self._new_future
        loop = self._loop
        future = new_future() if new_future is not None else loop.create_future()
        if future._loop is not loop:
            future = loop.create_future()
        item.future = future
        item.slot = slot
        item.state = QUEUED
        item.permit = permit  # the steady permit travels with the request (`_settle`)
        if timeout is None:
            item.deadline = math.inf
            item.deadlines = None
        else:
            deadlines = self._deadlines
            group = deadlines.get(timeout)
            if group is None:
                group = deadlines[timeout] = {}
            deadline = item.deadline = self._time() + timeout
            item.deadlines = group
            group[item] = None
            if deadline < deadlines.at:
                deadlines.soon(deadline)
        self._in_flight[request_id] = item
        slot.queue.append(item)
        waiter = slot.waiter
        if waiter is not None:
            slot.waiter = None
            if not waiter.done():
                waiter.set_result(None)
        if self._hooks is not None:
            observe(self._hooks.on_request_accepted, slot.worker_id, request)
        try:
            return await item.future
        except asyncio.CancelledError:
            if item.state != DONE:  # the caller gave up: so does the worker
                abandon(item)
                self._settle(item)
                self._chain.rejected(slot.worker_id, request, WorkerErrorCode.CANCELLED)
            raise

    def _route(self, request: WorkerRequest, start: int) -> Slot | WorkerErrorCode:
        """The first worker from ``start`` on, in rotation, that is schedulable, has room
        and whose breaker (and hooks) allow ``request``; else why none did."""
        slots = self._slots
        count = len(slots)
        states = self.breakers._states  # the hot path reads the map directly
        capacity = self._capacity
        saw_full = saw_refused = False
        for offset in range(count):
            slot = slots[(start + offset) % count]
            if slot.probe_status is UNAVAILABLE:
                continue
            if states[slot.worker_id].status is OPEN and self.breakers.waiting(slot.worker_id):
                continue
            if len(slot.queue) >= capacity:
                saw_full = True
                continue
            if not (
                self.breakers.allow_request(slot.worker_id, request)
                if self._hooks is None
                else self._chain.allow(slot.worker_id, request)
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

    def _start(self, slot: Slot) -> None:
        consumer = Consumer()
        slot.consumer = consumer
        consumer.task = self._loop.create_task(
            self._consume(slot, consumer), name=f"charter-pool-{slot.worker_id}"
        )
        consumer.task.add_done_callback(lambda _task: self._consumer_ended(slot, consumer))
        slot.probe_task = self._loop.create_task(
            health.probe(slot, self.options.health_probe_interval),
            name=f"charter-pool-{slot.worker_id}-probe",
        )

    async def _consume(self, slot: Slot, consumer: Consumer) -> None:
        queue = slot.queue
        handle = slot.handler.handle
        perf_counter_ns = time.perf_counter_ns
        in_flight = self._in_flight
        breakers = self.breakers
        permits = breakers._permits
        steady = breakers._steady
        worker_id = slot.worker_id
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - always run as a task
            return
        while not consumer.retired:
            if not queue:
                waiter: asyncio.Future[None] = self._loop.create_future()
                slot.waiter = waiter
                await waiter  # cancelled only by a restart or shutdown: ends the task
                continue
            item = queue.popleft()
            item.state = RUNNING
            consumer.current = item
            started = perf_counter_ns()
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
            finished = perf_counter_ns()
            consumer.current = None
            if consumer.abandoning is not None or consumer.retired:
                if consumer.abandoned(item):  # timed out or given up: already answered
                    consumer.abandoning = None
                    task.uncancel()  # balance the cancel() that abandoned it
                    continue
                if consumer.is_retired():
                    return
            elapsed_ms = (finished - started) // 1_000_000
            if (
                item.state != DONE
                and self._hooks is None
                and (
                    outcome is None
                    or (type(outcome) is not WorkerProtocolError and plain_json(outcome))
                )
            ):
                # A success, without hooks of the caller's: `_complete` inlined.
                item.state = DONE
                group = item.deadlines
                if group is not None:
                    del group[item]
                    item.deadlines = None
                request = item.request
                request_id = request.request_id
                del in_flight[request_id]
                slot.last_seen = finished
                slot.consecutive_failures = 0
                result: Any = NewSuccess()  # `success_response`, inlined
                result.output = outcome
                result.__class__ = WorkerSuccess
                response: Any = NewResponse()
                response.request_id = request_id
                response.worker_id = worker_id
                response.result = result
                response.elapsed_ms = elapsed_ms
                response.__class__ = WorkerResponse
                permit = item.permit
                if permit is None or permit is not steady[worker_id]:
                    if permit is not None:
                        item.permit = None
                        permits[request_id] = permit
                    breakers.on_request_success(worker_id, request, response)
                # else: closed, no failures, this epoch: the success changes nothing
                # (`BreakerHooks.on_request_success`'s fast path), and the permit was never
                # lodged with the breakers.
                try:  # noqa: SIM105 - `contextlib.suppress` costs a call on every answer
                    item.future.set_result(response)
                except asyncio.InvalidStateError:  # the caller gave up (cancelled) meanwhile
                    pass
                continue
            self._complete(slot, item, outcome, elapsed_ms, finished)

    def _consumer_ended(self, slot: Slot, consumer: Consumer) -> None:
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
        slot.probe_status = UNAVAILABLE
        if slot.probe_task is not None:
            slot.probe_task.cancel()  # its next answer would make the worker available again
        for item in tuple(slot.queue):
            self._cancel(item, f"{slot.worker_id} stopped before answering")

    def _complete(
        self, slot: Slot, item: Item, outcome: Any, elapsed_ms: int, finished: int
    ) -> None:
        if item.state == DONE:
            return
        self._settle(item)
        request = item.request
        worker_id = slot.worker_id
        slot.last_seen = finished
        if outcome is None or (type(outcome) is not WorkerProtocolError and plain_json(outcome)):
            response = success_response(request.request_id, worker_id, outcome, elapsed_ms)
            slot.consecutive_failures = 0
            self.breakers.on_request_success(worker_id, request, response)
            if self._hooks is not None:
                observe(self._hooks.on_request_success, worker_id, request, response)
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
            self._chain.failure(worker_id, request, outcome)
        if not item.future.done():
            item.future.set_exception(WorkerPoolError.Worker(outcome, response))

    def _settle(self, item: Item) -> None:
        """Mark ``item`` answered: no deadline, not in flight; a steady permit it carries is
        lodged with the breakers, whose outcome hook the caller calls next."""
        item.state = DONE
        permit = item.permit
        if permit is not None:
            item.permit = None
            self.breakers._permits[item.request.request_id] = permit
        group = item.deadlines
        if group is not None:
            del group[item]
            item.deadlines = None
        del self._in_flight[item.request.request_id]

    def _expire(self, item: Item) -> None:
        """The request's timeout ran out: cancel the work, fail the request."""
        if item.state == DONE:  # pragma: no cover - settled items leave their group
            return
        abandon(item)
        self._settle(item)
        slot = item.slot
        slot.consecutive_failures += 1
        slot.last_seen = time.perf_counter_ns()
        self._chain.failure(slot.worker_id, item.request, TIMED_OUT)
        if not item.future.done():
            item.future.set_exception(WorkerPoolError.Timeout())

    def _cancel(self, item: Item, message: str) -> None:
        """Answer ``item`` with ``ShuttingDown`` (restart or shutdown); its work stops."""
        if item.state == DONE:
            return
        abandon(item)
        self._settle(item)
        self._chain.rejected(item.slot.worker_id, item.request, WorkerErrorCode.CANCELLED)
        if not item.future.done():
            item.future.set_exception(WorkerPoolError.ShuttingDown(message))

    # ── health and lifecycle ──

    def health_snapshot(self) -> tuple[WorkerHealth, ...]:
        """Every worker's health, in worker order."""
        return health.snapshot(self._slots, self.breakers, self._closed)

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
        slot.probe_status = HEALTHY
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
            slot.probe_status = UNAVAILABLE
            slot.last_seen = time.perf_counter_ns()
        self._deadlines.stop()
        tasks.extend(self._retired)
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=self.options.shutdown_grace)
            for task in pending:
                log.warning("%s did not stop within the shutdown grace", task.get_name())
        self._stopped.set()
