"""Properties of the scheduler: random acyclic workflows driven to their end by a simulated shell.

Each example builds a random valid workflow (tool, condition and human_approval nodes; edges
with and without conditions; a retry policy per node) and plays a shell against `plan`: it
appends whatever `plan` returns, and whenever there is nothing to plan, Hypothesis chooses what
the world does next — a worker claims an item, then completes it, fails it (retryably or not),
holds it for approval or loses its outcome (its worker died mid-call: ``outcome_unknown``); a
person approves or rejects, or resolves a lost outcome (succeeded, failed, retry); time
passes (past a lost outcome's deadline, when the example has one); someone cancels.

The checks compare the log with an oracle computed from the simulation's own choices (which
target a condition node chose, which tool outputs made an edge condition hold, who approved),
never from the scheduler's output format, so a wrong design shows up as a disagreement.

`workflow_specs` is local to this file; it belongs in `charter.testing.strategies` once that
module grows a workflow strategy (it is pinned by a test and edited by others meanwhile).
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import attrs
from hypothesis import given
from hypothesis import strategies as st

from charter.core.events import (
    ApprovalDecision,
    ApprovalReceived,
    Event,
    EventKind,
    NodeCancelled,
    NodeCompleted,
    NodeFailed,
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
from charter.core.queue import backoff_delay_ms, plan_failure
from charter.core.records import Execution, NewWorkItem, WorkItem, WorkItemStatus
from charter.core.runs import RunStatus, StepStatus, run_record, run_steps
from charter.core.scheduler import NodeState, Plan, Progress, RunState, fold, fold_kinds, plan
from charter.core.workflow import EdgeDef, WorkflowDef, parse_workflow
from charter.testing.strategies import workflow_documents

EXEC: Final = "run-1"
T0: Final = datetime(2026, 1, 1, tzinfo=UTC)
INITIAL: Final = {"x": 1}

#: Edge conditions the generated workflows use, each with an independent oracle.
EDGE_CONDITIONS: Final[dict[str, Callable[[Any], bool]]] = {
    "output.ok == true": lambda output: isinstance(output, dict) and output.get("ok") is True,
    "output.ok == false": lambda output: isinstance(output, dict) and output.get("ok") is False,
}


# ── strategies ─────────────────────────────────────────────────────────────────────────


def workflow_specs(*, max_nodes: int = 7) -> st.SearchStrategy[dict[str, Any]]:
    """The shipped strategy, with the edge conditions this file has oracles for."""
    return workflow_documents(max_nodes=max_nodes, edge_conditions=tuple(EDGE_CONDITIONS))


# ── the simulated shell and world ──────────────────────────────────────────────────────


def _execution() -> Execution:
    return Execution(
        execution_id=EXEC,
        workflow_id="random",
        workflow_version="1",
        initial_input=INITIAL,
        created_at=T0,
        updated_at=T0,
    )


def _work_item(new: NewWorkItem, now: datetime) -> WorkItem:
    return WorkItem(
        item_id=new.item_id,
        tenant_id="default",
        execution_id=new.execution_id,
        node_id=new.node_id,
        queue=new.queue,
        payload=new.payload,
        attempt=0,
        max_attempts=new.max_attempts,
        backoff_base_ms=new.backoff_base_ms,
        status=WorkItemStatus.PENDING,
        available_at=new.available_at or now,
        created_at=now,
    )


@attrs.define
class Simulation:
    """One execution: the log, the scheduler's progress, the queue, and the world's choices."""

    spec: dict[str, Any]
    workflow: WorkflowDef
    #: The tenant's deadline for resolving a lost outcome (``None``: none).
    deadline: float | None = None
    events: list[Event] = attrs.Factory(list)
    progress: Progress = attrs.field(init=False)
    now: datetime = T0
    items: dict[str, WorkItem] = attrs.Factory(dict)
    claimed: set[str] = attrs.Factory(set)
    item_ids: set[str] = attrs.Factory(set)
    #: What the world decided: tool outputs, condition choices, approvals, holds.
    outputs: dict[str, Any] = attrs.Factory(dict)
    chosen: dict[str, str] = attrs.Factory(dict)
    approved: set[str] = attrs.Factory(set)
    rejected_tools: set[str] = attrs.Factory(set)
    held_once: set[str] = attrs.Factory(set)
    held_at: dict[str, datetime] = attrs.Factory(dict)
    #: Lost outcomes: nodes that lost one, and each node's latest answer.
    lost_once: set[str] = attrs.Factory(set)
    resolved: dict[str, str] = attrs.Factory(dict)
    #: Nodes a worker completed (with a state patch; a person's ``succeeded`` has none).
    patched: set[str] = attrs.Factory(set)
    completions: Counter[str] = attrs.Factory(Counter)
    dispatches: Counter[str] = attrs.Factory(Counter)

    def __attrs_post_init__(self) -> None:
        self.progress = fold(self.workflow, ())

    # ── the oracle ──

    def edge_condition(self, edge: EdgeDef) -> str | None:
        for spec in self.spec["edges"]:
            if spec["from"] == edge.source and spec["to"] == edge.target:
                condition = spec.get("condition")
                return condition if isinstance(condition, str) else None
        raise AssertionError(f"no such edge {edge}")

    def live(self, edge: EdgeDef) -> bool:
        """The oracle: whether ``edge`` is live, from what the world did."""
        source = edge.source
        if self.progress.node(source).state is not NodeState.COMPLETED:
            return False
        node = self.workflow.nodes[source]
        condition = self.edge_condition(edge)
        if condition is not None and not EDGE_CONDITIONS[condition](self.outputs.get(source)):
            return False
        if node.tag == "condition":
            return self.chosen[source] == edge.target
        fallback = node.kind.get("fallback_node")
        if node.tag == "human_approval" and isinstance(fallback, str):
            # approved: every target but the fallback; completed without approval: timed out
            return (edge.target != fallback) if source in self.approved else edge.target == fallback
        return True

    # ── appending, with the checks that must hold before each event ──

    def append(self, kinds: Sequence[EventKind]) -> None:
        for kind in kinds:
            event = Event(
                id=f"{EXEC}-{len(self.events) + 1}",
                execution_id=EXEC,
                sequence=len(self.events) + 1,
                kind=kind,
                created_at=self.now,
            )
            self.check_before(kind)
            self.events.append(event)
            self.progress = fold(self.workflow, (event,), self.progress)
            check_indexes(self.workflow, self.progress)

    def check_before(self, kind: EventKind) -> None:
        progress = self.progress
        assert progress.finished is None or isinstance(kind, NodeCancelled), (
            f"{kind} appended after the run {progress.finished}"
        )
        match kind:
            case NodeScheduled(node_id=node):
                state = progress.node(node).state
                assert state in (NodeState.PENDING, NodeState.ANSWERED), (
                    f"{node} dispatched while {state.value}"
                )
                self.dispatches[node] += 1
                if state is NodeState.PENDING:
                    assert self.dispatches[node] == 1, f"{node} dispatched twice from pending"
                    failed = [n for n, e in progress.nodes.items() if e.state is NodeState.FAILED]
                    assert not failed, f"{node} dispatched after {failed} failed terminally"
                    incoming = self.workflow.incoming(node)
                    for edge in incoming:
                        source_state = progress.node(edge.source).state
                        assert source_state in (NodeState.COMPLETED, NodeState.SKIPPED), (
                            f"{node} dispatched while its source {edge.source} is "
                            f"{source_state.value}"
                        )
                    assert not incoming or any(self.live(edge) for edge in incoming), (
                        f"{node} dispatched with every incoming edge dead"
                    )
            case NodeSkipped(node_id=node):
                assert progress.node(node).state is NodeState.PENDING
                incoming = self.workflow.incoming(node)
                assert incoming, "the start node is never skipped"
                for edge in incoming:
                    assert progress.node(edge.source).state.finished
                    assert not self.live(edge), f"{node} skipped but {edge.source} → it is live"
            case NodeCompleted(node_id=node):
                self.completions[node] += 1
                assert self.completions[node] == 1, f"{node} completed twice"
                definition = self.workflow.nodes[node]
                if definition.tag == "human_approval" and node not in self.approved:
                    timeout = definition.kind.get("timeout_secs")
                    assert timeout is not None, f"{node} completed without approval or timeout"
                    assert self.now >= self.held_at[node] + timedelta(seconds=timeout)
            case ToolApprovalRequired(node_id=node):
                self.held_at[node] = self.now
            case OutcomeUnknown(node_id=node):
                self.held_at[node] = self.now
                self.resolved.pop(node, None)
            case NodeFailed(node_id=node, error=error) if error.startswith("outcome unknown"):
                if "timed out" in error:
                    assert self.deadline is not None, f"{node} timed out without a deadline"
                    assert node not in self.resolved, f"{node} timed out though answered"
                    assert self.now >= self.held_at[node] + timedelta(seconds=self.deadline)
                else:
                    assert self.resolved.get(node) == "failed", f"{node} failed unanswered"
            case _:
                pass
        if isinstance(kind, NodeCompleted) and kind.node_id in self.lost_once:
            entry = progress.node(kind.node_id)
            if entry.unknown is not None:
                assert self.resolved.get(kind.node_id) == "succeeded", (
                    f"{kind.node_id}'s lost outcome completed without a person saying it happened"
                )
                assert kind.output == self.outputs[kind.node_id]

    # ── the shell: append the plan ──

    def apply(self, next_plan: Plan) -> None:
        scheduled = [k.node_id for k in next_plan.events if isinstance(k, NodeScheduled)]
        for_workers = [n for n in scheduled if self.workflow.nodes[n].tag != "human_approval"]
        assert sorted(item.node_id for item in next_plan.items) == sorted(for_workers), (
            "every dispatch to a worker has exactly one work item, and only those"
        )
        for new in next_plan.items:
            node = self.workflow.nodes[new.node_id]
            assert new.execution_id == EXEC
            assert new.queue == node.queue
            assert new.max_attempts == node.retry.max_attempts
            assert new.backoff_base_ms == node.retry.backoff_ms
            assert new.item_id not in self.item_ids, f"item id {new.item_id} reused"
            self.item_ids.add(new.item_id)
        self.append(next_plan.events)
        for new in next_plan.items:
            self.items[new.item_id] = _work_item(new, self.now)

    # ── the world ──

    def actions(self) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        for item_id, item in sorted(self.items.items()):
            if item_id in self.claimed:
                found.append(("finish", item_id))
            elif item.available_at <= self.now:
                found.append(("claim", item_id))
        if any(i.available_at > self.now for k, i in self.items.items() if k not in self.claimed):
            found.append(("wait", ""))
        for node_id, entry in sorted(self.progress.nodes.items()):
            if entry.state is NodeState.HELD and entry.unknown is not None:
                found += [("resolve", node_id)] * 3
                if self.deadline is not None:
                    found.append(("expire", node_id))
            elif entry.state is NodeState.HELD:
                # weighted towards approval, so that runs get further
                found += [("approve", node_id)] * 3 + [("reject", node_id)]
                if self.workflow.nodes[node_id].kind.get("timeout_secs") is not None:
                    found.append(("expire", node_id))
        return found

    def act(self, action: str, subject: str, data: st.DataObject) -> None:
        match action:
            case "claim":
                item = self.items[subject]
                self.claimed.add(subject)
                self.append(
                    (NodeStarted(node_id=item.node_id, worker_id="w", attempt=item.attempt),)
                )
            case "finish":
                self.finish(self.items[subject], data)
            case "wait":  # until the next item waiting for its backoff becomes available
                self.now = min(
                    i.available_at for i in self.items.values() if i.available_at > self.now
                )
            case "approve" | "reject":
                approved = action == "approve"
                if approved:
                    self.approved.add(subject)
                elif self.workflow.nodes[subject].tag != "human_approval":
                    self.rejected_tools.add(subject)
                decision = ApprovalDecision.APPROVED if approved else ApprovalDecision.REJECTED
                self.append(
                    (ApprovalReceived(node_id=subject, user_id="alice", decision=decision),)
                )
            case "resolve":
                answer = data.draw(
                    st.sampled_from(["succeeded", "failed", "retry"]), label="resolution"
                )
                self.resolved[subject] = answer
                output = None
                if answer == "succeeded":
                    output = {"ok": data.draw(st.booleans(), label="ok")}
                    self.outputs[subject] = output
                resolved = OutcomeResolved(
                    node_id=subject,
                    attempt=self.progress.node(subject).attempt,
                    resolution=answer,
                    user_id="ops",
                    output=output,
                    reason="not in the ledger" if answer == "failed" else None,
                )
                self.append((resolved,))
            case "expire" if self.progress.node(subject).unknown is not None:
                assert self.deadline is not None
                extra = data.draw(st.integers(min_value=0, max_value=5), label="extra secs")
                self.now = max(
                    self.now, self.held_at[subject] + timedelta(seconds=self.deadline + extra)
                )
            case "expire":
                timeout = self.workflow.nodes[subject].kind["timeout_secs"]
                extra = data.draw(st.integers(min_value=0, max_value=5), label="extra secs")
                deadline = self.held_at[subject] + timedelta(seconds=timeout + extra)
                self.now = max(self.now, deadline)
            case _:
                raise AssertionError(action)

    def finish(self, item: WorkItem, data: st.DataObject) -> None:
        """A worker settles a claimed item (as `charter.worker.Worker` would)."""
        node = self.workflow.nodes[item.node_id]
        self.claimed.discard(item.item_id)
        del self.items[item.item_id]
        if item.node_id in self.rejected_tools:  # the gate fails a rejected request
            error = "approval rejected by alice"
            self.append(
                (
                    NodeFailed(
                        node_id=node.node_id, error=error, attempt=item.attempt, retryable=False
                    ),
                )
            )
            return
        # Weighted towards success (and shrinking towards it: it comes first), so that runs
        # get deep into the graph often.
        outcomes = ["complete"] * 3 + ["retry"] * 2 + ["fail"]
        if node.tag == "tool" and node.node_id not in self.held_once:
            outcomes += ["hold"] * 2
        if node.tag == "tool" and node.node_id not in self.lost_once:
            outcomes += ["lose"]
        outcome = data.draw(st.sampled_from(outcomes), label=f"outcome of {item.item_id}")
        if outcome == "complete":
            output: dict[str, Any]
            if node.tag == "condition":
                targets = [b.target for b in node.branches]
                self.chosen[node.node_id] = data.draw(st.sampled_from(targets), label="branch")
                output = {"chosen_target": self.chosen[node.node_id]}
                patch: dict[str, Any] = {}
            else:
                output = {"ok": data.draw(st.booleans(), label="ok")}
                patch = {"seen": {node.node_id: output["ok"]}}
            self.outputs[node.node_id] = output
            self.patched.add(node.node_id)
            completed = NodeCompleted(
                node_id=node.node_id, output=output, state_patch=patch, duration_ms=1
            )
            self.append((completed,))
        elif outcome == "retry":
            delay = backoff_delay_ms(
                item.attempt + 1,
                item.backoff_base_ms,
                jitter_key=item.item_id,
                max_ms=node.retry.max_backoff_ms,
            )
            failure = plan_failure(
                item, error="flaky", retryable=True, now=self.now, delay_ms=delay
            )
            self.append(failure.events)
            if failure.status is WorkItemStatus.PENDING:
                assert failure.available_at is not None
                self.items[item.item_id] = attrs.evolve(
                    item, attempt=failure.attempt, available_at=failure.available_at
                )
        elif outcome == "fail":
            self.append(
                (
                    NodeFailed(
                        node_id=node.node_id, error="broken", attempt=item.attempt, retryable=False
                    ),
                )
            )
        elif outcome == "lose":
            # The worker found an earlier attempt's reservation abandoned (§3.3).
            self.lost_once.add(node.node_id)
            lost = OutcomeUnknown(
                node_id=node.node_id,
                attempt=item.attempt,
                idempotency_key=f"key-{item.item_id}",
                reason="its worker stopped mid-call",
            )
            self.append((lost,))
        else:
            self.held_once.add(node.node_id)
            request = ToolApprovalRequired(
                node_id=node.node_id,
                tool_name=node.context.tool_name or node.node_id,
                approver="human",
                context={},
                attempt=item.attempt,
            )
            self.append((request,))

    def cancel(self) -> None:
        self.append((WorkflowCancelled(reason="operator"),))
        for item_id in sorted(self.claimed):  # workers settle what they hold as cancelled
            self.append((NodeCancelled(node_id=self.items[item_id].node_id),))

    # ── what a run record must say at a quiet moment ──

    def check_run_record(self) -> None:
        record = run_record(_execution(), self.events)
        states = {entry.state for entry in self.progress.nodes.values()}
        if self.progress.finished is not None:
            assert record.status.value == self.progress.finished
        elif NodeState.HELD in states and not states & {
            NodeState.SCHEDULED,
            NodeState.RUNNING,
            NodeState.ANSWERED,
        }:
            assert record.status is RunStatus.WAITING, (record, self.progress)
            assert record.blocked_on is not None
            held = {n for n, e in self.progress.nodes.items() if e.state is NodeState.HELD}
            assert record.blocked_on.gate_name in held
        else:
            assert record.status is RunStatus.RUNNING, (record, self.progress)
            assert record.blocked_on is None


def check_indexes(workflow: WorkflowDef, progress: Progress) -> None:
    """The indexes `fold` keeps for `plan` equal what they index, recomputed from scratch."""
    states = {name: progress.node(name).state for name in workflow.nodes}
    finished = {name for name, state in states.items() if state.finished}
    waiting_on = {
        name: sum(edge.source not in finished for edge in workflow.incoming(name))
        for name in workflow.nodes
    }
    assert dict(progress.waiting_on) == waiting_on
    assert progress.decidable == {
        name
        for name, state in states.items()
        if state is NodeState.PENDING and waiting_on[name] == 0
    }
    assert progress.active == {name for name, state in states.items() if state.active}
    assert progress.people == {
        name for name, state in states.items() if state in (NodeState.HELD, NodeState.ANSWERED)
    }
    assert progress.failed == {name for name, s in states.items() if s is NodeState.FAILED}
    assert progress.finished_count == len(finished)


def _plan(sim: Simulation, progress: Progress) -> Plan:
    """What the shell plans now, with the example's resolution deadline."""
    return plan(
        sim.workflow,
        progress,
        now=sim.now,
        execution_id=EXEC,
        resolution_deadline_secs=sim.deadline,
    )


