"""What only the Postgres store can show: worker processes sharing one database, crashes,
connections cut by the server, the database clock, schemas and migrations. (Everything
else is in the shared contract suite, which runs against Postgres too.)

Every test uses a schema of its own, dropped afterwards; all are skipped when
``CHARTER_TEST_POSTGRES_URL`` is unset (see `tests.stores`).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from charter.adapters.clock import ManualClock
from charter.adapters.postgres import PostgresStore
from charter.adapters.postgres_connection import InDoubt, Retry
from charter.adapters.postgres_schema import LATEST, MARKER
from charter.core.errors import (
    IncompatibleStore,
    InvalidInput,
    NotFound,
    StoreUnavailable,
)
from charter.core.events import (
    Event,
    NodeCompleted,
    NodeFailed,
    NodeStarted,
    ToolCalled,
    WorkflowCompleted,
    WorkflowStarted,
)
from charter.core.policy import PolicySet
from charter.core.ports import CommitRequest
from charter.core.queue import LEASE_EXPIRED
from charter.core.records import Execution, NewWorkItem, Tenant, WorkItemStatus
from charter.core.workflow import parse_workflow
from charter.worker import DEFAULT_BATCH, start_run
from tests.stores import drop_schema, postgres_url, unique_schema_name

ROOT = Path(__file__).resolve().parent.parent


# ── fixtures and helpers ───────────────────────────────────────────────────────────────


@pytest.fixture
def url() -> str:
    return postgres_url()


@pytest.fixture
def schema(url: str) -> Iterator[str]:
    """A schema name of this test's own, dropped afterwards (with whatever was put in it,
    by this process or the workers it started)."""
    name = unique_schema_name()
    yield name
    drop_schema(url, name)


def _admin(url: str) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(url, autocommit=True)


def _with_parameter(url: str, name: str, value: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{name}={value}"


def _seed(store: PostgresStore, items: int, run_id: str = "run") -> None:
    now = store.clock.now()
    store.create_execution(
        Execution(
            execution_id=run_id,
            workflow_id="wf",
            workflow_version="1",
            created_at=now,
            updated_at=now,
        ),
        events=[WorkflowStarted(workflow_id="wf", workflow_version="1", initial_input={})],
        items=[
            NewWorkItem(item_id=f"i{n}", execution_id=run_id, node_id=f"n{n}", queue="q")
            for n in range(items)
        ],
    )


def _fan_out(size: int) -> dict[str, Any]:
    """``n0`` → ``n1`` … ``n{size-1}``: one node, then all the others at once."""
    return {
        "workflow_id": "fan-out",
        "version": "1",
        "start_node": "n0",
        "tools": {"work.step": {"idempotent": True}},
        "nodes": {
            f"n{i}": {"kind": {"type": "tool", "tool_ref": "work.step"}} for i in range(size)
        },
        "edges": [{"from": "n0", "to": f"n{i}"} for i in range(1, size)],
    }


def _start_fan_out(url: str, schema: str, size: int, run_id: str) -> PostgresStore:
    store = PostgresStore(url, schema=schema)
    now = store.clock.now()
    store.put_tenant(
        Tenant(
            tenant_id="default",
            name="default",
            policy=PolicySet(blocked_tools=("shell.*",)),
            created_at=now,
            updated_at=now,
        )
    )
    start_run(store, parse_workflow(_fan_out(size)), execution_id=run_id)
    return store


def _spawn(
    url: str, schema: str, run_id: str, effects: Path, errors: Path, *options: str
) -> subprocess.Popen[str]:
    command = ["tests.pg_worker", "serve", url, schema, run_id, str(effects), *options]
    with errors.open("w", encoding="utf-8") as stderr:  # a file: warnings never fill a pipe
        return subprocess.Popen(
            [sys.executable, "-m", *command],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )


def _release(workers: Sequence[subprocess.Popen[str]]) -> None:
    """Wait until every worker is up, then let them all go at once."""
    for process in workers:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
    for process in workers:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()


def _effects(path: Path) -> list[tuple[str, str]]:
    """The executors' record of the outside world: (node, pid) per call, in call order."""
    return [
        (node, pid)
        for node, pid in (line.split() for line in path.read_text(encoding="utf-8").splitlines())
    ]


