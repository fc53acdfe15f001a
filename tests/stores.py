"""The store adapters under contract, and how to build a fresh one for a test.

The contract suite, the package `tests/contract/` (one module per topic; its `conftest`
holds the ``store`` fixture), runs every contract test once per kind in `STORE_KINDS`.
To put another adapter under contract, write a factory below that builds an empty store on
the given clock, and add it to `_FACTORIES` — nothing else changes.

Adapter modules are imported inside their factory, not at the top, so that one adapter
that is absent or broken does not stop the others' tests from being collected and run
(``pytest -k memory``).

The ``postgres`` kind runs against the server named by the environment variable
`POSTGRES_URL_VARIABLE` (``CHARTER_TEST_POSTGRES_URL``, e.g.
``postgresql://postgres@127.0.0.1:5432/test``; ``.ci/run`` sets it). Its tests are skipped
when, and only when, the variable is unset: a server that is set but unreachable fails
them. Each store gets a fresh schema of its own, dropped when the store is closed, so test
runs sharing a server cannot interfere.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Final

import pytest

from charter.adapters.clock import ManualClock
from charter.adapters.memory import MemoryStore
from charter.core.ports import Store

__all__ = [
    "POSTGRES_URL_VARIABLE",
    "STORE_KINDS",
    "drop_schema",
    "make_store",
    "postgres_url",
    "unique_schema_name",
]

#: The environment variable that names the Postgres server for tests.
POSTGRES_URL_VARIABLE: Final = "CHARTER_TEST_POSTGRES_URL"


def _memory(tmp_path: Path, clock: ManualClock) -> Store:
    return MemoryStore(clock=clock)


def _sqlite(tmp_path: Path, clock: ManualClock) -> Store:
    from charter.adapters.sqlite import SqliteStore

    return SqliteStore(tmp_path / "charter.db", clock=clock)


def postgres_url() -> str:
    """The test server's URL; skips the calling test when `POSTGRES_URL_VARIABLE` is unset."""
    url = os.environ.get(POSTGRES_URL_VARIABLE, "")
    if not url:
        pytest.skip(
            f"{POSTGRES_URL_VARIABLE} is not set: set it to a Postgres URL (e.g. "
            "postgresql://postgres@127.0.0.1:5432/test) to run the Postgres tests"
        )
    return url


def unique_schema_name() -> str:
    """A schema name no other test or test run uses."""
    return f"charter_test_{os.getpid()}_{uuid.uuid4().hex[:12]}"


def drop_schema(url: str, schema: str) -> None:
    """Drop a test's schema and everything in it."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def _postgres(tmp_path: Path, clock: ManualClock) -> Store:
    url = postgres_url()
    from charter.adapters.postgres import PostgresStore

    class ThrowawayPostgresStore(PostgresStore):
        """A store in a fresh schema of its own, dropped when the store is closed (the
        contract suite's fixture closes every store it made, whether its test passed)."""

        dropped = False

        def close(self) -> None:
            super().close()
            if not self.dropped:
                self.dropped = True
                drop_schema(url, self.schema)

    schema = unique_schema_name()
    try:
        return ThrowawayPostgresStore(url, schema=schema, clock=clock, max_connections=8)
    except BaseException:
        drop_schema(url, schema)
        raise


_FACTORIES: Final[dict[str, Callable[[Path, ManualClock], Store]]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "postgres": _postgres,
}

#: Every adapter kind the contract suite runs against: ``("memory", "sqlite", "postgres")``.
STORE_KINDS: Final[tuple[str, ...]] = tuple(_FACTORIES)


def make_store(kind: str, tmp_path: Path, clock: ManualClock) -> Store:
    """A new, empty store of ``kind`` (one of `STORE_KINDS`) reading time from ``clock``;
    ``tmp_path`` is a fresh directory the store may keep its files in."""
    try:
        factory = _FACTORIES[kind]
    except KeyError:
        raise ValueError(f"unknown store kind {kind!r}; expected one of {STORE_KINDS}") from None
    return factory(tmp_path, clock)
