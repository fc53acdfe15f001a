"""Upstream's compiled workflow IR (tests/fixtures/upstream_ir/), each file run to the outcome
docs/workflows.md §1.3 documents for it, with the real worker on a real store.

``hello_agent_ir.json`` and ``fleet_researcher_ir.json`` are upstream's own API-test fixtures
(Apache-2.0; see the README next to them); ``fleet_researcher_runnable_ir.json`` is the latter
without the two keys Charter refuses. The other files are written here in the shapes of
upstream's validator tests (runtime/ir/src/validate.rs) and scheduler tests.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from charter.adapters.memory import MemoryStore
from charter.adapters.sqlite import SqliteStore
from charter.bootstrap import build_worker
from charter.core.events import Event, NodeCompleted, WorkflowCompleted, event_type
from charter.core.ports import Store
from charter.core.records import Tenant
from charter.core.workflow import Problem, WorkflowDef, WorkflowInvalid, parse_workflow
from charter.worker import RunOutcome, drive, start_run

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "upstream_ir"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def tenant(store: Store) -> Store:
    now = store.clock.now()
    store.put_tenant(Tenant(tenant_id="default", name="default", created_at=now, updated_at=now))
    return store


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "memory":
        return tenant(MemoryStore())
    return tenant(SqliteStore(tmp_path / "charter.db"))


def run(store: Store, workflow: WorkflowDef, run_id: str, inputs: Any = None) -> RunOutcome:
    start_run(store, workflow, inputs=inputs, execution_id=run_id)
    return drive(build_worker(store), run_id, sleep=lambda _: None)


def node_fates(events: Sequence[Event]) -> dict[str, str]:
    """Each node's last scheduling event: node_completed, node_skipped or node_failed."""
    fates: dict[str, str] = {}
    for event in events:
        kind = event_type(event.kind)
        if kind in ("node_completed", "node_skipped", "node_failed", "node_cancelled"):
            fates[str(getattr(event.kind, "node_id", ""))] = kind
    return fates


def outputs(events: Sequence[Event]) -> dict[str, Any]:
    return {e.kind.node_id: e.kind.output for e in events if isinstance(e.kind, NodeCompleted)}


def test_every_fixture_is_covered_here() -> None:
    named = {p.stem for p in FIXTURES.glob("*.json")}
    assert named == set(RUNS) | set(REFUSED)


# ── the files that load, and their runs ────────────────────────────────────────────────

#: fixture -> (inputs, status, node fates, error fragment)
RUNS: dict[str, list[tuple[Any, str, dict[str, str], str]]] = {
    "hello_agent_ir": [({"query": "why?"}, "completed", {"think": "node_completed"}, "")],
    "fleet_researcher_runnable_ir": [
        (
            None,
            "completed",
            {
                **dict.fromkeys(("__plan__", "__finalize__"), "node_completed"),
                **{f"__cost_guard_{i}__": "node_completed" for i in range(4)},
                **{f"__step_{i}__": "node_completed" for i in range(4)},
                "__limit_exceeded__": "node_skipped",
            },
            "",
        ),
        (
            {"__cost_exceeded__": True},
            "failed",
            {
                "__plan__": "node_completed",
                "__cost_guard_0__": "node_completed",
                **{f"__step_{i}__": "node_skipped" for i in range(4)},
                **{f"__cost_guard_{i}__": "node_skipped" for i in range(1, 4)},
                "__finalize__": "node_skipped",
                "__limit_exceeded__": "node_failed",
            },
            "node(s) failed terminally: __limit_exceeded__",
        ),
    ],
    "pass_through_to_end": [(None, "completed", {"a": "node_completed"}, "")],
    "branch_to_end": [
        ({"x": "go"}, "completed", {"a": "node_completed", "b": "node_completed"}, ""),
        ({"x": "stop"}, "completed", {"a": "node_completed", "b": "node_skipped"}, ""),
    ],
    "agent_loop": [
        (
            None,
            "completed",
            {
                "model_0": "node_completed",
                "gate_0": "node_completed",
                "tools_0": "node_skipped",
                "model_1": "node_skipped",
            },
            "",
        ),
        (
            {"last_model_finish_reason": "tool_calls"},
            "completed",
            dict.fromkeys(("model_0", "gate_0", "tools_0", "model_1"), "node_completed"),
            "",
        ),
    ],
    "node_named_end": [
        ({"x": "go"}, "completed", dict.fromkeys(("gate_0", "work", "end"), "node_completed"), ""),
        (
            {"x": "stop"},
            "completed",
            {"gate_0": "node_completed", "work": "node_skipped", "end": "node_completed"},
            "",
        ),
    ],
}


