"""Store throughput: the SQLite store's claim → commit path beside a hand-written loop and the disk.

Run with ``python -m bench.store_throughput [--quick] [--json PATH] [--dir DIR]``; a Markdown
report goes to stdout, progress to stderr. See ``docs/performance.md`` for what is measured
and why.

Three paths, each on a fresh SQLite file in WAL mode, under ``synchronous = NORMAL`` and
``FULL``:

* **(a) store**: a `SqliteStore` with one execution and N pending items enqueued beforehand
  (not timed). The timed loop calls ``claim(worker, ["tool"], lease_secs=30)`` (which appends
  ``node_started``) and then ``commit`` with outcome ``completed`` and one ``node_completed``
  event, until the queue is empty: two transactions, one event each, per item.
* **(b) sqlite3**: the least a Python program can do for the same two transactions, with the
  stdlib `sqlite3` module on a minimal work-item table and an events table shaped like the
  store's (see `BASELINE_SCHEMA`, `CLAIM_SQL`, `COMPLETE_SQL`, `EVENT_SQL`).
* **(c) raw**: ``BEGIN IMMEDIATE; INSERT`` one ~200-byte row ``; COMMIT`` in a loop: the
  rate at which this disk and SQLite commit transactions at all. An item costs two
  transactions, so (c) is also given as items per second (transactions per second ÷ 2).

Timing: every trial uses a new file in its own directory under one base temporary directory
(so every path runs on the same filesystem, which the report names). A pilot trial of each
(path, setting) first warms up and calibrates N (items, or transactions for (c)) so that a
trial lasts about a second. Then the trials of all six configurations are run round-robin,
the order rotated every round, so that drift in the machine's load weighs on every
configuration alike. Each trial is checked afterwards (every item completed, every event
written with sequences 1…n, the file in WAL mode); the report gives the median rate over the
trials, their range, and ratios of medians. Garbage collection stays on (a worker runs with
it on), after a collection before each trial.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal, Protocol

from charter.adapters.sqlite import SqliteStore
from charter.core.events import NodeCompleted, WorkflowStarted
from charter.core.ports import CommitRequest
from charter.core.records import Execution, ExecutionStatus, NewWorkItem, WorkItemStatus

__all__ = ["main", "run"]

Sync = Literal["NORMAL", "FULL"]
SYNCS: Final[tuple[Sync, ...]] = ("NORMAL", "FULL")
PATHS: Final = ("store", "sqlite3", "raw")
PATH_LABELS: Final = {
    "store": "(a) store claim → commit",
    "sqlite3": "(b) hand-written sqlite3 loop",
    "raw": "(c) raw BEGIN IMMEDIATE; INSERT; COMMIT",
}

#: The issue's target, reported against and never asserted: (a) ≥ this fraction of (b).
TARGET_STORE_OVER_BASELINE = 0.80

QUEUE: Final = "tool"
WORKER: Final = "bench-worker"
EXECUTION_ID: Final = "bench-execution"
LEASE_SECS: Final = 30.0
#: The row (c) inserts: 200 bytes of text.
RAW_ROW: Final = ("charter-store-throughput-" * 8)[:200]


class BenchmarkError(RuntimeError):
    """A trial did not do what it should have (lost items or events), or could not run."""


# ── settings ───────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Settings:
    """How long to measure."""

    name: str
    rounds: int  # trials per configuration (path × setting)
    trial_seconds: float  # the length a calibrated trial aims at
    pilot_items: int  # items of a calibration trial of (a) and (b)
    pilot_transactions: int  # transactions of a calibration trial of (c)
    min_count: int
    max_count: int


FULL = Settings("full", 11, 1.0, 300, 600, 200, 200_000)
QUICK = Settings("quick", 3, 0.3, 100, 200, 50, 50_000)


# ── the three paths ────────────────────────────────────────────────────────────────────


def _utc_text(moment: datetime) -> str:
    """The store's time format (UTC, microseconds, ``Z``)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Trial(Protocol):
    """One prepared trial: ``run`` is timed and returns how many units (items or
    transactions) it did; ``verify`` checks what was written; ``close`` lets go of the file."""

    def run(self) -> int: ...

    def verify(self) -> None: ...

    def close(self) -> None: ...


