"""The SQLite store and the in-memory reference, driven side by side by a state machine.

Hypothesis generates sequences of queue operations — enqueue (new and repeated ids), claim,
heartbeat, commit (with the current fence, with a stale remembered one, with a deliberately
wrong one), park, fail, clock advances (also exactly onto a lease expiry or an availability
time), reclaim of expired leases and a full drain — and applies each one to both stores,
which share one manual clock, with the same arguments. Every call must have the same
outcome in both (equal return values, or the same exception type), and after every step:

* the two stores agree on everything observable: every item, every execution, its events
  (ids included: both stores draw them from identical counters), ledger and snapshot;
* every item has a `WorkItemStatus`; once terminal it never changes again, and a drain
  leaves every item in exactly one terminal state;
* an item holds a lease (worker and expiry) exactly while it is claimed, and no fence is
  ever handed out twice for the same item, so at most one claim is live;
* fences only grow, by exactly one per successful claim;
* each ledger equals the sum of the committed and failed usage (tokens exactly, cost in
  nano-dollars) and its consecutive-error count follows the successes and failures;
* each execution's events are numbered 1..n with n its ``last_sequence`` and the number of
  events the model expects; every item's node has one ``node_started`` per claim and one
  ``node_completed`` per commit that carried one.

Refused calls (`FenceLost`, `Conflict`) are checked to change nothing in either store.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Final, TypeVar

import attrs
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from charter.adapters.clock import ManualClock
from charter.adapters.memory import MemoryStore
from charter.adapters.sqlite import SqliteStore
from charter.core.budget import BudgetState, Usage, nanos
from charter.core.errors import CharterError, Conflict, FenceLost
from charter.core.events import (
    Event,
    EventKind,
    NodeCompleted,
    NodeFailed,
    NodeStarted,
    WorkflowStarted,
)
from charter.core.ports import CommitRequest, ReclaimResult, Store
from charter.core.queue import LEASE_EXPIRED, plan_failure, plan_park
from charter.core.records import (
    Claim,
    Execution,
    ExecutionStatus,
    NewWorkItem,
    Snapshot,
    WorkItem,
    WorkItemStatus,
)

T = TypeVar("T")

QUEUES: Final = ("q-a", "q-b")
WORKERS: Final = ("worker-1", "worker-2")
WORKFLOW: Final = "wf"
#: Longer than any lease (60 s), park (120 s) or backoff (64 × 2 s × 1.25) drawn here.
DRAIN_STEP_SECS: Final = 4000.0
DRAIN_ROUNDS: Final = 5
#: A drain runs only after this many enqueues since the last one (else it would settle
#: every claim before the other rules get to use it).
DRAIN_AFTER: Final = 3

ClaimRef = tuple[str, int]  # (item_id, fence) as handed out by a claim

# ── strategies ─────────────────────────────────────────────────────────────────────────

lease_secs = st.integers(10_000, 60_000).map(lambda ms: ms / 1000)
usages = st.none() | st.builds(
    Usage,
    input_tokens=st.integers(0, 500),
    output_tokens=st.integers(0, 500),
    cost_usd=st.integers(0, 50).map(lambda k: 0.001 * k),
    tool_calls=st.integers(0, 3),
    iterations=st.integers(0, 3),
)
outcomes = st.sampled_from([WorkItemStatus.COMPLETED, WorkItemStatus.HELD, WorkItemStatus.FAILED])
#: The node event a commit carries: ``node_completed``, ``node_failed`` or none.
commit_events = st.sampled_from(["completed", "failed", "none"])
successes = st.sampled_from([True, False, None])
reclaim_limits = st.sampled_from([1, 1, 2, 100])
#: A UTC moment or the same instant in another zone (both stores must treat them alike).
zones = st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5))])
#: A new item: queue, max_attempts, backoff base (ms), delay before it is available (s, or
#: none: now), and the zone its availability is given in.
ItemSpec = tuple[str, int, int, int | None, timezone]
item_specs: st.SearchStrategy[ItemSpec] = st.tuples(
    st.sampled_from(QUEUES),
    st.integers(1, 3),
    st.integers(0, 2000),
    st.one_of(st.none(), st.none(), st.integers(0, 30)),
    zones,
)


# ── the model ──────────────────────────────────────────────────────────────────────────


@attrs.define
class ItemModel:
    """What the test knows about one item, independently of the stores."""

    new: NewWorkItem
    order: int
    fences_issued: list[int] = attrs.Factory(list)
    completed_events: int = 0
    attempt: int = 0
    terminal: WorkItemStatus | None = None

    @property
    def fence(self) -> int:
        return len(self.fences_issued)


@attrs.define
class LedgerModel:
    """The expected ledger of one execution: sums of usage and the error run."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_nanos: int = 0
    tool_calls: int = 0
    iterations: int = 0
    consecutive_errors: int = 0
    events: int = 0

    def charge(self, usage: Usage | None, succeeded: bool | None) -> None:
        if usage is not None:
            self.input_tokens += usage.input_tokens
            self.output_tokens += usage.output_tokens
            self.cost_nanos += nanos(usage.cost_usd)
            self.tool_calls += usage.tool_calls
            self.iterations += usage.iterations
        if succeeded is True:
            self.consecutive_errors = 0
        elif succeeded is False:
            self.consecutive_errors += 1


