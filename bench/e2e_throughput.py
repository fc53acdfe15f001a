"""End-to-end throughput: whole workflows of no-op tool nodes, Charter beside a hand-written
``sqlite3`` loop and DBOS Transact, all on SQLite files in WAL mode.

Run with ``python -m bench.e2e_throughput [--quick] [--rounds R] [--synchronous S]
[--json PATH] [--dir DIR]``; a Markdown report goes to stdout, progress to stderr. With
``--profile SHAPE`` it instead runs one Charter workflow under `cProfile` and reports where
the time goes. This docstring is the description of what is measured; the other
benchmarks' results and their reading are in ``docs/performance.md``.

Two shapes of ``--nodes`` (default 1,000) nodes, every node a no-op:

* **chain**: ``n0000 → n0001 → … → n0999``; each node can only start when the previous one
  has completed, so every node pays the full claim → run → commit → schedule round trip.
* **fanout**: ``n0000 → {n0001 … n0998} → n0999``: one start node, 998 independent nodes
  that become runnable together, and one join node that waits for all of them. (A join
  rather than 999 leaves, so that the run ends on one node that depends on every other, and
  so that the cost of checking a 998-way join is measured too.)

Contenders, each timed from "start the run" until the run has finished:

* **charter**: the workflow as a dict (``tools: {noop: {executor: noop, idempotent: true}}``,
  every node ``{type: tool, tool_ref: noop}``), parsed by `parse_workflow` and stored with
  `SqliteStore.put_workflow` under a `Tenant` beforehand (not timed). Timed, as
  ``charter run`` does it: `SqliteStore.create_execution` with a ``workflow_started`` event,
  a `Worker` with `default_registry()`, and `drive` until the run completes. One worker
  thread, so the fan-out's nodes run one after another: Charter's parallelism is more
  workers, and with SQLite every write is serialized anyway.
* **charter_effects**: the same with ``idempotent: false`` (the default): every call also
  reserves and records a durable effect (`Store.reserve_effect`, `Store.record_effect`).
* **sqlite3**: `bench.store_throughput.Sqlite3Trial`, imported unchanged: N items enqueued
  beforehand (not timed), then per item ``claim + node_started`` and ``complete +
  node_completed``, two transactions. It knows nothing of a graph, so it is the same for
  both shapes: it is the "how fast can Python move items through SQLite" ceiling, and the
  baseline of the ≥ 50 % target.
* **sqlite3_sched**: the same loop and SQL, plus the scheduling a workflow needs: the
  completing transaction also enqueues the successors whose predecessors are all done
  (in-degrees counted in memory) with a ``node_scheduled`` event each, and the run ends
  with ``workflow_completed``. The least a hand-written engine of this shape can do.
* **dbos**: DBOS Transact (``pip install -e '.[bench]'``) on a SQLite system database set to
  WAL beforehand: one workflow with one no-op ``@DBOS.step`` per node. The chain is a plain
  workflow calling the steps in order; the fan-out is an async workflow that awaits the
  start step, then ``asyncio.gather`` of the 998 middle steps (DBOS numbers steps when they
  are called, so that is deterministic), then the join step. ``DBOS()`` and
  ``DBOS.launch()`` are set-up (not timed); the workflow call is timed. If dbos is not
  installed its column is skipped.

``synchronous`` is applied to every contender alike (for DBOS through a SQLAlchemy
``connect`` listener). By default both settings are run: ``FULL``, the default of
`SqliteStore` and of SQLite (DBOS does not change it), where every commit waits for an
``fsync`` and the disk sets much of the pace; and ``NORMAL``, where it does not and the
software's own cost shows. ``--synchronous FULL`` or ``NORMAL`` runs one of them.

Timing: every trial uses a new file in its own directory under one base temporary
directory. One warm-up trial of every configuration (with 100 nodes) comes first and is not
counted. Then ``--rounds`` rounds (default 5) run every configuration once, the order
rotated every round, so that drift in the machine's load weighs on every column alike.
Each trial is checked afterwards (the run completed, every node completed once, the file is
in WAL mode). The report gives the median nodes per second and the range, and ratios of
medians; garbage collection stays on, after a collection before each trial.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import importlib
import importlib.metadata
import json
import os
import pstats
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Final, Literal, Protocol

import charter
from bench.store_throughput import (
    BASELINE_SCHEMA,
    CLAIM_SQL,
    COMPLETE_SQL,
    EVENT_SQL,
    LEASE_SECS,
    BenchmarkError,
    Sqlite3Trial,
    _check_file,
    _connect,
    _machine,
    _utc_text,
)
from charter.adapters.executors import default_registry
from charter.adapters.sqlite import SqliteStore
from charter.bootstrap import build_worker
from charter.core.events import NodeCompleted, WorkflowCompleted, WorkflowStarted
from charter.core.records import Execution, ExecutionStatus, Tenant, WorkflowDefinition
from charter.core.workflow import parse_workflow
from charter.worker import DEFAULT_BATCH, DEFAULT_CHAIN_LIMIT, RunOutcome, drive

__all__ = ["main", "run", "workflow_document"]

Shape = Literal["chain", "fanout"]
Sync = Literal["NORMAL", "FULL"]
SHAPES: Final[tuple[Shape, ...]] = ("chain", "fanout")
CONTENDERS: Final = ("charter", "charter_effects", "sqlite3", "sqlite3_sched", "dbos")
LABELS: Final = {
    "charter": "Charter",
    "charter_effects": "Charter, effects",
    "sqlite3": "sqlite3 loop",
    "sqlite3_sched": "sqlite3 + scheduling",
    "dbos": "DBOS",
}

#: Issue 14's targets, reported against and never asserted: Charter's share of the
#: hand-written loop by synchronous setting (≥ 50 % under FULL, ≥ 35 % under NORMAL), and
#: ≥ 3× DBOS in every shape and setting.
TARGETS_OVER_SQLITE3: Final = {"FULL": 0.50, "NORMAL": 0.35}
TARGET_OVER_SQLITE3: Final = TARGETS_OVER_SQLITE3["FULL"]
TARGET_OVER_DBOS: Final = 3.0

TENANT: Final = "bench"
RUN_ID: Final = "bench-run"
WORKER: Final = "bench-worker"
TOOL: Final = "noop"
WARMUP_NODES: Final = 100


# ── the workflows ──────────────────────────────────────────────────────────────────────


def _node(index: int) -> str:
    return f"n{index:04d}"


def edges_of(shape: Shape, nodes: int) -> list[tuple[str, str]]:
    """The shape's edges: a chain, or start → every middle node → join."""
    if nodes < 3:
        raise BenchmarkError(f"a workflow needs at least 3 nodes, not {nodes}")
    if shape == "chain":
        return [(_node(i), _node(i + 1)) for i in range(nodes - 1)]
    first, last = _node(0), _node(nodes - 1)
    middle = [_node(i) for i in range(1, nodes - 1)]
    return [(first, node) for node in middle] + [(node, last) for node in middle]


