"""One attempt of one workflow node, as pure functions over frozen values.

The worker shell (`charter.worker`) gathers inputs, runs executors and writes; what it writes
is built here: the gate request an attempt is decided on (`charter.audit` rebuilds the same
inputs from the log to recompute a recorded decision: one function for both, so the two
cannot drift apart), the events that end an attempt (`executed_attempt`, `failed_attempt`,
`completed_event`, `terminal_failure`, `finished_run_event`, `with_failure_usage`), the
progress of a streaming executor (`progress_events`), what a side effect is
(`is_effectful`, `effect_key`) and how its result is recorded (`result_to_json`,
`result_from_json`). No clock, no I/O: durations and times are inputs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Final

import attrs

from charter.core.approvals import ApprovalStatus
from charter.core.budget import BudgetState, Usage
from charter.core.canonical import content_digest
from charter.core.errors import ExecutorFailed
from charter.core.events import (
    AgentToolProgress,
    EventKind,
    JsonValue,
    NodeCancelled,
    NodeCompleted,
    NodeFailed,
    UsageRecorded,
)
from charter.core.gate import GateRequest, SettlementOutcome, SettleRequest, settle_node
from charter.core.nodes import NODE_KINDS
from charter.core.policy import PolicySet, policy_chain
from charter.core.ports import NodeResult
from charter.core.queue import backoff_delay_ms
from charter.core.records import Execution, ExecutionStatus, WorkItem
from charter.core.workflow import NodeDef, WorkflowDef

__all__ = [
    "SUMMARY_CHARS",
    "AttemptEnd",
    "FailedAttempt",
    "chunk_summary",
    "completed_event",
    "effect_key",
    "executed_attempt",
    "failed_attempt",
    "finished_run_event",
    "is_effectful",
    "node_gate_request",
    "progress_events",
    "result_from_json",
    "result_to_json",
    "terminal_failure",
    "with_failure_usage",
]

#: The longest a streamed chunk's summary in ``agent_tool_progress`` may be.
SUMMARY_CHARS: Final = 200


def node_gate_request(
    execution: Execution,
    workflow: WorkflowDef,
    node: NodeDef,
    tenant_policy: PolicySet | None,
    *,
    attempt: int,
    budget: BudgetState,
    approval: ApprovalStatus,
    state_digest: str,
    now: datetime,
    as_of: int,
) -> GateRequest:
    """The gate request of a node's attempt, from its inputs as read from the log at
    ``as_of``: what the worker asks the core, and what `charter.audit` rebuilds from the log
    to recompute a recorded decision (one function, so the two cannot drift apart). The
    call is the node's arguments with the digest of the run's state (``state_digest``:
    `content_digest` of the state), so an approval covers exactly the call it saw."""
    return GateRequest(
        context=node.context,
        attempt=attempt,
        policies=policy_chain(tenant_policy, workflow.policy, node.policy),
        combining=workflow.combining,
        agent=node.agent,
        budget=budget,
        limits=workflow.limits,
        approval=approval,
        call={"args": node.kind.get("args"), "state_digest": state_digest},
        now=now,
        run_started_at=execution.created_at,
        as_of=as_of,
    )


# ── side effects ───────────────────────────────────────────────────────────────────────


def is_effectful(workflow: WorkflowDef, node: NodeDef) -> bool:
    """Whether the node's work is a side effect to reserve and record: every acting node
    that is not a model call, unless its tool is declared idempotent."""
    info = NODE_KINDS[node.tag]
    if not info.acting or node.tag == "model":
        return False
    tool = workflow.tools.get(node.context.tool_name or "")
    return not (tool is not None and tool.idempotent)


def effect_key(item_id: str, args: Any, state_digest: str) -> str:
    """The idempotency key of a node's call: its work item, its arguments and the run's
    state it saw (``state_digest``), so a retry of the same call has the same key."""
    return content_digest({"item": item_id, "args": args, "state": state_digest})


def result_to_json(result: NodeResult) -> dict[str, Any]:
    """An executor's result as recorded for its side effect (`result_from_json` reads it)."""
    usage = result.usage
    return {
        "output": result.output,
        "state_patch": result.state_patch,
        "usage": {
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cost_usd": usage.cost_usd,
            "tool_calls": usage.tool_calls,
            "iterations": usage.iterations,
        },
        "gen_ai_system": result.gen_ai_system,
        "gen_ai_model": result.gen_ai_model,
        "finish_reason": result.finish_reason,
    }


def result_from_json(data: JsonValue) -> NodeResult:
    """A recorded side effect's result, replayed instead of firing the effect again;
    `ExecutorFailed` (not retryable) if the record is not an object."""
    if not isinstance(data, dict):
        raise ExecutorFailed("recorded effect result is not an object", retryable=False)
    usage = data.get("usage") or {}
    return NodeResult(
        output=data.get("output"),
        state_patch=data.get("state_patch"),
        usage=Usage(**usage),
        gen_ai_system=data.get("gen_ai_system"),
        gen_ai_model=data.get("gen_ai_model"),
        finish_reason=data.get("finish_reason"),
    )


# ── the events that end an attempt ─────────────────────────────────────────────────────