def _ids(prefix: str) -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"{prefix}-{next(counter)}"


def _creating(execution: Execution, start: EventKind) -> Callable[[Store], tuple[Event, ...]]:
    return lambda store: store.create_execution(execution, (start,))


@attrs.frozen
class Observed:
    """Everything observable about a store's items and executions."""

    items: tuple[WorkItem | None, ...]
    executions: tuple[Execution | None, ...]
    events: tuple[tuple[Event, ...], ...]
    ledgers: tuple[BudgetState, ...]
    snapshots: tuple[Snapshot | None, ...]


class StoreMachine(RuleBasedStateMachine):
    """Both stores on one manual clock, and the model the invariants compare them with."""

    items: Bundle[str] = Bundle("items")
    claims: Bundle[ClaimRef] = Bundle("claims")

    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock()
        self.directory = Path(tempfile.mkdtemp(prefix="charter-sm-"))
        self.memory = MemoryStore(clock=self.clock, new_id=_ids("evt"))
        self.sqlite = SqliteStore(
            self.directory / "charter.db", clock=self.clock, new_id=_ids("evt"), synchronous="OFF"
        )
        self.model: dict[str, ItemModel] = {}
        self.ledgers: dict[str, LedgerModel] = {}
        self.enqueued_since_drain = 0

    def teardown(self) -> None:
        self.sqlite.close()
        self.memory.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    # ── helpers ──

    @property
    def stores(self) -> tuple[Store, Store]:
        return (self.memory, self.sqlite)

    def both(self, call: Callable[[Store], T]) -> T | CharterError:
        """``call`` on each store; both must return equal values or raise the same type.
        Returns the reference's answer (or its exception)."""
        outcomes: list[T | CharterError] = []
        for store in self.stores:
            try:
                outcomes.append(call(store))
            except CharterError as error:
                outcomes.append(error)
        reference, other = outcomes
        if isinstance(reference, CharterError) or isinstance(other, CharterError):
            assert type(reference) is type(other), f"memory: {reference!r}, sqlite: {other!r}"
        else:
            assert reference == other, f"memory: {reference!r}\nsqlite: {other!r}"
        return reference

    def observe(self, store: Store) -> Observed:
        item_ids = sorted(self.model)
        executions = sorted(self.ledgers)
        return Observed(
            items=tuple(store.get_item(i) for i in item_ids),
            executions=tuple(store.get_execution(e) for e in executions),
            events=tuple(store.read_events(e) for e in executions),
            ledgers=tuple(store.get_ledger(e) for e in executions),
            snapshots=tuple(store.latest_snapshot(e) for e in executions),
        )

    def current(self, item_id: str) -> WorkItem:
        item = self.memory.get_item(item_id)
        assert item is not None, item_id
        return item

    def fenced(self, item_id: str, fence: int, call: Callable[[Store], T]) -> T | None:
        """A fenced call: `FenceLost` in both (writing nothing) exactly when ``fence`` is
        not the current fence of a claimed item; otherwise the reference's result."""
        before = self.current(item_id)
        live = before.status is WorkItemStatus.CLAIMED and before.fence == fence
        observed = None if live else [self.observe(store) for store in self.stores]
        outcome = self.both(call)
        if live:
            assert not isinstance(outcome, CharterError), f"current fence refused: {outcome!r}"
            return outcome
        assert isinstance(outcome, FenceLost), f"stale fence {fence} of {before} accepted"
        assert [self.observe(store) for store in self.stores] == observed, "FenceLost wrote"
        return None

    def pick(self, ref: ClaimRef, current: bool, data: st.DataObject) -> ClaimRef:
        """The remembered claim ``ref`` (live or stale by now) or, with ``current``, the
        latest claim of some claimed item, so that right fences are as common as stale ones."""
        if current:
            held = [
                (item_id, model.fence)
                for item_id, model in sorted(self.model.items())
                if self.current(item_id).status is WorkItemStatus.CLAIMED
            ]
            if held:
                return data.draw(st.sampled_from(held), label="current claim")
        return ref

    def record_events(self, execution_id: str, events: tuple[Event, ...]) -> None:
        self.ledgers[execution_id].events += len(events)

    def live_items(self) -> list[str]:
        return [i for i in sorted(self.model) if not self.current(i).status.terminal]

    # ── setup ──

    @initialize(count=st.integers(1, 2))
    def create_executions(self, count: int) -> None:
        for n in range(1, count + 1):
            now = self.clock.now()
            execution = Execution(
                execution_id=f"exec-{n}",
                workflow_id=WORKFLOW,
                workflow_version="1",
                initial_input={"n": n},
                created_at=now,
                updated_at=now,
            )
            start = WorkflowStarted(
                workflow_id=WORKFLOW, workflow_version="1", initial_input={"n": n}
            )
            appended = self.both(_creating(execution, start))
            assert isinstance(appended, tuple)
            self.ledgers[execution.execution_id] = LedgerModel()
            self.record_events(execution.execution_id, appended)

    # ── the queue ──

    @rule(target=items, data=st.data(), batch=st.lists(item_specs, min_size=1, max_size=3))
    def enqueue(self, data: st.DataObject, batch: list[ItemSpec]) -> MultipleResults[str]:
        """Enqueue one to three new items in one call (one transaction)."""
        news: list[NewWorkItem] = []
        for queue, max_attempts, backoff_base_ms, delay, zone in batch:
            execution_id = data.draw(st.sampled_from(sorted(self.ledgers)), label="execution")
            order = len(self.model) + len(news) + 1
            available_at = (
                None
                if delay is None
                else (self.clock.now() + timedelta(seconds=delay)).astimezone(zone)
            )
            news.append(
                NewWorkItem(
                    item_id=f"item-{order}",
                    execution_id=execution_id,
                    node_id=f"node-{order}",
                    queue=queue,
                    payload={"order": order},
                    max_attempts=max_attempts,
                    backoff_base_ms=backoff_base_ms,
                    available_at=available_at,
                )
            )
        stored = self.both(lambda s: s.enqueue(news))
        assert isinstance(stored, tuple), stored
        assert [item.item_id for item in stored] == [new.item_id for new in news]
        for new, item in zip(news, stored, strict=True):
            assert item.status is WorkItemStatus.PENDING
            assert (item.attempt, item.fence, item.worker_id, item.lease_expires_at) == (
                0,
                0,
                None,
                None,
            )
            assert item.available_at == (new.available_at or self.clock.now())
            self.model[new.item_id] = ItemModel(new=new, order=len(self.model) + 1)
        self.enqueued_since_drain += len(news)
        return multiple(*(new.item_id for new in news))

    @rule(item_id=items, conflicting=st.booleans())
    def enqueue_again(self, item_id: str, conflicting: bool) -> None:
        new = self.model[item_id].new
        if conflicting:
            new = attrs.evolve(new, payload={"other": True})
        before = [self.observe(store) for store in self.stores]
        outcome = self.both(lambda s: s.enqueue([new]))
        if conflicting:
            assert isinstance(outcome, Conflict), outcome
        else:
            assert outcome == (before[0].items[sorted(self.model).index(item_id)],)
        assert [self.observe(store) for store in self.stores] == before

    def do_claim(self, worker: str, queues: tuple[str, ...], lease: float) -> Claim | None:
        now = self.clock.now()
        available = [
            item
            for item in (self.current(i) for i in self.model)
            if item.status is WorkItemStatus.PENDING
            and item.queue in queues
            and item.available_at <= now
        ]
        expected = min(
            available,
            key=lambda i: (i.available_at, self.model[i.item_id].order),
            default=None,
        )
        claim = self.both(lambda s: s.claim(worker, queues, lease_secs=lease))
        assert not isinstance(claim, CharterError), claim
        if expected is None:
            assert claim is None, f"claimed {claim} with nothing available"
            return None
        assert claim is not None, f"{expected.item_id} is available but nothing was claimed"
        model = self.model[expected.item_id]
        assert claim.item.item_id == expected.item_id, "not the oldest available item"
        assert claim.fence == claim.item.fence == expected.fence + 1 == model.fence + 1
        assert claim.item.status is WorkItemStatus.CLAIMED
        assert claim.item.worker_id == worker
        assert claim.lease_expires_at == claim.item.lease_expires_at
        assert claim.lease_expires_at == now + timedelta(seconds=lease)
        assert claim.item.attempt == expected.attempt
        model.fences_issued.append(claim.fence)
        self.ledgers[claim.item.execution_id].events += 1  # node_started
        return claim

    @rule(
        target=claims,
        worker=st.sampled_from(WORKERS),
        queues=st.sampled_from([(QUEUES[0],), (QUEUES[1],), QUEUES, ()]),
        lease=lease_secs,
        count=st.integers(1, 3),
    )
    def claim(
        self, worker: str, queues: tuple[str, ...], lease: float, count: int
    ) -> MultipleResults[ClaimRef]:
        """Up to ``count`` claims in a row (several live leases at once)."""
        refs = []
        for _ in range(count):
            claim = self.do_claim(worker, queues, lease)
            if claim is None:
                break
            refs.append((claim.item.item_id, claim.fence))
        return multiple(*refs)

    @rule(ref=claims, current=st.booleans(), data=st.data(), lease=lease_secs)
    def heartbeat(self, ref: ClaimRef, current: bool, data: st.DataObject, lease: float) -> None:
        item_id, fence = self.pick(ref, current, data)
        expires = self.fenced(
            item_id, fence, lambda s: s.heartbeat(item_id, fence, lease_secs=lease)
        )
        if expires is not None:
            assert expires == self.clock.now() + timedelta(seconds=lease)
            assert self.current(item_id).lease_expires_at == expires

    def do_commit(
        self,
        item_id: str,
        fence: int,
        *,
        outcome: WorkItemStatus,
        event: str,
        usage: Usage | None,
        succeeded: bool | None,
        write_snapshot: bool,
    ) -> None:
        before = self.current(item_id)
        kinds: tuple[EventKind, ...] = ()
        if event == "completed":
            kinds = (
                NodeCompleted(
                    node_id=before.node_id,
                    output={"fence": fence},
                    state_patch={before.node_id: fence},
                    duration_ms=fence,
                    input_tokens=None if usage is None else usage.input_tokens,
                    output_tokens=None if usage is None else usage.output_tokens,
                    cost_usd=None if usage is None else usage.cost_usd,
                ),
            )
        elif event == "failed":
            kinds = (
                NodeFailed(
                    node_id=before.node_id, error="boom", attempt=before.attempt, retryable=False
                ),
            )
        request = CommitRequest(
            item_id=item_id,
            fence=fence,
            outcome=outcome,
            events=kinds,
            usage=usage,
            succeeded=succeeded,
            write_snapshot=write_snapshot,
        )
        appended = self.fenced(item_id, fence, lambda s: s.commit(request))
        if appended is None:
            return
        assert tuple(e.kind for e in appended) == kinds
        after = self.current(item_id)
        assert after == attrs.evolve(before, status=outcome, worker_id=None, lease_expires_at=None)
        model = self.model[item_id]
        model.completed_events += event == "completed"
        ledger = self.ledgers[before.execution_id]
        ledger.charge(usage, succeeded)
        ledger.events += len(appended)
        if write_snapshot:
            snapshot = self.memory.latest_snapshot(before.execution_id)
            assert snapshot is not None
            assert snapshot.at_sequence == ledger.events

    @rule(
        ref=claims,
        current=st.booleans(),
        data=st.data(),
        outcome=outcomes,
        event=commit_events,
        usage=usages,
        succeeded=successes,
        write_snapshot=st.booleans(),
    )
    def commit(
        self,
        ref: ClaimRef,
        current: bool,
        data: st.DataObject,
        outcome: WorkItemStatus,
        event: str,
        usage: Usage | None,
        succeeded: bool | None,
        write_snapshot: bool,
    ) -> None:
        item_id, fence = self.pick(ref, current, data)
        self.do_commit(
            item_id,
            fence,
            outcome=outcome,
            event=event,
            usage=usage,
            succeeded=succeeded,
            write_snapshot=write_snapshot,
        )

    @rule(
        item_id=items,
        current=st.booleans(),
        data=st.data(),
        offset=st.sampled_from([-1, 1, 2]),
        outcome=outcomes,
        event=commit_events,
        usage=usages,
        succeeded=successes,
        write_snapshot=st.booleans(),
    )
    def commit_wrong_fence(
        self,
        item_id: str,
        current: bool,
        data: st.DataObject,
        offset: int,
        outcome: WorkItemStatus,
        event: str,
        usage: Usage | None,
        succeeded: bool | None,
        write_snapshot: bool,
    ) -> None:
        # Never the current fence: whatever the item's state, this must be FenceLost. With
        # ``current``, aim at a claimed item (where a status check alone would accept it).
        item_id, fence = self.pick((item_id, self.current(item_id).fence), current, data)
        fence += offset
        self.do_commit(
            item_id,
            fence,
            outcome=outcome,
            event=event,
            usage=usage,
            succeeded=succeeded,
            write_snapshot=write_snapshot,
        )

    @rule(
        ref=claims,
        current=st.booleans(),
        data=st.data(),
        retry_in=st.integers(-10, 120),
        count_attempt=st.booleans(),
        zone=zones,
    )
    def park(
        self,
        ref: ClaimRef,
        current: bool,
        data: st.DataObject,
        retry_in: int,
        count_attempt: bool,
        zone: timezone,
    ) -> None:
        item_id, fence = self.pick(ref, current, data)
        before = self.current(item_id)
        retry_after = (self.clock.now() + timedelta(seconds=retry_in)).astimezone(zone)
        appended = self.fenced(
            item_id,
            fence,
            lambda s: s.park(item_id, fence, retry_after=retry_after, count_attempt=count_attempt),
        )
        if appended is None:
            return
        plan = plan_park(before, retry_after=retry_after, count_attempt=count_attempt)
        assert tuple(e.kind for e in appended) == plan.events
        if plan.available_at is None:  # a counted park with no attempt left
            assert plan.status is WorkItemStatus.DEAD_LETTERED
            assert self.current(item_id) == attrs.evolve(
                before,
                status=WorkItemStatus.DEAD_LETTERED,
                attempt=plan.attempt,
                worker_id=None,
                lease_expires_at=None,
                last_error=plan.last_error,
            )
        else:
            assert self.current(item_id) == attrs.evolve(
                before,
                status=WorkItemStatus.PENDING,
                attempt=plan.attempt,
                available_at=plan.available_at,
                worker_id=None,
                lease_expires_at=None,
            )
        self.record_events(before.execution_id, appended)

    @rule(
        ref=claims,
        current=st.booleans(),
        data=st.data(),
        retryable=st.booleans(),
        delay_ms=st.none() | st.integers(0, 5000),
        usage=usages,
    )
    def fail(
        self,
        ref: ClaimRef,
        current: bool,
        data: st.DataObject,
        retryable: bool,
        delay_ms: int | None,
        usage: Usage | None,
    ) -> None:
        item_id, fence = self.pick(ref, current, data)
        before = self.current(item_id)
        appended = self.fenced(
            item_id,
            fence,
            lambda s: s.fail(
                item_id,
                fence,
                error="tool error",
                retryable=retryable,
                delay_ms=delay_ms,
                usage=usage,
            ),
        )
        if appended is None:
            return
        plan = plan_failure(
            before, error="tool error", retryable=retryable, now=self.clock.now(), delay_ms=delay_ms
        )
        assert tuple(e.kind for e in appended) == plan.events
        assert self.current(item_id) == attrs.evolve(
            before,
            status=plan.status,
            attempt=plan.attempt,
            available_at=plan.available_at or before.available_at,
            worker_id=None,
            lease_expires_at=None,
            last_error=plan.last_error,
        )
        ledger = self.ledgers[before.execution_id]
        ledger.charge(usage, False)
        ledger.events += len(appended)

    @rule(seconds=(st.integers(0, 5_000) | st.integers(0, 90_000)).map(lambda ms: ms / 1000))
    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(
        target=claims,
        data=st.data(),
        edge=st.sampled_from(["lease", "last lease", "available"]),
        nudge=st.sampled_from([-0.001, 0.0, 0.0, 0.001, 0.001, 0.001]),
        worker=st.sampled_from(WORKERS),
        lease=lease_secs,
        limit=reclaim_limits,
    )
    def at_boundary(
        self,
        data: st.DataObject,
        edge: str,
        nudge: float,
        worker: str,
        lease: float,
        limit: int,
    ) -> MultipleResults[ClaimRef]:
        """Move the clock to (or a millisecond around) a claimed item's lease expiry, or the
        last one (so that every claim has expired: a crash of all workers), and reclaim there
        (at most ``limit`` items); or to a pending item's availability and claim there: the
        instants where ``<`` and ``<=`` differ."""
        now = self.clock.now()
        items = [self.current(i) for i in sorted(self.model)]
        moments: set[datetime | None]
        if edge == "available":
            moments = {i.available_at for i in items if i.status is WorkItemStatus.PENDING}
        else:
            moments = {i.lease_expires_at for i in items if i.status is WorkItemStatus.CLAIMED}
        later = sorted(m for m in moments if m is not None and m > now)
        if later:
            target = later[-1] if edge == "last lease" else data.draw(st.sampled_from(later))
            self.clock.advance(max((target - now).total_seconds() + nudge, 0.0))
        if edge != "available":
            self.do_reclaim(limit)
            return multiple()
        claim = self.do_claim(worker, QUEUES, lease)
        return multiple() if claim is None else multiple((claim.item.item_id, claim.fence))

    def do_reclaim(self, limit: int = 100) -> ReclaimResult:
        """A reclaim pass: exactly the ``limit`` claimed items whose lease expired longest
        ago (then in enqueue order) are failed with `LEASE_EXPIRED`."""
        now = self.clock.now()
        before = {i: self.current(i) for i in self.model}
        expired = sorted(
            (
                item
                for item in before.values()
                if item.status is WorkItemStatus.CLAIMED
                and item.lease_expires_at is not None
                and item.lease_expires_at < now
            ),
            key=lambda i: (i.lease_expires_at, self.model[i.item_id].order),
        )
        chosen = [i.item_id for i in expired[:limit]]
        result = self.both(lambda s: s.reclaim_expired(limit=limit))
        assert isinstance(result, ReclaimResult), result
        for item in (*result.retried, *result.dead_lettered):
            plan = plan_failure(before[item.item_id], error=LEASE_EXPIRED, retryable=True, now=now)
            assert item.status is plan.status
            assert item == self.current(item.item_id)
            self.ledgers[item.execution_id].events += len(plan.events)
        assert {i.status for i in result.retried} <= {WorkItemStatus.PENDING}
        assert {i.status for i in result.dead_lettered} <= {WorkItemStatus.DEAD_LETTERED}
        for group in (result.retried, result.dead_lettered):
            ids = [i.item_id for i in group]
            assert ids == [i for i in chosen if i in ids], "reclaimed out of expiry order"
        reclaimed = sorted(i.item_id for i in (*result.retried, *result.dead_lettered))
        assert reclaimed == sorted(chosen), f"reclaimed {reclaimed}, expected {chosen}"
        return result

    @rule(limit=reclaim_limits)
    def reclaim_expired(self, limit: int) -> None:
        self.do_reclaim(limit)

    @precondition(lambda self: self.enqueued_since_drain >= DRAIN_AFTER)
    @rule(worker=st.sampled_from(WORKERS))
    def drain(self, worker: str) -> None:
        """Run everything to the end: every item must settle in a terminal state."""
        self.enqueued_since_drain = 0
        for _ in range(DRAIN_ROUNDS):
            if not self.live_items():
                break
            self.clock.advance(DRAIN_STEP_SECS)
            self.do_reclaim()
            while (claim := self.do_claim(worker, QUEUES, 30.0)) is not None:
                self.do_commit(
                    claim.item.item_id,
                    claim.fence,
                    outcome=WorkItemStatus.COMPLETED,
                    event="completed",
                    usage=Usage(input_tokens=1, output_tokens=1, cost_usd=0.001),
                    succeeded=True,
                    write_snapshot=False,
                )
        assert not self.live_items(), f"items still live after a drain: {self.live_items()}"

    # ── invariants ──

    @invariant()
    def stores_agree(self) -> None:
        memory, sqlite = (self.observe(store) for store in self.stores)
        for field in attrs.fields(Observed):
            left, right = getattr(memory, field.name), getattr(sqlite, field.name)
            assert left == right, f"{field.name} differ:\nmemory: {left}\nsqlite: {right}"

    @invariant()
    def items_are_consistent(self) -> None:
        for item_id, model in self.model.items():
            for store in self.stores:
                item = store.get_item(item_id)
                name = type(store).__name__
                assert item is not None, f"{name} lost {item_id}"
                assert item.status in WorkItemStatus
                if model.terminal is not None:
                    assert item.status is model.terminal, f"{name}: {item_id} left {model.terminal}"
                # A lease exactly while claimed.
                leased = item.worker_id is not None and item.lease_expires_at is not None
                unleased = item.worker_id is None and item.lease_expires_at is None
                claimed = item.status is WorkItemStatus.CLAIMED
                assert leased if claimed else unleased, f"{name}: lease vs status: {item}"
                # Fences: one per claim, never reissued, never shrinking.
                assert item.fence == model.fence, f"{name}: {item_id} fence {item.fence}"
                # Attempts only grow, and never past max_attempts (a failure or a counted
                # park with no attempt left dead-letters the item at max_attempts).
                assert model.attempt <= item.attempt <= item.max_attempts
            assert model.fences_issued == list(range(1, model.fence + 1))
            item = self.current(item_id)
            model.attempt = item.attempt
            if item.status.terminal:
                model.terminal = item.status

    @invariant()
    def ledgers_match_usage(self) -> None:
        for execution_id, model in self.ledgers.items():
            for store in self.stores:
                ledger = store.get_ledger(execution_id)
                expected = BudgetState(
                    total_input_tokens=model.input_tokens,
                    total_output_tokens=model.output_tokens,
                    total_cost_usd=model.cost_nanos / 1_000_000_000,
                    iteration_count=model.iterations,
                    tool_call_count=model.tool_calls,
                    consecutive_error_count=model.consecutive_errors,
                )
                assert ledger == expected, f"{type(store).__name__} ledger {ledger}"
                assert nanos(ledger.total_cost_usd) == model.cost_nanos

    @invariant()
    def events_are_numbered(self) -> None:
        for execution_id, model in self.ledgers.items():
            for store in self.stores:
                name = type(store).__name__
                events = store.read_events(execution_id)
                assert [e.sequence for e in events] == list(range(1, model.events + 1)), name
                execution = store.get_execution(execution_id)
                assert execution is not None
                assert execution.last_sequence == model.events, name
                assert execution.status is ExecutionStatus.RUNNING
                assert all(e.execution_id == execution_id for e in events)
                assert all(e.created_at <= self.clock.now() for e in events)
                assert len({e.id for e in events}) == len(events)
                for item_model in self.model.values():
                    if item_model.new.execution_id != execution_id:
                        continue
                    node = item_model.new.node_id
                    kinds = [e.kind for e in events if getattr(e.kind, "node_id", None) == node]
                    started = sum(isinstance(k, NodeStarted) for k in kinds)
                    completed = sum(isinstance(k, NodeCompleted) for k in kinds)
                    assert started == item_model.fence, f"{name}: {node} started {started}×"
                    assert completed == item_model.completed_events <= 1, name


# max_examples comes from the profile (dev 100, ci 300): about 12 s and 30 s on an idle
# 2-core machine (40 s under load).
StoreMachine.TestCase.settings = settings(
    stateful_step_count=75,
    deadline=None,
)
TestStoreStateMachine = StoreMachine.TestCase
