"""The JSON API under ``/v1`` (docs/service.md, docs/service-openapi.json)."""

from __future__ import annotations

from typing import Any, Final

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from charter.core.answers import RESOLUTIONS, open_outcome
from charter.core.approvals import approver_allows
from charter.core.errors import InvalidInput
from charter.core.events import ApprovalDecision, JsonValue
from charter.core.gate import GateRequest, Outcome, gate_node
from charter.core.policy import EvaluationContext, RequireApproval, policy_chain
from charter.core.records import Execution, ExecutionStatus
from charter.core.signing import Signature
from charter.service.answers import (
    answer_approval,
    keys_required,
    may_answer_record,
    pending_for,
    statement_for,
    tenant_groups,
)
from charter.service.context import (
    ApiError,
    Service,
    bad,
    check_fields,
    invalid,
    json_body,
    text_field,
)
from charter.service.decisions import decide_in_run
from charter.service.resolutions import (
    answer_resolution,
    lost_outcomes,
    resolution_json,
    resolver_of,
)
from charter.service.resolutions import statement_for as resolution_statement_for
from charter.service.tokens import Principal
from charter.service.views import approval_json, event_json, execution_json, run_json
from charter.worker.limits import with_limit_usage

__all__ = ["routes"]

_MAX_PAGE: Final = 500
_DECISIONS: Final = {"run": "run", "hold": "hold", "fail": "refuse"}


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def _limit(request: Request, default: int = 100) -> int:
    text = request.query_params.get("limit")
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text) <= _MAX_PAGE:
        bad("limit", f"expected an integer from 1 to {_MAX_PAGE}, got {text!r}")
    return int(text)


# ── decisions ──────────────────────────────────────────────────────────────────────────

_DECISION_FIELDS: Final = (
    "tenant_id",
    "node_id",
    "node_kind",
    "tool",
    "model",
    "resolved_model",
    "call",
    "attempt",
    "run_id",
    "tools",
    "models",
)
#: What a decision in a run does not take: the run decides them (docs/service.md).
_NOT_IN_RUN: Final = ("node_id", "attempt", "resolved_model")


