"""`charter serve` under load: decisions per second over HTTP, and approvers racing.

Run with ``python -m bench.serve_load [--quick] [--db PATH|URL] [--json PATH]``; a Markdown
report goes to stdout, progress to stderr. See docs/service.md ("Load") for the numbers
measured.

* **Decisions over HTTP**: a ``charter serve`` process (a subprocess, on 127.0.0.1, on a
  fresh SQLite file by default) answers ``POST /v1/decisions`` (tenant ``acme``, the
  example tenant policy, a tool the tenant allows) from 1, 16 and 64 concurrent clients
  (threads, each with its own keep-alive httpx client); each client sends its requests one
  after another. Reported: decisions per second and the p50 / p99 latency of one request.
* **In-process gate** beside it: the same decision (`gate_node` on a `GateRequest` built in
  each call), one thread.
* **Race**: 100 runs held for approval by ``finance-*``; 100 approvers (each with a
  token of their own) answer all 100 requests at once, each in its own order. Exactly 100
  answers must be recorded (one per request), the rest refused as already answered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from charter.adapters.files import load_policy_layer, load_workflow_file
from charter.adapters.service_store import open_service_store
from charter.bootstrap import build_worker, open_store
from charter.core.events import ApprovalReceived
from charter.core.gate import GateRequest, gate_node
from charter.core.policy import EvaluationContext, PolicyScope, policy_chain
from charter.core.records import Tenant
from charter.service.tokens import issue_token
from charter.worker import drive, start_run

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = """
workflow_id: payout
version: "1"
tenant_id: acme
start_node: pay
tools:
  payments.send: {idempotent: false, executor: echo}
nodes:
  pay: {kind: {type: tool, tool_ref: payments.send, args: {amount: 120}}, retry_policy: no_retry}