def _run(spec: dict[str, Any], data: st.DataObject, *, check_records: bool = False) -> Simulation:
    """Drive one execution to its end (or fail the example if it does not end in time)."""
    workflow = parse_workflow(spec)
    deadline = data.draw(st.sampled_from([None, 60.0]), label="resolution deadline")
    sim = Simulation(spec=spec, workflow=workflow, deadline=deadline)
    sim.append(
        (WorkflowStarted(workflow_id="random", workflow_version="1", initial_input=INITIAL),)
    )
    # Each round either appends a plan or does one thing in the world; per node that is at
    # most 2 dispatches × 3 attempts × (claim, finish, wait) plus a hold, its answer and a
    # few plans, so this bound is generous but finite.
    bound = 10 + 40 * len(workflow.nodes)
    for _ in range(bound):
        next_plan = _plan(sim, sim.progress)
        again = _plan(sim, sim.progress)
        scratch = _plan(sim, fold(workflow, sim.events))
        assert next_plan == again == scratch, "plan depends only on the log and the time"
        if not next_plan.empty:
            sim.apply(next_plan)
            continue
        if sim.progress.finished is not None:
            return sim
        if check_records:
            sim.check_run_record()
        actions = sim.actions()
        assert actions, f"stuck: nothing to plan and nothing to do: {sim.progress}"
        # Someone cancels now and then (about one round in forty).
        if data.draw(st.integers(min_value=0, max_value=39), label="cancel?") == 39:
            sim.cancel()
            assert _plan(sim, sim.progress).empty
            return sim
        action, subject = data.draw(st.sampled_from(actions), label="action")
        sim.act(action, subject, data)
    raise AssertionError(f"the run did not end within {bound} rounds: {sim.progress}")


