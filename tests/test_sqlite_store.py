"""What only a file-backed store can show: several processes, crashes, foreign and corrupt
files, durability across reopening. (Everything else is in the shared contract suite.)"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from charter.adapters import sqlite
from charter.adapters.clock import ManualClock
from charter.adapters.sqlite import SqliteStore
from charter.adapters.sqlite_schema import APPLICATION_ID, LATEST
from charter.core.errors import IncompatibleStore
from charter.core.events import (
    NodeCompleted,
    NodeFailed,
    NodeStarted,
    RetryScheduled,
    ToolCalled,
    WorkflowStarted,
)
from charter.core.ports import CommitRequest
from charter.core.queue import LEASE_EXPIRED
from charter.core.records import Execution, NewWorkItem, WorkItemStatus

ROOT = Path(__file__).resolve().parent.parent


def _worker(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.sqlite_worker", *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _seed(path: Path, items: int, *, clock: ManualClock | None = None) -> SqliteStore:
    store = SqliteStore(path, clock=clock, synchronous="NORMAL")
    now = store.clock.now()
    store.create_execution(
        Execution(
            execution_id="run",
            workflow_id="wf",
            workflow_version="1",
            created_at=now,
            updated_at=now,
        ),
        events=[WorkflowStarted(workflow_id="wf", workflow_version="1", initial_input={})],
        items=[
            NewWorkItem(item_id=f"i{n}", execution_id="run", node_id=f"n{n}", queue="q")
            for n in range(items)
        ],
    )
    return store


def test_two_processes_draining_one_file_never_claim_an_item_twice(tmp_path: Path) -> None:
    db = tmp_path / "charter.db"
    store = _seed(db, 300)
    workers = [_worker("drain", str(db), name) for name in ("w1", "w2")]
    for worker in workers:  # both are up before either starts: they really compete
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "ready"
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.close()
    outputs = []
    for worker in workers:  # a few KiB each: reading one after the other cannot block
        with worker:
            assert worker.stdout is not None
            assert worker.stderr is not None
            outputs.append((worker.stdout.read(), worker.stderr.read()))
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err
    claims = [
        line.split()[1] for out, _ in outputs for line in out.splitlines() if "claimed" in line
    ]
    assert Counter(claims) == Counter(f"i{n}" for n in range(300))  # each exactly once
    assert all(len(out.splitlines()) > 0 for out, _ in outputs), "one process did no work"
    completions = [
        e.kind.node_id for e in store.read_events("run") if isinstance(e.kind, NodeCompleted)
    ]
    assert sorted(completions) == sorted(f"n{n}" for n in range(300))
    items = [store.get_item(f"i{n}") for n in range(300)]
    assert all(item is not None and item.status is WorkItemStatus.COMPLETED for item in items)
    store.close()


def test_concurrent_appends_from_two_processes_keep_sequences_gapless(tmp_path: Path) -> None:
    db = tmp_path / "charter.db"
    store = _seed(db, 0)
    workers = [_worker("append", str(db), "run", "200", name) for name in ("a", "b")]
    for worker in workers:
        _, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
    events = store.read_events("run")
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    appended = Counter(e.kind.node_id for e in events if isinstance(e.kind, ToolCalled))
    assert appended == {"a": 200, "b": 200}
    execution = store.get_execution("run")
    assert execution is not None
    assert execution.last_sequence == len(events)
    store.close()


def test_a_worker_killed_between_claim_and_commit_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "charter.db"
    _seed(db, 1).close()
    with _worker("claim-and-hang", str(db), "doomed") as hanging:
        assert hanging.stdout is not None
        line = hanging.stdout.readline().split()
        assert line[:2] == ["claimed", "i0"]
        os.kill(hanging.pid, signal.SIGKILL)
        hanging.wait(timeout=30)
    assert hanging.returncode == -signal.SIGKILL

    # Later (the lease was 5 s of the dead worker's clock), a survivor reclaims and finishes.
    later = ManualClock(datetime.now(UTC) + timedelta(minutes=5))
    store = SqliteStore(db, clock=later)
    before = store.get_item("i0")
    assert before is not None
    assert before.status is WorkItemStatus.CLAIMED
    assert before.worker_id == "doomed"
    reclaimed = store.reclaim_expired()
    assert [item.item_id for item in reclaimed.retried] == ["i0"]
    assert store.reclaim_expired().retried == ()  # idempotent
    later.advance(3600)
    claim = store.claim("survivor", ["q"], lease_secs=30)
    assert claim is not None
    assert claim.item.attempt == 1
    assert claim.fence == before.fence + 1
    done = NodeCompleted(node_id="n0", output={}, state_patch={}, duration_ms=0)
    store.commit(
        CommitRequest(
            item_id="i0", fence=claim.fence, outcome=WorkItemStatus.COMPLETED, events=(done,)
        )
    )
    kinds = [e.kind for e in store.read_events("run")]
    names = [type(k).__name__ for k in kinds]
    assert names == [
        "WorkflowStarted",
        "NodeStarted",  # the dead worker's claim, durable
        "NodeFailed",
        "RetryScheduled",
        "NodeStarted",
        "NodeCompleted",
    ]
    assert kinds[1] == NodeStarted(node_id="n0", worker_id="doomed", attempt=0)
    assert kinds[2] == NodeFailed(node_id="n0", error=LEASE_EXPIRED, attempt=0, retryable=True)
    assert isinstance(kinds[3], RetryScheduled)
    terminal = [
        k
        for k in kinds
        if isinstance(k, NodeCompleted) or (isinstance(k, NodeFailed) and not k.retryable)
    ]
    assert len(terminal) == 1
    store.close()


def test_everything_survives_closing_and_reopening(tmp_path: Path) -> None:
    db = tmp_path / "charter.db"
    store = _seed(db, 3)
    claim = store.claim("w", ["q"], lease_secs=30)
    assert claim is not None
    events, item = store.read_events("run"), store.get_item(claim.item.item_id)
    store.close()
    reopened = SqliteStore(db)
    assert reopened.read_events("run") == events
    assert reopened.get_item(claim.item.item_id) == item
    reopened.close()


def test_a_file_that_is_not_sqlite_is_refused_clearly(tmp_path: Path) -> None:
    db = tmp_path / "notes.db"
    db.write_bytes(b"these are my notes, not a database" * 100)
    for _ in range(2):  # and again: a clear error each time, no state left behind
        with pytest.raises(IncompatibleStore, match="not a SQLite database"):
            SqliteStore(db)
    assert db.read_bytes().startswith(b"these are my notes")


def test_another_applications_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    db = tmp_path / "other.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL)")
        conn.execute("INSERT INTO orders VALUES (1, 9.5)")
    with pytest.raises(IncompatibleStore, match="another application"):
        SqliteStore(db)
    with sqlite3.connect(db) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert tables == {"orders"}


def test_a_store_from_a_newer_charter_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "charter.db"
    SqliteStore(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {LATEST + 1}")
    with pytest.raises(IncompatibleStore, match=f"schema version {LATEST + 1}"):
        SqliteStore(db)


def test_a_new_store_is_marked_as_charters(tmp_path: Path) -> None:
    db = tmp_path / "charter.db"
    SqliteStore(db).close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_truncated_database_is_reported_not_crashed_on(tmp_path: Path) -> None:
    db = tmp_path / "charter.db"
    _seed(db, 50).close()
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    data = db.read_bytes()
    db.write_bytes(data[:4096] + b"\x00" * 100)  # keep the header, lose the rest

    def open_and_read() -> None:
        store = SqliteStore(db)
        try:
            store.read_events("run")
        finally:
            store.close()

    with pytest.raises(IncompatibleStore):
        open_and_read()


def test_claims_and_reclaims_probe_the_live_index_instead_of_scanning(tmp_path: Path) -> None:
    # The store's throughput rests on these plans: a claim is one probe of the live-items
    # partial index per queue, a reclaim reads live items only, never the whole table.
    store = _seed(tmp_path / "charter.db", 3)
    conn = store._conn
    statements = {
        "claim, two queues": (sqlite._claim_sql(2, False), ("q", "t", "r", "t")),
        "claim, one execution": (sqlite._claim_sql(1, True), ("q", "t", "run")),
        "reclaim": (sqlite._EXPIRED_SELECT, ("t", 10)),
    }
    for name, (sql, args) in statements.items():
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", args)]
        assert any("USING INDEX work_items_live" in step for step in plan), (name, plan)
        scans = [step for step in plan if step.startswith("SCAN work_items")]
        assert all("work_items_live" in step for step in scans), (name, plan)
    store.close()
