"""Audit throughput: `verify_log` and `replay_run` over a 1,000,000-event SQLite log, beside a
hand-written verifying loop and the limits of reading and hashing, with each one's memory.

Run with ``python -m bench.audit_throughput [--quick] [--rounds R] [--json PATH] [--dir DIR]
[--build auto|worker|copy] [--rebuild]``; a Markdown report goes to stdout, progress to
stderr. With ``--profile PATH`` it instead reports where one path's time goes (below). This
docstring is the description of what is measured.

**The logs.** Real Charter logs, written by the real worker: the 1,000-node chain workflow
of `bench.e2e_throughput` (``workflow_document("chain", 1000)``: no-op, idempotent tool
nodes) under a tenant ``bench`` whose policy set blocks ``shell.*`` and ``db.drop_*`` (so
every gate decision names a tenant policy set by digest, and replay fetches it), each run
started as ``charter run`` does and driven to completion with `charter.worker.drive`. A run
is 5 events per node (``node_scheduled``, ``node_started``, ``node_gated``,
``usage_recorded``, ``node_completed``) plus ``workflow_started`` and
``workflow_completed``: 5,002 events. Two logs, each its own SQLite file: 20 runs (100,040
events) and 200 runs (1,000,400 events); the large one starts as a copy of the small one.

Building takes minutes, so the logs are cached (``<dir>/charter-audit-throughput-cache``,
``--dir`` defaulting to the system temporary directory; ``--rebuild`` makes them again). With
``--build worker`` every run is the worker's. With ``--build copy`` the worker makes 5 seed
runs and the rest are SQL-level copies of them under new run ids: the execution, ledger,
snapshot and approval rows copied, every event given a new event id and its chain recomputed
(`charter.adapters.chain.event_hash`, the same timestamps and kinds); work items are not
copied (the audit never reads them). ``--build auto`` (the default) times the seed runs and
goes on with the worker if the whole build would take at most ``--build-budget`` seconds
(600), else copies. Either way every built log is verified (`verify_log`) and its first and
last runs replayed (`replay_run`) before it is cached. The report says which was done.

**Paths**, each trial in a fresh subprocess (so that each one's peak RSS is its own) that
opens the log, then times one pass over all of it:

* **verify**: Charter, ``verify_log(SqliteStore(log))``: every run (``list_executions``),
  each read ``PAGE`` (2,000) events at a time by `Store.read_chain` and checked by
  `ChainVerifier`. The report must be ``ok`` with every event counted.
* **chain**: Charter's reading only: the same pages of `Store.read_chain`, nothing checked
  (the part of verify that is reading; the rest is `ChainVerifier.feed`).
* **hand**: the least Python can spend on the same check: `sqlite3` (read-only), the same
  ``SELECT sequence, event_id, created_at, kind_json, prev_hash, hash`` ordered by
  ``(execution_id, sequence)``, paged the same way (per run, 2,000 rows, keyset on
  ``sequence``); per row the envelope built by one f-string with the C string encoder
  (`json.encoder.encode_basestring`, what `envelope_text`'s encoder calls) and the run's
  quoted id made once per run; ``sha256(…).hexdigest()`` compared with the stored hash, the
  ``prev_hash`` with the previous row's hash, the sequence with the previous plus one.
  Every event must check out, which also proves the hand-built bytes equal
  `envelope_text`'s (a single differing byte would fail every hash).
* **read**: the physical limit of reading: the same paged ``SELECT``, rows fetched and
  counted, nothing else.
* **hash**: the physical limit of hashing: per page (fetched, untimed) the envelopes built
  as in *hand* (timed on their own: reported as the envelope rate) and then
  ``sha256(envelope).hexdigest()`` over the pre-built bytes (timed: the hash rate). The
  bytes hashed are exactly the log's.
* **replay**: Charter, ``replay_run(store, run)`` for every run of the log (each reads its
  run twice and recomputes every gate decision and settlement): events/s over the whole
  log, and decisions/s (gate decisions plus settlements). Every run must replay ``ok``.

**Timing.** A warm-up pass (the *read* path, untimed) over each log first brings its file
into the page cache. Then ``--rounds`` rounds (default 5): each runs every (log, path) once
(*replay*, minutes per pass on the large log, only in the first 3), the order rotated every
round so that drift in the machine's load weighs on every column alike. The report gives
medians, the slowest–fastest range, and ratios of medians; verify / hand is also given per
round. Garbage collection stays on, after a collection before the timed pass. ``--quick``:
chains of 200 nodes, logs of 10,000 and 50,000 events, 2 rounds.

**Memory.** The child's RSS just before the timed pass (after imports and opening the log)
and its peak RSS during the pass: Linux's ``VmHWM``, reset just before the pass
(``/proc/self/clear_refs``); the growth is the difference. Its peak over its whole life is
reported too. ``getrusage(RUSAGE_SELF).ru_maxrss`` is recorded but not relied on: in a child
made by fork + exec it also counts the parent's RSS at the fork (the benchmark process, once
it has built the logs, is bigger than any pass), so it can read the same in every child.
Flat in log length means the 1,000,000-event figure close to the 100,000-event one. After
the rounds, one extra untimed trial of *verify* and *hand* per log runs under `tracemalloc`
(``--no-tracemalloc`` skips it) for the peak of Python allocations (replay under
`tracemalloc` would take about 20 minutes on the large log).

**Profile.** ``--profile verify|chain|hand|replay [--profile-log LABEL]`` runs one pass
in-process on a cached log (the smallest by default) under `cProfile` and prints the top
functions by self and cumulative time; for *verify* and *chain* it also times each step of
the check alone, without a profiler, over the log's first 100,000 events.
"""

from __future__ import annotations

import abc
import argparse
import cProfile
import gc
import hashlib
import json
import math
import os
import pstats
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any, Final

import charter
from bench.e2e_throughput import workflow_document
from bench.store_throughput import BenchmarkError, _machine
from charter.adapters.chain import GENESIS, ChainVerifier, envelope_text, event_hash
from charter.adapters.executors import default_registry
from charter.adapters.sqlite import SqliteStore
from charter.audit.replay import PAGE, execution_ids, replay_run, verify_log
from charter.bootstrap import build_worker
from charter.core.policy import PolicySet
from charter.core.records import ChainLink, Tenant
from charter.core.workflow import WorkflowDef, parse_workflow
from charter.worker import drive, start_run

__all__ = ["main", "run"]

PATHS: Final = ("verify", "chain", "hand", "read", "hash", "replay")
LABELS: Final = {
    "verify": "(a) Charter `verify_log`",
    "chain": "(a′) Charter `read_chain` pages only",
    "hand": "(b) hand-written sqlite3 + sha256 loop",
    "read": "(c1) read rows only",
    "hash": "(c2) sha256 over pre-built envelopes only",
    "replay": "(d) Charter `replay_run`, every run",
}
#: Paths whose memory is also traced with `tracemalloc` (one extra, untimed trial per log).
TRACED: Final = ("verify", "hand")

#: The issue's target, reported against and never asserted.
TARGET_VERIFY_EVENTS_PER_SECOND: Final = 100_000
#: "Flat" memory, as reported: the large log's peak RSS at most this much above the small's.
FLAT_TOLERANCE: Final = 0.10

