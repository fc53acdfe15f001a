"""The commit planner: every write a store makes, decided once, as pure functions.

A store's write is always the same three steps (docs/store.md, "One commit path"):

1. **read**, inside its transaction and in the one lock order (work item → execution →
   ledger → approvals → effects → other work items), the rows a planner asks for: the
   `WorkItem`, the execution's `Head`, the ledger's `BudgetState`, the `ApprovalRow` of each
   node an event touches, the `EffectRow` of a side effect;
2. **plan**: hand them to one of the ``plan_*`` functions below, which applies every rule
   (the item lifecycle table of `charter.core.lifecycle`, fences, attempts and backoff,
   ledger arithmetic and bounds, approval consumption, effect reservations, status and
   approval projections, follow-up items, snapshot cadence) and returns a `Plan`: the
   complete list of writes, each a small frozen value — or raises the domain error
   (`FenceLost`, `Conflict`, `NotFound`, `LimitExceeded`, …) before anything is written;
3. **write** the plan's writes in order, translating each into its own storage (a dict, an
   SQL statement), and nothing else.

So no store holds a business rule, a status string of its own or ledger arithmetic: adding a
rule changes this module, and every store follows. Sequence numbers are assigned here; event
ids, timestamps and the hash chain are added by the writer (`charter.adapters.chain`), which
links each appended event to the one before.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Final, TypeAlias

import attrs

from charter.core.approvals import (
    ApprovalStatus,
    Approved,
    NotRequested,
    approval_after,
)
from charter.core.budget import BudgetState, Usage
from charter.core.errors import Conflict, InvalidInput, NotFound, UnknownTenant
from charter.core.events import (
    ApprovalConsumed,
    ApprovalExpired,
    ApprovalReceived,
    EventKind,
    JsonValue,
    LimitCharged,
    NodeStarted,
    OutcomeUnknown,
    ToolApprovalRequired,
)
from charter.core.lifecycle import COMMIT_ACTIONS, ItemAction, apply_action, check_fence
from charter.core.limits import ChargeLimits, charge_writes
from charter.core.materialize import STATUS_KINDS, status_after
from charter.core.queue import LEASE_EXPIRED, plan_failure, plan_park
from charter.core.records import (
    EffectAbandoned,
    EffectAcquired,
    EffectHeld,
    EffectRecorded,
    EffectReservation,
    Execution,
    ExecutionStatus,
    NewWorkItem,
    WorkflowDefinition,
    WorkItem,
    WorkItemStatus,
)

__all__ = [
    "SNAPSHOT_EVERY",
    "AppendEvents",
    "ApprovalRow",
    "ChainSpec",
    "ChargeLimits",
    "CommitReads",
    "CommitSpec",
    "EffectRow",
    "Head",
    "InsertExecution",
    "InsertItem",
    "LogDraft",
    "Plan",
    "PutApproval",
    "PutEffect",
    "PutLedger",
    "ReleaseEffects",
    "SetStatus",
    "UpdateItem",
    "Write",
    "WriteSnapshot",
    "apply_ledger",
    "approval_nodes",
    "commit_reads_needed",
    "plan_append",
    "plan_claim",
    "plan_commit",
    "plan_commit_then_claim",
    "plan_create_execution",
    "plan_enqueue",
    "plan_fail",
    "plan_heartbeat",
    "plan_park_item",
    "plan_put_workflow",
    "plan_reclaim",
    "plan_record_effect",
    "plan_reserve_effect",
    "same_item_content",
    "snapshot_due",
]

#: The shortest distance between two snapshots of a run, in events.
SNAPSHOT_EVERY: Final = 256


def snapshot_due(before: int, after: int) -> bool:
    """Whether a commit (or a claim) that moves a run's log from sequence ``before`` to
    ``after`` folds a snapshot: when it crosses a multiple of the run's snapshot interval,
    the largest power of two that is at most an eighth of the log, and at least
    `SNAPSHOT_EVERY`.

    A snapshot costs in proportion to the run (it holds every completed node), so the
    interval grows with the log: the snapshots of a run of n events cost O(n) in all —
    constant per event, whatever the run's size — while a reader never has more than an
    eighth of the log (or 256 events) to fold on top of the latest one. (The scheduler folds
    the log itself; snapshots serve readers and recovery.)"""
    interval = SNAPSHOT_EVERY
    while interval * 16 <= after:
        interval *= 2
    return after // interval > before // interval


_APPROVAL_KINDS: Final = (
    ToolApprovalRequired,
    ApprovalReceived,
    ApprovalConsumed,
    ApprovalExpired,
)


# ── what a store reads ─────────────────────────────────────────────────────────────────


@attrs.frozen(kw_only=True)
class Head:
    """An execution as a writer needs it: who owns it, its status, its latest sequence."""

    execution_id: str
    tenant_id: str
    status: ExecutionStatus
    last_sequence: int
    #: The latest event's hash (``None`` before the first event): where the chain goes on.
    head_hash: str | None = None


@attrs.frozen(kw_only=True)
class ApprovalRow:
    """A node's approval record: the fold of its approval events, and when it was asked."""

    status: ApprovalStatus
    requested_at: datetime


