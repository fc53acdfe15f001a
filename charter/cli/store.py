"""The commands that read or change what a store holds, without running anything: ``status``,
``events``, ``approvals``, ``cancel`` and ``tenant``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from charter.adapters.codec import dump
from charter.adapters.files import load_policy_layer
from charter.cli.common import EXIT_OK, db_option, open_db, require_run
from charter.cli.render import (
    answer_lines,
    approval_lines,
    duration,
    event_line,
    lost_lines,
    run_lines,
)
from charter.core.approvals import ANY_HUMAN
from charter.core.errors import InvalidInput
from charter.core.events import OutcomeUnknown, WorkflowCancelled
from charter.core.policy import PolicyScope, PolicySet
from charter.core.records import Execution, Tenant
from charter.core.runs import run_record, run_steps
from charter.worker.lost import lost_outcomes

__all__ = ["add_approvals", "add_cancel", "add_events", "add_status", "add_tenant"]


def add_status(commands: Any) -> None:
    status = commands.add_parser(
        "status",
        help="show a run (with its steps) or list runs",
        description="Without RUN, list runs (newest last); with RUN, its record and steps.",
    )
    status.add_argument("run_id", metavar="RUN", nargs="?")
    db_option(status)
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=_status)


def add_events(commands: Any) -> None:
    events = commands.add_parser(
        "events", help="print a run's event log", description="Print RUN's events, in order."
    )
    events.add_argument("run_id", metavar="RUN")
    db_option(events)
    events.add_argument("--json", action="store_true", help="one JSON object per line")
    events.set_defaults(handler=_events)


def add_approvals(commands: Any) -> None:
    approvals = commands.add_parser(
        "approvals",
        help="list open approval requests and lost outcomes waiting for a person",
        description="List open approvals, then lost outcomes waiting for `charter resolve`.",
    )
    db_option(approvals)
    approvals.add_argument("--json", action="store_true")
    approvals.set_defaults(handler=_approvals)


def add_cancel(commands: Any) -> None:
    cancel = commands.add_parser(
        "cancel", help="cancel a run", description="Cancel RUN: no further node is started."
    )
    cancel.add_argument("run_id", metavar="RUN")
    cancel.add_argument("--reason", metavar="TEXT")
    db_option(cancel)
    cancel.set_defaults(handler=_cancel)


def add_tenant(commands: Any) -> None:
    tenant = commands.add_parser(
        "tenant",
        help="create or update a tenant and its policy",
        description="Create or update tenant ID; with --policy, its policy layer.",
    )
    tenant.add_argument("tenant_id", metavar="ID")
    tenant.add_argument("--name", default="")
    tenant.add_argument("--policy", metavar="POLICY", help="policy file (bare set or 'tenant:')")
    db_option(tenant)
    tenant.set_defaults(handler=_tenant)


def _status(args: argparse.Namespace) -> int:
    store = open_db(args, read_only=True)
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
        execution = require_run(store, args.run_id)
        events = store.read_events(execution.execution_id)
        record = run_record(execution, events)
        steps = run_steps(execution.execution_id, events)
        if args.json:
            payload = {"run": dump(record), "steps": [dump(s) for s in steps]}
            print(json.dumps(payload, indent=2, ensure_ascii=False))
        else:
            print("\n".join([*run_lines(record, steps), *answer_lines(events)]))
        return EXIT_OK
    finally:
        store.close()


def _events(args: argparse.Namespace) -> int:
    store = open_db(args, read_only=True)
    try:
        execution = require_run(store, args.run_id)
        compacted = store.compactions(execution.execution_id)
        if compacted and not args.json:
            last = compacted[-1]
            print(
                f"(events 1–{last.through_sequence} were compacted: summarised by "
                f"#{last.through_sequence} {last.hash[:12]}…; see `charter audit verify`)"
            )
        for event in store.read_events(execution.execution_id):
            if args.json:
                print(json.dumps(dump(event), ensure_ascii=False))
            else:
                print(event_line(event))
        return EXIT_OK
    finally:
        store.close()


def _lost(store: Any) -> list[dict[str, Any]]:
    """The lost outcomes waiting for a person, with who may resolve them."""
    shown = []
    for execution, event, _ in lost_outcomes(store):
        kind = event.kind
        assert isinstance(kind, OutcomeUnknown)
        tenant = store.get_tenant(execution.tenant_id)
        policy = tenant.policy if tenant is not None else None
        shown.append(
            {
                "type": "lost_outcome",
                "execution_id": execution.execution_id,
                "tenant_id": execution.tenant_id,
                "node_id": kind.node_id,
                "attempt": kind.attempt,
                "idempotency_key": kind.idempotency_key,
                "reason": kind.reason,
                "resolver": (policy.resolver if policy is not None else None) or ANY_HUMAN,
                "sequence": event.sequence,
                "lost_at": event.created_at.isoformat(),
            }
        )
    return shown


def _approvals(args: argparse.Namespace) -> int:
    store = open_db(args, read_only=True)
    try:
        pending = store.pending_approvals()
        lost = _lost(store)
        if args.json:
            items = [dump(p) for p in pending] + lost
            print(json.dumps(items, indent=2, ensure_ascii=False))
        else:
            lines = approval_lines(pending) if pending or not lost else []
            if lost:
                lines += lost_lines(lost)
            print("\n".join(lines))
        return EXIT_OK
    finally:
        store.close()


def _cancel(args: argparse.Namespace) -> int:
    store = open_db(args, must_exist=True)
    try:
        execution = require_run(store, args.run_id)
        if execution.status.terminal:
            raise InvalidInput("RUN", f"run {args.run_id!r} is already {execution.status.value}")
        (event,) = store.append_events(
            execution.execution_id, [WorkflowCancelled(reason=args.reason)]
        )
        print(event_line(event))
        return EXIT_OK
    finally:
        store.close()


def tenant_policy_summary(policy: PolicySet) -> str:
    """How a tenant's rules combine with lower scopes, and who answers with which keys."""
    if policy.final:
        line = "combining: final (workflow and node rules may add restrictions, never remove one)"
    else:
        line = "combining: most-specific (upstream's: a more specific rule decides)"
    keys = policy.keys_by_approver
    if keys:
        named = ", ".join(
            f"{name} ({len(k)} key{'s' if len(k) > 1 else ''})" for name, k in keys.items()
        )
        line += f"; signed answers required from {named}"
    if policy.approval_expiry_secs is not None:
        line += f"; approvals expire {duration(policy.approval_expiry_secs)} after they are given"
    return line


def _tenant(args: argparse.Namespace) -> int:
    store = open_db(args)
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
        if policy is not None:
            print(f"  {tenant_policy_summary(policy)}")
        return EXIT_OK
    finally:
        store.close()
