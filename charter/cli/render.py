"""Human-readable rendering for the CLI: the live timeline, run records, approvals."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from charter.core.events import (
    ApprovalConsumed,
    ApprovalDecision,
    ApprovalExpired,
    ApprovalReceived,
    AutonomyLimitReached,
    CircuitBreakerTripped,
    CostBudgetExceeded,
    Event,
    LimitCharged,
    NodeCompleted,
    NodeFailed,
    NodeGated,
    NodeScheduled,
    NodeSkipped,
    NodeStarted,
    OutcomeResolved,
    OutcomeUnknown,
    PolicyViolation,
    RateLimitExceeded,
    RetryScheduled,
    TokenBudgetExceeded,
    ToolApprovalRequired,
    UsageRecorded,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowStarted,
    event_type,
)
from charter.core.records import PendingApprovalRecord
from charter.core.runs import LostOutcome, WorkflowRun, WorkflowRunStep

__all__ = [
    "answer_lines",
    "approval_lines",
    "duration",
    "event_line",
    "run_lines",
    "short",
]


def short(value: Any, limit: int = 70) -> str:
    """A one-line rendering of a JSON value, cut at ``limit`` characters."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _detail(event: Event) -> str:
    kind = event.kind
    match kind:
        case WorkflowStarted(workflow_id=wf, workflow_version=version):
            return f"{wf} v{version}"
        case NodeScheduled(queue_type=queue):
            return f"queue {queue}"
        case NodeStarted(worker_id=worker, attempt=attempt):
            return f"attempt {attempt} on {worker}"
        case NodeGated(outcome=outcome, reason=reason, policy_scope=scope, policy_rule=rule):
            where = f" [{scope} {rule}]" if scope and rule else ""
            return f"{outcome.upper()}{where}" + (f": {reason}" if reason else "")
        case PolicyViolation(rule=rule, policy_scope=scope):
            return f"{scope}: {rule}"
        case ToolApprovalRequired(approver=approver, tool_name=tool):
            return f"waiting for {approver} to approve {tool}"
        case ApprovalReceived(user_id=user, decision=decision, comment=comment, expires_at=end):
            note = f" ({comment})" if comment else ""
            until = f", usable until {_moment(end)}" if end is not None else ""
            return f"{decision.value} by {user}{note}{until}"
        case ApprovalConsumed():
            return "approval used"
        case ApprovalExpired(user_id=user, expires_at=end):
            return f"approval by {user} expired at {_moment(end)}: not used, asked again"
        case OutcomeUnknown(attempt=attempt, idempotency_key=key):
            return f"attempt {attempt}: outcome unknown (key {key[:12]}…); waiting for a person"
        case OutcomeResolved(resolution=resolution, user_id=user, reason=reason, comment=note):
            why = f": {reason}" if reason else ""
            return f"{resolution} by {user}{why}" + (f" ({note})" if note else "")
        case UsageRecorded(input_tokens=i, output_tokens=o, cost_usd=cost, tool_calls=calls):
            parts = []
            if i or o:
                parts.append(f"{i}+{o} tokens")
            if cost:
                parts.append(f"${cost:.6f}".rstrip("0").rstrip("."))
            if calls:
                parts.append(f"{calls} tool call{'s' if calls != 1 else ''}")
            return ", ".join(parts) or "nothing"
        case NodeCompleted(output=output, duration_ms=ms):
            return f"{ms} ms → {short(output, 50)}"
        case NodeFailed(error=error, retryable=retryable):
            return ("retryable: " if retryable else "terminal: ") + error
        case RetryScheduled(attempt=attempt, delay_ms=delay):
            return f"attempt {attempt} in {delay / 1000:g} s"
        case NodeSkipped(reason=reason):
            return reason
        case TokenBudgetExceeded(kind=dimension, limit=limit, current=current):
            return f"{dimension} {current} / limit {limit}"
        case CostBudgetExceeded(limit_usd=limit, current_usd=current):
            return f"${current:g} / limit ${limit:g}"
        case AutonomyLimitReached(limit_type=limit_type, limit_value=limit, actual_value=actual):
            return f"{limit_type}: {short(actual, 20)} / limit {short(limit, 20)}"
        case LimitCharged(limits=limits, calls=calls, tokens=tokens, usd_nanos=usd):
            names = (
                ", ".join(str(entry.get("name")) for entry in limits if isinstance(entry, dict))
                if isinstance(limits, list)
                else ""
            )
            spent = f"{calls} call{'s' if calls != 1 else ''}, {tokens} tokens, {usd} nano-USD"
            return f"{names}: {spent}"
        case RateLimitExceeded(limit=name, dimension=key, maximum=maximum, used=used):
            return f"{name}: {key} {used} / limit {maximum}"
        case CircuitBreakerTripped(consecutive_errors=errors, threshold=threshold):
            return f"{errors} consecutive errors (threshold {threshold})"
        case WorkflowCompleted(final_state=state):
            return f"final state {short(state, 60)}"
        case WorkflowFailed(error=error):
            return error
        case WorkflowCancelled(reason=reason):
            return reason or ""
    return ""


def event_line(event: Event) -> str:
    """``  12  node_completed      refund       12 ms → {...}``"""
    node = getattr(event.kind, "node_id", "") or ""
    detail = _detail(event)
    return f"{event.sequence:5d}  {event_type(event.kind):<24} {node:<14} {detail}".rstrip()


