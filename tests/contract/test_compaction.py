"""Compaction, as part of the `Store` contract (docs/semantics.md §10), on every adapter.

1. The property: for any finished run and any cut, the compacted log verifies, the run's
   snapshot is the state the whole log gives, and archive + compacted log == the original
   log, which verifies against the compaction record; compacting again extends it.
2. Never for a run that is running or waiting; nothing to remove changes nothing.
3. All or nothing: another event at the cut writes nothing; an exception between the
   archive write and the delete leaves the store whole and the archive complete.
4. Tampering a compacted log — a forged record, a record whose hash does not link, an
   event removed after the cut — fails verification; replay says what it cannot recompute.
"""

from __future__ import annotations

import itertools
from datetime import timedelta
from pathlib import Path

import attrs
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from charter.adapters.chain import GENESIS, event_hash
from charter.adapters.clock import ManualClock
from charter.audit import replay_run, verify_log
from charter.audit.compaction import compact_log, read_archive, with_archives
from charter.core.errors import Conflict, InvalidInput
from charter.core.events import InterruptRaised, NodeCompleted, NodeStarted, WorkflowCompleted
from charter.core.materialize import materialize
from charter.core.ports import Store
from charter.core.records import ChainLink, ExecutionStatus
from tests.contract.helpers import execution, started

_RUNS = itertools.count()


def finished_run(store: Store, clock: ManualClock, nodes: int, *, finish: bool = True) -> str:
    """A run of ``nodes`` nodes (two events each, one commit per node, a second apart)
    after ``workflow_started``, ended by ``workflow_completed`` when ``finish``."""
    run = f"compact-{next(_RUNS)}"
    store.create_execution(execution(clock, run, initial_input={"n": nodes}), [started()])
    for index in range(nodes):
        clock.advance(1)
        node = f"n{index}"
        store.append_events(
            run,
            [
                NodeStarted(node_id=node, worker_id="w", attempt=0),
                NodeCompleted(node_id=node, output=index, state_patch={node: index}, duration_ms=1),
            ],
        )
    if finish:
        clock.advance(1)
        store.append_events(run, [WorkflowCompleted(final_state={"done": True})])
    return run


# ── 1. the property ────────────────────────────────────────────────────────────────────