TENANT: Final = "bench"
#: The tenant's policy set: nothing the workflow calls is blocked, but every gate names it.
TENANT_POLICY: Final = {"blocked_tools": ["shell.*", "db.drop_*"]}
WORKER: Final = "bench-worker"
#: Bump when the way logs are built changes: older cached logs are then rebuilt.
CACHE_FORMAT: Final = 1
CACHE_NAME: Final = "charter-audit-throughput-cache"
SEED_RUNS: Final = 5
#: Tables of per-run rows a copied run gets (work items and effects are not copied).
COPIED_TABLES: Final = ("executions", "ledger", "snapshots", "approvals")

SELECT_PAGE: Final = (
    "SELECT sequence, event_id, created_at, kind_json, prev_hash, hash FROM events "
    "WHERE execution_id = ? AND sequence > ? ORDER BY sequence LIMIT ?"
)
SELECT_RUNS: Final = "SELECT execution_id FROM executions ORDER BY ordinal"


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ── settings ───────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class LogSpec:
    """One log to build: ``runs`` runs of a chain of ``nodes`` nodes."""

    label: str
    nodes: int
    runs: int

    @property
    def events(self) -> int:
        return self.runs * events_per_run(self.nodes)

    @property
    def file_name(self) -> str:
        return f"chain{self.nodes}-runs{self.runs}-v{CACHE_FORMAT}.db"


def events_per_run(nodes: int) -> int:
    """A chain run's events: five per node, ``workflow_started`` and ``workflow_completed``."""
    return 5 * nodes + 2


def spec_for(label: str, nodes: int, target_events: int) -> LogSpec:
    return LogSpec(label, nodes, math.ceil(target_events / events_per_run(nodes)))


@dataclass(frozen=True)
class Settings:
    """How much to build and measure."""

    name: str
    nodes: int
    sizes: tuple[tuple[str, int], ...]  # (label, target events), smallest first
    rounds: int
    replay_rounds: int  # replay (minutes per pass on the large log) runs in the first ones

    def specs(self) -> list[LogSpec]:
        return [spec_for(label, self.nodes, events) for label, events in self.sizes]


FULL = Settings("full", 1000, (("100k", 100_000), ("1M", 1_000_000)), 5, 3)
QUICK = Settings("quick", 200, (("10k", 10_000), ("50k", 50_000)), 2, 2)


# ── building the logs ──────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class LogInfo:
    """A built (or cached) log."""

    label: str
    path: str
    nodes: int
    runs: int
    events: int
    worker_runs: int  # runs the worker made (the rest are SQL-level copies of the seed runs)
    copied_runs: int
    file_bytes: int
    build_seconds: float  # this log's share of building (excluding what it was copied from)
    worker_seconds_per_run: float
    built_at: str
    cached: bool  # reused from an earlier invocation


def _meta_path(path: Path) -> Path:
    return path.with_suffix(".json")


def _file_bytes(path: Path) -> int:
    return sum(
        p.stat().st_size for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()
    )


def _load_cached(spec: LogSpec, path: Path, build: str) -> LogInfo | None:
    meta = _meta_path(path)
    if not path.exists() or not meta.exists():
        return None
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if data.get("format") != CACHE_FORMAT or data.get("events") != spec.events:
        return None
    if build == "worker" and data.get("copied_runs") != 0:
        return None
    if build == "copy" and data.get("copied_runs") == 0 and spec.runs > SEED_RUNS:
        return None
    check = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        (events,) = check.execute("SELECT count(*) FROM events").fetchone()
        (runs,) = check.execute("SELECT count(*) FROM executions").fetchone()
    finally:
        check.close()
    if events != spec.events or runs != spec.runs:
        return None
    given = {"label": spec.label, "path": str(path), "cached": True}
    if any(name not in data for name in LogInfo.__dataclass_fields__ if name not in given):
        return None
    fields = {name: data[name] for name in LogInfo.__dataclass_fields__ if name not in given}
    return LogInfo(**(fields | given))


