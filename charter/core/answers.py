"""A person's answers, planned: approvals (signed where the tenant names keys) and
resolutions of lost outcomes. Pure planners in the manner of `charter.core.commit`: the
store reads, these decide, the store writes.

Who answered is proven, not taken from input (docs/semantics.md §5): when the tenant's
policy in force names keys for the answering user, the answer must carry that user's
signature over the canonical `charter.core.signing.Statement` of exactly what is answered,
checked here with the `Verifier` the caller passes (the core imports no crypto). Without
keys, an answer is recorded as today, with the operating-system account that recorded it
(``recorded_by``): a typed name alone is a claim, and the record says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final

import attrs

from charter.core.approvals import (
    ANY_HUMAN,
    ApprovalRefused,
    ApprovalRequest,
    NotRequested,
    Pending,
    approver_allows,
    decide_approval,
)
from charter.core.commit import ApprovalRow, Head, LogDraft, Plan
from charter.core.errors import InvalidInput, NotFound
from charter.core.events import (
    ApprovalDecision,
    Event,
    JsonValue,
    OutcomeResolved,
    OutcomeUnknown,
)
from charter.core.expiry import expiry_of
from charter.core.policy import PolicySet
from charter.core.records import Execution, PendingApprovalRecord
from charter.core.signing import Signature, Statement, Verifier, check_signed_answer

__all__ = [
    "RESOLUTIONS",
    "approval_statement",
    "open_outcome",
    "pending_statement",
    "plan_decision",
    "plan_resolution",
    "resolution_statement",
    "stamp",
]

#: The answers a person may give about a lost outcome.
RESOLUTIONS: Final = ("succeeded", "failed", "retry")


def stamp(moment: datetime) -> str:
    """A statement's time: UTC, microseconds, ``Z`` (as the log's times)."""
    if moment.tzinfo is None:
        raise InvalidInput("decided_at", "expected a timezone-aware time")
    text = moment.isoformat(timespec="microseconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def approval_statement(
    head: Head,
    row: ApprovalRow | None,
    *,
    node_id: str,
    user_id: str,
    decision: ApprovalDecision,
    comment: str | None,
    decided_at: str,
    policy_digest: str | None,
) -> Statement | None:
    """The statement an approver signs for the node's open request (``None`` when nothing
    is open: there is nothing to sign)."""
    if row is None or not isinstance(row.status, Pending):
        return None
    request = row.status.request
    return Statement(
        purpose="approval",
        tenant_id=head.tenant_id,
        execution_id=head.execution_id,
        node_id=node_id,
        attempt=request.attempt,
        request_digest=request.request_digest,
        decision=decision.value,
        user_id=user_id,
        comment=comment,
        decided_at=decided_at,
        policy_digest=policy_digest,
    )


def pending_statement(
    execution: Execution,
    record: PendingApprovalRecord,
    *,
    user_id: str,
    decision: ApprovalDecision,
    comment: str | None,
    decided_at: str,
    policy_digest: str | None,
) -> Statement:
    """`approval_statement` for an open request as `Store.pending_approvals` lists it: the
    statement the store will check, built from what it holds now (what the CLI and the
    service hand an approver to sign)."""
    head = Head(
        execution_id=execution.execution_id,
        tenant_id=execution.tenant_id,
        status=execution.status,
        last_sequence=execution.last_sequence,
    )
    request = ApprovalRequest(
        node_id=record.node_id,
        tool_name=record.tool_name,
        approver=record.approver,
        context=record.context,
        request_digest=record.request_digest,
        attempt=record.attempt,
        sequence=record.sequence,
    )
    row = ApprovalRow(status=Pending(request), requested_at=record.requested_at)
    statement = approval_statement(
        head,
        row,
        node_id=record.node_id,
        user_id=user_id,
        decision=decision,
        comment=comment,
        decided_at=decided_at,
        policy_digest=policy_digest,
    )
    assert statement is not None  # the row is pending
    return statement


def plan_decision(
    execution_id: str,
    head: Head | None,
    row: ApprovalRow | None,
    policy: PolicySet | None,
    *,
    node_id: str,
    user_id: str,
    decision: ApprovalDecision,
    comment: str | None,
    state_patch: JsonValue,
    now: datetime,
    verify: Verifier,
    signature: Signature | None = None,
    decided_at: str | None = None,
    recorded_by: JsonValue = None,
) -> Plan | ApprovalRefused:
    """Record a person's decision on the node's open request, or say why it cannot be
    (nothing open, not the request's approver, a signature missing, by another key or over
    another statement). ``policy`` is the tenant's policy in force. ``now`` is the time the
    answer is recorded at (the event's time): an approval of a request that carries
    ``expires_after_secs`` gets its ``expires_at`` from it (docs/semantics.md §5.2)."""
    if head is None:
        raise NotFound(f"execution {execution_id!r} does not exist")
    if head.status.terminal:
        return ApprovalRefused(f"execution {execution_id!r} is {head.status.value}")
    status = row.status if row is not None else NotRequested()
    answer = decide_approval(
        status,
        user_id=user_id,
        decision=decision,
        comment=comment,
        state_patch=state_patch,
        groups=policy.groups if policy is not None else {},
    )
    if isinstance(answer, ApprovalRefused):
        return answer
    when = decided_at if decided_at is not None else stamp(now)
    digest = policy.digest if policy is not None else None
    statement = approval_statement(
        head,
        row,
        node_id=node_id,
        user_id=user_id,
        decision=decision,
        comment=comment,
        decided_at=when,
        policy_digest=digest,
    )
    assert statement is not None  # decide_approval answered a pending request
    keys = policy.keys_by_approver if policy is not None else {}
    refused = check_signed_answer(statement, signature, keys, verify=verify)
    if refused is not None:
        return ApprovalRefused(refused)
    expires_at = None
    if decision is ApprovalDecision.APPROVED and isinstance(status, Pending):
        expires_at = expiry_of(status.request, now)
    answer = attrs.evolve(
        answer,
        expires_at=expires_at,
        attempt=statement.attempt,
        decided_at=when,
        policy_digest=digest,
        key=signature.key if signature is not None else None,
        signature=signature.value if signature is not None else None,
        recorded_by=recorded_by,
    )
    return Plan(tuple(LogDraft(head, {node_id: row}).append((answer,), now)))


def open_outcome(node_events: Sequence[Event], node_id: str) -> OutcomeUnknown | None:
    """The node's unknown outcome still waiting for an answer: its latest `OutcomeUnknown`
    with no `OutcomeResolved` after it (events in log order)."""
    waiting: OutcomeUnknown | None = None
    for event in node_events:
        kind = event.kind
        if isinstance(kind, OutcomeUnknown) and kind.node_id == node_id:
            waiting = kind
        elif isinstance(kind, OutcomeResolved) and kind.node_id == node_id:
            waiting = None
    return waiting


def resolution_statement(
    head: Head,
    waiting: OutcomeUnknown,
    *,
    user_id: str,
    resolution: str,
    comment: str | None,
    decided_at: str,
    policy_digest: str | None,
) -> Statement:
    """The statement a resolver signs: the lost outcome (its attempt and idempotency key)
    and the answer."""
    return Statement(
        purpose="resolution",
        tenant_id=head.tenant_id,
        execution_id=head.execution_id,
        node_id=waiting.node_id,
        attempt=waiting.attempt,
        request_digest=waiting.idempotency_key,
        decision=resolution,
        user_id=user_id,
        comment=comment,
        decided_at=decided_at,
        policy_digest=policy_digest,
    )


def plan_resolution(
    execution_id: str,
    head: Head | None,
    node_events: Sequence[Event],
    policy: PolicySet | None,
    *,
    node_id: str,
    user_id: str,
    resolution: str,
    output: JsonValue,
    reason: str | None,
    comment: str | None,
    now: datetime,
    verify: Verifier,
    signature: Signature | None = None,
    decided_at: str | None = None,
    recorded_by: JsonValue = None,
) -> Plan | ApprovalRefused:
    """Record a person's answer about the node's lost outcome (``succeeded`` with its
    ``output``, ``failed`` with a ``reason``, or ``retry``), authorised like an approval:
    only a user the tenant's ``resolver`` admits (default: any identified person), signed
    when the tenant names keys for that user."""
    if resolution not in RESOLUTIONS:
        raise InvalidInput("resolution", f"expected one of {', '.join(RESOLUTIONS)}")
    if head is None:
        raise NotFound(f"execution {execution_id!r} does not exist")
    if head.status.terminal:
        return ApprovalRefused(f"execution {execution_id!r} is {head.status.value}")
    waiting = open_outcome(node_events, node_id)
    if waiting is None:
        return ApprovalRefused(f"no lost outcome of node {node_id!r} is waiting for an answer")
    resolver = (policy.resolver if policy is not None else None) or ANY_HUMAN
    if not approver_allows(resolver, user_id, policy.groups if policy is not None else None):
        return ApprovalRefused(f"user {user_id!r} may not resolve it (resolver: {resolver!r})")
    when = decided_at if decided_at is not None else stamp(now)
    digest = policy.digest if policy is not None else None
    statement = resolution_statement(
        head,
        waiting,
        user_id=user_id,
        resolution=resolution,
        comment=comment,
        decided_at=when,
        policy_digest=digest,
    )
    keys = policy.keys_by_approver if policy is not None else {}
    refused = check_signed_answer(statement, signature, keys, verify=verify)
    if refused is not None:
        return ApprovalRefused(refused)
    resolved = OutcomeResolved(
        node_id=node_id,
        attempt=waiting.attempt,
        resolution=resolution,
        user_id=user_id,
        output=output if resolution == "succeeded" else None,
        reason=reason if resolution == "failed" else None,
        comment=comment,
        decided_at=when,
        policy_digest=digest,
        key=signature.key if signature is not None else None,
        signature=signature.value if signature is not None else None,
        recorded_by=recorded_by,
    )
    return Plan(tuple(LogDraft(head, {}).append((resolved,), now)))
