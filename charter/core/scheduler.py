"""The scheduler: a pure fold from an execution's events to what should happen next.

`fold(workflow, events)` gives the execution's `Progress`: each node's state, the workflow
state (merged state patches), which edges are live, whether the run has ended. `plan(workflow,
progress, now=…, execution_id=…)` gives the next `Plan`: events to append and work items to
enqueue, which a shell appends with compare-and-append (so two schedulers folding the same
log cannot both act). Same events, same plan.

Node states and the events that move them:

=====================  =================================================================
``pending``            not yet scheduled
``scheduled``          ``node_scheduled``, ``retry_scheduled``, ``node_parked``,
                       ``node_failed{retryable: true}`` (its work item is pending again)
``running``            ``node_started``
``held``               ``tool_approval_required``: waiting for a person; or
                       ``outcome_unknown``: a side effect's outcome was lost, a person
                       must say what happened
``answered``           ``approval_received`` while held for an approval: dispatch again,
                       the gate decides; ``outcome_resolved`` while held on a lost
                       outcome: the scheduler settles it (rule 3)
``completed``          ``node_completed``
``failed``             ``node_failed{retryable: false}``
``skipped``            ``node_skipped`` (every way into the node is dead)
``cancelled``          ``node_cancelled``
=====================  =================================================================

Rules of `plan`, in order:

1. A finished run (completed, failed, cancelled) plans nothing. Once a node has failed
   terminally, every held or answered node is cancelled (``node_cancelled``): no approval
   can make a failed run act again, and the run does not wait for a person to fail.
2. ``human_approval`` nodes never reach a worker: when runnable the scheduler raises the
   request itself (``node_scheduled`` + ``tool_approval_required``); an approval completes the
   node (``node_completed{output: {approved: true, by, comment}}``, its ``state_patch`` merged),
   a rejection fails it, and a timeout fails it — or, with a ``fallback_node``, completes it
   routed to that node only. A ``condition`` node without ``branches`` (a pass-through, as
   upstream) never reaches a worker either: when runnable it is completed at once
   (``node_scheduled`` + ``node_completed{output: {}}``) and routes nothing, so each of its
   edges is live as its own condition says.
3. An answered node (approved or rejected) is dispatched again; the worker's gate runs it
   (consuming the approval) or fails it (the rejection). A lost outcome (``outcome_unknown``:
   a side effect that is not idempotent, whose worker stopped mid-call) is settled by the
   scheduler from the person's ``outcome_resolved``: ``succeeded`` completes the node with
   the resolution's ``output`` (``node_completed``, routed on as any completion),
   ``failed`` fails it terminally with the reason, ``retry`` dispatches it once more (a new
   work item, so a new idempotency key: the retry really fires). An outcome still
   unresolved ``resolution_deadline_secs`` after it was recorded fails the node terminally
   (``outcome unknown: resolution timed out after N s``). When another node has failed
   (rule 1), a lost outcome answered ``succeeded`` or ``failed`` is still settled as
   answered; an unanswered one (or one answered ``retry``) is cancelled.
4. While no node has failed terminally, every runnable node is dispatched
   (``node_scheduled`` + a work item whose attempts and backoff come from the node's retry
   policy). A node is runnable when it is pending and all of its incoming edges come from
   finished nodes with at least one edge live; a node whose incoming edges are all dead is
   skipped (``node_skipped{reason: "branch not taken"}``), which may cascade.
5. An edge is live when its source completed, its condition (evaluated when the source
   completed, on the source's output and the state then) held, and, for a routing source
   (condition node with branches, approval with a fallback), the source chose it. Edges to
   the terminal sentinel ``end`` are not in the graph the scheduler walks
   (`WorkflowDef.terminal_edges`): reaching ``end`` ends that path and runs nothing; the run
   ends by rule 6, when every node is finished.
6. Nothing running, scheduled, held or answered: ``workflow_failed{error: "node(s) failed
   terminally: …"}`` if a node failed, else ``workflow_completed{final_state}`` once every node
   is finished. (A run that still has pending nodes it can never reach fails too: that cannot
   happen with a validated, acyclic definition, but a stuck run must not hang silently.)
"""

from __future__ import annotations

import enum
import hashlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from datetime import datetime, timedelta
from typing import Any, Final

import attrs

from charter.core.approvals import ANY_HUMAN
from charter.core.events import (
    ApprovalDecision,
    ApprovalReceived,
    Event,
    EventKind,
    NodeCancelled,
    NodeCompleted,
    NodeFailed,
    NodeParked,
    NodeScheduled,
    NodeSkipped,
    NodeStarted,
    OutcomeResolved,
    OutcomeUnknown,
    RetryScheduled,
    ToolApprovalRequired,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowStarted,
)
from charter.core.gate import request_digest
from charter.core.materialize import merge_patch
from charter.core.records import MAX_ID_LENGTH, NewWorkItem
from charter.core.workflow import NodeDef, WorkflowDef

__all__ = [
    "RESOLUTIONS",
    "NodeProgress",
    "NodeState",
    "Plan",
    "Progress",
    "RunState",
    "fold",
    "fold_event",
    "fold_kinds",
    "fork_of",
    "item_id",
    "plan",
]

