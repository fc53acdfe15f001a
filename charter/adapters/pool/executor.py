"""Workflow nodes through the worker pool: a pool on its own thread, and an `Executor` for it.

The worker shell (`charter.worker`) calls executors synchronously, in its own threads; the
pool is asyncio. `PoolThread` runs a `WorkerPool` on an event loop in a background thread
and lets any thread submit to it; `PoolExecutor` is an `Executor` that turns a node call
into a `WorkerRequest`, waits for the answer and turns it back into a `NodeResult`::

    pool = PoolThread([MyToolWorker(), MyToolWorker()], WorkerPoolOptions(queue_capacity=16))
    registry.register_tool("crm.*", PoolExecutor(pool))
    registry.register_kind("model", PoolExecutor(pool))
    ...
    pool.close()

Requests: ``request_id`` is ``"<execution>/<node>/<attempt>"`` (its SHA-256 when that is
longer than the policy allows), ``workflow_name`` the call's workflow, ``node_id`` the node.
A ``model`` node becomes an ``llm`` operation (the resolved model, the node's ``prompt`` or
``prompt_ref``);
every other node a ``tool`` operation (the tool name, the node's ``args`` as ``input``). The
``scoped_input`` of both is ``{execution_id, attempt, idempotency_key, args, state, inputs,
config}``.

Results (`decode_envelope`, the default): the handler's output is an object in the shape the
worker records results in — ``{"output": …}`` plus optional ``state_patch``, ``usage``
(``input_tokens``, ``output_tokens``, ``cost_usd``, ``tool_calls``, ``iterations``),
``gen_ai_system``, ``gen_ai_model``, ``finish_reason`` — so a model's usage reaches the
budget. `decode_output` takes any output as the node's output instead (tools only: a model
node must report its usage). A malformed result fails the node terminally.

Errors keep their ``retryable`` flag: ``QueueFull``, ``NoHealthyWorker``, ``Timeout``,
``ShuttingDown`` and ``CircuitOpen`` are retryable failures (later, or on another worker,
it may work); ``InvalidRequest`` is terminal (the same request would be refused again); a
handler's error is retryable exactly when the handler said so.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Final, TypeVar

from charter.adapters.pool import (
    CircuitBreakerHooks,
    LlmOperation,
    ToolOperation,
    WorkerHandler,
    WorkerHealth,
    WorkerPool,
    WorkerPoolError,
    WorkerPoolOptions,
    WorkerRequest,
    WorkerResponse,
    WorkerSuccess,
)
from charter.core.budget import Usage
from charter.core.errors import CharterError, ExecutorFailed, InvalidInput
from charter.core.events import JsonValue
from charter.core.ports import NodeCall, NodeResult

__all__ = [
    "PoolExecutor",
    "PoolThread",
    "decode_envelope",
    "decode_output",
    "request_for_call",
]

T = TypeVar("T")

#: How much longer than the request's own timeout a caller waits for the pool to answer
#: before giving up on it (the pool answers a timeout itself; this only guards a stuck loop).
WAIT_MARGIN_SECS: Final = 5.0


class PoolThread:
    """A `WorkerPool` on an event loop of its own, in a daemon thread, usable from any
    thread. `close` (or leaving a ``with`` block) shuts the pool down and stops the loop."""

    def __init__(
        self,
        handlers: Sequence[WorkerHandler],
        options: WorkerPoolOptions | None = None,
        hooks: CircuitBreakerHooks | None = None,
        *,
        name: str = "charter-pool",
    ) -> None:
        self.options = options if options is not None else WorkerPoolOptions()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()
        self._closed = False

        async def create() -> WorkerPool:
            return WorkerPool(handlers, self.options, hooks)

        try:
            self.pool = self._call(create())
        except BaseException:
            self._stop_loop()
            raise

    def __enter__(self) -> PoolThread:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _call(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def submit(self, request: WorkerRequest) -> WorkerResponse:
        """`WorkerPool.submit` from this thread: the response, or the `WorkerPoolError`."""
        if self._closed:
            raise WorkerPoolError.ShuttingDown()
        limit = self.options.default_request_timeout
        timeout_ms: object = getattr(request, "timeout_ms", None)  # the pool checks its type
        if isinstance(timeout_ms, int):
            limit = timeout_ms / 1000
        wait = None if limit is None else limit + WAIT_MARGIN_SECS
        return self._call(self.pool.submit(request), wait)

    def health_snapshot(self) -> tuple[WorkerHealth, ...]:
        async def snapshot() -> tuple[WorkerHealth, ...]:
            return self.pool.health_snapshot()

        return self._call(snapshot())

    def restart_worker(self, worker_id: str) -> None:
        self._call(self.pool.restart_worker(worker_id))

    def close(self) -> None:
        """Shut the pool down (requests in flight answer ``ShuttingDown``), stop the loop
        and join the thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._call(self.pool.shutdown())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


# ── node calls ↔ worker requests ───────────────────────────────────────────────────────


