"""The worker pool: the seed's tests ported, the seed's defects fixed, the executor adapter.

No test measures time. Waits that matter are on events the handlers set; timeouts are either
tiny (a handler that never answers must time out) or guards against a hang (`run`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest

from charter.adapters.executors import default_registry
from charter.adapters.memory import MemoryStore
from charter.adapters.pool import (
    BreakerHooks,
    CircuitBreakerHooks,
    LlmOperation,
    ToolOperation,
    WorkerErrorCode,
    WorkerFailure,
    WorkerHandler,
    WorkerHealth,
    WorkerHealthStatus,
    WorkerPool,
    WorkerPoolError,
    WorkerPoolOptions,
    WorkerProtocolError,
    WorkerRequest,
    WorkerResponse,
    WorkerSecurityPolicy,
    WorkerSuccess,
    check_request,
)
from charter.adapters.pool.executor import (
    PoolExecutor,
    PoolThread,
    decode_envelope,
    decode_output,
    request_for_call,
)
from charter.core.breaker import BreakerStatus
from charter.core.errors import CharterError, ExecutorFailed, InvalidInput
from charter.core.events import EventKind, NodeCompleted, NodeFailed, UsageRecorded
from charter.core.ports import NodeCall
from charter.core.workflow import parse_workflow
from charter.worker import Worker, drive, start_run

#: Guards every async test against a hang; never a timing assertion.
HANG_GUARD_SECS = 20.0


def run(body: Callable[[], Awaitable[None]]) -> None:
    async def guarded() -> None:
        async with asyncio.timeout(HANG_GUARD_SECS):
            await body()

    asyncio.run(guarded())


def sample_request(request_id: str, **changes: Any) -> WorkerRequest:
    request = WorkerRequest(
        request_id=request_id,
        workflow_name="wf",
        node_id="node-1",
        timeout_ms=None,
        operation=ToolOperation(tool="echo", input={"x": 1}, scoped_input={"input": {}}),
    )
    return attrs.evolve(request, **changes)


class EchoWorker(WorkerHandler):
    async def handle(self, request: WorkerRequest) -> Any:
        return {"node": request.node_id}


class GatedWorker(WorkerHandler):
    """Answers only when released; records what it started and what was cancelled."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.entered = asyncio.Event()

    async def handle(self, request: WorkerRequest) -> Any:
        self.started.append(request.request_id)
        self.entered.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(request.request_id)
            raise
        return {"status": "ok"}


class FlakyWorker(WorkerHandler):
    def __init__(self, *, available: bool = False) -> None:
        self.available = available
        self.calls = 0

    async def handle(self, request: WorkerRequest) -> Any:
        self.calls += 1
        if self.available:
            return {"status": "up"}
        return WorkerProtocolError(
            code=WorkerErrorCode.UNAVAILABLE, message="worker unavailable", retryable=True
        )

    async def probe_health(self) -> WorkerHealthStatus:
        return WorkerHealthStatus.HEALTHY if self.available else WorkerHealthStatus.UNAVAILABLE