def _names(body: dict[str, Any], field: str) -> list[str]:
    value = body.get(field, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        bad(field, f"expected a list of names, got {value!r}")
    return list(value)


def _decide_in_run(
    service: Service, principal: Principal, body: dict[str, Any], run_id: str
) -> dict[str, JsonValue]:
    tenant_id = text_field(body, "tenant_id") or "default"
    for name in _NOT_IN_RUN:
        if name in body:
            bad(name, "not taken with run_id: the run decides it")
    kind = text_field(body, "node_kind", required=True)
    tool, model = text_field(body, "tool"), text_field(body, "model")
    if kind == "tool" and (tool is None or model is not None):
        bad("tool", "a tool call in a run names its tool (and no model)")
    elif kind == "model" and (model is None or tool is not None):
        bad("model", "a model call in a run names its model (and no tool)")
    elif kind not in ("tool", "model"):
        bad("node_kind", f"a decision in a run is of a tool or model call, got {kind!r}")
    tools, models = _names(body, "tools"), _names(body, "models")
    if service.store.get_tenant(tenant_id) is None:
        raise ApiError(404, "not_found", f"tenant_id: no tenant {tenant_id!r}", field="tenant_id")
    execution = service.store.get_execution(run_id)
    if execution is not None and not principal.sees(execution.tenant_id):
        raise ApiError(404, "not_found", f"no run {run_id!r}", field="run_id")
    try:
        result = decide_in_run(
            service.store,
            run_id=run_id,
            tenant_id=tenant_id,
            tool=tool,
            model=model,
            tools=tools,
            models=models,
            call=body.get("call"),
        )
    except InvalidInput as error:
        if error.where in ("run_id", "tenant", "tool_name"):
            raise ApiError(409, "conflict", str(error), field="run_id") from None
        raise invalid(error) from None
    tenant = service.store.get_tenant(tenant_id)
    policy = tenant.policy if tenant is not None else None
    return {**result, "policy_digest": policy.digest if policy is not None else None}


def _decide(service: Service, body: dict[str, Any]) -> dict[str, JsonValue]:
    tenant_id = text_field(body, "tenant_id") or "default"
    tenant = service.store.get_tenant(tenant_id)
    if tenant is None:
        raise ApiError(404, "not_found", f"tenant_id: no tenant {tenant_id!r}", field="tenant_id")
    attempt = body.get("attempt", 0)
    if type(attempt) is not int or attempt < 0:
        bad("attempt", f"expected a non-negative integer, got {attempt!r}")
    try:
        context = EvaluationContext(
            text_field(body, "node_id") or "call",
            text_field(body, "node_kind", required=True) or "",
            text_field(body, "tool"),
            text_field(body, "model"),
            resolved_model=text_field(body, "resolved_model"),
        )
        request = GateRequest(
            context=context,
            attempt=attempt,
            policies=policy_chain(tenant.policy),
            call=body.get("call"),
            now=service.clock.now(),
        )
        # The tenant's windowed limits are read (a reached one refuses), never charged:
        # this endpoint records nothing (docs/service.md).
        result = gate_node(with_limit_usage(service.store, tenant_id, tenant.policy, request))
    except InvalidInput as error:
        raise invalid(error) from None
    verdict = result.policy
    approver = verdict.decision.approver if isinstance(verdict.decision, RequireApproval) else None
    return {
        "decision": _DECISIONS[result.outcome.value],
        "reason": result.reason,
        "rule": verdict.rule.value if verdict.rule is not None else None,
        "scope": verdict.scope.value if verdict.scope is not None else None,
        "pattern": verdict.pattern,
        "approver": approver if result.outcome is Outcome.HOLD else None,
        "request_digest": result.request_digest,
        "policy_digest": tenant.policy.digest if tenant.policy is not None else None,
    }


async def decisions(request: Request) -> JSONResponse:
    service = _service(request)
    principal = await service.bearer(request)
    body = await json_body(request)
    check_fields(body, _DECISION_FIELDS)
    tenant_id = text_field(body, "tenant_id") or "default"
    if not principal.sees(tenant_id):
        raise ApiError(
            403,
            "wrong_tenant",
            f"tenant_id: this token is scoped to tenant {principal.tenant_id!r}",
            field="tenant_id",
        )
    run_id = text_field(body, "run_id")
    if run_id is not None:
        if not run_id.strip():
            bad("run_id", "expected a run id, got an empty one")
        return JSONResponse(
            await run_in_threadpool(_decide_in_run, service, principal, body, run_id)
        )
    for name in ("tools", "models"):
        if name in body:
            bad(name, "only taken with run_id")
    return JSONResponse(await run_in_threadpool(_decide, service, body))


# ── runs ───────────────────────────────────────────────────────────────────────────────


def _tenant_filter(request: Request, principal: Principal) -> str | None:
    """The ``tenant`` filter of a listing: a scoped token sees its tenant only."""
    tenant = request.query_params.get("tenant") or None
    if principal.tenant_id is None:
        return tenant
    if tenant is not None and tenant != principal.tenant_id:
        raise ApiError(
            403,
            "wrong_tenant",
            f"tenant: this token is scoped to tenant {principal.tenant_id!r}",
            field="tenant",
        )
    return principal.tenant_id


def _visible(service: Service, principal: Principal, run_id: str) -> Execution:
    """The run, if it exists and the principal's scope covers it (404 otherwise)."""
    execution = service.store.get_execution(run_id)
    if execution is None or not principal.sees(execution.tenant_id):
        raise ApiError(404, "not_found", f"no run {run_id!r}")
    return execution


async def list_runs(request: Request) -> JSONResponse:
    service = _service(request)
    principal = await service.bearer(request)
    status_text = request.query_params.get("status")
    status = None
    if status_text is not None:
        try:
            status = ExecutionStatus(status_text)
        except ValueError:
            names = ", ".join(s.value for s in ExecutionStatus)
            bad("status", f"expected one of {names}, got {status_text!r}")
    tenant = _tenant_filter(request, principal)
    limit = _limit(request)
    cursor = request.query_params.get("cursor") or None

    def work() -> dict[str, JsonValue]:
        try:
            page = service.store.list_executions(
                tenant_id=tenant, status=status, limit=limit, cursor=cursor
            )
        except InvalidInput as error:
            raise invalid(error) from None
        return {
            "runs": [execution_json(e) for e in page.items],
            "next_cursor": page.next_cursor,
        }

    return JSONResponse(await run_in_threadpool(work))


async def get_run(request: Request) -> JSONResponse:
    service = _service(request)
    principal = await service.bearer(request)
    run_id = request.path_params["run_id"]

    def work() -> dict[str, JsonValue]:
        execution = _visible(service, principal, run_id)
        return run_json(service.store, execution, service.store.read_events(run_id))

    return JSONResponse(await run_in_threadpool(work))


async def run_events(request: Request) -> JSONResponse:
    service = _service(request)
    principal = await service.bearer(request)
    run_id = request.path_params["run_id"]
    after_text = request.query_params.get("after", "0")
    if not after_text.isdigit():
        bad("after", f"expected a sequence number, got {after_text!r}")
    after = int(after_text)
    limit = _limit(request)

    def work() -> dict[str, JsonValue]:
        _visible(service, principal, run_id)
        events = service.store.read_events(run_id, after=after, limit=limit + 1)
        more = len(events) > limit
        shown = events[:limit]
        return {
            "events": [event_json(e) for e in shown],
            "next_after": shown[-1].sequence if more and shown else None,
        }

    return JSONResponse(await run_in_threadpool(work))


# ── approvals ──────────────────────────────────────────────────────────────────────────


async def list_approvals(request: Request) -> JSONResponse:
    service = _service(request)
    principal = await service.bearer(request)
    approver = request.query_params.get("approver") or None
    tenant = _tenant_filter(request, principal)

    def work() -> dict[str, JsonValue]:
        store = service.store
        shown: list[JsonValue] = []
        for record in store.pending_approvals(tenant_id=tenant):
            if approver is not None and not may_answer_record(store, record, approver):
                continue
            needed = approver is not None and keys_required(store, record.tenant_id, approver)
            shown.append(approval_json(store, record, keys_needed=needed))
        return {"approvals": shown}

    return JSONResponse(await run_in_threadpool(work))


def _decision(text: str | None, field: str = "decision") -> ApprovalDecision:
    try:
        return ApprovalDecision(text)
    except ValueError:
        bad(field, f"expected approved or rejected, got {text!r}")


async def statement(request: Request) -> JSONResponse:
    service = _service(request)
    principal = await service.bearer(request)
    run_id, node_id = request.path_params["run_id"], request.path_params["node_id"]
    decision = _decision(request.query_params.get("decision"))
    comment = request.query_params.get("comment")

    def work() -> dict[str, JsonValue]:
        store = service.store
        execution = _visible(service, principal, run_id)
        record = pending_for(store, run_id, node_id)
        if record is None:
            raise ApiError(409, "nothing_open", f"no open request of node {node_id!r}")
        made = statement_for(
            store,
            execution,
            record,
            user_id=principal.user_id,
            decision=decision,
            comment=comment,
            now=service.clock.now(),
        )
        return {
            "statement": made.to_json(),
            "message": made.message().decode("utf-8"),
            "decided_at": made.decided_at,
        }

    return JSONResponse(await run_in_threadpool(work))


def _signature(body: dict[str, Any]) -> Signature | None:
    value = body.get("signature")
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"key", "value"}:
        bad("signature", 'expected {"key": "ed25519:…", "value": "<base64>"}')
    key, sig = value["key"], value["value"]
    if not isinstance(key, str) or not isinstance(sig, str):
        bad("signature", "key and value must be strings")
    return Signature(key=key, value=sig)


