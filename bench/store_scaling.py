"""Store scaling: claims + commits per second with 1, 2 and 4 worker processes, on Postgres and
on SQLite in the same run.

Run with ``python -m bench.store_scaling [--quick] [--postgres-url URL] [--json PATH]``; a
Markdown report goes to stdout, progress to stderr. The Postgres server is the one named by
``--postgres-url``, else ``$CHARTER_BENCH_POSTGRES_URL``, else ``$CHARTER_TEST_POSTGRES_URL``;
when none is set or the server cannot be reached, the report says how to set it and only
SQLite is measured.

What one trial is: a fresh store (Postgres: a new schema, dropped afterwards; SQLite: a new
file, WAL, ``synchronous=FULL`` — each store's durable default, as Postgres commits with
``synchronous_commit=on``) holding the items of one of two workloads:

* **many runs** (the scaling table): `EXECUTIONS` executions, the items enqueued round-robin
  over them, so that workers contend for the queue, not for one execution's event log;
* **one run**: every item in one execution, whose appends are serialised by its row lock
  (Postgres) or by the write lock (SQLite) — measured with the most workers only.

N worker processes each open their own store (Postgres: the database clock, a pool of two
connections), wait at a common start, then loop ``claim(["q"], lease_secs=30)`` →
``commit`` (outcome completed, one ``node_completed`` event) until the queue is empty: two
transactions and two events per item, exactly the worker's store traffic. The rate is the
items done divided by the time from the common start to the last worker's last commit.
Afterwards the trial is checked: every item completed, each with one ``node_started`` and
one ``node_completed``, every execution's sequences gapless.

Trials of every (store, workers) configuration are run round-robin, the order rotated each
round, so drift in a shared machine's load weighs on all alike; the report gives the median
of the rounds, their range, and the speed-up over one worker. Worker processes, and the
Postgres server when it is local, share this machine's cores (the report states how many):
more processes than cores measure contention, not parallelism.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from charter.adapters.sqlite import SqliteStore
from charter.core.errors import StoreError
from charter.core.events import NodeCompleted, NodeStarted, WorkflowStarted
from charter.core.ports import CommitRequest, Store
from charter.core.records import Execution, NewWorkItem, WorkItemStatus

__all__ = ["main"]

WORKER_COUNTS: Final = (1, 2, 4)
EXECUTIONS: Final = 32
QUEUE: Final = "q"
URL_VARIABLES: Final = ("CHARTER_BENCH_POSTGRES_URL", "CHARTER_TEST_POSTGRES_URL")


@dataclass(frozen=True)
class Settings:
    items: int  # per trial
    rounds: int


FULL: Final = Settings(items=2000, rounds=3)
QUICK: Final = Settings(items=400, rounds=1)


@dataclass(frozen=True)
class Target:
    """Where a trial's store is: a SQLite file or a Postgres schema."""

    kind: str  # "sqlite" | "postgres"
    location: str  # the file, or the URL
    schema: str = ""


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _open(target: Target, *, connections: int = 2) -> Store:
    if target.kind == "postgres":
        from charter.adapters.postgres import PostgresStore

        return PostgresStore(
            target.location, schema=target.schema, min_connections=1, max_connections=connections
        )
    return SqliteStore(target.location, busy_timeout_ms=60_000)


def _seed(store: Store, items: int, executions: int) -> None:
    """``executions`` running executions, then ``items`` items enqueued round-robin over
    them, so that the items claimed one after another belong to different executions."""
    now = store.clock.now()
    for index in range(executions):
        store.create_execution(
            Execution(
                execution_id=f"x{index}",
                workflow_id="bench",
                workflow_version="1",
                created_at=now,
                updated_at=now,
            ),
            [WorkflowStarted(workflow_id="bench", workflow_version="1", initial_input={})],
        )
    store.enqueue(
        [
            NewWorkItem(
                item_id=f"i{n}", execution_id=f"x{n % executions}", node_id=f"n{n}", queue=QUEUE
            )
            for n in range(items)
        ]
    )


