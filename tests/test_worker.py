"""The worker shell in one process: what it does around the core's decisions.

Approvals answered elsewhere and ``human_approval`` timeouts (the scheduler's tick), executor
timeouts, missing executors, unknown tenants, streaming chunks, failures while committing,
graceful shutdown; a lost outcome (an abandoned effect reservation) waiting for a person,
each answer to it, and the tenant's deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest

from charter.adapters.clock import ManualClock
from charter.adapters.executors import ExecutorRegistry, default_registry
from charter.adapters.memory import MemoryStore
from charter.adapters.sqlite import SqliteStore
from charter.audit.replay import replay_run, verify_log
from charter.core.approvals import ApprovalRefused
from charter.core.budget import Usage
from charter.core.errors import FenceLost, InvalidInput, StoreUnavailable
from charter.core.events import (
    AgentToolProgress,
    ApprovalDecision,
    Event,
    NodeCompleted,
    NodeFailed,
    NodeSkipped,
    OutcomeResolved,
    OutcomeUnknown,
    WorkflowCompleted,
)
from charter.core.ports import (
    CommitRequest,
    Committed,
    GroupCommitted,
    NodeCall,
    NodeResult,
    ReclaimResult,
    Store,
)
from charter.core.records import Claim, WorkItemStatus
from charter.core.runs import LostOutcome, RunStatus, run_record
from charter.core.scheduler import fold
from charter.core.workflow import parse_workflow
from charter.worker import Worker, WorkerHooks, drive, start_run
from charter.worker.commits import Writer, commit_request
from charter.worker.scheduling import Scheduler


def _no_sleep(_: float) -> None:
    pass


def _workflow(nodes: dict[str, Any], edges: list[tuple[str, str]], **extra: Any) -> Any:
    return parse_workflow(
        {
            "workflow_id": "w",
            "version": "1",
            "start_node": next(iter(nodes)),
            "nodes": nodes,
            "edges": [{"from": a, "to": b} for a, b in edges],
            **extra,
        }
    )


def _tool(name: str, **extra: Any) -> dict[str, Any]:
    return {"kind": {"type": "tool", "tool_ref": name}, **extra}


def _completed(events: tuple[Event, ...]) -> list[str]:
    return [e.kind.node_id for e in events if isinstance(e.kind, NodeCompleted)]


def _failures(events: tuple[Event, ...]) -> list[NodeFailed]:
    return [e.kind for e in events if isinstance(e.kind, NodeFailed)]


class _Flaky(MemoryStore):
    """A store whose first commits fail as an unreachable database does."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def commit(self, request: CommitRequest) -> tuple[Event, ...]:
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("the database is briefly unreachable")
        return super().commit(request)

    def commit_and_claim(
        self, request: CommitRequest, worker_id: str, queues: Sequence[str], *, lease_secs: float
    ) -> Committed:
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("the database is briefly unreachable")
        return super().commit_and_claim(request, worker_id, queues, lease_secs=lease_secs)

    def commit_group(
        self,
        requests: Sequence[CommitRequest],
        worker_id: str | None = None,
        queues: Sequence[str] = (),
        *,
        lease_secs: float = 30.0,
        claim_limit: int = 0,
    ) -> GroupCommitted:
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("the database is briefly unreachable")
        return super().commit_group(
            requests, worker_id, queues, lease_secs=lease_secs, claim_limit=claim_limit
        )


def test_a_commit_that_fails_transiently_is_retried_without_running_the_node_again() -> None:
    store = _Flaky(failures=2)
    calls: list[str] = []

    def count(call: NodeCall) -> NodeResult:
        calls.append(call.node_id)
        return NodeResult(output=None)

    registry = default_registry()
    registry.register_tool("work.*", count)
    # (a's commit also claims b in its transaction: that commit is the one that fails.)
    workflow = _workflow(
        {"a": _tool("work.a"), "b": _tool("work.b")},
        [("a", "b")],
        tools={"work.a": {"idempotent": True}, "work.b": {"idempotent": True}},
    )
    run = start_run(store, workflow, execution_id="r").execution_id
    outcome = drive(Worker(store, executors=registry, lease_secs=5.0), run, sleep=_no_sleep)
    assert outcome.status == "completed"
    assert calls == ["a", "b"]
    assert store.failures == 0
    assert _failures(store.read_events(run)) == []