def _completions(events: Sequence[Event]) -> Counter[str]:
    return Counter(e.kind.node_id for e in events if isinstance(e.kind, NodeCompleted))


def _check_log(events: Sequence[Event], size: int) -> None:
    """The run completed, every node exactly once, and the log has no gaps."""
    assert isinstance(events[-1].kind, WorkflowCompleted)
    assert _completions(events) == Counter(f"n{i}" for i in range(size))
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    completed = {e.kind.node_id: e.sequence for e in events if isinstance(e.kind, NodeCompleted)}
    first_start: dict[str, int] = {}
    for e in events:
        if isinstance(e.kind, NodeStarted):
            first_start.setdefault(e.kind.node_id, e.sequence)
    assert all(completed["n0"] < first_start[f"n{i}"] for i in range(1, size))


# ── many worker processes on one database ──────────────────────────────────────────────


@pytest.mark.slow
def test_four_worker_processes_run_each_node_of_a_1000_node_fan_out_exactly_once(
    url: str, schema: str, tmp_path: Path
) -> None:
    store = _start_fan_out(url, schema, 1000, "fan")
    effects = tmp_path / "effects.txt"
    workers = [_spawn(url, schema, "fan", effects, tmp_path / f"w{n}.err") for n in range(4)]
    _release(workers)
    for n, process in enumerate(workers):
        out, _ = process.communicate(timeout=600)
        assert process.returncode == 0, (tmp_path / f"w{n}.err").read_text(encoding="utf-8")
        assert out.strip() == "done"

    calls = _effects(effects)
    assert Counter(node for node, _ in calls) == Counter(f"n{i}" for i in range(1000))
    assert len({pid for _, pid in calls}) == 4  # every process did part of the work
    events = store.read_events("fan")
    _check_log(events, 1000)
    started = Counter(e.kind.node_id for e in events if isinstance(e.kind, NodeStarted))
    assert started == _completions(events)  # no claim was lost or repeated
    store.close()


@pytest.mark.slow
def test_a_worker_killed_mid_run_loses_nothing_and_every_node_completes_once(
    url: str, schema: str, tmp_path: Path
) -> None:
    store = _start_fan_out(url, schema, 1000, "fan")
    effects = tmp_path / "effects.txt"
    lease = "5"  # the dead worker's claim is reclaimed once this has run out
    doomed = _spawn(
        url, schema, "fan", effects, tmp_path / "w0.err", "--lease", lease, "--die-at", "40"
    )
    others = [
        _spawn(url, schema, "fan", effects, tmp_path / f"w{n}.err", "--lease", lease)
        for n in range(1, 4)
    ]
    _release([doomed, *others])
    out, _ = doomed.communicate(timeout=600)
    assert doomed.returncode == -signal.SIGKILL, (tmp_path / "w0.err").read_text(encoding="utf-8")
    (dying,) = [line.split()[1] for line in out.splitlines() if line.startswith("dying")]
    for n, process in enumerate(others, start=1):
        out, _ = process.communicate(timeout=600)
        assert process.returncode == 0, (tmp_path / f"w{n}.err").read_text(encoding="utf-8")
        assert out.strip() == "done"

    events = store.read_events("fan")
    _check_log(events, 1000)  # every node completed exactly once, the dead worker's too
    calls = _effects(effects)
    runs = Counter(node for node, _ in calls)
    assert set(runs) == {f"n{i}" for i in range(1000)}
    # Only the nodes in the dead worker's hands ran twice: the one it died committing and
    # the others of its group (Worker(batch): executed, their ends not yet committed). Each
    # had run once, by the dead worker; after its leases ran out each was reclaimed and run
    # again by a survivor.
    twice = {node for node, count in runs.items() if count > 1}
    assert dying in twice
    assert len(twice) <= DEFAULT_BATCH
    doomed_pid = str(doomed.pid)
    for node in twice:
        first, second = [pid for name, pid in calls if name == node]
        assert first == doomed_pid
        assert second != doomed_pid
    reclaimed = Counter(
        (e.kind.node_id, e.kind.error)
        for e in events
        if isinstance(e.kind, NodeFailed) and e.kind.retryable
    )
    # Every item the dead worker held was reclaimed once, by lease: those it had run (run
    # again above) and those its group had claimed but not yet run (run once, by another).
    assert set(reclaimed.values()) == {1}
    assert {error for _, error in reclaimed} == {LEASE_EXPIRED}
    assert twice <= {node for node, _ in reclaimed}
    assert len(reclaimed) <= DEFAULT_BATCH
    store.close()


