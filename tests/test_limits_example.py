"""examples/refund-rate-limit.yaml under examples/tenant-acme-rates.yaml, through the CLI:
refunds of 60 run on their own until the per-hour limit is reached, the next is refused
naming the limit, its window and when it frees up; a refund over 100 waits for the finance
lead first; every run replays clean; `charter check` lists the limits a tool counts toward.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from charter.adapters.sqlite import SqliteStore
from charter.audit.replay import replay_run
from charter.cli import main
from charter.core.events import LimitCharged, NodeGated, RateLimitExceeded

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "refund-rate-limit.yaml"
TENANT = ROOT / "examples" / "tenant-acme-rates.yaml"


@contextmanager
def opened(db: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(db)
    try:
        yield store
    finally:
        store.close()


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run(
    capsys: pytest.CaptureFixture[str], db: Path, run_id: str, example: Path = EXAMPLE
) -> tuple[int, str]:
    code, out, err = cli(
        capsys, "run", str(example), "--db", str(db), "--run-id", run_id,
        "--tenant-policy", str(TENANT), "--quiet",
    )  # fmt: skip
    assert err == ""
    return code, out.strip().splitlines()[-1]


def test_the_third_refund_within_the_hour_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "charter.db"
    assert run(capsys, db, "r1") == (0, "run r1: completed")
    assert run(capsys, db, "r2") == (0, "run r2: completed")
    code, last = run(capsys, db, "r3")
    assert code == 4
    assert "rate limit 'refunds' reached: 2 used of max_calls 2 in the sliding 1h window" in last
    assert "frees up at" in last
    with opened(db) as store:
        events = [e.kind for e in store.read_events("r3")]
        (exceeded,) = [k for k in events if isinstance(k, RateLimitExceeded)]
        first = next(
            k for k in (e.kind for e in store.read_events("r1")) if isinstance(k, LimitCharged)
            and k.node_id == "refund"
        )  # fmt: skip
        assert exceeded.frees_at is not None
        assert exceeded.frees_at.timestamp() == first.at.timestamp() + 3600
        for run_id in ("r1", "r2", "r3"):
            assert replay_run(store, run_id).ok
        # every node of a run counts toward the daily token limit; refunds toward both
        refunds = [
            k for k in (e.kind for e in store.read_events("r1")) if isinstance(k, LimitCharged)
        ]
        assert [[entry["name"] for entry in k.limits] for k in refunds] == [
            ["daily-tokens"], ["refunds", "daily-tokens"], ["daily-tokens"],
        ]  # fmt: skip
    code, out, _ = cli(capsys, "audit", "replay", "r3", "--db", str(db))
    assert code == 0
    assert "all agree" in out


def test_a_refund_over_100_waits_for_the_finance_lead_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    data["nodes"]["refund"]["kind"]["args"]["amount"] = 250
    large = tmp_path / "large.yaml"
    large.write_text(yaml.safe_dump(data), encoding="utf-8")
    db = tmp_path / "charter.db"
    code, out, _ = cli(
        capsys, "run", str(large), "--db", str(db), "--run-id", "big",
        "--tenant-policy", str(TENANT), "--quiet",
    )  # fmt: skip
    assert code == 3
    assert "run big: waiting for approval of refund (approver finance-lead)" in out
    with opened(db) as store:
        gated = [e.kind for e in store.read_events("big") if isinstance(e.kind, NodeGated)]
        assert gated[-1].outcome == "hold"
        assert "call.args.amount > 100" in (gated[-1].reason or "")
    code, _, _ = cli(capsys, "approve", "big", "refund", "--user", "finance-lead", "--db", str(db))
    assert code == 0
    with opened(db) as store:
        charges = store.limit_charges("acme", "refunds", since=gated[-1].decided_at)  # type: ignore[arg-type]
        assert len(charges) == 1  # the approved refund ran and counts toward the hour
        assert replay_run(store, "big").ok


def test_check_lists_the_limits_a_tool_counts_toward(capsys: pytest.CaptureFixture[str]) -> None:
    args = ("check", str(TENANT), "--scope", "tenant", "--tool", "payments.refund")
    code, out, _ = cli(capsys, *args)
    assert code == 0
    assert "  limit:  'refunds': max_calls 2 in a sliding 1h window (counts this call)" in out
    code, out, _ = cli(capsys, *args, "--json")
    limits = json.loads(out)["results"][0]["rate_limits"]
    assert [limit["name"] for limit in limits] == ["refunds", "daily-tokens"]
    code, out, _ = cli(capsys, "check", str(TENANT), "--scope", "tenant", "--tool", "crm.lookup")
    assert "'refunds'" not in out
    assert "'daily-tokens'" in out


def test_a_tenant_file_of_limits_alone_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    only = tmp_path / "limits.yaml"
    only.write_text("rate_limits:\n  - {name: r, tool: 'payments.*', window: 1h, max_calls: 3}\n")
    code, out, err = cli(capsys, "check", str(only), "--scope", "tenant", "--tool", "payments.x")
    assert (code, err) == (0, "")
    assert "  limit:  'r': max_calls 3 in a sliding 1h window (counts this call)" in out
    code, _, err = cli(capsys, "check", str(only), "--tool", "payments.x")  # a workflow's set
    assert code == 2
    assert "rate_limits" in err
