"""The scheduler's rules (`charter.core.scheduler` module doc), one behaviour per test.

Logs are built by hand with explicit times, the way the store would sequence them, and
planned against with an explicit ``now``; `Log.advance` plays the shell (plan, append).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import pytest

from charter.core.events import (
    ApprovalDecision,
    ApprovalReceived,
    Event,
    EventKind,
    NodeCancelled,
    NodeCompleted,
    NodeFailed,
    NodeParked,
    NodeScheduled,
    NodeSkipped,
    NodeStarted,
    OutcomeResolved,
    OutcomeUnknown,
    RetryScheduled,
    ToolApprovalRequired,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowStarted,
)
from charter.core.queue import backoff_delay_ms
from charter.core.records import NewWorkItem
from charter.core.scheduler import (
    NodeProgress,
    NodeState,
    Plan,
    Progress,
    RunState,
    fold,
    fold_event,
    fold_kinds,
    plan,
)
from charter.core.workflow import WorkflowDef, parse_workflow

EXEC: Final = "run-1"
T0: Final = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def _workflow(
    nodes: dict[str, Any], edges: Sequence[tuple[str, str] | tuple[str, str, str]] = ()
) -> WorkflowDef:
    """A workflow whose start node is the first of ``nodes``; edges as (from, to[, condition])."""
    edge_specs: list[dict[str, str]] = []
    for edge in edges:
        spec = {"from": edge[0], "to": edge[1]}
        if len(edge) == 3:
            spec["condition"] = edge[2]
        edge_specs.append(spec)
    return parse_workflow(
        {
            "workflow_id": "wf",
            "version": "1",
            "start_node": next(iter(nodes)),
            "nodes": nodes,
            "edges": edge_specs,
        }
    )


def _tool(**extra: Any) -> dict[str, Any]:
    return {"kind": {"type": "tool", "tool_ref": "t.do"}, **extra}


def _route(*targets: str) -> dict[str, Any]:
    return {"kind": {"type": "condition", "branches": [{"target": t} for t in targets]}}


def _approval(**kind: Any) -> dict[str, Any]:
    return {"kind": {"type": "human_approval", "description": "ship it?", **kind}}


class Log:
    """An execution's log built by hand: every event at ``now`` (moved with `at`)."""

    def __init__(self, workflow: WorkflowDef, initial: Any = None) -> None:
        self.workflow = workflow
        self.events: list[Event] = []
        self.now = T0
        self.add(WorkflowStarted(workflow_id="wf", workflow_version="1", initial_input=initial))

    def at(self, when: datetime) -> Log:
        self.now = when
        return self

    def add(self, *kinds: EventKind) -> Log:
        for kind in kinds:
            sequence = len(self.events) + 1
            self.events.append(
                Event(
                    id=f"e{sequence}",
                    execution_id=EXEC,
                    sequence=sequence,
                    kind=kind,
                    created_at=self.now,
                )
            )
        return self

    @property
    def progress(self) -> Progress:
        return fold(self.workflow, self.events)

    def state(self, node_id: str) -> NodeState:
        return self.progress.node(node_id).state

    def plan(self, now: datetime | None = None) -> Plan:
        return plan(self.workflow, self.progress, now=now or self.now, execution_id=EXEC)

    def advance(self, now: datetime | None = None) -> Plan:
        """Plan and append the plan's events, as the shell does."""
        next_plan = self.plan(now)
        self.add(*next_plan.events)
        return next_plan

    # what workers do
    def run(self, node_id: str, output: Any = None, patch: Any = None, attempt: int = 0) -> Log:
        return self.add(
            NodeStarted(node_id=node_id, worker_id="w1", attempt=attempt),
            NodeCompleted(
                node_id=node_id,
                output=output if output is not None else {},
                state_patch=patch if patch is not None else {},
                duration_ms=5,
            ),
        )

    def fail(self, node_id: str, error: str = "boom", attempt: int = 0) -> Log:
        return self.add(
            NodeStarted(node_id=node_id, worker_id="w1", attempt=attempt),
            NodeFailed(node_id=node_id, error=error, attempt=attempt, retryable=False),
        )

    def hold(self, node_id: str) -> Log:
        return self.add(
            NodeStarted(node_id=node_id, worker_id="w1", attempt=0),
            ToolApprovalRequired(
                node_id=node_id,
                tool_name="t.do",
                approver="finance-lead",
                context={"reasons": ["workflow policy requires approval for 't.*'"]},
                attempt=0,
            ),
        )

    def answer(self, node_id: str, approved: bool = True, **fields: Any) -> Log:
        decision = ApprovalDecision.APPROVED if approved else ApprovalDecision.REJECTED
        return self.add(
            ApprovalReceived(node_id=node_id, user_id="bob", decision=decision, **fields)
        )


def _scheduled(next_plan: Plan) -> list[str]:
    return [k.node_id for k in next_plan.events if isinstance(k, NodeScheduled)]


def _skipped(next_plan: Plan) -> list[str]:
    return [k.node_id for k in next_plan.events if isinstance(k, NodeSkipped)]