class UnprobedFlakyWorker(FlakyWorker):
    """Fails like `FlakyWorker`, but its probe always says healthy (the seed's default)."""

    async def probe_health(self) -> WorkerHealthStatus:
        return WorkerHealthStatus.HEALTHY


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@attrs.define
class RecordingHooks(CircuitBreakerHooks):
    calls: list[tuple[str, str | None, str]] = attrs.Factory(list)
    refuse: set[str] = attrs.Factory(set)

    def allow_request(self, worker_id: str, request: WorkerRequest) -> bool:
        allowed = worker_id not in self.refuse
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

    def for_request(self, request_id: str) -> list[str]:
        return [what for what, _worker, rid in self.calls if rid == request_id]


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until ``condition`` holds (the hang guard bounds it)."""
    while not condition():
        await asyncio.sleep(0)


# ── the seed's tests ───────────────────────────────────────────────────────────────────


def test_worker_protocol_roundtrip() -> None:
    request = sample_request("req-1")
    assert WorkerRequest.from_json(request.to_json()) == request
    assert json.loads(request.to_json()) == {
        "request_id": "req-1",
        "workflow_name": "wf",
        "node_id": "node-1",
        "timeout_ms": None,
        "operation": {
            "kind": "tool",
            "tool": "echo",
            "input": {"x": 1},
            "scoped_input": {"input": {}},
        },
    }


def test_routes_requests_across_worker_pool() -> None:
    async def body() -> None:
        options = WorkerPoolOptions(queue_capacity=4, health_probe_interval=0.01)
        async with WorkerPool.new_inprocess([EchoWorker(), EchoWorker()], options) as pool:
            response = await pool.submit(sample_request("req-2"))
            assert response.request_id == "req-2"
            assert response.result == WorkerSuccess({"node": "node-1"})
            health = pool.health_snapshot()
            assert len(health) == 2
            assert all(entry.is_schedulable() for entry in health)

    run(body)


def test_enforces_queue_backpressure_limits() -> None:
    async def body() -> None:
        worker = GatedWorker()
        options = WorkerPoolOptions(queue_capacity=1, default_request_timeout=10.0)
        async with WorkerPool([worker], options) as pool:
            first = asyncio.create_task(pool.submit(sample_request("q1")))
            await worker.entered.wait()  # q1 is running
            second = asyncio.create_task(pool.submit(sample_request("q2")))
            await until(lambda: pool.in_flight() == 2)  # q2 is queued: the queue is full
            with pytest.raises(WorkerPoolError.QueueFull):
                await pool.submit(sample_request("q3"))
            worker.release.set()
            assert (await first).request_id == "q1"
            assert (await second).request_id == "q2"

    run(body)


def test_marks_worker_unavailable_after_failures_and_recovers_on_restart() -> None:
    async def body() -> None:
        flaky = FlakyWorker(available=False)
        options = WorkerPoolOptions(
            queue_capacity=2, unavailable_after_failures=1, health_probe_interval=0.015
        )
        async with WorkerPool([flaky], options, clock=Clock()) as pool:
            with pytest.raises(WorkerPoolError.Worker) as failed:
                await pool.submit(sample_request("down"))
            assert failed.value.error.code is WorkerErrorCode.UNAVAILABLE
            assert pool.health_snapshot()[0].status is WorkerHealthStatus.UNAVAILABLE

            flaky.available = True
            await pool.restart_worker("worker-0")
            response = await pool.submit(sample_request("up"))
            assert response.result == WorkerSuccess({"status": "up"})
            assert pool.health_snapshot()[0].status is WorkerHealthStatus.HEALTHY

    run(body)


def test_returns_timeout_for_slow_worker() -> None:
    async def body() -> None:
        worker = GatedWorker()
        options = WorkerPoolOptions(queue_capacity=2, default_request_timeout=0.005)
        async with WorkerPool([worker], options) as pool:
            with pytest.raises(WorkerPoolError.Timeout):
                await pool.submit(sample_request("timeout"))
            await until(lambda: worker.cancelled == ["timeout"])  # the work was cancelled

    run(body)


def test_rejects_request_when_security_contract_is_violated() -> None:
    async def body() -> None:
        policy = WorkerSecurityPolicy(
            max_request_timeout_ms=10, max_request_payload_bytes=256, max_identifier_length=12
        )
        options = WorkerPoolOptions(security_policy=policy, default_request_timeout=0.005)
        async with WorkerPool([EchoWorker()], options) as pool:
            request = sample_request(
                "req-too-large",
                timeout_ms=99,
                operation=ToolOperation(
                    tool="echo", input={"payload": "x" * 1024}, scoped_input={"input": {}}
                ),
            )
            with pytest.raises(WorkerPoolError.InvalidRequest) as refused:
                await pool.submit(request)
            assert refused.value.reason == "request_id length 13 exceeds max 12"

    run(body)


def test_handles_parallel_submissions_without_deadlock() -> None:
    async def body() -> None:
        options = WorkerPoolOptions(
            queue_capacity=32, health_probe_interval=0.005, default_request_timeout=1.0
        )
        async with WorkerPool([EchoWorker(), EchoWorker()], options) as pool:
            tasks = [
                asyncio.create_task(pool.submit(sample_request(f"parallel-{idx}")))
                for idx in range(32)
            ]
            responses = await asyncio.gather(*tasks)
            assert [r.request_id for r in responses] == [f"parallel-{i}" for i in range(32)]
            assert {r.worker_id for r in responses} == {"worker-0", "worker-1"}

    run(body)


# ── protocol: shapes, defaults, strict decoding ────────────────────────────────────────


def test_options_and_policy_have_the_seeds_defaults() -> None:
    options = WorkerPoolOptions()
    assert options.queue_capacity == 64
    assert options.health_probe_interval == 5.0
    assert options.unavailable_after_failures == 3
    assert options.default_request_timeout == 30.0
    assert options.security_policy == WorkerSecurityPolicy(
        max_request_timeout_ms=120_000,
        max_request_payload_bytes=262_144,
        max_identifier_length=128,
    )
    assert options.reset_timeout == options.health_probe_interval


def test_responses_and_results_round_trip_in_the_seeds_shape() -> None:
    error = WorkerProtocolError(code=WorkerErrorCode.CIRCUIT_OPEN, message="no", retryable=False)
    for result, shape in (
        (WorkerSuccess([1, "a", None]), {"status": "success", "output": [1, "a", None]}),
        (
            WorkerFailure(error),
            {
                "status": "error",
                "error": {"code": "circuit_open", "message": "no", "retryable": False},
            },
        ),
    ):
        response = WorkerResponse(request_id="r", worker_id="worker-1", result=result, elapsed_ms=7)
        assert response.to_dict() == {
            "request_id": "r",
            "worker_id": "worker-1",
            "result": shape,
            "elapsed_ms": 7,
        }
        assert WorkerResponse.from_json(response.to_json()) == response


def test_llm_operations_and_health_round_trip() -> None:
    request = sample_request(
        "r", timeout_ms=5, operation=LlmOperation(model="m", prompt="p", scoped_input=None)
    )
    assert request.to_dict()["operation"] == {
        "kind": "llm",
        "model": "m",
        "prompt": "p",
        "scoped_input": None,
    }
    assert WorkerRequest.from_dict(request.to_dict()) == request
    health = WorkerHealth(
        worker_id="worker-0",
        status=WorkerHealthStatus.DEGRADED,
        consecutive_failures=2,
        last_probe_unix_ms=None,
    )
    assert health.to_dict()["status"] == "degraded"
    assert WorkerHealth.from_dict(health.to_dict()) == health


def test_a_missing_timeout_reads_as_none_like_serde() -> None:
    data = sample_request("r").to_dict()
    del data["timeout_ms"]
    assert WorkerRequest.from_dict(data).timeout_ms is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(extra=1), "$.extra: unknown key"),
        (lambda d: d.pop("node_id"), "$.node_id: required field missing"),
        (lambda d: d.update(request_id=5), "$.request_id: expected a string, got int 5"),
        (lambda d: d.update(timeout_ms=True), "$.timeout_ms: expected an integer"),
        (lambda d: d.update(timeout_ms=-1), "$.timeout_ms: expected an integer between 0"),
        (lambda d: d["operation"].update(kind="sql"), "$.operation.kind: expected 'llm' or"),
        (lambda d: d["operation"].pop("input"), "$.operation.input: required field missing"),
        (
            lambda d: d["operation"].update(input={"a": [1.5, float("nan")]}),
            "$.operation.input.a[1]: expected a finite number",
        ),
        (lambda d: d.update(operation=[]), "$.operation: expected an object tagged by 'kind'"),
    ],
)
def test_decoding_is_strict_and_names_the_field(
    change: Callable[[dict[str, Any]], object], message: str
) -> None:
    data = sample_request("r").to_dict()
    change(data)
    with pytest.raises(InvalidInput) as refused:
        WorkerRequest.from_dict(data)
    assert str(refused.value).startswith(message)


def test_decoding_refuses_duplicate_keys_and_bad_codes() -> None:
    with pytest.raises(InvalidInput, match="duplicate key"):
        WorkerRequest.from_json('{"request_id": "a", "request_id": "b"}')
    bad = {"request_id": "r", "worker_id": "w", "elapsed_ms": 1}
    with pytest.raises(InvalidInput, match=r"\$\.result\.error\.code: expected one of"):
        WorkerResponse.from_dict(
            {
                **bad,
                "result": {
                    "status": "error",
                    "error": {"code": "oops", "message": "m", "retryable": True},
                },
            }
        )
    with pytest.raises(InvalidInput, match=r"\$\.result\.status: expected 'success' or 'error'"):
        WorkerResponse.from_dict({**bad, "result": {"status": "fine"}})


def test_pool_errors_are_the_seeds_variants() -> None:
    assert WorkerPoolError.QueueFull.__qualname__ == "WorkerPoolError.QueueFull"
    code = WorkerErrorCode
    cases = [
        (WorkerPoolError.QueueFull(), "worker queue is full", code.QUEUE_FULL, True),
        (WorkerPoolError.NoHealthyWorker(), "no healthy worker available", code.UNAVAILABLE, True),
        (WorkerPoolError.Timeout(), "worker request timed out", code.TIMEOUT, True),
        (WorkerPoolError.ShuttingDown(), "worker pool is shutting down", code.CANCELLED, True),
        (
            WorkerPoolError.CircuitOpen(),
            "request rejected by circuit breaker",
            code.CIRCUIT_OPEN,
            True,
        ),
        (
            WorkerPoolError.InvalidRequest("why"),
            "worker request rejected: why",
            code.INVALID_REQUEST,
            False,
        ),
    ]
    for error, text, expected, retryable in cases:
        assert isinstance(error, WorkerPoolError | CharterError)
        assert (str(error), error.code, error.retryable) == (text, expected, retryable)
        assert error.to_protocol_error() == WorkerProtocolError(
            code=expected, message=text, retryable=retryable
        )
    inner = WorkerProtocolError(code=WorkerErrorCode.TIMEOUT, message="slow", retryable=True)
    assert str(WorkerPoolError.Worker(inner)) == "worker execution failed: timeout: slow"
    assert WorkerPoolError.Worker(inner).to_protocol_error() == inner


# ── the security contract, in the seed's order ─────────────────────────────────────────


POLICY = WorkerSecurityPolicy(
    max_request_timeout_ms=100, max_request_payload_bytes=400, max_identifier_length=8
)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"request_id": "r" * 9, "workflow_name": "w" * 9}, "request_id length 9 exceeds max 8"),
        ({"workflow_name": "w" * 9, "node_id": "n" * 9}, "workflow_name length 9 exceeds max 8"),
        ({"node_id": "é" * 5, "timeout_ms": 101}, "node_id length 10 exceeds max 8"),
        ({"timeout_ms": 101}, "timeout_ms 101 exceeds max 100"),
        ({"timeout_ms": 0}, "timeout_ms 0 is not positive"),
        (
            {"operation": ToolOperation(tool="t", input="x" * 400, scoped_input=None)},
            "request payload 546 bytes exceeds max 400",
        ),
        (
            {"operation": ToolOperation(tool="t", input={1.5}, scoped_input=None)},
            "request payload unmeasurable (not JSON) exceeds max 400",
        ),
        ({"request_id": 7}, "request_id: expected a string, got int 7"),
        ({"operation": "tool"}, "operation: expected an LlmOperation or a ToolOperation"),
    ],
)
def test_the_security_policy_refuses_the_first_violation(
    changes: dict[str, Any], reason: str
) -> None:
    found = check_request(attrs.evolve(sample_request("r"), **changes), POLICY)
    assert found is not None
    assert found.startswith(reason)


def test_limits_are_inclusive_and_in_bytes() -> None:
    at_limit = sample_request("r" * 8, workflow_name="ééé", node_id="n" * 8, timeout_ms=100)
    assert check_request(at_limit, POLICY) is None
    size = len(at_limit.to_json().encode())
    exact = WorkerSecurityPolicy(max_request_payload_bytes=size)
    assert check_request(at_limit, exact) is None
    assert check_request(at_limit, attrs.evolve(exact, max_request_payload_bytes=size - 1))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("queue_capacity", 0, "queue_capacity: expected an integer at least 1, got int 0"),
        ("unavailable_after_failures", True, "unavailable_after_failures: expected an integer"),
        ("health_probe_interval", float("inf"), "health_probe_interval: expected a positive"),
        ("default_request_timeout", 0, "default_request_timeout: expected a positive"),
        ("default_request_timeout", 121.0, "default_request_timeout: 121 s exceeds"),
        ("breaker_success_threshold", 0, "breaker_success_threshold: expected an integer"),
    ],
)
def test_bad_options_name_the_field(field: str, value: Any, message: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        WorkerPoolOptions(**{field: value})
    assert str(refused.value).startswith(message)


def test_a_pool_needs_a_running_loop_and_a_worker() -> None:
    with pytest.raises(CharterError, match="running event loop"):
        WorkerPool([EchoWorker()])

    class Bare:  # no probe_health: healthy as far as probes go
        async def handle(self, request: WorkerRequest) -> Any:
            return "bare"

    async def body() -> None:
        with pytest.raises(WorkerPoolError.NoHealthyWorker):
            WorkerPool([])
        with pytest.raises(InvalidInput, match=r"handlers\[1\]: expected a WorkerHandler"):
            WorkerPool([EchoWorker(), object()])  # type: ignore[list-item]  # on purpose
        async with WorkerPool([Bare()], WorkerPoolOptions(health_probe_interval=0.001)) as pool:  # type: ignore[list-item]  # duck-typed on purpose
            await asyncio.sleep(0.005)
            assert (await pool.submit(sample_request("r"))).result == WorkerSuccess("bare")
            assert pool.health_snapshot()[0].status is WorkerHealthStatus.HEALTHY

    run(body)


# ── routing, spill-over and in-flight identity ─────────────────────────────────────────


def test_round_robin_alternates_between_workers() -> None:
    async def body() -> None:
        async with WorkerPool([EchoWorker(), EchoWorker(), EchoWorker()]) as pool:
            served = [(await pool.submit(sample_request(f"r{i}"))).worker_id for i in range(6)]
            assert served == ["worker-0", "worker-1", "worker-2"] * 2

    run(body)


def test_a_full_queue_spills_to_the_next_worker_with_room() -> None:
    async def body() -> None:
        busy, idle = GatedWorker(), EchoWorker()
        async with WorkerPool([busy, idle], WorkerPoolOptions(queue_capacity=1)) as pool:
            running = asyncio.create_task(pool.submit(sample_request("a")))  # worker-0
            await busy.entered.wait()
            assert (await pool.submit(sample_request("b"))).worker_id == "worker-1"
            queued = asyncio.create_task(pool.submit(sample_request("c")))  # worker-0's queue
            await until(lambda: pool.in_flight() == 2)
            # The cursor points at worker-1 and then worker-0, whose queue is full: worker-1.
            assert (await pool.submit(sample_request("d"))).worker_id == "worker-1"
            # worker-0 again first, full: spills to worker-1 (the seed answered QueueFull).
            assert (await pool.submit(sample_request("e"))).worker_id == "worker-1"
            busy.release.set()
            assert {(await running).worker_id, (await queued).worker_id} == {"worker-0"}

    run(body)


def test_a_request_id_in_flight_is_refused() -> None:
    async def body() -> None:
        worker = GatedWorker()
        hooks = RecordingHooks()
        async with WorkerPool([worker], hooks=hooks) as pool:
            first = asyncio.create_task(pool.submit(sample_request("same")))
            await worker.entered.wait()
            with pytest.raises(WorkerPoolError.InvalidRequest, match="already in flight"):
                await pool.submit(sample_request("same"))
            worker.release.set()
            await first
            assert (await pool.submit(sample_request("same"))).request_id == "same"

    run(body)


# ── the seed's defects, fixed ──────────────────────────────────────────────────────────


def test_hooks_are_balanced_when_the_queue_is_full() -> None:
    async def body() -> None:
        worker = GatedWorker()
        hooks = RecordingHooks()
        async with WorkerPool([worker], WorkerPoolOptions(queue_capacity=1), hooks) as pool:
            first = asyncio.create_task(pool.submit(sample_request("a")))
            await worker.entered.wait()
            second = asyncio.create_task(pool.submit(sample_request("b")))
            await until(lambda: pool.in_flight() == 2)
            with pytest.raises(WorkerPoolError.QueueFull):
                await pool.submit(sample_request("c"))
            worker.release.set()
            await asyncio.gather(first, second)
        # The seed reported c as accepted and then nothing; here it was never allowed.
        assert hooks.for_request("c") == ["rejected:queue_full"]
        assert hooks.for_request("a") == ["allow", "accepted", "success"]

    run(body)


def test_every_refusal_reaches_the_hooks_once() -> None:
    async def body() -> None:
        hooks = RecordingHooks(refuse={"worker-0"})
        options = WorkerPoolOptions(security_policy=WorkerSecurityPolicy(max_identifier_length=6))
        pool = WorkerPool([EchoWorker()], options, hooks)
        with pytest.raises(WorkerPoolError.InvalidRequest):
            await pool.submit(sample_request("too-long"))
        with pytest.raises(WorkerPoolError.CircuitOpen):
            await pool.submit(sample_request("veto"))
        assert pool.breakers.in_flight() == 0  # the veto gave the breaker's permit back
        await pool.shutdown()
        with pytest.raises(WorkerPoolError.ShuttingDown):
            await pool.submit(sample_request("late"))
        assert hooks.for_request("too-long") == ["rejected:invalid_request"]
        assert hooks.for_request("veto") == ["refuse", "rejected:circuit_open"]
        assert hooks.for_request("late") == ["rejected:cancelled"]

    run(body)


def test_a_hook_that_raises_refuses_and_observers_cannot_break_the_pool() -> None:
    class Broken(CircuitBreakerHooks):
        def allow_request(self, worker_id: str, request: WorkerRequest) -> bool:
            if request.request_id == "veto":
                raise RuntimeError("boom")
            return True

        def on_request_success(self, *_args: object) -> None:
            raise RuntimeError("observer boom")

    async def body() -> None:
        async with WorkerPool([EchoWorker()], hooks=Broken()) as pool:
            with pytest.raises(WorkerPoolError.CircuitOpen):
                await pool.submit(sample_request("veto"))
            assert (await pool.submit(sample_request("ok"))).request_id == "ok"

    run(body)


def test_a_timeout_cancels_queued_work_and_counts_one_failure() -> None:
    async def body() -> None:
        worker = GatedWorker()
        hooks = RecordingHooks()
        options = WorkerPoolOptions(unavailable_after_failures=5)
        async with WorkerPool([worker], options, hooks) as pool:
            running = asyncio.create_task(pool.submit(sample_request("head")))
            await worker.entered.wait()
            with pytest.raises(WorkerPoolError.Timeout):
                await pool.submit(sample_request("queued", timeout_ms=1))
            worker.release.set()
            await running
            await pool.submit(sample_request("after"))
            assert worker.started == ["head", "after"]  # "queued" never ran
        assert hooks.for_request("queued") == ["allow", "accepted", "failure:timeout"]

    run(body)


def test_a_timeout_cancels_running_work_even_if_the_handler_swallows_it() -> None:
    class Stubborn(WorkerHandler):
        def __init__(self) -> None:
            self.swallowed = 0

        async def handle(self, request: WorkerRequest) -> Any:
            if request.request_id == "quick":
                return "done"
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.swallowed += 1  # and carries on as if nothing happened
            return "late"

    async def body() -> None:
        worker = Stubborn()
        async with WorkerPool([worker], WorkerPoolOptions(default_request_timeout=0.002)) as pool:
            with pytest.raises(WorkerPoolError.Timeout):
                await pool.submit(sample_request("slow"))
            await until(lambda: worker.swallowed == 1)
            # The worker is not wedged: the next request runs and is answered.
            assert (await pool.submit(sample_request("quick"))).result == WorkerSuccess("done")

    run(body)


def test_a_caller_that_gives_up_cancels_the_work() -> None:
    async def body() -> None:
        worker = GatedWorker()
        hooks = RecordingHooks()
        async with WorkerPool([worker], hooks=hooks) as pool:
            waiting = asyncio.create_task(pool.submit(sample_request("given-up")))
            await worker.entered.wait()
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            await until(lambda: worker.cancelled == ["given-up"])
            assert pool.in_flight() == 0
        assert hooks.for_request("given-up") == ["allow", "accepted", "rejected:cancelled"]

    run(body)


def test_a_probe_cannot_undo_failures_recovery_goes_through_half_open() -> None:
    async def body() -> None:
        flaky = UnprobedFlakyWorker(available=False)
        clock = Clock()
        options = WorkerPoolOptions(
            unavailable_after_failures=2, breaker_reset_timeout=30.0, health_probe_interval=0.001
        )
        async with WorkerPool([flaky], options, clock=clock) as pool:
            for name in ("f1", "f2"):
                with pytest.raises(WorkerPoolError.Worker):
                    await pool.submit(sample_request(name))
            probes = pool.health_snapshot()[0].last_probe_unix_ms
            await until(lambda: pool.health_snapshot()[0].last_probe_unix_ms != probes)
            # Healthy probes ran; the worker stays unavailable and keeps its failures.
            health = pool.health_snapshot()[0]
            assert (health.status, health.consecutive_failures) == (
                WorkerHealthStatus.UNAVAILABLE,
                2,
            )
            with pytest.raises(WorkerPoolError.NoHealthyWorker):
                await pool.submit(sample_request("refused"))
            clock.now += 30.0  # the reset timeout: the next request is a trial
            assert pool.health_snapshot()[0].status is WorkerHealthStatus.DEGRADED
            with pytest.raises(WorkerPoolError.Worker):
                await pool.submit(sample_request("trial-fails"))
            assert pool.breakers.state("worker-0").status is BreakerStatus.OPEN
            clock.now += 30.0
            flaky.available = True
            await pool.submit(sample_request("trial-succeeds"))
            assert pool.breakers.state("worker-0").status is BreakerStatus.CLOSED
            assert pool.health_snapshot()[0].status is WorkerHealthStatus.HEALTHY
            assert flaky.calls == 4

    run(body)


def test_half_open_lets_a_bounded_number_of_trials_through() -> None:
    async def body() -> None:
        worker = GatedWorker()
        clock = Clock()
        options = WorkerPoolOptions(unavailable_after_failures=1, default_request_timeout=0.002)
        async with WorkerPool([worker], options, clock=clock) as pool:
            with pytest.raises(WorkerPoolError.Timeout):
                await pool.submit(sample_request("opens"))
            clock.now += 60.0
            trial = asyncio.create_task(pool.submit(sample_request("trial", timeout_ms=10_000)))
            await until(lambda: len(worker.started) == 2)
            with pytest.raises(WorkerPoolError.CircuitOpen):
                await pool.submit(sample_request("second"))
            worker.release.set()
            await trial
            assert pool.breakers.state("worker-0").status is BreakerStatus.CLOSED

    run(body)


def test_handler_errors_and_bad_outputs_fail_the_request() -> None:
    class Odd(WorkerHandler):
        async def handle(self, request: WorkerRequest) -> Any:
            if request.request_id == "raises":
                raise ValueError("bad input")
            if request.request_id == "refuses":
                return WorkerProtocolError(
                    code=WorkerErrorCode.INVALID_REQUEST, message="no", retryable=False
                )
            return {1, 2}  # not JSON

    async def body() -> None:
        async with WorkerPool([Odd()], WorkerPoolOptions(unavailable_after_failures=5)) as pool:
            with pytest.raises(WorkerPoolError.Worker) as raised:
                await pool.submit(sample_request("raises"))
            assert raised.value.error == WorkerProtocolError(
                code=WorkerErrorCode.EXECUTION_FAILED,
                message="handler raised ValueError: bad input",
                retryable=True,
            )
            assert raised.value.response is not None
            assert raised.value.response.worker_id == "worker-0"
            with pytest.raises(WorkerPoolError.Worker) as odd:
                await pool.submit(sample_request("set"))
            assert odd.value.error.retryable is False
            assert pool.breakers.state("worker-0").failures == 2
            with pytest.raises(WorkerPoolError.Worker):
                await pool.submit(sample_request("refuses"))
            # The request's own fault is not the worker's: not counted.
            assert pool.breakers.state("worker-0").failures == 2

    run(body)


def test_restart_keeps_the_queue_and_cancels_the_running_request() -> None:
    async def body() -> None:
        worker = GatedWorker()
        hooks = RecordingHooks()
        async with WorkerPool([worker], hooks=hooks) as pool:
            running = asyncio.create_task(pool.submit(sample_request("running")))
            await worker.entered.wait()
            queued = asyncio.create_task(pool.submit(sample_request("queued")))
            await until(lambda: pool.in_flight() == 2)
            await pool.restart_worker("worker-0")
            with pytest.raises(WorkerPoolError.ShuttingDown, match="restarted"):
                await running
            worker.release.set()
            assert (await queued).request_id == "queued"
            with pytest.raises(InvalidInput, match="no worker 'worker-9'"):
                await pool.restart_worker("worker-9")
        assert hooks.for_request("running")[-1] == "rejected:cancelled"

    run(body)


def test_shutdown_answers_everything_and_nothing_hangs() -> None:
    async def body() -> None:
        worker = GatedWorker()
        hooks = RecordingHooks()
        pool = WorkerPool([worker], WorkerPoolOptions(default_request_timeout=None), hooks)
        running = asyncio.create_task(pool.submit(sample_request("running")))
        await worker.entered.wait()
        queued = asyncio.create_task(pool.submit(sample_request("queued")))
        await until(lambda: pool.in_flight() == 2)
        await asyncio.gather(pool.shutdown(), pool.shutdown())
        for task in (running, queued):
            with pytest.raises(WorkerPoolError.ShuttingDown):
                await task
        assert worker.cancelled == ["running"]
        assert all(h.status is WorkerHealthStatus.UNAVAILABLE for h in pool.health_snapshot())
        with pytest.raises(WorkerPoolError.ShuttingDown):
            await pool.restart_worker("worker-0")
        assert hooks.for_request("queued") == ["allow", "accepted", "rejected:cancelled"]

    run(body)


def test_a_consumer_cancelled_from_outside_fails_closed_until_restarted() -> None:
    async def body() -> None:
        worker = GatedWorker()
        async with WorkerPool([worker]) as pool:
            running = asyncio.create_task(pool.submit(sample_request("running")))
            await worker.entered.wait()
            queued = asyncio.create_task(pool.submit(sample_request("queued")))
            await until(lambda: pool.in_flight() == 2)
            consumer = pool._slots[0].consumer.task
            assert consumer is not None
            consumer.cancel()  # not the pool's doing
            for task in (running, queued):
                with pytest.raises(WorkerPoolError.ShuttingDown):
                    await task
            assert pool.health_snapshot()[0].status is WorkerHealthStatus.UNAVAILABLE
            with pytest.raises(WorkerPoolError.NoHealthyWorker):
                await pool.submit(sample_request("refused"))
            await pool.restart_worker("worker-0")
            worker.release.set()
            assert (await pool.submit(sample_request("back"))).request_id == "back"

    run(body)


def test_breaker_events_rebuild_each_workers_breaker() -> None:
    async def body() -> None:
        flaky = UnprobedFlakyWorker(available=False)
        clock = Clock()
        events: list[tuple[str, EventKind]] = []
        options = WorkerPoolOptions(unavailable_after_failures=2)
        pool = WorkerPool(
            [flaky, EchoWorker()],
            options,
            clock=clock,
            on_breaker_event=lambda worker, event: events.append((worker, event)),
        )
        # Round robin: r0 and r2 go to the failing worker-0, which opens after the second.
        for index in range(4):
            if index % 2:
                await pool.submit(sample_request(f"r{index}"))
            else:
                with pytest.raises(WorkerPoolError.Worker):
                    await pool.submit(sample_request(f"r{index}"))
        assert pool.breakers.state("worker-0").status is BreakerStatus.OPEN
        clock.now += 60.0
        flaky.available = True
        await pool.submit(sample_request("recovers"))
        for worker_id in pool.worker_ids:
            breaker = pool.breakers.breaker(worker_id)
            mine = [event for worker, event in events if worker == worker_id]
            assert breaker.rebuild(mine) == pool.breakers.state(worker_id)
        assert [type(e).__name__ for w, e in events if w == "worker-0"] == [
            "CircuitBreakerCounted",
            "CircuitBreakerOpened",
            "CircuitBreakerHalfOpened",
            "CircuitBreakerCounted",
            "CircuitBreakerClosed",
        ]
        await pool.shutdown()

    run(body)


def test_breaker_hooks_ignore_outcomes_they_did_not_admit() -> None:
    hooks = BreakerHooks(fail_max=1)
    request = sample_request("r")
    timeout = WorkerProtocolError(code=WorkerErrorCode.TIMEOUT, message="t", retryable=True)
    hooks.on_request_failure("worker-0", request, timeout)  # never allowed: ignored
    assert hooks.state("worker-0").status is BreakerStatus.CLOSED
    assert hooks.allow_request("worker-0", request)
    hooks.on_request_failure("worker-0", request, timeout)
    assert hooks.state("worker-0").status is BreakerStatus.OPEN
    assert not hooks.allow_request("worker-0", sample_request("s"))


# ── the executor adapter, and workflows through the pool ───────────────────────────────


class NodeWorker(WorkerHandler):
    """Answers tool and model requests in the worker's result shape."""

    def __init__(self) -> None:
        self.requests: list[WorkerRequest] = []

    async def handle(self, request: WorkerRequest) -> Any:
        self.requests.append(request)
        operation = request.operation
        if isinstance(operation, LlmOperation):
            return {
                "output": {"text": f"{operation.model}: {operation.prompt}"},
                "usage": {"input_tokens": 12, "output_tokens": 30},
                "gen_ai_model": operation.model,
            }
        match operation.tool:
            case "crm.lookup":
                return {"output": {"customer": operation.input}, "state_patch": {"found": True}}
            case "flaky.call":
                return WorkerProtocolError(
                    code=WorkerErrorCode.UNAVAILABLE, message="upstream 503", retryable=True
                )
            case "refusing.call":
                return WorkerProtocolError(
                    code=WorkerErrorCode.EXECUTION_FAILED, message="refused", retryable=False
                )
            case _:
                return {"unexpected": True}