# ── one write transaction per node ─────────────────────────────────────────────────────


class _Counting(MemoryStore):
    """A store that counts the claims it hands out of their own transaction."""

    def __init__(self) -> None:
        super().__init__(clock=ManualClock())
        self.claims = 0

    def claim(
        self,
        worker_id: str,
        queues: Sequence[str],
        *,
        lease_secs: float,
        execution_id: str | None = None,
    ) -> Claim | None:
        claimed = super().claim(worker_id, queues, lease_secs=lease_secs, execution_id=execution_id)
        self.claims += claimed is not None
        return claimed


def _chain_run(
    chain_limit: int, shape: str = "chain", batch: int = 1
) -> tuple[_Counting, list[tuple[int, Any]]]:
    store = _Counting()
    nodes = {f"n{k}": _tool("work.step") for k in range(6)}
    if shape == "chain":
        edges = [(f"n{k}", f"n{k + 1}") for k in range(5)]
    else:  # n0 → n1…n4 → n5
        edges = [("n0", f"n{k}") for k in range(1, 5)] + [(f"n{k}", "n5") for k in range(1, 5)]
    workflow = _workflow(
        nodes,
        edges,
        tools={"work.step": {"executor": "noop", "idempotent": True}},
        policy={"require_approval_for": ["payments.*"]},
    )
    run = start_run(store, workflow, execution_id="r").execution_id
    worker = Worker(store, worker_id="w", chain_limit=chain_limit, batch=batch)
    assert drive(worker, run, sleep=_no_sleep).status == "completed"
    # (Durations are measured: the one field that differs from run to run.)
    timeless = [
        attrs.evolve(e.kind, duration_ms=0) if isinstance(e.kind, NodeCompleted) else e.kind
        for e in store.read_events(run)
    ]
    return store, list(enumerate(timeless, start=1))


@pytest.mark.parametrize("shape", ["chain", "fanout"])
@pytest.mark.parametrize(("chain_limit", "claims"), [(0, 6), (2, 2), (64, 1)])
def test_a_commit_claims_the_next_node_of_its_run_and_records_the_same_log(
    chain_limit: int, claims: int, shape: str
) -> None:
    """With chaining each node's commit claims the run's next node in the same transaction
    (one claim of its own for the whole run, or one every ``chain_limit + 1`` nodes); the
    log is the same, event for event, as with a claim per node — and replays."""
    store, log = _chain_run(chain_limit, shape)
    _, unchained = _chain_run(0, shape)
    assert store.claims == claims
    assert log == unchained
    assert verify_log(store, runs=["r"]).ok
    assert replay_run(store, "r").ok


def test_chain_limit_must_be_a_count() -> None:
    with pytest.raises(InvalidInput, match="chain_limit"):
        Worker(MemoryStore(), chain_limit=-1)
    for batch in (-1, 1001, True):
        with pytest.raises(InvalidInput, match="batch"):
            Worker(MemoryStore(), batch=batch)


class _Groups(_Counting):
    """Counts the group transactions too, and what each committed and claimed."""

    def __init__(self) -> None:
        super().__init__()
        self.many = 0
        self.groups: list[tuple[int, int]] = []

    def claim_many(
        self,
        worker_id: str,
        queues: Sequence[str],
        *,
        lease_secs: float,
        limit: int,
        execution_id: str | None = None,
    ) -> tuple[Claim, ...]:
        self.many += 1
        return super().claim_many(
            worker_id, queues, lease_secs=lease_secs, limit=limit, execution_id=execution_id
        )

    def commit_group(
        self,
        requests: Sequence[CommitRequest],
        worker_id: str | None = None,
        queues: Sequence[str] = (),
        *,
        lease_secs: float = 30.0,
        claim_limit: int = 0,
    ) -> GroupCommitted:
        done = super().commit_group(
            requests, worker_id, queues, lease_secs=lease_secs, claim_limit=claim_limit
        )
        self.groups.append((len(requests), len(done.claims)))
        self.after_group(done)
        return done

    def after_group(self, done: GroupCommitted) -> None:
        """Called with each group's result, before it is returned."""


