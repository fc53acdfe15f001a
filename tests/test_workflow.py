"""Workflow definitions (`charter.core.workflow`): the examples parse into what they say,
and every validation rule reports its problem at the exact path — all problems at once."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest

from charter.adapters.files import load_workflow_file
from charter.core.autonomy import AgentCard, AutonomyLevel
from charter.core.budget import BudgetLimits
from charter.core.errors import CharterError, InvalidInput
from charter.core.policy import CombiningMode, PolicySet
from charter.core.workflow import (
    DEFAULT_RETRY_POLICIES,
    Branch,
    EdgeDef,
    Problem,
    RetryPolicy,
    ToolDef,
    WorkflowDef,
    WorkflowInvalid,
    parse_workflow,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
POLICY_FILES = {"policy.yaml", "tenant-acme.yaml", "tenant-acme-rates.yaml"}
WORKFLOW_EXAMPLES = sorted(p for p in EXAMPLES.glob("*.yaml") if p.name not in POLICY_FILES)

TOOL = {"kind": {"type": "tool", "tool_ref": "t.do"}}


def workflow(**changes: Any) -> dict[str, Any]:
    """A minimal valid workflow (start ``a`` → ``b``), with top-level keys replaced
    (a value of None removes the key)."""
    data: dict[str, Any] = {
        "workflow_id": "w",
        "version": "1",
        "start_node": "a",
        "nodes": {"a": copy.deepcopy(TOOL), "b": copy.deepcopy(TOOL)},
        "edges": [{"from": "a", "to": "b"}],
    }
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def with_node(node_id: str, spec: object, **changes: Any) -> dict[str, Any]:
    """The minimal workflow with node ``node_id`` (``a`` or ``b``) replaced by ``spec``."""
    data = workflow(**changes)
    data["nodes"][node_id] = spec
    return data


def problems(data: object) -> list[Problem]:
    """The problems `parse_workflow` reports for ``data`` (it must refuse it)."""
    with pytest.raises(WorkflowInvalid) as caught:
        parse_workflow(data, "wf.yaml")
    return list(caught.value.problems)


def paths(data: object) -> list[str]:
    """Where the problems are, in the order reported."""
    return [p.where for p in problems(data)]


def problem_at(data: object, where: str) -> str:
    """The one problem reported at ``where`` (and it must be the only problem)."""
    found = problems(data)
    assert [p.where for p in found] == [where], found
    return found[0].problem


# ── the examples ───────────────────────────────────────────────────────────────────────


def test_the_workflow_examples_are_found() -> None:
    # Guards the parametrized test below against an empty glob.
    names = {p.name for p in WORKFLOW_EXAMPLES}
    assert {"cleanup.yaml", "flaky-agent.yaml", "refund.yaml", "research.yaml"} <= names


@pytest.mark.parametrize("path", WORKFLOW_EXAMPLES, ids=lambda p: p.name)
def test_every_workflow_example_parses(path: Path) -> None:
    definition, raw = load_workflow_file(path)
    assert isinstance(definition, WorkflowDef)
    assert set(definition.nodes) == set(raw["nodes"])
    assert raw["workflow_id"] == definition.workflow_id
    # Parsing the raw form again (what the store keeps) gives the same definition.
    assert parse_workflow(raw) == definition


def test_the_refund_example() -> None:
    d, _ = load_workflow_file(EXAMPLES / "refund.yaml")
    assert (d.workflow_id, d.version, d.name, d.tenant_id, d.start_node) == (
        "support-refund",
        "1",
        "Support refund",
        "acme",
        "classify",
    )
    assert list(d.nodes) == [
        "classify",
        "lookup_order",
        "route",
        "issue_refund",
        "store_credit",
        "notify",
    ]
    assert {n: (d.nodes[n].tag, d.nodes[n].queue) for n in d.nodes} == {
        "classify": ("model", "model"),
        "lookup_order": ("tool", "tool"),
        "route": ("condition", "general"),
        "issue_refund": ("tool", "tool"),
        "store_credit": ("tool", "tool"),
        "notify": ("tool", "tool"),
    }
    classify = d.nodes["classify"].context
    assert (classify.model_ref, classify.resolved_model) == ("triage", "anthropic/claude-haiku-4")
    assert d.nodes["issue_refund"].context.tool_name == "payments.refund"
    assert {n: d.nodes[n].retry.max_attempts for n in d.nodes} == {
        "classify": 3,  # llm_default
        "lookup_order": 5,  # io_default
        "route": 3,  # default
        "issue_refund": 1,  # no_retry
        "store_credit": 3,
        "notify": 3,
    }
    route = d.nodes["route"]
    assert [b.target for b in route.branches] == ["issue_refund", "store_credit"]
    condition = route.branches[0].condition
    assert condition is not None
    assert condition.source == "state.order.total > 50"
    assert condition.evaluate(state={"order": {"total": 120}}) is True
    assert condition.evaluate(state={"order": {"total": 20}}) is False
    assert route.branches[1] == Branch("store_credit", None)
    assert [(e.source, e.target) for e in d.edges] == [
        ("classify", "lookup_order"),
        ("lookup_order", "route"),
        ("route", "issue_refund"),
        ("route", "store_credit"),
        ("issue_refund", "notify"),
    ]
    assert all(e.condition is None for e in d.edges)
    assert d.tools["crm.lookup_order"] == ToolDef(
        name="crm.lookup_order",
        idempotent=True,
        executor="echo",
        config={"state_patch": {"order": {"id": "A-1042", "total": 120, "currency": "EUR"}}},
    )
    assert d.tools["payments.refund"].idempotent is False
    assert set(d.tools) == {"crm.lookup_order", "payments.refund", "email.send"}
    assert d.policy == PolicySet(require_approval_for=["payments.*"], approver="finance-lead")
    assert d.limits == BudgetLimits(total_tokens=10000, cost_usd=1.0)
    assert d.combining is CombiningMode.MOST_SPECIFIC
    assert d.agents == {}
    assert d.models == {"triage": {"provider": "anthropic", "model": "claude-haiku-4"}}


def test_the_cleanup_example() -> None:
    d, _ = load_workflow_file(EXAMPLES / "cleanup.yaml")
    assert (d.workflow_id, d.tenant_id, d.start_node) == ("staging-cleanup", "acme", "snapshot")
    assert [(e.source, e.target) for e in d.edges] == [
        ("snapshot", "drop_table"),
        ("drop_table", "announce"),
    ]
    assert d.policy == PolicySet()  # present, and empty
    assert d.nodes["drop_table"].policy == PolicySet()
    assert d.nodes["snapshot"].policy is None
    assert d.nodes["drop_table"].context.tool_name == "db.drop_table"
    assert {name: tool.idempotent for name, tool in d.tools.items()} == {
        "db.snapshot": True,
        "db.drop_table": False,
        "chat.post": False,
    }
    assert d.limits == BudgetLimits()
    assert d.name == ""


def test_the_flaky_agent_example() -> None:
    d, _ = load_workflow_file(EXAMPLES / "flaky-agent.yaml")
    card = AgentCard(
        uri="agent://acme/researcher", name="researcher", autonomy=AutonomyLevel.FULLY_AUTONOMOUS
    )
    assert d.agents == {"agent://acme/researcher": card}
    assert d.nodes["search"].agent == card
    assert d.nodes["report"].agent == card
    assert d.nodes["search"].retry == RetryPolicy(max_attempts=5, backoff_ms=20, max_backoff_ms=200)
    assert d.nodes["report"].retry == DEFAULT_RETRY_POLICIES["default"]
    assert d.tools["web.search"] == ToolDef(
        name="web.search",
        idempotent=True,
        executor="fail",
        config={"message": "search backend unavailable (HTTP 503)", "retryable": True},
    )
    assert d.policy is None


def test_the_research_example() -> None:
    d, _ = load_workflow_file(EXAMPLES / "research.yaml")
    assert d.limits == BudgetLimits(total_tokens=120, cost_usd=0.5)
    assert [n.tag for n in d.nodes.values()] == ["model", "model", "model", "tool"]
    assert {n.context.resolved_model for n in d.nodes.values() if n.tag == "model"} == {
        "anthropic/claude-sonnet-4"
    }
    assert d.nodes["publish"].context.tool_name == "wiki.publish"
    assert [n.node_id for n in d.nodes.values() if not d.incoming(n.node_id)] == ["draft"]


# ── the parsed definition ──────────────────────────────────────────────────────────────


def test_a_minimal_workflow_gets_the_defaults() -> None:
    d = parse_workflow(workflow())
    assert (d.workflow_id, d.version, d.start_node) == ("w", "1", "a")
    assert (d.name, d.description, d.tenant_id) == ("", "", "default")
    assert d.policy is None
    assert d.combining is CombiningMode.MOST_SPECIFIC
    assert d.limits == BudgetLimits()
    assert (d.tools, d.agents, d.models) == ({}, {}, {})
    node = d.nodes["a"]
    assert (node.tag, node.queue, node.retry, node.timeout_secs, node.agent) == (
        "tool",
        "tool",
        RetryPolicy(max_attempts=3, backoff_ms=1000, max_backoff_ms=60_000),
        None,
        None,
    )
    assert node.kind == {"type": "tool", "tool_ref": "t.do"}
    assert d.edges == (EdgeDef(source="a", target="b"),)


def test_incoming_and_outgoing_edges_are_indexed() -> None:
    data = workflow(
        nodes={"a": TOOL, "b": TOOL, "c": TOOL, "d": TOOL},
        edges=[
            {"from": "a", "to": "b"},
            {"from": "a", "to": "c"},
            {"from": "b", "to": "d"},
            {"from": "c", "to": "d", "condition": "output.ok == true"},
        ],
    )
    d = parse_workflow(data)
    assert [e.target for e in d.outgoing("a")] == ["b", "c"]
    assert [e.source for e in d.incoming("d")] == ["b", "c"]
    assert d.incoming("a") == ()
    assert d.outgoing("d") == ()
    assert d.outgoing("no-such-node") == ()
    conditional = d.incoming("d")[1].condition
    assert conditional is not None
    assert conditional.source == "output.ok == true"
    assert conditional.evaluate(output={"ok": True}) is True


def test_the_default_retry_policies_follow_upstream_names() -> None:
    assert {name: p.max_attempts for name, p in DEFAULT_RETRY_POLICIES.items()} == {
        "no_retry": 1,
        "llm_default": 3,
        "io_default": 5,
        "default": 3,
    }


def test_a_named_retry_policy_and_an_inline_one() -> None:
    data = workflow(retry_policies={"fast": {"max_attempts": 2, "backoff_ms": 5}})
    data["nodes"]["a"]["retry_policy"] = "fast"
    data["nodes"]["b"]["retry_policy"] = {"max_attempts": 7, "backoff_ms": 2, "max_backoff_ms": 10}
    d = parse_workflow(data)
    assert d.nodes["a"].retry == RetryPolicy(max_attempts=2, backoff_ms=5, max_backoff_ms=60_000)
    assert d.nodes["b"].retry == RetryPolicy(max_attempts=7, backoff_ms=2, max_backoff_ms=10)


def test_a_backoff_cap_below_the_base_is_refused() -> None:
    data = workflow(retry_policies={"odd": {"backoff_ms": 500, "max_backoff_ms": 100}})
    assert problem_at(data, "retry_policies.odd.max_backoff_ms") == (
        "expected at least backoff_ms (500), got 100"
    )
    data = workflow()
    data["nodes"]["b"]["retry_policy"] = {"max_backoff_ms": 10}  # below the default base
    assert problem_at(data, "nodes.b.retry_policy.max_backoff_ms") == (
        "expected at least backoff_ms (1000), got 10"
    )


def test_a_workflow_may_redefine_the_default_retry_policy() -> None:
    d = parse_workflow(workflow(retry_policies={"default": {"max_attempts": 9}}))
    assert d.nodes["a"].retry.max_attempts == 9


def test_node_options_are_kept() -> None:
    data = workflow(
        agents={"r": {"uri": "agent://r", "autonomy": "bounded_autonomous"}},
        combining="deny-overrides",
        token_budget={"input_tokens": 1, "output_tokens": 2, "total_tokens": 3},
        cost_budget_usd=0,
        name="N",
        description="D",
        tenant_id="t1",
    )
    data["nodes"]["a"].update(
        node_timeout_secs=3,
        description="first",
        agent="agent://r",
        policy={"blocked_tools": ["x.*"]},
        id="a",
        labels={"team": "ops"},
    )
    d = parse_workflow(data)
    node = d.nodes["a"]
    assert node.timeout_secs == 3.0
    assert isinstance(node.timeout_secs, float)
    assert node.description == "first"
    assert node.agent == AgentCard(uri="agent://r", autonomy=AutonomyLevel.BOUNDED_AUTONOMOUS)
    assert node.policy == PolicySet(blocked_tools=["x.*"])
    assert d.combining is CombiningMode.DENY_OVERRIDES
    assert d.limits == BudgetLimits(input_tokens=1, output_tokens=2, total_tokens=3, cost_usd=0.0)
    assert (d.name, d.description, d.tenant_id) == ("N", "D", "t1")


def test_a_human_approval_node_with_an_approver_and_a_timeout() -> None:
    spec = {
        "kind": {"type": "human_approval", "approver": "alice", "timeout_secs": 3600.5},
    }
    d = parse_workflow(with_node("b", spec))
    assert (d.nodes["b"].tag, d.nodes["b"].queue) == ("human_approval", "general")
    assert d.nodes["b"].kind["approver"] == "alice"
    assert d.nodes["b"].context.tool_name is None  # it acts on nothing


def test_upstream_keys_that_configure_nothing_are_accepted() -> None:
    d = parse_workflow(
        workflow(
            labels={"x": "y"},
            state_schema={"type": "object"},
            timeouts={"node_timeout": None},
            mcp_servers={"db": {"transport": "stdio", "args": []}},
            remote_agents={},
            data_policy={},
            continue_as_new=False,
            on_budget_exceeded=None,
        )
    )
    assert d.workflow_id == "w"
    assert d.labels == {"x": "y"}
    assert d.state_schema == {"type": "object"}


def test_labels_are_strings() -> None:
    assert problem_at(workflow(labels={"x": 1}), "labels.x") == "expected a string label, got int 1"
    node = dict(TOOL, labels={"team": ["ops"]})
    problem = problem_at(with_node("b", node), "nodes.b.labels.team")
    assert problem == "expected a string label, got list ['ops']"
    assert problem_at(with_node("b", dict(TOOL, labels=[])), "nodes.b.labels").startswith(
        "expected a mapping"
    )


@pytest.mark.parametrize("key", ["mcp_servers", "remote_agents"])
def test_connection_tables_are_mappings_of_mappings(key: str) -> None:
    assert problem_at(workflow(**{key: {"x": "url"}}), f"{key}.x").startswith("expected a mapping")


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("node_timeout", "set node_timeout_secs per node"),
        ("workflow_timeout", "workflow-level timeouts are not supported"),
        ("heartbeat_interval", "lease renewal is a worker setting"),
        ("approval_timeout", "set timeout_secs on each human_approval node"),
    ],
)
def test_each_upstream_timeout_is_refused_when_set(key: str, message: str) -> None:
    assert message in problem_at(workflow(timeouts={key: 30}), f"timeouts.{key}")


def test_strategy_metadata_is_refused_with_its_reason() -> None:
    data = workflow(strategy_metadata={"limits": {"max_cost_usd": 0.5}})
    assert "would not enforce its limits" in problem_at(data, "strategy_metadata")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("kind", "python", "upstream's executor bindings are not supported"),
        ("reference", "m:f", "upstream's executor bindings are not supported"),
        ("input_schema", "S", "tool schemas are not enforced"),
        ("output_schema", "S", "tool schemas are not enforced"),
        ("permissions", ["net"], "tool permissions are not enforced"),
    ],
)
def test_upstream_tool_keys_are_refused_when_set(key: str, value: object, message: str) -> None:
    data = workflow(tools={"t.do": {key: value}})
    assert message in problem_at(data, f"tools.t.do.{key}")
    assert parse_workflow(workflow(tools={"t.do": {key: None}})).tools["t.do"].name == "t.do"


@pytest.mark.parametrize("key", ["temperature", "max_tokens", "timeout_secs", "retry_policy"])
def test_upstream_model_settings_are_refused_when_set(key: str) -> None:
    data = workflow(models={"m": {"provider": "p", "model": "x", key: 1}})
    assert problem_at(data, f"models.m.{key}")
    unset = workflow(models={"m": {"provider": "p", "model": "x", key: None}})
    assert parse_workflow(unset).models["m"]["model"] == "x"
    odd = workflow(models={"m": {"provider": "p", "model": "x", "colour": "red"}})
    assert problem_at(odd, "models.m.colour") == "unknown model key (expected provider, model)"


# versions


@pytest.mark.parametrize(
    "version", ["0.1.0", "1.2.3", "10.20.30", "1.0.0-rc.1", "1.0.0-0.3.7", "0.1.0+abc123", "1", "3"]
)
def test_a_version_is_semantic_or_a_whole_number(version: str) -> None:
    assert parse_workflow(workflow(version=version)).version == version


@pytest.mark.parametrize(
    "version",
    ["not-semver", "1.0", "1.0.0.0", "01.0.0", "1.0.0-", "1.0.0+", "v1.0.0", "1.0.0-01", " 1.0.0"],
)
def test_any_other_version_is_refused_naming_the_form(version: str) -> None:
    problem = problem_at(workflow(version=version), "version")
    assert problem == (
        'expected a semantic version MAJOR.MINOR.PATCH such as "1.0.0" (optionally with '
        f'-pre-release and +build suffixes) or a whole number such as "1", got {version!r}'
    )


# the terminal sentinel `end`


def test_an_edge_to_end_is_a_terminal_edge() -> None:
    data = workflow(edges=[{"from": "a", "to": "b"}, {"from": "b", "to": "end"}])
    d = parse_workflow(data)
    assert [(e.source, e.target) for e in d.edges] == [("a", "b")]
    assert [(e.source, e.target) for e in d.terminal_edges] == [("b", "end")]
    assert d.outgoing("b") == ()


def test_end_is_only_a_target() -> None:
    data = workflow(edges=[{"from": "a", "to": "b"}, {"from": "end", "to": "b"}])
    problem = problem_at(data, "edges[1].from")
    assert problem == "no node named 'end' ('end' is only a target)"


def test_a_second_edge_to_end_is_refused() -> None:
    data = workflow(edges=[{"from": "a", "to": "b"}, {"from": "b", "to": "end"}])
    data["edges"].append({"from": "b", "to": "end"})
    assert problem_at(data, "edges[2]") == "a second edge from 'b' to 'end'"


def test_a_node_named_end_is_that_node() -> None:
    data = workflow(nodes={"a": TOOL, "end": TOOL}, edges=[{"from": "a", "to": "end"}])
    d = parse_workflow(data)
    assert [(e.source, e.target) for e in d.edges] == [("a", "end")]
    assert d.terminal_edges == ()


def test_a_branch_may_end_the_path() -> None:
    data = route([{"condition": "state.go == true", "target": "b"}, {"target": "end"}])
    data["edges"] = [{"from": "a", "to": "b"}, {"from": "a", "to": "end"}]
    data["nodes"].pop("c")
    d = parse_workflow(data)
    assert [b.target for b in d.nodes["a"].branches] == ["b", "end"]


def test_a_branch_to_end_needs_an_edge_to_end() -> None:
    data = route([{"target": "b"}, {"target": "end"}], targets=("b", "c"))
    problem = problem_at(data, "nodes.a.kind.branches[1].target")
    assert problem.startswith("no edge from 'a' to 'end'")


def test_nodes_reached_only_through_end_are_unreachable() -> None:
    data = workflow(edges=[{"from": "a", "to": "end"}])
    assert problem_at(data, "nodes.b") == "unreachable from the start node 'a'"


@pytest.mark.parametrize(
    ("key", "value", "where", "message"),
    [
        ("data_policy", {"pii": "redact"}, "data_policy", "data policies are not enforced"),
        ("timeouts", {"workflow_timeout": 60}, "timeouts.workflow_timeout", "node_timeout_secs"),
        ("timeouts", {"workflow_secs": 60}, "timeouts.workflow_secs", "unknown timeouts key"),
    ],
)
def test_upstream_keys_that_would_do_nothing_are_refused_when_set(
    key: str, value: object, where: str, message: str
) -> None:
    assert message in problem_at(workflow(**{key: value}), where)
    node = dict(TOOL, data_policy={"pii": "redact"})
    assert "not enforced" in problem_at(with_node("b", node), "nodes.b.data_policy")


def test_the_raw_document_is_kept() -> None:
    data = workflow(labels={"x": "y"})
    assert parse_workflow(data).raw == data


# ── every problem, with its path ───────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ([], "expected a mapping, got list []"),
        ("workflow", "expected a mapping, got str 'workflow'"),
    ],
)
def test_a_document_that_is_not_a_mapping(data: object, expected: str) -> None:
    found = problems(data)
    assert found[0] == Problem("", expected)


def test_an_empty_document() -> None:
    assert Problem("", "the workflow is empty") in problems({})
    assert Problem("", "the workflow is empty") in problems(None)


@pytest.mark.parametrize("key", ["workflow_id", "version", "start_node"])
@pytest.mark.parametrize("value", [None, "", 3])
def test_required_strings(key: str, value: object) -> None:
    data = workflow()
    data[key] = value
    found = problems(data)
    assert found[0].where == key
    assert found[0].problem.startswith("expected a non-empty string, got ")


@pytest.mark.parametrize("value", [None, "", 7])
def test_tenant_id_when_given_must_be_a_non_empty_string(value: object) -> None:
    data = workflow()
    data["tenant_id"] = value
    assert problem_at(data, "tenant_id").startswith("expected a non-empty string")


def test_an_unknown_top_level_key() -> None:
    assert problem_at(workflow(colour="blue"), "colour") == "unknown workflow key"
    assert problem_at(workflow(**{"3": 1}), "3") == "unknown workflow key"


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("continue_as_new", True, "continue-as-new segments are not supported"),
        ("continue_as_new", 1, "continue-as-new segments are not supported"),
        ("continue_as_new", 0, "continue-as-new segments are not supported"),  # 0 is not false
        ("on_budget_exceeded", "b", "routing on a budget trip is not supported"),
        ("on_budget_exceeded", 0, "routing on a budget trip is not supported"),
    ],
)
def test_unsupported_upstream_keys_are_refused_when_set(
    key: str, value: object, expected: str
) -> None:
    assert problem_at(workflow(**{key: value}), key).startswith(expected)


def test_combining_must_be_a_known_mode() -> None:
    problem = problem_at(workflow(combining="strictest"), "combining")
    assert problem == "expected one of most-specific, deny-overrides, got str 'strictest'"


# policies


@pytest.mark.parametrize(
    ("policy", "where", "expected"),
    [
        ({"blocked_tools": ["a", 3]}, "policy.blocked_tools[1]", "expected a string pattern"),
        ({"blocked_tools": "shell.*"}, "policy.blocked_tools", "expected a list of string"),
        ({"model_allowlist": {"a": 1}}, "policy.model_allowlist", "expected a list of string"),
        ({"require_approval_for": ["\ud800"]}, "policy.require_approval_for[0]", "surrogate"),
        ({"allow": ["x"]}, "policy.allow", "unknown policy key"),
        ({"approver": " "}, "policy.approver", "expected a user id"),
        (["x"], "policy", "expected a mapping of pattern lists"),
    ],
)
def test_a_bad_workflow_policy(policy: object, where: str, expected: str) -> None:
    assert expected in problem_at(workflow(policy=policy), where)


def test_a_bad_node_policy() -> None:
    data = workflow()
    data["nodes"]["b"]["policy"] = {"blocked_tools": ["ok", None]}
    assert "expected a string pattern" in problem_at(data, "nodes.b.policy.blocked_tools[1]")


# budgets


@pytest.mark.parametrize(
    ("changes", "where", "expected"),
    [
        ({"token_budget": {"total_tokens": -1}}, "token_budget.total_tokens", "non-negative"),
        ({"token_budget": {"input_tokens": 1.5}}, "token_budget.input_tokens", "non-negative"),
        ({"token_budget": {"output_tokens": True}}, "token_budget.output_tokens", "integer"),
        ({"token_budget": {"total_tokens": 2**63}}, "token_budget.total_tokens", "at most"),
        ({"token_budget": {"max": 1}}, "token_budget.max", "unknown token budget key"),
        ({"token_budget": 100}, "token_budget", "expected a mapping"),
        ({"cost_budget_usd": -0.01}, "cost_budget_usd", "finite non-negative number"),
        ({"cost_budget_usd": math.nan}, "cost_budget_usd", "finite non-negative number"),
        ({"cost_budget_usd": math.inf}, "cost_budget_usd", "finite non-negative number"),
        ({"cost_budget_usd": "1.0"}, "cost_budget_usd", "finite non-negative number"),
        ({"cost_budget_usd": True}, "cost_budget_usd", "finite non-negative number"),
    ],
)
def test_bad_budgets(changes: dict[str, Any], where: str, expected: str) -> None:
    assert expected in problem_at(workflow(**changes), where)


# models


def test_a_bad_model_alias_is_reported_once_at_its_own_path() -> None:
    model = {"kind": {"type": "model", "model_ref": "fast"}}
    data = workflow(models={"fast": 42}, nodes={"a": model, "b": model})
    assert problem_at(data, "models.fast") == "expected a model name or a mapping, got int 42"


@pytest.mark.parametrize(
    ("entry", "where"),
    [
        ({"model": 3}, "models.fast.model"),
        ({"provider": ["p"], "model": "m"}, "models.fast.provider"),
        ({"provider": "p"}, "models.fast.model"),
    ],
)
def test_a_bad_model_entry_is_reported_even_when_no_node_uses_it(entry: object, where: str) -> None:
    assert problem_at(workflow(models={"fast": entry}), where).startswith("expected a string")


def test_models_must_be_a_mapping() -> None:
    assert problem_at(workflow(models=["m"]), "models").startswith("expected a mapping")


def test_a_model_alias_resolves_to_provider_and_model() -> None:
    model = {"kind": {"type": "model", "model_ref": "fast"}}
    data = workflow(models={"fast": {"provider": "p", "model": "m"}, "plain": "x"})
    data["nodes"]["b"] = model
    assert parse_workflow(data).nodes["b"].context.resolved_model == "p/m"


# tools


@pytest.mark.parametrize(
    ("spec", "where", "expected"),
    [
        ({"retries": 3}, "tools.t.retries", "unknown tool key"),
        ({"idempotent": "yes"}, "tools.t.idempotent", "expected true or false, got str 'yes'"),
        ({"idempotent": 1}, "tools.t.idempotent", "expected true or false, got int 1"),
        ({"executor": 3}, "tools.t.executor", "expected an executor name, got int 3"),
        ("echo", "tools.t", "expected a mapping, got str 'echo'"),
    ],
)
def test_bad_tools(spec: object, where: str, expected: str) -> None:
    assert problem_at(workflow(tools={"t": spec}), where) == expected


def test_tools_must_be_a_mapping() -> None:
    assert problem_at(workflow(tools=["t"]), "tools").startswith("expected a mapping")


def test_tool_keys_upstream_has_are_accepted() -> None:
    tools = {"t": {"description": "d", "parameters": {}, "config": [1], "idempotent": True}}
    assert parse_workflow(workflow(tools=tools)).tools["t"].config == [1]


# agents


@pytest.mark.parametrize(
    ("agents", "where", "expected"),
    [
        ([{"name": "no uri"}], "agents[0].uri", "expected a string"),
        ([{"uri": "u", "skills": []}], "agents[0].skills", "unknown agent card key"),
        ([{"uri": "u", "autonomy": "wild"}], "agents[0].autonomy", "expected one of"),
        (
            [{"uri": "u", "constraints": {"max_tool_calls": -1}}],
            "agents[0].constraints.max_tool_calls",
            "expected a non-negative integer",
        ),
        ([{"uri": "u"}, {"uri": "u"}], "agents[1]", "agent 'u' is defined twice"),
        ({"researcher": {"name": "r"}}, "agents.researcher.uri", "expected a string"),
        ([3], "agents[0]", "expected a mapping"),
        ("agent://x", "agents", "expected a mapping"),
    ],
)
def test_bad_agent_cards(agents: object, where: str, expected: str) -> None:
    assert expected in problem_at(workflow(agents=agents), where)


@pytest.mark.parametrize("reference", ["agent://nobody", 3, ["agent://r"]])
def test_a_node_agent_must_name_a_card(reference: object) -> None:
    data = workflow(agents=[{"uri": "agent://r"}])
    data["nodes"]["a"]["agent"] = reference
    assert problem_at(data, "nodes.a.agent").startswith("no agent card named ")


# retry policies


@pytest.mark.parametrize(
    ("spec", "where", "expected"),
    [
        ({"max_attempts": 0}, "retry_policies.p.max_attempts", "expected an integer from 1 to"),
        ({"max_attempts": True}, "retry_policies.p.max_attempts", "expected an integer from 1"),
        ({"max_attempts": 2.0}, "retry_policies.p.max_attempts", "expected an integer from 1"),
        (
            {"max_attempts": 10**7},
            "retry_policies.p.max_attempts",
            "expected an integer from 1 to 1000000",
        ),
        ({"backoff_ms": -1}, "retry_policies.p.backoff_ms", "expected an integer from 0 to"),
        (
            {"backoff_ms": 3_600_001},
            "retry_policies.p.backoff_ms",
            "expected an integer from 0 to 3600000",
        ),
        ({"max_backoff_ms": "1s"}, "retry_policies.p.max_backoff_ms", "expected an integer from 0"),
        ({"jitter": 0.1}, "retry_policies.p.jitter", "unknown retry policy key"),
        (5, "retry_policies.p", "expected a mapping"),
    ],
)
def test_bad_retry_policies(spec: object, where: str, expected: str) -> None:
    assert problem_at(workflow(retry_policies={"p": spec}), where).startswith(expected)


def test_a_node_retry_policy_must_be_known() -> None:
    data = workflow()
    data["nodes"]["a"]["retry_policy"] = "patient"
    problem = problem_at(data, "nodes.a.retry_policy")
    assert problem == (
        "unknown retry policy 'patient' (known: default, io_default, llm_default, no_retry)"
    )


def test_an_inline_node_retry_policy_is_checked() -> None:
    data = workflow()
    data["nodes"]["a"]["retry_policy"] = {"max_attempts": -2, "tries": 1}
    assert paths(data) == ["nodes.a.retry_policy.tries", "nodes.a.retry_policy.max_attempts"]


# nodes


def test_nodes_must_be_a_mapping() -> None:
    assert "nodes" in paths(workflow(nodes=["a", "b"]))
    assert problems(workflow(nodes=["a"]))[0] == Problem(
        "nodes", "expected a mapping, got list ['a']"
    )


def test_a_workflow_needs_a_node() -> None:
    assert Problem("nodes", "a workflow needs at least one node") in problems(
        workflow(nodes={}, edges=None)
    )


def test_a_node_id_must_be_a_string() -> None:
    # YAML reads `1:` as an integer; edges and start_node can only name strings.
    data = workflow(nodes={"a": TOOL, 1: TOOL}, edges=[{"from": "a", "to": "1"}])
    assert paths(data) == ["nodes.1", "edges[0].to"]
    assert problems(data)[0].problem == "expected a string node id, got int 1"


def test_a_node_that_is_not_a_mapping() -> None:
    assert paths(with_node("b", "tool")) == ["nodes.b", "nodes.b.kind"]


def test_an_unknown_node_key() -> None:
    data = workflow()
    data["nodes"]["b"]["retries"] = 3
    assert problem_at(data, "nodes.b.retries") == "unknown node key"


def test_a_node_id_field_must_match_its_key() -> None:
    data = workflow()
    data["nodes"]["b"]["id"] = "c"
    assert problem_at(data, "nodes.b.id") == "does not match the node's key 'b'"


@pytest.mark.parametrize(
    ("kind", "where", "expected"),
    [
        ("tool", "nodes.b.kind", "expected a mapping with a 'type', got str 'tool'"),
        (None, "nodes.b.kind", "expected a mapping with a 'type', got NoneType None"),
        ({"tool_ref": "x"}, "nodes.b.kind.type", "expected a node kind tag, got NoneType None"),
        ({"type": "teleport"}, "nodes.b.kind.type", "unknown node kind 'teleport' (known: "),
        ({"type": "tool"}, "nodes.b.kind.tool_ref", "expected a string, got NoneType None"),
        ({"type": "finalizer", "tool_ref": 1}, "nodes.b.kind.tool_ref", "expected a string"),
        ({"type": "model"}, "nodes.b.kind.model_ref", "expected a string"),
        ({"type": "mcp_tool", "tool_name": "x"}, "nodes.b.kind.tool", "expected a string"),
        ({"type": "python_fn", "module": "m"}, "nodes.b.kind.function", "expected a string"),
        ({"type": "java_fn", "method": "m"}, "nodes.b.kind.class", "expected a string"),
        ({"type": "agent"}, "nodes.b.kind.agent_ref", "expected a string"),
        ({"type": "a2a_task", "skill": "s", "remote_agent": 1}, "nodes.b.kind.remote_agent", ""),
        ({"type": "agent_tool", "agent": 3}, "nodes.b.kind.agent", "expected an agent URI"),
        ({"type": "agent_discovery"}, "nodes.b.kind.skill", "expected a string"),
    ],
)
def test_bad_node_kinds(kind: object, where: str, expected: str) -> None:
    assert problem_at(with_node("b", {"kind": kind}), where).startswith(expected)


def test_an_unknown_node_kind_is_an_unknown_node_kind_error_in_the_list() -> None:
    # The kind's own problem is reported, and the other fields of the node are still checked.
    spec = {"kind": {"type": "teleport"}, "node_timeout_secs": -1, "colour": "red"}
    assert paths(with_node("b", spec)) == [
        "nodes.b.colour",
        "nodes.b.kind.type",
        "nodes.b.node_timeout_secs",
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, "expected a positive, finite number of seconds, got 0"),
        (-1, "expected a positive, finite number of seconds, got -1"),
        (math.inf, "expected a positive, finite number of seconds, got inf"),
        (math.nan, "expected a positive, finite number of seconds, got nan"),
        ("10s", "expected a number of seconds, got str '10s'"),
        (True, "expected a number of seconds, got bool True"),
    ],
)
def test_node_timeouts(value: object, expected: str) -> None:
    data = workflow()
    data["nodes"]["b"]["node_timeout_secs"] = value
    assert problem_at(data, "nodes.b.node_timeout_secs") == expected


# human approval


@pytest.mark.parametrize("approver", ["", "  ", 42, None, ["alice"]])
def test_a_human_approval_approver_must_be_a_user_id(approver: object) -> None:
    spec = {"kind": {"type": "human_approval", "approver": approver}}
    problem = problem_at(with_node("b", spec), "nodes.b.kind.approver")
    assert problem.startswith("expected a user id or 'human', got ")


@pytest.mark.parametrize("timeout", [0, -5, math.inf, "1h", False])
def test_a_human_approval_timeout_must_be_positive_and_finite(timeout: object) -> None:
    spec = {"kind": {"type": "human_approval", "timeout_secs": timeout}}
    problem = problem_at(with_node("b", spec), "nodes.b.kind.timeout_secs")
    assert "number of seconds" in problem


def test_a_human_approval_fallback_must_name_a_node() -> None:
    spec = {"kind": {"type": "human_approval", "fallback_node": "nowhere"}}
    assert problem_at(with_node("b", spec), "nodes.b.kind.fallback_node") == (
        "no node named 'nowhere'"
    )


def test_a_human_approval_fallback_may_name_one_of_its_successors() -> None:
    spec = {"kind": {"type": "human_approval", "fallback_node": "b"}}
    assert parse_workflow(with_node("a", spec)).nodes["a"].kind["fallback_node"] == "b"


def test_a_human_approval_fallback_must_be_one_of_its_successors() -> None:
    spec = {"kind": {"type": "human_approval", "fallback_node": "a"}}
    assert problem_at(with_node("b", spec), "nodes.b.kind.fallback_node") == (
        "no edge from 'b' to 'a' (the fallback is one of the approval node's successors, "
        "taken on timeout)"
    )


# condition nodes


def route(branches: object, *, targets: tuple[str, ...] = ("b", "c")) -> dict[str, Any]:
    """A workflow whose start node ``a`` is a condition node with edges to ``targets``."""
    return workflow(
        nodes={"a": {"kind": {"type": "condition", "branches": branches}}, "b": TOOL, "c": TOOL},
        edges=[{"from": "a", "to": t} for t in targets],
    )


def test_condition_branches_are_parsed_in_order() -> None:
    d = parse_workflow(route([{"condition": "state.n > 1", "target": "b"}, {"target": "c"}]))
    branches = d.nodes["a"].branches
    assert [b.target for b in branches] == ["b", "c"]
    assert branches[0].condition is not None
    assert branches[0].condition.evaluate(state={"n": 2}) is True
    assert branches[1].condition is None


@pytest.mark.parametrize("branches", [None, "b", {"target": "b"}])
def test_a_condition_node_needs_a_list_of_branches(branches: object) -> None:
    problem = problem_at(route(branches), "nodes.a.kind.branches")
    assert problem.startswith("expected a list of branches")


def test_a_condition_node_without_branches_is_a_pass_through() -> None:
    # Upstream's validator accepts `branches: []`; its scheduler routes nothing then.
    d = parse_workflow(route([]))
    assert d.nodes["a"].branches == ()


def test_a_branch_key_that_is_not_upstreams_is_refused() -> None:
    problem = problem_at(
        route([{"target": "b", "weight": 2}, {"target": "c"}]), "nodes.a.kind.branches[0].weight"
    )
    assert problem == "unknown branch key (expected condition, target)"


def test_a_condition_nodes_expression_must_parse() -> None:
    data = route([{"target": "b"}])
    data["nodes"]["a"]["kind"]["expression"] = "state.x == true"
    assert parse_workflow(data).nodes["a"].branches[0].target == "b"
    data["nodes"]["a"]["kind"]["expression"] = "len(state)"
    problem = problem_at(data, "nodes.a.kind.expression")
    assert problem.startswith("call is not allowed in a condition")


def test_a_branch_condition_must_parse() -> None:
    problem = problem_at(
        route([{"condition": "len(state) > 1", "target": "b"}, {"target": "c"}]),
        "nodes.a.kind.branches[0].condition",
    )
    assert problem.startswith("call is not allowed in a condition at column 1")


def test_a_branch_target_must_be_a_node() -> None:
    problem = problem_at(
        route([{"target": "b"}, {"target": "zz"}]), "nodes.a.kind.branches[1].target"
    )
    assert problem == "no node named 'zz'"


def test_a_branch_target_must_be_one_of_the_nodes_edges() -> None:
    data = route([{"target": "b"}, {"target": "c"}], targets=("b",))
    data["edges"].append({"from": "b", "to": "c"})
    problem = problem_at(data, "nodes.a.kind.branches[1].target")
    assert problem.startswith("no edge from 'a' to 'c'")


def test_a_branch_without_a_target() -> None:
    found = problems(route([{"condition": "true"}, {"target": "c"}]))
    assert found[0].where == "nodes.a.kind.branches[0].target"
    assert found[0].problem.startswith("expected a non-empty string")


# edges


@pytest.mark.parametrize(
    ("edges", "where", "expected"),
    [
        ([{"from": "a", "to": "b", "when": "x"}], "edges[0].when", "unknown edge key"),
        ([{"from": "a", "to": "b"}, {"from": "a", "to": "b"}], "edges[1]", "a second edge"),
        ([{"from": "a", "to": "b", "condition": "state.x +"}], "edges[0].condition", "not a"),
        ([{"from": "a", "to": "b", "condition": 1}], "edges[0].condition", "expected a condit"),
        (
            [{"from": "a", "to": "b", "condition": "state.a.b(1)"}],
            "edges[0].condition",
            "call is not allowed in a condition at column 1",
        ),
    ],
)
def test_bad_edges(edges: object, where: str, expected: str) -> None:
    assert problem_at(workflow(edges=edges), where).startswith(expected)


def test_edges_must_be_a_list() -> None:
    data = workflow(nodes={"a": TOOL}, edges={"from": "a", "to": "b"})
    assert problem_at(data, "edges").startswith("expected a list of edges, got dict")


def test_an_edge_to_an_unknown_node() -> None:
    data = workflow(nodes={"a": TOOL}, edges=[{"from": "a", "to": "zz"}])
    assert problem_at(data, "edges[0].to") == "no node named 'zz'"


def test_an_edge_from_an_unknown_node() -> None:
    data = workflow(edges=[{"from": "a", "to": "b"}, {"from": "zz", "to": "b"}])
    assert problem_at(data, "edges[1].from") == "no node named 'zz'"


def test_an_edge_without_ends() -> None:
    found = problems(workflow(edges=[{"from": "a", "to": "b"}, {"to": "b"}]))
    assert [p.where for p in found] == ["edges[1].from"]
    assert found[0].problem == "expected a non-empty string, got NoneType None"


def test_an_edge_that_is_not_a_mapping() -> None:
    assert paths(workflow(edges=[{"from": "a", "to": "b"}, "a->b"])) == [
        "edges[1]",
        "edges[1].from",
        "edges[1].to",
    ]


# the graph


def test_the_start_node_must_exist() -> None:
    assert problem_at(workflow(start_node="zz"), "start_node") == "no node named 'zz'"


def test_an_unreachable_node() -> None:
    data = workflow(nodes={"a": TOOL, "b": TOOL, "c": TOOL})
    assert problem_at(data, "nodes.c") == "unreachable from the start node 'a'"


def test_every_unreachable_node_is_reported() -> None:
    data = workflow(
        nodes={"a": TOOL, "b": TOOL, "c": TOOL, "d": TOOL},
        edges=[{"from": "a", "to": "b"}, {"from": "c", "to": "d"}],
    )
    assert paths(data) == ["nodes.c", "nodes.d"]


def test_a_cycle() -> None:
    data = workflow(
        nodes={"a": TOOL, "b": TOOL, "c": TOOL},
        edges=[{"from": "a", "to": "b"}, {"from": "b", "to": "c"}, {"from": "c", "to": "b"}],
    )
    assert problem_at(data, "edges") == "cycle: b -> c -> b (workflows are acyclic; use retries)"


def test_a_self_loop_is_a_cycle() -> None:
    data = workflow(edges=[{"from": "a", "to": "b"}, {"from": "b", "to": "b"}])
    assert problem_at(data, "edges").startswith("cycle: b -> b")


def test_the_start_node_must_be_a_root() -> None:
    data = workflow(edges=[{"from": "a", "to": "b"}, {"from": "b", "to": "a"}])
    found = problems(data)
    assert [p.where for p in found] == ["edges", "start_node"]
    assert found[1].problem == "'a' has incoming edges; the start node must be a root"


# all at once


def test_every_problem_is_reported_at_once() -> None:
    data = {
        "workflow_id": "",
        "version": "1",
        "start_node": "a",
        "colour": "blue",
        "continue_as_new": True,
        "token_budget": {"total_tokens": -5},
        "cost_budget_usd": math.nan,
        "policy": {"blocked_tools": ["ok", 7]},
        "tools": {"t": {"idempotent": "yes"}},
        "agents": [{"uri": "agent://r", "autonomy": "wild"}],
        "retry_policies": {"p": {"max_attempts": 0}},
        "nodes": {
            "a": {"kind": {"type": "tool", "tool_ref": "t"}, "retry_policy": "nope"},
            "b": {"kind": {"type": "teleport"}},
            "c": {"kind": {"type": "tool", "tool_ref": "t"}, "agent": "agent://ghost"},
            "d": {"kind": {"type": "human_approval", "approver": "", "timeout_secs": -1}},
        },
        "edges": [
            {"from": "a", "to": "b", "condition": "f(x)"},
            {"from": "a", "to": "zz"},
            {"from": "b", "to": "c"},
            {"from": "c", "to": "b"},
        ],
    }
    with pytest.raises(WorkflowInvalid) as caught:
        parse_workflow(data, "wf.yaml")
    error = caught.value
    assert sorted(p.where for p in error.problems) == sorted(
        [
            "colour",
            "continue_as_new",
            "workflow_id",
            "policy.blocked_tools[1]",
            "token_budget.total_tokens",
            "cost_budget_usd",
            "tools.t.idempotent",
            "agents[0].autonomy",
            "retry_policies.p.max_attempts",
            "nodes.a.retry_policy",
            "nodes.b.kind.type",
            "nodes.c.agent",
            "nodes.d.kind.approver",
            "nodes.d.kind.timeout_secs",
            "edges[0].condition",
            "edges[1].to",
            "edges",  # the cycle b -> c -> b
            "nodes.d",  # unreachable
        ]
    )
    message = str(error)
    assert message.startswith("wf.yaml: 18 problems:\n  ")
    for p in error.problems:
        assert f"\n  {p}" in message


def test_workflow_invalid_is_bad_input_naming_its_source() -> None:
    with pytest.raises(WorkflowInvalid) as caught:
        parse_workflow(workflow(colour="blue"), "flows/x.yaml")
    error = caught.value
    assert isinstance(error, InvalidInput)
    assert isinstance(error, CharterError)
    assert error.source == "flows/x.yaml"
    assert error.where == "flows/x.yaml"
    assert str(error) == "flows/x.yaml: 1 problem:\n  colour: unknown workflow key"
    assert error.problems == (Problem("colour", "unknown workflow key"),)


def test_problem_renders_with_and_without_a_path() -> None:
    assert str(Problem("nodes.a", "bad")) == "nodes.a: bad"
    assert str(Problem("", "the workflow is empty")) == "the workflow is empty"


def test_parsing_does_not_change_the_document() -> None:
    data = with_node("b", {"kind": {"type": "teleport"}}, colour="x")
    before = copy.deepcopy(data)
    problems(data)
    assert data == before


# ── files ──────────────────────────────────────────────────────────────────────────────


VALID_YAML = """\
workflow_id: w
version: "1"
start_node: a
nodes:
  a: {kind: {type: tool, tool_ref: t.do}}
  b: {kind: {type: tool, tool_ref: t.do}}
