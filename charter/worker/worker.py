"""The worker: claim → gate → execute → commit, one fenced write per attempt.

What to write is decided by the core (`gate_node`, `settle_node`, `plan` and the events of
`charter.core.attempt`); a `Worker` gathers the inputs, runs the executor and writes. It fails
closed: anything that goes wrong before the node's outcome is committed (a store error, an
unreadable definition, an executor that raises) fails the attempt, retryable when trying
again may help, never the run. The side effect of a tool not declared ``idempotent`` is
reserved before it fires and its result recorded as soon as it is known: a later attempt
replays it instead of firing again, and one whose predecessor died mid-call does not fire:
the node waits for a person to say what happened (``outcome_unknown``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Final

import attrs

from charter.adapters.executors import ExecutorRegistry, default_registry
from charter.adapters.otel import Telemetry
from charter.core.attempt import (
    effect_key,
    executed_attempt,
    failed_attempt,
    finished_run_event,
    is_effectful,
    node_gate_request,
    result_to_json,
    terminal_failure,
)
from charter.core.budget import BudgetLimits, Usage
from charter.core.canonical import content_digest
from charter.core.errors import (
    Conflict,
    ExecutorFailed,
    FenceLost,
    InvalidInput,
    NotFound,
    StoreError,
)
from charter.core.events import EventKind, JsonValue, OutcomeUnknown
from charter.core.gate import GateRequest, Outcome, gate_node
from charter.core.limits import charge_event
from charter.core.nodes import NODE_KINDS
from charter.core.policy import PolicySet
from charter.core.ports import (
    Clock,
    CommitRequest,
    EffectResult,
    GroupCommitted,
    Store,
)
from charter.core.records import Claim, WorkItemStatus
from charter.core.workflow import NodeDef, WorkflowInvalid
from charter.worker.commits import Writer, commit_request, speculated_follow_up
from charter.worker.execution import (
    Lost,
    Refused,
    execute_traced,
    executor_for,
    node_call,
    reserve,
)
from charter.worker.heartbeats import Heartbeats
from charter.worker.limits import with_limit_usage
from charter.worker.scheduling import RunView, Scheduler

__all__ = ["ALL_QUEUES", "DEFAULT_BATCH", "DEFAULT_CHAIN_LIMIT", "Worker", "WorkerHooks"]

log = logging.getLogger("charter.worker")

#: How many items in a row a worker claims in its own commits' transactions, by default.
DEFAULT_CHAIN_LIMIT: Final = 64

#: How many ready items of a run a worker claims, and commits, in one transaction, by default
#: (1: one at a time, as before groups; docs/workflows.md §3).
DEFAULT_BATCH: Final = 32

#: Every queue a node kind can be dispatched to.
ALL_QUEUES: Final = tuple(sorted({info.queue_type for info in NODE_KINDS.values()}))


@attrs.frozen(kw_only=True)
class WorkerHooks:
    """Seams for tests and embedders: called with the claim at the named moments."""

    before_execute: Callable[[Claim], None] | None = None
    before_commit: Callable[[Claim], None] | None = None


def _charged(request: GateRequest, attempt: int, usage: Usage | None) -> tuple[EventKind, ...]:
    """The ``limit_charged`` event of an attempt that ran, when limits matched its node: it
    is committed with the attempt's end, in the same transaction (`charter.core.limits`)."""
    charge = charge_event(request.node_id, attempt, request.rate_limits, usage, request.now)
    return () if charge is None else (charge,)


_NO_LIMITS: Final = BudgetLimits()


def _windowed(policy: PolicySet | None) -> bool:
    """Whether the tenant's policy sets windowed limits (`charter.core.limits`)."""
    return policy is not None and bool(policy.rate_limits)


def _default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


