"""The in-memory store: the reference implementation of the `Store` port.

Simple enough to be obviously right: all data lives in dictionaries of immutable values, one
lock serialises every call (reads included), and every write is journaled: each table records
the value a key had before a transaction first changed it, and a transaction that raises puts
every such value back before the lock is released — so a call that raises has written nothing,
and a transaction costs O(what it writes), not a copy of every table (which made a long run's
cost per node grow with the run). Its
writes go through the one write path every store shares (`charter.adapters.transactions`:
read, plan with `charter.core.commit`, write); `_MemoryTx` only looks rows up and puts them
back. Scans are linear; it is meant for tests, embedding and as the model the SQLite and
Postgres stores are checked against, not for large volumes.
"""

from __future__ import annotations

import threading
from bisect import bisect_left, insort
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, Final, TypeVar, overload

import attrs

from charter.adapters import store_support as rules
from charter.adapters.chain import canonical_text
from charter.adapters.clock import SystemClock
from charter.adapters.codec import dump
from charter.adapters.transactions import PlannedStore
from charter.adapters.tx import Tx, new_event_id
from charter.core.budget import BudgetState
from charter.core.commit import (
    ApprovalRow,
    ChargeLimits,
    EffectRow,
    Head,
    PutApproval,
    PutLedger,
    ReleaseEffects,
    SetStatus,
    UpdateItem,
)
from charter.core.compaction import Compaction
from charter.core.errors import NotFound
from charter.core.events import Event, JsonValue, event_type
from charter.core.limits import LimitCharge, from_epoch_us
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
    WorkItemStatus,
)

__all__ = ["MemoryStore"]

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")


class _Log(Sequence[Event]):
    """An execution's events as one version of the tables holds them: the first ``length``
    entries of a list that later versions share. Appending to the newest version extends the
    list in place, so a run's log costs O(events appended) per transaction, not O(log): a
    tuple copied on every append made a long governed session quadratic. A version is never
    changed: a transaction that fails after appending leaves entries past every committed
    version's length, and the next append from a committed version (shorter than the list)
    copies its own prefix to a new list first."""

    __slots__ = ("_items", "_length")

    def __init__(self, items: list[Event] | None = None, length: int | None = None) -> None:
        self._items: list[Event] = [] if items is None else items
        self._length = len(self._items) if length is None else length

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> Event: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[Event, ...]: ...

    def __getitem__(self, index: int | slice) -> Event | tuple[Event, ...]:
        if isinstance(index, slice):
            start, stop, step = index.indices(self._length)
            return tuple(self._items[start:stop:step])
        if not -self._length <= index < self._length:
            raise IndexError("event index out of range")
        return self._items[index % self._length]

    def __iter__(self) -> Iterator[Event]:
        items = self._items
        return (items[i] for i in range(self._length))

    def appended(self, events: Sequence[Event]) -> _Log:
        """This log with ``events`` after it (this version unchanged)."""
        items = self._items
        if len(items) != self._length:  # a failed transaction appended past us: branch off
            items = items[: self._length]
        items.extend(events)
        return _Log(items, len(items))


@attrs.frozen(kw_only=True)
class _Approval:
    row: ApprovalRow
    tenant_id: str


_MISSING: Final = object()
#: What a transaction changed, oldest first: (what changed, its key, what it held before).
_Journal = list[tuple["_Table[Any, Any] | _Pending", Any, Any]]


class _Table(dict[K, V]):
    """A dictionary that, while a transaction is open (``journal`` is a list), records in
    the journal what each key held before it is changed (`_MISSING` for an absent key), so
    that `_Tables.rollback` can put it back. Only the writes this module makes are allowed."""

    __slots__ = ("journal",)

    def __init__(self) -> None:
        super().__init__()
        self.journal: _Journal | None = None

    def _undo(self, key: Any, before: Any) -> None:
        if before is _MISSING:
            dict.__delitem__(self, key)
        else:
            dict.__setitem__(self, key, before)

    def __setitem__(self, key: K, value: V) -> None:
        if self.journal is not None:
            self.journal.append((self, key, dict.get(self, key, _MISSING)))
        dict.__setitem__(self, key, value)

    def __delitem__(self, key: K) -> None:
        if self.journal is not None:
            self.journal.append((self, key, dict.__getitem__(self, key)))
        dict.__delitem__(self, key)

    def setdefault(self, key: K, default: V) -> V:
        if key not in self:
            self[key] = default
        return dict.__getitem__(self, key)

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("a memory-store table is written only by item assignment and del")

    pop = popitem = clear = update = __ior__ = _refuse