def workflow_document(shape: Shape, nodes: int, *, idempotent: bool = True) -> dict[str, Any]:
    """The workflow as the dict a YAML file would give: ``nodes`` no-op tool nodes."""
    return {
        "workflow_id": f"bench-{shape}",
        "version": "1",
        "tenant_id": TENANT,
        "start_node": _node(0),
        "tools": {TOOL: {"executor": "noop", "idempotent": idempotent}},
        "nodes": {_node(i): {"kind": {"type": "tool", "tool_ref": TOOL}} for i in range(nodes)},
        "edges": [{"from": source, "to": target} for source, target in edges_of(shape, nodes)],
    }


# ── trials ─────────────────────────────────────────────────────────────────────────────


class Trial(Protocol):
    """One prepared trial: ``run`` is timed and returns the nodes it ran; ``verify`` checks
    what was written; ``close`` lets go of the file."""

    def run(self) -> int: ...

    def verify(self) -> None: ...

    def close(self) -> None: ...


#: ``--chain-limit``: the workers' ``chain_limit`` (``None``: the worker's default; 0: every
#: node claimed in a transaction of its own, as before commits claimed the next node).
CHAIN_LIMIT: int | None = None

#: ``--batch``: the workers' ``batch`` (``None``: the worker's default, 1: one item per claim
#: and per commit; 32: a fan-out's ready items 32 to a transaction).
BATCH: int | None = None


class CharterTrial:
    """Charter: ``create_execution`` + `Worker` + `drive`, as ``charter run`` does."""

    def __init__(
        self, directory: Path, synchronous: Sync, shape: Shape, nodes: int, *, idempotent: bool
    ) -> None:
        self.path = directory / "charter.db"
        self.synchronous = synchronous
        self.nodes = nodes
        self.raw = workflow_document(shape, nodes, idempotent=idempotent)
        self.workflow = parse_workflow(self.raw, f"bench {shape}")
        self.store = SqliteStore(self.path, synchronous=synchronous)
        now = self.store.clock.now()
        self.store.put_tenant(
            Tenant(tenant_id=TENANT, name="bench", created_at=now, updated_at=now)
        )
        self.store.put_workflow(
            WorkflowDefinition(
                tenant_id=TENANT,
                workflow_id=self.workflow.workflow_id,
                version=self.workflow.version,
                ir=self.raw,
                created_at=now,
            )
        )
        self.outcome: RunOutcome | None = None

    def run(self) -> int:
        store = self.store
        workflow = self.workflow
        now = store.clock.now()
        store.create_execution(
            Execution(
                execution_id=RUN_ID,
                tenant_id=TENANT,
                workflow_id=workflow.workflow_id,
                workflow_version=workflow.version,
                initial_input={},
                created_at=now,
                updated_at=now,
            ),
            events=[
                WorkflowStarted(
                    workflow_id=workflow.workflow_id,
                    workflow_version=workflow.version,
                    initial_input={},
                )
            ],
        )
        worker = build_worker(
            store,
            executors=default_registry(),
            worker_id=WORKER,
            chain_limit=DEFAULT_CHAIN_LIMIT if CHAIN_LIMIT is None else CHAIN_LIMIT,
            batch=DEFAULT_BATCH if BATCH is None else BATCH,
        )
        self.outcome = drive(worker, RUN_ID)
        return self.nodes if self.outcome.status == "completed" else 0

    def verify(self) -> None:
        if self.outcome is None or self.outcome.status != "completed":
            raise BenchmarkError(f"charter: run ended {self.outcome}")
        execution = self.store.get_execution(RUN_ID)
        if execution is None or execution.status is not ExecutionStatus.COMPLETED:
            raise BenchmarkError(f"charter: execution is {execution}, not completed")
        events = self.store.read_events(RUN_ID)
        if [event.sequence for event in events] != list(range(1, len(events) + 1)):
            raise BenchmarkError("charter: event sequences are not 1…n")
        completed = Counter(
            event.kind.node_id for event in events if isinstance(event.kind, NodeCompleted)
        )
        if set(completed) != set(self.workflow.nodes) or set(completed.values()) != {1}:
            raise BenchmarkError("charter: not every node completed exactly once")
        if not isinstance(events[-1].kind, WorkflowCompleted):
            raise BenchmarkError("charter: the log does not end with workflow_completed")
        self.store.close()
        _check_file(self.path, self.synchronous)

    def close(self) -> None:
        self.store.close()


class Sqlite3DrainTrial:
    """The hand-written loop of `bench.store_throughput`, unchanged: N pre-enqueued items,
    claim + event, complete + event, per item."""

    def __init__(self, directory: Path, synchronous: Sync, shape: Shape, nodes: int) -> None:
        del shape  # the loop knows no graph: the same work for every shape
        self.trial = Sqlite3Trial(directory, synchronous, nodes)

    def run(self) -> int:
        return self.trial.run()

    def verify(self) -> None:
        self.trial.verify()

    def close(self) -> None:
        self.trial.close()


#: ``node_scheduled`` enqueues the successor; the queue is the one `Sqlite3Trial` uses.
SCHEDULE_ITEM_SQL: Final = (
    "INSERT INTO work_items (execution_id, node_id, queue, status) VALUES (?, ?, 'tool', 'pending')"
)


