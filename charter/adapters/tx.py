"""The transaction port every store implements for the one write path
(`charter.adapters.transactions.PlannedStore`): one open write transaction, the reads a
planner needs — each locking what it reads, where the store locks rows, in the lock order
documented in `charter.adapters.transactions` — and the writes of a
`charter.core.commit.Plan`, each one row or one statement.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

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
from charter.core.events import Event, JsonValue
from charter.core.records import (
    Execution,
    Snapshot,
    Tenant,
    WorkflowDefinition,
    WorkItem,
)

__all__ = ["Tx", "new_event_id"]


class Tx(Protocol):
    """One open write transaction of a concrete store: the reads a planner needs (each
    locking what it reads, where the store locks rows) and the writes of a `Plan`."""

    @property
    def now(self) -> datetime:
        """The transaction's time (the store's clock, read once)."""
        ...

    # ── reads ──
    def tenant_exists(self, tenant_id: str) -> bool: ...
    def workflow(
        self, tenant_id: str, workflow_id: str, version: str
    ) -> WorkflowDefinition | None: ...
    def item(self, item_id: str) -> WorkItem | None: ...
    def items(self, item_ids: Sequence[str]) -> dict[str, WorkItem]: ...
    def holder(self, item_id: str) -> WorkItem | None:
        """A work item read without locking it (an effect reservation's holder: see the
        lock order)."""
        ...

    def settling(self, item_id: str) -> tuple[WorkItem, Head | None, bool] | None:
        """The item a commit settles, locked, with its execution's `Head` (locked after it)
        and whether the item may hold effect reservations (a claim of it reserved one);
        ``None`` if there is no such item."""
        ...

    def next_claimable(
        self, queues: Sequence[str], execution_id: str | None
    ) -> tuple[WorkItem, Head] | None:
        """The oldest pending item of ``queues`` available at `now` (of ``execution_id``
        only, if given), locked, with its execution's `Head` (locked after it); by
        availability, then enqueue order."""
        ...

    def expired(self, limit: int) -> list[WorkItem]:
        """Up to ``limit`` claimed items whose lease ended before `now`, locked, in order
        of lease end then enqueue order (items another transaction holds are passed over)."""
        ...

    def head(self, execution_id: str) -> Head | None:
        """The execution's `Head` (locking its row), or ``None`` if it does not exist."""
        ...

    def event_time(self, execution_id: str) -> datetime:
        """The time stamped on events appended to the execution in this transaction."""
        ...

    def ledger(self, execution_id: str) -> BudgetState: ...
    def approval(self, execution_id: str, node_id: str) -> ApprovalRow | None: ...
    def effect(self, key: str) -> EffectRow | None: ...
    def tenant(self, tenant_id: str) -> Tenant | None: ...
    def reservation(self, item_id: str, fence: int) -> str | None:
        """The key of an unrecorded effect reservation the claim ``(item_id, fence)``
        holds, if any (read after the items and executions, in the lock order)."""
        ...

    def node_events(self, execution_id: str, node_id: str, types: Sequence[str]) -> list[Event]:
        """The execution's events about ``node_id`` whose ``type`` is one of ``types``, in
        log order."""
        ...

    def snapshot_base(self, execution_id: str) -> tuple[Snapshot | None, JsonValue]:
        """The execution's latest snapshot, and its initial input (a first snapshot folds
        from it)."""
        ...

    def events_after(self, execution_id: str, after: int) -> tuple[list[Event], int]:
        """The events after sequence ``after`` that change a snapshot (others may be left
        out) and the execution's latest sequence."""
        ...

    def compactions(self, execution_id: str) -> list[Compaction]:
        """The execution's compactions, oldest first (docs/semantics.md §10)."""
        ...

    def event_hash_at(self, execution_id: str, sequence: int) -> str | None:
        """The stored hash of the execution's event ``sequence`` (``None``: not stored)."""
        ...

    # ── writes ──
    def put_tenant(self, tenant: Tenant, keep_policy: bool) -> None:
        """Create or replace the tenant; with ``keep_policy``, also keep its policy set by
        digest (if not kept already)."""
        ...

    def insert_workflow(self, definition: WorkflowDefinition, ir_json: str) -> None: ...
    def insert_execution(self, execution: Execution, initial_input_json: str) -> None:
        """The execution's row and its empty ledger."""
        ...

    def insert_item(self, item: WorkItem, payload_json: str) -> None: ...
    def update_item(self, write: UpdateItem) -> None:
        """Replace the item's row, only if it is still in the expected status and fence
        (the planner read it so under lock: a miss is a bug, raise `AssertionError`)."""
        ...

    def insert_events(self, head: Head, events: Sequence[Event], kind_texts: Sequence[str]) -> None:
        """Store the events (numbered after ``head.last_sequence``, chained) with their
        canonical kind texts."""
        ...

    def set_status(self, write: SetStatus) -> None: ...
    def put_approval(self, write: PutApproval) -> None: ...
    def put_ledger(self, write: PutLedger) -> None: ...
    def put_effect(self, row: EffectRow, result_json: str | None) -> None:
        """Create or replace the effect's row; an unrecorded reservation also marks its item
        as holding one (`settling` reports it, so a commit of an item that never reserved
        releases nothing)."""
        ...

    def release_effects(self, write: ReleaseEffects) -> None: ...
    def put_snapshot(self, snapshot: Snapshot) -> None: ...
    def delete_events(self, execution_id: str, through_sequence: int) -> None:
        """Remove the execution's events up to ``through_sequence`` (a compaction)."""
        ...

    def put_compaction(self, record: Compaction) -> None: ...
    def charge_limits(self, write: ChargeLimits) -> None:
        """Insert one charge row per limit named, and delete that limit's rows older than
        its window before the charge (insert-only: concurrent charges never overwrite)."""
        ...


def new_event_id() -> str:
    """A random 128-bit event id in hex (as unique as a UUID4, cheaper to make)."""
    return os.urandom(16).hex()
