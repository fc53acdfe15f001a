"""What `charter serve` keeps beside the store: API tokens and the webhook outbox.

A small sibling of the stores, in the same database and opened from the same ``--db``
(`open_service_store`): the tables ``service_tokens`` (each token's id, principal, SHA-256
digest, creation, expiry and revocation; never the token itself) and ``webhook_outbox``
(notifications to deliver, each under a deterministic id so that several servers writing
the same notification write it once, retried with backoff until delivered). The tables are
created if absent; the store's own tables are never touched, so the store and its contract
are exactly as before.

Three implementations: `MemoryServiceStore` (tests, ``memory:``), `SqliteServiceStore` (a
connection of its own to the store's SQLite file, in WAL mode) and `PostgresServiceStore`
(a small pool on the store's schema). Every method is one transaction; times are UTC.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Protocol

import attrs

from charter.core.errors import Conflict, InvalidInput, StoreError

__all__ = [
    "MemoryServiceStore",
    "OutboxEntry",
    "PostgresServiceStore",
    "ServiceStore",
    "SqliteServiceStore",
    "TokenRecord",
    "open_service_store",
]

_MEMORY: Final = "memory:"
_POSTGRES_SCHEMES: Final = ("postgresql://", "postgres://")


@attrs.frozen(kw_only=True)
class TokenRecord:
    """An API token as stored: ``digest`` is the SHA-256 (hex) of the token's text, which
    is never stored. ``user_id`` is the principal every request made with it acts as;
    ``tenant_id``, when set, the only tenant whose runs, approvals and decisions it may see
    and answer (docs/service.md, "Tokens")."""

    token_id: str
    user_id: str
    digest: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    tenant_id: str | None = None

    def usable(self, now: datetime) -> bool:
        """Neither revoked nor expired at ``now``."""
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


@attrs.frozen(kw_only=True)
class OutboxEntry:
    """A notification to deliver: its JSON ``body`` POSTed to ``url``. ``attempts`` counts
    the deliveries begun; ``next_attempt_at`` is when it may be tried (again);
    ``delivered_at`` is set once a receiver accepted it."""

    entry_id: str
    url: str
    body: str
    created_at: datetime
    attempts: int = 0
    next_attempt_at: datetime
    delivered_at: datetime | None = None
    last_error: str | None = None


class ServiceStore(Protocol):
    """Tokens and the webhook outbox (see the module doc)."""

    def add_token(self, record: TokenRecord) -> None:
        """Store a new token; an existing id or digest is `Conflict`."""
        ...

    def token_by_digest(self, digest: str) -> TokenRecord | None: ...

    def list_tokens(self) -> tuple[TokenRecord, ...]:
        """Every token, oldest first."""
        ...

    def revoke_token(self, token_id: str, now: datetime) -> TokenRecord | None:
        """Revoke a token (revoking one already revoked keeps the first time); ``None`` for
        an unknown id."""
        ...

    def enqueue(self, entry: OutboxEntry) -> bool:
        """Add a notification unless one with its id exists; whether it was added."""
        ...

    def claim_due(self, now: datetime, *, lease_secs: float, limit: int) -> tuple[OutboxEntry, ...]:
        """Take up to ``limit`` undelivered entries due at ``now``: each is counted as one
        more attempt and not due again for ``lease_secs`` (so two servers never deliver the
        same entry at once, and one that dies mid-delivery is retried after the lease)."""
        ...

    def delivered(self, entry_id: str, now: datetime) -> None: ...

    def failed(self, entry_id: str, *, error: str, retry_at: datetime) -> None: ...

    def outbox(self) -> tuple[OutboxEntry, ...]:
        """Every entry, oldest first."""
        ...

    def close(self) -> None: ...


def _text(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        raise InvalidInput("time", "expected a timezone-aware time")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _time(text: str | None) -> datetime | None:
    if text is None:
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def _must(text: str) -> datetime:
    moment = _time(text)
    assert moment is not None
    return moment


def _token(row: Any) -> TokenRecord:
    return TokenRecord(
        token_id=row[0],
        user_id=row[1],
        digest=row[2],
        created_at=_must(row[3]),
        expires_at=_time(row[4]),
        revoked_at=_time(row[5]),
        tenant_id=row[6],
    )


def _entry(row: Any) -> OutboxEntry:
    return OutboxEntry(
        entry_id=row[0],
        url=row[1],
        body=row[2],
        created_at=_must(row[3]),
        attempts=row[4],
        next_attempt_at=_must(row[5]),
        delivered_at=_time(row[6]),
        last_error=row[7],
    )


_TOKEN_COLUMNS: Final = "token_id, user_id, digest, created_at, expires_at, revoked_at, tenant_id"
_ENTRY_COLUMNS: Final = (
    "entry_id, url, body, created_at, attempts, next_attempt_at, delivered_at, last_error"
)
_TABLES: Final = (
    """CREATE TABLE IF NOT EXISTS service_tokens (
        token_id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        digest TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL,
        expires_at TEXT,
        revoked_at TEXT,
        tenant_id TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS webhook_outbox (
        entry_id TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at TEXT NOT NULL,
        delivered_at TEXT,
        last_error TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS webhook_outbox_due ON webhook_outbox (next_attempt_at) "
    "WHERE delivered_at IS NULL",
)

#: Tables made before tokens could be scoped to a tenant get the column (NULL: unscoped).
_ADD_TENANT: Final = "ALTER TABLE service_tokens ADD COLUMN tenant_id TEXT"


def _token_values(record: TokenRecord) -> tuple[Any, ...]:
    return (
        record.token_id,
        record.user_id,
        record.digest,
        _text(record.created_at),
        _text(record.expires_at),
        _text(record.revoked_at),
        record.tenant_id,
    )


def _entry_values(entry: OutboxEntry) -> tuple[Any, ...]:
    return (
        entry.entry_id,
        entry.url,
        entry.body,
        _text(entry.created_at),
        entry.attempts,
        _text(entry.next_attempt_at),
        _text(entry.delivered_at),
        entry.last_error,
    )


# ── memory ─────────────────────────────────────────────────────────────────────────────


class MemoryServiceStore:
    """Tokens and the outbox in this process's memory (tests; ``--db memory:``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[str, TokenRecord] = {}
        self._entries: dict[str, OutboxEntry] = {}

    def add_token(self, record: TokenRecord) -> None:
        with self._lock:
            if record.token_id in self._tokens or any(
                t.digest == record.digest for t in self._tokens.values()
            ):
                raise Conflict(f"token {record.token_id!r} exists")
            self._tokens[record.token_id] = record

    def token_by_digest(self, digest: str) -> TokenRecord | None:
        with self._lock:
            return next((t for t in self._tokens.values() if t.digest == digest), None)

    def list_tokens(self) -> tuple[TokenRecord, ...]:
        with self._lock:
            return tuple(sorted(self._tokens.values(), key=lambda t: (t.created_at, t.token_id)))

    def revoke_token(self, token_id: str, now: datetime) -> TokenRecord | None:
        with self._lock:
            record = self._tokens.get(token_id)
            if record is None:
                return None
            if record.revoked_at is None:
                record = attrs.evolve(record, revoked_at=now)
                self._tokens[token_id] = record
            return record

    def enqueue(self, entry: OutboxEntry) -> bool:
        with self._lock:
            if entry.entry_id in self._entries:
                return False
            self._entries[entry.entry_id] = entry
            return True

    def claim_due(self, now: datetime, *, lease_secs: float, limit: int) -> tuple[OutboxEntry, ...]:
        with self._lock:
            due = sorted(
                (
                    e
                    for e in self._entries.values()
                    if e.delivered_at is None and e.next_attempt_at <= now
                ),
                key=lambda e: (e.next_attempt_at, e.entry_id),
            )[:limit]
            taken = []
            for entry in due:
                claimed = attrs.evolve(
                    entry,
                    attempts=entry.attempts + 1,
                    next_attempt_at=now + timedelta(seconds=lease_secs),
                )
                self._entries[entry.entry_id] = claimed
                taken.append(claimed)
            return tuple(taken)

    def delivered(self, entry_id: str, now: datetime) -> None:
        with self._lock:
            entry = self._entries.get(entry_id)
            if entry is not None:
                self._entries[entry_id] = attrs.evolve(entry, delivered_at=now, last_error=None)

    def failed(self, entry_id: str, *, error: str, retry_at: datetime) -> None:
        with self._lock:
            entry = self._entries.get(entry_id)
            if entry is not None and entry.delivered_at is None:
                self._entries[entry_id] = attrs.evolve(
                    entry, last_error=error, next_attempt_at=retry_at
                )

    def outbox(self) -> tuple[OutboxEntry, ...]:
        with self._lock:
            return tuple(sorted(self._entries.values(), key=lambda e: (e.created_at, e.entry_id)))

    def close(self) -> None:
        pass


# ── SQLite ─────────────────────────────────────────────────────────────────────────────


class SqliteServiceStore:
    """The tables in the store's SQLite file, on a connection of their own."""

    def __init__(self, path: Path, *, busy_timeout_ms: int = 5000) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self._conn = sqlite3.connect(
                str(self.path),
                timeout=busy_timeout_ms / 1000,
                check_same_thread=False,
                isolation_level=None,
            )
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            self._conn.execute("PRAGMA journal_mode = WAL")
            with self._write() as conn:
                for statement in _TABLES:
                    conn.execute(statement)
                columns = {row[1] for row in conn.execute("PRAGMA table_info(service_tokens)")}
                if "tenant_id" not in columns:  # a table made before tokens had a tenant
                    conn.execute(_ADD_TENANT)
        except sqlite3.Error as error:
            raise StoreError(f"{self.path}: {error}") from None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            except sqlite3.IntegrityError as error:
                raise Conflict(f"{self.path}: {error}") from None
            except sqlite3.Error as error:
                raise StoreError(f"{self.path}: {error}") from None

    def _read(self, query: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._conn.execute(query, params).fetchall()
            except sqlite3.Error as error:
                raise StoreError(f"{self.path}: {error}") from None

    def add_token(self, record: TokenRecord) -> None:
        with self._write() as conn:
            conn.execute(
                f"INSERT INTO service_tokens ({_TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                _token_values(record),
            )

    def token_by_digest(self, digest: str) -> TokenRecord | None:
        rows = self._read(
            f"SELECT {_TOKEN_COLUMNS} FROM service_tokens WHERE digest = ?", (digest,)
        )
        return _token(rows[0]) if rows else None

    def list_tokens(self) -> tuple[TokenRecord, ...]:
        rows = self._read(
            f"SELECT {_TOKEN_COLUMNS} FROM service_tokens ORDER BY created_at, token_id"
        )
        return tuple(_token(row) for row in rows)

    def revoke_token(self, token_id: str, now: datetime) -> TokenRecord | None:
        with self._write() as conn:
            conn.execute(
                "UPDATE service_tokens SET revoked_at = ? "
                "WHERE token_id = ? AND revoked_at IS NULL",
                (_text(now), token_id),
            )
            rows = conn.execute(
                f"SELECT {_TOKEN_COLUMNS} FROM service_tokens WHERE token_id = ?", (token_id,)
            ).fetchall()
        return _token(rows[0]) if rows else None

    def enqueue(self, entry: OutboxEntry) -> bool:
        with self._write() as conn:
            cursor = conn.execute(
                f"INSERT INTO webhook_outbox ({_ENTRY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (entry_id) DO NOTHING",
                _entry_values(entry),
            )
            return cursor.rowcount == 1

    def claim_due(self, now: datetime, *, lease_secs: float, limit: int) -> tuple[OutboxEntry, ...]:
        until = _text(now + timedelta(seconds=lease_secs))
        with self._write() as conn:
            rows = conn.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM webhook_outbox "
                "WHERE delivered_at IS NULL AND next_attempt_at <= ? "
                "ORDER BY next_attempt_at, entry_id LIMIT ?",
                (_text(now), limit),
            ).fetchall()
            for row in rows:
                conn.execute(
                    "UPDATE webhook_outbox SET attempts = attempts + 1, next_attempt_at = ? "
                    "WHERE entry_id = ?",
                    (until, row[0]),
                )
        return tuple(
            attrs.evolve(_entry(row), attempts=row[4] + 1, next_attempt_at=_must(until or ""))
            for row in rows
        )

    def delivered(self, entry_id: str, now: datetime) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE webhook_outbox SET delivered_at = ?, last_error = NULL WHERE entry_id = ?",
                (_text(now), entry_id),
            )

    def failed(self, entry_id: str, *, error: str, retry_at: datetime) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE webhook_outbox SET last_error = ?, next_attempt_at = ? "
                "WHERE entry_id = ? AND delivered_at IS NULL",
                (error, _text(retry_at), entry_id),
            )

    def outbox(self) -> tuple[OutboxEntry, ...]:
        rows = self._read(
            f"SELECT {_ENTRY_COLUMNS} FROM webhook_outbox ORDER BY created_at, entry_id"
        )
        return tuple(_entry(row) for row in rows)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