def _connect(path: Path, synchronous: Sync) -> sqlite3.Connection:
    """A connection as the baselines use it: autocommit (explicit transactions), WAL, the
    given ``synchronous``, the store's busy timeout."""
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=5.0)
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        conn.close()
        raise BenchmarkError(f"{path}: journal_mode is {mode}, not wal")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    return conn


def _check_file(path: Path, synchronous: Sync, conn: sqlite3.Connection | None = None) -> None:
    """The file is in WAL mode (read from a second connection: WAL mode is stored in the
    file) and, given the connection that ran the trial, that it ran with ``synchronous``."""
    check = sqlite3.connect(str(path))
    try:
        mode = check.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        check.close()
    if str(mode).lower() != "wal":
        raise BenchmarkError(f"{path}: journal_mode is {mode}, not wal")
    if conn is not None:
        level = conn.execute("PRAGMA synchronous").fetchone()[0]
        expected = {"NORMAL": 1, "FULL": 2}[synchronous]
        if level != expected:
            raise BenchmarkError(f"{path}: synchronous is {level}, not {synchronous}")


class StoreTrial:
    """(a): `SqliteStore.claim` then `SqliteStore.commit` of a no-op node, until empty."""

    def __init__(self, directory: Path, synchronous: Sync, count: int) -> None:
        self.path = directory / "store.db"
        self.synchronous = synchronous
        self.count = count
        self.store = SqliteStore(self.path, synchronous=synchronous)
        now = self.store.clock.now()
        self.store.create_execution(
            Execution(
                execution_id=EXECUTION_ID,
                workflow_id="bench",
                workflow_version="1",
                created_at=now,
                updated_at=now,
            ),
            events=(WorkflowStarted(workflow_id="bench", workflow_version="1", initial_input={}),),
        )
        self.store.enqueue(
            [
                NewWorkItem(
                    item_id=f"item-{index:07d}",
                    execution_id=EXECUTION_ID,
                    node_id=f"node-{index:07d}",
                    queue=QUEUE,
                )
                for index in range(count)
            ]
        )

    def run(self) -> int:
        store = self.store
        done = 0
        while True:
            claim = store.claim(WORKER, [QUEUE], lease_secs=LEASE_SECS)
            if claim is None:
                return done
            store.commit(
                CommitRequest(
                    item_id=claim.item.item_id,
                    fence=claim.fence,
                    outcome=WorkItemStatus.COMPLETED,
                    events=(
                        NodeCompleted(
                            node_id=claim.item.node_id, output={}, state_patch={}, duration_ms=0
                        ),
                    ),
                )
            )
            done += 1

    def verify(self) -> None:
        execution = self.store.get_execution(EXECUTION_ID)
        expected_events = 2 * self.count + 1  # workflow_started, then two per item
        if execution is None or execution.last_sequence != expected_events:
            found = None if execution is None else execution.last_sequence
            raise BenchmarkError(f"store: last sequence {found}, expected {expected_events}")
        if execution.status is not ExecutionStatus.RUNNING:
            raise BenchmarkError(f"store: execution is {execution.status.value}, not running")
        events = self.store.read_events(EXECUTION_ID)
        if [event.sequence for event in events] != list(range(1, expected_events + 1)):
            raise BenchmarkError("store: event sequences are not 1…n")
        self.store.close()
        check = sqlite3.connect(str(self.path))
        try:
            rows = dict(
                check.execute("SELECT status, count(*) FROM work_items GROUP BY status").fetchall()
            )
        finally:
            check.close()
        if rows != {WorkItemStatus.COMPLETED.value: self.count}:
            raise BenchmarkError(f"store: items by status {rows}, expected all completed")
        _check_file(self.path, self.synchronous)

    def close(self) -> None:
        self.store.close()


