"""The Postgres store's connection to its database: the pool, one transaction per write with
retries, the resolution of a COMMIT whose connection broke, and the translation of psycopg's
errors into Charter's (`charter.adapters.postgres` builds the store on it).

A `Database` holds a connection pool (`psycopg_pool`) on one schema of a database; every call
borrows a connection, so threads share it and processes on any number of machines share the
database. Each session runs at ``READ COMMITTED`` with the schema on its search path, UTC as
its time zone, a ``lock_timeout`` and an ``idle_in_transaction_session_timeout`` (a frozen
worker cannot hold locks forever).

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

import logging
import random
import re
import time
import urllib.parse
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final, TypeVar, cast

import psycopg
from psycopg import pq, sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from charter.adapters.postgres_schema import DEFAULT_SCHEMA, migrate
from charter.core.errors import (
    Conflict,
    IncompatibleStore,
    InvalidInput,
    StoreError,
    StoreUnavailable,
)

__all__ = ["ATTEMPTS", "Database", "DatabaseClock", "InDoubt", "Retry", "is_postgres_url"]

log = logging.getLogger("charter.postgres")

T = TypeVar("T")
Row = tuple[Any, ...]
Connection = psycopg.Connection[Row]
Cursor = psycopg.Cursor[Row]

#: How many times one call is tried when its transaction provably did not commit (a lost
#: connection, a deadlock, a serialization failure) before giving up with StoreUnavailable.
ATTEMPTS: Final = 4

#: Opens a transaction and, in the same round trip, learns its id (to ask the server after a
#: connection lost during COMMIT whether it committed) and the database's time.
_BEGIN: Final = "BEGIN; SELECT pg_current_xact_id()::text, clock_timestamp()"

# SQLSTATEs after which the transaction provably did not commit and trying again may work.
_RETRY_STATES: Final = frozenset({"40001", "40P01"})  # serialization failure, deadlock
# SQLSTATEs that mean the connection is gone (besides class 08, connection exceptions).
_LOST_STATES: Final = frozenset({"57P01", "57P02", "57P03", "25P03"})
_SCHEMA_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_URL_SCHEMES: Final = ("postgresql://", "postgres://")


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


class Retry(Exception):
    """The attempt provably wrote nothing and may be tried again. Raised inside a write's
    work, it rolls the transaction back and runs the work again (a concurrent insert of the
    same key committed first: the next attempt reads it)."""

    def __init__(self, reason: str, *, lost: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.lost = lost


class InDoubt(Exception):
    """The connection broke during COMMIT: the transaction may have committed (internal)."""

    def __init__(self, xid: str, result: object, message: str) -> None:
        super().__init__(message)
        self.xid = xid
        self.result = result
        self.message = message


class Database:
    """A pool of sessions on one schema of a Postgres database (see the module doc); the
    schema is created and migrated on opening unless ``create`` is false."""

    def __init__(
        self,
        url: str,
        *,
        schema: str | None,
        create: bool,
        min_connections: int,
        max_connections: int,
        connect_timeout_secs: int,
        pool_timeout_secs: float,
        lock_timeout_ms: int,
        idle_in_transaction_timeout_ms: int,
    ) -> None:
        conninfo, url_schema = _split_schema(url)
        chosen = _check_schema(schema if schema is not None else (url_schema or DEFAULT_SCHEMA))
        _check_sizes(min_connections, max_connections, pool_timeout_secs)
        for value, field in (
            (connect_timeout_secs, "connect_timeout_secs"),
            (lock_timeout_ms, "lock_timeout_ms"),
            (idle_in_transaction_timeout_ms, "idle_in_transaction_timeout_ms"),
        ):
            _check_positive(value, field)
        self.schema = chosen
        #: Where the store is, for messages: the URL without its password, and the schema.
        self.path = f"{_redact(conninfo)} (schema {chosen})"
        self._pool_timeout = pool_timeout_secs
        self._lock_timeout_ms = lock_timeout_ms
        self._session = _session(chosen, lock_timeout_ms, idle_in_transaction_timeout_ms)
        kwargs = _connect_options(conninfo, connect_timeout_secs)
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

    def _configure(self, conn: Connection) -> None:
        conn.execute(self._session)

    def _migrate(self, conninfo: str, kwargs: dict[str, Any], create: bool) -> None:
        try:
            conn = psycopg.connect(conninfo, **kwargs)
        except psycopg.Error as error:
            raise StoreUnavailable(f"{self.path}: cannot connect: {_message(error)}") from None
        try:
            migrate(conn, self.schema, self.path, create=create)
        except psycopg.Error as error:
            raise self.translate(error) from None
        finally:
            conn.close()

    def close(self) -> None:
        self._pool.close()

    # ── transactions ──

    def write(self, work: Callable[[Cursor, datetime], T]) -> T:
        """Run ``work`` (given a cursor in an open transaction and the database's time when
        it began) in one transaction, retrying an attempt that provably wrote nothing."""
        for attempt in range(1, ATTEMPTS + 1):
            conn = self._checkout()
            doubt: InDoubt | None = None
            try:
                return self._transaction(conn, work)
            except Retry as retry:
                failure = retry
            except InDoubt as in_doubt:
                doubt = in_doubt
            finally:
                self._pool.putconn(conn)  # a broken connection is discarded by the pool
            if doubt is not None:
                try:
                    return cast(T, self.resolve(doubt))
                except Retry as retry:
                    failure = retry
            if attempt == ATTEMPTS:
                raise StoreUnavailable(
                    f"{self.path}: {failure.reason} (nothing was written; "
                    f"gave up after {attempt} attempts)"
                ) from None
            self._before_retry(failure, attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def _transaction(self, conn: Connection, work: Callable[[Cursor, datetime], T]) -> T:
        cursor = conn.cursor()
        try:
            cursor.execute(_BEGIN)
            cursor.nextset()
            begun = cursor.fetchone()
            assert begun is not None
            xid, database_now = begun
            result = work(cursor, database_now)
        except psycopg.Error as error:
            usable = _rollback(conn)
            if not usable or _client_side(error):
                # The session failed on the client's side (say, cut while a pipeline was
                # busy: "cannot exit pipeline mode while busy", an error with no SQLSTATE)
                # or cannot even roll back: its state is unknown, so close it (the pool
                # then discards it). COMMIT was never sent, so nothing was written and the
                # attempt may be tried again.
                conn.close()
                raise Retry(f"connection lost: {_message(error)}", lost=True) from None
            raise self._failure(conn, error) from None
        except UnicodeEncodeError as error:
            _discard_unless(_rollback(conn), conn)
            raise _unencodable(error) from None
        except BaseException:
            _discard_unless(_rollback(conn), conn)
            raise
        try:
            cursor.execute("COMMIT")
        except psycopg.Error as error:
            if not _lost(conn, error):  # the server refused the commit: nothing was written
                _rollback(conn)
                raise self._failure(conn, error) from None
            raise InDoubt(xid, result, _message(error)) from None
        return result

    def resolve(self, doubt: InDoubt) -> object:
        """The connection broke during COMMIT: ask the server whether the transaction
        committed. Its result if it did; `Retry` if it did not."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                status = self.read(_xact_status(doubt.xid))
            except StoreError:
                status = None
            if status == "committed":
                log.info("%s: connection lost during COMMIT, which had committed", self.path)
                return doubt.result
            if status == "aborted":
                raise Retry(f"connection lost during COMMIT: {doubt.message}", lost=True)
            time.sleep(0.05 * attempt)  # unknown or still in progress: ask again shortly
        raise StoreUnavailable(
            f"{self.path}: the connection was lost during COMMIT and the server could not "
            f"say whether the transaction committed ({doubt.message}); the write may or "
            "may not have taken effect"
        )

    def read(self, work: Callable[[Cursor], T]) -> T:
        """Run a read (autocommit statements), retrying on a lost connection."""
        for attempt in range(1, ATTEMPTS + 1):
            conn = self._checkout()
            try:
                return work(conn.cursor())
            except psycopg.Error as error:
                failure = self._failure(conn, error)
                if not isinstance(failure, Retry):
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

    def now(self) -> datetime:
        """The database server's time."""

        def work(cursor: Cursor) -> datetime:
            row = cursor.execute("SELECT clock_timestamp()").fetchone()
            assert row is not None
            moment: datetime = row[0]
            return moment

        return self.read(work)

    # ── failures ──

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

    def _before_retry(self, retry: Retry, attempt: int) -> None:
        log.info("%s: retrying (attempt %d): %s", self.path, attempt + 1, retry.reason)
        if retry.lost:
            # Other idle connections of the pool were probably cut too: test and replace
            # them now rather than failing on each in turn.
            self._pool.check()
        else:  # a deadlock or serialization failure: let the other transaction finish
            time.sleep(random.uniform(0.001, 0.01 * attempt))

    def _failure(self, conn: Connection, error: psycopg.Error) -> Exception:
        """What a failed attempt raises: `Retry` if it provably wrote nothing and may be
        tried again, else the translated error."""
        if _lost(conn, error):
            return Retry(f"connection lost: {_message(error)}", lost=True)
        if error.sqlstate in _RETRY_STATES:
            return Retry(f"{_message(error)}")
        return self.translate(error)

    def translate(self, error: psycopg.Error) -> StoreError | InvalidInput:
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


