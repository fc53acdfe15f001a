"""The SQLite store: Charter's embedded default (`Store` port on one SQLite file).

Every write goes through the one write path all stores share
(`charter.adapters.transactions.PlannedStore`: read, plan with `charter.core.commit`, write);
this module is storage only: one ``BEGIN IMMEDIATE`` transaction per write — it takes the
write lock before reading, so a read-then-write can never be interleaved with another writer,
and it commits all of its statements or none — `_SqliteTx`, one SQL statement for each read
or write a planner asks for, and the read-only queries. Elsewhere: opening the file,
transactions and error translation (`charter.adapters.sqlite_connection`), the schema and
its migrations (`sqlite_schema`), rows decoded into records (`sqlite_rows`).

The file runs in WAL mode with a busy timeout, so several processes can share it: writers
queue for the lock instead of failing. One store object may be shared by threads (one
connection behind a lock); each process opens its own store.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TypeVar

from charter.adapters import limit_rows
from charter.adapters import sqlite_rows as stored
from charter.adapters import store_support as rules
from charter.adapters.clock import SystemClock
from charter.adapters.codec import dumps, load, loads
from charter.adapters.sqlite_connection import (
    Synchronous,
    WriteTransaction,
    open_connection,
    translated,
)
from charter.adapters.sqlite_rows import maybe_text as _maybe_text
from charter.adapters.sqlite_rows import text as _text
from charter.adapters.sqlite_rows import time as _time
from charter.adapters.transactions import PlannedStore
from charter.adapters.tx import Tx, new_event_id
from charter.core import commit as plan
from charter.core.approvals import ApprovalStatus, Pending
from charter.core.budget import BudgetState
from charter.core.compaction import Compaction
from charter.core.errors import NotFound, StoreError
from charter.core.events import Event, EventKind, JsonValue
from charter.core.limits import ChargeLimits as LimitWrite
from charter.core.limits import LimitCharge
from charter.core.materialize import MATERIALIZED_TYPES
from charter.core.policy import PolicySet
from charter.core.ports import Clock
from charter.core.records import (
    DEFAULT_TENANT,
    ChainLink,
    Execution,
    ExecutionStatus,
    Page,
    PendingApprovalRecord,
    Snapshot,
    Tenant,
    WorkflowDefinition,
    WorkItem,
    WorkItemStatus,
)

__all__ = ["SqliteStore"]

T = TypeVar("T")

_TERMINAL: Final = tuple(status.value for status in ExecutionStatus if status.terminal)
_PENDING: Final = WorkItemStatus.PENDING.value
_CLAIMED: Final = WorkItemStatus.CLAIMED.value
# The predicate of the live-items index (sqlite_schema), word for word: SQLite uses a partial
# index only for a query whose WHERE clause repeats it, and a bound parameter would not.
_LIVE: Final = f"status IN ('{_PENDING}', '{_CLAIMED}')"

# ── reads (the rest, each with its decoder: `charter.adapters.sqlite_rows`) ──
_EXISTS: Final = "SELECT 1 FROM executions WHERE execution_id = ?"
_ITEM_BY_ID: Final = f"{stored.ITEM_SELECT} WHERE item_id = ?"
_SETTLING: Final = f"{stored.ITEM_HEAD_SELECT} WHERE w.item_id = ?"
_MARK_RESERVED: Final = "UPDATE work_items SET reserved = 1 WHERE item_id = ? AND reserved = 0"
_ITEMS_BY_ID: Final = f"{stored.ITEM_SELECT} WHERE item_id IN (SELECT value FROM json_each(?))"
_WORKFLOW_SELECT: Final = (
    "SELECT ir_json, created_at FROM workflows WHERE tenant_id = ? AND workflow_id = ? "
    "AND version = ?"
)
_EXPIRED_SELECT: Final = (
    f"{stored.ITEM_SELECT} WHERE {_LIVE} AND status = '{_CLAIMED}' AND lease_expires_at < ? "
    "ORDER BY lease_expires_at, ordinal LIMIT ?"
)
_SNAPSHOT_BASE: Final = (
    "SELECT x.initial_input_json, s.at_sequence, s.state_json, s.created_at FROM executions x "
    "LEFT JOIN snapshots s ON s.execution_id = x.execution_id WHERE x.execution_id = ?"
)
_PENDING_APPROVALS: Final = (
    "SELECT a.execution_id, a.node_id, a.tenant_id, a.status_json, a.requested_at "
    "FROM approvals a JOIN executions e ON e.execution_id = a.execution_id "
    f"WHERE a.pending = 1 AND e.status NOT IN ({', '.join('?' for _ in _TERMINAL)})"
)

# ── writes: one statement for each write of a plan ──
_PUT_TENANT: Final = "INSERT OR REPLACE INTO tenants (tenant_id, record_json) VALUES (?, ?)"
_KEEP_POLICY: Final = "INSERT OR IGNORE INTO policy_sets (digest, set_json) VALUES (?, ?)"
_INSERT_WORKFLOW: Final = (
    "INSERT INTO workflows (tenant_id, workflow_id, version, ir_json, created_at) "
    "VALUES (?, ?, ?, ?, ?)"
)
_INSERT_EXECUTION: Final = (
    "INSERT INTO executions (execution_id, tenant_id, workflow_id, workflow_version, status, "
    "initial_input_json, parent_execution_id, segment_number, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_ITEM: Final = (
    f"INSERT INTO work_items ({stored.ITEM_COLUMNS}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# Only these columns of an item ever change; the rest is what was enqueued.
_UPDATE_ITEM: Final = (
    "UPDATE work_items SET status = ?, attempt = ?, available_at = ?, worker_id = ?, "
    "lease_expires_at = ?, fence = ?, last_error = ? WHERE item_id = ? AND status = ? "
    "AND fence = ?"
)
_INSERT_EVENTS: Final = (
    "INSERT INTO events (execution_id, sequence, event_id, kind_json, created_at, prev_hash, "
    "hash) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_SET_STATUS: Final = "UPDATE executions SET status = ? WHERE execution_id = ?"
_PUT_APPROVAL: Final = (
    "INSERT OR REPLACE INTO approvals (execution_id, node_id, tenant_id, status_json, pending, "
    "requested_at) VALUES (?, ?, ?, ?, ?, ?)"
)
_PUT_LEDGER: Final = (
    "UPDATE ledger SET input_tokens = ?, output_tokens = ?, cost_nanos = ?, iterations = ?, "
    "tool_calls = ?, consecutive_errors = ?, breaker_tripped = ? WHERE execution_id = ?"
)
_PUT_EFFECT: Final = (
    "INSERT OR REPLACE INTO effects (key, execution_id, node_id, item_id, fence, expires_at, "
    "recorded, result_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_RELEASE_EFFECTS: Final = "DELETE FROM effects WHERE item_id = ? AND fence = ? AND recorded = 0"
_COMPACTIONS: Final = (
    "SELECT first_sequence, through_sequence, events, prev_hash, hash, snapshot_sequence, "
    "compacted_at FROM compactions WHERE execution_id = ? ORDER BY through_sequence"
)
_PUT_COMPACTION: Final = (
    "INSERT INTO compactions (execution_id, first_sequence, through_sequence, events, "
    "prev_hash, hash, snapshot_sequence, compacted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_PUT_SNAPSHOT: Final = (
    "INSERT OR REPLACE INTO snapshots (execution_id, at_sequence, state_json, created_at) "
    "VALUES (?, ?, ?, ?)"
)


@functools.cache
def _claim_sql(queues: int, one_execution: bool) -> str:
    """The oldest available pending item of ``queues`` distinct queues: one probe of the live
    index per queue (its head), then the oldest of those heads — a claim costs one index
    probe per queue, not a sort of every pending item — and its execution's head, in the same
    statement. With ``one_execution`` each probe walks its queue's live items until one of the
    given execution (``charter run`` on a shared database). (The redundant `_LIVE` term lets
    SQLite use the partial index.)"""
    of_execution = "AND execution_id = ? " if one_execution else ""
    head = (
        "SELECT ordinal, available_at FROM (SELECT ordinal, available_at FROM work_items "
        f"WHERE {_LIVE} AND status = '{_PENDING}' AND queue = ? AND available_at <= ? "
        f"{of_execution}ORDER BY available_at, ordinal LIMIT 1)"
    )
    heads = " UNION ALL ".join([head] * queues)
    return (
        f"{stored.ITEM_HEAD_SELECT} WHERE w.ordinal = (SELECT ordinal FROM ({heads}) "
        "ORDER BY available_at, ordinal LIMIT 1)"
    )


_LIMIT_SQL = limit_rows.sqlite_statements()


class _Rows:
    """The reads the write transactions and the read-only queries share, on one connection."""

    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def one(self, sql: str, args: Sequence[object] = ()) -> Any:
        return self._conn.execute(sql, args).fetchone()

    def all(self, sql: str, args: Sequence[object] = ()) -> list[Any]:
        return self._conn.execute(sql, args).fetchall()

    def workflow(self, tenant_id: str, workflow_id: str, version: str) -> WorkflowDefinition | None:
        row = self.one(_WORKFLOW_SELECT, (tenant_id, workflow_id, version))
        if row is None:
            return None
        return WorkflowDefinition(
            tenant_id=tenant_id, workflow_id=workflow_id, version=version,
            ir=json.loads(row[0]), created_at=_time(row[1]),
        )  # fmt: skip

    def item(self, item_id: str) -> WorkItem | None:
        row = self.one(_ITEM_BY_ID, (item_id,))
        return None if row is None else stored.item(row)

    def ledger(self, execution_id: str) -> BudgetState:
        row = self.one(stored.LEDGER_SELECT, (execution_id,))
        if row is None:
            raise NotFound(f"execution {execution_id!r} does not exist")
        return stored.ledger(row)

    def compactions(self, execution_id: str) -> list[Compaction]:
        return [
            Compaction(
                execution_id=execution_id,
                first_sequence=row[0],
                through_sequence=row[1],
                events=row[2],
                prev_hash=row[3],
                hash=row[4],
                snapshot_sequence=row[5],
                compacted_at=_time(row[6]),
            )
            for row in self.all(_COMPACTIONS, (execution_id,))
        ]

    def log(self, execution_id: str, after: int, limit: int | None) -> list[Any]:
        """Rows of `sqlite_rows.LOG_SELECT`; `NotFound` if the execution does not exist."""
        rows = self.all(stored.LOG_SELECT, (execution_id, after, -1 if limit is None else limit))
        # Events exist only for existing executions: ask only when there are none.
        if not rows and not self.one(_EXISTS, (execution_id,)):
            raise NotFound(f"execution {execution_id!r} does not exist")
        return rows


class _SqliteTx(_Rows):
    """`Tx` (see `charter.adapters.transactions.Tx`) inside one ``BEGIN IMMEDIATE``
    transaction: the write lock is the whole database's, so no read locks a row."""

    __slots__ = ("_ledgers", "_read_tenants", "_tenants", "now")

    def __init__(
        self,
        conn: sqlite3.Connection,
        now: datetime,
        tenants: dict[str, tuple[str, Tenant]] | None = None,
    ) -> None:
        super().__init__(conn)
        self.now = now
        self._tenants = {} if tenants is None else tenants
        # What an item's row brought along (`stored.ITEM_HEAD_SELECT`), read under this
        # transaction's write lock: a tenant's record text, an execution's ledger row. A
        # write to either forgets it.
        self._read_tenants: dict[str, str] = {}
        self._ledgers: dict[str, tuple[Any, ...]] = {}

    def _brought(self, row: tuple[Any, ...]) -> None:
        """Keep the tenant record and ledger a row of `stored.ITEM_HEAD_SELECT` brought."""
        text = row[stored.ITEM_TENANT]
        if text is not None:
            self._read_tenants[row[1]] = text
        ledger = row[stored.ITEM_LEDGER :]
        if ledger[0] is not None:
            self._ledgers[row[2]] = ledger

    def ledger(self, execution_id: str) -> BudgetState:
        row = self._ledgers.get(execution_id)
        return super().ledger(execution_id) if row is None else stored.ledger(row)

    # ── reads ──

    def tenant_exists(self, tenant_id: str) -> bool:
        return self.one("SELECT 1 FROM tenants WHERE tenant_id = ?", (tenant_id,)) is not None

    def items(self, item_ids: Sequence[str]) -> dict[str, WorkItem]:
        if not item_ids:
            return {}
        rows = self.all(_ITEMS_BY_ID, (json.dumps(list(item_ids)),))
        return {row[0]: stored.item(row) for row in rows}

    def holder(self, item_id: str) -> WorkItem | None:
        return self.item(item_id)  # (the write lock is the whole file's: nothing to avoid)

    def settling(self, item_id: str) -> tuple[WorkItem, plan.Head | None, bool] | None:
        row = self.one(_SETTLING, (item_id,))
        if row is None:
            return None
        self._brought(row)
        end = stored.ITEM_END
        return stored.item(row), stored.head(row[2], row[end + 1 :]), bool(row[end])

    def next_claimable(
        self, queues: Sequence[str], execution_id: str | None
    ) -> tuple[WorkItem, plan.Head] | None:
        stamp = _text(self.now)
        per_queue = (stamp,) if execution_id is None else (stamp, execution_id)
        args = [value for queue in queues for value in (queue, *per_queue)]
        row = self.one(_claim_sql(len(queues), execution_id is not None), args)
        if row is None:
            return None
        self._brought(row)
        return stored.item(row), stored.head(row[2], row[stored.ITEM_END + 1 :])

    def expired(self, limit: int) -> list[WorkItem]:
        rows = self.all(_EXPIRED_SELECT, (_text(self.now), limit))
        return [stored.item(row) for row in rows]

    def head(self, execution_id: str) -> plan.Head | None:
        row = self.one(stored.HEAD_SELECT, (execution_id,))
        return None if row is None else stored.head(execution_id, row)

    def event_time(self, execution_id: str) -> datetime:
        return self.now

    def approval(self, execution_id: str, node_id: str) -> plan.ApprovalRow | None:
        row = self.one(stored.APPROVAL_SELECT, (execution_id, node_id))
        return None if row is None else stored.approval(row)

    def effect(self, key: str) -> plan.EffectRow | None:
        row = self.one(stored.EFFECT_SELECT, (key,))
        return None if row is None else stored.effect(key, row)

    def tenant(self, tenant_id: str) -> Tenant | None:
        text = self._read_tenants.get(tenant_id)
        if text is None:
            row = self.one("SELECT record_json FROM tenants WHERE tenant_id = ?", (tenant_id,))
            if row is None:
                return None
            text = row[0]
        return rules.decoded_tenant(self._tenants, tenant_id, text)

    def reservation(self, item_id: str, fence: int) -> str | None:
        row = self.one(
            "SELECT key FROM effects WHERE item_id = ? AND fence = ? AND recorded = 0 "
            "ORDER BY key LIMIT 1",
            (item_id, fence),
        )
        return None if row is None else str(row[0])

    def node_events(self, execution_id: str, node_id: str, types: Sequence[str]) -> list[Event]:
        found = []
        for row in self.all(stored.LOG_SELECT, (execution_id, 0, -1)):
            data = json.loads(row[2])
            if data.get("type") in types and data.get("node_id") == node_id:
                found.append(stored.event(execution_id, row, load(data, EventKind)))
        return found

    def snapshot_base(self, execution_id: str) -> tuple[Snapshot | None, JsonValue]:
        initial, at_sequence, state, created_at = self.one(_SNAPSHOT_BASE, (execution_id,))
        if at_sequence is None:
            return None, json.loads(initial)
        snapshot = Snapshot(
            execution_id=execution_id, at_sequence=at_sequence, state=json.loads(state),
            created_at=_time(created_at),
        )  # fmt: skip
        return snapshot, json.loads(initial)

    def events_after(self, execution_id: str, after: int) -> tuple[list[Event], int]:
        rows = self.all(stored.LOG_SELECT, (execution_id, after, -1))
        # Only the kinds that change a snapshot are decoded (a gate decision, say, is not).
        relevant = []
        for row in rows:
            data = json.loads(row[2])
            if data.get("type") in MATERIALIZED_TYPES:
                relevant.append(stored.event(execution_id, row, rules.stored_kind(data)))
        return relevant, rows[-1][0] if rows else after

    # ── writes ──

    def put_tenant(self, tenant: Tenant, keep_policy: bool) -> None:
        self._read_tenants.pop(tenant.tenant_id, None)
        self._conn.execute(_PUT_TENANT, (tenant.tenant_id, dumps(tenant)))
        if keep_policy and tenant.policy is not None:  # kept for good: named by digest
            self._conn.execute(_KEEP_POLICY, (tenant.policy.digest, dumps(tenant.policy)))

    def insert_workflow(self, definition: WorkflowDefinition, ir_json: str) -> None:
        d = definition
        row = (d.tenant_id, d.workflow_id, d.version, ir_json, _text(d.created_at))
        self._conn.execute(_INSERT_WORKFLOW, row)

    def insert_execution(self, execution: Execution, initial_input_json: str) -> None:
        x = execution
        self._conn.execute(_INSERT_EXECUTION, (
            x.execution_id, x.tenant_id, x.workflow_id, x.workflow_version, x.status.value,
            initial_input_json, x.parent_execution_id, x.segment_number, _text(x.created_at),
        ))  # fmt: skip
        self._conn.execute("INSERT INTO ledger (execution_id) VALUES (?)", (x.execution_id,))

    def insert_item(self, item: WorkItem, payload_json: str) -> None:
        i = item
        self._conn.execute(_INSERT_ITEM, (
            i.item_id, i.tenant_id, i.execution_id, i.node_id, i.queue, payload_json, i.attempt,
            i.max_attempts, i.backoff_base_ms, i.status.value, _text(i.available_at),
            _text(i.created_at), i.worker_id, _maybe_text(i.lease_expires_at), i.fence,
            i.last_error,
        ))  # fmt: skip

    def update_item(self, write: plan.UpdateItem) -> None:
        i = write.item
        updated = self._conn.execute(_UPDATE_ITEM, (
            i.status.value, i.attempt, _text(i.available_at), i.worker_id,
            _maybe_text(i.lease_expires_at), i.fence, i.last_error,
            i.item_id, write.expect_status.value, write.expect_fence,
        )).rowcount  # fmt: skip
        if updated != 1:
            raise AssertionError(f"work item {i.item_id!r} changed under the write lock")

    def insert_events(
        self, head: plan.Head, events: Sequence[Event], kind_texts: Sequence[str]
    ) -> None:
        # A batch shares one time (`PlannedStore._append`): its text is made once.
        moment = events[0].created_at
        stamp = _text(moment)
        rows = [
            (
                e.execution_id, e.sequence, e.id, text,
                stamp if e.created_at is moment else _text(e.created_at), e.prev_hash, e.hash,
            )
            for e, text in zip(events, kind_texts, strict=True)
        ]  # fmt: skip
        self._conn.executemany(_INSERT_EVENTS, rows)

    def set_status(self, write: plan.SetStatus) -> None:
        self._conn.execute(_SET_STATUS, (write.status.value, write.execution_id))

    def put_approval(self, write: plan.PutApproval) -> None:
        w = write  # (``pending``: the flag the pending-approvals index keys on)
        self._conn.execute(_PUT_APPROVAL, (
            w.execution_id, w.node_id, w.tenant_id, dumps(w.status),
            isinstance(w.status, Pending), _text(w.requested_at),
        ))  # fmt: skip

    def put_ledger(self, write: plan.PutLedger) -> None:
        self._ledgers.pop(write.execution_id, None)
        s = write.state  # absolute totals: the planner read them under this transaction
        self._conn.execute(_PUT_LEDGER, (
            s.total_input_tokens, s.total_output_tokens, s.cost_nanos, s.iteration_count,
            s.tool_call_count, s.consecutive_error_count, s.circuit_breaker_tripped,
            write.execution_id,
        ))  # fmt: skip

    def put_effect(self, row: plan.EffectRow, result_json: str | None) -> None:
        r = row
        self._conn.execute(_PUT_EFFECT, (
            r.key, r.execution_id, r.node_id, r.item_id, r.fence, _maybe_text(r.expires_at),
            r.recorded, result_json,
        ))  # fmt: skip
        if not r.recorded:  # a reservation: its item's settling must release it
            self._conn.execute(_MARK_RESERVED, (r.item_id,))

    def release_effects(self, write: plan.ReleaseEffects) -> None:
        self._conn.execute(_RELEASE_EFFECTS, (write.item_id, write.fence))

    def event_hash_at(self, execution_id: str, sequence: int) -> str | None:
        row = self.one(
            "SELECT hash FROM events WHERE execution_id = ? AND sequence = ?",
            (execution_id, sequence),
        )
        return None if row is None else str(row[0])

    def delete_events(self, execution_id: str, through_sequence: int) -> None:
        self._conn.execute(
            "DELETE FROM events WHERE execution_id = ? AND sequence <= ?",
            (execution_id, through_sequence),
        )

    def put_compaction(self, record: Compaction) -> None:
        self._conn.execute(
            _PUT_COMPACTION,
            (
                record.execution_id, record.first_sequence, record.through_sequence,
                record.events, record.prev_hash, record.hash, record.snapshot_sequence,
                _text(record.compacted_at),
            ),
        )  # fmt: skip

    def put_snapshot(self, snapshot: Snapshot) -> None:
        state = json.dumps(snapshot.state, ensure_ascii=False, separators=(",", ":"))
        row = (snapshot.execution_id, snapshot.at_sequence, state, _text(snapshot.created_at))
        self._conn.execute(_PUT_SNAPSHOT, row)

    def charge_limits(self, write: LimitWrite) -> None:
        insert, prune, _select = _LIMIT_SQL
        self._conn.executemany(prune, limit_rows.prune_args(write))
        self._conn.executemany(insert, limit_rows.insert_args(write))