class Sqlite3ScheduledTrial:
    """`Sqlite3Trial`'s transactions, plus the successors (and their ``node_scheduled``
    events) written by the transaction that completes their last predecessor."""

    def __init__(self, directory: Path, synchronous: Sync, shape: Shape, nodes: int) -> None:
        self.path = directory / "scheduled.db"
        self.synchronous = synchronous
        self.nodes = nodes
        self.successors: dict[str, list[str]] = {_node(i): [] for i in range(nodes)}
        self.indegree: dict[str, int] = dict.fromkeys(self.successors, 0)
        for source, target in edges_of(shape, nodes):
            self.successors[source].append(target)
            self.indegree[target] += 1
        self.conn = _connect(self.path, synchronous)
        self.conn.executescript(BASELINE_SCHEMA)

    def run(self) -> int:
        execute = self.conn.execute
        executemany = self.conn.executemany
        dumps = json.dumps
        new_id = uuid.uuid4
        now = datetime.now
        lease = timedelta(seconds=LEASE_SECS)
        successors = self.successors
        waiting = dict(self.indegree)
        run_id = RUN_ID

        def schedule(ready: Sequence[str], stamp: str) -> None:
            executemany(SCHEDULE_ITEM_SQL, [(run_id, node) for node in ready])
            executemany(
                EVENT_SQL,
                [
                    (
                        run_id,
                        run_id,
                        str(new_id()),
                        dumps(
                            {"type": "node_scheduled", "node_id": node, "queue_type": "tool"},
                            separators=(",", ":"),
                        ),
                        stamp,
                    )
                    for node in ready
                ],
            )

        execute("BEGIN IMMEDIATE")
        schedule([_node(0)], _utc_text(now(UTC)))
        execute("COMMIT")
        done = 0
        while True:
            execute("BEGIN IMMEDIATE")
            moment = now(UTC)
            row = execute(CLAIM_SQL, (WORKER, _utc_text(moment + lease), "tool")).fetchone()
            if row is None:
                execute("COMMIT")
                break
            item_id, execution_id, node_id, fence = row
            started = dumps(
                {"type": "node_started", "node_id": node_id, "worker_id": WORKER, "attempt": 0},
                separators=(",", ":"),
            )
            execute(
                EVENT_SQL, (execution_id, execution_id, str(new_id()), started, _utc_text(moment))
            )
            execute("COMMIT")
            output: dict[str, Any] = {}  # the no-op node's work
            execute("BEGIN IMMEDIATE")
            moment = now(UTC)
            stamp = _utc_text(moment)
            if execute(COMPLETE_SQL, (item_id, fence)).rowcount != 1:
                execute("ROLLBACK")
                raise BenchmarkError(f"sqlite3_sched: lost the fence of item {item_id}")
            completed = dumps(
                {
                    "type": "node_completed",
                    "node_id": node_id,
                    "output": output,
                    "state_patch": {},
                    "duration_ms": 0,
                },
                separators=(",", ":"),
            )
            execute(EVENT_SQL, (execution_id, execution_id, str(new_id()), completed, stamp))
            ready = []
            for successor in successors[node_id]:
                waiting[successor] -= 1
                if waiting[successor] == 0:
                    ready.append(successor)
            if ready:
                schedule(ready, stamp)
            execute("COMMIT")
            done += 1
        execute("BEGIN IMMEDIATE")
        finished = dumps({"type": "workflow_completed", "final_state": {}}, separators=(",", ":"))
        execute(EVENT_SQL, (run_id, run_id, str(new_id()), finished, _utc_text(now(UTC))))
        execute("COMMIT")
        return done

    def verify(self) -> None:
        rows = dict(
            self.conn.execute("SELECT status, count(*) FROM work_items GROUP BY status").fetchall()
        )
        if rows != {"completed": self.nodes}:
            raise BenchmarkError(f"sqlite3_sched: items by status {rows}, expected all completed")
        nodes = [row[0] for row in self.conn.execute("SELECT node_id FROM work_items")]
        if sorted(nodes) != sorted(self.successors):
            raise BenchmarkError("sqlite3_sched: not every node ran exactly once")
        sequences = [
            row[0]
            for row in self.conn.execute(
                "SELECT sequence FROM events WHERE execution_id = ? ORDER BY sequence", (RUN_ID,)
            )
        ]
        if sequences != list(range(1, 3 * self.nodes + 2)):
            raise BenchmarkError("sqlite3_sched: event sequences are not 1…3n+1")
        _check_file(self.path, self.synchronous, self.conn)

    def close(self) -> None:
        self.conn.close()


# ── DBOS ───────────────────────────────────────────────────────────────────────────────

DBOS_INSTALL_HINT: Final = (
    "dbos is not installed: the DBOS column is skipped "
    "(install it with `pip install -e '.[bench]'` or `pip install 'dbos>=3'`)"
)


def _dbos_version() -> str | None:
    try:
        importlib.import_module("dbos")
        return importlib.metadata.version("dbos")
    except ImportError:
        return None


@cache
def _dbos_functions() -> SimpleNamespace:
    """The DBOS module and the bench's workflows, registered once per process.

    dbos is imported here, not at the top, so that this module imports (and type-checks)
    without it; the decorators are applied as calls so that mypy does not see an untyped
    decorator when dbos is absent."""
    dbos: Any = importlib.import_module("dbos")
    DBOS = dbos.DBOS

    def noop(index: int) -> None:
        del index

    async def noop_async(index: int) -> None:
        del index

    noop_step = DBOS.step(name="bench_noop")(noop)
    noop_step_async = DBOS.step(name="bench_noop_async")(noop_async)

    def chain(nodes: int) -> int:
        for index in range(nodes):
            noop_step(index)
        return nodes

    async def fanout(nodes: int) -> int:
        await noop_step_async(0)
        await asyncio.gather(*(noop_step_async(index) for index in range(1, nodes - 1)))
        await noop_step_async(nodes - 1)
        return nodes

    return SimpleNamespace(
        dbos=dbos,
        chain=DBOS.workflow(name="bench_chain")(chain),
        fanout=DBOS.workflow(name="bench_fanout")(fanout),
    )


