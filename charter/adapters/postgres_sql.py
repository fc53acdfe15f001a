"""The Postgres store's SQL: every statement `charter.adapters.postgres` runs, and how its rows
read back as records.

Column lists are spelled once (``*_COLUMNS``) and the statements built from them. JSON is
kept as the exact text the codec wrote; times are ``timestamptz`` (the session's time zone
is UTC); cost is integer nano-dollars. Status values in statements are the enums' own
(`WorkItemStatus`, `ExecutionStatus`), never spelled here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

from charter.adapters.codec import loads
from charter.adapters.postgres_connection import Cursor, Row
from charter.core.budget import BudgetState
from charter.core.errors import NotFound
from charter.core.events import Event, EventKind
from charter.core.records import (
    Execution,
    ExecutionStatus,
    WorkflowDefinition,
    WorkItem,
    WorkItemStatus,
)

# ── rows ──

ITEM_COLUMNS: Final = (
    "item_id", "tenant_id", "execution_id", "node_id", "queue", "payload_json", "attempt",
    "max_attempts", "backoff_base_ms", "status", "available_at", "created_at", "worker_id",
    "lease_expires_at", "fence", "last_error",
)  # fmt: skip
EXECUTION_COLUMNS: Final = (
    "execution_id", "tenant_id", "workflow_id", "workflow_version", "status",
    "initial_input_json", "parent_execution_id", "segment_number", "created_at", "updated_at",
    "last_sequence",
)  # fmt: skip
LEDGER_COLUMNS: Final = (
    "input_tokens", "output_tokens", "cost_nanos", "iterations", "tool_calls",
    "consecutive_errors", "breaker_tripped",
)  # fmt: skip
EFFECT_COLUMNS: Final = (
    "key",
    "execution_id",
    "node_id",
    "item_id",
    "fence",
    "expires_at",
    "recorded",
    "result_json",
)
ITEMS: Final = ", ".join(ITEM_COLUMNS)
EXECUTIONS: Final = ", ".join(EXECUTION_COLUMNS)
_PENDING: Final = f"'{WorkItemStatus.PENDING.value}'"
_CLAIMED: Final = f"'{WorkItemStatus.CLAIMED.value}'"
TERMINAL: Final = [status.value for status in ExecutionStatus if status.terminal]


def item(row: Row) -> WorkItem:
    fields = dict(zip(ITEM_COLUMNS, row, strict=True))
    payload = json.loads(fields.pop("payload_json"))
    return WorkItem(payload=payload, status=WorkItemStatus(fields.pop("status")), **fields)


def execution(row: Row) -> Execution:
    fields = dict(zip(EXECUTION_COLUMNS, row, strict=True))
    initial = json.loads(fields.pop("initial_input_json"))
    return Execution(initial_input=initial, status=ExecutionStatus(fields.pop("status")), **fields)


def ledger(row: Row) -> BudgetState:
    tokens_in, tokens_out, cost, iterations, tool_calls, errors, tripped = row
    return BudgetState(
        total_input_tokens=tokens_in,
        total_output_tokens=tokens_out,
        total_cost_usd=cost / 1_000_000_000,
        iteration_count=iterations,
        tool_call_count=tool_calls,
        consecutive_error_count=errors,
        circuit_breaker_tripped=tripped,
    )


def event(execution_id: str, row: Row) -> Event:
    """An event from ``(sequence, event_id, kind_json, created_at, prev_hash, hash)``."""
    sequence, event_id, kind_json, created_at, prev_hash, this = row
    return Event(
        id=event_id,
        execution_id=execution_id,
        sequence=sequence,
        kind=loads(kind_json, EventKind),
        created_at=created_at,
        prev_hash=prev_hash,
        hash=this,
    )


def storable(text: str | None) -> str | None:
    """A diagnostic string Postgres can hold: NUL characters (which ``text`` cannot) become
    U+FFFD. Only the item's ``last_error`` column goes through here; the event log keeps the
    exact message, escaped in its JSON."""
    return None if text is None else text.replace("\x00", "\ufffd")


def log(cursor: Cursor, execution_id: str, after: int, limit: int | None) -> tuple[list[Row], int]:
    """The events of an execution after ``after`` (at most ``limit``) and its latest
    sequence, in one statement; `NotFound` if it does not exist."""
    rows = cursor.execute(LOG, (after, limit, execution_id)).fetchall()
    if not rows:
        raise NotFound(f"execution {execution_id!r} does not exist")
    return [row[1:] for row in rows if row[1] is not None], rows[0][0]


def item_state(item: WorkItem) -> tuple[Any, ...]:
    """The columns of a work item that change over its life (`UPDATE_ITEM`'s order)."""
    return (
        item.status.value,
        item.attempt,
        item.available_at,
        item.worker_id,
        item.lease_expires_at,
        item.fence,
        storable(item.last_error),
    )


def item_values(item: WorkItem) -> tuple[Any, ...]:
    """A new work item's columns, but its payload (`INSERT_ITEMS`'s order)."""
    fixed = (item.item_id, item.tenant_id, item.execution_id, item.node_id, item.queue)
    limits = (item.max_attempts, item.backoff_base_ms, item.created_at)
    return (*fixed, *limits, *item_state(item))


def workflow(cursor: Cursor) -> WorkflowDefinition | None:
    """A definition from ``(tenant_id, workflow_id, version, ir_json, created_at)``."""
    row = cursor.fetchone()
    if row is None:
        return None
    tenant_id, workflow_id, version, ir_json, created_at = row
    return WorkflowDefinition(
        tenant_id=tenant_id,
        workflow_id=workflow_id,
        version=version,
        ir=json.loads(ir_json),
        created_at=created_at,
    )


# ── statements ──


def _placeholders(columns: Sequence[str]) -> str:
    return ", ".join(f"%({column})s" for column in columns)


def _excluded(columns: Sequence[str]) -> str:
    return ", ".join(f"{column} = excluded.{column}" for column in columns)


ITEM: Final = f"SELECT {ITEMS} FROM work_items WHERE item_id = %s"
ITEMS_BY_ID: Final = f"SELECT {ITEMS} FROM work_items WHERE item_id = ANY(%s::text[])"
# An execution's head, locked: its latest sequence and hash, status, tenant and the time
# the lock was taken (events appended under it are stamped so, hence in commit order).
_HEAD: Final = (
    "x.last_sequence, x.head_hash, x.status, x.tenant_id, "
    "coalesce(%(stamp)s::timestamptz, clock_timestamp())"
)
LOCK_HEAD: Final = f"SELECT {_HEAD} FROM executions x WHERE x.execution_id = %(id)s FOR UPDATE"
# The oldest available pending item of the queues, passing over rows other claims hold, with
# its execution's head, locked after it (the lock order): a claim's two reads in one.
CLAIMABLE: Final = (
    f"SELECT {', '.join(f'w.{column}' for column in ITEM_COLUMNS)}, {_HEAD} "
    "FROM work_items w JOIN executions x ON x.execution_id = w.execution_id "
    f"WHERE w.status = {_PENDING} AND w.queue = ANY(%(queues)s::text[]) "
    "AND w.available_at <= %(now)s ORDER BY w.available_at, w.ordinal LIMIT 1 "
    "FOR UPDATE OF w SKIP LOCKED FOR UPDATE OF x"
)
# The item a commit settles, locked, with whether it may hold reservations and its
# execution's head, locked after it (the lock order).
SETTLING: Final = (
    f"SELECT {', '.join(f'w.{column}' for column in ITEM_COLUMNS)}, w.reserved, {_HEAD} "
    "FROM work_items w JOIN executions x ON x.execution_id = w.execution_id "
    "WHERE w.item_id = %(id)s FOR UPDATE OF w FOR UPDATE OF x"
)
MARK_RESERVED: Final = "UPDATE work_items SET reserved = true WHERE item_id = %s AND NOT reserved"
CLAIMABLE_OF_EXECUTION: Final = CLAIMABLE.replace(
    "AND w.queue", "AND w.execution_id = %(run)s AND w.queue"
)
# Items a live transaction holds (being committed right now) are passed over.
EXPIRED: Final = (
    f"SELECT {ITEMS} FROM work_items WHERE status = {_CLAIMED} AND lease_expires_at < %s "
    "ORDER BY lease_expires_at, ordinal LIMIT %s FOR UPDATE SKIP LOCKED"
)
LEDGER: Final = f"SELECT {', '.join(LEDGER_COLUMNS)} FROM ledger WHERE execution_id = %s"
EFFECT: Final = f"SELECT {', '.join(EFFECT_COLUMNS)} FROM effects WHERE key = %s FOR UPDATE"
WORKFLOW: Final = (
    "SELECT tenant_id, workflow_id, version, ir_json, created_at FROM workflows "
    "WHERE tenant_id = %s AND workflow_id = %s AND version = %s"
)
SNAPSHOT_BASE: Final = (
    "SELECT x.initial_input_json, s.at_sequence, s.state_json, s.created_at FROM executions x "
    "LEFT JOIN snapshots s ON s.execution_id = x.execution_id WHERE x.execution_id = %s"
)
# No row at all: no such execution; one row of NULLs after the latest sequence: no events.
LOG: Final = (
    "SELECT x.last_sequence, v.sequence, v.event_id, v.kind_json, v.created_at, v.prev_hash, "
    "v.hash FROM executions x LEFT JOIN LATERAL (SELECT sequence, event_id, kind_json, "
    "created_at, prev_hash, hash FROM events WHERE execution_id = x.execution_id "
    "AND sequence > %s ORDER BY sequence LIMIT %s) v ON true "
    "WHERE x.execution_id = %s ORDER BY v.sequence"
)

PUT_TENANT: Final = (
    "WITH t AS (INSERT INTO tenants (tenant_id, record_json) VALUES (%(id)s, %(record)s) "
    "ON CONFLICT (tenant_id) DO UPDATE SET record_json = excluded.record_json) "
    "INSERT INTO policy_sets (digest, set_json) SELECT %(digest)s::text, %(policy)s::text "
    "WHERE %(digest)s::text IS NOT NULL ON CONFLICT (digest) DO NOTHING"
)
INSERT_WORKFLOW: Final = (
    "INSERT INTO workflows (tenant_id, workflow_id, version, ir_json, created_at) "
    "VALUES (%s, %s, %s, %s, %s) "
    "ON CONFLICT (tenant_id, workflow_id, version) DO NOTHING RETURNING 1"
)
INSERT_EXECUTION: Final = (
    "WITH n AS (UPDATE execution_counter SET last = last + 1 RETURNING last), "
    "l AS (INSERT INTO ledger (execution_id) VALUES (%(execution_id)s)) "
    f"INSERT INTO executions ({EXECUTIONS}, ordinal) "
    f"SELECT {_placeholders(EXECUTION_COLUMNS)}, n.last FROM n"
)
_ITEM_INSERTED: Final = (
    "item_id", "tenant_id", "execution_id", "node_id", "queue", "max_attempts",
    "backoff_base_ms", "created_at", "status", "attempt", "available_at", "worker_id",
    "lease_expires_at", "fence", "last_error", "payload_json",
)  # fmt: skip
_ITEM_TYPES: Final = (
    "text", "text", "text", "text", "text", "bigint", "bigint", "timestamptz", "text", "bigint",
    "timestamptz", "text", "timestamptz", "bigint", "text", "text",
)  # fmt: skip
# A run of new items in one statement, in order (their ordinals are the enqueue order).
INSERT_ITEMS: Final = (
    f"INSERT INTO work_items ({', '.join(_ITEM_INSERTED)}) "
    f"SELECT {', '.join(_ITEM_INSERTED)} FROM unnest("
    + ", ".join(f"%s::{kind}[]" for kind in _ITEM_TYPES)
    + f") WITH ORDINALITY AS n({', '.join(_ITEM_INSERTED)}, ord) ORDER BY ord"
)
UPDATE_ITEM: Final = (
    "UPDATE work_items SET status = %s, attempt = %s, available_at = %s, worker_id = %s, "
    "lease_expires_at = %s, fence = %s, last_error = %s "
    "WHERE item_id = %s AND status = %s AND fence = %s"
)
# Under the execution's row lock: the events, and the execution's new latest sequence and hash.
INSERT_EVENTS: Final = (
    "WITH x AS (UPDATE executions SET last_sequence = %(last)s, head_hash = %(head)s, "
    "updated_at = %(at)s WHERE execution_id = %(id)s) "
    "INSERT INTO events (execution_id, sequence, event_id, kind_json, created_at, prev_hash, "
    "hash) SELECT %(id)s, e.* FROM unnest(%(sequences)s::bigint[], %(ids)s::text[], "
    "%(kinds)s::text[], %(times)s::timestamptz[], %(prevs)s::text[], %(hashes)s::text[]) AS e"
)
PUT_APPROVAL: Final = (
    "INSERT INTO approvals (execution_id, node_id, tenant_id, status_json, pending, "
    "requested_at) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (execution_id, node_id) "
    "DO UPDATE SET " + _excluded(("status_json", "pending", "requested_at"))
)
PUT_LEDGER: Final = (
    "UPDATE ledger SET "
    + ", ".join(f"{column} = %s" for column in LEDGER_COLUMNS)
    + " WHERE execution_id = %s"
)
# A key read as absent that a concurrent transaction inserted first writes nothing (the
# caller then retries); one read (and locked) is replaced.
PUT_EFFECT: Final = (
    f"INSERT INTO effects ({', '.join(EFFECT_COLUMNS)}) "
    f"VALUES ({_placeholders(EFFECT_COLUMNS)}) ON CONFLICT (key) DO UPDATE SET "
    f"{_excluded(EFFECT_COLUMNS[1:])} WHERE %(replace)s RETURNING 1"
)
COMPACTIONS: Final = (
    "SELECT first_sequence, through_sequence, events, prev_hash, hash, snapshot_sequence, "
    "compacted_at FROM compactions WHERE execution_id = %s ORDER BY through_sequence"
)
PUT_COMPACTION: Final = (
    "INSERT INTO compactions (execution_id, first_sequence, through_sequence, events, "
    "prev_hash, hash, snapshot_sequence, compacted_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
)
PUT_SNAPSHOT: Final = (
    "INSERT INTO snapshots (execution_id, at_sequence, state_json, created_at) "
    "VALUES (%s, %s, %s, %s) ON CONFLICT (execution_id) DO UPDATE SET "
    + _excluded(("at_sequence", "state_json", "created_at"))
)