@pytest.mark.parametrize(
    ("name", "case"), [(name, i) for name, cases in RUNS.items() for i in range(len(cases))]
)
def test_a_fixture_runs_to_its_documented_outcome(store: Store, name: str, case: int) -> None:
    inputs, status, fates, error = RUNS[name][case]
    workflow = parse_workflow(load(name), name)
    outcome = run(store, workflow, f"{name}-{case}", inputs)
    events = store.read_events(outcome.execution_id)
    assert (outcome.status, node_fates(events)) == (status, fates), outcome.error
    assert error in (outcome.error or "")
    assert outcome.error is None if status == "completed" else outcome.error


def test_end_runs_nothing_and_ends_only_its_path(store: Store) -> None:
    # `model_0 -> gate_0 -> end` and the tools path: gate_0 chose `end`, so the path through
    # tools_0 is skipped; nothing named `end` is scheduled, and the run completes once every
    # node is finished, with the state as the last node left it.
    workflow = parse_workflow(load("agent_loop"))
    assert [(e.source, e.target) for e in workflow.terminal_edges] == [
        ("gate_0", "end"),
        ("model_1", "end"),
    ]
    outcome = run(store, workflow, "loop", {"seed": 1})
    events = store.read_events(outcome.execution_id)
    assert outputs(events)["gate_0"] == {"chosen_target": "end"}
    assert all(getattr(e.kind, "node_id", None) != "end" for e in events)
    assert isinstance(events[-1].kind, WorkflowCompleted)
    assert events[-1].kind.final_state == {
        "seed": 1,
        "model_0": "[anthropic/claude-sonnet-4-6] done",  # fake_model's state patch
    }


def test_a_condition_node_without_branches_passes_through_without_a_worker(
    store: Store,
) -> None:
    workflow = parse_workflow(load("branch_to_end"))
    outcome = run(store, workflow, "pass", {"x": "go"})
    events = store.read_events(outcome.execution_id)
    b_events = [event_type(e.kind) for e in events if getattr(e.kind, "node_id", None) == "b"]
    assert b_events == ["node_scheduled", "node_completed"]  # never started by a worker
    assert outputs(events)["b"] == {}


def test_upstreams_fixture_keys_are_kept_on_the_definition() -> None:
    hello = parse_workflow(load("hello_agent_ir"))
    assert hello.state_schema == '{"query": "str", "answer": "str"}'
    assert (hello.name, hello.description, hello.version) == ("", "", "0.1.0")
    fleet = parse_workflow(load("fleet_researcher_runnable_ir"))
    assert fleet.labels["jamjet.strategy"] == "plan-and-execute"
    assert fleet.nodes["__plan__"].labels["jamjet.strategy.node"] == "plan_generation"
    assert fleet.nodes["__plan__"].retry.max_attempts == 3  # llm_default


# ── the files that are refused, and why ────────────────────────────────────────────────

REFUSED: dict[str, list[Problem]] = {
    "fleet_researcher_ir": [
        Problem(
            "timeouts.workflow_timeout",
            "workflow-level timeouts are not supported; set node_timeout_secs per node",
        ),
        Problem(
            "timeouts.heartbeat_interval",
            "lease renewal is a worker setting (a third of its lease period), not a workflow's",
        ),
        Problem(
            "strategy_metadata",
            "strategy compiler metadata is not part of upstream's IR, and Charter would not "
            "enforce its limits; bound the run with token_budget and cost_budget_usd instead",
        ),
    ],
    "invalid_semver": [
        Problem(
            "version",
            'expected a semantic version MAJOR.MINOR.PATCH such as "1.0.0" (optionally with '
            "-pre-release and +build suffixes) or a whole number such as \"1\", got 'not-semver'",
        )
    ],
    "unknown_branch_target": [
        Problem("nodes.a.kind.branches[0].target", "no node named 'ghost'"),
    ],
    "branch_target_missing_out_edge": [
        Problem(
            "nodes.a.kind.branches[0].target",
            "no edge from 'a' to 'b' (a branch chooses among the condition node's edges)",
        ),
        Problem("nodes.b", "unreachable from the start node 'a'"),
    ],
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_fixture_is_refused_naming_every_problem(name: str) -> None:
    with pytest.raises(WorkflowInvalid) as caught:
        parse_workflow(load(name), name)
    assert list(caught.value.problems) == REFUSED[name]


def test_the_runnable_fleet_fixture_is_upstreams_without_the_refused_keys() -> None:
    original = load("fleet_researcher_ir")
    del original["timeouts"], original["strategy_metadata"]
    assert load("fleet_researcher_runnable_ir") == original
