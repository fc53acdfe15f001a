"""The tenant is the authority (docs/semantics.md §2.5): a tenant policy file's rules are
final unless the file opts into upstream's most-specific combining, and every key of a tenant
file takes effect or is refused.

Each scenario goes through the file loader and the gate the worker calls (the chain built by
`policy_chain` as `node_gate_request` builds it), and the issue's own scenario runs end to end
on SQLite through the worker and the store.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from charter.adapters.codec import dumps, loads
from charter.adapters.files import load_policy_file, load_policy_layer, load_workflow_file
from charter.adapters.sqlite import SqliteStore
from charter.cli import main
from charter.core.errors import InvalidInput
from charter.core.events import NodeGated, ToolApprovalRequired
from charter.core.gate import GateRequest, GateResult, Outcome, gate_node
from charter.core.policy import (
    Allow,
    Block,
    EvaluationContext,
    Overruled,
    PolicyEvaluator,
    PolicyRule,
    PolicyScope,
    PolicySet,
    RequireApproval,
    policy_chain,
)
from charter.core.records import Tenant
from charter.worker import Worker, drive, start_run

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DROP = EvaluationContext("drop", "tool", tool_name="db.drop_table")
REFUND = EvaluationContext("refund", "tool", tool_name="payments.refund")


def tenant_file(tmp_path: Path, text: str, name: str = "tenant.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def tenant(tmp_path: Path, text: str) -> PolicySet:
    return load_policy_layer(tenant_file(tmp_path, text), PolicyScope.TENANT)


def gate(
    ctx: EvaluationContext,
    tenant_policy: PolicySet | None,
    workflow: PolicySet | None = None,
    node: PolicySet | None = None,
) -> GateResult:
    """The gate as the worker calls it: the chain `node_gate_request` builds."""
    request = GateRequest(
        context=ctx, policies=policy_chain(tenant_policy, workflow, node), now=NOW
    )
    return gate_node(request)


def gated(result: GateResult) -> NodeGated:
    first = result.events[0]
    assert isinstance(first, NodeGated)
    return first


# ── a tenant file is final by default ──────────────────────────────────────────────────


def test_a_tenant_file_is_final_by_default(tmp_path: Path) -> None:
    policy = tenant(tmp_path, "blocked_tools: ['db.drop_*']\n")
    assert policy.final is True
    layered = tenant(tmp_path, "tenant: {blocked_tools: ['db.drop_*']}\n")
    assert layered.final is True
    assert layered == policy


def test_a_workflow_relaxing_a_tenant_block_is_still_blocked(tmp_path: Path) -> None:
    acme = tenant(tmp_path, "blocked_tools: ['db.drop_*']\n")
    relax = PolicySet(require_approval_for=["db.drop_*"], approver="*")
    result = gate(DROP, acme, workflow=relax)
    assert result.outcome is Outcome.FAIL
    record = gated(result)
    assert (record.policy_decision, record.policy_scope, record.policy_pattern) == (
        "block",
        "tenant",
        "db.drop_*",
    )
    assert record.overruled == {
        "scope": "workflow",
        "rule": "require_approval_for",
        "pattern": "db.drop_*",
        "decision": "require_approval",
        "approver": "*",
    }
    assert result.reason == (
        "tool 'db.drop_table' matches blocked pattern 'db.drop_*' (final tenant rule: the "
        "workflow rule require_approval_for 'db.drop_*' may not relax it)"
    )
    assert record.policies == [{"scope": "tenant", "digest": acme.digest, "final": True},
                               {"scope": "workflow", "digest": relax.digest}]  # fmt: skip
    # The same from the node scope, and from both lower scopes at once.
    assert gate(DROP, acme, node=relax).outcome is Outcome.FAIL
    assert gate(DROP, acme, workflow=relax, node=relax).outcome is Outcome.FAIL


def test_a_workflow_replacing_the_tenant_approver_still_needs_the_tenant_approver(
    tmp_path: Path,
) -> None:
    acme = tenant(tmp_path, "require_approval_for: ['payments.*']\napprover: finance-lead\n")
    for lower in ("*", "bob"):
        relax = PolicySet(require_approval_for=["payments.refund"], approver=lower)
        result = gate(REFUND, acme, workflow=relax)
        assert result.outcome is Outcome.HOLD
        ask = result.events[-1]
        assert isinstance(ask, ToolApprovalRequired)
        assert ask.approver == "finance-lead"
        record = gated(result)
        assert (record.policy_scope, record.policy_pattern) == ("tenant", "payments.*")
        assert isinstance(record.overruled, dict)
        assert (record.overruled["scope"], record.overruled["approver"]) == ("workflow", lower)
        assert result.reason is not None
        assert f"may not replace its approver 'finance-lead' with '{lower}'" in result.reason
    # A lower rule naming the same approver changes nothing and overrules nothing.
    same = PolicySet(require_approval_for=["payments.refund"], approver="finance-lead")
    result = gate(REFUND, acme, node=same)
    assert result.policy.decision == RequireApproval("finance-lead")
    assert gated(result).overruled is None


def test_a_lower_scope_may_turn_a_tenant_approval_into_a_block(tmp_path: Path) -> None:
    acme = tenant(tmp_path, "require_approval_for: ['payments.*']\n")
    result = gate(REFUND, acme, node=PolicySet(blocked_tools=["payments.refund"]))
    assert result.outcome is Outcome.FAIL
    assert (gated(result).policy_scope, gated(result).overruled) == ("node", None)


def test_a_workflow_adding_a_block_adds_it(tmp_path: Path) -> None:
    acme = tenant(tmp_path, "blocked_tools: ['shell.*']\n")
    stricter = PolicySet(blocked_tools=["payments.*"])
    result = gate(REFUND, acme, workflow=stricter)
    assert result.outcome is Outcome.FAIL
    assert (gated(result).policy_scope, gated(result).overruled) == ("workflow", None)
    # and a workflow adding an approval requirement adds it
    result = gate(REFUND, acme, workflow=PolicySet(require_approval_for=["payments.*"]))
    assert result.outcome is Outcome.HOLD


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("claude-haiku-4", Allow()),  # in both allowlists
        ("claude-opus-4", "workflow"),  # the tenant allows it, the workflow narrowed it out
        ("gpt-4o", "tenant"),  # the workflow allows it, the tenant does not: still refused
    ],
)
def test_a_lower_model_allowlist_only_narrows_the_tenant_one(
    tmp_path: Path, model: str, expected: object
) -> None:
    acme = tenant(tmp_path, "model_allowlist: ['claude-*']\n")
    narrower = PolicySet(model_allowlist=["claude-haiku-*", "gpt-*"])
    verdict = PolicyEvaluator().explain(
        EvaluationContext("m", "model", model_ref=model), policy_chain(acme, narrower)
    )
    if expected == Allow():
        assert verdict.decision == Allow()
        assert verdict.overruled is None
        return
    assert isinstance(verdict.decision, Block)
    assert verdict.scope is PolicyScope(expected)
    if expected == "tenant":
        assert verdict.overruled == Overruled(
            decision=Allow(),
            scope=PolicyScope.WORKFLOW,
            rule=PolicyRule.MODEL_ALLOWLIST,
            pattern="gpt-*",
            layer=1,
        )


def test_combining_most_specific_restores_upstream(tmp_path: Path) -> None:
    acme = tenant(tmp_path, "blocked_tools: ['db.drop_*']\ncombining: most-specific\n")
    assert acme.final is None
    assert acme == PolicySet(blocked_tools=["db.drop_*"])
    relax = PolicySet(require_approval_for=["db.drop_*"], approver="*")
    result = gate(DROP, acme, workflow=relax)
    assert result.outcome is Outcome.HOLD
    record = gated(result)
    assert (record.policy_scope, record.overruled) == ("workflow", None)
    assert record.policies == [{"scope": "tenant", "digest": acme.digest},
                               {"scope": "workflow", "digest": relax.digest}]  # fmt: skip
    # In a layered file the tenant layer says it inside itself; `final` is accepted too.
    layered = tenant(tmp_path, "tenant: {combining: most-specific, blocked_tools: [a]}\n")
    assert layered.final is None
    explicit = tenant(tmp_path, "blocked_tools: [a]\ncombining: final\n")
    assert explicit.final is True


def test_layered_files_report_the_tenant_combining(tmp_path: Path) -> None:
    final = load_policy_file(
        tenant_file(tmp_path, "tenant: {blocked_tools: [a]}\nnode: {blocked_tools: [b]}\n")
    )
    assert final.tenant_combining == "final"
    upstream = load_policy_file(
        tenant_file(tmp_path, "tenant: {combining: most-specific, blocked_tools: [a]}\n")
    )
    assert upstream.tenant_combining == "most-specific"
    assert (
        load_policy_file(tenant_file(tmp_path, "node: {blocked_tools: [b]}\n")).tenant_combining
        is None
    )


# ── every key of a tenant file takes effect or is refused ──────────────────────────────


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        ("blocked_tools: [a]\ncombinig: final\n", "combinig", "unknown key"),
        ("blocked_tools: [a]\nfinal: true\n", "final", "unknown key"),
        ("blocked_tools: [a]\ncombining: deny-overrides\n", "combining",
         "a tenant's rules are final by default"),
        ("blocked_tools: [a]\ncombining: strictest\n", "combining",
         "expected final or most-specific"),
        ("tenant: {blocked_tools: [a], combining: deny-overrides}\n", "tenant.combining",
         "a tenant's rules are final by default"),
        ("tenant: {blocked_tools: [a], approverz: [x]}\n", "tenant.approverz",
         "unknown policy key"),
        ("tenant: {blocked_tools: [a]}\ncombining: deny-overrides\n", "combining",
         "would be ignored"),
        ("tenant: {blocked_tools: [a]}\nworkflow: {blocked_tools: [b]}\n", "workflow",
         "would be ignored"),
        ("workflow: {blocked_tools: [b]}\n", "workflow", "would be ignored"),
    ],
    ids=["misspelt-key", "final-key", "deny-overrides", "unknown-mode",
         "layered-deny-overrides", "layered-unknown-key", "top-level-combining",
         "other-layer", "no-tenant-layer"],
)  # fmt: skip
def test_a_tenant_file_key_that_would_not_take_effect_is_refused(
    tmp_path: Path, text: str, where: str, problem: str
) -> None:
    path = tenant_file(tmp_path, text)
    with pytest.raises(InvalidInput) as caught:
        load_policy_layer(path, PolicyScope.TENANT)
    message = str(caught.value)
    assert message.startswith(f"{path}:")
    assert f"{path}: {where}:" in message
    assert problem in message


def test_the_examples_tenant_file_is_final() -> None:
    examples = Path(__file__).resolve().parent.parent / "examples"
    acme = load_policy_layer(examples / "tenant-acme.yaml", PolicyScope.TENANT)
    assert acme.final is True
    assert load_policy_file(examples / "policy.yaml").tenant_combining == "most-specific"
    # Picking a workflow or node layer out of a layered file is still allowed (what-if).
    picked = load_policy_layer(examples / "policy.yaml", PolicyScope.WORKFLOW)
    assert picked.require_approval_for == ("payments.*",)


# ── finality is part of the set: digest, equality, the store ───────────────────────────


def test_finality_is_in_the_digest_and_survives_the_codec() -> None:
    plain = PolicySet(blocked_tools=["a"])
    final = PolicySet(blocked_tools=["a"], final=True)
    assert PolicySet(blocked_tools=["a"], final=False) == plain
    assert PolicySet(blocked_tools=["a"], final=False).digest == plain.digest
    assert final != plain
    assert final.digest != plain.digest
    assert "final" not in dumps(plain)
    assert loads(dumps(final), PolicySet) == final
    assert loads(dumps(plain), PolicySet) == plain
    with pytest.raises(InvalidInput, match="final"):
        PolicySet(final="yes")  # type: ignore[arg-type]


def test_in_code_sets_keep_upstreams_most_specific_default() -> None:
    tenant_block = PolicySet(blocked_tools=["db.drop_*"])
    relax = PolicySet(require_approval_for=["db.drop_*"])
    verdict = PolicyEvaluator().explain(DROP, policy_chain(tenant_block, relax))
    assert verdict.decision == RequireApproval("human")
    assert verdict.overruled is None


# ── the scenario, end to end through the store and the worker ──────────────────

RELAXING_WORKFLOW = """\
workflow_id: relax
version: "1"
tenant_id: acme
start_node: drop
tools:
  db.drop_table: {idempotent: false, executor: echo}
