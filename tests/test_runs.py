"""Run records (`charter.core.runs`): a run's status and its steps, derived from the log.

Logs are built by hand at explicit times, following the traces the worker and the scheduler
write (a tool approval hold is ``node_scheduled → node_started → tool_approval_required``; a
human_approval node's request comes from `plan` itself).
"""

from __future__ import annotations

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
from charter.core.records import Execution
from charter.core.runs import (
    LOST_OUTCOME_GATE,
    HumanApproval,
    LostOutcome,
    RunStatus,
    StepStatus,
    WorkflowRun,
    WorkflowRunStep,
    resolve_command,
    run_record,
    run_steps,
)
from charter.core.scheduler import fold, plan
from charter.core.workflow import WorkflowDef, parse_workflow

EXEC: Final = "run-7"
T0: Final = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
EXECUTION: Final = Execution(
    execution_id=EXEC,
    tenant_id="acme",
    workflow_id="support-refund",
    workflow_version="3",
    initial_input={"order_id": "A-1042"},
    parent_execution_id="run-1",
    created_at=T0,
    updated_at=T0,
)


class Log:
    """A log built by hand: each event at ``now``, moved forward with `after`."""

    def __init__(self, *, started: bool = True, workflow: WorkflowDef | None = None) -> None:
        self.events: list[Event] = []
        self.now = T0
        self.workflow = workflow
        if started:
            self.add(
                WorkflowStarted(
                    workflow_id="support-refund", workflow_version="3", initial_input={}
                )
            )

    def after(self, **delta: float) -> Log:
        self.now += timedelta(**delta)
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

    def start(self, node: str, attempt: int = 0) -> Log:
        return self.add(NodeStarted(node_id=node, worker_id="w1", attempt=attempt))

    def complete(self, node: str, output: Any = None) -> Log:
        return self.add(
            NodeCompleted(node_id=node, output=output or {}, state_patch={}, duration_ms=3)
        )

    def fail(self, node: str, error: str, *, attempt: int = 0, retryable: bool = False) -> Log:
        return self.add(NodeFailed(node_id=node, error=error, attempt=attempt, retryable=retryable))

    def hold(self, node: str, reasons: list[str] | None = None) -> Log:
        context: dict[str, Any] = {"reasons": reasons} if reasons is not None else {}
        return self.add(
            ToolApprovalRequired(
                node_id=node,
                tool_name="payments.refund",
                approver="finance-lead",
                context=context,
                attempt=0,
            )
        )

    def answer(self, node: str, *, approved: bool = True, comment: str | None = None) -> Log:
        decision = ApprovalDecision.APPROVED if approved else ApprovalDecision.REJECTED
        return self.add(
            ApprovalReceived(node_id=node, user_id="lee", decision=decision, comment=comment)
        )

    def planned(self) -> Log:
        """Append what the scheduler plans next at ``now``."""
        assert self.workflow is not None
        progress = fold(self.workflow, self.events)
        return self.add(*plan(self.workflow, progress, now=self.now, execution_id=EXEC).events)

    @property
    def record(self) -> WorkflowRun:
        return run_record(EXECUTION, self.events)

    @property
    def steps(self) -> tuple[WorkflowRunStep, ...]:
        return run_steps(EXEC, self.events)


POLICY_REASON: Final = "workflow policy requires approval for 'payments.*'"


def _held_refund() -> Log:
    """``lookup`` done, ``refund`` held by policy for the finance lead."""
    log = Log().add(NodeScheduled("lookup", "tool")).start("lookup").after(seconds=1)
    log.complete("lookup", {"total": 120}).add(NodeScheduled("refund", "tool"))
    return log.after(seconds=1).start("refund").hold("refund", [POLICY_REASON])


# ── the run: status, times, error ──────────────────────────────────────────────────────


def test_a_run_without_events_is_pending() -> None:
    record = Log(started=False).record
    assert record == WorkflowRun(
        id=EXEC,
        workflow_name="support-refund",
        workflow_version="3",
        status=RunStatus.PENDING,
        inputs={"order_id": "A-1042"},
        parent_run_id="run-1",
        tenant_id="acme",
    )