class Worker:
    """Processes claimed work items (see the module doc). `charter.bootstrap.build_worker`
    is the way to make one: it wires the scheduler and the executors. (Left out here, they
    default to a scheduler of the worker's own and `default_registry`.)"""

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
        hooks: WorkerHooks | None = None,
        telemetry: Telemetry | None = None,
        chain_limit: int = DEFAULT_CHAIN_LIMIT,
        batch: int = DEFAULT_BATCH,
    ) -> None:
        self.store = store
        self.executors = executors if executors is not None else default_registry()
        self.scheduler = scheduler if scheduler is not None else Scheduler(store)
        self.worker_id = worker_id or _default_worker_id()
        self.queues = tuple(queues)
        self.lease_secs = lease_secs
        self.effect_ttl_secs = effect_ttl_secs
        self.hooks = hooks or WorkerHooks()
        self._heartbeats = Heartbeats(store, lease_secs)
        self.telemetry = telemetry
        self._writer = Writer(
            store,
            self.scheduler,
            self.worker_id,
            patience_secs=lease_secs / 2,
            lease_secs=lease_secs,
            telemetry=telemetry,
        )
        if isinstance(chain_limit, bool) or chain_limit < 0:
            raise InvalidInput("chain_limit", f"expected an integer ≥ 0, got {chain_limit!r}")
        #: How many items in a row one `process` may claim in the transactions of its own
        #: commits (`Store.commit_and_claim`) before it lets a normal claim choose again.
        self.chain_limit = chain_limit
        if isinstance(batch, bool) or not 0 <= batch <= 1000:
            raise InvalidInput("batch", f"expected an integer from 0 to 1000, got {batch!r}")
        #: How many ready items of one run this worker claims in one transaction
        #: (`Store.claim_many`) and whose ends it commits in one (`Store.commit_group`);
        #: 0 or 1: one item at a time (`Store.claim`, `Store.commit_and_claim`).
        self.batch = batch
        self._group: list[tuple[Claim, CommitRequest, RunView | None]] | None = None
        self._wide = False  # whether the last group's claims showed siblings waiting
        self._absorbed = False  # whether the item in hand's own write was folded in
        self._view: RunView | None = None  # the view the item in hand is decided on
        self._chain = False  # whether the commit of the item in hand may claim the next
        self._next: Claim | None = None  # the item its commit claimed, to process next

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
        if self.batch > 1:
            claims = self.store.claim_many(
                self.worker_id,
                self.queues,
                lease_secs=self.lease_secs,
                limit=self.batch,
                execution_id=execution_id,
            )
            if not claims:
                return False
            self.process_group(claims)
            return True
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
        for item in (*result.retried, *result.dead_lettered, *result.held):
            self._advance(item.execution_id)

    # ── one item ──

    def process(self, claim: Claim) -> None:
        """Decide, execute and commit one claimed item, and then each item its commit
        claimed in the same transaction (a successor it made ready: `Store.commit_and_claim`),
        up to ``chain_limit`` of them; never raises for a node's failure."""
        chained = 0
        next_claim: Claim | None = claim
        while next_claim is not None:
            next_claim = self._process_one(next_claim, chain=chained < self.chain_limit)
            chained += 1

    def process_group(self, claims: Sequence[Claim]) -> None:
        """Decide and execute claimed items of one run one after another, and commit their
        ends together (`Store.commit_group`), claiming in that transaction up to ``batch``
        more of the run's ready items, which are processed next — up to ``chain_limit``
        items in a row; never raises for a node's failure.

        Each item is decided on the run as of the group's claims, as items claimed by
        several workers at once are: its ``node_gated`` records that point (``as_of``) and
        replay recomputes it there. When the decision could depend on the items before it
        in the group — the run has a budget, or the tenant windowed limits — their commits
        are written first and the item is decided after them, as one at a time would."""
        if self.batch <= 1:
            for claim in claims:
                self.process(claim)
            return
        chained = 0
        batch: Sequence[Claim] = claims
        while batch:
            batch = self._process_batch(batch, chain=chained < self.chain_limit)
            chained += len(batch)

    def _process_batch(self, claims: Sequence[Claim], *, chain: bool) -> Sequence[Claim]:
        run = claims[0].item.execution_id
        # The claims' ``node_started`` follow one another: the view takes them all at once.
        self.scheduler.absorb(run, [event for claim in claims for event in claim.events])
        self._group = []
        began = time.monotonic()
        try:
            for index, claim in enumerate(claims):
                if time.monotonic() - began > self.lease_secs / 4:
                    # Slow items: write what is done, and renew the leases still to run.
                    self._flush(None)
                    self._renew(claims[index:])
                    began = time.monotonic()
                self._process_one(claim, chain=False)
            return self._flush(self.queues if chain else None)
        finally:
            self._group = None

    def _renew(self, claims: Sequence[Claim]) -> None:
        for claim in claims:
            try:
                self.store.heartbeat(claim.item.item_id, claim.fence, lease_secs=self.lease_secs)
            except StoreError as error:  # the item's own commit will find out
                log.info("%s: renewing %s: %s", self.worker_id, claim.item.item_id, error)

    def _flush(self, chain: Sequence[str] | None) -> Sequence[Claim]:
        """Commit the group's pending ends in one transaction (claiming, with ``chain``,
        up to ``batch`` more of the run's items in it); returns those claims."""
        pending, self._group = self._group or [], []
        if not pending:
            return ()
        run = pending[0][0].item.execution_id
        # The scheduler's next step rides on the first commit only: a later one's would be
        # planned from a log its predecessors have moved, and left out by the store.
        first, request, view = pending[0]
        # ``folded``: the first commit's events folded to plan that step, adopted by the
        # scheduler once written instead of folded again (`Scheduler.absorb`).
        planned, folded = speculated_follow_up(first, request, view, self.clock)
        requests = [planned]
        requests += [request for _, request, _ in pending[1:]]
        enqueued = {item.item_id for item in requests[0].then_items}
        # One end whose commit makes at most one item ready, when the run's last claims
        # showed no siblings waiting (a chain): the one-item commit, which claims that
        # successor as it inserts it; otherwise the group, which claims up to ``batch``.
        alone = chain is not None and len(requests) == 1 and len(enqueued) <= 1 and not self._wide
        limit = self.batch if chain is not None else 0

        def attempt() -> GroupCommitted:
            if alone:
                return self._commit_alone(requests[0], chain or ())
            return self.store.commit_group(
                requests, self.worker_id, chain or (), lease_secs=self.lease_secs,
                claim_limit=limit,
            )  # fmt: skip

        done = self._writer.patiently(attempt, f"group commit of {len(requests)}")
        # Siblings were waiting if it claimed more than one, or one it did not enqueue.
        claimed = done.claims
        self._wide = len(claimed) > 1 or any(c.item.item_id not in enqueued for c in claimed)
        absorbed = self._writer.written(run, done.events, folded)
        for (claim, _, _), result in zip(pending, done.results, strict=True):
            if isinstance(result, FenceLost):
                log.info(
                    "%s: lost the claim of %s; abandoning it", self.worker_id, claim.item.item_id
                )
            elif isinstance(result, Exception):
                why = f"worker error: {type(result).__name__}: {result}"
                absorbed = self._writer.fail(claim, why, retryable=True) and absorbed
        self._advance(run, read=not absorbed)
        return done.claims

    def _commit_alone(self, request: CommitRequest, queues: Sequence[str]) -> GroupCommitted:
        """`Store.commit_and_claim`, reported as a group of one."""
        try:
            done = self.store.commit_and_claim(
                request, self.worker_id, queues, lease_secs=self.lease_secs
            )
        except (FenceLost, NotFound, Conflict, InvalidInput) as refused:  # as a group reports
            return GroupCommitted(results=(refused,))
        if done.claim is None:
            return GroupCommitted(results=(done.events,))
        return GroupCommitted(results=(done.events[:-1],), claims=(done.claim,))

    def _process_one(self, claim: Claim, *, chain: bool) -> Claim | None:
        item = claim.item
        self._absorbed = False
        self._view = None
        self._chain = chain
        self._next = None
        try:
            self._process(claim)
        except FenceLost:
            log.info("%s: lost the claim of %s; abandoning it", self.worker_id, item.item_id)
        except Exception as error:
            log.exception("%s: error processing %s", self.worker_id, item.item_id)
            why = f"worker error: {type(error).__name__}: {error}"
            self._absorbed = self._writer.fail(claim, why, retryable=True)
        if self._group is not None:  # in a group: planned once, after the group's commit
            return None
        # When this item's own write followed on from what the scheduler knew, its view is
        # complete and planning needs no read (compare-and-append guards it regardless).
        self._advance(item.execution_id, read=not self._absorbed)
        return self._next

    def _advance(self, execution_id: str, *, read: bool = True) -> None:
        try:
            self.scheduler.advance(execution_id, read=read)
        except (StoreError, InvalidInput) as error:
            log.warning("scheduling %s failed (will be retried): %s", execution_id, error)

    def _process(self, claim: Claim) -> None:
        item = claim.item
        # The run as the scheduler knows it, caught up with the log (the claim's own
        # ``node_started`` included): its status says whether the run is over (cancelled,
        # say) without reading the execution again.
        try:
            view = self._view = self.scheduler.view(item.execution_id, claimed=claim)
        except NotFound:
            return self._refuse(claim, "execution missing")
        except WorkflowInvalid as error:
            execution = self.store.get_execution(item.execution_id)
            if execution is not None and execution.status.terminal:
                return self._settle(
                    claim, finished_run_event(execution.status, item.node_id, item.attempt)
                )
            return self._refuse(claim, f"invalid definition: {error}")
        if view.status.terminal:
            return self._settle(claim, finished_run_event(view.status, item.node_id, item.attempt))
        execution = view.execution
        node = view.workflow.nodes.get(item.node_id)
        if node is None:
            return self._refuse(claim, "node not in the definition")
        # The tenant as the claim's transaction read it (no read of its own), or read now.
        tenant = claim.tenant
        if tenant is None or tenant.tenant_id != execution.tenant_id:
            tenant = self.store.get_tenant(execution.tenant_id)
        if tenant is None:
            why = f"tenant {execution.tenant_id!r} is unknown: refusing to run without its policy"
            return self._refuse(claim, why)
        if self._group and (view.workflow.limits != _NO_LIMITS or _windowed(tenant.policy)):
            # A budget or windowed limits: decided after the group's ends before it.
            self._flush(None)
            view = self._view = self.scheduler.view(item.execution_id)
        # The budget is the fold of the same log the rest was read from (`as_of`), which
        # is what the store's ledger holds at that point: a replay can recompute it.
        digest = content_digest(view.progress.state)
        request = node_gate_request(
            execution,
            view.workflow,
            node,
            tenant.policy,
            attempt=item.attempt,
            budget=view.budget,
            approval=view.approval(node.node_id),
            state_digest=digest,
            now=self.clock.now(),
            as_of=view.progress.last_sequence,
        )
        # The tenant's windowed limits that count this node, read at the decision's `now`.
        request = with_limit_usage(self.store, execution.tenant_id, tenant.policy, request)
        gate = gate_node(request)
        match gate.outcome:
            case Outcome.FAIL:
                self._settle(claim, *gate.events)
            case Outcome.HOLD:
                self._commit(claim, commit_request(claim, WorkItemStatus.HELD, gate.events))
            case Outcome.RUN:
                self._run(claim, view, node, gate.events, digest, request)
        return None

    def _run(
        self,
        claim: Claim,
        view: RunView,
        node: NodeDef,
        gated: Sequence[EventKind],
        digest: str,
        request: GateRequest,
    ) -> None:
        item, workflow = claim.item, view.workflow
        executor = executor_for(self.executors, workflow, node)
        if executor is None:
            what = f"{node.tag} node {node.node_id!r} ({node.context.tool_name or node.tag})"
            return self._refuse(claim, f"no executor for {what}", *gated)
        key = effect_key(item.item_id, node.kind.get("args"), digest)
        effectful = is_effectful(workflow, node)
        ttl = self.effect_ttl_secs
        replayed = reserve(self.store, claim, key, ttl_secs=ttl) if effectful else None
        if isinstance(replayed, Refused):
            self._absorbed = self._writer.fail(
                claim, replayed.reason, retryable=replayed.retryable, events=gated
            )
            return None
        if isinstance(replayed, Lost):
            # Not fired again, and not failed: the item is held and the node waits for a
            # person to say what happened (`charter resolve`); the scheduler settles it.
            lost = OutcomeUnknown(
                node_id=node.node_id,
                attempt=item.attempt,
                idempotency_key=key,
                reason=replayed.reason,
            )
            return self._commit(claim, commit_request(claim, WorkItemStatus.HELD, (*gated, lost)))
        chunks: list[JsonValue] = []
        call = node_call(view, node, attempt=item.attempt, idempotency_key=key, emit=chunks.append)
        if self.hooks.before_execute is not None:
            self.hooks.before_execute(claim)
        started = time.monotonic()
        beat = self._heartbeats.start(claim)
        result = (
            replayed
            if replayed is not None
            else execute_traced(executor, call, node, self.telemetry)
        )
        if isinstance(result, ExecutorFailed):
            self._heartbeats.stop(beat)
            failed = failed_attempt(workflow, node, item, gate_events=gated, budget=view.budget)
            error, retryable = str(result), result.retryable
            events = (*failed.events, *_charged(request, item.attempt, None))
            self._absorbed = self._writer.fail(
                claim, error, retryable=retryable, events=events, delay_ms=failed.delay_ms
            )
            return None
        if effectful and replayed is None:
            recorded = result_to_json(result)
            self.store.record_effect(key, item_id=item.item_id, fence=claim.fence, result=recorded)
        self._heartbeats.stop(beat)
        end = executed_attempt(
            workflow,
            node,
            item.attempt,
            result,
            gate_events=gated,
            chunks=chunks,
            budget=view.budget,
            duration_ms=int((time.monotonic() - started) * 1000),
            idempotency_key=key if effectful else None,
        )
        outcome = WorkItemStatus.COMPLETED if end.completed else WorkItemStatus.FAILED
        events = (*end.events, *_charged(request, item.attempt, result.usage))
        # (When to fold a snapshot is the commit planner's rule: charter.core.commit.) A
        # completed side effect's result is recorded with the commit.
        effect = (
            EffectResult(key=key, result=result_to_json(result))
            if end.completed and effectful
            else None
        )
        commit = commit_request(
            claim, outcome, events, usage=result.usage, succeeded=True, effect=effect
        )
        return self._commit(claim, commit)

    # ── writing the outcome (`charter.worker.commits`) ──

    def _settle(self, claim: Claim, *events: EventKind) -> None:
        """End the attempt as a terminal failure with ``events``."""
        self._commit(claim, commit_request(claim, WorkItemStatus.FAILED, events))

    def _refuse(self, claim: Claim, why: str, *events: EventKind) -> None:
        """End the attempt with ``events`` and a terminal failure of its node for ``why``."""
        self._settle(claim, *events, terminal_failure(claim.item.node_id, claim.item.attempt, why))

    def _commit(self, claim: Claim, request: CommitRequest) -> None:
        if self.hooks.before_commit is not None:
            self.hooks.before_commit(claim)
        if self._group is not None:  # written with the group's (`_flush`)
            self._group.append((claim, request, self._view))
            return
        chain = self.queues if self._chain else None
        self._absorbed, self._next = self._writer.commit(claim, request, self._view, chain=chain)