def request_for_call(
    call: NodeCall,
    *,
    workflow_name: str = "charter",
    timeout_ms: int | None = None,
    max_identifier_length: int = 128,
) -> WorkerRequest:
    """The worker request for one node attempt (see the module doc)."""
    request_id = f"{call.execution_id}/{call.node_id}/{call.attempt}"
    if len(request_id.encode("utf-8", "surrogatepass")) > max_identifier_length:
        request_id = hashlib.sha256(request_id.encode("utf-8", "surrogatepass")).hexdigest()
    scope = {
        "execution_id": call.execution_id,
        "attempt": call.attempt,
        "idempotency_key": call.idempotency_key,
        "args": call.args,
        "state": call.state,
        "inputs": call.inputs,
        "config": call.config,
    }
    operation: LlmOperation | ToolOperation
    if call.kind_tag == "model":
        prompt = call.kind.get("prompt") or call.kind.get("prompt_ref")
        operation = LlmOperation(
            model=call.resolved_model or call.model_ref or "",
            prompt=prompt if isinstance(prompt, str) else "",
            scoped_input=scope,
        )
    else:
        operation = ToolOperation(
            tool=call.tool_name or call.kind_tag, input=call.args, scoped_input=scope
        )
    return WorkerRequest(
        request_id=request_id,
        workflow_name=call.workflow_id or workflow_name,
        node_id=call.node_id,
        timeout_ms=timeout_ms,
        operation=operation,
    )


_ENVELOPE_KEYS: Final = frozenset(
    {"output", "state_patch", "usage", "gen_ai_system", "gen_ai_model", "finish_reason"}
)


def _optional_text(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidInput(key, f"expected a string, got {type(value).__name__}")
    return value


def decode_envelope(call: NodeCall, output: JsonValue) -> NodeResult:
    """A `NodeResult` from an output in the worker's result shape (module doc); anything
    else is `InvalidInput` naming the field."""
    if not isinstance(output, Mapping):
        raise InvalidInput(
            "", f"expected an object with an 'output' key, got {type(output).__name__}"
        )
    unknown = sorted(set(output) - _ENVELOPE_KEYS)
    if unknown:
        expected = ", ".join(sorted(_ENVELOPE_KEYS))
        raise InvalidInput(unknown[0], f"unknown key (expected one of: {expected})")
    if "output" not in output:
        raise InvalidInput("output", "required field missing")
    usage_data = output.get("usage")
    if usage_data is None:
        usage = Usage()
    elif isinstance(usage_data, Mapping):
        try:
            usage = Usage(**usage_data)
        except TypeError as error:
            raise InvalidInput("usage", str(error)) from None
        except InvalidInput as error:
            raise error.within("usage") from None
    else:
        raise InvalidInput("usage", f"expected an object, got {type(usage_data).__name__}")
    patch = output.get("state_patch")
    return NodeResult(
        output=output["output"],
        state_patch=patch if patch is not None else {},
        usage=usage,
        gen_ai_system=_optional_text(output, "gen_ai_system"),
        gen_ai_model=_optional_text(output, "gen_ai_model"),
        finish_reason=_optional_text(output, "finish_reason"),
    )


def decode_output(call: NodeCall, output: JsonValue) -> NodeResult:
    """The output as the node's output, counting one tool call. Refused for model nodes,
    whose usage the budget must see (use `decode_envelope`)."""
    if call.kind_tag == "model":
        raise InvalidInput("", "a model node's result must report its usage: use decode_envelope")
    return NodeResult(output=output, state_patch={}, usage=Usage(tool_calls=1))


class PoolExecutor:
    """An `Executor` that runs nodes on a `PoolThread` (see the module doc)."""

    def __init__(
        self,
        pool: PoolThread,
        *,
        workflow_name: str = "charter",
        timeout_ms: int | None = None,
        decode: Callable[[NodeCall, JsonValue], NodeResult] = decode_envelope,
    ) -> None:
        self.pool = pool
        self.workflow_name = workflow_name
        self.timeout_ms = timeout_ms
        self.decode = decode

    def __call__(self, call: NodeCall) -> NodeResult:
        request = request_for_call(
            call,
            workflow_name=self.workflow_name,
            timeout_ms=self.timeout_ms,
            max_identifier_length=self.pool.options.security_policy.max_identifier_length,
        )
        try:
            response = self.pool.submit(request)
        except WorkerPoolError.Worker as error:
            raise ExecutorFailed(
                f"worker pool: {error.error.code.value}: {error.error.message}",
                retryable=error.error.retryable,
            ) from None
        except WorkerPoolError as error:
            raise ExecutorFailed(
                f"worker pool: {error.code.value}: {error}", retryable=error.retryable
            ) from None
        except concurrent.futures.TimeoutError:
            raise ExecutorFailed(
                "worker pool: no answer within the request's timeout", retryable=True
            ) from None
        result = response.result
        if not isinstance(result, WorkerSuccess):  # pragma: no cover - errors are raised
            raise ExecutorFailed("worker pool: answered an error as a response", retryable=True)
        try:
            return self.decode(call, result.output)
        except ExecutorFailed:
            raise
        except CharterError as error:
            raise ExecutorFailed(
                f"worker pool: {response.worker_id} returned a malformed result: {error}",
                retryable=False,
            ) from None