class DbosTrial:
    """DBOS Transact: one workflow, one no-op step per node (see the module doc)."""

    _counter = 0

    def __init__(self, directory: Path, synchronous: Sync, shape: Shape, nodes: int) -> None:
        functions = _dbos_functions()
        self.dbos = functions.dbos
        self.workflow = functions.chain if shape == "chain" else functions.fanout
        self.shape = shape
        self.nodes = nodes
        self.synchronous = synchronous
        self.path = directory / "dbos.sqlite"
        DbosTrial._counter += 1
        self.workflow_id = f"bench-{shape}-{DbosTrial._counter}"
        conn = sqlite3.connect(str(self.path))
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        finally:
            conn.close()
        if str(mode).lower() != "wal":
            raise BenchmarkError(f"{self.path}: journal_mode is {mode}, not wal")
        self._listener, self._connections = _sqlite_synchronous_listener(synchronous)
        try:
            self.dbos.DBOS(
                config={
                    "name": "charter-e2e-bench",
                    "system_database_url": f"sqlite:///{self.path}",
                    "log_level": "WARNING",
                }
            )
            self.dbos.DBOS.launch()
        except BaseException:
            self.close()  # DBOS is a process-wide singleton: never leave one half set up
            raise
        self.result: Any = None

    def run(self) -> int:
        set_id = self.dbos.SetWorkflowID
        if self.shape == "chain":
            with set_id(self.workflow_id):
                self.result = self.workflow(self.nodes)
        else:

            async def main() -> Any:
                with set_id(self.workflow_id):
                    return await self.workflow(self.nodes)

            self.result = asyncio.run(main())
        return int(self.result)

    def verify(self) -> None:
        status = self.dbos.DBOS.get_workflow_status(self.workflow_id)
        if status is None or status.status != "SUCCESS":
            raise BenchmarkError(f"dbos: workflow status {status and status.status}")
        check = sqlite3.connect(str(self.path))
        try:
            (steps,) = check.execute(
                "SELECT count(*) FROM operation_outputs WHERE workflow_uuid = ?",
                (self.workflow_id,),
            ).fetchone()
        finally:
            check.close()
        if steps != self.nodes:
            raise BenchmarkError(f"dbos: {steps} steps recorded, expected {self.nodes}")
        if self._connections[0] == 0:
            raise BenchmarkError("dbos: the synchronous setting was never applied")
        _check_file(self.path, self.synchronous)

    def close(self) -> None:
        try:
            self.dbos.DBOS.destroy()
        finally:
            _remove_listener(self._listener)


def _sqlite_synchronous_listener(synchronous: Sync) -> tuple[Callable[..., None], list[int]]:
    """Set ``synchronous`` on every SQLite connection SQLAlchemy opens (DBOS's engine is
    made inside ``DBOS.launch``, so the listener is on the `Engine` class); the list counts
    the connections it was applied to."""
    sqlalchemy: Any = importlib.import_module("sqlalchemy")
    counter = [0]

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        if isinstance(dbapi_connection, sqlite3.Connection):
            dbapi_connection.execute(f"PRAGMA synchronous = {synchronous}")
            counter[0] += 1

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "connect", on_connect)
    return on_connect, counter


def _remove_listener(listener: Callable[..., None]) -> None:
    sqlalchemy: Any = importlib.import_module("sqlalchemy")
    if sqlalchemy.event.contains(sqlalchemy.engine.Engine, "connect", listener):
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "connect", listener)


def _make_trial(
    contender: str, directory: Path, synchronous: Sync, shape: Shape, nodes: int
) -> Trial:
    match contender:
        case "charter":
            return CharterTrial(directory, synchronous, shape, nodes, idempotent=True)
        case "charter_effects":
            return CharterTrial(directory, synchronous, shape, nodes, idempotent=False)
        case "sqlite3":
            return Sqlite3DrainTrial(directory, synchronous, shape, nodes)
        case "sqlite3_sched":
            return Sqlite3ScheduledTrial(directory, synchronous, shape, nodes)
        case "dbos":
            return DbosTrial(directory, synchronous, shape, nodes)
    raise BenchmarkError(f"unknown contender {contender!r}")


# ── measurement ────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Settings:
    """How much to measure."""

    name: str
    rounds: int
    nodes: int


FULL = Settings("full", 5, 1000)
QUICK = Settings("quick", 2, 200)


@dataclass(frozen=True)
class TrialResult:
    contender: str
    shape: str  # "any" for the graph-blind sqlite3 loop
    synchronous: str
    round: int  # -1 for the warm-up
    nodes: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.nodes / self.seconds


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _trial(
    base: Path, contender: str, shape: Shape, synchronous: Sync, nodes: int, round_index: int
) -> TrialResult:
    """Prepare, time, verify and delete one trial."""
    directory = Path(tempfile.mkdtemp(prefix=f"{contender}-{shape}-", dir=base))
    try:
        trial = _make_trial(contender, directory, synchronous, shape, nodes)
        try:
            gc.collect()
            start = time.perf_counter()
            done = trial.run()
            seconds = time.perf_counter() - start
            if done != nodes:
                raise BenchmarkError(f"{contender} {shape}: ran {done} of {nodes} nodes")
            trial.verify()
        finally:
            trial.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    label = "any" if contender == "sqlite3" else shape
    return TrialResult(contender, label, synchronous, round_index, nodes, seconds)


def _configurations(contenders: Sequence[str]) -> list[tuple[str, Shape]]:
    """(contender, shape) pairs; the graph-blind loop runs once per round, not per shape."""
    pairs: list[tuple[str, Shape]] = []
    for contender in contenders:
        shapes: tuple[Shape, ...] = ("chain",) if contender == "sqlite3" else SHAPES
        pairs.extend((contender, shape) for shape in shapes)
    return pairs


@dataclass(frozen=True)
class Summary:
    contender: str
    shape: str
    synchronous: str
    trials: int
    median_rate: float  # nodes/s
    min_rate: float
    max_rate: float


def _summaries(results: Sequence[TrialResult]) -> list[Summary]:
    groups: dict[tuple[str, str, str], list[float]] = {}
    for r in results:
        groups.setdefault((r.contender, r.shape, r.synchronous), []).append(r.rate)
    return [
        Summary(
            contender, shape, sync, len(rates), statistics.median(rates), min(rates), max(rates)
        )
        for (contender, shape, sync), rates in groups.items()
    ]


@dataclass
class Report:
    settings: Settings
    synchronous: list[str]
    started: str
    finished: str
    machine: dict[str, Any]
    versions: dict[str, str | None]
    contenders: list[str]
    results: list[TrialResult] = field(default_factory=list)
    summaries: list[Summary] = field(default_factory=list)


