"""The commands that run work: ``run`` (start a run and drive it here) and ``worker``
(process every run's work until stopped); `charter.cli.answers` answers requests and
continues runs with `_report` and `_printer` from here. Stores and workers come from the
composition root (`charter.bootstrap`)."""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from charter.adapters.files import load_policy_layer, load_workflow_file, read_document
from charter.bootstrap import build_registry, build_worker, shown
from charter.cli.common import (
    DEFAULT_DB,
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_WAITING,
    db_option,
    executors_option,
    open_db,
    where,
)
from charter.cli.render import event_line
from charter.core.approvals import ANY_HUMAN
from charter.core.errors import Conflict, InvalidInput
from charter.core.events import (
    Event,
    NodeCancelled,
    NodeCompleted,
    NodeFailed,
    NodeSkipped,
)
from charter.core.policy import PolicyScope
from charter.core.records import MAX_ID_LENGTH, Tenant
from charter.worker import (
    ALL_QUEUES,
    DEFAULT_BATCH,
    DEFAULT_CHAIN_LIMIT,
    RunOutcome,
    drive,
    start_run,
)

if TYPE_CHECKING:
    from charter.cli.common import CliStore

__all__ = ["add_run", "add_worker"]


def add_run(commands: Any) -> None:
    run = commands.add_parser(
        "run",
        help="run a workflow file to completion or until it waits for a person",
        description=(
            "Validate FILE, store it and start a run; drive it here, printing each event, until "
            "it completes (exit 0), fails (4), is cancelled (5) or waits for an approval (3)."
        ),
    )
    run.add_argument("file", metavar="FILE", help="workflow file (YAML or JSON)")
    db_option(run)
    run.add_argument("--input", metavar="JSON", help="the run's input: JSON text or @file")
    run.add_argument("--run-id", metavar="ID", help="id of the new run (default: generated)")
    run.add_argument("--tenant", metavar="ID", help="run for this tenant (default: the file's)")
    run.add_argument(
        "--tenant-policy",
        metavar="POLICY",
        help="create or update the tenant with this policy file's set (bare or 'tenant:')",
    )
    run.add_argument("--quiet", action="store_true", help="print only the outcome")
    executors_option(run)
    run.set_defaults(handler=_run)


def add_worker(commands: Any) -> None:
    worker = commands.add_parser(
        "worker",
        help="process work items until stopped (SIGINT / SIGTERM)",
        description=(
            "Claim and process work items of every run in the database until stopped; finishes "
            "the items in hand before exiting."
        ),
    )
    db_option(worker)
    worker.add_argument(
        "--queues",
        metavar="Q1,Q2",
        default=",".join(ALL_QUEUES),
        help=f"queues to claim from (default: {','.join(ALL_QUEUES)})",
    )
    worker.add_argument(
        "--concurrency",
        type=int,
        default=1,
        metavar="N",
        help=f"threads (1 to {MAX_CONCURRENCY})",
    )
    worker.add_argument(
        "--lease",
        type=float,
        default=30.0,
        metavar="SECS",
        help=f"lease length in seconds (more than 0, at most {MAX_LEASE_SECS:g})",
    )
    worker.add_argument(
        "--batch",
        type=int,
        default=DEFAULT_BATCH,
        metavar="K",
        help=f"ready items of a run claimed and committed per transaction (1 to {MAX_BATCH}; "
        f"default {DEFAULT_BATCH}; 1: one at a time)",
    )
    worker.add_argument(
        "--chain-limit",
        type=int,
        default=DEFAULT_CHAIN_LIMIT,
        metavar="N",
        help="how many nodes in a row a thread may claim in the transactions that commit the "
        f"ones before (0 to {MAX_CHAIN_LIMIT}; default {DEFAULT_CHAIN_LIMIT}; 0: every claim "
        "in its own transaction)",
    )
    worker.add_argument(
        "--worker-id",
        metavar="ID",
        help="this worker's id; its threads are ID-0, ID-1, … (default: generated)",
    )
    executors_option(worker)
    worker.set_defaults(handler=_worker)


#: The most worker threads one ``charter worker`` runs (each may hold a database connection).
MAX_CONCURRENCY = 256
#: The longest lease (the stores' bound: one day).
MAX_LEASE_SECS = 86_400.0
#: The most ready items a worker takes per transaction (`Worker`'s bound).
MAX_BATCH = 1000
#: The most nodes in a row a worker claims in its own commits' transactions.
MAX_CHAIN_LIMIT = 100_000