def test_a_started_run_is_running_from_its_start() -> None:
    record = Log().add(NodeScheduled("lookup", "tool")).record
    assert record.status is RunStatus.RUNNING
    assert record.started_at == T0
    assert (record.ended_at, record.total_duration_ms, record.error) == (None, None, None)
    assert record.blocked_on is None


def test_a_completed_run_has_its_end_duration_and_summary() -> None:
    log = Log().add(NodeScheduled("a", "tool")).start("a").after(seconds=2, milliseconds=500)
    log.complete("a").add(WorkflowCompleted(final_state={"done": True}))
    record = log.record
    assert record.status is RunStatus.COMPLETED
    assert (record.started_at, record.ended_at) == (T0, T0 + timedelta(seconds=2.5))
    assert record.total_duration_ms == 2500
    assert (record.result_summary, record.error) == ("completed", None)


@pytest.mark.parametrize("millis", [0, 1, 999, 1001, 1003, 86_400_001])
def test_the_duration_is_exact_to_the_millisecond(millis: int) -> None:
    log = Log().after(milliseconds=millis).add(WorkflowCompleted(final_state={}))
    assert log.record.total_duration_ms == millis


def test_a_failed_run_carries_the_error() -> None:
    error = "node(s) failed terminally: refund (refund: approval rejected by lee)"
    log = Log().after(seconds=4).add(WorkflowFailed(error=error))
    record = log.record
    assert (record.status, record.error, record.result_summary) == (RunStatus.FAILED, error, None)
    assert record.total_duration_ms == 4000


@pytest.mark.parametrize(
    ("reason", "error"), [("operator request", "cancelled: operator request"), (None, "cancelled")]
)
def test_a_cancelled_run_says_why(reason: str | None, error: str) -> None:
    record = Log().after(seconds=1).add(WorkflowCancelled(reason=reason)).record
    assert (record.status, record.error) == (RunStatus.CANCELLED, error)
    assert record.ended_at == T0 + timedelta(seconds=1)


def test_a_run_held_for_a_tool_approval_is_waiting_on_a_human_approval() -> None:
    record = _held_refund().record
    assert record.status is RunStatus.WAITING
    assert record.blocked_on == HumanApproval(gate_name="refund", prompt=POLICY_REASON)
    assert record.ended_at is None


def test_the_prompt_joins_every_reason_for_the_hold() -> None:
    log = Log().add(NodeScheduled("refund", "tool")).start("refund")
    log.hold("refund", ["tenant rule", "over 100 EUR"])
    assert log.record.blocked_on == HumanApproval(
        gate_name="refund", prompt="tenant rule; over 100 EUR"
    )


def test_the_prompt_without_reasons_asks_to_approve_the_tool() -> None:
    log = Log().add(NodeScheduled("refund", "tool")).start("refund").hold("refund")
    assert log.record.blocked_on == HumanApproval(
        gate_name="refund", prompt="approve payments.refund"
    )


def test_a_run_held_by_a_human_approval_node_is_waiting_with_its_description() -> None:
    workflow = parse_workflow(
        {
            "workflow_id": "support-refund",
            "version": "3",
            "start_node": "sign_off",
            "nodes": {
                "sign_off": {"kind": {"type": "human_approval", "description": "Refund 120 EUR?"}}
            },
        }
    )
    record = Log(workflow=workflow).planned().record
    assert record.status is RunStatus.WAITING
    assert record.blocked_on == HumanApproval(gate_name="sign_off", prompt="Refund 120 EUR?")


def test_a_run_with_a_hold_and_other_work_running_is_running() -> None:
    log = _held_refund().add(NodeScheduled("notify", "tool"))
    queued = log.record.status
    running = log.start("notify").record.status
    done = log.complete("notify").record.status
    assert (queued, running, done) == (RunStatus.RUNNING, RunStatus.RUNNING, RunStatus.WAITING)