@attrs.frozen(kw_only=True)
class EffectRow:
    """A tool side effect: reserved by a claim until ``expires_at``, or recorded."""

    key: str
    execution_id: str
    node_id: str
    item_id: str
    fence: int
    expires_at: datetime | None
    recorded: bool
    result: JsonValue = None


# ── what a store writes ────────────────────────────────────────────────────────────────


@attrs.frozen(kw_only=True)
class InsertExecution:
    """A new execution row (status, times and sequence already set) with an empty ledger."""

    execution: Execution


@attrs.frozen(kw_only=True)
class InsertItem:
    """A new work item."""

    item: WorkItem


@attrs.frozen(kw_only=True)
class UpdateItem:
    """Replace a work item's row with ``item``, guarded: only while it is still in
    ``expect_status`` with ``expect_fence`` (what the planner read)."""

    item: WorkItem
    expect_status: WorkItemStatus
    expect_fence: int


@attrs.frozen(kw_only=True)
class AppendEvents:
    """Append ``kinds`` to the execution's log at ``first_sequence``, ``first_sequence + 1``…
    (the writer gives each an id, the transaction's time and its link in the chain)."""

    execution_id: str
    first_sequence: int
    kinds: tuple[EventKind, ...]
    #: The kinds' canonical texts, when the caller encoded them already (input checks do).
    texts: tuple[str, ...] | None = None

    @property
    def last_sequence(self) -> int:
        return self.first_sequence + len(self.kinds) - 1


@attrs.frozen(kw_only=True)
class SetStatus:
    """The execution's projected status changed."""

    execution_id: str
    status: ExecutionStatus


@attrs.frozen(kw_only=True)
class PutApproval:
    """Create or replace a node's approval record."""

    execution_id: str
    node_id: str
    tenant_id: str
    status: ApprovalStatus
    requested_at: datetime


@attrs.frozen(kw_only=True)
class PutLedger:
    """The execution's ledger is now ``state`` (the store read it under the execution's
    lock, so writing the new totals loses no other writer's change)."""

    execution_id: str
    state: BudgetState


@attrs.frozen(kw_only=True)
class PutEffect:
    """Create or replace a side effect's row."""

    row: EffectRow


@attrs.frozen(kw_only=True)
class ReleaseEffects:
    """Delete the unrecorded reservations held by the claim ``(item_id, fence)``."""

    item_id: str
    fence: int


@attrs.frozen(kw_only=True)
class WriteSnapshot:
    """Fold the execution's events since its latest snapshot into a new one
    (`charter.core.materialize.apply_events`), after the plan's appends."""

    execution_id: str


Write: TypeAlias = (
    InsertExecution
    | InsertItem
    | UpdateItem
    | AppendEvents
    | SetStatus
    | PutApproval
    | PutLedger
    | PutEffect
    | ReleaseEffects
    | WriteSnapshot
    | ChargeLimits
)


@attrs.frozen
class Plan:
    """Every write of one transaction, in the order they are to be made."""

    writes: tuple[Write, ...] = ()

    def __add__(self, other: Plan) -> Plan:
        return Plan((*self.writes, *other.writes))


# ── shared rules ───────────────────────────────────────────────────────────────────────


def approval_nodes(kinds: Iterable[EventKind]) -> frozenset[str]:
    """The nodes whose approval record a batch of events touches (what to read)."""
    return frozenset(kind.node_id for kind in kinds if isinstance(kind, _APPROVAL_KINDS))