SKIPPED_REASON: Final = "branch not taken"
#: What a person may answer about a lost outcome (``outcome_resolved.resolution``).
RESOLUTIONS: Final = ("succeeded", "failed", "retry")


class NodeState(enum.Enum):
    PENDING = "pending"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    HELD = "held"
    ANSWERED = "answered"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in _FINISHED

    @property
    def active(self) -> bool:
        return self in _ACTIVE


_FINISHED: Final = frozenset(
    {NodeState.COMPLETED, NodeState.FAILED, NodeState.SKIPPED, NodeState.CANCELLED}
)
_ACTIVE: Final = frozenset(
    {NodeState.SCHEDULED, NodeState.RUNNING, NodeState.HELD, NodeState.ANSWERED}
)


@attrs.frozen(kw_only=True)
class NodeProgress:
    """What the log says about one node."""

    state: NodeState = NodeState.PENDING
    dispatches: int = 0
    attempt: int = 0
    output: Any = None
    error: str | None = None
    #: For routing nodes: the targets it chose (``None``: not a routing decision).
    routes: frozenset[str] | None = None
    #: The approval answer, for an answered or decided human_approval node.
    answer: ApprovalReceived | None = None
    held_since: datetime | None = None
    #: The lost outcome the node waits on (held), or was answered about (answered).
    unknown: OutcomeUnknown | None = None
    #: A person's answer about that lost outcome (answered).
    resolution: OutcomeResolved | None = None

    @property
    def lost(self) -> bool:
        """Held on a lost outcome, or answered about one: settled by the scheduler."""
        return self.unknown is not None and self.state in _PEOPLE


@attrs.frozen(kw_only=True)
class Progress:
    """An execution as the scheduler sees it, as of ``last_sequence``."""

    nodes: Mapping[str, NodeProgress]
    state: Any = attrs.field(factory=dict)
    inputs: Any = None
    #: Edges found dead when their source completed: ``(source, target)``.
    dead_edges: frozenset[tuple[str, str]] = frozenset()
    started: bool = False
    finished: str | None = None  # "completed" | "failed" | "cancelled"
    last_sequence: int = 0
    # Indexes kept by `fold` so that `plan` costs what changed, not the workflow's size:
    #: per node, how many of its incoming edges come from nodes not finished yet;
    waiting_on: Mapping[str, int] = attrs.field(factory=dict)
    #: pending nodes whose incoming edges all come from finished nodes (run or skip them);
    decidable: frozenset[str] = frozenset()
    #: nodes scheduled, running, held or answered;
    active: frozenset[str] = frozenset()
    #: nodes held for, or answered by, a person;
    people: frozenset[str] = frozenset()
    #: nodes that failed terminally;
    failed: frozenset[str] = frozenset()
    #: how many nodes are finished (completed, failed, skipped, cancelled).
    finished_count: int = 0

    def node(self, node_id: str) -> NodeProgress:
        return self.nodes.get(node_id, _PENDING)


_PENDING: Final = NodeProgress()


