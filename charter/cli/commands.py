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
from collections.abc import Iterator, Sequence

from charter import __version__
from charter.cli import answers, check, resolve, runs, serve, store, tokens
from charter.cli import audit as audit_cli
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
from charter.core.errors import CharterError, describe

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
    mcp_cli.add_mcp_gateway(commands)
    return parser


#: The Postgres driver's connection pool: it logs a warning for each connection it drops and
#: replaces (a restarted or killed backend), which Charter retries on its own.
_POOL_LOGGER = "psycopg.pool"


@contextlib.contextmanager
def _logging(quiet: bool) -> Iterator[None]:
    """Log levels for one command (restored after it, for callers of `main` in-process):
    warnings from Charter, only errors from the connection pool; with ``--quiet``, only
    errors from Charter and nothing from the pool."""
    levels = {
        _POOL_LOGGER: logging.CRITICAL + 1 if quiet else logging.ERROR,
        "charter": logging.ERROR if quiet else logging.WARNING,
    }
    saved = {name: logging.getLogger(name).level for name in levels}
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (see the module doc)."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    with _logging(bool(getattr(args, "quiet", False))):
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