def apply_ledger(state: BudgetState, usage: Usage | None, succeeded: bool | None) -> BudgetState:
    """The ledger after an attempt's usage and outcome: usage added (within every total's
    bounds, `charter.core.budget`), a success resets the consecutive errors, a failure
    extends them, ``None`` leaves them."""
    if usage is not None:
        state = state.apply(usage)
    if succeeded is True:
        state = state.record_success()
    elif succeeded is False:
        state = state.record_error()
    return state


def same_item_content(existing: WorkItem, new: NewWorkItem) -> bool:
    """Whether re-enqueueing ``new`` under an existing id is the same request."""
    return (
        existing.execution_id == new.execution_id
        and existing.node_id == new.node_id
        and existing.queue == new.queue
        and existing.payload == new.payload
        and existing.max_attempts == new.max_attempts
        and existing.backoff_base_ms == new.backoff_base_ms
    )


class LogDraft:
    """The appends of one plan to one execution, with the projections they imply."""

    def __init__(self, head: Head, approvals: Mapping[str, ApprovalRow | None]) -> None:
        self.head = head
        self.status = head.status
        self.last = head.last_sequence
        self.approvals: dict[str, ApprovalRow | None] = dict(approvals)

    def append(
        self, kinds: Sequence[EventKind], now: datetime, texts: Sequence[str] | None = None
    ) -> list[Write]:
        if not kinds:
            return []
        head = self.head
        writes: list[Write] = [
            AppendEvents(
                execution_id=head.execution_id,
                first_sequence=self.last + 1,
                kinds=tuple(kinds),
                texts=None if texts is None else tuple(texts),
            )
        ]
        status = self.status
        for sequence, kind in enumerate(kinds, start=self.last + 1):
            if isinstance(kind, STATUS_KINDS):
                status = status_after(status, kind)
            if isinstance(kind, _APPROVAL_KINDS):
                writes.append(self._approval(kind, sequence, now))
            elif type(kind) is LimitCharged:  # the tenant's windowed limits (charter.core.limits)
                writes.append(charge_writes(head.tenant_id, head.execution_id, kind))
        self.last += len(kinds)
        if status is not self.status:
            self.status = status
            writes.append(SetStatus(execution_id=head.execution_id, status=status))
        return writes

    def _approval(self, kind: EventKind, sequence: int, now: datetime) -> PutApproval:
        node_id: str = getattr(kind, "node_id", "")
        if node_id not in self.approvals:
            raise AssertionError(f"the approval record of node {node_id!r} was not read")
        row = self.approvals[node_id]
        current = row.status if row is not None else NotRequested()
        if isinstance(kind, ApprovalConsumed | ApprovalExpired) and not (
            isinstance(current, Approved) and current.request.request_digest == kind.request_digest
        ):
            raise Conflict(
                f"approval for node {node_id!r} (request {kind.request_digest[:12]}…) "
                "is not available to use: it was never given, was rejected, is already used "
                "or has expired"
            )
        fresh = row is None or isinstance(kind, ToolApprovalRequired)
        updated = ApprovalRow(
            status=approval_after(current, kind, sequence),
            requested_at=now if fresh or row is None else row.requested_at,
        )
        self.approvals[node_id] = updated
        # Several events about one node in one batch: the last write is the record.
        return PutApproval(
            execution_id=self.head.execution_id,
            node_id=node_id,
            tenant_id=self.head.tenant_id,
            status=updated.status,
            requested_at=updated.requested_at,
        )


def _new_items(
    items: Sequence[NewWorkItem],
    tenants: Mapping[str, str],
    existing: Mapping[str, WorkItem],
    now: datetime,
) -> list[Write]:
    """Insert each item that is new; an id that exists must be the same request."""
    writes: list[Write] = []
    seen: dict[str, NewWorkItem] = {}
    for new in items:
        before = existing.get(new.item_id)
        if before is not None or new.item_id in seen:
            if before is not None and not same_item_content(before, new):
                raise Conflict(f"work item {new.item_id!r} already exists with other content")
            earlier = seen.get(new.item_id)
            if earlier is not None and earlier != new:
                raise Conflict(f"work item {new.item_id!r} already exists with other content")
            continue
        tenant_id = tenants.get(new.execution_id)
        if tenant_id is None:
            raise NotFound(f"execution {new.execution_id!r} does not exist")
        seen[new.item_id] = new
        writes.append(
            InsertItem(
                item=WorkItem(
                    item_id=new.item_id,
                    tenant_id=tenant_id,
                    execution_id=new.execution_id,
                    node_id=new.node_id,
                    queue=new.queue,
                    payload=new.payload,
                    attempt=0,
                    max_attempts=new.max_attempts,
                    backoff_base_ms=new.backoff_base_ms,
                    status=WorkItemStatus.PENDING,
                    available_at=new.available_at or now,
                    created_at=now,
                )
            )
        )
    return writes


