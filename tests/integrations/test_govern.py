"""`charter.integrations.govern` end to end, on SQLite and (when `CHARTER_TEST_POSTGRES_URL`
is set) Postgres: calls allowed and run, refused, held then approved (through the store and
through the real `charter approve`), budgets, two threads on one run; every run verifies
and replays clean."""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from charter.adapters.clock import ManualClock
from charter.audit.replay import replay_run, verify_log
from charter.core.budget import BudgetLimits, Usage
from charter.core.errors import CharterError, InvalidInput, UnknownTenant
from charter.core.events import (
    AgentToolInvoked,
    ApprovalConsumed,
    ApprovalDecision,
    NodeCompleted,
    NodeFailed,
    NodeGated,
    UsageRecorded,
)
from charter.core.policy import PolicySet
from charter.core.ports import Store
from charter.core.records import ExecutionStatus, Tenant
from charter.integrations.govern import (
    Governor,
    Held,
    RecordingFailed,
    Refused,
    govern,
    governed,
    is_governed,
    report_usage,
)
from tests.stores import make_store

KINDS = ("sqlite", "postgres")


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    made = make_store(request.param, tmp_path, ManualClock())
    yield made
    made.close()


def _audited(store: Store, run_id: str) -> None:
    """The run's chain verifies and every decision and settlement recomputes exactly."""
    assert verify_log(store, runs=[run_id]).ok
    report = replay_run(store, run_id)
    assert report.divergences == ()
    gates = [e for e in store.read_events(run_id) if isinstance(e.kind, NodeGated)]
    assert report.gates == len(gates) > 0


def _kinds(store: Store, run_id: str) -> list[str]:
    return [type(event.kind).__name__ for event in store.read_events(run_id)]


def test_a_sync_and_an_async_function_run_and_are_recorded(store: Store) -> None:
    governor = Governor(store=store, run_id="s1")
    calls: list[Any] = []

    @governor.tool(tool_name="search.web")
    def search(query: str, limit: int = 3) -> dict[str, Any]:
        calls.append(query)
        report_usage(input_tokens=10, output_tokens=2, cost_usd=0.001)
        return {"hits": [query] * limit}

    async def summarize(text: str) -> str:
        await asyncio.sleep(0)
        calls.append(text)
        return text[:3]

    asummarize = governor.govern(summarize)

    assert search("charter") == {"hits": ["charter"] * 3}
    assert asyncio.run(asummarize("governance")) == "gov"
    assert calls == ["charter", "governance"]
    assert _kinds(store, "s1") == [
        *["NodeStarted", "AgentToolInvoked", "NodeGated", "UsageRecorded", "NodeCompleted"] * 2
    ]
    usage = next(e.kind for e in store.read_events("s1") if isinstance(e.kind, UsageRecorded))
    assert (usage.input_tokens, usage.output_tokens, usage.tool_calls) == (10, 2, 1)
    execution = store.get_execution("s1")
    assert execution is not None
    assert execution.status is ExecutionStatus.PENDING
    stored = store.get_workflow(execution.workflow_id, execution.workflow_version)
    assert stored is not None
    assert is_governed(stored.ir)
    _audited(store, "s1")


def test_a_tool_blocked_by_the_tenant_is_refused_and_never_called(store: Store) -> None:
    now = store.clock.now()
    store.put_tenant(
        Tenant(
            tenant_id="acme",
            policy=PolicySet(blocked_tools=["db.drop_*"]),
            created_at=now,
            updated_at=now,
        )
    )
    calls: list[str] = []

    @governed(store=store, tenant="acme", tool_name="db.drop_users", run_id="s2")
    def drop(table: str) -> None:
        calls.append(table)

    with pytest.raises(Refused) as refused:
        drop("users")
    error = refused.value
    assert isinstance(error, CharterError)
    assert calls == []
    assert (error.outcome, error.rule, error.scope, error.pattern) == (
        "fail",
        "blocked_tools",
        "tenant",
        "db.drop_*",
    )
    assert (error.run_id, error.node_id) == ("s2", "db.drop_users")
    assert error.decision is not None
    assert error.decision.outcome == "fail"
    assert _kinds(store, "s2")[-2:] == ["PolicyViolation", "NodeFailed"]
    _audited(store, "s2")