def _call(**changes: Any) -> NodeCall:
    call = NodeCall(
        execution_id="run-1",
        node_id="lookup",
        attempt=1,
        kind_tag="tool",
        kind={"type": "tool", "tool_ref": "crm.lookup"},
        tool_name="crm.lookup",
        model_ref=None,
        resolved_model=None,
        args={"id": 7},
        state={"s": 1},
        inputs={},
        idempotency_key="key",
        emit=lambda _chunk: None,
        workflow_id="wf",
    )
    return attrs.evolve(call, **changes)


def test_node_calls_become_the_seeds_requests() -> None:
    tool = request_for_call(_call())
    assert (tool.request_id, tool.workflow_name, tool.node_id) == ("run-1/lookup/1", "wf", "lookup")
    assert tool.operation == ToolOperation(
        tool="crm.lookup",
        input={"id": 7},
        scoped_input={
            "execution_id": "run-1",
            "attempt": 1,
            "idempotency_key": "key",
            "args": {"id": 7},
            "state": {"s": 1},
            "inputs": {},
            "config": None,
        },
    )
    model = request_for_call(
        _call(kind_tag="model", kind={"type": "model", "prompt_ref": "hi"}, resolved_model="m")
    )
    assert isinstance(model.operation, LlmOperation)
    assert (model.operation.model, model.operation.prompt) == ("m", "hi")
    long = request_for_call(_call(execution_id="x" * 200), timeout_ms=50)
    assert len(long.request_id) == 64
    assert long.timeout_ms == 50