def test_a_run_with_a_hold_and_a_retry_pending_is_running() -> None:
    # A failed attempt with attempts left is queued work (the scheduler's node state is
    # `scheduled`): the run is not only waiting for a person.
    log = _held_refund().add(NodeScheduled("notify", "tool")).start("notify")
    log.fail("notify", "smtp 451", retryable=True)
    log.add(RetryScheduled(node_id="notify", attempt=1, delay_ms=2000))
    assert log.record.status is RunStatus.RUNNING
    assert log.record.blocked_on is None


def test_a_run_with_a_hold_and_a_parked_node_is_running() -> None:
    log = _held_refund().add(NodeScheduled("notify", "tool")).start("notify")
    log.add(NodeParked(node_id="notify", attempt=0, retry_after=T0 + timedelta(minutes=1)))
    assert log.record.status is RunStatus.RUNNING


def test_an_answered_hold_leaves_the_run_running() -> None:
    log = _held_refund().answer("refund")
    assert log.record.status is RunStatus.RUNNING
    assert log.record.blocked_on is None


def test_a_run_held_while_another_node_failed_is_still_waiting() -> None:
    # The scheduler waits for the held node before it fails the run (rule 6).
    log = _held_refund().add(NodeScheduled("notify", "tool")).start("notify")
    log.fail("notify", "bad template")
    assert log.record.status is RunStatus.WAITING


def test_the_record_does_not_depend_on_the_order_events_are_given_in() -> None:
    log = _held_refund().answer("refund").add(WorkflowCompleted(final_state={}))
    assert run_record(EXECUTION, reversed(log.events)) == log.record
    assert run_steps(EXEC, list(reversed(log.events))) == log.steps


# ── steps ──────────────────────────────────────────────────────────────────────────────


def test_each_attempt_is_a_step_with_its_retry_count() -> None:
    log = Log().add(NodeScheduled("search", "tool")).start("search").after(seconds=1)
    log.fail("search", "HTTP 503", retryable=True)
    log.add(RetryScheduled(node_id="search", attempt=1, delay_ms=2000)).after(seconds=2)
    log.start("search", attempt=1).after(seconds=1).complete("search", {"hits": 3})
    first, second = log.steps
    assert first == WorkflowRunStep(
        id=f"{EXEC}/1",
        workflow_run_id=EXEC,
        step_name="search",
        role="agent",
        status=StepStatus.FAILED,
        position=1,
        retry_count=0,
        started_at=T0,
        ended_at=T0 + timedelta(seconds=1),
        step_error="HTTP 503",
    )
    assert second == WorkflowRunStep(
        id=f"{EXEC}/2",
        workflow_run_id=EXEC,
        step_name="search",
        role="agent",
        status=StepStatus.COMPLETED,
        position=2,
        retry_count=1,
        started_at=T0 + timedelta(seconds=3),
        ended_at=T0 + timedelta(seconds=4),
        result_text='{"hits": 3}',
    )


def test_an_exhausted_node_ends_its_last_step_failed() -> None:
    log = Log().start("search").fail("search", "HTTP 503", retryable=True)
    log.start("search", attempt=1).fail("search", "exhausted 2 attempts: HTTP 503", attempt=1)
    assert [(s.retry_count, s.status, s.step_error) for s in log.steps] == [
        (0, StepStatus.FAILED, "HTTP 503"),
        (1, StepStatus.FAILED, "exhausted 2 attempts: HTTP 503"),
    ]


def test_a_running_step_has_no_end() -> None:
    (step,) = Log().add(NodeScheduled("a", "tool")).start("a").steps
    assert (step.status, step.started_at, step.ended_at) == (StepStatus.RUNNING, T0, None)


def test_a_step_started_again_without_an_outcome_is_superseded() -> None:
    log = Log().start("a").after(seconds=30).start("a", attempt=1)
    first, second = log.steps
    assert (first.status, first.step_error) == (StepStatus.FAILED, "superseded")
    assert first.ended_at == T0 + timedelta(seconds=30)
    assert (second.status, second.retry_count) == (StepStatus.RUNNING, 1)