def _belongs(items: Sequence[NewWorkItem], execution_id: str, field: str) -> None:
    for index, item in enumerate(items):
        if item.execution_id != execution_id:
            raise InvalidInput(
                f"{field}[{index}].execution_id",
                f"expected the execution {execution_id!r}, got {item.execution_id!r}",
            )


# ── definitions, executions and events ──────────────────────────────────────────────────


def plan_put_workflow(existing: WorkflowDefinition | None, new: WorkflowDefinition) -> bool:
    """Whether storing ``new`` writes anything: not if the same version is stored with the
    same IR; `Conflict` if with another (versions are immutable)."""
    if existing is None:
        return True
    if existing.ir != new.ir:
        raise Conflict(
            f"workflow {new.workflow_id!r} version {new.version!r} is already stored with a "
            "different definition (versions are immutable)"
        )
    return False


def plan_create_execution(
    execution: Execution,
    kinds: Sequence[EventKind],
    items: Sequence[NewWorkItem],
    *,
    tenant_known: bool,
    exists: bool,
    existing_items: Mapping[str, WorkItem],
    now: datetime,
    texts: Sequence[str] | None = None,
) -> Plan:
    """Create an execution with its first events and items (`Store.create_execution`)."""
    _belongs(items, execution.execution_id, "items")
    if not tenant_known:
        raise UnknownTenant("tenant_id", f"unknown tenant {execution.tenant_id!r}")
    if exists:
        raise Conflict(f"execution {execution.execution_id!r} already exists")
    row = attrs.evolve(
        execution,
        status=ExecutionStatus.PENDING,
        created_at=now,
        updated_at=now,
        last_sequence=0,
    )
    head = Head(
        execution_id=row.execution_id,
        tenant_id=row.tenant_id,
        status=row.status,
        last_sequence=0,
    )
    writes: list[Write] = [InsertExecution(execution=row)]
    writes += LogDraft(head, dict.fromkeys(approval_nodes(kinds))).append(kinds, now, texts)
    writes += _new_items(items, {row.execution_id: row.tenant_id}, existing_items, now)
    return Plan(tuple(writes))


def plan_append(
    execution_id: str,
    head: Head | None,
    kinds: Sequence[EventKind],
    items: Sequence[NewWorkItem],
    *,
    approvals: Mapping[str, ApprovalRow | None],
    existing_items: Mapping[str, WorkItem],
    expected_last_sequence: int | None,
    now: datetime,
    texts: Sequence[str] | None = None,
) -> Plan:
    """Append events and enqueue items (`Store.append_events`); with
    ``expected_last_sequence``, only if the log is still there (compare-and-append)."""
    _belongs(items, execution_id, "items")
    if head is None:
        raise NotFound(f"execution {execution_id!r} does not exist")
    if expected_last_sequence is not None and head.last_sequence != expected_last_sequence:
        raise Conflict(
            f"execution {execution_id!r} moved on: its latest event is "
            f"{head.last_sequence}, not {expected_last_sequence}"
        )
    writes = LogDraft(head, approvals).append(kinds, now, texts)
    writes += _new_items(items, {execution_id: head.tenant_id}, existing_items, now)
    return Plan(tuple(writes))


def plan_enqueue(
    items: Sequence[NewWorkItem],
    *,
    tenants: Mapping[str, str],
    existing_items: Mapping[str, WorkItem],
    now: datetime,
) -> Plan:
    """Enqueue items (`Store.enqueue`); ``tenants`` maps each existing execution to its
    tenant."""
    return Plan(tuple(_new_items(items, tenants, existing_items, now)))


# ── the work queue ─────────────────────────────────────────────────────────────────────


def _claimed(
    item: WorkItem, *, worker_id: str, lease_secs: float, now: datetime
) -> tuple[WorkItem, NodeStarted]:
    """``item`` claimed (the next fence, this worker, a lease) and its ``node_started``."""
    claimed = apply_action(
        item,
        ItemAction.CLAIM,
        worker_id=worker_id,
        lease_expires_at=now + timedelta(seconds=lease_secs),
    )
    started = NodeStarted(node_id=item.node_id, worker_id=worker_id, attempt=claimed.attempt)
    return claimed, started


