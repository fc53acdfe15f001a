"""The SQLite store: Charter's embedded default (`Store` port on one SQLite file).

Built on sqlite-utils' `Database` (connection, pragmas, migrations). Every write is one
``BEGIN IMMEDIATE`` transaction — it takes the write lock before reading, so a
read-then-write can never be interleaved with another writer — and either commits all of
its statements or none. The file runs in WAL mode with a busy timeout, so several processes
can share it: writers queue for the lock instead of failing.

One store object may be shared by threads (one connection behind a lock). Each process opens
its own store. SQLite errors are translated at this boundary: a locked database that stays
locked past the timeout is `StoreUnavailable`, a file that is not a SQLite database, is
another application's, is corrupt or is newer than this code is `IncompatibleStore`.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal

import sqlite_utils

from charter.adapters import store_support as rules
from charter.adapters.chain import GENESIS, canonical_text, event_hash, link_hashes
from charter.adapters.clock import SystemClock
from charter.adapters.codec import dumps, load, loads
from charter.adapters.sqlite_schema import APPLICATION_ID, LATEST, MIGRATIONS
from charter.core.approvals import (
    ApprovalRefused,
    ApprovalStatus,
    NotRequested,
    Pending,
    decide_approval,
)
from charter.core.budget import MAX_COST_USD, BudgetState, Usage, nanos
from charter.core.errors import (
    CharterError,
    Conflict,
    IncompatibleStore,
    InvalidInput,
    NotFound,
    StoreError,
    StoreUnavailable,
    UnknownTenant,
)
from charter.core.events import (
    ApprovalConsumed,
    ApprovalDecision,
    ApprovalReceived,
    Event,
    EventKind,
    JsonValue,
    NodeStarted,
    ToolApprovalRequired,
)
from charter.core.materialize import (
    MATERIALIZED_TYPES,
    STATUS_KINDS,
    Materialized,
    apply_events,
    status_after,
)
from charter.core.policy import PolicySet
from charter.core.ports import Clock, CommitRequest, ReclaimResult
from charter.core.queue import LEASE_EXPIRED, plan_failure, plan_park
from charter.core.records import (
    DEFAULT_TENANT,
    ChainLink,
    Claim,
    EffectAbandoned,
    EffectAcquired,
    EffectReservation,
    Execution,
    ExecutionStatus,
    NewWorkItem,
    Page,
    PendingApprovalRecord,
    Snapshot,
    Tenant,
    WorkflowDefinition,
    WorkItem,
    WorkItemStatus,
    check_identifier,
    encode_json,
)

__all__ = ["SqliteStore"]

_NO_USAGE: Final = Usage()
#: The ledger's bounds (`charter.core.budget`): counts fit a signed 64-bit column, cost is at
#: most `MAX_COST_USD` in nano-dollars.
_MAX_COUNT: Final = 2**63 - 1
_MAX_NANOS: Final = nanos(MAX_COST_USD)

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]

_TERMINAL: Final = tuple(status.value for status in ExecutionStatus if status.terminal)
_ITEM_COLUMNS: Final = (
    "item_id, tenant_id, execution_id, node_id, queue, payload_json, attempt, max_attempts, "
    "backoff_base_ms, status, available_at, created_at, worker_id, lease_expires_at, fence, "
    "last_error"
)
_EXECUTION_COLUMNS: Final = (
    "execution_id, tenant_id, workflow_id, workflow_version, status, initial_input_json, "
    "parent_execution_id, segment_number, created_at"
)
# An execution's latest sequence and last change are read off its events (the primary key
# makes both one index probe) instead of being rewritten on every append: each append then
# writes only the event rows.
_EXECUTION_SELECT: Final = (
    "SELECT x.execution_id, x.tenant_id, x.workflow_id, x.workflow_version, x.status, "
    "x.initial_input_json, x.parent_execution_id, x.segment_number, x.created_at, "
    "coalesce((SELECT v.created_at FROM events v WHERE v.execution_id = x.execution_id "
    "ORDER BY v.sequence DESC LIMIT 1), x.created_at), "
    "coalesce((SELECT max(v.sequence) FROM events v WHERE v.execution_id = x.execution_id), 0), "
    "x.ordinal FROM executions x"
)
_APPROVAL_KINDS: Final = (ToolApprovalRequired, ApprovalReceived, ApprovalConsumed)
#: Events that touch a projection (status or approvals); other appends skip the fold.
_PROJECTED: Final = STATUS_KINDS + _APPROVAL_KINDS


def _text(moment: datetime) -> str:
    return rules.utc_text(moment)


def _time(text: str) -> datetime:
    # fromisoformat understands the trailing Z (3.11+) and is ~50x faster than strptime.
    return datetime.fromisoformat(text)


def _maybe_time(text: str | None) -> datetime | None:
    return None if text is None else _time(text)


def _item(row: sqlite3.Row | tuple[Any, ...]) -> WorkItem:
    return WorkItem(
        item_id=row[0],
        tenant_id=row[1],
        execution_id=row[2],
        node_id=row[3],
        queue=row[4],
        payload=json.loads(row[5]),
        attempt=row[6],
        max_attempts=row[7],
        backoff_base_ms=row[8],
        status=WorkItemStatus(row[9]),
        available_at=_time(row[10]),
        created_at=_time(row[11]),
        worker_id=row[12],
        lease_expires_at=_maybe_time(row[13]),
        fence=row[14],
        last_error=row[15],
    )


def _execution(row: tuple[Any, ...]) -> Execution:
    # Columns of _EXECUTION_SELECT: the stored ones, then the derived last change and
    # last sequence.
    return Execution(
        execution_id=row[0],
        tenant_id=row[1],
        workflow_id=row[2],
        workflow_version=row[3],
        status=ExecutionStatus(row[4]),
        initial_input=json.loads(row[5]),
        parent_execution_id=row[6],
        segment_number=row[7],
        created_at=_time(row[8]),
        updated_at=_time(row[9]),
        last_sequence=row[10],
    )


class SqliteStore:
    """A `Store` on one SQLite file (see the module doc).

    ``synchronous`` is SQLite's durability setting in WAL mode: ``FULL`` (the default)
    makes every committed transaction durable across power loss; ``NORMAL`` may lose the
    last transactions on power loss (never on a process crash) and is much faster.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Clock | None = None,
        new_id: Callable[[], str] | None = None,
        synchronous: Synchronous = "FULL",
        busy_timeout_ms: int = 5000,
    ) -> None:
        if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
        self.clock: Clock = clock or SystemClock()
        self.path = Path(path)
        self._new_id = new_id or rules.new_event_id
        self._lock = threading.RLock()
        try:
            conn = sqlite3.connect(
                str(self.path), timeout=busy_timeout_ms / 1000, check_same_thread=False
            )
        except sqlite3.Error as error:
            raise StoreUnavailable(f"{self.path}: cannot open: {error}") from None
        self._conn = conn
        self._tenants: dict[str, tuple[str, Tenant]] = {}
        try:
            self._db = sqlite_utils.Database(conn, execute_plugins=False)
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            self._migrate()
            self._db.enable_wal()
            conn.execute(f"PRAGMA synchronous = {synchronous}")
            conn.execute("PRAGMA foreign_keys = OFF")
            self._ensure_default_tenant()
        except BaseException:
            conn.close()
            raise

    # ── opening and migrations ──

    def _migrate(self) -> None:
        conn = self._conn
        try:
            application_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        except sqlite3.DatabaseError as error:
            raise IncompatibleStore(
                f"{self.path}: not a SQLite database, or a corrupt one ({error})"
            ) from None
        if application_id != APPLICATION_ID and (tables or version):
            raise IncompatibleStore(
                f"{self.path}: a SQLite database of another application "
                f"(application_id {application_id:#x}), not a Charter store"
            )
        if version > LATEST:
            raise IncompatibleStore(
                f"{self.path}: written by a newer Charter (schema version {version}; this "
                f"Charter reads up to {LATEST}); upgrade Charter to open it"
            )
        for target in sorted(v for v in MIGRATIONS if v > version):
            with self._immediate():
                # Re-read inside the lock: another process may have migrated meanwhile.
                current = conn.execute("PRAGMA user_version").fetchone()[0]
                if current >= target:
                    continue
                for statement in _statements(MIGRATIONS[target]):
                    conn.execute(statement)
                if target == 2:
                    _chain_existing_events(conn)
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {target}")

    def _ensure_default_tenant(self) -> None:
        now = self.clock.now()
        tenant = Tenant(tenant_id=DEFAULT_TENANT, name="Default", created_at=now, updated_at=now)
        with self._write():
            self._conn.execute(
                "INSERT OR IGNORE INTO tenants (tenant_id, record_json) VALUES (?, ?)",
                (DEFAULT_TENANT, dumps(tenant)),
            )

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # ── transactions and error translation ──

    @contextmanager
    def _immediate(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def _write(self) -> _WriteTransaction:
        """One write transaction (``BEGIN IMMEDIATE``) under the connection's lock, with
        SQLite errors translated to `StoreError`s."""
        return _WriteTransaction(self._conn, self._lock, self.path)

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock, _translated(self.path):
            yield self._conn

    # ── tenants ──

    def put_tenant(self, tenant: Tenant) -> None:
        rules.check_tenant(tenant)
        record = dumps(tenant)
        with self._write() as conn:
            conn.execute(
                "INSERT INTO tenants (tenant_id, record_json) VALUES (?, ?) "
                "ON CONFLICT (tenant_id) DO UPDATE SET record_json = excluded.record_json",
                (tenant.tenant_id, record),
            )
            if tenant.policy is not None:  # kept for good: decisions name it by digest
                conn.execute(
                    "INSERT OR IGNORE INTO policy_sets (digest, set_json) VALUES (?, ?)",
                    (tenant.policy.digest, dumps(tenant.policy)),
                )

    def get_policy_set(self, digest: str) -> PolicySet | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT set_json FROM policy_sets WHERE digest = ?", (digest,)
            ).fetchone()
        return None if row is None else loads(row[0], PolicySet)

    def get_tenant(self, tenant_id: str) -> Tenant | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT record_json FROM tenants WHERE tenant_id = ?", (tenant_id,)
            ).fetchone()
        if row is None:
            return None
        # Decoding compiles the tenant's policy indexes; the decoded record is immutable, so
        # the same stored text (read at every gate) is decoded once. Any update changes the
        # text (it carries updated_at), so a changed policy is never served from here.
        text: str = row[0]
        cached = self._tenants.get(tenant_id)
        if cached is not None and cached[0] == text:
            return cached[1]
        tenant = loads(text, Tenant)
        self._tenants[tenant_id] = (text, tenant)
        return tenant

    def list_tenants(self) -> tuple[Tenant, ...]:
        with self._read() as conn:
            rows = conn.execute("SELECT record_json FROM tenants ORDER BY tenant_id").fetchall()
        return tuple(loads(row[0], Tenant) for row in rows)

    def _require_tenant(self, conn: sqlite3.Connection, tenant_id: str) -> None:
        found = conn.execute("SELECT 1 FROM tenants WHERE tenant_id = ?", (tenant_id,)).fetchone()
        if found is None:
            raise UnknownTenant("tenant_id", f"unknown tenant {tenant_id!r}")

    # ── workflow definitions ──

    def put_workflow(self, definition: WorkflowDefinition) -> None:
        ir_json = rules.check_workflow(definition)
        with self._write() as conn:
            self._require_tenant(conn, definition.tenant_id)
            row = conn.execute(
                "SELECT ir_json FROM workflows WHERE tenant_id = ? AND workflow_id = ? "
                "AND version = ?",
                (definition.tenant_id, definition.workflow_id, definition.version),
            ).fetchone()
            if row is not None:
                if json.loads(row[0]) != definition.ir:
                    raise Conflict(
                        f"workflow {definition.workflow_id!r} version {definition.version!r} "
                        "is already stored with a different definition (versions are immutable)"
                    )
                return
            conn.execute(
                "INSERT INTO workflows (tenant_id, workflow_id, version, ir_json, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    definition.tenant_id,
                    definition.workflow_id,
                    definition.version,
                    ir_json,
                    _text(definition.created_at),
                ),
            )

    def get_workflow(
        self, workflow_id: str, version: str, tenant_id: str = DEFAULT_TENANT
    ) -> WorkflowDefinition | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT ir_json, created_at FROM workflows WHERE tenant_id = ? "
                "AND workflow_id = ? AND version = ?",
                (tenant_id, workflow_id, version),
            ).fetchone()
        if row is None:
            return None
        return WorkflowDefinition(
            tenant_id=tenant_id,
            workflow_id=workflow_id,
            version=version,
            ir=json.loads(row[0]),
            created_at=_time(row[1]),
        )

    # ── executions and events ──

    def create_execution(
        self,
        execution: Execution,
        events: Sequence[EventKind] = (),
        items: Sequence[NewWorkItem] = (),
    ) -> tuple[Event, ...]:
        check_identifier(execution.execution_id, "execution_id")
        check_identifier(execution.tenant_id, "tenant_id")
        check_identifier(execution.workflow_id, "workflow_id")
        check_identifier(execution.workflow_version, "workflow_version")
        initial = encode_json(execution.initial_input, "initial_input")
        encoded = rules.encode_events(events)
        payloads = [rules.check_new_item(item) for item in items]
        for item in items:
            if item.execution_id != execution.execution_id:
                raise InvalidInput("items", "every item must belong to the new execution")
        now = self.clock.now()
        with self._write() as conn:
            self._require_tenant(conn, execution.tenant_id)
            exists = conn.execute(
                "SELECT 1 FROM executions WHERE execution_id = ?", (execution.execution_id,)
            ).fetchone()
            if exists is not None:
                raise Conflict(f"execution {execution.execution_id!r} already exists")
            conn.execute(
                f"INSERT INTO executions ({_EXECUTION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    execution.execution_id,
                    execution.tenant_id,
                    execution.workflow_id,
                    execution.workflow_version,
                    ExecutionStatus.PENDING.value,
                    initial,
                    execution.parent_execution_id,
                    execution.segment_number,
                    _text(now),
                ),
            )
            conn.execute("INSERT INTO ledger (execution_id) VALUES (?)", (execution.execution_id,))
            appended = self._append(conn, execution.execution_id, events, encoded, now)
            self._enqueue(conn, items, payloads, now)
            return appended

    def get_execution(self, execution_id: str) -> Execution | None:
        with self._read() as conn:
            row = conn.execute(
                f"{_EXECUTION_SELECT} WHERE x.execution_id = ?", (execution_id,)
            ).fetchone()
        return None if row is None else _execution(row)

    def list_executions(
        self,
        *,
        tenant_id: str | None = None,
        status: ExecutionStatus | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[Execution]:
        rules.check_limit(limit)
        after = rules.decode_cursor(cursor) or 0
        where = ["x.ordinal > ?"]
        args: list[object] = [after]
        if tenant_id is not None:
            where.append("x.tenant_id = ?")
            args.append(tenant_id)
        if status is not None:
            where.append("x.status = ?")
            args.append(status.value)
        args.append(limit + 1)
        with self._read() as conn:
            rows = conn.execute(
                f"{_EXECUTION_SELECT} WHERE {' AND '.join(where)} ORDER BY x.ordinal LIMIT ?",
                args,
            ).fetchall()
        page = rows[:limit]
        more = len(rows) > limit
        return Page(
            tuple(_execution(row) for row in page),
            rules.encode_cursor(page[-1][-1]) if more else None,
        )

    def append_events(
        self,
        execution_id: str,
        events: Sequence[EventKind],
        *,
        items: Sequence[NewWorkItem] = (),
        expected_last_sequence: int | None = None,
    ) -> tuple[Event, ...]:
        encoded = rules.encode_events(events)
        payloads = [rules.check_new_item(item) for item in items]
        for item in items:
            if item.execution_id != execution_id:
                raise InvalidInput("items", "every item must belong to the execution")
        with self._write() as conn:
            last, head_hash = _head(conn, execution_id)
            # Every execution has its first event from creation on: ask only if none.
            if (
                last == 0
                and conn.execute(
                    "SELECT 1 FROM executions WHERE execution_id = ?", (execution_id,)
                ).fetchone()
                is None
            ):
                raise NotFound(f"execution {execution_id!r} does not exist")
            if expected_last_sequence is not None and last != expected_last_sequence:
                raise Conflict(
                    f"execution {execution_id!r} moved on: its latest event is {last}, "
                    f"not {expected_last_sequence}"
                )
            now = self.clock.now()
            appended = self._append(
                conn, execution_id, events, encoded, now, known=True, head=(last, head_hash)
            )
            self._enqueue(conn, items, payloads, now)
            return appended

    def read_events(
        self, execution_id: str, *, after: int = 0, limit: int | None = None
    ) -> tuple[Event, ...]:
        rules.check_read(after, limit)
        with self._read() as conn:
            rows = conn.execute(
                "SELECT sequence, event_id, kind_json, created_at, prev_hash, hash FROM events "
                "WHERE execution_id = ? AND sequence > ? ORDER BY sequence LIMIT ?",
                (execution_id, after, -1 if limit is None else limit),
            ).fetchall()
            # Events exist only for existing executions: ask only when there are none.
            if not rows and (
                conn.execute(
                    "SELECT 1 FROM executions WHERE execution_id = ?", (execution_id,)
                ).fetchone()
                is None
            ):
                raise NotFound(f"execution {execution_id!r} does not exist")
        return tuple(_event(execution_id, row) for row in rows)

    def read_chain(
        self, execution_id: str, *, after: int = 0, limit: int | None = None
    ) -> tuple[ChainLink, ...]:
        rules.check_read(after, limit)
        with self._read() as conn:
            rows = conn.execute(
                "SELECT sequence, event_id, created_at, kind_json, prev_hash, hash FROM events "
                "WHERE execution_id = ? AND sequence > ? ORDER BY sequence LIMIT ?",
                (execution_id, after, -1 if limit is None else limit),
            ).fetchall()
            if not rows and (
                conn.execute(
                    "SELECT 1 FROM executions WHERE execution_id = ?", (execution_id,)
                ).fetchone()
                is None
            ):
                raise NotFound(f"execution {execution_id!r} does not exist")
        return tuple(
            ChainLink(
                execution_id=execution_id,
                sequence=row[0],
                event_id=row[1],
                created_at=row[2],
                kind_text=row[3],
                prev_hash=row[4],
                hash=row[5],
            )
            for row in rows
        )

    def latest_snapshot(self, execution_id: str) -> Snapshot | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT at_sequence, state_json, created_at FROM snapshots WHERE execution_id = ?",
                (execution_id,),
            ).fetchone()
        if row is None:
            return None
        return Snapshot(
            execution_id=execution_id,
            at_sequence=row[0],
            state=json.loads(row[1]),
            created_at=_time(row[2]),
        )

    def get_ledger(self, execution_id: str) -> BudgetState:
        with self._read() as conn:
            return _ledger_row(conn, execution_id)

    def _append(
        self,
        conn: sqlite3.Connection,
        execution_id: str,
        events: Sequence[EventKind],
        encoded: Sequence[str],
        now: datetime,
        *,
        known: bool = False,
        stamp: str | None = None,
        head: tuple[int, str] | None = None,
    ) -> tuple[Event, ...]:
        """Append events, numbered from one past the largest sequence so far.

        Inside BEGIN IMMEDIATE no other writer can interleave, so the latest sequence (an
        index probe on the events' primary key, or ``last`` when the caller just read it)
        stays the latest until the transaction ends. ``known`` skips the existence check for
        callers that just read the execution through one of its work items.
        """
        if not events:
            return ()
        if (
            not known
            and conn.execute(
                "SELECT 1 FROM executions WHERE execution_id = ?", (execution_id,)
            ).fetchone()
            is None
        ):
            raise NotFound(f"execution {execution_id!r} does not exist")
        if stamp is None:
            stamp = _text(now)
        # One probe for the latest event (inside BEGIN IMMEDIATE nobody can interleave),
        # then one statement for all the rows, each linked to the one before.
        last, head_hash = _head(conn, execution_id) if head is None else head
        new_id = self._new_id
        ids = [new_id() for _ in encoded]
        if len(ids) != len(events):
            raise AssertionError("events and their encodings differ in number")
        links = link_hashes(
            execution_id=execution_id,
            first_sequence=last + 1,
            prev_hash=rules.chain_head(last, head_hash),
            created_at=stamp,
            event_ids=ids,
            kind_texts=encoded,
        )
        rows = [
            (execution_id, last + offset, event_id, text, stamp, prev, this)
            for offset, (event_id, text, (prev, this)) in enumerate(
                zip(ids, encoded, links, strict=True), start=1
            )
        ]
        conn.executemany(
            "INSERT INTO events (execution_id, sequence, event_id, kind_json, created_at, "
            "prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        appended = []
        for kind, (_, sequence, event_id, _, _, prev, this) in zip(events, rows, strict=True):
            appended.append(
                Event(
                    id=event_id,
                    execution_id=execution_id,
                    sequence=sequence,
                    kind=kind,
                    created_at=now,
                    prev_hash=prev,
                    hash=this,
                )
            )
        if any(isinstance(kind, _PROJECTED) for kind in events):
            self._project(conn, execution_id, appended, now)
        return tuple(appended)

    def _project(
        self, conn: sqlite3.Connection, execution_id: str, appended: Sequence[Event], now: datetime
    ) -> None:
        """Fold the events into the execution's status and its approval records."""
        status_text, tenant_id = conn.execute(
            "SELECT status, tenant_id FROM executions WHERE execution_id = ?", (execution_id,)
        ).fetchone()
        status = ExecutionStatus(status_text)
        new_status = status
        for event in appended:
            new_status = status_after(new_status, event.kind)
            if isinstance(event.kind, _APPROVAL_KINDS):
                self._project_approval(conn, tenant_id, event, now)
        if new_status is not status:
            conn.execute(
                "UPDATE executions SET status = ? WHERE execution_id = ?",
                (new_status.value, execution_id),
            )

    def _project_approval(
        self, conn: sqlite3.Connection, tenant_id: str, event: Event, now: datetime
    ) -> None:
        node_id = event.node_id or ""
        row = conn.execute(
            "SELECT status_json, requested_at FROM approvals "
            "WHERE execution_id = ? AND node_id = ?",
            (event.execution_id, node_id),
        ).fetchone()
        current = None if row is None else loads(row[0], ApprovalStatus)
        updated = rules.next_approval(current, event)
        if updated is None:
            return
        fresh = row is None or isinstance(event.kind, ToolApprovalRequired)
        requested = _text(now) if fresh else row[1]
        conn.execute(
            "INSERT INTO approvals (execution_id, node_id, tenant_id, status_json, pending, "
            "requested_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (execution_id, node_id) "
            "DO UPDATE SET status_json = excluded.status_json, pending = excluded.pending, "
            "requested_at = excluded.requested_at",
            (
                event.execution_id,
                node_id,
                tenant_id,
                dumps(updated),
                int(isinstance(updated, Pending)),
                requested,
            ),
        )

    def _write_snapshot(self, conn: sqlite3.Connection, execution_id: str, now: datetime) -> None:
        row = conn.execute(
            "SELECT at_sequence, state_json FROM snapshots WHERE execution_id = ?", (execution_id,)
        ).fetchone()
        if row is None:
            initial = json.loads(
                conn.execute(
                    "SELECT initial_input_json FROM executions WHERE execution_id = ?",
                    (execution_id,),
                ).fetchone()[0]
            )
            current = Materialized(state=initial if isinstance(initial, dict) else {})
        else:
            current = Materialized.from_json(json.loads(row[1]), row[0])
        rows = conn.execute(
            "SELECT sequence, event_id, kind_json, created_at FROM events "
            "WHERE execution_id = ? AND sequence > ? ORDER BY sequence",
            (execution_id, current.last_sequence),
        ).fetchall()
        # Only the kinds that change a snapshot are decoded (a gate decision, say, is not).
        relevant = []
        for sequence, event_id, text, created_at in rows:
            data = json.loads(text)
            if data.get("type") in MATERIALIZED_TYPES:
                relevant.append(
                    Event(
                        id=event_id,
                        execution_id=execution_id,
                        sequence=sequence,
                        kind=load(data, EventKind),
                        created_at=_time(created_at),
                    )
                )
        last = rows[-1][0] if rows else None
        current = apply_events(current, relevant, last_sequence=last)
        conn.execute(
            "INSERT INTO snapshots (execution_id, at_sequence, state_json, created_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (execution_id) DO UPDATE SET "
            "at_sequence = excluded.at_sequence, state_json = excluded.state_json, "
            "created_at = excluded.created_at",
            (
                execution_id,
                current.last_sequence,
                json.dumps(current.to_json(), ensure_ascii=False, separators=(",", ":")),
                _text(now),
            ),
        )

    # ── the work queue ──

    def enqueue(self, items: Sequence[NewWorkItem]) -> tuple[WorkItem, ...]:
        payloads = [rules.check_new_item(item) for item in items]
        with self._write() as conn:
            return self._enqueue(conn, items, payloads, self.clock.now())

    def _enqueue(
        self,
        conn: sqlite3.Connection,
        items: Sequence[NewWorkItem],
        payloads: Sequence[str],
        now: datetime,
    ) -> tuple[WorkItem, ...]:
        stored = []
        for new, payload in zip(items, payloads, strict=True):
            row = conn.execute(
                f"SELECT {_ITEM_COLUMNS} FROM work_items WHERE item_id = ?", (new.item_id,)
            ).fetchone()
            if row is not None:
                existing = _item(row)
                if not rules.same_item_content(existing, new):
                    raise Conflict(f"work item {new.item_id!r} already exists with other content")
                stored.append(existing)
                continue
            owner = conn.execute(
                "SELECT tenant_id FROM executions WHERE execution_id = ?", (new.execution_id,)
            ).fetchone()
            if owner is None:
                raise NotFound(f"execution {new.execution_id!r} does not exist")
            row = conn.execute(
                f"INSERT INTO work_items ({_ITEM_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, 'pending', ?, ?, NULL, NULL, 0, NULL) "
                f"RETURNING {_ITEM_COLUMNS}",
                (
                    new.item_id,
                    owner[0],
                    new.execution_id,
                    new.node_id,
                    new.queue,
                    payload,
                    new.max_attempts,
                    new.backoff_base_ms,
                    _text(new.available_at or now),
                    _text(now),
                ),
            ).fetchone()
            stored.append(_item(row))
        return tuple(stored)

    def get_item(self, item_id: str) -> WorkItem | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_ITEM_COLUMNS} FROM work_items WHERE item_id = ?", (item_id,)
            ).fetchone()
        return None if row is None else _item(row)

    def claim(
        self,
        worker_id: str,
        queues: Sequence[str],
        *,
        lease_secs: float,
        execution_id: str | None = None,
    ) -> Claim | None:
        rules.check_claim_args(worker_id, queues, lease_secs, execution_id)
        if not queues:
            return None
        sql = _claim_sql(len(set(queues)), one_execution=execution_id is not None)
        with self._write() as conn:
            now = self.clock.now()
            stamp = _text(now)
            expires = now + timedelta(seconds=lease_secs)
            per_queue = (stamp,) if execution_id is None else (stamp, execution_id)
            heads = [value for queue in dict.fromkeys(queues) for value in (queue, *per_queue)]
            row = conn.execute(sql, (worker_id, _text(expires), *heads)).fetchone()
            if row is None:
                return None
            item = _item(row)
            started = NodeStarted(node_id=item.node_id, worker_id=worker_id, attempt=item.attempt)
            self._append(
                conn,
                item.execution_id,
                (started,),
                rules.encode_events((started,)),
                now,
                known=True,
                stamp=stamp,
            )
            return Claim(item=item, fence=item.fence, lease_expires_at=expires)

    def _fenced(self, conn: sqlite3.Connection, item_id: str, fence: int) -> WorkItem:
        row = conn.execute(
            f"SELECT {_ITEM_COLUMNS} FROM work_items WHERE item_id = ?", (item_id,)
        ).fetchone()
        return rules.check_fence(None if row is None else _item(row), item_id, fence)

    def heartbeat(self, item_id: str, fence: int, *, lease_secs: float) -> datetime:
        rules.check_seconds(lease_secs, "lease_secs")
        with self._write() as conn:
            self._fenced(conn, item_id, fence)
            expires = self.clock.now() + timedelta(seconds=lease_secs)
            conn.execute(
                "UPDATE work_items SET lease_expires_at = ? WHERE item_id = ?",
                (_text(expires), item_id),
            )
            return expires

    def commit(self, request: CommitRequest) -> tuple[Event, ...]:
        encoded = rules.check_commit(request)
        then_encoded, then_payloads = rules.check_follow_up(request)
        effect_json = (
            None if request.effect is None else encode_json(request.effect.result, "effect.result")
        )
        with self._write() as conn:
            # The fence check and the settle are one statement; only a refused commit reads
            # the row again, to say why.
            settled = conn.execute(
                "UPDATE work_items SET status = ?, worker_id = NULL, lease_expires_at = NULL "
                "WHERE item_id = ? AND fence = ? AND status = 'claimed' "
                "RETURNING execution_id, node_id, reserved",
                (request.outcome.value, request.item_id, request.fence),
            ).fetchone()
            if settled is None:
                self._fenced(conn, request.item_id, request.fence)  # raises NotFound/FenceLost
                raise AssertionError("unreachable: the fence check refused the commit")
            execution_id, node_id, reserved = settled
            now = self.clock.now()
            last, head_hash = _head(conn, execution_id)
            follow_up = rules.follow_up_applies(request, last, execution_id)
            appended = self._append(
                conn, execution_id, request.events, encoded, now, known=True, head=(last, head_hash)
            )
            self._charge(conn, execution_id, request.usage, request.succeeded)
            if request.effect is not None:
                conn.execute(
                    "INSERT INTO effects (key, execution_id, node_id, item_id, fence, expires_at, "
                    "recorded, result_json) VALUES (?, ?, ?, ?, ?, NULL, 1, ?) "
                    "ON CONFLICT (key) DO UPDATE SET recorded = 1, result_json = "
                    "excluded.result_json, item_id = excluded.item_id, fence = excluded.fence, "
                    "expires_at = NULL WHERE effects.recorded = 0",
                    (
                        request.effect.key,
                        execution_id,
                        node_id,
                        request.item_id,
                        request.fence,
                        effect_json,
                    ),
                )
            if reserved:  # (RETURNING gives the row after the update: reset it only now)
                self._release_effects(conn, request.item_id, request.fence)
                conn.execute(
                    "UPDATE work_items SET reserved = 0 WHERE item_id = ?", (request.item_id,)
                )
            if request.write_snapshot:
                self._write_snapshot(conn, execution_id, now)
            if follow_up:
                appended += self._append(
                    conn,
                    execution_id,
                    request.then_events,
                    then_encoded,
                    now,
                    known=True,
                    head=(appended[-1].sequence, appended[-1].hash) if appended else None,
                )
                self._enqueue(conn, request.then_items, then_payloads, now)
            return appended

    def _charge(
        self,
        conn: sqlite3.Connection,
        execution_id: str,
        usage: Usage | None,
        succeeded: bool | None,
    ) -> None:
        if usage is None and succeeded is None:
            return
        usage = usage or _NO_USAGE
        cost = nanos(usage.cost_usd)
        # Increments, not overwrites: the database adds, so two writers can never lose each
        # other's usage even outside this process's lock. The WHERE clause keeps every total
        # within its bounds; when it refuses, the row is read to say which one (or that the
        # execution does not exist).
        updated = conn.execute(
            "UPDATE ledger SET input_tokens = input_tokens + ?1, "
            "output_tokens = output_tokens + ?2, cost_nanos = cost_nanos + ?3, "
            "iterations = iterations + ?4, tool_calls = tool_calls + ?5, "
            "consecutive_errors = CASE ?6 WHEN 1 THEN 0 WHEN 0 THEN consecutive_errors + 1 "
            "ELSE consecutive_errors END "
            "WHERE execution_id = ?7 AND input_tokens <= ?8 - ?1 AND output_tokens <= ?8 - ?2 "
            "AND cost_nanos <= ?9 - ?3 AND iterations <= ?8 - ?4 AND tool_calls <= ?8 - ?5 "
            "AND (?6 IS NOT 0 OR consecutive_errors < ?8)",
            (
                usage.input_tokens,
                usage.output_tokens,
                cost,
                usage.iterations,
                usage.tool_calls,
                None if succeeded is None else int(succeeded),
                execution_id,
                _MAX_COUNT,
                _MAX_NANOS,
            ),
        ).rowcount
        if updated != 1:
            rules.apply_ledger(_ledger_row(conn, execution_id), usage, succeeded)  # raises
            raise AssertionError("unreachable: the ledger refused a change its rules accept")

    def park(
        self, item_id: str, fence: int, *, retry_after: datetime, count_attempt: bool = True
    ) -> tuple[Event, ...]:
        rules.check_moment(retry_after, "retry_after")
        with self._write() as conn:
            item = self._fenced(conn, item_id, fence)
            plan = plan_park(item, retry_after=retry_after, count_attempt=count_attempt)
            encoded = rules.encode_events(plan.events)
            if plan.available_at is not None:  # parked, pending again
                conn.execute(
                    "UPDATE work_items SET status = 'pending', attempt = ?, available_at = ?, "
                    "worker_id = NULL, lease_expires_at = NULL, reserved = 0 WHERE item_id = ?",
                    (plan.attempt, _text(plan.available_at), item_id),
                )
            else:  # no attempt left: dead-lettered, like a failure
                self._settle_failure(
                    conn, item, plan.status, plan.attempt, None, error=plan.last_error or ""
                )
            self._release_effects(conn, item_id, fence)
            now = self.clock.now()
            return self._append(conn, item.execution_id, plan.events, encoded, now, known=True)

    def fail(
        self,
        item_id: str,
        fence: int,
        *,
        error: str,
        retryable: bool = True,
        delay_ms: int | None = None,
        usage: Usage | None = None,
        events: Sequence[EventKind] = (),
    ) -> tuple[Event, ...]:
        rules.check_failure(error, delay_ms)
        own = rules.encode_events(events)
        with self._write() as conn:
            item = self._fenced(conn, item_id, fence)
            now = self.clock.now()
            plan = plan_failure(item, error=error, retryable=retryable, now=now, delay_ms=delay_ms)
            encoded = rules.encode_events(plan.events)
            self._settle_failure(
                conn, item, plan.status, plan.attempt, plan.available_at, error=plan.last_error
            )
            self._release_effects(conn, item_id, fence)
            self._charge(conn, item.execution_id, usage, False)
            return self._append(
                conn, item.execution_id, (*events, *plan.events), [*own, *encoded], now, known=True
            )

    def _settle_failure(
        self,
        conn: sqlite3.Connection,
        item: WorkItem,
        status: WorkItemStatus,
        attempt: int,
        available_at: datetime | None,
        *,
        error: str,
    ) -> WorkItem:
        row = conn.execute(
            "UPDATE work_items SET status = ?, attempt = ?, available_at = ?, worker_id = NULL, "
            f"lease_expires_at = NULL, last_error = ? WHERE item_id = ? RETURNING {_ITEM_COLUMNS}",
            (
                status.value,
                attempt,
                _text(available_at or item.available_at),
                error,
                item.item_id,
            ),
        ).fetchone()
        return _item(row)

    def reclaim_expired(self, *, limit: int = 100) -> ReclaimResult:
        rules.check_limit(limit)
        with self._write() as conn:
            now = self.clock.now()
            rows = conn.execute(
                f"SELECT {_ITEM_COLUMNS} FROM work_items "
                "WHERE status IN ('pending', 'claimed') AND status = 'claimed' "
                "AND lease_expires_at < ? ORDER BY lease_expires_at, ordinal LIMIT ?",
                (_text(now), limit),
            ).fetchall()
            retried: list[WorkItem] = []
            dead: list[WorkItem] = []
            for row in rows:
                item = _item(row)
                plan = plan_failure(item, error=LEASE_EXPIRED, retryable=True, now=now)
                updated = self._settle_failure(
                    conn, item, plan.status, plan.attempt, plan.available_at, error=plan.last_error
                )
                self._append(
                    conn,
                    item.execution_id,
                    plan.events,
                    rules.encode_events(plan.events),
                    now,
                    known=True,
                )
                (retried if plan.status is WorkItemStatus.PENDING else dead).append(updated)
            return ReclaimResult(retried=tuple(retried), dead_lettered=tuple(dead))

    # ── approvals ──

    def pending_approvals(
        self, *, tenant_id: str | None = None, execution_id: str | None = None
    ) -> tuple[PendingApprovalRecord, ...]:
        where = ["a.pending = 1", f"e.status NOT IN ({', '.join('?' for _ in _TERMINAL)})"]
        args: list[object] = list(_TERMINAL)
        if tenant_id is not None:
            where.append("a.tenant_id = ?")
            args.append(tenant_id)
        if execution_id is not None:
            where.append("a.execution_id = ?")
            args.append(execution_id)
        with self._read() as conn:
            rows = conn.execute(
                "SELECT a.execution_id, a.node_id, a.tenant_id, a.status_json, a.requested_at "
                "FROM approvals a JOIN executions e ON e.execution_id = a.execution_id "
                f"WHERE {' AND '.join(where)} ORDER BY a.execution_id, a.node_id",
                args,
            ).fetchall()
        records = []
        for exec_id, node_id, tenant, status_json, requested_at in rows:
            status = loads(status_json, ApprovalStatus)
            if not isinstance(status, Pending):  # pragma: no cover - the flag says pending
                continue
            request = status.request
            records.append(
                PendingApprovalRecord(
                    execution_id=exec_id,
                    tenant_id=tenant,
                    node_id=node_id,
                    tool_name=request.tool_name,
                    approver=request.approver,
                    request_digest=request.request_digest,
                    attempt=request.attempt,
                    context=request.context,
                    sequence=request.sequence,
                    requested_at=_time(requested_at),
                )
            )
        return tuple(records)

    def decide_approval(
        self,
        execution_id: str,
        node_id: str,
        *,
        user_id: str,
        decision: ApprovalDecision,
        comment: str | None = None,
        state_patch: JsonValue = None,
    ) -> Event | ApprovalRefused:
        check_identifier(user_id, "user_id")
        encode_json(state_patch, "state_patch")
        with self._write() as conn:
            row = conn.execute(
                "SELECT status FROM executions WHERE execution_id = ?", (execution_id,)
            ).fetchone()
            if row is None:
                raise NotFound(f"execution {execution_id!r} does not exist")
            status_value = ExecutionStatus(row[0])
            if status_value.terminal:
                return ApprovalRefused(f"execution {execution_id!r} is {status_value.value}")
            found = conn.execute(
                "SELECT status_json FROM approvals WHERE execution_id = ? AND node_id = ?",
                (execution_id, node_id),
            ).fetchone()
            status: ApprovalStatus = (
                loads(found[0], ApprovalStatus) if found is not None else NotRequested()
            )
            answer = decide_approval(
                status, user_id=user_id, decision=decision, comment=comment, state_patch=state_patch
            )
            if isinstance(answer, ApprovalRefused):
                return answer
            encoded = rules.encode_events((answer,))
            (event,) = self._append(conn, execution_id, (answer,), encoded, self.clock.now())
            return event

    # ── tool effects ──

    def reserve_effect(
        self, key: str, *, item_id: str, fence: int, ttl_secs: float
    ) -> EffectReservation:
        check_identifier(key, "key")
        rules.check_seconds(ttl_secs, "ttl_secs")
        with self._write() as conn:
            item = self._fenced(conn, item_id, fence)
            now = self.clock.now()
            row = conn.execute(
                "SELECT e.item_id, e.fence, e.expires_at, e.recorded, e.result_json, "
                "w.status = 'claimed' AND w.fence = e.fence FROM effects e "
                "LEFT JOIN work_items w ON w.item_id = e.item_id WHERE e.key = ?",
                (key,),
            ).fetchone()
            outcome = rules.reservation_outcome(
                recorded=bool(row and row[3]),
                result=json.loads(row[4]) if row and row[3] else None,
                owner=(row[0], row[1]) if row else None,
                owner_claim_current=bool(row and row[5]),
                expires_at=_maybe_time(row[2]) if row else None,
                claimant=(item_id, fence),
                now=now,
            )
            if isinstance(outcome, EffectAcquired | EffectAbandoned):
                conn.execute(
                    "INSERT INTO effects (key, execution_id, node_id, item_id, fence, expires_at, "
                    "recorded, result_json) VALUES (?, ?, ?, ?, ?, ?, 0, NULL) "
                    "ON CONFLICT (key) DO UPDATE SET item_id = excluded.item_id, "
                    "fence = excluded.fence, expires_at = excluded.expires_at, "
                    "execution_id = excluded.execution_id, node_id = excluded.node_id",
                    (
                        key,
                        item.execution_id,
                        item.node_id,
                        item_id,
                        fence,
                        _text(now + timedelta(seconds=ttl_secs)),
                    ),
                )
                conn.execute("UPDATE work_items SET reserved = 1 WHERE item_id = ?", (item_id,))
            return outcome

    def get_effect(self, key: str) -> JsonValue | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT result_json FROM effects WHERE key = ? AND recorded = 1", (key,)
            ).fetchone()
        return None if row is None else json.loads(row[0])

    def record_effect(self, key: str, *, item_id: str, fence: int, result: JsonValue) -> bool:
        check_identifier(key, "key")
        result_json = encode_json(result, "result")
        with self._write() as conn:
            item = self._fenced(conn, item_id, fence)
            recorded = conn.execute(
                "SELECT 1 FROM effects WHERE key = ? AND recorded = 1", (key,)
            ).fetchone()
            if recorded is not None:
                return False
            conn.execute(
                "INSERT INTO effects (key, execution_id, node_id, item_id, fence, expires_at, "
                "recorded, result_json) VALUES (?, ?, ?, ?, ?, NULL, 1, ?) "
                "ON CONFLICT (key) DO UPDATE SET recorded = 1, result_json = excluded.result_json, "
                "item_id = excluded.item_id, fence = excluded.fence, expires_at = NULL",
                (key, item.execution_id, item.node_id, item_id, fence, result_json),
            )
            return True

    def _release_effects(self, conn: sqlite3.Connection, item_id: str, fence: int) -> None:
        conn.execute(
            "DELETE FROM effects WHERE item_id = ? AND fence = ? AND recorded = 0",
            (item_id, fence),
        )


