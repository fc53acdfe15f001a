"""The circuit breaker: a pure state machine, closed → open → half-open → closed.

A `CircuitBreaker` holds only its name and settings; its state is an immutable
`BreakerState` value that the caller keeps and passes back in. Every operation takes the
current time (``now``, in seconds on any clock the caller chooses; the worker pool uses a
monotonic one) and returns a `BreakerStep`: the new state, the events describing the change,
and — for `CircuitBreaker.allow` — a `Permit` when the call may go through.

============  ==========================================================================
state         behaviour
============  ==========================================================================
closed        every call goes through; each failure extends a run of consecutive
              failures and any success ends it; ``fail_max`` in a row → **open**
open          every call is refused until ``reset_timeout`` has passed since it opened;
              the first call after that → **half-open** (and is its first trial)
half-open     at most ``half_open_max_calls`` trial calls at a time; a trial failure →
              **open** again (a new timeout); ``success_threshold`` trial successes →
              **closed**
============  ==========================================================================

Outcomes are `CallOutcome.SUCCESS`, ``FAILURE`` or ``NEUTRAL`` (the call says nothing about
the service's health: it was cancelled, or refused as malformed). A neutral outcome only
frees its trial slot; pybreaker instead counts excluded errors as successes, which would let
cancelled calls close a breaker.

Each permit belongs to one *epoch* (the number of transitions so far). An outcome recorded
with a permit from an earlier epoch is ignored: a call admitted while the breaker was closed
and finishing after it opened says nothing about recovery, and must not close (or re-open)
it. Record each permit's outcome once.

Every change is described by an event (``circuit_breaker_opened``, ``…_half_opened``,
``…_closed``, or ``…_counted`` for counter changes without a transition), and each event
carries the values it sets, so `CircuitBreaker.rebuild` replays a breaker's events into
exactly the state the live breaker reached. Calls in flight do not survive a process:
`BreakerState.without_trials` drops the trial slots a rebuilt state still counts.

Semantics follow pybreaker (consecutive failures, opening on the tripping call, half-open on
the first call after the timeout, any trial failure re-opens) with three deliberate
differences: the clock is passed in, trial calls are bounded, and outcomes can be neutral.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from typing import Final

import attrs

from charter.core._check import count
from charter.core.errors import InvalidInput, describe
from charter.core.events import (
    CircuitBreakerClosed,
    CircuitBreakerCounted,
    CircuitBreakerHalfOpened,
    CircuitBreakerOpened,
    Event,
    EventKind,
)

__all__ = [
    "BreakerEvent",
    "BreakerState",
    "BreakerStatus",
    "BreakerStep",
    "CallOutcome",
    "CircuitBreaker",
    "Permit",
]

#: The event kinds a breaker emits.
BreakerEvent = (
    CircuitBreakerOpened | CircuitBreakerHalfOpened | CircuitBreakerClosed | CircuitBreakerCounted
)
_BREAKER_EVENTS: Final = (
    CircuitBreakerOpened,
    CircuitBreakerHalfOpened,
    CircuitBreakerClosed,
    CircuitBreakerCounted,
)


class BreakerStatus(enum.Enum):
    """Where a breaker is in its cycle."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CallOutcome(enum.Enum):
    """What a call that went through tells the breaker."""

    SUCCESS = "success"
    FAILURE = "failure"
    NEUTRAL = "neutral"  # cancelled, or refused as malformed: nothing about health


@attrs.frozen(kw_only=True)
class BreakerState:
    """A breaker's state (immutable; the caller keeps it).

    ``failures`` counts consecutive failures while closed; ``successes`` and ``trials`` count
    trial successes and trial calls in flight while half-open; ``opened_at`` is when it last
    opened (while open); ``epoch`` counts transitions (see `Permit`). Counters are zero in
    every other status.
    """

    status: BreakerStatus = BreakerStatus.CLOSED
    epoch: int = 0
    failures: int = 0
    successes: int = 0
    trials: int = 0
    opened_at: float | None = None

    def without_trials(self) -> BreakerState:
        """The same state with no trial calls in flight: what a new process should use after
        rebuilding from a log, since the calls the log saw admitted died with the old one."""
        return attrs.evolve(self, trials=0) if self.trials else self


@attrs.frozen
class Permit:
    """Leave for one call to go through, to be handed back with its outcome. ``trial`` is
    true for a half-open breaker's trial calls."""

    breaker: str
    epoch: int
    trial: bool


