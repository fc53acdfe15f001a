"""The circuit breaker equals a table-driven model; the pool's hooks stay balanced.

* `BreakerMachine` drives a `CircuitBreaker` and a model written as a transition table
  (below, without the breaker's code) through any sequence of calls, outcomes, clock steps
  and expedites: admissions, states and the kinds of events emitted must agree after every
  step, and replaying the events so far (also through JSON) rebuilds the live state.
* The pool, under random successes, failures, handler errors, timeouts, caller
  cancellations, restarts and vetoes, ends with every request answered once, every hook
  sequence balanced, every permit returned, and a shutdown that leaves nothing hanging
  (asyncio timeouts guard against a hang; nothing asserts on timing).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, Final

import attrs
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from charter.adapters.codec import dumps, loads
from charter.adapters.pool import (
    BreakerHooks,
    CircuitBreakerHooks,
    LlmOperation,
    ToolOperation,
    WorkerErrorCode,
    WorkerHandler,
    WorkerPool,
    WorkerPoolError,
    WorkerPoolOptions,
    WorkerProtocolError,
    WorkerRequest,
    WorkerResponse,
    WorkerSecurityPolicy,
    WorkerSuccess,
    check_request,
    options,
    request_payload_bytes,
)
from charter.core.breaker import (
    BreakerEvent,
    BreakerState,
    BreakerStatus,
    CallOutcome,
    CircuitBreaker,
    Permit,
)
from charter.core.events import EventKind, event_type
from charter.testing.strategies import circuit_breakers, worker_requests, worker_responses

# ── the model: a transition table ──────────────────────────────────────────────────────

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@attrs.define
class Model:
    fail_max: int
    reset_timeout: float
    max_trials: int
    threshold: int
    status: str = CLOSED
    epoch: int = 0
    failures: int = 0
    successes: int = 0
    trials: int = 0
    opened_at: float | None = None


def _to(status: str) -> Callable[[Model, float], None]:
    """A transition: new status, next epoch, counters back to zero."""

    def go(m: Model, now: float) -> None:
        m.status, m.epoch = status, m.epoch + 1
        m.failures = m.successes = m.trials = 0
        m.opened_at = now if status == OPEN else None

    return go


def _then(*steps: Callable[[Model, float], None]) -> Callable[[Model, float], None]:
    def go(m: Model, now: float) -> None:
        for step in steps:
            step(m, now)

    return go


def _set(**changes: Callable[[Model], int]) -> Callable[[Model, float], None]:
    def go(m: Model, _now: float) -> None:
        for name, value in {k: f(m) for k, f in changes.items()}.items():
            setattr(m, name, value)

    return go


def _same(_m: Model, _now: float) -> None:
    return None


# Guards, evaluated before the step.
def _elapsed(m: Model, now: float) -> bool:
    return m.opened_at is not None and now >= m.opened_at + m.reset_timeout


def _room(m: Model, _now: float) -> bool:
    return m.trials < m.max_trials


def _trips(m: Model, _now: float) -> bool:
    return m.failures + 1 >= m.fail_max


def _closes(m: Model, _now: float) -> bool:
    return m.successes + 1 >= m.threshold


def _always(_m: Model, _now: float) -> bool:
    return True


#: (status, signal) → [(guard, admitted?, action, event kinds)], first matching guard wins.
#: Signals: allow; success / failure / neutral (for a permit of the current epoch); expedite.
Row = tuple[Callable[[Model, float], bool], bool, Callable[[Model, float], None], tuple[str, ...]]
TABLE: Final[dict[tuple[str, str], list[Row]]] = {
    (CLOSED, "allow"): [(_always, True, _same, ())],
    (OPEN, "allow"): [
        (
            _elapsed,
            True,
            _then(_to(HALF_OPEN), _set(trials=lambda m: 1)),
            ("circuit_breaker_half_opened", "circuit_breaker_counted"),
        ),
        (_always, False, _same, ()),
    ],
    (HALF_OPEN, "allow"): [
        (_room, True, _set(trials=lambda m: m.trials + 1), ("circuit_breaker_counted",)),
        (_always, False, _same, ()),
    ],
    (CLOSED, "success"): [
        (
            lambda m, _n: m.failures > 0,
            False,
            _set(failures=lambda m: 0),
            ("circuit_breaker_counted",),
        ),
        (_always, False, _same, ()),
    ],
    (CLOSED, "failure"): [
        (_trips, False, _to(OPEN), ("circuit_breaker_opened",)),
        (_always, False, _set(failures=lambda m: m.failures + 1), ("circuit_breaker_counted",)),
    ],
    (CLOSED, "neutral"): [(_always, False, _same, ())],
    (HALF_OPEN, "success"): [
        (_closes, False, _to(CLOSED), ("circuit_breaker_closed",)),
        (
            _always,
            False,
            _set(successes=lambda m: m.successes + 1, trials=lambda m: m.trials - 1),
            ("circuit_breaker_counted",),
        ),
    ],
    (HALF_OPEN, "failure"): [(_always, False, _to(OPEN), ("circuit_breaker_opened",))],
    (HALF_OPEN, "neutral"): [
        (
            lambda m, _n: m.trials > 0,
            False,
            _set(trials=lambda m: m.trials - 1),
            ("circuit_breaker_counted",),
        ),
        (_always, False, _same, ()),
    ],
    (OPEN, "expedite"): [(_always, False, _to(HALF_OPEN), ("circuit_breaker_half_opened",))],
    (CLOSED, "expedite"): [(_always, False, _same, ())],
    (HALF_OPEN, "expedite"): [(_always, False, _same, ())],
}


def model_step(m: Model, signal: str, now: float) -> tuple[bool, tuple[str, ...]]:
    for guard, admitted, action, kinds in TABLE[(m.status, signal)]:
        if guard(m, now):
            action(m, now)
            return admitted, kinds
    raise AssertionError("no row matched")  # pragma: no cover - every list ends in _always


# ── the breaker against the model ──────────────────────────────────────────────────────


class BreakerMachine(RuleBasedStateMachine):
    @initialize(breaker=circuit_breakers())
    def start(self, breaker: CircuitBreaker) -> None:
        self.breaker = breaker
        self.state = BreakerState()
        self.model = Model(
            fail_max=breaker.fail_max,
            reset_timeout=breaker.reset_timeout,
            max_trials=breaker.half_open_max_calls,
            threshold=breaker.success_threshold,
        )
        self.now = 100.0
        self.permits: list[tuple[Permit, int, WorkerRequest]] = []  # + the model's epoch
        self.events: list[BreakerEvent] = []
        # The pool's hooks, driven alongside: their fast paths must agree with the breaker.
        self.hooks = BreakerHooks(
            fail_max=breaker.fail_max,
            reset_timeout=breaker.reset_timeout,
            half_open_max_calls=breaker.half_open_max_calls,
            success_threshold=breaker.success_threshold,
            clock=lambda: self.now,
        )
        self.calls = 0

    def _compare(self, events: tuple[BreakerEvent, ...], kinds: tuple[str, ...]) -> None:
        assert tuple(event_type(e) for e in events) == kinds
        self.events.extend(events)
        m, s = self.model, self.state
        assert (s.status.value, s.epoch, s.failures, s.successes, s.trials, s.opened_at) == (
            m.status,
            m.epoch,
            m.failures,
            m.successes,
            m.trials,
            m.opened_at,
        )

    @rule()
    def allow(self) -> None:
        admitted, kinds = model_step(self.model, "allow", self.now)
        step = self.breaker.allow(self.state, now=self.now)
        self.state = step.state
        assert step.admitted is admitted
        self.calls += 1
        request = _request(f"call-{self.calls}")
        assert self.hooks.allow_request(self.breaker.name, request) is admitted
        assert self.breaker.would_allow(self.state, now=self.now) is (
            self.model.status == CLOSED
            or (self.model.status == HALF_OPEN and self.model.trials < self.model.max_trials)
            or (self.model.status == OPEN and _elapsed(self.model, self.now))
        )
        if step.permit is not None:  # it belongs to the epoch after any transition
            assert step.permit.epoch == self.model.epoch
            assert step.permit.trial is (self.model.status == HALF_OPEN)
            self.permits.append((step.permit, self.model.epoch, request))
        self._compare(step.events, kinds)

    @precondition(lambda self: bool(self.permits))
    @rule(
        pick=st.integers(min_value=0, max_value=50),
        outcome=st.sampled_from(CallOutcome),
    )
    def record(self, pick: int, outcome: CallOutcome) -> None:
        permit, epoch, request = self.permits.pop(pick % len(self.permits))
        name = self.breaker.name
        match outcome:
            case CallOutcome.SUCCESS:
                self.hooks.on_request_success(name, request, _RESPONSE)
            case CallOutcome.FAILURE:
                self.hooks.on_request_failure(name, request, _DOWN)
            case CallOutcome.NEUTRAL:
                self.hooks.on_request_rejected(name, request, WorkerErrorCode.CANCELLED)
        if epoch == self.model.epoch:
            _admitted, kinds = model_step(self.model, outcome.value, self.now)
        else:
            kinds = ()  # stale: ignored
        step = self.breaker.record(self.state, permit, outcome, now=self.now)
        self.state = step.state
        self._compare(step.events, kinds)

    @rule(seconds=st.sampled_from((0.0, 0.5, 1.0, 10.0)) | st.floats(min_value=0, max_value=12))
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @rule()
    def to_the_boundary(self) -> None:
        """Exactly onto the end of the reset timeout, where `>=` matters."""
        retry = self.breaker.retry_at(self.state)
        if retry is not None and retry >= self.now:
            self.now = retry

    @rule()
    def expedite(self) -> None:
        _admitted, kinds = model_step(self.model, "expedite", self.now)
        step = self.breaker.expedite(self.state, now=self.now)
        self.state = step.state
        self._compare(step.events, kinds)
        self.hooks.expedite(self.breaker.name)

    @invariant()
    def rebuilding_from_the_events_gives_the_live_state(self) -> None:
        assert self.breaker.rebuild(self.events) == self.state
        kinds: list[EventKind] = list(self.events)
        decoded = [loads(dumps(event), EventKind) for event in kinds]
        assert self.breaker.rebuild(decoded) == self.state

    @invariant()
    def the_pools_hooks_agree_with_the_breaker(self) -> None:
        assert self.hooks.state(self.breaker.name) == self.state
        assert self.hooks.in_flight() == len(self.permits)
        # The permit the pool's hot path admits with, and succeeds without recording: there
        # exactly while admitting and recording a success change nothing.
        steady = self.hooks._steady[self.breaker.name]
        if self.state.status is BreakerStatus.CLOSED and self.state.failures == 0:
            assert steady == Permit(self.breaker.name, self.state.epoch, False)
        else:
            assert steady is None

    @invariant()
    def counters_are_zero_outside_their_status(self) -> None:
        s = self.state
        if s.status is not BreakerStatus.CLOSED:
            assert s.failures == 0
        if s.status is not BreakerStatus.HALF_OPEN:
            assert s.successes == s.trials == 0
        assert (s.opened_at is not None) is (s.status is BreakerStatus.OPEN)
        assert 0 <= s.trials <= self.breaker.half_open_max_calls


TestBreakerMatchesTheModel = BreakerMachine.TestCase


def _request(request_id: str) -> WorkerRequest:
    return WorkerRequest(
        request_id=request_id,
        workflow_name="wf",
        node_id="n",
        operation=ToolOperation(tool="t", input=None, scoped_input=None),
    )


_RESPONSE: Final = WorkerResponse(
    request_id="r", worker_id="b", result=WorkerSuccess(None), elapsed_ms=0
)
_DOWN: Final = WorkerProtocolError(code=WorkerErrorCode.UNAVAILABLE, message="down", retryable=True)


@given(breaker=circuit_breakers())
def test_a_new_process_forgets_trials_in_flight(breaker: CircuitBreaker) -> None:
    state = BreakerState()
    events: list[BreakerEvent] = []
    now = 0.0
    for _ in range(breaker.fail_max):
        step = breaker.allow(state, now=now)
        assert step.permit is not None
        step = breaker.record(step.state, step.permit, CallOutcome.FAILURE, now=now)
        state = step.state
        events.extend(step.events)
    now += breaker.reset_timeout
    step = breaker.allow(state, now=now)
    events.extend(step.events)
    rebuilt = breaker.rebuild(events)
    assert rebuilt.status is BreakerStatus.HALF_OPEN
    assert rebuilt.trials == 1
    assert rebuilt.without_trials().trials == 0
    assert breaker.would_allow(rebuilt.without_trials(), now=now)


# ── the protocol round-trips ───────────────────────────────────────────────────────────


@given(worker_requests())
def test_requests_round_trip_through_json(request: WorkerRequest) -> None:
    assert WorkerRequest.from_json(request.to_json()) == request


@given(worker_responses())
def test_responses_round_trip_through_json(response: WorkerResponse) -> None:
    assert WorkerResponse.from_json(response.to_json()) == response


@given(worker_requests())
def test_the_payload_limit_measures_the_requests_json(request: WorkerRequest) -> None:
    assert request_payload_bytes(request) == len(request.to_json().encode("utf-8"))


# ── the security check: its cheap bound never changes a verdict ────────────────────────


def _exact_verdict(request: WorkerRequest, policy: WorkerSecurityPolicy) -> str | None:
    """docs/pool.md §2, written out plainly: what `check_request` must answer (for a
    well-typed request), measuring the size with ``to_json`` every time."""
    limit = policy.max_identifier_length
    for name in ("request_id", "workflow_name", "node_id"):
        size = len(getattr(request, name).encode("utf-8", "surrogatepass"))
        if size > limit:
            return f"{name} length {size} exceeds max {limit}"
    timeout = request.timeout_ms
    if timeout is not None and timeout > policy.max_request_timeout_ms:
        return f"timeout_ms {timeout} exceeds max {policy.max_request_timeout_ms}"
    if timeout is not None and timeout <= 0:
        return f"timeout_ms {timeout} is not positive"
    try:
        shown = f"{len(request.to_json().encode('utf-8'))} bytes"
        too_large = len(request.to_json().encode("utf-8")) > policy.max_request_payload_bytes
    except (TypeError, ValueError, RecursionError, UnicodeEncodeError):
        shown, too_large = "unmeasurable (not JSON)", True
    if too_large:
        return f"request payload {shown} exceeds max {policy.max_request_payload_bytes}"
    return None


class _Mapping(dict[str, Any]):
    """A dict subclass: JSON to the encoder, not a type the cheap bound vouches for."""


# Text the encoder escapes (quotes, backslashes, controls), non-ASCII, and lone surrogates.
_TEXT: Final = st.text(
    st.sampled_from('ab"\\\n\x00\x1f\x7fé€😀\ud800\udfff') | st.characters(), max_size=12
)
_HOSTILE_SCALARS: Final = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.integers(0, 3).map(lambda k: 10**5000 + k)  # more digits than str() allows
    | st.floats()  # NaN and the infinities are not JSON
    | _TEXT
    | st.sampled_from([b"bytes", {1, 2}, 1j, Ellipsis, object()])
)
_PAYLOADS: Final = st.recursive(
    _HOSTILE_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(_TEXT, inner, max_size=4)
        | st.dictionaries(st.integers(0, 9) | st.none() | st.floats(0, 1), inner, max_size=2)
        | st.dictionaries(_TEXT, inner, max_size=2).map(_Mapping)
    ),
    max_leaves=12,
)
_IDS: Final = st.text(st.sampled_from('ab"\\é\x01\ud800'), max_size=10) | st.text(max_size=10)


@st.composite
def _checked_requests(draw: st.DrawFn) -> tuple[WorkerRequest, WorkerSecurityPolicy]:
    if draw(st.booleans()):
        operation: Any = ToolOperation(
            tool=draw(_IDS), input=draw(_PAYLOADS), scoped_input=draw(_PAYLOADS)
        )
    else:
        operation = LlmOperation(model=draw(_IDS), prompt=draw(_TEXT), scoped_input=draw(_PAYLOADS))
    request = WorkerRequest(
        request_id=draw(_IDS),
        workflow_name=draw(_IDS),
        node_id=draw(_IDS),
        timeout_ms=draw(st.none() | st.integers(min_value=-5, max_value=2**66)),
        operation=operation,
    )
    try:
        size = len(request.to_json().encode("utf-8"))
    except (TypeError, ValueError, RecursionError, UnicodeEncodeError):
        size = 300
    # Payload limits at, just around and well above the request's exact size.
    payload_limit = max(1, size + draw(st.integers(min_value=-3, max_value=3) | st.just(10_000)))
    policy = WorkerSecurityPolicy(
        max_request_timeout_ms=draw(st.integers(min_value=1, max_value=2**65)),
        max_request_payload_bytes=payload_limit,
        max_identifier_length=draw(st.integers(min_value=1, max_value=12)),
    )
    return request, policy


@settings(max_examples=400)
@given(_checked_requests())
def test_the_security_check_answers_what_the_exact_measure_answers(
    case: tuple[WorkerRequest, WorkerSecurityPolicy],
) -> None:
    request, policy = case
    assert check_request(request, policy) == _exact_verdict(request, policy)


def _exact_size(value: object) -> int | None:
    try:
        return len(
            json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        )
    except (TypeError, ValueError, RecursionError, UnicodeEncodeError):
        return None


@given(_TEXT | _IDS)
def test_the_text_bound_covers_every_escape(text: str) -> None:
    exact = _exact_size(text)
    bound = options._text_bound(text)
    assert bound == -1 if exact is None else bound >= exact


# Identifiers the cheap bound applies to: ASCII, at most 6 characters, the worst escapes.
_ASCII_IDS: Final = st.text(st.sampled_from('a"\\\x00\x1f'), max_size=6)


@given(
    st.builds(
        WorkerRequest,
        request_id=_ASCII_IDS,
        workflow_name=_ASCII_IDS,
        node_id=_ASCII_IDS,
        timeout_ms=st.none() | st.integers(min_value=-(2**70), max_value=2**70),
        operation=st.builds(ToolOperation, tool=_TEXT, input=_PAYLOADS, scoped_input=_PAYLOADS)
        | st.builds(LlmOperation, model=_TEXT, prompt=_TEXT, scoped_input=_PAYLOADS),
    )
)
def test_the_request_bound_is_an_upper_bound(request: WorkerRequest) -> None:
    """What lets `check_request` skip the exact measure: the bound is never below it, and
    never vouches for a request that is not JSON."""
    exact = _exact_size(request.to_dict())
    bound = options._request_bound(request, 6)
    if exact is None:
        assert bound == -1
    else:
        assert bound == -1 or bound >= exact


# ── the pool: balanced hooks, everything answered, nothing hangs ───────────────────────

HANG_GUARD_SECS: Final = 10.0
BEHAVIOURS: Final = ("ok", "fail", "refuse", "raise", "hang", "slow")


class ScriptedWorker(WorkerHandler):
    """Does what the request's input says."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    async def handle(self, request: WorkerRequest) -> Any:
        assert isinstance(request.operation, ToolOperation)
        match request.operation.tool:
            case "ok":
                return {"ok": True}
            case "fail":
                return WorkerProtocolError(
                    code=WorkerErrorCode.UNAVAILABLE, message="down", retryable=True
                )
            case "refuse":
                return WorkerProtocolError(
                    code=WorkerErrorCode.INVALID_REQUEST, message="bad", retryable=False
                )
            case "raise":
                raise RuntimeError("boom")
            case "slow":
                await asyncio.sleep(0)
                await asyncio.sleep(0)
                return {"slow": True}
            case _:
                await asyncio.Event().wait()  # never answers
                return None


