"""Audit end to end (docs/audit.md): the examples' logs verify and replay clean; each kind
of tampering — done with SQL on the database, as someone with write access would — is
caught and located; a decision forged with a re-hashed chain is caught by replay; what-if
gives the expected flips; the ``charter audit`` commands and their exit codes.

Runs on SQLite and, when ``CHARTER_TEST_POSTGRES_URL`` is set (CI sets it), on Postgres."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charter.adapters.chain import event_hash
from charter.adapters.files import load_policy_file, load_workflow_file
from charter.adapters.sqlite import SqliteStore
from charter.audit import (
    Anchor,
    execution_ids,
    read_anchor,
    replay_run,
    verify_log,
    what_if,
)
from charter.cli import main
from charter.core.errors import InvalidInput
from charter.core.events import ApprovalDecision, Event, NodeGated
from charter.core.policy import PolicyScope, PolicySet
from charter.core.ports import Store
from charter.core.records import Tenant
from charter.worker import Worker, drive, start_run
from tests.stores import drop_schema, postgres_url, unique_schema_name

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
RUNS = {
    "refund": "refund.yaml",
    "cleanup": "cleanup.yaml",
    "research": "research.yaml",
    "flaky": "flaky-agent.yaml",
}


class Tamper:
    """Direct SQL on a store's ``events`` table (what an attacker with the database's
    credentials can do), for SQLite or Postgres."""

    def __init__(self, store: Store, kind: str, url: str = "", schema: str = "") -> None:
        self.store, self.kind, self.url, self.schema = store, kind, url, schema

    def sql(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self.kind == "sqlite":
            assert isinstance(self.store, SqliteStore)
            conn = sqlite3.connect(self.store.path, isolation_level=None)
            try:
                return conn.execute(query, params).fetchall()
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as pg:
            pg.execute(f'SET search_path TO "{self.schema}"')
            cursor = pg.execute(query.replace("?", "%s"), params)
            return cursor.fetchall() if cursor.description else []

    def kind_json(self, run: str, sequence: int) -> str:
        rows = self.sql(
            "SELECT kind_json FROM events WHERE execution_id = ? AND sequence = ?", (run, sequence)
        )
        text: str = rows[0][0]
        return text

    def set_kind(self, run: str, sequence: int, text: str) -> None:
        self.sql(
            "UPDATE events SET kind_json = ? WHERE execution_id = ? AND sequence = ?",
            (text, run, sequence),
        )

    def delete(self, run: str, first: int, last: int | None = None) -> None:
        self.sql(
            "DELETE FROM events WHERE execution_id = ? AND sequence >= ? AND sequence <= ?",
            (run, first, first if last is None else last),
        )

    def swap(self, run: str, a: int, b: int) -> None:
        """Exchange the stored contents of events ``a`` and ``b`` (a reordering)."""
        self.sql(
            "UPDATE events SET sequence = -1 WHERE execution_id = ? AND sequence = ?", (run, a)
        )
        self.sql(
            "UPDATE events SET sequence = ? WHERE execution_id = ? AND sequence = ?", (a, run, b)
        )
        self.sql(
            "UPDATE events SET sequence = ? WHERE execution_id = ? AND sequence = -1", (b, run)
        )

    def insert_before(self, run: str, at: int) -> None:
        """Renumber events ``at``… one up and put a copy of event ``at - 1`` at ``at``, with
        a prev_hash and hash that are right for where it stands."""
        self.sql(
            "UPDATE events SET sequence = -(sequence + 1) WHERE execution_id = ? AND sequence >= ?",
            (run, at),
        )
        self.sql(
            "UPDATE events SET sequence = -sequence WHERE execution_id = ? AND sequence < 0", (run,)
        )
        self.sql(
            "INSERT INTO events (execution_id, sequence, event_id, kind_json, created_at, "
            "prev_hash, hash) SELECT execution_id, ?, 'forged', kind_json, created_at, hash, '' "
            "FROM events WHERE execution_id = ? AND sequence = ?",
            (at, run, at - 1),
        )
        self.rehash(run, at, only=True)

    def rehash(self, run: str, first: int, *, only: bool = False) -> None:
        """Recompute the chain's hashes from event ``first`` on (or of that event only), as
        a forger who knows the format would after an edit."""
        links = self.store.read_chain(run)
        prev = links[first - 2].hash if first > 1 else "0" * 64
        for link in links[first - 1 :]:
            this = event_hash(
                execution_id=link.execution_id,
                sequence=link.sequence,
                event_id=link.event_id,
                created_at=link.created_at,
                kind_text=link.kind_text,
                prev_hash=prev,
            )
            self.sql(
                "UPDATE events SET prev_hash = ?, hash = ? WHERE execution_id = ? AND sequence = ?",
                (prev, this, run, link.sequence),
            )
            prev = this
            if only:
                return


def _put_acme(store: Store) -> None:
    policy = load_policy_file(EXAMPLES / "tenant-acme.yaml", PolicyScope.TENANT)
    now = store.clock.now()
    store.put_tenant(
        Tenant(
            tenant_id="acme",
            name="Acme",
            policy=policy.layers[0].policy,
            created_at=now,
            updated_at=now,
        )
    )


def run_examples(store: Store) -> None:
    """Every example, the refund approved by its approver and finished."""
    _put_acme(store)
    for run, name in RUNS.items():
        workflow, _ = load_workflow_file(EXAMPLES / name)
        start_run(store, workflow, execution_id=run)
        drive(Worker(store), run, sleep=lambda _: None)
    store.decide_approval(
        "refund", "issue_refund", user_id="finance-lead", decision=ApprovalDecision.APPROVED
    )
    assert drive(Worker(store), "refund", sleep=lambda _: None).status == "completed"


@pytest.fixture(params=["sqlite", "postgres"])
def audited(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Tamper]:
    """A store holding the examples' runs, with its tampering tool."""
    if request.param == "sqlite":
        sqlite_store = SqliteStore(tmp_path / "charter.db")
        run_examples(sqlite_store)
        yield Tamper(sqlite_store, "sqlite")
        sqlite_store.close()
        return
    url = postgres_url()
    from charter.adapters.postgres import PostgresStore

    schema = unique_schema_name()
    pg_store = PostgresStore(url, schema=schema)
    try:
        run_examples(pg_store)
        yield Tamper(pg_store, "postgres", url, schema)
    finally:
        pg_store.close()
        drop_schema(url, schema)