def test_a_held_call_runs_exactly_once_after_its_approval(store: Store) -> None:
    policy = PolicySet(require_approval_for=["payments.*"], approver="finance-lead")
    calls: list[tuple[str, int]] = []

    def pay_back(order: str, amount: int) -> str:
        calls.append((order, amount))
        return "refunded"

    refund = govern(
        pay_back,
        store=store,
        policy=policy,
        tool_name="payments.refund",
        run_id="s3",
    )

    with pytest.raises(Held) as held:
        refund("A-17", 40)
    assert calls == []
    hold = held.value
    assert (hold.run_id, hold.node_id, hold.approver) == ("s3", "payments.refund", "finance-lead")
    assert hold.command.startswith("charter approve s3 payments.refund --user finance-lead")
    assert "decide_approval('s3', 'payments.refund', user_id='finance-lead'" in hold.python
    with pytest.raises(Held):  # still waiting: the same request, not a new one
        refund("A-17", 40)

    answer = store.decide_approval(
        "s3", "payments.refund", user_id="finance-lead", decision=ApprovalDecision.APPROVED
    )
    assert not isinstance(answer, str)
    assert refund("A-17", 40) == "refunded"
    assert calls == [("A-17", 40)]
    consumed = [e for e in store.read_events("s3") if isinstance(e.kind, ApprovalConsumed)]
    assert len(consumed) == 1

    with pytest.raises(Held):  # the approval is used up: a repeat asks again
        refund("A-17", 40)
    assert calls == [("A-17", 40)]
    _audited(store, "s3")


def test_an_approval_does_not_cover_a_call_with_other_arguments(store: Store) -> None:
    calls: list[int] = []

    @governed(store=store, policy={"require_approval_for": ["pay"]}, run_id="s4")
    def pay(amount: int) -> int:
        calls.append(amount)
        return amount

    with pytest.raises(Held):
        pay(10)
    store.decide_approval("s4", "pay", user_id="alice", decision=ApprovalDecision.APPROVED)
    with pytest.raises(Held) as other:
        pay(10_000)
    assert "does not cover this call" in str(other.value)
    assert calls == []
    assert pay.input_hash(10) == pay.input_hash(amount=10) != pay.input_hash(11)
    _audited(store, "s4")


def test_a_rejected_call_is_refused(store: Store) -> None:
    pay = govern(
        lambda amount: amount, store=store, policy={"require_approval_for": ["pay"]},
        tool_name="pay", run_id="s5",
    )  # fmt: skip
    with pytest.raises(Held):
        pay(5)
    store.decide_approval(
        "s5", "pay", user_id="bob", decision=ApprovalDecision.REJECTED, comment="no"
    )
    with pytest.raises(Refused) as refused:
        pay(5)
    assert refused.value.rule == "approval_rejected"
    assert "approval rejected by bob: no" in refused.value.reason
    _audited(store, "s5")


def test_usage_feeds_the_budget_and_a_trip_refuses_later_calls(store: Store) -> None:
    calls: list[str] = []

    @governed(store=store, limits=BudgetLimits(total_tokens=100), run_id="s6", tool_name="llm")
    def llm(prompt: str) -> dict[str, Any]:
        calls.append(prompt)
        return {"text": prompt, "usage": {"prompt_tokens": 30, "completion_tokens": 10}}

    assert llm("a")["text"] == "a"
    assert llm("b")["text"] == "b"
    with pytest.raises(Refused) as tripped:  # 120 > 100: it ran, its output is withheld
        llm("c")
    assert tripped.value.ran
    assert tripped.value.result["text"] == "c"
    assert tripped.value.rule == "budget:total_tokens"
    with pytest.raises(Refused) as spent:  # later calls are refused before they run
        llm("d")
    assert not spent.value.ran
    assert spent.value.rule == "budget:total_tokens"
    assert calls == ["a", "b", "c"]
    _audited(store, "s6")


def test_a_function_that_raises_is_recorded_as_failed(store: Store) -> None:
    @governed(store=store, run_id="s7")
    def flaky(x: int) -> int:
        raise ValueError(f"bad {x}")

    with pytest.raises(ValueError, match="bad 1"):
        flaky(1)
    events = store.read_events("s7")
    assert isinstance(events[-2].kind, UsageRecorded)
    assert not events[-2].kind.succeeded
    failed = events[-1].kind
    assert isinstance(failed, NodeFailed)
    assert failed.error == "ValueError: bad 1"
    _audited(store, "s7")