#: (b)'s schema: the work-item columns the two transactions touch, the index that finds
#: the next pending item, and an events table like the store's minus its chain columns
#: (prev_hash, hash): the loop neither hashes nor links events, part of what the ratio prices.
BASELINE_SCHEMA: Final = """
CREATE TABLE work_items (
    id               INTEGER PRIMARY KEY,
    execution_id     TEXT NOT NULL,
    node_id          TEXT NOT NULL,
    queue            TEXT NOT NULL,
    status           TEXT NOT NULL,
    worker_id        TEXT,
    lease_expires_at TEXT,
    fence            INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX work_items_pending ON work_items (queue, id) WHERE status = 'pending';
CREATE TABLE events (
    execution_id TEXT NOT NULL,
    sequence     INTEGER NOT NULL,
    event_id     TEXT NOT NULL,
    kind_json    TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    PRIMARY KEY (execution_id, sequence)
) WITHOUT ROWID;
"""

CLAIM_SQL: Final = (
    "UPDATE work_items SET status = 'claimed', worker_id = ?, lease_expires_at = ?, "
    "fence = fence + 1 WHERE id = (SELECT id FROM work_items WHERE status = 'pending' "
    "AND queue = ? ORDER BY id LIMIT 1) RETURNING id, execution_id, node_id, fence"
)
COMPLETE_SQL: Final = (
    "UPDATE work_items SET status = 'completed', worker_id = NULL, lease_expires_at = NULL "
    "WHERE id = ? AND fence = ? AND status = 'claimed'"
)
EVENT_SQL: Final = (
    "INSERT INTO events (execution_id, sequence, event_id, kind_json, created_at) VALUES "
    "(?, (SELECT coalesce(max(sequence), 0) + 1 FROM events WHERE execution_id = ?), ?, ?, ?)"
)


class Sqlite3Trial:
    """(b): the same two transactions per item, hand-written with `sqlite3`."""

    def __init__(self, directory: Path, synchronous: Sync, count: int) -> None:
        self.path = directory / "baseline.db"
        self.synchronous = synchronous
        self.count = count
        self.conn = _connect(self.path, synchronous)
        self.conn.executescript(BASELINE_SCHEMA)
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany(
                "INSERT INTO work_items (execution_id, node_id, queue, status) "
                "VALUES (?, ?, ?, 'pending')",
                [(EXECUTION_ID, f"node-{index:07d}", QUEUE) for index in range(count)],
            )

    def run(self) -> int:
        execute = self.conn.execute
        dumps = json.dumps
        new_id = uuid.uuid4
        now = datetime.now
        lease = timedelta(seconds=LEASE_SECS)
        done = 0
        while True:
            # Claim: take the oldest pending item, fence + 1, append node_started.
            execute("BEGIN IMMEDIATE")
            moment = now(UTC)
            row = execute(CLAIM_SQL, (WORKER, _utc_text(moment + lease), QUEUE)).fetchone()
            if row is None:
                execute("COMMIT")
                return done
            item_id, execution_id, node_id, fence = row
            started = dumps(
                {"type": "node_started", "node_id": node_id, "worker_id": WORKER, "attempt": 0},
                separators=(",", ":"),
            )
            execute(
                EVENT_SQL,
                (execution_id, execution_id, str(new_id()), started, _utc_text(moment)),
            )
            execute("COMMIT")
            # Complete: settle the item if the fence still holds, append node_completed.
            execute("BEGIN IMMEDIATE")
            moment = now(UTC)
            if execute(COMPLETE_SQL, (item_id, fence)).rowcount != 1:
                execute("ROLLBACK")
                raise BenchmarkError(f"sqlite3: lost the fence of item {item_id}")
            completed = dumps(
                {
                    "type": "node_completed",
                    "node_id": node_id,
                    "output": {},
                    "state_patch": {},
                    "duration_ms": 0,
                },
                separators=(",", ":"),
            )
            execute(
                EVENT_SQL,
                (execution_id, execution_id, str(new_id()), completed, _utc_text(moment)),
            )
            execute("COMMIT")
            done += 1

    def verify(self) -> None:
        rows = dict(
            self.conn.execute("SELECT status, count(*) FROM work_items GROUP BY status").fetchall()
        )
        if rows != {"completed": self.count}:
            raise BenchmarkError(f"sqlite3: items by status {rows}, expected all completed")
        sequences = [
            row[0]
            for row in self.conn.execute(
                "SELECT sequence FROM events WHERE execution_id = ? ORDER BY sequence",
                (EXECUTION_ID,),
            )
        ]
        if sequences != list(range(1, 2 * self.count + 1)):
            raise BenchmarkError("sqlite3: event sequences are not 1…n")
        _check_file(self.path, self.synchronous, self.conn)

    def close(self) -> None:
        self.conn.close()


