"""The ``charter`` command line.

Exit codes (docs/cli.md):

====  ==========================================================================
0     success: allowed (``check``), run completed (``run``, ``approve``, …)
1     internal error (a bug: please report it)
2     bad input or usage (file, field, argument) — the message names it
3     ``check``: approval required / a run is waiting for a person
4     ``check``: blocked / a run failed
5     a run was cancelled
6     ``audit verify``: the log was altered; ``audit replay``: a decision diverges
141   the output's reader went away (``charter events RUN | head``); nothing is reported
====  ==========================================================================

Bad input is reported as one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from charter.adapters.codec import dump
from charter.adapters.files import (
    PolicyFile,
    load_policy_file,
    load_policy_layer,
    load_workflow_file,
    read_document,
)
from charter.adapters.sqlite import SqliteStore
from charter.audit import cli as audit_cli
from charter.cli.render import approval_lines, event_line, run_lines
from charter.core.approvals import ANY_HUMAN, ApprovalRefused
from charter.core.errors import CharterError, Conflict, InvalidInput, NotFound, describe
from charter.core.events import (
    ApprovalDecision,
    Event,
    NodeCancelled,
    NodeCompleted,
    NodeFailed,
    NodeSkipped,
    WorkflowCancelled,
)
from charter.core.policy import (
    Allow,
    Block,
    EvaluationContext,
    PolicyEvaluator,
    PolicyScope,
    PolicyVerdict,
    RequireApproval,
)
from charter.core.records import Execution, Tenant
from charter.core.runs import run_record, run_steps
from charter.executors import ExecutorRegistry, default_registry, load_plugin
from charter.worker import ALL_QUEUES, RunOutcome, Scheduler, Worker, drive, start_run

if TYPE_CHECKING:  # the Postgres store is optional: imported by `_open` when asked for
    from typing import TypeAlias

    from charter.adapters.postgres import PostgresStore

    _Store: TypeAlias = SqliteStore | PostgresStore

__all__ = [
    "EXIT_APPROVAL",
    "EXIT_BLOCKED",
    "EXIT_CANCELLED",
    "EXIT_FAILED",
    "EXIT_INTERNAL",
    "EXIT_OK",
    "EXIT_PIPE",
    "EXIT_USAGE",
    "EXIT_WAITING",
    "main",
]

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_APPROVAL = 3
EXIT_WAITING = 3
EXIT_BLOCKED = 4
EXIT_FAILED = 4
EXIT_CANCELLED = 5
EXIT_PIPE = 141  # 128 + SIGPIPE: the output was cut off by its reader

DEFAULT_DB = "charter.db"


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        metavar="PATH|URL",
        default=DEFAULT_DB,
        help=(
            f"a SQLite file (default: ./{DEFAULT_DB}) or a postgresql:// URL "
            "(pip install 'charter[postgres]'; keep passwords in ~/.pgpass or PGPASSWORD)"
        ),
    )


def _executors_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--executors",
        metavar="MODULE:FUNCTION",
        action="append",
        default=[],
        help="call FUNCTION(registry) to register your executors (repeatable)",
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="charter",
        description="Charter: run, hold for approval, or refuse each node of an agent workflow.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    run = commands.add_parser(
        "run",
        help="run a workflow file to completion or until it waits for a person",
        description=(
            "Validate FILE, store it and start a run; drive it here, printing each event, until "
            "it completes (exit 0), fails (4), is cancelled (5) or waits for an approval (3)."
        ),
    )
    run.add_argument("file", metavar="FILE", help="workflow file (YAML or JSON)")
    _db_option(run)
    run.add_argument("--input", metavar="JSON", help="the run's input: JSON text or @file")
    run.add_argument("--run-id", metavar="ID", help="id of the new run (default: generated)")
    run.add_argument("--tenant", metavar="ID", help="run for this tenant (default: the file's)")
    run.add_argument(
        "--tenant-policy",
        metavar="POLICY",
        help="create or update the tenant with this policy file's set (bare or 'tenant:')",
    )
    run.add_argument("--quiet", action="store_true", help="print only the outcome")
    _executors_option(run)
    run.set_defaults(handler=_run)

    validate = commands.add_parser(
        "validate",
        help="check a workflow file and report every problem",
        description="Validate FILE; print every problem with its path, or OK.",
    )
    validate.add_argument("file", metavar="FILE")
    validate.set_defaults(handler=_validate)

    status = commands.add_parser(
        "status",
        help="show a run (with its steps) or list runs",
        description="Without RUN, list runs (newest last); with RUN, its record and steps.",
    )
    status.add_argument("run_id", metavar="RUN", nargs="?")
    _db_option(status)
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=_status)

    events = commands.add_parser(
        "events", help="print a run's event log", description="Print RUN's events, in order."
    )
    events.add_argument("run_id", metavar="RUN")
    _db_option(events)
    events.add_argument("--json", action="store_true", help="one JSON object per line")
    events.set_defaults(handler=_events)

    approvals = commands.add_parser(
        "approvals", help="list open approval requests", description="List open approvals."
    )
    _db_option(approvals)
    approvals.add_argument("--json", action="store_true")
    approvals.set_defaults(handler=_approvals)

    for name, decision in (("approve", "approved"), ("reject", "rejected")):
        answer = commands.add_parser(
            name,
            help=f"{name} a node's open request, then continue the run",
            description=(
                f"Record that USER {decision} NODE's open request in RUN (only the request's "
                "approver may), then continue the run here unless --no-continue."
            ),
        )
        answer.add_argument("run_id", metavar="RUN")
        answer.add_argument("node_id", metavar="NODE")
        answer.add_argument("--user", required=True, metavar="USER", help="who decides")
        answer.add_argument("--comment", metavar="TEXT")
        answer.add_argument("--no-continue", action="store_true", help="only record it")
        answer.add_argument("--quiet", action="store_true")
        _db_option(answer)
        _executors_option(answer)
        answer.set_defaults(handler=_answer, decision=ApprovalDecision(decision))

    cancel = commands.add_parser(
        "cancel", help="cancel a run", description="Cancel RUN: no further node is started."
    )
    cancel.add_argument("run_id", metavar="RUN")
    cancel.add_argument("--reason", metavar="TEXT")
    _db_option(cancel)
    cancel.set_defaults(handler=_cancel)

    worker = commands.add_parser(
        "worker",
        help="process work items until stopped (SIGINT / SIGTERM)",
        description=(
            "Claim and process work items of every run in the database until stopped; finishes "
            "the items in hand before exiting."
        ),
    )
    _db_option(worker)
    worker.add_argument(
        "--queues",
        metavar="Q1,Q2",
        default=",".join(ALL_QUEUES),
        help=f"queues to claim from (default: {','.join(ALL_QUEUES)})",
    )
    worker.add_argument("--concurrency", type=int, default=1, metavar="N", help="threads")
    worker.add_argument("--lease", type=float, default=30.0, metavar="SECS")
    worker.add_argument("--worker-id", metavar="ID")
    _executors_option(worker)
    worker.set_defaults(handler=_worker)

    tenant = commands.add_parser(
        "tenant",
        help="create or update a tenant and its policy",
        description="Create or update tenant ID; with --policy, its policy layer.",
    )
    tenant.add_argument("tenant_id", metavar="ID")
    tenant.add_argument("--name", default="")
    tenant.add_argument("--policy", metavar="POLICY", help="policy file (bare set or 'tenant:')")
    _db_option(tenant)
    tenant.set_defaults(handler=_tenant)

    check = commands.add_parser(
        "check",
        help="evaluate a policy file for a tool and/or a model",
        description=(
            "Evaluate POLICY for a tool call and/or a model call and print the decision, the "
            "deciding rule and its scope. Exit 0 if allowed, 3 if approval is required, 4 if "
            "blocked (the most severe when both --tool and --model are given)."
        ),
    )
    check.add_argument("policy", metavar="POLICY", help="policy file (YAML or JSON)")
    check.add_argument("--tool", metavar="T", help="tool name to check")
    check.add_argument("--model", metavar="M", help="model reference to check")
    check.add_argument(
        "--resolved-model",
        metavar="R",
        help="the concrete model M stands for (allowlists then match R, not the alias)",
    )
    check.add_argument(
        "--scope",
        choices=[scope.value for scope in PolicyScope],
        default=PolicyScope.WORKFLOW.value,
        help="scope of a bare (unlayered) policy set (default: workflow)",
    )
    check.add_argument("--node", metavar="ID", default="check", help="node id to report")
    check.add_argument("--json", action="store_true", help="print JSON instead of text")
    check.set_defaults(handler=_check)

    audit_cli.register(commands, db_option=_db_option, open_store=_open)
    return parser


# ── check ──────────────────────────────────────────────────────────────────────────────


def _severity(verdict: PolicyVerdict) -> int:
    match verdict.decision:
        case Block():
            return EXIT_BLOCKED
        case RequireApproval():
            return EXIT_APPROVAL
        case Allow():
            return EXIT_OK


def _verdict_lines(subject: str, verdict: PolicyVerdict) -> list[str]:
    decision = verdict.decision
    lines = []
    match decision:
        case Allow():
            lines.append(f"{subject}: ALLOW")
        case Block(reason=reason):
            lines.append(f"{subject}: BLOCK")
            lines.append(f"  reason: {reason}")
        case RequireApproval(approver=approver):
            lines.append(f"{subject}: REQUIRE APPROVAL (approver: {approver})")
    if verdict.rule is not None:
        scope = verdict.scope.value if verdict.scope is not None else "unknown"
        pattern = f" '{verdict.pattern}'" if verdict.pattern is not None else ""
        lines.append(f"  rule:   {verdict.rule.value}{pattern}")
        lines.append(f"  scope:  {scope}")
    else:
        lines.append("  rule:   none matched (default allow)")
    return lines


def _check(args: argparse.Namespace) -> int:
    if args.tool is None and args.model is None:
        raise CharterError("check: give --tool T and/or --model M")
    if args.resolved_model is not None and args.model is None:
        raise CharterError("check: --resolved-model needs --model")
    policy: PolicyFile = load_policy_file(args.policy, PolicyScope(args.scope))
    evaluator = PolicyEvaluator(policy.combining)
    results: list[tuple[str, EvaluationContext, PolicyVerdict]] = []
    if args.tool is not None:
        ctx = EvaluationContext(args.node, "tool", tool_name=args.tool)
        results.append((f"tool '{args.tool}'", ctx, evaluator.explain(ctx, policy.layers)))
    if args.model is not None:
        ctx = EvaluationContext(
            args.node, "model", model_ref=args.model, resolved_model=args.resolved_model
        )
        results.append((f"model '{args.model}'", ctx, evaluator.explain(ctx, policy.layers)))
    if args.json:
        payload = {
            "combining": policy.combining.value,
            "results": [{"context": dump(ctx), "verdict": dump(v)} for _, ctx, v in results],
        }
        print(json.dumps(payload, indent=2, ensure_ascii=False))
    else:
        for subject, _, verdict in results:
            print("\n".join(_verdict_lines(subject, verdict)))
    return max(_severity(verdict) for _, _, verdict in results)


# ── runs ───────────────────────────────────────────────────────────────────────────────


def _shown(db: str) -> str:
    """``--db`` as it may be printed: a Postgres URL without its password."""
    if not db.startswith(("postgresql://", "postgres://")):
        return db
    parts = urllib.parse.urlsplit(db)
    if parts.password is not None:
        host = parts.netloc.rsplit("@", 1)[-1]
        parts = parts._replace(netloc=f"{parts.username or ''}@{host}")
    query = [
        (name, "***" if name == "password" else value)
        for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    ]
    rest = urllib.parse.urlencode(query, safe="*")
    return urllib.parse.urlunsplit(parts._replace(query=rest))


def _open(args: argparse.Namespace, *, must_exist: bool = False) -> _Store:
    """The store ``--db`` names: a SQLite file, or a Postgres database given as a
    ``postgresql://`` URL (optionally ``?schema=NAME``; the Postgres store needs
    ``pip install 'charter[postgres]'``). Either way a missing store is created, unless
    ``must_exist``."""
    if args.db.startswith(("postgresql://", "postgres://")):
        try:
            from charter.adapters.postgres import PostgresStore
        except ImportError as error:
            raise InvalidInput(
                "--db",
                "a PostgreSQL URL needs the Postgres driver: pip install 'charter[postgres]' "
                f"({error})",
            ) from None
        # Each worker thread and its lease heartbeat may hold a connection at once.
        connections = max(10, 2 * getattr(args, "concurrency", 1) + 2)
        try:
            return PostgresStore(args.db, create=not must_exist, max_connections=connections)
        except NotFound as missing:
            raise InvalidInput(
                "--db", f"{missing} (run a workflow first, or pass another --db)"
            ) from None
    path = Path(args.db)
    if must_exist and not path.exists():
        raise InvalidInput(str(path), "no such database (run a workflow first, or pass --db)")
    return SqliteStore(path)


def _registry(args: argparse.Namespace) -> ExecutorRegistry:
    registry = default_registry()
    for spec in args.executors:
        load_plugin(spec, registry)
    return registry


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


def _report(store: _Store, outcome: RunOutcome, db: str) -> int:
    run = outcome.execution_id
    line = f"run {run}: {outcome.status}"
    if outcome.status == "waiting":
        pending = store.pending_approvals(execution_id=run)
        if pending:
            waits = ", ".join(f"{p.node_id} (approver {p.approver})" for p in pending)
            line += f" for approval of {waits}"
        db_option = "" if db == DEFAULT_DB else f" --db {_shown(db)}"
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


def _ensure_tenant(store: _Store, tenant_id: str, policy_path: str | None, named_by: str) -> None:
    existing = store.get_tenant(tenant_id)
    if policy_path is None:
        if existing is None:
            raise InvalidInput(
                named_by,
                f"tenant {tenant_id!r} is not in {store.path}: create it with `charter tenant "
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
    workflow, _ = load_workflow_file(args.file)
    inputs = _input(args.input)
    registry = _registry(args)
    store = _open(args)
    try:
        tenant_id = args.tenant or workflow.tenant_id
        named_by = "--tenant" if args.tenant else f"{args.file}: tenant_id"
        _ensure_tenant(store, tenant_id, args.tenant_policy, named_by)
        if args.run_id is not None and store.get_execution(args.run_id) is not None:
            raise InvalidInput(
                "--run-id", f"a run {args.run_id!r} already exists in {_shown(args.db)}"
            )
        try:
            execution = start_run(
                store, workflow, inputs=inputs, execution_id=args.run_id, tenant_id=tenant_id
            )
        except Conflict as error:
            raise InvalidInput(args.file, f"{error}; change its version to store it") from None
        run_id = execution.execution_id
        if not args.quiet:
            print(f"run {run_id}: {workflow.workflow_id} v{workflow.version} ({_shown(args.db)})")
        printer = _printer(args.quiet, len(workflow.nodes))
        worker = Worker(store, executors=registry, scheduler=Scheduler(store, on_events=printer))
        return _report(store, drive(worker, run_id), args.db)
    finally:
        store.close()


def _validate(args: argparse.Namespace) -> int:
    workflow, _ = load_workflow_file(args.file)
    print(
        f"{args.file}: OK — {workflow.workflow_id} v{workflow.version}, "
        f"{len(workflow.nodes)} nodes, {len(workflow.edges)} edges"
    )
    return EXIT_OK


def _require_run(store: _Store, run_id: str) -> Execution:
    execution = store.get_execution(run_id)
    if execution is None:
        raise InvalidInput("RUN", f"no run {run_id!r} in {store.path}")
    return execution


def _status(args: argparse.Namespace) -> int:
    store = _open(args, must_exist=True)
    try:
        if args.run_id is None:
            runs: list[Execution] = []
            cursor = None
            while True:
                page = store.list_executions(cursor=cursor, limit=1000)
                runs.extend(page.items)
                cursor = page.next_cursor
                if cursor is None:
                    break
            records = [run_record(e, store.read_events(e.execution_id)) for e in runs]
            if args.json:
                print(json.dumps([dump(r) for r in records], indent=2, ensure_ascii=False))
            elif not records:
                print("no runs")
            else:
                for r in records:
                    print(
                        f"{r.id:<32} {r.status.value:<10} {r.workflow_name} v{r.workflow_version}"
                    )
            return EXIT_OK
        execution = _require_run(store, args.run_id)
        events = store.read_events(execution.execution_id)
        record = run_record(execution, events)
        steps = run_steps(execution.execution_id, events)
        if args.json:
            payload = {"run": dump(record), "steps": [dump(s) for s in steps]}
            print(json.dumps(payload, indent=2, ensure_ascii=False))
        else:
            print("\n".join(run_lines(record, steps)))
        return EXIT_OK
    finally:
        store.close()


def _events(args: argparse.Namespace) -> int:
    store = _open(args, must_exist=True)
    try:
        execution = _require_run(store, args.run_id)
        for event in store.read_events(execution.execution_id):
            if args.json:
                print(json.dumps(dump(event), ensure_ascii=False))
            else:
                print(event_line(event))
        return EXIT_OK
    finally:
        store.close()


def _approvals(args: argparse.Namespace) -> int:
    store = _open(args, must_exist=True)
    try:
        pending = store.pending_approvals()
        if args.json:
            print(json.dumps([dump(p) for p in pending], indent=2, ensure_ascii=False))
        else:
            print("\n".join(approval_lines(pending)))
        return EXIT_OK
    finally:
        store.close()


def _answer(args: argparse.Namespace) -> int:
    registry = _registry(args)
    store = _open(args, must_exist=True)
    try:
        execution = _require_run(store, args.run_id)
        answer = store.decide_approval(
            execution.execution_id,
            args.node_id,
            user_id=args.user,
            decision=args.decision,
            comment=args.comment,
        )
        if isinstance(answer, ApprovalRefused):
            raise InvalidInput(f"{args.run_id} {args.node_id}", f"refused: {answer.reason}")
        if not args.quiet:
            print(event_line(answer))
        if args.no_continue:
            return EXIT_OK
        worker = Worker(store, executors=registry)
        worker.scheduler.progress(execution.execution_id)  # the events so far: not reprinted
        total = len(worker.scheduler.definitions.for_execution(execution).nodes)
        done = store.read_events(execution.execution_id)
        worker.scheduler.on_events = _printer(args.quiet, total, done)
        return _report(store, drive(worker, execution.execution_id), args.db)
    finally:
        store.close()


def _cancel(args: argparse.Namespace) -> int:
    store = _open(args, must_exist=True)
    try:
        execution = _require_run(store, args.run_id)
        if execution.status.terminal:
            raise InvalidInput("RUN", f"run {args.run_id!r} is already {execution.status.value}")
        (event,) = store.append_events(
            execution.execution_id, [WorkflowCancelled(reason=args.reason)]
        )
        print(event_line(event))
        return EXIT_OK
    finally:
        store.close()


def _tenant(args: argparse.Namespace) -> int:
    store = _open(args)
    try:
        existing = store.get_tenant(args.tenant_id)
        now = store.clock.now()
        policy = existing.policy if existing else None
        if args.policy is not None:
            policy = load_policy_layer(args.policy, PolicyScope.TENANT)
        store.put_tenant(
            Tenant(
                tenant_id=args.tenant_id,
                name=args.name or (existing.name if existing else args.tenant_id),
                policy=policy,
                created_at=existing.created_at if existing else now,
                updated_at=now,
            )
        )
        print(f"tenant {args.tenant_id}: {'updated' if existing else 'created'}")
        return EXIT_OK
    finally:
        store.close()


def _worker(args: argparse.Namespace) -> int:
    if args.concurrency < 1:
        raise InvalidInput("--concurrency", f"expected at least 1, got {args.concurrency}")
    queues = [q for q in args.queues.split(",") if q]
    registry = _registry(args)
    store = _open(args)
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        print(f"charter worker: signal {signum}, finishing the items in hand", file=sys.stderr)
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    base = args.worker_id or f"worker-{uuid.uuid4().hex[:6]}"
    first = Worker(
        store, executors=registry, worker_id=f"{base}-0", queues=queues, lease_secs=args.lease
    )
    workers = [first] + [
        Worker(
            store,
            executors=registry,
            scheduler=first.scheduler,
            worker_id=f"{base}-{index}",
            queues=queues,
            lease_secs=args.lease,
        )
        for index in range(1, args.concurrency)
    ]
    threads = [
        threading.Thread(target=worker.run, args=(stop,), name=worker.worker_id)
        for worker in workers
    ]
    where = _shown(args.db)
    print(f"charter worker {base}: {args.concurrency} thread(s) on {','.join(queues)} ({where})")
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


# ── entry point ────────────────────────────────────────────────────────────────────────


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (see the module doc)."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except CharterError as error:
        print(f"charter: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # The reader went away (`charter events RUN | head`): stop quietly, like other tools.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE
    except KeyboardInterrupt:
        print("charter: interrupted", file=sys.stderr)
        return EXIT_INTERNAL
    except Exception as error:  # noqa: BLE001 - last resort: one line, never a traceback
        print(
            f"charter: internal error: {type(error).__name__}: {describe(error)} "
            "(this is a bug in Charter; please report it with the command line)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