def _answer_handler(decision: ApprovalDecision) -> Any:
    async def answer(request: Request) -> JSONResponse:
        service = _service(request)
        principal = await service.bearer(request)
        body = await json_body(request)
        check_fields(body, ("comment", "signature", "decided_at"))
        comment = text_field(body, "comment")
        signature = _signature(body)
        decided_at = text_field(body, "decided_at")
        if signature is not None and decided_at is None:
            bad("decided_at", "required with a signature (the statement's decided_at)")
        run_id, node_id = request.path_params["run_id"], request.path_params["node_id"]
        try:
            result = await run_in_threadpool(
                answer_approval,
                service.store,
                principal,
                run_id,
                node_id,
                decision=decision,
                comment=comment,
                signature=signature,
                decided_at=decided_at,
                remote=service.remote(request),
            )
        except InvalidInput as error:
            raise invalid(error) from None
        if result.status != 200:
            raise ApiError(
                result.status, result.code or "refused", result.error or "", answer=result.answer
            )
        return JSONResponse({"answer": result.answer, "repeated": result.repeated})

    return answer


# ── resolutions of lost outcomes ─────────────────────────────────────────────────────────


async def list_resolutions(request: Request) -> JSONResponse:
    service = _service(request)
    principal = await service.bearer(request)
    user = request.query_params.get("resolver") or None
    tenant = _tenant_filter(request, principal)

    def work() -> dict[str, JsonValue]:
        store = service.store
        shown: list[JsonValue] = []
        for execution, event, events in lost_outcomes(store, tenant):
            resolver = resolver_of(store, execution.tenant_id)
            groups = tenant_groups(store, execution.tenant_id)
            if user is not None and not approver_allows(resolver, user, groups):
                continue
            needed = user is not None and keys_required(store, execution.tenant_id, user)
            shown.append(resolution_json(store, execution, event, events, keys_needed=needed))
        return {"resolutions": shown}

    return JSONResponse(await run_in_threadpool(work))