def test_the_executor_keeps_the_retryable_flag() -> None:
    options = WorkerPoolOptions(
        unavailable_after_failures=10,
        security_policy=WorkerSecurityPolicy(max_request_payload_bytes=2_000),
    )
    with PoolThread([NodeWorker()], options) as pool:
        executor = PoolExecutor(pool)
        result = executor(_call())
        assert result.output == {"customer": {"id": 7}}
        assert result.state_patch == {"found": True}
        for tool, retryable, text in (
            ("flaky.call", True, "worker pool: unavailable: upstream 503"),
            ("refusing.call", False, "worker pool: execution_failed: refused"),
            ("other", False, "malformed result"),
        ):
            with pytest.raises(ExecutorFailed) as failed:
                executor(_call(tool_name=tool))
            assert failed.value.retryable is retryable
            assert text in str(failed.value)
        with pytest.raises(ExecutorFailed) as too_big:
            executor(_call(args={"blob": "x" * 3_000}))
        assert too_big.value.retryable is False
        assert "invalid_request" in str(too_big.value)
    with pytest.raises(ExecutorFailed) as closed:
        executor(_call())
    assert closed.value.retryable is True


def test_pool_errors_map_to_retryable_failures() -> None:
    class Never(WorkerHandler):
        async def handle(self, request: WorkerRequest) -> Any:
            await asyncio.Event().wait()

    with PoolThread([Never()], WorkerPoolOptions(unavailable_after_failures=1)) as pool:
        executor = PoolExecutor(pool, timeout_ms=1)
        with pytest.raises(ExecutorFailed) as timed_out:
            executor(_call())
        assert (timed_out.value.retryable, "timeout" in str(timed_out.value)) == (True, True)
        with pytest.raises(ExecutorFailed) as unavailable:  # its breaker is open now
            executor(_call(attempt=2))
        assert unavailable.value.retryable is True
        assert "no healthy worker" in str(unavailable.value)


