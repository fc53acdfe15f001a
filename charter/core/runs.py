"""Run records: runkon-flow's `WorkflowRun` and `WorkflowRunStep`, derived from the event log.

Nothing here is stored: a run record is a pure function of an execution and its events, so
it can never disagree with the log and can be recomputed by anyone holding the log.

* `WorkflowRun` — status ``pending | running | waiting | completed | failed | cancelled``
  (runkon's ``needs_resume`` and ``cancelling`` are host-side states Charter does not have);
  ``blocked_on`` names what a waiting run waits for (one of the `BlockedOn` variants:
  runkon's four, of which Charter produces ``human_approval``, and Charter's
  `LostOutcome`: a side effect's outcome was lost and a person must resolve it, with the
  command that does); times, duration, error, inputs, parent.
* `WorkflowRunStep` — one per attempt of a node (runkon inserts a new row per retry: a
  step's ``retry_count`` is the attempt), with status ``pending | running | completed |
  failed | skipped | waiting | timed_out``, result text, error and, for approvals, the gate
  fields (type, prompt, approved by and when, feedback). A node or gate that timed out is
  ``timed_out`` — a human_approval routed to its fallback too, since a ``completed`` gate
  step reads as approved. An attempt whose side effect's outcome was lost
  (``outcome_unknown``) is a ``waiting`` gate step (``gate_type: "outcome_unknown"``) until a
  person resolves it: ``completed`` (it happened: the resolution's output is the result),
  ``failed`` (it did not, or ``retry``: a new step follows), ``timed_out`` (the tenant's
  deadline passed).

A run is ``waiting`` when some node's latest step waits for a person and no other work is
running or queued (a node scheduled, or put back for a retry, counts as queued).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, Final

import attrs

from charter.core.events import (
    ApprovalDecision,
    ApprovalReceived,
    Event,
    NodeCancelled,
    NodeCompleted,
    NodeFailed,
    NodeParked,
    NodeScheduled,
    NodeSkipped,
    NodeStarted,
    OutcomeResolved,
    OutcomeUnknown,
    RetryScheduled,
    ToolApprovalRequired,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowStarted,
)
from charter.core.records import Execution

# The four BlockedOn variants (HumanApproval, HumanReview, PrApproval, PrChecks) keep
# runkon's names and JSON tags; they are reached as `charter.core.runs.HumanApproval` and so
# on, not re-exported by `charter.core`, whose HumanApproval is the escalation target.
# LostOutcome is Charter's own.
__all__ = [
    "LOST_OUTCOME_GATE",
    "BlockedOn",
    "LostOutcome",
    "RunStatus",
    "StepStatus",
    "WorkflowRun",
    "WorkflowRunStep",
    "resolve_command",
    "run_record",
    "run_steps",
]

_RESULT_TEXT_LIMIT: Final = 2000
#: The ``gate_type`` of a step waiting for a person to resolve a lost outcome.
LOST_OUTCOME_GATE: Final = "outcome_unknown"


class RunStatus(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StepStatus(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    WAITING = "waiting"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


@attrs.frozen(kw_only=True)
class HumanApproval:
    gate_name: str
    prompt: str | None = None
    options: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class HumanReview:
    gate_name: str
    prompt: str | None = None
    options: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class PrApproval:
    gate_name: str
    approvals_needed: int


@attrs.frozen(kw_only=True)
class PrChecks:
    gate_name: str


@attrs.frozen(kw_only=True)
class LostOutcome:
    """Charter: the run waits for a person to say what became of a side effect whose
    outcome was lost (``outcome_unknown``): node ``gate_name``'s attempt ``attempt``, under
    ``idempotency_key``; ``command`` is the command line that answers it."""

    gate_name: str
    command: str
    prompt: str | None = None
    attempt: int | None = None
    idempotency_key: str | None = None


BlockedOn = HumanApproval | HumanReview | PrApproval | PrChecks | LostOutcome


def resolve_command(execution_id: str, node_id: str) -> str:
    """The command line that answers a lost outcome of ``node_id`` (docs/cli.md)."""
    return (
        f"charter resolve {execution_id} {node_id} --user USER "
        "(--succeeded [--output JSON] | --failed [--reason TEXT] | --retry)"
    )


@attrs.frozen(kw_only=True)
class WorkflowRunStep:
    """One attempt of one node."""

    id: str
    workflow_run_id: str
    step_name: str
    role: str  # "agent" (a node run by a worker) or "gate" (an approval)
    status: StepStatus
    position: int
    retry_count: int = 0
    started_at: datetime | None = None
    ended_at: datetime | None = None
    result_text: str | None = None
    step_error: str | None = None
    gate_type: str | None = None
    gate_prompt: str | None = None
    gate_approved_by: str | None = None
    gate_approved_at: datetime | None = None
    gate_feedback: str | None = None


@attrs.frozen(kw_only=True)
class WorkflowRun:
    """One run of a workflow."""

    id: str
    workflow_name: str
    workflow_version: str
    status: RunStatus
    blocked_on: BlockedOn | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    total_duration_ms: int | None = None
    result_summary: str | None = None
    error: str | None = None
    inputs: Any = None
    parent_run_id: str | None = None
    tenant_id: str = "default"


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    if len(text) > _RESULT_TEXT_LIMIT:
        text = text[: _RESULT_TEXT_LIMIT - 1] + "…"
    return text


def _prompt(request: ToolApprovalRequired) -> str:
    context = request.context if isinstance(request.context, dict) else {}
    reasons = context.get("reasons")
    if isinstance(reasons, list) and reasons:
        return "; ".join(str(r) for r in reasons)
    description = context.get("description")
    if isinstance(description, str) and description:
        return description
    return f"approve {request.tool_name}"


def run_steps(execution_id: str, events: Iterable[Event]) -> tuple[WorkflowRunStep, ...]:
    """Every step (attempt) of a run, in the order they began."""
    steps: list[WorkflowRunStep] = []
    open_step: dict[str, int] = {}  # node → index of its current step
    gate_nodes: set[str] = set()

    def begin(node: str, event: Event, **fields: Any) -> None:
        index = len(steps)
        steps.append(
            WorkflowRunStep(
                id=f"{execution_id}/{index + 1}",
                workflow_run_id=execution_id,
                step_name=node,
                position=index + 1,
                started_at=event.created_at,
                **fields,
            )
        )
        open_step[node] = index

    def end(node: str, event: Event, **fields: Any) -> None:
        index = open_step.pop(node, None)
        if index is None:
            return
        steps[index] = attrs.evolve(steps[index], ended_at=event.created_at, **fields)

    for event in sorted(events, key=lambda e: e.sequence):
        kind = event.kind
        match kind:
            case NodeScheduled(node_id=node, queue_type=_) if node in gate_nodes:
                pass
            case NodeStarted(node_id=node, attempt=attempt):
                end(node, event, status=StepStatus.FAILED, step_error="superseded")
                begin(node, event, role="agent", status=StepStatus.RUNNING, retry_count=attempt)
            case ToolApprovalRequired(node_id=node):
                index = open_step.get(node)
                prompt = _prompt(kind)
                if index is not None and steps[index].status is StepStatus.RUNNING:
                    steps[index] = attrs.evolve(
                        steps[index],
                        role="gate",
                        status=StepStatus.WAITING,
                        gate_type="human_approval",
                        gate_prompt=prompt,
                    )
                else:
                    gate_nodes.add(node)
                    begin(
                        node,
                        event,
                        role="gate",
                        status=StepStatus.WAITING,
                        gate_type="human_approval",
                        gate_prompt=prompt,
                    )
            case OutcomeUnknown(node_id=node, reason=reason):
                index = open_step.get(node)
                if index is None:
                    begin(node, event, role="gate", status=StepStatus.WAITING)
                    index = open_step[node]
                steps[index] = attrs.evolve(
                    steps[index],
                    role="gate",
                    status=StepStatus.WAITING,
                    gate_type=LOST_OUTCOME_GATE,
                    gate_prompt=f"outcome unknown: {reason}",
                )
            case OutcomeResolved(node_id=node, resolution=resolution, user_id=user):
                index = open_step.get(node)
                if index is None or steps[index].gate_type != LOST_OUTCOME_GATE:
                    continue
                answered = {
                    "gate_approved_by": user,
                    "gate_approved_at": event.created_at,
                    "gate_feedback": kind.comment,
                }
                if resolution == "succeeded":
                    output = _text(kind.output)
                    end(node, event, status=StepStatus.COMPLETED, result_text=output, **answered)
                elif resolution == "failed":
                    why = f"resolved as failed by {user}" + (
                        f": {kind.reason}" if kind.reason else ""
                    )
                    end(node, event, status=StepStatus.FAILED, step_error=why, **answered)
                else:
                    why = f"outcome unknown; {user} asked to run it again"
                    end(node, event, status=StepStatus.FAILED, step_error=why, **answered)
            case ApprovalReceived(node_id=node, decision=decision, user_id=user, comment=note):
                index = open_step.get(node)
                if index is None or steps[index].status is not StepStatus.WAITING:
                    continue
                approved = decision is ApprovalDecision.APPROVED
                end(
                    node,
                    event,
                    status=StepStatus.COMPLETED if approved else StepStatus.FAILED,
                    gate_approved_by=user,
                    gate_approved_at=event.created_at,
                    gate_feedback=note,
                    step_error=None if approved else f"rejected by {user}",
                )
            case NodeCompleted(node_id=node, output=output):
                if node in open_step:
                    # A gate that timed out to its fallback completes the node, but its step
                    # is not "completed": readers of a gate step take that to mean approved.
                    timed_out = (
                        node in gate_nodes
                        and isinstance(output, dict)
                        and output.get("timed_out") is True
                    )
                    status = StepStatus.TIMED_OUT if timed_out else StepStatus.COMPLETED
                    end(node, event, status=status, result_text=_text(output))
            case NodeFailed(node_id=node, error=error):
                timed_out = "timed out" in error
                status = StepStatus.TIMED_OUT if timed_out else StepStatus.FAILED
                end(node, event, status=status, step_error=error)
            case NodeSkipped(node_id=node, reason=reason):
                begin(node, event, role="agent", status=StepStatus.SKIPPED, result_text=reason)
                end(node, event, status=StepStatus.SKIPPED)
            case NodeCancelled(node_id=node):
                end(node, event, status=StepStatus.CANCELLED, step_error="cancelled")
            case WorkflowCancelled(reason=reason):
                # Whatever was still open (a step held for a person, say) ends with the run.
                for node in list(open_step):
                    end(node, event, status=StepStatus.CANCELLED, step_error=reason or "cancelled")
    return tuple(steps)


def run_record(execution: Execution, events: Iterable[Event]) -> WorkflowRun:
    """The run record of ``execution`` after ``events``."""
    ordered = sorted(events, key=lambda e: e.sequence)
    status = RunStatus.PENDING
    started = ended = None
    error = summary = None
    for event in ordered:
        match event.kind:
            case WorkflowStarted():
                status, started = RunStatus.RUNNING, event.created_at
            case WorkflowCompleted():
                status, ended, summary = RunStatus.COMPLETED, event.created_at, "completed"
            case WorkflowFailed(error=message):
                status, ended, error = RunStatus.FAILED, event.created_at, message
            case WorkflowCancelled(reason=reason):
                status, ended = RunStatus.CANCELLED, event.created_at
                error = f"cancelled: {reason}" if reason else "cancelled"
    blocked = None
    if status is RunStatus.RUNNING:
        steps = run_steps(execution.execution_id, ordered)
        latest: dict[str, WorkflowRunStep] = {step.step_name: step for step in steps}
        waiting = [s for s in latest.values() if s.status is StepStatus.WAITING]
        busy = any(s.status is StepStatus.RUNNING for s in latest.values()) or _scheduled(ordered)
        if waiting and not busy:
            status = RunStatus.WAITING
            blocked = _blocked_on(execution.execution_id, waiting[0], ordered)
    duration = None
    if started is not None and ended is not None:
        # Integer arithmetic: float seconds × 1000 truncates 1.001 s to 1000 ms.
        duration = (ended - started) // timedelta(milliseconds=1)
    return WorkflowRun(
        id=execution.execution_id,
        workflow_name=execution.workflow_id,
        workflow_version=execution.workflow_version,
        status=status,
        blocked_on=blocked,
        started_at=started,
        ended_at=ended,
        total_duration_ms=duration,
        result_summary=summary,
        error=error,
        inputs=execution.initial_input,
        parent_run_id=execution.parent_execution_id,
        tenant_id=execution.tenant_id,
    )


def _blocked_on(execution_id: str, step: WorkflowRunStep, events: list[Event]) -> BlockedOn:
    """What a waiting step waits for: an approval, or the resolution of a lost outcome."""
    if step.gate_type != LOST_OUTCOME_GATE:
        return HumanApproval(gate_name=step.step_name, prompt=step.gate_prompt)
    lost = None
    for event in reversed(events):
        if isinstance(event.kind, OutcomeUnknown) and event.kind.node_id == step.step_name:
            lost = event.kind
            break
    return LostOutcome(
        gate_name=step.step_name,
        command=resolve_command(execution_id, step.step_name),
        prompt=step.gate_prompt,
        attempt=lost.attempt if lost is not None else None,
        idempotency_key=lost.idempotency_key if lost is not None else None,
    )


def _scheduled(events: list[Event]) -> bool:
    """Whether some node has queued work: scheduled, or put back for a retry or after being
    parked, and not yet started again (the scheduler's ``scheduled`` state)."""
    pending: set[str] = set()
    for event in events:
        kind = event.kind
        if isinstance(kind, NodeScheduled | RetryScheduled | NodeParked):
            pending.add(kind.node_id)
        elif isinstance(kind, NodeStarted | NodeSkipped | ToolApprovalRequired | OutcomeUnknown):
            pending.discard(kind.node_id)
    return bool(pending)