class Builder:
    """Builds the logs in order, each larger one starting as a copy of the one before."""

    def __init__(self, settings: Settings, cache: Path, build: str, budget: float) -> None:
        self.settings = settings
        self.cache = cache
        self.build = build
        self.budget = budget
        self.raw = workflow_document("chain", settings.nodes)
        self.workflow: WorkflowDef = parse_workflow(self.raw, "bench chain")
        self.decided: str | None = None if build == "auto" else build
        self.worker_times: list[float] = []

    def logs(self, rebuild: bool) -> list[LogInfo]:
        infos: list[LogInfo] = []
        previous: LogInfo | None = None
        for spec in self.settings.specs():
            path = self.cache / spec.file_name
            info = None if rebuild else _load_cached(spec, path, self.build)
            if info is None:
                info = self._build(spec, path, previous)
            else:
                _progress(
                    f"log {spec.label}: cached {path} ({info.events:,} events, "
                    f"{info.worker_runs} worker runs, {info.copied_runs} copies)"
                )
            infos.append(info)
            previous = info
        return infos

    # -- one log --

    def _build(self, spec: LogSpec, path: Path, previous: LogInfo | None) -> LogInfo:
        for stale in (path, _meta_path(path), Path(f"{path}-wal"), Path(f"{path}-shm")):
            stale.unlink(missing_ok=True)
        start = time.perf_counter()
        worker_runs = copied_runs = 0
        if previous is not None and previous.runs <= spec.runs:
            _progress(f"log {spec.label}: starting from a copy of log {previous.label}")
            source = sqlite3.connect(f"file:{previous.path}?mode=ro", uri=True)
            target = sqlite3.connect(str(path))
            try:
                source.backup(target)
            finally:
                source.close()
                target.close()
            worker_runs, copied_runs = previous.worker_runs, previous.copied_runs
        store = SqliteStore(path, synchronous="OFF")
        try:
            if previous is None:
                now = store.clock.now()
                store.put_tenant(
                    Tenant(
                        tenant_id=TENANT,
                        name="bench",
                        policy=PolicySet.from_dict(TENANT_POLICY, "bench tenant policy"),
                        created_at=now,
                        updated_at=now,
                    )
                )
            done = worker_runs + copied_runs
            # The worker makes the seed runs, and every run while `auto` has not decided
            # (it decides once it has timed SEED_RUNS of them) or once it chose the worker.
            while done < spec.runs and (self.decided != "copy" or done < SEED_RUNS):
                self._worker_run(store, spec, done)
                worker_runs += 1
                done += 1
                self._decide(done)
        finally:
            store.close()
        if done < spec.runs:
            copied_runs += self._copy_runs(path, spec, done)
        seconds = time.perf_counter() - start
        self._check_built(spec, path)
        conn = sqlite3.connect(str(path))
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
        info = LogInfo(
            label=spec.label,
            path=str(path),
            nodes=spec.nodes,
            runs=spec.runs,
            events=spec.events,
            worker_runs=worker_runs,
            copied_runs=copied_runs,
            file_bytes=_file_bytes(path),
            build_seconds=seconds,
            worker_seconds_per_run=(
                statistics.median(self.worker_times) if self.worker_times else 0.0
            ),
            built_at=datetime.now(UTC).isoformat(timespec="seconds"),
            cached=False,
        )
        meta = asdict(info) | {"format": CACHE_FORMAT}
        _meta_path(path).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        _progress(
            f"log {spec.label}: built {info.events:,} events in {seconds:.0f} s "
            f"({worker_runs} worker runs, {copied_runs} copies), {info.file_bytes / 1e6:,.0f} MB"
        )
        return info

    def _worker_run(self, store: SqliteStore, spec: LogSpec, index: int) -> None:
        started = time.perf_counter()
        run_id = f"run-{index:05d}"
        start_run(store, self.workflow, execution_id=run_id, tenant_id=TENANT)
        worker = build_worker(store, executors=default_registry(), worker_id=WORKER)
        outcome = drive(worker, run_id)
        if outcome.status != "completed":
            raise BenchmarkError(f"build: run {run_id} ended {outcome}")
        execution = store.get_execution(run_id)
        expected = events_per_run(spec.nodes)
        if execution is None or execution.last_sequence != expected:
            found = None if execution is None else execution.last_sequence
            raise BenchmarkError(f"build: run {run_id} has {found} events, expected {expected}")
        seconds = time.perf_counter() - started
        self.worker_times.append(seconds)
        if index < 3 or (index + 1) % 10 == 0 or index + 1 == spec.runs:
            left = (spec.runs - index - 1) * statistics.median(self.worker_times)
            _progress(
                f"log {spec.label}: worker run {index + 1}/{spec.runs} in {seconds:.2f} s "
                f"(about {left / 60:.1f} min left for this log)"
            )

    def _decide(self, done: int) -> None:
        """With ``--build auto``, once SEED_RUNS worker runs are timed: the worker or copies
        for every run still to make (``done`` runs exist)."""
        if self.decided is not None or len(self.worker_times) < SEED_RUNS:
            return
        remaining = max(s.runs for s in self.settings.specs()) - done
        per_run = statistics.median(self.worker_times)
        projected = per_run * remaining
        self.decided = "worker" if projected <= self.budget else "copy"
        _progress(
            f"build: {per_run:.2f} s per worker run; the {remaining} runs still to make would "
            f"take about {projected / 60:.1f} min (budget {self.budget / 60:.1f} min): they "
            + ("are the worker's" if self.decided == "worker" else "are SQL-level copies")
        )

    def _copy_runs(self, path: Path, spec: LogSpec, done: int) -> int:
        """Copy the seed runs round-robin under new run ids until ``spec.runs`` runs."""
        conn = sqlite3.connect(str(path), isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous = OFF")
            columns = {
                table: [
                    row[1]
                    for row in conn.execute(f"PRAGMA table_info({table})")
                    if row[1] != "ordinal"
                ]
                for table in COPIED_TABLES
            }
            seeds = [f"run-{index:05d}" for index in range(SEED_RUNS)]
            copies = 0
            started = time.perf_counter()
            for index in range(done, spec.runs):
                source = seeds[index % len(seeds)]
                target = f"run-{index:05d}"
                conn.execute("BEGIN IMMEDIATE")
                for table, names in columns.items():
                    listed = ", ".join(names)
                    chosen = ", ".join("?" if name == "execution_id" else name for name in names)
                    conn.execute(
                        f"INSERT INTO {table} ({listed}) SELECT {chosen} FROM {table} "
                        "WHERE execution_id = ?",
                        (target, source),
                    )
                rows = []
                prev = GENESIS
                for sequence, created_at, kind_text in conn.execute(
                    "SELECT sequence, created_at, kind_json FROM events WHERE execution_id = ? "
                    "ORDER BY sequence",
                    (source,),
                ):
                    event_id = os.urandom(16).hex()  # as the store makes them
                    this = event_hash(
                        execution_id=target,
                        sequence=sequence,
                        event_id=event_id,
                        created_at=created_at,
                        kind_text=kind_text,
                        prev_hash=prev,
                    )
                    rows.append((target, sequence, event_id, kind_text, created_at, prev, this))
                    prev = this
                conn.executemany(
                    "INSERT INTO events (execution_id, sequence, event_id, kind_json, "
                    "created_at, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                conn.execute("COMMIT")
                copies += 1
                if (index + 1) % 20 == 0 or index + 1 == spec.runs:
                    rate = copies / (time.perf_counter() - started)
                    _progress(
                        f"log {spec.label}: copied run {index + 1}/{spec.runs} ({rate:.1f} runs/s)"
                    )
            return copies
        finally:
            conn.close()

    def _check_built(self, spec: LogSpec, path: Path) -> None:
        """Every run verifies; the first and the last replay without a divergence."""
        _progress(f"log {spec.label}: verifying every run and replaying the first and last")
        store = SqliteStore(path)
        try:
            report = verify_log(store)
            if not report.ok or report.events != spec.events or report.executions != spec.runs:
                raise BenchmarkError(
                    f"build: log {spec.label} does not verify: {report.executions} runs, "
                    f"{report.events} events, problems {list(report.problems)[:3]}"
                )
            for run_id in (f"run-{0:05d}", f"run-{spec.runs - 1:05d}"):
                replayed = replay_run(store, run_id)
                if not replayed.ok or replayed.gates != spec.nodes:
                    raise BenchmarkError(
                        f"build: {run_id} replays with {replayed.gates} gates, divergences "
                        f"{list(replayed.divergences)[:3]}"
                    )
        finally:
            store.close()


# ── the paths (each run in a child process) ────────────────────────────────────────────


def _status_kb(name: str) -> int | None:
    """A ``Vm…`` line of /proc/self/status in KiB (None where there is no /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(f"{name}:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _ru_maxrss_kb() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB on Linux


def _reset_peak() -> bool:
    """Reset this process's peak RSS (``VmHWM``) to its current RSS (Linux: writing 5 to
    /proc/self/clear_refs); whether it could."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


@dataclass
class Outcome:
    """What one pass did: events seen, seconds timed, and path-specific counts."""

    events: int
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)