def test_result_text_is_text_as_is_and_json_otherwise() -> None:
    log = Log().start("a").complete("a", "plain words").start("b").complete("b", {"é": [1, None]})
    assert [s.result_text for s in log.steps] == ["plain words", '{"é": [1, null]}']


def test_long_result_text_is_cut_to_2000_characters() -> None:
    (step,) = Log().start("a").complete("a", "x" * 5000).steps
    assert step.result_text is not None
    assert len(step.result_text) == 2000
    assert step.result_text.endswith("x…")


def test_a_tool_approval_hold_turns_the_attempt_into_a_waiting_gate_step() -> None:
    held = _held_refund().steps[-1]
    assert held == WorkflowRunStep(
        id=f"{EXEC}/2",
        workflow_run_id=EXEC,
        step_name="refund",
        role="gate",
        status=StepStatus.WAITING,
        position=2,
        started_at=T0 + timedelta(seconds=2),
        gate_type="human_approval",
        gate_prompt=POLICY_REASON,
    )


def test_an_approved_gate_step_records_who_approved_when_and_their_feedback() -> None:
    log = _held_refund().after(minutes=5).answer("refund", comment="ok, known customer")
    approved_at = T0 + timedelta(minutes=5, seconds=2)
    gate = log.steps[-1]
    assert gate.status is StepStatus.COMPLETED
    assert (gate.gate_approved_by, gate.gate_approved_at) == ("lee", approved_at)
    assert gate.gate_feedback == "ok, known customer"
    assert (gate.ended_at, gate.step_error) == (approved_at, None)


def test_the_run_after_an_approval_is_a_new_step() -> None:
    log = _held_refund().answer("refund").add(NodeScheduled("refund", "tool")).after(seconds=1)
    log.start("refund").complete("refund", {"refunded": 120})
    gate, run = log.steps[-2:]
    assert (gate.role, gate.status, gate.position) == ("gate", StepStatus.COMPLETED, 2)
    assert (run.role, run.status, run.position) == ("agent", StepStatus.COMPLETED, 3)
    assert (run.step_name, run.retry_count, run.result_text) == ("refund", 0, '{"refunded": 120}')
    assert run.gate_approved_by is None


def test_a_rejected_gate_step_failed_with_who_rejected_and_why() -> None:
    log = _held_refund().after(seconds=10).answer("refund", approved=False, comment="not ours")
    gate = log.steps[-1]
    assert gate.status is StepStatus.FAILED
    assert (gate.step_error, gate.gate_feedback) == ("rejected by lee", "not ours")
    assert gate.gate_approved_by == "lee"
    assert gate.ended_at == T0 + timedelta(seconds=12)


def test_the_gate_failing_a_rejected_request_is_its_own_failed_step() -> None:
    log = _held_refund().answer("refund", approved=False).add(NodeScheduled("refund", "tool"))
    log.start("refund").fail("refund", "approval rejected by lee")
    gate, attempt = log.steps[-2:]
    assert (gate.status, attempt.status) == (StepStatus.FAILED, StepStatus.FAILED)
    assert attempt.step_error == "approval rejected by lee"


def test_an_answer_to_no_open_request_changes_no_step() -> None:
    log = Log().start("a").answer("a")
    (step,) = log.steps
    assert (step.status, step.gate_approved_by) == (StepStatus.RUNNING, None)


def _approval_node_log(**kind: Any) -> Log:
    """A run of one human_approval node ``gate`` (+ ``next`` and ``other``), requested by `plan`."""
    workflow = parse_workflow(
        {
            "workflow_id": "support-refund",
            "version": "3",
            "start_node": "gate",
            "nodes": {
                "gate": {"kind": {"type": "human_approval", "description": "Go?", **kind}},
                "next": {"kind": {"type": "tool", "tool_ref": "t.next"}},
                "other": {"kind": {"type": "tool", "tool_ref": "t.other"}},
            },
            "edges": [{"from": "gate", "to": "next"}, {"from": "gate", "to": "other"}],
        }
    )
    return Log(workflow=workflow).planned()