policy: {require_approval_for: ["payments.*"], approver: "finance-*"}
"""
DECISION = {"tenant_id": "acme", "node_kind": "tool", "tool": "orders.lookup", "call": {"id": 7}}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _prepare(db: str, runs: int) -> tuple[str, list[str], list[str]]:
    store = open_store(db)
    tokens = open_service_store(db)
    try:
        now = datetime.now(UTC)
        policy = load_policy_layer(ROOT / "examples" / "tenant-acme.yaml", PolicyScope.TENANT)
        store.put_tenant(Tenant(tenant_id="acme", policy=policy, created_at=now, updated_at=now))
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "payout.yaml"
            path.write_text(WORKFLOW)
            workflow, _ = load_workflow_file(path)
        worker = build_worker(store)
        run_ids = []
        for index in range(runs):
            run_id = f"race-{index}"
            start_run(store, workflow, execution_id=run_id)
            drive(worker, run_id)
            run_ids.append(run_id)
        service, _ = issue_token(tokens, "load-client", now=now)
        approvers = [issue_token(tokens, f"finance-{n}", now=now)[0] for n in range(runs)]
        return service, approvers, run_ids
    finally:
        tokens.close()
        store.close()


def _decisions(base: str, token: str, clients: int, per_client: int) -> dict[str, float]:
    """``clients`` threads, each with its own keep-alive connection, each sending
    ``per_client`` decisions one after another (threads rather than asyncio tasks: httpx's
    async client, not the server, was the bottleneck with many tasks)."""
    latencies: list[float] = []
    lock = threading.Lock()
    failures: list[str] = []
    ready = threading.Barrier(clients + 1)
    headers = {"Authorization": f"Bearer {token}"}

    def one_client() -> None:
        mine = []
        with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
            client.post("/v1/decisions", json=DECISION)  # warm-up: the connection is open
            ready.wait(timeout=120)
            for _ in range(per_client):
                started = time.perf_counter()
                response = client.post("/v1/decisions", json=DECISION)
                mine.append(time.perf_counter() - started)
                if response.status_code != 200 or response.json()["decision"] != "run":
                    failures.append(f"{response.status_code} {response.text}")
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=one_client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    ready.wait(timeout=120)
    started = time.perf_counter()
    for thread in threads:
        thread.join(timeout=600)
    elapsed = time.perf_counter() - started
    if failures:
        raise SystemExit(f"unexpected answers: {failures[:3]}")
    return {
        "per_sec": len(latencies) / elapsed,
        "p50_ms": _percentile(latencies, 0.50) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
    }


def _in_process(count: int) -> dict[str, float]:
    policy = load_policy_layer(ROOT / "examples" / "tenant-acme.yaml", PolicyScope.TENANT)
    chain = policy_chain(policy)
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        gate_node(
            GateRequest(
                context=EvaluationContext("call", "tool", "orders.lookup"),
                policies=chain,
                call={"id": 7},
                now=datetime.now(UTC),
            )
        )
        latencies.append(time.perf_counter() - started)
    return {
        "per_sec": len(latencies) / sum(latencies),
        "p50_ms": _percentile(latencies, 0.50) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
    }


async def _race(base: str, approvers: list[str], run_ids: list[str]) -> dict[int, int]:
    statuses: dict[int, int] = {}
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:

        async def approver(token: str, seed: int) -> None:
            order = list(run_ids)
            random.Random(seed).shuffle(order)
            for run_id in order:
                response = await client.post(
                    f"/v1/approvals/{run_id}/pay/approve",
                    headers={"Authorization": f"Bearer {token}"},
                    json={},
                )
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        await asyncio.gather(*(approver(t, n) for n, t in enumerate(approvers)))
    return statuses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer requests")
    parser.add_argument("--db", help="a SQLite path or postgresql:// URL (default: a new file)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    run_started = datetime.now(UTC)
    load_at_start = os.getloadavg()
    per_client = 50 if args.quick else 400
    runs = 20 if args.quick else 100
    folder = tempfile.mkdtemp(prefix="charter-serve-load-")
    db = args.db or str(Path(folder) / "charter.db")
    _log(f"preparing {runs} held runs and {runs + 1} tokens in {db}")
    service, approvers, run_ids = _prepare(db, runs)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "charter", "serve", "--db", db, "--port", str(port), "--quiet"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, env={**os.environ})
    try:
        for _ in range(600):  # at most a minute to start
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.1)  # not up (or not healthy) yet: poll again
        else:
            raise SystemExit("the server did not start")
        rows: list[tuple[str, dict[str, float]]] = [("in-process gate_node", _in_process(20_000))]
        for clients in (1, 16, 64):
            _log(f"decisions over HTTP, {clients} clients × {per_client}")
            rows.append(
                (
                    f"HTTP, {clients} clients",
                    _decisions(base, service, clients, per_client),
                )
            )
        _log(f"race: {len(approvers)} approvers × {len(run_ids)} requests")
        started = time.perf_counter()
        statuses = asyncio.run(_race(base, approvers, run_ids))
        race_secs = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=30)
    store = open_store(db)
    try:
        answers = sum(
            isinstance(e.kind, ApprovalReceived) for r in run_ids for e in store.read_events(r)
        )
    finally:
        store.close()
    print(f"# charter serve load ({'quick' if args.quick else 'full'}; {db.split('?')[0]})\n")
    print("| decider | decisions/s | p50 ms | p99 ms |\n|---|---:|---:|---:|")
    for name, row in rows:
        print(f"| {name} | {row['per_sec']:,.0f} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} |")
    print(
        f"\nRace: {len(approvers)} approvers × {len(run_ids)} requests in {race_secs:.1f} s: "
        f"HTTP statuses {dict(sorted(statuses.items()))}; answers recorded: {answers} "
        f"(expected {len(run_ids)})"
    )
    ok = answers == len(run_ids) and statuses.get(200) == len(run_ids)
    if args.json:
        _write_json(
            Path(args.json),
            {
                "benchmark": "serve_load",
                "mode": "quick" if args.quick else "full",
                "started": run_started.isoformat(timespec="seconds"),
                "finished": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": {
                    "cores": os.cpu_count(),
                    "python": f"{platform.python_implementation()} {platform.python_version()}",
                    "platform": platform.platform(),
                    "load_average_at_start": list(load_at_start),
                    "load_average_at_end": list(os.getloadavg()),
                },
                "db": "postgres" if db.startswith("postgresql") else "sqlite",
                "requests_per_client": per_client,
                "rows": [{"decider": name, **row} for name, row in rows],
                "race": {
                    "approvers": len(approvers),
                    "requests": len(run_ids),
                    "seconds": race_secs,
                    "statuses": {str(k): v for k, v in sorted(statuses.items())},
                    "answers_recorded": answers,
                    "ok": ok,
                },
            },
        )
    return 0 if ok else 1


def _write_json(path: Path, data: dict[str, object]) -> None:
    """Write ``data`` as indented JSON (the numbers a report and charts are drawn from)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