def run(settings: Settings, syncs: Sequence[Sync], directory: Path | None = None) -> Report:
    """Warm up, then time every configuration round-robin (see the module doc)."""
    started = datetime.now(UTC).isoformat(timespec="seconds")
    dbos_version = _dbos_version()
    contenders = [c for c in CONTENDERS if c != "dbos" or dbos_version is not None]
    if dbos_version is None:
        _progress(DBOS_INSTALL_HINT)
    base = Path(tempfile.mkdtemp(prefix="charter-e2e-throughput-", dir=directory))
    results: list[TrialResult] = []
    try:
        machine = _machine(base)
        fs = machine["filesystem"]
        _progress(f"files under {base} ({fs['type']} on {fs['device']} at {fs['mount_point']})")
        configurations = [
            (contender, shape, sync)
            for sync in syncs
            for contender, shape in _configurations(contenders)
        ]
        for contender, shape, sync in configurations:
            warm = _trial(base, contender, shape, sync, min(WARMUP_NODES, settings.nodes), -1)
            _progress(f"warm-up {contender:>15} {warm.shape:<6} {sync:<6} {warm.rate:>7,.0f}/s")
        for round_index in range(settings.rounds):
            shift = round_index % len(configurations)
            for contender, shape, sync in configurations[shift:] + configurations[:shift]:
                result = _trial(base, contender, shape, sync, settings.nodes, round_index)
                results.append(result)
                _progress(
                    f"round {round_index + 1}/{settings.rounds} {contender:>15} "
                    f"{result.shape:<6} {sync:<6} {result.nodes:,} nodes in "
                    f"{result.seconds:.2f} s: {result.rate:>7,.0f}/s"
                )
    finally:
        shutil.rmtree(base, ignore_errors=True)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    machine["load_average_at_end"] = list(load) if load is not None else None
    return Report(
        settings=settings,
        synchronous=list(syncs),
        started=started,
        finished=datetime.now(UTC).isoformat(timespec="seconds"),
        machine=machine,
        versions={
            "dbos": dbos_version,
            "sqlalchemy": _distribution_version("sqlalchemy") if dbos_version else None,
        },
        contenders=contenders,
        results=results,
        summaries=_summaries(results),
    )


def _distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# ── report ─────────────────────────────────────────────────────────────────────────────


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def _pct(value: float) -> str:
    return f"{value * 100:.0f}%"


def _times(value: float) -> str:
    return f"{value:.2f}×"


@dataclass(frozen=True)
class Ratios:
    shape: str
    synchronous: str
    over_sqlite3: float  # Charter / graph-blind loop
    over_sqlite3_sched: float  # Charter / loop with scheduling
    over_dbos: float | None  # Charter / DBOS
    effects_over_charter: float  # Charter with effects / Charter
    paired_over_sqlite3: tuple[float, float, float]  # min, median, max per round
    paired_over_dbos: tuple[float, float, float] | None


def _paired(
    results: Sequence[TrialResult], shape: str, sync: str, other: str, other_shape: str
) -> tuple[float, float, float] | None:
    """Charter's rate over ``other``'s, round by round (same round: minutes apart at most)."""
    by_round: dict[int, dict[str, float]] = {}
    for r in results:
        if r.synchronous != sync:
            continue
        if (r.contender, r.shape) == ("charter", shape):
            by_round.setdefault(r.round, {})["charter"] = r.rate
        elif (r.contender, r.shape) == (other, other_shape):
            by_round.setdefault(r.round, {})["other"] = r.rate
    values = [v["charter"] / v["other"] for v in by_round.values() if len(v) == 2]
    if not values:
        return None
    return min(values), statistics.median(values), max(values)


