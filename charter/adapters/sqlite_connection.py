"""The SQLite file under a `charter.adapters.sqlite.SqliteStore`: opening it, one write
transaction at a time, and SQLite's errors as Charter's.

`open_connection` opens (or creates) the file, checks that it is a Charter store this code
can read and migrates it (`charter.adapters.sqlite_schema`), then sets WAL mode, the busy
timeout and the durability level. `WriteTransaction` is one ``BEGIN IMMEDIATE`` transaction
under the connection's lock. Errors are translated at this boundary: a locked database that
stays locked past the timeout is `StoreUnavailable`; a file that is not a SQLite database, is
another application's, is corrupt or is newer than this code is `IncompatibleStore`; a
broken constraint is `Conflict`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import sqlite_utils

from charter.adapters.sqlite_schema import migrate
from charter.core.errors import (
    CharterError,
    Conflict,
    IncompatibleStore,
    StoreError,
    StoreUnavailable,
)

__all__ = ["Synchronous", "WriteTransaction", "open_connection", "translate", "translated"]

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]


def open_connection(
    path: Path, synchronous: Synchronous, busy_timeout_ms: int
) -> sqlite3.Connection:
    """A connection to the store at ``path``, migrated to the latest schema, in WAL mode.
    It may be shared by threads, one at a time (the caller's lock)."""
    if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
    try:
        conn = sqlite3.connect(str(path), timeout=busy_timeout_ms / 1000, check_same_thread=False)
    except sqlite3.Error as error:
        raise StoreUnavailable(f"{path}: cannot open: {error}") from None
    try:
        db = sqlite_utils.Database(conn, execute_plugins=False)
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        migrate(conn, path)
        db.enable_wal()
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("PRAGMA foreign_keys = OFF")
    except BaseException:
        conn.close()
        raise
    return conn


class WriteTransaction:
    """``with WriteTransaction(conn, lock, path) as conn``: lock, ``BEGIN IMMEDIATE``, then
    ``COMMIT`` — or ``ROLLBACK`` on any exception, with SQLite's errors translated. A plain
    class rather than a generator context manager: it wraps every claim and commit."""

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
            raise translate(self._path, error) from None
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
                    raise translate(self._path, failure) from None
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(error, sqlite3.Error):
                raise translate(self._path, error) from None
        finally:
            self._lock.release()


def translate(path: Path, error: sqlite3.Error) -> StoreError:
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
def translated(path: Path) -> Iterator[None]:
    """Run the block with SQLite's errors translated (`translate`)."""
    try:
        yield
    except CharterError:
        raise
    except sqlite3.Error as error:
        raise translate(path, error) from None
