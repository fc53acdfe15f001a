"""Argument-aware policy rules (docs/semantics.md §2.6): ``{tool: PATTERN, when: CONDITION}``
in ``blocked_tools`` / ``require_approval_for`` and ``{model: PATTERN, when: …}`` in
``model_allowlist``, judged on the call; an unevaluable condition applies its rule
(fail-closed). Through the public API, the gate, the codec and the CLI (``charter check
--call``, and examples/refund-threshold.yaml run both ways)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from charter.adapters.codec import dumps, loads
from charter.cli import main
from charter.core.errors import PolicyError
from charter.core.events import NodeGated, PolicyViolation, ToolApprovalRequired
from charter.core.gate import GateRequest, Outcome, gate_node
from charter.core.policy import (
    Allow,
    Block,
    ConditionalRule,
    EvaluationContext,
    PolicyEvaluator,
    PolicyLayer,
    PolicyRule,
    PolicyScope,
    PolicySet,
    RequireApproval,
    policy_chain,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "refund-threshold.yaml"
TENANT_POLICY = ROOT / "examples" / "tenant-acme.yaml"
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

REFUND = EvaluationContext("refund", "tool", tool_name="payments.refund")
QUERY = EvaluationContext("lookup", "tool", tool_name="db.query")

POLICY = PolicySet.from_dict(
    {
        "blocked_tools": [{"tool": "db.query", "when": "call.args.table == 'users'"}],
        "require_approval_for": [{"tool": "payments.*", "when": "call.args.amount > 100"}],
        "approver": "finance-lead",
    }
)


def call(**args: Any) -> dict[str, Any]:
    return {"args": args, "state_digest": "0" * 64}


def explain(ctx: EvaluationContext, *sets: PolicySet, call: object = None) -> Any:
    return PolicyEvaluator().explain(ctx, list(sets), call=call)


# ── the decision ───────────────────────────────────────────────────────────────────────


def test_an_approval_rule_applies_only_when_its_condition_holds() -> None:
    over = explain(REFUND, POLICY, call=call(amount=250))
    assert over.decision == RequireApproval("finance-lead")
    assert (over.rule, over.pattern) == (PolicyRule.REQUIRE_APPROVAL_FOR, "payments.*")
    assert (over.condition, over.condition_problem) == ("call.args.amount > 100", None)
    under = explain(REFUND, POLICY, call=call(amount=60))
    assert under.decision == Allow()
    assert under.condition is None


def test_a_block_rule_applies_only_when_its_condition_holds() -> None:
    users = explain(QUERY, POLICY, call=call(table="users"))
    assert users.decision == Block(
        "tool 'db.query' matches blocked pattern 'db.query' when call.args.table == 'users'"
    )
    assert explain(QUERY, POLICY, call=call(table="orders")).decision == Allow()


@pytest.mark.parametrize(
    ("the_call", "problem"),
    [
        (call(), "call.args.amount is missing"),
        (call(amount="250"), "call.args.amount is a string, compared with 100 (a number)"),
        ({"input_hash": "ab" * 32}, "call.args is missing"),
        (None, "call.args is missing (call is null)"),
    ],
)
def test_an_unevaluable_condition_applies_its_rule(the_call: object, problem: str) -> None:
    verdict = explain(REFUND, POLICY, call=the_call)
    assert verdict.decision == RequireApproval("finance-lead")
    assert verdict.condition_problem == problem
    assert verdict.condition_note == (
        f" when call.args.amount > 100 (condition could not be evaluated: {problem} "
        "→ treated as matching)"
    )
    blocked = explain(QUERY, POLICY, call=the_call)
    assert isinstance(blocked.decision, Block)
    assert "condition could not be evaluated" in blocked.decision.reason


def test_three_valued_logic_decides_what_it_can() -> None:
    either = PolicySet(
        blocked_tools=[{"tool": "db.query", "when": "call.args.a == 1 or call.args.b == 2"}]
    )
    # `true or unknown` is true, `false or unknown` unknown (so the rule applies).
    assert isinstance(explain(QUERY, either, call=call(b=2)).decision, Block)
    unknown = explain(QUERY, either, call=call(b=3))
    assert unknown.condition_problem == "call.args.a is missing"
    both = PolicySet(
        blocked_tools=[{"tool": "db.query", "when": "call.args.a == 1 and call.args.b == 2"}]
    )
    # `false and unknown` is false: the rule does not apply.
    assert explain(QUERY, both, call=call(a=5)).decision == Allow()


def test_conditions_see_the_node() -> None:
    policy = PolicySet(blocked_tools=[{"tool": "*", "when": "node.id == 'lookup'"}])
    assert isinstance(explain(QUERY, policy, call=call()).decision, Block)
    assert explain(REFUND, policy, call=call()).decision == Allow()


def test_list_order_names_the_first_applying_rule() -> None:
    policy = PolicySet(
        require_approval_for=[
            {"tool": "payments.refund", "when": "call.args.amount > 1000"},
            "payments.*",
        ]
    )
    big = explain(REFUND, policy, call=call(amount=5000))
    assert (big.pattern, big.condition) == ("payments.refund", "call.args.amount > 1000")
    small = explain(REFUND, policy, call=call(amount=5))
    assert (small.pattern, small.condition) == ("payments.*", None)


def test_a_conditional_allowlist_entry_admits_only_when_it_holds() -> None:
    model = EvaluationContext("write", "model", model_ref="gpt-4o")
    policy = PolicySet(
        model_allowlist=["claude-*", {"model": "gpt-*", "when": "call.args.region == 'us'"}]
    )
    assert explain(model, policy, call=call(region="us")).decision == Allow()
    refused = explain(model, policy, call=call(region="eu")).decision
    assert refused == Block(
        "model 'gpt-4o' is not in the allowlist (allowed: 'claude-*', 'gpt-*' when "
        "call.args.region == 'us')"
    )
    # Unevaluable: the entry admits nothing (fail-closed for an allowlist).
    assert isinstance(explain(model, policy, call=call()).decision, Block)


def test_a_final_tenant_condition_bounds_the_workflow() -> None:
    tenant = PolicySet(
        blocked_tools=[{"tool": "payments.*", "when": "call.args.amount > 10000"}], final=True
    )
    workflow = PolicySet(require_approval_for=["payments.*"], approver="*")
    chain = policy_chain(tenant=tenant, workflow=workflow)
    huge = PolicyEvaluator().explain(REFUND, chain, call=call(amount=50_000))
    assert isinstance(huge.decision, Block)
    assert huge.scope is PolicyScope.TENANT
    assert huge.overruled is not None
    fine = PolicyEvaluator().explain(REFUND, chain, call=call(amount=50))
    assert fine.decision == RequireApproval("*")


# ── the shape ──────────────────────────────────────────────────────────────────────────


def test_the_rule_round_trips_through_the_codec_and_is_in_the_digest() -> None:
    text = dumps(POLICY)
    assert json.loads(text)["require_approval_for"] == [
        {"tool": "payments.*", "when": "call.args.amount > 100"}
    ]
    again = loads(text, PolicySet)
    assert again == POLICY
    assert again.digest == POLICY.digest
    other = PolicySet.from_dict(
        {
            "blocked_tools": [{"tool": "db.query", "when": "call.args.table == 'users'"}],
            "require_approval_for": [{"tool": "payments.*", "when": "call.args.amount > 500"}],
            "approver": "finance-lead",
        }
    )
    assert other.digest != POLICY.digest
    unconditional = PolicySet(require_approval_for=["payments.*"])
    conditional = PolicySet(
        require_approval_for=[ConditionalRule("tool", "payments.*", "call.args.amount > 100")]
    )
    assert unconditional.digest != conditional.digest


@pytest.mark.parametrize(
    ("data", "where", "problem"),
    [
        (
            {"require_approval_for": [{"tool": "x", "when": "call.args.amount >"}]},
            "policy.require_approval_for[0].when",
            "not a valid condition",
        ),
        (
            {"blocked_tools": ["a", {"tool": "x", "when": "state.amount > 1"}]},
            "policy.blocked_tools[1].when",
            "unknown name 'state'",
        ),
        (
            {"blocked_tools": [{"tool": "x"}]},
            "policy.blocked_tools[0]",
            "missing key 'when'",
        ),
        (
            {"blocked_tools": [{"model": "x", "when": "true"}]},
            "policy.blocked_tools[0]",
            "unknown key 'model'",
        ),
        (
            {"model_allowlist": [{"tool": "x", "when": "true"}]},
            "policy.model_allowlist[0]",
            "unknown key 'tool'",
        ),
        (
            {"blocked_tools": [{"tool": 5, "when": "true"}]},
            "policy.blocked_tools[0].tool",
            "expected a string pattern",
        ),
        (
            {"blocked_tools": [{"tool": "", "when": "true"}]},
            "policy.blocked_tools[0].tool[0]",
            "empty pattern",
        ),
        (
            {"blocked_tools": [{"tool": "x", "when": 3}]},
            "policy.blocked_tools[0].when",
            "expected a condition string",
        ),
        (
            {"blocked_tools": ["a", 7]},
            "policy.blocked_tools[1]",
            "expected a string pattern",
        ),
    ],
)
def test_a_bad_rule_is_a_policy_error_naming_its_path(
    data: dict[str, Any], where: str, problem: str
) -> None:
    with pytest.raises(PolicyError) as caught:
        PolicySet.from_dict(data)
    assert caught.value.where == where
    assert problem in caught.value.problem


# ── the gate ───────────────────────────────────────────────────────────────────────────


def gate(the_call: object, policy: PolicySet = POLICY) -> Any:
    layers = (PolicyLayer(PolicyScope.WORKFLOW, policy),)
    return gate_node(GateRequest(context=REFUND, policies=layers, call=the_call, now=NOW))


def test_the_gate_judges_conditions_on_the_call() -> None:
    held = gate(call(amount=250))
    assert held.outcome is Outcome.HOLD
    assert (
        held.reason
        == "workflow policy requires approval for 'payments.*' when call.args.amount > 100"
    )
    asked = [e for e in held.events if isinstance(e, ToolApprovalRequired)]
    assert [e.approver for e in asked] == ["finance-lead"]
    assert gate(call(amount=60)).outcome is Outcome.RUN


def test_the_gate_says_why_an_unevaluable_condition_held_the_node() -> None:
    held = gate(call(currency="EUR"))
    assert held.outcome is Outcome.HOLD
    assert held.reason == (
        "workflow policy requires approval for 'payments.*' when call.args.amount > 100 "
        "(condition could not be evaluated: call.args.amount is missing → treated as matching)"
    )


def test_a_conditional_block_fails_the_node_with_the_condition_in_the_reason() -> None:
    policy = PolicySet(blocked_tools=[{"tool": "payments.*", "when": "call.args.amount > 100"}])
    failed = gate(call(amount=250), policy)
    assert failed.outcome is Outcome.FAIL
    gated = failed.events[0]
    assert isinstance(gated, NodeGated)
    assert (gated.policy_rule, gated.policy_pattern) == ("blocked_tools", "payments.*")
    violation = next(e for e in failed.events if isinstance(e, PolicyViolation))
    assert violation.rule.endswith("when call.args.amount > 100")


# ── the CLI ────────────────────────────────────────────────────────────────────────────


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(
        "require_approval_for:\n"
        "  - {tool: payments.refund, when: 'call.args.amount > 100'}\n"
        "approver: finance-lead\n"
    )
    return path


def test_check_with_call_explains_which_condition_decided(
    policy_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["check", str(policy_file), "--tool", "payments.refund", "--call"]
    code, out, _ = cli(capsys, *args, '{"args": {"amount": 250}}')
    assert code == 3
    assert out.splitlines() == [
        "tool 'payments.refund': REQUIRE APPROVAL (approver: finance-lead)",
        "  rule:   require_approval_for 'payments.refund'",
        "  scope:  workflow",
        "  when:   call.args.amount > 100",
        "          (holds on the call)",
        "combining: most-specific",
    ]
    code, out, _ = cli(capsys, *args, '{"args": {"amount": 60}}')
    assert code == 0
    assert out.splitlines()[0] == "tool 'payments.refund': ALLOW"
    code, out, _ = cli(capsys, *args, '{"args": {}}')
    assert code == 3
    assert out.splitlines()[-2] == (
        "          (could not be evaluated: call.args.amount is missing → treated as matching)"
    )
    code, out, _ = cli(capsys, *args, '{"args": {"amount": 250}}', "--json")
    assert code == 3
    payload = json.loads(out)
    assert payload["call"] == {"args": {"amount": 250}}
    assert payload["results"][0]["verdict"]["condition"] == "call.args.amount > 100"


def test_check_without_call_applies_the_rule(
    policy_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(capsys, "check", str(policy_file), "--tool", "payments.refund")
    assert code == 3
    assert "call.args is missing (call is null)" in out


@pytest.mark.parametrize(
    ("text", "problem"),
    [("{bad", "--call is not valid JSON"), ("[1]", "--call must be a JSON object")],
)
def test_check_refuses_a_call_that_is_not_a_json_object(
    policy_file: Path, capsys: pytest.CaptureFixture[str], text: str, problem: str
) -> None:
    code, _, err = cli(capsys, "check", str(policy_file), "--tool", "t", "--call", text)
    assert code == 2
    assert problem in err


def run_example(capsys: pytest.CaptureFixture[str], workflow: Path, db: Path) -> tuple[int, str]:
    args = ["run", str(workflow), "--db", str(db), "--run-id", "r", "--quiet"]
    code, out, err = cli(capsys, *args, "--tenant-policy", str(TENANT_POLICY))
    assert err == ""
    return code, out


def with_amount(tmp_path: Path, amount: str) -> Path:
    text = EXAMPLE.read_text()
    old = 'args: {order_id: "A-2077", amount: 250}'
    assert old in text
    copy = tmp_path / "refund-threshold.yaml"
    copy.write_text(text.replace(old, f'args: {{order_id: "A-2077"{amount}}}'))
    return copy


def test_example_refund_over_the_threshold_waits_for_the_finance_lead(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "charter.db"
    code, out = run_example(capsys, EXAMPLE, db)
    assert code == 3
    assert "waiting for approval of refund (approver finance-lead)" in out
    code, out, _ = cli(capsys, "events", "r", "--db", str(db), "--json")
    gated = [
        json.loads(line)["kind"]
        for line in out.splitlines()
        if json.loads(line)["kind"]["type"] == "node_gated"
    ]
    assert gated[-1]["reason"] == (
        "workflow policy requires approval for 'payments.refund' when call.args.amount > 100"
    )
    approve = ["approve", "r", "refund", "--user", "finance-lead", "--db", str(db), "--quiet"]
    code, out, _ = cli(capsys, *approve)
    assert code == 0
    # Replay recomputes every decision with the same conditions (they are in the digest).
    code, out, _ = cli(capsys, "audit", "replay", "r", "--db", str(db))
    assert code == 0
    assert "all agree" in out


def test_example_refund_under_the_threshold_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run_example(capsys, with_amount(tmp_path, ", amount: 60"), tmp_path / "c.db")
    assert code == 0
    assert "completed" in out


@pytest.mark.parametrize("amount", ["", ', amount: "250"'])
def test_example_refund_the_condition_cannot_judge_waits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], amount: str
) -> None:
    code, out = run_example(capsys, with_amount(tmp_path, amount), tmp_path / "c.db")
    assert code == 3
    assert "waiting for approval of refund (approver finance-lead)" in out


def test_the_gate_names_an_overruled_conditional_rule() -> None:
    tenant = PolicySet(blocked_tools=["payments.*"], final=True)
    workflow = PolicySet(
        require_approval_for=[{"tool": "payments.refund", "when": "call.args.amount < 1000"}]
    )
    layers = policy_chain(tenant=tenant, workflow=workflow)
    failed = gate_node(GateRequest(context=REFUND, policies=layers, call=call(amount=5), now=NOW))
    assert failed.outcome is Outcome.FAIL
    assert failed.reason == (
        "tool 'payments.refund' matches blocked pattern 'payments.*' (final tenant rule: the "
        "workflow rule require_approval_for 'payments.refund' (when call.args.amount < 1000) "
        "may not relax it)"
    )
