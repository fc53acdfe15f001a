"""The memory store's event log (`charter.adapters.memory._Log`): versions share one list,
and no version ever changes, whichever version a later append starts from (a transaction
that failed after appending leaves entries past the committed version's length). And its
journal (`_Tables.begin` / `rollback`): a transaction that raises leaves every table as it
found it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from charter.adapters.clock import ManualClock
from charter.adapters.memory import MemoryStore, _Log, _Tables
from charter.core.events import Event, NodeCompleted
from charter.core.records import Tenant, WorkItem, WorkItemStatus

_AT = datetime(2026, 12, 8, tzinfo=UTC)


def _event(sequence: int) -> Event:
    return Event(
        id=f"e{sequence}",
        execution_id="run",
        sequence=sequence,
        kind=NodeCompleted(node_id=f"n{sequence}", output=None, state_patch=None, duration_ms=0),
        created_at=_AT,
        prev_hash="",
        hash=f"h{sequence}",
    )


# each step: (index of the version to append to, how many events to append)
_steps = st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 4)), max_size=30)


@given(_steps, st.data())
def test_no_version_of_a_log_ever_changes(
    steps: list[tuple[int, int]], data: st.DataObject
) -> None:
    versions: list[tuple[_Log, tuple[Event, ...]]] = [(_Log(), ())]
    made = 0
    for pick, count in steps:
        base, model = versions[pick % len(versions)]
        new = tuple(_event(made + i) for i in range(count))
        made += count
        versions.append((base.appended(new), model + new))
        for log, expected in versions:  # every version, old or new, reads what it held
            assert len(log) == len(expected)
            assert tuple(log) == expected
            assert log[:] == expected
            if expected:
                index = data.draw(st.integers(-len(expected), len(expected) - 1))
                assert log[index] == expected[index]
                start = data.draw(st.integers(-len(expected) - 2, len(expected) + 2))
                assert log[start:] == expected[start:]
                assert log[:start] == expected[:start]


# ── the journal: a transaction that raises leaves every table as it found it ──

_TABLE_NAMES = ("tenants", "items", "item_order", "events", "effects", "charges", "approvals")
_KEYS = ("a", "b", "c", "d")
_keys = st.sampled_from(_KEYS)
# each write: (table, key, "set" with a value | "del" | "setdefault" with a value)
_writes = st.lists(
    st.tuples(
        st.sampled_from(_TABLE_NAMES),
        _keys,
        st.sampled_from(["set", "del", "setdefault"]),
        st.integers(0, 7),
    ),
    max_size=25,
)


def _item(item_id: str, value: int) -> WorkItem:
    """One of eight work items for ``item_id``: pending or claimed, on one of two queues,
    available now or later (so the pending index sees every kind of change)."""
    return WorkItem(
        item_id=item_id,
        tenant_id="default",
        execution_id="run",
        node_id=item_id,
        queue="q1" if value & 1 else "q2",
        payload=None,
        attempt=1,
        max_attempts=3,
        backoff_base_ms=10,
        status=WorkItemStatus.PENDING if value & 2 else WorkItemStatus.CLAIMED,
        available_at=_AT + timedelta(seconds=value & 4),
        created_at=_AT,
    )


def _state(tables: _Tables) -> dict[str, object]:
    return {name: dict(getattr(tables, name)) for name in _TABLE_NAMES} | {
        "enqueued": tables.enqueued,
        "pending": {q: list(keys) for q, keys in tables.items.pending.by_queue.items() if keys},
    }


def _index_of(tables: _Tables) -> dict[str, list[tuple[datetime, int, str]]]:
    """The pending index recomputed from the items, as the claim order defines it."""
    index: dict[str, list[tuple[datetime, int, str]]] = {}
    for item in tables.items.values():
        if item.status is WorkItemStatus.PENDING:
            key = (item.available_at, tables.item_order[item.item_id], item.item_id)
            index.setdefault(item.queue, []).append(key)
    return {queue: sorted(keys) for queue, keys in index.items()}


def _apply(tables: _Tables, writes: list[tuple[str, str, str, int]]) -> None:
    for name, key, op, value in writes:
        if name == "item_order":
            continue  # an item's enqueue order is written once, with it (set up below)
        table = getattr(tables, name)
        stored: object = _item(key, value) if name == "items" else value
        if op == "set":
            table[key] = stored
        elif op == "setdefault":
            table.setdefault(key, stored)
        elif key in table:
            del table[key]
        tables.enqueued += value


@given(_writes, _writes)
def test_a_rolled_back_transaction_leaves_every_table_as_it_was(
    committed: list[tuple[str, str, str, int]], failed: list[tuple[str, str, str, int]]
) -> None:
    tables = _Tables()
    for order, key in enumerate(_KEYS):
        tables.item_order[key] = order
    journal = tables.begin()
    _apply(tables, committed)
    tables.end()
    assert _state(tables)["pending"] == _index_of(tables)
    before = _state(tables)
    enqueued = tables.enqueued
    journal = tables.begin()
    _apply(tables, failed)
    assert _state(tables)["pending"] == _index_of(tables)
    tables.rollback(journal, enqueued)
    assert _state(tables) == before
    assert _state(tables)["pending"] == _index_of(tables)
    # and journaling is off again: a write after the rollback is not recorded
    length = len(journal)
    tables.items["a"] = _item("a", 3)
    assert len(journal) == length


def test_a_table_refuses_writes_the_journal_does_not_record() -> None:
    tables = _Tables()
    writes: list[Callable[[], object]] = [
        lambda: tables.items.pop("a"),
        lambda: tables.items.update(a=1),
        lambda: tables.items.clear(),
        lambda: tables.items.popitem(),
    ]
    for write in writes:
        with pytest.raises(TypeError, match="written only by item assignment and del"):
            write()


@given(st.integers(1, 6), st.integers(0, 5))
def test_a_store_call_that_raises_mid_transaction_has_written_nothing(
    items: int, fail_after: int
) -> None:
    """Through the store: a transaction that inserts items and appends events, then raises
    after ``fail_after`` of its writes, leaves every read as it was."""
    store = MemoryStore(clock=ManualClock(_AT))
    before = (store.list_tenants(), store.get_item("i0"), store.list_executions())

    def work(tx: Any) -> None:
        for index in range(items):
            if index == fail_after:
                raise RuntimeError("injected")
            tx.put_tenant(
                Tenant(tenant_id=f"t{index}", name="t", created_at=_AT, updated_at=_AT),
                keep_policy=False,
            )
        raise RuntimeError("injected at the end")

    with pytest.raises(RuntimeError, match="injected"):
        store._transact(work)
    assert (store.list_tenants(), store.get_item("i0"), store.list_executions()) == before
    assert all(table.journal is None for table in store._tables._tables())