def test_decoders_are_strict() -> None:
    call = _call()
    with pytest.raises(InvalidInput, match="required field missing"):
        decode_envelope(call, {"state_patch": {}})
    with pytest.raises(InvalidInput, match="unknown key"):
        decode_envelope(call, {"output": 1, "tokens": 3})
    with pytest.raises(InvalidInput, match="usage"):
        decode_envelope(call, {"output": 1, "usage": {"input_tokens": -1}})
    assert decode_output(call, [1]).output == [1]
    with pytest.raises(InvalidInput, match="usage"):
        decode_output(_call(kind_tag="model"), "text")


def _workflow(
    nodes: dict[str, Any], edges: list[tuple[str, str]], workflow_id: str = "pooled", **extra: Any
) -> Any:
    return parse_workflow(
        {
            "workflow_id": workflow_id,
            "version": "1",
            "start_node": next(iter(nodes)),
            "nodes": nodes,
            "edges": [{"from": a, "to": b} for a, b in edges],
            **extra,
        }
    )


def test_a_worker_runs_a_workflow_through_the_pool() -> None:
    handlers = [NodeWorker(), NodeWorker()]
    store = MemoryStore()
    workflow = _workflow(
        {
            "lookup": {
                "kind": {"type": "tool", "tool_ref": "crm.lookup", "args": {"id": 7}},
            },
            "summarise": {"kind": {"type": "model", "model_ref": "writer", "prompt_ref": "Sum up"}},
        },
        [("lookup", "summarise")],
        models={"writer": {"provider": "anthropic", "model": "claude-x"}},
        tools={"crm.lookup": {"idempotent": True}},
    )
    with PoolThread(handlers) as pool:
        registry = default_registry()
        registry.register_tool("crm.*", PoolExecutor(pool))
        registry.register_kind("model", PoolExecutor(pool))
        run_id = start_run(store, workflow, execution_id="pooled-1").execution_id
        outcome = drive(Worker(store, executors=registry), run_id, sleep=lambda _s: None)
    assert outcome.status == "completed"
    events = [event.kind for event in store.read_events(run_id)]
    completed = {e.node_id: e for e in events if isinstance(e, NodeCompleted)}
    assert completed["lookup"].output == {"customer": {"id": 7}}
    assert completed["summarise"].output == {"text": "anthropic/claude-x: Sum up"}
    assert completed["summarise"].input_tokens == 12
    usage = [e for e in events if isinstance(e, UsageRecorded) and e.node_id == "summarise"]
    assert (usage[0].input_tokens, usage[0].output_tokens) == (12, 30)
    served = [request for handler in handlers for request in handler.requests]
    assert sorted(r.node_id for r in served) == ["lookup", "summarise"]
    assert {r.workflow_name for r in served} == {"pooled"}