# ── the properties ─────────────────────────────────────────────────────────────────────


@given(workflow_specs(), st.data())
def test_every_run_ends_and_never_breaks_dependency_order(
    spec: dict[str, Any], data: st.DataObject
) -> None:
    # The per-event checks (dispatch only after every source finished with a live edge, skip
    # only when every edge is dead, never complete twice, nothing after the end) run inside.
    sim = _run(spec, data)
    assert sim.progress.finished in ("completed", "failed", "cancelled")
    terminal = [e for e in sim.events if isinstance(e.kind, WorkflowCompleted | WorkflowFailed)]
    cancelled = [e for e in sim.events if isinstance(e.kind, WorkflowCancelled)]
    assert len(terminal) + len(cancelled) == 1


@given(workflow_specs(), st.data())
def test_a_completed_run_finished_every_node_exactly_as_the_edges_say(
    spec: dict[str, Any], data: st.DataObject
) -> None:
    sim = _run(spec, data)
    if sim.progress.finished != "completed":
        return
    workflow = sim.workflow
    for node_id, entry in sim.progress.nodes.items():
        incoming = workflow.incoming(node_id)
        reached = not incoming or any(sim.live(edge) for edge in incoming)
        expected = NodeState.COMPLETED if reached else NodeState.SKIPPED
        assert entry.state is expected, f"{node_id}: {entry.state.value}, expected {expected}"
    final = sim.events[-1].kind
    assert isinstance(final, WorkflowCompleted)
    seen = {n: out["ok"] for n, out in sim.outputs.items() if "ok" in out and n in sim.patched}
    assert final.final_state == ({**INITIAL, "seen": seen} if seen else INITIAL)


