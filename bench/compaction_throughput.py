"""Compaction throughput: `compact_log` on one finished SQLite run, beside a hand-written
sqlite3 loop doing the same work and the physical limit of removing the rows.

Run with ``python -m bench.compaction_throughput [--quick] [--rounds R] [--nodes N]
[--synchronous FULL|NORMAL] [--json PATH] [--dir DIR]``; a Markdown report goes to stdout,
progress to stderr. This docstring is the description of what is measured.

**The log.** One real Charter run, written by the real worker: the ``N``-node chain workflow of
`bench.e2e_throughput` (no-op, idempotent tool nodes; default 20,000 nodes, so 5 × 20,000 + 2 =
100,002 events), started as ``charter run`` does and driven to completion with
`charter.worker.drive`, then checkpointed. It is built once per invocation (untimed), verified,
and every trial works on its own fresh copy of the file (an SQLite backup, untimed), so each
path removes the same events from the same bytes.

**Paths**, each compacting the run through its last-but-one event (``before`` = the last
sequence: every event but the last is removed), with the store's ``synchronous`` setting:

* **archive**: Charter, ``compact_log(store, before=last, archive=FILE)``, what ``charter
  compact --archive`` does: every event to remove read and chain-checked, read and checked
  again while written to the archive (one JSON line per event, then fsync), then
  ``Store.compact`` (one transaction: the snapshot brought to the end if needed, the events
  deleted, the compaction record written).
* **compact**: the same without an archive (one read-and-check pass, then ``Store.compact``).
* **hand**: the least Python can spend on the *archive* path's work: ``sqlite3`` pages of
  ``(sequence, event_id, created_at, kind_json, prev_hash, hash)``, each event's envelope built
  by one f-string and its SHA-256 compared with the stored hash (the chain checked once), a
  JSON line per event written to the archive and fsynced, then one transaction deleting the
  events and inserting the compaction record.
* **delete**: the physical limit of removal: the one ``DELETE`` of the same events in one
  transaction, nothing read or checked.
* **verify**: `verify_log` over the uncompacted copy, for scale: what compaction saves an
  auditor on every later verification (the report also gives `verify_log` on the copy each
  *archive* trial left).

**Timing.** ``--rounds`` rounds (default 3; quick 2), each running every path once on a fresh
copy, the order rotated every round; wall time (``perf_counter``) of the call; medians, with
the slowest and fastest, and ratios of medians. No result is asserted beyond the checks that
each path removed exactly the expected events and the compacted log still verifies.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any, Final, Literal

from bench.e2e_throughput import workflow_document
from bench.store_throughput import BenchmarkError, _machine
from charter.adapters.chain import GENESIS
from charter.adapters.executors import default_registry
from charter.adapters.sqlite import SqliteStore
from charter.audit.compaction import compact_log
from charter.audit.replay import verify_log
from charter.bootstrap import build_worker
from charter.core.records import Tenant
from charter.core.workflow import parse_workflow
from charter.worker import drive, start_run

__all__ = ["main", "run"]

Sync = Literal["FULL", "NORMAL"]
PATHS: Final = ("archive", "compact", "hand", "delete", "verify")
LABELS: Final = {
    "archive": "(a) Charter `compact_log` with an archive",
    "compact": "(a′) Charter `compact_log`, no archive",
    "hand": "(b) hand-written sqlite3 loop: check, archive, delete",
    "delete": "(c) the `DELETE` alone (physical limit of removal)",
    "verify": "(d) `verify_log` before compaction",
}
TENANT: Final = "bench"
RUN_ID: Final = "run-compact"
PAGE: Final = 2_000
SELECT_PAGE: Final = (
    "SELECT sequence, event_id, created_at, kind_json, prev_hash, hash FROM events "
    "WHERE execution_id = ? AND sequence > ? AND sequence <= ? ORDER BY sequence LIMIT ?"
)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Settings:
    rounds: int
    nodes: int
    synchronous: Sync


# ── the log ──────────────────────────────────────────────────────────────────────────────


def build_log(path: Path, nodes: int) -> int:
    """A finished run of an ``nodes``-node chain at ``path``; its last sequence."""
    store = SqliteStore(path, synchronous="OFF")
    try:
        now = store.clock.now()
        store.put_tenant(Tenant(tenant_id=TENANT, name="bench", created_at=now, updated_at=now))
        workflow = parse_workflow(workflow_document("chain", nodes), "bench compaction chain")
        start_run(store, workflow, execution_id=RUN_ID, tenant_id=TENANT)
        outcome = drive(build_worker(store, executors=default_registry()), RUN_ID)
        if outcome.status != "completed":
            raise BenchmarkError(f"build: the run ended {outcome}")
        execution = store.get_execution(RUN_ID)
        if execution is None or execution.last_sequence != 5 * nodes + 2:
            raise BenchmarkError(f"build: expected {5 * nodes + 2} events, found {execution}")
        report = verify_log(store)
        if not report.ok:
            raise BenchmarkError(f"build: the log does not verify: {report}")
        last = execution.last_sequence
    finally:
        store.close()
    conn = sqlite3.connect(str(path))
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return last


def _copy(source: Path, target: Path) -> None:
    for stale in (target, Path(f"{target}-wal"), Path(f"{target}-shm")):
        stale.unlink(missing_ok=True)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dst = sqlite3.connect(str(target))
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


# ── the paths ────────────────────────────────────────────────────────────────────────────


def _charter(db: Path, sync: Sync, last: int, archive: Path | None) -> int:
    store = SqliteStore(db, synchronous=sync)
    try:
        report = compact_log(store, before=last, runs=[RUN_ID], archive=archive)
    finally:
        store.close()
    if len(report.compacted) != 1 or report.compacted[0].events != last - 1:
        raise BenchmarkError(f"charter: expected {last - 1} events removed, got {report}")
    return report.compacted[0].events


def _hand(db: Path, sync: Sync, last: int, archive: Path) -> int:
    through = last - 1
    conn = sqlite3.connect(str(db), isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {sync}")
    quote = encode_basestring
    sha256 = hashlib.sha256
    dumps = json.dumps
    middle = f',"execution_id":{quote(RUN_ID)},"id":'
    head, previous, after, removed = GENESIS, 0, 0, 0
    try:
        with archive.open("x", encoding="utf-8") as out:
            out.write(dumps({"format": "charter-archive/1"}) + "\n")
            while True:
                rows = conn.execute(SELECT_PAGE, (RUN_ID, after, through, PAGE)).fetchall()
                lines = []
                for sequence, event_id, created_at, kind_text, prev_hash, hash_ in rows:
                    text = (
                        f'{{"created_at":{quote(created_at)}{middle}{quote(event_id)},'
                        f'"kind":{kind_text},"prev_hash":{quote(prev_hash)},'
                        f'"sequence":{sequence}}}'
                    )
                    if (
                        sequence != previous + 1
                        or prev_hash != head
                        or sha256(text.encode()).hexdigest() != hash_
                    ):
                        raise BenchmarkError(f"hand: event {sequence} does not check out")
                    head, previous = hash_, sequence
                    lines.append(
                        dumps(
                            {
                                "execution_id": RUN_ID,
                                "sequence": sequence,
                                "event_id": event_id,
                                "created_at": created_at,
                                "kind_text": kind_text,
                                "prev_hash": prev_hash,
                                "hash": hash_,
                            },
                            ensure_ascii=False,
                            separators=(",", ":"),
                        )
                    )
                out.write("\n".join(lines) + "\n" if lines else "")
                removed += len(rows)
                if len(rows) < PAGE:
                    break
                after = rows[-1][0]
            out.flush()
            os.fsync(out.fileno())
        conn.execute("BEGIN IMMEDIATE")
        stored = conn.execute(
            "SELECT hash FROM events WHERE execution_id = ? AND sequence = ?", (RUN_ID, through)
        ).fetchone()
        if stored is None or stored[0] != head:
            raise BenchmarkError("hand: the log moved under the compaction")
        conn.execute(
            "DELETE FROM events WHERE execution_id = ? AND sequence <= ?", (RUN_ID, through)
        )
        conn.execute(
            "INSERT INTO compactions (execution_id, first_sequence, through_sequence, events, "
            "prev_hash, hash, snapshot_sequence, compacted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (RUN_ID, 1, through, removed, GENESIS, head, last, datetime.now(UTC).isoformat()),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()
    if removed != through:
        raise BenchmarkError(f"hand: removed {removed}, expected {through}")
    return removed


def _delete(db: Path, sync: Sync, last: int) -> int:
    conn = sqlite3.connect(str(db), isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {sync}")
        conn.execute("BEGIN IMMEDIATE")
        removed = conn.execute(
            "DELETE FROM events WHERE execution_id = ? AND sequence <= ?", (RUN_ID, last - 1)
        ).rowcount
        conn.execute("COMMIT")
    finally:
        conn.close()
    if removed != last - 1:
        raise BenchmarkError(f"delete: removed {removed}, expected {last - 1}")
    return int(removed)


def _verify(db: Path, sync: Sync) -> int:
    store = SqliteStore(db, synchronous=sync)
    try:
        report = verify_log(store)
    finally:
        store.close()
    if not report.ok:
        raise BenchmarkError(f"verify: {report}")
    return int(report.events)


def _call(path: str, db: Path, sync: Sync, last: int, archive: Path) -> int:
    if path == "archive":
        return _charter(db, sync, last, archive)
    if path == "compact":
        return _charter(db, sync, last, None)
    if path == "hand":
        return _hand(db, sync, last, archive)
    if path == "delete":
        return _delete(db, sync, last)
    return _verify(db, sync)


def _remaining(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(
            conn.execute(
                "SELECT count(*) FROM events WHERE execution_id = ?", (RUN_ID,)
            ).fetchone()[0]
        )
    finally:
        conn.close()


# ── run ──────────────────────────────────────────────────────────────────────────────────


@dataclass
class Trial:
    path: str
    round: int
    seconds: float
    events: int


@dataclass
class Report:
    settings: Settings
    started: str
    finished: str
    machine: dict[str, Any]
    events: int
    build_seconds: float
    file_bytes: int
    trials: list[Trial] = field(default_factory=list)
    verify_after: list[float] = field(default_factory=list)


def run(settings: Settings, base: Path) -> Report:
    started = datetime.now(UTC).isoformat(timespec="seconds")
    machine = _machine(base)
    with tempfile.TemporaryDirectory(prefix="charter-compaction-", dir=base) as tmp:
        directory = Path(tmp)
        source = directory / "source.db"
        _progress(f"building a {settings.nodes:,}-node chain run…")
        t0 = time.perf_counter()
        last = build_log(source, settings.nodes)
        build_seconds = time.perf_counter() - t0
        _progress(f"built {last:,} events in {build_seconds:.1f} s")
        report = Report(
            settings=settings,
            started=started,
            finished="",
            machine=machine,
            events=last,
            build_seconds=build_seconds,
            file_bytes=source.stat().st_size,
        )
        sync = settings.synchronous
        for index in range(settings.rounds):
            shift = index % len(PATHS)
            for path in PATHS[shift:] + PATHS[:shift]:
                db = directory / f"{path}.db"
                archive = directory / f"{path}-{index}.archive"
                archive.unlink(missing_ok=True)
                _copy(source, db)
                start = time.perf_counter()
                events = _call(path, db, sync, last, archive)
                seconds = time.perf_counter() - start
                if path != "verify" and _remaining(db) != 1:
                    raise BenchmarkError(f"{path}: the run does not keep exactly its last event")
                if path == "archive":
                    start = time.perf_counter()
                    _verify(db, sync)
                    report.verify_after.append(time.perf_counter() - start)
                report.trials.append(Trial(path, index, seconds, events))
                _progress(f"round {index + 1} {path}: {seconds:.3f} s ({events:,} events)")
                archive.unlink(missing_ok=True)
        report.finished = datetime.now(UTC).isoformat(timespec="seconds")
        return report


def _median(report: Report, path: str) -> float:
    return statistics.median(t.seconds for t in report.trials if t.path == path)


def _range(report: Report, path: str) -> tuple[float, float]:
    times = [t.seconds for t in report.trials if t.path == path]
    return min(times), max(times)


def render_markdown(report: Report) -> str:
    s = report.settings
    removed = report.events - 1
    lines = [
        f"# Compaction: one finished run of {report.events:,} events "
        f"({s.nodes:,}-node chain), synchronous={s.synchronous}",
        "",
        f"Started {report.started}, finished {report.finished}; {s.rounds} rounds; log built "
        f"by the worker in {report.build_seconds:.1f} s, {report.file_bytes / 1e6:.1f} MB; "
        f"load at start {report.machine.get('load_average_at_start')}.",
        "",
        "| path | median s [fastest–slowest] | events/s | ratio to (b) hand |",
        "|:---|---:|---:|---:|",
    ]
    hand = _median(report, "hand")
    for path in PATHS:
        median = _median(report, path)
        low, high = _range(report, path)
        count = report.events if path == "verify" else removed
        lines.append(
            f"| {LABELS[path]} | {median:.3f} [{low:.3f}–{high:.3f}] | {count / median:,.0f} "
            f"| {median / hand:.2f}× |"
        )
    after = statistics.median(report.verify_after)
    lines += [
        "",
        f"`verify_log` after compaction (the archive trials' copies): {after * 1000:.2f} ms "
        f"median, against {_median(report, 'verify'):.3f} s before.",
        f"Charter with an archive / hand-written loop: "
        f"{_median(report, 'archive') / hand:.2f}×; / the DELETE alone: "
        f"{_median(report, 'archive') / _median(report, 'delete'):.2f}×.",
    ]
    return "\n".join(lines) + "\n"


def report_json(report: Report) -> dict[str, Any]:
    paths = {
        path: {
            "median_seconds": _median(report, path),
            "min_seconds": _range(report, path)[0],
            "max_seconds": _range(report, path)[1],
            "label": LABELS[path],
        }
        for path in PATHS
    }
    return {
        "benchmark": "compaction_throughput",
        "settings": asdict(report.settings),
        "started": report.started,
        "finished": report.finished,
        "machine": report.machine,
        "events": report.events,
        "build_seconds": report.build_seconds,
        "file_bytes": report.file_bytes,
        "paths": paths,
        "verify_after_median_seconds": statistics.median(report.verify_after),
        "ratios": {
            "archive_over_hand": _median(report, "archive") / _median(report, "hand"),
            "compact_over_delete": _median(report, "compact") / _median(report, "delete"),
            "archive_over_delete": _median(report, "archive") / _median(report, "delete"),
        },
        "trials": [asdict(t) for t in report.trials],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.compaction_throughput",
        description="Compaction of one finished SQLite run: Charter's compact_log beside a "
        "hand-written sqlite3 loop and the DELETE alone.",
    )
    parser.add_argument("--quick", action="store_true", help="2 rounds of a 2,000-node chain")
    parser.add_argument("--rounds", type=int, help="rounds (default 3; quick 2)")
    parser.add_argument("--nodes", type=int, help="chain nodes (default 20,000; quick 2,000)")
    parser.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    parser.add_argument("--dir", type=Path, metavar="DIR", help="where to make the temporary files")
    args = parser.parse_args(argv)
    rounds = args.rounds if args.rounds is not None else (2 if args.quick else 3)
    nodes = args.nodes if args.nodes is not None else (2_000 if args.quick else 20_000)
    if rounds < 1:
        parser.error("--rounds: expected at least 1")
    if nodes < 2:
        parser.error("--nodes: expected at least 2")
    settings = Settings(rounds=rounds, nodes=nodes, synchronous=args.synchronous)
    base = args.dir if args.dir is not None else Path(tempfile.gettempdir())
    report = run(settings, base)
    sys.stdout.write(render_markdown(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report_json(report), indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