edges:
  - {from: a, to: b, condition: "output.ok == true"}
"""


def test_load_workflow_file_returns_the_definition_and_the_raw_document(tmp_path: Path) -> None:
    path = tmp_path / "flow.yaml"
    path.write_text(VALID_YAML, encoding="utf-8")
    definition, raw = load_workflow_file(path)
    assert list(definition.nodes) == ["a", "b"]
    assert definition.edges[0].condition is not None
    assert definition.edges[0].condition.source == "output.ok == true"
    assert raw["edges"] == [{"from": "a", "to": "b", "condition": "output.ok == true"}]
    # The raw document is JSON: the store keeps it as is.
    assert json.loads(json.dumps(raw)) == raw


def test_load_workflow_file_names_the_file_and_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(
        VALID_YAML.replace("t.do}}\nedges", "t.do}, retries: 2}\nedges") + "colour: blue\n",
        encoding="utf-8",
    )
    with pytest.raises(WorkflowInvalid) as caught:
        load_workflow_file(path)
    error = caught.value
    assert error.where == str(path)
    assert [p.where for p in error.problems] == ["colour", "nodes.b.retries"]
    assert str(error).startswith(f"{path}: 2 problems:\n  colour: unknown workflow key")


def test_load_workflow_file_reads_json(tmp_path: Path) -> None:
    path = tmp_path / "flow.json"
    path.write_text(json.dumps(workflow()), encoding="utf-8")
    definition, raw = load_workflow_file(path)
    assert definition == parse_workflow(workflow())
    assert raw == workflow()


def test_a_lone_surrogate_in_a_json_condition_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "flow.json"
    text = json.dumps(workflow(edges=[{"from": "a", "to": "b", "condition": "x"}]))
    path.write_text(text.replace('"condition": "x"', '"condition": "\\ud800"'), encoding="utf-8")
    with pytest.raises(WorkflowInvalid) as caught:
        load_workflow_file(path)
    assert [p.where for p in caught.value.problems] == ["edges[0].condition"]


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        (VALID_YAML + "workflow_id: other\n", 9, "workflow_id"),
        (VALID_YAML.replace("  b: {kind", "  a: {kind"), 6, "a"),
        (
            VALID_YAML + "policy:\n  blocked_tools: [x]\n  blocked_tools: []\n",
            11,
            "blocked_tools",
        ),
    ],
)
def test_a_yaml_duplicate_key_is_refused(tmp_path: Path, text: str, line: int, key: str) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InvalidInput) as caught:
        load_workflow_file(path)
    error = caught.value
    assert not isinstance(error, WorkflowInvalid)  # refused while reading, before parsing
    assert error.where.startswith(f"{path}:{line}:")
    assert error.problem == f"invalid YAML: duplicate key {key!r} (line {line})"


def test_a_yaml_integer_node_id_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "ids.yaml"
    path.write_text(
        "workflow_id: w\nversion: '1'\nstart_node: a\n"
        "nodes:\n  a: {kind: {type: tool, tool_ref: t}}\n  1: {kind: {type: tool, tool_ref: t}}\n"
        "edges: [{from: a, to: '1'}]\n",
        encoding="utf-8",
    )
    with pytest.raises(WorkflowInvalid) as caught:
        load_workflow_file(path)
    assert caught.value.problems[0] == Problem("nodes.1", "expected a string node id, got int 1")


def test_load_workflow_file_of_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(InvalidInput) as caught:
        load_workflow_file(path)
    assert (caught.value.where, caught.value.problem) == (str(path), "no such file")