@given(workflow_specs(), st.data())
def test_a_failed_run_names_every_node_that_failed_terminally(
    spec: dict[str, Any], data: st.DataObject
) -> None:
    sim = _run(spec, data)
    if sim.progress.finished != "failed":
        return
    final = sim.events[-1].kind
    assert isinstance(final, WorkflowFailed)
    errors = {
        k.node_id: k.error
        for k in (e.kind for e in sim.events)
        if isinstance(k, NodeFailed) and not k.retryable
    }
    assert errors, "a run fails only when a node failed terminally"
    failed = sorted(errors)
    details = "; ".join(f"{n}: {errors[n]}" for n in failed)
    assert final.error == f"node(s) failed terminally: {', '.join(failed)} ({details})"
    assert not any(e.state.active for e in sim.progress.nodes.values())


@given(workflow_specs(), st.data())
def test_fold_is_incremental_and_leaves_its_input_alone(
    spec: dict[str, Any], data: st.DataObject
) -> None:
    sim = _run(spec, data)
    split = data.draw(st.integers(min_value=0, max_value=len(sim.events)), label="split")
    first = fold(sim.workflow, sim.events[:split])
    before = attrs.evolve(first, nodes=dict(first.nodes))
    assert fold(sim.workflow, sim.events[split:], first) == fold(sim.workflow, sim.events)
    assert first == before
    assert fold(sim.workflow, sim.events) == sim.progress