policy:
  require_approval_for: ["db.drop_*"]
  approver: "*"
nodes:
  drop:
    kind: {type: tool, tool_ref: db.drop_table, args: {table: t}}
edges: []
"""


@pytest.mark.parametrize(("combining", "status"), [("", "failed"), ("most-specific", "waiting")])
def test_a_stored_tenant_policy_reaches_the_gate_with_its_combining(
    tmp_path: Path, combining: str, status: str
) -> None:
    text = "blocked_tools: ['db.drop_*']\n"
    if combining:
        text += f"combining: {combining}\n"
    policy = tenant(tmp_path, text)
    store = SqliteStore(tmp_path / "charter.db")
    now = store.clock.now()
    store.put_tenant(
        Tenant(tenant_id="acme", name="Acme", policy=policy, created_at=now, updated_at=now)
    )
    stored = store.get_tenant("acme")
    assert stored is not None
    assert stored.policy == policy
    workflow, _ = load_workflow_file(tenant_file(tmp_path, RELAXING_WORKFLOW, "relax.yaml"))
    execution = start_run(store, workflow, execution_id="r")
    outcome = drive(Worker(store), execution.execution_id, sleep=lambda _: None)
    assert outcome.status == status
    (record,) = [e.kind for e in store.read_events("r") if isinstance(e.kind, NodeGated)]
    if status == "failed":
        assert (record.policy_decision, record.policy_scope) == ("block", "tenant")
        assert isinstance(record.overruled, dict)
        assert record.overruled["scope"] == "workflow"
    else:
        assert (record.policy_decision, record.policy_scope) == ("require_approval", "workflow")
        assert record.overruled is None
    store.close()


def test_the_cli_refuses_a_tenant_file_key_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tenant_file(tmp_path, "blocked_tools: [a]\ncombining: deny-overrides\n")
    code = main(["tenant", "acme", "--policy", str(path), "--db", str(tmp_path / "c.db")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{path}: combining:" in err


def test_charter_tenant_says_which_combining_applies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from charter.cli import main

    db = str(tmp_path / "charter.db")
    final = tmp_path / "final.yaml"
    final.write_text("blocked_tools: ['db.drop_*']\n")
    loose = tmp_path / "loose.yaml"
    loose.write_text("blocked_tools: ['db.drop_*']\ncombining: most-specific\n")
    assert main(["tenant", "acme", "--policy", str(final), "--db", db]) == 0
    assert "combining: final" in capsys.readouterr().out
    assert main(["tenant", "acme", "--policy", str(loose), "--db", db]) == 0
    assert "combining: most-specific" in capsys.readouterr().out