@attrs.frozen(kw_only=True)
class Plan:
    """What to append and enqueue next (both empty: nothing to do now)."""

    events: tuple[EventKind, ...] = ()
    items: tuple[NewWorkItem, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.events and not self.items


_PEOPLE: Final = frozenset({NodeState.HELD, NodeState.ANSWERED})
#: The kinds whose fold reads the time they were written at (``held_since``).
_TIMED: Final = (ToolApprovalRequired, OutcomeUnknown)

# ── the fold's working state ───────────────────────────────────────────────────────────
#
# A fold changes a few entries per event, so its state is kept in tables changed in place
# (`_Table`), never copied: a table may lie over an immutable base (the `Progress` a fold
# starts from), and its read-only views (`_MapView`, `_SetView`: what a `Progress` holds)
# stay as they were when taken, the table saving an entry's old value for them the first
# time it changes (copy-on-write per entry). So folding n events costs O(n), taking a
# `Progress` costs O(1), and a long-lived `RunState` (the worker's) never copies a run's
# nodes.

_NONE: Final[Any] = object()  # no entry (in a table's own entries: not set here)
_GONE: Final[Any] = object()  # an entry removed over a base that has it
_MAX_DEPTH: Final = 8  # views over views (folds from folds) are flattened beyond this
_UNCHANGED: Final[dict[Any, Any]] = {}  # a view's saved entries while its table is unchanged


class _SetBase(Mapping[Any, bool]):
    """A plain set (a `Progress` made by hand) as a table's base."""

    __slots__ = ("members",)

    def __init__(self, members: AbstractSet[Any]) -> None:
        self.members = members

    def __getitem__(self, key: Any) -> bool:
        if key in self.members:
            return True
        raise KeyError(key)

    def get(self, key: Any, default: Any = None) -> Any:
        return True if key in self.members else default

    def __contains__(self, key: object) -> bool:
        return key in self.members

    def __iter__(self) -> Iterator[Any]:
        return iter(self.members)

    def __len__(self) -> int:
        return len(self.members)


_EMPTY_BASE: Final[Mapping[Any, Any]] = {}

#: How a table refers to the views it gave (to save entries for them): a callable giving the
#: view back, or ``None`` once the view is gone (`weakref.ref`, say).
Reference = Callable[["_MapView"], Callable[[], "_MapView | None"]]


def _strong(view: _MapView) -> Callable[[], _MapView | None]:
    """A reference that keeps its view (right for a state folded once, then let go of)."""
    return lambda: view


class _Table:
    """A mutable key → value table over an immutable ``base`` mapping: its own entries
    win, `_GONE` hides a base entry. `view` gives a read-only view of it as it is now."""

    __slots__ = ("base", "depth", "local", "reference", "size", "views")

    def __init__(
        self, base: Mapping[Any, Any] = _EMPTY_BASE, reference: Reference = _strong
    ) -> None:
        depth = base.depth + 1 if isinstance(base, _MapView) else 1
        if depth > _MAX_DEPTH:
            self.base: Mapping[Any, Any] = _EMPTY_BASE
            self.local: dict[Any, Any] = dict(base.items())
            self.depth = 1
        else:
            self.base, self.local, self.depth = base, {}, depth
        self.size = len(base)
        self.reference = reference
        self.views: list[Callable[[], _MapView | None]] = []

    def get(self, key: Any, default: Any = None) -> Any:
        value = self.local.get(key, _NONE)
        if value is _NONE:
            return self.base.get(key, default)
        return default if value is _GONE else value

    def __getitem__(self, key: Any) -> Any:
        value = self.get(key, _NONE)
        if value is _NONE:
            raise KeyError(key)
        return value

    def __contains__(self, key: Any) -> bool:
        return self.get(key, _NONE) is not _NONE

    def put(self, key: Any, value: Any) -> None:
        if self.views:
            self._save(key)
        if self.get(key, _NONE) is _NONE:
            self.size += 1
        self.local[key] = value

    def remove(self, key: Any) -> None:
        if self.get(key, _NONE) is _NONE:
            return
        if self.views:
            self._save(key)
        self.size -= 1
        if key in self.base:
            self.local[key] = _GONE
        else:
            del self.local[key]

    # set-like use (values True)
    def add(self, key: Any) -> None:
        if key not in self:
            self.put(key, True)

    discard = remove

    def _save(self, key: Any) -> None:
        """Keep the entry's current own value for every view taken before this change."""
        alive = []
        for ref in self.views:
            view = ref()
            if view is None:
                continue
            alive.append(ref)
            if view.saved is _UNCHANGED:
                view.saved = {}
            if key not in view.saved:
                view.saved[key] = self.local.get(key, _NONE)
        if len(alive) != len(self.views):
            self.views = alive

    def take(self, fork: _Table) -> None:
        """Make the changes ``fork`` (a table over a view of this one, taken as this table
        still is, not flattened: see `RunState.adopt`) made over its base."""
        for key, value in fork.local.items():
            if value is _GONE:
                self.remove(key)
            else:
                self.put(key, value)

    def view(self) -> _MapView:
        # Unchanged since the last view (still alive): that one. Views that are gone are let
        # go of here too (so a table seldom changed does not gather dead references).
        if self.views:
            last = self.views[-1]()
            if last is not None and last.saved is _UNCHANGED:
                return last
            if len(self.views) >= 8:
                self.views = [ref for ref in self.views if ref() is not None]
        view = _MapView(self.local, self.base, self.size, self.depth)
        self.views.append(self.reference(view))
        return view


class _MapView(Mapping[Any, Any]):
    """A table as it was when the view was taken (`_Table.view`)."""

    __slots__ = ("__weakref__", "base", "depth", "local", "saved", "size")

    def __init__(
        self, local: dict[Any, Any], base: Mapping[Any, Any], size: int, depth: int
    ) -> None:
        self.local, self.base, self.size, self.depth = local, base, size, depth
        #: Own entries of the table as they were when the view was taken, saved by the
        #: table before it changes them (`_UNCHANGED` until the first change).
        self.saved: dict[Any, Any] = _UNCHANGED

    def get(self, key: Any, default: Any = None) -> Any:
        # The table saves an entry before changing it: read the entry, then the saved value.
        value = self.local.get(key, _NONE)
        saved = self.saved.get(key, self)
        if saved is not self:
            value = saved
        if value is _NONE:
            return self.base.get(key, default)
        return default if value is _GONE else value

    def __getitem__(self, key: Any) -> Any:
        value = self.get(key, _NONE)
        if value is _NONE:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return self.get(key, _NONE) is not _NONE

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[Any]:
        # Empty (``size`` counts the entries present): nothing to walk, however deep the
        # bases — most of a run's sets (people, failed, decidable) are empty most of the time.
        if not self.size:
            return iter(())
        return self._keys()

    def _keys(self) -> Iterator[Any]:
        candidates = [*self.base, *list(self.local), *list(self.saved)]
        seen: set[Any] = set()
        for key in candidates:
            if key in seen:
                continue
            seen.add(key)
            if self.get(key, _NONE) is not _NONE:
                yield key

    def __repr__(self) -> str:
        return f"{{{', '.join(f'{k!r}: {v!r}' for k, v in self.items())}}}"


class _SetView(AbstractSet[Any]):
    """A set-valued table as it was when the view was taken."""

    __slots__ = ("table",)

    def __init__(self, table: _MapView) -> None:
        self.table = table

    def __contains__(self, key: object) -> bool:
        return self.table.get(key, _NONE) is not _NONE

    def __iter__(self) -> Iterator[Any]:
        return iter(self.table)

    def __len__(self) -> int:
        return len(self.table)

    def __hash__(self) -> int:
        return self._hash()

    def __repr__(self) -> str:
        return f"frozenset({set(self)!r})"


def _map_base(value: Mapping[Any, Any]) -> Mapping[Any, Any]:
    return value


def _set_base(value: AbstractSet[Any]) -> Mapping[Any, Any]:
    if isinstance(value, _SetView):
        return value.table
    return _SetBase(value) if value else _EMPTY_BASE


def _evolved(entry: NodeProgress, changes: dict[str, Any]) -> NodeProgress:
    get = changes.get
    return NodeProgress(
        state=get("state", entry.state),
        dispatches=get("dispatches", entry.dispatches),
        attempt=get("attempt", entry.attempt),
        output=get("output", entry.output),
        error=get("error", entry.error),
        routes=get("routes", entry.routes),
        answer=get("answer", entry.answer),
        held_since=get("held_since", entry.held_since),
        unknown=get("unknown", entry.unknown),
        resolution=get("resolution", entry.resolution),
    )


class RunState:
    """The fold's state, changed in place event by event (`apply`), with an immutable
    `Progress` of it on demand (`progress`, O(1): see `_Table`). `fold` and `fold_kinds`
    make one per call over the progress they start from; a long-lived one (the worker's
    `charter.worker.scheduling.Scheduler`, one per run) folds each event once, never
    copying the run's nodes. ``reference`` is how it refers to the views it gave, which it
    keeps up to date (saving an entry's old value for each before changing it): strongly by
    default, right for a state folded once; a long-lived state should pass `weakref.ref`,
    so that views no longer used are let go of. `_moved` keeps the indexes
    (`Progress.waiting_on`, `decidable`, `active`, …) in step with node states."""

    def __init__(
        self, workflow: WorkflowDef, base: Progress | None = None, *, reference: Reference = _strong
    ) -> None:
        self.workflow = workflow
        self._progress: Progress | None = None
        #: A fork's: the progress it was forked from, and the kinds it folded since.
        self._origin: Progress | None = None
        self._folded: list[tuple[int, EventKind, datetime]] | None = None

        def table(over: Mapping[Any, Any] = _EMPTY_BASE) -> _Table:
            return _Table(over, reference)

        if base is None:
            self.nodes = table()
            self.waiting_on = table()
            self.decidable = table()
            for name in workflow.nodes:
                self.nodes.put(name, _PENDING)
                count = len(workflow.incoming(name))
                self.waiting_on.put(name, count)
                if count == 0:
                    self.decidable.put(name, True)
            base = Progress(nodes={})
        else:
            self.nodes = table(_map_base(base.nodes))
            self.waiting_on = table(_map_base(base.waiting_on))
            self.decidable = table(_set_base(base.decidable))
        self.dead_edges = table(_set_base(base.dead_edges))
        self.active = table(_set_base(base.active))
        self.people = table(_set_base(base.people))
        self.failed = table(_set_base(base.failed))
        self.state: Any = base.state
        self.inputs: Any = base.inputs
        self.started = base.started
        self.finished = base.finished
        self.last_sequence = base.last_sequence
        self.finished_count = base.finished_count

    def apply(self, events: Iterable[Event]) -> None:
        """Fold ``events`` in (in sequence order)."""
        self._progress = None
        for event in events:
            _apply(self.workflow, self, event.sequence, event.kind, event.created_at)

    def apply_kinds(self, kinds: Iterable[EventKind], *, first_sequence: int, at: datetime) -> None:
        """Fold in event kinds not written yet, as `fold_kinds` does."""
        self._progress = None
        for offset, kind in enumerate(kinds):
            sequence = first_sequence + offset
            if self._folded is not None:
                self._folded.append((sequence, kind, at))
            _apply(self.workflow, self, sequence, kind, at)

    def fork(self) -> RunState:
        """A state over this one's progress as of now, to fold event kinds not written yet
        (`apply_kinds`: a commit about to be made) without touching this one; `adopt` takes
        its fold back once they are written. (`fork_of` its `progress` is the same.)"""
        return fork_of(self.workflow, self.progress())

    @property
    def speculated(self) -> int:
        """How many event kinds a fork folded (`apply_kinds`) since it was forked."""
        return len(self._folded) if self._folded is not None else 0

    def adopt(self, fork: RunState, events: Sequence[Event]) -> bool:
        """Take ``fork``'s fold (`fork`, then `apply_kinds`) as the fold of ``events`` — its
        changes are copied over, entry by entry, instead of folding the events again — if
        this state has not moved since the fork and ``events`` are exactly what it folded:
        the same kinds at the same sequences, written at the time it took wherever the fold
        reads the time (`_TIMED`). Returns whether it did; if not, nothing changed."""
        folded = fork._folded
        if (
            folded is None
            or fork._origin is None
            or fork._origin is not self._progress
            or len(folded) != len(events)
        ):
            return False
        for (sequence, kind, at), event in zip(folded, events, strict=True):
            if event.sequence != sequence or (event.kind is not kind and event.kind != kind):
                return False
            if event.created_at != at and isinstance(kind, _TIMED):
                return False
        pairs = (
            (self.nodes, fork.nodes),
            (self.waiting_on, fork.waiting_on),
            (self.decidable, fork.decidable),
            (self.dead_edges, fork.dead_edges),
            (self.active, fork.active),
            (self.people, fork.people),
            (self.failed, fork.failed),
        )
        # A fork's table lies over a view of ours, its own entries its changes; one that
        # was flattened (views too deep) holds everything and lost its removals.
        for _, theirs in pairs:
            if type(theirs.base) is not _MapView:
                return False
        for mine, theirs in pairs:
            if theirs.local:
                mine.take(theirs)
        self.state, self.inputs = fork.state, fork.inputs
        self.started, self.finished = fork.started, fork.finished
        self.last_sequence, self.finished_count = fork.last_sequence, fork.finished_count
        self._progress = None
        return True

    def progress(self) -> Progress:
        """The progress as of now; it does not change when this state does."""
        if self._progress is None:
            self._progress = Progress(
                nodes=self.nodes.view(),
                state=self.state,
                inputs=self.inputs,
                dead_edges=_SetView(self.dead_edges.view()),  # type: ignore[arg-type]
                started=self.started,
                finished=self.finished,
                last_sequence=self.last_sequence,
                waiting_on=self.waiting_on.view(),
                decidable=_SetView(self.decidable.view()),  # type: ignore[arg-type]
                active=_SetView(self.active.view()),  # type: ignore[arg-type]
                people=_SetView(self.people.view()),  # type: ignore[arg-type]
                failed=_SetView(self.failed.view()),  # type: ignore[arg-type]
                finished_count=self.finished_count,
            )
        return self._progress

    def set(self, node_id: str, **changes: Any) -> None:
        current = self.nodes.get(node_id)
        if current is None:  # an event about a node the definition lacks: ignored
            return
        updated = _evolved(current, changes)
        self.nodes.put(node_id, updated)
        old, new = current.state, updated.state
        if old is not new:
            self._moved(node_id, old, new)

    def _moved(self, node_id: str, old: NodeState, new: NodeState) -> None:
        if old is NodeState.PENDING:
            self.decidable.discard(node_id)
        if old.active:
            self.active.discard(node_id)
        if new.active:
            self.active.add(node_id)
        if old in _PEOPLE:
            self.people.discard(node_id)
        if new in _PEOPLE:
            self.people.add(node_id)
        if old is NodeState.FAILED:
            self.failed.discard(node_id)
        if new is NodeState.FAILED:
            self.failed.add(node_id)
        if old.finished is new.finished:
            return
        step = 1 if new.finished else -1  # a finished node is not expected to reopen, but
        self.finished_count += step  # the indexes stay right if a log says it does
        for edge in self.workflow.outgoing(node_id):
            target = edge.target
            count = self.waiting_on.get(target, 0) - step
            self.waiting_on.put(target, count)
            entry = self.nodes.get(target)
            if count == 0 and entry is not None and entry.state is NodeState.PENDING:
                self.decidable.add(target)
            else:
                self.decidable.discard(target)


def fork_of(workflow: WorkflowDef, progress: Progress) -> RunState:
    """A fork (`RunState.fork`) of the state that gave ``progress`` (`RunState.progress`):
    its `RunState.adopt` takes the fork back only while that state is still as it was."""
    forked = RunState(workflow, progress)
    forked._origin = progress
    forked._folded = []
    return forked


def fold(
    workflow: WorkflowDef, events: Iterable[Event], progress: Progress | None = None
) -> Progress:
    """The progress of an execution of ``workflow`` after ``events`` (in sequence order),
    starting from ``progress`` (default: nothing happened yet). ``progress`` is not changed."""
    work = RunState(workflow, progress)
    work.apply(events)
    return work.progress()


def fold_kinds(
    workflow: WorkflowDef,
    kinds: Iterable[EventKind],
    progress: Progress | None = None,
    *,
    at: datetime,
    first_sequence: int | None = None,
) -> Progress:
    """The progress after event kinds not written yet (say, a commit about to be made), as
    `fold` would give it once they are: the kinds take the consecutive sequences from
    ``first_sequence`` (default: right after ``progress``) and are taken as recorded at
    ``at``. No event envelope is made."""
    work = RunState(workflow, progress)
    sequence = work.last_sequence + 1 if first_sequence is None else first_sequence
    work.apply_kinds(kinds, first_sequence=sequence, at=at)
    return work.progress()


def fold_event(workflow: WorkflowDef, progress: Progress, event: Event) -> Progress:
    """``progress`` after one more event."""
    return fold(workflow, (event,), progress)


def _apply(
    workflow: WorkflowDef, work: RunState, sequence: int, kind: EventKind, at: datetime
) -> None:
    work.last_sequence = sequence
    match kind:
        case WorkflowStarted(initial_input=initial):
            work.started, work.inputs = True, initial
            work.state = dict(initial) if isinstance(initial, Mapping) else {}
        case WorkflowCompleted():
            work.finished = "completed"
        case WorkflowFailed():
            work.finished = "failed"
        case WorkflowCancelled():
            work.finished = "cancelled"
        case NodeScheduled(node_id=node):
            dispatches = work.nodes[node].dispatches + 1 if node in work.nodes else 0
            work.set(
                node,
                state=NodeState.SCHEDULED,
                dispatches=dispatches,
                answer=None,
                unknown=None,
                resolution=None,
            )
        case NodeStarted(node_id=node, attempt=attempt):
            work.set(node, state=NodeState.RUNNING, attempt=attempt)
        case (
            RetryScheduled(node_id=node, attempt=attempt)
            | NodeParked(node_id=node, attempt=attempt)
        ):
            work.set(node, state=NodeState.SCHEDULED, attempt=attempt)
        case NodeFailed(node_id=node, error=error, retryable=True):
            work.set(node, state=NodeState.SCHEDULED, error=error)
        case NodeFailed(node_id=node, error=error):
            work.set(node, state=NodeState.FAILED, error=error)
        case NodeSkipped(node_id=node):
            work.set(node, state=NodeState.SKIPPED)
        case NodeCancelled(node_id=node):
            work.set(node, state=NodeState.CANCELLED)
        case ToolApprovalRequired(node_id=node):
            work.set(node, state=NodeState.HELD, held_since=at, answer=None, unknown=None)
        case OutcomeUnknown(node_id=node):
            work.set(
                node,
                state=NodeState.HELD,
                held_since=at,
                answer=None,
                unknown=kind,
                resolution=None,
            )
        case OutcomeResolved(node_id=node, resolution=resolution):
            entry = work.nodes.get(node)
            if (
                entry is None
                or entry.state is not NodeState.HELD
                or entry.unknown is None
                or resolution not in RESOLUTIONS
            ):
                return  # no lost outcome waits for an answer: ignored (the store refuses it)
            work.set(node, state=NodeState.ANSWERED, resolution=kind)
        case ApprovalReceived(node_id=node):
            entry = work.nodes.get(node)
            if entry is None or entry.state is not NodeState.HELD or entry.unknown is not None:
                return  # not waiting for an answer: ignored, as the approval fold does
            if kind.state_patch is not None and kind.decision is ApprovalDecision.APPROVED:
                work.state = merge_patch(work.state, kind.state_patch)
            work.set(node, state=NodeState.ANSWERED, answer=kind)
        case NodeCompleted(node_id=node, output=output, state_patch=patch):
            _completed(workflow, work, node, output, patch)


def _completed(
    workflow: WorkflowDef, work: RunState, node_id: str, output: Any, patch: Any
) -> None:
    if patch is not None:
        work.state = merge_patch(work.state, patch)
    definition = workflow.nodes.get(node_id)
    tag = definition.tag if definition is not None else None
    routes = None
    # Only routing nodes choose among their edges (rule 5): a human_approval's own output
    # (``chosen_targets``, written by `plan` when it has a fallback) and a condition node's
    # ``chosen_target``. Any other node's output — a tool's, a model's — never routes.
    if tag == "human_approval" and isinstance(output, Mapping) and "chosen_targets" in output:
        chosen = output["chosen_targets"]
        routes = frozenset(str(t) for t in chosen) if isinstance(chosen, list) else frozenset()
    elif tag == "condition" and definition is not None and definition.branches:
        chosen_target = output.get("chosen_target") if isinstance(output, Mapping) else None
        routes = frozenset({chosen_target}) if isinstance(chosen_target, str) else frozenset()
    for edge in workflow.outgoing(node_id):
        # Evaluated once, now: the output and the state as this node completed.
        if edge.condition is not None and not edge.condition.evaluate(
            state=work.state, output=output, inputs=work.inputs
        ):
            work.dead_edges.add((edge.source, edge.target))
        if routes is not None and edge.target not in routes:
            work.dead_edges.add((edge.source, edge.target))
    work.set(node_id, state=NodeState.COMPLETED, output=output, routes=routes)


# ── planning ───────────────────────────────────────────────────────────────────────────


def _edge_live(progress: Progress, source: str, target: str) -> bool:
    return (
        progress.node(source).state is NodeState.COMPLETED
        and (source, target) not in progress.dead_edges
    )


#: How much of the run id and of the node id a shortened work item id keeps (see `item_id`).
_KEEP: Final = 40


def item_id(execution_id: str, node_id: str, dispatch: int) -> str:
    """The work item id of ``node_id``'s ``dispatch``-th dispatch in ``execution_id``:
    ``<run>/<node>/<dispatch>`` when that fits the identifier limit, otherwise the first 40
    characters of each, a digest of the full pair and the dispatch
    (``<run…>/<node…>/<sha256:32>/<dispatch>``) — deterministic, so a re-planned enqueue
    finds the same item, and distinct for distinct (run, node) pairs (docs/store.md, limits
    on input)."""
    natural = f"{execution_id}/{node_id}/{dispatch}"
    if len(natural) <= MAX_ID_LENGTH:
        return natural
    pair = hashlib.sha256(f"{execution_id}\x00{node_id}".encode()).hexdigest()[:32]
    return f"{execution_id[:_KEEP]}/{node_id[:_KEEP]}/{pair}/{dispatch}"


def _item_for(execution_id: str, node: NodeDef, dispatch: int, payload: Any) -> NewWorkItem:
    return NewWorkItem(
        item_id=item_id(execution_id, node.node_id, dispatch),
        execution_id=execution_id,
        node_id=node.node_id,
        queue=node.queue,
        payload=payload,
        max_attempts=node.retry.max_attempts,
        backoff_base_ms=node.retry.backoff_ms,
    )


def _approval_request(node: NodeDef, progress: Progress) -> ToolApprovalRequired:
    approver = node.kind.get("approver", ANY_HUMAN)
    call = {"description": node.kind.get("description", node.description)}
    return ToolApprovalRequired(
        node_id=node.node_id,
        tool_name=node.node_id,
        approver=str(approver),
        context={"node_id": node.node_id, "node_kind": "human_approval", **call},
        request_digest=request_digest(node.context, 0, call, str(approver)),
        attempt=0,
    )


def _settle_human_approval(
    node: NodeDef, entry: NodeProgress, now: datetime, targets: list[str]
) -> tuple[EventKind, ...]:
    """Events that end a human_approval node, if its answer or its timeout has come."""
    answer = entry.answer
    fallback = node.kind.get("fallback_node")
    if answer is not None:
        if answer.decision is ApprovalDecision.APPROVED:
            output: dict[str, Any] = {"approved": True, "by": answer.user_id}
            if answer.comment is not None:
                output["comment"] = answer.comment
            if isinstance(fallback, str):
                output["chosen_targets"] = [target for target in targets if target != fallback]
            return (
                NodeCompleted(node_id=node.node_id, output=output, state_patch={}, duration_ms=0),
            )
        suffix = f": {answer.comment}" if answer.comment else ""
        return (
            NodeFailed(
                node_id=node.node_id,
                error=f"approval rejected by {answer.user_id}{suffix}",
                attempt=0,
                retryable=False,
            ),
        )
    timeout = node.kind.get("timeout_secs")
    if (
        isinstance(timeout, int | float)
        and entry.held_since is not None
        and now >= entry.held_since + timedelta(seconds=float(timeout))
    ):
        if isinstance(fallback, str):
            output = {"approved": False, "timed_out": True, "chosen_targets": [fallback]}
            return (
                NodeCompleted(node_id=node.node_id, output=output, state_patch={}, duration_ms=0),
            )
        return (
            NodeFailed(
                node_id=node.node_id,
                error=f"approval timed out after {timeout} s",
                attempt=0,
                retryable=False,
            ),
        )
    return ()


def _settle_lost_outcome(
    node: NodeDef, entry: NodeProgress, now: datetime, deadline_secs: float | None
) -> tuple[EventKind, ...] | None:
    """Events that end a lost outcome's wait (rule 3): the person's answer, or the
    deadline. ``None``: nothing yet, or (``retry``) the node is dispatched again."""
    unknown, answer = entry.unknown, entry.resolution
    if unknown is None:
        return None
    if answer is not None:
        if answer.resolution == "succeeded":
            completed = NodeCompleted(
                node_id=node.node_id,
                output=answer.output,
                state_patch={},
                duration_ms=0,
                idempotency_key=unknown.idempotency_key,
            )
            return (completed,)
        if answer.resolution == "failed":
            suffix = f": {answer.reason}" if answer.reason else ""
            error = f"outcome unknown; resolved as failed by {answer.user_id}{suffix}"
            return (
                NodeFailed(
                    node_id=node.node_id, error=error, attempt=unknown.attempt, retryable=False
                ),
            )
        return None  # retry: dispatched by the caller
    if (
        deadline_secs is not None
        and entry.held_since is not None
        and now >= entry.held_since + timedelta(seconds=float(deadline_secs))
    ):
        error = (
            f"outcome unknown: resolution timed out after {deadline_secs:g} s "
            f"(attempt {unknown.attempt}, idempotency key {unknown.idempotency_key})"
        )
        return (
            NodeFailed(node_id=node.node_id, error=error, attempt=unknown.attempt, retryable=False),
        )
    return None


def plan(
    workflow: WorkflowDef,
    progress: Progress,
    *,
    now: datetime,
    execution_id: str,
    resolution_deadline_secs: float | None = None,
) -> Plan:
    """The next events and work items for an execution (see the module doc). Its cost is
    that of the nodes it can act on (`Progress.decidable`, `people`), not the workflow's
    size. ``resolution_deadline_secs`` (the tenant's; ``None``: no deadline) is how long a
    lost outcome may wait for a person before its node fails (rule 3)."""
    if progress.finished is not None or not progress.started:
        return Plan()
    events: list[EventKind] = []
    items: list[NewWorkItem] = []
    changed: dict[str, NodeState] = {}  # node states this plan has moved
    people = workflow.in_order(progress.people)

    if progress.failed and people:
        # Rule 1: nothing held for a person is left to act; a lost outcome a person has
        # already answered (it happened, or it did not) is recorded as answered.
        for node_id in people:
            entry = progress.node(node_id)
            answered = entry.resolution is not None and entry.resolution.resolution != "retry"
            settled = (
                _settle_lost_outcome(workflow.nodes[node_id], entry, now, None)
                if entry.lost and answered
                else None
            )
            events.extend(settled or (NodeCancelled(node_id=node_id),))
        return Plan(events=tuple(events))

    # Lost outcomes: answers and the deadline.
    for node_id in people:
        node = workflow.nodes[node_id]
        entry = progress.node(node_id)
        if not entry.lost:
            continue
        settled = _settle_lost_outcome(node, entry, now, resolution_deadline_secs)
        if settled:
            events.extend(settled)
            changed[node_id] = NodeState.SCHEDULED  # settling now
        elif entry.resolution is not None and entry.resolution.resolution == "retry":
            # Once more, as a new work item: its id, and so the effect's idempotency key,
            # are new (`charter.core.attempt.effect_key`), so the retry really fires.
            events.append(NodeScheduled(node_id=node_id, queue_type=node.queue))
            items.append(
                _item_for(execution_id, node, entry.dispatches + 1, _payload(workflow, node_id))
            )
            changed[node_id] = NodeState.SCHEDULED

    # Human approval nodes: answers and timeouts.
    for node_id in people:
        node = workflow.nodes[node_id]
        if node.tag != "human_approval" or progress.node(node_id).lost:
            continue
        entry = progress.node(node_id)
        targets = [edge.target for edge in workflow.outgoing(node_id)]
        settled = _settle_human_approval(node, entry, now, targets)
        if settled:
            events.extend(settled)
            changed[node_id] = NodeState.SCHEDULED  # settling now

    # Answered tool approvals go back to a worker, whose gate decides.
    for node_id in people:
        node = workflow.nodes[node_id]
        entry = progress.node(node_id)
        if entry.state is NodeState.ANSWERED and node.tag != "human_approval" and not entry.lost:
            events.append(NodeScheduled(node_id=node_id, queue_type=node.queue))
            items.append(
                _item_for(execution_id, node, entry.dispatches + 1, _payload(workflow, node_id))
            )
            changed[node_id] = NodeState.SCHEDULED

    if not events and not progress.failed:
        # Dispatch what is runnable and skip what is dead, among the decidable nodes (all
        # their incoming edges come from finished nodes). A dispatch never makes another
        # node decidable within the same plan (its node is not finished yet), but a skip
        # may: those successors join the worklist when their last predecessor is skipped.
        worklist = deque(workflow.in_order(progress.decidable))
        waits: dict[str, int] = {}
        while worklist:
            node_id = worklist.popleft()
            if changed.get(node_id, progress.node(node_id).state) is not NodeState.PENDING:
                continue
            node = workflow.nodes[node_id]
            if not _runnable(workflow, progress, node_id):
                events.append(NodeSkipped(node_id=node_id, reason=SKIPPED_REASON))
                changed[node_id] = NodeState.SKIPPED
                for edge in workflow.outgoing(node_id):
                    target = edge.target
                    count = waits.get(target, progress.waiting_on.get(target, 0)) - 1
                    waits[target] = count
                    if count == 0:
                        worklist.append(target)
            elif node.tag == "human_approval":
                events.append(NodeScheduled(node_id=node_id, queue_type=node.queue))
                events.append(_approval_request(node, progress))
                changed[node_id] = NodeState.HELD
            elif node.tag == "condition" and not node.branches:
                # A pass-through (rule 2): nothing to run, nothing for a gate to decide.
                events.append(NodeScheduled(node_id=node_id, queue_type=node.queue))
                events.append(
                    NodeCompleted(node_id=node_id, output={}, state_patch={}, duration_ms=0)
                )
                changed[node_id] = NodeState.COMPLETED
            else:
                entry = progress.node(node_id)
                events.append(NodeScheduled(node_id=node_id, queue_type=node.queue))
                items.append(
                    _item_for(execution_id, node, entry.dispatches + 1, _payload(workflow, node_id))
                )
                changed[node_id] = NodeState.SCHEDULED

    if events or items:
        return Plan(events=tuple(events), items=tuple(items))

    # Nothing to start: is the run over?
    if progress.active:
        return Plan()
    if progress.failed:
        failures = sorted(progress.failed)
        return Plan(events=(WorkflowFailed(error=_failure_text(progress, failures)),))
    if progress.finished_count < len(workflow.nodes):
        unfinished = sorted(n for n, entry in progress.nodes.items() if not entry.state.finished)
        return Plan(
            events=(
                WorkflowFailed(
                    error=f"stuck: nodes never became runnable: {', '.join(unfinished)}"
                ),
            )
        )
    return Plan(events=(WorkflowCompleted(final_state=progress.state),))


def _runnable(workflow: WorkflowDef, progress: Progress, node_id: str) -> bool:
    """For a decidable node: run it (the start node, or one incoming edge is live) or skip
    it (every incoming edge is dead)."""
    if node_id == workflow.start_node:
        return True
    return any(_edge_live(progress, edge.source, node_id) for edge in workflow.incoming(node_id))


def _failure_text(progress: Progress, failures: list[str]) -> str:
    details = "; ".join(f"{n}: {progress.node(n).error}" for n in failures)
    return f"node(s) failed terminally: {', '.join(failures)} ({details})"


def _payload(workflow: WorkflowDef, node_id: str) -> dict[str, Any]:
    return {
        "workflow_id": workflow.workflow_id,
        "workflow_version": workflow.version,
        "node_id": node_id,
    }