@pytest.mark.parametrize("batch", [2, 16])
def test_a_batched_worker_claims_and_commits_a_fan_out_in_groups(batch: int) -> None:
    """``Worker(batch=k)``: the ready siblings of a fan-out are claimed k at a time in the
    transaction that commits the group before them; every node runs once, the log
    verifies and replays."""
    store = _Groups()
    nodes = {f"n{k}": _tool("work.step") for k in range(6)}
    edges = [("n0", f"n{k}") for k in range(1, 5)] + [(f"n{k}", "n5") for k in range(1, 5)]
    tools = {"work.step": {"executor": "noop", "idempotent": True}}
    run = start_run(store, _workflow(nodes, edges, tools=tools), execution_id="r").execution_id
    worker = Worker(store, worker_id="w", batch=batch)
    assert drive(worker, run, sleep=_no_sleep).status == "completed"
    events = store.read_events(run)
    assert sorted(_completed(events)) == sorted(nodes)
    assert verify_log(store, runs=["r"]).ok
    assert replay_run(store, "r").ok
    # n0's commit claims up to k siblings; their group commit claims the rest; the join
    # (planned after the group) is claimed on its own, and its commit, which makes nothing
    # ready, is a one-item commit (`commit_and_claim`), as a chain's are.
    if batch == 16:
        assert store.groups == [(1, 4), (4, 0)]
    else:
        assert store.groups == [(1, 2), (2, 2), (2, 0)]
    assert store.many <= 3  # (the run's first item, the join's, and maybe a last look)
    assert store.claims == 0


class _Dies(BaseException):
    """The worker's process ending (not an error any layer handles)."""


class _DiesAfterAGroup(_Groups):
    """A store whose caller dies right after its second group transaction commits."""

    def __init__(self) -> None:
        super().__init__()
        self.orphans: tuple[Claim, ...] = ()

    def after_group(self, done: GroupCommitted) -> None:
        if len(self.groups) == 2:
            self.orphans = done.claims  # (more siblings it claimed: they die with it)
            raise _Dies


def test_a_worker_that_dies_after_a_group_commit_is_recovered_by_lease() -> None:
    """The group's commits stand; the items it claimed are reclaimed when their leases
    expire and run again by another worker: every node completes once, the log verifies
    and replays."""
    store = _DiesAfterAGroup()
    nodes = {f"n{k}": _tool("work.step") for k in range(10)}
    edges = [("n0", f"n{k}") for k in range(1, 9)] + [(f"n{k}", "n9") for k in range(1, 9)]
    tools = {"work.step": {"executor": "noop", "idempotent": True}}
    run = start_run(store, _workflow(nodes, edges, tools=tools), execution_id="r").execution_id
    with pytest.raises(_Dies):
        drive(Worker(store, worker_id="w1", batch=3, lease_secs=5.0), run, sleep=_no_sleep)
    claimed = [store.get_item(c.item.item_id) for c in store.orphans]
    assert len(claimed) == 3  # the dead worker's, still claimed under its leases
    assert all(i is not None and i.status is WorkItemStatus.CLAIMED for i in claimed)
    clock = store.clock
    assert isinstance(clock, ManualClock)
    clock.advance(6)  # the leases run out
    again = Worker(store, worker_id="w2", batch=3, lease_secs=5.0)

    def wait(seconds: float) -> None:  # (the retries' backoffs pass)
        clock.advance(seconds)

    assert drive(again, run, sleep=wait).status == "completed"
    events = store.read_events(run)
    assert sorted(_completed(events)) == sorted(nodes)
    retried = [f.node_id for f in _failures(events)]
    assert sorted(retried) == sorted(c.item.node_id for c in store.orphans)
    assert verify_log(store, runs=["r"]).ok
    assert replay_run(store, "r").ok