def located(store: Store, **options: Any) -> list[tuple[str, int]]:
    return [(p.execution_id, p.sequence) for p in verify_log(store, **options).problems]


# ── a clean log ────────────────────────────────────────────────────────────────────────


def test_the_examples_verify_and_every_decision_replays(audited: Tamper) -> None:
    store = audited.store
    report = verify_log(store, strict=True)
    assert report.ok, report.problems
    assert report.executions == len(RUNS)
    assert report.events == sum(len(store.read_events(run)) for run in RUNS)
    for run in RUNS:
        replayed = replay_run(store, run)
        assert replayed.divergences == ()
        gated = [e for e in store.read_events(run) if type(e.kind).__name__ == "NodeGated"]
        assert replayed.gates == len(gated) > 0
    assert replay_run(store, "refund").settlements == 5


def test_replay_uses_the_policy_recorded_not_the_tenants_current_one(audited: Tamper) -> None:
    store = audited.store
    tenant = store.get_tenant("acme")
    assert tenant is not None
    store.put_tenant(
        Tenant(
            tenant_id="acme",
            name="Acme",
            created_at=tenant.created_at,
            updated_at=tenant.updated_at,
            policy=PolicySet(blocked_tools=("*",)),
        )
    )
    assert all(replay_run(store, run).ok for run in RUNS)