def test_a_human_approval_node_is_one_gate_step() -> None:
    log = _approval_node_log()
    (step,) = log.steps
    assert (step.step_name, step.role, step.status) == ("gate", "gate", StepStatus.WAITING)
    assert (step.gate_type, step.gate_prompt, step.started_at) == ("human_approval", "Go?", T0)
    log.after(seconds=40).answer("gate", comment="go")
    log.planned()
    (step,) = log.steps
    assert step.status is StepStatus.COMPLETED
    assert (step.gate_approved_by, step.gate_feedback) == ("lee", "go")
    assert step.ended_at == T0 + timedelta(seconds=40)


def test_a_rejected_human_approval_node_is_a_failed_gate_step() -> None:
    log = _approval_node_log().answer("gate", approved=False, comment="no").planned()
    (step,) = log.steps
    assert (step.status, step.step_error, step.gate_feedback) == (
        StepStatus.FAILED,
        "rejected by lee",
        "no",
    )


def test_a_human_approval_that_timed_out_is_a_timed_out_step() -> None:
    log = _approval_node_log(timeout_secs=60).after(seconds=61).planned()
    (step,) = log.steps
    assert step.status is StepStatus.TIMED_OUT
    assert step.step_error == "approval timed out after 60 s"
    assert step.ended_at == T0 + timedelta(seconds=61)
    assert step.gate_approved_by is None


def test_a_human_approval_that_timed_out_to_its_fallback_is_a_timed_out_step() -> None:
    # Not "completed": by runkon's reading of a gate step, completed means approved.
    log = _approval_node_log(timeout_secs=60, fallback_node="other").after(seconds=61).planned()
    (step,) = log.steps
    assert step.status is StepStatus.TIMED_OUT
    assert step.gate_approved_by is None
    assert step.ended_at == T0 + timedelta(seconds=61)


def test_a_node_that_timed_out_on_a_worker_is_a_timed_out_step() -> None:
    log = Log().start("slow").fail("slow", "timed out after 5 s", retryable=True)
    (step,) = log.steps
    assert (step.status, step.step_error) == (StepStatus.TIMED_OUT, "timed out after 5 s")


def test_a_skipped_node_is_a_skipped_step_with_the_reason() -> None:
    log = Log().after(seconds=3).add(NodeSkipped(node_id="store_credit", reason="branch not taken"))
    (step,) = log.steps
    assert step == WorkflowRunStep(
        id=f"{EXEC}/1",
        workflow_run_id=EXEC,
        step_name="store_credit",
        role="agent",
        status=StepStatus.SKIPPED,
        position=1,
        started_at=T0 + timedelta(seconds=3),
        ended_at=T0 + timedelta(seconds=3),
        result_text="branch not taken",
    )


def test_a_cancelled_node_ends_its_step_cancelled() -> None:
    log = Log().start("a").after(seconds=1).add(WorkflowCancelled(), NodeCancelled("a"))
    (step,) = log.steps
    assert (step.status, step.step_error) == (StepStatus.CANCELLED, "cancelled")
    assert step.ended_at == T0 + timedelta(seconds=1)


def test_steps_follow_the_order_nodes_began_in() -> None:
    log = Log().start("a").start("b").complete("b").add(NodeSkipped("c", "branch not taken"))
    log.complete("a")
    assert [(s.position, s.step_name) for s in log.steps] == [(1, "a"), (2, "b"), (3, "c")]


# ── lost outcomes ──────────────────────────────────────────────────────────────────────

KEY: Final = "f" * 64
PAY: Final = parse_workflow(
    {
        "workflow_id": "support-refund",
        "version": "3",
        "start_node": "pay",
        "nodes": {
            "pay": {"kind": {"type": "tool", "tool_ref": "ledger.post"}},
            "notify": {"kind": {"type": "tool", "tool_ref": "email.send"}},
        },
        "edges": [{"from": "pay", "to": "notify"}],
    }
)