def _budget_run(batch: int) -> tuple[list[str], list[str], MemoryStore]:
    """A fan-out of five siblings of 10 tokens each under a 25-token budget."""
    store = MemoryStore(clock=ManualClock())
    registry = default_registry()
    registry.register_tool("spend.*", lambda call: NodeResult(usage=Usage(input_tokens=10)))
    nodes = {f"n{k}": _tool("spend.it") for k in range(7)}
    edges = [("n0", f"n{k}") for k in range(1, 6)] + [(f"n{k}", "n6") for k in range(1, 6)]
    workflow = _workflow(
        nodes,
        edges,
        tools={"spend.it": {"idempotent": True}},
        token_budget={"total_tokens": 25},
    )
    run = start_run(store, workflow, execution_id="r").execution_id
    drive(Worker(store, executors=registry, worker_id="w", batch=batch), run, sleep=_no_sleep)
    events = store.read_events(run)
    failed = [kind.node_id for kind in _failures(events)]
    return _completed(events), failed, store


def test_a_group_never_spends_past_a_budget_that_one_at_a_time_would_stop() -> None:
    """Under a run budget the items of a group are decided one after another on the
    commits before them: the same nodes run, and the same fail, as one at a time."""
    alone = _budget_run(1)
    grouped = _budget_run(16)
    assert grouped[:2] == alone[:2]
    assert len(alone[0]) < 5  # the budget stopped the fan-out (with the join)
    assert verify_log(grouped[2], runs=["r"]).ok
    assert replay_run(grouped[2], "r").ok


# ── approvals and the tick ─────────────────────────────────────────────────────────────


def test_a_running_worker_resumes_a_run_approved_from_elsewhere(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "charter.db")
    workflow = _workflow(
        {"refund": _tool("payments.refund"), "notify": _tool("email.send")},
        [("refund", "notify")],
        policy={"require_approval_for": ["payments.*"], "approver": "lead"},
        tools={"payments.refund": {"executor": "echo"}, "email.send": {"executor": "echo"}},
    )
    run = start_run(store, workflow, execution_id="r").execution_id
    assert drive(Worker(store), run, sleep=_no_sleep).status == "waiting"
    # The answer is recorded by someone else (another process, an API): nothing is claimed.
    answer = store.decide_approval(
        "r", "refund", user_id="lead", decision=ApprovalDecision.APPROVED
    )
    assert not isinstance(answer, ApprovalRefused)

    stop = threading.Event()
    worker = Worker(store, lease_secs=5.0)
    thread = threading.Thread(target=worker.run, args=(stop,), kwargs={"idle_secs": 0.01})
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while worker.scheduler.progress(run).finished is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join()
    events = store.read_events(run)
    assert isinstance(events[-1].kind, WorkflowCompleted)
    assert _completed(events) == ["refund", "notify"]


def _approval_workflow(**kind: Any) -> Any:
    return _workflow(
        {
            "review": {"kind": {"type": "human_approval", **kind}},
            "publish": _tool("blog.publish"),
            "escalate": _tool("pager.page"),
        },
        [("review", "publish"), ("review", "escalate")],
        tools={"blog.publish": {"executor": "echo"}, "pager.page": {"executor": "echo"}},
    )


def test_a_human_approval_timeout_routes_to_its_fallback() -> None:
    clock = ManualClock()
    store = MemoryStore(clock=clock)
    workflow = _approval_workflow(approver="alice", timeout_secs=60, fallback_node="escalate")
    run = start_run(store, workflow, execution_id="r").execution_id
    worker = Worker(store)
    assert drive(worker, run, sleep=_no_sleep).status == "waiting"
    clock.advance(59)
    assert worker.scheduler.tick() == 0  # not yet
    clock.advance(2)
    assert worker.scheduler.tick() > 0
    assert drive(worker, run, sleep=_no_sleep).status == "completed"
    events = store.read_events(run)
    review = next(
        e.kind for e in events if isinstance(e.kind, NodeCompleted) and e.kind.node_id == "review"
    )
    assert review.output == {"approved": False, "timed_out": True, "chosen_targets": ["escalate"]}
    assert "publish" in [e.kind.node_id for e in events if isinstance(e.kind, NodeSkipped)]
    assert _completed(events) == ["review", "escalate"]