class _Pending:
    """The pending work items of each queue in the order they are claimed — (available_at,
    enqueue order, item id) — kept by `_Items`, so that a claim looks at the head of each
    queue it serves instead of every item. Journaled like the tables."""

    __slots__ = ("by_queue", "journal")

    def __init__(self) -> None:
        self.by_queue: dict[str, list[tuple[datetime, int, str]]] = {}
        self.journal: _Journal | None = None

    def add(self, queue: str, key: tuple[datetime, int, str]) -> None:
        insort(self.by_queue.setdefault(queue, []), key)
        if self.journal is not None:
            self.journal.append((self, (queue, key), True))

    def remove(self, queue: str, key: tuple[datetime, int, str]) -> None:
        entries = self.by_queue[queue]
        index = bisect_left(entries, key)
        if index == len(entries) or entries[index] != key:
            raise AssertionError(f"pending index lost work item {key[2]!r}")
        del entries[index]
        if self.journal is not None:
            self.journal.append((self, (queue, key), False))

    def _undo(self, where: tuple[str, tuple[datetime, int, str]], added: bool) -> None:
        queue, key = where
        entries = self.by_queue.setdefault(queue, [])
        if added:
            del entries[bisect_left(entries, key)]
        else:
            insort(entries, key)


class _Items(_Table[str, WorkItem]):
    """The work items, keeping `pending` (their claim order) in step with every write."""

    __slots__ = ("order", "pending")

    def __init__(self, order: _Table[str, int]) -> None:
        super().__init__()
        self.pending = _Pending()
        self.order = order

    def __setitem__(self, key: str, value: WorkItem) -> None:
        self._unindex(dict.get(self, key))
        super().__setitem__(key, value)
        if value.status is WorkItemStatus.PENDING:
            self.pending.add(value.queue, (value.available_at, self.order[key], key))

    def __delitem__(self, key: str) -> None:
        self._unindex(dict.get(self, key))
        super().__delitem__(key)

    def _unindex(self, item: WorkItem | None) -> None:
        if item is not None and item.status is WorkItemStatus.PENDING:
            self.pending.remove(
                item.queue, (item.available_at, self.order[item.item_id], item.item_id)
            )


@attrs.define
class _Tables:
    tenants: _Table[str, Tenant] = attrs.Factory(_Table)
    workflows: _Table[tuple[str, str, str], WorkflowDefinition] = attrs.Factory(_Table)
    executions: _Table[str, Execution] = attrs.Factory(_Table)
    events: _Table[str, _Log] = attrs.Factory(_Table)
    snapshots: _Table[str, Snapshot] = attrs.Factory(_Table)
    ledger: _Table[str, BudgetState] = attrs.Factory(_Table)
    item_order: _Table[str, int] = attrs.Factory(_Table)
    items: _Items = attrs.Factory(lambda self: _Items(self.item_order), takes_self=True)
    execution_order: _Table[str, int] = attrs.Factory(_Table)
    approvals: _Table[tuple[str, str], _Approval] = attrs.Factory(_Table)
    effects: _Table[str, EffectRow] = attrs.Factory(_Table)
    policy_sets: _Table[str, PolicySet] = attrs.Factory(_Table)
    compactions: _Table[str, tuple[Compaction, ...]] = attrs.Factory(_Table)
    # (tenant, limit) → its charges as (at µs, calls, tokens, nano-dollars), oldest first
    charges: _Table[tuple[str, str], tuple[tuple[int, int, int, int], ...]] = attrs.Factory(_Table)
    enqueued: int = 0

    def _tables(self) -> tuple[_Table[Any, Any], ...]:
        return (
            self.tenants, self.workflows, self.executions, self.events, self.snapshots,
            self.ledger, self.item_order, self.items, self.execution_order, self.approvals,
            self.effects, self.policy_sets, self.compactions, self.charges,
        )  # fmt: skip

    def begin(self) -> _Journal:
        """Start journaling every table's writes; the journal `rollback` undoes."""
        journal: _Journal = []
        for table in self._tables():
            table.journal = journal
        self.items.pending.journal = journal
        return journal

    def end(self) -> None:
        for table in self._tables():
            table.journal = None
        self.items.pending.journal = None

    def rollback(self, journal: _Journal, enqueued: int) -> None:
        """Put back, newest first, what every journaled write replaced."""
        self.end()
        for changed, key, before in reversed(journal):
            changed._undo(key, before)
        self.enqueued = enqueued


