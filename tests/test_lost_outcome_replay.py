"""Replay accepts every way a lost outcome ends, and proves who resolved it
(docs/audit.md §3, docs/workflows.md §3.3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from charter.adapters.clock import ManualClock
from charter.adapters.keys import new_key
from charter.audit.replay import replay_run
from charter.core.approvals import ApprovalRefused
from charter.core.events import OutcomeResolved
from charter.core.policy import PolicySet
from charter.core.records import DEFAULT_TENANT, Tenant
from charter.worker import Worker, drive
from tests.test_worker import _payments, _resolve, _ticking


@pytest.mark.parametrize("resolution", ["succeeded", "failed", "retry"])
def test_every_resolution_of_a_lost_outcome_replays_without_divergence(resolution: str) -> None:
    clock = ManualClock()
    store, registry, _ = _payments(clock)
    worker = Worker(store, executors=registry, lease_secs=5.0)
    assert drive(worker, "r", sleep=_ticking(clock)).status == "waiting"
    _resolve(store, "r", "pay", resolution, output={"posted": "by hand"}, reason="gone")
    drive(worker, "r", sleep=_ticking(clock))
    report = replay_run(store, "r")
    assert report.ok, [str(d) for d in report.divergences]


def test_a_resolution_forged_into_the_log_is_caught_by_replay(tmp_path: Path) -> None:
    """Attack: append an `outcome_resolved` directly (bypassing the store's check) for a
    tenant that names the resolver's keys. Defence: replay verifies the signature."""
    clock = ManualClock()
    store, registry, _ = _payments(clock)
    worker = Worker(store, executors=registry, lease_secs=5.0)
    assert drive(worker, "r", sleep=_ticking(clock)).status == "waiting"
    key = new_key(tmp_path / "ops.key")
    policy = PolicySet(approver_keys={"ops": [key]})
    now = clock.now()
    store.put_tenant(
        Tenant(tenant_id=DEFAULT_TENANT, name="Default", policy=policy, created_at=now,
               updated_at=now)
    )  # fmt: skip
    refused = store.resolve_outcome("r", "pay", user_id="ops", resolution="succeeded")
    assert isinstance(refused, ApprovalRefused)
    assert refused.reason.startswith("the tenant requires a signature")
    forged = OutcomeResolved(
        node_id="pay",
        attempt=1,
        resolution="succeeded",
        user_id="ops",
        output={"posted": "forged"},
        policy_digest=policy.digest,
    )
    store.append_events("r", [forged])
    report = replay_run(store, "r")
    assert not report.ok
    assert any("requires a signature" in d.problem for d in report.divergences)
