"""The pure helpers of one attempt (`charter.core.attempt`), through their public names: the
events that end an attempt, streaming progress, side effects and their recorded results."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

import pytest

from charter.core.attempt import (
    SUMMARY_CHARS,
    chunk_summary,
    completed_event,
    effect_key,
    executed_attempt,
    failed_attempt,
    finished_run_event,
    is_effectful,
    progress_events,
    result_from_json,
    result_to_json,
    terminal_failure,
    with_failure_usage,
)
from charter.core.budget import BudgetState, Usage
from charter.core.errors import ExecutorFailed
from charter.core.events import (
    AgentToolProgress,
    EventKind,
    NodeCancelled,
    NodeCompleted,
    NodeFailed,
    NodeStarted,
    UsageRecorded,
)
from charter.core.ports import NodeResult
from charter.core.queue import backoff_delay_ms
from charter.core.records import ExecutionStatus, WorkItem, WorkItemStatus
from charter.core.workflow import WorkflowDef, parse_workflow

T0: Final = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


BRANCHES: Final = [{"target": "pay"}, {"target": "search"}]


def _workflow(**extra: Any) -> WorkflowDef:
    return parse_workflow(
        {
            "workflow_id": "w",
            "version": "1",
            "start_node": "route",
            "nodes": {
                "pay": {
                    "kind": {"type": "tool", "tool_ref": "payments.refund", "args": {"n": 1}},
                    "retry_policy": {"max_attempts": 3, "backoff_ms": 100},
                },
                "search": {"kind": {"type": "tool", "tool_ref": "web.search"}},
                "think": {"kind": {"type": "model", "model_ref": "m"}},
                "route": {"kind": {"type": "condition", "branches": BRANCHES}},
            },
            "edges": [
                {"from": "route", "to": "pay"},
                {"from": "route", "to": "search"},
                {"from": "pay", "to": "think"},
            ],
            "tools": {"web.search": {"idempotent": True}},
            **extra,
        }
    )


def _item(attempt: int = 0) -> WorkItem:
    return WorkItem(
        item_id="item-1",
        tenant_id="default",
        execution_id="run-1",
        node_id="pay",
        queue="tool",
        payload={},
        attempt=attempt,
        max_attempts=3,
        backoff_base_ms=100,
        status=WorkItemStatus.CLAIMED,
        available_at=T0,
        created_at=T0,
    )


RESULT: Final = NodeResult(
    output={"ok": True},
    state_patch={"paid": 1},
    usage=Usage(input_tokens=10, output_tokens=5, cost_usd=0.25, tool_calls=1, iterations=2),
    gen_ai_system="openai",
    gen_ai_model="gpt",
    finish_reason="stop",
)


# ── side effects ──


def test_acting_nodes_are_effects_unless_idempotent_or_a_model_call() -> None:
    workflow = _workflow()
    nodes = workflow.nodes
    assert is_effectful(workflow, nodes["pay"]) is True
    assert is_effectful(workflow, nodes["search"]) is False  # its tool is idempotent
    assert is_effectful(workflow, nodes["think"]) is False  # a model call
    assert is_effectful(workflow, nodes["route"]) is False  # not acting


def test_the_effect_key_is_the_item_the_arguments_and_the_state_seen() -> None:
    key = effect_key("item-1", {"n": 1}, "digest-a")
    assert key == effect_key("item-1", {"n": 1}, "digest-a")
    assert len({key, effect_key("item-2", {"n": 1}, "digest-a")}) == 2
    assert len({key, effect_key("item-1", {"n": 2}, "digest-a")}) == 2
    assert len({key, effect_key("item-1", {"n": 1}, "digest-b")}) == 2


def test_a_recorded_result_reads_back_as_the_result() -> None:
    recorded = result_to_json(RESULT)
    assert recorded["usage"] == {
        "input_tokens": 10,
        "output_tokens": 5,
        "cost_usd": 0.25,
        "tool_calls": 1,
        "iterations": 2,
    }
    assert result_from_json(recorded) == RESULT
    assert result_from_json(result_to_json(NodeResult())) == NodeResult()


def test_a_recorded_result_that_is_not_an_object_fails_for_good() -> None:
    with pytest.raises(ExecutorFailed, match="not an object") as raised:
        result_from_json([1, 2])
    assert raised.value.retryable is False


# ── the events that end an attempt ──


def test_completed_event_carries_output_usage_duration_and_key() -> None:
    event = completed_event("pay", RESULT, duration_ms=12, idempotency_key="k")
    assert event == NodeCompleted(
        node_id="pay",
        output={"ok": True},
        state_patch={"paid": 1},
        duration_ms=12,
        gen_ai_system="openai",
        gen_ai_model="gpt",
        input_tokens=10,
        output_tokens=5,
        finish_reason="stop",
        cost_usd=0.25,
        idempotency_key="k",
    )


def test_completed_event_leaves_zero_usage_out_and_makes_no_patch_empty() -> None:
    event = completed_event("pay", NodeResult(output=1), duration_ms=0, idempotency_key=None)
    assert (event.state_patch, event.input_tokens, event.output_tokens, event.cost_usd) == (
        {},
        None,
        None,
        None,
    )
    assert event.idempotency_key is None


def test_terminal_failure_is_not_retryable() -> None:
    assert terminal_failure("pay", 2, "no") == NodeFailed(
        node_id="pay", error="no", attempt=2, retryable=False
    )


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (ExecutionStatus.CANCELLED, NodeCancelled(node_id="pay")),
        (
            ExecutionStatus.COMPLETED,
            NodeFailed(node_id="pay", error="run is already completed", attempt=1, retryable=False),
        ),
        (
            ExecutionStatus.FAILED,
            NodeFailed(node_id="pay", error="run is already failed", attempt=1, retryable=False),
        ),
    ],
)
def test_an_attempt_of_a_finished_run_is_cancelled_or_failed(
    status: ExecutionStatus, expected: EventKind
) -> None:
    assert finished_run_event(status, "pay", 1) == expected


def test_a_failure_records_its_usage_as_an_error_once() -> None:
    started = NodeStarted(node_id="pay", worker_id="w", attempt=1)
    events = with_failure_usage([started], node_id="pay", attempt=1, usage=Usage(input_tokens=3))
    assert events == (
        started,
        UsageRecorded(node_id="pay", attempt=1, input_tokens=3, succeeded=False),
    )
    assert with_failure_usage(events, node_id="pay", attempt=1) == events
    assert with_failure_usage((), node_id="pay", attempt=0) == (
        UsageRecorded(node_id="pay", attempt=0, succeeded=False),
    )


def test_an_executed_attempt_ends_with_its_settlement_and_completion() -> None:
    workflow = _workflow()
    gated: list[EventKind] = [NodeStarted(node_id="pay", worker_id="w", attempt=0)]
    end = executed_attempt(
        workflow,
        workflow.nodes["pay"],
        0,
        RESULT,
        gate_events=gated,
        chunks=["one", {"two": 2}],
        budget=BudgetState(),
        duration_ms=7,
        idempotency_key="k",
    )
    assert end.completed is True
    kinds = [type(kind) for kind in end.events]
    assert kinds[:3] == [NodeStarted, AgentToolProgress, AgentToolProgress]
    assert UsageRecorded in kinds
    assert end.events[-1] == completed_event("pay", RESULT, duration_ms=7, idempotency_key="k")


def test_an_executed_attempt_over_budget_fails_without_a_completion() -> None:
    workflow = _workflow(token_budget={"total_tokens": 10})
    end = executed_attempt(
        workflow,
        workflow.nodes["pay"],
        0,
        RESULT,
        gate_events=(),
        chunks=(),
        budget=BudgetState(),
        duration_ms=7,
        idempotency_key=None,
    )
    assert end.completed is False
    assert not any(isinstance(kind, NodeCompleted) for kind in end.events)
    last = end.events[-1]
    assert isinstance(last, NodeFailed)
    assert last.retryable is False


def test_a_failed_attempt_counts_an_error_and_backs_off_by_the_retry_policy() -> None:
    workflow = _workflow()
    gated: list[EventKind] = [NodeStarted(node_id="pay", worker_id="w", attempt=1)]
    failed = failed_attempt(
        workflow, workflow.nodes["pay"], _item(1), gate_events=gated, budget=BudgetState()
    )
    assert failed.events[0] == gated[0]
    recorded = [kind for kind in failed.events if isinstance(kind, UsageRecorded)]
    assert [r.succeeded for r in recorded] == [False]
    assert failed.delay_ms == backoff_delay_ms(2, 100, jitter_key="item-1", max_ms=60_000)


# ── streaming ──


def test_chunks_become_numbered_progress_events_with_short_summaries() -> None:
    long = "x" * (SUMMARY_CHARS + 50)
    events = progress_events("pay", ["hello", {"n": 1}, long])
    assert [(e.node_id, e.chunk_index) for e in events] == [("pay", 0), ("pay", 1), ("pay", 2)]
    assert events[0].partial_output_summary == "hello"
    assert events[1].partial_output_summary == "{'n': 1}"
    assert len(events[2].partial_output_summary) == SUMMARY_CHARS
    assert events[2].partial_output_summary.endswith("…")
    assert chunk_summary("x" * SUMMARY_CHARS) == "x" * SUMMARY_CHARS
    assert progress_events("pay", []) == ()
