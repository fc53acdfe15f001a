"""Resolutions of lost outcomes over HTTP: the list, who may answer (the tenant's
``resolver``, 403 and nothing recorded otherwise), signed tenants, repeats and conflicts,
bad bodies, tenant-scoped tokens — on every store."""

from __future__ import annotations

from pathlib import Path

from starlette.testclient import TestClient

from charter.adapters.keys import load_key, new_key, sign
from charter.adapters.service_store import ServiceStore
from charter.core.events import OutcomeResolved
from charter.core.records import Tenant
from charter.core.signing import Statement
from charter.service import create_app
from charter.service.backend import ServiceBackend
from charter.service.tokens import issue_token
from tests.service import helpers
from tests.service.helpers import finish, lost_run, token

Backend = tuple[ServiceBackend, ServiceStore]


def _auth(text: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {text}"}


def _resolved(store: ServiceBackend, run_id: str) -> list[OutcomeResolved]:
    return [e.kind for e in store.read_events(run_id) if isinstance(e.kind, OutcomeResolved)]


def test_only_the_resolver_resolves_and_the_run_continues(backend: Backend, tmp_path: Path) -> None:
    store, tokens = backend
    helpers.put_tenant(store, "resolver: ops-lead\n")
    lost_run(store, tmp_path, "l1", args='{amount: 5, memo: "<script>alert(1)</script>"}')
    ops = _auth(token(tokens, store, "ops-lead"))
    bob = _auth(token(tokens, store, "bob"))
    with TestClient(create_app(store, tokens)) as client:
        listed = client.get("/v1/resolutions", headers=ops).json()["resolutions"]
        assert [(r["run_id"], r["node_id"], r["tool"]) for r in listed] == [
            ("l1", "post", "ledger.post")
        ]
        (item,) = listed
        assert item["arguments"] == {"amount": 5, "memo": "<script>alert(1)</script>"}
        assert item["resolver"] == "ops-lead"
        assert item["idempotency_key"]
        assert item["resolutions"] == ["succeeded", "failed", "retry"]
        assert client.get("/v1/resolutions?resolver=bob", headers=ops).json() == {"resolutions": []}
        assert (
            len(client.get("/v1/resolutions?resolver=ops-lead", headers=bob).json()["resolutions"])
            == 1
        )
        refused = client.post(
            "/v1/resolutions/l1/post", headers=bob, json={"resolution": "succeeded"}
        )
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "not_the_resolver"
        assert _resolved(store, "l1") == []
        body = {"resolution": "succeeded", "output": {"posted": True}, "comment": "seen it"}
        done = client.post("/v1/resolutions/l1/post", headers=ops, json=body)
        assert done.status_code == 200, done.text
        assert done.json()["answer"]["user_id"] == "ops-lead"
        assert done.json()["answer"]["recorded_by"]["via"] == "charter serve"
        again = client.post("/v1/resolutions/l1/post", headers=ops, json=body)
        assert again.status_code == 200
        assert again.json()["repeated"] is True
        other = client.post("/v1/resolutions/l1/post", headers=ops, json={"resolution": "retry"})
        assert other.status_code == 409
        assert other.json()["error"]["code"] == "already_answered"
        assert client.get("/v1/resolutions", headers=ops).json() == {"resolutions": []}
    (answer,) = _resolved(store, "l1")
    assert (answer.resolution, answer.output, answer.user_id) == (
        "succeeded",
        {"posted": True},
        "ops-lead",
    )
    assert finish(store, "l1") == "completed"


def test_a_tenant_with_keys_needs_a_signed_resolution(backend: Backend, tmp_path: Path) -> None:
    store, tokens = backend
    key_path = tmp_path / "ops.key"
    public = new_key(key_path)
    helpers.put_tenant(store, f'approvers:\n  ops: ["{public}"]\n')
    lost_run(store, tmp_path, "l2")
    ops = _auth(token(tokens, store, "ops"))
    with TestClient(create_app(store, tokens)) as client:
        listed = client.get("/v1/resolutions?resolver=ops", headers=ops).json()["resolutions"]
        assert listed[0]["signature_required"] is True
        unsigned = client.post(
            "/v1/resolutions/l2/post", headers=ops, json={"resolution": "failed"}
        )
        assert unsigned.status_code == 403
        assert unsigned.json()["error"]["code"] == "signature_required"
        assert "--key FILE" in unsigned.json()["error"]["message"]
        assert _resolved(store, "l2") == []
        made = client.get(
            "/v1/resolutions/l2/post/statement?resolution=failed&comment=no", headers=ops
        ).json()
        statement = Statement(**{k: v for k, v in made["statement"].items() if k != "format"})
        assert statement.message().decode() == made["message"]
        signature = sign(load_key(key_path), statement)
        body = {
            "resolution": "failed",
            "reason": "the bank says no",
            "comment": "no",
            "decided_at": made["decided_at"],
            "signature": {"key": signature.key, "value": signature.value},
        }
        tampered = client.post(
            "/v1/resolutions/l2/post",
            headers=ops,
            json={**body, "resolution": "retry", "reason": None},
        )
        assert tampered.status_code == 403, tampered.text
        assert _resolved(store, "l2") == []
        signed = client.post("/v1/resolutions/l2/post", headers=ops, json=body)
        assert signed.status_code == 200, signed.text
        assert signed.json()["answer"]["signature"] == signature.value
    assert finish(store, "l2") == "failed"


_BAD: list[tuple[dict[str, object], str]] = [
    ({}, "resolution"),
    ({"resolution": "maybe"}, "resolution"),
    ({"resolution": "failed", "output": 1}, "output"),
    ({"resolution": "retry", "reason": "x"}, "reason"),
    ({"resolution": "retry", "user_id": "boss"}, "user_id"),
    ({"resolution": "retry", "comment": 3}, "comment"),
]


def test_bad_resolution_bodies_name_the_field(memory: Backend, tmp_path: Path) -> None:
    store, tokens = memory
    lost_run(store, tmp_path, "l3")
    with TestClient(create_app(store, tokens)) as client:
        for body, field in _BAD:
            response = client.post(
                "/v1/resolutions/l3/post", headers=_auth(token(tokens, store, "ops")), json=body
            )
            assert response.status_code == 400, (body, response.text)
            assert response.json()["error"]["field"] == field, body
    assert _resolved(store, "l3") == []


def test_a_token_of_another_tenant_neither_sees_nor_resolves(
    backend: Backend, tmp_path: Path
) -> None:
    store, tokens = backend
    now = store.clock.now()
    store.put_tenant(Tenant(tenant_id="other", created_at=now, updated_at=now))
    lost_run(store, tmp_path, "l4")
    scoped, _ = issue_token(tokens, "ops", now=now, tenant_id="other")
    own, _ = issue_token(tokens, "ops", now=now, tenant_id="acme")
    with TestClient(create_app(store, tokens)) as client:
        assert client.get("/v1/resolutions", headers=_auth(scoped)).json() == {"resolutions": []}
        hidden = client.post(
            "/v1/resolutions/l4/post", headers=_auth(scoped), json={"resolution": "retry"}
        )
        assert hidden.status_code == 404
        assert (
            client.get(
                "/v1/resolutions/l4/post/statement?resolution=retry", headers=_auth(scoped)
            ).status_code
            == 404
        )
        assert _resolved(store, "l4") == []
        assert len(client.get("/v1/resolutions", headers=_auth(own)).json()["resolutions"]) == 1
        mine = client.post(
            "/v1/resolutions/l4/post", headers=_auth(own), json={"resolution": "retry"}
        )
        assert mine.status_code == 200, mine.text