def _plain(progress: Progress) -> dict[str, Any]:
    """Everything a progress says, as plain values (no view of a `RunState` left)."""
    return {
        "nodes": dict(progress.nodes),
        "state": progress.state,
        "inputs": progress.inputs,
        "dead_edges": set(progress.dead_edges),
        "started": progress.started,
        "finished": progress.finished,
        "last_sequence": progress.last_sequence,
        "waiting_on": dict(progress.waiting_on),
        "decidable": set(progress.decidable),
        "active": set(progress.active),
        "people": set(progress.people),
        "failed": set(progress.failed),
        "finished_count": progress.finished_count,
    }


@given(workflow_specs(), st.data())
def test_a_run_state_folded_in_place_leaves_every_progress_it_gave_alone(
    spec: dict[str, Any], data: st.DataObject
) -> None:
    # The worker's scheduler folds each event once into a `RunState` and hands out
    # `Progress` views of it (O(1), copy-on-write per entry): every view must stay exactly
    # what the log said at its point, however far the state has folded since, and views
    # folded further (a commit's follow-up, `fold_kinds`) must not disturb either.
    sim = _run(spec, data)
    weakly = data.draw(st.booleans(), label="views referred to weakly (as the worker does)")
    run = RunState(sim.workflow, reference=weakref.ref) if weakly else RunState(sim.workflow)
    taken: list[tuple[int, Progress, dict[str, Any]]] = []
    for index, event in enumerate(sim.events, start=1):
        run.apply((event,))
        progress = run.progress()
        if data.draw(st.booleans(), label="keep this view"):
            taken.append((index, progress, _plain(progress)))
        if data.draw(st.booleans(), label="fold from this view"):
            fold_kinds(sim.workflow, [e.kind for e in sim.events[index:]], progress, at=sim.now)
    assert run.progress() == sim.progress
    check_indexes(sim.workflow, run.progress())
    for index, progress, plain in taken:
        assert _plain(progress) == plain
        assert plain == _plain(fold(sim.workflow, sim.events[:index]))


