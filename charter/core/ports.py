"""Ports: what the core needs from the world, as Protocols (no I/O here).

`Store` is the one storage port. Every adapter (in-memory reference, SQLite, Postgres)
implements all of it and passes the same contract suite (``tests/contract/``).
Its guarantees:

* **Threads.** One store object may be shared by threads; calls are serialised or
  isolated so each behaves as if alone.

* **Atomicity.** Each method is one transaction: it does everything it says or nothing.
  Bad input (`InvalidInput`, `LimitExceeded`, `UnknownTenant`) is refused before anything is
  written.
* **Sequences.** The store assigns each execution's event sequences 1, 2, 3… with no gaps,
  inside the transaction that appends them; callers never compute ``latest + 1``.
* **Projections.** An execution's status and its approval records are derived by the store
  from the events it appends (`charter.core.materialize.status_after`,
  `charter.core.approvals.approval_step`), in the same transaction: they can never disagree
  with the log.
* **Fences.** `claim` sets an item to ``claimed`` with a lease and a fence one greater than
  any fence the item had. `heartbeat`, `commit`, `park` and `fail` succeed only for the
  current fence of a *claimed* item; otherwise they raise `FenceLost` and write nothing.
  A settled or reclaimed item therefore rejects its old fence.
* **Reclaim.** `reclaim_expired` turns every claimed item whose lease has expired into a
  failure (`charter.core.queue.plan_failure` with `LEASE_EXPIRED`): retry with backoff and
  ``node_failed{retryable: true}`` + ``retry_scheduled``, or dead-letter with
  ``node_failed{retryable: false}`` — the item change and its events in one transaction. It
  only ever touches claimed items, so it is idempotent and never resurrects a settled one.
* **Ledger.** Each execution has a budget ledger (`BudgetState`) changed only by the usage
  deltas of `commit` and `fail` (atomic increments): never by user state.
* **Approvals.** A ``tool_approval_required`` event opens a request; `decide_approval`
  records a decision only for the open request and only from a permitted approver; an
  ``approval_consumed`` event in a `commit` uses the approval up, and the commit fails with
  `Conflict` (writing nothing) if the approval is not there to use.
* **Effects.** `reserve_effect` lets one claim own a tool side effect before firing it;
  the result is recorded by the `commit` that settles the item, and a later claim gets
  the recorded result instead of firing again.
* **Time** comes from the store's injected `Clock`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

import attrs

from charter.core.approvals import ApprovalRefused
from charter.core.budget import BudgetState, Usage
from charter.core.compaction import Compaction
from charter.core.errors import CharterError
from charter.core.events import ApprovalDecision, Event, EventKind, JsonValue
from charter.core.limits import LimitCharge
from charter.core.policy import PolicySet
from charter.core.records import (
    ChainLink,
    Claim,
    EffectReservation,
    Execution,
    ExecutionStatus,
    NewWorkItem,
    Page,
    PendingApprovalRecord,
    Snapshot,
    Tenant,
    WorkflowDefinition,
    WorkItem,
    WorkItemStatus,
)
from charter.core.signing import Signature

__all__ = [
    "Clock",
    "CommitRequest",
    "Committed",
    "EffectResult",
    "Executor",
    "GroupCommitted",
    "NodeCall",
    "NodeResult",
    "ReclaimResult",
    "Store",
]


@attrs.frozen(kw_only=True)
class NodeCall:
    """What an executor is asked to do: one attempt of one node.

    ``args`` are the node's static arguments (its kind's ``args``); ``state`` the workflow
    state when the attempt began; ``idempotency_key`` identifies this call for external
    systems that deduplicate; ``emit(chunk)`` streams a partial result (recorded in order, in
    the same commit as the result, as ``agent_tool_progress`` events). ``workflow_id`` names
    the workflow the execution runs (``None`` when the caller does not say).
    """

    execution_id: str
    node_id: str
    attempt: int
    kind_tag: str
    kind: Mapping[str, Any]
    tool_name: str | None
    model_ref: str | None
    resolved_model: str | None
    args: JsonValue
    state: JsonValue
    inputs: JsonValue
    config: JsonValue = None
    idempotency_key: str
    emit: Callable[[JsonValue], None] = attrs.field(eq=False, repr=False)
    workflow_id: str | None = None


@attrs.frozen(kw_only=True)
class NodeResult:
    """What an attempt produced: its output, the state patch to merge, what it consumed."""

    output: JsonValue = None
    state_patch: JsonValue = None
    usage: Usage = attrs.field(factory=Usage)
    gen_ai_system: str | None = None
    gen_ai_model: str | None = None
    finish_reason: str | None = None


class Executor(Protocol):
    """Runs one node attempt. Raise `charter.core.errors.ExecutorFailed` to fail it (saying
    whether a retry may help); any other exception is a retryable failure too — never a
    success."""

    def __call__(self, call: NodeCall) -> NodeResult: ...


class Clock(Protocol):
    """A source of the current time (timezone-aware UTC)."""

    def now(self) -> datetime: ...


@attrs.frozen(kw_only=True)
class EffectResult:
    """A tool side effect's result, recorded under its idempotency key."""

    key: str
    result: JsonValue