def completed_event(
    node_id: str, result: NodeResult, *, duration_ms: int, idempotency_key: str | None
) -> NodeCompleted:
    """The ``node_completed`` of a successful attempt: the executor's output, state patch
    (none: ``{}``), model and usage (zero counts left out), how long it ran and, for a side
    effect, the key its result is recorded under."""
    usage = result.usage
    return NodeCompleted(
        node_id=node_id,
        output=result.output,
        state_patch=result.state_patch if result.state_patch is not None else {},
        duration_ms=duration_ms,
        gen_ai_system=result.gen_ai_system,
        gen_ai_model=result.gen_ai_model,
        input_tokens=usage.input_tokens or None,
        output_tokens=usage.output_tokens or None,
        finish_reason=result.finish_reason,
        cost_usd=usage.cost_usd or None,
        idempotency_key=idempotency_key,
    )


@attrs.frozen(kw_only=True)
class AttemptEnd:
    """How an attempt whose executor returned ends: ``completed`` (the events end with its
    ``node_completed``), or failed by its settlement (a budget exceeded: the events end with
    the settlement's terminal ``node_failed``)."""

    completed: bool
    events: tuple[EventKind, ...]


def executed_attempt(
    workflow: WorkflowDef,
    node: NodeDef,
    attempt: int,
    result: NodeResult,
    *,
    gate_events: Sequence[EventKind],
    chunks: Iterable[JsonValue],
    budget: BudgetState,
    duration_ms: int,
    idempotency_key: str | None,
) -> AttemptEnd:
    """The end of an attempt whose executor returned ``result``: the gate's events, one
    ``agent_tool_progress`` per streamed chunk, the settlement of its usage against the
    workflow's limits (`settle_node`, on the ledger ``budget``) and, unless the settlement
    failed it, its ``node_completed`` (`completed_event`)."""
    settlement = settle_node(
        SettleRequest(
            node_id=node.node_id,
            attempt=attempt,
            budget=budget,
            limits=workflow.limits,
            usage=result.usage,
            succeeded=True,
        )
    )
    events = (*gate_events, *progress_events(node.node_id, chunks), *settlement.events)
    if settlement.outcome is SettlementOutcome.FAILED:
        return AttemptEnd(completed=False, events=events)
    completed = completed_event(
        node.node_id, result, duration_ms=duration_ms, idempotency_key=idempotency_key
    )
    return AttemptEnd(completed=True, events=(*events, completed))


@attrs.frozen(kw_only=True)
class FailedAttempt:
    """An attempt whose executor failed: its events, and how long to wait before the next
    attempt (if the queue allows one)."""

    events: tuple[EventKind, ...]
    delay_ms: int


def failed_attempt(
    workflow: WorkflowDef,
    node: NodeDef,
    item: WorkItem,
    *,
    gate_events: Sequence[EventKind],
    budget: BudgetState,
) -> FailedAttempt:
    """The end of an attempt (of work ``item``) whose executor failed: the gate's events
    and the settlement that counts the error, and the backoff of the node's retry policy
    before the next attempt (`backoff_delay_ms`, its jitter keyed by the item)."""
    settlement = settle_node(
        SettleRequest(
            node_id=node.node_id,
            attempt=item.attempt,
            budget=budget,
            limits=workflow.limits,
            succeeded=False,
        )
    )
    retry = node.retry
    delay = backoff_delay_ms(
        item.attempt + 1, retry.backoff_ms, jitter_key=item.item_id, max_ms=retry.max_backoff_ms
    )
    return FailedAttempt(events=(*gate_events, *settlement.events), delay_ms=delay)


def terminal_failure(node_id: str, attempt: int, error: str) -> NodeFailed:
    """A ``node_failed`` that no retry can fix."""
    return NodeFailed(node_id=node_id, error=error, attempt=attempt, retryable=False)


def finished_run_event(
    status: ExecutionStatus, node_id: str, attempt: int
) -> NodeCancelled | NodeFailed:
    """How a node's attempt ends when its run is already over (``status`` is terminal):
    cancelled with a cancelled run, failed otherwise."""
    if status is ExecutionStatus.CANCELLED:
        return NodeCancelled(node_id=node_id)
    return terminal_failure(node_id, attempt, f"run is already {status.value}")


def with_failure_usage(
    events: Sequence[EventKind], *, node_id: str, attempt: int, usage: Usage | None = None
) -> tuple[EventKind, ...]:
    """The events of a failed attempt, with its ``usage_recorded{succeeded: false}`` added
    unless they hold one already: a failure counts as an error in the ledger, and the
    ledger stays the fold of the log (`charter.core.budget.budget_after`)."""
    if any(isinstance(kind, UsageRecorded) for kind in events):
        return tuple(events)
    spent = usage or Usage()
    recorded = UsageRecorded(
        node_id=node_id,
        attempt=attempt,
        input_tokens=spent.input_tokens,
        output_tokens=spent.output_tokens,
        cost_usd=spent.cost_usd,
        tool_calls=spent.tool_calls,
        iterations=spent.iterations,
        succeeded=False,
    )
    return (*events, recorded)


# ── streaming ──────────────────────────────────────────────────────────────────────────


def chunk_summary(chunk: JsonValue) -> str:
    """A streamed chunk as ``agent_tool_progress`` records it: text as is, anything else as
    its ``repr``, cut to `SUMMARY_CHARS` characters (the last one an ellipsis)."""
    text = chunk if isinstance(chunk, str) else repr(chunk)
    return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 1] + "…"


def progress_events(node_id: str, chunks: Iterable[JsonValue]) -> tuple[AgentToolProgress, ...]:
    """One ``agent_tool_progress`` per chunk an executor emitted, in order."""
    return tuple(
        AgentToolProgress(
            node_id=node_id, chunk_index=index, partial_output_summary=chunk_summary(chunk)
        )
        for index, chunk in enumerate(chunks)
    )