def test_a_human_approval_timeout_without_fallback_fails_the_run() -> None:
    clock = ManualClock()
    store = MemoryStore(clock=clock)
    run = start_run(store, _approval_workflow(timeout_secs=5), execution_id="r").execution_id
    worker = Worker(store)
    assert drive(worker, run, sleep=_no_sleep).status == "waiting"
    clock.advance(6)
    worker.scheduler.tick()
    outcome = drive(worker, run, sleep=_no_sleep)
    assert outcome.status == "failed"
    assert outcome.error is not None
    assert "review: approval timed out after 5 s" in outcome.error


def test_a_human_approval_node_waits_for_its_named_approver() -> None:
    store = MemoryStore()
    run = start_run(store, _approval_workflow(approver="alice"), execution_id="r").execution_id
    worker = Worker(store)
    assert drive(worker, run, sleep=_no_sleep).status == "waiting"
    refused = store.decide_approval(
        "r", "review", user_id="bob", decision=ApprovalDecision.APPROVED
    )
    assert isinstance(refused, ApprovalRefused)
    store.decide_approval(
        "r", "review", user_id="alice", decision=ApprovalDecision.APPROVED, comment="ship it"
    )
    assert drive(worker, run, sleep=_no_sleep).status == "completed"
    events = store.read_events(run)
    review = next(
        e.kind for e in events if isinstance(e.kind, NodeCompleted) and e.kind.node_id == "review"
    )
    assert review.output == {"approved": True, "by": "alice", "comment": "ship it"}
    # Without a fallback, an approval lets every successor run.
    assert sorted(_completed(events)) == ["escalate", "publish", "review"]


# ── executors ──────────────────────────────────────────────────────────────────────────


def _run_one(store: Store, registry: ExecutorRegistry, node: dict[str, Any], **extra: Any) -> Any:
    workflow = _workflow({"only": node}, [], **extra)
    run = start_run(store, workflow, execution_id="r").execution_id
    return drive(Worker(store, executors=registry), run, sleep=_no_sleep)


def test_an_executor_that_overruns_its_timeout_fails_the_attempt() -> None:
    release = threading.Event()

    def slow(call: NodeCall) -> NodeResult:
        release.wait(30)
        return NodeResult(output={})

    registry = default_registry()
    registry.register_tool("slow.*", slow)
    store = MemoryStore()
    node = _tool("slow.call", node_timeout_secs=0.05, retry_policy="no_retry")
    try:
        outcome = _run_one(store, registry, node, tools={"slow.call": {"idempotent": True}})
    finally:
        release.set()
    assert outcome.status == "failed"
    (failure,) = _failures(store.read_events("r"))
    assert failure.error == "exhausted 1 attempts: timed out after 0.05 s"


def test_a_node_without_an_executor_fails_instead_of_succeeding() -> None:
    store = MemoryStore()
    outcome = _run_one(store, default_registry(), _tool("crm.unknown"))
    assert outcome.status == "failed"
    (failure,) = _failures(store.read_events("r"))
    assert not failure.retryable
    assert failure.error == "no executor for tool node 'only' (crm.unknown)"


def test_a_run_of_an_unknown_tenant_is_refused_at_start() -> None:
    from charter.core.errors import UnknownTenant

    with pytest.raises(UnknownTenant):
        start_run(MemoryStore(), _workflow({"a": _tool("t")}, []), tenant_id="nobody")


def test_streamed_chunks_are_recorded_in_order_with_the_result() -> None:
    def stream(call: NodeCall) -> NodeResult:
        for word in ("one", "two", "three"):
            call.emit(word)
        return NodeResult(output={"words": 3})

    registry = default_registry()
    registry.register_tool("agent://*", stream)
    store = MemoryStore()
    node = {"kind": {"type": "agent_tool", "agent": "agent://writer", "mode": "streaming"}}
    assert _run_one(store, registry, node).status == "completed"
    events = store.read_events("r")
    chunks = [e for e in events if isinstance(e.kind, AgentToolProgress)]
    kinds = [c.kind for c in chunks if isinstance(c.kind, AgentToolProgress)]
    assert [(k.chunk_index, k.partial_output_summary) for k in kinds] == [
        (0, "one"),
        (1, "two"),
        (2, "three"),
    ]
    completion = next(e for e in events if isinstance(e.kind, NodeCompleted))
    assert all(c.sequence < completion.sequence for c in chunks)


