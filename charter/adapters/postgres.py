"""The Postgres store: the same `Store` port for workers on many machines (psycopg 3).

One store object holds a connection pool (`psycopg_pool`); every call borrows a connection,
so threads share a store and processes on any number of machines share the database. The
rules are the SQLite store's — the same checks (`store_support`) and the same queue plans
(`charter.core.queue`) — so the adapters cannot disagree; what differs is how concurrency is
made safe. Every write is one transaction at Postgres's default ``READ COMMITTED`` level,
made safe by row locks taken in one order (work item → execution → its ledger, snapshot and
approvals):

* **Claims** are one ``UPDATE … WHERE ordinal = (SELECT … FOR UPDATE SKIP LOCKED) RETURNING``:
  concurrent claimers pass over each other's rows instead of queueing behind them.
* **Sequences.** Each execution row carries its last sequence; an append bumps it with
  ``UPDATE executions SET last_sequence = last_sequence + n … RETURNING`` in the statement
  that inserts the events. The row lock is held until commit, so concurrent writers to one
  execution queue for it and its sequences stay gapless, in commit order.
* **Fences** are predicates of the statements that settle (``fence = … AND status =
  'claimed'``) or checks under ``SELECT … FOR UPDATE``; the ledger is changed by increments.
* **Time.** With an injected clock (tests, simulations) every time comes from it, as on
  SQLite. Without one, the database's clock is the only clock: each call reads
  ``clock_timestamp()`` when its transaction begins, events are stamped when their
  execution's row lock is taken, and `PostgresStore.clock` reads the server's time, so
  workers whose clocks disagree still agree on when a lease ran out.

Failures are translated at this boundary — psycopg's exceptions never escape: a lost
connection, a lock wait past ``lock_timeout``, a deadlock or a serialization failure is
`StoreUnavailable` (retryable), an integrity violation `Conflict`, a value Postgres cannot
hold `InvalidInput`, a schema that is not Charter's or is newer `IncompatibleStore`. A call
whose connection breaks *before* its ``COMMIT`` was sent is retried on a fresh connection
(the server had rolled it back, so nothing was written); one whose connection breaks *during*
the ``COMMIT`` asks the server whether its transaction committed (``pg_xact_status``) and
returns its result or retries accordingly, so a dropped connection neither loses nor
doubles a write. Only when the server cannot be asked is the outcome unknown: then the call
raises `StoreUnavailable` saying so.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
import urllib.parse
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Final, TypeVar, cast

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from charter.adapters import store_support as rules
from charter.adapters.chain import GENESIS, canonical_text, event_hash, link_hashes
from charter.adapters.codec import dumps, loads
from charter.adapters.postgres_schema import (
    APPLICATION,
    DEFAULT_SCHEMA,
    LATEST,
    LOCK_CLASS,
    MARKER,
    MIGRATIONS,
)
from charter.core.approvals import (
    ApprovalRefused,
    ApprovalStatus,
    NotRequested,
    Pending,
    decide_approval,
)
from charter.core.budget import BudgetState, Usage, nanos
from charter.core.errors import (
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
from charter.core.materialize import STATUS_KINDS, Materialized, apply_event, status_after
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

__all__ = ["DatabaseClock", "PostgresStore", "is_postgres_url"]

log = logging.getLogger("charter.postgres")

T = TypeVar("T")
Row = tuple[Any, ...]
Connection = psycopg.Connection[Row]
Cursor = psycopg.Cursor[Row]

#: How many times one call is tried when its transaction provably did not commit (a lost
#: connection, a deadlock, a serialization failure) before giving up with StoreUnavailable.
ATTEMPTS: Final = 4

_TERMINAL: Final = [status.value for status in ExecutionStatus if status.terminal]
_ITEM_COLUMNS: Final = (
    "item_id, tenant_id, execution_id, node_id, queue, payload_json, attempt, max_attempts, "
    "backoff_base_ms, status, available_at, created_at, worker_id, lease_expires_at, fence, "
    "last_error"
)
_EXECUTION_COLUMNS: Final = (
    "execution_id, tenant_id, workflow_id, workflow_version, status, initial_input_json, "
    "parent_execution_id, segment_number, created_at, updated_at, last_sequence, ordinal"
)
_APPROVAL_KINDS: Final = (ToolApprovalRequired, ApprovalReceived, ApprovalConsumed)
#: Events that touch a projection (status or approvals); other appends skip the fold.
_PROJECTED: Final = STATUS_KINDS + _APPROVAL_KINDS
_SCHEMA_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_URL_SCHEMES: Final = ("postgresql://", "postgres://")

#: Opens a transaction and, in the same round trip, learns its id (to ask the server after a
#: connection lost during COMMIT whether it committed) and the database's time.
_BEGIN: Final = "BEGIN; SELECT pg_current_xact_id()::text, clock_timestamp()"

# SQLSTATEs after which the transaction provably did not commit and trying again may work.
_RETRY_STATES: Final = frozenset({"40001", "40P01"})  # serialization failure, deadlock
# SQLSTATEs that mean the connection is gone (besides class 08, connection exceptions).
_LOST_STATES: Final = frozenset({"57P01", "57P02", "57P03", "25P03"})


def is_postgres_url(text: str) -> bool:
    """Whether ``text`` names a Postgres database (``postgresql://…`` or ``postgres://…``)."""
    return text.startswith(_URL_SCHEMES)


class DatabaseClock:
    """The database server's clock (``clock_timestamp()``), read through the store's pool: the
    clock a Postgres store without an injected one keeps time by, so that every worker
    judges leases by the same clock."""

    def __init__(self, read: Callable[[], datetime]) -> None:
        self._read = read

    def now(self) -> datetime:
        return self._read()


def _item(row: Row) -> WorkItem:
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
        available_at=row[10],
        created_at=row[11],
        worker_id=row[12],
        lease_expires_at=row[13],
        fence=row[14],
        last_error=row[15],
    )


def _execution(row: Row) -> Execution:
    return Execution(
        execution_id=row[0],
        tenant_id=row[1],
        workflow_id=row[2],
        workflow_version=row[3],
        status=ExecutionStatus(row[4]),
        initial_input=json.loads(row[5]),
        parent_execution_id=row[6],
        segment_number=row[7],
        created_at=row[8],
        updated_at=row[9],
        last_sequence=row[10],
    )


def _chain_existing_events(conn: Connection) -> None:
    """Schema version 2: give every event stored before it its canonical text and its place
    in the chain, each execution its head hash, and keep every tenant's policy set."""
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
            created_at=rules.utc_text(created_at),
            kind_text=text,
            prev_hash=prev,
        )
        conn.execute(
            "UPDATE events SET kind_json = %s, prev_hash = %s, hash = %s "
            "WHERE execution_id = %s AND sequence = %s",
            (text, prev, this, execution_id, sequence),
        )
        conn.execute(
            "UPDATE executions SET head_hash = %s WHERE execution_id = %s", (this, execution_id)
        )
        previous = (execution_id, this)
    for (record,) in conn.execute("SELECT record_json FROM tenants").fetchall():
        tenant = loads(record, Tenant)
        if tenant.policy is not None:
            conn.execute(
                "INSERT INTO policy_sets (digest, set_json) VALUES (%s, %s) "
                "ON CONFLICT (digest) DO NOTHING",
                (tenant.policy.digest, dumps(tenant.policy)),
            )


def _event(execution_id: str, row: Row) -> Event:
    """An event from ``(sequence, event_id, kind_json, created_at[, prev_hash, hash])``."""
    return Event(
        id=row[1],
        execution_id=execution_id,
        sequence=row[0],
        kind=loads(row[2], EventKind),
        created_at=row[3],
        prev_hash=row[4] if len(row) > 4 else "",
        hash=row[5] if len(row) > 5 else "",
    )


