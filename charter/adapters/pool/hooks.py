"""Circuit-breaker hooks: the pool's extension seam, and its built-in implementation.

`CircuitBreakerHooks` is the seed's hook surface: ``allow_request`` may refuse a request
for a worker before it is queued; the other methods observe what happens. The pool calls
them in a fixed, balanced pattern (docs/pool.md §5):

* for each worker tried, ``allow_request(worker, request)``; when it returns true, the
  request is queued on that worker at once (the pool checks for room first, and nothing
  can intervene) and ``on_request_accepted(worker, request)`` follows;
* every accepted request then gets exactly one of ``on_request_success(worker, request,
  response)``, ``on_request_failure(worker, request, error)`` (the handler's error, or a
  timeout) or ``on_request_rejected(worker, request, reason)`` (cancelled: by its caller, a
  restart or shutdown);
* a request no worker accepted gets exactly one ``on_request_rejected(None, request,
  reason)``: ``invalid_request``, ``unavailable`` (no healthy worker), ``circuit_open``,
  ``queue_full`` or ``cancelled`` (the pool is shutting down).

Hooks are synchronous: each runs to completion inside the pool's bookkeeping, so the pool's
state cannot move under it (the seed's are async; a hook that needs I/O should hand it off).
An exception from ``allow_request`` counts as a refusal; one from an observer is logged.

`BreakerHooks` is the default implementation: one `charter.core.breaker.CircuitBreaker`
per worker. The pool always runs one (it is how the pool tracks health); hooks you pass run
after it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final, Protocol

from charter.adapters.pool.protocol import (
    WorkerErrorCode,
    WorkerProtocolError,
    WorkerRequest,
    WorkerResponse,
)
from charter.core.breaker import (
    BreakerEvent,
    BreakerState,
    BreakerStatus,
    BreakerStep,
    CallOutcome,
    CircuitBreaker,
    Permit,
)

__all__ = ["NEUTRAL_CODES", "BreakerHooks", "CircuitBreakerHooks"]

log = logging.getLogger("charter.adapters.pool")

_CLOSED: Final = BreakerStatus.CLOSED

#: Handler error codes that say nothing about the worker's health: the request was
#: malformed, or cancelled. Every other code counts as a failure.
NEUTRAL_CODES: Final = frozenset({WorkerErrorCode.INVALID_REQUEST, WorkerErrorCode.CANCELLED})


class CircuitBreakerHooks(Protocol):
    """The hook surface (see the module doc). Subclass it to inherit no-op defaults."""

    def allow_request(self, worker_id: str, request: WorkerRequest) -> bool:
        """False refuses ``request`` for ``worker_id`` (the pool tries the next worker)."""
        return True

    def on_request_accepted(self, worker_id: str, request: WorkerRequest) -> None:
        """``request`` was queued on ``worker_id``."""
        return None

    def on_request_success(
        self, worker_id: str, request: WorkerRequest, response: WorkerResponse
    ) -> None:
        """The handler answered with an output."""
        return None

    def on_request_failure(
        self, worker_id: str, request: WorkerRequest, error: WorkerProtocolError
    ) -> None:
        """The handler answered with an error, or the request timed out (code ``timeout``)."""
        return None

    def on_request_rejected(
        self, worker_id: str | None, request: WorkerRequest, reason: WorkerErrorCode
    ) -> None:
        """The request ended without an answer: refused before any worker accepted it
        (``worker_id`` None), or cancelled after ``worker_id`` accepted it."""
        return None


class BreakerHooks(CircuitBreakerHooks):
    """One circuit breaker per worker, behind the hook surface.

    ``allow_request`` asks the worker's breaker for a permit; the outcome hooks hand the
    permit back: success → success; failure → failure, unless its code is in
    `NEUTRAL_CODES`; rejected → neutral (frees a trial slot). Permits are matched to
    outcomes by ``request_id``, which the pool keeps unique among requests in flight.

    ``clock`` gives the breakers' time in seconds (monotonic by default); ``on_event``
    receives every breaker event as it happens (``(worker_id, event)``), for a log.
    """

    def __init__(
        self,
        *,
        fail_max: int = 3,
        reset_timeout: float = 5.0,
        half_open_max_calls: int = 1,
        success_threshold: int = 1,
        clock: Callable[[], float] = time.monotonic,
        on_event: Callable[[str, BreakerEvent], None] | None = None,
    ) -> None:
        # Validates the settings now rather than at the first worker.
        CircuitBreaker(
            name="settings",
            fail_max=fail_max,
            reset_timeout=reset_timeout,
            half_open_max_calls=half_open_max_calls,
            success_threshold=success_threshold,
        )
        self._settings = (fail_max, reset_timeout, half_open_max_calls, success_threshold)
        self._clock = clock
        self._on_event = on_event
        self._breakers: dict[str, CircuitBreaker] = {}
        self._states: dict[str, BreakerState] = {}
        self._permits: dict[str, Permit] = {}
        self._closed_permits: dict[str, Permit] = {}
        # Per worker, while its breaker is closed with no failures counted (where admitting
        # a call and recording its success change nothing): the permit it hands out, else
        # None. Kept by `_apply`, through which every state change goes; the pool's hot
        # path reads it.
        self._steady: dict[str, Permit | None] = {}

    # ── the hook surface ──

    def allow_request(self, worker_id: str, request: WorkerRequest) -> bool:
        state = self._states.get(worker_id)
        if state is not None and state.status is _CLOSED:
            # Fast path, for every request of a healthy pool: a closed breaker admits the
            # call and changes nothing (`CircuitBreaker.allow`), so its permit is the same
            # value for the whole epoch. Property-tested against the breaker itself.
            permit = self._closed_permits.get(worker_id)
            if permit is None or permit.epoch != state.epoch:
                permit = Permit(worker_id, state.epoch, False)
                self._closed_permits[worker_id] = permit
            self._permits[request.request_id] = permit
            return True
        breaker = self.breaker(worker_id)
        step = breaker.allow(self._states[worker_id], now=self._clock())
        self._apply(worker_id, step)
        if step.permit is None:
            return False
        self._permits[request.request_id] = step.permit
        return True

    def on_request_success(
        self, worker_id: str, request: WorkerRequest, response: WorkerResponse
    ) -> None:
        permits = self._permits
        permit = permits.get(request.request_id)
        state = self._states.get(worker_id)
        if (
            permit is not None
            and permit.breaker == worker_id
            and state is not None
            and state.status is _CLOSED
            and not state.failures
        ):
            # Fast path: success on a closed breaker with no failures changes nothing.
            del permits[request.request_id]
            return
        self._record(worker_id, request, CallOutcome.SUCCESS)

    def on_request_failure(
        self, worker_id: str, request: WorkerRequest, error: WorkerProtocolError
    ) -> None:
        neutral = error.code in NEUTRAL_CODES
        self._record(worker_id, request, CallOutcome.NEUTRAL if neutral else CallOutcome.FAILURE)

    def on_request_rejected(
        self, worker_id: str | None, request: WorkerRequest, reason: WorkerErrorCode
    ) -> None:
        if worker_id is not None:
            self._record(worker_id, request, CallOutcome.NEUTRAL)

    # ── inspection and control ──

    def breaker(self, worker_id: str) -> CircuitBreaker:
        """The worker's breaker (made on first use)."""
        breaker = self._breakers.get(worker_id)
        if breaker is None:
            fail_max, reset_timeout, half_open_max_calls, success_threshold = self._settings
            breaker = CircuitBreaker(
                name=worker_id,
                fail_max=fail_max,
                reset_timeout=reset_timeout,
                half_open_max_calls=half_open_max_calls,
                success_threshold=success_threshold,
            )
            self._breakers[worker_id] = breaker
            self._set_state(worker_id, BreakerState())
        return breaker

    def state(self, worker_id: str) -> BreakerState:
        """The worker's breaker state."""
        self.breaker(worker_id)
        return self._states[worker_id]

    def admits(self, worker_id: str) -> bool:
        """Whether the worker's breaker would let a call through now."""
        return self.breaker(worker_id).would_allow(self._states[worker_id], now=self._clock())

    def waiting(self, worker_id: str) -> bool:
        """Whether the worker's breaker is open and still inside its reset timeout."""
        state = self.state(worker_id)
        return state.status is BreakerStatus.OPEN and not self.admits(worker_id)

    def expedite(self, worker_id: str) -> None:
        """End the worker's open period now: trial calls decide (used on restart)."""
        breaker = self.breaker(worker_id)
        self._apply(worker_id, breaker.expedite(self._states[worker_id], now=self._clock()))

    def in_flight(self) -> int:
        """Permits lodged here and not yet given back (the pool lodges a steady permit only
        when an outcome needs the breaker: docs/pool.md §11)."""
        return len(self._permits)

    # ── internals ──

    def _record(self, worker_id: str, request: WorkerRequest, outcome: CallOutcome) -> None:
        permit = self._permits.pop(request.request_id, None)
        if permit is None or permit.breaker != worker_id:
            return  # not admitted here (e.g. refused by a later hook before queueing)
        state = self._states[worker_id]
        if state.status is _CLOSED and (
            outcome is CallOutcome.NEUTRAL
            or (outcome is CallOutcome.SUCCESS and state.failures == 0)
        ):
            return  # fast path: `CircuitBreaker.record` changes nothing here either
        step = self._breakers[worker_id].record(
            self._states[worker_id], permit, outcome, now=self._clock()
        )
        self._apply(worker_id, step)

    def _set_state(self, worker_id: str, state: BreakerState) -> None:
        self._states[worker_id] = state
        steady = None
        if state.status is _CLOSED and not state.failures:
            steady = self._closed_permits.get(worker_id)
            if steady is None or steady.epoch != state.epoch:
                steady = self._closed_permits[worker_id] = Permit(worker_id, state.epoch, False)
        self._steady[worker_id] = steady

    def _apply(self, worker_id: str, step: BreakerStep) -> None:
        self._set_state(worker_id, step.state)
        if step.events and self._on_event is not None:
            for event in step.events:
                try:
                    self._on_event(worker_id, event)
                except Exception:
                    log.exception("breaker event listener failed on %r", event)
