"""The in-memory store: the reference implementation of the `Store` port.

Simple enough to be obviously right: all data lives in dictionaries of immutable values, one
lock serialises every call, and every call runs against a copy of the tables that replaces the
real ones only when the call succeeds — so a call that raises has written nothing. Scans are
linear; it is meant for tests, embedding and as the model the SQLite and Postgres stores are
checked against, not for large volumes.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta

import attrs

from charter.adapters import store_support as rules
from charter.adapters.chain import canonical_text, event_hash
from charter.adapters.clock import SystemClock
from charter.adapters.codec import dump
from charter.core.approvals import (
    ApprovalRefused,
    ApprovalStatus,
    NotRequested,
    Pending,
    decide_approval,
)
from charter.core.budget import BudgetState, Usage
from charter.core.errors import Conflict, InvalidInput, NotFound, UnknownTenant
from charter.core.events import (
    ApprovalDecision,
    Event,
    EventKind,
    JsonValue,
    NodeStarted,
    ToolApprovalRequired,
)
from charter.core.materialize import Materialized, apply_events, status_after
from charter.core.policy import PolicySet
from charter.core.ports import Clock, CommitRequest, ReclaimResult
from charter.core.queue import LEASE_EXPIRED, plan_failure, plan_park
from charter.core.records import (
    DEFAULT_TENANT,
    ChainLink,
    Claim,
    EffectAbandoned,
    EffectAcquired,
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
    check_identifier,
    encode_json,
)

__all__ = ["MemoryStore"]


@attrs.frozen(kw_only=True)
class _Effect:
    execution_id: str
    node_id: str
    item_id: str
    fence: int
    expires_at: datetime | None
    recorded: bool
    result: JsonValue = None


@attrs.frozen(kw_only=True)
class _ApprovalRow:
    status: ApprovalStatus
    tenant_id: str
    requested_at: datetime


@attrs.define
class _Tables:
    tenants: dict[str, Tenant] = attrs.Factory(dict)
    workflows: dict[tuple[str, str, str], WorkflowDefinition] = attrs.Factory(dict)
    executions: dict[str, Execution] = attrs.Factory(dict)
    events: dict[str, tuple[Event, ...]] = attrs.Factory(dict)
    snapshots: dict[str, Snapshot] = attrs.Factory(dict)
    ledger: dict[str, BudgetState] = attrs.Factory(dict)
    items: dict[str, WorkItem] = attrs.Factory(dict)
    item_order: dict[str, int] = attrs.Factory(dict)
    execution_order: dict[str, int] = attrs.Factory(dict)
    approvals: dict[tuple[str, str], _ApprovalRow] = attrs.Factory(dict)
    effects: dict[str, _Effect] = attrs.Factory(dict)
    policy_sets: dict[str, PolicySet] = attrs.Factory(dict)
    enqueued: int = 0

    def copy(self) -> _Tables:
        # Values are immutable, so copying the dictionaries copies the state.
        return _Tables(
            tenants=self.tenants.copy(),
            workflows=self.workflows.copy(),
            executions=self.executions.copy(),
            events=self.events.copy(),
            snapshots=self.snapshots.copy(),
            ledger=self.ledger.copy(),
            items=self.items.copy(),
            item_order=self.item_order.copy(),
            execution_order=self.execution_order.copy(),
            policy_sets=self.policy_sets.copy(),
            approvals=self.approvals.copy(),
            effects=self.effects.copy(),
            enqueued=self.enqueued,
        )


class MemoryStore:
    """A `Store` kept in memory (see the module doc)."""

    def __init__(self, clock: Clock | None = None, new_id: Callable[[], str] | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self._new_id = new_id or rules.new_event_id
        self._lock = threading.RLock()
        self._tables = _Tables()
        now = self.clock.now()
        self._tables.tenants[DEFAULT_TENANT] = Tenant(
            tenant_id=DEFAULT_TENANT, name="Default", created_at=now, updated_at=now
        )

    # ── transactions ──

    @contextmanager
    def _write(self) -> Iterator[_Tables]:
        with self._lock:
            draft = self._tables.copy()
            yield draft
            self._tables = draft

    def close(self) -> None:
        """Nothing to release."""

    # ── tenants ──

    def put_tenant(self, tenant: Tenant) -> None:
        rules.check_tenant(tenant)
        with self._write() as t:
            t.tenants[tenant.tenant_id] = tenant
            if tenant.policy is not None:  # kept for good: decisions name it by digest
                t.policy_sets.setdefault(tenant.policy.digest, tenant.policy)

    def get_tenant(self, tenant_id: str) -> Tenant | None:
        return self._tables.tenants.get(tenant_id)

    def list_tenants(self) -> tuple[Tenant, ...]:
        tenants = self._tables.tenants
        return tuple(tenants[key] for key in sorted(tenants))

    # ── workflow definitions ──

    def put_workflow(self, definition: WorkflowDefinition) -> None:
        rules.check_workflow(definition)
        key = (definition.tenant_id, definition.workflow_id, definition.version)
        with self._write() as t:
            if definition.tenant_id not in t.tenants:
                raise UnknownTenant("tenant_id", f"unknown tenant {definition.tenant_id!r}")
            existing = t.workflows.get(key)
            if existing is not None:
                if existing.ir != definition.ir:
                    raise Conflict(
                        f"workflow {definition.workflow_id!r} version {definition.version!r} "
                        "is already stored with a different definition (versions are immutable)"
                    )
                return
            t.workflows[key] = definition

    def get_workflow(
        self, workflow_id: str, version: str, tenant_id: str = DEFAULT_TENANT
    ) -> WorkflowDefinition | None:
        return self._tables.workflows.get((tenant_id, workflow_id, version))

    # ── executions and events ──

    def create_execution(
        self,
        execution: Execution,
        events: Sequence[EventKind] = (),
        items: Sequence[NewWorkItem] = (),
    ) -> tuple[Event, ...]:
        check_identifier(execution.execution_id, "execution_id")
        check_identifier(execution.tenant_id, "tenant_id")
        check_identifier(execution.workflow_id, "workflow_id")
        check_identifier(execution.workflow_version, "workflow_version")
        encode_json(execution.initial_input, "initial_input")
        rules.encode_events(events)
        for item in items:
            rules.check_new_item(item)
            if item.execution_id != execution.execution_id:
                raise InvalidInput("items", "every item must belong to the new execution")
        now = self.clock.now()
        with self._write() as t:
            if execution.tenant_id not in t.tenants:
                raise UnknownTenant("tenant_id", f"unknown tenant {execution.tenant_id!r}")
            if execution.execution_id in t.executions:
                raise Conflict(f"execution {execution.execution_id!r} already exists")
            t.executions[execution.execution_id] = attrs.evolve(
                execution,
                status=ExecutionStatus.PENDING,
                created_at=now,
                updated_at=now,
                last_sequence=0,
            )
            t.execution_order[execution.execution_id] = len(t.execution_order) + 1
            t.events[execution.execution_id] = ()
            t.ledger[execution.execution_id] = BudgetState()
            appended = self._append(t, execution.execution_id, events, now)
            self._enqueue(t, items, now)
            return appended

    def get_execution(self, execution_id: str) -> Execution | None:
        return self._tables.executions.get(execution_id)

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

    def append_events(
        self,
        execution_id: str,
        events: Sequence[EventKind],
        *,
        items: Sequence[NewWorkItem] = (),
        expected_last_sequence: int | None = None,
    ) -> tuple[Event, ...]:
        rules.encode_events(events)
        for item in items:
            rules.check_new_item(item)
            if item.execution_id != execution_id:
                raise InvalidInput("items", "every item must belong to the execution")
        with self._write() as t:
            execution = t.executions.get(execution_id)
            if execution is None:
                raise NotFound(f"execution {execution_id!r} does not exist")
            if (
                expected_last_sequence is not None
                and execution.last_sequence != expected_last_sequence
            ):
                raise Conflict(
                    f"execution {execution_id!r} moved on: its latest event is "
                    f"{execution.last_sequence}, not {expected_last_sequence}"
                )
            now = self.clock.now()
            appended = self._append(t, execution_id, events, now)
            self._enqueue(t, items, now)
            return appended

    def read_events(
        self, execution_id: str, *, after: int = 0, limit: int | None = None
    ) -> tuple[Event, ...]:
        rules.check_read(after, limit)
        log = self._tables.events.get(execution_id)
        if log is None:
            raise NotFound(f"execution {execution_id!r} does not exist")
        chosen = log[after:]
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
        return self._tables.snapshots.get(execution_id)

    def get_ledger(self, execution_id: str) -> BudgetState:
        state = self._tables.ledger.get(execution_id)
        if state is None:
            raise NotFound(f"execution {execution_id!r} does not exist")
        return state

    def _append(
        self, t: _Tables, execution_id: str, events: Sequence[EventKind], now: datetime
    ) -> tuple[Event, ...]:
        if not events:
            return ()
        execution = t.executions[execution_id]
        status = execution.status
        sequence = execution.last_sequence
        existing = t.events[execution_id]
        head = rules.chain_head(sequence, existing[-1].hash if existing else None)
        stamp = rules.utc_text(now)
        appended = []
        for kind, text in zip(events, rules.encode_events(events), strict=True):
            sequence += 1
            event_id = self._new_id()
            this = event_hash(
                execution_id=execution_id,
                sequence=sequence,
                event_id=event_id,
                created_at=stamp,
                kind_text=text,
                prev_hash=head,
            )
            event = Event(
                id=event_id,
                execution_id=execution_id,
                sequence=sequence,
                kind=kind,
                created_at=now,
                prev_hash=head,
                hash=this,
            )
            head = this
            appended.append(event)
            status = status_after(status, kind)
            key = (execution_id, getattr(kind, "node_id", ""))
            row = t.approvals.get(key)
            updated = rules.next_approval(row.status if row else None, event)
            if updated is not None:
                fresh = row is None or isinstance(kind, ToolApprovalRequired)
                requested = now if fresh or row is None else row.requested_at
                t.approvals[key] = _ApprovalRow(
                    status=updated, tenant_id=execution.tenant_id, requested_at=requested
                )
        t.events[execution_id] = (*t.events[execution_id], *appended)
        t.executions[execution_id] = attrs.evolve(
            execution, status=status, last_sequence=sequence, updated_at=now
        )
        return tuple(appended)

    def _write_snapshot(self, t: _Tables, execution_id: str, now: datetime) -> None:
        execution = t.executions[execution_id]
        previous = t.snapshots.get(execution_id)
        if previous is None:
            current = Materialized(
                state=execution.initial_input if isinstance(execution.initial_input, dict) else {}
            )
        else:
            current = Materialized.from_json(previous.state, previous.at_sequence)
        current = apply_events(current, t.events[execution_id][current.last_sequence :])
        t.snapshots[execution_id] = Snapshot(
            execution_id=execution_id,
            at_sequence=current.last_sequence,
            state=json.loads(json.dumps(current.to_json())),
            created_at=now,
        )

    # ── the work queue ──

    def enqueue(self, items: Sequence[NewWorkItem]) -> tuple[WorkItem, ...]:
        for item in items:
            rules.check_new_item(item)
        with self._write() as t:
            return self._enqueue(t, items, self.clock.now())

    def _enqueue(
        self, t: _Tables, items: Sequence[NewWorkItem], now: datetime
    ) -> tuple[WorkItem, ...]:
        stored = []
        for new in items:
            existing = t.items.get(new.item_id)
            if existing is not None:
                if not rules.same_item_content(existing, new):
                    raise Conflict(f"work item {new.item_id!r} already exists with other content")
                stored.append(existing)
                continue
            execution = t.executions.get(new.execution_id)
            if execution is None:
                raise NotFound(f"execution {new.execution_id!r} does not exist")
            item = WorkItem(
                item_id=new.item_id,
                tenant_id=execution.tenant_id,
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
            t.enqueued += 1
            t.items[item.item_id] = item
            t.item_order[item.item_id] = t.enqueued
            stored.append(item)
        return tuple(stored)

    def get_item(self, item_id: str) -> WorkItem | None:
        return self._tables.items.get(item_id)

    def claim(
        self,
        worker_id: str,
        queues: Sequence[str],
        *,
        lease_secs: float,
        execution_id: str | None = None,
    ) -> Claim | None:
        rules.check_claim_args(worker_id, queues, lease_secs, execution_id)
        wanted = set(queues)
        with self._write() as t:
            now = self.clock.now()
            candidates = [
                item
                for item in t.items.values()
                if item.status is WorkItemStatus.PENDING
                and item.queue in wanted
                and item.available_at <= now
                and (execution_id is None or item.execution_id == execution_id)
            ]
            if not candidates:
                return None
            chosen = min(candidates, key=lambda i: (i.available_at, t.item_order[i.item_id]))
            expires = now + timedelta(seconds=lease_secs)
            claimed = attrs.evolve(
                chosen,
                status=WorkItemStatus.CLAIMED,
                worker_id=worker_id,
                lease_expires_at=expires,
                fence=chosen.fence + 1,
            )
            t.items[chosen.item_id] = claimed
            started = NodeStarted(
                node_id=claimed.node_id, worker_id=worker_id, attempt=claimed.attempt
            )
            self._append(t, claimed.execution_id, (started,), now)
            return Claim(item=claimed, fence=claimed.fence, lease_expires_at=expires)

    def heartbeat(self, item_id: str, fence: int, *, lease_secs: float) -> datetime:
        rules.check_seconds(lease_secs, "lease_secs")
        with self._write() as t:
            item = rules.check_fence(t.items.get(item_id), item_id, fence)
            expires = self.clock.now() + timedelta(seconds=lease_secs)
            t.items[item_id] = attrs.evolve(item, lease_expires_at=expires)
            return expires

    def commit(self, request: CommitRequest) -> tuple[Event, ...]:
        rules.check_commit(request)
        rules.check_follow_up(request)
        with self._write() as t:
            item = rules.check_fence(t.items.get(request.item_id), request.item_id, request.fence)
            now = self.clock.now()
            last_before = t.executions[item.execution_id].last_sequence
            follow_up = rules.follow_up_applies(request, last_before, item.execution_id)
            t.items[item.item_id] = attrs.evolve(
                item, status=request.outcome, worker_id=None, lease_expires_at=None
            )
            appended = self._append(t, item.execution_id, request.events, now)
            t.ledger[item.execution_id] = rules.apply_ledger(
                t.ledger[item.execution_id], request.usage, request.succeeded
            )
            if request.effect is not None:
                existing = t.effects.get(request.effect.key)
                if existing is None or not existing.recorded:
                    t.effects[request.effect.key] = _Effect(
                        execution_id=item.execution_id,
                        node_id=item.node_id,
                        item_id=item.item_id,
                        fence=request.fence,
                        expires_at=None,
                        recorded=True,
                        result=request.effect.result,
                    )
            self._release_effects(t, item.item_id, request.fence)
            if request.write_snapshot:
                self._write_snapshot(t, item.execution_id, now)
            if follow_up:
                appended += self._append(t, item.execution_id, request.then_events, now)
                self._enqueue(t, request.then_items, now)
            return appended

    def park(
        self, item_id: str, fence: int, *, retry_after: datetime, count_attempt: bool = True
    ) -> tuple[Event, ...]:
        rules.check_moment(retry_after, "retry_after")
        with self._write() as t:
            item = rules.check_fence(t.items.get(item_id), item_id, fence)
            plan = plan_park(item, retry_after=retry_after, count_attempt=count_attempt)
            if plan.available_at is not None:  # parked, pending again
                t.items[item_id] = attrs.evolve(
                    item,
                    status=WorkItemStatus.PENDING,
                    attempt=plan.attempt,
                    available_at=plan.available_at,
                    worker_id=None,
                    lease_expires_at=None,
                )
            else:  # no attempt left: dead-lettered, like a failure
                self._settle_failure(
                    t, item, plan.status, plan.attempt, None, plan.last_error or ""
                )
            self._release_effects(t, item_id, fence)
            return self._append(t, item.execution_id, plan.events, self.clock.now())

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
        rules.check_failure(error, delay_ms)
        rules.encode_events(events)
        with self._write() as t:
            item = rules.check_fence(t.items.get(item_id), item_id, fence)
            now = self.clock.now()
            plan = plan_failure(item, error=error, retryable=retryable, now=now, delay_ms=delay_ms)
            rules.encode_events(plan.events)
            self._settle_failure(
                t, item, plan.status, plan.attempt, plan.available_at, plan.last_error
            )
            self._release_effects(t, item_id, fence)
            t.ledger[item.execution_id] = rules.apply_ledger(
                t.ledger[item.execution_id], usage, False
            )
            return self._append(t, item.execution_id, (*events, *plan.events), now)

    def _settle_failure(
        self,
        t: _Tables,
        item: WorkItem,
        status: WorkItemStatus,
        attempt: int,
        available_at: datetime | None,
        error: str,
    ) -> WorkItem:
        updated = attrs.evolve(
            item,
            status=status,
            attempt=attempt,
            available_at=available_at or item.available_at,
            worker_id=None,
            lease_expires_at=None,
            last_error=error,
        )
        t.items[item.item_id] = updated
        return updated

    def reclaim_expired(self, *, limit: int = 100) -> ReclaimResult:
        rules.check_limit(limit)
        with self._write() as t:
            now = self.clock.now()
            expired = sorted(
                (
                    item
                    for item in t.items.values()
                    if item.status is WorkItemStatus.CLAIMED
                    and item.lease_expires_at is not None
                    and item.lease_expires_at < now
                ),
                key=lambda i: (i.lease_expires_at, t.item_order[i.item_id]),
            )[:limit]
            retried: list[WorkItem] = []
            dead: list[WorkItem] = []
            for item in expired:
                plan = plan_failure(item, error=LEASE_EXPIRED, retryable=True, now=now)
                updated = self._settle_failure(
                    t, item, plan.status, plan.attempt, plan.available_at, plan.last_error
                )
                self._append(t, item.execution_id, plan.events, now)
                (retried if plan.status is WorkItemStatus.PENDING else dead).append(updated)
            return ReclaimResult(retried=tuple(retried), dead_lettered=tuple(dead))

    # ── approvals ──

    def pending_approvals(
        self, *, tenant_id: str | None = None, execution_id: str | None = None
    ) -> tuple[PendingApprovalRecord, ...]:
        records = []
        for (exec_id, node_id), row in sorted(self._tables.approvals.items()):
            if not isinstance(row.status, Pending):
                continue
            if self._tables.executions[exec_id].status.terminal:
                continue  # a finished run has no open questions
            if tenant_id is not None and row.tenant_id != tenant_id:
                continue
            if execution_id is not None and exec_id != execution_id:
                continue
            request = row.status.request
            records.append(
                PendingApprovalRecord(
                    execution_id=exec_id,
                    tenant_id=row.tenant_id,
                    node_id=node_id,
                    tool_name=request.tool_name,
                    approver=request.approver,
                    request_digest=request.request_digest,
                    attempt=request.attempt,
                    context=request.context,
                    sequence=request.sequence,
                    requested_at=row.requested_at,
                )
            )
        return tuple(records)

    def decide_approval(
        self,
        execution_id: str,
        node_id: str,
        *,
        user_id: str,
        decision: ApprovalDecision,
        comment: str | None = None,
        state_patch: JsonValue = None,
    ) -> Event | ApprovalRefused:
        check_identifier(user_id, "user_id")
        encode_json(state_patch, "state_patch")
        with self._write() as t:
            execution = t.executions.get(execution_id)
            if execution is None:
                raise NotFound(f"execution {execution_id!r} does not exist")
            if execution.status.terminal:
                return ApprovalRefused(f"execution {execution_id!r} is {execution.status.value}")
            row = t.approvals.get((execution_id, node_id))
            status = row.status if row is not None else NotRequested()
            answer = decide_approval(
                status, user_id=user_id, decision=decision, comment=comment, state_patch=state_patch
            )
            if isinstance(answer, ApprovalRefused):
                return answer
            rules.encode_events((answer,))
            (event,) = self._append(t, execution_id, (answer,), self.clock.now())
            return event

    # ── tool effects ──

    def reserve_effect(
        self, key: str, *, item_id: str, fence: int, ttl_secs: float
    ) -> EffectReservation:
        check_identifier(key, "key")
        rules.check_seconds(ttl_secs, "ttl_secs")
        with self._write() as t:
            item = rules.check_fence(t.items.get(item_id), item_id, fence)
            now = self.clock.now()
            existing = t.effects.get(key)
            owner_current = False
            if existing is not None:
                holder = t.items.get(existing.item_id)
                owner_current = (
                    holder is not None
                    and holder.status is WorkItemStatus.CLAIMED
                    and holder.fence == existing.fence
                )
            outcome = rules.reservation_outcome(
                recorded=existing is not None and existing.recorded,
                result=existing.result if existing is not None else None,
                owner=(existing.item_id, existing.fence) if existing is not None else None,
                owner_claim_current=owner_current,
                expires_at=existing.expires_at if existing is not None else None,
                claimant=(item_id, fence),
                now=now,
            )
            if isinstance(outcome, EffectAcquired | EffectAbandoned):
                t.effects[key] = _Effect(
                    execution_id=item.execution_id,
                    node_id=item.node_id,
                    item_id=item_id,
                    fence=fence,
                    expires_at=now + timedelta(seconds=ttl_secs),
                    recorded=False,
                )
            return outcome

    def get_effect(self, key: str) -> JsonValue | None:
        effect = self._tables.effects.get(key)
        return effect.result if effect is not None and effect.recorded else None

    def record_effect(self, key: str, *, item_id: str, fence: int, result: JsonValue) -> bool:
        check_identifier(key, "key")
        encode_json(result, "result")
        with self._write() as t:
            item = rules.check_fence(t.items.get(item_id), item_id, fence)
            existing = t.effects.get(key)
            if existing is not None and existing.recorded:
                return False
            t.effects[key] = _Effect(
                execution_id=item.execution_id,
                node_id=item.node_id,
                item_id=item_id,
                fence=fence,
                expires_at=None,
                recorded=True,
                result=result,
            )
            return True

    def _release_effects(self, t: _Tables, item_id: str, fence: int) -> None:
        for key, effect in list(t.effects.items()):
            if not effect.recorded and (effect.item_id, effect.fence) == (item_id, fence):
                del t.effects[key]