def _worker(target: Target, name: str, ready: Any, go: Any, results: Any) -> None:
    """One worker process: claim → commit until the queue is empty; report (count, end)."""
    store = _open(target)
    try:
        ready.put(name)
        go.wait()
        done = 0
        while (claim := store.claim(name, [QUEUE], lease_secs=30)) is not None:
            item = claim.item
            completed = NodeCompleted(
                node_id=item.node_id, output=None, state_patch={}, duration_ms=0
            )
            store.commit(
                CommitRequest(
                    item_id=item.item_id,
                    fence=claim.fence,
                    outcome=WorkItemStatus.COMPLETED,
                    events=(completed,),
                )
            )
            done += 1
        results.put((name, done, time.monotonic()))
    finally:
        store.close()


def _check(store: Store, items: int, executions: int) -> None:
    started: Counter[str] = Counter()
    completed: Counter[str] = Counter()
    for index in range(executions):
        events = store.read_events(f"x{index}")
        if [e.sequence for e in events] != list(range(1, len(events) + 1)):
            raise RuntimeError(f"execution x{index}: sequences have gaps")
        for event in events:
            if isinstance(event.kind, NodeStarted):
                started[event.kind.node_id] += 1
            elif isinstance(event.kind, NodeCompleted):
                completed[event.kind.node_id] += 1
    expected = Counter(f"n{n}" for n in range(items))
    if started != expected or completed != expected:
        raise RuntimeError("not every item was claimed and completed exactly once")


def _trial(target: Target, workers: int, items: int, executions: int) -> float:
    """One trial: items per second of ``workers`` processes draining a fresh store."""
    store = _open(target)
    try:
        _seed(store, items, executions)
        context = multiprocessing.get_context("spawn")  # no inherited pools or connections
        ready, results, go = context.Queue(), context.Queue(), context.Event()
        processes = [
            context.Process(target=_worker, args=(target, f"w{n}", ready, go, results))
            for n in range(workers)
        ]
        for process in processes:
            process.start()
        for _ in processes:
            ready.get(timeout=120)
        start = time.monotonic()
        go.set()
        reports = [results.get(timeout=600) for _ in processes]
        for process in processes:
            process.join(timeout=60)
            if process.exitcode != 0:
                raise RuntimeError(f"a worker process exited with {process.exitcode}")
        done = sum(count for _, count, _ in reports)
        if done != items:
            raise RuntimeError(f"{done} items done, {items} expected")
        elapsed: float = max(end for _, _, end in reports) - start
        _check(store, items, executions)
        return items / elapsed
    finally:
        store.close()


def _postgres_url(given: str | None) -> str | None:
    if given:
        return given
    for variable in URL_VARIABLES:
        if os.environ.get(variable):
            return os.environ[variable]
    return None