@given(workflow_specs(), st.data())
def test_folding_kinds_is_folding_their_events(spec: dict[str, Any], data: st.DataObject) -> None:
    # What the worker plans a commit's follow-up from: kinds about to be written, folded
    # without envelopes, must give what the log gives once they are written. Events written
    # at one time are folded in one batch, the others one by one at their own sequence.
    sim = _run(spec, data)
    progress = fold(sim.workflow, ())
    index = 0
    while index < len(sim.events):
        at = sim.events[index].created_at
        batch = []
        while index < len(sim.events) and sim.events[index].created_at == at:
            batch.append(sim.events[index])
            index += 1
        kinds = [event.kind for event in batch]
        progress = fold_kinds(
            sim.workflow, kinds, progress, at=at, first_sequence=batch[0].sequence
        )
        assert progress == fold(sim.workflow, sim.events[:index])
    assert progress == sim.progress


@given(workflow_specs(), st.data())
def test_retries_follow_the_nodes_retry_policy(spec: dict[str, Any], data: st.DataObject) -> None:
    sim = _run(spec, data)
    for event in sim.events:
        kind = event.kind
        if isinstance(kind, NodeStarted):
            policy = sim.workflow.nodes[kind.node_id].retry
            assert 0 <= kind.attempt < policy.max_attempts, "no attempt beyond the policy"
        if isinstance(kind, RetryScheduled):
            policy = sim.workflow.nodes[kind.node_id].retry
            base, ceiling = policy.backoff_ms, policy.max_backoff_ms
            exponential = base * 2 ** min(kind.attempt, 6)
            assert 1 <= kind.attempt < policy.max_attempts
            assert base <= kind.delay_ms <= ceiling
            assert min(exponential, ceiling) <= kind.delay_ms <= min(exponential * 5 // 4, ceiling)
        if isinstance(kind, NodeFailed) and kind.error.startswith("exhausted"):
            policy = sim.workflow.nodes[kind.node_id].retry
            assert kind.error == f"exhausted {policy.max_attempts} attempts: flaky"
            assert kind.attempt == policy.max_attempts - 1


@given(workflow_specs(), st.data())
def test_run_records_agree_with_the_scheduler(spec: dict[str, Any], data: st.DataObject) -> None:
    sim = _run(spec, data, check_records=True)
    record = run_record(_execution(), sim.events)
    assert record.status.value == sim.progress.finished
    assert record.ended_at is not None
    assert record.total_duration_ms == (sim.now - T0) // timedelta(milliseconds=1)
    steps = run_steps(EXEC, sim.events)
    kinds = [e.kind for e in sim.events]
    starts = [(k.node_id, k.attempt) for k in kinds if isinstance(k, NodeStarted)]
    skips = [k.node_id for k in kinds if isinstance(k, NodeSkipped)]
    gates = [
        k.node_id
        for k in kinds
        if isinstance(k, ToolApprovalRequired)
        and sim.workflow.nodes[k.node_id].tag == "human_approval"
    ]
    assert len(steps) == len(starts) + len(skips) + len(gates), "one step per attempt"
    assert [s.position for s in steps] == list(range(1, len(steps) + 1))
    attempts = [
        (s.step_name, s.retry_count)
        for s in steps
        if s.status is not StepStatus.SKIPPED
        and sim.workflow.nodes[s.step_name].tag != "human_approval"
    ]
    assert attempts == starts, "a step per attempt, in order, its retry_count the attempt"
    assert sorted(s.step_name for s in steps if s.status is StepStatus.SKIPPED) == sorted(skips)
    if sim.progress.finished != "cancelled":
        unsettled = [s for s in steps if s.status in (StepStatus.RUNNING, StepStatus.WAITING)]
        assert not unsettled, "a finished run has no step still running or waiting"


@given(workflow_documents(max_nodes=12))
def test_every_shipped_workflow_document_is_valid(document: dict[str, Any]) -> None:
    workflow = parse_workflow(document)
    assert workflow.start_node == "n0"
    assert set(workflow.nodes) == {f"n{i}" for i in range(len(document["nodes"]))}


@given(workflow_specs(), st.data())
def test_a_speculative_fold_adopted_is_the_fold_of_what_was_written(
    spec: dict[str, Any], data: st.DataObject
) -> None:
    # The worker folds a commit's events once, before the commit (to plan its follow-up), on
    # a fork of the run's state (`RunState.fork`), and adopts that fold once the commit has
    # landed (`RunState.adopt`) instead of folding the written events again. Adopted, the
    # state must be exactly the fold of the events as written; a commit that failed (the
    # fork dropped), or a state that moved meanwhile, or events that are not what the fork
    # folded (another sequence, other kinds, another time where the fold reads it) must
    # leave the state exactly as it was; and no view the state gave may change.
    sim = _run(spec, data)
    events = sim.events
    run = RunState(sim.workflow, reference=weakref.ref)
    index = 0
    while index < len(events):
        size = data.draw(st.integers(min_value=1, max_value=4), label="batch")
        # A commit's events are written at one time: a batch is events of one moment.
        at = events[index].created_at
        batch = events[index : index + 1]
        for event in events[index + 1 : index + size]:
            if event.created_at != at:
                break
            batch.append(event)
        before = run.progress()
        plain = _plain(before)
        fork = run.fork()
        fork.apply_kinds([e.kind for e in batch], first_sequence=batch[0].sequence, at=at)
        assert _plain(fork.progress()) == _plain(fold_kinds(
            sim.workflow, [e.kind for e in batch], before, at=at,
            first_sequence=batch[0].sequence,
        ))  # fmt: skip
        outcome = data.draw(
            st.sampled_from(["adopt", "failed", "moved", "other sequence", "other kinds"]),
            label="commit",
        )
        if outcome == "failed":  # the commit raised: the fork is dropped
            assert _plain(run.progress()) == plain
            continue  # the same events are tried again
        if outcome == "moved" and index + len(batch) < len(events):
            run.apply(batch)  # another writer's events, absorbed meanwhile
            assert not run.adopt(fork, batch)
            assert _plain(before) == plain
            index += len(batch)
            continue
        if outcome == "other sequence":
            shifted = [attrs.evolve(e, sequence=e.sequence + 1) for e in batch]
            assert not run.adopt(fork, shifted)
            assert _plain(run.progress()) == plain
            continue
        if outcome == "other kinds" and len(batch) > 1:
            assert not run.adopt(fork, batch[:-1])
            assert _plain(run.progress()) == plain
            continue
        # Written at another time than folded: adopted only if no kind reads the time.
        later = [attrs.evolve(e, created_at=e.created_at + timedelta(seconds=1)) for e in batch]
        written = later if data.draw(st.booleans(), label="stamped later") else batch
        if run.adopt(fork, written):
            pass
        else:
            assert written is later, "the events as folded are always adopted"
            assert _plain(run.progress()) == plain
            run.apply(written)
        assert _plain(run.progress()) == _plain(fold(sim.workflow, written, before))
        assert _plain(before) == plain
        check_indexes(sim.workflow, run.progress())
        index += len(batch)
        if written is later:  # the rest of the log goes on from what was really written
            events = [*events[: index - len(batch)], *later, *events[index:]]
    assert _plain(run.progress()) == _plain(fold(sim.workflow, events))
