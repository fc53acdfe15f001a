"""What every ``charter`` command shares: exit codes, the parser, ``--db`` and ``--executors``,
opening the store (`charter.bootstrap.open_store`) and finding a run in it."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, NoReturn

from charter.adapters.memory import MemoryStore
from charter.bootstrap import MEMORY, open_store
from charter.core.errors import InvalidInput, NotFound
from charter.core.records import Execution

if TYPE_CHECKING:
    from typing import TypeAlias

    from charter.bootstrap import OpenedStore

    CliStore: TypeAlias = OpenedStore

__all__ = [
    "DEFAULT_DB",
    "EXIT_APPROVAL",
    "EXIT_BLOCKED",
    "EXIT_CANCELLED",
    "EXIT_FAILED",
    "EXIT_INTERNAL",
    "EXIT_OK",
    "EXIT_PIPE",
    "EXIT_USAGE",
    "EXIT_WAITING",
    "Parser",
    "db_option",
    "executors_option",
    "open_db",
    "require_node",
    "require_run",
    "where",
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


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        metavar="PATH|URL",
        default=DEFAULT_DB,
        help=(
            f"a SQLite file (default: ./{DEFAULT_DB}) or a postgresql:// URL "
            "(pip install 'charter[postgres]'; keep passwords in ~/.pgpass or PGPASSWORD)"
        ),
    )


def executors_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--executors",
        metavar="MODULE:FUNCTION",
        action="append",
        default=[],
        help="call FUNCTION(registry) to register your executors (repeatable)",
    )


def open_db(
    args: argparse.Namespace, *, must_exist: bool = False, read_only: bool = False
) -> CliStore:
    """The store ``--db`` names (`charter.bootstrap.open_store`: a SQLite file, a
    ``postgresql://`` URL, or ``memory:``), sized for ``--concurrency`` worker threads if the
    command has them. A missing store is created, unless ``must_exist``; ``read_only``
    (commands that only read: it implies ``must_exist``) opens it without ever writing, so
    a read-only file can be read."""
    try:
        return open_store(
            args.db,
            must_exist=must_exist,
            read_only=read_only,
            concurrency=max(1, getattr(args, "concurrency", 1)),
        )
    except NotFound as missing:
        raise InvalidInput(
            "--db", f"{missing} (run a workflow first, or pass another --db)"
        ) from None


def where(store: CliStore) -> str:
    """How messages name the store: its path (a Postgres URL without its password)."""
    return MEMORY if isinstance(store, MemoryStore) else str(store.path)


def require_run(store: CliStore, run_id: str) -> Execution:
    execution = store.get_execution(run_id)
    if execution is None:
        raise InvalidInput("RUN", f"no run {run_id!r} in {where(store)}")
    return execution


def require_node(store: CliStore, execution: Execution, node_id: str) -> None:
    """That ``execution``'s workflow has a node ``node_id``: an answer naming another is
    refused as what it is (``run X has no node named Y``), not as "no approval is
    pending"."""
    stored = store.get_workflow(
        execution.workflow_id, execution.workflow_version, execution.tenant_id
    )
    nodes = stored.ir.get("nodes") if stored is not None else None
    if isinstance(nodes, dict) and node_id not in nodes:
        shown = node_id if len(node_id) <= 60 else node_id[:60] + "…"
        raise InvalidInput("NODE", f"run {execution.execution_id!r} has no node named {shown!r}")