def _check_worker_options(args: argparse.Namespace) -> tuple[str, ...]:
    """``worker``'s options, checked before anything starts (`InvalidInput` naming the
    option); the queues to claim from."""
    if not 1 <= args.concurrency <= MAX_CONCURRENCY:
        raise InvalidInput(
            "--concurrency",
            f"expected at least 1 and at most {MAX_CONCURRENCY} threads, got {args.concurrency}",
        )
    if not math.isfinite(args.lease) or not 0 < args.lease <= MAX_LEASE_SECS:
        raise InvalidInput(
            "--lease",
            f"expected more than 0 and at most {MAX_LEASE_SECS:g} seconds, got {args.lease:g}",
        )
    if not 1 <= args.batch <= MAX_BATCH:
        raise InvalidInput(
            "--batch", f"expected at least 1 and at most {MAX_BATCH} items, got {args.batch}"
        )
    if not 0 <= args.chain_limit <= MAX_CHAIN_LIMIT:
        raise InvalidInput(
            "--chain-limit",
            f"expected at least 0 and at most {MAX_CHAIN_LIMIT} nodes, got {args.chain_limit}",
        )
    if args.worker_id is not None:
        # Room for each thread's "-N" within the stores' id limit.
        _check_id(args.worker_id, "--worker-id", MAX_ID_LENGTH - 1 - len(str(MAX_CONCURRENCY)))
    return _queues(args.queues)


def _queues(text: str) -> tuple[str, ...]:
    """``--queues``: one or more of the queues work items go to, comma-separated."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise InvalidInput(
            "--queues",
            f"expected one or more of {','.join(ALL_QUEUES)}, got {text!r} "
            "(a worker with no queue would wait forever)",
        )
    unknown = [name for name in names if name not in ALL_QUEUES]
    if unknown:
        raise InvalidInput(
            "--queues", f"no queue named {unknown[0]!r} (expected some of {','.join(ALL_QUEUES)})"
        )
    return tuple(dict.fromkeys(names))


def _check_id(text: str, option: str, longest: int = MAX_ID_LENGTH) -> str:
    """An id given on the command line (``--run-id``, ``--worker-id``): not empty or blank,
    at most ``longest`` characters, no control characters."""
    if not text.strip():
        raise InvalidInput(option, "expected an id, got an empty one")
    if len(text) > longest:
        raise InvalidInput(option, f"expected at most {longest} characters, got {len(text):,}")
    if not text.isprintable():
        raise InvalidInput(option, "expected printable characters (no control characters)")
    return text


def _printer(
    quiet: bool, total: int, done: Sequence[Event] = ()
) -> Callable[[Sequence[Event]], None] | None:
    """The live timeline: each event as it is recorded, and after each node that finishes,
    how many of the run's ``total`` nodes have (counting those finished in ``done``)."""
    if quiet:
        return None
    finished: set[str] = set()

    def count(event: Event) -> bool:
        kind = event.kind
        ends = isinstance(kind, NodeCompleted | NodeSkipped | NodeCancelled) or (
            isinstance(kind, NodeFailed) and not kind.retryable
        )
        node = getattr(kind, "node_id", None)
        if ends and isinstance(node, str) and node not in finished:
            finished.add(node)
            return True
        return False

    for event in done:
        count(event)

    def show(events: Sequence[Event]) -> None:
        for event in events:
            line = event_line(event)
            if count(event):
                line += f"  [{len(finished)}/{total}]"
            print(line, flush=True)

    return show


def _outcome_code(outcome: RunOutcome) -> int:
    return {
        "completed": EXIT_OK,
        "failed": EXIT_FAILED,
        "cancelled": EXIT_CANCELLED,
        "waiting": EXIT_WAITING,
    }[outcome.status]


def _report(store: CliStore, outcome: RunOutcome, db: str) -> int:
    run = outcome.execution_id
    line = f"run {run}: {outcome.status}"
    if outcome.status == "waiting" and outcome.lost_outcomes:
        db_option = "" if db == DEFAULT_DB else f" --db {shown(db)}"
        nodes = ", ".join(outcome.lost_outcomes)
        line += f" for a person to resolve the lost outcome of {nodes}"
        node = outcome.lost_outcomes[0] if len(outcome.lost_outcomes) == 1 else "NODE"
        resolve = f"charter resolve {run} {node} --user USER"
        line += "\n  (its worker stopped mid-call: did the side effect happen?)"
        line += f"\n  it happened:     {resolve} --succeeded [--output JSON]{db_option}"
        line += f"\n  it did not:      {resolve} --failed [--reason TEXT]{db_option}"
        line += f"\n  run it again:    {resolve} --retry{db_option}"
    elif outcome.status == "waiting" and not (pending := store.pending_approvals(execution_id=run)):
        # Nothing waits for a person: say what the run is really waiting on, never hint at
        # an approval that does not exist.
        line += f": {outcome.error or 'no decision is pending and nothing is left to run'}"
    elif outcome.status == "waiting":
        if pending:
            waits = ", ".join(f"{p.node_id} (approver {p.approver})" for p in pending)
            line += f" for approval of {waits}"
        db_option = "" if db == DEFAULT_DB else f" --db {shown(db)}"
        node = pending[0].node_id if len(pending) == 1 else "NODE"
        approver = pending[0].approver if len(pending) == 1 else ANY_HUMAN
        user = "USER" if approver == ANY_HUMAN or any(c in approver for c in "*?[") else approver
        line += f"\n  answer with: charter approve {run} {node} --user {user}{db_option}"
        reject = f"charter reject {run} {node} --user {user} --comment WHY"
        line += f"\n          or: {reject}{db_option}"
    elif outcome.error:
        line += f": {outcome.error}"
    print(line)
    return _outcome_code(outcome)