def test_a_failure_while_committing_fails_closed_and_the_node_is_retried() -> None:
    calls: list[int] = []

    def count(call: NodeCall) -> NodeResult:
        calls.append(call.attempt)
        return NodeResult(output={"attempt": call.attempt})

    broken = {"first": True}

    def break_first_commit(claim: Claim) -> None:
        if broken.pop("first", False):
            raise RuntimeError("disk unplugged")

    registry = default_registry()
    registry.register_tool("work.*", count)
    store = MemoryStore()
    workflow = _workflow(
        {"only": _tool("work.step", retry_policy={"max_attempts": 3, "backoff_ms": 0})},
        [],
        tools={"work.step": {"idempotent": True}},
    )
    run = start_run(store, workflow, execution_id="r").execution_id
    worker = Worker(store, executors=registry, hooks=WorkerHooks(before_commit=break_first_commit))
    assert drive(worker, run, sleep=_no_sleep).status == "completed"
    events = store.read_events(run)
    (failure,) = _failures(events)
    assert failure.retryable
    assert "RuntimeError: disk unplugged" in failure.error
    assert calls == [0, 1]  # the failed attempt was not counted as done
    assert _completed(events) == ["only"]


def test_graceful_shutdown_finishes_the_item_in_hand() -> None:
    entered, release = threading.Event(), threading.Event()

    def wait_for_release(call: NodeCall) -> NodeResult:
        entered.set()
        release.wait(30)
        return NodeResult(output={"finished": True})

    registry = default_registry()
    registry.register_tool("work.*", wait_for_release)
    store = MemoryStore()
    workflow = _workflow(
        {"only": _tool("work.step")}, [], tools={"work.step": {"idempotent": True}}
    )
    run = start_run(store, workflow, execution_id="r").execution_id
    worker = Worker(store, executors=registry)
    worker.scheduler.advance(run)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), kwargs={"idle_secs": 0.01})
    thread.start()
    assert entered.wait(30)
    stop.set()  # asked to stop while the executor runs
    release.set()
    thread.join(30)
    assert not thread.is_alive()
    assert _completed(store.read_events(run)) == ["only"]


def test_the_heartbeat_keeps_a_long_call_claimed_past_its_lease(tmp_path: Path) -> None:
    started, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def long_call(call: NodeCall) -> NodeResult:
        calls.append(call.node_id)
        started.set()
        release.wait(30)
        return NodeResult(output={"done": True})

    registry = default_registry()
    registry.register_tool("work.*", long_call)
    store = SqliteStore(tmp_path / "charter.db")
    tools = {"work.step": {"idempotent": True}}
    workflow = _workflow({"only": _tool("work.step")}, [], tools=tools)
    run = start_run(store, workflow, execution_id="r").execution_id
    worker = Worker(store, executors=registry, lease_secs=0.3)
    worker.scheduler.advance(run)
    thread = threading.Thread(target=worker.step)
    thread.start()
    assert started.wait(30)
    # Several lease periods pass while the call runs; reclaiming finds nothing expired.
    for _ in range(10):
        time.sleep(0.1)
        assert store.reclaim_expired() == ReclaimResult()
    release.set()
    thread.join(30)
    worker.close()
    assert calls == ["only"]
    assert _completed(store.read_events(run)) == ["only"]


def test_driving_one_run_leaves_other_runs_work_to_their_workers(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "charter.db")
    tools = {"work.step": {"executor": "echo", "idempotent": True}}
    workflow = _workflow({"only": _tool("work.step")}, [], tools=tools)
    other = start_run(store, workflow, execution_id="other").execution_id
    Worker(store).scheduler.advance(other)  # its item waits in the same queue, older
    mine = start_run(store, workflow, execution_id="mine").execution_id
    assert drive(Worker(store), mine, sleep=_no_sleep).status == "completed"
    assert _completed(store.read_events(other)) == []
    assert drive(Worker(store), other, sleep=_no_sleep).status == "completed"


# ── a lost outcome waits for a person ──────────────────────────────────────────────────


def _ticking(clock: ManualClock) -> Callable[[float], None]:
    """A ``sleep`` for `drive` that moves the manual clock instead of waiting."""

    def sleep(seconds: float) -> None:
        clock.advance(seconds)

    return sleep


