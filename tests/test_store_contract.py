"""The `Store` contract: every adapter passes every test here (the spec is the module doc of
`charter.core.ports`).

Each test runs once per kind in `tests.stores.STORE_KINDS` (ids ``[memory]``, ``[sqlite]``…)
on a fresh store whose time comes from a `ManualClock`. Each test checks one behaviour and
compares exact values: event kinds by class name and by field, items and ledgers as whole
records. "Nothing written" is checked by comparing everything observable about the
execution (`observe`) before and after the refused call.

Upstream's queue/fencing tests (jamjet-semantics.md §9) are ported where the port has the
operation: fences, stale-fence rejection, crash-then-reclaim, park, tool effects, concurrent
commits, sibling snapshots. Term bumps, rollover and store reopening are not part of the port.

A test that the reference memory store is known to fail calls `expect_memory_store_bug`,
which marks it ``xfail(strict=True)`` for that store only (a fix turns it into a failure
that asks for the mark to be removed); other adapters must pass it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Final

import attrs
import pytest

from charter.adapters.clock import ManualClock
from charter.core.approvals import ApprovalRefused
from charter.core.budget import MAX_COST_USD, BudgetState, Usage
from charter.core.errors import (
    BudgetError,
    Conflict,
    FenceLost,
    InvalidInput,
    LimitExceeded,
    NotFound,
    UnknownTenant,
)
from charter.core.events import (
    ApprovalConsumed,
    ApprovalDecision,
    ApprovalReceived,
    Event,
    EventKind,
    InterruptRaised,
    JsonValue,
    NodeCompleted,
    NodeFailed,
    NodeParked,
    NodeStarted,
    RetryScheduled,
    ToolApprovalRequired,
    ToolCalled,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowStarted,
)
from charter.core.policy import PolicySet
from charter.core.ports import CommitRequest, EffectResult, ReclaimResult, Store
from charter.core.queue import LEASE_EXPIRED, backoff_delay_ms
from charter.core.records import (
    DEFAULT_TENANT,
    MAX_ID_LENGTH,
    MAX_PAYLOAD_BYTES,
    Claim,
    EffectAbandoned,
    EffectAcquired,
    EffectHeld,
    EffectRecorded,
    Execution,
    ExecutionStatus,
    NewWorkItem,
    PendingApprovalRecord,
    Tenant,
    TenantLimits,
    WorkflowDefinition,
    WorkItemStatus,
)
from tests.stores import STORE_KINDS, make_store

EXEC: Final = "exec-1"
WORKFLOW: Final = "wf"
QUEUE: Final = "general"
WORKER: Final = "worker-1"
LEASE: Final = 30.0
DIGEST: Final = "sha256:request-1"
EFFECT: Final = "effect-key-1"
TOO_LONG: Final = "x" * (MAX_ID_LENGTH + 1)

COMPLETED: Final = WorkItemStatus.COMPLETED
HELD: Final = WorkItemStatus.HELD
PENDING: Final = WorkItemStatus.PENDING
CLAIMED: Final = WorkItemStatus.CLAIMED


# ── fixtures and helpers ───────────────────────────────────────────────────────────────


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=STORE_KINDS, ids=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock) -> Iterator[Store]:
    kind: str = request.param
    opened = make_store(kind, tmp_path, clock)
    yield opened
    opened.close()


def execution(
    clock: ManualClock,
    execution_id: str = EXEC,
    *,
    tenant_id: str = DEFAULT_TENANT,
    initial_input: JsonValue = None,
) -> Execution:
    now = clock.now()
    return Execution(
        execution_id=execution_id,
        tenant_id=tenant_id,
        workflow_id=WORKFLOW,
        workflow_version="1",
        initial_input=initial_input,
        created_at=now,
        updated_at=now,
    )


def started(initial_input: JsonValue = None) -> WorkflowStarted:
    return WorkflowStarted(workflow_id=WORKFLOW, workflow_version="1", initial_input=initial_input)


def node_of(item_id: str) -> str:
    """The node a helper-made item runs (unless one is given)."""
    return f"node-{item_id}"


def new_item(
    item_id: str,
    *,
    execution_id: str = EXEC,
    node_id: str | None = None,
    queue: str = QUEUE,
    payload: JsonValue = None,
    max_attempts: int = 3,
    backoff_base_ms: int = 1000,
    available_at: datetime | None = None,
) -> NewWorkItem:
    return NewWorkItem(
        item_id=item_id,
        execution_id=execution_id,
        node_id=node_of(item_id) if node_id is None else node_id,
        queue=queue,
        payload=payload,
        max_attempts=max_attempts,
        backoff_base_ms=backoff_base_ms,
        available_at=available_at,
    )


def start(
    store: Store,
    clock: ManualClock,
    n_items: int = 1,
    *,
    execution_id: str = EXEC,
    tenant_id: str = DEFAULT_TENANT,
    initial_input: JsonValue = None,
    **item_options: Any,
) -> tuple[str, ...]:
    """Create a running execution (``workflow_started``) with ``n_items`` pending work items
    in `QUEUE`, enqueued in order; returns their ids."""
    ids = tuple(f"{execution_id}-item-{index}" for index in range(n_items))
    store.create_execution(
        execution(clock, execution_id, tenant_id=tenant_id, initial_input=initial_input),
        [started(initial_input)],
        [new_item(item_id, execution_id=execution_id, **item_options) for item_id in ids],
    )
    return ids


def claim(
    store: Store, *, queues: Sequence[str] = (QUEUE,), worker: str = WORKER, lease: float = LEASE
) -> Claim:
    claimed = store.claim(worker, queues, lease_secs=lease)
    assert claimed is not None, "expected an item to be available"
    return claimed


def completed(
    node_id: str, output: JsonValue = None, state_patch: JsonValue = None
) -> NodeCompleted:
    """A ``node_completed`` event; no ``state_patch`` means the empty patch ``{}`` (a
    ``null`` merge patch would replace the whole state)."""
    patch = {} if state_patch is None else state_patch
    return NodeCompleted(node_id=node_id, output=output, state_patch=patch, duration_ms=5)


def commit(
    store: Store,
    claimed: Claim,
    *events: EventKind,
    outcome: WorkItemStatus = COMPLETED,
    **options: Any,
) -> tuple[Event, ...]:
    return store.commit(
        CommitRequest(
            item_id=claimed.item.item_id,
            fence=claimed.fence,
            outcome=outcome,
            events=events,
            **options,
        )
    )


def complete(store: Store, claimed: Claim, **options: Any) -> tuple[Event, ...]:
    """Commit ``claimed`` as completed with one ``node_completed``."""
    return commit(store, claimed, completed(claimed.item.node_id), **options)


def names(events: Sequence[Event]) -> list[str]:
    return [type(event.kind).__name__ for event in events]


def observe(
    store: Store,
    *item_ids: str,
    execution_id: str = EXEC,
    effect_keys: Sequence[str] = (),
) -> dict[str, object]:
    """Everything the store shows about an execution, some items and some effects."""
    return {
        "execution": store.get_execution(execution_id),
        "events": store.read_events(execution_id),
        "ledger": store.get_ledger(execution_id),
        "snapshot": store.latest_snapshot(execution_id),
        "approvals": store.pending_approvals(execution_id=execution_id),
        "items": {item_id: store.get_item(item_id) for item_id in item_ids},
        "effects": {key: store.get_effect(key) for key in effect_keys},
    }


def terminal_node_events(store: Store, execution_id: str = EXEC) -> list[EventKind]:
    """``node_completed`` and final (not retryable) ``node_failed`` events, in order."""
    return [
        event.kind
        for event in store.read_events(execution_id)
        if isinstance(event.kind, NodeCompleted)
        or (isinstance(event.kind, NodeFailed) and not event.kind.retryable)
    ]


def seconds(n: float) -> timedelta:
    return timedelta(seconds=n)


# ── tenants ────────────────────────────────────────────────────────────────────────────


def tenant(clock: ManualClock, tenant_id: str, **options: Any) -> Tenant:
    now = clock.now()
    return Tenant(tenant_id=tenant_id, created_at=now, updated_at=now, **options)


def test_default_tenant_exists(store: Store) -> None:
    default = store.get_tenant(DEFAULT_TENANT)
    assert default is not None
    assert default.tenant_id == DEFAULT_TENANT
    assert [t.tenant_id for t in store.list_tenants()] == [DEFAULT_TENANT]


def test_put_tenant_is_returned_by_get_tenant(store: Store, clock: ManualClock) -> None:
    acme = tenant(
        clock,
        "acme",
        name="Acme",
        policy=PolicySet(blocked_tools=["payments.*"], approver="alice"),
        limits=TenantLimits(max_concurrent_executions=3, max_cost_per_month_usd=12.5),
    )
    store.put_tenant(acme)
    assert store.get_tenant("acme") == acme


def test_list_tenants_gives_every_tenant_by_id(store: Store, clock: ManualClock) -> None:
    store.put_tenant(tenant(clock, "zeta"))
    store.put_tenant(tenant(clock, "acme"))
    assert [t.tenant_id for t in store.list_tenants()] == ["acme", DEFAULT_TENANT, "zeta"]


def test_put_tenant_replaces_an_existing_tenant(store: Store, clock: ManualClock) -> None:
    store.put_tenant(tenant(clock, "acme", name="Old"))
    clock.advance(5)
    newer = tenant(clock, "acme", name="New", policy=PolicySet(blocked_tools=["x"]))
    store.put_tenant(newer)
    assert store.get_tenant("acme") == newer
    assert [t.tenant_id for t in store.list_tenants()] == ["acme", DEFAULT_TENANT]


def test_get_unknown_tenant_is_none(store: Store) -> None:
    assert store.get_tenant("nobody") is None


def test_create_execution_for_unknown_tenant_is_refused_and_writes_nothing(
    store: Store, clock: ManualClock
) -> None:
    with pytest.raises(UnknownTenant):
        store.create_execution(
            execution(clock, tenant_id="nobody"), [started()], [new_item("item-1")]
        )
    assert store.get_execution(EXEC) is None
    assert store.get_item("item-1") is None
    assert store.list_executions().items == ()
    with pytest.raises(NotFound):
        store.read_events(EXEC)


def test_put_workflow_for_unknown_tenant_is_refused_and_writes_nothing(
    store: Store, clock: ManualClock
) -> None:
    with pytest.raises(UnknownTenant):
        store.put_workflow(definition(clock, tenant_id="nobody"))
    assert store.get_workflow(WORKFLOW, "1", "nobody") is None


# ── workflow definitions ───────────────────────────────────────────────────────────────


def definition(
    clock: ManualClock,
    *,
    version: str = "1",
    tenant_id: str = DEFAULT_TENANT,
    ir: JsonValue = None,
) -> WorkflowDefinition:
    return WorkflowDefinition(
        tenant_id=tenant_id,
        workflow_id=WORKFLOW,
        version=version,
        ir={"nodes": ["a", "b"], "edges": [["a", "b"]]} if ir is None else ir,
        created_at=clock.now(),
    )


def test_put_workflow_is_returned_by_tenant_id_and_version(
    store: Store, clock: ManualClock
) -> None:
    stored = definition(clock)
    store.put_workflow(stored)
    assert store.get_workflow(WORKFLOW, "1") == stored
    assert store.get_workflow(WORKFLOW, "2") is None
    assert store.get_workflow("other", "1") is None


def test_workflows_are_kept_per_tenant(store: Store, clock: ManualClock) -> None:
    store.put_tenant(tenant(clock, "acme"))
    ours = definition(clock, ir={"nodes": ["ours"]})
    theirs = definition(clock, tenant_id="acme", ir={"nodes": ["theirs"]})
    store.put_workflow(ours)
    store.put_workflow(theirs)
    assert store.get_workflow(WORKFLOW, "1") == ours
    assert store.get_workflow(WORKFLOW, "1", "acme") == theirs


def test_put_same_workflow_again_is_a_noop(store: Store, clock: ManualClock) -> None:
    first = definition(clock)
    store.put_workflow(first)
    clock.advance(60)
    store.put_workflow(definition(clock))
    assert store.get_workflow(WORKFLOW, "1") == first


def test_put_workflow_with_other_ir_under_same_version_is_conflict(
    store: Store, clock: ManualClock
) -> None:
    first = definition(clock)
    store.put_workflow(first)
    with pytest.raises(Conflict):
        store.put_workflow(definition(clock, ir={"nodes": ["changed"]}))
    assert store.get_workflow(WORKFLOW, "1") == first


# ── executions ─────────────────────────────────────────────────────────────────────────


def test_create_execution_appends_its_initial_events(store: Store, clock: ManualClock) -> None:
    created = store.create_execution(execution(clock), [started({"a": 1})])
    assert [(e.sequence, e.execution_id, e.kind) for e in created] == [(1, EXEC, started({"a": 1}))]
    assert store.read_events(EXEC) == created
    assert created[0].created_at == clock.now()


def test_create_execution_enqueues_its_items(store: Store, clock: ManualClock) -> None:
    store.create_execution(
        execution(clock), [started()], [new_item("item-1", payload={"k": [1, "two"]})]
    )
    stored = store.get_item("item-1")
    assert stored is not None
    assert (stored.execution_id, stored.tenant_id, stored.node_id, stored.queue) == (
        EXEC,
        DEFAULT_TENANT,
        node_of("item-1"),
        QUEUE,
    )
    assert (stored.status, stored.attempt, stored.fence, stored.payload) == (
        PENDING,
        0,
        0,
        {"k": [1, "two"]},
    )
    assert (stored.available_at, stored.worker_id, stored.lease_expires_at) == (
        clock.now(),
        None,
        None,
    )


def test_create_execution_with_an_invalid_item_creates_nothing(
    store: Store, clock: ManualClock
) -> None:
    items = [new_item("item-ok"), new_item("item-bad", payload={"not", "json"})]
    with pytest.raises(InvalidInput):
        store.create_execution(execution(clock), [started()], items)
    assert store.get_execution(EXEC) is None
    assert store.get_item("item-ok") is None
    assert store.get_item("item-bad") is None
    with pytest.raises(NotFound):
        store.read_events(EXEC)


def test_create_execution_whose_item_conflicts_creates_nothing(
    store: Store, clock: ManualClock
) -> None:
    # The conflict is only found inside the transaction, after the execution, its events
    # and its first item were written there: all of it must roll back.
    start(store, clock, execution_id="exec-0")
    taken = "exec-0-item-0"
    items = [new_item("item-ok"), new_item(taken, payload="other content")]
    with pytest.raises(Conflict):
        store.create_execution(execution(clock), [started()], items)
    assert store.get_execution(EXEC) is None
    assert store.get_item("item-ok") is None
    assert [e.execution_id for e in store.list_executions().items] == ["exec-0"]
    with pytest.raises(NotFound):
        store.read_events(EXEC)


def test_create_execution_with_existing_id_is_conflict_and_changes_nothing(
    store: Store, clock: ManualClock
) -> None:
    start(store, clock)
    before = observe(store)
    with pytest.raises(Conflict):
        store.create_execution(
            execution(clock), [started(), WorkflowFailed("again")], [new_item("item-x")]
        )
    assert observe(store) == before
    assert store.get_item("item-x") is None


def test_execution_without_events_is_pending(store: Store, clock: ManualClock) -> None:
    store.create_execution(execution(clock))
    created = store.get_execution(EXEC)
    assert created is not None
    assert (created.status, created.last_sequence) == (ExecutionStatus.PENDING, 0)


def test_execution_status_is_derived_from_events_not_from_the_record(
    store: Store, clock: ManualClock
) -> None:
    says_done = attrs.evolve(execution(clock), status=ExecutionStatus.COMPLETED, last_sequence=42)
    store.create_execution(says_done, [started()])
    created = store.get_execution(EXEC)
    assert created is not None
    assert (created.status, created.last_sequence) == (ExecutionStatus.RUNNING, 1)


def test_workflow_completed_makes_execution_completed(store: Store, clock: ManualClock) -> None:
    start(store, clock)
    store.append_events(EXEC, [WorkflowCompleted({"done": True})])
    done = store.get_execution(EXEC)
    assert done is not None
    assert (done.status, done.last_sequence) == (ExecutionStatus.COMPLETED, 2)


def test_terminal_execution_status_sticks(store: Store, clock: ManualClock) -> None:
    start(store, clock)
    store.append_events(EXEC, [WorkflowCompleted(None)])
    store.append_events(EXEC, [WorkflowFailed("late"), started(), WorkflowCancelled("late")])
    done = store.get_execution(EXEC)
    assert done is not None
    assert (done.status, done.last_sequence) == (ExecutionStatus.COMPLETED, 5)


def test_interrupt_pauses_and_approval_resumes_execution(store: Store, clock: ManualClock) -> None:
    start(store, clock)
    store.append_events(EXEC, [InterruptRaised(node_id="n", reason="r", state_for_review={})])
    paused = store.get_execution(EXEC)
    store.append_events(
        EXEC,
        [ApprovalReceived(node_id="n", user_id="u", decision=ApprovalDecision.APPROVED)],
    )
    resumed = store.get_execution(EXEC)
    assert paused is not None
    assert resumed is not None
    assert (paused.status, resumed.status) == (ExecutionStatus.PAUSED, ExecutionStatus.RUNNING)


def test_items_take_their_tenant_from_the_execution(store: Store, clock: ManualClock) -> None:
    store.put_tenant(tenant(clock, "acme"))
    start(store, clock, 0, tenant_id="acme")
    (stored,) = store.enqueue([new_item("item-1")])
    assert stored.tenant_id == "acme"


# ── listing executions ──


def test_list_executions_pages_reach_every_execution_in_creation_order(
    store: Store, clock: ManualClock
) -> None:
    # Ids sort in the reverse of creation order, so an id order would show.
    created = [f"exec-{999 - n:03d}" for n in range(250)]
    for execution_id in created:
        store.create_execution(execution(clock, execution_id), [started()])
        clock.advance(0.001)
    pages = []
    cursor: str | None = None
    while True:
        page = store.list_executions(limit=100, cursor=cursor)
        pages.append([e.execution_id for e in page.items])
        cursor = page.next_cursor
        if cursor is None or len(pages) > 10:
            break
    assert [len(p) for p in pages] == [100, 100, 50]
    assert [execution_id for p in pages for execution_id in p] == created


def test_list_executions_pages_do_not_lose_executions_created_at_one_instant(
    store: Store, clock: ManualClock
) -> None:
    # Runs of 7 executions share a creation time, so ties straddle page boundaries.
    created = [f"exec-{n:03d}" for n in range(250)]
    for n, execution_id in enumerate(created):
        store.create_execution(execution(clock, execution_id))
        if n % 7 == 6:
            clock.advance(1)
    listed: list[str] = []
    cursor: str | None = None
    for _ in range(10):
        page = store.list_executions(limit=30, cursor=cursor)
        listed.extend(e.execution_id for e in page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert cursor is None
    assert sorted(listed) == created  # every one, none twice


def test_list_executions_filters_by_tenant(store: Store, clock: ManualClock) -> None:
    store.put_tenant(tenant(clock, "acme"))
    start(store, clock, 0, execution_id="ours-1")
    start(store, clock, 0, execution_id="theirs-1", tenant_id="acme")
    start(store, clock, 0, execution_id="ours-2")
    ours = store.list_executions(tenant_id=DEFAULT_TENANT)
    theirs = store.list_executions(tenant_id="acme")
    assert [e.execution_id for e in ours.items] == ["ours-1", "ours-2"]
    assert [e.execution_id for e in theirs.items] == ["theirs-1"]
    assert ours.next_cursor is None
    assert theirs.next_cursor is None


def test_list_executions_filters_by_status(store: Store, clock: ManualClock) -> None:
    for execution_id in ("e-1", "e-2", "e-3"):
        start(store, clock, 0, execution_id=execution_id)
        clock.advance(1)
    store.append_events("e-2", [WorkflowCompleted(None)])
    running = store.list_executions(status=ExecutionStatus.RUNNING)
    done = store.list_executions(status=ExecutionStatus.COMPLETED)
    assert [e.execution_id for e in running.items] == ["e-1", "e-3"]
    assert [e.execution_id for e in done.items] == ["e-2"]


@pytest.mark.parametrize("cursor", ["", "garbage", "[1, 2]", '["only-one"]', "{}", "null"])
def test_list_executions_rejects_a_cursor_it_did_not_make(
    store: Store, clock: ManualClock, cursor: str
) -> None:
    start(store, clock)
    with pytest.raises(InvalidInput):
        store.list_executions(cursor=cursor)


# ── events ─────────────────────────────────────────────────────────────────────────────


def test_append_events_assigns_the_next_sequences(store: Store, clock: ManualClock) -> None:
    start(store, clock)
    clock.advance(3)
    appended = store.append_events(EXEC, [WorkflowFailed("a"), WorkflowCancelled("b")])
    assert [(e.sequence, e.execution_id, e.created_at) for e in appended] == [
        (2, EXEC, clock.now()),
        (3, EXEC, clock.now()),
    ]
    assert [e.kind for e in appended] == [WorkflowFailed("a"), WorkflowCancelled("b")]
    assert store.read_events(EXEC)[1:] == appended
    assert len({e.id for e in store.read_events(EXEC)}) == 3


def test_append_no_events_appends_nothing(store: Store, clock: ManualClock) -> None:
    start(store, clock)
    before = observe(store)
    assert store.append_events(EXEC, []) == ()
    assert observe(store) == before


def test_sequences_have_no_gaps_across_queue_operations(store: Store, clock: ManualClock) -> None:
    first, second, third = start(store, clock, 3, max_attempts=5)
    complete(store, claim(store))  # first
    retried = claim(store)  # second
    store.fail(second, retried.fence, error="boom", delay_ms=0)
    again = claim(store)  # second again: available now, enqueued before third
    store.park(second, again.fence, retry_after=clock.now() + seconds(600))
    claim(store)  # third
    clock.advance(LEASE + 1)
    store.reclaim_expired()
    store.append_events(EXEC, [WorkflowCompleted(None)])
    events = store.read_events(EXEC)
    assert names(events) == [
        "WorkflowStarted",
        "NodeStarted",
        "NodeCompleted",
        "NodeStarted",
        "NodeFailed",
        "RetryScheduled",
        "NodeStarted",
        "NodeParked",
        "NodeStarted",
        "NodeFailed",
        "RetryScheduled",
        "WorkflowCompleted",
    ]
    assert [e.sequence for e in events] == list(range(1, 13))
    nodes = [node_of(first)] * 2 + [node_of(second)] * 5 + [node_of(third)] * 3
    assert [e.node_id for e in events[1:11]] == nodes
    last = store.get_execution(EXEC)
    assert last is not None
    assert last.last_sequence == 12


def test_read_events_after_is_exclusive_and_ascending(store: Store, clock: ManualClock) -> None:
    start(store, clock)
    store.append_events(EXEC, [WorkflowFailed(str(n)) for n in range(6)])
    assert [e.sequence for e in store.read_events(EXEC, after=3)] == [4, 5, 6, 7]
    assert [e.sequence for e in store.read_events(EXEC, after=0)] == list(range(1, 8))
    assert store.read_events(EXEC, after=7) == ()


def test_read_events_limit_caps_the_count(store: Store, clock: ManualClock) -> None:
    start(store, clock)
    store.append_events(EXEC, [WorkflowFailed(str(n)) for n in range(6)])
    assert [e.sequence for e in store.read_events(EXEC, after=2, limit=2)] == [3, 4]


def test_read_events_of_unknown_execution_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        store.read_events("ghost")


def test_append_events_to_unknown_execution_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        store.append_events("ghost", [WorkflowFailed("x")])
    assert store.get_execution("ghost") is None


# ── the queue: claiming ─────────────────────────────────────────────────────────────────


def test_claim_mints_fence_one_and_a_lease(store: Store, clock: ManualClock) -> None:
    (item_id,) = start(store, clock)
    clock.advance(2)
    claimed = claim(store, lease=45)
    expires = clock.now() + seconds(45)
    assert (claimed.fence, claimed.lease_expires_at) == (1, expires)
    assert claimed.item == store.get_item(item_id)
    assert (claimed.item.status, claimed.item.worker_id, claimed.item.fence) == (CLAIMED, WORKER, 1)
    assert (claimed.item.lease_expires_at, claimed.item.attempt) == (expires, 0)


def test_claim_appends_node_started_with_worker_and_attempt(
    store: Store, clock: ManualClock
) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store, worker="worker-7")
    store.fail(item_id, claimed.fence, error="boom", delay_ms=0)
    claim(store, worker="worker-8")
    started_events = [e for e in store.read_events(EXEC) if isinstance(e.kind, NodeStarted)]
    assert [e.kind for e in started_events] == [
        NodeStarted(node_id=node_of(item_id), worker_id="worker-7", attempt=0),
        NodeStarted(node_id=node_of(item_id), worker_id="worker-8", attempt=1),
    ]
    assert [e.sequence for e in started_events] == [2, 5]


def test_every_new_claim_of_an_item_mints_the_next_fence(store: Store, clock: ManualClock) -> None:
    (item_id,) = start(store, clock, max_attempts=10)
    fences = []
    first = claim(store)
    fences.append(first.fence)
    store.fail(item_id, first.fence, error="boom", delay_ms=0)
    second = claim(store)
    fences.append(second.fence)
    store.park(item_id, second.fence, retry_after=clock.now())
    third = claim(store)
    fences.append(third.fence)
    clock.advance(LEASE + 1)
    assert store.reclaim_expired().retried != ()
    clock.advance(3600)
    fences.append(claim(store).fence)
    assert fences == [1, 2, 3, 4]


def test_claim_returns_none_when_nothing_is_pending(store: Store, clock: ManualClock) -> None:
    start(store, clock, 0)
    assert store.claim(WORKER, [QUEUE], lease_secs=LEASE) is None


def test_claimed_item_is_not_claimed_again(store: Store, clock: ManualClock) -> None:
    start(store, clock)
    claim(store)
    before = observe(store)
    assert store.claim("worker-2", [QUEUE], lease_secs=LEASE) is None
    assert observe(store) == before


def test_claim_takes_items_by_availability_then_enqueue_order(
    store: Store, clock: ManualClock
) -> None:
    start(store, clock, 0)
    store.enqueue([new_item("zulu"), new_item("alpha"), new_item("mike")])
    clock.advance(1)
    store.enqueue([new_item("yankee", available_at=clock.now() - seconds(10))])
    order = [claim(store).item.item_id for _ in range(4)]
    assert order == ["yankee", "zulu", "alpha", "mike"]


def test_claim_ignores_items_of_other_queues(store: Store, clock: ManualClock) -> None:
    start(store, clock, 0)
    store.enqueue([new_item("elsewhere", queue="other"), new_item("here", queue="mine")])
    assert claim(store, queues=["mine", "third"]).item.item_id == "here"
    assert store.claim(WORKER, ["mine", "third"], lease_secs=LEASE) is None
    stored = store.get_item("elsewhere")
    assert stored is not None
    assert stored.status is PENDING


def test_claim_ignores_items_not_yet_available(store: Store, clock: ManualClock) -> None:
    start(store, clock, 0)
    store.enqueue([new_item("later", available_at=clock.now() + seconds(60))])
    clock.advance(59)
    assert store.claim(WORKER, [QUEUE], lease_secs=LEASE) is None
    clock.advance(2)
    assert claim(store).item.item_id == "later"


def test_concurrent_claims_never_hand_out_an_item_twice(store: Store, clock: ManualClock) -> None:
    items = start(store, clock, 20)
    barrier = threading.Barrier(6)
    got: list[Claim] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        barrier.wait()
        while (claimed := store.claim(name, [QUEUE], lease_secs=LEASE)) is not None:
            with lock:
                got.append(claimed)

    threads = [threading.Thread(target=worker, args=(f"w{n}",)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(c.item.item_id for c in got) == sorted(items)
    assert {c.fence for c in got} == {1}
    assert names(store.read_events(EXEC)).count("NodeStarted") == 20


# ── the queue: commit ──────────────────────────────────────────────────────────────────


def test_commit_with_current_fence_settles_and_appends_its_events(
    store: Store, clock: ManualClock
) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    clock.advance(4)
    node = node_of(item_id)
    appended = commit(
        store, claimed, completed(node, {"answer": 42}), WorkflowCompleted({"answer": 42})
    )
    assert [(e.sequence, e.created_at) for e in appended] == [(3, clock.now()), (4, clock.now())]
    assert [e.kind for e in appended] == [
        completed(node, {"answer": 42}),
        WorkflowCompleted({"answer": 42}),
    ]
    assert store.read_events(EXEC)[2:] == appended
    settled = store.get_item(item_id)
    assert settled is not None
    assert (settled.status, settled.worker_id, settled.lease_expires_at) == (COMPLETED, None, None)


@pytest.mark.parametrize(
    "outcome", [WorkItemStatus.COMPLETED, WorkItemStatus.HELD, WorkItemStatus.FAILED]
)
def test_commit_settles_the_item_in_its_outcome(
    store: Store, clock: ManualClock, outcome: WorkItemStatus
) -> None:
    (item_id,) = start(store, clock)
    commit(store, claim(store), outcome=outcome)
    settled = store.get_item(item_id)
    assert settled is not None
    assert settled.status is outcome
    assert store.claim(WORKER, [QUEUE], lease_secs=LEASE) is None


@pytest.mark.parametrize(
    "outcome", [WorkItemStatus.PENDING, WorkItemStatus.CLAIMED, WorkItemStatus.DEAD_LETTERED]
)
def test_commit_outcome_must_be_completed_held_or_failed(
    store: Store, clock: ManualClock, outcome: WorkItemStatus
) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    before = observe(store, item_id)
    with pytest.raises(InvalidInput):
        commit(
            store, claimed, completed(node_of(item_id)), outcome=outcome, usage=Usage(iterations=1)
        )
    assert observe(store, item_id) == before


def test_concurrent_commits_of_one_claim_have_exactly_one_winner(
    store: Store, clock: ManualClock
) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    barrier = threading.Barrier(8)
    outcomes: list[str] = []
    lock = threading.Lock()

    def settle() -> None:
        barrier.wait()
        try:
            complete(store, claimed, usage=Usage(input_tokens=1))
            outcome = "won"
        except FenceLost:
            outcome = "lost"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=settle) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["lost"] * 7 + ["won"]
    assert terminal_node_events(store) == [completed(node_of(item_id))]
    assert store.get_ledger(EXEC).total_input_tokens == 1


# ── the queue: stale fences ────────────────────────────────────────────────────────────
#
# Each scenario leaves an item and a fence that is no longer the item's current claim; each
# operation must then raise FenceLost and write nothing at all.


def _stale_after_reclaim(store: Store, clock: ManualClock) -> tuple[str, int]:
    # Upstream's race: the item is pending again but its fence column still holds the
    # old fence; only the status check rejects it.
    (item_id,) = start(store, clock)
    claimed = claim(store)
    clock.advance(LEASE + 1)
    store.reclaim_expired()
    return item_id, claimed.fence


def _stale_after_reclaim_and_new_claim(store: Store, clock: ManualClock) -> tuple[str, int]:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    clock.advance(LEASE + 1)
    store.reclaim_expired()
    clock.advance(3600)
    claim(store, worker="worker-2")
    return item_id, claimed.fence


def _stale_after_settle(store: Store, clock: ManualClock) -> tuple[str, int]:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    complete(store, claimed)
    return item_id, claimed.fence


def _stale_after_park(store: Store, clock: ManualClock) -> tuple[str, int]:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    store.park(item_id, claimed.fence, retry_after=clock.now() + seconds(60))
    return item_id, claimed.fence


def _stale_after_retry(store: Store, clock: ManualClock) -> tuple[str, int]:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    store.fail(item_id, claimed.fence, error="boom", delay_ms=0)
    claim(store, worker="worker-2")
    return item_id, claimed.fence


def _wrong_fence_number(store: Store, clock: ManualClock) -> tuple[str, int]:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    return item_id, claimed.fence + 1


def _forged_fence_zero_on_pending_item(store: Store, clock: ManualClock) -> tuple[str, int]:
    (item_id,) = start(store, clock)
    return item_id, 0


STALE_FENCES: Final[dict[str, Callable[[Store, ManualClock], tuple[str, int]]]] = {
    "after-reclaim": _stale_after_reclaim,
    "after-reclaim-and-new-claim": _stale_after_reclaim_and_new_claim,
    "after-settle": _stale_after_settle,
    "after-park": _stale_after_park,
    "after-retry-and-new-claim": _stale_after_retry,
    "wrong-number": _wrong_fence_number,
    "forged-zero-on-pending": _forged_fence_zero_on_pending_item,
}


def _commit_with_everything(store: Store, clock: ManualClock, item_id: str, fence: int) -> object:
    return store.commit(
        CommitRequest(
            item_id=item_id,
            fence=fence,
            outcome=COMPLETED,
            events=(completed(node_of(item_id), {"late": True}, {"late": True}),),
            usage=Usage(input_tokens=10, cost_usd=0.5),
            succeeded=True,
            write_snapshot=True,
            effect=EffectResult(key=EFFECT, result="late"),
        )
    )


def _heartbeat(store: Store, clock: ManualClock, item_id: str, fence: int) -> object:
    return store.heartbeat(item_id, fence, lease_secs=LEASE)


def _park(store: Store, clock: ManualClock, item_id: str, fence: int) -> object:
    return store.park(item_id, fence, retry_after=clock.now() + seconds(5))


def _fail(store: Store, clock: ManualClock, item_id: str, fence: int) -> object:
    return store.fail(item_id, fence, error="late", usage=Usage(output_tokens=3))


def _reserve_effect(store: Store, clock: ManualClock, item_id: str, fence: int) -> object:
    return store.reserve_effect(EFFECT, item_id=item_id, fence=fence, ttl_secs=60)


FENCED_OPERATIONS: Final[dict[str, Callable[[Store, ManualClock, str, int], object]]] = {
    "commit": _commit_with_everything,
    "heartbeat": _heartbeat,
    "park": _park,
    "fail": _fail,
    "reserve_effect": _reserve_effect,
}


@pytest.mark.parametrize("operation", FENCED_OPERATIONS.values(), ids=FENCED_OPERATIONS.keys())
@pytest.mark.parametrize("scenario", STALE_FENCES.values(), ids=STALE_FENCES.keys())
def test_stale_fence_is_refused_and_writes_nothing(
    store: Store,
    clock: ManualClock,
    scenario: Callable[[Store, ManualClock], tuple[str, int]],
    operation: Callable[[Store, ManualClock, str, int], object],
) -> None:
    item_id, fence = scenario(store, clock)
    before = observe(store, item_id, effect_keys=[EFFECT])
    with pytest.raises(FenceLost):
        operation(store, clock, item_id, fence)
    assert observe(store, item_id, effect_keys=[EFFECT]) == before


@pytest.mark.parametrize("operation", FENCED_OPERATIONS.values(), ids=FENCED_OPERATIONS.keys())
def test_fenced_operation_on_unknown_item_is_not_found(
    store: Store,
    clock: ManualClock,
    operation: Callable[[Store, ManualClock, str, int], object],
) -> None:
    start(store, clock)
    before = observe(store)
    with pytest.raises(NotFound):
        operation(store, clock, "ghost-item", 1)
    assert observe(store) == before


# ── the queue: heartbeat ───────────────────────────────────────────────────────────────


def test_heartbeat_extends_the_lease(store: Store, clock: ManualClock) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store, lease=30)
    clock.advance(20)
    expires = store.heartbeat(item_id, claimed.fence, lease_secs=30)
    assert expires == clock.now() + seconds(30)
    stored = store.get_item(item_id)
    assert stored is not None
    assert stored.lease_expires_at == expires
    clock.advance(20)  # past the first lease, within the extended one
    before = observe(store, item_id)
    assert store.reclaim_expired() == ReclaimResult()
    assert observe(store, item_id) == before


def test_heartbeat_appends_no_event(store: Store, clock: ManualClock) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    events = store.read_events(EXEC)
    store.heartbeat(item_id, claimed.fence, lease_secs=LEASE)
    assert store.read_events(EXEC) == events


# ── the queue: park ────────────────────────────────────────────────────────────────────


def test_park_counting_the_attempt_puts_the_item_back_one_attempt_later(
    store: Store, clock: ManualClock
) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    retry_after = clock.now() + seconds(120)
    parked = store.park(item_id, claimed.fence, retry_after=retry_after, count_attempt=True)
    assert [e.kind for e in parked] == [
        NodeParked(node_id=node_of(item_id), attempt=1, retry_after=retry_after)
    ]
    assert parked == store.read_events(EXEC)[-1:]
    stored = store.get_item(item_id)
    assert stored is not None
    assert (stored.status, stored.attempt, stored.available_at) == (PENDING, 1, retry_after)
    assert (stored.worker_id, stored.lease_expires_at) == (None, None)


def test_park_without_counting_the_attempt_keeps_the_attempt(
    store: Store, clock: ManualClock
) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    retry_after = clock.now() + seconds(120)
    parked = store.park(item_id, claimed.fence, retry_after=retry_after, count_attempt=False)
    assert [e.kind for e in parked] == [
        NodeParked(node_id=node_of(item_id), attempt=0, retry_after=retry_after)
    ]
    stored = store.get_item(item_id)
    assert stored is not None
    assert (stored.status, stored.attempt, stored.available_at) == (PENDING, 0, retry_after)


def test_a_counted_park_with_no_attempt_left_dead_letters_the_item(
    store: Store, clock: ManualClock
) -> None:
    (item_id,) = start(store, clock, max_attempts=2)
    first = claim(store)
    store.park(item_id, first.fence, retry_after=clock.now())
    second = claim(store)
    assert second.item.attempt == 1
    until = clock.now() + seconds(60)
    events = store.park(item_id, second.fence, retry_after=until, count_attempt=True)
    message = f"exhausted 2 attempts: parked until {until.astimezone(UTC).isoformat()}"
    assert [e.kind for e in events] == [
        NodeFailed(node_id=node_of(item_id), error=message, attempt=1, retryable=False)
    ]
    stored = store.get_item(item_id)
    assert stored is not None
    assert (stored.status, stored.attempt) == (WorkItemStatus.DEAD_LETTERED, 2)
    assert stored.last_error == message
    clock.advance(3600)
    assert store.claim(WORKER, [QUEUE], lease_secs=LEASE) is None  # it never runs again


def test_an_uncounted_park_never_uses_up_attempts(store: Store, clock: ManualClock) -> None:
    (item_id,) = start(store, clock, max_attempts=1)
    for fence in (1, 2, 3):
        claimed = claim(store)
        assert (claimed.item.attempt, claimed.fence) == (0, fence)
        store.park(item_id, claimed.fence, retry_after=clock.now(), count_attempt=False)


def test_park_records_retry_after_in_utc(store: Store, clock: ManualClock) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    local = (clock.now() + seconds(30)).astimezone(timezone(timedelta(hours=2)))
    (event,) = store.park(item_id, claimed.fence, retry_after=local)
    assert isinstance(event.kind, NodeParked)
    assert event.kind.retry_after == local
    assert event.kind.retry_after.utcoffset() == timedelta(0)


@pytest.mark.parametrize("limit", [0, -1, 1001, True, 2.0])
def test_reclaim_refuses_a_bad_limit_and_changes_nothing(
    store: Store, clock: ManualClock, limit: Any
) -> None:
    start(store, clock, 2)
    claim(store)
    claim(store)
    clock.advance(LEASE + 1)
    with pytest.raises(InvalidInput, match="limit"):
        store.reclaim_expired(limit=limit)
    assert [i.status for i in (store.get_item(f"{EXEC}-item-{n}") for n in (0, 1)) if i] == [
        WorkItemStatus.CLAIMED,
        WorkItemStatus.CLAIMED,
    ]


def test_parked_item_is_claimable_only_after_retry_after(store: Store, clock: ManualClock) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    store.park(item_id, claimed.fence, retry_after=clock.now() + seconds(120))
    clock.advance(119)
    assert store.claim(WORKER, [QUEUE], lease_secs=LEASE) is None
    clock.advance(2)
    again = claim(store)
    assert (again.item.item_id, again.item.attempt, again.fence) == (item_id, 1, 2)


def test_park_with_a_past_retry_after_is_claimable_at_once(
    store: Store, clock: ManualClock
) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    clock.advance(10)
    store.park(item_id, claimed.fence, retry_after=clock.now() - seconds(5))
    assert claim(store).item.item_id == item_id


def test_park_leaves_the_ledger_alone(store: Store, clock: ManualClock) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    store.park(item_id, claimed.fence, retry_after=clock.now())
    assert store.get_ledger(EXEC) == BudgetState()


def test_attempt_only_grows_across_park_and_reclaim(store: Store, clock: ManualClock) -> None:
    (item_id,) = start(store, clock, max_attempts=5)
    attempts = []
    claimed = claim(store)
    store.park(item_id, claimed.fence, retry_after=clock.now(), count_attempt=True)
    attempts.append(claim(store).item.attempt)
    clock.advance(LEASE + 1)
    store.reclaim_expired()
    clock.advance(3600)
    attempts.append(claim(store).item.attempt)
    assert attempts == [1, 2]


# ── the queue: fail ────────────────────────────────────────────────────────────────────


def test_retryable_failure_schedules_a_retry_after_the_backoff(
    store: Store, clock: ManualClock
) -> None:
    (item_id,) = start(store, clock, backoff_base_ms=1000)
    claimed = claim(store)
    failed = store.fail(item_id, claimed.fence, error="boom")
    delay = backoff_delay_ms(1, 1000, jitter_key=item_id)
    node = node_of(item_id)
    assert [e.kind for e in failed] == [
        NodeFailed(node_id=node, error="boom", attempt=0, retryable=True),
        RetryScheduled(node_id=node, attempt=1, delay_ms=delay),
    ]
    assert failed == store.read_events(EXEC)[-2:]
    stored = store.get_item(item_id)
    assert stored is not None
    assert (stored.status, stored.attempt, stored.last_error) == (PENDING, 1, "boom")
    assert stored.available_at == clock.now() + timedelta(milliseconds=delay)
    assert (stored.worker_id, stored.lease_expires_at) == (None, None)


def test_failed_item_is_claimable_only_after_its_retry_delay(
    store: Store, clock: ManualClock
) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    failed = store.fail(item_id, claimed.fence, error="boom", delay_ms=5000)
    assert failed[-1].kind == RetryScheduled(node_id=node_of(item_id), attempt=1, delay_ms=5000)
    clock.advance(4.9)
    assert store.claim(WORKER, [QUEUE], lease_secs=LEASE) is None
    clock.advance(0.2)
    again = claim(store)
    assert (again.item.item_id, again.item.attempt, again.fence) == (item_id, 1, 2)


def test_failure_at_the_last_attempt_dead_letters_the_item(
    store: Store, clock: ManualClock
) -> None:
    (item_id,) = start(store, clock, max_attempts=2)
    store.fail(item_id, claim(store).fence, error="boom", delay_ms=0)
    last = claim(store)
    failed = store.fail(item_id, last.fence, error="boom again")
    message = "exhausted 2 attempts: boom again"
    assert [e.kind for e in failed] == [
        NodeFailed(node_id=node_of(item_id), error=message, attempt=1, retryable=False)
    ]
    stored = store.get_item(item_id)
    assert stored is not None
    assert (stored.status, stored.attempt, stored.last_error) == (
        WorkItemStatus.DEAD_LETTERED,
        2,
        message,
    )
    clock.advance(86_400)
    assert store.claim(WORKER, [QUEUE], lease_secs=LEASE) is None


def test_non_retryable_failure_fails_the_item(store: Store, clock: ManualClock) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    failed = store.fail(item_id, claimed.fence, error="bad request", retryable=False)
    assert [e.kind for e in failed] == [
        NodeFailed(node_id=node_of(item_id), error="bad request", attempt=0, retryable=False)
    ]
    stored = store.get_item(item_id)
    assert stored is not None
    assert (stored.status, stored.attempt, stored.last_error) == (
        WorkItemStatus.FAILED,
        0,
        "bad request",
    )
    clock.advance(86_400)
    assert store.claim(WORKER, [QUEUE], lease_secs=LEASE) is None


# ── reclaim ────────────────────────────────────────────────────────────────────────────


def test_reclaim_retries_an_expired_claim(store: Store, clock: ManualClock) -> None:
    (item_id,) = start(store, clock, max_attempts=3, backoff_base_ms=1000)
    claim(store)
    clock.advance(LEASE + 1)
    result = store.reclaim_expired()
    stored = store.get_item(item_id)
    assert stored is not None
    assert result == ReclaimResult(retried=(stored,), dead_lettered=())
    delay = backoff_delay_ms(1, 1000, jitter_key=item_id)
    assert (stored.status, stored.attempt, stored.last_error) == (PENDING, 1, LEASE_EXPIRED)
    assert stored.available_at == clock.now() + timedelta(milliseconds=delay)
    assert (stored.worker_id, stored.lease_expires_at) == (None, None)
    node = node_of(item_id)
    assert [e.kind for e in store.read_events(EXEC)[-2:]] == [
        NodeFailed(node_id=node, error=LEASE_EXPIRED, attempt=0, retryable=True),
        RetryScheduled(node_id=node, attempt=1, delay_ms=delay),
    ]


def test_reclaim_dead_letters_an_expired_claim_at_its_last_attempt(
    store: Store, clock: ManualClock
) -> None:
    (item_id,) = start(store, clock, max_attempts=1)
    claim(store)
    clock.advance(LEASE + 1)
    result = store.reclaim_expired()
    stored = store.get_item(item_id)
    assert stored is not None
    assert result == ReclaimResult(retried=(), dead_lettered=(stored,))
    message = f"exhausted 1 attempts: {LEASE_EXPIRED}"
    assert (stored.status, stored.attempt, stored.last_error) == (
        WorkItemStatus.DEAD_LETTERED,
        1,
        message,
    )
    assert [e.kind for e in store.read_events(EXEC)[-1:]] == [
        NodeFailed(node_id=node_of(item_id), error=message, attempt=0, retryable=False)
    ]


def test_reclaim_is_idempotent(store: Store, clock: ManualClock) -> None:
    (item_id,) = start(store, clock)
    claim(store)
    clock.advance(LEASE + 1)
    store.reclaim_expired()
    before = observe(store, item_id)
    assert store.reclaim_expired() == ReclaimResult()
    assert observe(store, item_id) == before


def test_reclaim_leaves_live_leases_alone(store: Store, clock: ManualClock) -> None:
    (item_id,) = start(store, clock)
    claim(store, lease=30)
    clock.advance(29)
    before = observe(store, item_id)
    assert store.reclaim_expired() == ReclaimResult()
    assert observe(store, item_id) == before


def test_reclaim_never_touches_settled_or_pending_items(store: Store, clock: ManualClock) -> None:
    items = start(store, clock, 6, max_attempts=1)
    commit(store, claim(store), outcome=COMPLETED)
    commit(store, claim(store), outcome=HELD)
    commit(store, claim(store), outcome=WorkItemStatus.FAILED)
    store.fail(items[3], claim(store).fence, error="x", retryable=False)  # failed
    store.fail(items[4], claim(store).fence, error="x")  # dead-lettered
    clock.advance(10 * 3600)  # items[5] stays pending
    before = observe(store, *items)
    assert store.reclaim_expired() == ReclaimResult()
    assert observe(store, *items) == before


def test_reclaim_handles_at_most_limit_items(store: Store, clock: ManualClock) -> None:
    items = start(store, clock, 3)
    for _ in items:
        claim(store)
    clock.advance(LEASE + 1)
    first = store.reclaim_expired(limit=2)
    second = store.reclaim_expired(limit=2)
    assert (len(first.retried), len(second.retried)) == (2, 1)
    assert sorted(i.item_id for i in first.retried + second.retried) == sorted(items)


def test_reclaim_leaves_the_ledger_alone(store: Store, clock: ManualClock) -> None:
    start(store, clock, 1, max_attempts=1)
    claim(store)
    clock.advance(LEASE + 1)
    store.reclaim_expired()
    assert store.get_ledger(EXEC) == BudgetState()


def test_crash_before_commit_then_reclaim_gives_exactly_one_terminal_event(
    store: Store, clock: ManualClock
) -> None:
    (item_id,) = start(store, clock)
    crashed = claim(store, worker="worker-dead")
    clock.advance(LEASE + 1)
    store.reclaim_expired()
    clock.advance(3600)
    alive = claim(store, worker="worker-alive")
    complete(store, alive)
    with pytest.raises(FenceLost):
        complete(store, crashed)  # the "dead" worker wakes up and tries to commit
    assert terminal_node_events(store) == [completed(node_of(item_id))]
    stored = store.get_item(item_id)
    assert stored is not None
    assert stored.status is COMPLETED


# ── the budget ledger ──────────────────────────────────────────────────────────────────


def test_new_execution_has_an_empty_ledger(store: Store, clock: ManualClock) -> None:
    start(store, clock)
    assert store.get_ledger(EXEC) == BudgetState()


def test_commit_usage_accumulates_exactly(store: Store, clock: ManualClock) -> None:
    start(store, clock, 3)
    complete(store, claim(store), usage=Usage(input_tokens=100, output_tokens=7, cost_usd=0.1))
    complete(store, claim(store), usage=Usage(input_tokens=5, cost_usd=0.2, tool_calls=2))
    complete(store, claim(store), usage=Usage(output_tokens=1, iterations=3))
    ledger = store.get_ledger(EXEC)
    assert ledger.cost_nanos == 300_000_000  # 0.1 + 0.2, exactly
    assert ledger == BudgetState(
        total_input_tokens=105,
        total_output_tokens=8,
        total_cost_usd=0.3,
        tool_call_count=2,
        iteration_count=3,
    )


def test_commit_that_succeeded_resets_consecutive_errors(store: Store, clock: ManualClock) -> None:
    (item_id,) = start(store, clock, max_attempts=5)
    store.fail(item_id, claim(store).fence, error="e", delay_ms=0)
    store.fail(item_id, claim(store).fence, error="e", delay_ms=0)
    assert store.get_ledger(EXEC).consecutive_error_count == 2
    complete(store, claim(store), succeeded=True)
    assert store.get_ledger(EXEC).consecutive_error_count == 0


def test_commit_that_did_not_succeed_extends_consecutive_errors(
    store: Store, clock: ManualClock
) -> None:
    start(store, clock, 2)
    complete(store, claim(store), succeeded=False)
    complete(store, claim(store), succeeded=False)
    assert store.get_ledger(EXEC).consecutive_error_count == 2


def test_commit_without_an_outcome_leaves_consecutive_errors(
    store: Store, clock: ManualClock
) -> None:
    start(store, clock, 2)
    complete(store, claim(store), succeeded=False)
    complete(store, claim(store), succeeded=None, usage=Usage(input_tokens=1))
    assert store.get_ledger(EXEC).consecutive_error_count == 1


def test_fail_adds_its_usage_and_one_consecutive_error(store: Store, clock: ManualClock) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    store.fail(item_id, claimed.fence, error="e", usage=Usage(input_tokens=9, cost_usd=0.25))
    assert store.get_ledger(EXEC) == BudgetState(
        total_input_tokens=9, total_cost_usd=0.25, consecutive_error_count=1
    )


def test_stale_commit_does_not_touch_the_ledger(store: Store, clock: ManualClock) -> None:
    start(store, clock)
    claimed = claim(store)
    complete(store, claimed, usage=Usage(input_tokens=1), succeeded=True)
    with pytest.raises(FenceLost):
        complete(store, claimed, usage=Usage(input_tokens=1000), succeeded=False)
    assert store.get_ledger(EXEC) == BudgetState(total_input_tokens=1)


def test_ledgers_are_kept_per_execution(store: Store, clock: ManualClock) -> None:
    start(store, clock, execution_id="exec-a")
    start(store, clock, execution_id="exec-b")
    complete(store, claim(store), usage=Usage(input_tokens=3))
    assert store.get_ledger("exec-a") == BudgetState(total_input_tokens=3)
    assert store.get_ledger("exec-b") == BudgetState()


def test_a_total_past_its_bound_is_refused_and_the_commit_writes_nothing(
    store: Store, clock: ManualClock
) -> None:
    start(store, clock, 3)
    near = MAX_COST_USD - 1.0
    complete(store, claim(store), usage=Usage(cost_usd=near, input_tokens=2**62))
    over = claim(store)
    before = store.read_events(EXEC)
    with pytest.raises(BudgetError, match="total"):
        complete(store, over, usage=Usage(cost_usd=2.0))
    with pytest.raises(BudgetError, match="total_input_tokens"):
        complete(store, over, usage=Usage(input_tokens=2**62))
    assert store.read_events(EXEC) == before
    assert store.get_ledger(EXEC) == BudgetState(total_cost_usd=near, total_input_tokens=2**62)
    assert store.get_item(over.item.item_id).status is WorkItemStatus.CLAIMED  # type: ignore[union-attr]


def test_ledger_of_unknown_execution_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        store.get_ledger("ghost")


# ── snapshots ──────────────────────────────────────────────────────────────────────────


def test_no_snapshot_until_a_commit_writes_one(store: Store, clock: ManualClock) -> None:
    start(store, clock)
    complete(store, claim(store), write_snapshot=False)
    assert store.latest_snapshot(EXEC) is None


def test_commit_with_write_snapshot_folds_the_events_at_the_last_sequence(
    store: Store, clock: ManualClock
) -> None:
    (item_id,) = start(store, clock, initial_input={"topic": "x", "drop": 1})
    node = node_of(item_id)
    claimed = claim(store)
    clock.advance(2)
    patch = {"drop": None, "found": [1], "nested": {"k": "v"}}
    commit(store, claimed, completed(node, {"r": 1}, patch), write_snapshot=True)
    snapshot = store.latest_snapshot(EXEC)
    assert snapshot is not None
    assert (snapshot.execution_id, snapshot.at_sequence, snapshot.created_at) == (
        EXEC,
        3,
        clock.now(),
    )
    assert snapshot.state == {
        "status": "running",
        "state": {"topic": "x", "found": [1], "nested": {"k": "v"}},
        "completed_nodes": {node: {"r": 1}},
        "active_nodes": [],
    }


def test_later_snapshot_supersedes_and_keeps_sibling_patches(
    store: Store, clock: ManualClock
) -> None:
    # Upstream: concurrent sibling commits keep both patches (no write skew).
    first_id, second_id = start(store, clock, 2, initial_input={"base": 0})
    first, second = claim(store), claim(store)
    commit(store, first, completed(node_of(first_id), "a", {"a": 1}), write_snapshot=True)
    early = store.latest_snapshot(EXEC)
    commit(store, second, completed(node_of(second_id), "b", {"b": 2}), write_snapshot=True)
    late = store.latest_snapshot(EXEC)
    assert early is not None
    assert late is not None
    assert (early.at_sequence, late.at_sequence) == (4, 5)
    assert early.state == {
        "status": "running",
        "state": {"base": 0, "a": 1},
        "completed_nodes": {node_of(first_id): "a"},
        "active_nodes": [node_of(second_id)],
    }
    assert late.state == {
        "status": "running",
        "state": {"base": 0, "a": 1, "b": 2},
        "completed_nodes": {node_of(first_id): "a", node_of(second_id): "b"},
        "active_nodes": [],
    }


def test_snapshot_includes_events_appended_outside_commits(
    store: Store, clock: ManualClock
) -> None:
    start(store, clock, 2)
    complete(store, claim(store), write_snapshot=True)
    store.append_events(EXEC, [WorkflowCompleted({"final": True})])
    complete(store, claim(store), write_snapshot=True)
    snapshot = store.latest_snapshot(EXEC)
    assert snapshot is not None
    assert isinstance(snapshot.state, dict)
    assert (snapshot.at_sequence, snapshot.state["status"], snapshot.state["state"]) == (
        6,
        "completed",
        {"final": True},
    )


# ── approvals ──────────────────────────────────────────────────────────────────────────

APPROVAL_NODE: Final = "pay"


def approval_request(approver: str = "alice", digest: str = DIGEST) -> ToolApprovalRequired:
    return ToolApprovalRequired(
        node_id=APPROVAL_NODE,
        tool_name="payments.transfer",
        approver=approver,
        context={"amount": 5},
        request_digest=digest,
        attempt=0,
    )


def hold_for_approval(
    store: Store,
    clock: ManualClock,
    *,
    approver: str = "alice",
    execution_id: str = EXEC,
    tenant_id: str = DEFAULT_TENANT,
) -> Event:
    """Start an execution whose one item asks for approval and is committed ``held``;
    returns the ``tool_approval_required`` event."""
    start(store, clock, execution_id=execution_id, tenant_id=tenant_id, node_id=APPROVAL_NODE)
    (event,) = commit(store, claim(store), approval_request(approver), outcome=HELD)
    return event


def approve(store: Store, user_id: str = "alice", **options: Any) -> Event | ApprovalRefused:
    return store.decide_approval(
        EXEC, APPROVAL_NODE, user_id=user_id, decision=ApprovalDecision.APPROVED, **options
    )


def test_approval_request_is_pending(store: Store, clock: ManualClock) -> None:
    requested = hold_for_approval(store, clock)
    assert store.pending_approvals() == (
        PendingApprovalRecord(
            execution_id=EXEC,
            tenant_id=DEFAULT_TENANT,
            node_id=APPROVAL_NODE,
            tool_name="payments.transfer",
            approver="alice",
            request_digest=DIGEST,
            attempt=0,
            context={"amount": 5},
            sequence=requested.sequence,
            requested_at=clock.now(),
        ),
    )


def test_pending_approvals_filter_by_tenant_and_execution(store: Store, clock: ManualClock) -> None:
    store.put_tenant(tenant(clock, "acme"))
    hold_for_approval(store, clock, execution_id="exec-a")
    hold_for_approval(store, clock, execution_id="exec-b", tenant_id="acme")
    everyone = store.pending_approvals()
    assert [(r.execution_id, r.tenant_id) for r in everyone] == [
        ("exec-a", DEFAULT_TENANT),
        ("exec-b", "acme"),
    ]
    assert [r.execution_id for r in store.pending_approvals(tenant_id="acme")] == ["exec-b"]
    assert [r.execution_id for r in store.pending_approvals(execution_id="exec-a")] == ["exec-a"]
    assert store.pending_approvals(tenant_id="acme", execution_id="exec-a") == ()


def test_permitted_approver_decision_is_recorded_bound_to_the_request(
    store: Store, clock: ManualClock
) -> None:
    requested = hold_for_approval(store, clock)
    clock.advance(60)
    decided = approve(store, "alice", comment="ok", state_patch={"approved": True})
    assert isinstance(decided, Event)
    assert decided.kind == ApprovalReceived(
        node_id=APPROVAL_NODE,
        user_id="alice",
        decision=ApprovalDecision.APPROVED,
        comment="ok",
        state_patch={"approved": True},
        request_digest=DIGEST,
    )
    assert (decided.sequence, decided.created_at) == (requested.sequence + 1, clock.now())
    assert store.read_events(EXEC)[-1] == decided


def test_decided_request_is_no_longer_pending(store: Store, clock: ManualClock) -> None:
    hold_for_approval(store, clock)
    store.decide_approval(EXEC, APPROVAL_NODE, user_id="alice", decision=ApprovalDecision.REJECTED)
    assert store.pending_approvals() == ()


def test_decision_by_someone_else_is_refused_and_writes_nothing(
    store: Store, clock: ManualClock
) -> None:
    hold_for_approval(store, clock, approver="alice")
    before = observe(store)
    assert isinstance(approve(store, "bob"), ApprovalRefused)
    assert observe(store) == before


def test_decision_with_nothing_pending_is_refused(store: Store, clock: ManualClock) -> None:
    start(store, clock)
    before = observe(store)
    assert isinstance(approve(store, "alice"), ApprovalRefused)
    assert observe(store) == before


def test_second_decision_on_one_request_is_refused(store: Store, clock: ManualClock) -> None:
    hold_for_approval(store, clock)
    approve(store, "alice")
    before = observe(store)
    refused = store.decide_approval(
        EXEC, APPROVAL_NODE, user_id="alice", decision=ApprovalDecision.REJECTED
    )
    assert isinstance(refused, ApprovalRefused)
    assert observe(store) == before


def test_decision_on_a_terminal_execution_is_refused(store: Store, clock: ManualClock) -> None:
    hold_for_approval(store, clock)
    store.append_events(EXEC, [WorkflowFailed("gave up")])
    before = observe(store)
    assert isinstance(approve(store, "alice"), ApprovalRefused)
    assert observe(store) == before


def test_decision_on_an_unknown_execution_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        store.decide_approval(
            "ghost", APPROVAL_NODE, user_id="alice", decision=ApprovalDecision.APPROVED
        )


def consume(store: Store, claimed: Claim, **options: Any) -> tuple[Event, ...]:
    """Commit a run of the approved node that uses its approval."""
    return commit(
        store,
        claimed,
        ApprovalConsumed(node_id=APPROVAL_NODE, request_digest=DIGEST, attempt=0),
        completed(APPROVAL_NODE, "paid"),
        **options,
    )


def test_commit_consuming_an_approval_succeeds(store: Store, clock: ManualClock) -> None:
    hold_for_approval(store, clock)
    approve(store, "alice")
    store.enqueue([new_item("run-1", node_id=APPROVAL_NODE)])
    consumed = consume(store, claim(store))
    assert names(consumed) == ["ApprovalConsumed", "NodeCompleted"]
    stored = store.get_item("run-1")
    assert stored is not None
    assert stored.status is COMPLETED


def test_second_consumption_of_one_approval_is_conflict_and_writes_nothing(
    store: Store, clock: ManualClock
) -> None:
    hold_for_approval(store, clock)
    approve(store, "alice")
    store.enqueue(
        [new_item("run-1", node_id=APPROVAL_NODE), new_item("run-2", node_id=APPROVAL_NODE)]
    )
    consume(store, claim(store))
    second = claim(store)
    before = observe(store, "run-2", effect_keys=[EFFECT])
    with pytest.raises(Conflict):
        consume(
            store,
            second,
            usage=Usage(input_tokens=50),
            succeeded=True,
            write_snapshot=True,
            effect=EffectResult(key=EFFECT, result="paid twice"),
        )
    assert observe(store, "run-2", effect_keys=[EFFECT]) == before
    stored = store.get_item("run-2")
    assert stored is not None
    assert (stored.status, stored.fence) == (CLAIMED, second.fence)


def test_consuming_a_rejected_approval_is_conflict(store: Store, clock: ManualClock) -> None:
    hold_for_approval(store, clock)
    store.decide_approval(EXEC, APPROVAL_NODE, user_id="alice", decision=ApprovalDecision.REJECTED)
    store.enqueue([new_item("run-1", node_id=APPROVAL_NODE)])
    claimed = claim(store)
    before = observe(store, "run-1")
    with pytest.raises(Conflict):
        consume(store, claimed)
    assert observe(store, "run-1") == before


def test_consuming_a_pending_approval_is_conflict(store: Store, clock: ManualClock) -> None:
    hold_for_approval(store, clock)
    store.enqueue([new_item("run-1", node_id=APPROVAL_NODE)])
    claimed = claim(store)
    before = observe(store, "run-1")
    with pytest.raises(Conflict):
        consume(store, claimed)
    assert observe(store, "run-1") == before


# ── tool effects ───────────────────────────────────────────────────────────────────────


def reserve(store: Store, claimed: Claim, ttl: float = 60) -> object:
    return store.reserve_effect(
        EFFECT, item_id=claimed.item.item_id, fence=claimed.fence, ttl_secs=ttl
    )


def test_reserving_a_free_effect_acquires_it(store: Store, clock: ManualClock) -> None:
    start(store, clock)
    assert reserve(store, claim(store)) == EffectAcquired()
    assert store.get_effect(EFFECT) is None


def test_effect_reserved_by_another_live_claim_is_held(store: Store, clock: ManualClock) -> None:
    start(store, clock, 2)
    first, second = claim(store), claim(store)
    reserve(store, first, ttl=60)
    expires = clock.now() + seconds(60)
    clock.advance(10)
    assert reserve(store, second) == EffectHeld(
        item_id=first.item.item_id, fence=first.fence, expires_at=expires
    )


def test_same_claim_may_reserve_its_effect_again(store: Store, clock: ManualClock) -> None:
    start(store, clock)
    claimed = claim(store)
    reserve(store, claimed)
    assert reserve(store, claimed) == EffectAcquired()


def test_expired_reservation_is_taken_over_as_abandoned(store: Store, clock: ManualClock) -> None:
    # The TTL ran out without a result: the effect may or may not have happened.
    start(store, clock, 2)
    first, second = claim(store, lease=600), claim(store, lease=600)
    reserve(store, first, ttl=60)
    clock.advance(61)
    assert reserve(store, second) == EffectAbandoned(
        item_id=first.item.item_id, fence=first.fence, expired_at=clock.now() - seconds(1)
    )
    assert isinstance(reserve(store, first), EffectHeld)


def test_reservation_of_a_reclaimed_claim_is_abandoned_before_its_ttl(
    store: Store, clock: ManualClock
) -> None:
    # The owner's claim is gone (lease expired, item reclaimed): no need to wait for the TTL.
    start(store, clock)
    dead = claim(store, lease=10)
    reserve(store, dead, ttl=3600)
    clock.advance(11)
    store.reclaim_expired()
    clock.advance(3600)
    again = claim(store)
    outcome = reserve(store, again)
    assert isinstance(outcome, EffectAbandoned)
    assert (outcome.item_id, outcome.fence) == (dead.item.item_id, dead.fence)
    assert reserve(store, again) == EffectAcquired()  # now it is this claim's


def test_record_effect_makes_later_claims_replay_the_result(
    store: Store, clock: ManualClock
) -> None:
    start(store, clock)
    first = claim(store, lease=10)
    reserve(store, first)
    assert store.record_effect(
        EFFECT, item_id=first.item.item_id, fence=first.fence, result={"charged": 40}
    )
    assert store.get_effect(EFFECT) == {"charged": 40}
    clock.advance(11)
    store.reclaim_expired()  # the worker died after recording, before its commit
    clock.advance(3600)
    again = claim(store)
    assert reserve(store, again) == EffectRecorded({"charged": 40})
    assert not store.record_effect(
        EFFECT, item_id=again.item.item_id, fence=again.fence, result={"charged": 41}
    )
    assert store.get_effect(EFFECT) == {"charged": 40}  # the first result stays


def test_record_effect_is_fenced(store: Store, clock: ManualClock) -> None:
    start(store, clock)
    claimed = claim(store, lease=10)
    complete(store, claimed)
    with pytest.raises(FenceLost):
        store.record_effect(EFFECT, item_id=claimed.item.item_id, fence=claimed.fence, result=1)
    assert store.get_effect(EFFECT) is None


def test_append_with_items_enqueues_them_atomically(store: Store, clock: ManualClock) -> None:
    start(store, clock, 0)
    appended = store.append_events(
        EXEC,
        [ToolCalled(node_id="a", tool="t")],
        items=[new_item("late-1"), new_item("late-2")],
    )
    assert names(appended) == ["ToolCalled"]
    assert [store.get_item(i) is not None for i in ("late-1", "late-2")] == [True, True]


def test_append_expecting_the_current_sequence_succeeds(store: Store, clock: ManualClock) -> None:
    start(store, clock, 0)
    last = len(store.read_events(EXEC))
    appended = store.append_events(
        EXEC, [ToolCalled(node_id="a", tool="t")], expected_last_sequence=last
    )
    assert [e.sequence for e in appended] == [last + 1]


def test_append_expecting_a_stale_sequence_is_conflict_and_writes_nothing(
    store: Store, clock: ManualClock
) -> None:
    start(store, clock, 0)
    last = len(store.read_events(EXEC))
    store.append_events(EXEC, [ToolCalled(node_id="a", tool="t")])  # someone else moved on
    before = observe(store)
    with pytest.raises(Conflict):
        store.append_events(
            EXEC,
            [ToolCalled(node_id="b", tool="t")],
            items=[new_item("never")],
            expected_last_sequence=last,
        )
    assert observe(store) == before
    assert store.get_item("never") is None


def test_a_claim_for_one_execution_takes_only_its_items(store: Store, clock: ManualClock) -> None:
    (theirs,) = start(store, clock, 1, execution_id="exec-theirs")  # older: claimed first…
    clock.advance(1)
    (ours,) = start(store, clock, 1, execution_id="exec-ours")
    clock.advance(1)
    claimed = store.claim(WORKER, [QUEUE], lease_secs=LEASE, execution_id="exec-ours")
    assert claimed is not None
    assert claimed.item.item_id == ours
    assert store.claim(WORKER, [QUEUE], lease_secs=LEASE, execution_id="exec-ours") is None
    other = store.get_item(theirs)
    assert other is not None
    assert other.status is PENDING
    assert claim(store).item.item_id == theirs  # …by a claim for any execution


# ── commit with a follow-up (the scheduler's next step in the same transaction) ────────


def test_a_commits_follow_up_is_written_when_the_log_is_where_it_assumed(
    store: Store, clock: ManualClock
) -> None:
    start(store, clock)
    claimed = claim(store)
    last = len(store.read_events(EXEC))
    appended = complete(
        store,
        claimed,
        then_events=(ToolCalled(node_id="next", tool="t"),),
        then_items=(new_item("next-item"),),
        then_if_last_sequence=last,
    )
    assert names(appended) == ["NodeCompleted", "ToolCalled"]
    assert [e.sequence for e in appended] == [last + 1, last + 2]
    assert appended == store.read_events(EXEC)[-2:]
    next_item = store.get_item("next-item")
    assert next_item is not None
    assert next_item.status is PENDING
    assert claim(store).item.item_id == "next-item"


def test_a_commits_follow_up_is_left_out_when_the_log_moved(
    store: Store, clock: ManualClock
) -> None:
    start(store, clock)
    claimed = claim(store)
    last = len(store.read_events(EXEC))
    store.append_events(EXEC, [ToolCalled(node_id="other", tool="t")])  # someone else
    appended = complete(
        store,
        claimed,
        then_events=(ToolCalled(node_id="next", tool="t"),),
        then_items=(new_item("next-item"),),
        then_if_last_sequence=last,
    )
    assert names(appended) == ["NodeCompleted"]  # the commit itself still happens
    assert store.get_item("next-item") is None
    stored = store.get_item(claimed.item.item_id)
    assert stored is not None
    assert stored.status is COMPLETED


@pytest.mark.parametrize(
    ("options", "where"),
    [
        ({"then_events": (ToolCalled(node_id="n", tool="t"),)}, "then_if_last_sequence"),
        (
            {
                "then_items": (new_item("x", execution_id="exec-other"),),
                "then_if_last_sequence": 0,
            },
            "then_items[0].execution_id",
        ),
    ],
    ids=["no-assumed-sequence", "foreign-item"],
)
def test_a_bad_follow_up_refuses_the_whole_commit(
    store: Store, clock: ManualClock, options: dict[str, Any], where: str
) -> None:
    start(store, clock)
    start(store, clock, 0, execution_id="exec-other")
    claimed = claim(store)
    before = observe(store)
    with pytest.raises(InvalidInput) as refused:
        complete(store, claimed, **options)
    assert refused.value.where == where
    assert observe(store) == before


def test_fail_appends_the_attempts_own_events_first(store: Store, clock: ManualClock) -> None:
    start(store, clock)
    claimed = claim(store)
    appended = store.fail(
        claimed.item.item_id,
        claimed.fence,
        error="boom",
        events=[ToolCalled(node_id=claimed.item.node_id, tool="t")],
    )
    assert names(appended) == ["ToolCalled", "NodeFailed", "RetryScheduled"]


def test_committed_effect_result_is_recorded_for_every_later_claim(
    store: Store, clock: ManualClock
) -> None:
    start(store, clock, 2)
    first, second = claim(store), claim(store)
    reserve(store, first)
    complete(store, first, effect=EffectResult(key=EFFECT, result={"transfer": 7}))
    assert store.get_effect(EFFECT) == {"transfer": 7}
    assert reserve(store, second) == EffectRecorded({"transfer": 7})


def test_effect_of_unknown_key_is_none(store: Store) -> None:
    assert store.get_effect("never-recorded") is None


def test_first_recorded_effect_result_wins(store: Store, clock: ManualClock) -> None:
    start(store, clock, 2)
    first, second = claim(store), claim(store)
    complete(store, first, effect=EffectResult(key=EFFECT, result="first"))
    complete(store, second, effect=EffectResult(key=EFFECT, result="second"))
    assert store.get_effect(EFFECT) == "first"


def test_park_releases_the_effect_reservation(store: Store, clock: ManualClock) -> None:
    first_id, _ = start(store, clock, 2)
    first = claim(store)
    reserve(store, first, ttl=600)
    store.park(first_id, first.fence, retry_after=clock.now() + seconds(300))
    assert reserve(store, claim(store)) == EffectAcquired()


def test_fail_releases_the_effect_reservation(store: Store, clock: ManualClock) -> None:
    first_id, _ = start(store, clock, 2)
    first = claim(store)
    reserve(store, first, ttl=600)
    store.fail(first_id, first.fence, error="boom", delay_ms=300_000)
    assert reserve(store, claim(store)) == EffectAcquired()


@pytest.mark.parametrize("outcome", [COMPLETED, WorkItemStatus.HELD, WorkItemStatus.FAILED])
def test_commit_releases_an_unrecorded_effect_reservation(
    store: Store, clock: ManualClock, outcome: WorkItemStatus
) -> None:
    start(store, clock, 2)
    first = claim(store)
    reserve(store, first, ttl=600)
    commit(store, first, completed(first.item.node_id), outcome=outcome)
    assert reserve(store, claim(store)) == EffectAcquired()


# ── bad input: refused, nothing written ────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"item_id": "bad\ud800id"}, "item_id"),
        ({"node_id": "nul\x00here"}, "node_id"),
        ({"max_attempts": 2**63}, "max_attempts"),
        ({"backoff_base_ms": 10**12}, "backoff_base_ms"),
    ],
    ids=["lone-surrogate", "nul", "huge-attempts", "huge-backoff"],
)
def test_an_item_no_store_could_keep_is_refused_naming_its_field(
    store: Store, clock: ManualClock, changes: dict[str, Any], field: str
) -> None:
    start(store, clock, 0)
    before = observe(store)
    with pytest.raises(InvalidInput) as refused:
        store.enqueue([attrs.evolve(new_item("ok"), **changes)])
    assert refused.value.where == field
    assert observe(store) == before


def test_oversized_payload_is_refused_naming_the_limit(store: Store, clock: ManualClock) -> None:
    start(store, clock, 0)
    before = observe(store, "big")
    with pytest.raises(LimitExceeded) as refused:
        store.enqueue([new_item("big", payload="x" * MAX_PAYLOAD_BYTES)])
    assert "payload" in str(refused.value)
    assert str(MAX_PAYLOAD_BYTES) in str(refused.value)
    assert observe(store, "big") == before


def test_payload_at_the_limit_is_accepted(store: Store, clock: ManualClock) -> None:
    start(store, clock, 0)
    payload = "x" * (MAX_PAYLOAD_BYTES - 2)  # plus two quotes: exactly the limit
    store.enqueue([new_item("full", payload=payload)])
    assert claim(store).item.payload == payload


@pytest.mark.parametrize("field", ["item_id", "node_id", "queue"])
def test_item_identifier_over_the_limit_is_refused(
    store: Store, clock: ManualClock, field: str
) -> None:
    start(store, clock, 0)
    item_id = TOO_LONG if field == "item_id" else "item-1"
    options: dict[str, Any] = {field: TOO_LONG} if field != "item_id" else {}
    before = observe(store, item_id)
    with pytest.raises(LimitExceeded) as refused:
        store.enqueue([new_item(item_id, **options)])
    assert str(MAX_ID_LENGTH) in str(refused.value)
    assert observe(store, item_id) == before


def test_execution_id_over_the_limit_is_refused(store: Store, clock: ManualClock) -> None:
    with pytest.raises(LimitExceeded):
        store.create_execution(execution(clock, TOO_LONG), [started()])
    assert store.get_execution(TOO_LONG) is None
    assert store.list_executions().items == ()


def test_worker_id_over_the_limit_is_refused(store: Store, clock: ManualClock) -> None:
    (item_id,) = start(store, clock)
    before = observe(store, item_id)
    with pytest.raises(LimitExceeded):
        store.claim(TOO_LONG, [QUEUE], lease_secs=LEASE)
    assert observe(store, item_id) == before


def test_claimed_queue_name_over_the_limit_is_refused(store: Store, clock: ManualClock) -> None:
    (item_id,) = start(store, clock)
    before = observe(store, item_id)
    with pytest.raises(LimitExceeded):
        store.claim(WORKER, [QUEUE, TOO_LONG], lease_secs=LEASE)
    assert observe(store, item_id) == before


def test_identifiers_at_the_limit_are_accepted(store: Store, clock: ManualClock) -> None:
    longest = "y" * MAX_ID_LENGTH
    store.create_execution(execution(clock, longest), [started()])
    store.enqueue([new_item(longest, execution_id=longest, node_id=longest, queue=longest)])
    claimed = claim(store, queues=[longest], worker=longest)
    assert (claimed.item.item_id, claimed.item.worker_id) == (longest, longest)


NOT_JSON: Final[dict[str, object]] = {
    "set": {1, 2},
    "bytes": b"raw",
    "object": object(),
    "nan": float("nan"),
    "infinity": float("inf"),
    "int-keys": {1: "one"},
    "nested-int-keys": {"outer": [{2: "two"}]},
}


@pytest.mark.parametrize("payload", NOT_JSON.values(), ids=NOT_JSON.keys())
def test_non_json_payload_is_invalid_input(
    store: Store, clock: ManualClock, payload: object
) -> None:
    start(store, clock, 0)
    before = observe(store, "item-1")
    with pytest.raises(InvalidInput) as refused:
        store.enqueue([new_item("item-1", payload=payload)])
    assert not isinstance(refused.value, LimitExceeded)
    assert observe(store, "item-1") == before


@pytest.mark.parametrize("value", NOT_JSON.values(), ids=NOT_JSON.keys())
def test_non_json_initial_input_is_invalid_input(
    store: Store, clock: ManualClock, value: object
) -> None:
    with pytest.raises(InvalidInput):
        store.create_execution(execution(clock, initial_input=value))
    assert store.get_execution(EXEC) is None


def test_non_json_event_field_is_invalid_and_appends_nothing(
    store: Store, clock: ManualClock
) -> None:
    start(store, clock)
    before = observe(store)
    with pytest.raises(InvalidInput):
        store.append_events(EXEC, [WorkflowFailed("ok"), WorkflowCompleted({"s": {1, 2}})])
    assert observe(store) == before


def test_oversized_event_in_commit_is_refused_and_the_item_stays_claimed(
    store: Store, clock: ManualClock
) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    before = observe(store, item_id)
    huge = completed(node_of(item_id), "x" * MAX_PAYLOAD_BYTES)
    with pytest.raises(LimitExceeded):
        commit(store, claimed, huge, usage=Usage(input_tokens=1), write_snapshot=True)
    assert observe(store, item_id) == before
    assert names(complete(store, claimed)) == ["NodeCompleted"]  # the claim still holds


def test_oversized_event_in_append_events_appends_nothing(store: Store, clock: ManualClock) -> None:
    start(store, clock)
    before = observe(store)
    with pytest.raises(LimitExceeded):
        store.append_events(EXEC, [WorkflowFailed("fine"), WorkflowFailed("x" * MAX_PAYLOAD_BYTES)])
    assert observe(store) == before


def test_non_json_effect_result_is_refused_and_the_item_stays_claimed(
    store: Store, clock: ManualClock
) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    before = observe(store, item_id, effect_keys=[EFFECT])
    with pytest.raises(InvalidInput):
        complete(store, claimed, effect=EffectResult(key=EFFECT, result={"raw": b"bytes"}))
    assert observe(store, item_id, effect_keys=[EFFECT]) == before


def test_enqueue_for_unknown_execution_is_not_found_and_writes_nothing(
    store: Store, clock: ManualClock
) -> None:
    start(store, clock, 0)
    before = observe(store, "item-ok")
    with pytest.raises(NotFound):
        store.enqueue([new_item("item-ok"), new_item("item-lost", execution_id="ghost")])
    assert observe(store, "item-ok") == before
    assert store.get_item("item-lost") is None


def test_enqueue_same_id_with_same_content_is_a_noop(store: Store, clock: ManualClock) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    before = observe(store, item_id)
    again = store.enqueue([new_item(item_id)])
    assert again == (claimed.item,)
    assert observe(store, item_id) == before
    assert store.claim(WORKER, [QUEUE], lease_secs=LEASE) is None


@pytest.mark.parametrize(
    "change",
    [
        {"payload": {"other": 1}},
        {"node_id": "other-node"},
        {"queue": "other-queue"},
        {"max_attempts": 9},
        {"backoff_base_ms": 7},
    ],
    ids=lambda change: next(iter(change)),
)
def test_enqueue_same_id_with_other_content_is_conflict(
    store: Store, clock: ManualClock, change: dict[str, Any]
) -> None:
    (item_id,) = start(store, clock)
    before = observe(store, item_id)
    with pytest.raises(Conflict):
        store.enqueue([new_item(item_id, **change)])
    assert observe(store, item_id) == before


@pytest.mark.parametrize("lease_secs", [0, -1, -0.001])
def test_claim_with_a_non_positive_lease_is_refused(
    store: Store, clock: ManualClock, lease_secs: float
) -> None:
    (item_id,) = start(store, clock)
    before = observe(store, item_id)
    with pytest.raises(InvalidInput):
        store.claim(WORKER, [QUEUE], lease_secs=lease_secs)
    assert observe(store, item_id) == before


@pytest.mark.parametrize("lease_secs", [0, -1, -0.001])
def test_heartbeat_with_a_non_positive_lease_is_refused(
    store: Store, clock: ManualClock, lease_secs: float
) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    before = observe(store, item_id)
    with pytest.raises(InvalidInput):
        store.heartbeat(item_id, claimed.fence, lease_secs=lease_secs)
    assert observe(store, item_id) == before


# ── bad input the memory store lets through (spec violations, see the report) ──


def test_naive_available_at_is_refused(store: Store, clock: ManualClock) -> None:
    start(store, clock, 0)
    naive = clock.now().replace(tzinfo=None)
    with pytest.raises(InvalidInput):
        store.enqueue([new_item("item-1", available_at=naive)])
    assert store.get_item("item-1") is None


def test_oversized_failure_error_is_refused_and_writes_nothing(
    store: Store, clock: ManualClock
) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    before = observe(store, item_id)
    with pytest.raises(LimitExceeded):
        store.fail(item_id, claimed.fence, error="x" * MAX_PAYLOAD_BYTES)
    assert observe(store, item_id) == before


def test_oversized_approval_decision_is_refused_and_writes_nothing(
    store: Store, clock: ManualClock
) -> None:
    hold_for_approval(store, clock)
    before = observe(store)
    with pytest.raises(LimitExceeded):
        approve(store, "alice", comment="x" * MAX_PAYLOAD_BYTES)
    assert observe(store) == before
