"""``charter audit``: verify, anchor, replay and what-if (docs/audit.md, docs/cli.md).

Registered by `charter.cli` (which passes its ``--db`` option in, so this module does not
import the CLI back); the store is opened by the composition root (`charter.bootstrap`).
Exit codes: 0 the log holds / no divergence (for ``what-if``: the report was made, whatever
it found); 2 bad input; 6 the log was altered (``verify``) or a recorded decision is not
what the policy gives (``replay``).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from charter.adapters.files import load_policy_layer
from charter.adapters.keys import load_key, sign_bytes
from charter.audit import (
    Change,
    anchor_document,
    execution_ids,
    read_anchor,
    replay_run,
    verify_log,
    what_if,
)
from charter.audit.compaction import read_archive, with_archives
from charter.bootstrap import open_store
from charter.core.errors import InvalidInput, NotFound
from charter.core.policy import PolicyScope
from charter.core.ports import Store

__all__ = ["EXIT_DIVERGED", "register"]

#: The log was altered, or a recorded decision is not what the policy gives.
EXIT_DIVERGED: Final = 6
_OK: Final = 0


def register(commands: Any, *, db_option: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``audit`` and its subcommands to the CLI's subparsers."""
    audit = commands.add_parser(
        "audit",
        help="verify the log's hash chain, replay recorded decisions, policy what-if",
        description=(
            "Prove the log unaltered (verify, anchor), recompute every recorded decision "
            "(replay) and see what a proposed policy would have changed (what-if). "
            "See docs/audit.md."
        ),
    )
    sub = audit.add_subparsers(dest="audit_command", metavar="SUBCOMMAND")
    sub.required = True

    verify = sub.add_parser(
        "verify",
        help="check every run's hash chain (and an anchor's heads)",
        description=(
            "Check each run's chain of event hashes: an event modified, removed, inserted or "
            "moved is reported with its run and sequence. With --anchor, also that each "
            "anchored event is still there unchanged, which catches a truncated or "
            "rewritten tail. Exit 0 if the log holds, 6 if not."
        ),
    )
    db_option(verify)
    verify.add_argument("--anchor", metavar="FILE", help="an anchor from `charter audit anchor`")
    verify.add_argument(
        "--anchor-key",
        metavar="KEY",
        action="append",
        default=[],
        help="require the anchor to be signed by this auditor's public key (ed25519:…)",
    )
    verify.add_argument("--run", metavar="RUN", action="append", help="only this run (repeatable)")
    verify.add_argument(
        "--strict", action="store_true", help="also require each event in canonical JSON form"
    )
    verify.add_argument("--json", action="store_true", help="print JSON instead of text")
    _archive_option(verify)
    verify.set_defaults(handler=_verify)

    anchor = sub.add_parser(
        "anchor",
        help="verify the log, then print each run's head (sequence, hash) as JSON",
        description=(
            "Verify the log and write each run's last sequence and hash as an anchor, to keep "
            "where the database's writers cannot change it; `audit verify --anchor FILE` "
            "later proves nothing anchored was removed or rewritten. Refuses (exit 6) to "
            "anchor a log that does not verify."
        ),
    )
    db_option(anchor)
    anchor.add_argument(
        "--out", "--output", "-o", dest="output", metavar="FILE",
        help="write here (default: stdout)",
    )  # fmt: skip
    anchor.add_argument(
        "--key", metavar="FILE", help="sign the anchor with this auditor's private key"
    )
    anchor.set_defaults(handler=_anchor)

    replay = sub.add_parser(
        "replay",
        help="recompute every decision of a run and report divergences",
        description=(
            "Rebuild each gate decision's inputs from the log, decide again with the policy "
            "sets it recorded (by digest) and the stored definition, recompute each "
            "settlement, and compare with what was recorded. Exit 0 if all agree, 6 if any "
            "diverges."
        ),
    )
    replay.add_argument("run_id", metavar="RUN", nargs="?", help="the run (or --all)")
    replay.add_argument("--all", action="store_true", help="every run in the database")
    db_option(replay)
    replay.add_argument("--json", action="store_true", help="print JSON instead of text")
    _archive_option(replay)
    replay.set_defaults(handler=_replay)

    whatif = sub.add_parser(
        "what-if",
        help="replay recorded requests under a proposed policy and list what would change",
        description=(
            "Decide every recorded gate request of RUN (or of --all runs) again with the "
            "tenant's policy set (or, with --scope workflow, the workflow's) replaced by "
            "POLICY, and list each decision that would change (allow → hold, hold → block, "
            "…). Each request is decided on its recorded inputs; what would have happened "
            "after a changed decision is not simulated. Exit 0 whatever it finds."
        ),
    )
    whatif.add_argument("run_id", metavar="RUN", nargs="?", help="the run (or --all)")
    whatif.add_argument("--all", action="store_true", help="every run in the database")
    whatif.add_argument("--policy", metavar="POLICY", required=True, help="the proposed set")
    whatif.add_argument(
        "--scope",
        choices=[PolicyScope.TENANT.value, PolicyScope.WORKFLOW.value],
        default=PolicyScope.TENANT.value,
        help="the layer POLICY replaces (default: tenant)",
    )
    db_option(whatif)
    whatif.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _archive_option(whatif)
    whatif.set_defaults(handler=_what_if)


