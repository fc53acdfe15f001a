"""Starting a run, and driving one in-process until it finishes or waits for a person (the
``charter run``, ``charter approve`` and ``charter resolve`` commands)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import attrs

from charter.core.errors import NotFound
from charter.core.events import JsonValue, WorkflowFailed, WorkflowStarted
from charter.core.ports import Store
from charter.core.records import Execution, WorkflowDefinition
from charter.core.scheduler import NodeState
from charter.core.workflow import WorkflowDef
from charter.worker.worker import Worker

__all__ = ["RunOutcome", "drive", "start_run"]


def start_run(
    store: Store,
    workflow: WorkflowDef,
    *,
    inputs: JsonValue = None,
    execution_id: str | None = None,
    tenant_id: str | None = None,
) -> Execution:
    """Store ``workflow`` (its ``raw`` form; storing the same definition again is a no-op,
    a different one under the same version is `Conflict`) and create a run of it with its
    ``workflow_started`` event, for ``tenant_id`` (default: the workflow's own). The tenant
    must exist (`UnknownTenant` otherwise: a run without its tenant's policy would run
    ungoverned); an existing ``execution_id`` is `Conflict`. Nothing runs until a worker
    claims the run's work (`drive`, `Worker.run`)."""
    tenant = tenant_id or workflow.tenant_id
    now = store.clock.now()
    store.put_workflow(
        WorkflowDefinition(
            tenant_id=tenant,
            workflow_id=workflow.workflow_id,
            version=workflow.version,
            ir=dict(workflow.raw),
            created_at=now,
        )
    )
    run_id = execution_id or f"{workflow.workflow_id}-{uuid.uuid4().hex[:12]}"
    initial = {} if inputs is None else inputs
    store.create_execution(
        Execution(
            execution_id=run_id,
            tenant_id=tenant,
            workflow_id=workflow.workflow_id,
            workflow_version=workflow.version,
            initial_input=initial,
            created_at=now,
            updated_at=now,
        ),
        events=[
            WorkflowStarted(
                workflow_id=workflow.workflow_id,
                workflow_version=workflow.version,
                initial_input=initial,
            )
        ],
    )
    execution = store.get_execution(run_id)
    if execution is None:  # pragma: no cover - the store just created it
        raise NotFound(f"execution {run_id!r} vanished after creation")
    return execution


# ── driving one execution in-process ───────────────────────────────────────────────────


@attrs.frozen(kw_only=True)
class RunOutcome:
    """Where `drive` left a run: finished (completed, failed, cancelled) or waiting."""

    execution_id: str
    status: str  # "completed" | "failed" | "cancelled" | "waiting"
    error: str | None = None
    #: Waiting: the nodes whose side effect's outcome was lost, each waiting for a person
    #: to resolve it (``charter resolve``), in definition order.
    lost_outcomes: tuple[str, ...] = ()


def drive(
    worker: Worker,
    execution_id: str,
    *,
    sleep: Callable[[float], None] = time.sleep,
    max_wait_secs: float = 3600.0,
) -> RunOutcome:
    """Run an execution in this process until it finishes or waits for a person.

    Scheduled work that is not yet available (a retry's backoff) is waited for with
    ``sleep``; expired leases (a crashed earlier run) are reclaimed as they expire.
    """
    waited = 0.0
    scheduler = worker.scheduler
    scheduler.advance(execution_id)
    while True:
        worked = False
        while worker.step(execution_id):  # only this run's work: others' is not ours to do
            worked = True
        progress = scheduler.progress(execution_id)
        if progress.finished is not None:
            error = None
            if progress.finished == "failed":
                error = _workflow_error(worker.store, execution_id)
            return RunOutcome(execution_id=execution_id, status=progress.finished, error=error)
        # (From the indexes the fold keeps: the nodes in motion, not every node of the run.)
        states = {progress.node(node_id).state for node_id in progress.active}
        if not (states & {NodeState.SCHEDULED, NodeState.RUNNING, NodeState.ANSWERED}):
            if NodeState.HELD in states:
                lost = [
                    node_id
                    for node_id in progress.people
                    if progress.node(node_id).unknown is not None
                ]
                workflow = scheduler.view(execution_id).workflow
                return RunOutcome(
                    execution_id=execution_id,
                    status="waiting",
                    lost_outcomes=tuple(workflow.in_order(lost)),
                )
            if not scheduler.advance(execution_id):
                return RunOutcome(
                    execution_id=execution_id,
                    status="waiting",
                    error="nothing left to run and the run is not finished",
                )
            continue
        if worked:
            waited = 0.0
            continue
        # Work is scheduled but not claimable yet (a backoff, or a lease to expire).
        if waited >= max_wait_secs:
            return RunOutcome(
                execution_id=execution_id, status="waiting", error="gave up waiting for work"
            )
        sleep(0.05)
        waited += 0.05
        worker.reclaim()
        scheduler.advance(execution_id)


def _workflow_error(store: Store, execution_id: str) -> str | None:
    """The error of the run's ``workflow_failed`` (the last one, should there be several)."""
    for event in reversed(store.read_events(execution_id)):
        if isinstance(event.kind, WorkflowFailed):
            return event.kind.error
    return None