RAW_SCHEMA: Final = "CREATE TABLE rows (id INTEGER PRIMARY KEY, body TEXT NOT NULL)"
RAW_SQL: Final = "INSERT INTO rows (body) VALUES (?)"


class RawTrial:
    """(c): ``BEGIN IMMEDIATE; INSERT one ~200-byte row; COMMIT``, ``count`` times."""

    def __init__(self, directory: Path, synchronous: Sync, count: int) -> None:
        self.path = directory / "raw.db"
        self.synchronous = synchronous
        self.count = count
        self.conn = _connect(self.path, synchronous)
        self.conn.execute(RAW_SCHEMA)

    def run(self) -> int:
        execute = self.conn.execute
        row = (RAW_ROW,)
        for _ in range(self.count):
            execute("BEGIN IMMEDIATE")
            execute(RAW_SQL, row)
            execute("COMMIT")
        return self.count

    def verify(self) -> None:
        (rows, size) = self.conn.execute("SELECT count(*), min(length(body)) FROM rows").fetchone()
        if rows != self.count or size != len(RAW_ROW):
            raise BenchmarkError(f"raw: {rows} rows of {size} bytes, expected {self.count}")
        _check_file(self.path, self.synchronous, self.conn)

    def close(self) -> None:
        self.conn.close()


TRIALS: Final[dict[str, Callable[[Path, Sync, int], Trial]]] = {
    "store": StoreTrial,
    "sqlite3": Sqlite3Trial,
    "raw": RawTrial,
}


# ── measurement ────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class TrialResult:
    path: str
    synchronous: str
    round: int  # -1 for the calibration pilot
    count: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.count / self.seconds


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _trial(base: Path, path: str, synchronous: Sync, count: int, round_index: int) -> TrialResult:
    """Prepare, time, verify and delete one trial."""
    directory = Path(tempfile.mkdtemp(prefix=f"{path}-{synchronous.lower()}-", dir=base))
    try:
        trial = TRIALS[path](directory, synchronous, count)
        try:
            gc.collect()
            start = time.perf_counter()
            done = trial.run()
            seconds = time.perf_counter() - start
            if done != count:
                raise BenchmarkError(f"{path}: did {done} of {count}")
            trial.verify()
        finally:
            trial.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return TrialResult(path, synchronous, round_index, count, seconds)