def _open_ro(log: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{log}?mode=ro", uri=True)


class Pass(abc.ABC):
    """A path prepared on a log: ``run`` is the timed pass (each path defines it)."""

    def __init__(self, log: Path, page: int) -> None:
        self.log = log
        self.page = page

    @abc.abstractmethod
    def run(self) -> Outcome: ...

    def close(self) -> None:  # nothing to release unless a path holds something
        return


class VerifyPass(Pass):
    def __init__(self, log: Path, page: int) -> None:
        super().__init__(log, page)
        self.store = SqliteStore(log)

    def run(self) -> Outcome:
        start = time.perf_counter()
        report = verify_log(self.store, page=self.page)
        seconds = time.perf_counter() - start
        if not report.ok:
            raise BenchmarkError(f"verify: problems {list(report.problems)[:3]}")
        return Outcome(report.events, seconds, {"runs": report.executions})

    def close(self) -> None:
        self.store.close()


class ChainPass(VerifyPass):
    def run(self) -> Outcome:
        store, page = self.store, self.page
        start = time.perf_counter()
        events = runs = 0
        for execution_id in execution_ids(store):
            runs += 1
            after = 0
            while True:
                links = store.read_chain(execution_id, after=after, limit=page)
                events += len(links)
                if len(links) < page:
                    break
                after = links[-1].sequence
        return Outcome(events, time.perf_counter() - start, {"runs": runs})


class HandPass(Pass):
    def __init__(self, log: Path, page: int) -> None:
        super().__init__(log, page)
        self.conn = _open_ro(log)

    def run(self) -> Outcome:
        execute = self.conn.execute
        quote = encode_basestring
        sha256 = hashlib.sha256
        page = self.page
        events = problems = runs = 0
        start = time.perf_counter()
        run_ids = [row[0] for row in execute(SELECT_RUNS)]
        for execution_id in run_ids:
            runs += 1
            middle = f',"execution_id":{quote(execution_id)},"id":'
            head = GENESIS
            last = after = 0
            while True:
                rows = execute(SELECT_PAGE, (execution_id, after, page)).fetchall()
                for sequence, event_id, created_at, kind_text, prev_hash, hash_ in rows:
                    text = (
                        f'{{"created_at":{quote(created_at)}{middle}{quote(event_id)},'
                        f'"kind":{kind_text},"prev_hash":{quote(prev_hash)},'
                        f'"sequence":{sequence}}}'
                    )
                    if (
                        sequence != last + 1
                        or prev_hash != head
                        or sha256(text.encode()).hexdigest() != hash_
                    ):
                        problems += 1
                    head = hash_
                    last = sequence
                events += len(rows)
                if len(rows) < page:
                    break
                after = rows[-1][0]
        seconds = time.perf_counter() - start
        if problems:
            raise BenchmarkError(f"hand: {problems} events do not check out")
        return Outcome(events, seconds, {"runs": runs})

    def close(self) -> None:
        self.conn.close()


class ReadPass(HandPass):
    def run(self) -> Outcome:
        execute = self.conn.execute
        page = self.page
        events = runs = 0
        start = time.perf_counter()
        run_ids = [row[0] for row in execute(SELECT_RUNS)]
        for execution_id in run_ids:
            runs += 1
            after = 0
            while True:
                rows = execute(SELECT_PAGE, (execution_id, after, page)).fetchall()
                events += len(rows)
                if len(rows) < page:
                    break
                after = rows[-1][0]
        return Outcome(events, time.perf_counter() - start, {"runs": runs})


class HashPass(HandPass):
    def run(self) -> Outcome:
        execute = self.conn.execute
        quote = encode_basestring
        sha256 = hashlib.sha256
        page = self.page
        clock = time.perf_counter
        events = mismatches = 0
        hashing = building = 0.0
        run_ids = [row[0] for row in execute(SELECT_RUNS)]
        for execution_id in run_ids:
            middle = f',"execution_id":{quote(execution_id)},"id":'
            after = 0
            while True:
                rows = execute(SELECT_PAGE, (execution_id, after, page)).fetchall()
                stored = [row[5] for row in rows]
                t0 = clock()
                envelopes = [
                    f'{{"created_at":{quote(created_at)}{middle}{quote(event_id)},'
                    f'"kind":{kind_text},"prev_hash":{quote(prev_hash)},'
                    f'"sequence":{sequence}}}'.encode()
                    for sequence, event_id, created_at, kind_text, prev_hash, _ in rows
                ]
                t1 = clock()
                digests = [sha256(envelope).hexdigest() for envelope in envelopes]
                t2 = clock()
                building += t1 - t0
                hashing += t2 - t1
                mismatches += sum(1 for a, b in zip(digests, stored, strict=True) if a != b)
                events += len(rows)
                if len(rows) < page:
                    break
                after = rows[-1][0]
        if mismatches:
            raise BenchmarkError(f"hash: {mismatches} envelopes do not hash to the stored hash")
        return Outcome(events, hashing, {"envelope_seconds": building})


class ReplayPass(VerifyPass):
    def run(self) -> Outcome:
        store = self.store
        events = gates = settlements = runs = 0
        start = time.perf_counter()
        for execution_id in execution_ids(store):
            report = replay_run(store, execution_id, page=self.page)
            if not report.ok:
                raise BenchmarkError(
                    f"replay {execution_id}: divergences {list(report.divergences)[:3]}"
                )
            runs += 1
            events += report.events
            gates += report.gates
            settlements += report.settlements
        seconds = time.perf_counter() - start
        return Outcome(events, seconds, {"runs": runs, "gates": gates, "settlements": settlements})


PASSES: Final[dict[str, Callable[[Path, int], Pass]]] = {
    "verify": VerifyPass,
    "chain": ChainPass,
    "hand": HandPass,
    "read": ReadPass,
    "hash": HashPass,
    "replay": ReplayPass,
}


def child_main(path: str, log: Path, page: int, traced: bool) -> dict[str, Any]:
    """One pass in this (fresh) process: the child side of a trial."""
    prepared = PASSES[path](log, page)
    try:
        gc.collect()
        # getrusage's ru_maxrss would do on its own only in a process that was never bigger
        # than the pass makes it; a child made by fork + exec starts with the parent's peak,
        # so the peak is read from VmHWM (this process image's, from exec), reset here.
        peak_before = _status_kb("VmHWM")
        reset = _reset_peak()
        rss_start = _status_kb("VmRSS")
        if traced:
            tracemalloc.start()
        outcome = prepared.run()
        traced_peak = tracemalloc.get_traced_memory()[1] if traced else None
        if traced:
            tracemalloc.stop()
        peak_after = _status_kb("VmHWM")
        ru_maxrss = _ru_maxrss_kb()
    finally:
        prepared.close()
    if rss_start is None or peak_before is None or peak_after is None:  # no /proc
        rss_start = peak_before = peak_after = ru_maxrss
    return {
        "events": outcome.events,
        "seconds": outcome.seconds,
        "extra": outcome.extra,
        "rss_start_kb": rss_start,
        "pass_peak_kb": peak_after,
        "process_peak_kb": max(peak_before, peak_after),
        "peak_reset": reset,
        "ru_maxrss_kb": ru_maxrss,
        "traced_peak_bytes": traced_peak,
    }


# ── trials ─────────────────────────────────────────────────────────────────────────────

_ROOT: Final = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class TrialResult:
    log: str  # the log's label
    path: str
    round: int  # -1: warm-up; -2: the tracemalloc trial
    events: int
    seconds: float
    rss_start_kb: int  # RSS just before the pass (after imports and opening the log)
    pass_peak_kb: int  # peak RSS during the pass (VmHWM reset just before it)
    process_peak_kb: int  # peak RSS of the child since exec (imports, opening, the pass)
    peak_reset: bool  # whether VmHWM could be reset (else the pass peak is the process's)
    ru_maxrss_kb: int  # getrusage's, for the record (includes the forked parent's image)
    traced_peak_bytes: int | None
    extra: dict[str, float]

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def rss_growth_kb(self) -> int:
        return self.pass_peak_kb - self.rss_start_kb


def _trial(info: LogInfo, path: str, round_index: int, *, traced: bool = False) -> TrialResult:
    """One pass of ``path`` over ``info``'s log, in a fresh interpreter."""
    command = [
        sys.executable,
        "-m",
        "bench.audit_throughput",
        "--child",
        path,
        "--log",
        info.path,
    ]
    if traced:
        command.append("--traced")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), env.get("PYTHONPATH", "")) if p)
    done = subprocess.run(command, cwd=_ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchmarkError(
            f"{path} on log {info.label}: the child failed ({done.returncode}): "
            f"{done.stderr.strip()[-2000:]}"
        )
    data = json.loads(done.stdout)
    if data["events"] != info.events:
        raise BenchmarkError(
            f"{path} on log {info.label}: saw {data['events']:,} events, not {info.events:,}"
        )
    return TrialResult(
        log=info.label,
        path=path,
        round=round_index,
        events=data["events"],
        seconds=data["seconds"],
        rss_start_kb=data["rss_start_kb"],
        pass_peak_kb=data["pass_peak_kb"],
        process_peak_kb=data["process_peak_kb"],
        peak_reset=data["peak_reset"],
        ru_maxrss_kb=data["ru_maxrss_kb"],
        traced_peak_bytes=data["traced_peak_bytes"],
        extra=data["extra"],
    )


def _describe(result: TrialResult) -> str:
    text = (
        f"{result.path:>6} on {result.log:>4}: {result.events:,} events in "
        f"{result.seconds:.2f} s, {result.rate:>9,.0f}/s; RSS {result.rss_start_kb / 1024:.0f}"
        f" → peak {result.pass_peak_kb / 1024:.1f} MiB (process {result.process_peak_kb / 1024:.1f}"
        f", ru_maxrss {result.ru_maxrss_kb / 1024:.1f})"
    )
    if result.traced_peak_bytes is not None:
        text += f"; traced peak {result.traced_peak_bytes / 2**20:.1f} MiB"
    return text


@dataclass(frozen=True)
class Summary:
    log: str
    path: str
    events: int
    trials: int
    median_rate: float
    min_rate: float
    max_rate: float
    median_seconds: float
    median_rss_start_kb: float
    median_pass_peak_kb: float
    max_pass_peak_kb: int
    median_process_peak_kb: float
    median_ru_maxrss_kb: float
    median_rss_growth_kb: float
    traced_peak_bytes: int | None
    median_extra: dict[str, float]


def _summaries(results: Sequence[TrialResult], traced: Sequence[TrialResult]) -> list[Summary]:
    groups: dict[tuple[str, str], list[TrialResult]] = {}
    for r in results:
        groups.setdefault((r.log, r.path), []).append(r)
    traced_by = {(r.log, r.path): r.traced_peak_bytes for r in traced}
    summaries = []
    for (log, path), mine in groups.items():
        keys = {key for r in mine for key in r.extra}
        summaries.append(
            Summary(
                log=log,
                path=path,
                events=mine[0].events,
                trials=len(mine),
                median_rate=statistics.median(r.rate for r in mine),
                min_rate=min(r.rate for r in mine),
                max_rate=max(r.rate for r in mine),
                median_seconds=statistics.median(r.seconds for r in mine),
                median_rss_start_kb=statistics.median(r.rss_start_kb for r in mine),
                median_pass_peak_kb=statistics.median(r.pass_peak_kb for r in mine),
                max_pass_peak_kb=max(r.pass_peak_kb for r in mine),
                median_process_peak_kb=statistics.median(r.process_peak_kb for r in mine),
                median_ru_maxrss_kb=statistics.median(r.ru_maxrss_kb for r in mine),
                median_rss_growth_kb=statistics.median(r.rss_growth_kb for r in mine),
                traced_peak_bytes=traced_by.get((log, path)),
                median_extra={
                    key: statistics.median(r.extra.get(key, 0.0) for r in mine)
                    for key in sorted(keys)
                },
            )
        )
    return summaries


@dataclass
class Report:
    settings: Settings
    started: str
    finished: str
    machine: dict[str, Any]
    logs: list[LogInfo]
    build_mode: str
    warmups: list[TrialResult] = field(default_factory=list)
    results: list[TrialResult] = field(default_factory=list)
    traced: list[TrialResult] = field(default_factory=list)
    summaries: list[Summary] = field(default_factory=list)


def run(
    settings: Settings,
    directory: Path | None = None,
    *,
    build: str = "auto",
    budget: float = 600.0,
    rebuild: bool = False,
    trace: bool = True,
) -> Report:
    """Build (or reuse) the logs, warm up, then time every (log, path) round-robin."""
    started = datetime.now(UTC).isoformat(timespec="seconds")
    cache = Path(directory or tempfile.gettempdir()) / CACHE_NAME
    cache.mkdir(parents=True, exist_ok=True)
    machine = _machine(cache)
    fs = machine["filesystem"]
    _progress(f"logs under {cache} ({fs['type']} on {fs['device']} at {fs['mount_point']})")
    logs = Builder(settings, cache, build, budget).logs(rebuild)
    warmups = []
    for info in logs:
        warm = _trial(info, "read", -1)
        warmups.append(warm)
        _progress(f"warm-up {_describe(warm)}")
    configurations = [(info, path) for info in logs for path in PATHS]
    results: list[TrialResult] = []
    for round_index in range(settings.rounds):
        shift = round_index * len(configurations) // settings.rounds
        for info, path in configurations[shift:] + configurations[:shift]:
            if path == "replay" and round_index >= settings.replay_rounds:
                continue
            result = _trial(info, path, round_index)
            results.append(result)
            _progress(f"round {round_index + 1}/{settings.rounds} {_describe(result)}")
    traced: list[TrialResult] = []
    if trace:
        for info in logs:
            for path in TRACED:
                result = _trial(info, path, -2, traced=True)
                traced.append(result)
                _progress(f"tracemalloc {_describe(result)}")
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    machine["load_average_at_end"] = list(load) if load is not None else None
    return Report(
        settings=settings,
        started=started,
        finished=datetime.now(UTC).isoformat(timespec="seconds"),
        machine=machine,
        logs=logs,
        build_mode=build,
        warmups=warmups,
        results=results,
        traced=traced,
        summaries=_summaries(results, traced),
    )


# ── report ─────────────────────────────────────────────────────────────────────────────


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def _pct(value: float) -> str:
    return f"{value * 100:.0f}%"


def _mib(kb: float) -> str:
    return f"{kb / 1024:,.1f}"


@dataclass(frozen=True)
class Ratios:
    log: str
    verify_over_hand: float
    paired_verify_over_hand: tuple[float, float, float]  # min, median, max per round
    verify_over_target: float
    chain_over_read: float  # Charter's reading / raw reading
    hand_over_read: float
    hand_over_hash: float
    replay_over_verify: float


def _paired(results: Sequence[TrialResult], log: str, a: str, b: str) -> tuple[float, ...]:
    by_round: dict[int, dict[str, float]] = {}
    for r in results:
        if r.log == log and r.path in (a, b):
            by_round.setdefault(r.round, {})[r.path] = r.rate
    values = [v[a] / v[b] for v in by_round.values() if len(v) == 2]
    return (min(values), statistics.median(values), max(values))


def ratios(report: Report) -> list[Ratios]:
    by_key = {(s.log, s.path): s.median_rate for s in report.summaries}
    out = []
    for info in report.logs:
        rate = {path: by_key[(info.label, path)] for path in PATHS}
        low, mid, high = _paired(report.results, info.label, "verify", "hand")
        out.append(
            Ratios(
                log=info.label,
                verify_over_hand=rate["verify"] / rate["hand"],
                paired_verify_over_hand=(low, mid, high),
                verify_over_target=rate["verify"] / TARGET_VERIFY_EVENTS_PER_SECOND,
                chain_over_read=rate["chain"] / rate["read"],
                hand_over_read=rate["hand"] / rate["read"],
                hand_over_hash=rate["hand"] / rate["hash"],
                replay_over_verify=rate["replay"] / rate["verify"],
            )
        )
    return out


@dataclass(frozen=True)
class Flatness:
    path: str
    small: str
    large: str
    peak_ratio: float  # peak RSS during the pass, large / small
    growth_small_kb: float
    growth_large_kb: float
    traced_ratio: float | None


def flatness(report: Report) -> list[Flatness]:
    small, large = report.logs[0].label, report.logs[-1].label
    by_key = {(s.log, s.path): s for s in report.summaries}
    out = []
    for path in PATHS:
        a, b = by_key[(small, path)], by_key[(large, path)]
        traced = (
            b.traced_peak_bytes / a.traced_peak_bytes
            if a.traced_peak_bytes and b.traced_peak_bytes
            else None
        )
        out.append(
            Flatness(
                path,
                small,
                large,
                b.median_pass_peak_kb / a.median_pass_peak_kb,
                a.median_rss_growth_kb,
                b.median_rss_growth_kb,
                traced,
            )
        )
    return out


def _build_text(report: Report) -> list[str]:
    lines = [
        "| log | runs | events | worker-made runs | SQL-level copies | file | built (own runs) |",
        "|:---|---:|---:|---:|---:|---:|:---|",
    ]
    for info in report.logs:
        built = f"{info.build_seconds / 60:.1f} min"
        if info.cached:
            built = f"cached: built {info.built_at} in {built}"
        if info.worker_runs:
            built += f"; {info.worker_seconds_per_run:.2f} s per worker run"
        lines.append(
            f"| {info.label} | {info.runs:,} | {info.events:,} | {info.worker_runs:,} "
            f"| {info.copied_runs:,} | {info.file_bytes / 1e6:,.0f} MB | {built} |"
        )
    copies = any(info.copied_runs for info in report.logs)
    lines += [
        "",
        (
            f"Runs beyond the first {SEED_RUNS} are SQL-level copies of those worker-made seed "
            "runs under new run ids, with new event ids and recomputed chains (see the "
            "module doc)."
            if copies
            else "Every run was made by the worker (`start_run` + `drive`)."
        )
        + " Every log verified and its first and last runs replayed before it was cached.",
    ]
    return lines


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
    labels = [info.label for info in report.logs]
    by_key = {(s.log, s.path): s for s in report.summaries}
    lines = [
        "### Audit throughput run",
        "",
        f"Run {report.started} → {report.finished} (UTC), {settings.name} mode, "
        f"{settings.rounds} rounds (replay in {settings.replay_rounds}). Machine: {cores} "
        f"(nproc {usable}), {machine['cpu']}; "
        f"{machine['python']} on {machine['platform']}; SQLite {machine['sqlite']}.{load}",
        "",
        f"Logs: under `{machine['directory']}`, on {fs['type']} ({fs['device']} mounted at "
        f"`{fs['mount_point']}`). Chains of {settings.nodes:,} no-op tool nodes, "
        f"{events_per_run(settings.nodes):,} events per run; build mode `{report.build_mode}`.",
        "",
        *_build_text(report),
        "",
        "#### Events per second (median of the rounds; slowest–fastest in brackets)",
        "",
        "| path | "
        + " | ".join(f"{label} log: events/s" for label in labels)
        + " | "
        + " | ".join(f"µs/event ({label})" for label in labels)
        + " |",
        "|:---|" + "---:|" * (2 * len(labels)),
    ]
    for path in PATHS:
        cells = []
        for label in labels:
            s = by_key[(label, path)]
            cells.append(f"{_rate(s.median_rate)} [{_rate(s.min_rate)}–{_rate(s.max_rate)}]")
        micro = [f"{1e6 / by_key[(label, path)].median_rate:.2f}" for label in labels]
        lines.append(f"| {LABELS[path]} | " + " | ".join(cells + micro) + " |")
    lines.append("")
    for label in labels:
        h = by_key[(label, "hash")]
        r = by_key[(label, "replay")]
        envelope_rate = h.events / h.median_extra["envelope_seconds"]
        gates = r.median_extra["gates"]
        settlements = r.median_extra["settlements"]
        seconds = r.median_seconds
        lines.append(
            f"- {label} log: building the envelopes by hand (the untimed part of (c2)) runs at "
            f"{_rate(envelope_rate)} events/s ({1e6 / envelope_rate:.2f} µs/event); replay "
            f"recomputed {gates:,.0f} gate decisions and {settlements:,.0f} settlements: "
            f"{_rate(gates / seconds)} decisions/s, "
            f"{_rate((gates + settlements) / seconds)} recomputations/s."
        )
    lines += [
        "",
        "#### Ratios of medians",
        "",
        "| log | verify / hand loop | per round (min–median–max) | verify / 100,000 target "
        "| read_chain / raw read | hand / raw read | hand / hash only | replay / verify |",
        "|:---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    all_ratios = ratios(report)
    for q in all_ratios:
        low, mid, high = q.paired_verify_over_hand
        lines.append(
            f"| {q.log} | {_pct(q.verify_over_hand)} | {_pct(low)}–{_pct(mid)}–{_pct(high)} "
            f"| {_pct(q.verify_over_target)} | {_pct(q.chain_over_read)} "
            f"| {_pct(q.hand_over_read)} | {_pct(q.hand_over_hash)} "
            f"| {_pct(q.replay_over_verify)} |"
        )
    lines += [
        "",
        "#### Memory (MiB; median of the rounds; each trial a fresh process)",
        "",
        "| path | "
        + " | ".join(f"{label}: RSS at start → peak in the pass (growth)" for label in labels)
        + " | peak in the pass "
        + f"{labels[-1]} / {labels[0]} | process peak "
        + " / ".join(labels)
        + " | tracemalloc peak "
        + " / ".join(labels)
        + " |",
        "|:---|" + "---:|" * (len(labels) + 3),
    ]
    flat = {f.path: f for f in flatness(report)}
    for path in PATHS:
        cells = []
        for label in labels:
            s = by_key[(label, path)]
            cells.append(
                f"{_mib(s.median_rss_start_kb)} → {_mib(s.median_pass_peak_kb)} "
                f"(+{_mib(s.median_rss_growth_kb)})"
            )
        process = " / ".join(_mib(by_key[(label, path)].median_process_peak_kb) for label in labels)
        traced = [by_key[(label, path)].traced_peak_bytes for label in labels]
        traced_text = (
            " / ".join(f"{t / 2**20:.2f}" for t in traced if t is not None)
            if all(t is not None for t in traced)
            else "—"
        )
        lines.append(
            f"| {LABELS[path]} | "
            + " | ".join(cells)
            + f" | {flat[path].peak_ratio:.3f} | {process} | {traced_text} |"
        )
    reset = all(r.peak_reset for r in report.results)
    ru = [r.ru_maxrss_kb for r in report.results]
    # ru_maxrss agrees with VmHWM unless the forked parent was bigger than the child got.
    agrees = all(abs(r.ru_maxrss_kb - r.process_peak_kb) <= 1024 for r in report.results)
    lines += [
        "",
        "Start: RSS (`VmRSS`) after imports and opening the log, just before the timed pass. "
        + (
            "Peak in the pass: `VmHWM`, reset (`/proc/self/clear_refs`) just before the pass "
            "and read after it. "
            if reset
            else "Peak in the pass: `VmHWM` (it could not be reset: includes start-up). "
        )
        + "Process peak: `VmHWM` over the child's whole life (imports, opening, the pass). "
        f"`getrusage(RUSAGE_SELF).ru_maxrss` read {_mib(min(ru))}–{_mib(max(ru))} MiB"
        + (
            ", within 1 MiB of the process peak in every trial."
            if agrees
            else ": in a child made by fork + exec it also counts the parent's RSS at the "
            "fork (the benchmark process's size, larger after building the logs), so it is "
            "not used."
        ),
    ]
    lines += ["", "#### Targets (reported, not asserted)", "", "| target | measured | met |"]
    lines.append("|:---|:---|:---:|")
    largest = all_ratios[-1]
    verify_rate = by_key[(largest.log, "verify")].median_rate
    met = verify_rate >= TARGET_VERIFY_EVENTS_PER_SECOND
    lines.append(
        f"| verify ≥ {TARGET_VERIFY_EVENTS_PER_SECOND:,} events/s on the {largest.log} log "
        f"| {_rate(verify_rate)} events/s ({_pct(largest.verify_over_target)}) "
        f"| {'yes' if met else '**no**'} |"
    )
    v = flat["verify"]
    met = v.peak_ratio <= 1 + FLAT_TOLERANCE
    lines.append(
        f"| verify's memory flat in log length (peak RSS in the pass, {v.large} within "
        f"{_pct(FLAT_TOLERANCE)} of {v.small}) | {v.peak_ratio:.3f}× (growth "
        f"+{_mib(v.growth_small_kb)} → +{_mib(v.growth_large_kb)} MiB"
        + (f"; tracemalloc peak {v.traced_ratio:.2f}×" if v.traced_ratio is not None else "")
        + f") | {'yes' if met else '**no**'} |"
    )
    return "\n".join(lines) + "\n"


def report_json(report: Report) -> dict[str, Any]:
    def trial(r: TrialResult) -> dict[str, Any]:
        return asdict(r) | {"rate": r.rate}

    return {
        "benchmark": "audit_throughput",
        "settings": asdict(report.settings),
        "started": report.started,
        "finished": report.finished,
        "machine": report.machine,
        "build_mode": report.build_mode,
        "logs": [asdict(info) for info in report.logs],
        "warmups": [trial(r) for r in report.warmups],
        "trials": [trial(r) for r in report.results],
        "traced": [trial(r) for r in report.traced],
        "summaries": [asdict(s) for s in report.summaries],
        "ratios": [asdict(q) for q in ratios(report)],
        "flatness": [asdict(f) for f in flatness(report)],
        "target_verify_events_per_second": TARGET_VERIFY_EVENTS_PER_SECOND,
    }


# ── profile ────────────────────────────────────────────────────────────────────────────

_CHARTER: Final = Path(charter.__file__).parent


def _label(key: tuple[str, int, str]) -> str:
    filename, line, name = key
    if filename == "~":
        return name
    path = Path(filename)
    for base in (_CHARTER.parent, _CHARTER.parent.resolve()):
        if path.is_relative_to(base):
            return f"{path.relative_to(base)}:{line}({name})"
    return f"{path.name}:{line}({name})"


def _best(function: Callable[[], object], repeat: int = 5) -> float:
    """The fastest of ``repeat`` timed calls (after a collection)."""
    times = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def _steps(log: Path, sample: int) -> tuple[int, list[tuple[str, float]]]:
    """Each step of verifying, timed on its own over the first ``sample`` events (kept in
    memory): µs per event, no profiler."""
    store = SqliteStore(log)
    try:
        run_ids = list(execution_ids(store))
        links: list[ChainLink] = []
        pages: list[tuple[str, int]] = []
        for run_id in run_ids:
            after = 0
            while len(links) < sample:
                page = store.read_chain(run_id, after=after, limit=PAGE)
                if not page:
                    break
                links.extend(page)
                pages.append((run_id, after))
                after = page[-1].sequence
                if len(page) < PAGE:
                    break
            if len(links) >= sample:
                break
        conn = _open_ro(log)
        try:
            rows_by_run: dict[str, list[Any]] = {}
            for run_id, after in pages:
                rows_by_run.setdefault(run_id, []).extend(
                    conn.execute(SELECT_PAGE, (run_id, after, PAGE))
                )
            rows = [row for mine in rows_by_run.values() for row in mine]
        finally:
            conn.close()
        count = len(links)
        by_run: dict[str, list[ChainLink]] = {}
        for link in links:
            by_run.setdefault(link.execution_id, []).append(link)
        texts = [
            envelope_text(
                execution_id=k.execution_id,
                sequence=k.sequence,
                event_id=k.event_id,
                created_at=k.created_at,
                kind_text=k.kind_text,
                prev_hash=k.prev_hash,
            ).encode()
            for k in links
        ]

        def fetch_rows() -> None:
            c = _open_ro(log)
            for run_id, after in pages:
                c.execute(SELECT_PAGE, (run_id, after, PAGE)).fetchall()
            c.close()

        def read_chain() -> None:
            for run_id, after in pages:
                store.read_chain(run_id, after=after, limit=PAGE)

        first_run = run_ids[0]

        def make_links() -> None:
            for row in rows:
                ChainLink(
                    execution_id=first_run,
                    sequence=row[0],
                    event_id=row[1],
                    created_at=row[2],
                    kind_text=row[3],
                    prev_hash=row[4],
                    hash=row[5],
                )

        def feed() -> None:
            for run_id, mine in by_run.items():
                ChainVerifier(run_id).feed(mine)

        def hashes() -> None:
            for k in links:
                event_hash(
                    execution_id=k.execution_id,
                    sequence=k.sequence,
                    event_id=k.event_id,
                    created_at=k.created_at,
                    kind_text=k.kind_text,
                    prev_hash=k.prev_hash,
                )

        def envelopes() -> None:
            for k in links:
                envelope_text(
                    execution_id=k.execution_id,
                    sequence=k.sequence,
                    event_id=k.event_id,
                    created_at=k.created_at,
                    kind_text=k.kind_text,
                    prev_hash=k.prev_hash,
                )

        quote = encode_basestring

        def hand_envelopes() -> None:
            for k in links:
                f'{{"created_at":{quote(k.created_at)},"execution_id":{quote(k.execution_id)},'
                f'"id":{quote(k.event_id)},"kind":{k.kind_text},"prev_hash":{quote(k.prev_hash)},'
                f'"sequence":{k.sequence}}}'

        sha256 = hashlib.sha256

        def hand_check() -> None:
            problems = 0
            for run_id, mine in rows_by_run.items():
                middle = f',"execution_id":{quote(run_id)},"id":'
                head = GENESIS
                last = 0
                for sequence, event_id, created_at, kind_text, prev_hash, hash_ in mine:
                    text = (
                        f'{{"created_at":{quote(created_at)}{middle}{quote(event_id)},'
                        f'"kind":{kind_text},"prev_hash":{quote(prev_hash)},'
                        f'"sequence":{sequence}}}'
                    )
                    if (
                        sequence != last + 1
                        or prev_hash != head
                        or sha256(text.encode()).hexdigest() != hash_
                    ):
                        problems += 1
                    head = hash_
                    last = sequence
            if problems:
                raise BenchmarkError(f"profile: {problems} events do not check out")

        def sha_only() -> None:
            for text in texts:
                sha256(text).hexdigest()

        steps = [
            ("sqlite3 SELECT + fetchall of the same pages (rows only)", fetch_rows),
            ("`SqliteStore.read_chain` of the same pages (rows → `ChainLink`s)", read_chain),
            ("— of which `ChainLink(...)` construction (attrs, kw_only, frozen)", make_links),
            ("`ChainVerifier.feed` over the links in memory (the whole check)", feed),
            ("— `event_hash(**)` alone", hashes),
            ("— — `envelope_text(**)` alone (4 × `JSONEncoder.encode` + f-string)", envelopes),
            ("— — the same text by one f-string with `encode_basestring`", hand_envelopes),
            ("— — `sha256(bytes).hexdigest()` alone", sha_only),
            ("the hand loop's check over the same rows in memory (no objects)", hand_check),
        ]
        return count, [(name, _best(function) / count * 1e6) for name, function in steps]
    finally:
        store.close()


def profile_path(path: str, info: LogInfo, *, top: int = 20, sample: int = 100_000) -> str:
    """One pass of ``path`` over the log in this process under cProfile, as Markdown."""
    prepared = PASSES[path](Path(info.path), PAGE)
    try:
        prepared.run()  # warm
        gc.collect()
        profile = cProfile.Profile()
        start = time.perf_counter()
        profile.enable()
        outcome = prepared.run()
        profile.disable()
        wall = time.perf_counter() - start
    finally:
        prepared.close()
    stats = pstats.Stats(profile)
    raw: dict[tuple[str, int, str], Any] = stats.stats  # type: ignore[attr-defined]  # untyped
    total = stats.total_tt  # type: ignore[attr-defined]  # likewise
    lines = [
        f"### Profile: {LABELS[path]} over the {info.label} log ({outcome.events:,} events)",
        "",
        f"{outcome.events / wall:,.0f} events/s under cProfile ({wall:.2f} s wall, "
        f"{total:.2f} s profiled); cProfile adds a fixed cost per Python call, so shares of "
        "call-heavy code are inflated: the step timings below are without a profiler.",
    ]
    for title, index in (("self", 2), ("cumulative", 3)):
        order = sorted(raw.items(), key=lambda kv: -kv[1][index])
        lines += [
            "",
            f"Top {top} by {title} time:",
            "",
            "| function | calls | self s | self share | cumulative s | cumulative share |",
            "|:---|---:|---:|---:|---:|---:|",
        ]
        for key, (_cc, nc, tt, ct, _callers) in order[:top]:
            lines.append(
                f"| `{_label(key)}` | {nc:,} | {tt:.3f} | {_pct(tt / total)} | {ct:.3f} "
                f"| {_pct(ct / total)} |"
            )
    if path in ("verify", "chain"):
        count, steps = _steps(Path(info.path), sample)
        lines += [
            "",
            f"Steps of verifying, each timed alone over the first {count:,} events "
            "(best of 5, no profiler):",
            "",
            "| step | µs per event |",
            "|:---|---:|",
        ]
        lines += [f"| {name} | {micro:.3f} |" for name, micro in steps]
    return "\n".join(lines) + "\n"


# ── entry point ────────────────────────────────────────────────────────────────────────


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.audit_throughput",
        description="Events per second and memory of `charter audit` verify and replay over "
        "100,000- and 1,000,000-event SQLite logs, beside a hand-written loop and the limits "
        "of reading and hashing.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="10,000- and 50,000-event logs of 200-node runs"
    )
    parser.add_argument(
        "--rounds", type=int, help="rounds (default 5, replay in the first 3; quick 2)"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    parser.add_argument(
        "--dir",
        type=Path,
        metavar="DIR",
        help=f"where to keep the logs, in DIR/{CACHE_NAME} (default: the system temporary "
        "directory); they are reused by later runs",
    )
    parser.add_argument(
        "--build",
        choices=("auto", "worker", "copy"),
        default="auto",
        help="how runs beyond the seed runs are made (default auto: the worker if it fits "
        "the budget, else SQL-level copies)",
    )
    parser.add_argument(
        "--build-budget",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="with --build auto: the longest the worker may take for all runs (default 600)",
    )
    parser.add_argument("--rebuild", action="store_true", help="build the logs again")
    parser.add_argument("--no-tracemalloc", action="store_true", help="skip the tracemalloc trials")
    parser.add_argument(
        "--profile",
        choices=("verify", "replay", "chain", "hand"),
        help="instead of the benchmark, profile one path in-process on the smallest log "
        "(or --profile-log LABEL)",
    )
    parser.add_argument("--profile-log", metavar="LABEL", help="the log to profile on")
    parser.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--log", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        if args.log is None:
            parser.error("--child needs --log")
        try:
            data = child_main(args.child, args.log, PAGE, args.traced)
        except BenchmarkError as error:
            print(f"audit_throughput: {error}", file=sys.stderr)
            return 1
        sys.stdout.write(json.dumps(data) + "\n")
        return 0
    base = QUICK if args.quick else FULL
    rounds = args.rounds if args.rounds is not None else base.rounds
    if rounds < 1:
        parser.error("--rounds must be at least 1")
    settings = Settings(base.name, base.nodes, base.sizes, rounds, min(rounds, base.replay_rounds))
    try:
        if args.profile is not None:
            cache = Path(args.dir or tempfile.gettempdir()) / CACHE_NAME
            cache.mkdir(parents=True, exist_ok=True)
            logs = Builder(settings, cache, args.build, args.build_budget).logs(args.rebuild)
            chosen = [i for i in logs if args.profile_log in (None, i.label)]
            if not chosen:
                parser.error(f"--profile-log: one of {', '.join(i.label for i in logs)}")
            sys.stdout.write(profile_path(args.profile, chosen[0]))
            return 0
        report = run(
            settings,
            args.dir,
            build=args.build,
            budget=args.build_budget,
            rebuild=args.rebuild,
            trace=not args.no_tracemalloc,
        )
    except BenchmarkError as error:
        print(f"audit_throughput: {error}", file=sys.stderr)
        return 1
    sys.stdout.write(render_markdown(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report_json(report), indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