# ── helpers ──


def _session(schema: str, lock_timeout_ms: int, idle_timeout_ms: int) -> sql.Composed:
    """What every pooled connection runs once, when it is opened."""
    return sql.SQL(
        "SET search_path TO {}; SET TIME ZONE 'UTC'; SET lock_timeout = {}; "
        "SET idle_in_transaction_session_timeout = {}"
    ).format(
        sql.Identifier(schema),
        sql.Literal(f"{int(lock_timeout_ms)}ms"),
        sql.Literal(f"{int(idle_timeout_ms)}ms"),
    )


def _connect_options(conninfo: str, connect_timeout_secs: int) -> dict[str, Any]:
    """psycopg's connection options: autocommit (transactions are begun explicitly), and a
    connect timeout and application name unless the connection string sets them."""
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.Error as error:
        raise InvalidInput("url", f"not a Postgres URL or connection string: {error}") from None
    options: dict[str, Any] = {"autocommit": True}
    if "connect_timeout" not in params:
        options["connect_timeout"] = connect_timeout_secs
    if "application_name" not in params:
        options["application_name"] = "charter"
    return options


def _xact_status(xid: str) -> Callable[[Cursor], str | None]:
    def read(cursor: Cursor) -> str | None:
        row = cursor.execute("SELECT pg_xact_status(%s::xid8)", (xid,)).fetchone()
        return None if row is None else row[0]

    return read