class SqliteStore(PlannedStore):
    """A `Store` on one SQLite file (see the module doc).

    ``synchronous`` is SQLite's durability setting in WAL mode: ``FULL`` (the default)
    makes every committed transaction durable across power loss; ``NORMAL`` may lose the
    last transactions on power loss (never on a process crash) and is much faster.

    ``read_only`` opens an existing store only to read it (``charter status``, ``events``,
    ``audit``): a read-only file is fine, nothing is created, migrated or written (SQLite
    refuses any write), and every write method raises `StoreError` saying so.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Clock | None = None,
        new_id: Callable[[], str] | None = None,
        synchronous: Synchronous = "FULL",
        busy_timeout_ms: int = 5000,
        read_only: bool = False,
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        self.path = Path(path)
        self.read_only = read_only
        self._new_id = new_id or new_event_id
        self._lock = threading.RLock()
        self._conn = open_connection(self.path, synchronous, busy_timeout_ms, read_only=read_only)
        self._tenants: dict[str, tuple[str, Tenant]] = {}
        if read_only:
            return
        try:
            now = self.clock.now()
            tenant = Tenant(
                tenant_id=DEFAULT_TENANT, name="Default", created_at=now, updated_at=now
            )
            with self._write() as conn:
                conn.execute(
                    "INSERT OR IGNORE INTO tenants (tenant_id, record_json) VALUES (?, ?)",
                    (DEFAULT_TENANT, dumps(tenant)),
                )
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _transact(self, work: Callable[[Tx], T]) -> T:
        with self._write() as conn:
            # The clock is read under the write lock, so commit order is time order.
            return work(_SqliteTx(conn, self.clock.now(), self._tenants))

    def _write(self) -> WriteTransaction:
        if self.read_only:
            raise StoreError(
                f"{self.path}: opened read-only (for a command that only reads): "
                "this write was refused"
            )
        return WriteTransaction(self._conn, self._lock, self.path)

    @contextmanager
    def _read(self) -> Iterator[_Rows]:
        with self._lock, translated(self.path):
            yield _Rows(self._conn)

    # ── reads ──

    def get_policy_set(self, digest: str) -> PolicySet | None:
        with self._read() as rows:
            row = rows.one("SELECT set_json FROM policy_sets WHERE digest = ?", (digest,))
        return None if row is None else loads(row[0], PolicySet)

    def get_tenant(self, tenant_id: str) -> Tenant | None:
        with self._read() as rows:
            row = rows.one("SELECT record_json FROM tenants WHERE tenant_id = ?", (tenant_id,))
        return None if row is None else rules.decoded_tenant(self._tenants, tenant_id, row[0])

    def list_tenants(self) -> tuple[Tenant, ...]:
        with self._read() as rows:
            found = rows.all("SELECT record_json FROM tenants ORDER BY tenant_id")
        return tuple(loads(row[0], Tenant) for row in found)

    def get_workflow(
        self, workflow_id: str, version: str, tenant_id: str = DEFAULT_TENANT
    ) -> WorkflowDefinition | None:
        with self._read() as rows:
            return rows.workflow(tenant_id, workflow_id, version)

    def get_execution(self, execution_id: str) -> Execution | None:
        with self._read() as rows:
            row = rows.one(f"{stored.EXECUTION_SELECT} WHERE x.execution_id = ?", (execution_id,))
        return None if row is None else stored.execution(row)

    def list_executions(
        self,
        *,
        tenant_id: str | None = None,
        status: ExecutionStatus | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[Execution]:
        rules.check_limit(limit)
        where = ["x.ordinal > ?"]
        args: list[object] = [rules.decode_cursor(cursor) or 0]
        if tenant_id is not None:
            where.append("x.tenant_id = ?")
            args.append(tenant_id)
        if status is not None:
            where.append("x.status = ?")
            args.append(status.value)
        sql = f"{stored.EXECUTION_SELECT} WHERE {' AND '.join(where)} ORDER BY x.ordinal LIMIT ?"
        with self._read() as rows:
            found = rows.all(sql, [*args, limit + 1])
        page = tuple(stored.execution(row) for row in found[:limit])
        return Page(page, rules.encode_cursor(found[limit - 1][-1]) if len(found) > limit else None)

    def read_events(
        self, execution_id: str, *, after: int = 0, limit: int | None = None
    ) -> tuple[Event, ...]:
        rules.check_read(after, limit)
        with self._read() as rows:
            found = rows.log(execution_id, after, limit)
        return tuple(stored.event(execution_id, row, loads(row[2], EventKind)) for row in found)

    def read_chain(
        self, execution_id: str, *, after: int = 0, limit: int | None = None
    ) -> tuple[ChainLink, ...]:
        rules.check_read(after, limit)
        with self._read() as rows:
            found = rows.log(execution_id, after, limit)
        return tuple(stored.link(execution_id, row) for row in found)

    def latest_snapshot(self, execution_id: str) -> Snapshot | None:
        with self._read() as rows:
            row = rows.one(
                "SELECT at_sequence, state_json, created_at FROM snapshots WHERE execution_id = ?",
                (execution_id,),
            )
        if row is None:
            return None
        return Snapshot(
            execution_id=execution_id, at_sequence=row[0], state=json.loads(row[1]),
            created_at=_time(row[2]),
        )  # fmt: skip

    def compactions(self, execution_id: str) -> tuple[Compaction, ...]:
        with self._read() as rows:
            if rows.one(_EXISTS, (execution_id,)) is None:
                raise NotFound(f"execution {execution_id!r} does not exist")
            return tuple(rows.compactions(execution_id))

    def get_ledger(self, execution_id: str) -> BudgetState:
        with self._read() as rows:
            return rows.ledger(execution_id)

    def get_item(self, item_id: str) -> WorkItem | None:
        with self._read() as rows:
            return rows.item(item_id)

    def limit_charges(
        self, tenant_id: str, limit: str, *, since: datetime
    ) -> tuple[LimitCharge, ...]:
        low = rules.check_since(since, tenant_id, limit)
        with self._read() as rows:
            return limit_rows.charges(rows.all(_LIMIT_SQL[2], (tenant_id, limit, low)))

    def get_effect(self, key: str) -> JsonValue | None:
        with self._read() as rows:
            row = rows.one("SELECT result_json FROM effects WHERE key = ? AND recorded = 1", (key,))
        return None if row is None else json.loads(row[0])

    def pending_approvals(
        self, *, tenant_id: str | None = None, execution_id: str | None = None
    ) -> tuple[PendingApprovalRecord, ...]:
        sql, args = _PENDING_APPROVALS, list(_TERMINAL)
        if tenant_id is not None:
            sql, args = f"{sql} AND a.tenant_id = ?", [*args, tenant_id]
        if execution_id is not None:
            sql, args = f"{sql} AND a.execution_id = ?", [*args, execution_id]
        with self._read() as rows:
            found = rows.all(f"{sql} ORDER BY a.execution_id, a.node_id", args)
        records = (
            rules.pending_record(
                row[0], row[1], row[2], loads(row[3], ApprovalStatus), _time(row[4])
            )
            for row in found
        )
        return tuple(record for record in records if record is not None)