def run_lines(run: WorkflowRun, steps: Sequence[WorkflowRunStep]) -> list[str]:
    """A run record and its steps, as the ``status RUN`` command prints them."""
    lines = [
        f"run:       {run.id}",
        f"workflow:  {run.workflow_name} v{run.workflow_version} (tenant {run.tenant_id})",
        f"status:    {run.status.value}",
    ]
    blocked = run.blocked_on
    if isinstance(blocked, LostOutcome):
        lines.append(f"blocked on: lost outcome of {blocked.gate_name}: {blocked.prompt or ''}")
        lines.append(f"  resolve with: {blocked.command}")
    elif blocked is not None:
        prompt = getattr(blocked, "prompt", None)
        lines.append(f"blocked on: approval of {blocked.gate_name}: {prompt or ''}".rstrip())
    if run.started_at is not None:
        lines.append(f"started:   {run.started_at.isoformat(timespec='seconds')}")
    if run.ended_at is not None:
        lines.append(f"ended:     {run.ended_at.isoformat(timespec='seconds')}")
    if run.total_duration_ms is not None:
        lines.append(f"duration:  {run.total_duration_ms} ms")
    if run.error:
        lines.append(f"error:     {run.error}")
    lines.append("steps:")
    for step in steps:
        extra = step.step_error or step.gate_prompt or step.result_text or ""
        if step.gate_approved_by:
            extra = f"answered by {step.gate_approved_by}" + (
                f": {step.gate_feedback}" if step.gate_feedback else ""
            )
        lines.append(
            f"  {step.position:3d}. {step.step_name:<14} {step.status.value:<9} "
            f"attempt {step.retry_count}  {short(extra, 60)}".rstrip()
        )
    return lines


def lost_lines(lost: Sequence[Mapping[str, Any]]) -> list[str]:
    """Lost outcomes waiting for a person (`charter.worker.lost`), and how to answer."""
    header = f"{'RUN':<28} {'NODE':<14} {'RESOLVER':<12} {'ATTEMPT':<8} LOST"
    rows = [
        f"{item['execution_id']:<28} {item['node_id']:<14} {item['resolver']:<12} "
        f"{item['attempt']:<8} {str(item['lost_at'])[:19]}"
        for item in lost
    ]
    return [
        "lost outcomes waiting for a person:",
        header,
        *rows,
        "answer with: charter resolve RUN NODE --user USER (--succeeded | --failed | --retry)",
    ]


def approval_lines(records: Sequence[PendingApprovalRecord]) -> list[str]:
    """Open requests; ``VALID FOR`` is how long an approval of each will stay usable once
    given (``-``: it does not expire; docs/semantics.md §5.2)."""
    if not records:
        return ["no approvals pending"]
    header = f"{'RUN':<28} {'NODE':<14} {'APPROVER':<12} {'TOOL':<20} {'REQUESTED':<25} VALID FOR"
    return [header] + [
        f"{record.execution_id:<28} {record.node_id:<14} {record.approver:<12} "
        f"{record.tool_name:<20} {record.requested_at.isoformat(timespec='seconds'):<25} "
        f"{duration(record.expires_after_secs)}"
        for record in records
    ]


def duration(seconds: float | None) -> str:
    """``90s``, ``10m``, ``1h30m``, ``2d``…; ``-`` for none."""
    if seconds is None:
        return "-"
    whole = int(seconds)
    if whole != seconds or whole < 60:
        return f"{seconds:g}s"
    parts = []
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)):
        count, whole = divmod(whole, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def _moment(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def answer_lines(events: Sequence[Event]) -> list[str]:
    """Each approval answer of a run with what became of it (``charter status RUN``): used,
    expired unused (and when), still usable until its expiry, or rejected. Empty when the
    run has no answer."""
    answers: list[tuple[Event, ApprovalReceived]] = []
    fate: dict[int, str] = {}  # index in answers → what became of it
    open_answer: dict[str, int] = {}  # node → its latest approval not used or expired yet
    for event in events:
        kind = event.kind
        if isinstance(kind, ApprovalReceived):
            answers.append((event, kind))
            if kind.decision is ApprovalDecision.APPROVED:
                open_answer[kind.node_id] = len(answers) - 1
        elif isinstance(kind, ApprovalConsumed) and kind.node_id in open_answer:
            fate[open_answer.pop(kind.node_id)] = f"used at {_moment(event.created_at)}"
        elif isinstance(kind, ApprovalExpired) and kind.node_id in open_answer:
            fate[open_answer.pop(kind.node_id)] = f"expired at {_moment(kind.expires_at)}, not used"
    if not answers:
        return []
    lines = ["approvals:"]
    for index, (event, kind) in enumerate(answers):
        what = f"{kind.decision.value} by {kind.user_id} at {_moment(event.created_at)}"
        if kind.decision is not ApprovalDecision.APPROVED:
            outcome = "(rejections do not expire)"
        elif index in fate:
            outcome = fate[index]
        elif kind.expires_at is not None:
            outcome = f"usable until {_moment(kind.expires_at)}"
        else:
            outcome = "usable, no expiry"
        lines.append(f"  {kind.node_id:<14} {what}; {outcome}")
    return lines
