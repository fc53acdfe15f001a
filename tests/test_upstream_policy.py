"""Upstream JamJet policy-engine tests, ported (reference §9), plus every row of the §2.5 table.

Sources ported: ``policy/src/lib.rs`` unit tests, ``policy/tests/tenant_policy.rs``,
``policy/tests/healthcare_workflow.rs``. Upstream's "global" layer has no scope in Charter's
chain; it is passed as the least specific `PolicySet` of a plain list, as upstream does.
Tests named ``test_charter_*`` pin a deliberate divergence from upstream (ARCHITECTURE.md,
"Semantics: what we keep and what we fix").
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import pytest

from charter.core import (
    Allow,
    Block,
    EvaluationContext,
    PolicyDecision,
    PolicyEvaluator,
    PolicyLayer,
    PolicyScope,
    PolicySet,
    RequireApproval,
    glob_match,
    policy_chain,
)

EVALUATOR = PolicyEvaluator()
HUMAN = RequireApproval("human")


def _tool(name: str, node_id: str = "n1") -> EvaluationContext:
    return EvaluationContext(node_id, "tool", tool_name=name)


def _model(model_ref: str, node_id: str = "n1") -> EvaluationContext:
    return EvaluationContext(node_id, "model", model_ref=model_ref)


# ── policy/src/lib.rs unit tests ────────────────────────────────────────────────────────


def test_allow_when_no_rules() -> None:
    assert EVALUATOR.evaluate(_tool("search"), []) == Allow()


def test_block_tool_by_exact_name() -> None:
    policy = PolicySet(blocked_tools=["delete_user"])
    decision = EVALUATOR.evaluate(_tool("delete_user"), [policy])
    assert decision == Block("tool 'delete_user' matches blocked pattern 'delete_user'")


def test_block_tool_by_glob() -> None:
    policy = PolicySet(blocked_tools=["payments.*"])
    decision = EVALUATOR.evaluate(_tool("payments.transfer"), [policy])
    assert decision == Block("tool 'payments.transfer' matches blocked pattern 'payments.*'")


def test_require_approval_pattern() -> None:
    policy = PolicySet(require_approval_for=["delete_*"])
    assert EVALUATOR.evaluate(_tool("delete_record"), [policy]) == HUMAN


def test_model_allowlist_blocks_unknown_model() -> None:
    policy = PolicySet(model_allowlist=["claude-*"])
    decision = EVALUATOR.evaluate(_model("gpt-4"), [policy])
    assert isinstance(decision, Block)
    assert decision.reason.startswith("model 'gpt-4' is not in the allowlist")


def test_model_allowlist_allows_matching_model() -> None:
    policy = PolicySet(model_allowlist=["claude-*"])
    assert EVALUATOR.evaluate(_model("claude-sonnet-4-6"), [policy]) == Allow()


def test_node_level_policy_overrides_workflow_level() -> None:
    workflow = PolicySet(blocked_tools=["delete_*"])
    node = PolicySet(require_approval_for=["delete_user"])
    assert EVALUATOR.evaluate(_tool("delete_user"), [workflow, node]) == HUMAN


def test_workflow_level_block_applies_when_no_node_policy() -> None:
    workflow = PolicySet(blocked_tools=["delete_*"])
    decision = EVALUATOR.evaluate(_tool("delete_record"), [workflow])
    assert decision == Block("tool 'delete_record' matches blocked pattern 'delete_*'")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("foo.bar", True), ("foo.", True), ("foobar", False)],
)
def test_glob_star(value: str, expected: bool) -> None:
    assert glob_match("foo.*", value) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("foob", True), ("foo", False), ("fooba", False)],
)
def test_glob_question_mark(value: str, expected: bool) -> None:
    assert glob_match("foo?", value) is expected


# ── policy/tests/tenant_policy.rs ───────────────────────────────────────────────────────


def test_tenant_policy_blocks_tool_overriding_global() -> None:
    global_, workflow = PolicySet(), PolicySet()
    tenant = PolicySet(blocked_tools=["dangerous_tool"])
    decision = EVALUATOR.evaluate(_tool("dangerous_tool"), [global_, tenant, workflow])
    assert decision == Block("tool 'dangerous_tool' matches blocked pattern 'dangerous_tool'")


def test_tenant_block_with_node_approval_override() -> None:
    tenant = PolicySet(blocked_tools=["tool_a"])
    node = PolicySet(require_approval_for=["tool_a"])
    assert EVALUATOR.evaluate(_tool("tool_a"), [tenant, node]) == HUMAN


def test_tenant_policy_deserialized_from_json() -> None:
    text = json.dumps(
        {
            "blocked_tools": ["rm_*", "drop_*"],
            "require_approval_for": ["deploy_*"],
            "model_allowlist": ["gpt-4", "claude-*"],
        }
    )
    policy = PolicySet.from_dict(json.loads(text))
    assert (
        len(policy.blocked_tools),
        len(policy.require_approval_for),
        len(policy.model_allowlist),
    ) == (2, 1, 2)


def test_four_scope_chain_tenant_between_global_and_workflow() -> None:
    global_, workflow, node = PolicySet(), PolicySet(), PolicySet()
    tenant = PolicySet(blocked_tools=["delete_*"])
    decision = EVALUATOR.evaluate(_tool("delete_user"), [global_, tenant, workflow, node])
    assert decision == Block("tool 'delete_user' matches blocked pattern 'delete_*'")


def test_workflow_overrides_tenant_block_with_approval() -> None:
    tenant = PolicySet(blocked_tools=["deploy_*"])
    workflow = PolicySet(require_approval_for=["deploy_*"])
    assert EVALUATOR.evaluate(_tool("deploy_staging"), [tenant, workflow]) == HUMAN


def test_charter_final_tenant_keeps_its_block_and_approver() -> None:
    # Divergence (docs/semantics.md §2.5): the two upstream tests above, with the tenant
    # final as tenant policy files are by default. The block stays a block; an approval
    # keeps the tenant's approver; in-code sets (final unset) keep upstream's answers above.
    tenant = PolicySet(blocked_tools=["deploy_*"], final=True)
    workflow = PolicySet(require_approval_for=["deploy_*"])
    assert isinstance(EVALUATOR.evaluate(_tool("deploy_staging"), [tenant, workflow]), Block)
    node = PolicySet(require_approval_for=["tool_a"], approver="*")
    approving = PolicySet(require_approval_for=["tool_a"], approver="ops", final=True)
    assert EVALUATOR.evaluate(_tool("tool_a"), [approving, node]) == RequireApproval("ops")


def test_tenant_model_allowlist_blocks_unallowed_model() -> None:
    tenant = PolicySet(model_allowlist=["claude-*"])
    workflow = PolicySet()
    decision = EVALUATOR.evaluate(_model("gpt-4"), [tenant, workflow])
    assert isinstance(decision, Block)
    assert decision.reason.startswith("model 'gpt-4' is not in the allowlist")


def test_empty_tenant_policy_allows_everything() -> None:
    decision = EVALUATOR.evaluate(_tool("any_tool"), [PolicySet(), PolicySet()])
    assert decision == Allow()


# ── reference §2.5: input → decision table (chain order [tenant, workflow, node]) ───────

_DELETE_BLOCKED = PolicySet(blocked_tools=["delete_*"])
_WF_BLOCK_ALL = policy_chain(workflow=PolicySet(blocked_tools=["*"]))
_WF_APPROVE_ALL = policy_chain(workflow=PolicySet(require_approval_for=["*"]))

_TABLE = [
    pytest.param(
        {"type": "tool", "tool_ref": "search"},
        (),
        Allow(),
        id="row01-no-layers-allow",
    ),
    pytest.param(
        {"type": "tool", "tool_ref": "delete_user"},
        policy_chain(workflow=_DELETE_BLOCKED),
        Block("tool 'delete_user' matches blocked pattern 'delete_*'"),
        id="row02-wf-glob-block",
    ),
    pytest.param(
        {"type": "tool", "tool_ref": "delete_user"},
        policy_chain(
            workflow=_DELETE_BLOCKED, node=PolicySet(require_approval_for=["delete_user"])
        ),
        HUMAN,
        id="row03-node-approval-weakens-wf-block",
    ),
    pytest.param(
        {"type": "tool", "tool_ref": "payments.refund"},
        policy_chain(
            workflow=PolicySet(blocked_tools=["payments.*"], require_approval_for=["payments.*"])
        ),
        Block("tool 'payments.refund' matches blocked pattern 'payments.*'"),
        id="row04-same-layer-block-before-approval",
    ),
    pytest.param(
        {"type": "tool", "tool_ref": "x"},
        policy_chain(
            tenant=PolicySet(require_approval_for=["x"]), workflow=PolicySet(blocked_tools=["x"])
        ),
        Block("tool 'x' matches blocked pattern 'x'"),
        id="row05-wf-block-beats-tenant-approval",
    ),
    pytest.param(
        {"type": "tool", "tool_ref": "deploy_staging"},
        policy_chain(
            tenant=PolicySet(blocked_tools=["deploy_*"]),
            workflow=PolicySet(require_approval_for=["deploy_*"]),
        ),
        HUMAN,
        id="row06-wf-approval-weakens-tenant-block",
    ),
    pytest.param(
        {"type": "tool", "tool_ref": "dangerous_tool"},
        [PolicySet(), PolicySet(blocked_tools=["dangerous_tool"]), PolicySet()],
        Block("tool 'dangerous_tool' matches blocked pattern 'dangerous_tool'"),
        id="row07-global-tenant-wf-tenant-blocks",
    ),
    pytest.param(
        {"type": "model", "model_ref": "gpt-4"},
        policy_chain(tenant=PolicySet(model_allowlist=["claude-*"]), workflow=PolicySet()),
        # Charter appends the allowed patterns to upstream's reason text.
        Block("model 'gpt-4' is not in the allowlist (allowed: 'claude-*')"),
        id="row08-tenant-allowlist-blocks-model",
    ),
    pytest.param(
        {"type": "model", "model_ref": "ft-triage-v3"},
        [
            PolicySet(model_allowlist=["claude-sonnet-4-6"]),
            PolicySet(model_allowlist=["ft-triage-v3"]),
        ],
        Allow(),
        id="row09-node-allowlist-replaces-global",
    ),
    pytest.param(
        {"type": "model", "model_ref": "gpt-4"},
        policy_chain(
            tenant=PolicySet(model_allowlist=["claude-*"]), node=PolicySet(model_allowlist=["*"])
        ),
        Allow(),
        id="row10-node-allowlist-short-circuits",
    ),
    pytest.param(
        {"type": "model", "model_ref": "claude-x"},
        policy_chain(workflow=PolicySet(blocked_tools=["*"], require_approval_for=["*"])),
        Allow(),
        id="row11-model-ignores-tool-rules",
    ),
    pytest.param(
        {"type": "mcp_tool", "server": "db", "tool": "drop_db"},
        _WF_BLOCK_ALL,
        # Charter fix 1 (reference §1.4 [BUG]): mcp_tool is named by its `tool` field.
        Block("tool 'drop_db' matches blocked pattern '*'"),
        id="row12-charter-fix-mcp-tool-blocked",
    ),
    pytest.param(
        {"type": "python_fn", "module": "etl.jobs", "function": "run"},
        _WF_BLOCK_ALL,
        # Charter fix 1 (reference §1.4): python_fn is named "<module>.<function>".
        Block("tool 'etl.jobs.run' matches blocked pattern '*'"),
        id="row13-charter-fix-python-fn-blocked",
    ),
    pytest.param(
        {"type": "agent", "agent_ref": "agents/pay"},
        policy_chain(workflow=PolicySet(blocked_tools=["agents/*"])),
        Block("tool 'agents/pay' matches blocked pattern 'agents/*'"),
        id="row14-agent-ref-blocked",
    ),
    pytest.param(
        {"type": "a2a_task", "skill": "transfer"},
        policy_chain(workflow=PolicySet(require_approval_for=["transfer"])),
        HUMAN,
        id="row15-a2a-skill-approval",
    ),
    pytest.param(
        {"type": "tool", "tool_ref": "Delete_all"},
        policy_chain(workflow=PolicySet(blocked_tools=["*delete*"])),
        Allow(),
        id="row16-case-sensitive-allow",
    ),
    pytest.param(
        {"type": "tool", "tool_ref": "foobar"},
        policy_chain(workflow=PolicySet(blocked_tools=["foo.*"])),
        Allow(),
        id="row17a-dot-is-literal-foobar-allowed",
    ),
    pytest.param(
        {"type": "tool", "tool_ref": "foo."},
        policy_chain(workflow=PolicySet(blocked_tools=["foo.*"])),
        Block("tool 'foo.' matches blocked pattern 'foo.*'"),
        id="row17b-star-matches-empty-foo-dot-blocked",
    ),
    pytest.param(
        {"type": "tool", "tool_ref": "anything"},
        _WF_APPROVE_ALL,
        HUMAN,
        id="row18a-approval-star-tool",
    ),
    pytest.param(
        {"type": "agent", "agent_ref": "agents/research"},
        _WF_APPROVE_ALL,
        HUMAN,
        id="row18b-approval-star-agent",
    ),
    pytest.param(
        {"type": "a2a_task", "skill": "summarize"},
        _WF_APPROVE_ALL,
        HUMAN,
        id="row18c-approval-star-a2a-task",
    ),
]


@pytest.mark.parametrize(("kind", "chain", "expected"), _TABLE)
def test_reference_table_decision(
    kind: Mapping[str, object],
    chain: Sequence[PolicySet | PolicyLayer],
    expected: PolicyDecision,
) -> None:
    ctx = EvaluationContext.from_node_kind("n1", kind)
    assert EVALUATOR.evaluate(ctx, chain) == expected


@pytest.mark.parametrize(
    ("kind", "chain"),
    [
        pytest.param(
            {"type": "tool", "tool_ref": "delete_user"},
            policy_chain(workflow=_DELETE_BLOCKED),
            id="row02-scope-workflow",
        ),
        pytest.param(
            {"type": "tool", "tool_ref": "x"},
            policy_chain(
                tenant=PolicySet(require_approval_for=["x"]),
                workflow=PolicySet(blocked_tools=["x"]),
            ),
            id="row05-scope-workflow",
        ),
    ],
)
def test_reference_table_block_scope(
    kind: Mapping[str, object], chain: Sequence[PolicySet | PolicyLayer]
) -> None:
    verdict = EVALUATOR.explain(EvaluationContext.from_node_kind("n1", kind), chain)
    assert (type(verdict.decision), verdict.scope) == (Block, PolicyScope.WORKFLOW)


def test_charter_mcp_tool_policy_name_is_its_tool_field() -> None:
    # Reference §1.4 [BUG]: upstream reads the absent key `tool_name`, so it is always None.
    ctx = EvaluationContext.from_node_kind("n1", {"type": "mcp_tool", "tool": "drop_db"})
    assert ctx.tool_name == "drop_db"


def test_charter_python_fn_policy_name_is_module_dot_function() -> None:
    # Reference §1.4: upstream gives python_fn no tool name (fail-open); Charter fix 1.
    kind = {"type": "python_fn", "module": "etl.jobs", "function": "run"}
    assert EvaluationContext.from_node_kind("n1", kind).tool_name == "etl.jobs.run"


# ── policy/tests/healthcare_workflow.rs ─────────────────────────────────────────────────

HOSPITAL_GLOBAL = PolicySet(
    blocked_tools=["delete_patient_record", "delete_*", "export_phi_bulk"],
    require_approval_for=["prescribe_medication", "order_lab_*", "discharge_patient"],
    model_allowlist=["claude-sonnet-4-6", "claude-haiku-4-5-20251001"],
)
INTAKE_WORKFLOW = PolicySet(
    blocked_tools=["modify_insurance_claim"],
    require_approval_for=["schedule_surgery"],
)
TRIAGE_NODE = PolicySet(model_allowlist=["claude-sonnet-4-6", "ft-triage-v3"])


def test_agent_cannot_delete_patient_records() -> None:
    ctx = _tool("delete_patient_record", node_id="discharge_summary_agent")
    decision = EVALUATOR.evaluate(ctx, [HOSPITAL_GLOBAL])
    assert isinstance(decision, Block)
    assert "delete_patient_record" in decision.reason


@pytest.mark.parametrize(
    "tool", ["delete_appointment", "delete_insurance_record", "delete_test_results"]
)
def test_wildcard_blocks_catch_novel_deletion_tools(tool: str) -> None:
    decision = EVALUATOR.evaluate(_tool(tool, node_id="some_agent"), [HOSPITAL_GLOBAL])
    assert decision == Block(f"tool '{tool}' matches blocked pattern 'delete_*'")


def test_prescription_requires_pharmacist_approval() -> None:
    ctx = _tool("prescribe_medication", node_id="medication_review_agent")
    assert EVALUATOR.evaluate(ctx, [HOSPITAL_GLOBAL]) == HUMAN


@pytest.mark.parametrize(
    "tool", ["order_lab_cbc", "order_lab_metabolic_panel", "order_lab_urinalysis"]
)
def test_lab_orders_all_require_approval(tool: str) -> None:
    assert EVALUATOR.evaluate(_tool(tool, node_id="lab_agent"), [HOSPITAL_GLOBAL]) == HUMAN


def test_unapproved_model_blocked_at_runtime() -> None:
    decision = EVALUATOR.evaluate(_model("gpt-4o", node_id="symptom_analysis"), [HOSPITAL_GLOBAL])
    assert isinstance(decision, Block)
    assert "not in the allowlist" in decision.reason


def test_approved_model_proceeds_normally() -> None:
    ctx = _model("claude-sonnet-4-6", node_id="symptom_analysis")
    assert EVALUATOR.evaluate(ctx, [HOSPITAL_GLOBAL]) == Allow()


def test_triage_node_allows_finetuned_model() -> None:
    ctx = _model("ft-triage-v3", node_id="triage_assessment")
    assert EVALUATOR.evaluate(ctx, [HOSPITAL_GLOBAL, TRIAGE_NODE]) == Allow()


def test_triage_node_finetuned_model_blocked_without_node_layer() -> None:
    # Second half of upstream's `triage_node_allows_finetuned_model`.
    decision = EVALUATOR.evaluate(_model("ft-triage-v3", "discharge_summary"), [HOSPITAL_GLOBAL])
    assert isinstance(decision, Block)
    assert decision.reason.startswith("model 'ft-triage-v3' is not in the allowlist")


def test_workflow_policy_adds_restrictions() -> None:
    ctx = _tool("modify_insurance_claim", node_id="insurance_agent")
    decision = EVALUATOR.evaluate(ctx, [HOSPITAL_GLOBAL, INTAKE_WORKFLOW])
    assert decision == Block(
        "tool 'modify_insurance_claim' matches blocked pattern 'modify_insurance_claim'"
    )


@pytest.mark.parametrize(
    "tool", ["lookup_patient", "check_insurance_status", "schedule_appointment"]
)
def test_safe_tools_pass_through_all_policy_layers(tool: str) -> None:
    ctx = _tool(tool, node_id="intake_agent")
    assert EVALUATOR.evaluate(ctx, [HOSPITAL_GLOBAL, INTAKE_WORKFLOW]) == Allow()


# ── Charter divergence: allowlists match the resolved model (ARCHITECTURE fix 2) ────────


def test_charter_allowlist_blocks_alias_resolving_to_unlisted_model() -> None:
    # Reference §2.4 property 6 [BUG/bypass]: upstream matched the alias `claude-fast`.
    models = {"claude-fast": {"provider": "openai", "model": "gpt-4o"}}
    kind = {"type": "model", "model_ref": "claude-fast"}
    ctx = EvaluationContext.from_node_kind("n1", kind, models=models)
    decision = EVALUATOR.evaluate(ctx, [PolicySet(model_allowlist=["claude-*"])])
    assert isinstance(decision, Block)
    assert "resolved to 'openai/gpt-4o'" in decision.reason


def test_charter_allowlist_allows_alias_resolving_to_listed_model() -> None:
    # Reference §2.4 property 6: upstream blocked alias `test_model` even if it maps to Claude.
    models = {"test_model": {"provider": "anthropic", "model": "claude-sonnet-4-6"}}
    kind = {"type": "model", "model_ref": "test_model"}
    ctx = EvaluationContext.from_node_kind("n1", kind, models=models)
    assert EVALUATOR.evaluate(ctx, [PolicySet(model_allowlist=["claude-*"])]) == Allow()
