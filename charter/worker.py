"""The worker shell: claim → gate → execute → settle → one fenced commit.

Everything that decides is in the core (`gate_node`, `settle_node`, `plan`); this module only
gathers the inputs, runs executors and writes what the core returned:

* `Scheduler` folds each execution's log incrementally (`charter.core.scheduler.fold`) and
  appends the next `plan` with compare-and-append, so several processes may schedule the
  same execution without ever dispatching a node twice.
* `Worker` processes claimed items. It fails closed: anything that goes wrong before the
  node's outcome is committed — a store error, an unreadable definition, an executor that
  raises — becomes a failure of the attempt (retryable when trying again may help), never a
  run. Denials commit their governance events with a terminal ``node_failed``.
* `drive` runs one execution in-process until it finishes or waits for a person (the
  ``charter run`` command).

Side effects of tools not declared ``idempotent`` are reserved before they fire and their
result is recorded the moment it is known (`Store.record_effect`), before the commit: a
worker that dies after the effect replays the recorded result on the next attempt instead
of firing again, and an attempt whose predecessor died mid-call (outcome unknown) fails
instead of risking a second effect.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import attrs

from charter.core.approvals import ApprovalStatus, NotRequested, approval_step
from charter.core.attempt import node_gate_request
from charter.core.budget import BudgetState, Usage, budget_after
from charter.core.canonical import content_digest
from charter.core.errors import (
    Conflict,
    ExecutorFailed,
    FenceLost,
    InvalidInput,
    NotFound,
    StoreError,
    StoreUnavailable,
)
from charter.core.events import (
    AgentToolProgress,
    ApprovalConsumed,
    ApprovalReceived,
    Event,
    EventKind,
    JsonValue,
    NodeCancelled,
    NodeCompleted,
    NodeFailed,
    ToolApprovalRequired,
    UsageRecorded,
    WorkflowStarted,
)
from charter.core.gate import (
    GateResult,
    Outcome,
    SettlementOutcome,
    SettleRequest,
    gate_node,
    settle_node,
)
from charter.core.nodes import NODE_KINDS
from charter.core.ports import (
    Clock,
    CommitRequest,
    EffectResult,
    Executor,
    NodeCall,
    NodeResult,
    Store,
)
from charter.core.queue import backoff_delay_ms
from charter.core.records import (
    Claim,
    EffectAbandoned,
    EffectAcquired,
    EffectHeld,
    EffectRecorded,
    Execution,
    ExecutionStatus,
    WorkflowDefinition,
    WorkItemStatus,
)
from charter.core.scheduler import NodeState, Progress, fold, plan
from charter.core.workflow import NodeDef, WorkflowDef, WorkflowInvalid, parse_workflow
from charter.executors import ExecutorRegistry, condition_executor, default_registry

__all__ = [
    "Definitions",
    "RunOutcome",
    "RunView",
    "Scheduler",
    "Worker",
    "WorkerHooks",
    "drive",
    "start_run",
]

log = logging.getLogger("charter.worker")

#: Every queue a node kind can be dispatched to.
ALL_QUEUES: Final = tuple(sorted({info.queue_type for info in NODE_KINDS.values()}))
_NOT_REQUESTED: Final = NotRequested()


class Definitions:
    """Parsed workflow definitions, loaded from the store once per (tenant, id, version)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._cache: dict[tuple[str, str, str], WorkflowDef] = {}
        self._lock = threading.Lock()

    def for_execution(self, execution: Execution) -> WorkflowDef:
        key = (execution.tenant_id, execution.workflow_id, execution.workflow_version)
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached
        stored = self._store.get_workflow(
            execution.workflow_id, execution.workflow_version, execution.tenant_id
        )
        if stored is None:
            raise NotFound(
                f"workflow {execution.workflow_id!r} version {execution.workflow_version!r} "
                f"of tenant {execution.tenant_id!r} is not stored"
            )
        parsed = parse_workflow(stored.ir, f"workflow {execution.workflow_id}")
        with self._lock:
            self._cache[key] = parsed
        return parsed