class _Tx:
    """One open transaction: its cursor, the call's ``now`` and the stamp for its events
    (``None``: the database clock when the execution's row lock is taken)."""

    __slots__ = ("cursor", "now", "stamp")

    def __init__(self, cursor: Cursor, now: datetime, stamp: datetime | None) -> None:
        self.cursor = cursor
        self.now = now
        self.stamp = stamp

    def one(self, query: str, params: Sequence[Any] | dict[str, Any] = ()) -> Row | None:
        return self.cursor.execute(query, params).fetchone()

    def all(self, query: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Row]:
        return self.cursor.execute(query, params).fetchall()

    def run(self, query: str, params: Sequence[Any] | dict[str, Any] = ()) -> None:
        self.cursor.execute(query, params)


class _Retry(Exception):
    """The attempt provably wrote nothing and may be tried again (internal)."""

    def __init__(self, reason: str, *, lost: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.lost = lost


class _InDoubt(Exception):
    """The connection broke during COMMIT: the transaction may have committed (internal)."""

    def __init__(self, xid: str, result: object, message: str) -> None:
        super().__init__(message)
        self.xid = xid
        self.result = result
        self.message = message


class PostgresStore:
    """A `Store` on a Postgres database, in one schema of it (see the module doc).

    ``url`` is a libpq URL or connection string (``postgresql://user@host:5432/db``); a URL
    may name the schema with a ``schema`` query parameter, which ``schema`` overrides
    (default ``charter``). The schema is created and migrated on first use unless
    ``create`` is false, in which case a schema without a Charter store is `NotFound`.
    ``clock``: inject one for tests; without it the database's clock is used. The pool
    keeps ``min_connections`` to ``max_connections`` connections; a call waits at most
    ``pool_timeout_secs`` for one. Each session waits at most ``lock_timeout_ms`` for a
    row lock, and the server ends a session left idle inside a transaction for
    ``idle_in_transaction_timeout_ms`` (a frozen worker cannot hold locks forever).
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        clock: Clock | None = None,
        new_id: Callable[[], str] | None = None,
        create: bool = True,
        min_connections: int = 1,
        max_connections: int = 10,
        connect_timeout_secs: int = 10,
        pool_timeout_secs: float = 30.0,
        lock_timeout_ms: int = 5000,
        idle_in_transaction_timeout_ms: int = 60_000,
    ) -> None:
        conninfo, url_schema = _split_schema(url)
        chosen = _check_schema(schema if schema is not None else (url_schema or DEFAULT_SCHEMA))
        _check_positive(min_connections, "min_connections")
        _check_positive(max_connections, "max_connections")
        if max_connections < min_connections:
            raise InvalidInput("max_connections", "must be at least min_connections")
        _check_positive(connect_timeout_secs, "connect_timeout_secs")
        _check_positive(lock_timeout_ms, "lock_timeout_ms")
        _check_positive(idle_in_transaction_timeout_ms, "idle_in_transaction_timeout_ms")
        if not pool_timeout_secs > 0:
            raise InvalidInput("pool_timeout_secs", f"expected > 0, got {pool_timeout_secs!r}")
        self.schema = chosen
        #: Where the store is, for messages: the URL without its password, and the schema.
        self.path = f"{_redact(conninfo)} (schema {chosen})"
        self._clock = clock
        self.clock: Clock = clock or DatabaseClock(self._database_now)
        self._new_id = new_id or rules.new_event_id
        self._pool_timeout = pool_timeout_secs
        self._lock_timeout_ms = lock_timeout_ms
        self._closed = False
        try:
            params = conninfo_to_dict(conninfo)
        except psycopg.Error as error:
            raise InvalidInput("url", f"not a Postgres URL or connection string: {error}") from None
        kwargs: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in params:
            kwargs["connect_timeout"] = connect_timeout_secs
        if "application_name" not in params:
            kwargs["application_name"] = "charter"
        self._session = sql.SQL(
            "SET search_path TO {}; SET TIME ZONE 'UTC'; SET lock_timeout = {}; "
            "SET idle_in_transaction_session_timeout = {}"
        ).format(
            sql.Identifier(chosen),
            sql.Literal(f"{int(lock_timeout_ms)}ms"),
            sql.Literal(f"{int(idle_in_transaction_timeout_ms)}ms"),
        )
        self._migrate(conninfo, kwargs, create)
        self._pool: ConnectionPool[Connection] = ConnectionPool(
            conninfo,
            kwargs=kwargs,
            min_size=min_connections,
            max_size=max_connections,
            configure=self._configure,
            timeout=pool_timeout_secs,
            name=f"charter:{chosen}",
            open=True,
        )
        try:
            self._ensure_default_tenant()
        except BaseException:
            self._pool.close()
            raise

    def __repr__(self) -> str:
        return f"PostgresStore({self.path})"

    # ── opening and migrations ──

    def _configure(self, conn: Connection) -> None:
        conn.execute(self._session)

    def _migrate(self, conninfo: str, kwargs: dict[str, Any], create: bool) -> None:
        try:
            conn = psycopg.connect(conninfo, **kwargs)
        except psycopg.Error as error:
            raise StoreUnavailable(f"{self.path}: cannot connect: {_message(error)}") from None
        try:
            version = self._version(conn)
            if version == 0 and not create:
                raise NotFound(f"{self.path}: no Charter store in schema {self.schema!r}")
            for target in sorted(v for v in MIGRATIONS if v > version):
                with conn.transaction():
                    # One process migrates; others wait here, then find it done.
                    conn.execute(
                        "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_CLASS, self.schema)
                    )
                    if self._version(conn) >= target:
                        continue
                    exists = conn.execute(
                        "SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)
                    ).fetchone()
                    if exists is None:  # (CREATE needs a privilege an existing schema does not)
                        conn.execute(
                            sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema))
                        )
                    conn.execute(
                        sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(self.schema))
                    )
                    conn.execute(MIGRATIONS[target])
                    if target == 2:
                        _chain_existing_events(conn)
                    conn.execute(
                        sql.SQL(
                            "INSERT INTO {} (application, version) VALUES (%s, %s) "
                            "ON CONFLICT (singleton) DO UPDATE SET version = excluded.version"
                        ).format(sql.Identifier(MARKER)),
                        (APPLICATION, target),
                    )
                log.info("%s: migrated to schema version %d", self.path, target)
        except psycopg.Error as error:
            raise self._translate(error) from None
        finally:
            conn.close()

    def _version(self, conn: Connection) -> int:
        """The schema's Charter version (0: no store yet); refuses foreign or newer ones."""
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
                (self.schema,),
            ).fetchall()
        ]
        if MARKER not in tables:
            if tables:
                raise IncompatibleStore(
                    f"{self.path}: schema {self.schema!r} holds tables of another application "
                    f"({', '.join(sorted(tables)[:5])}…), not a Charter store; name another "
                    "schema"
                )
            return 0
        row = conn.execute(
            sql.SQL("SELECT application, version FROM {}").format(
                sql.Identifier(self.schema, MARKER)
            )
        ).fetchone()
        if row is None or row[0] != APPLICATION:
            raise IncompatibleStore(
                f"{self.path}: schema {self.schema!r} is marked as {row and row[0]!r}, "
                "not a Charter store"
            )
        version: int = row[1]
        if version > LATEST:
            raise IncompatibleStore(
                f"{self.path}: written by a newer Charter (schema version {version}; this "
                f"Charter reads up to {LATEST}); upgrade Charter to open it"
            )
        return version

    def _ensure_default_tenant(self) -> None:
        def work(tx: _Tx) -> None:
            tenant = Tenant(
                tenant_id=DEFAULT_TENANT, name="Default", created_at=tx.now, updated_at=tx.now
            )
            tx.run(
                "INSERT INTO tenants (tenant_id, record_json) VALUES (%s, %s) "
                "ON CONFLICT (tenant_id) DO NOTHING",
                (DEFAULT_TENANT, dumps(tenant)),
            )

        self._write(work)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._pool.close()

    # ── transactions, retries and error translation ──

    def _checkout(self) -> Connection:
        try:
            return self._pool.getconn(timeout=self._pool_timeout)
        except PoolClosed:
            raise StoreError(f"{self.path}: the store is closed") from None
        except PoolTimeout as error:
            raise StoreUnavailable(
                f"{self.path}: no database connection within {self._pool_timeout:g} s "
                f"({_message(error)})"
            ) from None

    def _write(self, work: Callable[[_Tx], T]) -> T:
        """Run ``work`` in one transaction, retrying an attempt that provably wrote nothing
        (see the module doc)."""
        for attempt in range(1, ATTEMPTS + 1):
            conn = self._checkout()
            doubt: _InDoubt | None = None
            try:
                return self._transaction(conn, work)
            except _Retry as retry:
                failure = retry
            except _InDoubt as in_doubt:
                doubt = in_doubt
            finally:
                self._pool.putconn(conn)  # a broken connection is discarded by the pool
            if doubt is not None:
                try:
                    return cast(T, self._resolve(doubt))
                except _Retry as retry:
                    failure = retry
            if attempt == ATTEMPTS:
                raise StoreUnavailable(
                    f"{self.path}: {failure.reason} (nothing was written; "
                    f"gave up after {attempt} attempts)"
                ) from None
            self._before_retry(failure, attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def _transaction(self, conn: Connection, work: Callable[[_Tx], T]) -> T:
        cursor = conn.cursor()
        try:
            cursor.execute(_BEGIN)
            cursor.nextset()
            begun = cursor.fetchone()
            assert begun is not None
            xid, database_now = begun
            if self._clock is None:
                result = work(_Tx(cursor, database_now, None))
            else:
                now = self._clock.now()
                result = work(_Tx(cursor, now, now))
        except psycopg.Error as error:
            _rollback(conn)
            raise self._failure(conn, error) from None
        except UnicodeEncodeError as error:
            _rollback(conn)
            raise _unencodable(error) from None
        except BaseException:
            _rollback(conn)
            raise
        try:
            cursor.execute("COMMIT")
        except psycopg.Error as error:
            if not _lost(conn, error):  # the server refused the commit: nothing was written
                _rollback(conn)
                raise self._failure(conn, error) from None
            raise _InDoubt(xid, result, _message(error)) from None
        return result

    def _resolve(self, doubt: _InDoubt) -> object:
        """The connection broke during COMMIT: ask the server whether the transaction
        committed. Its result if it did; `_Retry` if it did not."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                status = self._read(_xact_status(doubt.xid))
            except StoreError:
                status = None
            if status == "committed":
                log.info("%s: connection lost during COMMIT, which had committed", self.path)
                return doubt.result
            if status == "aborted":
                raise _Retry(f"connection lost during COMMIT: {doubt.message}", lost=True)
            time.sleep(0.05 * attempt)  # unknown or still in progress: ask again shortly
        raise StoreUnavailable(
            f"{self.path}: the connection was lost during COMMIT and the server could not "
            f"say whether the transaction committed ({doubt.message}); the write may or "
            "may not have taken effect"
        )

    def _read(self, work: Callable[[Cursor], T]) -> T:
        """Run a read (autocommit statements), retrying on a lost connection."""
        for attempt in range(1, ATTEMPTS + 1):
            conn = self._checkout()
            try:
                return work(conn.cursor())
            except psycopg.Error as error:
                failure = self._failure(conn, error)
                if not isinstance(failure, _Retry):
                    raise failure from None
                if attempt == ATTEMPTS:
                    raise StoreUnavailable(
                        f"{self.path}: {failure.reason} (gave up after {attempt} attempts)"
                    ) from None
                retry = failure
            except UnicodeEncodeError as error:
                raise _unencodable(error) from None
            finally:
                self._pool.putconn(conn)
            self._before_retry(retry, attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def _before_retry(self, retry: _Retry, attempt: int) -> None:
        log.info("%s: retrying (attempt %d): %s", self.path, attempt + 1, retry.reason)
        if retry.lost:
            # Other idle connections of the pool were probably cut too: test and replace
            # them now rather than failing on each in turn.
            self._pool.check()
        else:  # a deadlock or serialization failure: let the other transaction finish
            time.sleep(random.uniform(0.001, 0.01 * attempt))

    def _failure(self, conn: Connection, error: psycopg.Error) -> Exception:
        """What a failed attempt raises: `_Retry` if it provably wrote nothing and may be
        tried again, else the translated error."""
        if _lost(conn, error):
            return _Retry(f"connection lost: {_message(error)}", lost=True)
        if error.sqlstate in _RETRY_STATES:
            return _Retry(f"{_message(error)}", lost=False)
        return self._translate(error)

    def _translate(self, error: psycopg.Error) -> StoreError | InvalidInput:
        """psycopg's exceptions as Charter's: callers never see psycopg's."""
        state = error.sqlstate or ""
        message = _message(error)
        if state == "55P03":
            return StoreUnavailable(
                f"{self.path}: a row stayed locked past lock_timeout "
                f"({self._lock_timeout_ms} ms): {message}"
            )
        if state.startswith(("08", "40", "53", "57")) or state in _LOST_STATES:
            return StoreUnavailable(f"{self.path}: {message}")
        if state.startswith("23"):
            return Conflict(f"{self.path}: {message}")
        if state.startswith("22") or isinstance(error, psycopg.DataError):
            return InvalidInput("", f"the database refused a value: {message}")
        if state in ("42P01", "3F000"):
            return IncompatibleStore(
                f"{self.path}: Charter's tables are missing from schema {self.schema!r} "
                f"(dropped while in use?): {message}"
            )
        if state == "42501":
            return StoreError(f"{self.path}: permission denied: {message}")
        if isinstance(error, psycopg.OperationalError):
            return StoreUnavailable(f"{self.path}: {message}")
        return StoreError(f"{self.path}: {message}")

    def _database_now(self) -> datetime:
        def work(cursor: Cursor) -> datetime:
            row = cursor.execute("SELECT clock_timestamp()").fetchone()
            assert row is not None
            now: datetime = row[0]
            return now

        return self._read(work)

    # ── tenants ──

    def put_tenant(self, tenant: Tenant) -> None:
        rules.check_tenant(tenant)
        record = dumps(tenant)

        def work(tx: _Tx) -> None:
            tx.run(
                "INSERT INTO tenants (tenant_id, record_json) VALUES (%s, %s) "
                "ON CONFLICT (tenant_id) DO UPDATE SET record_json = excluded.record_json",
                (tenant.tenant_id, record),
            )
            if tenant.policy is not None:  # kept for good: decisions name it by digest
                tx.run(
                    "INSERT INTO policy_sets (digest, set_json) VALUES (%s, %s) "
                    "ON CONFLICT (digest) DO NOTHING",
                    (tenant.policy.digest, dumps(tenant.policy)),
                )

        self._write(work)

    def get_policy_set(self, digest: str) -> PolicySet | None:
        row = self._read(
            lambda cur: cur.execute(
                "SELECT set_json FROM policy_sets WHERE digest = %s", (digest,)
            ).fetchone()
        )
        return None if row is None else loads(row[0], PolicySet)

    def get_tenant(self, tenant_id: str) -> Tenant | None:
        row = self._read(
            lambda cur: cur.execute(
                "SELECT record_json FROM tenants WHERE tenant_id = %s", (tenant_id,)
            ).fetchone()
        )
        return None if row is None else loads(row[0], Tenant)

    def list_tenants(self) -> tuple[Tenant, ...]:
        rows = self._read(
            lambda cur: cur.execute("SELECT record_json FROM tenants ORDER BY tenant_id").fetchall()
        )
        return tuple(loads(row[0], Tenant) for row in rows)

    @staticmethod
    def _require_tenant(tx: _Tx, tenant_id: str) -> None:
        if tx.one("SELECT 1 FROM tenants WHERE tenant_id = %s", (tenant_id,)) is None:
            raise UnknownTenant("tenant_id", f"unknown tenant {tenant_id!r}")

    # ── workflow definitions ──

    def put_workflow(self, definition: WorkflowDefinition) -> None:
        ir_json = rules.check_workflow(definition)
        key = (definition.tenant_id, definition.workflow_id, definition.version)

        def work(tx: _Tx) -> None:
            self._require_tenant(tx, definition.tenant_id)
            inserted = tx.one(
                "INSERT INTO workflows (tenant_id, workflow_id, version, ir_json, created_at) "
                "VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (tenant_id, workflow_id, version) DO NOTHING RETURNING 1",
                (*key, ir_json, definition.created_at),
            )
            if inserted is not None:
                return
            row = tx.one(
                "SELECT ir_json FROM workflows WHERE tenant_id = %s AND workflow_id = %s "
                "AND version = %s",
                key,
            )
            if row is not None and json.loads(row[0]) != definition.ir:
                raise Conflict(
                    f"workflow {definition.workflow_id!r} version {definition.version!r} "
                    "is already stored with a different definition (versions are immutable)"
                )

        self._write(work)

    def get_workflow(
        self, workflow_id: str, version: str, tenant_id: str = DEFAULT_TENANT
    ) -> WorkflowDefinition | None:
        row = self._read(
            lambda cur: cur.execute(
                "SELECT ir_json, created_at FROM workflows WHERE tenant_id = %s "
                "AND workflow_id = %s AND version = %s",
                (tenant_id, workflow_id, version),
            ).fetchone()
        )
        if row is None:
            return None
        return WorkflowDefinition(
            tenant_id=tenant_id,
            workflow_id=workflow_id,
            version=version,
            ir=json.loads(row[0]),
            created_at=row[1],
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

        def work(tx: _Tx) -> tuple[Event, ...]:
            self._require_tenant(tx, execution.tenant_id)
            # Numbered under the counter row's lock, held until commit: creation order is
            # commit order, so a listing cursor never passes one that commits late.
            counted = tx.one("UPDATE execution_counter SET last = last + 1 RETURNING last")
            assert counted is not None
            if (
                tx.one(
                    "SELECT 1 FROM executions WHERE execution_id = %s", (execution.execution_id,)
                )
                is not None
            ):
                raise Conflict(f"execution {execution.execution_id!r} already exists")
            tx.run(
                f"INSERT INTO executions ({_EXECUTION_COLUMNS}) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 0, %s)",
                (
                    execution.execution_id,
                    execution.tenant_id,
                    execution.workflow_id,
                    execution.workflow_version,
                    ExecutionStatus.PENDING.value,
                    initial,
                    execution.parent_execution_id,
                    execution.segment_number,
                    tx.now,
                    tx.now,
                    counted[0],
                ),
            )
            tx.run("INSERT INTO ledger (execution_id) VALUES (%s)", (execution.execution_id,))
            appended = self._append(tx, execution.execution_id, events, encoded)
            self._enqueue(tx, items, payloads)
            return appended

        return self._write(work)

    def get_execution(self, execution_id: str) -> Execution | None:
        row = self._read(
            lambda cur: cur.execute(
                f"SELECT {_EXECUTION_COLUMNS} FROM executions WHERE execution_id = %s",
                (execution_id,),
            ).fetchone()
        )
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
        where = ["ordinal > %s"]
        args: list[object] = [after]
        if tenant_id is not None:
            where.append("tenant_id = %s")
            args.append(tenant_id)
        if status is not None:
            where.append("status = %s")
            args.append(status.value)
        args.append(limit + 1)
        query = (
            f"SELECT {_EXECUTION_COLUMNS} FROM executions WHERE {' AND '.join(where)} "
            "ORDER BY ordinal LIMIT %s"
        )
        rows = self._read(lambda cur: cur.execute(query, args).fetchall())
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

        def work(tx: _Tx) -> tuple[Event, ...]:
            if events:
                # The compare is part of the statement that takes the row lock and appends.
                appended = self._append(
                    tx, execution_id, events, encoded, expected=expected_last_sequence
                )
            else:
                row = tx.one(
                    "SELECT last_sequence FROM executions WHERE execution_id = %s FOR UPDATE",
                    (execution_id,),
                )
                if row is None:
                    raise NotFound(f"execution {execution_id!r} does not exist")
                if expected_last_sequence is not None and row[0] != expected_last_sequence:
                    raise _moved_on(execution_id, row[0], expected_last_sequence)
                appended = ()
            self._enqueue(tx, items, payloads)
            return appended

        return self._write(work)

    def read_events(
        self, execution_id: str, *, after: int = 0, limit: int | None = None
    ) -> tuple[Event, ...]:
        rules.check_read(after, limit)
        # One statement: no row at all means no such execution; one row of NULLs, no events.
        rows = self._events(execution_id, after, limit)
        return tuple(_event(execution_id, row) for row in rows)

    def read_chain(
        self, execution_id: str, *, after: int = 0, limit: int | None = None
    ) -> tuple[ChainLink, ...]:
        rules.check_read(after, limit)
        return tuple(
            ChainLink(
                execution_id=execution_id,
                sequence=row[0],
                event_id=row[1],
                created_at=rules.utc_text(row[3]),
                kind_text=row[2],
                prev_hash=row[4],
                hash=row[5],
            )
            for row in self._events(execution_id, after, limit)
        )

    def _events(self, execution_id: str, after: int, limit: int | None) -> list[Row]:
        # One statement: no row at all means no such execution; one row of NULLs, no events.
        rows = self._read(
            lambda cur: cur.execute(
                "SELECT v.sequence, v.event_id, v.kind_json, v.created_at, v.prev_hash, v.hash "
                "FROM executions x LEFT JOIN LATERAL (SELECT sequence, event_id, kind_json, "
                "created_at, prev_hash, hash FROM events WHERE execution_id = x.execution_id "
                "AND sequence > %s ORDER BY sequence LIMIT %s) v ON true "
                "WHERE x.execution_id = %s ORDER BY v.sequence",
                (after, limit, execution_id),
            ).fetchall()
        )
        if not rows:
            raise NotFound(f"execution {execution_id!r} does not exist")
        if rows[0][0] is None:
            return []
        return rows

    def latest_snapshot(self, execution_id: str) -> Snapshot | None:
        row = self._read(
            lambda cur: cur.execute(
                "SELECT at_sequence, state_json, created_at FROM snapshots WHERE execution_id = %s",
                (execution_id,),
            ).fetchone()
        )
        if row is None:
            return None
        return Snapshot(
            execution_id=execution_id,
            at_sequence=row[0],
            state=json.loads(row[1]),
            created_at=row[2],
        )

    def get_ledger(self, execution_id: str) -> BudgetState:
        return self._read(lambda cur: _ledger_row(cur, execution_id))

    def _append(
        self,
        tx: _Tx,
        execution_id: str,
        events: Sequence[EventKind],
        encoded: Sequence[str],
        *,
        expected: int | None = None,
    ) -> tuple[Event, ...]:
        """Append events: one statement bumps the execution's counter under its row lock
        and inserts the events numbered from it. With ``expected``, only if the latest
        sequence is still that (compare-and-append)."""
        if not events:
            return ()
        count = len(events)
        ids = [self._new_id() for _ in events]
        # The execution's row lock, taken here and held to commit, queues appenders to one
        # execution: its sequences are gapless, in commit order, and each new event links
        # to the latest one (the chain).
        head = tx.one(_LOCK_HEAD, {"id": execution_id, "stamp": tx.stamp})
        if head is None:
            raise NotFound(f"execution {execution_id!r} does not exist")
        previous, head_hash, status_text, tenant_id, stamp = head
        if expected is not None and previous != expected:
            raise _moved_on(execution_id, previous, expected)
        links = link_hashes(
            execution_id=execution_id,
            first_sequence=previous + 1,
            prev_hash=rules.chain_head(previous, head_hash),
            created_at=rules.utc_text(stamp),
            event_ids=ids,
            kind_texts=encoded,
        )
        tx.run(
            _APPEND,
            {
                "id": execution_id,
                "first": previous + 1,
                "last": previous + count,
                "head": links[-1][1],
                "stamp": stamp,
                "ids": ids,
                "kinds": list(encoded),
                "prevs": [prev for prev, _ in links],
                "hashes": [this for _, this in links],
            },
        )
        appended = tuple(
            Event(
                id=event_id,
                execution_id=execution_id,
                sequence=previous + 1 + index,
                kind=kind,
                created_at=stamp,
                prev_hash=prev,
                hash=this,
            )
            for index, (event_id, kind, (prev, this)) in enumerate(
                zip(ids, events, links, strict=True)
            )
        )
        if any(isinstance(kind, _PROJECTED) for kind in events):
            self._project(tx, execution_id, status_text, tenant_id, appended, stamp)
        return appended

    def _project(
        self,
        tx: _Tx,
        execution_id: str,
        status_text: str,
        tenant_id: str,
        appended: Sequence[Event],
        now: datetime,
    ) -> None:
        """Fold the events into the execution's status and its approval records."""
        status = ExecutionStatus(status_text)
        new_status = status
        for event in appended:
            new_status = status_after(new_status, event.kind)
            if isinstance(event.kind, _APPROVAL_KINDS):
                self._project_approval(tx, tenant_id, event, now)
        if new_status is not status:
            tx.run(
                "UPDATE executions SET status = %s WHERE execution_id = %s",
                (new_status.value, execution_id),
            )

    @staticmethod
    def _project_approval(tx: _Tx, tenant_id: str, event: Event, now: datetime) -> None:
        node_id = event.node_id or ""
        row = tx.one(
            "SELECT status_json, requested_at FROM approvals "
            "WHERE execution_id = %s AND node_id = %s",
            (event.execution_id, node_id),
        )
        current = None if row is None else loads(row[0], ApprovalStatus)
        updated = rules.next_approval(current, event)
        if updated is None:
            return
        fresh = row is None or isinstance(event.kind, ToolApprovalRequired)
        requested = now if fresh or row is None else row[1]
        tx.run(
            "INSERT INTO approvals (execution_id, node_id, tenant_id, status_json, pending, "
            "requested_at) VALUES (%s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (execution_id, node_id) DO UPDATE SET "
            "status_json = excluded.status_json, pending = excluded.pending, "
            "requested_at = excluded.requested_at",
            (
                event.execution_id,
                node_id,
                tenant_id,
                dumps(updated),
                isinstance(updated, Pending),
                requested,
            ),
        )

    @staticmethod
    def _lock_execution(tx: _Tx, execution_id: str) -> int:
        """Lock the execution's row (held to commit); its latest sequence."""
        row = tx.one(
            "SELECT last_sequence FROM executions WHERE execution_id = %s FOR UPDATE",
            (execution_id,),
        )
        assert row is not None  # an item's execution exists
        last: int = row[0]
        return last

    @staticmethod
    def _write_snapshot(tx: _Tx, execution_id: str, now: datetime) -> None:
        """Fold the events since the last snapshot into a new one (under the execution's
        row lock, so two snapshots of one execution are never folded side by side)."""
        row = tx.one(
            "SELECT at_sequence, state_json FROM snapshots WHERE execution_id = %s",
            (execution_id,),
        )
        if row is None:
            found = tx.one(
                "SELECT initial_input_json FROM executions WHERE execution_id = %s",
                (execution_id,),
            )
            assert found is not None
            initial = json.loads(found[0])
            current = Materialized(state=initial if isinstance(initial, dict) else {})
        else:
            current = Materialized.from_json(json.loads(row[1]), row[0])
        rows = tx.all(
            "SELECT sequence, event_id, kind_json, created_at FROM events "
            "WHERE execution_id = %s AND sequence > %s ORDER BY sequence",
            (execution_id, current.last_sequence),
        )
        for event_row in rows:
            current = apply_event(current, _event(execution_id, event_row))
        tx.run(
            "INSERT INTO snapshots (execution_id, at_sequence, state_json, created_at) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (execution_id) DO UPDATE SET "
            "at_sequence = excluded.at_sequence, state_json = excluded.state_json, "
            "created_at = excluded.created_at",
            (
                execution_id,
                current.last_sequence,
                json.dumps(current.to_json(), ensure_ascii=False, separators=(",", ":")),
                now,
            ),
        )

    # ── the work queue ──

    def enqueue(self, items: Sequence[NewWorkItem]) -> tuple[WorkItem, ...]:
        payloads = [rules.check_new_item(item) for item in items]
        return self._write(lambda tx: self._enqueue(tx, items, payloads))

    @staticmethod
    def _enqueue(
        tx: _Tx, items: Sequence[NewWorkItem], payloads: Sequence[str]
    ) -> tuple[WorkItem, ...]:
        """Insert the items in one statement (a fan-out of a thousand nodes is one round
        trip); an id that exists already must have the same content, and is returned."""
        if not items:
            return ()
        rows = tx.all(
            _ENQUEUE,
            {
                "now": tx.now,
                "ids": [item.item_id for item in items],
                "executions": [item.execution_id for item in items],
                "nodes": [item.node_id for item in items],
                "queues": [item.queue for item in items],
                "payloads": list(payloads),
                "max_attempts": [item.max_attempts for item in items],
                "backoffs": [item.backoff_base_ms for item in items],
                "available": [item.available_at or tx.now for item in items],
            },
        )
        inserted = {row[0]: _item(row) for row in rows}
        stored: list[WorkItem] = []
        seen: set[str] = set()
        for new in items:
            fresh = inserted.get(new.item_id)
            if fresh is not None and new.item_id not in seen:
                seen.add(new.item_id)
                stored.append(fresh)
                continue
            if fresh is None:
                row = tx.one(
                    f"SELECT {_ITEM_COLUMNS} FROM work_items WHERE item_id = %s", (new.item_id,)
                )
                if row is None:
                    raise NotFound(f"execution {new.execution_id!r} does not exist")
                fresh = _item(row)
            if not rules.same_item_content(fresh, new):
                raise Conflict(f"work item {new.item_id!r} already exists with other content")
            seen.add(new.item_id)
            stored.append(fresh)
        return tuple(stored)

    def get_item(self, item_id: str) -> WorkItem | None:
        row = self._read(
            lambda cur: cur.execute(
                f"SELECT {_ITEM_COLUMNS} FROM work_items WHERE item_id = %s", (item_id,)
            ).fetchone()
        )
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
        wanted = list(dict.fromkeys(queues))
        sql = _CLAIM if execution_id is None else _CLAIM_OF_EXECUTION

        def work(tx: _Tx) -> Claim | None:
            expires = tx.now + timedelta(seconds=lease_secs)
            row = tx.one(
                sql,
                {
                    "worker": worker_id,
                    "expires": expires,
                    "queues": wanted,
                    "now": tx.now,
                    "execution": execution_id,
                },
            )
            if row is None:
                return None
            item = _item(row)
            started = NodeStarted(node_id=item.node_id, worker_id=worker_id, attempt=item.attempt)
            self._append(tx, item.execution_id, (started,), rules.encode_events((started,)))
            return Claim(item=item, fence=item.fence, lease_expires_at=expires)

        return self._write(work)

    @staticmethod
    def _fenced(tx: _Tx, item_id: str, fence: int) -> WorkItem:
        """The item, locked, if ``fence`` is its current claim's; else `FenceLost`."""
        row = tx.one(
            f"SELECT {_ITEM_COLUMNS} FROM work_items WHERE item_id = %s FOR UPDATE", (item_id,)
        )
        return rules.check_fence(None if row is None else _item(row), item_id, fence)

    def heartbeat(self, item_id: str, fence: int, *, lease_secs: float) -> datetime:
        rules.check_seconds(lease_secs, "lease_secs")

        def work(tx: _Tx) -> datetime:
            expires = tx.now + timedelta(seconds=lease_secs)
            extended = tx.one(
                "UPDATE work_items SET lease_expires_at = %s WHERE item_id = %s AND fence = %s "
                "AND status = 'claimed' RETURNING 1",
                (expires, item_id, fence),
            )
            if extended is None:
                self._fenced(tx, item_id, fence)  # raises NotFound / FenceLost
                raise AssertionError("unreachable: the fence check refused the heartbeat")
            return expires

        return self._write(work)

    def commit(self, request: CommitRequest) -> tuple[Event, ...]:
        encoded = rules.check_commit(request)
        then_encoded, then_payloads = rules.check_follow_up(request)
        effect_json = (
            None if request.effect is None else encode_json(request.effect.result, "effect.result")
        )

        def work(tx: _Tx) -> tuple[Event, ...]:
            # The fence check, the settle and the release of the claim's unrecorded effect
            # reservations are one statement; only a refused commit reads the row again.
            settled = tx.one(
                _SETTLE,
                {"outcome": request.outcome.value, "item": request.item_id, "fence": request.fence},
            )
            if settled is None:
                self._fenced(tx, request.item_id, request.fence)  # raises NotFound/FenceLost
                raise AssertionError("unreachable: the fence check refused the commit")
            execution_id, node_id = settled
            follow_up = False
            if request.then_events or request.then_items:
                # The log the follow-up was planned from, read under the execution's lock.
                last = self._lock_execution(tx, execution_id)
                follow_up = rules.follow_up_applies(request, last, execution_id)
            appended = self._append(tx, execution_id, request.events, encoded)
            if not appended and (
                request.usage is not None or request.succeeded is not None or request.write_snapshot
            ):
                self._lock_execution(tx, execution_id)  # the lock order: item → execution
            self._charge(tx, execution_id, request.usage, request.succeeded)
            if request.effect is not None:
                tx.run(
                    "INSERT INTO effects (key, execution_id, node_id, item_id, fence, expires_at, "
                    "recorded, result_json) VALUES (%s, %s, %s, %s, %s, NULL, true, %s) "
                    "ON CONFLICT (key) DO UPDATE SET recorded = true, result_json = "
                    "excluded.result_json, item_id = excluded.item_id, fence = excluded.fence, "
                    "expires_at = NULL WHERE NOT effects.recorded",
                    (
                        request.effect.key,
                        execution_id,
                        node_id,
                        request.item_id,
                        request.fence,
                        effect_json,
                    ),
                )
            if request.write_snapshot:
                self._write_snapshot(tx, execution_id, tx.now)
            if follow_up:
                appended += self._append(tx, execution_id, request.then_events, then_encoded)
                self._enqueue(tx, request.then_items, then_payloads)
            return appended

        return self._write(work)

    @staticmethod
    def _charge(tx: _Tx, execution_id: str, usage: Usage | None, succeeded: bool | None) -> None:
        """Apply an attempt's usage and outcome to the ledger, as increments (callers hold
        the execution's row lock)."""
        if usage is None and succeeded is None:
            return
        # Computed only to check that no total would leave its bounds (raises if so); the
        # database then applies the same change itself.
        rules.apply_ledger(_ledger_row(tx.cursor, execution_id), usage, succeeded)
        usage = usage or Usage()
        tx.run(
            "UPDATE ledger SET input_tokens = input_tokens + %s, "
            "output_tokens = output_tokens + %s, cost_nanos = cost_nanos + %s, "
            "iterations = iterations + %s, tool_calls = tool_calls + %s, "
            "consecutive_errors = CASE %s::boolean WHEN true THEN 0 "
            "WHEN false THEN consecutive_errors + 1 ELSE consecutive_errors END "
            "WHERE execution_id = %s",
            (
                usage.input_tokens,
                usage.output_tokens,
                nanos(usage.cost_usd),
                usage.iterations,
                usage.tool_calls,
                succeeded,
                execution_id,
            ),
        )

    def park(
        self, item_id: str, fence: int, *, retry_after: datetime, count_attempt: bool = True
    ) -> tuple[Event, ...]:
        rules.check_moment(retry_after, "retry_after")

        def work(tx: _Tx) -> tuple[Event, ...]:
            item = self._fenced(tx, item_id, fence)
            plan = plan_park(item, retry_after=retry_after, count_attempt=count_attempt)
            encoded = rules.encode_events(plan.events)
            if plan.available_at is not None:  # parked, pending again
                tx.run(
                    "UPDATE work_items SET status = 'pending', attempt = %s, available_at = %s, "
                    "worker_id = NULL, lease_expires_at = NULL WHERE item_id = %s",
                    (plan.attempt, plan.available_at, item_id),
                )
            else:  # no attempt left: dead-lettered, like a failure
                self._settle_failure(
                    tx, item, plan.status, plan.attempt, None, error=plan.last_error or ""
                )
            self._release_effects(tx, item_id, fence)
            return self._append(tx, item.execution_id, plan.events, encoded)

        return self._write(work)

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

        def work(tx: _Tx) -> tuple[Event, ...]:
            item = self._fenced(tx, item_id, fence)
            plan = plan_failure(
                item, error=error, retryable=retryable, now=tx.now, delay_ms=delay_ms
            )
            encoded = rules.encode_events(plan.events)
            self._settle_failure(
                tx, item, plan.status, plan.attempt, plan.available_at, error=plan.last_error
            )
            self._release_effects(tx, item_id, fence)
            # Append (which locks the execution) before charging: the lock order.
            appended = self._append(
                tx, item.execution_id, (*events, *plan.events), [*own, *encoded]
            )
            self._charge(tx, item.execution_id, usage, False)
            return appended

        return self._write(work)

    @staticmethod
    def _settle_failure(
        tx: _Tx,
        item: WorkItem,
        status: WorkItemStatus,
        attempt: int,
        available_at: datetime | None,
        *,
        error: str,
    ) -> WorkItem:
        row = tx.one(
            "UPDATE work_items SET status = %s, attempt = %s, available_at = %s, "
            "worker_id = NULL, lease_expires_at = NULL, last_error = %s WHERE item_id = %s "
            f"RETURNING {_ITEM_COLUMNS}",
            (
                status.value,
                attempt,
                available_at or item.available_at,
                _storable(error),
                item.item_id,
            ),
        )
        assert row is not None
        return _item(row)

    def reclaim_expired(self, *, limit: int = 100) -> ReclaimResult:
        rules.check_limit(limit)

        def work(tx: _Tx) -> ReclaimResult:
            # Items a live transaction holds (being committed right now) are passed over.
            rows = tx.all(
                f"SELECT {_ITEM_COLUMNS} FROM work_items WHERE status = 'claimed' "
                "AND lease_expires_at < %s ORDER BY lease_expires_at, ordinal LIMIT %s "
                "FOR UPDATE SKIP LOCKED",
                (tx.now, limit),
            )
            if not rows:
                return ReclaimResult()
            items = [_item(row) for row in rows]
            # Lock their executions in one order, so two reclaimers cannot deadlock.
            tx.run(
                "SELECT 1 FROM executions WHERE execution_id = ANY(%s::text[]) "
                "ORDER BY execution_id FOR UPDATE",
                (sorted({item.execution_id for item in items}),),
            )
            retried: list[WorkItem] = []
            dead: list[WorkItem] = []
            for item in items:
                plan = plan_failure(item, error=LEASE_EXPIRED, retryable=True, now=tx.now)
                updated = self._settle_failure(
                    tx, item, plan.status, plan.attempt, plan.available_at, error=plan.last_error
                )
                self._append(tx, item.execution_id, plan.events, rules.encode_events(plan.events))
                (retried if plan.status is WorkItemStatus.PENDING else dead).append(updated)
            return ReclaimResult(retried=tuple(retried), dead_lettered=tuple(dead))

        return self._write(work)

    # ── approvals ──

    def pending_approvals(
        self, *, tenant_id: str | None = None, execution_id: str | None = None
    ) -> tuple[PendingApprovalRecord, ...]:
        where = ["a.pending", "NOT (e.status = ANY(%s::text[]))"]
        args: list[object] = [_TERMINAL]
        if tenant_id is not None:
            where.append("a.tenant_id = %s")
            args.append(tenant_id)
        if execution_id is not None:
            where.append("a.execution_id = %s")
            args.append(execution_id)
        query = (
            "SELECT a.execution_id, a.node_id, a.tenant_id, a.status_json, a.requested_at "
            "FROM approvals a JOIN executions e ON e.execution_id = a.execution_id "
            f"WHERE {' AND '.join(where)} ORDER BY a.execution_id, a.node_id"
        )
        rows = self._read(lambda cur: cur.execute(query, args).fetchall())
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
                    requested_at=requested_at,
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

        def work(tx: _Tx) -> Event | ApprovalRefused:
            row = tx.one(
                "SELECT status FROM executions WHERE execution_id = %s FOR UPDATE",
                (execution_id,),
            )
            if row is None:
                raise NotFound(f"execution {execution_id!r} does not exist")
            status_value = ExecutionStatus(row[0])
            if status_value.terminal:
                return ApprovalRefused(f"execution {execution_id!r} is {status_value.value}")
            found = tx.one(
                "SELECT status_json FROM approvals WHERE execution_id = %s AND node_id = %s",
                (execution_id, node_id),
            )
            status: ApprovalStatus = (
                loads(found[0], ApprovalStatus) if found is not None else NotRequested()
            )
            answer = decide_approval(
                status, user_id=user_id, decision=decision, comment=comment, state_patch=state_patch
            )
            if isinstance(answer, ApprovalRefused):
                return answer
            (event,) = self._append(tx, execution_id, (answer,), rules.encode_events((answer,)))
            return event

        return self._write(work)

    # ── tool effects ──

    def reserve_effect(
        self, key: str, *, item_id: str, fence: int, ttl_secs: float
    ) -> EffectReservation:
        check_identifier(key, "key")
        rules.check_seconds(ttl_secs, "ttl_secs")

        def work(tx: _Tx) -> EffectReservation:
            item = self._fenced(tx, item_id, fence)
            expires = tx.now + timedelta(seconds=ttl_secs)
            owner = {
                "key": key,
                "execution": item.execution_id,
                "node": item.node_id,
                "item": item_id,
                "fence": fence,
                "expires": expires,
            }
            for _ in range(ATTEMPTS):
                row = tx.one(
                    "SELECT item_id, fence, expires_at, recorded, result_json FROM effects "
                    "WHERE key = %s FOR UPDATE",
                    (key,),
                )
                current = False
                if row is not None and not row[3] and (row[0], row[1]) != (item_id, fence):
                    live = tx.one(
                        "SELECT status = 'claimed' AND fence = %s FROM work_items "
                        "WHERE item_id = %s",
                        (row[1], row[0]),
                    )
                    current = bool(live and live[0])
                outcome = rules.reservation_outcome(
                    recorded=bool(row and row[3]),
                    result=json.loads(row[4]) if row and row[3] else None,
                    owner=(row[0], row[1]) if row else None,
                    owner_claim_current=current,
                    expires_at=row[2] if row else None,
                    claimant=(item_id, fence),
                    now=tx.now,
                )
                if not isinstance(outcome, EffectAcquired | EffectAbandoned):
                    return outcome
                if row is not None:
                    tx.run(
                        "UPDATE effects SET item_id = %(item)s, fence = %(fence)s, "
                        "expires_at = %(expires)s, execution_id = %(execution)s, "
                        "node_id = %(node)s WHERE key = %(key)s",
                        owner,
                    )
                    return outcome
                created = tx.one(
                    "INSERT INTO effects (key, execution_id, node_id, item_id, fence, "
                    "expires_at, recorded, result_json) VALUES (%(key)s, %(execution)s, "
                    "%(node)s, %(item)s, %(fence)s, %(expires)s, false, NULL) "
                    "ON CONFLICT (key) DO NOTHING RETURNING 1",
                    owner,
                )
                if created is not None:
                    return outcome
                # A concurrent reservation of the key committed first: decide again on it.
            raise StoreUnavailable(f"{self.path}: effect {key!r}: reservation kept racing")

        return self._write(work)

    def get_effect(self, key: str) -> JsonValue | None:
        row = self._read(
            lambda cur: cur.execute(
                "SELECT result_json FROM effects WHERE key = %s AND recorded", (key,)
            ).fetchone()
        )
        return None if row is None else json.loads(row[0])

    def record_effect(self, key: str, *, item_id: str, fence: int, result: JsonValue) -> bool:
        check_identifier(key, "key")
        result_json = encode_json(result, "result")

        def work(tx: _Tx) -> bool:
            item = self._fenced(tx, item_id, fence)
            # Atomic "first result wins": the update applies only while none is recorded.
            recorded = tx.one(
                "INSERT INTO effects (key, execution_id, node_id, item_id, fence, expires_at, "
                "recorded, result_json) VALUES (%s, %s, %s, %s, %s, NULL, true, %s) "
                "ON CONFLICT (key) DO UPDATE SET recorded = true, "
                "result_json = excluded.result_json, item_id = excluded.item_id, "
                "fence = excluded.fence, expires_at = NULL WHERE NOT effects.recorded "
                "RETURNING 1",
                (key, item.execution_id, item.node_id, item_id, fence, result_json),
            )
            return recorded is not None

        return self._write(work)

    @staticmethod
    def _release_effects(tx: _Tx, item_id: str, fence: int) -> None:
        tx.run(
            "DELETE FROM effects WHERE item_id = %s AND fence = %s AND NOT recorded",
            (item_id, fence),
        )


# ── statements ──

_LOCK_HEAD: Final = (
    "SELECT last_sequence, head_hash, status, tenant_id, "
    "coalesce(%(stamp)s::timestamptz, clock_timestamp()) FROM executions "
    "WHERE execution_id = %(id)s FOR UPDATE"
)
# Under that lock: the events, numbered and linked, and the execution's new head.
_APPEND: Final = (
    "WITH x AS (UPDATE executions SET last_sequence = %(last)s, head_hash = %(head)s, "
    "updated_at = %(stamp)s WHERE execution_id = %(id)s) "
    "INSERT INTO events (execution_id, sequence, event_id, kind_json, created_at, prev_hash, "
    "hash) SELECT %(id)s, %(first)s + e.ord - 1, e.event_id, e.kind_json, %(stamp)s, e.prev, "
    "e.hash FROM unnest(%(ids)s::text[], %(kinds)s::text[], %(prevs)s::text[], "
    "%(hashes)s::text[]) WITH ORDINALITY AS e(event_id, kind_json, prev, hash, ord)"
)

_ENQUEUE: Final = (
    "INSERT INTO work_items (item_id, tenant_id, execution_id, node_id, queue, payload_json, "
    "attempt, max_attempts, backoff_base_ms, status, available_at, created_at) "
    "SELECT n.item_id, x.tenant_id, n.execution_id, n.node_id, n.queue, n.payload_json, 0, "
    "n.max_attempts, n.backoff_base_ms, 'pending', n.available_at, %(now)s "
    "FROM unnest(%(ids)s::text[], %(executions)s::text[], %(nodes)s::text[], "
    "%(queues)s::text[], %(payloads)s::text[], %(max_attempts)s::bigint[], "
    "%(backoffs)s::bigint[], %(available)s::timestamptz[]) WITH ORDINALITY "
    "AS n(item_id, execution_id, node_id, queue, payload_json, max_attempts, backoff_base_ms, "
    "available_at, ord) JOIN executions x ON x.execution_id = n.execution_id ORDER BY n.ord "
    f"ON CONFLICT (item_id) DO NOTHING RETURNING {_ITEM_COLUMNS}"
)

# The oldest available pending item of the queues, skipping rows other claims hold.
_CLAIM: Final = (
    "UPDATE work_items SET status = 'claimed', worker_id = %(worker)s, "
    "lease_expires_at = %(expires)s, fence = fence + 1 WHERE ordinal = ("
    "SELECT ordinal FROM work_items WHERE status = 'pending' "
    "AND queue = ANY(%(queues)s::text[]) AND available_at <= %(now)s "
    "ORDER BY available_at, ordinal LIMIT 1 FOR UPDATE SKIP LOCKED) "
    f"RETURNING {_ITEM_COLUMNS}"
)

_CLAIM_OF_EXECUTION: Final = (
    "UPDATE work_items SET status = 'claimed', worker_id = %(worker)s, "
    "lease_expires_at = %(expires)s, fence = fence + 1 WHERE ordinal = ("
    "SELECT ordinal FROM work_items WHERE status = 'pending' AND execution_id = %(execution)s "
    "AND queue = ANY(%(queues)s::text[]) AND available_at <= %(now)s "
    "ORDER BY available_at, ordinal LIMIT 1 FOR UPDATE SKIP LOCKED) "
    f"RETURNING {_ITEM_COLUMNS}"
)

_SETTLE: Final = (
    "WITH settled AS (UPDATE work_items SET status = %(outcome)s, worker_id = NULL, "
    "lease_expires_at = NULL WHERE item_id = %(item)s AND fence = %(fence)s "
    "AND status = 'claimed' RETURNING execution_id, node_id), "
    "released AS (DELETE FROM effects WHERE item_id = %(item)s AND fence = %(fence)s "
    "AND NOT recorded AND EXISTS (SELECT 1 FROM settled)) "
    "SELECT execution_id, node_id FROM settled"
)


# ── helpers ──


def _ledger_row(cursor: Cursor, execution_id: str) -> BudgetState:
    row = cursor.execute(
        "SELECT input_tokens, output_tokens, cost_nanos, iterations, tool_calls, "
        "consecutive_errors, breaker_tripped FROM ledger WHERE execution_id = %s",
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


def _xact_status(xid: str) -> Callable[[Cursor], str | None]:
    def read(cursor: Cursor) -> str | None:
        row = cursor.execute("SELECT pg_xact_status(%s::xid8)", (xid,)).fetchone()
        return None if row is None else row[0]

    return read


def _moved_on(execution_id: str, last: int, expected: int) -> Conflict:
    return Conflict(
        f"execution {execution_id!r} moved on: its latest event is {last}, not {expected}"
    )


def _lost(conn: Connection, error: psycopg.Error) -> bool:
    """Whether ``error`` means the connection is gone (its transaction died with it)."""
    state = error.sqlstate or ""
    return conn.closed or conn.broken or state.startswith("08") or state in _LOST_STATES


def _rollback(conn: Connection) -> None:
    if conn.closed:
        return
    try:
        conn.execute("ROLLBACK")
    except psycopg.Error as error:  # the connection died: the server rolled back anyway
        log.debug("rollback failed: %s", error)


def _message(error: BaseException) -> str:
    """The first line of an error's message (psycopg's may run over several lines)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _unencodable(error: UnicodeEncodeError) -> InvalidInput:
    return InvalidInput(
        "", f"text that is not valid Unicode (e.g. a lone surrogate) cannot be stored: {error}"
    )


def _storable(text: str) -> str:
    """A diagnostic string Postgres can hold: NUL characters (which ``text`` cannot) become
    U+FFFD. Only the item's ``last_error`` column goes through here; the event log keeps the
    exact message, escaped in its JSON."""
    return text.replace("\x00", "\ufffd")


def _check_schema(value: object) -> str:
    if not isinstance(value, str) or not _SCHEMA_NAME.fullmatch(value):
        raise InvalidInput(
            "schema",
            "expected a lowercase Postgres name (letters, digits and _, at most 63, not "
            f"starting with a digit), got {value!r}",
        )
    return value


def _check_positive(value: object, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(field, f"expected a positive integer, got {value!r}")


def _split_schema(url: object) -> tuple[str, str | None]:
    """The connection string without a ``schema`` query parameter, and that parameter."""
    if not isinstance(url, str) or not url:
        raise InvalidInput("url", f"expected a Postgres URL or connection string, got {url!r}")
    if not is_postgres_url(url):
        return url, None
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    schemas = [value for name, value in query if name == "schema"]
    if not schemas:
        return url, None
    if len(schemas) > 1:
        raise InvalidInput("url", "the schema parameter is given more than once")
    rest = urllib.parse.urlencode(
        [(name, value) for name, value in query if name != "schema"],
        quote_via=urllib.parse.quote,
    )
    return urllib.parse.urlunsplit(parts._replace(query=rest)), schemas[0]


def _redact(conninfo: str) -> str:
    """The connection string without its password, for messages."""
    if is_postgres_url(conninfo):
        parts = urllib.parse.urlsplit(conninfo)
        if parts.password is not None:
            host = parts.netloc.rsplit("@", 1)[-1]
            user = urllib.parse.quote(parts.username or "", safe="")
            parts = parts._replace(netloc=f"{user}@{host}")
        query = [
            (name, "***" if name == "password" else value)
            for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        ]
        rest = urllib.parse.urlencode(query, quote_via=urllib.parse.quote, safe="*")
        return urllib.parse.urlunsplit(parts._replace(query=rest))
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", conninfo)
