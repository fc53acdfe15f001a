"""The windowed-limit charges table, as the SQLite and Postgres stores keep it
(`charter.core.limits`; docs/store.md, "Windowed limits").

One row per charge and limit: the tenant, the limit's name, the charge's time in epoch
microseconds, its calls, tokens and nano-dollars, and the run that made it. Rows are only
ever inserted (a charge) or deleted once older than their limit's window (no window can
count them any more), so two writers charging one limit at once never overwrite each
other: nothing is read-modified-written. Postgres deletes old rows with ``SKIP LOCKED``,
so pruning never waits for (or deadlocks with) another transaction pruning the same rows:
a row it skips is pruned by a later charge, and readers filter by window anyway.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

from charter.core.limits import ChargeLimits, LimitCharge, from_epoch_us

__all__ = [
    "POSTGRES_TABLE",
    "SQLITE_TABLE",
    "charges",
    "insert_args",
    "postgres_statements",
    "prune_args",
    "sqlite_statements",
]

_COLUMNS: Final = "tenant_id, limit_name, at_us, calls, tokens, usd_nanos, execution_id"

SQLITE_TABLE: Final = """
CREATE TABLE limit_charges (
    tenant_id    TEXT NOT NULL,
    limit_name   TEXT NOT NULL,
    at_us        INTEGER NOT NULL,
    calls        INTEGER NOT NULL,
    tokens       INTEGER NOT NULL,
    usd_nanos    INTEGER NOT NULL,
    execution_id TEXT NOT NULL
);
CREATE INDEX limit_charges_by_window ON limit_charges (tenant_id, limit_name, at_us);
"""

POSTGRES_TABLE: Final = """
CREATE TABLE limit_charges (
    tenant_id    text NOT NULL,
    limit_name   text NOT NULL,
    at_us        bigint NOT NULL,
    calls        bigint NOT NULL,
    tokens       bigint NOT NULL,
    usd_nanos    bigint NOT NULL,
    execution_id text NOT NULL
);
CREATE INDEX limit_charges_by_window ON limit_charges (tenant_id, limit_name, at_us);
"""


def _statements(p: str, skip_locked: bool) -> tuple[str, str, str]:
    insert = f"INSERT INTO limit_charges ({_COLUMNS}) VALUES ({', '.join([p] * 7)})"
    where = f"tenant_id = {p} AND limit_name = {p} AND at_us < {p}"
    if skip_locked:
        prune = (
            "DELETE FROM limit_charges WHERE ctid IN (SELECT ctid FROM limit_charges "
            f"WHERE {where} FOR UPDATE SKIP LOCKED)"
        )
    else:
        prune = f"DELETE FROM limit_charges WHERE {where}"
    select = (
        "SELECT at_us, calls, tokens, usd_nanos FROM limit_charges "
        f"WHERE tenant_id = {p} AND limit_name = {p} AND at_us >= {p} ORDER BY at_us"
    )
    return insert, prune, select


def sqlite_statements() -> tuple[str, str, str]:
    """``(insert, prune, select)`` for SQLite."""
    return _statements("?", skip_locked=False)


def postgres_statements() -> tuple[str, str, str]:
    """``(insert, prune, select)`` for Postgres."""
    return _statements("%s", skip_locked=True)


def insert_args(write: ChargeLimits) -> list[tuple[Any, ...]]:
    """One row per limit the charge names."""
    return [
        (
            write.tenant_id,
            name,
            write.at_us,
            write.calls,
            write.tokens,
            write.usd_nanos,
            write.execution_id,
        )
        for name, _window in write.names
    ]


def prune_args(write: ChargeLimits) -> list[tuple[Any, ...]]:
    """Per limit: its rows older than its window before the charge."""
    return [
        (write.tenant_id, name, write.at_us - window * 1_000_000) for name, window in write.names
    ]


def charges(rows: Iterable[Sequence[Any]]) -> tuple[LimitCharge, ...]:
    return tuple(
        LimitCharge(at=from_epoch_us(at), calls=calls, tokens=tokens, usd_nanos=usd)
        for at, calls, tokens, usd in rows
    )