@attrs.define
class _Tracked:
    execution: Execution  # as first read: only its identity and creation are used
    workflow: WorkflowDef
    progress: Progress
    approvals: dict[str, ApprovalStatus]
    budget: BudgetState = attrs.Factory(BudgetState)


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

    def approval(self, node_id: str) -> ApprovalStatus:
        return self.approvals.get(node_id, _NOT_REQUESTED)


class Scheduler:
    """Folds executions incrementally and appends their next plans (see the module doc).

    Each execution's definition and fold are kept between calls; the log is read only for
    events the scheduler has not seen. Events a caller wrote itself (a commit) are handed
    over with `absorb` and need not be read back."""

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

    def view(self, execution_id: str) -> RunView:
        """Everything the scheduler knows of the execution, caught up with its log (one
        read of the new events)."""
        with self._lock:
            tracked = self._catch_up(execution_id)
            return RunView(
                execution=tracked.execution,
                workflow=tracked.workflow,
                progress=tracked.progress,
                approvals=dict(tracked.approvals),
                budget=tracked.budget,
            )

    def absorb(self, execution_id: str, events: Sequence[Event]) -> bool:
        """Fold in events the caller appended itself, if they follow on from what the
        scheduler knows; returns whether they did (then its view is complete up to them)."""
        with self._lock:
            tracked = self._tracked.get(execution_id)
            if (
                tracked is None
                or not events
                or events[0].sequence != tracked.progress.last_sequence + 1
            ):
                return False
            self._absorb(tracked, events)
            return True

    def _track(self, execution_id: str) -> _Tracked:
        tracked = self._tracked.get(execution_id)
        if tracked is None:
            execution = self._execution(execution_id)
            workflow = self.definitions.for_execution(execution)
            tracked = _Tracked(execution, workflow, fold(workflow, ()), {})
            self._tracked[execution_id] = tracked
        return tracked

    def _catch_up(self, execution_id: str) -> _Tracked:
        with self._lock:
            tracked = self._track(execution_id)
            new = self.store.read_events(execution_id, after=tracked.progress.last_sequence)
            if new:
                self._absorb(tracked, new)
            return tracked

    def _absorb(self, tracked: _Tracked, events: Sequence[Event]) -> None:
        """Fold new events in; every event of a log passes here exactly once, in order, so
        this is also where they are reported (``on_events``)."""
        tracked.progress = fold(tracked.workflow, events, tracked.progress)
        tracked.budget = budget_after(tracked.budget, events)
        for event in events:
            if isinstance(event.kind, ToolApprovalRequired | ApprovalReceived | ApprovalConsumed):
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
        dispatched, a ``human_approval`` node's timeout fires, a run whose last item was
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
                )
                if next_plan.empty:
                    break
                try:
                    events = self.store.append_events(
                        execution_id,
                        next_plan.events,
                        items=next_plan.items,
                        expected_last_sequence=tracked.progress.last_sequence,
                    )
                except Conflict:
                    # Someone else moved the log: fold their events and plan again.
                    tracked = self._catch_up(execution_id)
                    continue
                self._absorb(tracked, events)
            appended.extend(events)
        return tuple(appended)


@attrs.frozen(kw_only=True)
class WorkerHooks:
    """Seams for tests and embedders: called with the claim at the named moments."""

    before_execute: Callable[[Claim], None] | None = None
    before_commit: Callable[[Claim], None] | None = None


class _Beat:
    """One claim whose lease is being renewed."""

    def __init__(self, claim: Claim, due: float) -> None:
        self.claim = claim
        self.due = due
        self.lost = False


