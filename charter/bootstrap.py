"""The composition root: where stores, executors, schedulers and workers are made and wired.

Nothing else in Charter picks an implementation for another part: the command line, the
benchmarks and embedders open a store with `open_store` and make workers with
`build_worker`, which hands each part what it needs.

* `open_store` — ``memory:`` (a `MemoryStore`), a ``postgresql://`` / ``postgres://`` URL (a
  `PostgresStore`; ``pip install 'charter[postgres]'``; ``?schema=NAME`` picks the schema),
  or anything else as the path of a SQLite file (a `SqliteStore`).
* `build_registry` — the built-in executors plus those plugins register.
* `build_worker` — a `Worker` with its scheduler (shared between workers, if given) and
  executors.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from charter.adapters.executors import ExecutorRegistry, default_registry, load_plugin
from charter.adapters.memory import MemoryStore
from charter.adapters.otel import Telemetry, default_telemetry
from charter.adapters.sqlite import SqliteStore
from charter.core.errors import CharterError, InvalidInput, NotFound
from charter.core.events import Event
from charter.core.ports import Clock, Store
from charter.worker import (
    ALL_QUEUES,
    DEFAULT_BATCH,
    DEFAULT_CHAIN_LIMIT,
    Definitions,
    Scheduler,
    Worker,
    WorkerHooks,
)

if TYPE_CHECKING:  # the Postgres store is optional: imported when a URL asks for it
    from typing import TypeAlias

    from charter.adapters.postgres import PostgresStore

    OpenedStore: TypeAlias = MemoryStore | SqliteStore | PostgresStore

__all__ = [
    "MEMORY",
    "build_registry",
    "build_worker",
    "is_postgres_url",
    "open_store",
    "shown",
]

#: What `open_store` opens as a store in memory (gone when the process ends).
MEMORY: Final = "memory:"
_POSTGRES_SCHEMES: Final = ("postgresql://", "postgres://")


def is_postgres_url(target: str | Path) -> bool:
    """Whether ``target`` names a Postgres database (a ``postgresql://`` or ``postgres://``
    URL)."""
    return isinstance(target, str) and target.startswith(_POSTGRES_SCHEMES)


def shown(target: str | Path) -> str:
    """``target`` as it may be printed or logged: a URL without its password (in the URL's
    user part or a ``password`` parameter); a path as it is."""
    if not isinstance(target, str) or "://" not in target:
        return str(target)
    parts = urllib.parse.urlsplit(target)
    if parts.password is not None:
        host = parts.netloc.rsplit("@", 1)[-1]
        parts = parts._replace(netloc=f"{parts.username or ''}@{host}")
    query = [
        (name, "***" if name == "password" else value)
        for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    ]
    rest = urllib.parse.urlencode(query, safe="*")
    return urllib.parse.urlunsplit(parts._replace(query=rest))


def open_store(
    target: str | Path,
    *,
    clock: Clock | None = None,
    must_exist: bool = False,
    concurrency: int = 1,
    read_only: bool = False,
) -> OpenedStore:
    """The store ``target`` names (see the module doc), created if missing unless
    ``must_exist`` (then a missing one is `NotFound`; a memory store never exists before
    it is opened). ``concurrency`` is how many worker threads will share it: a Postgres
    store keeps a connection for each and its lease heartbeat (at least 10 in all); the
    others serve any number. ``clock`` defaults to each store's own.

    ``read_only`` (for commands that only read, and implies ``must_exist``): a SQLite file
    is opened read-only (`SqliteStore` ``read_only``: a read-only file is fine, nothing is
    created, migrated or written); a Postgres schema is not created.

    A SQLite path that exists but is not a regular file (``/dev/null``, a directory) is
    `InvalidInput` naming it.

    A URL of another scheme is `InvalidInput` naming it (without its password), and so is a
    Postgres URL when the Postgres driver is not installed."""
    if concurrency < 1:
        raise InvalidInput("concurrency", f"expected at least 1, got {concurrency}")
    must_exist = must_exist or read_only
    if isinstance(target, str) and target == MEMORY:
        if must_exist:
            raise NotFound(f"{MEMORY} a store in memory is empty until it is opened")
        return MemoryStore(clock)
    if is_postgres_url(target):
        return _open_postgres(str(target), clock=clock, must_exist=must_exist, threads=concurrency)
    if isinstance(target, str) and "://" in target:
        raise InvalidInput(
            shown(target),
            f"not a store: expected {MEMORY!r}, a SQLite file path or a postgresql:// URL",
        )
    path = Path(target)
    if must_exist and not path.exists():
        raise NotFound(f"{path}: no such database")
    if path.exists() and not path.is_file():
        kind = "a directory" if path.is_dir() else "not a regular file"
        raise InvalidInput(str(path), f"{kind}: expected a SQLite database file")
    return SqliteStore(path, clock=clock, read_only=read_only)


def _open_postgres(url: str, *, clock: Clock | None, must_exist: bool, threads: int) -> OpenedStore:
    try:
        from charter.adapters.postgres import PostgresStore
    except ImportError as error:
        raise InvalidInput(
            shown(url),
            "a PostgreSQL URL needs the Postgres driver: pip install 'charter[postgres]' "
            f"({error})",
        ) from None
    # Each worker thread and its lease heartbeat may hold a connection at once.
    connections = max(10, 2 * threads + 2)
    return PostgresStore(url, clock=clock, create=not must_exist, max_connections=connections)


def build_registry(plugins: Sequence[str] = ()) -> ExecutorRegistry:
    """The built-in executors (`default_registry`), plus what each plugin registers
    (``MODULE:FUNCTION``, called with the registry: `load_plugin`)."""
    registry = default_registry()
    for spec in plugins:
        try:
            load_plugin(spec, registry)
        except CharterError:
            raise
        except Exception as error:  # noqa: BLE001 - the plugin's code, not Charter's
            said = " ".join(str(error).split())[:200]
            raise InvalidInput(
                "--executors",
                f"calling {spec}(registry) failed: {type(error).__name__}: {said} "
                "(expected a function that registers executors)",
            ) from None
    return registry


def build_worker(
    store: Store,
    *,
    executors: ExecutorRegistry | None = None,
    scheduler: Scheduler | None = None,
    on_events: Callable[[Sequence[Event]], None] | None = None,
    worker_id: str | None = None,
    queues: Sequence[str] = ALL_QUEUES,
    lease_secs: float = 30.0,
    effect_ttl_secs: float = 300.0,
    hooks: WorkerHooks | None = None,
    telemetry: Telemetry | None = None,
    chain_limit: int = DEFAULT_CHAIN_LIMIT,
    batch: int = DEFAULT_BATCH,
) -> Worker:
    """A worker on ``store``, wired: ``executors`` (default: `build_registry`) and a
    ``scheduler`` — pass one to share it between the threads of one process (they then
    fold each log once), or let one be made, reporting every event to ``on_events``.
    ``worker_id`` defaults to host, process and thread; the rest are `Worker`'s."""
    if scheduler is None:
        scheduler = Scheduler(store, Definitions(store), clock=store.clock, on_events=on_events)
    elif on_events is not None:
        raise InvalidInput("on_events", "give it to the shared scheduler, not to one worker")
    return Worker(
        store,
        executors=executors if executors is not None else build_registry(),
        scheduler=scheduler,
        worker_id=worker_id,
        queues=queues,
        lease_secs=lease_secs,
        effect_ttl_secs=effect_ttl_secs,
        hooks=hooks,
        telemetry=telemetry if telemetry is not None else default_telemetry(),
        chain_limit=chain_limit,
        batch=batch,
    )