def _lost(conn: Connection, error: psycopg.Error) -> bool:
    """Whether ``error`` means the connection is gone (its transaction died with it)."""
    state = error.sqlstate or ""
    return conn.closed or conn.broken or state.startswith("08") or state in _LOST_STATES


def _rollback(conn: Connection) -> bool:
    """Roll the session's transaction back; whether the session is usable afterwards (open,
    not broken, out of pipeline mode). When it is not, the server rolled back anyway (a
    transaction never outlives its session)."""
    if conn.closed:
        return False
    try:
        conn.execute("ROLLBACK")
    except psycopg.Error as error:  # the connection died: the server rolled back anyway
        log.debug("rollback failed: %s", error)
        return False
    return not conn.broken and conn.pgconn.pipeline_status == pq.PipelineStatus.OFF


def _client_side(error: psycopg.Error) -> bool:
    """Whether ``error`` is the client library's, about the session (no SQLSTATE: not an
    answer of the server's)."""
    return isinstance(error, psycopg.OperationalError) and not error.sqlstate


def _discard_unless(usable: bool, conn: Connection) -> None:
    """Close a session left unusable, so that the pool discards it instead of lending it."""
    if not usable:
        conn.close()


def _message(error: BaseException) -> str:
    """The first line of an error's message (psycopg's may run over several lines)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _unencodable(error: UnicodeEncodeError) -> InvalidInput:
    return InvalidInput(
        "", f"text that is not valid Unicode (e.g. a lone surrogate) cannot be stored: {error}"
    )


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


def _check_sizes(min_connections: int, max_connections: int, pool_timeout_secs: float) -> None:
    _check_positive(min_connections, "min_connections")
    _check_positive(max_connections, "max_connections")
    if max_connections < min_connections:
        raise InvalidInput("max_connections", "must be at least min_connections")
    if not pool_timeout_secs > 0:
        raise InvalidInput("pool_timeout_secs", f"expected > 0, got {pool_timeout_secs!r}")


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