class _Heartbeats:
    """Renews the leases of a worker's claims in flight, from one long-lived thread (a
    thread per claim costs more to start than a no-op node takes to run). A claim is renewed
    every third of the lease; the thread wakes at least that often, so a claim registered
    while it sleeps is renewed well before its lease runs out."""

    def __init__(self, store: Store, lease_secs: float) -> None:
        self._store = store
        self._period = lease_secs / 3
        self._lease = lease_secs
        self._cond = threading.Condition()
        self._beats: set[_Beat] = set()
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self, claim: Claim) -> _Beat:
        beat = _Beat(claim, time.monotonic() + self._period)
        with self._cond:
            self._beats.add(beat)
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._run, name="charter-heartbeat", daemon=True
                )
                self._thread.start()
        return beat

    def stop(self, beat: _Beat) -> None:
        with self._cond:
            self._beats.discard(beat)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                now = time.monotonic()
                due = [beat for beat in self._beats if beat.due <= now]
                if not due:
                    earliest = min((beat.due for beat in self._beats), default=now + self._period)
                    self._cond.wait(min(max(earliest - now, 0.001), self._period))
                    continue
                for beat in due:
                    beat.due = now + self._period
            for beat in due:
                self._renew(beat)

    def _renew(self, beat: _Beat) -> None:
        claim = beat.claim
        try:
            self._store.heartbeat(claim.item.item_id, claim.fence, lease_secs=self._lease)
        except FenceLost:
            beat.lost = True
            self.stop(beat)
        except StoreError as error:  # transient: the next beat may succeed
            log.warning("heartbeat of %s failed: %s", claim.item.item_id, error)
        except Exception:  # a heartbeat must never kill the renewing thread
            log.exception("heartbeat of %s failed", claim.item.item_id)


def _default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