@pytest.mark.slow
def test_a_worker_whose_connections_are_cut_reconnects_and_neither_loses_nor_duplicates(
    url: str, schema: str, tmp_path: Path
) -> None:
    store = _start_fan_out(url, schema, 400, "fan")
    effects = tmp_path / "effects.txt"
    target_name = f"{schema}_target"
    target = _spawn(
        _with_parameter(url, "application_name", target_name),
        schema,
        "fan",
        effects,
        tmp_path / "target.err",
    )
    other = _spawn(url, schema, "fan", effects, tmp_path / "other.err")
    _release([target, other])
    terminated = 0
    lines_at_first_cut: int | None = None
    with _admin(url) as admin:
        while target.poll() is None:
            row = admin.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (target_name,),
            ).fetchone()
            assert row is not None
            if row[0] and lines_at_first_cut is None:
                lines_at_first_cut = len(_effects(effects)) if effects.exists() else 0
            terminated += row[0]
            time.sleep(0.15)
    for name, process in (("target", target), ("other", other)):
        out, _ = process.communicate(timeout=600)
        assert process.returncode == 0, (tmp_path / f"{name}.err").read_text(encoding="utf-8")
        assert out.strip() == "done"

    assert terminated >= 3, "the test never cut the worker's connections"
    calls = _effects(effects)
    # Duplicates nothing: every node's effect happened exactly once.
    assert Counter(node for node, _ in calls) == Counter(f"n{i}" for i in range(400))
    # The worker kept working after its connections were cut: it reconnected.
    assert lines_at_first_cut is not None
    assert str(target.pid) in {pid for _, pid in calls[lines_at_first_cut:]}
    # Loses nothing: the log is whole, every node completed once.
    _check_log(store.read_events("fan"), 400)
    store.close()


# ── dropped connections, in one process ────────────────────────────────────────────────


def test_calls_after_the_server_cut_every_connection_succeed_transparently(
    url: str, schema: str
) -> None:
    name = f"{schema}_cut"
    store = PostgresStore(_with_parameter(url, "application_name", name), schema=schema)
    _seed(store, 3)
    with _admin(url) as admin:
        cut = admin.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s",
            (name,),
        ).fetchone()
    assert cut is not None
    assert cut[0] >= 1
    claim = store.claim("w", ["q"], lease_secs=30)  # a write, on a pool of cut connections
    assert claim is not None
    assert store.get_item(claim.item.item_id) == claim.item
    events = store.read_events("run")
    assert [type(e.kind).__name__ for e in events] == ["WorkflowStarted", "NodeStarted"]
    assert [e.sequence for e in events] == [1, 2]
    store.close()


def _kill_own_backend_once_at_commit(url: str, schema: str) -> None:
    """Make the next transaction that appends an event lose its connection *during* its
    COMMIT, once: a deferred constraint trigger runs at commit time and terminates its own
    backend (a sequence, which rollbacks do not undo, makes it fire only once)."""
    with _admin(url) as admin:
        admin.execute(
            sql.SQL(
                """
                SET search_path TO {schema};
                CREATE SEQUENCE kill_once;
                CREATE FUNCTION kill_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF nextval('kill_once') = 1 THEN
                        PERFORM pg_terminate_backend(pg_backend_pid());
                        PERFORM pg_sleep(5);
                    END IF;
                    RETURN NULL;
                END $$;
                CREATE CONSTRAINT TRIGGER kill_at_commit AFTER INSERT ON events
                    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION kill_at_commit();
                """
            ).format(schema=sql.Identifier(schema))
        )


