"""``POST /v1/decisions`` naming a run: the decision recorded in that run's log by the path
of a governed call (the same events, chain and replay), approvals consumed once, scoped
tokens, and refusals that record nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from charter.adapters.service_store import ServiceStore
from charter.audit.replay import replay_run, verify_log
from charter.core.records import Tenant
from charter.service import create_app
from charter.service.backend import ServiceBackend
from charter.service.tokens import issue_token
from tests.service import helpers
from tests.service.helpers import token

Backend = tuple[ServiceBackend, ServiceStore]

_APPROVAL = 'require_approval_for: ["payments.*"]\napprover: finance-lead\n'


def _auth(text: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {text}"}


def _pay(amount: int, **extra: Any) -> dict[str, Any]:
    return {
        "tenant_id": "acme",
        "node_kind": "tool",
        "tool": "payments.send",
        "call": {"to": "ACME-1", "amount": amount},
        "run_id": "svc-1",
        "tools": ["email.send"],
        **extra,
    }


def _types(body: dict[str, Any]) -> list[str]:
    return [event["type"] for event in body["events"]]


def test_a_decision_in_a_run_is_recorded_and_an_approval_covers_one_call(
    backend: Backend,
) -> None:
    store, tokens = backend
    helpers.put_tenant(store, _APPROVAL)
    service = _auth(token(tokens, store, "svc"))
    with TestClient(create_app(store, tokens)) as client:
        held = client.post("/v1/decisions", headers=service, json=_pay(120))
        assert held.status_code == 200, held.text
        body = held.json()
        assert body["decision"] == "hold"
        assert body["approver"] == "finance-lead"
        assert body["run_id"] == "svc-1"
        assert body["node_id"] == "payments.send"
        assert _types(body) == [
            "node_started",
            "agent_tool_invoked",
            "node_gated",
            "tool_approval_required",
        ]
        assert [e.sequence for e in store.read_events("svc-1")][-4:] == [
            e["sequence"] for e in body["events"]
        ]
        # Asked again before an answer: the same request, held again (nothing new opened).
        again = client.post("/v1/decisions", headers=service, json=_pay(120)).json()
        assert again["decision"] == "hold"
        assert again["request_digest"] == body["request_digest"]
        lead = _auth(token(tokens, store, "finance-lead"))
        answered = client.post("/v1/approvals/svc-1/payments.send/approve", headers=lead)
        assert answered.status_code == 200, answered.text
        # Other arguments are another request; the approved one runs once.
        other = client.post("/v1/decisions", headers=service, json=_pay(999)).json()
        assert other["decision"] == "hold"
        assert other["request_digest"] != body["request_digest"]
        client.post("/v1/approvals/svc-1/payments.send/reject", headers=lead)
        # A tool the tenant leaves alone runs (a tool of the session named at creation).
        email = client.post(
            "/v1/decisions",
            headers=service,
            json={**_pay(0), "tool": "email.send", "call": {"template": "paid"}, "tools": []},
        ).json()
        assert email["decision"] == "run"
        assert _types(email) == ["node_started", "agent_tool_invoked", "node_gated"]
    assert verify_log(store, runs=["svc-1"]).problems == ()
    replay = replay_run(store, "svc-1")
    assert replay.ok, replay.divergences
    assert replay.gates >= 4


def test_an_approved_call_runs_once_in_the_run(backend: Backend) -> None:
    store, tokens = backend
    helpers.put_tenant(store, _APPROVAL)
    service = _auth(token(tokens, store, "svc"))
    with TestClient(create_app(store, tokens)) as client:
        client.post("/v1/decisions", headers=service, json=_pay(120))
        lead = _auth(token(tokens, store, "finance-lead"))
        assert client.post("/v1/approvals/svc-1/payments.send/approve", headers=lead).is_success
        ran = client.post("/v1/decisions", headers=service, json=_pay(120)).json()
        assert ran["decision"] == "run"
        assert "approval_consumed" in _types(ran)
        # The approval is used: the same call asks again.
        assert client.post("/v1/decisions", headers=service, json=_pay(120)).json()["decision"] == (
            "hold"
        )
    assert replay_run(store, "svc-1").ok


def test_a_refusal_in_a_run_is_recorded_with_its_rule(backend: Backend) -> None:
    store, tokens = backend
    with TestClient(create_app(store, tokens)) as client:
        body = {
            "tenant_id": "acme",
            "node_kind": "tool",
            "tool": "shell.exec",
            "call": {"cmd": "rm -rf /"},
            "run_id": "svc-2",
        }
        refused = client.post(
            "/v1/decisions", headers=_auth(token(tokens, store, "svc")), json=body
        ).json()
    assert refused["decision"] == "refuse"
    assert (refused["rule"], refused["scope"], refused["pattern"]) == (
        "blocked_tools",
        "tenant",
        "shell.*",
    )
    assert _types(refused)[-1] == "node_failed"
    assert replay_run(store, "svc-2").ok


def test_a_run_that_does_not_govern_the_tool_records_nothing(backend: Backend) -> None:
    store, tokens = backend
    auth = _auth(token(tokens, store, "svc"))
    with TestClient(create_app(store, tokens)) as client:
        first = client.post("/v1/decisions", headers=auth, json=_pay(1, tools=[]))
        assert first.status_code == 200
        before = store.read_events("svc-1")
        other = client.post(
            "/v1/decisions", headers=auth, json={**_pay(1, tools=[]), "tool": "email.send"}
        )
        assert other.status_code == 409, other.text
        assert other.json()["error"]["field"] == "run_id"
        assert "email.send" in other.json()["error"]["message"]
        # A run that is not a governed session (a workflow run) is refused too.
        helpers.held_run(store, Path(helpers.store_dir(store)), "wf-1")
        wf_before = store.read_events("wf-1")
        workflow = client.post("/v1/decisions", headers=auth, json=_pay(1, run_id="wf-1"))
        assert workflow.status_code == 409, workflow.text
        # Of another tenant than the run's: refused.
        store.put_tenant(
            Tenant(tenant_id="other", created_at=store.clock.now(), updated_at=store.clock.now())
        )
        wrong = client.post("/v1/decisions", headers=auth, json=_pay(1, tenant_id="other"))
        assert wrong.status_code == 409, wrong.text
    assert store.read_events("svc-1") == before
    assert store.read_events("wf-1") == wf_before


def test_bad_bodies_with_a_run_name_the_field(backend: Backend) -> None:
    store, tokens = backend
    auth = _auth(token(tokens, store, "svc"))
    cases: list[tuple[dict[str, Any], str]] = [
        (_pay(1, attempt=2), "attempt"),
        (_pay(1, node_id="x"), "node_id"),
        ({**_pay(1), "node_kind": "workflow"}, "node_kind"),
        ({**_pay(1), "tool": None}, "tool"),
        (_pay(1, tools="email.send"), "tools"),
        (_pay(1, run_id=""), "run_id"),
        ({**_pay(1), "run_id": None, "tools": ["x"]}, "tools"),
        (_pay(1, tenant_id="nobody"), "tenant_id"),
    ]
    with TestClient(create_app(store, tokens)) as client:
        for body, field in cases:
            response = client.post("/v1/decisions", headers=auth, json=body)
            assert response.status_code in (400, 404), (body, response.text)
            assert response.json()["error"]["field"] == field, (body, response.json())
    assert store.get_execution("svc-1") is None


def test_a_token_scoped_to_another_tenant_records_nothing(backend: Backend) -> None:
    store, tokens = backend
    now = store.clock.now()
    store.put_tenant(Tenant(tenant_id="other", created_at=now, updated_at=now))
    scoped, _ = issue_token(tokens, "svc", now=now, tenant_id="other")
    own, _ = issue_token(tokens, "svc", now=now, tenant_id="acme")
    with TestClient(create_app(store, tokens)) as client:
        refused = client.post("/v1/decisions", headers=_auth(scoped), json=_pay(5))
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["field"] == "tenant_id"
        assert store.get_execution("svc-1") is None
        assert client.post("/v1/decisions", headers=_auth(own), json=_pay(5)).status_code == 200