class _Died(BaseException):
    """Stands for a worker killed mid-call: nothing after the call runs, nothing is written."""


def _payments(clock: ManualClock) -> tuple[MemoryStore, ExecutorRegistry, list[str]]:
    """A run whose ``pay`` node (not idempotent) lost its outcome: its first attempt's worker
    died mid-call, the lease expired, and the next attempt found the reservation abandoned.
    Returns the store, the registry (which no longer dies) and the calls that happened."""
    store = MemoryStore(clock=clock)
    calls: list[str] = []
    dying = [True]

    def post(call: NodeCall) -> NodeResult:
        calls.append(f"{call.node_id} {call.idempotency_key}")
        if dying[0] and call.node_id == "pay":
            raise _Died
        return NodeResult(output={"posted": call.node_id}, state_patch={call.node_id: "done"})

    registry = default_registry()
    registry.register_tool("ledger.*", post)
    workflow = _workflow(
        {"pay": _tool("ledger.post"), "receipt": _tool("ledger.receipt")},
        [("pay", "receipt")],
        tools={"ledger.post": {"idempotent": False}, "ledger.receipt": {"idempotent": False}},
    )
    start_run(store, workflow, execution_id="r")
    dead = Worker(store, executors=registry, lease_secs=5.0)
    with pytest.raises(_Died):
        drive(dead, "r", sleep=_ticking(clock))
    dead.close()
    dying[0] = False
    clock.advance(6)  # the dead worker's lease runs out
    return store, registry, calls


def test_an_abandoned_effect_reservation_makes_the_run_wait_for_a_person() -> None:
    clock = ManualClock()
    store, registry, calls = _payments(clock)
    outcome = drive(Worker(store, executors=registry, lease_secs=5.0), "r", sleep=_ticking(clock))
    assert (outcome.status, outcome.error, outcome.lost_outcomes) == ("waiting", None, ("pay",))
    assert len(calls) == 1  # not fired again
    events = store.read_events("r")
    assert [f for f in _failures(events) if not f.retryable] == []
    (lost,) = [e.kind for e in events if isinstance(e.kind, OutcomeUnknown)]
    assert (lost.node_id, lost.attempt) == ("pay", 1)
    assert lost.idempotency_key == calls[0].split()[1]
    assert "stopped mid-call" in lost.reason
    execution = store.get_execution("r")
    assert execution is not None
    record = run_record(execution, events)
    assert record.status is RunStatus.WAITING
    assert isinstance(record.blocked_on, LostOutcome)
    assert record.blocked_on.gate_name == "pay"
    # Ticking changes nothing while no one answers and the tenant sets no deadline.
    clock.advance(86_400)
    worker = Worker(store, executors=registry, lease_secs=5.0)
    assert worker.scheduler.tick() == 0
    assert drive(worker, "r", sleep=_ticking(clock)).status == "waiting"


@pytest.mark.parametrize("resolution", ["succeeded", "failed", "retry"])
def test_each_answer_to_a_lost_outcome_settles_the_node(resolution: str) -> None:
    clock = ManualClock()
    store, registry, calls = _payments(clock)
    worker = Worker(store, executors=registry, lease_secs=5.0)
    assert drive(worker, "r", sleep=_ticking(clock)).status == "waiting"
    answer = _resolve(
        store, "r", "pay", resolution, output={"posted": "by hand"}, reason="not in the ledger"
    )
    assert isinstance(answer.kind, OutcomeResolved)
    outcome = drive(worker, "r", sleep=_ticking(clock))
    events = store.read_events("r")
    pays = [c for c in calls if c.startswith("pay ")]
    if resolution == "succeeded":
        assert outcome.status == "completed"
        assert len(pays) == 1
        pay = next(
            e.kind for e in events if isinstance(e.kind, NodeCompleted) and e.kind.node_id == "pay"
        )
        assert pay.output == {"posted": "by hand"}
        assert _completed(events) == ["pay", "receipt"]
    elif resolution == "failed":
        assert outcome.status == "failed"
        assert len(pays) == 1
        assert "pay: outcome unknown; resolved as failed by ops: not in the ledger" in (
            outcome.error or ""
        )
        assert _completed(events) == []
    else:
        assert outcome.status == "completed"
        first, second = pays
        assert first.split()[1] != second.split()[1]  # a new key: the retry really fired
        assert _completed(events) == ["pay", "receipt"]