class Worker:
    """Processes claimed work items (see the module doc)."""

    def __init__(
        self,
        store: Store,
        *,
        executors: ExecutorRegistry | None = None,
        scheduler: Scheduler | None = None,
        worker_id: str | None = None,
        queues: Sequence[str] = ALL_QUEUES,
        lease_secs: float = 30.0,
        effect_ttl_secs: float = 300.0,
        snapshot_every: int = 256,
        hooks: WorkerHooks | None = None,
        on_events: Callable[[Sequence[Event]], None] | None = None,
    ) -> None:
        self.store = store
        self.executors = executors or default_registry()
        self.scheduler = scheduler or Scheduler(store, on_events=on_events)
        self.worker_id = worker_id or _default_worker_id()
        self.queues = tuple(queues)
        self.lease_secs = lease_secs
        self.effect_ttl_secs = effect_ttl_secs
        if snapshot_every < 1:
            raise InvalidInput("snapshot_every", f"expected at least 1, got {snapshot_every}")
        self.snapshot_every = snapshot_every
        self.hooks = hooks or WorkerHooks()
        self._heartbeats = _Heartbeats(store, lease_secs)
        self._absorbed = False  # whether the item in hand's own write was folded in
        self._view: RunView | None = None  # the view the item in hand is decided on

    def close(self) -> None:
        """Stop the heartbeat thread (claims still in flight are no longer renewed)."""
        self._heartbeats.close()

    @property
    def clock(self) -> Clock:
        return self.store.clock

    # ── the loop ──

    def step(self, execution_id: str | None = None) -> bool:
        """Claim and process one item (of ``execution_id`` only, if given); False when none
        is available."""
        claim = self.store.claim(
            self.worker_id, self.queues, lease_secs=self.lease_secs, execution_id=execution_id
        )
        if claim is None:
            return False
        self.process(claim)
        return True

    def run(self, stop: threading.Event, *, idle_secs: float = 0.2, tick_secs: float = 1.0) -> None:
        """Work until ``stop`` is set: reclaim expired leases, advance every running
        execution (`Scheduler.tick`, at most every ``tick_secs``), claim, process. Finishes
        the item in hand before returning (graceful shutdown)."""
        last_reclaim = float("-inf")
        while not stop.is_set():
            now = time.monotonic()
            try:
                if now - last_reclaim >= self.lease_secs / 3:
                    self.reclaim()
                    last_reclaim = now
                self.scheduler.tick(min_interval_secs=tick_secs)
            except StoreError as error:
                log.warning("worker %s: store unavailable: %s", self.worker_id, error)
            try:
                worked = self.step()
            except StoreError as error:
                log.warning("worker %s: store unavailable: %s", self.worker_id, error)
                worked = False
            if not worked:
                stop.wait(idle_secs)

    def reclaim(self) -> None:
        """Fail the attempts of dead workers (expired leases) and schedule what follows."""
        result = self.store.reclaim_expired()
        for item in (*result.retried, *result.dead_lettered):
            self._advance(item.execution_id)

    # ── one item ──

    def process(self, claim: Claim) -> None:
        """Decide, execute and commit one claimed item; never raises for a node's failure."""
        item = claim.item
        self._absorbed = False
        self._view = None
        try:
            self._process(claim)
        except FenceLost:
            log.info("%s: lost the claim of %s; abandoning it", self.worker_id, item.item_id)
        except Exception as error:
            log.exception("%s: error processing %s", self.worker_id, item.item_id)
            self._fail(claim, f"worker error: {type(error).__name__}: {error}", retryable=True)
        # When this item's own write followed on from what the scheduler knew, its view is
        # complete and planning needs no read (compare-and-append guards it regardless).
        self._advance(item.execution_id, read=not self._absorbed)

    def _advance(self, execution_id: str, *, read: bool = True) -> None:
        try:
            self.scheduler.advance(execution_id, read=read)
        except (StoreError, InvalidInput) as error:
            log.warning("scheduling %s failed (will be retried): %s", execution_id, error)

    def _fail(
        self,
        claim: Claim,
        error: str,
        *,
        retryable: bool,
        events: Sequence[EventKind] = (),
        usage: Usage | None = None,
        delay_ms: int | None = None,
    ) -> None:
        if not any(isinstance(kind, UsageRecorded) for kind in events):
            # A failure counts as an error in the ledger: say so in the log, so that the
            # ledger stays the fold of the log (`budget_after`).
            spent = usage or Usage()
            recorded = UsageRecorded(
                node_id=claim.item.node_id,
                attempt=claim.item.attempt,
                input_tokens=spent.input_tokens,
                output_tokens=spent.output_tokens,
                cost_usd=spent.cost_usd,
                tool_calls=spent.tool_calls,
                iterations=spent.iterations,
                succeeded=False,
            )
            events = (*events, recorded)
        try:
            written = self.store.fail(
                claim.item.item_id,
                claim.fence,
                error=error,
                retryable=retryable,
                events=events,
                usage=usage,
                delay_ms=delay_ms,
            )
        except (FenceLost, NotFound):
            return
        except StoreError as failure:  # the lease will expire and the item be reclaimed
            log.warning("could not record the failure of %s: %s", claim.item.item_id, failure)
            return
        self._absorbed = self.scheduler.absorb(claim.item.execution_id, written)

    def _commit(self, claim: Claim, request: CommitRequest) -> None:
        if self.hooks.before_commit is not None:
            self.hooks.before_commit(claim)
        # The attempt's outcome is known: a store that is briefly unreachable must not turn
        # it into a failure that runs the node again. The commit is retried with backoff
        # for up to half a lease; it is fenced, so a retry of a commit that did land (its
        # acknowledgement was lost) is refused with FenceLost and writes nothing twice.
        delay = 0.05
        deadline = time.monotonic() + self.lease_secs / 2
        while True:
            try:
                written = self.store.commit(self._with_follow_up(claim, request))
                break
            except StoreUnavailable as error:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning(
                    "%s: commit of %s: %s; retrying", self.worker_id, claim.item.item_id, error
                )
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        self._absorbed = self.scheduler.absorb(claim.item.execution_id, written)

    def _with_follow_up(self, claim: Claim, request: CommitRequest) -> CommitRequest:
        """The commit, with the scheduler's next step planned from the view the attempt was
        decided on plus the commit's own events: written in the same transaction if the log
        has not moved meanwhile (one write per node instead of two), left out otherwise."""
        view = self._view
        if view is None or view.execution.execution_id != claim.item.execution_id:
            return request
        progress = view.progress
        now = self.clock.now()
        first = progress.last_sequence + 1
        pending = [
            Event(
                id=f"planned-{index}",
                execution_id=claim.item.execution_id,
                sequence=index,
                kind=kind,
                created_at=now,
            )
            for index, kind in enumerate(request.events, start=first)
        ]
        after = fold(view.workflow, pending, progress)
        follow_up = plan(view.workflow, after, now=now, execution_id=claim.item.execution_id)
        if follow_up.empty:
            return request
        return attrs.evolve(
            request,
            then_events=follow_up.events,
            then_items=follow_up.items,
            then_if_last_sequence=progress.last_sequence,
        )

    def _settle_terminal(self, claim: Claim, events: Sequence[EventKind]) -> None:
        request = CommitRequest(
            item_id=claim.item.item_id,
            fence=claim.fence,
            outcome=WorkItemStatus.FAILED,
            events=tuple(events),
        )
        self._commit(claim, request)

    def _process(self, claim: Claim) -> None:
        item = claim.item
        execution = self.store.get_execution(item.execution_id)
        if execution is None:
            self._settle_terminal(
                claim, (_failed(item.node_id, item.attempt, "execution missing"),)
            )
            return
        if execution.status.terminal:
            outcome: EventKind = (
                NodeCancelled(node_id=item.node_id)
                if execution.status is ExecutionStatus.CANCELLED
                else _failed(item.node_id, item.attempt, f"run is already {execution.status.value}")
            )
            self._settle_terminal(claim, (outcome,))
            return
        try:
            view = self.scheduler.view(execution.execution_id)
        except WorkflowInvalid as error:
            self._settle_terminal(
                claim, (_failed(item.node_id, item.attempt, f"invalid definition: {error}"),)
            )
            return
        workflow = view.workflow
        self._view = view
        node = workflow.nodes.get(item.node_id)
        if node is None:
            self._settle_terminal(
                claim, (_failed(item.node_id, item.attempt, "node not in the definition"),)
            )
            return
        tenant = self.store.get_tenant(execution.tenant_id)
        if tenant is None:
            reason = (
                f"tenant {execution.tenant_id!r} is unknown: refusing to run without its policy"
            )
            self._settle_terminal(claim, (_failed(item.node_id, item.attempt, reason),))
            return
        # The budget is the fold of the same log the rest was read from (`as_of`), which
        # is what the store's ledger holds at that point: a replay can recompute it.
        ledger = view.budget
        progress = view.progress
        state_digest = content_digest(progress.state)
        gate = gate_node(
            node_gate_request(
                execution,
                workflow,
                node,
                tenant.policy,
                attempt=item.attempt,
                budget=ledger,
                approval=view.approval(node.node_id),
                state_digest=state_digest,
                now=self.clock.now(),
                as_of=progress.last_sequence,
            )
        )
        match gate.outcome:
            case Outcome.FAIL:
                self._settle_terminal(claim, gate.events)
            case Outcome.HOLD:
                self._commit(
                    claim,
                    CommitRequest(
                        item_id=item.item_id,
                        fence=claim.fence,
                        outcome=WorkItemStatus.HELD,
                        events=gate.events,
                    ),
                )
            case Outcome.RUN:
                self._run(claim, execution, workflow, node, gate, progress, ledger, state_digest)

    def _run(
        self,
        claim: Claim,
        execution: Execution,
        workflow: WorkflowDef,
        node: NodeDef,
        gate: GateResult,
        progress: Progress,
        ledger_state: Any,
        state_digest: str,
    ) -> None:
        item = claim.item
        executor = self._executor(workflow, node)
        if executor is None:
            what = node.context.tool_name or node.tag
            reason = f"no executor for {node.tag} node {node.node_id!r} ({what})"
            self._settle_terminal(
                claim, (*gate.events, _failed(node.node_id, item.attempt, reason))
            )
            return
        args = node.kind.get("args")
        key = content_digest({"item": item.item_id, "args": args, "state": state_digest})
        effectful = self._effectful(workflow, node)
        replayed: NodeResult | None = None
        if effectful:
            reservation = self.store.reserve_effect(
                key, item_id=item.item_id, fence=claim.fence, ttl_secs=self.effect_ttl_secs
            )
            match reservation:
                case EffectRecorded(result=recorded):
                    replayed = _result_from_json(recorded)
                case EffectHeld():
                    self._fail(
                        claim,
                        "another claim is firing this side effect; retrying later",
                        retryable=True,
                        events=gate.events,
                    )
                    return
                case EffectAbandoned():
                    reason = (
                        "the outcome of an earlier attempt of this call is unknown (its worker "
                        "stopped mid-call); it is not idempotent, so it is not fired again"
                    )
                    failed = _failed(node.node_id, item.attempt, reason)
                    self._settle_terminal(claim, (*gate.events, failed))
                    return
                case EffectAcquired():
                    pass
        chunks: list[JsonValue] = []
        tool = workflow.tools.get(node.context.tool_name or "")
        call = NodeCall(
            execution_id=execution.execution_id,
            node_id=node.node_id,
            attempt=item.attempt,
            kind_tag=node.tag,
            kind=node.kind,
            tool_name=node.context.tool_name,
            model_ref=node.context.model_ref,
            resolved_model=node.context.resolved_model,
            args=args,
            state=progress.state,
            inputs=progress.inputs,
            config=tool.config if tool is not None else None,
            idempotency_key=key,
            emit=chunks.append,
            workflow_id=workflow.workflow_id,
        )
        if self.hooks.before_execute is not None:
            self.hooks.before_execute(claim)
        started = time.monotonic()
        beat = self._heartbeats.start(claim)
        try:
            result = (
                replayed if replayed is not None else _execute(executor, call, node.timeout_secs)
            )
        except ExecutorFailed as failure:
            self._heartbeats.stop(beat)
            self._failed_attempt(
                claim, node, gate, ledger_state, workflow, str(failure), failure.retryable
            )
            return
        except Exception as failure:  # noqa: BLE001 - any executor exception fails the attempt
            self._heartbeats.stop(beat)
            message = f"{type(failure).__name__}: {failure}"
            self._failed_attempt(claim, node, gate, ledger_state, workflow, message, True)
            return
        if effectful and replayed is None:
            self.store.record_effect(
                key, item_id=item.item_id, fence=claim.fence, result=_result_to_json(result)
            )
        self._heartbeats.stop(beat)
        duration_ms = int((time.monotonic() - started) * 1000)
        settlement = settle_node(
            SettleRequest(
                node_id=node.node_id,
                attempt=item.attempt,
                budget=ledger_state,
                limits=workflow.limits,
                usage=result.usage,
                succeeded=True,
            )
        )
        progress_events = tuple(
            AgentToolProgress(
                node_id=node.node_id,
                chunk_index=index,
                partial_output_summary=_summary(chunk),
            )
            for index, chunk in enumerate(chunks)
        )
        if settlement.outcome is SettlementOutcome.FAILED:
            events = (*gate.events, *progress_events, *settlement.events)
            self._commit(
                claim,
                CommitRequest(
                    item_id=item.item_id,
                    fence=claim.fence,
                    outcome=WorkItemStatus.FAILED,
                    events=events,
                    usage=result.usage,
                    succeeded=True,
                ),
            )
            return
        completed = NodeCompleted(
            node_id=node.node_id,
            output=result.output,
            state_patch=result.state_patch if result.state_patch is not None else {},
            duration_ms=duration_ms,
            gen_ai_system=result.gen_ai_system,
            gen_ai_model=result.gen_ai_model,
            input_tokens=result.usage.input_tokens or None,
            output_tokens=result.usage.output_tokens or None,
            finish_reason=result.finish_reason,
            cost_usd=result.usage.cost_usd or None,
            idempotency_key=key if effectful else None,
        )
        events = (*gate.events, *progress_events, *settlement.events, completed)
        # A snapshot folds the log into the materialized state; the scheduler does not need
        # one (it folds the log itself), so one is written every `snapshot_every` events of
        # the run rather than at every commit, whose cost would grow with the run.
        before = progress.last_sequence
        snapshot = (before + len(events)) // self.snapshot_every > before // self.snapshot_every
        self._commit(
            claim,
            CommitRequest(
                item_id=item.item_id,
                fence=claim.fence,
                outcome=WorkItemStatus.COMPLETED,
                events=events,
                usage=result.usage,
                succeeded=True,
                write_snapshot=snapshot,
                effect=EffectResult(key=key, result=_result_to_json(result)) if effectful else None,
            ),
        )

    def _failed_attempt(
        self,
        claim: Claim,
        node: NodeDef,
        gate: GateResult,
        ledger_state: Any,
        workflow: WorkflowDef,
        error: str,
        retryable: bool,
    ) -> None:
        settlement = settle_node(
            SettleRequest(
                node_id=node.node_id,
                attempt=claim.item.attempt,
                budget=ledger_state,
                limits=workflow.limits,
                succeeded=False,
            )
        )
        delay = backoff_delay_ms(
            claim.item.attempt + 1,
            node.retry.backoff_ms,
            jitter_key=claim.item.item_id,
            max_ms=node.retry.max_backoff_ms,
        )
        self._fail(
            claim,
            error,
            retryable=retryable,
            events=(*gate.events, *settlement.events),
            delay_ms=delay,
        )

    def _executor(self, workflow: WorkflowDef, node: NodeDef) -> Executor | None:
        if node.tag == "condition":
            return condition_executor(workflow)
        return self.executors.resolve(workflow, node)

    @staticmethod
    def _effectful(workflow: WorkflowDef, node: NodeDef) -> bool:
        """Whether the node's work is a side effect to reserve and record: every acting node
        that is not a model call, unless its tool is declared idempotent."""
        info = NODE_KINDS[node.tag]
        if not info.acting or node.tag == "model":
            return False
        tool = workflow.tools.get(node.context.tool_name or "")
        return not (tool is not None and tool.idempotent)