@attrs.frozen(kw_only=True)
class CommitRequest:
    """Everything one claimed attempt writes when it ends, in one transaction.

    ``outcome`` is the item's terminal status: ``completed``, ``held`` (waiting for a
    person) or ``failed``. ``events`` are appended in order. ``usage`` and ``succeeded`` change
    the execution's budget ledger (``succeeded`` True resets the consecutive-error count, False
    extends it, None leaves it). ``write_snapshot`` folds the new events into the latest
    snapshot and stores the result at the last new sequence (``None``, the default: when
    the commit's events cross the run's snapshot interval: `charter.core.commit.snapshot_due`).
    ``effect`` records a tool side effect's result.

    ``then_events`` and ``then_items`` are what the caller plans to append and enqueue next
    (the scheduler's next step), written in the same transaction after ``events`` — but only
    if the execution's latest event, just before ``events``, is ``then_if_last_sequence``:
    the log the plan was made from. Otherwise they are left out (no error): the caller sees
    that from the returned events and plans again from the log. ``then_items`` must belong
    to the item's execution.
    """

    item_id: str
    fence: int
    outcome: WorkItemStatus
    events: tuple[EventKind, ...] = ()
    usage: Usage | None = None
    succeeded: bool | None = None
    write_snapshot: bool | None = None
    effect: EffectResult | None = None
    then_events: tuple[EventKind, ...] = ()
    then_items: tuple[NewWorkItem, ...] = ()
    then_if_last_sequence: int | None = None


@attrs.frozen(kw_only=True)
class Committed:
    """What `Store.commit_and_claim` wrote: the appended events (the claim's
    ``node_started`` last, if it claimed) and the claim of a follow-up item it made in the
    same transaction (``None``: nothing was claimed)."""

    events: tuple[Event, ...] = ()
    claim: Claim | None = None


@attrs.frozen(kw_only=True)
class GroupCommitted:
    """What `Store.commit_group` did: for each request, in order, the events its commit
    appended, or the error that refused it (`FenceLost`, `Conflict`, `NotFound`,
    `InvalidInput`…: that commit wrote nothing, the others stand); and the claims made
    in the same transaction after the commits (each with its own ``node_started``)."""

    results: tuple[tuple[Event, ...] | CharterError, ...] = ()
    claims: tuple[Claim, ...] = ()

    @property
    def events(self) -> tuple[Event, ...]:
        """Every event the group appended, in the order appended (the claims' last)."""
        appended = [
            event for result in self.results if isinstance(result, tuple) for event in result
        ]
        for claim in self.claims:
            appended += claim.events
        return tuple(appended)


@attrs.frozen(kw_only=True)
class ReclaimResult:
    """What one reclaim pass did: items put back for retry, items dead-lettered, and items
    held because their last attempt's side effect may have happened (``outcome_unknown``)."""

    retried: tuple[WorkItem, ...] = ()
    dead_lettered: tuple[WorkItem, ...] = ()
    held: tuple[WorkItem, ...] = ()


