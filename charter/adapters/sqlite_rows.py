"""The SQLite store's rows as Charter's records: each SELECT's column list next to the
decoder that reads it, and times as stored.

Times are UTC text (``YYYY-MM-DDTHH:MM:SS.ffffffZ``, see `charter.adapters.sqlite_schema`),
statuses their enum's value, JSON compact text, cost integer nano-dollars.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Final

from charter.adapters.codec import loads
from charter.adapters.store_support import stamp_text
from charter.core.approvals import ApprovalStatus
from charter.core.budget import BudgetState
from charter.core.commit import ApprovalRow, EffectRow, Head
from charter.core.events import Event, EventKind
from charter.core.records import (
    ChainLink,
    Execution,
    ExecutionStatus,
    WorkItem,
    WorkItemStatus,
)

__all__ = [
    "APPROVAL_SELECT",
    "EFFECT_SELECT",
    "EXECUTION_SELECT",
    "HEAD_SELECT",
    "ITEM_COLUMNS",
    "ITEM_END",
    "ITEM_HEAD_SELECT",
    "ITEM_LEDGER",
    "ITEM_SELECT",
    "ITEM_TENANT",
    "LEDGER_SELECT",
    "LOG_SELECT",
    "approval",
    "effect",
    "event",
    "execution",
    "head",
    "item",
    "ledger",
    "link",
    "maybe_text",
    "text",
    "time",
]

# Statuses are stored by their value; decoding looks them up (cheaper than calling the enum).
_ITEM_STATUS: Final = {status.value: status for status in WorkItemStatus}
_EXECUTION_STATUS: Final = {status.value: status for status in ExecutionStatus}

ITEM_COLUMNS: Final = (
    "item_id, tenant_id, execution_id, node_id, queue, payload_json, attempt, max_attempts, "
    "backoff_base_ms, status, available_at, created_at, worker_id, lease_expires_at, fence, "
    "last_error"
)
ITEM_SELECT: Final = f"SELECT {ITEM_COLUMNS} FROM work_items"
# An execution's latest sequence and last change are read off its events (the primary key
# makes both one index probe) instead of being rewritten on every append: each append then
# writes only the event rows.
EXECUTION_SELECT: Final = (
    "SELECT x.execution_id, x.tenant_id, x.workflow_id, x.workflow_version, x.status, "
    "x.initial_input_json, x.parent_execution_id, x.segment_number, x.created_at, "
    "coalesce((SELECT v.created_at FROM events v WHERE v.execution_id = x.execution_id "
    "ORDER BY v.sequence DESC LIMIT 1), x.created_at), "
    "coalesce((SELECT max(v.sequence) FROM events v WHERE v.execution_id = x.execution_id), 0), "
    "x.ordinal FROM executions x"
)
_LEDGER_COLUMNS: Final = (
    "input_tokens, output_tokens, cost_nanos, iterations, tool_calls, consecutive_errors, "
    "breaker_tripped"
)
# An item (aliased ``w``) with its execution's head (``x``, ``v``): what a claim and a commit
# read, in one statement. The latest event is one probe of the events' primary key. The
# item's tenant record (``t``) and its execution's ledger (``l``), one primary-key probe
# each, come along: the claim hands the tenant to its claimant, the commit of a usage reads
# the ledger, and neither then costs a statement of its own.
ITEM_HEAD_SELECT: Final = (
    "SELECT " + ", ".join(f"w.{column}" for column in ITEM_COLUMNS.split(", "))
    + ", w.reserved, x.tenant_id, x.status, v.sequence, v.hash, t.record_json, "
    + ", ".join(f"l.{column}" for column in _LEDGER_COLUMNS.split(", "))
    + " FROM work_items w "
    "JOIN executions x ON x.execution_id = w.execution_id "
    "LEFT JOIN events v ON v.execution_id = w.execution_id AND v.sequence = "
    "(SELECT max(sequence) FROM events WHERE execution_id = w.execution_id) "
    "LEFT JOIN tenants t ON t.tenant_id = w.tenant_id "
    "LEFT JOIN ledger l ON l.execution_id = w.execution_id"
)  # fmt: skip
#: Where a row of `ITEM_HEAD_SELECT` goes on after the item's columns.
ITEM_END: Final = len(ITEM_COLUMNS.split(", "))
#: Where its tenant record and its ledger (a row of `LEDGER_SELECT`; NULLs: none) are.
ITEM_TENANT: Final = ITEM_END + 5
ITEM_LEDGER: Final = ITEM_END + 6
# The execution with its latest event: one probe of the events' primary key, from its end.
HEAD_SELECT: Final = (
    "SELECT x.tenant_id, x.status, v.sequence, v.hash FROM executions x LEFT JOIN "
    "(SELECT sequence, hash FROM events WHERE execution_id = ?1 ORDER BY sequence DESC LIMIT 1) v "
    "WHERE x.execution_id = ?1"
)
LOG_SELECT: Final = (
    "SELECT sequence, event_id, kind_json, created_at, prev_hash, hash FROM events "
    "WHERE execution_id = ? AND sequence > ? ORDER BY sequence LIMIT ?"
)
LEDGER_SELECT: Final = f"SELECT {_LEDGER_COLUMNS} FROM ledger WHERE execution_id = ?"
APPROVAL_SELECT: Final = (
    "SELECT status_json, requested_at FROM approvals WHERE execution_id = ? AND node_id = ?"
)
EFFECT_SELECT: Final = (
    "SELECT execution_id, node_id, item_id, fence, expires_at, recorded, result_json "
    "FROM effects WHERE key = ?"
)

# A transaction writes its own time (and an item's times) several times over: the text of
# recent moments is kept rather than formatted again.
text: Final = stamp_text


def maybe_text(moment: datetime | None) -> str | None:
    return None if moment is None else text(moment)


def time(stored: str) -> datetime:
    # fromisoformat understands the trailing Z (3.11+) and is ~50x faster than strptime.
    return datetime.fromisoformat(stored)


def _maybe_time(stored: str | None) -> datetime | None:
    return None if stored is None else time(stored)


def _payload(stored: str) -> Any:
    # Most items carry the empty object: a new one, as `json.loads` would make it.
    return {} if stored == "{}" else json.loads(stored)


def item(row: tuple[Any, ...]) -> WorkItem:
    """A row of `ITEM_SELECT`."""
    return WorkItem(
        item_id=row[0], tenant_id=row[1], execution_id=row[2], node_id=row[3], queue=row[4],
        payload=_payload(row[5]), attempt=row[6], max_attempts=row[7],
        backoff_base_ms=row[8], status=_ITEM_STATUS[row[9]], available_at=time(row[10]),
        created_at=time(row[11]), worker_id=row[12], lease_expires_at=_maybe_time(row[13]),
        fence=row[14], last_error=row[15],
    )  # fmt: skip


def execution(row: tuple[Any, ...]) -> Execution:
    """A row of `EXECUTION_SELECT`: the stored columns, then the derived last change and
    latest sequence."""
    return Execution(
        execution_id=row[0], tenant_id=row[1], workflow_id=row[2], workflow_version=row[3],
        status=_EXECUTION_STATUS[row[4]], initial_input=json.loads(row[5]),
        parent_execution_id=row[6], segment_number=row[7], created_at=time(row[8]),
        updated_at=time(row[9]), last_sequence=row[10],
    )  # fmt: skip


def head(execution_id: str, row: tuple[Any, ...]) -> Head:
    """A row of `HEAD_SELECT`."""
    return Head(
        execution_id=execution_id, tenant_id=row[0], status=_EXECUTION_STATUS[row[1]],
        last_sequence=row[2] or 0, head_hash=row[3],
    )  # fmt: skip


def event(execution_id: str, row: tuple[Any, ...], kind: EventKind) -> Event:
    """A row of `LOG_SELECT`, its kind decoded."""
    return Event(
        id=row[1], execution_id=execution_id, sequence=row[0], kind=kind,
        created_at=time(row[3]), prev_hash=row[4], hash=row[5],
    )  # fmt: skip


def link(execution_id: str, row: tuple[Any, ...]) -> ChainLink:
    """A row of `LOG_SELECT` as a link of the chain (the kind as stored: canonical text)."""
    return ChainLink(
        execution_id=execution_id, sequence=row[0], event_id=row[1], kind_text=row[2],
        created_at=row[3], prev_hash=row[4], hash=row[5],
    )  # fmt: skip


def ledger(row: tuple[Any, ...]) -> BudgetState:
    """A row of `LEDGER_SELECT`."""
    return BudgetState(
        total_input_tokens=row[0], total_output_tokens=row[1],
        total_cost_usd=row[2] / 1_000_000_000, iteration_count=row[3],
        tool_call_count=row[4], consecutive_error_count=row[5],
        circuit_breaker_tripped=bool(row[6]),
    )  # fmt: skip


def approval(row: tuple[Any, ...]) -> ApprovalRow:
    """A row of `APPROVAL_SELECT`."""
    return ApprovalRow(status=loads(row[0], ApprovalStatus), requested_at=time(row[1]))


def effect(key: str, row: tuple[Any, ...]) -> EffectRow:
    """A row of `EFFECT_SELECT`."""
    return EffectRow(
        key=key, execution_id=row[0], node_id=row[1], item_id=row[2], fence=row[3],
        expires_at=_maybe_time(row[4]), recorded=bool(row[5]),
        result=json.loads(row[6]) if row[5] else None,
    )  # fmt: skip
