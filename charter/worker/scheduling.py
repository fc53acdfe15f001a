"""Run-state tracking: each execution's log folded incrementally, and its next plans appended.

`Scheduler` keeps, per execution, its definition and the fold of its log
(`charter.core.scheduler.fold`), the approval status of each node and the budget ledger; it
reads only the events it has not seen (catch-up), takes events a caller wrote itself without
reading them back (`Scheduler.absorb`), and appends the next `plan` with compare-and-append,
so several processes may schedule the same execution without ever dispatching a node twice.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Final

import attrs

from charter.core.approvals import ApprovalStatus, NotRequested, approval_step
from charter.core.budget import BudgetState, budget_after
from charter.core.errors import Conflict, InvalidInput, NotFound, StoreError
from charter.core.events import (
    ApprovalConsumed,
    ApprovalExpired,
    ApprovalReceived,
    Event,
    EventKind,
    ToolApprovalRequired,
)
from charter.core.materialize import STATUS_KINDS, status_after
from charter.core.ports import Clock, Store
from charter.core.records import Claim, Execution, ExecutionStatus
from charter.core.scheduler import Plan, Progress, RunState, fork_of, plan
from charter.core.workflow import WorkflowDef
from charter.worker.definitions import Definitions

__all__ = ["RunView", "Scheduler"]

log = logging.getLogger("charter.worker")

_NOT_REQUESTED: Final = NotRequested()


@attrs.define
class _Tracked:
    execution: Execution  # as first read: only its identity and creation are used
    workflow: WorkflowDef
    #: The fold, kept in place: each event is folded once, the run's nodes never copied.
    run: RunState
    approvals: dict[str, ApprovalStatus]
    budget: BudgetState = attrs.Factory(BudgetState)
    #: The run's status, folded from the log as the store derives it (`status_after`).
    status: ExecutionStatus = ExecutionStatus.PENDING

    @property
    def progress(self) -> Progress:
        """The fold as of now (an immutable view: O(1), see `RunState.progress`)."""
        return self.run.progress()

    @property
    def last_sequence(self) -> int:
        return self.run.last_sequence


@attrs.frozen(kw_only=True)
class RunView:
    """An execution as a scheduler knows it: its record (as first read: identity, tenant,
    creation), definition, progress, each node's approval status and its budget ledger
    (`charter.core.budget.budget_after` of the log), all as of ``progress.last_sequence``."""

    execution: Execution
    workflow: WorkflowDef
    progress: Progress
    approvals: Mapping[str, ApprovalStatus]
    budget: BudgetState = attrs.Factory(BudgetState)
    #: The tenant's deadline for resolving a lost outcome (`Scheduler.resolution_deadline`).
    resolution_deadline_secs: float | None = None
    #: The run's status as of ``progress.last_sequence`` (the fold of the log's lifecycle
    #: events, as the store derives it): a cancelled run is known without another read.
    status: ExecutionStatus = ExecutionStatus.RUNNING

    def approval(self, node_id: str) -> ApprovalStatus:
        return self.approvals.get(node_id, _NOT_REQUESTED)

    def follow_up(self, kinds: Sequence[EventKind], *, now: datetime) -> Plan:
        """What the scheduler would plan once ``kinds`` follow this view in the log (written
        at ``now``): a commit's next step, planned before the commit is made."""
        return self.speculate(kinds, now=now)[0]

    def speculate(self, kinds: Sequence[EventKind], *, now: datetime) -> tuple[Plan, RunState]:
        """`follow_up`, and the fold of ``kinds`` it was planned from: a fork of the
        scheduler's state (`charter.core.scheduler.fork_of`), which `Scheduler.absorb`
        adopts once they are written instead of folding them again (a commit that fails
        leaves the scheduler's state as it was: the fork is just dropped)."""
        folded = fork_of(self.workflow, self.progress)
        folded.apply_kinds(kinds, first_sequence=self.progress.last_sequence + 1, at=now)
        return plan(
            self.workflow,
            folded.progress(),
            now=now,
            execution_id=self.execution.execution_id,
            resolution_deadline_secs=self.resolution_deadline_secs,
        ), folded


def _waiting_on_lost_outcome(progress: Progress) -> bool:
    """Whether a node of the run waits for a person to resolve a lost outcome."""
    for node_id in progress.people:
        entry = progress.node(node_id)
        if entry.unknown is not None and entry.resolution is None:
            return True
    return False