# ── tampering ──────────────────────────────────────────────────────────────────────────


def test_a_modified_event_is_located(audited: Tamper) -> None:
    text = audited.kind_json("refund", 7)
    audited.set_kind("refund", 7, text.replace("}", ',"x":1}', 1))
    assert located(audited.store) == [("refund", 7)]


def test_a_deleted_event_is_located(audited: Tamper) -> None:
    audited.delete("cleanup", 5)
    problems = verify_log(audited.store).problems
    assert [(p.execution_id, p.sequence) for p in problems] == [("cleanup", 6)] * 2
    assert "event 5 is missing" in problems[0].problem


def test_an_inserted_event_is_located(audited: Tamper) -> None:
    audited.insert_before("research", 6)
    problems = located(audited.store)
    assert problems[0] == ("research", 7)  # the forged event itself links and hashes right


def test_reordered_events_are_located(audited: Tamper) -> None:
    audited.swap("flaky", 4, 5)
    assert located(audited.store)[0] == ("flaky", 4)


def test_a_truncated_tail_is_caught_against_an_anchor(audited: Tamper) -> None:
    store = audited.store
    anchors = dict(verify_log(store).heads)
    last = anchors["refund"].sequence
    audited.delete("refund", last - 2, last)
    assert verify_log(store).ok  # a chain alone cannot see a tail cut off…
    problems = verify_log(store, anchors=anchors).problems
    assert [(p.execution_id, p.sequence) for p in problems] == [("refund", last)]
    assert "truncated" in problems[0].problem


def test_a_rewritten_tail_with_fresh_hashes_is_caught_against_an_anchor(audited: Tamper) -> None:
    store = audited.store
    anchors = dict(verify_log(store).heads)
    text = audited.kind_json("research", 9)
    audited.set_kind("research", 9, text.replace("}", ',"x":1}', 1))
    audited.rehash("research", 9)
    assert verify_log(store).ok
    assert located(store, anchors=anchors) == [("research", anchors["research"].sequence)]


def test_a_deleted_run_is_caught_against_an_anchor(audited: Tamper) -> None:
    store = audited.store
    anchors = dict(verify_log(store).heads)
    audited.delete("cleanup", 1, 10_000)
    problems = verify_log(store, anchors=anchors).problems
    assert ("cleanup", anchors["cleanup"].sequence) in [
        (p.execution_id, p.sequence) for p in problems
    ]


def test_a_forged_allow_with_a_rehashed_chain_is_caught_by_replay(audited: Tamper) -> None:
    """cleanup's drop_table is blocked by the tenant; the forger rewrites the decision to
    "run" and re-hashes the chain so `verify` (without an anchor) passes: replay does not."""
    store = audited.store
    gated = next(
        e
        for e in store.read_events("cleanup")
        if isinstance(e.kind, NodeGated) and e.kind.node_id == "drop_table"
    )
    text = audited.kind_json("cleanup", gated.sequence)
    forged = json.loads(text)
    assert forged["outcome"] == "fail"
    forged.update(outcome="run", policy_decision="allow", reason=None)
    audited.set_kind("cleanup", gated.sequence, json.dumps(forged))
    audited.rehash("cleanup", gated.sequence)
    assert verify_log(store).ok
    report = replay_run(store, "cleanup")
    assert [(d.sequence, d.node_id) for d in report.divergences] == [(gated.sequence, "drop_table")]
    assert report.divergences[0].recorded["outcome"] == "run"
    assert report.divergences[0].recomputed["outcome"] == "fail"


# ── single-byte changes ────────────────────────────────────────────────────────────────


@pytest.fixture(scope="module")
def sqlite_log(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Tamper, dict[str, Anchor]]]:
    """The examples' log on SQLite, with an anchor of it."""
    store = SqliteStore(tmp_path_factory.mktemp("bytes") / "charter.db")
    run_examples(store)
    yield Tamper(store, "sqlite"), dict(verify_log(store).heads)
    store.close()