class Store(Protocol):
    """Durable state: definitions, executions, the event log, snapshots, tenants, the
    budget ledger, approvals, tool effects and the fenced work queue (see the module doc)."""

    clock: Clock

    # ── tenants ──
    def put_tenant(self, tenant: Tenant) -> None:
        """Create or replace a tenant (its policy and limits)."""
        ...

    def get_tenant(self, tenant_id: str) -> Tenant | None: ...

    def list_tenants(self) -> tuple[Tenant, ...]:
        """Every tenant, by id."""
        ...

    # ── workflow definitions ──
    def put_workflow(self, definition: WorkflowDefinition) -> None:
        """Store a definition; storing the same (tenant, id, version) again with a different
        IR is a `Conflict` (versions are immutable)."""
        ...

    def get_workflow(
        self, workflow_id: str, version: str, tenant_id: str = "default"
    ) -> WorkflowDefinition | None: ...

    # ── executions and their events ──
    def create_execution(
        self,
        execution: Execution,
        events: Sequence[EventKind] = (),
        items: Sequence[NewWorkItem] = (),
    ) -> tuple[Event, ...]:
        """Create an execution (status derived from ``events``, usually ``workflow_started``)
        with its first events and work items, atomically. Unknown tenant → `UnknownTenant`;
        an existing id → `Conflict`."""
        ...

    def get_execution(self, execution_id: str) -> Execution | None: ...

    def list_executions(
        self,
        *,
        tenant_id: str | None = None,
        status: ExecutionStatus | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[Execution]:
        """Executions in creation order (the order `create_execution` calls committed), a
        page at a time; pass ``next_cursor`` back to continue. Every execution is reachable
        (no "first 100 only")."""
        ...

    def append_events(
        self,
        execution_id: str,
        events: Sequence[EventKind],
        *,
        items: Sequence[NewWorkItem] = (),
        expected_last_sequence: int | None = None,
    ) -> tuple[Event, ...]:
        """Append events and enqueue ``items`` atomically, assigning the next sequences;
        returns the events. With ``expected_last_sequence``, the append happens only if the
        execution's latest sequence is still that one, else `Conflict` and nothing is written
        (compare-and-append: two schedulers folding the same log cannot both dispatch)."""
        ...

    def read_events(
        self, execution_id: str, *, after: int = 0, limit: int | None = None
    ) -> tuple[Event, ...]:
        """Events with a sequence greater than ``after``, ascending."""
        ...

    def read_chain(
        self, execution_id: str, *, after: int = 0, limit: int | None = None
    ) -> tuple[ChainLink, ...]:
        """The execution's events after sequence ``after``, as stored (`ChainLink`), in
        order — what `charter.adapters.chain.ChainVerifier` checks. Unknown execution:
        `NotFound`."""
        ...

    def get_policy_set(self, digest: str) -> PolicySet | None:
        """A policy set this store has held, by its digest: every tenant policy ever put is
        kept, so a recorded decision can be recomputed with the exact policy it saw."""
        ...

    def latest_snapshot(self, execution_id: str) -> Snapshot | None: ...

    # ── compaction (docs/semantics.md §10) ──
    def compactions(self, execution_id: str) -> tuple[Compaction, ...]:
        """The execution's compactions, oldest first (empty: its log is whole). Unknown
        execution: `NotFound`."""
        ...

    def compact(self, execution_id: str, *, through: int, expect_hash: str) -> Compaction:
        """Remove a finished execution's events up to ``through`` — whose stored hash must
        be ``expect_hash`` — in one transaction: its snapshot brought to its end, the events
        deleted, a `Compaction` record summarising them written. Not finished, nothing to
        remove, or another event at the cut: `Conflict`, nothing written. The last event is
        never removed (`charter.core.compaction`)."""
        ...

    def get_ledger(self, execution_id: str) -> BudgetState:
        """The execution's budget ledger (`NotFound` for an unknown execution)."""
        ...

    def limit_charges(
        self, tenant_id: str, limit: str, *, since: datetime
    ) -> tuple[LimitCharge, ...]:
        """The tenant's charges of the windowed limit ``limit`` made at or after ``since``,
        oldest first (each written by a ``limit_charged`` event: `charter.core.limits`)."""
        ...

    # ── the work queue ──
    def enqueue(self, items: Sequence[NewWorkItem]) -> tuple[WorkItem, ...]:
        """Add pending items (for existing executions; their tenant is the execution's).
        Enqueueing an id that exists with the same content is a no-op returning it."""
        ...

    def get_item(self, item_id: str) -> WorkItem | None: ...

    def claim(
        self,
        worker_id: str,
        queues: Sequence[str],
        *,
        lease_secs: float,
        execution_id: str | None = None,
    ) -> Claim | None:
        """Claim the oldest available pending item of ``queues`` (of one execution, with
        ``execution_id``): status claimed, this worker, a lease until now + ``lease_secs``,
        the next fence; appends ``node_started{worker_id, attempt}``. ``None`` when nothing
        is available. The `Claim` carries the events it appended and the item's tenant as of
        the claim (``Claim.events``, ``Claim.tenant``), so the caller reads neither again."""
        ...

    def heartbeat(self, item_id: str, fence: int, *, lease_secs: float) -> datetime:
        """Extend a claim's lease to now + ``lease_secs``; returns the new expiry."""
        ...

    def commit(self, request: CommitRequest) -> tuple[Event, ...]:
        """Settle a claimed item and write everything its attempt produced (see
        `CommitRequest`), in one fenced transaction; returns the appended events. The
        claim's unrecorded effect reservations are released (reclaim keeps them until their
        TTL: a presumed-dead worker may still be firing)."""
        ...

    def commit_and_claim(
        self, request: CommitRequest, worker_id: str, queues: Sequence[str], *, lease_secs: float
    ) -> Committed:
        """`commit`, and in the same transaction the claim ``claim(worker_id, queues,
        lease_secs=lease_secs, execution_id=<the item's execution>)`` would make right
        after it — of the items waiting and those the follow-up (``then_items``) enqueues —
        recorded exactly as that claim records it (the next fence, a lease until now +
        ``lease_secs``, ``node_started`` appended last): one write transaction per node
        instead of two. Only the committed item's execution is looked at, so the claim may
        pass over older items of other executions (the caller bounds how often it
        chains)."""
        ...

    def claim_many(
        self,
        worker_id: str,
        queues: Sequence[str],
        *,
        lease_secs: float,
        limit: int,
        execution_id: str | None = None,
    ) -> tuple[Claim, ...]:
        """Up to ``limit`` claims in one transaction: the claim `claim` would make, then —
        of that item's execution only — the claims it would make right after, one by one,
        each recorded exactly as `claim` records it (its own fence, lease and
        ``node_started``). Empty when nothing is available."""
        ...

    def commit_group(
        self,
        requests: Sequence[CommitRequest],
        worker_id: str | None = None,
        queues: Sequence[str] = (),
        *,
        lease_secs: float = 30.0,
        claim_limit: int = 0,
    ) -> GroupCommitted:
        """The commits of ``requests`` in one transaction, in order, each exactly as
        `commit` alone would make it right after the ones before (each fenced and planned
        on its own): a request refused (a lost fence, say) writes nothing and is reported
        as its error in `GroupCommitted.results` while the others are committed. Then, with
        ``claim_limit`` > 0 and ``worker_id``, the claims `claim_many` would make right
        after, of the first committed item's execution. Bad input of the whole call
        (``claim_limit``, ``worker_id``, ``queues``, ``lease_secs``) is refused before
        anything is written."""
        ...

    def park(
        self, item_id: str, fence: int, *, retry_after: datetime, count_attempt: bool = True
    ) -> tuple[Event, ...]:
        """Put a claimed item back to pending until ``retry_after``
        (`charter.core.queue.plan_park`), releasing its effect reservations."""
        ...

    def fail(
        self,
        item_id: str,
        fence: int,
        *,
        error: str,
        retryable: bool = True,
        delay_ms: int | None = None,
        usage: Usage | None = None,
        events: Sequence[EventKind] = (),
    ) -> tuple[Event, ...]:
        """End a claimed attempt that failed (`charter.core.queue.plan_failure`): retry later,
        dead-letter or fail; ``events`` (the attempt's governance record) are appended before
        the failure's own; the attempt's usage (if any) and one more consecutive error go to
        the ledger; effect reservations are released."""
        ...

    def reclaim_expired(self, *, limit: int = 100) -> ReclaimResult:
        """Fail up to ``limit`` claimed items whose lease has expired (see the module doc)."""
        ...

    # ── approvals ──
    def pending_approvals(
        self, *, tenant_id: str | None = None, execution_id: str | None = None
    ) -> tuple[PendingApprovalRecord, ...]:
        """Open approval requests of executions that are not finished, by execution then
        node."""
        ...

    def decide_approval(
        self,
        execution_id: str,
        node_id: str,
        *,
        user_id: str,
        decision: ApprovalDecision,
        comment: str | None = None,
        state_patch: JsonValue = None,
        signature: Signature | None = None,
        decided_at: str | None = None,
        recorded_by: JsonValue = None,
    ) -> Event | ApprovalRefused:
        """Record a person's decision on the node's open request (bound to its digest), or
        say why it cannot be recorded (nothing open, not a permitted approver, a signature
        missing or not matching when the tenant names the approver's keys:
        `charter.core.answers.plan_decision`)."""
        ...

    def resolve_outcome(
        self,
        execution_id: str,
        node_id: str,
        *,
        user_id: str,
        resolution: str,
        output: JsonValue = None,
        reason: str | None = None,
        comment: str | None = None,
        signature: Signature | None = None,
        decided_at: str | None = None,
        recorded_by: JsonValue = None,
    ) -> Event | ApprovalRefused:
        """Record a person's answer about the node's lost outcome (``succeeded`` with its
        ``output``, ``failed`` with a ``reason``, or ``retry``), authorised like an approval
        (`charter.core.answers.plan_resolution`), or say why it cannot be."""
        ...

    # ── tool effects ──
    def reserve_effect(
        self, key: str, *, item_id: str, fence: int, ttl_secs: float
    ) -> EffectReservation:
        """Reserve the side effect ``key`` for this claim until now + ``ttl_secs``:
        `EffectAcquired` (fire it), `EffectHeld` (another live claim owns it) or
        `EffectRecorded` (it already happened: use the result)."""
        ...

    def get_effect(self, key: str) -> JsonValue | None:
        """The recorded result of a side effect, if any."""
        ...

    def record_effect(self, key: str, *, item_id: str, fence: int, result: JsonValue) -> bool:
        """Record a side effect's result as soon as it is known, before the commit that
        settles the item (so a crash in between replays the result instead of firing again).
        Fenced; returns False if a result was already recorded (the first one stays)."""
        ...

    def close(self) -> None: ...