def test_pool_failures_are_retried_or_terminal_as_the_pool_says() -> None:
    store = MemoryStore()
    workflow = _workflow(
        {
            "flaky": {
                "kind": {"type": "tool", "tool_ref": "flaky.call"},
                "retry_policy": {"max_attempts": 2, "backoff_ms": 0},
            },
        },
        [],
        tools={"flaky.call": {"idempotent": True}},
    )
    refusing = _workflow(
        {
            "refusing": {
                "kind": {"type": "tool", "tool_ref": "refusing.call"},
                "retry_policy": {"max_attempts": 3, "backoff_ms": 0},
            },
        },
        [],
        workflow_id="refusing",
        tools={"refusing.call": {"idempotent": True}},
    )
    options = WorkerPoolOptions(unavailable_after_failures=10)
    with PoolThread([NodeWorker()], options) as pool:
        registry = default_registry()
        registry.register_tool("*.call", PoolExecutor(pool))
        worker = Worker(store, executors=registry)
        retried = start_run(store, workflow, execution_id="flaky-1").execution_id
        assert drive(worker, retried, sleep=lambda _s: None).status == "failed"
        terminal = start_run(store, refusing, execution_id="refusing-1").execution_id
        assert drive(worker, terminal, sleep=lambda _s: None).status == "failed"

    def failures(run_id: str) -> list[tuple[int, bool, str]]:
        return [
            (e.kind.attempt, e.kind.retryable, e.kind.error)
            for e in store.read_events(run_id)
            if isinstance(e.kind, NodeFailed)
        ]

    # Retryable: tried again, then exhausted after max_attempts (2).
    assert failures(retried) == [
        (0, True, "worker pool: unavailable: upstream 503"),
        (1, False, "exhausted 2 attempts: worker pool: unavailable: upstream 503"),
    ]
    # Terminal: one attempt, not retried although three were allowed.
    assert failures(terminal) == [(0, False, "worker pool: execution_failed: refused")]