def plan_claim(
    item: WorkItem, head: Head, *, worker_id: str, lease_secs: float, now: datetime
) -> tuple[Plan, WorkItem]:
    """Claim ``item`` (the oldest available pending item the store found): the next fence,
    this worker, a lease, and ``node_started`` in the log."""
    claimed, started = _claimed(item, worker_id=worker_id, lease_secs=lease_secs, now=now)
    writes: list[Write] = [
        UpdateItem(item=claimed, expect_status=item.status, expect_fence=item.fence)
    ]
    writes += LogDraft(head, {}).append((started,), now)
    # A claim's ``node_started`` can cross the snapshot interval as well as a commit can:
    # with groups, a run's claims and commits come in runs of k, and in step with the
    # interval the crossing could fall among the claims every time (a 1,000-node fan-out
    # once got no snapshot at all).
    if snapshot_due(head.last_sequence, head.last_sequence + 1):
        writes.append(WriteSnapshot(execution_id=item.execution_id))
    return Plan(tuple(writes)), claimed


def plan_heartbeat(
    item: WorkItem | None, item_id: str, fence: int, *, lease_secs: float, now: datetime
) -> tuple[Plan, datetime]:
    """Extend a claim's lease to ``now + lease_secs``."""
    current = check_fence(item, item_id, fence)
    expires = now + timedelta(seconds=lease_secs)
    renewed = apply_action(current, ItemAction.RENEW, fence=fence, lease_expires_at=expires)
    update = UpdateItem(item=renewed, expect_status=current.status, expect_fence=fence)
    return Plan((update,)), expires


@attrs.frozen(kw_only=True)
class CommitSpec:
    """What a commit asks for (the fields of `charter.core.ports.CommitRequest`)."""

    item_id: str
    fence: int
    outcome: WorkItemStatus
    events: tuple[EventKind, ...] = ()
    usage: Usage | None = None
    succeeded: bool | None = None
    write_snapshot: bool | None = None
    effect_key: str | None = None
    effect_result: JsonValue = None
    then_events: tuple[EventKind, ...] = ()
    then_items: tuple[NewWorkItem, ...] = ()
    then_if_last_sequence: int | None = None
    #: The canonical texts of ``events`` and ``then_events``, when the input checks encoded
    #: them (they are then not encoded again).
    event_texts: tuple[str, ...] | None = None
    then_texts: tuple[str, ...] | None = None


@attrs.frozen(kw_only=True)
class CommitReads:
    """What a store reads for a commit, in the lock order."""

    item: WorkItem | None
    head: Head | None = None
    ledger: BudgetState | None = None
    approvals: Mapping[str, ApprovalRow | None] = attrs.field(factory=dict)
    effect: EffectRow | None = None
    existing_items: Mapping[str, WorkItem] = attrs.field(factory=dict)
    #: Whether the item may hold effect reservations (a claim of it reserved one): only then
    #: is there anything to release. ``True`` when the store does not know.
    reserved: bool = True
    #: For a commit that claims (`plan_commit_then_claim`): the item `Store.claim` would take
    #: of the execution before this commit's writes (`Tx.next_claimable`), if any.
    claimable: WorkItem | None = None


def commit_reads_needed(spec: CommitSpec) -> tuple[bool, frozenset[str], bool, tuple[str, ...]]:
    """What a commit's planner will need beyond the item and its execution's head: the
    ledger?, which nodes' approval records, the effect row?, which existing item ids."""
    return (
        spec.usage is not None or spec.succeeded is not None,
        approval_nodes((*spec.events, *spec.then_events)),
        spec.effect_key is not None,
        tuple(item.item_id for item in spec.then_items),
    )


def plan_commit(spec: CommitSpec, reads: CommitReads, *, now: datetime) -> Plan:
    """`plan_commit_then_claim` without a claim: see there."""
    return Plan(tuple(_commit_writes(spec, reads, now)[0]))


@attrs.frozen(kw_only=True)
class ChainSpec:
    """Who may claim, in a commit's transaction, a follow-up item that commit enqueues
    (`Store.commit_and_claim`): the arguments of `Store.claim`."""

    worker_id: str
    queues: tuple[str, ...]
    lease_secs: float


