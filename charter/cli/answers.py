"""The commands people answer with: ``approve`` / ``reject`` (a request for approval,
signed with ``--key`` where the tenant names the approver's keys) and ``keys new`` (an
Ed25519 key pair for signing). Every answer records the operating-system account that
recorded it (`os_account`): with no keys configured, a typed ``--user`` is only a claim,
and the record says so (docs/semantics.md §5)."""

from __future__ import annotations

import argparse
import getpass
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from charter.adapters.executors import ExecutorRegistry
from charter.adapters.keys import load_key, new_key, sign
from charter.bootstrap import build_registry, build_worker
from charter.cli.common import (
    EXIT_OK,
    db_option,
    executors_option,
    open_db,
    require_node,
    require_run,
)
from charter.cli.render import event_line
from charter.cli.runs import _printer, _report
from charter.core.answers import pending_statement, stamp
from charter.core.approvals import ApprovalRefused
from charter.core.errors import InvalidInput
from charter.core.events import ApprovalDecision, Event, JsonValue
from charter.core.records import Execution
from charter.core.signing import Signature, Statement
from charter.integrations.govern import is_governed
from charter.worker import drive

if TYPE_CHECKING:
    from charter.cli.common import CliStore

__all__ = ["add_answer", "add_keys", "answered", "os_account", "signed"]


def os_account() -> JsonValue:
    """Who is recording an answer, as the operating system knows them."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's anonymous uid)
        user = None
    uid = os.getuid() if hasattr(os, "getuid") else None
    return {"user": user, "uid": uid, "host": socket.gethostname()}


def signed(key_path: str | None, statement: Statement | None) -> Signature | None:
    """``statement`` signed with the key in ``key_path`` (``None`` without a key)."""
    if key_path is None:
        return None
    if statement is None:
        raise InvalidInput("--key", "there is no open request to sign an answer to")
    return sign(load_key(key_path), statement)


def add_answer(commands: Any) -> None:
    for name, decision in (("approve", "approved"), ("reject", "rejected")):
        answer = commands.add_parser(
            name,
            help=f"{name} a node's open request, then continue the run",
            description=(
                f"Record that USER {decision} NODE's open request in RUN (only the request's "
                "approver may; signed with --key when the tenant names the approver's keys), "
                "then continue the run here unless --no-continue."
            ),
        )
        answer.add_argument("run_id", metavar="RUN")
        answer.add_argument("node_id", metavar="NODE")
        answer.add_argument("--user", required=True, metavar="USER", help="who decides")
        answer.add_argument("--comment", metavar="TEXT")
        answer.add_argument(
            "--key", metavar="FILE", help="sign the answer with this private key (keys new)"
        )
        answer.add_argument("--no-continue", action="store_true", help="only record it")
        answer.add_argument("--quiet", action="store_true")
        db_option(answer)
        executors_option(answer)
        answer.set_defaults(handler=_answer, decision=ApprovalDecision(decision))


def add_keys(commands: Any) -> None:
    keys = commands.add_parser(
        "keys",
        help="make an Ed25519 key pair for signed answers",
        description="Key pairs for approvers (and auditors' anchors).",
    )
    verbs = keys.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    made = verbs.add_parser(
        "new",
        help="write a new private key file and print its public key",
        description=(
            "Write a new Ed25519 private key to FILE (default: NAME.key), readable by you "
            "only and never overwriting a file, and print the public key as one line "
            "'ed25519:<base64>' for the tenant's `approvers:`."
        ),
    )
    made.add_argument("name", metavar="NAME", help="whose key (e.g. the approver's user id)")
    made.add_argument("--out", metavar="FILE", help="where to write it (default: NAME.key)")
    made.set_defaults(handler=_new_key)


def _new_key(args: argparse.Namespace) -> int:
    path = Path(args.out or f"{args.name}.key")
    print(new_key(path))
    return EXIT_OK


def _statement(
    store: CliStore, execution_id: str, args: argparse.Namespace, decided_at: str
) -> Statement | None:
    """The statement the store will check, built from what it holds now."""
    execution = require_run(store, execution_id)
    tenant = store.get_tenant(execution.tenant_id)
    pending = {p.node_id: p for p in store.pending_approvals(execution_id=execution_id)}
    record = pending.get(args.node_id)
    if record is None:
        return None
    policy = tenant.policy if tenant is not None else None
    return pending_statement(
        execution,
        record,
        user_id=args.user,
        decision=args.decision,
        comment=args.comment,
        decided_at=decided_at,
        policy_digest=policy.digest if policy is not None else None,
    )


def answered(
    store: CliStore,
    execution: Execution,
    answer: Event | ApprovalRefused,
    registry: ExecutorRegistry,
    args: argparse.Namespace,
) -> int:
    """After a person's answer (an approval or a resolution): refuse it as one line if the
    store did, print it, then continue the run here unless ``--no-continue`` (a governed run
    continues when its caller calls again), with `charter run`'s exit codes."""
    if isinstance(answer, ApprovalRefused):
        raise InvalidInput(f"{args.run_id} {args.node_id}", f"refused: {answer.reason}")
    if not args.quiet:
        print(event_line(answer))
    if args.no_continue:
        return EXIT_OK
    stored = store.get_workflow(
        execution.workflow_id, execution.workflow_version, execution.tenant_id
    )
    if stored is not None and is_governed(stored.ir):
        return EXIT_OK
    worker = build_worker(store, executors=registry)
    worker.scheduler.progress(execution.execution_id)  # the events so far: not reprinted
    total = len(worker.scheduler.definitions.for_execution(execution).nodes)
    done = store.read_events(execution.execution_id)
    worker.scheduler.on_events = _printer(args.quiet, total, done)
    return _report(store, drive(worker, execution.execution_id), args.db)


def _answer(args: argparse.Namespace) -> int:
    registry = build_registry(args.executors)
    store = open_db(args, must_exist=True)
    try:
        execution = require_run(store, args.run_id)
        require_node(store, execution, args.node_id)
        decided_at = stamp(datetime.now(UTC))
        statement = _statement(store, execution.execution_id, args, decided_at)
        signature = signed(args.key, statement)
        answer: Event | ApprovalRefused = store.decide_approval(
            execution.execution_id,
            args.node_id,
            user_id=args.user,
            decision=args.decision,
            comment=args.comment,
            signature=signature,
            decided_at=decided_at,
            recorded_by=os_account(),
        )
        return answered(store, execution, answer, registry, args)
    finally:
        store.close()