def ratios(report: Report) -> list[Ratios]:
    by_key = {(s.contender, s.shape, s.synchronous): s.median_rate for s in report.summaries}
    result = []
    for sync in report.synchronous:
        for shape in SHAPES:
            charter = by_key[("charter", shape, sync)]
            dbos = by_key.get(("dbos", shape, sync))
            paired_sqlite3 = _paired(report.results, shape, sync, "sqlite3", "any")
            assert paired_sqlite3 is not None  # both run every round
            result.append(
                Ratios(
                    shape=shape,
                    synchronous=sync,
                    over_sqlite3=charter / by_key[("sqlite3", "any", sync)],
                    over_sqlite3_sched=charter / by_key[("sqlite3_sched", shape, sync)],
                    over_dbos=None if dbos is None else charter / dbos,
                    effects_over_charter=by_key[("charter_effects", shape, sync)] / charter,
                    paired_over_sqlite3=paired_sqlite3,
                    paired_over_dbos=_paired(report.results, shape, sync, "dbos", shape),
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
    dbos = report.versions["dbos"]
    peers = (
        f"dbos {dbos} (SQLAlchemy {report.versions['sqlalchemy']})"
        if dbos
        else "dbos not installed"
    )
    settings = report.settings
    lines = [
        "### End-to-end throughput run",
        "",
        f"Run {report.started} → {report.finished} (UTC), {settings.name} mode: "
        f"{settings.nodes:,} nodes per workflow, {settings.rounds} "
        f"round{'s' if settings.rounds != 1 else ''}. Machine: {cores}, "
        f"{machine['cpu']}; {machine['python']} on {machine['platform']}; SQLite "
        f"{machine['sqlite']}, sqlite-utils {machine['sqlite_utils']}; {peers}.{load}",
        "",
        f"Files: under `{machine['directory']}`, on {fs['type']} ({fs['device']} mounted at "
        f"`{fs['mount_point']}`). WAL mode, synchronous {', '.join(report.synchronous)}.",
        "",
        "#### Nodes per second (median of the rounds; slowest–fastest in brackets)",
        "",
    ]
    by_key = {(s.contender, s.shape, s.synchronous): s for s in report.summaries}
    header = "| synchronous | shape | " + " | ".join(LABELS[c] for c in report.contenders) + " |"
    lines += [header, "|:---|:---|" + "---:|" * len(report.contenders)]
    for sync in report.synchronous:
        for shape in SHAPES:
            cells = []
            for contender in report.contenders:
                key = (contender, "any" if contender == "sqlite3" else shape, sync)
                s = by_key[key]
                cells.append(f"{_rate(s.median_rate)} [{_rate(s.min_rate)}–{_rate(s.max_rate)}]")
            lines.append(f"| {sync} | {shape} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "The sqlite3 loop knows no graph: one measurement per round serves both shapes.",
        "",
        "#### Ratios of medians",
        "",
        "| synchronous | shape | Charter / sqlite3 loop | per round (min–median–max) "
        "| Charter / sqlite3 + scheduling | Charter / DBOS | per round (min–median–max) "
        "| effects / Charter |",
        "|:---|:---|---:|---:|---:|---:|---:|---:|",
    ]
    all_ratios = ratios(report)
    for r in all_ratios:
        low, mid, high = r.paired_over_sqlite3
        dbos_ratio = "—" if r.over_dbos is None else _times(r.over_dbos)
        dbos_paired = (
            "—"
            if r.paired_over_dbos is None
            else "–".join(_times(value) for value in r.paired_over_dbos)
        )
        lines.append(
            f"| {r.synchronous} | {r.shape} | {_pct(r.over_sqlite3)} "
            f"| {_pct(low)}–{_pct(mid)}–{_pct(high)} | {_pct(r.over_sqlite3_sched)} "
            f"| {dbos_ratio} | {dbos_paired} | {_pct(r.effects_over_charter)} |"
        )
    lines += ["", "#### Targets (reported, not asserted)", "", "| target | measured | met |"]
    lines.append("|:---|:---|:---:|")
    for r in all_ratios:
        where = f"{r.shape}, synchronous {r.synchronous}"
        goal = TARGETS_OVER_SQLITE3.get(r.synchronous, TARGET_OVER_SQLITE3)
        met = r.over_sqlite3 >= goal
        lines.append(
            f"| Charter ≥ {_pct(goal)} of the sqlite3 loop, {where} "
            f"| {_pct(r.over_sqlite3)} | {'yes' if met else '**no**'} |"
        )
        if r.over_dbos is None:
            lines.append(
                f"| Charter ≥ {TARGET_OVER_DBOS:g}× DBOS, {where} | dbos not installed | — |"
            )
        else:
            met = r.over_dbos >= TARGET_OVER_DBOS
            lines.append(
                f"| Charter ≥ {TARGET_OVER_DBOS:g}× DBOS, {where} | {_times(r.over_dbos)} "
                f"| {'yes' if met else '**no**'} |"
            )
    return "\n".join(lines) + "\n"


def report_json(report: Report) -> dict[str, Any]:
    return {
        "benchmark": "e2e_throughput",
        "settings": asdict(report.settings),
        "synchronous": report.synchronous,
        "started": report.started,
        "finished": report.finished,
        "machine": report.machine,
        "versions": report.versions,
        "contenders": report.contenders,
        "trials": [asdict(r) | {"rate": r.rate} for r in report.results],
        "summaries": [asdict(s) for s in report.summaries],
        "ratios": [asdict(r) for r in ratios(report)],
        "targets": {"over_sqlite3": TARGETS_OVER_SQLITE3, "over_dbos": TARGET_OVER_DBOS},
    }


# ── profile ────────────────────────────────────────────────────────────────────────────

#: Layers of the profile, by source file: ``charter/adapters`` is the store (with the demo
#: executors, which cost next to nothing), ``charter/core`` the core, ``charter/worker/`` the
#: shell.
_CHARTER: Final = Path(charter.__file__).parent
_LAYER_DIRECTORIES: Final = {
    "store": {str(_CHARTER / "adapters"), str((_CHARTER / "adapters").resolve())},
    "core": {str(_CHARTER / "core"), str((_CHARTER / "core").resolve())},
    "shell": {str(_CHARTER), str(_CHARTER / "worker")},
}

FunctionKey = tuple[str, int, str]


def _layer(key: FunctionKey) -> str:
    directory = str(Path(key[0]).parent)
    for layer, directories in _LAYER_DIRECTORIES.items():
        if directory in directories:
            return layer
    return "other"


def _shell_side(key: FunctionKey) -> bool:
    """The worker shell, or this benchmark's own code that calls into Charter."""
    return _layer(key) == "shell" or key[0] == __file__


def _calls_from_shell(
    stats: dict[FunctionKey, Any], layer: str
) -> dict[FunctionKey, tuple[int, float]]:
    """For each function of ``layer`` the shell calls directly: how often, and the seconds
    spent in those calls (cProfile's per-caller cumulative times). Counting only the calls
    that cross from the shell counts every second once: the store's calls into the core,
    or a genexpr that ``all()`` calls back into, are inside an entry already counted."""
    entries: dict[FunctionKey, tuple[int, float]] = {}
    for key, (_cc, _nc, _tt, _ct, callers) in stats.items():
        if _layer(key) != layer:
            continue
        calls, seconds = 0, 0.0
        for caller, edge in callers.items():
            if _shell_side(caller):
                calls += edge[1]
                seconds += edge[3]
        if calls:
            entries[key] = (calls, seconds)
    return entries


def _label(key: FunctionKey) -> str:
    filename, line, name = key
    if filename == "~":
        return name
    path = Path(filename)
    root = _CHARTER.parent
    for base in (root, root.resolve()):
        if path.is_relative_to(base):
            return f"{path.relative_to(base)}:{line}({name})"
    return f"{path.name}:{line}({name})"


@contextmanager
def _profiled() -> Iterator[cProfile.Profile]:
    profile = cProfile.Profile()
    profile.enable()
    try:
        yield profile
    finally:
        profile.disable()


def profile_charter(
    shape: Shape, *, idempotent: bool, synchronous: Sync, nodes: int, top: int = 25
) -> str:
    """One Charter run under cProfile: where the time goes, as Markdown."""
    base = Path(tempfile.mkdtemp(prefix="charter-e2e-profile-"))
    try:
        (base / "warm").mkdir()
        warm = _make_trial("charter", base / "warm", synchronous, shape, WARMUP_NODES)
        try:
            warm.run()
        finally:
            warm.close()
        directory = base / "profiled"
        directory.mkdir()
        trial = CharterTrial(directory, synchronous, shape, nodes, idempotent=idempotent)
        try:
            gc.collect()
            start = time.perf_counter()
            with _profiled() as profile:
                done = trial.run()
            seconds = time.perf_counter() - start
            if done != nodes:
                raise BenchmarkError(f"profiled run ran {done} of {nodes} nodes")
            trial.verify()
        finally:
            trial.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    stats = pstats.Stats(profile)
    raw: dict[FunctionKey, Any] = stats.stats  # type: ignore[attr-defined]  # pstats keeps it untyped
    total = stats.total_tt  # type: ignore[attr-defined]  # likewise

    store_calls = _calls_from_shell(raw, "store")
    core_calls = _calls_from_shell(raw, "core")
    store = sum(seconds for _, seconds in store_calls.values())
    core = sum(seconds for _, seconds in core_calls.values())
    sqlite_calls = sum(
        value[2] for key, value in raw.items() if key[0] == "~" and "sqlite3." in key[2]
    )
    heartbeat = sum(
        edge[3]
        for key, value in raw.items()
        if key[2] in ("start", "join") and key[0].endswith("threading.py")
        for caller, edge in value[4].items()
        if _shell_side(caller)
    )
    variant = "idempotent tools" if idempotent else "non-idempotent tools (effects)"
    lines = [
        f"### Profile: Charter, {shape} of {nodes:,} no-op nodes, {variant}, "
        f"synchronous {synchronous}",
        "",
        f"{nodes / seconds:,.0f} nodes/s under cProfile ({seconds:.2f} s wall; "
        f"{total:.2f} s profiled in the main thread; heartbeat threads not profiled).",
        "",
        "| layer | seconds | share | µs per node |",
        "|:---|---:|---:|---:|",
    ]
    shell = total - store - core
    for name, value in (
        ("store (`charter.adapters`), called by the shell", store),
        ("— of which inside `sqlite3` calls (SQL and COMMIT)", sqlite_calls),
        ("— of which Python in the store (decoding, encoding, checks)", store - sqlite_calls),
        ("core (`charter.core`), called by the shell", core),
        ("worker shell (`charter.worker`, executors) and the rest it calls", shell),
        ("— of which starting and joining heartbeat threads", heartbeat),
    ):
        lines.append(
            f"| {name} | {value:.3f} | {_pct(value / total)} | {value / nodes * 1e6:,.0f} |"
        )
    for title, entries in (("Store", store_calls), ("Core", core_calls)):
        lines += [
            "",
            f"{title} functions called by the shell:",
            "",
            "| function | calls per node | µs per node | share |",
            "|:---|---:|---:|---:|",
        ]
        for key, (calls, secs) in sorted(entries.items(), key=lambda kv: -kv[1][1]):
            if secs / total >= 0.001:
                lines.append(
                    f"| `{_label(key)}` | {calls / nodes:.2f} | {secs / nodes * 1e6:,.0f} "
                    f"| {_pct(secs / total)} |"
                )
    for title, sort in (("cumulative", "cumulative"), ("self", "tottime")):
        order = sorted(
            raw.items(), key=lambda kv: -(kv[1][3] if sort == "cumulative" else kv[1][2])
        )
        lines += [
            "",
            f"Top {top} by {title} time:",
            "",
            "| function | layer | calls | self s | cumulative s | cumulative share |",
            "|:---|:---|---:|---:|---:|---:|",
        ]
        for key, (_cc, nc, tt, ct, _callers) in order[:top]:
            lines.append(
                f"| `{_label(key)}` | {_layer(key)} | {nc:,} | {tt:.3f} | {ct:.3f} "
                f"| {_pct(ct / total)} |"
            )
    return "\n".join(lines) + "\n"


# ── entry point ────────────────────────────────────────────────────────────────────────


# ── the scale curve ────────────────────────────────────────────────────────────────────

#: Workflow sizes of the scale curve (``--scale``).
SCALE_NODES: Final = (100, 1_000, 10_000)
#: The target for the cost per node at 10,000 nodes against 1,000 (issue 14), never asserted.
TARGET_SCALE_RATIO: Final = 1.1


def _max_rss_bytes() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def scale_trial(shape: Shape, nodes: int, synchronous: Sync, directory: Path) -> dict[str, Any]:
    """One Charter run (idempotent no-op nodes) in this process: its wall and CPU time and
    how far it raised the process's peak RSS. Meant for a fresh process (`--scale-trial`),
    so that the peak is this run's."""
    trial = CharterTrial(directory, synchronous, shape, nodes, idempotent=True)
    try:
        gc.collect()
        rss_before = _max_rss_bytes()
        cpu = time.process_time()
        start = time.perf_counter()
        done = trial.run()
        seconds = time.perf_counter() - start
        cpu_seconds = time.process_time() - cpu
        rss_after = _max_rss_bytes()
        if done != nodes:
            raise BenchmarkError(f"charter {shape}: ran {done} of {nodes} nodes")
        trial.verify()
    finally:
        trial.close()
    return {
        "shape": shape,
        "nodes": nodes,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "rss_delta_bytes": max(0, rss_after - rss_before),
    }


def _scale_subprocess(shape: Shape, nodes: int, synchronous: Sync, base: Path) -> dict[str, Any]:
    import subprocess

    directory = Path(tempfile.mkdtemp(prefix=f"scale-{shape}-{nodes}-", dir=base))
    try:
        command = [sys.executable, "-m", "bench.e2e_throughput", "--scale-trial"]
        command += [shape, str(nodes), synchronous, str(directory)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise BenchmarkError(f"scale trial {shape} {nodes}: {done.stderr.strip()}")
        result: dict[str, Any] = json.loads(done.stdout)
        return result
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run_scale(
    rounds: int,
    synchronous: Sync,
    directory: Path | None = None,
    sizes: Sequence[int] = SCALE_NODES,
) -> dict[str, Any]:
    """The scale curve: Charter's cost per node at each size and shape, every trial in a
    fresh process, the configurations interleaved (order rotated every round); medians of
    ``rounds``. The JSON form is flat, one row per point, for charts."""
    configurations = [(shape, nodes) for nodes in sizes for shape in ("chain", "fanout")]
    trials: dict[tuple[str, int], list[dict[str, Any]]] = {c: [] for c in configurations}
    base = Path(tempfile.mkdtemp(prefix="charter-scale-", dir=directory))
    try:
        for round_index in range(rounds):
            shift = round_index % len(configurations)
            for shape, nodes in configurations[shift:] + configurations[:shift]:
                result = _scale_subprocess(shape, nodes, synchronous, base)  # type: ignore[arg-type]
                _progress(
                    f"scale round {round_index + 1}/{rounds} {shape} {nodes}: "
                    f"{result['seconds'] * 1e6 / nodes:.0f} µs/node wall, "
                    f"{result['cpu_seconds'] * 1e6 / nodes:.0f} µs/node CPU"
                )
                trials[(shape, nodes)].append(result)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    points = []
    for (shape, nodes), results in trials.items():
        points.append(
            {
                "shape": shape,
                "nodes": nodes,
                "us_per_node": statistics.median(r["seconds"] for r in results) * 1e6 / nodes,
                "cpu_us_per_node": statistics.median(r["cpu_seconds"] for r in results)
                * 1e6
                / nodes,
                "rss_per_node_bytes": statistics.median(r["rss_delta_bytes"] for r in results)
                / nodes,
                "rounds": len(results),
            }
        )
    by_key = {(p["shape"], p["nodes"]): p for p in points}
    ratios = []
    for shape in ("chain", "fanout"):
        small, large = by_key.get((shape, 1_000)), by_key.get((shape, 10_000))
        if small is None or large is None:
            continue
        ratios.append(
            {
                "shape": shape,
                "ratio_10k_1k": large["us_per_node"] / small["us_per_node"],
                "cpu_ratio_10k_1k": large["cpu_us_per_node"] / small["cpu_us_per_node"],
                "target": TARGET_SCALE_RATIO,
            }
        )
    return {
        "synchronous": synchronous,
        "rounds": rounds,
        "python": sys.version.split()[0],
        "scale": points,
        "ratios": ratios,
    }


def render_scale(curve: dict[str, Any]) -> str:
    lines = [
        f"## Scale curve (SQLite, synchronous={curve['synchronous']}, "
        f"median of {curve['rounds']}, one worker)",
        "",
        "| shape | nodes | µs/node (wall) | µs/node (CPU) | peak RSS per node |",
        "|---|---:|---:|---:|---:|",
    ]
    lines.extend(
        f"| {point['shape']} | {point['nodes']:,} | {point['us_per_node']:.0f} | "
        f"{point['cpu_us_per_node']:.0f} | {point['rss_per_node_bytes'] / 1024:.1f} KiB |"
        for point in curve["scale"]
    )
    lines.append("")
    lines.extend(
        f"- {ratio['shape']}: 10k/1k per node {ratio['ratio_10k_1k']:.2f}× wall, "
        f"{ratio['cpu_ratio_10k_1k']:.2f}× CPU (target ≤ {ratio['target']}×)"
        for ratio in curve["ratios"]
    )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.e2e_throughput",
        description="End-to-end nodes per second of 1,000-node workflows (chain, fan-out): "
        "Charter, a hand-written sqlite3 loop and DBOS Transact, on SQLite in WAL mode.",
    )
    parser.add_argument("--quick", action="store_true", help="2 rounds of 200-node workflows")
    parser.add_argument("--rounds", type=int, help="rounds (default 5; quick 2)")
    parser.add_argument("--nodes", type=int, help="nodes per workflow (default 1000)")
    parser.add_argument(
        "--synchronous",
        choices=("FULL", "NORMAL", "both"),
        default="both",
        help="SQLite synchronous setting for every contender (default: both, FULL first)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    parser.add_argument("--dir", type=Path, metavar="DIR", help="where to make the temporary files")
    parser.add_argument(
        "--profile",
        choices=("chain", "fanout", "chain-effects", "fanout-effects"),
        help="instead of the benchmark, profile one Charter run of this shape",
    )
    parser.add_argument(
        "--scale",
        action="store_true",
        help="instead, the scale curve: Charter at 100, 1,000 and 10,000 nodes, chain and "
        "fan-out, cost and peak RSS per node (--rounds default 3, --synchronous default NORMAL)",
    )
    parser.add_argument(
        "--chain-limit",
        type=int,
        metavar="N",
        help="Charter's Worker(chain_limit=N): how many nodes in a row a commit may claim "
        "(default: the worker's; 0: a claim transaction per node, as before)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        metavar="K",
        help="Charter's Worker(batch=K): how many ready items of the run a worker claims, "
        "and commits, in one transaction (default: the worker's, 1: one at a time)",
    )
    parser.add_argument("--scale-trial", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global BATCH, CHAIN_LIMIT
    CHAIN_LIMIT = args.chain_limit
    BATCH = args.batch
    if args.scale_trial is not None:
        shape_arg, nodes_arg, sync_arg, dir_arg = args.scale_trial
        result = scale_trial(shape_arg, int(nodes_arg), sync_arg, Path(dir_arg))
        sys.stdout.write(json.dumps(result) + "\n")
        return 0
    if args.scale:
        scale_sync: Sync = "NORMAL" if args.synchronous == "both" else args.synchronous
        sizes = SCALE_NODES if args.nodes is None else (args.nodes // 10, args.nodes)
        try:
            curve = run_scale(args.rounds or 3, scale_sync, args.dir, sizes)
        except BenchmarkError as error:
            print(f"e2e_throughput: {error}", file=sys.stderr)
            return 1
        sys.stdout.write(render_scale(curve))
        if args.json is not None:
            args.json.write_text(json.dumps(curve, indent=2) + "\n", encoding="utf-8")
        return 0
    base = QUICK if args.quick else FULL
    settings = Settings(
        base.name,
        args.rounds if args.rounds is not None else base.rounds,
        args.nodes if args.nodes is not None else base.nodes,
    )
    syncs: list[Sync] = ["FULL", "NORMAL"] if args.synchronous == "both" else [args.synchronous]
    try:
        if args.profile is not None:
            shape: Shape = "chain" if args.profile.startswith("chain") else "fanout"
            for sync in syncs:
                sys.stdout.write(
                    profile_charter(
                        shape,
                        idempotent=not args.profile.endswith("effects"),
                        synchronous=sync,
                        nodes=settings.nodes,
                    )
                )
            return 0
        report = run(settings, syncs, args.dir)
    except BenchmarkError as error:
        print(f"e2e_throughput: {error}", file=sys.stderr)
        return 1
    sys.stdout.write(render_markdown(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report_json(report), indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
