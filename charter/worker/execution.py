"""Running one executor: which one a node gets, the call it is given, the reservation of its
side effect, and its timeout.

A node with ``timeout_secs`` runs in a helper thread; a timed-out executor cannot be killed,
so its result is discarded when it returns.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Final

import attrs

from charter.adapters.executors import ExecutorRegistry, condition_executor
from charter.adapters.otel import Telemetry
from charter.core.attempt import result_from_json
from charter.core.budget import Usage
from charter.core.errors import ExecutorFailed
from charter.core.events import JsonValue
from charter.core.ports import Executor, NodeCall, NodeResult, Store
from charter.core.records import Claim, EffectAbandoned, EffectHeld, EffectRecorded
from charter.core.workflow import NodeDef, WorkflowDef
from charter.worker.scheduling import RunView

__all__ = ["Lost", "Refused", "execute", "executor_for", "node_call", "outcome_of", "reserve"]


def executor_for(
    registry: ExecutorRegistry, workflow: WorkflowDef, node: NodeDef
) -> Executor | None:
    """The executor of ``node``: a condition node's is built from the definition, others'
    are resolved in ``registry`` (`None`: nothing registered for it)."""
    if node.tag == "condition":
        return condition_executor(workflow)
    return registry.resolve(workflow, node)


def node_call(
    view: RunView,
    node: NodeDef,
    *,
    attempt: int,
    idempotency_key: str,
    emit: Callable[[JsonValue], None],
) -> NodeCall:
    """What an executor is given for one attempt of ``node``, as of ``view``."""
    workflow, progress = view.workflow, view.progress
    tool = workflow.tools.get(node.context.tool_name or "")
    return NodeCall(
        execution_id=view.execution.execution_id,
        node_id=node.node_id,
        attempt=attempt,
        kind_tag=node.tag,
        kind=node.kind,
        tool_name=node.context.tool_name,
        model_ref=node.context.model_ref,
        resolved_model=node.context.resolved_model,
        args=node.kind.get("args"),
        state=progress.state,
        inputs=progress.inputs,
        config=tool.config if tool is not None else None,
        idempotency_key=idempotency_key,
        emit=emit,
        workflow_id=workflow.workflow_id,
    )


@attrs.frozen
class Refused:
    """A side effect that must not fire now: another claim is firing it (retry later)."""

    reason: str
    retryable: bool = True


@attrs.frozen
class Lost:
    """A side effect whose earlier attempt's outcome is unknown (its worker stopped
    mid-call, no result was recorded): it is not fired again; a person must say what
    happened (``outcome_unknown``, docs/workflows.md §3.3)."""

    reason: str


_HELD: Final = "another claim is firing this side effect; retrying later"


def _lost_reason(abandoned: EffectAbandoned) -> str:
    expired = abandoned.expired_at.isoformat(timespec="seconds")
    return (
        f"the worker of an earlier attempt stopped mid-call (its claim, fence "
        f"{abandoned.fence}, reserved this side effect until {expired} and recorded no "
        "result): it may or may not have happened, and it is not idempotent, so it is not "
        "fired again until a person resolves it"
    )


def reserve(
    store: Store, claim: Claim, key: str, *, ttl_secs: float
) -> NodeResult | Refused | Lost | None:
    """Reserve the side effect ``key`` for ``claim`` before it fires (`Store.reserve_effect`):
    `None` when it is this claim's to fire, the recorded result when an earlier attempt
    fired it (replayed, not fired again), `Refused` while another live claim holds it,
    `Lost` when an earlier claim's reservation was abandoned without a result."""
    item = claim.item
    match store.reserve_effect(key, item_id=item.item_id, fence=claim.fence, ttl_secs=ttl_secs):
        case EffectRecorded(result=recorded):
            return result_from_json(recorded)
        case EffectHeld():
            return Refused(_HELD, retryable=True)
        case EffectAbandoned() as abandoned:
            return Lost(_lost_reason(abandoned))
    return None


def execute(executor: Executor, call: NodeCall, timeout: float | None) -> NodeResult:
    """Run the executor, in this thread, or in a helper thread when the node has a timeout
    (a timed-out executor cannot be killed: its result is discarded when it returns).
    `ExecutorFailed` on a timeout (retryable) or a result that is not a `NodeResult`."""
    if timeout is None:
        result = executor(call)
    else:
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["result"] = executor(call)
            except BaseException as error:  # noqa: BLE001 - carried back to the caller
                box["error"] = error

        thread = threading.Thread(target=target, name=f"charter-exec-{call.node_id}", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise ExecutorFailed(f"timed out after {timeout:g} s", retryable=True)
        if "error" in box:
            raise box["error"]
        result = box["result"]
    if not isinstance(result, NodeResult):
        raise ExecutorFailed(
            f"executor returned {type(result).__name__}, expected NodeResult", retryable=False
        )
    return result


def outcome_of(
    executor: Executor, call: NodeCall, timeout: float | None
) -> NodeResult | ExecutorFailed:
    """`execute`, with any exception the executor raised as the failure of the attempt: an
    `ExecutorFailed` as it is, anything else retryable, named by its type."""
    try:
        return execute(executor, call, timeout)
    except ExecutorFailed as failure:
        return failure
    except Exception as failure:  # noqa: BLE001 - any executor exception fails the attempt
        return ExecutorFailed(f"{type(failure).__name__}: {failure}", retryable=True)


def execute_traced(
    executor: Executor, call: NodeCall, node: NodeDef, telemetry: Telemetry | None
) -> NodeResult | ExecutorFailed:
    """`outcome_of`, inside an OpenTelemetry ``execute_tool`` span when ``telemetry`` is
    on (`charter.adapters.otel`): the tool, run, node, attempt, model and settled usage.
    A span that would change nothing (`Telemetry.silent`: no provider set, no recording
    span current) is not opened."""
    if telemetry is None or telemetry.silent():
        return outcome_of(executor, call, node.timeout_secs)
    with telemetry.tool_span(
        node.context.tool_name or node.tag,
        run_id=call.execution_id,
        node_id=call.node_id,
        attempt=call.attempt,
        model=call.resolved_model,
    ) as span:
        result = outcome_of(executor, call, node.timeout_secs)
        if isinstance(result, NodeResult):
            span.settled(result.usage, sequence=None, outcome="completed")
        else:
            span.settled(Usage(), sequence=None, outcome="failed")
        return result
