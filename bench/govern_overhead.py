"""What `charter.govern` adds to a call: the bare call beside the same call governed, per call.

Run with ``python -m bench.govern_overhead [--calls N] [--warmup W] [--dir DIR]
[--json PATH]``; a Markdown table goes to stdout. This docstring is the description of what
is measured.

**The function**: ``add(a, b) -> a + b`` (and an ``async`` twin), so what is measured is the
governance, not the work. Each call gets new arguments (``add(i, i)``), as calls of a real
tool do, so every call is its own invocation digest.

**Paths**, each timed call by call with `time.perf_counter_ns` after ``--warmup`` untimed
calls (the run is created and its definition stored during the warmup):

* **bare** — ``add(i, i)``;
* **governed, memory** — the same function governed (`charter.integrations.govern`) on a
  `MemoryStore`: identify the call (bind the arguments, canonical JSON, SHA-256), read the
  tenant, decide (`gate_node`), append ``node_started``, ``agent_tool_invoked`` and
  ``node_gated`` by compare-and-append, call, settle (`settle_node`) and append
  ``usage_recorded`` and ``node_completed``: two appends per call;
* **governed, SQLite NORMAL** — the same on a SQLite file in WAL mode with
  ``synchronous=NORMAL`` (durable across a process crash, not a power loss): each append is
  one transaction;
* **governed, SQLite FULL** — the same with ``synchronous=FULL`` (the store's default:
  durable across power loss; one fsync per append);
* the **async** forms: ``await add(i, i)`` bare, and governed on the memory store, where the
  store work before and after the call runs in a worker thread (`asyncio.to_thread`).

Policy in force: a tenant set blocking ``db.drop_*`` and a session set requiring approval
for ``payments.*`` (neither matches ``add``: every call runs). No OpenTelemetry SDK is
configured: the API's no-op spans are part of the cost.

**Session length** (``--session-calls N``, default 10,000; 0 skips it): one session on each
store (memory, SQLite NORMAL) makes N calls in a row, and the report gives the median of the
first and of the last 1,000 calls and their ratio: a governed call's cost must not grow with
the number of calls the session has made (issue 14's "constant cost per node", for sessions).

The report gives each path's median and 90th percentile in microseconds per call and the
median's overhead over the bare call. Numbers are from one machine; the machine is named.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from charter.adapters.memory import MemoryStore
from charter.adapters.sqlite import SqliteStore
from charter.core.policy import PolicySet
from charter.core.ports import Store
from charter.core.records import Tenant
from charter.integrations.govern import Governor


def add(a: int, b: int) -> int:
    return a + b


async def add_async(a: int, b: int) -> int:
    return a + b


def _tenant(store: Store) -> None:
    now = store.clock.now()
    store.put_tenant(
        Tenant(
            tenant_id="bench",
            policy=PolicySet(blocked_tools=["db.drop_*"]),
            created_at=now,
            updated_at=now,
        )
    )


def _governor(store: Store, run_id: str) -> Governor:
    _tenant(store)
    return Governor(
        store=store,
        tenant="bench",
        run_id=run_id,
        policy=PolicySet(require_approval_for=["payments.*"]),
    )


def _time_sync(call: Callable[[int, int], Any], calls: int, warmup: int) -> list[float]:
    for i in range(warmup):
        call(i, i)
    samples = []
    clock = time.perf_counter_ns
    for i in range(warmup, warmup + calls):
        start = clock()
        call(i, i)
        samples.append((clock() - start) / 1000)
    return samples


def _time_async(call: Callable[[int, int], Awaitable[Any]], calls: int, warmup: int) -> list[float]:
    async def main() -> list[float]:
        for i in range(warmup):
            await call(i, i)
        samples = []
        clock = time.perf_counter_ns
        for i in range(warmup, warmup + calls):
            start = clock()
            await call(i, i)
            samples.append((clock() - start) / 1000)
        return samples

    return asyncio.run(main())


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_us": statistics.median(ordered),
        "p90_us": ordered[int(0.9 * (len(ordered) - 1))],
    }


def measure(calls: int, warmup: int, directory: Path) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    results["bare"] = _summary(_time_sync(add, calls, warmup))
    memory = _governor(MemoryStore(), "bench-memory")
    results["governed, memory"] = _summary(_time_sync(memory.govern(add), calls, warmup))
    for mode in ("NORMAL", "FULL"):
        path = directory / f"govern-{mode.lower()}.db"
        store = SqliteStore(path, synchronous=mode)
        try:
            governed = _governor(store, f"bench-{mode.lower()}").govern(add)
            results[f"governed, SQLite {mode}"] = _summary(_time_sync(governed, calls, warmup))
        finally:
            store.close()
    results["bare, async"] = _summary(_time_async(add_async, calls, warmup))
    amemory = _governor(MemoryStore(), "bench-async").govern(add_async)
    results["governed, memory, async"] = _summary(_time_async(amemory, calls, warmup))
    return results


def measure_session(calls: int, directory: Path) -> dict[str, dict[str, float]]:
    """Per store: the median µs per call of the first and the last 1,000 of ``calls``."""
    window = min(1000, max(1, calls // 2))
    results: dict[str, dict[str, float]] = {}
    stores: list[tuple[str, Callable[[], Store]]] = [
        ("memory", MemoryStore),
        ("SQLite NORMAL", lambda: SqliteStore(directory / "session.db", synchronous="NORMAL")),
    ]
    for name, make in stores:
        store = make()
        try:
            samples = _time_sync(_governor(store, f"session-{len(results)}").govern(add), calls, 0)
        finally:
            store.close()
        first = statistics.median(samples[:window])
        last = statistics.median(samples[-window:])
        results[name] = {"first_us": first, "last_us": last, "last_over_first": last / first}
    return results


def session_report(results: dict[str, dict[str, float]], calls: int) -> str:
    window = min(1000, max(1, calls // 2))
    lines = [
        "",
        f"One session, {calls:,} calls in a row: median µs per call of the first and the last "
        f"{window:,}",
        "",
        "| store | first | last | last / first |",
        "|---|---:|---:|---:|",
    ]
    for name, values in results.items():
        lines.append(
            f"| {name} | {values['first_us']:.1f} | {values['last_us']:.1f} | "
            f"{values['last_over_first']:.2f}× |"
        )
    return "\n".join(lines)


def report(results: dict[str, dict[str, float]], calls: int) -> str:
    bare = {
        False: results["bare"]["median_us"],
        True: results["bare, async"]["median_us"],
    }
    lines = [
        f"`charter.govern` overhead, {calls} calls per path "
        f"({platform.processor() or platform.machine()}, Python {platform.python_version()})",
        "",
        "| path | median µs/call | p90 µs/call | overhead over bare (median) |",
        "|---|---:|---:|---:|",
    ]
    for name, values in results.items():
        base = bare["async" in name]
        overhead = values["median_us"] - base
        lines.append(
            f"| {name} | {values['median_us']:.1f} | {values['p90_us']:.1f} | "
            f"{'—' if name.startswith('bare') else f'+{overhead:.1f} µs'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--session-calls", type=int, default=10_000)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.session_calls < 0:
        parser.error("--session-calls: expected 0 (skip) or a positive number of calls")
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        results = measure(args.calls, args.warmup, Path(scratch))
        session = measure_session(args.session_calls, Path(scratch)) if args.session_calls else {}
    print(report(results, args.calls))
    if session:
        print(session_report(session, args.session_calls))
    if args.json is not None:
        output: dict[str, Any] = dict(results)
        if session:
            output["session"] = session
        args.json.write_text(json.dumps(output, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