def test_a_connection_lost_during_commit_asks_the_server_and_writes_once(
    url: str, schema: str
) -> None:
    store = PostgresStore(url, schema=schema, clock=ManualClock())
    _seed(store, 0)
    _kill_own_backend_once_at_commit(url, schema)
    appended = store.append_events("run", [ToolCalled(node_id="a", tool="t")])
    # The first COMMIT died with its connection; the server said it had rolled back, so the
    # call was tried again, and the event is there exactly once.
    assert [e.sequence for e in appended] == [2]
    events = store.read_events("run")
    assert [type(e.kind).__name__ for e in events] == ["WorkflowStarted", "ToolCalled"]
    assert [e.sequence for e in events] == [1, 2]
    store.close()


def test_a_session_left_unusable_mid_transaction_is_discarded_and_the_write_retried(
    url: str, schema: str
) -> None:
    # A session cut while a pipeline is busy fails with an error that has no SQLSTATE
    # ("cannot exit pipeline mode while busy") and cannot roll back cleanly. COMMIT was never
    # sent, so nothing was written: the attempt is retried on another session, and the
    # broken one is closed rather than lent again (it was once lent on and failed reads).
    store = PostgresStore(url, schema=schema)
    sessions: list[psycopg.Connection[Any]] = []

    def work(cursor: psycopg.Cursor[Any], now: Any) -> str:
        sessions.append(cursor.connection)
        if len(sessions) == 1:
            cursor.connection.pipeline().__enter__()  # left open: the session stays in it
            cursor.execute("SELECT 1")
            raise psycopg.OperationalError("cannot exit pipeline mode while busy")
        return "written"

    assert store._db.write(work) == "written"
    assert len(sessions) == 2
    assert sessions[0].closed
    assert sessions[1] is not sessions[0]
    assert store.get_execution("nothing") is None  # the pool lends only usable sessions
    store.close()


def test_an_in_doubt_commit_is_resolved_by_the_transactions_status(url: str, schema: str) -> None:
    store = PostgresStore(url, schema=schema)
    with _admin(url) as admin:
        committed = admin.execute("BEGIN; SELECT pg_current_xact_id()::text")
        assert committed.nextset()
        row = committed.fetchone()
        assert row is not None
        admin.execute("COMMIT")
        aborted = admin.execute("BEGIN; SELECT pg_current_xact_id()::text")
        assert aborted.nextset()
        lost = aborted.fetchone()
        assert lost is not None
        admin.execute("ROLLBACK")
    assert store._db.resolve(InDoubt(row[0], "the result", "lost")) == "the result"
    with pytest.raises(Retry):
        store._db.resolve(InDoubt(lost[0], "the result", "lost"))
    store.close()


# ── time ───────────────────────────────────────────────────────────────────────────────


def test_without_an_injected_clock_time_is_the_database_clock(url: str, schema: str) -> None:
    store = PostgresStore(url, schema=schema)
    _seed(store, 1)

    def database_now() -> Any:
        with _admin(url) as admin:
            row = admin.execute("SELECT clock_timestamp()").fetchone()
            assert row is not None
            return row[0]

    before = database_now()
    claim = store.claim("w", ["q"], lease_secs=60)
    clock_reading = store.clock.now()
    after = database_now()
    assert claim is not None
    assert before + timedelta(seconds=60) <= claim.lease_expires_at <= after + timedelta(seconds=60)
    assert before <= clock_reading <= after
    (started,) = [e for e in store.read_events("run") if isinstance(e.kind, NodeStarted)]
    assert before <= started.created_at <= after
    assert store.reclaim_expired().retried == ()  # the lease has not run out on the server
    store.close()


def test_a_lease_runs_out_by_the_database_clock(url: str, schema: str) -> None:
    store = PostgresStore(url, schema=schema)
    _seed(store, 1)
    claim = store.claim("w", ["q"], lease_secs=0.05)
    assert claim is not None
    for _ in range(200):  # waits for the server's clock to pass the lease; asserts no timing
        reclaimed = store.reclaim_expired()
        if reclaimed.retried:
            break
        time.sleep(0.05)
    assert [item.item_id for item in reclaimed.retried] == ["i0"]
    store.close()


# ── concurrency inside one process ─────────────────────────────────────────────────────