def _archive_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--archive",
        metavar="FILE",
        action="append",
        default=[],
        help="an archive written by `charter compact --archive` (repeatable): its events "
        "are checked against the compaction record and read as part of the log",
    )


def _open(args: argparse.Namespace) -> Store:
    """The store ``--db`` names, which must exist, opened read-only: auditing never creates
    or changes one (a read-only copy of the database can be audited). With ``--archive``,
    compacted runs read their removed events from the archives (docs/audit.md §6)."""
    archives = read_archive(args.archive) if getattr(args, "archive", None) else None
    try:
        store = open_store(args.db, read_only=True)
    except NotFound as missing:
        raise InvalidInput(
            "--db", f"{missing} (run a workflow first, or pass another --db)"
        ) from None
    return with_archives(store, archives) if archives is not None else store


def _runs(args: argparse.Namespace, store: Store) -> list[str]:
    if args.all == (args.run_id is not None):
        raise InvalidInput("RUN", "give one run id, or --all (not both)")
    if args.all:
        return list(execution_ids(store))
    if store.get_execution(args.run_id) is None:
        raise InvalidInput("RUN", f"no run {args.run_id!r} in this database")
    return [args.run_id]


def _verify(args: argparse.Namespace) -> int:
    if args.anchor_key and not args.anchor:
        raise InvalidInput("--anchor-key", "checks an anchor's signature: give --anchor FILE")
    anchors = read_anchor(args.anchor, signed_by=args.anchor_key) if args.anchor else None
    store = _open(args)
    try:
        report = verify_log(store, runs=args.run, anchors=anchors, strict=args.strict)
    finally:
        store.close()
    if args.json:
        print(
            json.dumps(
                {
                    "ok": report.ok,
                    "runs": report.executions,
                    "events": report.events,
                    "anchored": report.anchored,
                    "compacted": {
                        run: {
                            "through": prefix.through,
                            "hash": prefix.hash,
                            "compactions": prefix.compactions,
                            "archived": prefix.archived,
                        }
                        for run, prefix in report.compacted.items()
                    },
                    "notes": list(report.notes),
                    "problems": [
                        {
                            "run": p.execution_id,
                            "sequence": p.sequence,
                            "event_id": p.event_id,
                            "problem": p.problem,
                        }
                        for p in report.problems
                    ],
                },
                indent=2,
                ensure_ascii=False,
            )
        )
    else:
        anchored = f", {report.anchored} against the anchor" if anchors is not None else ""
        for run, prefix in report.compacted.items():
            seen = (
                f"{prefix.archived} checked from the archive"
                if prefix.archived
                else "archive not given"
            )
            print(
                f"COMPACTED  {run} events 1–{prefix.through} ({prefix.compactions} "
                f"compaction(s), summarised by #{prefix.through} {prefix.hash[:12]}…; {seen})"
            )
        for note in report.notes:
            print(f"UNCHECKED  {note}")
        for problem in report.problems:
            print(f"ALTERED  {problem}")
        verdict = "the chain holds" if report.ok else f"{len(report.problems)} problem(s)"
        print(f"verified {report.executions} run(s), {report.events} event(s){anchored}: {verdict}")
        if anchors is None:
            print(
                "without an anchor, a truncated tail, a deleted run or a fully re-hashed log "
                "cannot be seen: keep `charter audit anchor --out FILE` and verify --anchor FILE"
            )
    return _OK if report.ok else EXIT_DIVERGED


