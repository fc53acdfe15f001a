"""Compaction of real runs (the examples, driven by the worker) on SQLite and Postgres:
verify, replay and what-if on a compacted log, with and without its archive; tampering
with a compacted log found by SQL on the database; and `charter compact` itself
(docs/semantics.md §10, docs/audit.md §6, docs/cli.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from charter.adapters.files import load_workflow_file
from charter.adapters.sqlite import SqliteStore
from charter.audit import replay_run, verify_log, what_if
from charter.audit.compaction import compact_log, read_archive, with_archives
from charter.core.errors import StoreUnavailable
from charter.core.policy import PolicySet
from charter.worker import start_run
from tests.test_audit import EXAMPLES, RUNS, Tamper, audited, cli, db

__all__ = ["audited", "db"]  # (fixtures used here)


def test_a_compacted_run_replays_whole_with_its_archive_and_says_so_without(
    audited: Tamper, tmp_path: Path
) -> None:
    store = audited.store
    before = {run: replay_run(store, run) for run in RUNS}
    chains = {run: store.read_chain(run) for run in RUNS}
    proposed = PolicySet(blocked_tools=("payments.*",))
    whatif_before = what_if(store, list(RUNS), proposed)
    report = compact_log(store, before=10_000, archive=tmp_path / "a.jsonl")
    assert {run.execution_id for run in report.compacted} == set(RUNS)
    assert all(len(store.read_chain(run)) == 1 for run in RUNS)  # only the last event stays
    verified = verify_log(store, strict=True)
    assert verified.ok, verified.problems
    assert set(verified.compacted) == set(RUNS)
    # Without the archive: nothing is claimed about what could not be seen.
    for run in RUNS:
        replayed = replay_run(store, run)
        assert not replayed.ok
        assert "cannot recompute" in replayed.divergences[0].problem
    blind = what_if(store, list(RUNS), proposed)
    assert blind.decisions == 0
    assert len(blind.unreplayable) == len(RUNS)
    # With it: the whole log again, every decision recomputed exactly as before.
    archives = read_archive([tmp_path / "a.jsonl"])
    whole = with_archives(store, archives)
    assert verify_log(whole, strict=True).ok
    for run in RUNS:
        assert whole.read_chain(run) == chains[run]
        replayed = replay_run(whole, run)
        assert replayed.ok, replayed.divergences
        assert (replayed.gates, replayed.settlements) == (
            before[run].gates,
            before[run].settlements,
        )
    assert what_if(whole, list(RUNS), proposed) == whatif_before


def test_tampering_with_a_compacted_log_fails_verification(audited: Tamper) -> None:
    store = audited.store
    compact_log(store, before=5, runs=["refund"])
    assert verify_log(store, runs=["refund"]).ok
    # The record's hash changed: the first retained event no longer links to it.
    audited.sql("UPDATE compactions SET hash = ? WHERE execution_id = 'refund'", ("b" * 64,))
    problems = verify_log(store, runs=["refund"]).problems
    assert [(p.sequence, "prev_hash" in p.problem) for p in problems] == [(5, True)]
    audited.sql(
        "UPDATE compactions SET hash = (SELECT prev_hash FROM events WHERE "
        "execution_id = 'refund' AND sequence = 5) WHERE execution_id = 'refund'"
    )
    assert verify_log(store, runs=["refund"]).ok
    # An event removed after the cut without a record: a gap.
    audited.sql("DELETE FROM events WHERE execution_id = 'refund' AND sequence = 5")
    problems = verify_log(store, runs=["refund"]).problems
    assert any("missing" in p.problem for p in problems)
    # A second record forged to cover the gap must continue from the first: it does not.
    audited.sql(
        "INSERT INTO compactions (execution_id, first_sequence, through_sequence, events, "
        "prev_hash, hash, snapshot_sequence, compacted_at) SELECT execution_id, 6, 5, 1, "
        "prev_hash, hash, snapshot_sequence, compacted_at FROM compactions "
        "WHERE execution_id = 'refund'"
    )
    assert not verify_log(store, runs=["refund"]).ok


def test_a_tampered_run_is_not_archived_nor_compacted_and_the_others_are(
    audited: Tamper, tmp_path: Path
) -> None:
    """Compaction checks and archives in one pass; a run whose prefix does not verify has its
    lines cut off the archive again (and an archive made only for it is removed), so the
    archive holds exactly the events of the runs compacted."""
    store = audited.store
    text = audited.kind_json("refund", 2)
    audited.set_kind("refund", 2, text.replace('"node_id":"', '"node_id":"x', 1))
    assert audited.kind_json("refund", 2) != text
    assert not verify_log(store, runs=["refund"]).ok
    kept = store.read_chain("refund")
    # Alone, the tampered run makes no archive at all.
    alone = tmp_path / "alone.jsonl"
    report = compact_log(store, before=5, runs=["refund"], archive=alone)
    assert [s.execution_id for s in report.skipped] == ["refund"]
    assert "does not verify" in report.skipped[0].reason
    assert not alone.exists()
    # Between two good runs, its lines are cut off and theirs kept, in full.
    order = ["cleanup", "refund", "research"]
    good = {run: store.read_chain(run, limit=4) for run in ("cleanup", "research")}
    path = tmp_path / "archive.jsonl"
    report = compact_log(store, before=5, runs=order, archive=path)
    assert [c.execution_id for c in report.compacted] == ["cleanup", "research"]
    assert [s.execution_id for s in report.skipped] == ["refund"]
    assert read_archive([path]) == {run: list(links) for run, links in good.items()}
    assert store.read_chain("refund") == kept  # nothing of it removed
    assert store.compactions("refund") == ()


class _FailingReads:
    """A store whose ``read_chain`` fails once a run's reading has gone past ``after``."""

    def __init__(self, store: SqliteStore, run: str, after: int) -> None:
        self._store, self._run, self._after = store, run, after

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    def read_chain(self, execution_id: str, *, after: int = 0, limit: int | None = None) -> object:
        if execution_id == self._run and after >= self._after:
            raise StoreUnavailable("the disk went away")
        return self._store.read_chain(execution_id, after=after, limit=limit)