@attrs.define
class Journal(CircuitBreakerHooks):
    calls: list[tuple[str, str | None, str]] = attrs.Factory(list)

    def allow_request(self, worker_id: str, request: WorkerRequest) -> bool:
        allowed = not (request.request_id.endswith("veto") and worker_id == "worker-0")
        self.calls.append(("allow" if allowed else "refuse", worker_id, request.request_id))
        return allowed

    def on_request_accepted(self, worker_id: str, request: WorkerRequest) -> None:
        self.calls.append(("accepted", worker_id, request.request_id))

    def on_request_success(
        self, worker_id: str, request: WorkerRequest, response: WorkerResponse
    ) -> None:
        self.calls.append(("success", worker_id, request.request_id))

    def on_request_failure(
        self, worker_id: str, request: WorkerRequest, error: WorkerProtocolError
    ) -> None:
        self.calls.append((f"failure:{error.code.value}", worker_id, request.request_id))

    def on_request_rejected(
        self, worker_id: str | None, request: WorkerRequest, reason: WorkerErrorCode
    ) -> None:
        self.calls.append((f"rejected:{reason.value}", worker_id, request.request_id))


_submits = st.tuples(
    st.just("submit"),
    st.sampled_from(BEHAVIOURS),
    st.booleans(),  # a short timeout
    st.sampled_from((False, False, False, True)),  # vetoed on worker-0
    st.integers(min_value=0, max_value=3),  # then yield this many times
)
actions = st.one_of(
    _submits,
    _submits,  # twice: submits are the point
    st.tuples(st.just("yield"), st.integers(min_value=1, max_value=5)),
    st.tuples(st.just("restart"), st.integers(min_value=0, max_value=2)),
    st.tuples(st.just("cancel"), st.integers(min_value=0, max_value=50)),
    st.tuples(st.just("sleep")),  # lets real time pass, so short timeouts fire
)