class _MemoryTx:
    """`Tx` over a draft of the tables (see `charter.adapters.transactions.Tx`)."""

    def __init__(self, tables: _Tables, now: datetime) -> None:
        self.t = tables
        self.now = now

    # ── reads ──

    def tenant_exists(self, tenant_id: str) -> bool:
        return tenant_id in self.t.tenants

    def workflow(self, tenant_id: str, workflow_id: str, version: str) -> WorkflowDefinition | None:
        return self.t.workflows.get((tenant_id, workflow_id, version))

    def item(self, item_id: str) -> WorkItem | None:
        return self.t.items.get(item_id)

    def items(self, item_ids: Sequence[str]) -> dict[str, WorkItem]:
        return {i: self.t.items[i] for i in item_ids if i in self.t.items}

    def holder(self, item_id: str) -> WorkItem | None:
        return self.t.items.get(item_id)

    def settling(self, item_id: str) -> tuple[WorkItem, Head | None, bool] | None:
        item = self.t.items.get(item_id)
        if item is None:
            return None
        reserved = any(
            effect.item_id == item_id and not effect.recorded for effect in self.t.effects.values()
        )
        return item, self.head(item.execution_id), reserved

    def next_claimable(
        self, queues: Sequence[str], execution_id: str | None
    ) -> tuple[WorkItem, Head] | None:
        items = self.t.items
        best: tuple[datetime, int, str] | None = None
        for queue in set(queues):
            for key in items.pending.by_queue.get(queue, ()):
                if key[0] > self.now or (best is not None and key > best):
                    break  # the rest of this queue is later still
                if execution_id is None or items[key[2]].execution_id == execution_id:
                    best = key
                    break
        item = items[best[2]] if best is not None else None
        if item is None:
            return None
        head = self.head(item.execution_id)
        assert head is not None  # an item's execution exists
        return item, head

    def expired(self, limit: int) -> list[WorkItem]:
        order = self.t.item_order
        return sorted(
            (
                item
                for item in self.t.items.values()
                if item.status is WorkItemStatus.CLAIMED
                and item.lease_expires_at is not None
                and item.lease_expires_at < self.now
            ),
            key=lambda i: (i.lease_expires_at, order[i.item_id]),
        )[:limit]

    def head(self, execution_id: str) -> Head | None:
        execution = self.t.executions.get(execution_id)
        if execution is None:
            return None
        log = self.t.events[execution_id]
        return Head(
            execution_id=execution_id,
            tenant_id=execution.tenant_id,
            status=execution.status,
            last_sequence=execution.last_sequence,
            head_hash=log[-1].hash if log else None,
        )

    def event_time(self, execution_id: str) -> datetime:
        return self.now

    def ledger(self, execution_id: str) -> BudgetState:
        return self.t.ledger[execution_id]

    def approval(self, execution_id: str, node_id: str) -> ApprovalRow | None:
        found = self.t.approvals.get((execution_id, node_id))
        return found.row if found is not None else None

    def effect(self, key: str) -> EffectRow | None:
        return self.t.effects.get(key)

    def tenant(self, tenant_id: str) -> Tenant | None:
        return self.t.tenants.get(tenant_id)

    def reservation(self, item_id: str, fence: int) -> str | None:
        claim = (item_id, fence)
        for key, effect in sorted(self.t.effects.items()):
            if not effect.recorded and (effect.item_id, effect.fence) == claim:
                return key
        return None

    def node_events(self, execution_id: str, node_id: str, types: Sequence[str]) -> list[Event]:
        return [
            event
            for event in self.t.events[execution_id]
            if event_type(event.kind) in types and event.node_id == node_id
        ]

    def snapshot_base(self, execution_id: str) -> tuple[Snapshot | None, JsonValue]:
        return self.t.snapshots.get(execution_id), self.t.executions[execution_id].initial_input

    def events_after(self, execution_id: str, after: int) -> tuple[list[Event], int]:
        log = self.t.events[execution_id]
        return list(_after(log, after)), self.t.executions[execution_id].last_sequence

    def compactions(self, execution_id: str) -> list[Compaction]:
        return list(self.t.compactions.get(execution_id, ()))

    def event_hash_at(self, execution_id: str, sequence: int) -> str | None:
        found = _after(self.t.events[execution_id], sequence - 1)[:1]
        return found[0].hash if found and found[0].sequence == sequence else None

    # ── writes ──

    def put_tenant(self, tenant: Tenant, keep_policy: bool) -> None:
        self.t.tenants[tenant.tenant_id] = tenant
        if keep_policy and tenant.policy is not None:
            self.t.policy_sets.setdefault(tenant.policy.digest, tenant.policy)

    def insert_workflow(self, definition: WorkflowDefinition, ir_json: str) -> None:
        key = (definition.tenant_id, definition.workflow_id, definition.version)
        self.t.workflows[key] = definition

    def insert_execution(self, execution: Execution, initial_input_json: str) -> None:
        self.t.executions[execution.execution_id] = execution
        self.t.execution_order[execution.execution_id] = len(self.t.execution_order) + 1
        self.t.events[execution.execution_id] = _Log()
        self.t.ledger[execution.execution_id] = BudgetState()

    def insert_item(self, item: WorkItem, payload_json: str) -> None:
        self.t.enqueued += 1
        self.t.item_order[item.item_id] = self.t.enqueued
        self.t.items[item.item_id] = item

    def update_item(self, write: UpdateItem) -> None:
        current = self.t.items[write.item.item_id]
        if (current.status, current.fence) != (write.expect_status, write.expect_fence):
            raise AssertionError(f"work item {current.item_id!r} changed under its lock")
        self.t.items[write.item.item_id] = write.item

    def insert_events(self, head: Head, events: Sequence[Event], kind_texts: Sequence[str]) -> None:
        execution_id = head.execution_id
        self.t.events[execution_id] = self.t.events[execution_id].appended(events)
        self.t.executions[execution_id] = attrs.evolve(
            self.t.executions[execution_id],
            last_sequence=events[-1].sequence,
            updated_at=events[-1].created_at,
        )

    def set_status(self, write: SetStatus) -> None:
        execution = self.t.executions[write.execution_id]
        self.t.executions[write.execution_id] = attrs.evolve(execution, status=write.status)

    def put_approval(self, write: PutApproval) -> None:
        row = ApprovalRow(status=write.status, requested_at=write.requested_at)
        key = (write.execution_id, write.node_id)
        self.t.approvals[key] = _Approval(row=row, tenant_id=write.tenant_id)

    def put_ledger(self, write: PutLedger) -> None:
        self.t.ledger[write.execution_id] = write.state

    def put_effect(self, row: EffectRow, result_json: str | None) -> None:
        self.t.effects[row.key] = row

    def release_effects(self, write: ReleaseEffects) -> None:
        claim = (write.item_id, write.fence)
        for key, effect in list(self.t.effects.items()):
            if not effect.recorded and (effect.item_id, effect.fence) == claim:
                del self.t.effects[key]

    def put_snapshot(self, snapshot: Snapshot) -> None:
        self.t.snapshots[snapshot.execution_id] = snapshot

    def charge_limits(self, write: ChargeLimits) -> None:
        row = (write.at_us, write.calls, write.tokens, write.usd_nanos)
        for name, window in write.names:
            key = (write.tenant_id, name)
            oldest = write.at_us - window * 1_000_000
            kept = [r for r in self.t.charges.get(key, ()) if r[0] >= oldest]
            kept.append(row)
            kept.sort(key=lambda r: r[0])
            self.t.charges[key] = tuple(kept)

    def delete_events(self, execution_id: str, through_sequence: int) -> None:
        self.t.events[execution_id] = _Log(
            list(_after(self.t.events[execution_id], through_sequence))
        )

    def put_compaction(self, record: Compaction) -> None:
        history = self.t.compactions.get(record.execution_id, ())
        self.t.compactions[record.execution_id] = (*history, record)


