"""Windowed limits end to end, on every store: worker-run workflow nodes and governed calls
are refused once a tenant's limit is reached (naming it, its window and when it frees up),
charged in the transaction that records their end, and replayed exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from charter.adapters.clock import ManualClock
from charter.adapters.executors import default_registry
from charter.audit.replay import replay_run, what_if
from charter.core.budget import Usage
from charter.core.events import LimitCharged, NodeGated, RateLimitExceeded
from charter.core.policy import PolicyScope, PolicySet
from charter.core.ports import NodeCall, NodeResult, Store
from charter.core.records import Tenant
from charter.core.workflow import parse_workflow
from charter.integrations.govern import Governor, Refused
from charter.worker import Worker, drive, start_run
from tests.stores import STORE_KINDS, make_store

TENANT = "acme"
START = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


@pytest.fixture(params=STORE_KINDS, ids=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    clock = ManualClock(START)
    opened = make_store(request.param, tmp_path, clock)
    yield opened
    opened.close()


def _clock(store: Store) -> ManualClock:
    clock = store.clock
    assert isinstance(clock, ManualClock)
    return clock


def _tenant(store: Store, *limits: dict[str, Any]) -> PolicySet:
    policy = PolicySet.from_dict({"rate_limits": list(limits)}, tenant=True)
    now = store.clock.now()
    store.put_tenant(
        Tenant(tenant_id=TENANT, name=TENANT, created_at=now, updated_at=now, policy=policy)
    )
    return policy


def _workflow() -> Any:
    return parse_workflow(
        {
            "workflow_id": "refunds",
            "version": "1",
            "start_node": "refund",
            "nodes": {"refund": {"kind": {"type": "tool", "tool_ref": "payments.refund"}}},
            "edges": [],
            "tools": {"payments.refund": {"idempotent": True}},
        }
    )


def _worker(store: Store) -> Worker:
    registry = default_registry()

    def refund(call: NodeCall) -> NodeResult:
        return NodeResult(output={"ok": True}, usage=Usage(input_tokens=3, cost_usd=0.1))

    registry.register_tool("payments.*", refund)
    return Worker(store, executors=registry, lease_secs=30.0)


def _run(store: Store, worker: Worker, name: str) -> tuple[str, list[Any]]:
    run = start_run(store, _workflow(), execution_id=name, tenant_id=TENANT).execution_id
    status = drive(worker, run, sleep=lambda _: None).status
    return status, [event.kind for event in store.read_events(run)]


def test_worker_nodes_are_refused_past_a_per_hour_limit_and_charged_exactly(store: Store) -> None:
    _tenant(store, {"name": "refunds", "tool": "payments.*", "window": "1h", "max_calls": 2})
    worker = _worker(store)
    clock = _clock(store)
    for n in range(2):
        status, kinds = _run(store, worker, f"run-{n}")
        assert status == "completed"
        (charge,) = [k for k in kinds if isinstance(k, LimitCharged)]
        assert charge.calls == 1
        assert charge.tokens == 3
        assert charge.usd_nanos == 100_000_000
        clock.advance(60)
    status, kinds = _run(store, worker, "run-2")
    assert status == "failed"
    (exceeded,) = [k for k in kinds if isinstance(k, RateLimitExceeded)]
    assert exceeded.limit == "refunds"
    assert exceeded.used == 2
    assert exceeded.frees_at == START + timedelta(hours=1)  # when the first charge leaves
    gated = next(k for k in kinds if isinstance(k, NodeGated))
    assert gated.reason == (
        "rate limit 'refunds' reached: 2 used of max_calls 2 in the sliding 1h window; "
        "frees up at 2026-12-07T13:00:00+00:00"
    )
    assert not any(isinstance(k, LimitCharged) for k in kinds)  # a refusal charges nothing
    charges = store.limit_charges(TENANT, "refunds", since=START - timedelta(days=1))
    assert [c.at for c in charges] == [START, START + timedelta(seconds=60)]
    for run in ("run-0", "run-1", "run-2"):
        report = replay_run(store, run)
        assert report.divergences == (), report.divergences
    # once the first charge has left the window, the next run goes through
    clock.advance(3600 - 120)
    assert _run(store, worker, "run-3")[0] == "completed"


def test_a_fixed_usd_window_refuses_until_its_end(store: Store) -> None:
    _tenant(store, {"name": "spend", "window": "1d", "mode": "fixed", "max_usd": 0.2})
    worker = _worker(store)
    assert _run(store, worker, "a")[0] == "completed"
    assert _run(store, worker, "b")[0] == "completed"
    status, kinds = _run(store, worker, "c")
    assert status == "failed"
    (exceeded,) = [k for k in kinds if isinstance(k, RateLimitExceeded)]
    assert (exceeded.dimension, exceeded.maximum, exceeded.used) == (
        "max_usd",
        200_000_000,
        200_000_000,
    )
    assert exceeded.frees_at == datetime(2026, 12, 8, tzinfo=UTC)
    assert replay_run(store, "c").divergences == ()


def test_what_if_a_tenant_without_limits_would_have_run_it(store: Store) -> None:
    _tenant(store, {"name": "refunds", "window": 60, "max_calls": 0})
    status, _ = _run(store, _worker(store), "r")
    assert status == "failed"
    report = what_if(store, ["r"], PolicySet(), scope=PolicyScope.TENANT)
    assert [(c.before, c.after) for c in report.changes] == [("block", "allow")]


def test_replay_flags_a_charge_no_decision_owes(store: Store) -> None:
    _tenant(store, {"name": "refunds", "window": 60, "max_calls": 5})
    assert _run(store, _worker(store), "r")[0] == "completed"
    forged = LimitCharged(
        node_id="refund", attempt=0, at=START, limits=[{"name": "refunds", "window": 60}],
        calls=1, tokens=999,
    )  # fmt: skip
    store.append_events("r", [forged])
    problems = [d.problem for d in replay_run(store, "r").divergences]
    assert problems == ["limit charge: the recorded event differs from the recomputed one"]


def test_governed_calls_past_the_limit_are_refused_and_charged_with_their_usage(
    store: Store,
) -> None:
    _tenant(store, {"name": "refunds", "tool": "refund", "window": "1h", "max_calls": 2})
    done: list[int] = []
    with Governor(store=store, tenant=TENANT, run_id="session") as governor:

        @governor.tool
        def refund(amount: int) -> dict[str, Any]:
            done.append(amount)
            return {"usage": {"input_tokens": 10, "output_tokens": 2, "cost_usd": 0.25}}

        refund(5)
        refund(7)
        with pytest.raises(Refused) as refused:
            refund(9)
    assert done == [5, 7]
    assert "rate limit 'refunds' reached: 2 used of max_calls 2" in refused.value.reason
    assert "frees up at 2026-12-07T13:00:00+00:00" in refused.value.reason
    assert (refused.value.rule, refused.value.scope) == ("rate_limit:refunds", "tenant")
    charges = store.limit_charges(TENANT, "refunds", since=START - timedelta(hours=1))
    assert [(c.calls, c.tokens, c.usd_nanos) for c in charges] == [(1, 12, 250_000_000)] * 2
    assert replay_run(store, "session").divergences == ()


def test_a_governed_session_policy_may_not_carry_limits() -> None:
    policy = PolicySet(rate_limits=[{"name": "x", "window": 60, "max_calls": 1}])
    with pytest.raises(Exception, match="rate_limits"):
        Governor(policy=policy, store=":memory:")


def test_workers_in_threads_charge_every_node_that_ran_and_nothing_twice(store: Store) -> None:
    import threading

    _tenant(store, {"name": "refunds", "tool": "payments.*", "window": "1d", "max_calls": 1000})
    runs = [f"run-{n}" for n in range(8)]
    for run in runs:
        start_run(store, _workflow(), execution_id=run, tenant_id=TENANT)
    errors: list[BaseException] = []

    def work(mine: list[str]) -> None:
        worker = _worker(store)
        try:
            for run in mine:
                assert drive(worker, run, sleep=lambda _: None).status == "completed"
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)
        finally:
            worker.close()

    threads = [threading.Thread(target=work, args=(runs[n::2],)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    charges = store.limit_charges(TENANT, "refunds", since=START - timedelta(days=1))
    assert len(charges) == len(runs)
    assert sum(c.usd_nanos for c in charges) == 100_000_000 * len(runs)  # exactly 0.8 USD
    for run in runs:
        assert replay_run(store, run).ok


def test_a_failed_attempt_is_charged_and_its_retry_is_charged_again(store: Store) -> None:
    _tenant(store, {"name": "refunds", "tool": "payments.*", "window": "1h", "max_calls": 10})
    registry = default_registry()
    calls: list[int] = []

    def flaky(call: NodeCall) -> NodeResult:
        calls.append(call.attempt)
        if call.attempt == 0:
            raise RuntimeError("gateway timeout")
        return NodeResult(output={"ok": True}, usage=Usage(output_tokens=4))

    registry.register_tool("payments.*", flaky)
    worker = Worker(store, executors=registry, lease_secs=30.0)
    run = start_run(store, _workflow(), execution_id="r", tenant_id=TENANT).execution_id

    def wait(secs: float) -> None:
        _clock(store).advance(secs)

    assert drive(worker, run, sleep=wait).status == "completed"
    assert calls == [0, 1]
    charged = [e.kind for e in store.read_events(run) if isinstance(e.kind, LimitCharged)]
    assert [(k.attempt, k.calls, k.tokens) for k in charged] == [(0, 1, 0), (1, 1, 4)]
    assert len(store.limit_charges(TENANT, "refunds", since=START - timedelta(hours=1))) == 2
    assert replay_run(store, run).ok


def test_the_services_decision_endpoint_reads_the_limits_and_charges_nothing(
    tmp_path: Path,
) -> None:
    from starlette.testclient import TestClient

    from charter.service import create_app
    from tests.service import helpers

    with helpers.backend("memory", tmp_path) as (backend, tokens):
        _tenant(backend, {"name": "refunds", "tool": "payments.*", "window": "1h", "max_calls": 1})
        now = backend.clock.now()
        run = start_run(backend, _workflow(), execution_id="r", tenant_id=TENANT).execution_id
        limits = [{"name": "refunds", "window": 3600}]
        backend.append_events(
            run, [LimitCharged(node_id="refund", attempt=0, at=now, limits=limits)]
        )
        auth = {"Authorization": f"Bearer {helpers.token(tokens, backend, 'svc')}"}
        body = {"tenant_id": TENANT, "node_kind": "tool", "tool": "payments.refund"}
        with TestClient(create_app(backend, tokens)) as client:
            refused = client.post("/v1/decisions", headers=auth, json=body).json()
            other = client.post(
                "/v1/decisions", headers=auth, json={**body, "tool": "crm.a"}
            ).json()
        assert refused["decision"] == "refuse"
        assert "rate limit 'refunds' reached: 1 used of max_calls 1" in refused["reason"]
        assert other["decision"] == "run"
        assert len(backend.limit_charges(TENANT, "refunds", since=now)) == 1  # nothing added


def test_replay_flags_a_completed_attempt_that_was_never_charged(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    import charter.worker.worker as worker_module

    _tenant(store, {"name": "refunds", "window": 60, "max_calls": 5})
    monkeypatch.setattr(worker_module, "_charged", lambda *_: ())  # a worker that forgets
    assert _run(store, _worker(store), "r")[0] == "completed"
    problems = [d.problem for d in replay_run(store, "r").divergences]
    assert problems == [
        "the attempt ran under windowed limits and was never charged "
        "(no limit_charged after its usage)"
    ]
