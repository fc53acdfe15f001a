"""``charter compact``: remove finished runs' oldest events, keeping the chain verifiable
(docs/cli.md, docs/semantics.md §10).

Exit codes: 0 done (whatever was compacted or skipped: the report says which and why);
2 bad input (``--before``, ``--archive``, ``--run``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from charter.audit.compaction import compact_log, parse_before
from charter.bootstrap import open_store
from charter.core.errors import InvalidInput, NotFound

__all__ = ["add_compact"]


def add_compact(commands: Any, *, db_option: Callable[[argparse.ArgumentParser], None]) -> None:
    parser = commands.add_parser(
        "compact",
        help="replace finished runs' oldest events by their snapshot (chain stays verifiable)",
        description=(
            "For each finished run (completed, failed, cancelled, limit exceeded; never one "
            "that is running or waiting), remove the events recorded before --before — a "
            "sequence or an ISO 8601 time — except the run's last event, after bringing its "
            "snapshot to its end. A compaction record keeps the count and the last hash of "
            "what was removed, so `charter audit verify` still verifies the log, and an "
            "archive (--archive FILE, written and fsynced before anything is removed) "
            "verifies against it. See docs/semantics.md §10."
        ),
    )
    db_option(parser)
    parser.add_argument(
        "--before",
        required=True,
        metavar="SEQUENCE|TIME",
        help="remove events numbered lower than SEQUENCE, or recorded before TIME "
        "(ISO 8601 with a timezone, e.g. 2026-12-01T00:00:00Z)",
    )
    parser.add_argument(
        "--archive",
        metavar="FILE",
        help="first write the removed events here, exactly as stored (JSON lines; never "
        "overwritten)",
    )
    parser.add_argument("--run", metavar="RUN", action="append", help="only this run (repeatable)")
    parser.add_argument(
        "--dry-run", action="store_true", help="report what would be removed; change nothing"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(handler=_compact)


def _compact(args: argparse.Namespace) -> int:
    before = parse_before(args.before)
    try:
        store = open_store(args.db, read_only=args.dry_run)
    except NotFound as missing:
        raise InvalidInput("--db", str(missing)) from None
    try:
        for run in args.run or ():
            if store.get_execution(run) is None:
                raise InvalidInput("--run", f"no run {run!r} in this database")
        report = compact_log(
            store, before=before, runs=args.run, archive=args.archive, dry_run=args.dry_run
        )
    finally:
        store.close()
    if args.json:
        print(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
        return 0
    verb = "would remove" if report.dry_run else "removed"
    for run in report.compacted:
        print(f"COMPACTED  {run.execution_id}: {verb} events {run.first}–{run.through} "
              f"({run.events} event(s), {run.bytes} byte(s))")  # fmt: skip
    for skipped in report.skipped:
        print(f"SKIPPED    {skipped.execution_id}: {skipped.reason}")
    archived = f"; archived in {report.archive}" if report.archive and not report.dry_run else ""
    print(
        f"{'dry run: ' if report.dry_run else ''}{len(report.compacted)} run(s) compacted, "
        f"{report.events} event(s), {report.bytes} byte(s){archived}; "
        f"{len(report.skipped)} skipped"
    )
    return 0