def test_concurrent_appends_claims_and_commits_keep_one_executions_sequences_gapless(
    url: str, schema: str
) -> None:
    store = PostgresStore(url, schema=schema, clock=ManualClock(), max_connections=10)
    _seed(store, 60)
    barrier = threading.Barrier(6)
    failures: list[BaseException] = []

    def appender(name: str) -> None:
        barrier.wait()
        try:
            for index in range(40):
                store.append_events("run", [ToolCalled(node_id=name, tool=str(index))])
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            failures.append(error)

    def drainer(name: str) -> None:
        barrier.wait()
        try:
            while (claim := store.claim(name, ["q"], lease_secs=30)) is not None:
                done = NodeCompleted(
                    node_id=claim.item.node_id, output=None, state_patch={}, duration_ms=0
                )
                store.commit(
                    CommitRequest(
                        item_id=claim.item.item_id,
                        fence=claim.fence,
                        outcome=WorkItemStatus.COMPLETED,
                        events=(done,),
                    )
                )
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            failures.append(error)

    threads = [threading.Thread(target=appender, args=(f"a{n}",)) for n in range(3)]
    threads += [threading.Thread(target=drainer, args=(f"d{n}",)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert failures == []
    events = store.read_events("run")
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    tools = Counter(e.kind.node_id for e in events if isinstance(e.kind, ToolCalled))
    assert tools == {"a0": 40, "a1": 40, "a2": 40}
    assert _completions(events) == Counter(f"n{n}" for n in range(60))
    execution = store.get_execution("run")
    assert execution is not None
    assert execution.last_sequence == len(events)
    store.close()


# ── schemas and migrations ─────────────────────────────────────────────────────────────


def test_a_new_schema_is_marked_as_a_charter_store_at_the_latest_version(
    url: str, schema: str
) -> None:
    PostgresStore(url, schema=schema).close()
    with _admin(url) as admin:
        row = admin.execute(
            sql.SQL("SELECT application, version FROM {}").format(sql.Identifier(schema, MARKER))
        ).fetchone()
    assert row == ("charter", LATEST)


def test_another_applications_schema_is_refused_and_left_alone(url: str, schema: str) -> None:
    with _admin(url) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        admin.execute(
            sql.SQL("CREATE TABLE {} (id integer PRIMARY KEY)").format(
                sql.Identifier(schema, "orders")
            )
        )
    with pytest.raises(IncompatibleStore, match="another application"):
        PostgresStore(url, schema=schema)
    with _admin(url) as admin:
        tables = admin.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)
        ).fetchall()
    assert tables == [("orders",)]


def test_a_store_from_a_newer_charter_is_refused(url: str, schema: str) -> None:
    PostgresStore(url, schema=schema).close()
    with _admin(url) as admin:
        admin.execute(
            sql.SQL("UPDATE {} SET version = %s").format(sql.Identifier(schema, MARKER)),
            (LATEST + 1,),
        )
    with pytest.raises(IncompatibleStore, match=f"schema version {LATEST + 1}"):
        PostgresStore(url, schema=schema)


def test_opening_without_create_refuses_a_schema_with_no_store(url: str, schema: str) -> None:
    with pytest.raises(NotFound, match="no Charter store"):
        PostgresStore(url, schema=schema, create=False)
    with _admin(url) as admin:
        found = admin.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        assert found.fetchone() is None  # nothing was created


def test_stores_opening_a_new_schema_at_once_migrate_it_once_and_share_it(
    url: str, schema: str
) -> None:
    barrier = threading.Barrier(4)
    opened: list[PostgresStore] = []
    failures: list[BaseException] = []

    def open_store() -> None:
        barrier.wait()
        try:
            opened.append(PostgresStore(url, schema=schema))
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            failures.append(error)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    assert len(opened) == 4
    _seed(opened[0], 1)
    assert opened[3].get_item("i0") is not None
    for store in opened:
        store.close()


def test_stores_in_different_schemas_do_not_see_each_other(url: str, schema: str) -> None:
    other = unique_schema_name()
    try:
        first = PostgresStore(url, schema=schema)
        second = PostgresStore(_with_parameter(url, "schema", other))
        assert second.schema == other
        _seed(first, 2)
        assert second.get_execution("run") is None
        assert second.claim("w", ["q"], lease_secs=30) is None
        _seed(second, 1)
        assert [e.sequence for e in second.read_events("run")] == [1]
        assert len(first.read_events("run")) == 1
        first.close()
        second.close()
    finally:
        drop_schema(url, other)