@attrs.frozen
class BreakerStep:
    """The result of an operation: the new state, the events describing the change (none
    when nothing changed) and, from `CircuitBreaker.allow`, the permit (``None``: refused)."""

    state: BreakerState
    events: tuple[BreakerEvent, ...] = ()
    permit: Permit | None = None

    @property
    def admitted(self) -> bool:
        return self.permit is not None


def _positive(value: object, where: str) -> int:
    number = count(value, where)
    if number < 1:
        raise InvalidInput(where, f"expected an integer at least 1, got {number}")
    return number


def _seconds(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(where, f"expected a finite number of seconds, got {describe(value)}")
    return float(value)


@attrs.frozen(kw_only=True)
class CircuitBreaker:
    """A named breaker's settings and its pure transitions (see the module doc).

    Defaults are pybreaker's (``fail_max`` 5, ``reset_timeout`` 60 s, ``success_threshold``
    1) with one trial call at a time. Settings are checked on construction: counts at least
    1, a finite, non-negative ``reset_timeout``.
    """

    name: str
    fail_max: int = 5
    reset_timeout: float = 60.0
    half_open_max_calls: int = 1
    success_threshold: int = 1

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise InvalidInput("name", f"expected a string, got {describe(self.name)}")
        _positive(self.fail_max, "fail_max")
        _positive(self.half_open_max_calls, "half_open_max_calls")
        _positive(self.success_threshold, "success_threshold")
        if _seconds(self.reset_timeout, "reset_timeout") < 0:
            raise InvalidInput(
                "reset_timeout", f"expected a non-negative number, got {self.reset_timeout}"
            )

    # ── queries ──

    def retry_at(self, state: BreakerState) -> float | None:
        """When an open breaker lets a trial call through; ``None`` unless open."""
        if state.status is BreakerStatus.OPEN and state.opened_at is not None:
            return state.opened_at + self.reset_timeout
        return None

    def would_allow(self, state: BreakerState, *, now: float) -> bool:
        """Whether `allow` at ``now`` would admit a call (without changing anything)."""
        moment = _seconds(now, "now")
        match state.status:
            case BreakerStatus.CLOSED:
                return True
            case BreakerStatus.OPEN:
                retry = self.retry_at(state)
                return retry is not None and moment >= retry
            case BreakerStatus.HALF_OPEN:
                return state.trials < self.half_open_max_calls

    # ── transitions ──

    def allow(self, state: BreakerState, *, now: float) -> BreakerStep:
        """May a call go through at ``now``? A permit if so, with the change it implies: an
        open breaker whose timeout has passed becomes half-open, and a half-open one counts
        the trial."""
        moment = _seconds(now, "now")
        match state.status:
            case BreakerStatus.CLOSED:
                return BreakerStep(state, (), Permit(self.name, state.epoch, False))
            case BreakerStatus.OPEN:
                retry = self.retry_at(state)
                if retry is None or moment < retry:
                    return BreakerStep(state)
                half = BreakerState(status=BreakerStatus.HALF_OPEN, epoch=state.epoch + 1)
                admitted = attrs.evolve(half, trials=1)
                return BreakerStep(
                    admitted,
                    (
                        CircuitBreakerHalfOpened(breaker=self.name, at=moment),
                        self._counted(admitted, moment),
                    ),
                    Permit(self.name, admitted.epoch, True),
                )
            case BreakerStatus.HALF_OPEN:
                if state.trials >= self.half_open_max_calls:
                    return BreakerStep(state)
                admitted = attrs.evolve(state, trials=state.trials + 1)
                return BreakerStep(
                    admitted,
                    (self._counted(admitted, moment),),
                    Permit(self.name, state.epoch, True),
                )

    def record(
        self, state: BreakerState, permit: Permit, outcome: CallOutcome, *, now: float
    ) -> BreakerStep:
        """Record the outcome of the call ``permit`` let through (see the module doc)."""
        moment = _seconds(now, "now")
        if not isinstance(permit, Permit):
            raise InvalidInput("permit", f"expected a Permit, got {describe(permit)}")
        if permit.breaker != self.name:
            raise InvalidInput(
                "permit.breaker", f"expected a permit of {self.name!r}, got {permit.breaker!r}"
            )
        if not isinstance(outcome, CallOutcome):
            raise InvalidInput("outcome", f"expected a CallOutcome, got {describe(outcome)}")
        if permit.epoch != state.epoch:
            return BreakerStep(state)  # admitted before the last transition: stale
        match state.status:
            case BreakerStatus.CLOSED:
                return self._closed_outcome(state, outcome, moment)
            case BreakerStatus.HALF_OPEN:
                return self._trial_outcome(state, outcome, moment)
            case BreakerStatus.OPEN:  # an open breaker hands out no permits of its epoch
                return BreakerStep(state)

    def expedite(self, state: BreakerState, *, now: float) -> BreakerStep:
        """End an open breaker's timeout now: it becomes half-open, so trial calls decide
        (the pool does this when a worker is restarted). Other states are unchanged."""
        moment = _seconds(now, "now")
        if state.status is not BreakerStatus.OPEN:
            return BreakerStep(state)
        half = BreakerState(status=BreakerStatus.HALF_OPEN, epoch=state.epoch + 1)
        return BreakerStep(half, (CircuitBreakerHalfOpened(breaker=self.name, at=moment),))

    def rebuild(
        self, events: Iterable[EventKind | Event], initial: BreakerState | None = None
    ) -> BreakerState:
        """The state this breaker's events (kinds or envelopes, in order) lead to, from
        ``initial`` (a new breaker by default). Other events, and other breakers' events,
        are skipped."""
        state = initial if initial is not None else BreakerState()
        for event in events:
            kind = event.kind if isinstance(event, Event) else event
            if isinstance(kind, _BREAKER_EVENTS) and kind.breaker == self.name:
                state = _apply(state, kind)
        return state

    # ── helpers ──

    def _counted(self, state: BreakerState, moment: float) -> CircuitBreakerCounted:
        return CircuitBreakerCounted(
            breaker=self.name,
            at=moment,
            failures=state.failures,
            successes=state.successes,
            trials=state.trials,
        )

    def _open(self, state: BreakerState, failures: int, moment: float) -> BreakerStep:
        opened = BreakerState(status=BreakerStatus.OPEN, epoch=state.epoch + 1, opened_at=moment)
        event = CircuitBreakerOpened(
            breaker=self.name, at=moment, failures=failures, retry_at=moment + self.reset_timeout
        )
        return BreakerStep(opened, (event,))

    def _closed_outcome(
        self, state: BreakerState, outcome: CallOutcome, moment: float
    ) -> BreakerStep:
        match outcome:
            case CallOutcome.SUCCESS:
                if state.failures == 0:
                    return BreakerStep(state)
                reset = attrs.evolve(state, failures=0)
                return BreakerStep(reset, (self._counted(reset, moment),))
            case CallOutcome.FAILURE:
                failures = state.failures + 1
                if failures >= self.fail_max:
                    return self._open(state, failures, moment)
                counted = attrs.evolve(state, failures=failures)
                return BreakerStep(counted, (self._counted(counted, moment),))
            case CallOutcome.NEUTRAL:
                return BreakerStep(state)

    def _trial_outcome(
        self, state: BreakerState, outcome: CallOutcome, moment: float
    ) -> BreakerStep:
        trials = max(state.trials - 1, 0)
        match outcome:
            case CallOutcome.SUCCESS:
                successes = state.successes + 1
                if successes >= self.success_threshold:
                    closed = BreakerState(status=BreakerStatus.CLOSED, epoch=state.epoch + 1)
                    event = CircuitBreakerClosed(breaker=self.name, at=moment, successes=successes)
                    return BreakerStep(closed, (event,))
                counted = attrs.evolve(state, successes=successes, trials=trials)
                return BreakerStep(counted, (self._counted(counted, moment),))
            case CallOutcome.FAILURE:
                return self._open(state, 1, moment)
            case CallOutcome.NEUTRAL:
                released = attrs.evolve(state, trials=trials)
                if released == state:
                    return BreakerStep(state)
                return BreakerStep(released, (self._counted(released, moment),))


def _apply(state: BreakerState, event: BreakerEvent) -> BreakerState:
    """One event's effect on a state (the fold behind `CircuitBreaker.rebuild`)."""
    match event:
        case CircuitBreakerOpened(at=at):
            return BreakerState(status=BreakerStatus.OPEN, epoch=state.epoch + 1, opened_at=at)
        case CircuitBreakerHalfOpened():
            return BreakerState(status=BreakerStatus.HALF_OPEN, epoch=state.epoch + 1)
        case CircuitBreakerClosed():
            return BreakerState(status=BreakerStatus.CLOSED, epoch=state.epoch + 1)
        case CircuitBreakerCounted(failures=failures, successes=successes, trials=trials):
            return attrs.evolve(state, failures=failures, successes=successes, trials=trials)