def test_a_steady_permit_reaches_the_breaker_only_when_an_outcome_needs_it() -> None:
    """docs/pool.md §11: a request routed to a steady worker carries its breaker's permit;
    a success returns it without the breaker, a failure or a cancellation lodges it and is
    counted (or not) exactly as through the hooks."""

    async def body() -> None:
        gated = GatedWorker()
        options = WorkerPoolOptions(unavailable_after_failures=2)
        async with WorkerPool([gated], options, clock=Clock()) as pool:
            running = asyncio.create_task(pool.submit(sample_request("a")))
            await gated.entered.wait()
            assert (pool.in_flight(), pool.breakers.in_flight()) == (1, 0)
            gated.release.set()
            assert (await running).result == WorkerSuccess({"status": "ok"})
            assert pool.breakers.state("worker-0").failures == 0

        async with WorkerPool([FlakyWorker()], options, clock=Clock()) as pool:
            with pytest.raises(WorkerPoolError.Worker):
                await pool.submit(sample_request("down"))
            assert pool.breakers.state("worker-0").failures == 1
            assert pool.breakers.in_flight() == 0

        gated = GatedWorker()
        async with WorkerPool([gated], options, clock=Clock()) as pool:
            running = asyncio.create_task(pool.submit(sample_request("gone")))
            await gated.entered.wait()
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running
            await until(lambda: pool.in_flight() == 0)
            state = pool.breakers.state("worker-0")
            assert (state.status, state.failures, pool.breakers.in_flight()) == (
                BreakerStatus.CLOSED,
                0,
                0,
            )

    run(body)