def _lost_pay() -> Log:
    """The trace of a lost outcome: the first attempt's worker died mid-call (its lease
    expired), the second found the reservation abandoned and held the node."""
    log = Log(workflow=PAY).planned().start("pay")
    log.after(seconds=31).fail("pay", "lease expired: worker presumed dead", retryable=True)
    log.add(RetryScheduled(node_id="pay", attempt=1, delay_ms=20))
    log.after(seconds=1).start("pay", attempt=1)
    return log.add(
        OutcomeUnknown(node_id="pay", attempt=1, idempotency_key=KEY, reason="its worker died")
    )


def _resolved(log: Log, resolution: str, **fields: Any) -> Log:
    log.after(minutes=5).add(
        OutcomeResolved(node_id="pay", attempt=1, resolution=resolution, user_id="ops", **fields)
    )
    return log.planned()


def test_a_lost_outcome_makes_the_run_wait_on_a_person_with_the_command() -> None:
    record = _lost_pay().record
    assert record.status is RunStatus.WAITING
    assert record.blocked_on == LostOutcome(
        gate_name="pay",
        command=resolve_command(EXEC, "pay"),
        prompt="outcome unknown: its worker died",
        attempt=1,
        idempotency_key=KEY,
    )
    assert "charter resolve run-7 pay --user USER" in record.blocked_on.command
    assert "--succeeded" in record.blocked_on.command


def test_the_lost_attempt_is_a_waiting_gate_step() -> None:
    first, second = _lost_pay().steps
    assert (first.status, first.step_error) == (
        StepStatus.FAILED,
        "lease expired: worker presumed dead",
    )
    assert (second.status, second.role, second.gate_type, second.retry_count) == (
        StepStatus.WAITING,
        "gate",
        LOST_OUTCOME_GATE,
        1,
    )


def test_resolved_as_succeeded_the_step_completes_with_the_output() -> None:
    log = _resolved(_lost_pay(), "succeeded", output={"posted": 120}, comment="bank confirms")
    assert log.record.status is RunStatus.RUNNING  # notify is scheduled
    step = log.steps[1]
    assert (step.status, step.result_text) == (StepStatus.COMPLETED, '{"posted": 120}')
    assert (step.gate_approved_by, step.gate_feedback) == ("ops", "bank confirms")
    assert step.ended_at == T0 + timedelta(seconds=32, minutes=5)


def test_resolved_as_failed_the_step_and_the_run_fail_with_the_reason() -> None:
    log = _resolved(_lost_pay(), "failed", reason="not in the ledger").planned()
    step = log.steps[1]
    assert (step.status, step.step_error) == (
        StepStatus.FAILED,
        "resolved as failed by ops: not in the ledger",
    )
    assert log.record.status is RunStatus.FAILED
    assert "outcome unknown; resolved as failed by ops: not in the ledger" in (
        log.record.error or ""
    )


def test_resolved_as_retry_a_new_step_follows() -> None:
    log = _resolved(_lost_pay(), "retry").start("pay").complete("pay")
    steps = [s for s in log.steps if s.step_name == "pay"]
    assert [s.status for s in steps] == [StepStatus.FAILED, StepStatus.FAILED, StepStatus.COMPLETED]
    assert steps[1].step_error == "outcome unknown; ops asked to run it again"
    assert log.record.status is RunStatus.RUNNING


def test_a_lost_outcome_past_its_deadline_times_out() -> None:
    log = _lost_pay().after(hours=2)
    progress = fold(PAY, log.events)
    log.add(
        *plan(PAY, progress, now=log.now, execution_id=EXEC, resolution_deadline_secs=3600).events
    )
    step = log.steps[1]
    assert step.status is StepStatus.TIMED_OUT
    assert "resolution timed out after 3600 s" in (step.step_error or "")


def test_a_cancelled_run_shows_its_held_step_cancelled_not_waiting() -> None:
    # Found tried as a new user would: `charter status` of a cancelled run still showed its
    # held step as waiting for an approval nobody can give any more.
    log = _held_refund().after(seconds=5).add(WorkflowCancelled(reason="not needed"))
    refund = [step for step in log.steps if step.step_name == "refund"][-1]
    assert refund.status is StepStatus.CANCELLED
    assert refund.step_error == "not needed"
    assert refund.ended_at == log.now
    assert log.record.status is RunStatus.CANCELLED