def _calibrate(base: Path, settings: Settings) -> tuple[dict[tuple[str, Sync], int], list[Any]]:
    """N per (path, setting) for trials of about ``trial_seconds``, from pilot trials (which
    also warm up the imports, the page cache and SQLite's statement cache). A pilot shorter
    than a quarter of a trial is run again, larger, so that N is not set by a blip."""
    pilots: list[TrialResult] = []
    counts: dict[tuple[str, Sync], int] = {}
    for synchronous in SYNCS:
        for path in PATHS:
            count = settings.pilot_transactions if path == "raw" else settings.pilot_items
            while True:
                result = _trial(base, path, synchronous, count, -1)
                pilots.append(result)
                _progress(
                    f"pilot {path:>7} {synchronous:<6} {count:>7,} in {result.seconds:.2f} s: "
                    f"{result.rate:>9,.0f}/s"
                )
                if result.seconds >= settings.trial_seconds / 4 or count >= settings.max_count:
                    break
                count = min(settings.max_count, round(result.rate * settings.trial_seconds / 3))
            counts[(path, synchronous)] = max(
                settings.min_count,
                min(settings.max_count, round(result.rate * settings.trial_seconds)),
            )
    return counts, [asdict(p) | {"rate": p.rate} for p in pilots]


@dataclass(frozen=True)
class Summary:
    path: str
    synchronous: str
    count: int  # items, or transactions for (c)
    trials: int
    median_rate: float  # items/s, or transactions/s for (c)
    min_rate: float
    max_rate: float
    median_seconds: float

    @property
    def items_per_second(self) -> float:
        """Items per second: for (c), two transactions make an item."""
        return self.median_rate / 2 if self.path == "raw" else self.median_rate


def _summaries(results: Sequence[TrialResult]) -> list[Summary]:
    summaries = []
    for synchronous in SYNCS:
        for path in PATHS:
            mine = [r for r in results if (r.path, r.synchronous) == (path, synchronous)]
            rates = [r.rate for r in mine]
            summaries.append(
                Summary(
                    path=path,
                    synchronous=synchronous,
                    count=mine[0].count,
                    trials=len(mine),
                    median_rate=statistics.median(rates),
                    min_rate=min(rates),
                    max_rate=max(rates),
                    median_seconds=statistics.median(r.seconds for r in mine),
                )
            )
    return summaries


