"""The one write path every store shares: read → plan (`charter.core.commit`) → write.

`PlannedStore` implements every writing method of the `Store` port once. Each method checks
its input (`charter.adapters.store_support`), opens one transaction of the concrete store,
reads what the core's planner asks for through the store's `Tx`, hands it to the planner
and writes the plan's writes back through the same `Tx`. The concrete stores (memory,
SQLite, Postgres) supply only `Tx` — one small method per read or write, each a lookup or a
statement — and their read-only queries.

**The lock order** (the one place it is written down; docs/store.md repeats it): within a
transaction, rows are read — and, where the database locks rows, locked — in this order:

1. work items (the claimed item; the expired items of a reclaim, in lease order);
2. executions, by id in ascending order (`Tx.head` locks the row and reads the latest
   sequence and hash; `Tx.next_claimable` and `Tx.settling` read and lock an item and then
   its execution's row in one statement);
3. the execution's ledger (read only under its execution's lock);
4. approval records, effect rows, then any other work items (follow-ups, by id). The one
   exception: an effect reservation's holder is read by `Tx.holder`, which locks nothing (a
   commit locks its item, then deletes its reservations: locking the holder after the
   effect row would wait in the other order).

Writes come after every read. Two transactions therefore never wait for each other in a
cycle, and every total read under a lock may be written back whole.

**Events.** The planner numbers appended events; here each gets a random id, the
transaction's time and its link in the hash chain (`charter.adapters.chain`), continuing
from the execution's head as read.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, TypeVar

import attrs

from charter.adapters import store_support as checks
from charter.adapters.chain import GENESIS, link_hashes
from charter.adapters.keys import verify
from charter.adapters.tx import Tx
from charter.core import answers, compaction
from charter.core import commit as planner
from charter.core.approvals import ApprovalRefused
from charter.core.budget import Usage
from charter.core.commit import (
    AppendEvents,
    ChargeLimits,
    CommitReads,
    Head,
    InsertExecution,
    InsertItem,
    Plan,
    PutApproval,
    PutEffect,
    PutLedger,
    ReleaseEffects,
    SetStatus,
    UpdateItem,
    WriteSnapshot,
)
from charter.core.compaction import Compaction
from charter.core.errors import CharterError, Conflict, FenceLost, InvalidInput, NotFound
from charter.core.events import ApprovalDecision, Event, EventKind, JsonValue
from charter.core.materialize import Materialized, apply_events
from charter.core.policy import PolicySet
from charter.core.ports import Clock, CommitRequest, Committed, GroupCommitted, ReclaimResult
from charter.core.records import (
    Claim,
    EffectReservation,
    Execution,
    NewWorkItem,
    Snapshot,
    Tenant,
    WorkflowDefinition,
    WorkItem,
    check_identifier,
    encode_json,
)
from charter.core.signing import Signature

__all__ = ["PlannedStore"]

T = TypeVar("T")


#: The refusals of one commit of a group (`commit_group`): raised by its planner before it
#: writes anything, so the other commits of the transaction stand.
_PER_COMMIT: Final = (FenceLost, NotFound, Conflict, InvalidInput)

#: The event types a resolution reads (`Tx.node_events`).
_OUTCOME_TYPES: Final = ("outcome_unknown", "outcome_resolved")


def _policy(tx: Tx, head: Head | None) -> PolicySet | None:
    """The tenant's policy in force (who may answer, with which keys)."""
    if head is None:
        return None
    tenant = tx.tenant(head.tenant_id)
    return tenant.policy if tenant is not None else None


@attrs.frozen
class _Proof:
    """What an answer carries to prove who gave it (docs/semantics.md §5.1)."""

    signature: Signature | None
    decided_at: str | None
    recorded_by: JsonValue

    def fields(self) -> dict[str, Any]:
        return {
            "verify": verify,
            "signature": self.signature,
            "decided_at": self.decided_at,
            "recorded_by": self.recorded_by,
        }