def test_a_failure_while_archiving_a_run_leaves_none_of_its_lines(db: Path, tmp_path: Path) -> None:
    """A read failing in the middle of a run's pass: the error surfaces, nothing of that run
    is removed, and the archive keeps exactly the runs compacted before it (none: no file)."""
    store = SqliteStore(db)
    try:
        kept = {run: store.read_chain(run) for run in ("cleanup", "refund")}
        alone = tmp_path / "alone.jsonl"
        failing = _FailingReads(store, "refund", after=2)
        with pytest.raises(StoreUnavailable, match="disk went away"):
            compact_log(failing, before=6, runs=["refund"], archive=alone, page=2)  # type: ignore[arg-type]
        assert not alone.exists()
        path = tmp_path / "archive.jsonl"
        with pytest.raises(StoreUnavailable):
            compact_log(failing, before=6, runs=["cleanup", "refund"], archive=path, page=2)  # type: ignore[arg-type]
        assert read_archive([path]) == {"cleanup": list(kept["cleanup"][:5])}
        assert store.read_chain("refund") == kept["refund"]
        assert store.compactions("refund") == ()
    finally:
        store.close()


def test_a_running_run_is_skipped_by_the_command(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = SqliteStore(db)
    workflow, _ = load_workflow_file(EXAMPLES / "cleanup.yaml")
    start_run(store, workflow, execution_id="still-running")
    store.close()
    code, out, _ = cli(capsys, "compact", "--db", str(db), "--before", "3", "--dry-run")
    assert code == 0
    assert out.count("would remove events 1–2") == len(RUNS)
    assert "SKIPPED    still-running: it is still running" in out


def test_cli_compact_verify_and_replay(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "archive.jsonl"
    code, out, _ = cli(capsys, "compact", "--db", str(db), "--before", "8", "--dry-run")
    assert code == 0
    assert "dry run: 4 run(s) compacted, 28 event(s)" in out
    assert not archive.exists()
    code, out, _ = cli(
        capsys, "compact", "--db", str(db), "--before", "8", "--archive", str(archive), "--json"
    )
    assert code == 0
    done = json.loads(out)
    assert done["events"] == 28
    assert {r["run"]: (r["first"], r["through"]) for r in done["compacted"]} == dict.fromkeys(
        RUNS, (1, 7)
    )
    code, out, _ = cli(capsys, "audit", "verify", "--db", str(db))
    assert code == 0
    assert out.count("COMPACTED  ") == len(RUNS)
    assert "archive not given" in out
    code, out, _ = cli(capsys, "audit", "verify", "--db", str(db), "--archive", str(archive))
    assert code == 0
    assert "7 checked from the archive" in out
    code, out, _ = cli(capsys, "audit", "replay", "--all", "--db", str(db))
    assert code == 6
    assert "cannot recompute: events 1–7 were compacted" in out
    code, out, _ = cli(
        capsys, "audit", "replay", "--all", "--db", str(db), "--archive", str(archive)
    )
    assert code == 0, out
    assert out.count("all agree") == len(RUNS)
    # Compacting again extends; the second archive verifies with the first.
    second = tmp_path / "second.jsonl"
    code, out, _ = cli(
        capsys, "compact", "--db", str(db), "--before", "10", "--archive", str(second)
    )
    assert code == 0
    assert "removed events 8–9" in out
    code, out, _ = cli(
        capsys, "audit", "replay", "--all", "--db", str(db),
        "--archive", str(archive), "--archive", str(second),
    )  # fmt: skip
    assert code == 0, out


def test_cli_compact_bad_input_is_one_line_and_exit_2(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(capsys, "compact", "--db", str(db), "--before", "yesterday")
    assert code == 2
    assert "--before" in err
    code, _, err = cli(capsys, "compact", "--db", str(db), "--before", "2026-12-01T00:00:00")
    assert code == 2
    assert "timezone" in err
    existing = tmp_path / "exists.jsonl"
    existing.write_text("mine")
    code, _, err = cli(
        capsys, "compact", "--db", str(db), "--before", "5", "--archive", str(existing)
    )
    assert code == 2
    assert "--archive" in err
    assert "never overwritten" in err
    assert existing.read_text() == "mine"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"format": "charter-archive/1"}\n{"sequence": "x"}\n')
    code, _, err = cli(capsys, "audit", "verify", "--db", str(db), "--archive", str(bad))
    assert code == 2
    assert "bad.jsonl:2" in err
    code, _, err = cli(capsys, "compact", "--db", str(db), "--before", "5", "--run", "nope")
    assert code == 2
    assert "--run" in err


def test_cli_events_of_a_compacted_run_says_what_was_removed(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    anchor = tmp_path / "anchor.json"
    assert cli(capsys, "audit", "anchor", "--db", str(db), "-o", str(anchor))[0] == 0
    assert cli(capsys, "compact", "--db", str(db), "--before", "6")[0] == 0
    code, out, _ = cli(capsys, "events", "refund", "--db", str(db))
    assert code == 0
    assert out.splitlines()[0].startswith("(events 1–5 were compacted")
    # The anchor taken before compaction still verifies: its heads are the runs' last
    # events, which compaction never removes.
    code, out, _ = cli(capsys, "audit", "verify", "--db", str(db), "--anchor", str(anchor))
    assert code == 0, out
    assert "4 against the anchor" in out