def _anchor(args: argparse.Namespace) -> int:
    store = _open(args)
    try:
        report = verify_log(store)
    finally:
        store.close()
    if not report.ok:
        for problem in report.problems:
            print(f"ALTERED  {problem}", file=sys.stderr)
        print("charter: error: the log does not verify: not anchoring it", file=sys.stderr)
        return EXIT_DIVERGED
    signer = None
    if args.key:
        key = load_key(args.key)
        signer = functools.partial(sign_bytes, key)
    document = anchor_document(report, created_at=datetime.now(UTC), sign=signer)
    text = json.dumps(document, indent=2) + "\n"
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as error:
            raise InvalidInput(args.output, f"cannot write the anchor: {error.strerror}") from None
        print(f"anchored {report.executions} run(s), {report.events} event(s) in {args.output}")
    else:
        sys.stdout.write(text)
    return _OK


def _replay(args: argparse.Namespace) -> int:
    store = _open(args)
    try:
        reports = [replay_run(store, run) for run in _runs(args, store)]
    finally:
        store.close()
    diverged = any(not report.ok for report in reports)
    if args.json:
        out = [
            {
                "run": r.execution_id,
                "ok": r.ok,
                "events": r.events,
                "decisions": r.gates,
                "settlements": r.settlements,
                "divergences": [d.to_json() for d in r.divergences],
            }
            for r in reports
        ]
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return EXIT_DIVERGED if diverged else _OK
    for report in reports:
        for divergence in report.divergences:
            print(f"DIVERGES {divergence}")
            if divergence.recorded is not None or divergence.recomputed is not None:
                print(f"  recorded:   {_compact(divergence.recorded)}")
                print(f"  recomputed: {_compact(divergence.recomputed)}")
        verdict = "all agree" if report.ok else f"{len(report.divergences)} divergence(s)"
        print(
            f"{report.execution_id}: {report.gates} decision(s) and {report.settlements} "
            f"settlement(s) recomputed from {report.events} event(s): {verdict}"
        )
    return EXIT_DIVERGED if diverged else _OK


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _what_if(args: argparse.Namespace) -> int:
    scope = PolicyScope(args.scope)
    proposed = load_policy_layer(args.policy, scope)
    store = _open(args)
    try:
        report = what_if(store, _runs(args, store), proposed, scope=scope)
    finally:
        store.close()
    if args.json:
        print(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
        return _OK
    if report.changes:
        print(_table(report.changes))
    for problem in report.unreplayable:
        print(f"SKIPPED  {problem}")
    print(
        f"{report.decisions} recorded decision(s) in {report.runs} run(s) replayed under "
        f"{args.policy} ({scope.value}): {len(report.changes)} would change"
    )
    return _OK


def _table(changes: tuple[Change, ...]) -> str:
    header = ("RUN", "SEQ", "NODE", "ATTEMPT", "CHANGE", "WHY (PROPOSED)")
    rows = [
        (
            c.execution_id,
            str(c.sequence),
            c.node_id,
            str(c.attempt),
            f"{c.before} → {c.after}",
            c.after_reason or "",
        )
        for c in changes
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]
    lines = []
    for row in (header, *rows):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)
