"""``charter approvals`` lists lost outcomes waiting for a person beside open requests (text
and ``--json``), and ``charter status`` of a run waiting on one exits 0 (docs/cli.md: a
query exits 0 whatever the run's state)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from charter.bootstrap import open_store
from charter.cli import main
from charter.core.records import Tenant
from tests.service.helpers import lost_run


def test_approvals_lists_a_lost_outcome_until_it_is_resolved(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "charter.db"
    store = open_store(db)
    try:
        now = store.clock.now()
        store.put_tenant(Tenant(tenant_id="acme", created_at=now, updated_at=now))
        lost_run(store, tmp_path, "l1")
    finally:
        store.close()
    assert main(["approvals", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "no approvals pending" not in out
    assert "lost outcomes waiting for a person:" in out
    (row,) = [line for line in out.splitlines() if line.startswith("l1 ")]
    assert row.split()[:4] == ["l1", "post", "human", "1"]
    assert "charter resolve RUN NODE --user USER" in out
    assert main(["approvals", "--json", "--db", str(db)]) == 0
    (item,) = json.loads(capsys.readouterr().out)
    assert item["type"] == "lost_outcome"
    assert (item["execution_id"], item["node_id"], item["resolver"]) == ("l1", "post", "human")
    assert item["idempotency_key"]
    assert main(["status", "l1", "--db", str(db)]) == 0
    assert "status:    waiting" in capsys.readouterr().out
    assert (
        main(
            ["resolve", "l1", "post", "--user", "ops", "--failed", "--no-continue", "--db", str(db)]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["approvals", "--db", str(db)]) == 0
    assert capsys.readouterr().out.strip() == "no approvals pending"