def test_two_threads_on_one_run_keep_the_log_whole(store: Store) -> None:
    governor = Governor(store=store, run_id="s8", limits=BudgetLimits(total_tokens=10**9))
    tool = governor.govern(lambda n: Usage(input_tokens=n), tool_name="count")
    other = governor.govern(lambda n: n, tool_name="echo")
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for n in range(15):
                tool(offset + n)
                other(n)
        except BaseException as error:  # surfaced by the assertion below
            errors.append(error)
            raise

    threads = [threading.Thread(target=work, args=(k * 100,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    events = store.read_events("s8")
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert sum(isinstance(e.kind, NodeCompleted) for e in events) == 60
    attempts = [e.kind.attempt for e in events if isinstance(e.kind, NodeGated)]
    assert sorted(a for a in attempts) == sorted([*range(30), *range(30)])
    assert sum(e.kind.input_tokens for e in events if isinstance(e.kind, UsageRecorded)) == sum(
        k * 100 + n for k in range(2) for n in range(15)
    )
    _audited(store, "s8")


def test_concurrent_calls_of_an_approved_call_run_it_once(store: Store) -> None:
    calls: list[int] = []
    governor = Governor(store=store, run_id="s9", policy={"require_approval_for": ["pay"]})
    pay = governor.govern(lambda amount: calls.append(amount), tool_name="pay")
    with pytest.raises(Held):
        pay(7)
    store.decide_approval("s9", "pay", user_id="alice", decision=ApprovalDecision.APPROVED)
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def call() -> None:
        barrier.wait()
        try:
            pay(7)
            outcomes.append("ran")
        except Held:
            outcomes.append("held")

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["held", "held", "held", "ran"]
    assert calls == [7]
    _audited(store, "s9")


def test_a_second_process_finds_the_same_run_and_its_approval(store: Store) -> None:
    def make() -> Any:
        return govern(
            lambda x: x * 2,
            store=store,
            policy={"require_approval_for": ["double"]},
            tool_name="double",
            run_id="s10",
        )

    with pytest.raises(Held):
        make()(21)
    store.decide_approval("s10", "double", user_id="ann", decision=ApprovalDecision.APPROVED)
    assert make()(21) == 42  # a fresh governor (say, after a restart) on the same run
    with pytest.raises(InvalidInput, match="its policy differs"):
        govern(lambda x: x, store=store, tool_name="double", run_id="s10")(1)
    _audited(store, "s10")


def test_setup_errors_fail_closed(store: Store, tmp_path: Path) -> None:
    with pytest.raises(UnknownTenant):
        govern(lambda: 1, store=store, tenant="nobody", run_id="s11")()
    with pytest.raises(InvalidInput, match="cannot be final"):
        govern(lambda: 1, store=store, policy=PolicySet(final=True))
    governor = Governor(store=store, run_id="s12")
    first = governor.govern(lambda: 1, tool_name="first")
    assert first() == 1
    with pytest.raises(InvalidInput, match="register every tool before the first call"):
        governor.govern(lambda: 2, tool_name="late")
    governor_two = Governor(store=store, run_id="s13")
    bad = governor_two.govern(lambda: {"usage": {"prompt_tokens": -1}}, tool_name="bad")
    with pytest.raises(RecordingFailed, match="usage could not be read"):
        bad()
    _audited(store, "s13")


def test_the_cli_answers_a_held_call(tmp_path: Path) -> None:
    """The exact command a `Held` carries, run as a real process, answers the call."""
    db = tmp_path / "governed.db"
    calls: list[str] = []

    def pay_back(order: str) -> str:
        calls.append(order)
        return "ok"

    def make() -> Any:
        return govern(
            pay_back,
            store=str(db),
            policy={"require_approval_for": ["payments.*"], "approver": "finance-lead"},
            tool_name="payments.refund",
            run_id="cli-1",
        )

    refund = make()
    with pytest.raises(Held) as held:
        refund("A-1")
    refund.governor.close()
    env = {**os.environ, "PYTHONUTF8": "1"}
    argv = shlex.split(held.value.command)
    assert argv[:2] == ["charter", "approve"]
    assert "--db" in argv
    done = subprocess.run(
        [sys.executable, "-m", "charter", *argv[1:]],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    again = make()
    assert again("A-1") == "ok"
    assert calls == ["A-1"]
    _audited(again.governor.store, "cli-1")
    again.governor.close()


def test_invocations_are_recorded_by_digest_only(store: Store) -> None:
    secret = govern(lambda token: len(token), store=store, tool_name="secret", run_id="s14")
    assert secret("hunter2") == 7
    invoked = [e.kind for e in store.read_events("s14") if isinstance(e.kind, AgentToolInvoked)]
    assert invoked[0].input_hash == secret.input_hash("hunter2")
    assert all("hunter2" not in link.kind_text for link in store.read_chain("s14"))
