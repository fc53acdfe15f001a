"""Upstream JamJet approval-fold tests, ported (reference §3.1 and §9).

Source ported: ``state/src/approvals.rs`` unit tests. Upstream's events carry no request
digest, which Charter's fold accepts as an unbound request, so each upstream case holds as
written. Tests named ``test_charter_*`` pin the deliberate divergences of ARCHITECTURE fix 7:
decisions bound to the request digest, a named approver, and single-use approvals.
"""

from __future__ import annotations

from datetime import UTC, datetime

from charter.core import (
    ApprovalConsumed,
    ApprovalDecision,
    ApprovalReceived,
    Approved,
    Consumed,
    Event,
    EventKind,
    NotRequested,
    Pending,
    Rejected,
    ToolApprovalRequired,
    node_approval_status,
    pending_approvals,
)

_AT = datetime(2026, 1, 1, tzinfo=UTC)


def _log(*kinds: EventKind) -> list[Event]:
    """An event log of ``kinds`` with sequences 1..n."""
    return [
        Event(id=f"ev-{seq}", execution_id="exec-1", sequence=seq, kind=kind, created_at=_AT)
        for seq, kind in enumerate(kinds, start=1)
    ]


def _required(
    node: str, *, approver: str = "human", digest: str | None = None
) -> ToolApprovalRequired:
    return ToolApprovalRequired(
        node_id=node,
        tool_name=f"tool_{node}",
        approver=approver,
        context={},
        request_digest=digest,
    )


def _received(
    node: str,
    decision: ApprovalDecision,
    *,
    user_id: str = "tester",
    digest: str | None = None,
) -> ApprovalReceived:
    return ApprovalReceived(
        node_id=node, user_id=user_id, decision=decision, comment="note", request_digest=digest
    )


APPROVED = ApprovalDecision.APPROVED
REJECTED = ApprovalDecision.REJECTED


# ── state/src/approvals.rs unit tests ───────────────────────────────────────────────────


def test_no_events_means_not_requested() -> None:
    assert node_approval_status([], "a") == NotRequested()


def test_no_events_means_no_pending_approvals() -> None:
    # Second assertion of upstream's `no_events_means_not_requested`.
    assert pending_approvals([]) == ()


def test_required_without_decision_is_pending() -> None:
    status = node_approval_status(_log(_required("a")), "a")
    assert isinstance(status, Pending)
    assert (status.request.node_id, status.request.tool_name, status.request.sequence) == (
        "a",
        "tool_a",
        1,
    )


def test_required_without_decision_is_listed_pending() -> None:
    # Second assertion of upstream's `required_without_decision_is_pending`.
    pending = pending_approvals(_log(_required("a")))
    assert [p.node_id for p in pending] == ["a"]


def test_approved_resolves_pending() -> None:
    status = node_approval_status(_log(_required("a"), _received("a", APPROVED)), "a")
    assert isinstance(status, Approved)
    assert (status.user_id, status.sequence) == ("tester", 2)


def test_approved_resolves_pending_list() -> None:
    # Second assertion of upstream's `approved_resolves_pending`.
    assert pending_approvals(_log(_required("a"), _received("a", APPROVED))) == ()


def test_rejected_resolves_pending_with_comment() -> None:
    status = node_approval_status(_log(_required("a"), _received("a", REJECTED)), "a")
    assert isinstance(status, Rejected)
    assert (status.user_id, status.comment) == ("tester", "note")


def test_new_request_after_approval_is_pending_again() -> None:
    log = _log(_required("a"), _received("a", APPROVED), _required("a"))
    status = node_approval_status(log, "a")
    assert isinstance(status, Pending)
    assert status.request.sequence == 3


def test_decision_without_request_is_ignored() -> None:
    assert node_approval_status(_log(_received("a", APPROVED)), "a") == NotRequested()


def test_pending_approvals_order_is_deterministic() -> None:
    pending = pending_approvals(_log(_required("b"), _required("a")))
    assert [p.node_id for p in pending] == ["a", "b"]


def test_per_node_isolation() -> None:
    log = _log(_required("a"), _required("b"), _received("a", APPROVED))
    statuses = (node_approval_status(log, "a"), node_approval_status(log, "b"))
    assert (type(statuses[0]), type(statuses[1])) == (Approved, Pending)


def test_per_node_isolation_pending_list() -> None:
    # Last assertions of upstream's `per_node_isolation`.
    log = _log(_required("a"), _required("b"), _received("a", APPROVED))
    assert [p.node_id for p in pending_approvals(log)] == ["b"]


# ── reference §3.1: first decision after a request wins ─────────────────────────────────


def test_first_decision_after_request_wins() -> None:
    log = _log(_required("a"), _received("a", APPROVED), _received("a", REJECTED))
    assert isinstance(node_approval_status(log, "a"), Approved)


# ── Charter divergences (ARCHITECTURE fix 7) ────────────────────────────────────────────


def test_charter_decision_with_other_digest_is_ignored() -> None:
    # Reference §3.3 step 2: upstream approvals are per node id, not per request.
    log = _log(_required("a", digest="d1"), _received("a", APPROVED, digest="d0"))
    assert isinstance(node_approval_status(log, "a"), Pending)


def test_charter_decision_with_matching_digest_approves() -> None:
    log = _log(_required("a", digest="d1"), _received("a", APPROVED, digest="d1"))
    assert isinstance(node_approval_status(log, "a"), Approved)


def test_charter_decision_without_digest_does_not_answer_bound_request() -> None:
    # A decision with no digest only answers upstream-style (unbound) requests.
    log = _log(_required("a", digest="d1"), _received("a", APPROVED))
    assert isinstance(node_approval_status(log, "a"), Pending)


def test_charter_approval_is_single_use() -> None:
    # Reference §3.3 step 2: upstream runs every later attempt without re-approval.
    log = _log(
        _required("a", digest="d1"),
        _received("a", APPROVED, digest="d1"),
        ApprovalConsumed(node_id="a", request_digest="d1", attempt=0),
    )
    status = node_approval_status(log, "a")
    assert isinstance(status, Consumed)
    assert status.sequence == 3


def test_charter_decision_by_user_not_named_approver_is_ignored() -> None:
    # Reference §3.4: upstream never checks user_id against the request's approver.
    log = _log(_required("a", approver="alice"), _received("a", APPROVED, user_id="mallory"))
    assert isinstance(node_approval_status(log, "a"), Pending)


def test_charter_anonymous_decision_is_ignored() -> None:
    # Reference §3.4: upstream defaults user_id to "anonymous" and accepts it.
    log = _log(_required("a"), _received("a", APPROVED, user_id="anonymous"))
    assert isinstance(node_approval_status(log, "a"), Pending)