def plan_commit_then_claim(
    spec: CommitSpec, reads: CommitReads, chain: ChainSpec | None, *, now: datetime
) -> tuple[Plan, WorkItem | None]:
    """`plan_commit`, and then — with ``chain`` — the claim `Store.claim` would make right
    after it for ``chain``'s worker, of the same execution: of the items in its queues
    available at ``now``, the oldest by availability, then enqueue order, among the one
    the store found before the commit (``reads.claimable``) and those the commit enqueues
    (after every item already there). It is claimed exactly as `plan_claim` claims: the
    next fence, the worker, a lease of ``chain.lease_secs`` from ``now``, and
    ``node_started`` appended after everything else; an item the commit enqueues is
    inserted already claimed (the row the claim would leave). Returns the plan and the
    claimed item (``None``: nothing to claim)."""
    writes, log = _commit_writes(spec, reads, now)
    if chain is None:
        return Plan(tuple(writes)), None
    wanted = frozenset(chain.queues)
    # (availability, enqueue order): the one before the commit was enqueued first.
    ready: list[tuple[datetime, int]] = [
        (write.item.available_at, index)
        for index, write in enumerate(writes)
        if isinstance(write, InsertItem)
        and write.item.queue in wanted
        and write.item.available_at <= now
    ]
    found = reads.claimable
    if found is not None:
        if found.status is not WorkItemStatus.PENDING or found.available_at > now:
            raise AssertionError(f"work item {found.item_id!r} is not claimable")
        ready.append((found.available_at, -1))
    if not ready:
        return Plan(tuple(writes)), None
    _, index = min(ready)
    if index < 0:
        assert found is not None
        claimed, started = _claimed(
            found, worker_id=chain.worker_id, lease_secs=chain.lease_secs, now=now
        )
        writes.append(
            UpdateItem(item=claimed, expect_status=found.status, expect_fence=found.fence)
        )
    else:
        insert = writes[index]
        assert isinstance(insert, InsertItem)
        claimed, started = _claimed(
            insert.item, worker_id=chain.worker_id, lease_secs=chain.lease_secs, now=now
        )
        writes[index] = InsertItem(item=claimed)
    writes += log.append((started,), now)
    return Plan(tuple(writes)), claimed


def _commit_writes(
    spec: CommitSpec, reads: CommitReads, now: datetime
) -> tuple[list[Write], LogDraft]:
    """Settle a claimed item and write everything its attempt produced, in one transaction
    (`Store.commit`): the item's terminal status, the events (and the status and approval
    records they project), the ledger, the recorded effect, the claim's reservations
    released, a snapshot when asked or due, and the follow-up — ``then_events`` and
    ``then_items`` — only if the log is where the caller planned it from
    (``then_if_last_sequence``)."""
    try:
        action = COMMIT_ACTIONS[spec.outcome]
    except KeyError:
        allowed = ", ".join(status.value for status in COMMIT_ACTIONS)
        raise InvalidInput(
            "outcome", f"a commit settles as one of {allowed}, not {spec.outcome}"
        ) from None
    if (spec.then_events or spec.then_items) and spec.then_if_last_sequence is None:
        raise InvalidInput(
            "then_if_last_sequence", "required with then_events or then_items (the log they assume)"
        )
    item = check_fence(reads.item, spec.item_id, spec.fence)
    head = reads.head
    if head is None:
        raise NotFound(f"execution {item.execution_id!r} does not exist")
    _belongs(spec.then_items, item.execution_id, "then_items")
    settled = apply_action(item, action, fence=spec.fence)
    writes: list[Write] = [
        UpdateItem(item=settled, expect_status=item.status, expect_fence=spec.fence)
    ]
    log = LogDraft(head, reads.approvals)
    writes += log.append(spec.events, now, spec.event_texts)
    if spec.usage is not None or spec.succeeded is not None:
        if reads.ledger is None:
            raise AssertionError("the ledger was not read")
        ledger = apply_ledger(reads.ledger, spec.usage, spec.succeeded)
        writes.append(PutLedger(execution_id=item.execution_id, state=ledger))
    if spec.effect_key is not None and not (reads.effect is not None and reads.effect.recorded):
        writes.append(
            PutEffect(
                row=EffectRow(
                    key=spec.effect_key,
                    execution_id=item.execution_id,
                    node_id=item.node_id,
                    item_id=item.item_id,
                    fence=spec.fence,
                    expires_at=None,
                    recorded=True,
                    result=spec.effect_result,
                )
            )
        )
    if reads.reserved:
        writes.append(ReleaseEffects(item_id=item.item_id, fence=spec.fence))
    snapshot = spec.write_snapshot
    if snapshot is None:
        snapshot = snapshot_due(head.last_sequence, log.last)
    if snapshot:
        writes.append(WriteSnapshot(execution_id=item.execution_id))
    if (spec.then_events or spec.then_items) and spec.then_if_last_sequence == head.last_sequence:
        writes += log.append(spec.then_events, now, spec.then_texts)
        writes += _new_items(
            spec.then_items, {item.execution_id: head.tenant_id}, reads.existing_items, now
        )
    return writes, log


