"""Writing the end of an attempt: one fenced commit (with the scheduler's next step folded
in), or the failure of the attempt.

Both return whether the events written followed on from what the scheduler knew
(`Scheduler.absorb`): then its view is complete and the next plan needs no read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from charter.adapters.otel import Telemetry
from charter.core.attempt import with_failure_usage
from charter.core.budget import Usage
from charter.core.errors import FenceLost, NotFound, StoreError, StoreUnavailable
from charter.core.events import Event, EventKind, NodeGated
from charter.core.ports import Clock, CommitRequest, EffectResult, Store
from charter.core.records import Claim, NewWorkItem, WorkItemStatus
from charter.core.scheduler import RunState
from charter.worker.scheduling import RunView, Scheduler

__all__ = ["Writer", "commit_request", "speculated_follow_up", "with_follow_up", "with_then"]

log = logging.getLogger("charter.worker")

T = TypeVar("T")


def commit_request(
    claim: Claim,
    outcome: WorkItemStatus,
    events: Sequence[EventKind],
    *,
    usage: Usage | None = None,
    succeeded: bool | None = None,
    effect: EffectResult | None = None,
) -> CommitRequest:
    """The commit that ends ``claim``'s attempt with ``outcome`` and ``events`` (and, with
    ``effect``, the side effect's result to record)."""
    return CommitRequest(
        item_id=claim.item.item_id,
        fence=claim.fence,
        outcome=outcome,
        events=tuple(events),
        usage=usage,
        succeeded=succeeded,
        effect=effect,
    )


def with_then(
    request: CommitRequest,
    events: tuple[EventKind, ...],
    items: tuple[NewWorkItem, ...],
    if_last_sequence: int,
) -> CommitRequest:
    """``request`` with the scheduler's next step (``then_*``): `attrs.evolve` of it, built
    directly (evolve looks its fields up on every call, once per node on the hot path)."""
    return CommitRequest(
        item_id=request.item_id,
        fence=request.fence,
        outcome=request.outcome,
        events=request.events,
        usage=request.usage,
        succeeded=request.succeeded,
        write_snapshot=request.write_snapshot,
        effect=request.effect,
        then_events=events,
        then_items=items,
        then_if_last_sequence=if_last_sequence,
    )


def with_follow_up(
    claim: Claim, request: CommitRequest, view: RunView | None, clock: Clock
) -> CommitRequest:
    """The commit, with the scheduler's next step planned from the view the attempt was
    decided on plus the commit's own events: written in the same transaction if the log
    has not moved meanwhile (one write per node instead of two), left out otherwise."""
    return speculated_follow_up(claim, request, view, clock)[0]


def speculated_follow_up(
    claim: Claim, request: CommitRequest, view: RunView | None, clock: Clock
) -> tuple[CommitRequest, RunState | None]:
    """`with_follow_up`, and the fold of the commit's events it planned from (for
    `Scheduler.absorb` to adopt once they are written)."""
    if view is None or view.execution.execution_id != claim.item.execution_id:
        return request, None
    follow_up, folded = view.speculate(request.events, now=clock.now())
    if follow_up.empty:
        return request, folded
    full = with_then(request, follow_up.events, follow_up.items, view.progress.last_sequence)
    return full, folded


class Writer:
    """Writes the ends of one worker's attempts to ``store``, handing what it wrote to
    ``scheduler`` (`Scheduler.absorb`); ``worker_id`` names the worker in the log."""

    def __init__(
        self,
        store: Store,
        scheduler: Scheduler,
        worker_id: str,
        *,
        patience_secs: float,
        lease_secs: float = 30.0,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.store = store
        self.lease_secs = lease_secs
        self.scheduler = scheduler
        self.clock = store.clock
        self.worker_id = worker_id
        self.patience_secs = patience_secs
        self.telemetry = telemetry

    def written(
        self, execution_id: str, written: Sequence[Event], folded: RunState | None = None
    ) -> bool:
        """Report each recorded decision (a span and the counter, when telemetry is on) and
        hand what was written to the scheduler (with ``folded``, the fold of its first
        events made before the commit: `Scheduler.absorb`)."""
        if self.telemetry is not None:
            try:
                for event in written:
                    if isinstance(event.kind, NodeGated):
                        self.telemetry.record_decision(
                            event.kind, run_id=execution_id, sequence=event.sequence
                        )
            except Exception:  # reporting never undoes what was recorded
                # The decision is already committed: a failing exporter must not turn into
                # a failure of the attempt (and a re-run of its node).
                log.warning("%s: could not report a decision span", self.worker_id, exc_info=True)
        return self.scheduler.absorb(execution_id, written, folded=folded)

    def commit(
        self,
        claim: Claim,
        request: CommitRequest,
        view: RunView | None,
        *,
        chain: Sequence[str] | None = None,
    ) -> tuple[bool, Claim | None]:
        """Commit ``request`` (with its follow-up, planned from ``view``); with ``chain``
        (this worker's queues), also claim in the same transaction the run's next item this
        worker may run (`Store.commit_and_claim`). Returns whether the events written were
        absorbed, and that claim. The attempt's outcome is known: a store that is briefly
        unreachable must not turn it into a failure that runs the node again, so the commit
        is retried with backoff for up to ``patience_secs``; it is fenced, so a retry of a
        commit that did land (its acknowledgement was lost) is refused with `FenceLost` and
        writes nothing twice (a claim it made then is reclaimed when its lease expires)."""

        def attempt() -> tuple[tuple[Event, ...], Claim | None, RunState | None]:
            full, folded = speculated_follow_up(claim, request, view, self.clock)
            if chain is None:
                return tuple(self.store.commit(full)), None, folded
            done = self.store.commit_and_claim(
                full, self.worker_id, chain, lease_secs=self.lease_secs
            )
            return tuple(done.events), done.claim, folded

        written, chained, folded = self.patiently(attempt, f"commit of {claim.item.item_id}")
        return self.written(claim.item.execution_id, written, folded), chained

    def patiently(self, write: Callable[[], T], what: str) -> T:
        """``write()``, retried with backoff while the store is briefly unreachable
        (`StoreUnavailable`), for up to ``patience_secs``: for fenced writes only, whose
        retry after one that did land (its acknowledgement lost) is refused, never doubled."""
        delay = 0.05
        deadline = time.monotonic() + self.patience_secs
        while True:
            try:
                return write()
            except StoreUnavailable as error:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("%s: %s: %s; retrying", self.worker_id, what, error)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def fail(
        self,
        claim: Claim,
        error: str,
        *,
        retryable: bool,
        events: Sequence[EventKind] = (),
        usage: Usage | None = None,
        delay_ms: int | None = None,
    ) -> bool:
        """Fail the attempt (the store retries or dead-letters it), with its usage recorded
        as an error (`with_failure_usage`). A lost claim, or a store that cannot be
        reached, writes nothing: the lease will expire and the item be reclaimed."""
        item = claim.item
        events = with_failure_usage(events, node_id=item.node_id, attempt=item.attempt, usage=usage)
        try:
            written = self.store.fail(
                item.item_id,
                claim.fence,
                error=error,
                retryable=retryable,
                events=events,
                usage=usage,
                delay_ms=delay_ms,
            )
        except (FenceLost, NotFound):
            return False
        except StoreError as failure:
            log.warning("could not record the failure of %s: %s", item.item_id, failure)
            return False
        return self.written(item.execution_id, written)