CHAIN: Final = _workflow({"a": _tool(), "b": _tool()}, [("a", "b")])
FORK: Final = _workflow(
    {"a": _tool(), "b": _tool(), "c": _tool(), "d": _tool()},
    [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")],
)


# ── 1. a finished run plans nothing ────────────────────────────────────────────────────


def test_nothing_is_planned_before_the_run_starts() -> None:
    progress = fold(CHAIN, ())
    assert plan(CHAIN, progress, now=T0, execution_id=EXEC) == Plan()
    assert Plan().empty


@pytest.mark.parametrize(
    "ending",
    [WorkflowCompleted(final_state={}), WorkflowFailed(error="x"), WorkflowCancelled()],
    ids=["completed", "failed", "cancelled"],
)
def test_a_finished_run_plans_nothing_even_with_runnable_nodes(ending: EventKind) -> None:
    log = Log(CHAIN)
    log.advance()
    log.run("a").add(ending)
    assert log.state("b") is NodeState.PENDING
    assert log.progress.finished is not None
    assert log.plan().empty


def test_cancellation_stops_further_scheduling() -> None:
    log = Log(FORK)
    log.advance()
    log.run("a")
    assert _scheduled(log.advance()) == ["b", "c"]
    log.run("b").add(WorkflowCancelled(reason="operator"), NodeCancelled("c"))
    assert log.progress.finished == "cancelled"
    assert log.state("c") is NodeState.CANCELLED
    assert log.state("d") is NodeState.PENDING
    assert log.plan().empty
    assert log.plan(now=T0 + timedelta(days=30)).empty


def test_cancellation_stops_an_answered_approval_from_being_dispatched() -> None:
    log = Log(CHAIN)
    log.advance()
    log.hold("a").answer("a").add(WorkflowCancelled())
    assert log.state("a") is NodeState.ANSWERED
    assert log.plan().empty


def test_a_terminal_failure_cancels_what_waits_for_a_person_and_fails_the_run() -> None:
    workflow = _workflow(
        {"a": _tool(), "pay": _tool(), "boom": _tool(), "review": _approval()},
        [("a", "pay"), ("a", "boom"), ("a", "review")],
    )
    log = Log(workflow)
    log.advance()
    log.run("a")
    log.advance()
    log.hold("pay").answer("pay")  # approved: would be dispatched again…
    log.fail("boom")  # …but the run has failed
    assert log.state("review") is NodeState.HELD
    cancel = log.advance()
    assert cancel == Plan(events=(NodeCancelled("pay"), NodeCancelled("review")))
    assert cancel.items == ()
    final = log.advance()
    assert final.events == (WorkflowFailed(error="node(s) failed terminally: boom (boom: boom)"),)


def test_a_failure_waits_for_running_nodes_before_failing_the_run() -> None:
    log = Log(FORK)
    log.advance()
    log.run("a")
    log.advance()
    log.add(NodeStarted(node_id="c", worker_id="w2", attempt=0)).fail("b")
    assert log.plan().empty  # c is still running
    log.add(NodeCompleted(node_id="c", output={}, state_patch={}, duration_ms=1))
    assert isinstance(log.advance().events[0], WorkflowFailed)


# ── 4. dispatch: dependency order, work items from the retry policy ────────────────────


def test_the_start_node_is_dispatched_with_a_work_item() -> None:
    first = Log(CHAIN).plan()
    assert first.events == (NodeScheduled("a", "tool"),)
    assert first.items == (
        NewWorkItem(
            item_id="run-1/a/1",
            execution_id=EXEC,
            node_id="a",
            queue="tool",
            payload={"workflow_id": "wf", "workflow_version": "1", "node_id": "a"},
            max_attempts=3,
            backoff_base_ms=1000,
        ),
    )


def test_a_work_item_takes_attempts_and_backoff_from_the_nodes_retry_policy() -> None:
    workflow = _workflow(
        {
            "a": _tool(retry_policy={"max_attempts": 7, "backoff_ms": 250, "max_backoff_ms": 900}),
            "b": _tool(retry_policy="no_retry"),
            "c": _tool(retry_policy="io_default"),
        },
        [("a", "b"), ("a", "c")],
    )
    log = Log(workflow)
    (item_a,) = log.advance().items
    assert (item_a.max_attempts, item_a.backoff_base_ms) == (7, 250)
    log.run("a")
    items = {item.node_id: item for item in log.advance().items}
    assert items["b"].max_attempts == 1
    assert items["c"].max_attempts == 5


def test_a_node_is_dispatched_only_once_every_source_has_finished() -> None:
    log = Log(FORK)
    log.advance()
    log.run("a")
    log.advance()
    log.run("b")
    assert log.plan().empty, "d must wait for c"
    log.add(NodeStarted(node_id="c", worker_id="w1", attempt=0))
    assert log.plan().empty
    log.add(NodeCompleted(node_id="c", output={}, state_patch={}, duration_ms=1))
    assert _scheduled(log.plan()) == ["d"]


def test_independent_successors_are_dispatched_in_one_plan() -> None:
    log = Log(FORK)
    log.advance()
    log.run("a")
    next_plan = log.plan()
    assert next_plan.events == (NodeScheduled("b", "tool"), NodeScheduled("c", "tool"))
    assert [item.item_id for item in next_plan.items] == ["run-1/b/1", "run-1/c/1"]


def test_a_scheduled_node_is_not_dispatched_again() -> None:
    log = Log(CHAIN)
    log.advance()
    assert log.state("a") is NodeState.SCHEDULED
    assert log.plan().empty
    log.add(NodeStarted(node_id="a", worker_id="w1", attempt=0))
    assert log.state("a") is NodeState.RUNNING
    assert log.plan().empty


def test_a_retryable_failure_leaves_the_node_scheduled_for_its_retry() -> None:
    log = Log(CHAIN)
    log.advance()
    log.add(
        NodeStarted(node_id="a", worker_id="w1", attempt=0),
        NodeFailed(node_id="a", error="flaky", attempt=0, retryable=True),
        RetryScheduled(node_id="a", attempt=1, delay_ms=2000),
    )
    entry = log.progress.node("a")
    assert (entry.state, entry.attempt, entry.error) == (NodeState.SCHEDULED, 1, "flaky")
    assert entry.dispatches == 1
    assert log.plan().empty, "the queue retries the same item; the scheduler adds nothing"


def test_a_retryable_failure_alone_is_not_a_reason_to_dispatch_again() -> None:
    # The queue puts the item back itself; a second dispatch would run the node twice.
    log = Log(CHAIN)
    log.advance()
    log.add(
        NodeStarted(node_id="a", worker_id="w1", attempt=0),
        NodeFailed(node_id="a", error="lease expired", attempt=0, retryable=True),
    )
    assert log.state("a") is NodeState.SCHEDULED
    assert log.plan().empty


def test_a_parked_node_stays_scheduled_at_its_next_attempt() -> None:
    log = Log(CHAIN)
    log.advance()
    log.add(
        NodeStarted(node_id="a", worker_id="w1", attempt=0),
        NodeParked(node_id="a", attempt=1, retry_after=T0 + timedelta(seconds=30)),
    )
    entry = log.progress.node("a")
    assert (entry.state, entry.attempt) == (NodeState.SCHEDULED, 1)
    assert log.plan().empty


def test_the_retry_backoff_of_a_dispatched_item_follows_the_policy() -> None:
    # The queue computes the delay from the item the scheduler enqueued (base) and the
    # node's policy (ceiling): base × 2^attempt plus up to 25 % jitter, at most the ceiling.
    workflow = _workflow(
        {"a": _tool(retry_policy={"max_attempts": 9, "backoff_ms": 100, "max_backoff_ms": 5000})}
    )
    (item,) = Log(workflow).plan().items
    ceiling = workflow.nodes["a"].retry.max_backoff_ms
    delays = [
        backoff_delay_ms(n, item.backoff_base_ms, jitter_key=item.item_id, max_ms=ceiling)
        for n in (1, 2, 3, 6, 8)
    ]
    assert 200 <= delays[0] <= 250
    assert 400 <= delays[1] <= 500
    assert 800 <= delays[2] <= 1000
    assert delays[3] == delays[4] == 5000, "6400+ is capped at the policy's ceiling"
    again = backoff_delay_ms(1, item.backoff_base_ms, jitter_key=item.item_id, max_ms=ceiling)
    assert again == delays[0], "the jitter is derived from the item, so a replay agrees"


def test_nothing_new_is_dispatched_after_a_terminal_failure() -> None:
    workflow = _workflow(
        {"a": _tool(), "b": _tool(), "c": _tool(), "d": _tool()},
        [("a", "b"), ("a", "c"), ("c", "d")],
    )
    log = Log(workflow)
    log.advance()
    log.run("a")
    log.advance()
    log.fail("b")
    log.run("c")
    next_plan = log.plan()
    assert "d" not in _scheduled(next_plan)
    assert next_plan.items == ()
    assert len(next_plan.events) == 1
    assert isinstance(next_plan.events[0], WorkflowFailed)


def test_a_run_with_a_failed_node_waits_for_the_nodes_still_running() -> None:
    log = Log(FORK)
    log.advance()
    log.run("a")
    log.advance()
    log.fail("b").add(NodeStarted(node_id="c", worker_id="w1", attempt=0))
    assert log.plan().empty
    log.add(NodeCompleted(node_id="c", output={}, state_patch={}, duration_ms=1))
    assert isinstance(log.plan().events[0], WorkflowFailed)


# ── 5. live and dead edges, skips that cascade ─────────────────────────────────────────


def test_an_edge_condition_is_evaluated_on_the_sources_output() -> None:
    workflow = _workflow(
        {"a": _tool(), "high": _tool(), "low": _tool()},
        [("a", "high", "output.score > 5"), ("a", "low", "output.score <= 5")],
    )
    log = Log(workflow)
    log.advance()
    log.run("a", output={"score": 7})
    assert log.progress.dead_edges == {("a", "low")}
    next_plan = log.plan()
    assert next_plan.events == (
        NodeScheduled("high", "tool"),
        NodeSkipped(node_id="low", reason="branch not taken"),
    )
    assert [item.node_id for item in next_plan.items] == ["high"]


def test_an_edge_condition_sees_the_state_as_its_source_completed() -> None:
    # b → d holds on the state when b completed (flag true); c later sets the flag to false
    # and its own edge is dead, so d runs only because b's edge was decided back then.
    workflow = _workflow(
        {"a": _tool(), "b": _tool(), "c": _tool(), "d": _tool()},
        [("a", "b"), ("a", "c"), ("b", "d", "state.flag == true"), ("c", "d", "output.ok")],
    )
    log = Log(workflow)
    log.advance()
    log.run("a")
    log.advance()
    log.run("b", patch={"flag": True})
    log.run("c", output={"ok": False}, patch={"flag": False})
    assert log.progress.state == {"flag": False}
    assert log.progress.dead_edges == {("c", "d")}
    assert _scheduled(log.plan()) == ["d"]


def test_an_edge_condition_can_read_the_runs_inputs() -> None:
    workflow = _workflow(
        {"a": _tool(), "b": _tool(), "c": _tool()},
        [("a", "b", "inputs.tier == 'gold'"), ("a", "c", "inputs.tier != 'gold'")],
    )
    log = Log(workflow, initial={"tier": "gold"})
    log.advance()
    log.run("a")
    next_plan = log.plan()
    assert _scheduled(next_plan) == ["b"]
    assert _skipped(next_plan) == ["c"]


def test_a_condition_node_routes_to_its_chosen_target_and_skips_the_others() -> None:
    workflow = _workflow(
        {"route": _route("x", "y", "z"), "x": _tool(), "y": _tool(), "z": _tool()},
        [("route", "x"), ("route", "y"), ("route", "z")],
    )
    log = Log(workflow)
    log.advance()
    assert log.plan().events == ()  # the route itself runs on a worker
    log.run("route", output={"chosen_target": "y"})
    assert log.progress.node("route").routes == frozenset({"y"})
    next_plan = log.plan()
    assert _scheduled(next_plan) == ["y"]
    assert _skipped(next_plan) == ["x", "z"]


def test_a_condition_node_that_chose_nothing_known_kills_every_edge() -> None:
    workflow = _workflow({"route": _route("x"), "x": _tool()}, [("route", "x")])
    log = Log(workflow)
    log.advance()
    log.run("route", output={"no": "choice"})
    assert log.progress.node("route").routes == frozenset()
    assert _skipped(log.advance()) == ["x"]
    completed = log.plan().events
    assert completed == (WorkflowCompleted(final_state={}),)


def test_a_skip_cascades_down_the_dead_branch_in_one_plan() -> None:
    workflow = _workflow(
        {
            "route": _route("x", "y"),
            "x": _tool(),
            "x2": _tool(),
            "x3": _tool(),
            "y": _tool(),
            "join": _tool(),
        },
        [("route", "x"), ("route", "y"), ("x", "x2"), ("x2", "x3"), ("x3", "join"), ("y", "join")],
    )
    log = Log(workflow)
    log.advance()
    log.run("route", output={"chosen_target": "y"})
    next_plan = log.advance()
    assert _scheduled(next_plan) == ["y"]
    assert _skipped(next_plan) == ["x", "x2", "x3"]
    assert log.state("join") is NodeState.PENDING, "join still waits for y"
    log.run("y")
    assert _scheduled(log.plan()) == ["join"], "one live way in is enough"


def test_a_skip_cascades_in_one_plan_whatever_order_the_file_lists_nodes_in() -> None:
    workflow = _workflow(
        {"route": _route("x", "y"), "x3": _tool(), "x2": _tool(), "x": _tool(), "y": _tool()},
        [("route", "x"), ("route", "y"), ("x", "x2"), ("x2", "x3")],
    )
    log = Log(workflow)
    log.advance()
    log.run("route", output={"chosen_target": "y"})
    next_plan = log.advance()
    assert sorted(_skipped(next_plan)) == ["x", "x2", "x3"]
    assert _scheduled(next_plan) == ["y"]


def test_a_join_whose_every_way_in_is_dead_is_skipped() -> None:
    workflow = _workflow(
        {"route": _route("x", "y"), "x": _tool(), "y": _tool(), "join": _tool(), "end": _tool()},
        [
            ("route", "x"),
            ("route", "y"),
            ("x", "join", "output.ok"),
            ("y", "join"),
            ("join", "end"),
        ],
    )
    log = Log(workflow)
    log.advance()
    log.run("route", output={"chosen_target": "x"})
    log.advance()
    log.run("x", output={"ok": False})
    next_plan = log.advance()
    assert _skipped(next_plan) == ["join", "end"]
    assert log.plan().events == (WorkflowCompleted(final_state={}),)


def test_a_tool_output_naming_targets_does_not_route() -> None:
    # Only routing nodes (condition, human_approval with a fallback) choose among their
    # edges; an ordinary node's output — possibly a model's — cannot skip its successors.
    workflow = _workflow({"a": _tool(), "b": _tool(), "c": _tool()}, [("a", "b"), ("a", "c")])
    log = Log(workflow)
    log.advance()
    log.run("a", output={"chosen_targets": [], "chosen_target": "b"})
    assert log.progress.node("a").routes is None
    assert log.progress.dead_edges == frozenset()
    assert _scheduled(log.plan()) == ["b", "c"]


# ── 2. human_approval nodes ────────────────────────────────────────────────────────────

GATED: Final = _workflow(
    {"a": _tool(), "gate": _approval(), "ship": _tool()}, [("a", "gate"), ("gate", "ship")]
)


def _held_gate(workflow: WorkflowDef = GATED) -> Log:
    log = Log(workflow, initial={"order": 7})
    log.advance()
    log.run("a")
    log.advance()
    return log


def test_a_human_approval_node_raises_its_own_request_and_has_no_work_item() -> None:
    log = Log(GATED)
    log.advance()
    log.run("a")
    next_plan = log.plan()
    assert next_plan.items == ()
    scheduled, request = next_plan.events
    assert scheduled == NodeScheduled("gate", "general")
    assert isinstance(request, ToolApprovalRequired)
    assert (request.node_id, request.tool_name, request.approver, request.attempt) == (
        "gate",
        "gate",
        "human",
        0,
    )
    assert request.context == {
        "node_id": "gate",
        "node_kind": "human_approval",
        "description": "ship it?",
    }
    assert isinstance(request.request_digest, str)
    assert len(request.request_digest) == 64


def test_a_human_approval_request_names_the_configured_approver() -> None:
    workflow = _workflow({"gate": _approval(approver="cfo")})
    (_, request) = Log(workflow).plan().events
    assert isinstance(request, ToolApprovalRequired)
    assert request.approver == "cfo"


def test_a_held_human_approval_waits_for_its_answer() -> None:
    log = _held_gate()
    entry = log.progress.node("gate")
    assert (entry.state, entry.held_since) == (NodeState.HELD, T0)
    assert log.plan(now=T0 + timedelta(days=365)).empty, "no timeout: it waits for ever"


def test_an_approval_completes_the_node_with_who_approved() -> None:
    log = _held_gate()
    log.answer("gate", comment="looks fine")
    assert log.state("gate") is NodeState.ANSWERED
    assert log.advance().events == (
        NodeCompleted(
            node_id="gate",
            output={"approved": True, "by": "bob", "comment": "looks fine"},
            state_patch={},
            duration_ms=0,
        ),
    )
    assert log.progress.node("gate").output == {
        "approved": True,
        "by": "bob",
        "comment": "looks fine",
    }
    assert _scheduled(log.plan()) == ["ship"]


def test_an_approval_without_comment_has_no_comment_in_the_output() -> None:
    log = _held_gate().answer("gate")
    (completed,) = log.plan().events
    assert isinstance(completed, NodeCompleted)
    assert completed.output == {"approved": True, "by": "bob"}


def test_an_approvals_state_patch_is_merged_into_the_state() -> None:
    log = _held_gate().answer("gate", state_patch={"limit": 50, "order": None})
    assert log.progress.state == {"limit": 50}
    log.advance()
    log.run("ship", patch={"shipped": True})
    assert log.plan().events == (WorkflowCompleted(final_state={"limit": 50, "shipped": True}),)


def test_a_rejected_approvals_state_patch_is_not_merged() -> None:
    log = _held_gate().answer("gate", approved=False, state_patch={"limit": 50})
    assert log.progress.state == {"order": 7}


def test_a_rejection_fails_the_node_and_then_the_run() -> None:
    log = _held_gate().answer("gate", approved=False, comment="too risky")
    assert log.advance().events == (
        NodeFailed(
            node_id="gate",
            error="approval rejected by bob: too risky",
            attempt=0,
            retryable=False,
        ),
    )
    assert log.plan().events == (
        WorkflowFailed(
            error="node(s) failed terminally: gate (gate: approval rejected by bob: too risky)"
        ),
    )


def test_a_rejection_without_comment_names_only_who_rejected() -> None:
    log = _held_gate().answer("gate", approved=False)
    (failed,) = log.plan().events
    assert isinstance(failed, NodeFailed)
    assert failed.error == "approval rejected by bob"


TIMED: Final = _workflow(
    {"a": _tool(), "gate": _approval(timeout_secs=60), "ship": _tool()},
    [("a", "gate"), ("gate", "ship")],
)


def test_an_unanswered_approval_fails_when_its_timeout_passes() -> None:
    log = _held_gate(TIMED)
    assert log.plan(now=T0 + timedelta(seconds=59, microseconds=999_999)).empty
    assert log.advance(now=T0 + timedelta(seconds=60)).events == (
        NodeFailed(
            node_id="gate", error="approval timed out after 60 s", attempt=0, retryable=False
        ),
    )
    (failed,) = log.plan().events
    assert failed == WorkflowFailed(
        error="node(s) failed terminally: gate (gate: approval timed out after 60 s)"
    )


def test_the_timeout_counts_from_when_the_request_was_raised() -> None:
    log = Log(TIMED)
    log.advance()
    log.at(T0 + timedelta(hours=1)).run("a")
    log.advance()
    assert log.progress.node("gate").held_since == T0 + timedelta(hours=1)
    assert log.plan(now=T0 + timedelta(hours=1, seconds=30)).empty
    assert log.plan(now=T0 + timedelta(hours=1, seconds=60)).events


def test_an_answer_wins_over_a_timeout_that_passed_meanwhile() -> None:
    log = _held_gate(TIMED).at(T0 + timedelta(seconds=90)).answer("gate")
    (completed,) = log.plan().events
    assert isinstance(completed, NodeCompleted)
    assert completed.output == {"approved": True, "by": "bob"}


FALLBACK: Final = _workflow(
    {
        "a": _tool(),
        "gate": _approval(timeout_secs=30, fallback_node="escalate"),
        "ship": _tool(),
        "audit": _tool(),
        "escalate": _tool(),
    },
    [("a", "gate"), ("gate", "ship"), ("gate", "audit"), ("gate", "escalate")],
)


def test_a_timeout_with_a_fallback_completes_the_node_routed_to_the_fallback_only() -> None:
    log = _held_gate(FALLBACK)
    later = T0 + timedelta(seconds=30)
    assert log.advance(now=later).events == (
        NodeCompleted(
            node_id="gate",
            output={"approved": False, "timed_out": True, "chosen_targets": ["escalate"]},
            state_patch={},
            duration_ms=0,
        ),
    )
    next_plan = log.plan(now=later)
    assert _scheduled(next_plan) == ["escalate"]
    assert _skipped(next_plan) == ["ship", "audit"]


def test_an_approval_with_a_fallback_routes_everywhere_but_the_fallback() -> None:
    log = _held_gate(FALLBACK).answer("gate")
    (completed,) = log.advance().events
    assert isinstance(completed, NodeCompleted)
    assert completed.output == {"approved": True, "by": "bob", "chosen_targets": ["ship", "audit"]}
    next_plan = log.plan()
    assert _scheduled(next_plan) == ["ship", "audit"]
    assert _skipped(next_plan) == ["escalate"]


def test_a_rejection_with_a_fallback_still_fails_the_node() -> None:
    log = _held_gate(FALLBACK).answer("gate", approved=False)
    (failed,) = log.plan().events
    assert isinstance(failed, NodeFailed)
    assert failed.retryable is False


def test_an_answer_for_a_node_that_is_not_held_is_ignored() -> None:
    log = Log(GATED)
    log.advance()
    log.answer("gate", state_patch={"sneaky": True})
    assert log.state("gate") is NodeState.PENDING
    assert log.progress.state == {}
    log.run("a")
    (_, request) = log.plan().events
    assert isinstance(request, ToolApprovalRequired), "the gate still asks"


# ── 3. tool approval holds: answered nodes go back to a worker ─────────────────────────


def test_a_held_tool_node_keeps_the_run_waiting() -> None:
    log = Log(FORK)
    log.advance()
    log.run("a")
    log.advance()
    log.hold("b").run("c")
    assert log.state("b") is NodeState.HELD
    assert log.plan(now=T0 + timedelta(days=30)).empty, "no completion while b waits"


def test_an_approved_tool_node_is_dispatched_again_as_a_new_item() -> None:
    log = Log(CHAIN)
    log.advance()
    log.hold("a").answer("a")
    assert log.state("a") is NodeState.ANSWERED
    next_plan = log.advance()
    assert next_plan.events == (NodeScheduled("a", "tool"),)
    assert [item.item_id for item in next_plan.items] == ["run-1/a/2"]
    entry = log.progress.node("a")
    assert (entry.state, entry.dispatches, entry.answer) == (NodeState.SCHEDULED, 2, None)
    log.run("a")
    assert _scheduled(log.plan()) == ["b"]


def test_a_rejected_tool_node_is_dispatched_again_so_that_its_gate_fails_it() -> None:
    log = Log(CHAIN)
    log.advance()
    log.hold("a").answer("a", approved=False, comment="no")
    assert [item.item_id for item in log.advance().items] == ["run-1/a/2"]
    log.fail("a", error="approval rejected by bob: no")
    assert log.plan().events == (
        WorkflowFailed(error="node(s) failed terminally: a (a: approval rejected by bob: no)"),
    )


def test_a_second_answer_to_the_same_request_is_ignored() -> None:
    log = Log(CHAIN)
    log.advance()
    log.hold("a").answer("a").answer("a", approved=False)
    answer = log.progress.node("a").answer
    assert answer is not None
    assert answer.decision is ApprovalDecision.APPROVED


# ── 6. completion and failure ──────────────────────────────────────────────────────────


def test_a_run_completes_with_the_merged_state_once_every_node_finished() -> None:
    log = Log(CHAIN, initial={"order": {"id": 1}, "keep": True})
    log.advance()
    log.run("a", patch={"order": {"total": 120}})
    assert log.plan(now=T0).events == (NodeScheduled("b", "tool"),)
    log.advance()
    assert log.plan().empty, "b is still scheduled"
    log.run("b", patch={"keep": None, "done": True})
    assert log.advance().events == (
        WorkflowCompleted(final_state={"order": {"id": 1, "total": 120}, "done": True}),
    )
    assert log.progress.finished == "completed"
    assert log.plan().empty


def test_a_failed_node_fails_the_run_naming_every_failure_in_order() -> None:
    workflow = _workflow(
        {"a": _tool(), "zeta": _tool(), "beta": _tool()}, [("a", "zeta"), ("a", "beta")]
    )
    log = Log(workflow)
    log.advance()
    log.run("a")
    log.advance()
    log.fail("zeta", error="exhausted 3 attempts: 503").fail("beta", error="bad input")
    assert log.advance().events == (
        WorkflowFailed(
            error="node(s) failed terminally: beta, zeta "
            "(beta: bad input; zeta: exhausted 3 attempts: 503)"
        ),
    )
    assert log.progress.finished == "failed"


def test_a_run_that_can_never_finish_fails_as_stuck() -> None:
    # Cannot happen with a progress folded from a validated definition (every node is in it
    # and every chain leads back to the start node); a hand-made one shows the guard.
    workflow = _workflow({"a": _tool(), "c": _tool(), "b": _tool()}, [("a", "c"), ("c", "b")])
    progress = Progress(
        nodes={"a": NodeProgress(state=NodeState.COMPLETED), "b": NodeProgress()}, started=True
    )
    assert plan(workflow, progress, now=T0, execution_id=EXEC).events == (
        WorkflowFailed(error="stuck: nodes never became runnable: b"),
    )


# ── fold and plan as functions ─────────────────────────────────────────────────────────


def test_fold_continues_from_a_progress_without_changing_it() -> None:
    log = Log(CHAIN)
    log.advance()
    log.run("a")
    half = fold(CHAIN, log.events[:2])
    snapshot = dict(half.nodes)
    rest = fold(CHAIN, log.events[2:], half)
    assert rest == fold(CHAIN, log.events)
    assert dict(half.nodes) == snapshot
    assert half.node("a").state is NodeState.SCHEDULED
    assert rest.last_sequence == len(log.events)


def test_fold_event_folds_one_event() -> None:
    log = Log(CHAIN)
    log.advance()
    start = fold(CHAIN, log.events[:1])
    assert fold_event(CHAIN, start, log.events[1]) == fold(CHAIN, log.events)


def test_fold_kinds_folds_kinds_not_written_yet_as_fold_would_once_they_are() -> None:
    log = Log(CHAIN)
    log.advance()
    before = log.progress
    later = T0 + timedelta(minutes=5)
    kinds: list[EventKind] = [
        NodeStarted(node_id="a", worker_id="w1", attempt=0),
        ToolApprovalRequired(node_id="a", tool_name="t.do", approver="human", context={}),
    ]
    after = fold_kinds(CHAIN, kinds, before, at=later)
    log.at(later).add(*kinds)
    assert after == log.progress
    assert after.last_sequence == before.last_sequence + 2
    assert after.node("a").held_since == later
    assert before == fold(CHAIN, log.events[:2]), "the progress it starts from is not changed"


def test_fold_kinds_numbers_from_first_sequence_and_from_nothing_without_progress() -> None:
    kinds: list[EventKind] = [
        WorkflowStarted(workflow_id="wf", workflow_version="1", initial_input={"q": 1})
    ]
    started = fold_kinds(CHAIN, kinds, at=T0)
    assert started == fold(CHAIN, Log(CHAIN, initial={"q": 1}).events)
    assert fold_kinds(CHAIN, kinds, at=T0, first_sequence=7).last_sequence == 7
    assert fold_kinds(CHAIN, (), started, at=T0) == started


def test_a_run_state_folds_in_place_and_its_progress_views_do_not_change() -> None:
    # The worker's scheduler keeps one `RunState` per run: each event folded once, in
    # place; the `Progress` it hands out is a view that stays as it was (copy-on-write).
    log = Log(CHAIN)
    log.advance()
    run = RunState(CHAIN)
    run.apply(log.events)
    scheduled = run.progress()
    assert run.progress() is scheduled, "no change: the same view"
    log.run("a")
    run.apply(log.events[scheduled.last_sequence :])
    assert run.progress() == log.progress
    assert scheduled == fold(CHAIN, log.events[: scheduled.last_sequence])
    assert scheduled.node("a").state is NodeState.SCHEDULED
    assert scheduled.active == {"a"}
    assert scheduled.decidable == frozenset()
    assert dict(scheduled.waiting_on) == {"a": 0, "b": 1}
    assert run.progress().decidable == {"b"}
    assert dict(run.progress().waiting_on)["b"] == 0


def test_folds_from_folds_stay_right_however_deep() -> None:
    # Each fold from a progress lies over it (nothing copied); past a few levels the chain
    # of views is flattened, with the same result.
    log = Log(CHAIN)
    log.advance()
    log.run("a")
    log.advance()
    log.run("b")
    log.advance()
    progress = fold(CHAIN, ())
    steps = []
    for event in log.events:
        progress = fold_event(CHAIN, progress, event)
        steps.append(progress)
    assert progress == fold(CHAIN, log.events)
    for index, step in enumerate(steps, start=1):
        assert step == fold(CHAIN, log.events[:index])


def test_a_progress_made_by_hand_folds_on() -> None:
    progress = Progress(
        nodes={"a": NodeProgress(state=NodeState.SCHEDULED), "b": NodeProgress()},
        started=True,
        waiting_on={"a": 0, "b": 1},
        active=frozenset({"a"}),
    )
    kinds: list[EventKind] = [
        NodeCompleted(node_id="a", output={}, state_patch={"x": 1}, duration_ms=1)
    ]
    after = fold_kinds(CHAIN, kinds, progress, at=T0)
    assert after.active == frozenset()
    assert after.decidable == {"b"}
    assert after.state == {"x": 1}
    assert after.finished_count == 1
    assert progress.active == {"a"}
    assert progress.node("a").state is NodeState.SCHEDULED


def test_fold_records_attempts_outputs_and_errors() -> None:
    log = Log(CHAIN, initial={"q": 1})
    log.advance()
    log.run("a", output={"n": 3}, attempt=2)
    progress = log.progress
    assert progress.started is True
    assert progress.inputs == {"q": 1}
    assert progress.node("a") == NodeProgress(
        state=NodeState.COMPLETED, dispatches=1, attempt=2, output={"n": 3}
    )


def test_events_about_nodes_the_definition_lacks_are_ignored() -> None:
    log = Log(CHAIN)
    log.add(
        NodeScheduled("ghost", "tool"),
        NodeCompleted(node_id="ghost", output={}, state_patch={"x": 1}, duration_ms=1),
    )
    progress = log.progress
    assert set(progress.nodes) == {"a", "b"}
    assert progress.node("ghost") == NodeProgress()


def test_plan_depends_only_on_the_progress_and_the_time() -> None:
    log = _held_gate(TIMED)
    progress = log.progress
    later = T0 + timedelta(minutes=5)
    assert plan(TIMED, progress, now=later, execution_id=EXEC) == plan(
        TIMED, progress, now=later, execution_id=EXEC
    )
    assert plan(TIMED, progress, now=T0, execution_id=EXEC) != plan(
        TIMED, progress, now=later, execution_id=EXEC
    )
    assert progress == log.progress, "plan changes nothing it is given"


# ── 3. lost outcomes: a person says what happened ──────────────────────────────────────

KEY: Final = "k" * 64


def _lose(log: Log, node_id: str, attempt: int = 1) -> Log:
    """What the worker writes when an earlier attempt's side effect was abandoned."""
    return log.add(
        NodeStarted(node_id=node_id, worker_id="w2", attempt=attempt),
        OutcomeUnknown(node_id=node_id, attempt=attempt, idempotency_key=KEY, reason="lost"),
    )


def _resolve(log: Log, node_id: str, resolution: str, **fields: Any) -> Log:
    return log.add(
        OutcomeResolved(node_id=node_id, attempt=1, resolution=resolution, user_id="ops", **fields)
    )


def test_a_lost_outcome_holds_the_node_for_a_person_and_the_run_waits() -> None:
    log = Log(CHAIN)
    log.advance()
    _lose(log, "a")
    entry = log.progress.node("a")
    assert (entry.state, entry.held_since, entry.lost) == (NodeState.HELD, T0, True)
    assert entry.unknown is not None
    assert entry.unknown.idempotency_key == KEY
    assert log.progress.people == {"a"}
    assert log.plan().empty  # nothing to run, and the run is not over
    assert log.plan(now=T0 + timedelta(days=365)).empty  # no deadline: it waits


def test_resolved_as_succeeded_completes_the_node_with_the_output_and_routes_on() -> None:
    workflow = _workflow(
        {"a": _tool(), "yes": _tool(), "no": _tool()},
        [("a", "yes", "output.posted == true"), ("a", "no", "output.posted == false")],
    )
    log = Log(workflow)
    log.advance()
    _lose(log, "a")
    _resolve(log, "a", "succeeded", output={"posted": True})
    assert log.state("a") is NodeState.ANSWERED
    settle = log.advance()
    assert settle == Plan(
        events=(
            NodeCompleted(
                node_id="a",
                output={"posted": True},
                state_patch={},
                duration_ms=0,
                idempotency_key=KEY,
            ),
        )
    )
    assert log.state("a") is NodeState.COMPLETED
    following = log.advance()
    assert _scheduled(following) == ["yes"]
    assert _skipped(following) == ["no"]


def test_resolved_as_failed_fails_the_node_terminally_with_the_reason() -> None:
    log = Log(CHAIN)
    log.advance()
    _lose(log, "a")
    _resolve(log, "a", "failed", reason="the bank has no such transfer")
    settle = log.advance()
    error = "outcome unknown; resolved as failed by ops: the bank has no such transfer"
    assert settle.events == (NodeFailed(node_id="a", error=error, attempt=1, retryable=False),)
    final = log.advance()
    assert final.events == (WorkflowFailed(error=f"node(s) failed terminally: a (a: {error})"),)
    assert log.state("b") is NodeState.PENDING


def test_resolved_as_retry_dispatches_a_new_work_item() -> None:
    log = Log(CHAIN)
    log.advance()
    _lose(log, "a")
    _resolve(log, "a", "retry", comment="the bank says nothing arrived")
    again = log.advance()
    assert again.events == (NodeScheduled(node_id="a", queue_type="tool"),)
    (item,) = again.items
    # A new item (dispatch 2): its id, and so the effect's idempotency key, are new.
    assert item.item_id == f"{EXEC}/a/2"
    entry = log.progress.node("a")
    assert (entry.state, entry.dispatches, entry.unknown, entry.resolution) == (
        NodeState.SCHEDULED,
        2,
        None,
        None,
    )
    log.run("a")
    assert _scheduled(log.advance()) == ["b"]


def test_a_lost_outcome_unresolved_past_the_deadline_fails_the_node() -> None:
    log = Log(CHAIN)
    log.advance()
    _lose(log, "a")
    progress = log.progress
    early = plan(
        CHAIN,
        progress,
        now=T0 + timedelta(seconds=599),
        execution_id=EXEC,
        resolution_deadline_secs=600,
    )
    assert early.empty
    due = plan(
        CHAIN, progress, now=T0 + timedelta(seconds=600), execution_id=EXEC,
        resolution_deadline_secs=600,
    )  # fmt: skip
    error = f"outcome unknown: resolution timed out after 600 s (attempt 1, idempotency key {KEY})"
    assert due.events == (NodeFailed(node_id="a", error=error, attempt=1, retryable=False),)


def test_an_answered_lost_outcome_is_not_failed_by_the_deadline() -> None:
    log = Log(CHAIN)
    log.advance()
    _lose(log, "a")
    _resolve(log, "a", "succeeded", output={"ok": True})
    late = plan(
        CHAIN, log.progress, now=T0 + timedelta(days=1), execution_id=EXEC,
        resolution_deadline_secs=1,
    )  # fmt: skip
    assert [type(kind) for kind in late.events] == [NodeCompleted]


def test_an_approval_or_a_stray_resolution_does_not_answer_what_it_is_not_for() -> None:
    log = Log(CHAIN)
    log.advance()
    _resolve(log, "a", "succeeded")  # nothing lost yet: ignored
    assert log.state("a") is NodeState.SCHEDULED
    _lose(log, "a")
    log.answer("a")  # an approval does not resolve a lost outcome
    assert log.state("a") is NodeState.HELD
    _resolve(log, "a", "maybe")  # not an answer the scheduler knows
    assert log.state("a") is NodeState.HELD
    assert log.plan().empty


def test_a_terminal_failure_cancels_an_unresolved_lost_outcome_but_keeps_an_answer() -> None:
    workflow = _workflow(
        {"a": _tool(), "x": _tool(), "y": _tool(), "boom": _tool()},
        [("a", "x"), ("a", "y"), ("a", "boom")],
    )
    log = Log(workflow)
    log.advance()
    log.run("a")
    log.advance()
    _lose(log, "x")
    _lose(log, "y")
    _resolve(log, "y", "succeeded", output={"ok": True})
    log.fail("boom")
    settle = log.advance()
    assert settle.events == (
        NodeCancelled(node_id="x"),
        NodeCompleted(
            node_id="y", output={"ok": True}, state_patch={}, duration_ms=0, idempotency_key=KEY
        ),
    )
    assert [type(kind) for kind in log.advance().events] == [WorkflowFailed]


def test_the_follow_up_of_a_commit_that_loses_an_outcome_dispatches_nothing_for_it() -> None:
    log = Log(FORK)
    log.advance()
    log.run("a")
    log.advance()
    lost = OutcomeUnknown(node_id="b", attempt=0, idempotency_key=KEY, reason="lost")
    after = fold_kinds(FORK, [NodeStarted(node_id="b", worker_id="w", attempt=0), lost],
                       log.progress, at=T0)  # fmt: skip
    assert after.node("b").state is NodeState.HELD
    assert plan(FORK, after, now=T0, execution_id=EXEC).empty