def _after(log: _Log, after: int) -> tuple[Event, ...]:
    """The events of ``log`` (gapless, perhaps compacted: docs/semantics.md §10) whose
    sequence is greater than ``after``."""
    offset = log[0].sequence - 1 if log else 0
    return log[max(0, after - offset) :]


class MemoryStore(PlannedStore):
    """A `Store` kept in memory (see the module doc)."""

    def __init__(self, clock: Clock | None = None, new_id: Callable[[], str] | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self._new_id = new_id or new_event_id
        self._lock = threading.RLock()
        self._tables = _Tables()
        now = self.clock.now()
        self._tables.tenants[DEFAULT_TENANT] = Tenant(
            tenant_id=DEFAULT_TENANT, name="Default", created_at=now, updated_at=now
        )

    def _transact(self, work: Callable[[Tx], T]) -> T:
        with self._lock:
            tables = self._tables
            enqueued = tables.enqueued
            journal = tables.begin()
            try:
                result = work(_MemoryTx(tables, self.clock.now()))
            except BaseException:
                tables.rollback(journal, enqueued)
                raise
            tables.end()
            return result

    def close(self) -> None:
        """Nothing to release."""

    # ── reads ──

    def get_tenant(self, tenant_id: str) -> Tenant | None:
        with self._lock:
            return self._tables.tenants.get(tenant_id)

    def list_tenants(self) -> tuple[Tenant, ...]:
        with self._lock:
            tenants = self._tables.tenants
            return tuple(tenants[key] for key in sorted(tenants))

    def get_workflow(
        self, workflow_id: str, version: str, tenant_id: str = DEFAULT_TENANT
    ) -> WorkflowDefinition | None:
        with self._lock:
            return self._tables.workflows.get((tenant_id, workflow_id, version))

    def get_execution(self, execution_id: str) -> Execution | None:
        with self._lock:
            return self._tables.executions.get(execution_id)

    def list_executions(
        self,
        *,
        tenant_id: str | None = None,
        status: ExecutionStatus | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[Execution]:
        with self._lock:
            rules.check_limit(limit)
            after = rules.decode_cursor(cursor) or 0
            tables = self._tables
            order = tables.execution_order
            rows = sorted(
                (
                    e
                    for e in tables.executions.values()
                    if order[e.execution_id] > after
                    and (tenant_id is None or e.tenant_id == tenant_id)
                    and (status is None or e.status is status)
                ),
                key=lambda e: order[e.execution_id],
            )
            page = tuple(rows[:limit])
            more = len(rows) > limit
            return Page(page, rules.encode_cursor(order[page[-1].execution_id]) if more else None)

    def read_events(
        self, execution_id: str, *, after: int = 0, limit: int | None = None
    ) -> tuple[Event, ...]:
        with self._lock:
            rules.check_read(after, limit)
            log = self._tables.events.get(execution_id)
            if log is None:
                raise NotFound(f"execution {execution_id!r} does not exist")
            chosen = _after(log, after)
            return chosen if limit is None else chosen[:limit]

    def read_chain(
        self, execution_id: str, *, after: int = 0, limit: int | None = None
    ) -> tuple[ChainLink, ...]:
        events = self.read_events(execution_id, after=after, limit=limit)
        return tuple(
            ChainLink(
                execution_id=execution_id,
                sequence=event.sequence,
                event_id=event.id,
                created_at=rules.utc_text(event.created_at),
                kind_text=canonical_text(dump(event.kind)),
                prev_hash=event.prev_hash,
                hash=event.hash,
            )
            for event in events
        )

    def get_policy_set(self, digest: str) -> PolicySet | None:
        with self._lock:
            return self._tables.policy_sets.get(digest)

    def latest_snapshot(self, execution_id: str) -> Snapshot | None:
        with self._lock:
            return self._tables.snapshots.get(execution_id)

    def compactions(self, execution_id: str) -> tuple[Compaction, ...]:
        with self._lock:
            if execution_id not in self._tables.executions:
                raise NotFound(f"execution {execution_id!r} does not exist")
            return self._tables.compactions.get(execution_id, ())

    def get_ledger(self, execution_id: str) -> BudgetState:
        with self._lock:
            state = self._tables.ledger.get(execution_id)
            if state is None:
                raise NotFound(f"execution {execution_id!r} does not exist")
            return state

    def get_item(self, item_id: str) -> WorkItem | None:
        with self._lock:
            return self._tables.items.get(item_id)

    def limit_charges(
        self, tenant_id: str, limit: str, *, since: datetime
    ) -> tuple[LimitCharge, ...]:
        with self._lock:
            low = rules.check_since(since, tenant_id, limit)
            rows = self._tables.charges.get((tenant_id, limit), ())
            return tuple(
                LimitCharge(at=from_epoch_us(at), calls=calls, tokens=tokens, usd_nanos=usd)
                for at, calls, tokens, usd in rows
                if at >= low
            )

    def get_effect(self, key: str) -> JsonValue | None:
        with self._lock:
            effect = self._tables.effects.get(key)
            return effect.result if effect is not None and effect.recorded else None

    def pending_approvals(
        self, *, tenant_id: str | None = None, execution_id: str | None = None
    ) -> tuple[PendingApprovalRecord, ...]:
        with self._lock:
            tables = self._tables
            records = []
            for (exec_id, node_id), found in sorted(tables.approvals.items()):
                if tables.executions[exec_id].status.terminal:
                    continue  # a finished run has no open questions
                if tenant_id is not None and found.tenant_id != tenant_id:
                    continue
                if execution_id is not None and exec_id != execution_id:
                    continue
                record = rules.pending_record(
                    exec_id, node_id, found.tenant_id, found.row.status, found.row.requested_at
                )
                if record is not None:
                    records.append(record)
            return tuple(records)