def _failure_writes(
    item: WorkItem, fence: int, status: WorkItemStatus, attempt: int, available: datetime | None,
    error: str,
) -> list[Write]:  # fmt: skip
    action = {
        WorkItemStatus.PENDING: ItemAction.RETRY,
        WorkItemStatus.DEAD_LETTERED: ItemAction.DEAD_LETTER,
        WorkItemStatus.FAILED: ItemAction.FAIL,
    }[status]
    failed = apply_action(
        item, action, fence=fence, attempt=attempt, available_at=available, last_error=error
    )
    return [
        UpdateItem(item=failed, expect_status=item.status, expect_fence=fence),
        ReleaseEffects(item_id=item.item_id, fence=fence),
    ]


def plan_park_item(
    item: WorkItem | None,
    item_id: str,
    fence: int,
    head: Head | None,
    *,
    retry_after: datetime,
    count_attempt: bool,
    now: datetime,
) -> Plan:
    """Put a claimed item back to wait until ``retry_after`` (`charter.core.queue.plan_park`),
    or dead-letter it when a counted park leaves no attempt."""
    current = check_fence(item, item_id, fence)
    if head is None:
        raise NotFound(f"execution {current.execution_id!r} does not exist")
    park = plan_park(current, retry_after=retry_after, count_attempt=count_attempt)
    if park.available_at is not None:  # parked, pending again
        parked = apply_action(
            current,
            ItemAction.PARK,
            fence=fence,
            attempt=park.attempt,
            available_at=park.available_at,
        )
        writes: list[Write] = [
            UpdateItem(item=parked, expect_status=current.status, expect_fence=fence),
            ReleaseEffects(item_id=item_id, fence=fence),
        ]
    else:  # no attempt left: dead-lettered, like a failure
        writes = _failure_writes(
            current, fence, park.status, park.attempt, None, park.last_error or ""
        )
    writes += LogDraft(head, {}).append(park.events, now)
    return Plan(tuple(writes))


def plan_fail(
    item: WorkItem | None,
    item_id: str,
    fence: int,
    head: Head | None,
    ledger: BudgetState | None,
    *,
    error: str,
    retryable: bool,
    delay_ms: int | None,
    usage: Usage | None,
    events: Sequence[EventKind],
    approvals: Mapping[str, ApprovalRow | None],
    now: datetime,
) -> Plan:
    """End a claimed attempt that failed (`charter.core.queue.plan_failure`): retry later,
    dead-letter or fail; the attempt's own ``events`` are appended before the failure's, its
    usage and one more consecutive error go to the ledger."""
    current = check_fence(item, item_id, fence)
    if head is None or ledger is None:
        raise NotFound(f"execution {current.execution_id!r} does not exist")
    failure = plan_failure(current, error=error, retryable=retryable, now=now, delay_ms=delay_ms)
    writes = _failure_writes(
        current, fence, failure.status, failure.attempt, failure.available_at, failure.last_error
    )
    writes += LogDraft(head, approvals).append((*events, *failure.events), now)
    writes.append(
        PutLedger(execution_id=current.execution_id, state=apply_ledger(ledger, usage, False))
    )
    return Plan(tuple(writes))


