"""Attacks on Charter's authority, and what stops each (docs/semantics.md §2.5 and §5).

Each test is one attack, tried the way an attacker would: through the command line or the
store's public API, or by editing the database directly. The defence named in each
docstring is what makes it fail.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from charter.adapters.chain import GENESIS, event_hash
from charter.adapters.keys import load_key, new_key, sign
from charter.adapters.sqlite import SqliteStore
from charter.audit.replay import replay_run, verify_log
from charter.cli import EXIT_APPROVAL, EXIT_BLOCKED, EXIT_OK, EXIT_USAGE, main
from charter.core.answers import approval_statement, stamp
from charter.core.approvals import ApprovalRefused
from charter.core.commit import ApprovalRow, Head
from charter.core.events import ApprovalDecision, ApprovalReceived

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
REFUND = EXAMPLES / "refund.yaml"
RUN = "refund-1"
NODE = "issue_refund"


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    made = {}
    for name in ("finance-lead", "intern"):
        path = tmp_path / f"{name}.key"
        made[name] = (path, new_key(path))
    return made


def _tenant(tmp_path: Path, keys: dict[str, tuple[Path, str]], *, named: bool = True) -> Path:
    path = tmp_path / "tenant.yaml"
    approvers = f'approvers: {{finance-lead: ["{keys["finance-lead"][1]}"]}}\n' if named else ""
    path.write_text(
        'blocked_tools: ["db.drop_*"]\n'
        'require_approval_for: ["payments.*"]\n'
        "approver: finance-lead\n"
        'model_allowlist: ["claude-*"]\n' + approvers
    )
    return path


def _held(tmp_path: Path, tenant: Path) -> Path:
    db = tmp_path / "charter.db"
    args = ["run", str(REFUND), "--tenant-policy", str(tenant), "--run-id", RUN]
    assert main([*args, "--db", str(db), "--quiet"]) == EXIT_APPROVAL
    return db


def _answers(db: Path) -> list[ApprovalReceived]:
    store = SqliteStore(db)
    try:
        events = store.read_events(RUN)
    finally:
        store.close()
    return [event.kind for event in events if isinstance(event.kind, ApprovalReceived)]


def _approve(db: Path, user: str, *extra: str) -> int:
    return main(["approve", RUN, NODE, "--user", user, "--db", str(db), "--quiet", *extra])


# ── the tenant is the authority ───────────────────────────────────────────────────────


def test_a_workflow_that_relaxes_a_tenant_block_is_still_blocked(
    tmp_path: Path, keys: dict[str, tuple[Path, str]]
) -> None:
    """Attack: the workflow asks only for approval of a tool the tenant blocks, with any
    approver. Defence: tenant rules are final; a lower scope may not relax them."""
    workflow = tmp_path / "wipe.yaml"
    workflow.write_text(
        "workflow_id: wipe\nversion: '1'\ntenant_id: acme\nstart_node: drop\n"
        "tools: {db.drop_prod: {idempotent: false, executor: echo}}\n"
        "policy: {require_approval_for: ['db.drop_*'], approver: '*'}\n"
        "nodes: {drop: {kind: {type: tool, tool_ref: db.drop_prod}}}\nedges: []\n"
    )
    db = tmp_path / "charter.db"
    tenant = _tenant(tmp_path, keys)
    args = ["run", str(workflow), "--tenant-policy", str(tenant), "--db", str(db), "--quiet"]
    assert main(args) == EXIT_BLOCKED


def test_a_workflow_cannot_replace_the_tenants_approver(
    tmp_path: Path, keys: dict[str, tuple[Path, str]]
) -> None:
    """Attack: a workflow names '*' as the approver of a tool the tenant gives to the
    finance lead, then an intern answers. Defence: the tenant's approver stays."""
    workflow = tmp_path / "refund-any.yaml"
    workflow.write_text(REFUND.read_text().replace("approver: finance-lead", "approver: '*'", 1))
    db = tmp_path / "charter.db"
    tenant = _tenant(tmp_path, keys, named=False)
    args = ["run", str(workflow), "--tenant-policy", str(tenant), "--run-id", RUN]
    assert main([*args, "--db", str(db), "--quiet"]) == EXIT_APPROVAL
    assert _approve(db, "intern") == EXIT_USAGE
    assert _answers(db) == []


# ── approvals prove who answered ──────────────────────────────────────────────────────


