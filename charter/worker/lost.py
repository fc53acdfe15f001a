"""`lost_outcomes`: the lost outcomes of a store that wait for a person (``outcome_unknown``
with no ``outcome_resolved`` after it; docs/workflows.md §3.3) — what ``charter approvals``,
the service's list and page, and its webhooks show."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Final

from charter.core.answers import open_outcome
from charter.core.events import Event, OutcomeUnknown
from charter.core.ports import Store
from charter.core.records import Execution, ExecutionStatus

__all__ = ["LostOutcome", "lost_outcomes"]

#: The statuses a run waiting on a lost outcome can have.
_OPEN: Final = (ExecutionStatus.RUNNING, ExecutionStatus.PAUSED)

#: A run, its waiting ``outcome_unknown`` event, and the run's log.
LostOutcome = tuple[Execution, Event, Sequence[Event]]


def lost_outcomes(store: Store, tenant_id: str | None = None) -> Iterator[LostOutcome]:
    """Every lost outcome waiting for an answer (of ``tenant_id``'s runs when given): the
    run, its ``outcome_unknown`` event and the run's log, runs in creation order. Each open
    run's log is read: fine for hundreds of open runs, not for many thousands."""
    for status in _OPEN:
        cursor = None
        while True:
            page = store.list_executions(
                tenant_id=tenant_id, status=status, limit=200, cursor=cursor
            )
            for execution in page.items:
                events = store.read_events(execution.execution_id)
                for event in events:
                    kind = event.kind
                    if isinstance(kind, OutcomeUnknown) and open_outcome(events, kind.node_id) is (
                        kind
                    ):
                        yield execution, event, events
            cursor = page.next_cursor
            if cursor is None:
                break
