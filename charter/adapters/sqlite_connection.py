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
from typing import Final, Literal

import sqlite_utils

from charter.adapters.sqlite_schema import APPLICATION_ID, LATEST, migrate
from charter.core.errors import (
    CharterError,
    Conflict,
    IncompatibleStore,
    StoreError,
    StoreUnavailable,
)

__all__ = [
    "Synchronous",
    "WriteTransaction",
    "open_connection",
    "open_read_only",
    "translate",
    "translated",
]

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]


def open_connection(
    path: Path, synchronous: Synchronous, busy_timeout_ms: int, *, read_only: bool = False
) -> sqlite3.Connection:
    """A connection to the store at ``path``, migrated to the latest schema, in WAL mode.
    It may be shared by threads, one at a time (the caller's lock).

    ``read_only`` opens an existing store only to read it (`open_read_only`): nothing is
    created, migrated or switched to WAL, and SQLite refuses every write."""
    if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
    if read_only:
        return open_read_only(path, busy_timeout_ms)
    try:
        conn = sqlite3.connect(str(path), timeout=busy_timeout_ms / 1000, check_same_thread=False)
    except sqlite3.Error as error:
        raise StoreUnavailable(f"{path}: cannot open: {error}") from None
    try:
        db = sqlite_utils.Database(conn, execute_plugins=False)
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        _probe_writable(conn, path)
        migrate(conn, path)
        db.enable_wal()
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("PRAGMA foreign_keys = OFF")
    except sqlite3.Error as error:
        conn.close()
        raise translate(path, error) from None
    except BaseException:
        conn.close()
        raise
    return conn


def _probe_writable(conn: sqlite3.Connection, path: Path) -> None:
    """A first read, which fails at once when SQLite opened the file read-only (its file or
    directory cannot be written) and the file is in WAL mode."""
    try:
        conn.execute("PRAGMA user_version").fetchone()
    except sqlite3.Error as error:
        if _primary_code(error) in _NO_SHM:
            raise StoreError(
                f"{path}: cannot be written (the file or its directory is read-only): "
                "this command writes; status, events, approvals and audit can read it"
            ) from None
        # Anything else (not a database, corrupt) is `migrate`'s to report.


def open_read_only(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    """A connection that only reads the existing store at ``path``: opened with SQLite's
    ``mode=ro`` (a read-only file and directory are fine) and ``PRAGMA query_only``, so no
    statement can write. Nothing is migrated: a store at an older schema version is
    `IncompatibleStore`, saying a command that writes must migrate it first.

    Where the file's directory cannot hold SQLite's shared-memory file (``-shm``) and
    none exists, no other connection is using the file; it is then read as
    ``immutable``, which needs no shared memory."""
    uri = f"{path.resolve().as_uri()}?mode=ro"
    conn = _connect_uri(path, uri, busy_timeout_ms)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        conn.execute("PRAGMA query_only = ON")
        try:
            check_readable(conn, path)
        except sqlite3.OperationalError as error:
            # SQLITE_READONLY_CANTINIT / SQLITE_CANTOPEN: no -shm, and none can be made.
            if _primary_code(error) not in _NO_SHM or Path(f"{path}-shm").exists():
                raise
            conn.close()
            conn = _connect_uri(path, f"{uri}&immutable=1", busy_timeout_ms)
            conn.execute("PRAGMA query_only = ON")
            check_readable(conn, path)
    except sqlite3.Error as error:
        conn.close()
        raise translate(path, error) from None
    except BaseException:
        conn.close()
        raise
    return conn


def check_readable(conn: sqlite3.Connection, path: Path) -> None:
    """That ``conn`` holds a Charter store at the latest schema version, without changing
    it (`migrate` checks the same, then migrates)."""
    try:
        application_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as error:
        if isinstance(error, sqlite3.OperationalError) and _primary_code(error) in _NO_SHM:
            raise
        raise IncompatibleStore(
            f"{path}: not a SQLite database, or a corrupt one ({error})"
        ) from None
    if application_id != APPLICATION_ID:
        raise IncompatibleStore(f"{path}: not a Charter store")
    if version > LATEST:
        raise IncompatibleStore(
            f"{path}: written by a newer Charter (schema version {version}; this "
            f"Charter reads up to {LATEST}); upgrade Charter to open it"
        )
    if version < LATEST:
        raise IncompatibleStore(
            f"{path}: needs migrating from schema version {version} to {LATEST}, which a "
            "command that only reads does not do: run one that writes (charter run, "
            "charter worker, charter tenant) once, with write access to the file"
        )


def _connect_uri(path: Path, uri: str, busy_timeout_ms: int) -> sqlite3.Connection:
    try:
        return sqlite3.connect(
            uri, uri=True, timeout=busy_timeout_ms / 1000, check_same_thread=False
        )
    except sqlite3.Error as error:
        raise StoreUnavailable(f"{path}: cannot open: {error}") from None


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


#: The errors of a read-only open that cannot make the shared-memory file it needs.
_NO_SHM: Final = (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN)


def _primary_code(error: sqlite3.Error) -> int | None:
    """SQLite's primary result code for ``error`` (an extended code's low byte)."""
    code = getattr(error, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def translate(path: Path, error: sqlite3.Error) -> StoreError:
    """SQLite's exceptions as Charter's: callers see `StoreError`s, never `sqlite3` ones."""
    message = str(error)
    code = _primary_code(error)
    if code == sqlite3.SQLITE_FULL or "database or disk is full" in message:
        return StoreError(
            f"{path}: the disk is full, or the database reached its size limit ({message}): "
            "the write was rolled back, nothing was recorded; free some space and run the "
            "command again"
        )
    if code == sqlite3.SQLITE_READONLY or "attempt to write a readonly database" in message:
        return StoreError(
            f"{path}: cannot be written ({message}): check the permissions of the file and "
            "its directory; status, events, approvals and audit can read it as it is"
        )
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
