"""Materialized execution state: a fold over the event log (docs/semantics.md §9).

`materialize(initial_input, events)` gives an execution's status, its workflow state,
each completed node's output and the nodes in flight. Stores fold the events they append
with `apply` to keep an execution's status and its snapshots, in the same transaction.

Rules (upstream's, with one guard): ``workflow_started`` → running; ``workflow_completed`` →
completed, state := ``final_state``; ``workflow_failed`` → failed; ``workflow_cancelled`` →
cancelled; ``strategy_limit_hit`` and ``segment_boundary`` → limit_exceeded;
``interrupt_raised`` → paused (when running); ``approval_received`` → running (when paused)
and its ``state_patch`` merged; ``node_scheduled`` / ``node_started`` → the node is active;
``node_completed`` → inactive, its output recorded and its ``state_patch`` merged;
``node_failed`` / ``node_skipped`` / ``node_cancelled`` → inactive. State patches are RFC 7396
merge patches (objects merge recursively, ``null`` deletes, anything else replaces).

**Divergences:** once terminal, a status no longer changes (upstream lets a late event move a
completed run back to running); a ``null`` ``state_patch`` means "no change" (as a whole-
document merge patch it would erase the state, which no executor means by sending nothing).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs

from charter.core.events import (
    ApprovalReceived,
    Event,
    EventKind,
    InterruptRaised,
    NodeCancelled,
    NodeCompleted,
    NodeFailed,
    NodeScheduled,
    NodeSkipped,
    NodeStarted,
    SegmentBoundary,
    StrategyLimitHit,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowStarted,
    type_tag,
)
from charter.core.records import ExecutionStatus

__all__ = [
    "MATERIALIZED_KINDS",
    "MATERIALIZED_TYPES",
    "STATUS_KINDS",
    "Materialized",
    "apply_event",
    "apply_events",
    "materialize",
    "merge_patch",
    "status_after",
]


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396: apply JSON merge ``patch`` to ``target`` (neither is modified)."""
    if not isinstance(patch, Mapping):
        return patch
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


@attrs.frozen(kw_only=True)
class Materialized:
    """An execution as of ``last_sequence``."""

    status: ExecutionStatus = ExecutionStatus.PENDING
    state: Any = attrs.field(factory=dict)
    completed_nodes: Mapping[str, Any] = attrs.field(factory=dict)
    active_nodes: tuple[str, ...] = ()
    last_sequence: int = 0

    def to_json(self) -> dict[str, Any]:
        """The snapshot form: ``{status, state, completed_nodes, active_nodes}``."""
        return {
            "status": self.status.value,
            "state": self.state,
            "completed_nodes": dict(self.completed_nodes),
            "active_nodes": list(self.active_nodes),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], last_sequence: int) -> Materialized:
        return cls(
            status=ExecutionStatus(data["status"]),
            state=data["state"],
            completed_nodes=dict(data["completed_nodes"]),
            active_nodes=tuple(data["active_nodes"]),
            last_sequence=last_sequence,
        )


#: The event kinds that can change an execution's status; `status_after` leaves it alone for
#: every other kind (a property test holds the two together), so stores may skip the fold.
STATUS_KINDS: Final = (
    WorkflowStarted,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowCancelled,
    StrategyLimitHit,
    SegmentBoundary,
    InterruptRaised,
    ApprovalReceived,
)


def status_after(status: ExecutionStatus, kind: EventKind) -> ExecutionStatus:
    """The execution status after one event (the status part of `apply_event`)."""
    if status.terminal:
        return status
    match kind:
        case WorkflowStarted():
            return ExecutionStatus.RUNNING
        case WorkflowCompleted():
            return ExecutionStatus.COMPLETED
        case WorkflowFailed():
            return ExecutionStatus.FAILED
        case WorkflowCancelled():
            return ExecutionStatus.CANCELLED
        case StrategyLimitHit() | SegmentBoundary():
            return ExecutionStatus.LIMIT_EXCEEDED
        case InterruptRaised() if status is ExecutionStatus.RUNNING:
            return ExecutionStatus.PAUSED
        case ApprovalReceived() if status is ExecutionStatus.PAUSED:
            return ExecutionStatus.RUNNING
    return status


