"""A work item's lifecycle as data: which action may move an item from which status to which.

In the manner of h11's state machine, the rules are a table rather than code spread over the
stores: `TRANSITIONS` maps each status to the actions allowed from it and the status each
leads to, and `transition` applies it, with the fence rule (an action on a claimed item must
name the claim's current fence). Every store asks `charter.core.commit`'s planners what to
write; the planners ask this table whether a change is allowed. No store encodes a status
change of its own.

::

    pending ──claim──▶ claimed ──complete──▶ completed
                          │ ├────hold──────▶ held
                          │ ├────fail──────▶ failed
                          │ ├──dead_letter─▶ dead_lettered
                          │ ├────retry─────▶ pending   (a failure with attempts left)
                          │ ├────park──────▶ pending   (wait until a moment, e.g. a rate limit)
                          │ └────renew─────▶ claimed   (a heartbeat extends the lease)

Terminal statuses allow no action: a settled item can never be resurrected.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Final

from charter.core.errors import FenceLost, InvalidInput, NotFound
from charter.core.records import WorkItem, WorkItemStatus

__all__ = [
    "COMMIT_ACTIONS",
    "TRANSITIONS",
    "ItemAction",
    "apply_action",
    "check_fence",
    "transition",
]


class ItemAction(enum.Enum):
    """What may happen to a work item."""

    CLAIM = "claim"
    RENEW = "renew"
    COMPLETE = "complete"
    HOLD = "hold"
    FAIL = "fail"
    DEAD_LETTER = "dead_letter"
    RETRY = "retry"
    PARK = "park"


_P, _C = WorkItemStatus.PENDING, WorkItemStatus.CLAIMED

#: ``{status: {action: next status}}``: the only changes a work item can go through.
TRANSITIONS: Final[Mapping[WorkItemStatus, Mapping[ItemAction, WorkItemStatus]]] = MappingProxyType(
    {
        _P: MappingProxyType({ItemAction.CLAIM: _C}),
        _C: MappingProxyType(
            {
                ItemAction.RENEW: _C,
                ItemAction.COMPLETE: WorkItemStatus.COMPLETED,
                ItemAction.HOLD: WorkItemStatus.HELD,
                ItemAction.FAIL: WorkItemStatus.FAILED,
                ItemAction.DEAD_LETTER: WorkItemStatus.DEAD_LETTERED,
                ItemAction.RETRY: _P,
                ItemAction.PARK: _P,
            }
        ),
        WorkItemStatus.COMPLETED: MappingProxyType({}),
        WorkItemStatus.HELD: MappingProxyType({}),
        WorkItemStatus.FAILED: MappingProxyType({}),
        WorkItemStatus.DEAD_LETTERED: MappingProxyType({}),
    }
)

#: The action that settles a claimed item in each status a commit may end it in.
COMMIT_ACTIONS: Final[Mapping[WorkItemStatus, ItemAction]] = MappingProxyType(
    {
        WorkItemStatus.COMPLETED: ItemAction.COMPLETE,
        WorkItemStatus.HELD: ItemAction.HOLD,
        WorkItemStatus.FAILED: ItemAction.FAIL,
    }
)


def transition(status: WorkItemStatus, action: ItemAction) -> WorkItemStatus:
    """The status ``action`` leads to from ``status``; `InvalidInput` if the table has no
    such change (a caller asking for one is a programming error, never a race: races are
    caught by the fence)."""
    allowed = TRANSITIONS[status]
    try:
        return allowed[action]
    except KeyError:
        names = ", ".join(sorted(a.value for a in allowed)) or "nothing (it is settled)"
        raise InvalidInput(
            "action", f"a {status.value} work item allows {names}, not {action.value}"
        ) from None


def check_fence(item: WorkItem | None, item_id: str, fence: int) -> WorkItem:
    """The item, if ``fence`` is the current fence of it while claimed; else `NotFound` (no
    such item) or `FenceLost` (settled, reclaimed or re-claimed since)."""
    if item is None:
        raise NotFound(f"work item {item_id!r} does not exist")
    if item.status is not WorkItemStatus.CLAIMED or item.fence != fence:
        raise FenceLost(
            f"work item {item_id!r}: fence {fence} is not current "
            f"(item is {item.status.value} with fence {item.fence})"
        )
    return item


def apply_action(
    item: WorkItem,
    action: ItemAction,
    *,
    fence: int | None = None,
    worker_id: str | None = None,
    lease_expires_at: datetime | None = None,
    attempt: int | None = None,
    available_at: datetime | None = None,
    last_error: str | None = None,
) -> WorkItem:
    """The item after ``action``: its next status from `TRANSITIONS`, with the fence rules.

    * ``claim`` (from pending; no fence given) takes the next fence, one greater than any
      the item had, and needs the worker and the lease's end;
    * every action on a claimed item needs the claim's current ``fence`` (`FenceLost`
      otherwise); ``renew`` needs the lease's new end; every other action ends the claim
      (no worker, no lease) and may set the attempt, availability and last error.
    """
    if action is ItemAction.CLAIM:
        status = transition(item.status, action)
        if worker_id is None or lease_expires_at is None:
            raise InvalidInput("claim", "a claim needs its worker and the end of its lease")
        return _changed(item, status, worker_id, lease_expires_at, item.fence + 1,
                        item.attempt, item.available_at, item.last_error)  # fmt: skip
    if fence is None:
        raise InvalidInput("fence", f"{action.value} acts on a claim and needs its fence")
    check_fence(item, item.item_id, fence)
    status = transition(item.status, action)
    if action is ItemAction.RENEW:
        if lease_expires_at is None:
            raise InvalidInput("renew", "a renewal needs the end of the new lease")
        return _changed(item, status, item.worker_id, lease_expires_at, item.fence,
                        item.attempt, item.available_at, item.last_error)  # fmt: skip
    return _changed(
        item, status, None, None, item.fence,
        item.attempt if attempt is None else attempt,
        item.available_at if available_at is None else available_at,
        item.last_error if last_error is None else last_error,
    )  # fmt: skip


def _changed(
    item: WorkItem, status: WorkItemStatus, worker_id: str | None,
    lease_expires_at: datetime | None, fence: int, attempt: int, available_at: datetime,
    last_error: str | None,
) -> WorkItem:  # fmt: skip
    """``item`` with the columns an action may change (built directly: `attrs.evolve`
    copies field by field through introspection, several times slower on the hot path)."""
    return WorkItem(
        item_id=item.item_id,
        tenant_id=item.tenant_id,
        execution_id=item.execution_id,
        node_id=item.node_id,
        queue=item.queue,
        payload=item.payload,
        attempt=attempt,
        max_attempts=item.max_attempts,
        backoff_base_ms=item.backoff_base_ms,
        status=status,
        available_at=available_at,
        created_at=item.created_at,
        worker_id=worker_id,
        lease_expires_at=lease_expires_at,
        fence=fence,
        last_error=last_error,
    )
