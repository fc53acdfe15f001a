"""Approval state, derived by folding the event log (the only source of truth).

Upstream (docs/semantics.md §5) folds per node id: a request opens ``Pending``, the first decision
after it wins, and an approval then covers every later run of the node until a new request.
Charter keeps the fold and binds each approval to one exact request (ARCHITECTURE fix 7):

* a request carries a ``request_digest`` over (node, attempt, policy names, call arguments);
  a decision counts only if it names that digest (decisions without one are accepted only
  for requests without one, i.e. upstream logs);
* a decision counts only if its ``user_id`` satisfies the request's ``approver``
  (`approver_allows`); anything else is ignored by the fold, exactly like an orphan;
* an approval is single-use: ``approval_consumed`` (written in the same commit as the run it
  authorised) turns ``Approved`` into ``Consumed``, and the next run needs a new request;
* an approval may expire (docs/semantics.md §5.2): a request carries ``expires_after_secs``,
  an approval of it ``expires_at`` (fixed when recorded), and ``approval_expired`` (written
  by the gate that found it past that time) turns ``Approved`` into ``Expired``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from datetime import datetime

import attrs

from charter.core.errors import InvalidInput, describe
from charter.core.events import (
    ApprovalConsumed,
    ApprovalDecision,
    ApprovalExpired,
    ApprovalReceived,
    Event,
    EventKind,
    JsonValue,
    ToolApprovalRequired,
)
from charter.core.glob import glob_match

__all__ = [
    "ANY_HUMAN",
    "GROUP_PREFIX",
    "ApprovalRefused",
    "ApprovalRequest",
    "ApprovalStatus",
    "Approved",
    "Consumed",
    "Expired",
    "NotRequested",
    "Pending",
    "Rejected",
    "approval_after",
    "approval_expired",
    "approval_step",
    "approver_allows",
    "decide_approval",
    "may_answer",
    "named_groups",
    "node_approval_status",
    "pending_approvals",
    "rejection_reason",
    "request_groups",
]

#: The approver that any identified person satisfies.
ANY_HUMAN = "human"
#: How an approver names a group the tenant defines (``group:finance``).
GROUP_PREFIX = "group:"

_ANONYMOUS = frozenset({"", "anonymous"})


def _identity(user_id: object) -> str | None:
    """The user id reduced to what identifies a person: stripped of whitespace and invisible
    format characters (zero-width spaces and the like); ``None`` if nothing is left, if it is
    not a string, or if it only says "anonymous" (in any case)."""
    if not isinstance(user_id, str):
        return None
    visible = "".join(ch for ch in user_id if unicodedata.category(ch) not in ("Cf", "Cc"))
    visible = visible.strip()
    if visible.casefold() in _ANONYMOUS:
        return None
    return visible


@attrs.frozen(kw_only=True)
class ApprovalRequest:
    """An open question to a person, as recorded by ``tool_approval_required``."""

    node_id: str
    tool_name: str
    approver: str
    context: JsonValue
    request_digest: str | None
    attempt: int | None
    sequence: int
    #: How long an approval of this request stays usable once recorded (``None``: always).
    expires_after_secs: float | None = None


@attrs.frozen
class NotRequested:
    """No approval was ever asked for this node."""


@attrs.frozen
class Pending:
    """A request is open."""

    request: ApprovalRequest


@attrs.frozen(kw_only=True)
class Approved:
    """The open request was approved and the approval is not used yet."""

    request: ApprovalRequest
    user_id: str
    comment: str | None
    sequence: int
    #: When the approval stops counting (``None``: never); see `approval_expired`.
    expires_at: datetime | None = None


@attrs.frozen(kw_only=True)
class Rejected:
    """The open request was rejected."""

    request: ApprovalRequest
    user_id: str
    comment: str | None
    sequence: int


@attrs.frozen(kw_only=True)
class Consumed:
    """The approval was used by the run it authorised; a new run needs a new request."""

    request: ApprovalRequest
    user_id: str
    sequence: int


@attrs.frozen(kw_only=True)
class Expired:
    """The approval passed its ``expires_at`` before a run used it; the gate that found it
    so recorded ``approval_expired`` and asked again (docs/semantics.md §5.2)."""

    request: ApprovalRequest
    user_id: str
    expires_at: datetime
    sequence: int


ApprovalStatus = NotRequested | Pending | Approved | Rejected | Consumed | Expired

_NOT_REQUESTED = NotRequested()


def approver_allows(
    approver: object, user_id: object, groups: Mapping[str, Iterable[str]] | None = None
) -> bool:
    """Whether ``user_id`` may answer a request addressed to ``approver``.

    ``approver`` is ``"human"`` (any identified person) or a comma-separated list of options,
    each a user-id glob (``"alice"``, ``"finance-*,bob"``; note that ``"alice*"`` also admits
    ``"alice.evil"`` — write exact ids when that matters) or ``group:NAME``, which admits
    exactly the user ids ``groups`` lists for ``NAME`` (none when ``groups`` does not define
    it; a ``group:`` option is never a glob). A person is identified when the user id still
    has visible characters once whitespace and invisible format characters are removed, and
    is not ``"anonymous"`` in any letter case. The id is matched as given.
    """
    if not isinstance(approver, str) or not isinstance(user_id, str):
        return False
    if _identity(user_id) is None:
        return False
    for option in approver.split(","):
        option = option.strip()
        if option.startswith(GROUP_PREFIX):
            members = (groups or {}).get(option[len(GROUP_PREFIX) :], ())
            if not isinstance(members, str) and user_id in members:
                return True
            continue
        if option == ANY_HUMAN or (option and glob_match(option, user_id)):
            return True
    return False


def named_groups(approver: object, groups: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    """The members of each group ``approver`` names (``group:NAME``; ``[]`` for a group
    ``groups`` does not define), sorted: what a request for approval records of them
    (``context.approver_groups``), so the log alone says who could answer it."""
    if not isinstance(approver, str):
        return {}
    named: dict[str, list[str]] = {}
    for option in approver.split(","):
        option = option.strip()
        if option.startswith(GROUP_PREFIX):
            name = option[len(GROUP_PREFIX) :]
            named[name] = sorted(groups.get(name, ()))
    return named


def request_groups(context: object) -> dict[str, tuple[str, ...]]:
    """The groups a request recorded (``context.approver_groups``); a malformed record
    admits nobody through a group."""
    recorded = context.get("approver_groups") if isinstance(context, Mapping) else None
    if not isinstance(recorded, Mapping):
        return {}
    return {
        str(name): tuple(m for m in members if isinstance(m, str))
        for name, members in recorded.items()
        if isinstance(members, list | tuple)
    }


def may_answer(
    approver: object,
    context: object,
    user_id: object,
    groups_now: Mapping[str, Iterable[str]] | None = None,
) -> bool:
    """The one rule for who may answer a request (CLI, service, govern and the fold alike):
    ``approver_allows``, where a ``group:NAME`` admits a user who was a member when the
    request was made (``context.approver_groups``) and — when ``groups_now`` (the tenant's
    groups at the answer) is given — still is one. The fold, which sees only the log,
    passes no ``groups_now``; the store's planner passes the tenant's."""
    recorded = request_groups(context)
    if groups_now is not None:
        recorded = {
            name: tuple(m for m in members if m in tuple(groups_now.get(name, ())))
            for name, members in recorded.items()
        }
    return approver_allows(approver, user_id, recorded)


def _binds(request: ApprovalRequest, digest: str | None) -> bool:
    return request.request_digest is None or digest == request.request_digest


def approval_step(status: ApprovalStatus, event: Event) -> ApprovalStatus:
    """The approval status of a node after one more event about it (the fold's step)."""
    return approval_after(status, event.kind, event.sequence)


def approval_after(status: ApprovalStatus, kind: EventKind, sequence: int) -> ApprovalStatus:
    """`approval_step` for an event kind that is (or will be) stored at ``sequence``: what
    a store's commit planner projects before the event has an envelope."""
    if isinstance(kind, ToolApprovalRequired):
        return Pending(
            ApprovalRequest(
                node_id=kind.node_id,
                tool_name=kind.tool_name,
                approver=kind.approver,
                context=kind.context,
                request_digest=kind.request_digest,
                attempt=kind.attempt,
                sequence=sequence,
                expires_after_secs=kind.expires_after_secs,
            )
        )
    if isinstance(kind, ApprovalReceived):
        if not isinstance(status, Pending):
            return status  # orphan or duplicate decision: the first one after a request wins
        request = status.request
        if not _binds(request, kind.request_digest):
            return status
        if not may_answer(request.approver, request.context, kind.user_id):
            return status
        if kind.decision is ApprovalDecision.APPROVED:
            return Approved(
                request=request,
                user_id=kind.user_id,
                comment=kind.comment,
                sequence=sequence,
                expires_at=kind.expires_at,
            )
        # Only the other enum member is left; anything else (a string smuggled into a
        # hand-built event) must not count as either answer.
        decision: object = kind.decision
        if decision is not ApprovalDecision.REJECTED:
            return status
        return Rejected(
            request=request, user_id=kind.user_id, comment=kind.comment, sequence=sequence
        )
    if (
        isinstance(kind, ApprovalConsumed)
        and isinstance(status, Approved)
        and kind.request_digest == status.request.request_digest
    ):
        return Consumed(request=status.request, user_id=status.user_id, sequence=sequence)
    if (
        isinstance(kind, ApprovalExpired)
        and isinstance(status, Approved)
        and kind.request_digest == status.request.request_digest
    ):
        return Expired(
            request=status.request,
            user_id=status.user_id,
            expires_at=kind.expires_at,
            sequence=sequence,
        )
    return status


def approval_expired(status: Approved, now: datetime) -> bool:
    """Whether the approval no longer counts at ``now``: it has an ``expires_at`` and
    ``now`` is at or past it (the instant of expiry is already too late)."""
    expires_at = status.expires_at
    return expires_at is not None and now >= expires_at


def _in_order(events: Iterable[Event]) -> list[Event]:
    ordered = list(events)
    for event in ordered:
        if not isinstance(event, Event):
            raise InvalidInput("events", f"expected Event envelopes, got {describe(event)}")
    ordered.sort(key=lambda event: event.sequence)
    return ordered


def node_approval_status(events: Iterable[Event], node_id: str) -> ApprovalStatus:
    """The approval status of ``node_id`` after ``events``, folded in sequence order
    (whatever order they are given in)."""
    status: ApprovalStatus = _NOT_REQUESTED
    for event in _in_order(events):
        if event.node_id == node_id:
            status = approval_step(status, event)
    return status


def pending_approvals(events: Iterable[Event]) -> tuple[ApprovalRequest, ...]:
    """Every open request, one per node (its latest), ordered by node id."""
    statuses: dict[str, ApprovalStatus] = {}
    for event in _in_order(events):
        kind = event.kind
        if isinstance(
            kind, ToolApprovalRequired | ApprovalReceived | ApprovalConsumed | ApprovalExpired
        ):
            node = kind.node_id
            statuses[node] = approval_step(statuses.get(node, _NOT_REQUESTED), event)
    return tuple(
        status.request for _, status in sorted(statuses.items()) if isinstance(status, Pending)
    )


@attrs.frozen
class ApprovalRefused:
    """A decision that cannot be recorded, and why (an outcome, not an exception)."""

    reason: str


def decide_approval(
    status: ApprovalStatus,
    *,
    user_id: str,
    decision: ApprovalDecision,
    comment: str | None = None,
    state_patch: JsonValue = None,
    groups: Mapping[str, Iterable[str]] | None = None,
) -> ApprovalReceived | ApprovalRefused:
    """The ``approval_received`` event to record for a person's decision on a node, bound to
    the node's open request; or the reason it is refused (nothing open, wrong approver, no
    identified user). ``groups`` are the tenant's approver groups now (`may_answer`). A
    malformed call (a decision that is not an `ApprovalDecision`) raises `InvalidInput`."""
    if not isinstance(decision, ApprovalDecision):
        raise InvalidInput("decision", f"expected ApprovalDecision, got {describe(decision)}")
    if comment is not None and not isinstance(comment, str):
        raise InvalidInput("comment", f"expected a string, got {describe(comment)}")
    if _identity(user_id) is None:
        return ApprovalRefused(f"an approval needs an identified user, got {describe(user_id)}")
    if not isinstance(status, Pending):
        return ApprovalRefused(f"no approval is pending (status: {_status_name(status)})")
    request = status.request
    if not may_answer(request.approver, request.context, user_id, groups):
        return ApprovalRefused(
            f"user {user_id!r} may not answer this request (approver: {request.approver!r})"
        )
    return ApprovalReceived(
        node_id=request.node_id,
        user_id=user_id,
        decision=decision,
        comment=comment,
        state_patch=state_patch,
        request_digest=request.request_digest,
    )


def rejection_reason(status: Rejected) -> str:
    """Upstream's failure text for a rejected node: ``approval rejected by <user>[: <comment>]``."""
    suffix = f": {status.comment}" if status.comment else ""
    return f"approval rejected by {status.user_id}{suffix}"


def _status_name(status: ApprovalStatus) -> str:
    return {
        NotRequested: "not requested",
        Pending: "pending",
        Approved: "approved",
        Rejected: "rejected",
        Consumed: "consumed",
        Expired: "expired",
    }[type(status)]