def _with(active: tuple[str, ...], node: str) -> tuple[str, ...]:
    return active if node in active else tuple(sorted((*active, node)))


def _without(active: tuple[str, ...], node: str) -> tuple[str, ...]:
    return tuple(n for n in active if n != node) if node in active else active


def apply_event(current: Materialized, event: Event) -> Materialized:
    """``current`` after one more event."""
    kind = event.kind
    status = status_after(current.status, kind)
    state = current.state
    completed = current.completed_nodes
    active = current.active_nodes
    match kind:
        case WorkflowCompleted(final_state=final):
            state = final
        case ApprovalReceived(state_patch=patch) if patch is not None:
            state = merge_patch(state, patch)
        case NodeScheduled(node_id=node) | NodeStarted(node_id=node):
            active = _with(active, node)
        case NodeCompleted(node_id=node, output=output, state_patch=patch):
            active = _without(active, node)
            completed = {**completed, node: output}
            if patch is not None:  # a null patch means "no change", not "erase the state"
                state = merge_patch(state, patch)
        case NodeFailed(node_id=node) | NodeSkipped(node_id=node) | NodeCancelled(node_id=node):
            active = _without(active, node)
    return Materialized(
        status=status,
        state=state,
        completed_nodes=completed,
        active_nodes=active,
        last_sequence=event.sequence,
    )


#: The event kinds `apply_event` reacts to beyond the sequence: any other kind only moves
#: ``last_sequence`` (so a store need not decode it to keep a snapshot).
MATERIALIZED_KINDS: Final = (
    *STATUS_KINDS,
    NodeScheduled,
    NodeStarted,
    NodeCompleted,
    NodeFailed,
    NodeSkipped,
    NodeCancelled,
)
#: Their JSON ``type`` tags.
MATERIALIZED_TYPES: Final = frozenset(type_tag(kind) for kind in MATERIALIZED_KINDS)


def apply_events(
    current: Materialized, events: Iterable[Event], *, last_sequence: int | None = None
) -> Materialized:
    """``current`` after ``events`` (in sequence order), then at ``last_sequence`` if given
    (events of kinds outside `MATERIALIZED_KINDS` may be left out: they change nothing
    else). The same as applying `apply_event` one event at a time, in time linear in the
    events rather than in events × nodes."""
    status = current.status
    state = current.state
    completed = dict(current.completed_nodes)
    active = set(current.active_nodes)
    sequence = current.last_sequence
    for event in events:
        kind = event.kind
        sequence = event.sequence
        status = status_after(status, kind)
        match kind:
            case WorkflowCompleted(final_state=final):
                state = final
            case ApprovalReceived(state_patch=patch) if patch is not None:
                state = merge_patch(state, patch)
            case NodeScheduled(node_id=node) | NodeStarted(node_id=node):
                active.add(node)
            case NodeCompleted(node_id=node, output=output, state_patch=patch):
                active.discard(node)
                completed[node] = output
                if patch is not None:
                    state = merge_patch(state, patch)
            case NodeFailed(node_id=node) | NodeSkipped(node_id=node) | NodeCancelled(node_id=node):
                active.discard(node)
    return Materialized(
        status=status,
        state=state,
        completed_nodes=completed,
        active_nodes=tuple(sorted(active)),
        last_sequence=sequence if last_sequence is None else max(sequence, last_sequence),
    )


def materialize(initial_input: Any, events: Iterable[Event]) -> Materialized:
    """Fold ``events`` (in sequence order) over an execution's initial input."""
    current = Materialized(state=initial_input if isinstance(initial_input, Mapping) else {})
    return apply_events(current, events)
