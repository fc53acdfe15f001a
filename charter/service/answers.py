"""Answering a request for approval over HTTP: who may, what is recorded, and repeats.

The answering user is the principal of the request's token, never a name from the body.
Only a user the request's approver admits (`may_answer`: a ``group:NAME`` admits the
tenant's members of that group) may answer; anyone else is
refused (403) and nothing is recorded. The answer is recorded by the store's
`decide_approval`, whose transaction records at most one answer per open request: of two
approvers racing, one is recorded and the other is told who answered (409). A repeat of the
same answer (same user, decision and comment, to the same request digest) returns the
recorded one (200), so a client may retry freely.

A tenant that names keys for the answering user is never satisfied by a token alone: the
answer must carry a signature over the statement (`statement_for`, served at
``GET /v1/approvals/{run}/{node}/statement``), made by the client with the approver's
private key, which the server never holds. The page shows the ``charter approve … --key``
command instead of its buttons for such requests.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from datetime import datetime
from typing import Final

import attrs

from charter.adapters.codec import dump
from charter.core.answers import pending_statement, stamp
from charter.core.approvals import ApprovalRefused, may_answer
from charter.core.events import ApprovalDecision, ApprovalReceived, Event, JsonValue
from charter.core.records import Execution, PendingApprovalRecord
from charter.core.signing import Signature, Statement
from charter.service.backend import ServiceBackend
from charter.service.tokens import Principal
from charter.service.views import latest_request

__all__ = [
    "AnswerResult",
    "answer_approval",
    "cli_command",
    "keys_required",
    "may_answer_record",
    "pending_for",
    "recorded_by",
    "statement_for",
    "tenant_groups",
]

_HOST: Final = socket.gethostname()


@attrs.frozen(kw_only=True)
class AnswerResult:
    """``status`` is the HTTP status: 200 (recorded, or a repeat of the recorded answer),
    403 (not this request's approver, or a signature required), 404 (no such run), 409
    (nothing open, or already answered otherwise)."""

    status: int
    answer: JsonValue = None
    repeated: bool = False
    error: str | None = None
    code: str | None = None


def recorded_by(principal: Principal, remote: str | None) -> JsonValue:
    """What is recorded of who answered over HTTP: the token and its principal, the server
    and the client's address as the server saw it."""
    return {
        "via": "charter serve",
        "token": principal.token_id,
        "user": principal.user_id,
        "host": _HOST,
        "remote": remote,
    }


def pending_for(
    store: ServiceBackend, execution_id: str, node_id: str
) -> PendingApprovalRecord | None:
    return next(
        (p for p in store.pending_approvals(execution_id=execution_id) if p.node_id == node_id),
        None,
    )


def tenant_groups(store: ServiceBackend, tenant_id: str) -> dict[str, tuple[str, ...]]:
    """The tenant's approver groups now (``approver_groups`` of its policy)."""
    tenant = store.get_tenant(tenant_id)
    return tenant.policy.groups if tenant is not None and tenant.policy is not None else {}


def may_answer_record(store: ServiceBackend, record: PendingApprovalRecord, user_id: str) -> bool:
    """Whether ``user_id`` may answer the open request (`may_answer`, the one rule: the
    request's approver, a ``group:`` by its members then and now)."""
    return may_answer(
        record.approver, record.context, user_id, tenant_groups(store, record.tenant_id)
    )


def keys_required(store: ServiceBackend, tenant_id: str, user_id: str) -> bool:
    """Whether the tenant names keys for ``user_id`` (answers must then be signed)."""
    tenant = store.get_tenant(tenant_id)
    policy = tenant.policy if tenant is not None else None
    return bool(policy is not None and policy.keys_by_approver.get(user_id))


def cli_command(record: PendingApprovalRecord, user_id: str) -> str:
    """The command that answers ``record`` with a signed answer."""
    return f"charter approve {record.execution_id} {record.node_id} --user {user_id} --key FILE"


def statement_for(
    store: ServiceBackend,
    execution: Execution,
    record: PendingApprovalRecord,
    *,
    user_id: str,
    decision: ApprovalDecision,
    comment: str | None,
    now: datetime,
) -> Statement:
    """The statement the store will check for this answer, built from what it holds now
    (the client signs its ``message()`` bytes and sends the same ``decided_at``)."""
    tenant = store.get_tenant(execution.tenant_id)
    policy = tenant.policy if tenant is not None else None
    return pending_statement(
        execution,
        record,
        user_id=user_id,
        decision=decision,
        comment=comment,
        decided_at=stamp(now),
        policy_digest=policy.digest if policy is not None else None,
    )


def _recorded(events: Sequence[Event], node_id: str) -> ApprovalReceived | None:
    """The answer recorded to the node's latest request, if any."""
    request = latest_request(events, node_id)
    if request is None:
        return None
    answer = None
    opened = False
    for event in events:
        kind = event.kind
        if kind is request:
            opened, answer = True, None
        elif (
            opened
            and isinstance(kind, ApprovalReceived)
            and kind.node_id == node_id
            and kind.request_digest == request.request_digest
            and answer is None
        ):
            answer = kind
    return answer


def answer_approval(
    store: ServiceBackend,
    principal: Principal,
    execution_id: str,
    node_id: str,
    *,
    decision: ApprovalDecision,
    comment: str | None,
    signature: Signature | None = None,
    decided_at: str | None = None,
    remote: str | None = None,
) -> AnswerResult:
    """Record ``principal``'s answer to the node's open request (see the module doc)."""
    execution = store.get_execution(execution_id)
    if execution is None or not principal.sees(execution.tenant_id):
        return AnswerResult(status=404, error=f"no run {execution_id!r}", code="not_found")
    user = principal.user_id
    record = pending_for(store, execution_id, node_id)
    refused: str | None = None
    if record is not None:
        if not may_answer_record(store, record, user):
            return AnswerResult(
                status=403,
                error=f"only {record.approver!r} may answer this request, not {user!r}",
                code="not_the_approver",
            )
        if signature is None and keys_required(store, execution.tenant_id, user):
            return AnswerResult(
                status=403,
                error=(
                    f"the tenant requires {user!r}'s signature: sign the statement from "
                    f"GET /v1/approvals/{execution_id}/{node_id}/statement, or run "
                    f"`{cli_command(record, user)}`"
                ),
                code="signature_required",
            )
        outcome: Event | ApprovalRefused = store.decide_approval(
            execution_id,
            node_id,
            user_id=user,
            decision=decision,
            comment=comment,
            signature=signature,
            decided_at=decided_at,
            recorded_by=recorded_by(principal, remote),
        )
        if isinstance(outcome, Event):
            return AnswerResult(status=200, answer=dump(outcome.kind))
        refused = outcome.reason
    # Nothing open (any more): a repeat of the recorded answer, or another's answer.
    answer = _recorded(store.read_events(execution_id), node_id)
    if answer is not None:
        same = answer.user_id == user and answer.decision is decision and answer.comment == comment
        if same:
            return AnswerResult(status=200, answer=dump(answer), repeated=True)
        return AnswerResult(
            status=409,
            answer=dump(answer),
            error=f"already answered: {answer.decision.value} by {answer.user_id!r}",
            code="already_answered",
        )
    if refused is not None and record is not None:
        return AnswerResult(status=403, error=f"refused: {refused}", code="refused")
    return AnswerResult(
        status=409,
        error=f"no open request for approval of node {node_id!r} in run {execution_id!r}",
        code="nothing_open",
    )
