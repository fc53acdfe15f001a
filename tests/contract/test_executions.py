"""Tenants, workflow definitions and executions: what a store keeps before any work runs.

In the order a reader should learn them:

1. Tenants. The default tenant always exists; `put_tenant` stores a tenant whole and
   replaces one with the same id; `list_tenants` gives them all by id; an unknown tenant is
   ``None``. Creating an execution or storing a workflow for an unknown tenant is refused
   with `UnknownTenant` and writes nothing.
2. Workflow definitions are kept per tenant, workflow id and version, and are immutable:
   storing the same definition again is a no-op, storing another IR under the same version
   is a `Conflict`.
3. Executions. `create_execution` writes the execution, its initial events (numbered from 1)
   and its first work items in one transaction: an invalid or conflicting item, or an
   existing execution id, creates nothing. An execution's status and last sequence are
   derived from its events, never taken from the record handed in; a terminal status
   sticks; an interrupt pauses and an approval resumes. Items take their tenant from their
   execution.
4. Listing. `list_executions` pages reach every execution once, in creation order, even when
   many share a creation instant; it filters by tenant and by status; a cursor it did not
   make is `InvalidInput`.
"""

from __future__ import annotations

import attrs
import pytest

from charter.adapters.clock import ManualClock
from charter.core.errors import Conflict, InvalidInput, NotFound, UnknownTenant
from charter.core.events import (
    ApprovalDecision,
    ApprovalReceived,
    InterruptRaised,
    JsonValue,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowFailed,
)
from charter.core.policy import PolicySet
from charter.core.ports import Store
from charter.core.records import (
    DEFAULT_TENANT,
    ExecutionStatus,
    TenantLimits,
    WorkflowDefinition,
)
from tests.contract.helpers import (
    EXEC,
    PENDING,
    QUEUE,
    WORKFLOW,
    execution,
    new_item,
    node_of,
    observe,
    start,
    started,
    tenant,
)

# ── tenants ────────────────────────────────────────────────────────────────────────────


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


# ── listing executions ─────────────────────────────────────────────────────────────────


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