def plan_reclaim(
    expired: Sequence[WorkItem],
    heads: Mapping[str, Head],
    *,
    now: datetime,
    reservations: Mapping[str, str] | None = None,
) -> tuple[Plan, list[WorkItem], list[WorkItem], list[WorkItem]]:
    """Fail every claimed item whose lease has expired (its worker is presumed dead): the
    items put back for retry, those dead-lettered, and those held for a person.

    An item on its last attempt whose claim still holds an unrecorded effect reservation
    (``reservations``: item id → the reservation's key) is not dead-lettered: its worker
    died mid-call, so the side effect may or may not have happened. It is held with
    ``outcome_unknown`` and waits for a person to say what happened (`OutcomeUnknown`),
    as a later attempt that finds the reservation abandoned would."""
    logs = {execution_id: LogDraft(head, {}) for execution_id, head in heads.items()}
    lost = reservations or {}
    writes: list[Write] = []
    retried: list[WorkItem] = []
    dead: list[WorkItem] = []
    held: list[WorkItem] = []
    for item in expired:
        if item.status is not WorkItemStatus.CLAIMED or item.lease_expires_at is None:
            raise AssertionError(f"work item {item.item_id!r} is not an expired claim")
        failure = plan_failure(item, error=LEASE_EXPIRED, retryable=True, now=now)
        key = lost.get(item.item_id)
        if failure.status is WorkItemStatus.DEAD_LETTERED and key is not None:
            waiting = apply_action(item, ItemAction.HOLD, fence=item.fence)
            writes.append(
                UpdateItem(item=waiting, expect_status=item.status, expect_fence=item.fence)
            )
            unknown = OutcomeUnknown(
                node_id=item.node_id,
                attempt=item.attempt,
                idempotency_key=key,
                reason=f"{LEASE_EXPIRED} mid-call, on its last attempt: the side effect "
                "may or may not have happened, so it is not fired again",
            )
            writes += logs[item.execution_id].append((unknown,), now)
            held.append(waiting)
            continue
        item_writes = _failure_writes(
            item, item.fence, failure.status, failure.attempt, failure.available_at,
            failure.last_error,
        )  # fmt: skip
        # A presumed-dead worker may still be firing: its reservations stay until their TTL.
        writes += [w for w in item_writes if not isinstance(w, ReleaseEffects)]
        writes += logs[item.execution_id].append(failure.events, now)
        updated = item_writes[0]
        assert isinstance(updated, UpdateItem)
        (retried if failure.status is WorkItemStatus.PENDING else dead).append(updated.item)
    return Plan(tuple(writes)), retried, dead, held


# ── tool effects ───────────────────────────────────────────────────────────────────────


def plan_reserve_effect(
    key: str,
    item: WorkItem | None,
    item_id: str,
    fence: int,
    existing: EffectRow | None,
    holder: WorkItem | None,
    *,
    ttl_secs: float,
    now: datetime,
) -> tuple[Plan, EffectReservation]:
    """Reserve the side effect ``key`` for the claim ``(item_id, fence)``: `EffectRecorded`
    if it happened; `EffectHeld` while another claim that is still current holds an
    unexpired reservation; `EffectAbandoned` when the reservation's claim is gone
    (reclaimed, re-claimed, settled) or its TTL ran out without a result; otherwise
    `EffectAcquired`. ``holder`` is the work item of the existing reservation's claim."""
    current = check_fence(item, item_id, fence)
    outcome: EffectReservation
    if existing is not None and existing.recorded:
        return Plan(), EffectRecorded(existing.result)
    if existing is None or (existing.item_id, existing.fence) == (item_id, fence):
        outcome = EffectAcquired()
    else:
        holder_current = (
            holder is not None
            and holder.status is WorkItemStatus.CLAIMED
            and holder.fence == existing.fence
        )
        if holder_current and existing.expires_at is not None and existing.expires_at > now:
            return Plan(), EffectHeld(
                item_id=existing.item_id, fence=existing.fence, expires_at=existing.expires_at
            )
        outcome = EffectAbandoned(
            item_id=existing.item_id,
            fence=existing.fence,
            expired_at=existing.expires_at or now,
        )
    row = EffectRow(
        key=key,
        execution_id=current.execution_id,
        node_id=current.node_id,
        item_id=item_id,
        fence=fence,
        expires_at=now + timedelta(seconds=ttl_secs),
        recorded=False,
    )
    return Plan((PutEffect(row=row),)), outcome


def plan_record_effect(
    key: str,
    item: WorkItem | None,
    item_id: str,
    fence: int,
    existing: EffectRow | None,
    *,
    result: JsonValue,
) -> tuple[Plan, bool]:
    """Record a side effect's result as soon as it is known (fenced); False, writing
    nothing, if a result was already recorded (the first one stays)."""
    current = check_fence(item, item_id, fence)
    if existing is not None and existing.recorded:
        return Plan(), False
    row = EffectRow(
        key=key,
        execution_id=current.execution_id,
        node_id=current.node_id,
        item_id=item_id,
        fence=fence,
        expires_at=None,
        recorded=True,
        result=result,
    )
    return Plan((PutEffect(row=row),)), True