@settings(max_examples=12, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(nodes=0, cuts=[1, 2, 1])  # a cut repeated after a later one (the test once mis-read it)
@given(
    nodes=st.integers(min_value=0, max_value=12),
    cuts=st.lists(st.integers(min_value=1, max_value=30), min_size=1, max_size=3),
)
def test_any_cut_of_a_finished_run_verifies_keeps_its_state_and_archives_exactly(
    store: Store, clock: ManualClock, tmp_path_factory: pytest.TempPathFactory, nodes: int,
    cuts: list[int],
) -> None:  # fmt: skip
    run = finished_run(store, clock, nodes)
    original = store.read_chain(run)
    whole_state = materialize({"n": nodes}, store.read_events(run)).to_json()
    archives = []
    for index, cut in enumerate(cuts):
        path = tmp_path_factory.mktemp("archive") / "a.jsonl"
        report = compact_log(store, before=cut, runs=[run], archive=path)
        # the furthest cut so far (a repeated or earlier cut compacts nothing more)
        done = max([c - 1 for c in cuts[: index + 1]] + [0])
        expected_through = min(done, len(original) - 1)
        history = store.compactions(run)
        assert (history[-1].through_sequence if history else 0) == expected_through
        if report.compacted:
            archives.append(path)
        else:
            assert not path.exists()  # nothing archived: no file
    retained = store.read_chain(run)
    history = store.compactions(run)
    through = history[-1].through_sequence if history else 0
    # The last event always stays; the retained log is the original's suffix, unchanged.
    assert retained == original[through:]
    assert len(retained) >= 1
    # Each record summarises its events: count and last hash.
    for record in history:
        assert record.events == record.through_sequence - record.first_sequence + 1
        assert record.hash == original[record.through_sequence - 1].hash
        assert record.prev_hash == original[record.first_sequence - 1].prev_hash
    # The compacted log verifies and reports its prefix.
    verified = verify_log(store, runs=[run])
    assert verified.ok, verified.problems
    assert (run in verified.compacted) == bool(history)
    # The snapshot holds the state the whole log gives.
    snapshot = store.latest_snapshot(run)
    if history:
        assert snapshot is not None
        assert snapshot.at_sequence == len(original)
        assert snapshot.state == whole_state
    # archive + compacted log == the original log, and it verifies against the records.
    links = read_archive(archives)
    assert tuple(links.get(run, [])) + retained == original
    full = verify_log(with_archives(store, links), runs=[run])
    assert full.ok, full.problems
    if history:
        assert full.compacted[run].archived == through


# ── 2. eligibility ─────────────────────────────────────────────────────────────────────


def test_a_running_run_is_never_compacted(store: Store, clock: ManualClock) -> None:
    run = finished_run(store, clock, 3, finish=False)
    before = store.read_chain(run)
    report = compact_log(store, before=100, runs=[run])
    assert not report.compacted
    assert "still running" in report.skipped[0].reason
    head = before[-2]
    with pytest.raises(Conflict, match="only finished runs"):
        store.compact(run, through=head.sequence, expect_hash=head.hash)
    assert store.read_chain(run) == before
    assert store.compactions(run) == ()


def test_a_waiting_run_is_never_compacted(store: Store, clock: ManualClock) -> None:
    run = finished_run(store, clock, 2, finish=False)
    store.append_events(
        run, [InterruptRaised(node_id="n1", reason="review", state_for_review=None)]
    )
    assert store.get_execution(run).status is ExecutionStatus.PAUSED  # type: ignore[union-attr]
    report = compact_log(store, before=100, runs=[run])
    assert not report.compacted
    assert "waiting" in report.skipped[0].reason
    assert len(store.read_chain(run)) == 6


def test_a_cut_before_anything_compacts_nothing(store: Store, clock: ManualClock) -> None:
    run = finished_run(store, clock, 2)
    assert not compact_log(store, before=1, runs=[run]).compacted
    last = store.read_chain(run)[-1]
    with pytest.raises(Conflict, match="the last event stays"):
        store.compact(run, through=last.sequence, expect_hash=last.hash)
    assert store.compactions(run) == ()


def test_a_cut_by_time_removes_the_events_recorded_before_it(
    store: Store, clock: ManualClock
) -> None:
    started_at = clock.now()
    run = finished_run(store, clock, 4)  # node i's events at started_at + (i + 1) s
    report = compact_log(
        store, before=started_at + timedelta(seconds=2, milliseconds=1), runs=[run]
    )
    # workflow_started (1) and node 0's and node 1's events (2–5) were recorded before it.
    assert [(c.first, c.through) for c in report.compacted] == [(1, 5)]
    assert store.read_chain(run)[0].sequence == 6


def test_compacting_again_extends_and_is_idempotent(store: Store, clock: ManualClock) -> None:
    run = finished_run(store, clock, 5)
    compact_log(store, before=4, runs=[run])
    again = compact_log(store, before=4, runs=[run])
    assert not again.compacted  # the same cut again: nothing more to remove
    compact_log(store, before=9, runs=[run])
    history = store.compactions(run)
    assert [(r.first_sequence, r.through_sequence) for r in history] == [(1, 3), (4, 8)]
    assert history[1].prev_hash == history[0].hash
    assert verify_log(store, runs=[run]).ok


def test_a_dry_run_writes_nothing(store: Store, clock: ManualClock, tmp_path: Path) -> None:
    run = finished_run(store, clock, 3)
    before = store.read_chain(run)
    report = compact_log(store, before=5, runs=[run], archive=tmp_path / "a", dry_run=True)
    assert [(c.first, c.through, c.events) for c in report.compacted] == [(1, 4, 4)]
    assert report.bytes > 0
    assert store.read_chain(run) == before
    assert not (tmp_path / "a").exists()


# ── 3. all or nothing ──────────────────────────────────────────────────────────────────


def test_another_event_at_the_cut_writes_nothing(store: Store, clock: ManualClock) -> None:
    run = finished_run(store, clock, 3)
    before = store.read_chain(run)
    with pytest.raises(Conflict, match="not the one read"):
        store.compact(run, through=3, expect_hash=before[3].hash)
    assert store.read_chain(run) == before
    assert store.compactions(run) == ()


class _CrashBeforeDelete:
    """The store, except that `compact` fails as a crash would, after the archive write."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    def compact(self, execution_id: str, *, through: int, expect_hash: str) -> object:
        raise RuntimeError("crash between the archive write and the delete")


def test_a_crash_between_archive_and_delete_loses_nothing(
    store: Store, clock: ManualClock, tmp_path: Path
) -> None:
    run = finished_run(store, clock, 3)
    before = store.read_chain(run)
    path = tmp_path / "archive.jsonl"
    with pytest.raises(RuntimeError, match="crash"):
        compact_log(_CrashBeforeDelete(store), before=6, runs=[run], archive=path)  # type: ignore[arg-type]
    assert store.read_chain(run) == before  # nothing removed
    assert read_archive([path])[run] == list(before[:5])  # the archive was complete
    # Done again, to a new archive, it compacts.
    compact_log(store, before=6, runs=[run], archive=tmp_path / "second.jsonl")
    assert store.compactions(run)[0].through_sequence == 5


def test_an_existing_archive_is_never_overwritten(
    store: Store, clock: ManualClock, tmp_path: Path
) -> None:
    run = finished_run(store, clock, 2)
    path = tmp_path / "archive.jsonl"
    path.write_text("keep me")
    with pytest.raises(InvalidInput, match=r"--archive.*already exists"):
        compact_log(store, before=3, runs=[run], archive=path)
    assert path.read_text() == "keep me"
    assert store.compactions(run) == ()


# ── 4. tampering and replay ───────────────────────────────────────────────────────────


def test_an_archive_that_does_not_match_its_record_fails_verification(
    store: Store, clock: ManualClock, tmp_path: Path
) -> None:
    run = finished_run(store, clock, 4)
    compact_log(store, before=5, runs=[run], archive=tmp_path / "a.jsonl")
    archived = read_archive([tmp_path / "a.jsonl"])[run]
    assert verify_log(with_archives(store, {run: archived}), runs=[run]).ok
    # An archived event altered: its hash no longer matches.
    altered = [*archived[:1], attrs.evolve(archived[1], kind_text='{"type":"workflow_cancelled"}')]
    report = verify_log(with_archives(store, {run: [*altered, *archived[2:]]}), runs=[run])
    assert not report.ok
    # An archived event left out: a gap, found.
    report = verify_log(with_archives(store, {run: archived[:1] + archived[2:]}), runs=[run])
    assert any("missing" in problem.problem for problem in report.problems)
    # A whole archive made up (re-hashed events): its last hash is not the record's.
    forged = _rehashed(archived, '{"type":"workflow_cancelled"}')
    report = verify_log(with_archives(store, {run: forged}), runs=[run])
    assert any("compaction record" in problem.problem for problem in report.problems)


def _rehashed(links: list[ChainLink], kind_text: str) -> list[ChainLink]:
    out, prev = [], GENESIS
    for link in links:
        this = event_hash(
            execution_id=link.execution_id, sequence=link.sequence, event_id=link.event_id,
            created_at=link.created_at, kind_text=kind_text, prev_hash=prev,
        )  # fmt: skip
        out.append(attrs.evolve(link, kind_text=kind_text, prev_hash=prev, hash=this))
        prev = this
    return out


def test_replay_without_the_archive_says_what_it_cannot_recompute(
    store: Store, clock: ManualClock
) -> None:
    run = finished_run(store, clock, 3)
    compact_log(store, before=4, runs=[run])
    report = replay_run(store, run)
    assert not report.ok
    (divergence,) = report.divergences
    assert divergence.sequence == 4
    assert "cannot recompute: events 1–3 were compacted" in divergence.problem
    assert "--archive" in divergence.problem