def _expected_terminal(outcome: object) -> set[str] | None:
    """The hooks an answer is consistent with (None: any; a caller may cancel its wait
    after the answer was decided)."""
    if isinstance(outcome, WorkerResponse):
        return {"success"}
    if isinstance(outcome, asyncio.CancelledError):
        return None
    if isinstance(outcome, WorkerPoolError.Timeout):
        return {"failure:timeout"}
    if isinstance(outcome, WorkerPoolError.Worker):
        return {f"failure:{outcome.error.code.value}"}
    if isinstance(outcome, WorkerPoolError.ShuttingDown):
        return {"rejected:cancelled"}
    if isinstance(outcome, WorkerPoolError):
        return {f"rejected:{outcome.code.value}"}
    raise AssertionError(f"unexpected outcome {outcome!r}")


async def _scenario(
    workers: int, capacity: int, failures: int, reset: float, script: list[tuple[Any, ...]]
) -> None:
    journal = Journal()
    events: list[tuple[str, BreakerEvent]] = []
    options = WorkerPoolOptions(
        queue_capacity=capacity,
        unavailable_after_failures=failures,
        breaker_reset_timeout=reset,
        health_probe_interval=0.001,
        default_request_timeout=5.0,
    )
    pool = WorkerPool(
        [ScriptedWorker() for _ in range(workers)],
        options,
        journal,
        on_breaker_event=lambda worker, event: events.append((worker, event)),
    )
    tasks: dict[str, asyncio.Task[WorkerResponse]] = {}
    for index, action in enumerate(script):
        match action:
            case ("submit", behaviour, short, veto, then_yield):
                request_id = f"r{index}" + ("-veto" if veto else "")
                request = WorkerRequest(
                    request_id=request_id,
                    workflow_name="wf",
                    node_id="n",
                    timeout_ms=1 if short else None,
                    operation=ToolOperation(tool=behaviour, input=None, scoped_input=None),
                )
                tasks[request_id] = asyncio.create_task(pool.submit(request))
                for _ in range(then_yield):
                    await asyncio.sleep(0)
            case ("restart", worker):
                await pool.restart_worker(f"worker-{worker % workers}")
            case ("cancel", pick):
                pending = [t for t in tasks.values() if not t.done()]
                if pending:
                    pending[pick % len(pending)].cancel()
            case ("yield", times):
                for _ in range(times):
                    await asyncio.sleep(0)
            case ("sleep",):
                await asyncio.sleep(0.002)
    await pool.shutdown()
    outcomes = await asyncio.gather(*tasks.values(), return_exceptions=True)

    # Everything answered; nothing left in flight, no permit left out.
    assert pool.in_flight() == 0
    assert pool.breakers.in_flight() == 0
    for request_id, outcome in zip(tasks, outcomes, strict=True):
        mine = [(what, worker) for what, worker, rid in journal.calls if rid == request_id]
        event(f"answer: {type(outcome).__qualname__}")
        if not mine and isinstance(outcome, asyncio.CancelledError):
            continue  # cancelled before `submit` began: the pool never saw it
        terminal = [
            (what, worker)
            for what, worker in mine
            if what.split(":")[0] in ("success", "failure", "rejected")
        ]
        assert len(terminal) == 1, (request_id, mine)
        (what, worker) = terminal[0]
        expected = _expected_terminal(outcome)
        assert expected is None or what in expected, (request_id, mine, outcome)
        accepted = [w for kind, w in mine if kind == "accepted"]
        if accepted:
            # allowed, then accepted once, then answered, all by the same worker
            assert len(accepted) == 1
            assert mine[-2:] == [("accepted", accepted[0]), (what, accepted[0])], mine
            assert ("allow", accepted[0]) in mine
        else:
            assert worker is None, mine
            assert all(kind in ("allow", "refuse") for kind, _ in mine[:-1]), mine
    # Each breaker's events rebuild it.
    for worker_id in pool.worker_ids:
        mine_events = [event for worker, event in events if worker == worker_id]
        breaker = pool.breakers.breaker(worker_id)
        assert breaker.rebuild(mine_events) == pool.breakers.state(worker_id)
    # After shutdown: refused at once, and every worker is unavailable.
    late = WorkerRequest(
        request_id="late",
        workflow_name="wf",
        node_id="n",
        operation=ToolOperation(tool="ok", input=None, scoped_input=None),
    )
    try:
        await pool.submit(late)
    except WorkerPoolError.ShuttingDown:
        pass
    else:  # pragma: no cover - a failure
        raise AssertionError("submit after shutdown answered")
    assert all(not health.is_schedulable() for health in pool.health_snapshot())


@given(
    workers=st.integers(min_value=1, max_value=3),
    capacity=st.integers(min_value=1, max_value=3),
    failures=st.integers(min_value=1, max_value=3),
    reset=st.sampled_from((0.001, 60.0)),
    script=st.lists(actions, min_size=2, max_size=25),
)
def test_hooks_stay_balanced_and_shutdown_leaves_nothing_hanging(
    workers: int, capacity: int, failures: int, reset: float, script: list[tuple[Any, ...]]
) -> None:
    async def guarded() -> None:
        async with asyncio.timeout(HANG_GUARD_SECS):
            await _scenario(workers, capacity, failures, reset, script)

    asyncio.run(guarded())
