"""The SQLite store's schema and its versioned migrations.

A Charter database is marked with ``PRAGMA application_id`` = `APPLICATION_ID` and carries
its schema version in ``PRAGMA user_version``. Opening a file checks both: a SQLite file
with tables but another application id is refused as foreign, a version newer than
`LATEST` is refused as written by a newer Charter, and an older one is migrated, one
migration per transaction (the version bump is inside the same transaction, so a crash
leaves either the old schema or the new one).

Times are stored as UTC text (``YYYY-MM-DDTHH:MM:SS.ffffffZ``), which sorts in time order;
JSON as compact text; cost as integer nano-dollars.
"""

from __future__ import annotations

import json
import sqlite3
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import Final

from charter.adapters.chain import GENESIS, canonical_text, link_hashes
from charter.adapters.codec import dumps, loads
from charter.adapters.limit_rows import SQLITE_TABLE
from charter.core.errors import IncompatibleStore
from charter.core.records import Tenant

__all__ = ["APPLICATION_ID", "LATEST", "MIGRATIONS", "migrate"]

#: "CHRT" in ASCII: marks a SQLite file as a Charter store.
APPLICATION_ID: Final = 0x43485254

_V1 = """
CREATE TABLE tenants (
    tenant_id   TEXT PRIMARY KEY,
    record_json TEXT NOT NULL
);

CREATE TABLE workflows (
    tenant_id   TEXT NOT NULL,
    workflow_id TEXT NOT NULL,
    version     TEXT NOT NULL,
    ir_json     TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (tenant_id, workflow_id, version)
);

CREATE TABLE executions (
    ordinal             INTEGER PRIMARY KEY AUTOINCREMENT,
    execution_id        TEXT NOT NULL UNIQUE,
    tenant_id           TEXT NOT NULL,
    workflow_id         TEXT NOT NULL,
    workflow_version    TEXT NOT NULL,
    status              TEXT NOT NULL,
    initial_input_json  TEXT NOT NULL,
    parent_execution_id TEXT,
    segment_number      INTEGER NOT NULL,
    created_at          TEXT NOT NULL
);
CREATE INDEX executions_by_tenant_status ON executions (tenant_id, status, ordinal);
CREATE INDEX executions_by_status ON executions (status, ordinal);

CREATE TABLE events (
    execution_id TEXT NOT NULL,
    sequence     INTEGER NOT NULL,
    event_id     TEXT NOT NULL,
    kind_json    TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    PRIMARY KEY (execution_id, sequence)
) WITHOUT ROWID;

CREATE TABLE snapshots (
    execution_id TEXT PRIMARY KEY,
    at_sequence  INTEGER NOT NULL,
    state_json   TEXT NOT NULL,
    created_at   TEXT NOT NULL
);

CREATE TABLE ledger (
    execution_id       TEXT PRIMARY KEY,
    input_tokens       INTEGER NOT NULL DEFAULT 0,
    output_tokens      INTEGER NOT NULL DEFAULT 0,
    cost_nanos         INTEGER NOT NULL DEFAULT 0,
    iterations         INTEGER NOT NULL DEFAULT 0,
    tool_calls         INTEGER NOT NULL DEFAULT 0,
    consecutive_errors INTEGER NOT NULL DEFAULT 0,
    breaker_tripped    INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE work_items (
    ordinal          INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id          TEXT NOT NULL UNIQUE,
    tenant_id        TEXT NOT NULL,
    execution_id     TEXT NOT NULL,
    node_id          TEXT NOT NULL,
    queue            TEXT NOT NULL,
    payload_json     TEXT NOT NULL,
    attempt          INTEGER NOT NULL,
    max_attempts     INTEGER NOT NULL,
    backoff_base_ms  INTEGER NOT NULL,
    status           TEXT NOT NULL,
    available_at     TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    worker_id        TEXT,
    lease_expires_at TEXT,
    fence            INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    reserved         INTEGER NOT NULL DEFAULT 0  -- 1 once a claim of it reserved an effect (v3)
);
-- One index over live items serves claims (per queue, oldest available first) and reclaims
-- (a scan of live items only). A claim changes neither key column, so it rewrites its entry
-- in place instead of moving it between two indexes; settling removes it.
CREATE INDEX work_items_live ON work_items (queue, available_at, ordinal)
    WHERE status IN ('pending', 'claimed');

CREATE TABLE approvals (
    execution_id TEXT NOT NULL,
    node_id      TEXT NOT NULL,
    tenant_id    TEXT NOT NULL,
    status_json  TEXT NOT NULL,
    pending      INTEGER NOT NULL,
    requested_at TEXT NOT NULL,
    PRIMARY KEY (execution_id, node_id)
);
CREATE INDEX approvals_pending ON approvals (pending, execution_id, node_id);

CREATE TABLE effects (
    key          TEXT PRIMARY KEY,
    execution_id TEXT NOT NULL,
    node_id      TEXT NOT NULL,
    item_id      TEXT NOT NULL,
    fence        INTEGER NOT NULL,
    expires_at   TEXT,
    recorded     INTEGER NOT NULL,
    result_json  TEXT
);
CREATE INDEX effects_by_owner ON effects (item_id, fence) WHERE recorded = 0;
"""