def _input(text: str | None) -> Any:
    if text is None:
        return {}
    if text.startswith("@"):
        return read_document(text[1:])
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidInput("--input", f"not JSON ({error.msg}); pass JSON text or @file") from None


def _ensure_tenant(store: CliStore, tenant_id: str, policy_path: str | None, named_by: str) -> None:
    existing = store.get_tenant(tenant_id)
    if policy_path is None:
        if existing is None:
            raise InvalidInput(
                named_by,
                f"tenant {tenant_id!r} is not in {where(store)}: create it with `charter tenant "
                f"{tenant_id} --policy FILE`, or pass --tenant-policy FILE",
            )
        return
    tenant_policy = load_policy_layer(policy_path, PolicyScope.TENANT)
    now = store.clock.now()
    store.put_tenant(
        Tenant(
            tenant_id=tenant_id,
            name=existing.name if existing else tenant_id,
            policy=tenant_policy,
            created_at=existing.created_at if existing else now,
            updated_at=now,
        )
    )


def _run(args: argparse.Namespace) -> int:
    if args.run_id is not None:
        _check_id(args.run_id, "--run-id")
    workflow, _ = load_workflow_file(args.file)
    inputs = _input(args.input)
    registry = build_registry(args.executors)
    store = open_db(args)
    try:
        tenant_id = args.tenant or workflow.tenant_id
        named_by = "--tenant" if args.tenant else f"{args.file}: tenant_id"
        _ensure_tenant(store, tenant_id, args.tenant_policy, named_by)
        if args.run_id is not None and store.get_execution(args.run_id) is not None:
            raise InvalidInput(
                "--run-id", f"a run {args.run_id!r} already exists in {shown(args.db)}"
            )
        try:
            execution = start_run(
                store, workflow, inputs=inputs, execution_id=args.run_id, tenant_id=tenant_id
            )
        except Conflict as error:
            raise InvalidInput(args.file, f"{error}; change its version to store it") from None
        run_id = execution.execution_id
        if not args.quiet:
            print(f"run {run_id}: {workflow.workflow_id} v{workflow.version} ({shown(args.db)})")
        printer = _printer(args.quiet, len(workflow.nodes))
        worker = build_worker(store, executors=registry, on_events=printer)
        return _report(store, drive(worker, run_id), args.db)
    finally:
        store.close()


def _worker(args: argparse.Namespace) -> int:
    queues = list(_check_worker_options(args))
    registry = build_registry(args.executors)
    store = open_db(args)
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        print(f"charter worker: signal {signum}, finishing the items in hand", file=sys.stderr)
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    base = args.worker_id or f"worker-{uuid.uuid4().hex[:6]}"
    first = build_worker(
        store,
        executors=registry,
        worker_id=f"{base}-0",
        queues=queues,
        lease_secs=args.lease,
        batch=args.batch,
        chain_limit=args.chain_limit,
    )
    workers = [first] + [
        build_worker(
            store,
            executors=registry,
            scheduler=first.scheduler,
            worker_id=f"{base}-{index}",
            queues=queues,
            lease_secs=args.lease,
            batch=args.batch,
            chain_limit=args.chain_limit,
        )
        for index in range(1, args.concurrency)
    ]
    threads = [
        threading.Thread(target=worker.run, args=(stop,), name=worker.worker_id)
        for worker in workers
    ]
    where = shown(args.db)
    print(
        f"charter worker {base}: {args.concurrency} thread(s), batch {args.batch}, "
        f"chain limit {args.chain_limit}, "
        f"on {','.join(queues)} ({where})"
    )
    for thread in threads:
        thread.start()
    try:
        while any(thread.is_alive() for thread in threads):
            for thread in threads:
                thread.join(timeout=0.5)
    finally:
        stop.set()
        store.close()
    return EXIT_OK
