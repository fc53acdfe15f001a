"""The Postgres store's schema and its versioned migrations.

A Charter store lives in one Postgres schema (``charter`` unless told otherwise), so several
stores — a production one, a staging one, one per test — can share a database without
seeing each other. The schema is marked as Charter's by its `MARKER` table, one row holding
the application name (`APPLICATION`) and the schema version. Opening a store checks both:
a schema that holds tables but no marker is refused as another application's, a version
newer than `LATEST` is refused as written by a newer Charter, and an older one is migrated,
one migration per transaction with the version bump inside it (Postgres DDL is
transactional, so a crash leaves either the old schema or the new one). Migrations take an
advisory lock, so processes opening the store at the same moment migrate it once.
`migrate` runs them.

Column types mirror the SQLite store's, with Postgres's own where they help: times are
``timestamptz`` (compared by the database, whose clock judges leases), JSON is kept as the
exact ``text`` the codec wrote (``jsonb`` would reorder keys and rewrite numbers, so a value
would not read back as it was stored), cost is integer nano-dollars, counters ``bigint``.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Final

import psycopg
from psycopg import sql

from charter.adapters.chain import GENESIS, canonical_text, event_hash
from charter.adapters.codec import dumps, loads
from charter.adapters.limit_rows import POSTGRES_TABLE
from charter.adapters.store_support import utc_text
from charter.core.errors import IncompatibleStore, NotFound
from charter.core.records import Tenant

__all__ = [
    "APPLICATION",
    "DEFAULT_SCHEMA",
    "LATEST",
    "LOCK_CLASS",
    "MARKER",
    "MIGRATIONS",
    "migrate",
]

log = logging.getLogger("charter.postgres")
Connection = psycopg.Connection[tuple[Any, ...]]

#: What the marker row says about whose schema this is.
APPLICATION: Final = "charter"
#: The table that marks a schema as a Charter store and holds its version.
MARKER: Final = "charter_store"
#: The schema a store uses when none is named.
DEFAULT_SCHEMA: Final = "charter"
#: The first key of Charter's advisory locks: "CHRT" in ASCII, as SQLite's application id.
LOCK_CLASS: Final = 0x43485254

_V1 = """
CREATE TABLE charter_store (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    application text NOT NULL,
    version     integer NOT NULL
);

CREATE TABLE tenants (
    tenant_id   text PRIMARY KEY,
    record_json text NOT NULL
);

CREATE TABLE workflows (
    tenant_id   text NOT NULL,
    workflow_id text NOT NULL,
    version     text NOT NULL,
    ir_json     text NOT NULL,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, workflow_id, version)
);

-- Executions are numbered in the order their creations commit (a listing cursor may then
-- never skip one that commits late): the counter row is locked by each creation until it
-- commits.
CREATE TABLE execution_counter (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last      bigint NOT NULL
);
INSERT INTO execution_counter (last) VALUES (0);

CREATE TABLE executions (
    ordinal             bigint PRIMARY KEY,
    execution_id        text NOT NULL UNIQUE,
    tenant_id           text NOT NULL,
    workflow_id         text NOT NULL,
    workflow_version    text NOT NULL,
    status              text NOT NULL,
    initial_input_json  text NOT NULL,
    parent_execution_id text,
    segment_number      bigint NOT NULL,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    -- Bumped by every append under the row's lock: the gapless per-execution sequence.
    last_sequence       bigint NOT NULL DEFAULT 0
);
CREATE INDEX executions_by_tenant_status ON executions (tenant_id, status, ordinal);
CREATE INDEX executions_by_status ON executions (status, ordinal);

CREATE TABLE events (
    execution_id text NOT NULL,
    sequence     bigint NOT NULL,
    event_id     text NOT NULL,
    kind_json    text NOT NULL,
    created_at   timestamptz NOT NULL,
    PRIMARY KEY (execution_id, sequence)
);

CREATE TABLE snapshots (
    execution_id text PRIMARY KEY,
    at_sequence  bigint NOT NULL,
    state_json   text NOT NULL,
    created_at   timestamptz NOT NULL
);

CREATE TABLE ledger (
    execution_id       text PRIMARY KEY,
    input_tokens       bigint NOT NULL DEFAULT 0,
    output_tokens      bigint NOT NULL DEFAULT 0,
    cost_nanos         bigint NOT NULL DEFAULT 0,
    iterations         bigint NOT NULL DEFAULT 0,
    tool_calls         bigint NOT NULL DEFAULT 0,
    consecutive_errors bigint NOT NULL DEFAULT 0,
    breaker_tripped    boolean NOT NULL DEFAULT false
);

CREATE TABLE work_items (
    ordinal          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    item_id          text NOT NULL UNIQUE,
    tenant_id        text NOT NULL,
    execution_id     text NOT NULL,
    node_id          text NOT NULL,
    queue            text NOT NULL,
    payload_json     text NOT NULL,
    attempt          bigint NOT NULL,
    max_attempts     bigint NOT NULL,
    backoff_base_ms  bigint NOT NULL,
    status           text NOT NULL,
    available_at     timestamptz NOT NULL,
    created_at       timestamptz NOT NULL,
    worker_id        text,
    lease_expires_at timestamptz,
    fence            bigint NOT NULL DEFAULT 0,
    last_error       text,
    reserved         boolean NOT NULL DEFAULT false  -- once a claim of it reserved an effect (v3)
);
-- Claims walk pending items oldest-available first (skipping rows other claims have locked);
-- reclaims walk claimed items by lease expiry. Settled items are in neither index.
CREATE INDEX work_items_pending ON work_items (available_at, ordinal) WHERE status = 'pending';
CREATE INDEX work_items_claimed ON work_items (lease_expires_at, ordinal)
    WHERE status = 'claimed';

