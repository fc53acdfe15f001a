"""Hostile and malformed input: refused with a CharterError naming the field, never an
allow, never a crash. One regression test per hole found in review."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from charter.adapters.codec import CodecError, load, loads
from charter.core import (
    ALLOW,
    AgentCard,
    ApprovalDecision,
    ApprovalRequest,
    ApprovalStatus,
    AutonomyConstraints,
    AutonomyContext,
    AutonomyEnforcer,
    AutonomyLevel,
    BudgetState,
    CharterError,
    EscalateLimit,
    EvaluationContext,
    EventKind,
    GateInputError,
    GateRequest,
    NotRequested,
    Outcome,
    Pending,
    PolicyError,
    PolicyEvaluator,
    PolicyLayer,
    PolicySet,
    UnknownNodeKind,
    canonical_json,
    decide_approval,
    gate_node,
    glob_match,
    policy_chain,
)
from charter.core.approvals import approver_allows

NOW = datetime(2026, 11, 21, tzinfo=UTC)
ROOT = Path(__file__).resolve().parent.parent


# ── the codec never iterates a string, a mapping or a set as a list ──


@pytest.mark.parametrize(
    ("text", "cls"),
    [
        ('{"model_allowlist": "claude-*"}', PolicySet),
        ('{"blocked_tools": {"a": 1}}', PolicySet),
        ('{"uri": "u", "constraints": {"allowed_tools": "payments.*"}}', AgentCard),
    ],
    ids=["string-allowlist", "mapping-list", "string-card-list"],
)
def test_codec_refuses_a_non_array_where_a_list_belongs(text: str, cls: Any) -> None:
    with pytest.raises(CodecError, match="expected an array"):
        loads(text, cls)


def test_a_string_allowlist_cannot_allow_every_model() -> None:
    ctx = EvaluationContext("n", "model", model_ref="gpt-4-evil")
    with pytest.raises(PolicyError):
        PolicySet(model_allowlist="claude-*")
    assert PolicyEvaluator().evaluate(ctx, [PolicySet(model_allowlist=["claude-*"])]) != ALLOW


@pytest.mark.parametrize(
    ("data", "cls", "message"),
    [
        ({}, BudgetState, "total_input_tokens: missing budget field"),
        (
            {
                "type": "node_failed",
                "node_id": "n",
                "error": "e",
                "attempt": -1,
                "retryable": False,
            },
            EventKind,
            "attempt: expected an integer between 0",
        ),
        (
            {"type": "interrupt_raised", "node_id": "n", "reason": "r", "state_for_review": {1, 2}},
            EventKind,
            "not a JSON value",
        ),
    ],
    ids=["empty-budget", "negative-attempt", "set-in-json-value"],
)
def test_codec_refuses_values_the_core_never_produces(data: object, cls: Any, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        load(data, cls)


def test_codec_refuses_duplicate_keys() -> None:
    text = '{"node_id": "n", "user_id": "u", "decision": "rejected", "decision": "approved"}'
    with pytest.raises(CodecError, match="duplicate key 'decision'"):
        loads(text, EventKind)


@pytest.mark.parametrize(
    "text", ["[" * 5000 + "]" * 5000, "1" * 5000, "NaN"], ids=["deep", "huge-int", "nan"]
)
def test_codec_reports_pathological_json_as_codec_errors(text: str) -> None:
    with pytest.raises(CodecError):
        loads(text, EventKind)


# ── contexts, modes and layers are checked, never defaulted ──


@pytest.mark.parametrize(
    ("build", "error"),
    [
        (lambda: EvaluationContext("n", "Model", model_ref="gpt-4"), UnknownNodeKind),
        (lambda: EvaluationContext("n", "model "), UnknownNodeKind),
        (lambda: EvaluationContext("n", "model"), PolicyError),
        (lambda: EvaluationContext("n", "python_fn"), PolicyError),
        (lambda: EvaluationContext("n", "tool"), PolicyError),
        (lambda: PolicyEvaluator("first-match"), PolicyError),
        (lambda: PolicyEvaluator(None), PolicyError),  # type: ignore[arg-type]
        (lambda: PolicyLayer("tenant", "not a set"), PolicyError),  # type: ignore[arg-type]
        (lambda: PolicyLayer("galaxy", PolicySet()), PolicyError),
    ],
    ids=["capitalised-tag", "padded-tag", "model-without-ref", "python-fn-unnamed",
         "tool-unnamed", "unknown-mode", "none-mode", "layer-not-a-set", "unknown-scope"],
)  # fmt: skip
def test_misbuilt_policy_inputs_are_refused(build: Any, error: type[CharterError]) -> None:
    with pytest.raises(error):
        build()


def test_evaluator_mode_may_be_given_by_name() -> None:
    chain = policy_chain(
        tenant=PolicySet(blocked_tools=["x"]), node=PolicySet(require_approval_for=["x"])
    )
    ctx = EvaluationContext("n", "tool", tool_name="x")
    assert type(PolicyEvaluator("deny-overrides").evaluate(ctx, chain)).__name__ == "Block"


@pytest.mark.parametrize("sets", [None, {PolicySet()}, (s for s in [PolicySet()])])
def test_evaluator_refuses_a_chain_that_is_not_a_list(sets: Any) -> None:
    with pytest.raises(PolicyError, match="sets"):
        PolicyEvaluator().evaluate(EvaluationContext("n", "tool", tool_name="x"), sets)


@pytest.mark.parametrize(("pattern", "value"), [(None, "x"), ("x", None), (5, "x")])
def test_glob_refuses_non_strings(pattern: Any, value: Any) -> None:
    with pytest.raises(CharterError):
        glob_match(pattern, value)


# ── approvals need an identified person and a real decision ──


@pytest.mark.parametrize(
    "user", [None, "", " ", "\u200b", "Anonymous", "ANONYMOUS", "anonymous ", 5]
)
def test_unidentified_users_cannot_approve(user: Any) -> None:
    assert not approver_allows("human", user)
    request = ApprovalRequest(
        node_id="n",
        tool_name="t",
        approver="human",
        context={},
        request_digest="d",
        attempt=0,
        sequence=1,
    )
    answer = decide_approval(Pending(request), user_id=user, decision=ApprovalDecision.APPROVED)
    assert type(answer).__name__ == "ApprovalRefused"


def test_a_decision_must_be_an_approval_decision() -> None:
    status: ApprovalStatus = NotRequested()
    with pytest.raises(CharterError, match="decision"):
        decide_approval(status, user_id="alice", decision="approved")  # type: ignore[arg-type]


# ── autonomy: an approval never hides a refusal ──


def test_a_card_approval_rule_does_not_hide_an_exhausted_limit() -> None:
    ctx = AutonomyContext(
        autonomy_level=AutonomyLevel.BOUNDED_AUTONOMOUS,
        constraints=AutonomyConstraints(max_iterations=5, require_approval_for=["pay*"]),
        current_iterations=50,
    )
    decision = AutonomyEnforcer().check(ctx, "payments.send")
    assert isinstance(decision, EscalateLimit)
    assert decision.limit_type == "max_iterations"


def test_a_time_budget_needs_the_run_start() -> None:
    card = AgentCard(
        uri="a",
        autonomy=AutonomyLevel.BOUNDED_AUTONOMOUS,
        constraints=AutonomyConstraints(time_budget_secs=10),
    )
    ctx = EvaluationContext("n", "tool", tool_name="x")
    with pytest.raises(GateInputError, match="run_started_at"):
        GateRequest(context=ctx, agent=card, now=NOW)
    late = GateRequest(context=ctx, agent=card, now=NOW, run_started_at=NOW - timedelta(hours=1))
    assert gate_node(late).outcome is Outcome.FAIL


def test_delegating_nodes_are_checked_against_allowed_delegations() -> None:
    card = AgentCard(
        uri="agents/boss",
        autonomy=AutonomyLevel.FULLY_AUTONOMOUS,
        constraints=AutonomyConstraints(allowed_delegations=["agents/ok"]),
    )
    evil = EvaluationContext.from_node_kind(
        "d", {"type": "agent_tool", "agent": {"explicit": "agents/evil"}}
    )
    ok = EvaluationContext.from_node_kind(
        "d", {"type": "agent_tool", "agent": {"explicit": "agents/ok"}}
    )
    auto = EvaluationContext.from_node_kind("d", {"type": "coordinator", "task": "t"})
    assert gate_node(GateRequest(context=evil, agent=card, now=NOW)).outcome is Outcome.FAIL
    assert gate_node(GateRequest(context=ok, agent=card, now=NOW)).outcome is Outcome.RUN
    assert gate_node(GateRequest(context=auto, agent=card, now=NOW)).outcome is Outcome.FAIL


def test_a_breaker_recorded_as_tripped_stays_tripped() -> None:
    card = AgentCard(uri="a", autonomy=AutonomyLevel.FULLY_AUTONOMOUS)
    request = GateRequest(
        context=EvaluationContext("n", "tool", tool_name="x"),
        agent=card,
        budget=BudgetState(circuit_breaker_tripped=True),
        now=NOW,
    )
    assert gate_node(request).outcome is Outcome.FAIL


@pytest.mark.parametrize(
    "call",
    [{1, 2}, {"a": float("nan")}, {1: "int key"}, 10**30],
    ids=["set", "nan", "int-key", "huge-int"],
)
def test_a_call_that_is_not_plain_json_is_refused(call: Any) -> None:
    with pytest.raises(GateInputError, match="call"):
        GateRequest(context=EvaluationContext("n", "tool", tool_name="x"), call=call, now=NOW)


# ── canonical JSON formats like ECMAScript and refuses what it cannot represent ──


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.2345678901234568e18, "1234567890123456800"),
        (2.0**60, "1152921504606847000"),
        (1e21, "1e+21"),
        (1e-7, "1e-7"),
        (0.000001, "0.000001"),
        (100.0, "100"),
    ],
)
def test_canonical_numbers_follow_ecmascript(value: float, text: str) -> None:
    assert canonical_json(value) == text


@pytest.mark.parametrize(
    "value",
    [10**30, float("inf"), "\ud800", 1.2345678901234568e20],
    ids=["int", "inf", "surr", "float-as-int-beyond-64-bits"],
)
def test_canonical_json_refuses_unrepresentable_values(value: object) -> None:
    with pytest.raises(CharterError):
        canonical_json(value)


# ── hostile policy files: one line, exit 2, quickly ──


def _alias_bomb() -> str:
    text = 'combining: [&a0 ["x","x","x","x","x","x","x","x","x"]'
    for level in range(1, 8):
        text += f", &a{level} [{','.join([f'*a{level - 1}'] * 9)}]"
    return text + "]\n"


HOSTILE = {
    "huge-int.yaml": "combining: " + "1" * 5000 + "\n",
    "huge-int.json": '{"tenant": {"blocked_tools": [' + "1" * 5000 + "]}}",
    "deep.yaml": "tenant: " + "[" * 3000 + "]" * 3000 + "\n",
    "deep.json": '{"a": ' + "[" * 3000 + "]" * 3000 + "}",
    "surrogate.yaml": 'tenant:\n  blocked_tools: ["\\ud800"]\n',
    "surrogate.json": '{"tenant": {"blocked_tools": ["\\ud800"]}}',
    "list-key.yaml": "? [a, b]\n: 1\n",
    "duplicate.json": '{"tenant": {"blocked_tools": ["x"]}, "tenant": {}}',
    "empty.yaml": "{}\n",
    "null-layer.yaml": "workflow:\n",
    "set.yaml": "tenant:\n  blocked_tools: !!set {a, b}\n",
    "mapping.yaml": 'tenant:\n  model_allowlist: {"claude-*": false}\n',
    "python-object.yaml": "tenant: !!python/object:os.system {}\n",
    "alias-bomb.yaml": _alias_bomb(),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_policy_files_get_one_line_and_exit_2(tmp_path: Path, name: str) -> None:
    policy = tmp_path / name
    policy.write_text(HOSTILE[name], encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "charter.cli", "check", str(policy), "--tool", "x"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith(f"charter: error: {policy}")


def test_yaml_merge_keys_are_understood(tmp_path: Path) -> None:
    policy = tmp_path / "merge.yaml"
    policy.write_text(
        "tenant: &base\n  blocked_tools: [x]\nworkflow:\n  <<: *base\n  require_approval_for: [y]\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "charter.cli", "check", str(policy), "--tool", "x"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 4, done.stderr
    assert "scope:  workflow" in done.stdout


# ── a float canonical JSON would write as an integer beyond 64 bits ──


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@pytest.mark.parametrize("value", [1e20, -9.3e18, 9.223372036854776e18])
def test_a_float_written_as_an_integer_beyond_64_bits_is_refused_and_nothing_stored(
    tmp_path: Path, kind: str, value: float
) -> None:
    """Found by Hypothesis: ECMAScript writes 9.223372036854776e18 as the integer literal
    9223372036854776000, which reads back as an integer beyond 64 bits; a log holding it
    could not be read back or verified. It is refused when written (docs/semantics.md §8),
    and 1e21 (written with an exponent) and 2**62 as a float are kept."""
    from charter.adapters.memory import MemoryStore
    from charter.adapters.sqlite import SqliteStore
    from charter.core.events import NodeCompleted
    from charter.core.records import DEFAULT_TENANT, Execution

    store = MemoryStore() if kind == "memory" else SqliteStore(tmp_path / "x.db")
    store.create_execution(
        Execution(
            execution_id="x",
            tenant_id=DEFAULT_TENANT,
            workflow_id="w",
            workflow_version="1",
            initial_input=None,
            created_at=NOW,
            updated_at=NOW,
        ),
        [],
    )

    def completed(output: object) -> NodeCompleted:
        return NodeCompleted(node_id="n", output=output, state_patch=None, duration_ms=0)

    with pytest.raises(CharterError, match=r"integer outside the signed 64-bit range"):
        store.append_events("x", [completed({"ok": 1}), completed({"big": [value]})])
    assert store.read_events("x") == ()
    with pytest.raises(CharterError, match=r"integer outside the signed 64-bit range"):
        canonical_json({"big": value})
    store.append_events("x", [completed({"big": [1e21, float(2**62), -(2.0**63) + 1024]})])
    (event,) = store.read_events("x")
    assert isinstance(event.kind, NodeCompleted)
    assert isinstance(event.kind.output, dict)
    kept = event.kind.output["big"]
    # Read back as ECMAScript wrote them: 1e21 a float, the others the integers of their
    # shortest digits, each the same float again and the same canonical text.
    assert [float(x) for x in kept] == [1e21, float(2**62), -(2.0**63) + 1024]
    assert canonical_json(kept) == "[1e+21,4611686018427388000,-9223372036854775000]"
