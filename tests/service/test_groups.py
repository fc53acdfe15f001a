"""Approver groups over HTTP, on every store: a request naming ``group:finance`` is listed
for and answerable by the tenant's members of that group only; everyone else gets a 403
and nothing is recorded; a member removed before answering can no longer answer."""

from __future__ import annotations

from pathlib import Path

from starlette.testclient import TestClient

from charter.adapters.service_store import ServiceStore
from charter.audit.replay import replay_run
from charter.core.events import ApprovalReceived
from charter.service import create_app
from charter.service.backend import ServiceBackend
from tests.service import helpers
from tests.service.helpers import finish, held_run, token

Backend = tuple[ServiceBackend, ServiceStore]

GROUPS = "approver_groups:\n  finance: [alice, bob]\n  ops: [carol]\n"


def _auth(text: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {text}"}


def _answers(store: ServiceBackend, run_id: str) -> list[ApprovalReceived]:
    return [e.kind for e in store.read_events(run_id) if isinstance(e.kind, ApprovalReceived)]


def test_members_of_the_named_group_answer_and_no_one_else(
    backend: Backend, tmp_path: Path
) -> None:
    store, tokens = backend
    helpers.put_tenant(store, GROUPS)
    held_run(store, tmp_path, "g1", approver="group:finance")
    with TestClient(create_app(store, tokens)) as client:
        viewer = _auth(token(tokens, store, "viewer"))
        (item,) = client.get("/v1/approvals?approver=bob", headers=viewer).json()["approvals"]
        assert item["approver"] == "group:finance"
        for outsider in ("carol", "finance", "group:finance", "dave"):
            listed = client.get(f"/v1/approvals?approver={outsider}", headers=viewer).json()
            assert listed == {"approvals": []}, outsider
            refused = client.post(
                "/v1/approvals/g1/pay/approve", headers=_auth(token(tokens, store, outsider))
            )
            assert refused.status_code == 403, (outsider, refused.text)
            assert refused.json()["error"]["code"] == "not_the_approver"
        assert _answers(store, "g1") == []
        answered = client.post(
            "/v1/approvals/g1/pay/approve", headers=_auth(token(tokens, store, "bob"))
        )
        assert answered.status_code == 200, answered.text
    (answer,) = _answers(store, "g1")
    assert answer.user_id == "bob"
    assert finish(store, "g1") == "completed"
    replay = replay_run(store, "g1")  # the request's recorded groups are recomputed
    assert replay.ok, replay.divergences


def test_a_member_removed_before_answering_cannot_answer(backend: Backend, tmp_path: Path) -> None:
    store, tokens = backend
    helpers.put_tenant(store, GROUPS)
    held_run(store, tmp_path, "g2", approver="group:finance")
    # Alice leaves finance; carol joins it after the request was made.
    helpers.put_tenant(store, "approver_groups:\n  finance: [bob, carol]\n")
    with TestClient(create_app(store, tokens)) as client:
        for user in ("alice", "carol"):
            refused = client.post(
                "/v1/approvals/g2/pay/reject", headers=_auth(token(tokens, store, user))
            )
            assert refused.status_code == 403, (user, refused.text)
        assert _answers(store, "g2") == []
        done = client.post(
            "/v1/approvals/g2/pay/reject", headers=_auth(token(tokens, store, "bob"))
        )
        assert done.status_code == 200, done.text
    assert finish(store, "g2") == "failed"
