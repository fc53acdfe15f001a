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

The commands live in `charter.cli.runs` (``run``, ``approve``, ``reject``, ``worker``),
`charter.cli.store` (``status``, ``events``, ``approvals``, ``cancel``, ``tenant``),
`charter.cli.check` (``check``, ``validate``) and `charter.cli.audit` (``audit``); what they
share in `charter.cli.common`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Iterator, Sequence

from charter import __version__
from charter.cli import answers, check, resolve, runs, serve, store, tokens
from charter.cli import audit as audit_cli
from charter.cli import compact as compact_cli
from charter.cli import mcp as mcp_cli
from charter.cli.common import (
    EXIT_APPROVAL,
    EXIT_BLOCKED,
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_PIPE,
    EXIT_USAGE,
    EXIT_WAITING,
    Parser,
    db_option,
)
from charter.core.errors import CharterError, StoreError, describe

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


def _build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="charter",
        description="Charter: run, hold for approval, or refuse each node of an agent workflow.",
    )
    parser.add_argument(
        "--version", action="version", version=f"charter {__version__}", help="print the version"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True
    runs.add_run(commands)
    check.add_validate(commands)
    store.add_status(commands)
    store.add_events(commands)
    store.add_approvals(commands)
    answers.add_answer(commands)
    resolve.add_resolve(commands)
    store.add_cancel(commands)
    runs.add_worker(commands)
    store.add_tenant(commands)
    check.add_check(commands)
    answers.add_keys(commands)
    serve.add_serve(commands)
    tokens.add_tokens(commands)
    audit_cli.register(commands, db_option=db_option)
    compact_cli.add_compact(commands, db_option=db_option)
    mcp_cli.add_mcp_gateway(commands)
    return parser


#: The Postgres driver's connection pool: it logs a warning for each connection it drops and
#: replaces (a restarted or killed backend), which Charter retries on its own.
_POOL_LOGGER = "psycopg.pool"
#: Commands that keep running (and so report each store failure as it happens).
_LONG_RUNNING = frozenset({"worker", "serve"})


class _OneLine(logging.Handler):
    """Charter's log records on stderr, one line each: ``charter: LEVEL: message``.

    A Charter error attached to a record is appended to its line, not printed as a
    traceback (any other exception is a bug, and keeps its traceback). A command that ends
    with its own error line (``run``, ``approve``, …: not ``worker``) does not also print the
    store failures its worker logged on the way there: a full disk or a lost database is
    reported once, by the command."""

    def __init__(self, *, store_failures: bool) -> None:
        super().__init__(logging.NOTSET)
        self.store_failures = store_failures

    def emit(self, record: logging.LogRecord) -> None:
        error = record.exc_info[1] if record.exc_info else None
        args = record.args if isinstance(record.args, tuple) else ()
        about_store = isinstance(error, StoreError) or any(
            isinstance(arg, StoreError) for arg in args
        )
        if about_store and not self.store_failures:
            return
        try:
            line = f"charter: {record.levelname.lower()}: {record.getMessage()}"
            if isinstance(error, CharterError):
                line += f": {error}"
            elif record.exc_info is not None:
                line += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
            print(line, file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001 - logging must never break the command
            self.handleError(record)


@contextlib.contextmanager
def _logging(args: argparse.Namespace) -> Iterator[None]:
    """Logging for one command, restored after it (for callers of `main` in-process):
    Charter's warnings and errors one line each (`_OneLine`), only errors from the
    connection pool; with ``--quiet``, only Charter's errors and nothing from the pool."""
    quiet = bool(getattr(args, "quiet", False))
    pool = logging.getLogger(_POOL_LOGGER)
    charter = logging.getLogger("charter")
    saved = (pool.level, charter.level, charter.propagate)
    handler = _OneLine(store_failures=args.command in _LONG_RUNNING)
    pool.setLevel(logging.CRITICAL + 1 if quiet else logging.ERROR)
    charter.setLevel(logging.ERROR if quiet else logging.WARNING)
    charter.addHandler(handler)
    charter.propagate = False
    try:
        yield
    finally:
        charter.removeHandler(handler)
        pool.setLevel(saved[0])
        charter.setLevel(saved[1])
        charter.propagate = saved[2]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (see the module doc)."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    with _logging(args):
        return _handle(args)


def _handle(args: argparse.Namespace) -> int:
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
