"""``charter resolve``: a person says what became of a side effect whose outcome was lost.

A node whose tool is not idempotent and whose worker stopped mid-call waits for a person
(``outcome_unknown``; docs/workflows.md §3.3). ``charter resolve RUN NODE --user U`` answers
with exactly one of ``--succeeded`` (it happened: the node completes with ``--output``),
``--failed`` (it did not: the node fails with ``--reason``) or ``--retry`` (run it once more),
recorded by the store as ``outcome_resolved`` (`Store.resolve_outcome`), authorised like an
approval: only the tenant's ``resolver`` may answer, and when the tenant names keys for the
user the answer must be signed (``--key FILE``). The run then continues here unless
``--no-continue``.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from charter.adapters.files import read_document
from charter.bootstrap import build_registry
from charter.cli.answers import answered, os_account, signed
from charter.cli.common import (
    db_option,
    executors_option,
    open_db,
    require_node,
    require_run,
)
from charter.core.answers import open_outcome, resolution_statement, stamp
from charter.core.approvals import ApprovalRefused
from charter.core.commit import Head
from charter.core.errors import InvalidInput
from charter.core.events import Event
from charter.core.records import Execution
from charter.core.signing import Statement

if TYPE_CHECKING:
    from charter.cli.common import CliStore

__all__ = ["add_resolve"]


def add_resolve(commands: Any) -> None:
    resolve = commands.add_parser(
        "resolve",
        help="say what became of a side effect whose outcome was lost, then continue the run",
        description=(
            "NODE's side effect in RUN may or may not have happened (its worker stopped "
            "mid-call, and its tool is not idempotent). Record USER's answer — it happened "
            "(--succeeded, with the node's --output), it did not (--failed, with a --reason), "
            "or run it once more (--retry) — then continue the run here unless --no-continue."
        ),
    )
    resolve.add_argument("run_id", metavar="RUN")
    resolve.add_argument("node_id", metavar="NODE")
    resolve.add_argument("--user", required=True, metavar="USER", help="who answers")
    answer = resolve.add_mutually_exclusive_group(required=True)
    answer.add_argument(
        "--succeeded",
        dest="resolution",
        action="store_const",
        const="succeeded",
        help="the effect happened: the node completes (with --output) and the run routes on",
    )
    answer.add_argument(
        "--failed",
        dest="resolution",
        action="store_const",
        const="failed",
        help="the effect did not happen: the node fails (with --reason)",
    )
    answer.add_argument(
        "--retry",
        dest="resolution",
        action="store_const",
        const="retry",
        help="run the node once more (under a new idempotency key, so it really fires)",
    )
    resolve.add_argument(
        "--output", metavar="JSON", help="with --succeeded: the node's output (JSON or @file)"
    )
    resolve.add_argument("--reason", metavar="TEXT", help="with --failed: why it failed")
    resolve.add_argument("--comment", metavar="TEXT")
    resolve.add_argument(
        "--key",
        metavar="FILE",
        help="sign the answer with this private key (required when the tenant names keys)",
    )
    resolve.add_argument("--no-continue", action="store_true", help="only record it")
    resolve.add_argument("--quiet", action="store_true")
    db_option(resolve)
    executors_option(resolve)
    resolve.set_defaults(handler=_resolve)


def _output(text: str | None, resolution: str) -> Any:
    if text is None:
        return None
    if resolution != "succeeded":
        raise InvalidInput("--output", "only --succeeded takes an output")
    if text.startswith("@"):
        return read_document(text[1:])
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidInput("--output", f"not JSON ({error.msg}); pass JSON text or @file") from None


def _statement(
    store: CliStore, execution: Execution, args: argparse.Namespace, decided_at: str
) -> Statement | None:
    """The statement the store will check (`charter.core.answers.resolution_statement`),
    built from what it holds now: ``None`` when no lost outcome of the node waits."""
    waiting = open_outcome(store.read_events(execution.execution_id), args.node_id)
    if waiting is None:
        return None
    tenant = store.get_tenant(execution.tenant_id)
    policy = tenant.policy if tenant is not None else None
    head = Head(
        execution_id=execution.execution_id,
        tenant_id=execution.tenant_id,
        status=execution.status,
        last_sequence=execution.last_sequence,
    )
    return resolution_statement(
        head,
        waiting,
        user_id=args.user,
        resolution=args.resolution,
        comment=args.comment,
        decided_at=decided_at,
        policy_digest=policy.digest if policy is not None else None,
    )


def _resolve(args: argparse.Namespace) -> int:
    if args.reason is not None and args.resolution != "failed":
        raise InvalidInput("--reason", "only --failed takes a reason")
    output = _output(args.output, args.resolution)
    registry = build_registry(args.executors)
    store = open_db(args, must_exist=True)
    try:
        execution = require_run(store, args.run_id)
        require_node(store, execution, args.node_id)
        decided_at = stamp(datetime.now(UTC))
        signature = None
        if args.key is not None:
            statement = _statement(store, execution, args, decided_at)
            if statement is None:
                raise InvalidInput(
                    f"{args.run_id} {args.node_id}",
                    f"refused: no lost outcome of node {args.node_id!r} waits for an answer",
                )
            signature = signed(args.key, statement)
        answer: Event | ApprovalRefused = store.resolve_outcome(
            execution.execution_id,
            args.node_id,
            user_id=args.user,
            resolution=args.resolution,
            output=output,
            reason=args.reason,
            comment=args.comment,
            signature=signature,
            decided_at=decided_at,
            recorded_by=os_account(),
        )
        return answered(store, execution, answer, registry, args)
    finally:
        store.close()