def _head(conn: sqlite3.Connection, execution_id: str) -> tuple[int, str]:
    """The execution's latest sequence and event hash (0 and "" when it has none)."""
    row = conn.execute(
        "SELECT sequence, hash FROM events WHERE execution_id = ? ORDER BY sequence DESC LIMIT 1",
        (execution_id,),
    ).fetchone()
    return (0, "") if row is None else (row[0], row[1])


def _chain_existing_events(conn: sqlite3.Connection) -> None:
    """Schema version 2: give every event stored before it its canonical text and its place
    in the chain, and keep every tenant's policy set by digest."""
    previous: tuple[str, str] | None = None  # (execution, hash of its latest event)
    rows = conn.execute(
        "SELECT execution_id, sequence, event_id, kind_json, created_at FROM events "
        "ORDER BY execution_id, sequence"
    ).fetchall()
    for execution_id, sequence, event_id, kind_json, created_at in rows:
        prev = previous[1] if previous is not None and previous[0] == execution_id else GENESIS
        text = canonical_text(json.loads(kind_json))
        this = event_hash(
            execution_id=execution_id,
            sequence=sequence,
            event_id=event_id,
            created_at=created_at,
            kind_text=text,
            prev_hash=prev,
        )
        conn.execute(
            "UPDATE events SET kind_json = ?, prev_hash = ?, hash = ? "
            "WHERE execution_id = ? AND sequence = ?",
            (text, prev, this, execution_id, sequence),
        )
        previous = (execution_id, this)
    for (record,) in conn.execute("SELECT record_json FROM tenants").fetchall():
        tenant = loads(record, Tenant)
        if tenant.policy is not None:
            conn.execute(
                "INSERT OR IGNORE INTO policy_sets (digest, set_json) VALUES (?, ?)",
                (tenant.policy.digest, dumps(tenant.policy)),
            )