def test_everything_survives_closing_and_reopening(url: str, schema: str) -> None:
    store = PostgresStore(url, schema=schema)
    _seed(store, 3)
    claim = store.claim("w", ["q"], lease_secs=30)
    assert claim is not None
    events, item = store.read_events("run"), store.get_item(claim.item.item_id)
    store.close()
    store.close()  # closing twice is harmless
    reopened = PostgresStore(url, schema=schema, create=False)
    assert reopened.read_events("run") == events
    assert reopened.get_item(claim.item.item_id) == item
    reopened.close()


# ── bad input and bad servers: clear errors, never psycopg's ───────────────────────────


@pytest.mark.parametrize("bad", ["", "Upper", "1digit", "has-dash", "x" * 64, "a;drop"])
def test_a_bad_schema_name_is_refused_naming_the_field(bad: str) -> None:
    with pytest.raises(InvalidInput, match=r"^schema: "):  # before any connection is made
        PostgresStore("postgresql://nobody@127.0.0.1:1/none", schema=bad)


def test_an_unreachable_server_is_store_unavailable_in_one_line() -> None:
    with pytest.raises(StoreUnavailable, match="cannot connect") as refused:
        PostgresStore("postgresql://nobody:secret@127.0.0.1:1/none", connect_timeout_secs=2)
    message = str(refused.value)
    assert "\n" not in message
    assert "secret" not in message  # the password is never repeated


def test_values_postgres_cannot_hold_are_invalid_input_and_write_nothing(
    url: str, schema: str
) -> None:
    store = PostgresStore(url, schema=schema, clock=ManualClock())
    _seed(store, 0)
    before = store.read_events("run")
    with pytest.raises(InvalidInput):
        store.enqueue([NewWorkItem(item_id="nul\x00", execution_id="run", node_id="n", queue="q")])
    with pytest.raises(InvalidInput):
        store.enqueue(
            [
                NewWorkItem(
                    item_id="i", execution_id="run", node_id="n", queue="q", max_attempts=2**70
                )
            ]
        )
    with pytest.raises(InvalidInput):
        store.enqueue([NewWorkItem(item_id="\ud800", execution_id="run", node_id="n", queue="q")])
    assert store.read_events("run") == before
    assert store.get_item("i") is None
    store.close()


def test_a_failure_message_with_nul_keeps_its_exact_text_in_the_log(url: str, schema: str) -> None:
    store = PostgresStore(url, schema=schema, clock=ManualClock())
    _seed(store, 1)
    claim = store.claim("w", ["q"], lease_secs=30)
    assert claim is not None
    store.fail("i0", claim.fence, error="bad\x00byte", retryable=False)
    (failed,) = [e.kind for e in store.read_events("run") if isinstance(e.kind, NodeFailed)]
    assert failed.error == "bad\x00byte"
    item = store.get_item("i0")
    assert item is not None
    assert item.last_error == "bad\ufffdbyte"  # the diagnostic column cannot hold NUL
    store.close()


def test_the_store_names_where_it_is_without_the_password(url: str, schema: str) -> None:
    store = PostgresStore(url, schema=schema)
    assert schema in store.path
    assert repr(store) == f"PostgresStore({store.path})"
    store.close()
    with pytest.raises(StoreUnavailable) as refused:
        PostgresStore("postgresql://u:hunter2@127.0.0.1:1/db?schema=s1", connect_timeout_secs=2)
    assert "hunter2" not in str(refused.value)
    assert "(schema s1)" in str(refused.value)


# ── the command line ───────────────────────────────────────────────────────────────────