#: Every stored text column (a changed ``sequence`` is what the reordering, insertion and
#: deletion tests above make).
_COLUMNS = ["kind_json", "event_id", "created_at", "prev_hash", "hash", "execution_id"]


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_single_byte_change_to_a_stored_event_is_detected(
    sqlite_log: tuple[Tamper, dict[str, Anchor]], data: st.DataObject
) -> None:
    """Any byte of any stored column of any event, changed to any other byte (even one that
    leaves invalid UTF-8), is found — at that event, or at the next one when the change
    moved the event out of its place (its execution id or sequence changed). A change that
    moves the *last* event out of its run looks exactly like a truncated tail: the anchor
    catches it, as it catches truncation."""
    tamper, anchors = sqlite_log
    run = data.draw(st.sampled_from(sorted(RUNS)))
    last = anchors[run].sequence
    sequence = data.draw(st.integers(1, last))
    column = data.draw(st.sampled_from(_COLUMNS))
    (original,) = tamper.sql(
        f"SELECT CAST({column} AS BLOB) FROM events WHERE execution_id = ? AND sequence = ?",
        (run, sequence),
    )[0]
    position = data.draw(st.integers(0, len(original) - 1))
    new_byte = data.draw(st.integers(0, 255).filter(lambda b: b != original[position]))
    changed = original[:position] + bytes([new_byte]) + original[position + 1 :]
    tamper.sql(
        f"UPDATE events SET {column} = CAST(? AS TEXT) WHERE execution_id = ? AND sequence = ?",
        (changed, run, sequence),
    )
    moved_to = changed if column == "execution_id" else run.encode()
    try:
        report = verify_log(tamper.store, runs=[run], anchors=anchors)
        assert not report.ok
        where = {p.sequence for p in report.problems if p.execution_id == run}
        assert where & {sequence, sequence + 1} or (sequence == last and last in where)
    finally:
        tamper.sql(
            f"UPDATE events SET {column} = CAST(? AS TEXT) "
            "WHERE CAST(execution_id AS BLOB) = ? AND sequence = ?",
            (original, moved_to, sequence),
        )
    assert verify_log(tamper.store, runs=[run], anchors=anchors).ok


def test_replay_reports_an_event_that_no_longer_decodes_where_it_is(audited: Tamper) -> None:
    audited.set_kind("refund", 12, '{"type": "node_completed"')
    report = replay_run(audited.store, "refund")
    assert [(d.sequence, d.problem.split(":")[0]) for d in report.divergences] == [
        (12, "cannot recompute")
    ]
    assert located(audited.store) == [("refund", 12)]


# ── what-if ────────────────────────────────────────────────────────────────────────────


def test_what_if_lists_the_decisions_a_proposed_tenant_policy_changes(audited: Tamper) -> None:
    store = audited.store
    permissive = PolicySet(model_allowlist=("claude-*",))  # acme without its blocks
    report = what_if(store, execution_ids(store), permissive)
    assert [(c.execution_id, c.node_id, c.before, c.after) for c in report.changes] == [
        ("cleanup", "drop_table", "block", "allow")
    ]
    assert report.runs == len(RUNS)
    assert report.unreplayable == ()
    assert report.decisions == sum(replay_run(store, run).gates for run in RUNS)


def test_what_if_on_the_workflow_layer(audited: Tamper) -> None:
    store = audited.store
    block_payments = PolicySet(blocked_tools=("payments.*",))
    report = what_if(store, ["refund"], block_payments, scope=PolicyScope.WORKFLOW)
    flips = [(c.node_id, c.before, c.after) for c in report.changes]
    assert flips == [("issue_refund", "hold", "block"), ("issue_refund", "allow", "block")]
    unchanged = what_if(store, ["refund"], block_payments, scope=PolicyScope.TENANT)
    # the workflow's approval rule is more specific than a tenant block (docs/semantics.md)
    assert unchanged.changes == ()