def _ledger_row(conn: sqlite3.Connection, execution_id: str) -> BudgetState:
    row = conn.execute(
        "SELECT input_tokens, output_tokens, cost_nanos, iterations, tool_calls, "
        "consecutive_errors, breaker_tripped FROM ledger WHERE execution_id = ?",
        (execution_id,),
    ).fetchone()
    if row is None:
        raise NotFound(f"execution {execution_id!r} does not exist")
    return BudgetState(
        total_input_tokens=row[0],
        total_output_tokens=row[1],
        total_cost_usd=row[2] / 1_000_000_000,
        iteration_count=row[3],
        tool_call_count=row[4],
        consecutive_error_count=row[5],
        circuit_breaker_tripped=bool(row[6]),
    )


def _event(execution_id: str, row: tuple[Any, ...]) -> Event:
    """An event from ``(sequence, event_id, kind_json, created_at[, prev_hash, hash])``."""
    return Event(
        id=row[1],
        execution_id=execution_id,
        sequence=row[0],
        kind=loads(row[2], EventKind),
        created_at=_time(row[3]),
        prev_hash=row[4] if len(row) > 4 else "",
        hash=row[5] if len(row) > 5 else "",
    )


_HEAD_OF_EXECUTION: Final = (
    "SELECT ordinal, available_at FROM (SELECT ordinal, available_at FROM work_items "
    "WHERE status IN ('pending', 'claimed') AND status = 'pending' AND queue = ? "
    "AND available_at <= ? AND execution_id = ? ORDER BY available_at, ordinal LIMIT 1)"
)
# The oldest available pending item of one queue: a probe of the live index. (The redundant
# `status IN (…)` term lets SQLite use that partial index.)
_HEAD: Final = (
    "SELECT ordinal, available_at FROM (SELECT ordinal, available_at FROM work_items "
    "WHERE status IN ('pending', 'claimed') AND status = 'pending' AND queue = ? "
    "AND available_at <= ? ORDER BY available_at, ordinal LIMIT 1)"
)