def test_an_answer_without_the_named_key_is_refused_and_nothing_recorded(
    tmp_path: Path, keys: dict[str, tuple[Path, str]]
) -> None:
    """Attack: type the finance lead's name. Defence: the tenant names her key, and an
    answer must carry her signature."""
    db = _held(tmp_path, _tenant(tmp_path, keys))
    assert _approve(db, "finance-lead") == EXIT_USAGE
    assert _answers(db) == []
    assert _approve(db, "finance-lead", "--key", str(keys["finance-lead"][0])) == EXIT_OK
    (answer,) = _answers(db)
    assert answer.key == keys["finance-lead"][1]
    assert answer.signature
    assert isinstance(answer.recorded_by, dict)
    assert "uid" in answer.recorded_by


def test_an_answer_signed_with_another_key_is_refused(
    tmp_path: Path, keys: dict[str, tuple[Path, str]]
) -> None:
    """Attack: the intern signs with her own key as the finance lead. Defence: only a key
    the tenant names for that approver counts."""
    db = _held(tmp_path, _tenant(tmp_path, keys))
    assert _approve(db, "finance-lead", "--key", str(keys["intern"][0])) == EXIT_USAGE
    assert _answers(db) == []


def _statement_for(db: Path, **changes: object) -> tuple[SqliteStore, object]:
    store = SqliteStore(db)
    execution = store.get_execution(RUN)
    assert execution is not None
    (pending,) = store.pending_approvals(execution_id=RUN)
    tenant = store.get_tenant(execution.tenant_id)
    assert tenant is not None
    assert tenant.policy is not None
    from charter.core.approvals import ApprovalRequest, Pending

    request = ApprovalRequest(
        node_id=NODE,
        tool_name=pending.tool_name,
        approver=pending.approver,
        context=pending.context,
        request_digest=str(changes.get("request_digest", pending.request_digest)),
        attempt=int(str(changes.get("attempt", pending.attempt))),
        sequence=pending.sequence,
    )
    head = Head(
        execution_id=RUN, tenant_id=execution.tenant_id, status=execution.status, last_sequence=0
    )
    statement = approval_statement(
        head,
        ApprovalRow(status=Pending(request), requested_at=pending.requested_at),
        node_id=NODE,
        user_id="finance-lead",
        decision=ApprovalDecision.APPROVED,
        comment=None,
        decided_at=str(changes.get("decided_at", stamp(pending.requested_at))),
        policy_digest=tenant.policy.digest,
    )
    return store, statement


@pytest.mark.parametrize(
    "change", [{"request_digest": "0" * 64}, {"attempt": 7}], ids=["other-call", "other-attempt"]
)
def test_a_signature_over_another_call_or_attempt_is_refused(
    tmp_path: Path, keys: dict[str, tuple[Path, str]], change: dict[str, object]
) -> None:
    """Attack: present a genuine signature made over a different call (its arguments'
    digest) or attempt. Defence: the statement signed names exactly the request answered."""
    db = _held(tmp_path, _tenant(tmp_path, keys))
    store, statement = _statement_for(db, **change)
    try:
        signature = sign(load_key(keys["finance-lead"][0]), statement)  # type: ignore[arg-type]
        answer = store.decide_approval(
            RUN,
            NODE,
            user_id="finance-lead",
            decision=ApprovalDecision.APPROVED,
            signature=signature,
            decided_at=statement.decided_at,  # type: ignore[attr-defined]
        )
    finally:
        store.close()
    assert isinstance(answer, ApprovalRefused)
    assert "does not match" in answer.reason
    assert _answers(db) == []


def test_a_signature_replayed_on_a_second_request_is_refused(
    tmp_path: Path, keys: dict[str, tuple[Path, str]]
) -> None:
    """Attack: keep the finance lead's signed answer to one run and present it for
    another run's request. Defence: the statement names the run, node and request."""
    db = _held(tmp_path, _tenant(tmp_path, keys))
    store, statement = _statement_for(db)
    signature = sign(load_key(keys["finance-lead"][0]), statement)  # type: ignore[arg-type]
    store.close()
    assert main(["run", str(REFUND), "--run-id", "refund-2", "--db", str(db), "--quiet"]) == (
        EXIT_APPROVAL
    )
    store = SqliteStore(db)
    try:
        answer = store.decide_approval(
            "refund-2",
            NODE,
            user_id="finance-lead",
            decision=ApprovalDecision.APPROVED,
            signature=signature,
            decided_at=statement.decided_at,  # type: ignore[attr-defined]
        )
    finally:
        store.close()
    assert isinstance(answer, ApprovalRefused)


