"""What the API and the page show, as plain JSON values built from what the store holds:
runs, their steps and events, pending approvals with everything an approver must see (the
call's arguments exactly as they will run, the rule and scope that asked, the budget
spent, the model)."""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import attrs

from charter.adapters.codec import dump
from charter.core.events import Event, JsonValue, NodeGated, ToolApprovalRequired
from charter.core.ports import Store
from charter.core.records import Execution, PendingApprovalRecord
from charter.core.runs import run_record, run_steps
from charter.core.workflow import WorkflowDef
from charter.worker import Definitions

__all__ = [
    "approval_json",
    "event_json",
    "execution_json",
    "plain",
    "run_json",
    "time_text",
    "workflow_of",
]


def time_text(moment: datetime | None) -> str | None:
    """A time as the API writes it: ISO 8601, UTC, ``Z``."""
    if moment is None:
        return None
    text = moment.isoformat(timespec="microseconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def plain(value: Any) -> JsonValue:
    """An attrs value (a run record, a step, what a run is blocked on) as JSON: enums by
    value, times as text; a union's variant named by ``type``."""
    if attrs.has(type(value)):
        out: dict[str, JsonValue] = {}
        for field in attrs.fields(type(value)):
            out[field.name] = plain(getattr(value, field.name))
        return out
    if isinstance(value, enum.Enum):
        return plain(value.value)
    if isinstance(value, datetime):
        return time_text(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def execution_json(execution: Execution) -> dict[str, JsonValue]:
    return {
        "run_id": execution.execution_id,
        "tenant_id": execution.tenant_id,
        "workflow_id": execution.workflow_id,
        "workflow_version": execution.workflow_version,
        "status": execution.status.value,
        "created_at": time_text(execution.created_at),
        "updated_at": time_text(execution.updated_at),
        "last_sequence": execution.last_sequence,
    }


def event_json(event: Event) -> dict[str, JsonValue]:
    kind: JsonValue = dump(event.kind)
    return {
        "sequence": event.sequence,
        "event_id": event.id,
        "created_at": time_text(event.created_at),
        "type": kind.get("type") if isinstance(kind, dict) else None,
        "kind": kind,
        "hash": event.hash,
    }


def workflow_of(store: Store, execution: Execution) -> WorkflowDef | None:
    """The run's parsed workflow definition (``None`` when it cannot be read)."""
    try:
        return Definitions(store).for_execution(execution)
    except Exception:  # noqa: BLE001 - a definition this code cannot read is shown as absent
        return None


def run_json(store: Store, execution: Execution, events: Sequence[Event]) -> dict[str, JsonValue]:
    """One run: its record (status, ``blocked_on``), its steps and its budget ledger."""
    record = plain(run_record(execution, events))
    assert isinstance(record, dict)
    blocked = run_record(execution, events).blocked_on
    if blocked is not None and isinstance(record.get("blocked_on"), dict):
        record["blocked_on"] = {"type": _snake(type(blocked).__name__), **record["blocked_on"]}
    return {
        **execution_json(execution),
        "run": record,
        "steps": plain(run_steps(execution.execution_id, events)),
        "budget": dump(store.get_ledger(execution.execution_id)),
    }


def _gated_for(events: Sequence[Event], record: PendingApprovalRecord) -> NodeGated | None:
    """The decision that raised the request: the node's ``node_gated`` just before it."""
    found = None
    for event in events:
        if event.sequence >= record.sequence:
            break
        kind = event.kind
        if isinstance(kind, NodeGated) and kind.node_id == record.node_id:
            found = kind
    return found


def approval_json(
    store: Store,
    record: PendingApprovalRecord,
    *,
    execution: Execution | None = None,
    events: Sequence[Event] | None = None,
    keys_needed: bool = False,
) -> dict[str, JsonValue]:
    """A pending approval with what its approver must see before answering."""
    execution = execution or store.get_execution(record.execution_id)
    if events is None:
        events = store.read_events(record.execution_id)
    context = record.context if isinstance(record.context, dict) else {}
    call = context.get("call")
    arguments = call.get("args") if isinstance(call, dict) else call
    gated = _gated_for(events, record)
    workflow = workflow_of(store, execution) if execution is not None else None
    node = workflow.nodes.get(record.node_id) if workflow is not None else None
    model = None
    if node is not None:
        model = node.context.resolved_model or node.context.model_ref
    reasons = context.get("reasons")
    return {
        "run_id": record.execution_id,
        "tenant_id": record.tenant_id,
        "workflow_id": execution.workflow_id if execution is not None else None,
        "node_id": record.node_id,
        "node_kind": context.get("node_kind"),
        "tool": record.tool_name,
        "model": model,
        "approver": record.approver,
        "attempt": record.attempt,
        "request_digest": record.request_digest,
        "requested_at": time_text(record.requested_at),
        "sequence": record.sequence,
        "arguments": arguments,
        "call": call,
        "reasons": reasons if isinstance(reasons, list) else [],
        "rule": gated.policy_rule if gated is not None else None,
        "scope": gated.policy_scope if gated is not None else None,
        "pattern": gated.policy_pattern if gated is not None else None,
        "reason": gated.reason if gated is not None else None,
        "budget": dump(store.get_ledger(record.execution_id)),
        "signature_required": keys_needed,
    }


def latest_request(events: Sequence[Event], node_id: str) -> ToolApprovalRequired | None:
    """The node's latest request for approval in the log."""
    found = None
    for event in events:
        if isinstance(event.kind, ToolApprovalRequired) and event.kind.node_id == node_id:
            found = event.kind
    return found