# ── machine ────────────────────────────────────────────────────────────────────────────


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _filesystem(directory: Path) -> dict[str, str | None]:
    """The mount holding ``directory`` (the longest mount point that contains it), from
    ``/proc/mounts``: device, filesystem type, mount point and options."""
    target = directory.resolve()
    best: dict[str, str | None] = {
        "device": None,
        "type": None,
        "mount_point": None,
        "options": None,
    }
    best_length = -1
    try:
        with open("/proc/mounts", encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return best
    for line in lines:
        parts = line.split()
        if len(parts) < 4:
            continue
        device, mount_point, kind, options = parts[:4]
        mount_point = mount_point.replace("\\040", " ")
        mount = Path(mount_point)
        if (target == mount or mount in target.parents) and len(mount_point) >= best_length:
            best_length = len(mount_point)
            best = {"device": device, "type": kind, "mount_point": mount_point, "options": options}
    return best


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _machine(base: Path) -> dict[str, Any]:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cores": os.cpu_count(),
        "usable_cores": affinity,
        "cpu": _cpu_model(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "sqlite": sqlite3.sqlite_version,
        "sqlite_utils": _version("sqlite-utils"),
        "directory": str(base),
        "filesystem": _filesystem(base),
        "load_average_at_start": list(load) if load is not None else None,
    }


# ── run ────────────────────────────────────────────────────────────────────────────────


@dataclass
class Report:
    settings: Settings
    started: str
    finished: str
    machine: dict[str, Any]
    counts: dict[str, int]  # "path/SYNC" → N per trial
    pilots: list[Any]
    results: list[TrialResult] = field(default_factory=list)
    summaries: list[Summary] = field(default_factory=list)


def run(settings: Settings, directory: Path | None = None) -> Report:
    """Calibrate, then time every configuration round-robin (see the module doc)."""
    started = datetime.now(UTC).isoformat(timespec="seconds")
    base = Path(tempfile.mkdtemp(prefix="charter-store-throughput-", dir=directory))
    try:
        machine = _machine(base)
        fs = machine["filesystem"]
        _progress(f"files under {base} ({fs['type']} on {fs['device']} at {fs['mount_point']})")
        counts, pilots = _calibrate(base, settings)
        configurations = [(path, synchronous) for synchronous in SYNCS for path in PATHS]
        results: list[TrialResult] = []
        for round_index in range(settings.rounds):
            shift = round_index % len(configurations)
            for path, synchronous in configurations[shift:] + configurations[:shift]:
                count = counts[(path, synchronous)]
                result = _trial(base, path, synchronous, count, round_index)
                results.append(result)
                _progress(
                    f"round {round_index + 1}/{settings.rounds} {path:>7} {synchronous:<6} "
                    f"{count:>7,} in {result.seconds:.2f} s: {result.rate:>9,.0f}/s"
                )
    finally:
        shutil.rmtree(base, ignore_errors=True)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    machine["load_average_at_end"] = list(load) if load is not None else None
    return Report(
        settings=settings,
        started=started,
        finished=datetime.now(UTC).isoformat(timespec="seconds"),
        machine=machine,
        counts={f"{path}/{sync}": count for (path, sync), count in counts.items()},
        pilots=pilots,
        results=results,
        summaries=_summaries(results),
    )


# ── report ─────────────────────────────────────────────────────────────────────────────


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def _pct(value: float) -> str:
    return f"{value * 100:.0f}%"


@dataclass(frozen=True)
class Ratios:
    synchronous: str
    store_over_baseline: float  # a / b
    baseline_over_raw: float  # b / (c ÷ 2)
    store_over_raw: float  # a / (c ÷ 2)
    paired_store_over_baseline: tuple[float, float, float]  # min, median, max of a_i / b_i


def ratios(report: Report) -> list[Ratios]:
    by_key = {(s.path, s.synchronous): s for s in report.summaries}
    result = []
    for synchronous in SYNCS:
        a = by_key[("store", synchronous)].items_per_second
        b = by_key[("sqlite3", synchronous)].items_per_second
        c = by_key[("raw", synchronous)].items_per_second
        # The same round's (a) and (b) ran minutes apart at most: their ratio per round
        # shows how much of the spread is drift.
        per_round: dict[int, dict[str, float]] = {}
        for r in report.results:
            if r.synchronous == synchronous and r.path in ("store", "sqlite3"):
                per_round.setdefault(r.round, {})[r.path] = r.rate
        paired = [v["store"] / v["sqlite3"] for v in per_round.values() if len(v) == 2]
        result.append(
            Ratios(
                synchronous,
                a / b,
                b / c,
                a / c,
                (min(paired), statistics.median(paired), max(paired)),
            )
        )
    return result


def render_markdown(report: Report) -> str:
    machine = report.machine
    usable = machine.get("usable_cores")
    cores = f"{machine['cores']} cores"
    if usable is not None and usable != machine["cores"]:
        cores += f" ({usable} usable)"
    fs = machine["filesystem"]
    load_start = machine.get("load_average_at_start")
    load_end = machine.get("load_average_at_end")
    load = ""
    if load_start is not None and load_end is not None:
        load = f" Load average (1 min) {load_start[0]:.2f} at start, {load_end[0]:.2f} at end."
    settings = report.settings
    lines = [
        "### Store throughput run",
        "",
        f"Run {report.started} → {report.finished} (UTC), {settings.name} mode. "
        f"Machine: {cores}, {machine['cpu']}; {machine['python']} on {machine['platform']}; "
        f"SQLite {machine['sqlite']}, sqlite-utils {machine['sqlite_utils']}.{load}",
        "",
        f"Files: under `{machine['directory']}`, on {fs['type']} ({fs['device']} mounted at "
        f"`{fs['mount_point']}`, options `{fs['options']}`). {settings.rounds} trials per "
        "configuration, round-robin; N per trial: "
        + "; ".join(
            f"{sync}: (a) {report.counts[f'store/{sync}']:,} items, "
            f"(b) {report.counts[f'sqlite3/{sync}']:,} items, "
            f"(c) {report.counts[f'raw/{sync}']:,} transactions"
            for sync in SYNCS
        )
        + ".",
        "",
        "#### Throughput (median of the trials; slowest–fastest trial in brackets)",
        "",
        "| synchronous | (a) store: items/s | (b) sqlite3 loop: items/s "
        "| (c) raw: transactions/s | (c) as items/s (÷ 2) | µs per item (a) / (b) / (c) |",
        "|:---|---:|---:|---:|---:|---:|",
    ]
    by_key = {(s.path, s.synchronous): s for s in report.summaries}
    for sync in SYNCS:
        a, b, c = (by_key[(path, sync)] for path in PATHS)
        micro = " / ".join(f"{1e6 / s.items_per_second:,.0f}" for s in (a, b, c))
        lines.append(
            f"| {sync} "
            f"| {_rate(a.median_rate)} [{_rate(a.min_rate)}–{_rate(a.max_rate)}] "
            f"| {_rate(b.median_rate)} [{_rate(b.min_rate)}–{_rate(b.max_rate)}] "
            f"| {_rate(c.median_rate)} [{_rate(c.min_rate)}–{_rate(c.max_rate)}] "
            f"| {_rate(c.items_per_second)} | {micro} |"
        )
    lines += [
        "",
        "#### Ratios of medians (items/s; (c) counted as two transactions per item)",
        "",
        "| synchronous | a / b | b / c | a / c | a / b per round (min–median–max) |",
        "|:---|---:|---:|---:|---:|",
    ]
    all_ratios = ratios(report)
    for r in all_ratios:
        low, mid, high = r.paired_store_over_baseline
        lines.append(
            f"| {r.synchronous} | {_pct(r.store_over_baseline)} | {_pct(r.baseline_over_raw)} "
            f"| {_pct(r.store_over_raw)} | {_pct(low)}–{_pct(mid)}–{_pct(high)} |"
        )
    lines += ["", "#### Target (reported, not asserted)", "", "| target | measured | met |"]
    lines.append("|:---|:---|:---:|")
    for r in all_ratios:
        met = r.store_over_baseline >= TARGET_STORE_OVER_BASELINE
        lines.append(
            f"| (a) ≥ {_pct(TARGET_STORE_OVER_BASELINE)} of (b), synchronous {r.synchronous} "
            f"| {_pct(r.store_over_baseline)} | {'yes' if met else '**no**'} |"
        )
    return "\n".join(lines) + "\n"


def report_json(report: Report) -> dict[str, Any]:
    return {
        "benchmark": "store_throughput",
        "settings": asdict(report.settings),
        "started": report.started,
        "finished": report.finished,
        "machine": report.machine,
        "counts": report.counts,
        "pilots": report.pilots,
        "trials": [asdict(r) | {"rate": r.rate} for r in report.results],
        "summaries": [
            asdict(s) | {"items_per_second": s.items_per_second} for s in report.summaries
        ],
        "ratios": [asdict(r) for r in ratios(report)],
        "target_store_over_baseline": TARGET_STORE_OVER_BASELINE,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.store_throughput",
        description="Claim → commit throughput of the SQLite store, a hand-written sqlite3 "
        "loop and raw transactions, under synchronous NORMAL and FULL.",
    )
    parser.add_argument("--quick", action="store_true", help="fewer, shorter trials (a smoke run)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    parser.add_argument(
        "--dir",
        type=Path,
        metavar="DIR",
        help="where to make the temporary files (default: the system temporary directory)",
    )
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    try:
        report = run(settings, args.dir)
    except BenchmarkError as error:
        print(f"store_throughput: {error}", file=sys.stderr)
        return 1
    sys.stdout.write(render_markdown(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report_json(report), indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