def test_an_approval_edited_in_sql_with_the_chain_rehashed_is_caught_by_replay(
    tmp_path: Path, keys: dict[str, tuple[Path, str]]
) -> None:
    """Attack: someone with write access to the database changes who approved and
    re-hashes the chain so `audit verify` passes. Defence: replay checks the signature
    against the keys the tenant named (no anchor needed)."""
    db = _held(tmp_path, _tenant(tmp_path, keys))
    assert _approve(db, "finance-lead", "--key", str(keys["finance-lead"][0])) == EXIT_OK
    conn = sqlite3.connect(db)
    with conn:
        rows = conn.execute(
            "SELECT sequence, event_id, kind_json, created_at FROM events "
            "WHERE execution_id = ? ORDER BY sequence",
            (RUN,),
        ).fetchall()
        prev = GENESIS
        for sequence, event_id, text, created_at in rows:
            if '"approval_received"' in text:
                text = text.replace('"comment":null,', "").replace(
                    '"decision":"approved"', '"comment":"no objection","decision":"approved"'
                )
            this = event_hash(
                execution_id=RUN,
                sequence=sequence,
                event_id=event_id,
                created_at=created_at,
                kind_text=text,
                prev_hash=prev,
            )
            conn.execute(
                "UPDATE events SET kind_json = ?, prev_hash = ?, hash = ? "
                "WHERE execution_id = ? AND sequence = ?",
                (text, prev, this, RUN, sequence),
            )
            prev = this
    conn.close()
    store = SqliteStore(db)
    try:
        assert verify_log(store).ok  # the chain alone cannot see it
        report = replay_run(store, RUN)
    finally:
        store.close()
    assert not report.ok
    assert any("signature does not match" in d.problem for d in report.divergences)


def test_a_removed_key_stops_approving_but_earlier_answers_still_verify(
    tmp_path: Path, keys: dict[str, tuple[Path, str]]
) -> None:
    """Attack: a key is compromised and removed from the tenant. Defence: it no longer
    approves new requests; answers it made before stay verifiable by their policy digest."""
    tenant = _tenant(tmp_path, keys)
    db = _held(tmp_path, tenant)
    lead = str(keys["finance-lead"][0])
    assert _approve(db, "finance-lead", "--key", lead) == EXIT_OK
    rotated = tmp_path / "rotated.key"
    fresh = new_key(rotated)
    tenant.write_text(tenant.read_text().replace(keys["finance-lead"][1], fresh))
    args = ["run", str(REFUND), "--tenant-policy", str(tenant), "--run-id", "refund-2"]
    assert main([*args, "--db", str(db), "--quiet"]) == EXIT_APPROVAL
    old_key = ["approve", "refund-2", NODE, "--user", "finance-lead", "--key", lead]
    assert main([*old_key, "--db", str(db), "--quiet"]) == EXIT_USAGE
    new = ["approve", "refund-2", NODE, "--user", "finance-lead", "--key", str(rotated)]
    assert main([*new, "--db", str(db), "--quiet"]) == EXIT_OK
    store = SqliteStore(db)
    try:
        assert replay_run(store, RUN).ok
        assert replay_run(store, "refund-2").ok
    finally:
        store.close()


# ── anchors: what the chain alone cannot see ──────────────────────────────────────────


def test_a_signed_anchor_catches_a_truncated_tail_and_refuses_its_own_forgery(
    tmp_path: Path, keys: dict[str, tuple[Path, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """Attack: delete the last events of a run (the chain before them still holds), and
    edit the anchor to match. Defence: an anchor signed by an auditor's key, kept where the
    database's writers cannot reach, verified with that key required."""
    db = _held(tmp_path, _tenant(tmp_path, keys))
    assert _approve(db, "finance-lead", "--key", str(keys["finance-lead"][0])) == EXIT_OK
    auditor = tmp_path / "auditor.key"
    auditor_public = new_key(auditor)
    anchor = tmp_path / "anchor.json"
    assert main(
        ["audit", "anchor", "--db", str(db), "--key", str(auditor), "--out", str(anchor)]
    ) == (EXIT_OK)
    verify = ["audit", "verify", "--db", str(db), "--anchor", str(anchor)]
    assert main([*verify, "--anchor-key", auditor_public]) == EXIT_OK
    capsys.readouterr()
    assert main(["audit", "verify", "--db", str(db)]) == EXIT_OK
    assert "without an anchor" in capsys.readouterr().out
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(
            "DELETE FROM events WHERE execution_id = ? AND sequence = "
            "(SELECT max(sequence) FROM events WHERE execution_id = ?)",
            (RUN, RUN),
        )
    conn.close()
    assert main(["audit", "verify", "--db", str(db)]) == EXIT_OK  # the chain alone holds
    assert main([*verify, "--anchor-key", auditor_public]) == 6
    data = json.loads(anchor.read_text())
    data["runs"][RUN]["sequence"] -= 1
    anchor.write_text(json.dumps(data))
    assert main([*verify, "--anchor-key", auditor_public]) == EXIT_USAGE
    assert "altered after signing" in capsys.readouterr().err