# ── Postgres ───────────────────────────────────────────────────────────────────────────


class PostgresServiceStore:
    """The tables in the store's Postgres schema (``?schema=NAME`` of the URL, as the
    store), on a small connection pool of their own."""

    def __init__(self, url: str, *, max_connections: int = 4) -> None:
        from psycopg import sql
        from psycopg_pool import ConnectionPool

        from charter.adapters.postgres_connection import _split_schema
        from charter.adapters.postgres_schema import DEFAULT_SCHEMA

        conninfo, schema = _split_schema(url)
        self.schema = schema or DEFAULT_SCHEMA
        search_path = sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema))

        def configure(conn: Any) -> None:
            conn.execute(search_path)
            conn.execute("SET TIME ZONE 'UTC'")

        self._pool = ConnectionPool(
            conninfo,
            min_size=1,
            max_size=max_connections,
            kwargs={"autocommit": True},
            configure=configure,
            open=True,
            name="charter-service",
        )
        with self._pool.connection() as conn, conn.transaction():
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext('charter-service'), hashtext(%s))",
                (self.schema,),
            )
            for statement in _TABLES:
                conn.execute(statement)
            conn.execute(_ADD_TENANT.replace("ADD COLUMN", "ADD COLUMN IF NOT EXISTS"))

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        import psycopg

        try:
            with self._pool.connection() as conn, conn.transaction():
                yield conn
        except psycopg.errors.UniqueViolation as error:
            raise Conflict(f"schema {self.schema}: {error}") from None
        except psycopg.Error as error:
            raise StoreError(f"schema {self.schema}: {error}") from None

    def add_token(self, record: TokenRecord) -> None:
        with self._tx() as conn:
            conn.execute(
                f"INSERT INTO service_tokens ({_TOKEN_COLUMNS}) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                _token_values(record),
            )

    def token_by_digest(self, digest: str) -> TokenRecord | None:
        with self._tx() as conn:
            row = conn.execute(
                f"SELECT {_TOKEN_COLUMNS} FROM service_tokens WHERE digest = %s", (digest,)
            ).fetchone()
        return _token(row) if row else None

    def list_tokens(self) -> tuple[TokenRecord, ...]:
        with self._tx() as conn:
            rows = conn.execute(
                f"SELECT {_TOKEN_COLUMNS} FROM service_tokens ORDER BY created_at, token_id"
            ).fetchall()
        return tuple(_token(row) for row in rows)

    def revoke_token(self, token_id: str, now: datetime) -> TokenRecord | None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE service_tokens SET revoked_at = %s "
                "WHERE token_id = %s AND revoked_at IS NULL",
                (_text(now), token_id),
            )
            row = conn.execute(
                f"SELECT {_TOKEN_COLUMNS} FROM service_tokens WHERE token_id = %s", (token_id,)
            ).fetchone()
        return _token(row) if row else None

    def enqueue(self, entry: OutboxEntry) -> bool:
        with self._tx() as conn:
            cursor = conn.execute(
                f"INSERT INTO webhook_outbox ({_ENTRY_COLUMNS}) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (entry_id) DO NOTHING",
                _entry_values(entry),
            )
            return bool(cursor.rowcount == 1)

    def claim_due(self, now: datetime, *, lease_secs: float, limit: int) -> tuple[OutboxEntry, ...]:
        until = _text(now + timedelta(seconds=lease_secs))
        with self._tx() as conn:
            rows = conn.execute(
                f"UPDATE webhook_outbox SET attempts = attempts + 1, next_attempt_at = %s "
                "WHERE entry_id IN (SELECT entry_id FROM webhook_outbox "
                "WHERE delivered_at IS NULL AND next_attempt_at <= %s "
                "ORDER BY next_attempt_at, entry_id LIMIT %s FOR UPDATE SKIP LOCKED) "
                f"RETURNING {_ENTRY_COLUMNS}",
                (until, _text(now), limit),
            ).fetchall()
        return tuple(sorted((_entry(row) for row in rows), key=lambda e: e.entry_id))

    def delivered(self, entry_id: str, now: datetime) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE webhook_outbox SET delivered_at = %s, last_error = NULL "
                "WHERE entry_id = %s",
                (_text(now), entry_id),
            )

    def failed(self, entry_id: str, *, error: str, retry_at: datetime) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE webhook_outbox SET last_error = %s, next_attempt_at = %s "
                "WHERE entry_id = %s AND delivered_at IS NULL",
                (error, _text(retry_at), entry_id),
            )

    def outbox(self) -> tuple[OutboxEntry, ...]:
        with self._tx() as conn:
            rows = conn.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM webhook_outbox ORDER BY created_at, entry_id"
            ).fetchall()
        return tuple(_entry(row) for row in rows)

    def close(self) -> None:
        self._pool.close()


def open_service_store(target: str | Path) -> ServiceStore:
    """The service tables beside the store ``target`` names (as `charter.bootstrap.
    open_store`: ``memory:``, a ``postgresql://`` URL or a SQLite path). Open the store
    first: it creates the database these tables live in."""
    if isinstance(target, str) and target == _MEMORY:
        return MemoryServiceStore()
    if isinstance(target, str) and target.startswith(_POSTGRES_SCHEMES):
        return PostgresServiceStore(target)
    if isinstance(target, str) and "://" in target:
        raise InvalidInput("--db", "not a store: expected memory:, a SQLite path or a URL")
    return SqliteServiceStore(Path(target))
