"""The Postgres store: the same `Store` port for workers on many machines (psycopg 3).

Every write goes through the one write path all stores share
(`charter.adapters.transactions.PlannedStore`: read, plan with `charter.core.commit`,
write); this module supplies only storage: `_PgTx` — one SQL statement per read or write the
planners ask for — and the read-only queries. The connection pool, the transactions, their
retries and the translation of errors are `charter.adapters.postgres_connection`'s; the
schema and its migrations `charter.adapters.postgres_schema`'s.

Every write is one transaction at Postgres's default ``READ COMMITTED`` level, made safe by
row locks taken in the one lock order `charter.adapters.transactions` documents (work items →
executions by id → ledger → approvals, effects, other items):

* **Claims and reclaims** read their items ``FOR UPDATE SKIP LOCKED``: concurrent claimers
  pass over each other's rows instead of queueing behind them, and a reclaim passes over an
  item whose commit is under way.
* **Sequences.** `_PgTx.head` locks the execution's row, which carries its latest sequence
  and the hash of its latest event; the lock is held until commit, so appenders to one
  execution queue for it and its sequences stay gapless, each event linked to the one
  before, in commit order. The ledger, approvals and effects of an execution are read only
  under that lock, so the totals the planner writes back whole lose no other writer's change.
* **Inserts of a key no row holds yet** (a workflow version, an effect) cannot be locked
  before they exist: if a concurrent transaction inserts the same key first, the insert
  writes nothing and the whole transaction is tried again (`Retry`), reading that row.
* **Round trips.** Writes are pipelined (psycopg's pipeline mode): only reads and the
  ``COMMIT`` wait for the server, so a claim or a commit costs as many round trips as the
  rows it reads, plus its ``BEGIN`` and ``COMMIT``.
* **Time.** With an injected clock (tests, simulations) every time comes from it. Without
  one, the database's clock is the only clock: each call reads ``clock_timestamp()`` when its
  transaction begins, events are stamped when their execution's row lock is taken, and
  `PostgresStore.clock` reads the server's time, so workers whose clocks disagree still
  agree on when a lease ran out.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from charter.adapters import limit_rows
from charter.adapters import postgres_sql as q
from charter.adapters import store_support as rules
from charter.adapters.codec import dumps, loads
from charter.adapters.postgres_connection import (
    Cursor,
    Database,
    DatabaseClock,
    Retry,
    Row,
    is_postgres_url,
)
from charter.adapters.transactions import PlannedStore
from charter.adapters.tx import Tx, new_event_id
from charter.core import commit as plan
from charter.core.approvals import ApprovalStatus, Pending
from charter.core.budget import BudgetState
from charter.core.compaction import Compaction
from charter.core.errors import NotFound
from charter.core.events import Event, JsonValue, event_type
from charter.core.limits import ChargeLimits as LimitWrite
from charter.core.limits import LimitCharge
from charter.core.policy import PolicySet
from charter.core.ports import Clock
from charter.core.records import (
    DEFAULT_TENANT,
    ChainLink,
    Execution,
    ExecutionStatus,
    Page,
    PendingApprovalRecord,
    Snapshot,
    Tenant,
    WorkflowDefinition,
    WorkItem,
)

__all__ = ["DatabaseClock", "PostgresStore", "is_postgres_url"]

T = TypeVar("T")


_LIMIT_SQL = limit_rows.postgres_statements()


class _PgTx:
    """`Tx` on an open Postgres transaction (see `charter.adapters.transactions.Tx`): each
    method one statement. The transaction runs in pipeline mode, so a write is sent without
    waiting for its answer: a guarded item update's row count is checked by `verify` when
    every answer is in. New work items are sent as one statement per run of inserts (a
    fan-out of a thousand nodes is one statement), before the next statement."""

    def __init__(
        self,
        cursor: Cursor,
        now: datetime,
        stamp: datetime | None,
        tenants: dict[str, tuple[str, Tenant]] | None = None,
    ) -> None:
        self._cursor = cursor
        self._tenants = {} if tenants is None else tenants  # decoded, by stored text
        self.now = now
        self._stamp = stamp  # None: the database's clock when an execution's lock is taken
        self._locked: dict[str, datetime] = {}  # execution → when its row lock was taken
        self._heads: dict[str, Row] = {}  # heads locked and read with a claimable item
        self._effects: dict[str, bool] = {}  # effect key → whether a row was there
        self._new_items: list[tuple[WorkItem, str]] = []
        self._guards: list[tuple[str, Cursor]] = []  # guarded item updates sent

    def _execute(
        self, query: str, params: Sequence[Any] | dict[str, Any] = (), cursor: Cursor | None = None
    ) -> Cursor:
        if self._new_items:
            self.flush()
        return (cursor or self._cursor).execute(query, params)

    def _one(self, query: str, params: Sequence[Any] | dict[str, Any] = ()) -> Row | None:
        return self._execute(query, params).fetchone()

    def flush(self) -> None:
        """Insert the new work items not sent yet."""
        new, self._new_items = self._new_items, []
        if new:
            rows = [(*q.item_values(item), payload) for item, payload in new]
            self._cursor.execute(
                q.INSERT_ITEMS, [list(column) for column in zip(*rows, strict=True)]
            )

    def verify(self) -> None:
        """Check, once every statement's result is in, that each guarded item update
        changed its row (the planner read it under lock: a miss is a bug)."""
        for item_id, guard in self._guards:
            if guard.rowcount != 1:
                raise AssertionError(f"work item {item_id!r} changed under its lock")

    # ── reads ──

    def tenant_exists(self, tenant_id: str) -> bool:
        return self._one("SELECT 1 FROM tenants WHERE tenant_id = %s", (tenant_id,)) is not None

    def workflow(self, tenant_id: str, workflow_id: str, version: str) -> WorkflowDefinition | None:
        return q.workflow(self._execute(q.WORKFLOW, (tenant_id, workflow_id, version)))

    def item(self, item_id: str) -> WorkItem | None:
        row = self._one(q.ITEM + " FOR UPDATE", (item_id,))
        return None if row is None else q.item(row)

    def holder(self, item_id: str) -> WorkItem | None:
        # Not locked: a commit locks its item before it deletes its reservations.
        row = self._one(q.ITEM, (item_id,))
        return None if row is None else q.item(row)

    def settling(self, item_id: str) -> tuple[WorkItem, plan.Head | None, bool] | None:
        row = self._one(q.SETTLING, {"id": item_id, "stamp": self._stamp})
        if row is None:
            return None
        end = len(q.ITEM_COLUMNS)
        item = q.item(row[:end])
        self._heads[item.execution_id] = row[end + 1 :]  # (locked by the same statement)
        return item, self.head(item.execution_id), bool(row[end])

    def items(self, item_ids: Sequence[str]) -> dict[str, WorkItem]:
        if not item_ids:
            return {}
        rows = self._execute(q.ITEMS_BY_ID, (list(item_ids),)).fetchall()
        return {row[0]: q.item(row) for row in rows}

    def next_claimable(
        self, queues: Sequence[str], execution_id: str | None
    ) -> tuple[WorkItem, plan.Head] | None:
        query = q.CLAIMABLE if execution_id is None else q.CLAIMABLE_OF_EXECUTION
        params = {"queues": list(queues), "now": self.now, "run": execution_id}
        row = self._one(query, {**params, "stamp": self._stamp})
        if row is None:
            return None
        item = q.item(row[: len(q.ITEM_COLUMNS)])
        # Its execution's row was locked by the same statement.
        self._heads[item.execution_id] = row[len(q.ITEM_COLUMNS) :]
        head = self.head(item.execution_id)
        assert head is not None
        return item, head

    def expired(self, limit: int) -> list[WorkItem]:
        return [q.item(row) for row in self._execute(q.EXPIRED, (self.now, limit)).fetchall()]

    def head(self, execution_id: str) -> plan.Head | None:
        row = self._heads.pop(execution_id, None)  # read with a claimed item: still locked
        if row is None:
            row = self._one(q.LOCK_HEAD, {"id": execution_id, "stamp": self._stamp})
        if row is None:
            return None
        last, head_hash, status, tenant_id, locked_at = row
        self._locked.setdefault(execution_id, locked_at)
        return plan.Head(
            execution_id=execution_id,
            tenant_id=tenant_id,
            status=ExecutionStatus(status),
            last_sequence=last,
            head_hash=head_hash or None,
        )

    def event_time(self, execution_id: str) -> datetime:
        # An execution created in this transaction was never locked: no one else sees it.
        return self._locked.get(execution_id, self._stamp or self.now)

    def ledger(self, execution_id: str) -> BudgetState:
        row = self._one(q.LEDGER, (execution_id,))
        if row is None:
            raise NotFound(f"execution {execution_id!r} does not exist")
        return q.ledger(row)

    def approval(self, execution_id: str, node_id: str) -> plan.ApprovalRow | None:
        row = self._one(
            "SELECT status_json, requested_at FROM approvals "
            "WHERE execution_id = %s AND node_id = %s",
            (execution_id, node_id),
        )
        if row is None:
            return None
        return plan.ApprovalRow(status=loads(row[0], ApprovalStatus), requested_at=row[1])

    def tenant(self, tenant_id: str) -> Tenant | None:
        row = self._one("SELECT record_json FROM tenants WHERE tenant_id = %s", (tenant_id,))
        return None if row is None else rules.decoded_tenant(self._tenants, tenant_id, row[0])

    def reservation(self, item_id: str, fence: int) -> str | None:
        row = self._one(
            "SELECT key FROM effects WHERE item_id = %s AND fence = %s AND NOT recorded "
            "ORDER BY key LIMIT 1 FOR UPDATE",
            (item_id, fence),
        )
        return None if row is None else str(row[0])

    def node_events(self, execution_id: str, node_id: str, types: Sequence[str]) -> list[Event]:
        if self._new_items:
            self.flush()
        rows, _ = q.log(self._cursor, execution_id, 0, None)
        events = (q.event(execution_id, row) for row in rows)
        return [e for e in events if event_type(e.kind) in types and e.node_id == node_id]

    def effect(self, key: str) -> plan.EffectRow | None:
        row = self._one(q.EFFECT, (key,))
        self._effects[key] = row is not None
        if row is None:
            return None
        fields = dict(zip(q.EFFECT_COLUMNS, row, strict=True))
        result = fields.pop("result_json")
        return plan.EffectRow(result=None if result is None else json.loads(result), **fields)

    def snapshot_base(self, execution_id: str) -> tuple[Snapshot | None, JsonValue]:
        row = self._one(q.SNAPSHOT_BASE, (execution_id,))
        assert row is not None  # the execution is locked
        initial, at_sequence, state, created_at = row
        if at_sequence is None:
            return None, json.loads(initial)
        snapshot = Snapshot(
            execution_id=execution_id,
            at_sequence=at_sequence,
            state=json.loads(state),
            created_at=created_at,
        )
        return snapshot, json.loads(initial)

    def events_after(self, execution_id: str, after: int) -> tuple[list[Event], int]:
        if self._new_items:
            self.flush()
        rows, last = q.log(self._cursor, execution_id, after, None)
        return [q.event(execution_id, row) for row in rows], last

    def compactions(self, execution_id: str) -> list[Compaction]:
        rows = self._execute(q.COMPACTIONS, (execution_id,)).fetchall()
        return [_compaction(execution_id, row) for row in rows]

    def event_hash_at(self, execution_id: str, sequence: int) -> str | None:
        row = self._one(
            "SELECT hash FROM events WHERE execution_id = %s AND sequence = %s",
            (execution_id, sequence),
        )
        return None if row is None else str(row[0])

    # ── writes ──

    def delete_events(self, execution_id: str, through_sequence: int) -> None:
        self._execute(
            "DELETE FROM events WHERE execution_id = %s AND sequence <= %s",
            (execution_id, through_sequence),
        )

    def put_compaction(self, record: Compaction) -> None:
        self._execute(
            q.PUT_COMPACTION,
            (
                record.execution_id, record.first_sequence, record.through_sequence,
                record.events, record.prev_hash, record.hash, record.snapshot_sequence,
                record.compacted_at,
            ),
        )  # fmt: skip

    def put_tenant(self, tenant: Tenant, keep_policy: bool) -> None:
        policy = tenant.policy if keep_policy else None
        self._execute(
            q.PUT_TENANT,
            {
                "id": tenant.tenant_id,
                "record": dumps(tenant),
                "digest": None if policy is None else policy.digest,
                "policy": None if policy is None else dumps(policy),
            },
        )

    def insert_workflow(self, definition: WorkflowDefinition, ir_json: str) -> None:
        key = (definition.tenant_id, definition.workflow_id, definition.version)
        if self._one(q.INSERT_WORKFLOW, (*key, ir_json, definition.created_at)) is None:
            raise Retry(f"workflow {definition.workflow_id!r} was stored at the same moment")

    def insert_execution(self, execution: Execution, initial_input_json: str) -> None:
        # Numbered under the counter row's lock, held until commit: creation order is commit
        # order, so a listing cursor never passes one that commits late.
        values = {name: getattr(execution, name, None) for name in q.EXECUTION_COLUMNS}
        values.update(status=execution.status.value, initial_input_json=initial_input_json)
        self._execute(q.INSERT_EXECUTION, values)

    def insert_item(self, item: WorkItem, payload_json: str) -> None:
        self._new_items.append((item, payload_json))

    def update_item(self, write: plan.UpdateItem) -> None:
        item = write.item
        guard = self._cursor.connection.cursor()  # its row count is checked by `verify`
        params = (*q.item_state(item), item.item_id, write.expect_status.value, write.expect_fence)
        self._execute(q.UPDATE_ITEM, params, guard)
        self._guards.append((item.item_id, guard))

    def insert_events(
        self, head: plan.Head, events: Sequence[Event], kind_texts: Sequence[str]
    ) -> None:
        self._execute(
            q.INSERT_EVENTS,
            {
                "id": head.execution_id,
                "last": events[-1].sequence,
                "head": events[-1].hash,
                "at": events[-1].created_at,
                "sequences": [event.sequence for event in events],
                "ids": [event.id for event in events],
                "kinds": list(kind_texts),
                "times": [event.created_at for event in events],
                "prevs": [event.prev_hash for event in events],
                "hashes": [event.hash for event in events],
            },
        )

    def set_status(self, write: plan.SetStatus) -> None:
        self._execute(
            "UPDATE executions SET status = %s WHERE execution_id = %s",
            (write.status.value, write.execution_id),
        )

    def put_approval(self, write: plan.PutApproval) -> None:
        pending = isinstance(write.status, Pending)  # the index of open requests
        self._execute(
            q.PUT_APPROVAL,
            (
                write.execution_id,
                write.node_id,
                write.tenant_id,
                dumps(write.status),
                pending,
                write.requested_at,
            ),
        )

    def put_ledger(self, write: plan.PutLedger) -> None:
        state = write.state
        totals = (
            state.total_input_tokens,
            state.total_output_tokens,
            state.cost_nanos,
            state.iteration_count,
            state.tool_call_count,
            state.consecutive_error_count,
            state.circuit_breaker_tripped,
        )
        self._execute(q.PUT_LEDGER, (*totals, write.execution_id))

    def put_effect(self, row: plan.EffectRow, result_json: str | None) -> None:
        values = {name: getattr(row, name, None) for name in q.EFFECT_COLUMNS}
        values.update(result_json=result_json, replace=self._effects.get(row.key, False))
        if self._one(q.PUT_EFFECT, values) is None:
            raise Retry(f"effect {row.key!r} was reserved at the same moment")
        if not row.recorded:  # a reservation: its item's settling must release it
            self._execute(q.MARK_RESERVED, (row.item_id,))

    def release_effects(self, write: plan.ReleaseEffects) -> None:
        self._execute(
            "DELETE FROM effects WHERE item_id = %s AND fence = %s AND NOT recorded",
            (write.item_id, write.fence),
        )

    def put_snapshot(self, snapshot: Snapshot) -> None:
        state = json.dumps(snapshot.state, ensure_ascii=False, separators=(",", ":"))
        self._execute(
            q.PUT_SNAPSHOT,
            (snapshot.execution_id, snapshot.at_sequence, state, snapshot.created_at),
        )

    def charge_limits(self, write: LimitWrite) -> None:
        insert, prune, _select = _LIMIT_SQL
        for args in limit_rows.prune_args(write):
            self._execute(prune, args)
        for args in limit_rows.insert_args(write):
            self._execute(insert, args)


class PostgresStore(PlannedStore):
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

    _locks_rows = True  # (a group commit locks its items before any execution)

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
        self._db = Database(
            url,
            schema=schema,
            create=create,
            min_connections=min_connections,
            max_connections=max_connections,
            connect_timeout_secs=connect_timeout_secs,
            pool_timeout_secs=pool_timeout_secs,
            lock_timeout_ms=lock_timeout_ms,
            idle_in_transaction_timeout_ms=idle_in_transaction_timeout_ms,
        )
        self.schema = self._db.schema
        #: Where the store is, for messages: the URL without its password, and the schema.
        self.path = self._db.path
        self._clock = clock
        self._tenants: dict[str, tuple[str, Tenant]] = {}  # decoded tenants, by stored text
        self.clock: Clock = clock or DatabaseClock(self._db.now)
        self._new_id = new_id or new_event_id
        self._closed = False
        try:
            self._db.write(self._ensure_default_tenant)
        except BaseException:
            self._db.close()
            raise

    def __repr__(self) -> str:
        return f"PostgresStore({self.path})"

    def _ensure_default_tenant(self, cursor: Cursor, database_now: datetime) -> None:
        now = database_now if self._clock is None else self._clock.now()
        tenant = Tenant(tenant_id=DEFAULT_TENANT, name="Default", created_at=now, updated_at=now)
        cursor.execute(
            "INSERT INTO tenants (tenant_id, record_json) VALUES (%s, %s) "
            "ON CONFLICT (tenant_id) DO NOTHING",
            (DEFAULT_TENANT, dumps(tenant)),
        )

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._db.close()

    def _transact(self, work: Callable[[Tx], T]) -> T:
        def run(cursor: Cursor, database_now: datetime) -> T:
            if self._clock is None:
                tx = _PgTx(cursor, database_now, None, self._tenants)
            else:
                now = self._clock.now()
                tx = _PgTx(cursor, now, now, self._tenants)
            # Pipelined: a write is sent without waiting for its answer, which comes with
            # the next read's (or the end of the pipeline's), so writes cost no round trips.
            with cursor.connection.pipeline():
                result = work(tx)
                tx.flush()
            tx.verify()
            return result

        return self._db.write(run)

    def _row(self, query: str, params: Sequence[Any]) -> Row | None:
        return self._db.read(lambda cur: cur.execute(query, params).fetchone())

    def _rows(self, query: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._db.read(lambda cur: cur.execute(query, params).fetchall())

    # ── reads ──

    def get_tenant(self, tenant_id: str) -> Tenant | None:
        row = self._row("SELECT record_json FROM tenants WHERE tenant_id = %s", (tenant_id,))
        return None if row is None else loads(row[0], Tenant)

    def list_tenants(self) -> tuple[Tenant, ...]:
        rows = self._rows("SELECT record_json FROM tenants ORDER BY tenant_id")
        return tuple(loads(row[0], Tenant) for row in rows)

    def get_policy_set(self, digest: str) -> PolicySet | None:
        row = self._row("SELECT set_json FROM policy_sets WHERE digest = %s", (digest,))
        return None if row is None else loads(row[0], PolicySet)

    def get_workflow(
        self, workflow_id: str, version: str, tenant_id: str = DEFAULT_TENANT
    ) -> WorkflowDefinition | None:
        key = (tenant_id, workflow_id, version)
        return self._db.read(lambda cur: q.workflow(cur.execute(q.WORKFLOW, key)))

    def get_execution(self, execution_id: str) -> Execution | None:
        row = self._row(
            f"SELECT {q.EXECUTIONS} FROM executions WHERE execution_id = %s", (execution_id,)
        )
        return None if row is None else q.execution(row)

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
        rows = self._rows(
            f"SELECT {q.EXECUTIONS}, ordinal FROM executions WHERE {' AND '.join(where)} "
            "ORDER BY ordinal LIMIT %s",
            [*args, limit + 1],
        )
        page = rows[:limit]
        more = len(rows) > limit
        return Page(
            tuple(q.execution(row[:-1]) for row in page),
            rules.encode_cursor(page[-1][-1]) if more else None,
        )

    def read_events(
        self, execution_id: str, *, after: int = 0, limit: int | None = None
    ) -> tuple[Event, ...]:
        rules.check_read(after, limit)
        rows, _ = self._db.read(lambda cur: q.log(cur, execution_id, after, limit))
        return tuple(q.event(execution_id, row) for row in rows)

    def read_chain(
        self, execution_id: str, *, after: int = 0, limit: int | None = None
    ) -> tuple[ChainLink, ...]:
        rules.check_read(after, limit)
        rows, _ = self._db.read(lambda cur: q.log(cur, execution_id, after, limit))
        return tuple(
            ChainLink(
                execution_id=execution_id,
                sequence=sequence,
                event_id=event_id,
                created_at=rules.utc_text(created_at),
                kind_text=kind_text,
                prev_hash=prev_hash,
                hash=this,
            )
            for sequence, event_id, kind_text, created_at, prev_hash, this in rows
        )

    def latest_snapshot(self, execution_id: str) -> Snapshot | None:
        row = self._row(
            "SELECT at_sequence, state_json, created_at FROM snapshots WHERE execution_id = %s",
            (execution_id,),
        )
        if row is None:
            return None
        at_sequence, state, created_at = row
        return Snapshot(
            execution_id=execution_id,
            at_sequence=at_sequence,
            state=json.loads(state),
            created_at=created_at,
        )

    def compactions(self, execution_id: str) -> tuple[Compaction, ...]:
        def read(cur: Cursor) -> tuple[Compaction, ...]:
            if (
                cur.execute(
                    "SELECT 1 FROM executions WHERE execution_id = %s", (execution_id,)
                ).fetchone()
                is None
            ):
                raise NotFound(f"execution {execution_id!r} does not exist")
            rows = cur.execute(q.COMPACTIONS, (execution_id,)).fetchall()
            return tuple(_compaction(execution_id, row) for row in rows)

        return self._db.read(read)

    def get_ledger(self, execution_id: str) -> BudgetState:
        row = self._row(q.LEDGER, (execution_id,))
        if row is None:
            raise NotFound(f"execution {execution_id!r} does not exist")
        return q.ledger(row)

    def limit_charges(
        self, tenant_id: str, limit: str, *, since: datetime
    ) -> tuple[LimitCharge, ...]:
        low = rules.check_since(since, tenant_id, limit)
        return limit_rows.charges(self._rows(_LIMIT_SQL[2], (tenant_id, limit, low)))

    def get_item(self, item_id: str) -> WorkItem | None:
        row = self._row(q.ITEM, (item_id,))
        return None if row is None else q.item(row)

    def get_effect(self, key: str) -> JsonValue | None:
        row = self._row("SELECT result_json FROM effects WHERE key = %s AND recorded", (key,))
        return None if row is None else json.loads(row[0])

    def pending_approvals(
        self, *, tenant_id: str | None = None, execution_id: str | None = None
    ) -> tuple[PendingApprovalRecord, ...]:
        where = ["a.pending", "NOT (e.status = ANY(%s::text[]))"]
        args: list[object] = [q.TERMINAL]
        if tenant_id is not None:
            where.append("a.tenant_id = %s")
            args.append(tenant_id)
        if execution_id is not None:
            where.append("a.execution_id = %s")
            args.append(execution_id)
        rows = self._rows(
            "SELECT a.execution_id, a.node_id, a.tenant_id, a.status_json, a.requested_at "
            "FROM approvals a JOIN executions e ON e.execution_id = a.execution_id "
            f"WHERE {' AND '.join(where)} ORDER BY a.execution_id, a.node_id",
            args,
        )
        found = (
            rules.pending_record(execution_id, node_id, tenant_id, loads(text, ApprovalStatus), at)
            for execution_id, node_id, tenant_id, text, at in rows
        )
        return tuple(record for record in found if record is not None)


def _compaction(execution_id: str, row: Row) -> Compaction:
    first, through, events, prev_hash, hash_, snapshot_sequence, compacted_at = row
    return Compaction(
        execution_id=execution_id, first_sequence=first, through_sequence=through,
        events=events, prev_hash=prev_hash, hash=hash_, snapshot_sequence=snapshot_sequence,
        compacted_at=compacted_at,
    )  # fmt: skip