def _charter(*args: str, env_python: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *env_python, "-m", "charter", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_every_command_accepts_a_postgres_url(url: str, schema: str) -> None:
    db = _with_parameter(url, "schema", schema)
    refund = str(ROOT / "examples" / "refund.yaml")
    tenant = str(ROOT / "examples" / "tenant-acme.yaml")
    held = _charter("run", refund, "--run-id", "r", "--tenant-policy", tenant, "--db", db)
    assert held.returncode == 3, held.stderr
    assert f"--db {db}" in held.stdout  # the printed answer command names the same database
    listed = _charter("approvals", "--db", db)
    assert listed.returncode == 0, listed.stderr
    assert "issue_refund" in listed.stdout
    answer = _charter("approve", "r", "issue_refund", "--user", "finance-lead", "--db", db)
    assert answer.returncode == 0, answer.stderr
    status = _charter("status", "r", "--db", db)
    assert status.returncode == 0, status.stderr
    assert "completed" in status.stdout
    events = _charter("events", "r", "--db", db)
    assert events.returncode == 0, events.stderr
    assert "workflow_completed" in events.stdout
    created = _charter("tenant", "globex", "--policy", tenant, "--db", db)
    assert created.returncode == 0, created.stderr
    held = _charter("run", refund, "--run-id", "r2", "--tenant", "globex", "--db", db)
    assert held.returncode == 3, held.stderr
    cancelled = _charter("cancel", "r2", "--reason", "not today", "--db", db)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "workflow_cancelled" in _charter("events", "r2", "--db", db).stdout


def test_the_command_line_never_prints_a_password_from_the_url(url: str, schema: str) -> None:
    # The local server trusts its clients, so any password is accepted — and must not show.
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username or "postgres"
    with_password = urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:hunter2@{host}"))
    db = _with_parameter(with_password, "schema", schema)
    refund = str(ROOT / "examples" / "refund.yaml")
    tenant = str(ROOT / "examples" / "tenant-acme.yaml")
    held = _charter("run", refund, "--run-id", "r", "--tenant-policy", tenant, "--db", db)
    assert held.returncode == 3, held.stderr
    assert "hunter2" not in held.stdout + held.stderr
    assert f"--db postgresql://{user}@{host}" in held.stdout
    again = _charter("run", refund, "--run-id", "r", "--db", db)
    assert again.returncode == 2
    assert "hunter2" not in again.stdout + again.stderr


def test_the_worker_command_serves_a_postgres_database_and_stops_on_sigterm(
    url: str, schema: str
) -> None:
    db = _with_parameter(url, "schema", schema)
    refund = str(ROOT / "examples" / "refund.yaml")
    tenant = str(ROOT / "examples" / "tenant-acme.yaml")
    held = _charter("run", refund, "--run-id", "r", "--tenant-policy", tenant, "--db", db)
    assert held.returncode == 3, held.stderr
    answer = _charter(
        "approve", "r", "issue_refund", "--user", "finance-lead", "--no-continue", "--db", db
    )
    assert answer.returncode == 0, answer.stderr
    worker = subprocess.Popen(
        [sys.executable, "-m", "charter", "worker", "--db", db, "--concurrency", "2"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    store = PostgresStore(url, schema=schema, create=False)
    try:
        for _ in range(600):  # the worker's tick finds the answered run and finishes it
            if isinstance(store.read_events("r")[-1].kind, WorkflowCompleted):
                break
            time.sleep(0.1)
        assert isinstance(store.read_events("r")[-1].kind, WorkflowCompleted)
    finally:
        store.close()
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert "2 thread(s), batch 32," in out
    assert "finishing the items in hand" in err


def test_a_command_on_a_schema_without_a_store_says_so_in_one_line(url: str, schema: str) -> None:
    result = _charter("status", "--db", _with_parameter(url, "schema", schema))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "no Charter store" in result.stderr


def test_an_unreachable_server_is_one_line_and_exit_code_2() -> None:
    result = _charter("status", "--db", "postgresql://nobody@127.0.0.1:1/none")
    assert result.returncode == 2
    assert result.stderr.startswith("charter: error: ")
    assert result.stderr.count("\n") == 1
    assert "cannot connect" in result.stderr


def test_a_postgres_url_without_psycopg_installed_says_what_to_install() -> None:
    hide = (
        "-c",
        "import sys; sys.modules['psycopg'] = None; from charter.cli import main; "
        "sys.exit(main(sys.argv[1:]))",
    )
    result = subprocess.run(
        [sys.executable, *hide, "status", "--db", "postgresql://nobody@127.0.0.1:1/none"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "pip install 'charter[postgres]'" in result.stderr