def _resolution(text: object) -> str:
    if text not in RESOLUTIONS:
        bad("resolution", f"expected one of {', '.join(RESOLUTIONS)}, got {text!r}")
    assert isinstance(text, str)
    return text


async def resolution_statement(request: Request) -> JSONResponse:
    service = _service(request)
    principal = await service.bearer(request)
    run_id, node_id = request.path_params["run_id"], request.path_params["node_id"]
    resolution = _resolution(request.query_params.get("resolution"))
    comment = request.query_params.get("comment")

    def work() -> dict[str, JsonValue]:
        execution = _visible(service, principal, run_id)
        waiting = open_outcome(service.store.read_events(run_id), node_id)
        if waiting is None:
            raise ApiError(409, "nothing_open", f"no lost outcome of node {node_id!r} waits")
        made = resolution_statement_for(
            service.store,
            execution,
            waiting,
            user_id=principal.user_id,
            resolution=resolution,
            comment=comment,
            now=service.clock.now(),
        )
        return {
            "statement": made.to_json(),
            "message": made.message().decode("utf-8"),
            "decided_at": made.decided_at,
        }

    return JSONResponse(await run_in_threadpool(work))


async def resolve(request: Request) -> JSONResponse:
    service = _service(request)
    principal = await service.bearer(request)
    body = await json_body(request)
    check_fields(body, ("resolution", "output", "reason", "comment", "signature", "decided_at"))
    resolution = _resolution(body.get("resolution"))
    if "output" in body and resolution != "succeeded":
        bad("output", "only taken with resolution succeeded")
    reason = text_field(body, "reason")
    if reason is not None and resolution != "failed":
        bad("reason", "only taken with resolution failed")
    comment = text_field(body, "comment")
    signature = _signature(body)
    decided_at = text_field(body, "decided_at")
    if signature is not None and decided_at is None:
        bad("decided_at", "required with a signature (the statement's decided_at)")
    run_id, node_id = request.path_params["run_id"], request.path_params["node_id"]
    try:
        result = await run_in_threadpool(
            answer_resolution,
            service.store,
            principal,
            run_id,
            node_id,
            resolution=resolution,
            output=body.get("output"),
            reason=reason,
            comment=comment,
            signature=signature,
            decided_at=decided_at,
            remote=service.remote(request),
        )
    except InvalidInput as error:
        raise invalid(error) from None
    if result.status != 200:
        raise ApiError(
            result.status, result.code or "refused", result.error or "", answer=result.answer
        )
    return JSONResponse({"answer": result.answer, "repeated": result.repeated})


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    service = _service(request)

    def probe() -> None:
        service.store.get_execution("charter-readyz-probe")
        service.tokens.token_by_digest("0" * 64)

    try:
        await run_in_threadpool(probe)
    except Exception as error:  # noqa: BLE001 - any failure to reach the database: not ready
        return JSONResponse(
            {"status": "unavailable", "error": type(error).__name__}, status_code=503
        )
    return JSONResponse({"status": "ready"})


def routes() -> list[Route]:
    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/v1/decisions", decisions, methods=["POST"]),
        Route("/v1/runs", list_runs, methods=["GET"]),
        Route("/v1/runs/{run_id}", get_run, methods=["GET"]),
        Route("/v1/runs/{run_id}/events", run_events, methods=["GET"]),
        Route("/v1/approvals", list_approvals, methods=["GET"]),
        Route("/v1/resolutions", list_resolutions, methods=["GET"]),
        Route(
            "/v1/resolutions/{run_id}/{node_id}/statement", resolution_statement, methods=["GET"]
        ),
        Route("/v1/resolutions/{run_id}/{node_id}", resolve, methods=["POST"]),
        Route("/v1/approvals/{run_id}/{node_id}/statement", statement, methods=["GET"]),
        Route(
            "/v1/approvals/{run_id}/{node_id}/approve",
            _answer_handler(ApprovalDecision.APPROVED),
            methods=["POST"],
        ),
        Route(
            "/v1/approvals/{run_id}/{node_id}/reject",
            _answer_handler(ApprovalDecision.REJECTED),
            methods=["POST"],
        ),
    ]
