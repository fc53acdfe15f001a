"""Tokens scoped to a tenant (``charter tokens new --tenant``), on every store: such a token
sees and answers its tenant's runs and approvals only (others' are 404, as if absent; a
filter or decision naming another tenant is 403), and nothing is recorded for another
tenant; an unscoped token keeps seeing every tenant."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from charter.adapters.service_store import ServiceStore
from charter.cli import main
from charter.core.events import ApprovalReceived
from charter.core.records import Tenant
from charter.service import create_app
from charter.service.backend import ServiceBackend
from charter.service.context import COOKIE
from charter.service.tokens import issue_token
from tests.service.helpers import held_run, token

Backend = tuple[ServiceBackend, ServiceStore]


def _auth(text: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {text}"}


def _two_tenants(store: ServiceBackend, tmp_path: Path) -> None:
    now = store.clock.now()
    store.put_tenant(Tenant(tenant_id="globex", created_at=now, updated_at=now))
    held_run(store, tmp_path, "a1")
    held_run(store, tmp_path, "g1", tenant="globex")


def _answers(store: ServiceBackend, run_id: str) -> list[ApprovalReceived]:
    return [e.kind for e in store.read_events(run_id) if isinstance(e.kind, ApprovalReceived)]


def test_a_scoped_token_sees_and_answers_its_tenant_only(backend: Backend, tmp_path: Path) -> None:
    store, tokens = backend
    _two_tenants(store, tmp_path)
    scoped, _ = issue_token(tokens, "finance-lead", now=store.clock.now(), tenant_id="acme")
    auth = _auth(scoped)
    everyone = _auth(token(tokens, store, "finance-lead"))
    with TestClient(create_app(store, tokens)) as client:
        runs = client.get("/v1/runs", headers=auth).json()["runs"]
        assert [r["run_id"] for r in runs] == ["a1"]
        assert client.get("/v1/runs?tenant=acme", headers=auth).status_code == 200
        other = client.get("/v1/runs?tenant=globex", headers=auth)
        assert other.status_code == 403
        assert other.json()["error"]["field"] == "tenant"
        assert client.get("/v1/runs/g1", headers=auth).status_code == 404
        assert client.get("/v1/runs/g1/events", headers=auth).status_code == 404
        assert client.get("/v1/runs/a1", headers=auth).status_code == 200
        approvals = client.get("/v1/approvals", headers=auth).json()["approvals"]
        assert [a["run_id"] for a in approvals] == ["a1"]
        assert client.get("/v1/approvals?tenant=globex", headers=auth).status_code == 403
        statement = client.get("/v1/approvals/g1/pay/statement?decision=approved", headers=auth)
        assert statement.status_code == 404
        hidden = client.post("/v1/approvals/g1/pay/approve", headers=auth)
        assert hidden.status_code == 404, hidden.text
        assert hidden.json()["error"]["message"] == "no run 'g1'"
        assert _answers(store, "g1") == []
        assert client.post("/v1/approvals/a1/pay/approve", headers=auth).status_code == 200
        # An unscoped token keeps today's behaviour: every tenant.
        every = client.get("/v1/runs", headers=everyone).json()["runs"]
        assert sorted(r["run_id"] for r in every) == ["a1", "g1"]
        assert client.post("/v1/approvals/g1/pay/approve", headers=everyone).status_code == 200


def test_the_page_of_a_scoped_token_shows_its_tenant_only(memory: Backend, tmp_path: Path) -> None:
    store, tokens = memory
    _two_tenants(store, tmp_path)
    scoped, _ = issue_token(tokens, "finance-lead", now=store.clock.now(), tenant_id="globex")
    with TestClient(create_app(store, tokens)) as client:
        client.cookies.set(COOKIE, scoped)
        pending = client.get("/ui/pending").text
        assert 'data-run="g1"' in pending
        assert 'data-run="a1"' not in pending
        assert client.get("/runs/a1").status_code == 404
        assert client.get("/runs/g1").status_code == 200
        listed = client.get("/runs").text
        assert "g1" in listed
        assert "/runs/a1" not in listed


def test_tokens_new_with_a_tenant(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "charter.db")
    assert main(["tokens", "new", "--user", "ops", "--tenant", "acme", "--db", db]) == 2
    assert "--tenant" in capsys.readouterr().err
    policy = tmp_path / "acme.yaml"
    policy.write_text("blocked_tools: ['shell.*']\n")
    assert main(["tenant", "acme", "--policy", str(policy), "--db", db]) == 0
    capsys.readouterr()
    assert main(["tokens", "new", "--user", "ops", "--tenant", "acme", "--db", db]) == 0
    text, note = capsys.readouterr().out.splitlines()
    assert text.startswith("charter_")
    assert "of tenant acme" in note
    assert main(["tokens", "new", "--user", "root", "--db", db]) == 0
    capsys.readouterr()
    assert main(["tokens", "list", "--db", db]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert any(" ops  acme  " in row for row in rows), rows
    assert any(" root  *  " in row for row in rows), rows