def _failed(node_id: str, attempt: int, error: str) -> NodeFailed:
    return NodeFailed(node_id=node_id, error=error, attempt=attempt, retryable=False)


def _execute(executor: Executor, call: NodeCall, timeout: float | None) -> NodeResult:
    """Run the executor, in this thread, or in a helper thread when the node has a timeout
    (a timed-out executor cannot be killed: its result is discarded when it returns)."""
    if timeout is None:
        result = executor(call)
    else:
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["result"] = executor(call)
            except BaseException as error:  # noqa: BLE001 - carried back to the caller
                box["error"] = error

        thread = threading.Thread(target=target, name=f"charter-exec-{call.node_id}", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise ExecutorFailed(f"timed out after {timeout:g} s", retryable=True)
        if "error" in box:
            raise box["error"]
        result = box["result"]
    if not isinstance(result, NodeResult):
        raise ExecutorFailed(
            f"executor returned {type(result).__name__}, expected NodeResult", retryable=False
        )
    return result


def _summary(chunk: JsonValue) -> str:
    text = chunk if isinstance(chunk, str) else repr(chunk)
    return text if len(text) <= 200 else text[:199] + "…"


def _result_to_json(result: NodeResult) -> dict[str, Any]:
    usage = result.usage
    return {
        "output": result.output,
        "state_patch": result.state_patch,
        "usage": {
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cost_usd": usage.cost_usd,
            "tool_calls": usage.tool_calls,
            "iterations": usage.iterations,
        },
        "gen_ai_system": result.gen_ai_system,
        "gen_ai_model": result.gen_ai_model,
        "finish_reason": result.finish_reason,
    }


def _result_from_json(data: JsonValue) -> NodeResult:
    if not isinstance(data, dict):
        raise ExecutorFailed("recorded effect result is not an object", retryable=False)
    usage = data.get("usage") or {}
    return NodeResult(
        output=data.get("output"),
        state_patch=data.get("state_patch"),
        usage=Usage(**usage),
        gen_ai_system=data.get("gen_ai_system"),
        gen_ai_model=data.get("gen_ai_model"),
        finish_reason=data.get("finish_reason"),
    )


# ── starting and driving one execution in-process ──────────────────────────────────────


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
        states = {entry.state for entry in progress.nodes.values()}
        if not (states & {NodeState.SCHEDULED, NodeState.RUNNING, NodeState.ANSWERED}):
            if NodeState.HELD in states:
                return RunOutcome(execution_id=execution_id, status="waiting")
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
    for event in reversed(store.read_events(execution_id)):
        error = getattr(event.kind, "error", None)
        if type(event.kind).__name__ == "WorkflowFailed" and isinstance(error, str):
            return error
    return None