class Scheduler:
    """Folds executions incrementally and appends their next plans (see the module doc).

    Each execution's definition and fold are kept between calls; the log is read only for
    events the scheduler has not seen. Events a caller wrote itself (a commit) are handed
    over with `absorb` and need not be read back. ``on_events`` is called with every event
    of a log exactly once, in order, as the scheduler learns of it."""

    def __init__(
        self,
        store: Store,
        definitions: Definitions | None = None,
        *,
        clock: Clock | None = None,
        on_events: Callable[[Sequence[Event]], None] | None = None,
    ) -> None:
        self.store = store
        self.definitions = definitions or Definitions(store)
        self.clock = clock or store.clock
        self.on_events = on_events
        self._tracked: dict[str, _Tracked] = {}
        self._lock = threading.RLock()
        self._last_tick = float("-inf")

    def progress(self, execution_id: str) -> Progress:
        """The execution's progress, caught up with its log."""
        return self._catch_up(execution_id).progress

    def approval(self, execution_id: str, node_id: str) -> ApprovalStatus:
        """The node's approval status, caught up with the log."""
        return self._catch_up(execution_id).approvals.get(node_id, _NOT_REQUESTED)

    def view(self, execution_id: str, *, claimed: Claim | None = None) -> RunView:
        """Everything the scheduler knows of the execution, caught up with its log (one
        read of the new events). With ``claimed``, a claim just made of one of its items:
        if the events it appended (``Claim.events``: its ``node_started``) follow on from
        what the scheduler knows, or were absorbed already (a claim made in the
        transaction of a commit the caller absorbed), nothing is read."""
        with self._lock:
            own = claimed.events if claimed is not None else ()
            if own and self._knows(execution_id, own):
                tracked = self._tracked[execution_id]
            else:
                tracked = self._catch_up(execution_id)
            return RunView(
                execution=tracked.execution,
                workflow=tracked.workflow,
                progress=tracked.progress,
                approvals=dict(tracked.approvals),
                budget=tracked.budget,
                resolution_deadline_secs=self._deadline(tracked),
                status=tracked.status,
            )

    def resolution_deadline(self, execution_id: str) -> float | None:
        """How long a lost outcome of the execution may wait for a person before its node
        fails (the tenant's ``resolution_deadline_secs``); ``None``: no deadline."""
        with self._lock:
            return self._deadline(self._catch_up(execution_id))

    def _deadline(self, tracked: _Tracked) -> float | None:
        # Only a run with a lost outcome waiting needs it: the tenant is read only then.
        if not _waiting_on_lost_outcome(tracked.progress):
            return None
        tenant = self.store.get_tenant(tracked.execution.tenant_id)
        if tenant is None:
            return None
        # `PolicySet.resolution_deadline_secs` is the tenant's setting (issue 13); read with
        # getattr so the scheduler works with policy sets that do not have it yet.
        value = getattr(tenant.policy, "resolution_deadline_secs", None)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            return None
        return float(value)

    def absorb(
        self, execution_id: str, events: Sequence[Event], *, folded: RunState | None = None
    ) -> bool:
        """Fold in events the caller appended itself, if they follow on from what the
        scheduler knows; returns whether they did (then its view is complete up to them).
        ``folded``: the fold of their first events made before they were written
        (`RunView.speculate`), adopted instead of folding them again when it is exactly
        theirs and the scheduler's state has not moved since (`RunState.adopt`)."""
        with self._lock:
            tracked = self._tracked.get(execution_id)
            if tracked is None or not events or events[0].sequence != tracked.last_sequence + 1:
                return False
            self._absorb(tracked, events, folded)
            return True

    def _knows(self, execution_id: str, own: Sequence[Event]) -> bool:
        """Whether the fold is complete up to ``own`` (a claim's events): it absorbed them
        already (a claim made in the transaction of the caller's commit, whose events it
        absorbed), or they follow on from what it knows and are absorbed now."""
        tracked = self._tracked.get(execution_id)
        if tracked is not None and own[0].sequence <= tracked.last_sequence:
            return own[-1].sequence <= tracked.last_sequence
        return self.absorb(execution_id, own)

    def _track(self, execution_id: str) -> _Tracked:
        tracked = self._tracked.get(execution_id)
        if tracked is None:
            execution = self._execution(execution_id)
            workflow = self.definitions.for_execution(execution)
            # Views of the fold it gave (`Progress`) are referred to weakly: once a caller
            # lets go of one, the fold no longer keeps it up to date.
            tracked = _Tracked(execution, workflow, RunState(workflow, reference=weakref.ref), {})
            self._tracked[execution_id] = tracked
        return tracked

    def _catch_up(self, execution_id: str) -> _Tracked:
        with self._lock:
            tracked = self._track(execution_id)
            new = self.store.read_events(execution_id, after=tracked.last_sequence)
            if new:
                self._absorb(tracked, new)
            return tracked

    def _absorb(
        self, tracked: _Tracked, events: Sequence[Event], folded: RunState | None = None
    ) -> None:
        """Fold new events in (adopting ``folded``, the fold of the first of them, where it
        can: `absorb`); every event of a log passes here exactly once, in order, so this is
        also where they are reported (``on_events``)."""
        ahead = folded.speculated if folded is not None else 0
        if folded is not None and ahead and tracked.run.adopt(folded, events[:ahead]):
            if len(events) > ahead:
                tracked.run.apply(events[ahead:])
        else:
            tracked.run.apply(events)
        tracked.budget = budget_after(tracked.budget, events)
        for event in events:
            if isinstance(event.kind, STATUS_KINDS):
                tracked.status = status_after(tracked.status, event.kind)
            if isinstance(
                event.kind,
                ToolApprovalRequired | ApprovalReceived | ApprovalConsumed | ApprovalExpired,
            ):
                node = event.kind.node_id
                current = tracked.approvals.get(node, _NOT_REQUESTED)
                tracked.approvals[node] = approval_step(current, event)
        if self.on_events is not None:
            self.on_events(events)

    def _execution(self, execution_id: str) -> Execution:
        execution = self.store.get_execution(execution_id)
        if execution is None:
            raise NotFound(f"execution {execution_id!r} does not exist")
        return execution

    def tick(self, *, min_interval_secs: float = 0.0) -> int:
        """Advance every running execution once: what a long-running worker does
        periodically, so that work not triggered by a claimed item still happens — an
        approval answered from elsewhere (``charter approve --no-continue``, an API) is
        dispatched, a ``human_approval`` node's timeout fires, a lost outcome resolved from
        elsewhere is settled (or its deadline fails it), a run whose last item was
        dead-lettered is finished. Returns how many events were appended. With
        ``min_interval_secs``, a call within that long of the previous one does nothing (so
        threads sharing a scheduler can all call it)."""
        with self._lock:
            now = time.monotonic()
            if now - self._last_tick < min_interval_secs:
                return 0
            self._last_tick = now
        appended = 0
        for status in (ExecutionStatus.RUNNING, ExecutionStatus.PAUSED):
            cursor = None
            while True:
                page = self.store.list_executions(status=status, cursor=cursor, limit=500)
                for execution in page.items:
                    try:
                        appended += len(self.advance(execution.execution_id))
                    except (StoreError, InvalidInput) as error:
                        log.warning("tick: %s: %s", execution.execution_id, error)
                cursor = page.next_cursor
                if cursor is None:
                    break
        return appended

    def advance(self, execution_id: str, *, read: bool = True) -> tuple[Event, ...]:
        """Append the execution's next plans until there is nothing more to do now.

        With ``read=False`` the plan starts from what the scheduler already knows: right
        when its view is complete (the caller's own commit was just absorbed), and safe
        anyway — every append is conditional on the log not having moved
        (compare-and-append), and on a conflict the new events are read and the plan made
        again."""
        appended: list[Event] = []
        with self._lock:
            tracked = self._catch_up(execution_id) if read else self._track(execution_id)
        for _ in range(1000):  # each round makes progress; a bound guards against surprises
            with self._lock:
                next_plan = plan(
                    tracked.workflow,
                    tracked.progress,
                    now=self.clock.now(),
                    execution_id=execution_id,
                    resolution_deadline_secs=self._deadline(tracked),
                )
                if next_plan.empty:
                    break
                try:
                    events = self.store.append_events(
                        execution_id,
                        next_plan.events,
                        items=next_plan.items,
                        expected_last_sequence=tracked.last_sequence,
                    )
                except Conflict:
                    # Someone else moved the log: fold their events and plan again.
                    tracked = self._catch_up(execution_id)
                    continue
                self._absorb(tracked, events)
            appended.extend(events)
        return tuple(appended)