def test_what_if_with_the_recorded_policy_changes_nothing(audited: Tamper) -> None:
    store = audited.store
    tenant = store.get_tenant("acme")
    assert tenant is not None
    assert tenant.policy is not None
    assert what_if(store, execution_ids(store), tenant.policy).changes == ()


# ── anchors ────────────────────────────────────────────────────────────────────────────


def test_an_anchor_file_that_is_not_one_names_the_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    for text, field in [
        ("not json", "not JSON"),
        ('{"format": "x"}', "format"),
        (
            '{"format": "charter-anchor/1", "runs": {"r": {"sequence": -1, "hash": ""}}}',
            "runs.r.sequence",
        ),
        (
            '{"format": "charter-anchor/1", "runs": {"r": {"sequence": 1, "hash": "ab"}}}',
            "runs.r.hash",
        ),
    ]:
        path.write_text(text)
        with pytest.raises(InvalidInput) as caught:
            read_anchor(path)
        assert str(path) in str(caught.value)
        assert field in str(caught.value)
    path.write_text(
        json.dumps({"format": "charter-anchor/1", "runs": {"r": {"sequence": 3, "hash": "a" * 64}}})
    )
    assert read_anchor(path) == {"r": Anchor(3, "a" * 64)}


# ── the commands ───────────────────────────────────────────────────────────────────────


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "charter.db"
    store = SqliteStore(path)
    run_examples(store)
    store.close()
    return path


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_verify_anchor_and_truncation(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(capsys, "audit", "verify", "--db", str(db))
    assert code == 0
    assert "4 run(s)" in out
    assert "the chain holds" in out
    anchor = tmp_path / "anchor.json"
    code, out, _ = cli(capsys, "audit", "anchor", "--db", str(db), "-o", str(anchor))
    assert code == 0
    assert anchor.exists()
    heads = read_anchor(anchor)
    Tamper(SqliteStore(db), "sqlite").delete("research", heads["research"].sequence)
    code, out, _ = cli(capsys, "audit", "verify", "--db", str(db))
    assert code == 0  # without the anchor the cut is invisible
    code, out, _ = cli(
        capsys, "audit", "verify", "--db", str(db), "--anchor", str(anchor), "--json"
    )
    assert code == 6
    report = json.loads(out)
    assert report["ok"] is False
    assert [(p["run"], p["sequence"]) for p in report["problems"]] == [
        ("research", heads["research"].sequence)
    ]
    code, _, err = cli(capsys, "audit", "anchor", "--db", str(db))
    assert code == 0  # the truncated log still chains: anchoring it is allowed
    Tamper(SqliteStore(db), "sqlite").set_kind("refund", 3, "{}")
    code, out, err = cli(capsys, "audit", "anchor", "--db", str(db))
    assert code == 6
    assert out == ""
    assert "refund #3" in err


def test_cli_replay_and_what_if(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(capsys, "audit", "replay", "--all", "--db", str(db))
    assert code == 0
    assert out.count("all agree") == len(RUNS)
    code, out, _ = cli(capsys, "audit", "replay", "cleanup", "--db", str(db), "--json")
    assert code == 0
    assert json.loads(out)[0]["ok"] is True
    proposed = tmp_path / "proposed.yaml"
    proposed.write_text('blocked_tools: ["payments.*", "email.*"]\n')
    code, out, _ = cli(
        capsys,
        "audit",
        "what-if",
        "refund",
        "--policy",
        str(proposed),
        "--scope",
        "workflow",
        "--db",
        str(db),
    )
    assert code == 0
    assert "hold → block" in out
    assert "allow → block" in out
    assert "would change" in out
    code, out, _ = cli(
        capsys, "audit", "what-if", "--all", "--policy", str(proposed), "--db", str(db), "--json"
    )
    assert code == 0
    assert json.loads(out)["runs"] == len(RUNS)


def test_cli_replay_flags_a_forged_settlement(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """research's critique trips the token budget; the forger lowers its recorded usage
    (and re-hashes): the recorded trip is then one no recomputed settlement produces."""
    store = SqliteStore(db)
    tamper = Tamper(store, "sqlite")
    usage = [e for e in store.read_events("research") if type(e.kind).__name__ == "UsageRecorded"][
        -1
    ]
    forged = json.loads(tamper.kind_json("research", usage.sequence))
    forged["output_tokens"] = 5
    tamper.set_kind("research", usage.sequence, json.dumps(forged))
    tamper.rehash("research", usage.sequence)
    store.close()
    code, out, _ = cli(capsys, "audit", "replay", "research", "--db", str(db))
    assert code == 6
    assert (
        f"DIVERGES research #{usage.sequence + 1} critique: a recorded token_budget_exceeded" in out
    )


def test_cli_audit_bad_input_is_one_line_and_exit_2(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(capsys, "audit", "replay", "--db", str(db))
    assert code == 2
    assert "RUN" in err
    code, _, err = cli(capsys, "audit", "replay", "refund", "--all", "--db", str(db))
    assert code == 2
    code, _, err = cli(capsys, "audit", "replay", "nope", "--db", str(db))
    assert code == 2
    assert "nope" in err
    code, _, err = cli(capsys, "audit", "verify", "--db", str(tmp_path / "missing.db"))
    assert code == 2
    assert "missing.db" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("blocked_tools: [1]\n")
    code, _, err = cli(capsys, "audit", "what-if", "--all", "--policy", str(bad), "--db", str(db))
    assert code == 2
    assert "bad.yaml" in err
    assert "blocked_tools" in err
    assert err.count("\n") == 1


def _events(store: Store, run: str) -> Sequence[Event]:
    return store.read_events(run)


# ── migration of a log stored before the chain ─────────────────────────────────────────


def _downgrade_to_v1(tamper: Tamper) -> None:
    """Turn a store back into what schema version 1 held: no chain columns, no kept policy
    sets, kinds in a non-canonical JSON form."""
    for run, sequence, text in tamper.sql("SELECT execution_id, sequence, kind_json FROM events"):
        loose = json.dumps(json.loads(text), indent=1, sort_keys=False)
        tamper.set_kind(run, sequence, loose)
    tamper.sql("ALTER TABLE events DROP COLUMN prev_hash")
    tamper.sql("ALTER TABLE events DROP COLUMN hash")
    tamper.sql("DROP TABLE policy_sets")
    tamper.sql("DROP TABLE compactions")  # (schema version 4)
    tamper.sql("DROP TABLE limit_charges")  # (schema version 5)
    if tamper.kind == "sqlite":
        tamper.sql("PRAGMA user_version = 1")
    else:
        tamper.sql("ALTER TABLE executions DROP COLUMN head_hash")
        tamper.sql("UPDATE charter_store SET version = 1")


def test_a_version_1_log_is_chained_by_the_migration(audited: Tamper, tmp_path: Path) -> None:
    before = {run: audited.store.read_events(run) for run in RUNS}
    audited.store.close()
    _downgrade_to_v1(audited)
    if audited.kind == "sqlite":
        assert isinstance(audited.store, SqliteStore)
        reopened: Store = SqliteStore(audited.store.path)
    else:
        from charter.adapters.postgres import PostgresStore

        reopened = PostgresStore(audited.url, schema=audited.schema)
    try:
        report = verify_log(reopened, strict=True)
        assert report.ok, report.problems
        assert report.events == sum(len(events) for events in before.values())
        for run, events in before.items():
            assert reopened.read_events(run) == events  # the same events, the same chain
            assert replay_run(reopened, run).ok
        # appending continues the migrated chain
        reopened.append_events("refund", [before["refund"][-1].kind])
        assert verify_log(reopened, runs=["refund"]).ok
    finally:
        reopened.close()
        audited.store = reopened