# Version 2: the event chain (docs/audit.md) and the policy sets decisions name by digest.
# Events stored by version 1 get their canonical text and their hashes in the same
# transaction (`migrate` runs the Python step, `_chain_existing_events`, after these statements).
_V2 = """
ALTER TABLE events ADD COLUMN prev_hash TEXT NOT NULL DEFAULT '';
ALTER TABLE events ADD COLUMN hash TEXT NOT NULL DEFAULT '';

CREATE TABLE policy_sets (
    digest   TEXT PRIMARY KEY,
    set_json TEXT NOT NULL
);
"""

# Version 3: ``work_items.reserved`` is 1 once a claim of the item reserved an effect, so a
# commit of an item that never did skips releasing reservations (most commits); items that
# hold reservations made before it are marked here.
_V3 = """
UPDATE work_items SET reserved = 1
 WHERE item_id IN (SELECT item_id FROM effects WHERE recorded = 0);
"""

# Version 4: compaction (docs/semantics.md §10): one row per compaction of a finished run's
# log, summarising the events it removed (their range, count, first prev_hash, last hash).
_V4 = """
CREATE TABLE compactions (
    execution_id      TEXT NOT NULL REFERENCES executions(execution_id),
    through_sequence  INTEGER NOT NULL,
    first_sequence    INTEGER NOT NULL,
    events            INTEGER NOT NULL,
    prev_hash         TEXT NOT NULL,
    hash              TEXT NOT NULL,
    snapshot_sequence INTEGER NOT NULL,
    compacted_at      TEXT NOT NULL,
    PRIMARY KEY (execution_id, through_sequence)
) WITHOUT ROWID;
"""

# Version 5: the charges of the tenants' windowed limits (`charter.adapters.limit_rows`).
_V5 = SQLITE_TABLE

#: Schema migrations by the version they produce; applied in order, one transaction each.
MIGRATIONS: Final[dict[int, str]] = {1: _V1, 2: _V2, 3: _V3, 4: _V4, 5: _V5}
#: The schema version this code reads and writes.
LATEST: Final = max(MIGRATIONS)


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Check that ``conn`` is a Charter store this code can read (or an empty file) and bring
    its schema up to `LATEST`, one ``BEGIN IMMEDIATE`` transaction per migration."""
    try:
        application_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    except sqlite3.DatabaseError as error:
        raise IncompatibleStore(
            f"{path}: not a SQLite database, or a corrupt one ({error})"
        ) from None
    if application_id != APPLICATION_ID and (tables or version):
        raise IncompatibleStore(
            f"{path}: a SQLite database of another application "
            f"(application_id {application_id:#x}), not a Charter store"
        )
    if version > LATEST:
        raise IncompatibleStore(
            f"{path}: written by a newer Charter (schema version {version}; this "
            f"Charter reads up to {LATEST}); upgrade Charter to open it"
        )
    for target in sorted(v for v in MIGRATIONS if v > version):
        conn.execute("BEGIN IMMEDIATE")
        try:
            _migrate_to(conn, target)
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


def _migrate_to(conn: sqlite3.Connection, target: int) -> None:
    # Re-read inside the lock: another process may have migrated meanwhile.
    if conn.execute("PRAGMA user_version").fetchone()[0] >= target:
        return
    for statement in _statements(MIGRATIONS[target]):
        conn.execute(statement)
    if target == 2:
        _chain_existing_events(conn)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version = {target}")


def _statements(script: str) -> list[str]:
    """The statements of a migration script (``--`` comments removed first, so a comment
    may say anything)."""
    code = "\n".join(line.split("--", 1)[0] for line in script.splitlines())
    return [part.strip() for part in code.split(";") if part.strip()]


def _chain_existing_events(conn: sqlite3.Connection) -> None:
    """Schema version 2: give every event stored before it its canonical text and its place
    in the chain, and keep every tenant's policy set by digest."""
    rows = conn.execute(
        "SELECT execution_id, created_at, sequence, event_id, kind_json FROM events "
        "ORDER BY execution_id, sequence"
    ).fetchall()
    heads: dict[str, str] = {}  # each execution's latest hash so far
    # Consecutive events of one execution with one timestamp are chained as one batch.
    for (execution_id, created_at), batch in groupby(rows, key=itemgetter(0, 1)):
        events = list(batch)
        texts = [canonical_text(json.loads(row[4])) for row in events]
        links = link_hashes(
            execution_id=execution_id,
            first_sequence=events[0][2],
            prev_hash=heads.get(execution_id, GENESIS),
            created_at=created_at,
            event_ids=[row[3] for row in events],
            kind_texts=texts,
        )
        conn.executemany(
            "UPDATE events SET kind_json = ?, prev_hash = ?, hash = ? "
            "WHERE execution_id = ? AND sequence = ?",
            [
                (text, prev, this, execution_id, row[2])
                for row, text, (prev, this) in zip(events, texts, links, strict=True)
            ],
        )
        heads[execution_id] = links[-1][1]
    for (record,) in conn.execute("SELECT record_json FROM tenants").fetchall():
        tenant = loads(record, Tenant)
        if tenant.policy is not None:
            conn.execute(
                "INSERT OR IGNORE INTO policy_sets (digest, set_json) VALUES (?, ?)",
                (tenant.policy.digest, dumps(tenant.policy)),
            )