class _Deadline:
    """A tenant policy with a resolution deadline (`PolicySet.resolution_deadline_secs`,
    read by the scheduler with getattr while the field is not in `PolicySet` yet)."""

    def __init__(self, policy: Any, seconds: float) -> None:
        self._policy = policy
        self.resolution_deadline_secs = seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(self._policy, name)


def test_a_lost_outcome_unresolved_past_the_tenants_deadline_fails_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = ManualClock()
    store, registry, _ = _payments(clock)
    worker = Worker(store, executors=registry, lease_secs=5.0)
    assert drive(worker, "r", sleep=_ticking(clock)).status == "waiting"
    read_tenant = store.get_tenant

    def get_tenant(tenant_id: str) -> Any:
        tenant = read_tenant(tenant_id)
        policy: Any = _Deadline(tenant.policy, 3600) if tenant else None
        return attrs.evolve(tenant, policy=policy) if tenant else None

    monkeypatch.setattr(store, "get_tenant", get_tenant)
    assert worker.scheduler.resolution_deadline("r") == 3600
    clock.advance(3599)
    assert worker.scheduler.tick() == 0
    clock.advance(2)
    assert worker.scheduler.tick() > 0
    outcome = drive(worker, "r", sleep=_ticking(clock))
    assert outcome.status == "failed"
    assert "pay: outcome unknown: resolution timed out after 3600 s" in (outcome.error or "")


def _resolve(
    store: MemoryStore,
    run: str,
    node: str,
    resolution: str,
    *,
    output: Any = None,
    reason: str | None = None,
) -> Event:
    """Record a person's answer with `Store.resolve_outcome`."""
    answer = store.resolve_outcome(
        run, node, user_id="ops", resolution=resolution, output=output, reason=reason
    )
    assert isinstance(answer, Event), answer
    return answer


class _Refusing(MemoryStore):
    """A store that refuses every commit (the claim was lost meanwhile)."""

    def commit_and_claim(
        self, request: CommitRequest, worker_id: str, queues: Sequence[str], *, lease_secs: float
    ) -> Committed:
        raise FenceLost(f"work item {request.item_id!r} was claimed again")


@pytest.mark.parametrize("lands", [True, False])
def test_a_commits_fold_is_adopted_once_it_lands_and_dropped_if_it_does_not(lands: bool) -> None:
    # The worker folds a commit's events before the commit (to plan its follow-up) and adopts
    # that fold once the commit lands: the scheduler then knows exactly what the log says; a
    # commit refused leaves it exactly where it was.
    store = MemoryStore() if lands else _Refusing()
    workflow = _workflow(
        {"a": _tool("work.a"), "b": _tool("work.b")},
        [("a", "b")],
        tools={"work.a": {"idempotent": True}, "work.b": {"idempotent": True}},
    )
    run = start_run(store, workflow, execution_id="r").execution_id
    scheduler = Scheduler(store)
    scheduler.advance(run)
    claim = store.claim("w", ["tool"], lease_secs=30)
    assert claim is not None
    view = scheduler.view(run, claimed=claim)
    before = scheduler.view(run).progress
    writer = Writer(store, scheduler, "w", patience_secs=0)
    done = NodeCompleted(node_id="a", output={"ok": 1}, state_patch={}, duration_ms=0)
    request = commit_request(claim, WorkItemStatus.COMPLETED, [done], succeeded=True)
    if not lands:
        with pytest.raises(FenceLost):
            writer.commit(claim, request, view, chain=["tool"])
        assert scheduler.view(run).progress == before == fold(workflow, store.read_events(run))
        return
    absorbed, chained = writer.commit(claim, request, view, chain=["tool"])
    assert absorbed
    assert chained is not None
    assert chained.item.node_id == "b"
    log = store.read_events(run)
    assert scheduler.view(run).progress == fold(workflow, log)
    assert Scheduler(store).view(run).progress == scheduler.view(run).progress