@functools.cache
@functools.cache
def _claim_sql(queues: int, *, one_execution: bool = False) -> str:
    """The claim statement for ``queues`` distinct queues: one head probe per queue, then the
    oldest of those heads (so a claim costs one index probe per queue, not a sort of every
    pending item of every queue). With ``one_execution`` each probe walks its queue's live
    items until one of the given execution (``charter run`` on a shared database)."""
    heads = " UNION ALL ".join([_HEAD_OF_EXECUTION if one_execution else _HEAD] * queues)
    return (
        "UPDATE work_items SET status = 'claimed', worker_id = ?, lease_expires_at = ?, "
        f"fence = fence + 1 WHERE ordinal = (SELECT ordinal FROM ({heads}) "
        f"ORDER BY available_at, ordinal LIMIT 1) RETURNING {_ITEM_COLUMNS}"
    )


def _statements(script: str) -> list[str]:
    """The statements of a migration script (``--`` comments removed first, so a comment
    may say anything)."""
    code = "\n".join(line.split("--", 1)[0] for line in script.splitlines())
    return [part.strip() for part in code.split(";") if part.strip()]


class _WriteTransaction:
    """``with store._write() as conn``: lock, ``BEGIN IMMEDIATE``, then ``COMMIT`` — or
    ``ROLLBACK`` on any exception, with SQLite's errors translated. A plain class rather than
    a generator context manager: it wraps every claim and commit."""

    __slots__ = ("_conn", "_lock", "_path")

    def __init__(self, conn: sqlite3.Connection, lock: threading.RLock, path: Path) -> None:
        self._conn = conn
        self._lock = lock
        self._path = path

    def __enter__(self) -> sqlite3.Connection:
        self._lock.acquire()
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as error:
            self._lock.release()
            raise _translate(self._path, error) from None
        except BaseException:
            self._lock.release()
            raise
        return self._conn

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: object
    ) -> None:
        conn = self._conn
        try:
            if kind is None:
                try:
                    conn.execute("COMMIT")
                    return
                except sqlite3.Error as failure:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise _translate(self._path, failure) from None
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(error, sqlite3.Error):
                raise _translate(self._path, error) from None
        finally:
            self._lock.release()


def _translate(path: Path, error: sqlite3.Error) -> StoreError:
    """SQLite's exceptions as Charter's: callers see `StoreError`s, never `sqlite3` ones."""
    message = str(error)
    if isinstance(error, sqlite3.OperationalError):
        if "locked" in message or "busy" in message:
            return StoreUnavailable(f"{path}: database is locked: {message}")
        return StoreError(f"{path}: {message}")
    if isinstance(error, sqlite3.IntegrityError):
        return Conflict(f"{path}: {message}")
    if isinstance(error, sqlite3.DatabaseError):
        return IncompatibleStore(f"{path}: database error (corrupt?): {message}")
    return StoreError(f"{path}: {message}")


@contextmanager
def _translated(path: Path) -> Iterator[None]:
    try:
        yield
    except CharterError:
        raise
    except sqlite3.Error as error:
        raise _translate(path, error) from None
