"""The store adapters under contract, and how to build a fresh one for a test.

`tests/test_store_contract.py` runs every contract test once per kind in `STORE_KINDS`.
To put another adapter under contract (e.g. Postgres), write a factory below that builds
an empty store on the given clock, and add it to `_FACTORIES` — nothing else changes.

Adapter modules are imported inside their factory, not at the top, so that one adapter
that is absent or broken does not stop the others' tests from being collected and run
(``pytest -k memory``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Final

from charter.adapters.clock import ManualClock
from charter.adapters.memory import MemoryStore
from charter.core.ports import Store

__all__ = ["STORE_KINDS", "make_store"]


def _memory(tmp_path: Path, clock: ManualClock) -> Store:
    return MemoryStore(clock=clock)


def _sqlite(tmp_path: Path, clock: ManualClock) -> Store:
    from charter.adapters.sqlite import SqliteStore

    return SqliteStore(tmp_path / "charter.db", clock=clock)


_FACTORIES: Final[dict[str, Callable[[Path, ManualClock], Store]]] = {
    "memory": _memory,
    "sqlite": _sqlite,
}

#: Every adapter kind the contract suite runs against: ``("memory", "sqlite")``.
STORE_KINDS: Final[tuple[str, ...]] = tuple(_FACTORIES)


def make_store(kind: str, tmp_path: Path, clock: ManualClock) -> Store:
    """A new, empty store of ``kind`` (one of `STORE_KINDS`) reading time from ``clock``;
    ``tmp_path`` is a fresh directory the store may keep its files in."""
    try:
        factory = _FACTORIES[kind]
    except KeyError:
        raise ValueError(f"unknown store kind {kind!r}; expected one of {STORE_KINDS}") from None
    return factory(tmp_path, clock)
