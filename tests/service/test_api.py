"""The /v1 API: authentication, decisions, runs, approvals (who may answer, repeats,
races, signed tenants), bad input, the OpenAPI document and the access log."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from charter.adapters.keys import load_key, new_key, sign
from charter.adapters.service_store import ServiceStore
from charter.core.events import ApprovalReceived
from charter.core.signing import Statement
from charter.service import create_app
from charter.service.backend import ServiceBackend
from charter.service.openapi import openapi_document
from tests.service import helpers
from tests.service.helpers import ROOT, finish, held_run, token

Backend = tuple[ServiceBackend, ServiceStore]


def _auth(text: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {text}"}


def test_every_v1_request_needs_a_token(client: TestClient, memory: Backend) -> None:
    store, tokens = memory
    assert client.get("/v1/runs").status_code == 401
    assert client.get("/v1/runs", headers=_auth("charter_x_y")).status_code == 401
    body = client.get("/v1/runs", headers={"Authorization": "Basic abc"}).json()
    assert body["error"]["code"] == "unauthenticated"
    good = token(tokens, store, "alice")
    assert client.get("/v1/runs", headers=_auth(good)).status_code == 200
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}


def test_a_revoked_or_expired_token_is_refused(client: TestClient, memory: Backend) -> None:
    from datetime import timedelta

    from charter.service.tokens import issue_token

    store, tokens = memory
    text, record = issue_token(tokens, "alice", now=store.clock.now())
    assert client.get("/v1/runs", headers=_auth(text)).status_code == 200
    tokens.revoke_token(record.token_id, store.clock.now())
    assert client.get("/v1/runs", headers=_auth(text)).status_code == 401
    old, _ = issue_token(
        tokens, "bob", now=store.clock.now() - timedelta(hours=2), expires_in=timedelta(hours=1)
    )
    assert client.get("/v1/runs", headers=_auth(old)).status_code == 401
    assert all(t.digest != text for t in tokens.list_tokens())  # only the digest is stored


def test_decisions_evaluate_the_tenants_stored_policy(client: TestClient, memory: Backend) -> None:
    store, tokens = memory
    auth = _auth(token(tokens, store, "svc"))
    blocked = client.post(
        "/v1/decisions",
        headers=auth,
        json={"tenant_id": "acme", "node_kind": "tool", "tool": "shell.exec", "call": {"x": 1}},
    ).json()
    assert blocked["decision"] == "refuse"
    assert (blocked["rule"], blocked["scope"], blocked["pattern"]) == (
        "blocked_tools",
        "tenant",
        "shell.*",
    )
    allowed = client.post(
        "/v1/decisions",
        headers=auth,
        json={"tenant_id": "acme", "node_kind": "model", "model": "claude-haiku-4"},
    ).json()
    assert allowed["decision"] == "run"
    refused_model = client.post(
        "/v1/decisions",
        headers=auth,
        json={"tenant_id": "acme", "node_kind": "model", "model": "gpt-4"},
    ).json()
    assert refused_model["decision"] == "refuse"
    assert refused_model["rule"] == "model_allowlist"


def test_decisions_hold_when_the_tenant_asks_for_approval(memory: Backend) -> None:
    store, tokens = memory
    helpers.put_tenant(store, 'require_approval_for: ["payments.*"]\napprover: finance-lead\n')
    with TestClient(create_app(store, tokens)) as client:
        held = client.post(
            "/v1/decisions",
            headers=_auth(token(tokens, store, "svc")),
            json={"tenant_id": "acme", "node_kind": "tool", "tool": "payments.send"},
        ).json()
    assert held["decision"] == "hold"
    assert held["approver"] == "finance-lead"
    assert held["request_digest"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"tenant_id": "acme"}, "node_kind"),
        ({"node_kind": "tool", "tool": "x", "tenant_id": 3}, "tenant_id"),
        ({"node_kind": "bogus", "tool": "x", "tenant_id": "acme"}, "node_kind_tag"),
        ({"node_kind": "tool", "tenant_id": "acme"}, "tool_name"),
        ({"node_kind": "tool", "tool": "x", "tenant_id": "acme", "attempt": -1}, "attempt"),
        ({"node_kind": "tool", "tool": "x", "tenant_id": "acme", "extra": 1}, "extra"),
    ],
)
def test_bad_decision_bodies_name_the_field(
    client: TestClient, memory: Backend, body: dict[str, Any], field: str
) -> None:
    store, tokens = memory
    response = client.post("/v1/decisions", headers=_auth(token(tokens, store, "svc")), json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"].startswith(field), response.json()


def test_a_body_that_is_not_a_json_object_is_refused(client: TestClient, memory: Backend) -> None:
    store, tokens = memory
    auth = {**_auth(token(tokens, store, "svc")), "Content-Type": "application/json"}
    for raw in (b"{", b"[1]", b"\xff"):
        response = client.post("/v1/decisions", headers=auth, content=raw)
        assert response.status_code == 400
        assert response.json()["error"]["field"] == "body"
    raw = b'{"node_kind": "tool", "tool": "x", "tenant_id": "acme", "call": {"a": NaN}}'
    not_json = client.post("/v1/decisions", headers=auth, content=raw)
    assert not_json.status_code == 400
    assert not_json.json()["error"]["field"].startswith("call"), not_json.json()
    unknown = client.post(
        "/v1/decisions",
        headers=auth,
        json={"tenant_id": "nobody", "node_kind": "model", "model": "m"},
    )
    assert unknown.status_code == 404
    assert unknown.json()["error"]["field"] == "tenant_id"


def test_runs_list_detail_and_events(client: TestClient, memory: Backend, tmp_path: Path) -> None:
    store, tokens = memory
    for index in range(3):
        held_run(store, tmp_path, f"r{index}")
    auth = _auth(token(tokens, store, "alice"))
    first = client.get("/v1/runs?limit=2", headers=auth).json()
    assert [r["run_id"] for r in first["runs"]] == ["r0", "r1"]
    rest = client.get(f"/v1/runs?limit=2&cursor={first['next_cursor']}", headers=auth).json()
    assert [r["run_id"] for r in rest["runs"]] == ["r2"]
    assert rest["next_cursor"] is None
    assert client.get("/v1/runs?status=completed", headers=auth).json()["runs"] == []
    bad = client.get("/v1/runs?status=nope", headers=auth)
    assert bad.status_code == 400
    assert bad.json()["error"]["field"] == "status"
    assert client.get("/v1/runs?tenant=other", headers=auth).json()["runs"] == []
    detail = client.get("/v1/runs/r1", headers=auth).json()
    assert detail["run"]["status"] == "waiting"
    assert detail["run"]["blocked_on"]["type"] == "human_approval"
    assert detail["run"]["blocked_on"]["gate_name"] == "pay"
    assert detail["steps"][-1]["status"] == "waiting"
    events = client.get("/v1/runs/r1/events?limit=2", headers=auth).json()
    assert [e["sequence"] for e in events["events"]] == [1, 2]
    more = client.get(f"/v1/runs/r1/events?after={events['next_after']}", headers=auth).json()
    assert more["events"][0]["sequence"] == 3
    assert more["next_after"] is None
    assert client.get("/v1/runs/none", headers=auth).status_code == 404
    assert client.get("/v1/runs/r1/events?after=x", headers=auth).status_code == 400


def test_approvals_list_shows_the_call_and_the_rule(
    client: TestClient, memory: Backend, tmp_path: Path
) -> None:
    store, tokens = memory
    held_run(store, tmp_path, "r1")
    auth = _auth(token(tokens, store, "finance-lead"))
    (item,) = client.get("/v1/approvals?approver=finance-lead", headers=auth).json()["approvals"]
    assert item["arguments"] == {"to": "ACME-1", "amount": 120}
    assert (item["tool"], item["approver"], item["node_id"]) == (
        "payments.send",
        "finance-lead",
        "pay",
    )
    assert (item["rule"], item["scope"], item["pattern"]) == (
        "require_approval_for",
        "workflow",
        "payments.*",
    )
    assert client.get("/v1/approvals?approver=bob", headers=auth).json()["approvals"] == []


def test_only_the_named_approver_may_answer_and_a_repeat_returns_the_answer(
    client: TestClient, memory: Backend, tmp_path: Path
) -> None:
    store, tokens = memory
    held_run(store, tmp_path, "r1")
    intruder = client.post(
        "/v1/approvals/r1/pay/approve",
        headers=_auth(token(tokens, store, "mallory")),
        json={"comment": "looks fine"},
    )
    assert intruder.status_code == 403
    assert intruder.json()["error"]["code"] == "not_the_approver"
    assert not any(isinstance(e.kind, ApprovalReceived) for e in store.read_events("r1"))
    lead = _auth(token(tokens, store, "finance-lead"))
    first = client.post("/v1/approvals/r1/pay/approve", headers=lead, json={"comment": "ok"})
    assert first.status_code == 200, first.text
    answer = first.json()["answer"]
    assert answer["user_id"] == "finance-lead"
    assert answer["recorded_by"]["via"] == "charter serve"
    assert answer["recorded_by"]["user"] == "finance-lead"
    assert answer["recorded_by"]["token"]
    again = client.post("/v1/approvals/r1/pay/approve", headers=lead, json={"comment": "ok"})
    assert again.status_code == 200
    assert again.json() == {"answer": answer, "repeated": True}
    other = client.post("/v1/approvals/r1/pay/reject", headers=lead, json={"comment": "no"})
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "already_answered"
    answers = [e for e in store.read_events("r1") if isinstance(e.kind, ApprovalReceived)]
    assert len(answers) == 1
    assert finish(store, "r1") == "completed"


def test_the_user_in_a_body_is_never_the_answering_user(
    client: TestClient, memory: Backend, tmp_path: Path
) -> None:
    store, tokens = memory
    held_run(store, tmp_path, "r1")
    response = client.post(
        "/v1/approvals/r1/pay/approve",
        headers=_auth(token(tokens, store, "mallory")),
        json={"user_id": "finance-lead"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "user_id"


def test_two_approvers_racing_record_exactly_one_answer(backend: Backend, tmp_path: Path) -> None:
    store, tokens = backend
    held_run(store, tmp_path, "race", approver="finance-*")
    app = create_app(store, tokens)
    users = [f"finance-{n}" for n in range(8)]
    texts = {user: token(tokens, store, user) for user in users}
    statuses: dict[str, int] = {}
    barrier = threading.Barrier(len(users))

    def answer(user: str) -> None:
        with TestClient(app) as client:
            barrier.wait(timeout=60)
            response = client.post(
                "/v1/approvals/race/pay/approve", headers=_auth(texts[user]), json={}
            )
            statuses[user] = response.status_code

    threads = [threading.Thread(target=answer, args=(user,)) for user in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(statuses.values()) == [200] + [409] * (len(users) - 1), statuses
    answers = [e.kind for e in store.read_events("race") if isinstance(e.kind, ApprovalReceived)]
    assert len(answers) == 1
    winner = next(user for user, status in statuses.items() if status == 200)
    assert answers[0].user_id == winner


def test_a_tenant_with_keys_needs_a_signature_over_the_statement(
    memory: Backend, tmp_path: Path
) -> None:
    store, tokens = memory
    key_path = tmp_path / "lead.key"
    public = new_key(key_path)
    helpers.put_tenant(store, f'approvers:\n  finance-lead: ["{public}"]\n')
    held_run(store, tmp_path, "r1")
    lead = _auth(token(tokens, store, "finance-lead"))
    with TestClient(create_app(store, tokens)) as client:
        unsigned = client.post("/v1/approvals/r1/pay/approve", headers=lead, json={})
        assert unsigned.status_code == 403
        assert unsigned.json()["error"]["code"] == "signature_required"
        assert "--key FILE" in unsigned.json()["error"]["message"]
        made = client.get(
            "/v1/approvals/r1/pay/statement?decision=approved&comment=checked", headers=lead
        ).json()
        statement = Statement(**{k: v for k, v in made["statement"].items() if k != "format"})
        assert statement.message().decode() == made["message"]
        signature = sign(load_key(key_path), statement)
        body = {
            "comment": "checked",
            "decided_at": made["decided_at"],
            "signature": {"key": signature.key, "value": signature.value},
        }
        tampered = client.post(
            "/v1/approvals/r1/pay/approve", headers=lead, json={**body, "comment": "other"}
        )
        assert tampered.status_code == 403
        assert tampered.json()["error"]["code"] == "refused"
        signed = client.post("/v1/approvals/r1/pay/approve", headers=lead, json=body)
        assert signed.status_code == 200, signed.text
        assert signed.json()["answer"]["signature"] == signature.value
    assert finish(store, "r1") == "completed"


def test_the_openapi_document_is_served_and_checked_in(client: TestClient) -> None:
    served = client.get("/v1/openapi.json").json()
    assert served == openapi_document()
    checked_in = json.loads((ROOT / "docs" / "service-openapi.json").read_text())
    assert served == checked_in, "regenerate docs/service-openapi.json (docs/service.md)"
    routes = {route.path for route in client.app.routes}  # type: ignore[attr-defined]
    for path in served["paths"]:
        assert path in routes


def test_the_access_log_is_json_without_tokens(
    client: TestClient, memory: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    store, tokens = memory
    text = token(tokens, store, "alice")
    with caplog.at_level(logging.INFO, logger="charter.service.access"):
        client.get("/v1/runs", headers=_auth(text))
        client.get("/v1/runs", headers=_auth("charter_bad_secret"))
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name.endswith("access")]
    assert [line["status"] for line in lines] == [200, 401]
    assert lines[0]["user"] == "alice"
    assert lines[0]["token"]
    assert all(
        text not in r.getMessage() and "bad_secret" not in r.getMessage() for r in caplog.records
    )