def _postgres_facts(url: str) -> dict[str, str] | str:
    """The server's version and durability settings, or why it cannot be used."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed: pip install 'charter[postgres]'"
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            facts = {}
            for setting in ("server_version", "synchronous_commit", "fsync"):
                row = conn.execute(f"SHOW {setting}").fetchone()
                facts[setting] = str(row[0]) if row else "?"
            return facts
    except psycopg.Error as error:
        return f"cannot connect: {str(error).strip().splitlines()[0]}"


def _drop(url: str, schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@dataclass(frozen=True)
class Row:
    store: str
    workload: str  # "many runs" | "one run"
    workers: int
    rates: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


#: The workloads: how many executions the items are spread over.
WORKLOADS: Final = {"many runs": EXECUTIONS, "one run": 1}


def run(settings: Settings, postgres_url: str | None) -> dict[str, Any]:
    """Every trial, round-robin; returns the results and the facts the report states."""
    stores = ["sqlite"]
    facts: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "items_per_trial": settings.items,
        "executions": EXECUTIONS,
        "rounds": settings.rounds,
    }
    if postgres_url is None:
        facts["postgres"] = "not configured"
    else:
        found = _postgres_facts(postgres_url)
        facts["postgres"] = found
        if isinstance(found, dict):
            stores.insert(0, "postgres")
    configurations = [
        (store, workload, workers)
        for store in stores
        for workload, workers in [("many runs", n) for n in WORKER_COUNTS]
        + [("one run", max(WORKER_COUNTS))]
    ]
    rates: dict[tuple[str, str, int], list[float]] = {c: [] for c in configurations}
    with tempfile.TemporaryDirectory(prefix="charter-scaling-") as base:
        for round_index in range(settings.rounds):
            shift = round_index % len(configurations)
            for store, workload, workers in configurations[shift:] + configurations[:shift]:
                if store == "postgres":
                    assert postgres_url is not None
                    schema = f"charter_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
                    target = Target("postgres", postgres_url, schema)
                else:
                    target = Target("sqlite", str(Path(base) / f"{uuid.uuid4().hex}.db"))
                try:
                    rate = _trial(target, workers, settings.items, WORKLOADS[workload])
                finally:
                    if store == "postgres":
                        _drop(target.location, target.schema)
                rates[(store, workload, workers)].append(rate)
                _progress(
                    f"round {round_index + 1}/{settings.rounds}: {store}, {workload}, "
                    f"{workers} worker(s): {rate:,.0f} items/s"
                )
    rows = [
        Row(store, workload, workers, tuple(found))
        for (store, workload, workers), found in rates.items()
    ]
    return {"facts": facts, "rows": rows}


def render_markdown(result: dict[str, Any]) -> str:
    facts = result["facts"]
    rows: list[Row] = result["rows"]
    lines = [
        "## Store scaling: claims + commits per second by worker processes",
        "",
        f"Machine: {facts['cpu_count']} cores (`os.cpu_count()`), {facts['platform']}, "
        f"Python {facts['python']}. Each trial: {facts['items_per_trial']:,} items, over "
        f"{facts['executions']} executions (many runs) or one; median of {facts['rounds']} "
        "round(s). × one worker: against the same store's many-runs rate with one worker.",
    ]
    postgres = facts["postgres"]
    if isinstance(postgres, dict):
        lines.append(
            f"Postgres {postgres['server_version']} (synchronous_commit="
            f"{postgres['synchronous_commit']}, fsync={postgres['fsync']}); SQLite WAL, "
            "synchronous=FULL."
        )
    else:
        lines.append(
            f"Postgres skipped ({postgres}). Set CHARTER_BENCH_POSTGRES_URL (or pass "
            "--postgres-url), e.g. postgresql://postgres@127.0.0.1:5432/test, to measure it."
        )
    lines += [
        "",
        "| store | workload | worker processes | items/s (median) | range | × one worker |",
        "|:---|:---|---:|---:|---:|---:|",
    ]
    base = {row.store: row.median for row in rows if row.workers == 1}
    for row in rows:
        low, high = min(row.rates), max(row.rates)
        lines.append(
            f"| {row.store} | {row.workload} | {row.workers} | {row.median:,.0f} "
            f"| {low:,.0f}–{high:,.0f} | {row.median / base[row.store]:.2f} |"
        )
    lines.append("")
    lines.append("An item is one claim and one commit (two transactions, two events).")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.store_scaling",
        description="Claims + commits per second with 1, 2 and 4 worker processes.",
    )
    parser.add_argument("--quick", action="store_true", help="one short round (a smoke run)")
    parser.add_argument("--postgres-url", metavar="URL", help="the Postgres server to measure")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    url = _postgres_url(args.postgres_url)
    if url is None:
        _progress(
            "Postgres: no URL (set CHARTER_BENCH_POSTGRES_URL or pass --postgres-url, e.g. "
            "postgresql://postgres@127.0.0.1:5432/test); measuring SQLite only"
        )
    try:
        result = run(settings, url)
    except (StoreError, RuntimeError) as error:
        print(f"store_scaling: {error}", file=sys.stderr)
        return 1
    if isinstance(result["facts"]["postgres"], str) and url is not None:
        _progress(f"Postgres: {result['facts']['postgres']}; measured SQLite only")
    print(render_markdown(result))
    if args.json is not None:
        payload = {
            "facts": result["facts"],
            "rows": [asdict(row) | {"median": row.median} for row in result["rows"]],
        }
        args.json.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
