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

from typing import Final

__all__ = ["APPLICATION_ID", "LATEST", "MIGRATIONS"]

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
    reserved         INTEGER NOT NULL DEFAULT 0  -- 1 while the claim holds effect reservations
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
# transaction (`charter.adapters.sqlite` runs the Python step after these statements).
_V2 = """
ALTER TABLE events ADD COLUMN prev_hash TEXT NOT NULL DEFAULT '';
ALTER TABLE events ADD COLUMN hash TEXT NOT NULL DEFAULT '';

CREATE TABLE policy_sets (
    digest   TEXT PRIMARY KEY,
    set_json TEXT NOT NULL
);
"""

#: Schema migrations by the version they produce; applied in order, one transaction each.
MIGRATIONS: Final[dict[int, str]] = {1: _V1, 2: _V2}
#: The schema version this code reads and writes.
LATEST: Final = max(MIGRATIONS)