class PlannedStore(abc.ABC):
    """The writing half of the `Store` port, implemented once over a concrete store's `Tx`
    (see the module doc). A subclass provides `_transact` and the read-only queries."""

    clock: Clock
    _new_id: Callable[[], str]
    #: Whether the store locks rows (Postgres), rather than the whole store (memory, SQLite's
    #: ``BEGIN IMMEDIATE``): only then must a group lock its items before any execution.
    _locks_rows: bool = False

    @abc.abstractmethod
    def _transact(self, work: Callable[[Tx], T]) -> T:
        """Run ``work`` in one write transaction: all its writes or none."""

    # ── applying a plan ──

    def _apply(self, tx: Tx, plan: Plan, heads: Mapping[str, Head]) -> tuple[Event, ...]:
        """Write ``plan`` (``heads``: the heads read, where each execution's chain goes on);
        returns the appended events."""
        appended: list[Event] = []
        chain = dict(heads)
        # Consecutive appends to one execution (a commit's events, its follow-up, the next
        # claim's ``node_started``) are written as one batch — one stamp, one run of the hash
        # chain, one statement — when only writes that neither read nor write events come
        # between them (`store_support.DEFERRABLE`): the same rows, in fewer statements.
        batch: list[AppendEvents] = []
        for write in plan.writes:
            if batch and not (
                isinstance(write, checks.DEFERRABLE)
                or (isinstance(write, AppendEvents) and write.execution_id == batch[0].execution_id)
            ):
                appended += self._append(tx, checks.joined_appends(batch), chain)
                batch = []
            match write:
                case AppendEvents():
                    batch.append(write)
                case UpdateItem():
                    tx.update_item(write)
                case InsertItem():
                    tx.insert_item(write.item, checks.check_new_item_payload(write.item.payload))
                case SetStatus():
                    tx.set_status(write)
                case PutApproval():
                    tx.put_approval(write)
                case PutLedger():
                    tx.put_ledger(write)
                case PutEffect():
                    row = write.row
                    text = encode_json(row.result, "effect.result") if row.recorded else None
                    tx.put_effect(row, text)
                case ReleaseEffects():
                    tx.release_effects(write)
                case WriteSnapshot():
                    self._snapshot(tx, write.execution_id)
                case ChargeLimits():
                    tx.charge_limits(write)
                case InsertExecution():
                    execution = write.execution
                    tx.insert_execution(
                        execution, encode_json(execution.initial_input, "initial_input")
                    )
                    chain[execution.execution_id] = Head(
                        execution_id=execution.execution_id,
                        tenant_id=execution.tenant_id,
                        status=execution.status,
                        last_sequence=0,
                    )
        if batch:
            appended += self._append(tx, checks.joined_appends(batch), chain)
        return tuple(appended)

    def _append(self, tx: Tx, write: AppendEvents, chain: dict[str, Head]) -> list[Event]:
        head = chain[write.execution_id]
        if write.first_sequence != head.last_sequence + 1:
            raise AssertionError(
                f"planned sequence {write.first_sequence} does not follow {head.last_sequence}"
            )
        texts = write.texts if write.texts is not None else checks.encode_events(write.kinds)
        moment = tx.event_time(write.execution_id)
        stamp = checks.stamp_text(moment)
        ids = [self._new_id() for _ in texts]
        links = link_hashes(
            execution_id=write.execution_id,
            first_sequence=write.first_sequence,
            prev_hash=head.head_hash if head.last_sequence and head.head_hash else GENESIS,
            created_at=stamp,
            event_ids=ids,
            kind_texts=texts,
        )
        events = [
            Event(
                id=event_id,
                execution_id=write.execution_id,
                sequence=sequence,
                kind=kind,
                created_at=moment,
                prev_hash=prev,
                hash=this,
            )
            for sequence, (event_id, kind, (prev, this)) in enumerate(
                zip(ids, write.kinds, links, strict=True), start=write.first_sequence
            )
        ]
        tx.insert_events(head, events, texts)
        chain[write.execution_id] = Head(
            execution_id=head.execution_id,
            tenant_id=head.tenant_id,
            status=head.status,
            last_sequence=write.last_sequence,
            head_hash=events[-1].hash,
        )
        return events

    @staticmethod
    def _snapshot(tx: Tx, execution_id: str) -> None:
        previous, initial = tx.snapshot_base(execution_id)
        if previous is None:
            current = Materialized(state=initial if isinstance(initial, dict) else {})
        else:
            current = Materialized.from_json(previous.state, previous.at_sequence)
        events, last = tx.events_after(execution_id, current.last_sequence)
        current = apply_events(current, events, last_sequence=last)
        tx.put_snapshot(
            Snapshot(
                execution_id=execution_id,
                at_sequence=current.last_sequence,
                state=checks.plain_json(current.to_json()),
                created_at=tx.now,
            )
        )

    @staticmethod
    def _approvals(tx: Tx, execution_id: str, kinds: Sequence[EventKind]) -> dict[str, Any]:
        return {
            node_id: tx.approval(execution_id, node_id)
            for node_id in sorted(planner.approval_nodes(kinds))
        }

    # ── tenants and definitions ──

    def put_tenant(self, tenant: Tenant) -> None:
        checks.check_tenant(tenant)
        self._transact(lambda tx: tx.put_tenant(tenant, tenant.policy is not None))

    def put_workflow(self, definition: WorkflowDefinition) -> None:
        ir_json = checks.check_workflow(definition)

        def work(tx: Tx) -> None:
            if not tx.tenant_exists(definition.tenant_id):
                raise checks.unknown_tenant(definition.tenant_id)
            existing = tx.workflow(definition.tenant_id, definition.workflow_id, definition.version)
            if planner.plan_put_workflow(existing, definition):
                tx.insert_workflow(definition, ir_json)

        self._transact(work)

    # ── executions and events ──

    def create_execution(
        self,
        execution: Execution,
        events: Sequence[EventKind] = (),
        items: Sequence[NewWorkItem] = (),
    ) -> tuple[Event, ...]:
        checks.check_execution(execution)
        texts = checks.encode_events(events)
        for item in items:
            checks.check_new_item(item)

        def work(tx: Tx) -> tuple[Event, ...]:
            plan = planner.plan_create_execution(
                execution,
                events,
                items,
                tenant_known=tx.tenant_exists(execution.tenant_id),
                exists=tx.head(execution.execution_id) is not None,
                existing_items=tx.items([item.item_id for item in items]),
                now=tx.now,
                texts=texts,
            )
            return self._apply(tx, plan, {})

        return self._transact(work)

    def append_events(
        self,
        execution_id: str,
        events: Sequence[EventKind],
        *,
        items: Sequence[NewWorkItem] = (),
        expected_last_sequence: int | None = None,
    ) -> tuple[Event, ...]:
        texts = checks.encode_events(events)
        for item in items:
            checks.check_new_item(item)

        def work(tx: Tx) -> tuple[Event, ...]:
            head = tx.head(execution_id)
            plan = planner.plan_append(
                execution_id,
                head,
                events,
                items,
                approvals=self._approvals(tx, execution_id, events) if head else {},
                existing_items=tx.items([item.item_id for item in items]),
                expected_last_sequence=expected_last_sequence,
                now=tx.now,
                texts=texts,
            )
            return self._apply(tx, plan, {execution_id: head} if head else {})

        return self._transact(work)

    # ── the work queue ──

    def enqueue(self, items: Sequence[NewWorkItem]) -> tuple[WorkItem, ...]:
        for item in items:
            checks.check_new_item(item)

        def work(tx: Tx) -> tuple[WorkItem, ...]:
            tenants = {}
            for execution_id in sorted({item.execution_id for item in items}):
                head = tx.head(execution_id)
                if head is not None:
                    tenants[execution_id] = head.tenant_id
            existing = tx.items([item.item_id for item in items])
            plan = planner.plan_enqueue(items, tenants=tenants, existing_items=existing, now=tx.now)
            self._apply(tx, plan, {})
            inserted = {w.item.item_id: w.item for w in plan.writes if isinstance(w, InsertItem)}
            return tuple(inserted.get(item.item_id) or existing[item.item_id] for item in items)

        return self._transact(work)

    def claim(
        self,
        worker_id: str,
        queues: Sequence[str],
        *,
        lease_secs: float,
        execution_id: str | None = None,
    ) -> Claim | None:
        checks.check_claim_args(worker_id, queues, lease_secs, execution_id)
        if not queues:
            return None

        def work(tx: Tx) -> Claim | None:
            found = tx.next_claimable(tuple(dict.fromkeys(queues)), execution_id)
            if found is None:
                return None
            item, head = found
            plan, claimed = planner.plan_claim(
                item, head, worker_id=worker_id, lease_secs=lease_secs, now=tx.now
            )
            events = self._apply(tx, plan, {head.execution_id: head})
            return self._claim_of(tx, claimed, events)

        return self._transact(work)

    @staticmethod
    def _claim_of(tx: Tx, claimed: WorkItem, events: Sequence[Event]) -> Claim:
        """The `Claim` of ``claimed``, with the events its claim appended and its tenant
        (read in the claim's transaction: the claimant need not read either again)."""
        assert claimed.lease_expires_at is not None
        return Claim(
            item=claimed,
            fence=claimed.fence,
            lease_expires_at=claimed.lease_expires_at,
            events=tuple(events),
            tenant=tx.tenant(claimed.tenant_id),
        )

    def heartbeat(self, item_id: str, fence: int, *, lease_secs: float) -> datetime:
        checks.check_seconds(lease_secs, "lease_secs")

        def work(tx: Tx) -> datetime:
            plan, expires = planner.plan_heartbeat(
                tx.item(item_id), item_id, fence, lease_secs=lease_secs, now=tx.now
            )
            self._apply(tx, plan, {})
            return expires

        return self._transact(work)

    def commit(self, request: CommitRequest) -> tuple[Event, ...]:
        return self._commit(request, None).events

    def commit_and_claim(
        self, request: CommitRequest, worker_id: str, queues: Sequence[str], *, lease_secs: float
    ) -> Committed:
        checks.check_claim_args(worker_id, queues, lease_secs, None)
        chain = planner.ChainSpec(
            worker_id=worker_id, queues=tuple(dict.fromkeys(queues)), lease_secs=lease_secs
        )
        return self._commit(request, chain)

    def _commit(self, request: CommitRequest, chain: planner.ChainSpec | None) -> Committed:
        spec = checks.commit_spec(request)
        return self._transact(lambda tx: self._commit_in(tx, spec, chain))

    def _plan_commit_in(
        self, tx: Tx, spec: planner.CommitSpec, chain: planner.ChainSpec | None
    ) -> tuple[Plan, WorkItem | None, Head | None]:
        """A commit's reads inside the open transaction ``tx``, in the lock order, and its
        plan (`plan_commit_then_claim`); a domain error is raised here, before anything of
        this commit is written. Returns the plan, the item it claims and the head read."""
        found = tx.settling(spec.item_id)
        if found is None or found[0].fence != spec.fence:  # refused before any other read
            planner.plan_commit(spec, CommitReads(item=found and found[0]), now=tx.now)
        assert found is not None
        item, head, reserved = found
        wants_ledger, nodes, wants_effect, item_ids = planner.commit_reads_needed(spec)
        reads = CommitReads(
            item=item,
            head=head,
            reserved=reserved,
            ledger=tx.ledger(item.execution_id) if wants_ledger and head else None,
            approvals={n: tx.approval(item.execution_id, n) for n in sorted(nodes)},
            effect=tx.effect(spec.effect_key) if wants_effect and spec.effect_key else None,
            existing_items=tx.items(item_ids) if item_ids else {},
        )
        if chain is not None and head is not None:
            # Of the same execution only, whose row this transaction holds already: the
            # item is read without waiting (a locked one is passed over), so reading it
            # after the execution cannot deadlock.
            next_one = tx.next_claimable(chain.queues, item.execution_id)
            reads = attrs.evolve(reads, claimable=next_one[0] if next_one else None)
        plan, claimed = planner.plan_commit_then_claim(spec, reads, chain, now=tx.now)
        return plan, claimed, head

    def _commit_in(
        self, tx: Tx, spec: planner.CommitSpec, chain: planner.ChainSpec | None
    ) -> Committed:
        """One commit (and, with ``chain``, its claim) inside the open transaction ``tx``."""
        plan, claimed, head = self._plan_commit_in(tx, spec, chain)
        events = self._apply(tx, plan, {head.execution_id: head} if head else {})
        if claimed is None:
            return Committed(events=events)
        # Its ``node_started`` is the last event appended (`plan_commit_then_claim`).
        return Committed(events=events, claim=self._claim_of(tx, claimed, events[-1:]))

    # ── groups: several items in one transaction ──

    def claim_many(
        self,
        worker_id: str,
        queues: Sequence[str],
        *,
        lease_secs: float,
        limit: int,
        execution_id: str | None = None,
    ) -> tuple[Claim, ...]:
        checks.check_claim_args(worker_id, queues, lease_secs, execution_id)
        checks.check_limit(limit)
        if not queues:
            return ()
        wanted = tuple(dict.fromkeys(queues))
        return self._transact(
            lambda tx: self._claims_in(tx, worker_id, wanted, lease_secs, limit, execution_id)
        )

    def _claims_in(
        self,
        tx: Tx,
        worker_id: str,
        queues: tuple[str, ...],
        lease_secs: float,
        limit: int,
        execution_id: str | None,
    ) -> tuple[Claim, ...]:
        """Up to ``limit`` claims inside ``tx``, each the one `claim` would make right after
        the previous (`plan_claim` on the rows as the previous left them): after the first,
        of its execution only, so the transaction locks one execution's row (each item is
        read with ``SKIP LOCKED`` on Postgres: never waited for, so reading it after the
        execution cannot deadlock)."""
        claims: list[Claim] = []
        while len(claims) < limit:
            found = tx.next_claimable(queues, execution_id)
            if found is None:
                break
            item, head = found
            plan, claimed = planner.plan_claim(
                item, head, worker_id=worker_id, lease_secs=lease_secs, now=tx.now
            )
            events = self._apply(tx, plan, {head.execution_id: head})
            if not claims:
                claims.append(self._claim_of(tx, claimed, events))
            else:  # the same execution as the first, so the same tenant: read once
                assert claimed.lease_expires_at is not None
                claims.append(
                    Claim(
                        item=claimed,
                        fence=claimed.fence,
                        lease_expires_at=claimed.lease_expires_at,
                        events=tuple(events),
                        tenant=claims[0].tenant,
                    )
                )
            execution_id = item.execution_id
        return tuple(claims)

    def commit_group(
        self,
        requests: Sequence[CommitRequest],
        worker_id: str | None = None,
        queues: Sequence[str] = (),
        *,
        lease_secs: float = 30.0,
        claim_limit: int = 0,
    ) -> GroupCommitted:
        if claim_limit != 0:  # (0: claim nothing)
            checks.check_limit(claim_limit)
            if worker_id is None:
                raise InvalidInput("worker_id", "required to claim (claim_limit > 0)")
            checks.check_claim_args(worker_id, queues, lease_secs, None)
        # Each request's input is checked on its own: a bad one is reported as its error.
        specs: list[planner.CommitSpec | CharterError] = []
        for request in requests:
            try:
                specs.append(checks.commit_spec(request))
            except InvalidInput as error:
                specs.append(error)
        wanted = tuple(dict.fromkeys(queues))
        chain_spec = None
        if claim_limit and wanted:
            assert worker_id is not None
            chain_spec = planner.ChainSpec(
                worker_id=worker_id, queues=wanted, lease_secs=lease_secs
            )

        def work(tx: Tx) -> GroupCommitted:
            # The lock order: every item first (by id), then the executions as each commit
            # reads its own (the items are already held, so nothing waits out of order).
            if self._locks_rows and len(specs) > 1:
                for item_id in sorted({s.item_id for s in specs if not isinstance(s, Exception)}):
                    tx.item(item_id)
            results: list[tuple[Event, ...] | CharterError] = []
            claims: list[Claim] = []
            run: str | None = None
            chained = False  # whether the last commit made (or looked for) the first claim
            for index, spec in enumerate(specs):
                if isinstance(spec, CharterError):
                    results.append(spec)
                    continue
                # The last commit claims the first item as `commit_and_claim` does (the
                # claim a claim right after the group would make); the others follow.
                chain = chain_spec if index == len(specs) - 1 else None
                try:  # planned on the rows as the commits before it left them
                    plan, claimed, head = self._plan_commit_in(tx, spec, chain)
                except _PER_COMMIT as refused:
                    results.append(refused)
                    continue
                events = self._apply(tx, plan, {head.execution_id: head} if head else {})
                if claimed is not None:  # its ``node_started`` is the last event appended
                    claims.append(self._claim_of(tx, claimed, events[-1:]))
                    events = events[:-1]
                results.append(events)
                run = head.execution_id if head is not None else run
                chained = chain is not None
            if claim_limit and wanted and run is not None and (claims or not chained):
                assert worker_id is not None
                more = claim_limit - len(claims)
                claims += self._claims_in(tx, worker_id, wanted, lease_secs, more, run)
            return GroupCommitted(results=tuple(results), claims=tuple(claims))

        return self._transact(work)

    def park(
        self, item_id: str, fence: int, *, retry_after: datetime, count_attempt: bool = True
    ) -> tuple[Event, ...]:
        checks.check_moment(retry_after, "retry_after")

        def work(tx: Tx) -> tuple[Event, ...]:
            item = tx.item(item_id)
            head = tx.head(item.execution_id) if item is not None else None
            plan = planner.plan_park_item(
                item,
                item_id,
                fence,
                head,
                retry_after=retry_after,
                count_attempt=count_attempt,
                now=tx.now,
            )
            return self._apply(tx, plan, {head.execution_id: head} if head else {})

        return self._transact(work)

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
        checks.check_failure(error, delay_ms)
        checks.encode_events(events)  # (encoded again with the failure's own events)

        def work(tx: Tx) -> tuple[Event, ...]:
            item = tx.item(item_id)
            head = None
            if item is not None and item.fence == fence:
                head = tx.head(item.execution_id)
            ledger = tx.ledger(head.execution_id) if head is not None else None
            plan = planner.plan_fail(
                item,
                item_id,
                fence,
                head,
                ledger,
                error=error,
                retryable=retryable,
                delay_ms=delay_ms,
                usage=usage,
                events=events,
                approvals=self._approvals(tx, head.execution_id, events) if head else {},
                now=tx.now,
            )
            return self._apply(tx, plan, {head.execution_id: head} if head else {})

        return self._transact(work)

    def reclaim_expired(self, *, limit: int = 100) -> ReclaimResult:
        checks.check_limit(limit)

        def work(tx: Tx) -> ReclaimResult:
            expired = tx.expired(limit)
            if not expired:
                return ReclaimResult()
            heads = {
                execution_id: checks.existing(tx.head(execution_id), execution_id)
                for execution_id in sorted({item.execution_id for item in expired})
            }
            last = [i for i in expired if i.attempt + 1 >= i.max_attempts]
            reservations = {
                item.item_id: key
                for item in last
                if (key := tx.reservation(item.item_id, item.fence)) is not None
            }
            plan, retried, dead, held = planner.plan_reclaim(
                expired, heads, now=tx.now, reservations=reservations
            )
            self._apply(tx, plan, heads)
            return ReclaimResult(
                retried=tuple(retried), dead_lettered=tuple(dead), held=tuple(held)
            )

        return self._transact(work)

    # ── approvals ──

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
        encode_json(state_patch, "state_patch")
        proof = _Proof(signature, decided_at, recorded_by)

        def plan(tx: Tx, head: Head | None, now: datetime) -> Plan | ApprovalRefused:
            row = tx.approval(execution_id, node_id) if head is not None else None
            return answers.plan_decision(
                execution_id, head, row, _policy(tx, head), node_id=node_id, user_id=user_id,
                decision=decision, comment=comment, state_patch=state_patch, now=now,
                **proof.fields(),
            )  # fmt: skip

        return self._answer(execution_id, user_id, proof, plan)

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
        """Record a person's answer about a node's lost outcome (`charter.core.answers.
        plan_resolution`): ``succeeded`` (with ``output``), ``failed`` (with ``reason``) or
        ``retry``; refused (`ApprovalRefused`) when nothing waits or the user may not."""
        encode_json(output, "output")
        proof = _Proof(signature, decided_at, recorded_by)

        def plan(tx: Tx, head: Head | None, now: datetime) -> Plan | ApprovalRefused:
            events = tx.node_events(execution_id, node_id, _OUTCOME_TYPES) if head else []
            return answers.plan_resolution(
                execution_id, head, events, _policy(tx, head), node_id=node_id,
                user_id=user_id, resolution=resolution, output=output, reason=reason,
                comment=comment, now=now, **proof.fields(),
            )  # fmt: skip

        return self._answer(execution_id, user_id, proof, plan)

    def _answer(
        self,
        execution_id: str,
        user_id: str,
        proof: _Proof,
        plan: Callable[[Tx, Head | None, datetime], Plan | ApprovalRefused],
    ) -> Event | ApprovalRefused:
        """One person's answer (an approval or a resolution), planned by ``plan`` in one
        transaction: its input checked first, refused or recorded as one event."""
        check_identifier(user_id, "user_id")
        encode_json(proof.recorded_by, "recorded_by")
        checks.check_signature(proof.signature, proof.decided_at)

        def work(tx: Tx) -> Event | ApprovalRefused:
            head = tx.head(execution_id)
            # The answer is planned at the time its event will carry (on Postgres the
            # execution's lock time), so an approval's expires_at is exactly that time
            # plus its validity, as replay recomputes it (docs/semantics.md §5.2).
            moment = tx.event_time(execution_id) if head is not None else tx.now
            planned = plan(tx, head, moment)
            if isinstance(planned, ApprovalRefused):
                return planned
            assert head is not None
            (event,) = self._apply(tx, planned, {execution_id: head})
            return event

        return self._transact(work)

    # ── tool effects ──

    def reserve_effect(
        self, key: str, *, item_id: str, fence: int, ttl_secs: float
    ) -> EffectReservation:
        check_identifier(key, "key")
        checks.check_seconds(ttl_secs, "ttl_secs")

        def work(tx: Tx) -> EffectReservation:
            item = tx.item(item_id)
            existing = tx.effect(key) if item is not None else None
            holder = None
            if existing is not None and not existing.recorded and existing.item_id != item_id:
                holder = tx.holder(existing.item_id)
            plan, outcome = planner.plan_reserve_effect(
                key, item, item_id, fence, existing, holder, ttl_secs=ttl_secs, now=tx.now
            )
            self._apply(tx, plan, {})
            return outcome

        return self._transact(work)

    def record_effect(self, key: str, *, item_id: str, fence: int, result: JsonValue) -> bool:
        check_identifier(key, "key")
        encode_json(result, "result")

        def work(tx: Tx) -> bool:
            item = tx.item(item_id)
            existing = tx.effect(key) if item is not None else None
            plan, recorded = planner.plan_record_effect(
                key, item, item_id, fence, existing, result=result
            )
            self._apply(tx, plan, {})
            return recorded

        return self._transact(work)

    # ── compaction ──

    def compact(self, execution_id: str, *, through: int, expect_hash: str) -> Compaction:
        """Remove a finished execution's events up to ``through`` (whose stored hash must be
        ``expect_hash``), in one transaction: the snapshot brought to the run's end, the
        events deleted, the `Compaction` record written (`charter.core.compaction`)."""
        check_identifier(execution_id, "execution_id")

        def work(tx: Tx) -> Compaction:
            head = tx.head(execution_id)
            history = tx.compactions(execution_id) if head is not None else []
            snapshot = tx.snapshot_base(execution_id)[0] if head is not None else None
            stored = tx.event_hash_at(execution_id, through) if head is not None else None
            plan = compaction.plan_compact(
                execution_id,
                head,
                history,
                snapshot_sequence=snapshot.at_sequence if snapshot is not None else None,
                through=through,
                expect_hash=expect_hash,
                stored_hash=stored,
                now=tx.now,
            )
            if plan.write_snapshot:
                self._snapshot(tx, execution_id)
            tx.delete_events(execution_id, plan.record.through_sequence)
            tx.put_compaction(plan.record)
            return plan.record

        return self._transact(work)