CREATE TABLE approvals (
    execution_id text NOT NULL,
    node_id      text NOT NULL,
    tenant_id    text NOT NULL,
    status_json  text NOT NULL,
    pending      boolean NOT NULL,
    requested_at timestamptz NOT NULL,
    PRIMARY KEY (execution_id, node_id)
);
CREATE INDEX approvals_pending ON approvals (execution_id, node_id) WHERE pending;

CREATE TABLE effects (
    key          text PRIMARY KEY,
    execution_id text NOT NULL,
    node_id      text NOT NULL,
    item_id      text NOT NULL,
    fence        bigint NOT NULL,
    expires_at   timestamptz,
    recorded     boolean NOT NULL,
    result_json  text
);
CREATE INDEX effects_by_owner ON effects (item_id, fence) WHERE NOT recorded;
"""

# Version 2: the event chain (docs/audit.md) and the policy sets decisions name by digest.
# The execution row keeps the hash of its latest event, beside its latest sequence, so an
# append links to it under the same row lock. Events stored by version 1 get their
# canonical text and hashes in the same transaction (`_chain_existing_events`, run after
# this script).
_V2 = """
ALTER TABLE events ADD COLUMN prev_hash text NOT NULL DEFAULT '';
ALTER TABLE events ADD COLUMN hash text NOT NULL DEFAULT '';
ALTER TABLE executions ADD COLUMN head_hash text NOT NULL DEFAULT '';

CREATE TABLE policy_sets (
    digest   text PRIMARY KEY,
    set_json text NOT NULL
);
"""

#: Schema migrations by the version they produce; applied in order, one transaction each.
#: (The migration runner writes the marker row's version after each script.)
# Version 3: ``work_items.reserved`` is true once a claim of the item reserved an effect, so a
# commit of an item that never did skips releasing reservations; items holding reservations
# made before it are marked here.
_V3 = """
UPDATE work_items SET reserved = true
 WHERE item_id IN (SELECT item_id FROM effects WHERE NOT recorded);
"""

# Version 4: compaction (docs/semantics.md §10): one row per compaction of a finished run's
# log, summarising the events it removed (their range, count, first prev_hash, last hash).
_V4 = """
CREATE TABLE compactions (
    execution_id      text NOT NULL,
    through_sequence  bigint NOT NULL,
    first_sequence    bigint NOT NULL,
    events            bigint NOT NULL,
    prev_hash         text NOT NULL,
    hash              text NOT NULL,
    snapshot_sequence bigint NOT NULL,
    compacted_at      timestamptz NOT NULL,
    PRIMARY KEY (execution_id, through_sequence)
);
"""

# Version 5: the charges of the tenants' windowed limits (`charter.adapters.limit_rows`).
_V5 = POSTGRES_TABLE

MIGRATIONS: Final[dict[int, str]] = {1: _V1, 2: _V2, 3: _V3, 4: _V4, 5: _V5}
#: The schema version this code reads and writes.
LATEST: Final = max(MIGRATIONS)


# ── the migration runner ──


def migrate(conn: Connection, schema: str, path: str, *, create: bool) -> None:
    """Bring ``schema`` to `LATEST`, one migration per transaction (``conn`` in autocommit
    mode; ``path`` names the store in messages). A schema with no store is `NotFound` unless
    ``create``; one that is not Charter's, or is newer, is `IncompatibleStore`."""
    version = _version(conn, schema, path)
    if version == 0 and not create:
        raise NotFound(f"{path}: no Charter store in schema {schema!r}")
    for target in sorted(v for v in MIGRATIONS if v > version):
        with conn.transaction():
            # One process migrates; others wait here, then find it done.
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_CLASS, schema))
            if _version(conn, schema, path) >= target:
                continue
            exists = conn.execute(
                "SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)
            ).fetchone()
            if exists is None:  # (CREATE needs a privilege an existing schema does not)
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
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
        log.info("%s: migrated to schema version %d", path, target)


def _version(conn: Connection, schema: str, path: str) -> int:
    """The schema's Charter version (0: no store yet); refuses foreign or newer ones."""
    tables = [
        row[0]
        for row in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
            (schema,),
        ).fetchall()
    ]
    if MARKER not in tables:
        if tables:
            raise IncompatibleStore(
                f"{path}: schema {schema!r} holds tables of another application "
                f"({', '.join(sorted(tables)[:5])}…), not a Charter store; name another schema"
            )
        return 0
    row = conn.execute(
        sql.SQL("SELECT application, version FROM {}").format(sql.Identifier(schema, MARKER))
    ).fetchone()
    if row is None or row[0] != APPLICATION:
        raise IncompatibleStore(
            f"{path}: schema {schema!r} is marked as {row and row[0]!r}, not a Charter store"
        )
    version: int = row[1]
    if version > LATEST:
        raise IncompatibleStore(
            f"{path}: written by a newer Charter (schema version {version}; this Charter "
            f"reads up to {LATEST}); upgrade Charter to open it"
        )
    return version


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
            created_at=utc_text(created_at),
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
