"""Lost outcomes over HTTP: the ones waiting for a person, and a person's answer.

A node whose tool is not idempotent and whose worker stopped mid-call waits for a person to
say what became of its side effect (``outcome_unknown``; docs/workflows.md §3.3): it
``succeeded`` (the node completes with an ``output``), it ``failed`` (the node fails with a
``reason``), or ``retry`` (run it once more). The answer is recorded by the store's
`resolve_outcome` (``outcome_resolved``), under the rules of approvals: the answering user
is the token's principal; only a user the tenant's ``resolver`` admits may answer (403,
nothing recorded); a tenant that names keys for that user needs a signature over the
statement (`statement_for`), never a token alone; a repeat of the recorded answer returns
it (200), another answer already recorded is a 409.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from charter.adapters.codec import dump
from charter.core.answers import RESOLUTIONS, open_outcome, resolution_statement, stamp
from charter.core.approvals import ANY_HUMAN, approver_allows
from charter.core.commit import Head
from charter.core.events import Event, JsonValue, OutcomeResolved, OutcomeUnknown
from charter.core.records import Execution
from charter.core.signing import Signature, Statement
from charter.service.answers import AnswerResult, keys_required, recorded_by, tenant_groups
from charter.service.backend import ServiceBackend
from charter.service.tokens import Principal
from charter.service.views import time_text, workflow_of
from charter.worker.lost import LostOutcome, lost_outcomes

__all__ = [
    "LostOutcome",
    "answer_resolution",
    "cli_command",
    "lost_outcomes",
    "resolution_json",
    "resolver_of",
    "statement_for",
]


def resolver_of(store: ServiceBackend, tenant_id: str) -> str:
    """Who may resolve the tenant's lost outcomes (its policy's ``resolver``; default: any
    identified person)."""
    tenant = store.get_tenant(tenant_id)
    policy = tenant.policy if tenant is not None else None
    return (policy.resolver if policy is not None else None) or ANY_HUMAN


def resolution_json(
    store: ServiceBackend,
    execution: Execution,
    event: Event,
    events: Sequence[Event],
    *,
    keys_needed: bool = False,
) -> dict[str, JsonValue]:
    """A lost outcome with what its resolver must see: the run, the node and its tool, the
    call's arguments, the attempt and idempotency key, and why the outcome is unknown."""
    kind = event.kind
    assert isinstance(kind, OutcomeUnknown)
    workflow = workflow_of(store, execution)
    node = workflow.nodes.get(kind.node_id) if workflow is not None else None
    tool = node.context.tool_name if node is not None else None
    arguments = node.kind.get("args") if node is not None else None
    return {
        "run_id": execution.execution_id,
        "tenant_id": execution.tenant_id,
        "workflow_id": execution.workflow_id,
        "node_id": kind.node_id,
        "tool": tool,
        "arguments": dump(arguments),
        "attempt": kind.attempt,
        "idempotency_key": kind.idempotency_key,
        "reason": kind.reason,
        "sequence": event.sequence,
        "lost_at": time_text(event.created_at),
        "resolver": resolver_of(store, execution.tenant_id),
        "resolutions": list(RESOLUTIONS),
        "signature_required": keys_needed,
    }


def cli_command(run_id: str, node_id: str, user_id: str) -> str:
    """The command that answers a lost outcome with a signed answer."""
    return (
        f"charter resolve {run_id} {node_id} --user {user_id} "
        "(--succeeded [--output JSON] | --failed [--reason TEXT] | --retry) --key FILE"
    )


def statement_for(
    store: ServiceBackend,
    execution: Execution,
    waiting: OutcomeUnknown,
    *,
    user_id: str,
    resolution: str,
    comment: str | None,
    now: datetime,
) -> Statement:
    """The statement the store will check for this answer, built from what it holds now
    (the client signs its ``message()`` bytes and sends the same ``decided_at``)."""
    tenant = store.get_tenant(execution.tenant_id)
    policy = tenant.policy if tenant is not None else None
    head = Head(
        execution_id=execution.execution_id,
        tenant_id=execution.tenant_id,
        status=execution.status,
        last_sequence=execution.last_sequence,
    )
    return resolution_statement(
        head,
        waiting,
        user_id=user_id,
        resolution=resolution,
        comment=comment,
        decided_at=stamp(now),
        policy_digest=policy.digest if policy is not None else None,
    )


def _recorded(events: Sequence[Event], node_id: str) -> OutcomeResolved | None:
    """The answer recorded to the node's latest lost outcome, if any."""
    answer: OutcomeResolved | None = None
    for event in events:
        kind = event.kind
        if isinstance(kind, OutcomeUnknown) and kind.node_id == node_id:
            answer = None
        elif isinstance(kind, OutcomeResolved) and kind.node_id == node_id and answer is None:
            answer = kind
    return answer


def answer_resolution(
    store: ServiceBackend,
    principal: Principal,
    execution_id: str,
    node_id: str,
    *,
    resolution: str,
    output: JsonValue = None,
    reason: str | None = None,
    comment: str | None = None,
    signature: Signature | None = None,
    decided_at: str | None = None,
    remote: str | None = None,
) -> AnswerResult:
    """Record ``principal``'s answer about the node's lost outcome (see the module doc)."""
    execution = store.get_execution(execution_id)
    if execution is None or not principal.sees(execution.tenant_id):
        return AnswerResult(status=404, error=f"no run {execution_id!r}", code="not_found")
    user = principal.user_id
    waiting = open_outcome(store.read_events(execution_id), node_id)
    refused: str | None = None
    if waiting is not None:
        resolver = resolver_of(store, execution.tenant_id)
        if not approver_allows(resolver, user, tenant_groups(store, execution.tenant_id)):
            return AnswerResult(
                status=403,
                error=f"only {resolver!r} may resolve this lost outcome, not {user!r}",
                code="not_the_resolver",
            )
        if signature is None and keys_required(store, execution.tenant_id, user):
            return AnswerResult(
                status=403,
                error=(
                    f"the tenant requires {user!r}'s signature: sign the statement from "
                    f"GET /v1/resolutions/{execution_id}/{node_id}/statement, or run "
                    f"`{cli_command(execution_id, node_id, user)}`"
                ),
                code="signature_required",
            )
        outcome = store.resolve_outcome(
            execution_id,
            node_id,
            user_id=user,
            resolution=resolution,
            output=output,
            reason=reason,
            comment=comment,
            signature=signature,
            decided_at=decided_at,
            recorded_by=recorded_by(principal, remote),
        )
        if isinstance(outcome, Event):
            return AnswerResult(status=200, answer=dump(outcome.kind))
        refused = outcome.reason
    # Nothing waits (any more): a repeat of the recorded answer, or another's answer.
    answer = _recorded(store.read_events(execution_id), node_id)
    if answer is not None:
        same = (
            answer.user_id == user
            and answer.resolution == resolution
            and answer.comment == comment
            and answer.reason == (reason if resolution == "failed" else None)
            and answer.output == (output if resolution == "succeeded" else None)
        )
        if same:
            return AnswerResult(status=200, answer=dump(answer), repeated=True)
        return AnswerResult(
            status=409,
            answer=dump(answer),
            error=f"already resolved: {answer.resolution} by {answer.user_id!r}",
            code="already_answered",
        )
    if refused is not None:
        return AnswerResult(status=403, error=f"refused: {refused}", code="refused")
    return AnswerResult(
        status=409,
        error=f"no lost outcome of node {node_id!r} in run {execution_id!r} waits for an answer",
        code="nothing_open",
    )
