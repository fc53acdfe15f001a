"""Builders and observers shared by the contract tests: the constants every test names, an
execution started with pending items (`start`), a claim (`claim`), a commit (`commit`,
`complete`), and `observe`, everything the store shows about an execution, which tests
compare before and after a refused call to check that nothing was written."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Final

from charter.adapters.clock import ManualClock
from charter.core.approvals import ApprovalRefused
from charter.core.events import (
    ApprovalDecision,
    Event,
    EventKind,
    JsonValue,
    NodeCompleted,
    NodeFailed,
    ToolApprovalRequired,
    WorkflowStarted,
)
from charter.core.ports import CommitRequest, Store
from charter.core.records import (
    DEFAULT_TENANT,
    MAX_ID_LENGTH,
    Claim,
    Execution,
    NewWorkItem,
    Tenant,
    WorkItemStatus,
)

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


# ── executions and items ───────────────────────────────────────────────────────────────


def tenant(clock: ManualClock, tenant_id: str, **options: Any) -> Tenant:
    now = clock.now()
    return Tenant(tenant_id=tenant_id, created_at=now, updated_at=now, **options)


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


# ── claims and commits ─────────────────────────────────────────────────────────────────


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


# ── observing ──────────────────────────────────────────────────────────────────────────


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
