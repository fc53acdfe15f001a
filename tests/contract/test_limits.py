"""Windowed-limit charges: every ``limit_charged`` event is kept by the store, per tenant and
limit, in the transaction that writes it (docs/store.md, "Windowed limits").

In the order a reader should learn them:

1. Appending or committing a ``limit_charged`` event charges each limit it names for the
   run's tenant; `Store.limit_charges` reads them back from ``since``, oldest first, exact.
2. A write that is refused (a lost fence, a moved log) charges nothing.
3. A charge drops the limit's rows older than its window (no window counts them any more).
4. Threads charging one limit at once lose nothing (two stores on one Postgres schema too).
5. The charges read back are the projection of the charge events of every run.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from charter.adapters.clock import ManualClock
from charter.core.errors import Conflict, FenceLost, InvalidInput
from charter.core.events import LimitCharged
from charter.core.limits import LimitCharge
from charter.core.ports import Store
from charter.core.records import DEFAULT_TENANT
from tests.contract.helpers import EXEC, claim, commit, completed, start, tenant

AT = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
LONG_AGO = AT - timedelta(days=30)


def charged(
    at: datetime = AT,
    *,
    node_id: str = "refund",
    names: tuple[tuple[str, int], ...] = (("refunds", 3600),),
    calls: int = 1,
    tokens: int = 0,
    usd_nanos: int = 0,
) -> LimitCharged:
    return LimitCharged(
        node_id=node_id,
        attempt=0,
        at=at,
        limits=[{"name": name, "window": window} for name, window in names],
        calls=calls,
        tokens=tokens,
        usd_nanos=usd_nanos,
    )


def test_an_appended_charge_is_kept_per_tenant_and_limit(store: Store, clock: ManualClock) -> None:
    start(store, clock)
    store.put_tenant(tenant(clock, "other"))
    start(store, clock, execution_id="exec-other", tenant_id="other")
    names = (("refunds", 3600), ("all", 86_400))
    store.append_events(EXEC, [charged(names=names, tokens=12, usd_nanos=100_000_001)])
    store.append_events("exec-other", [charged(AT + timedelta(seconds=1), names=names[:1])])
    mine = LimitCharge(at=AT, calls=1, tokens=12, usd_nanos=100_000_001)
    assert store.limit_charges(DEFAULT_TENANT, "refunds", since=LONG_AGO) == (mine,)
    assert store.limit_charges(DEFAULT_TENANT, "all", since=LONG_AGO) == (mine,)
    assert store.limit_charges("other", "refunds", since=LONG_AGO) == (
        LimitCharge(at=AT + timedelta(seconds=1)),
    )
    assert store.limit_charges("other", "all", since=LONG_AGO) == ()
    assert store.limit_charges("nobody", "refunds", since=LONG_AGO) == ()


def test_charges_read_from_since_oldest_first_to_the_microsecond(
    store: Store, clock: ManualClock
) -> None:
    start(store, clock)
    times = [AT + timedelta(microseconds=n) for n in (5, 1, 3, 3)]
    store.append_events(EXEC, [charged(at) for at in times])
    read = store.limit_charges(DEFAULT_TENANT, "refunds", since=AT + timedelta(microseconds=3))
    assert [c.at for c in read] == [AT + timedelta(microseconds=n) for n in (3, 3, 5)]


def test_a_commit_charges_in_its_own_transaction_and_a_stale_one_does_not(
    store: Store, clock: ManualClock
) -> None:
    start(store, clock, max_attempts=3)
    first = claim(store)
    clock.advance(60)  # the lease expires; the item is claimed again
    store.reclaim_expired()
    clock.advance(3600)  # past its retry backoff
    second = claim(store)
    with pytest.raises(FenceLost):
        commit(store, first, completed(first.item.node_id), charged(tokens=1))
    assert store.limit_charges(DEFAULT_TENANT, "refunds", since=LONG_AGO) == ()
    commit(store, second, completed(second.item.node_id), charged(tokens=2))
    assert store.limit_charges(DEFAULT_TENANT, "refunds", since=LONG_AGO) == (
        LimitCharge(at=AT, tokens=2),
    )


def test_a_failure_charges_too(store: Store, clock: ManualClock) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    store.fail(item_id, claimed.fence, error="boom", events=[charged(usd_nanos=7)])
    assert store.limit_charges(DEFAULT_TENANT, "refunds", since=LONG_AGO) == (
        LimitCharge(at=AT, usd_nanos=7),
    )


def test_a_refused_append_charges_nothing(store: Store, clock: ManualClock) -> None:
    start(store, clock)
    with pytest.raises(Conflict):
        store.append_events(EXEC, [charged()], expected_last_sequence=99)
    bad = LimitCharged(node_id="n", attempt=0, at=AT, limits=[{"name": "x"}])
    with pytest.raises(InvalidInput):
        store.append_events(EXEC, [bad])
    assert store.limit_charges(DEFAULT_TENANT, "refunds", since=LONG_AGO) == ()
    assert store.limit_charges(DEFAULT_TENANT, "x", since=LONG_AGO) == ()


def test_a_charge_drops_the_rows_its_window_no_longer_counts(
    store: Store, clock: ManualClock
) -> None:
    start(store, clock)
    old = AT - timedelta(hours=2)
    edge = AT - timedelta(hours=1)
    store.append_events(EXEC, [charged(old), charged(edge), charged(old, names=(("day", 86_400),))])
    store.append_events(EXEC, [charged(AT)])
    assert [c.at for c in store.limit_charges(DEFAULT_TENANT, "refunds", since=LONG_AGO)] == [
        edge,
        AT,
    ]
    assert len(store.limit_charges(DEFAULT_TENANT, "day", since=LONG_AGO)) == 1  # its own


def test_limit_charges_refuses_bad_arguments(store: Store) -> None:
    with pytest.raises(InvalidInput, match="since"):
        store.limit_charges(DEFAULT_TENANT, "refunds", since=datetime(2026, 1, 1))  # naive
    with pytest.raises(InvalidInput, match="limit"):
        store.limit_charges(DEFAULT_TENANT, 3, since=AT)  # type: ignore[arg-type]


def test_threads_charging_one_limit_lose_nothing(store: Store, clock: ManualClock) -> None:
    runs = [f"exec-{n}" for n in range(4)]
    for run in runs:
        start(store, clock, execution_id=run)
    barrier = threading.Barrier(len(runs))
    errors: list[BaseException] = []

    def charge(run: str) -> None:
        try:
            barrier.wait()
            for n in range(10):
                store.append_events(run, [charged(AT + timedelta(microseconds=n), usd_nanos=3)])
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=charge, args=(run,)) for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    read = store.limit_charges(DEFAULT_TENANT, "refunds", since=LONG_AGO)
    assert sum(c.calls for c in read) == 40
    assert sum(c.usd_nanos for c in read) == 120


def test_the_charges_are_the_projection_of_the_charge_events(
    store: Store, clock: ManualClock
) -> None:
    runs = ("exec-a", "exec-b")
    for run in runs:
        start(store, clock, execution_id=run)
    for n in range(6):
        store.append_events(runs[n % 2], [charged(AT + timedelta(seconds=n), tokens=n)])
    from_events = sorted(
        (event.kind.at, event.kind.tokens)
        for run in runs
        for event in store.read_events(run)
        if isinstance(event.kind, LimitCharged)
    )
    read = store.limit_charges(DEFAULT_TENANT, "refunds", since=LONG_AGO)
    assert [(c.at, c.tokens) for c in read] == from_events


def _second(store: Store, clock: ManualClock) -> Store | None:
    """Another store on the same database (a second worker process's), if it has one."""
    from charter.adapters.postgres import PostgresStore
    from charter.adapters.sqlite import SqliteStore
    from tests.stores import postgres_url

    if isinstance(store, PostgresStore):
        return PostgresStore(postgres_url(), schema=store.schema, clock=clock, create=False)
    if isinstance(store, SqliteStore):
        return SqliteStore(store.path, clock=clock)
    return None


def test_two_stores_on_one_database_charging_one_limit_lose_nothing(
    store: Store, clock: ManualClock
) -> None:
    other = _second(store, clock)
    if other is None:
        pytest.skip("a memory store has no second writer")
    try:
        start(store, clock, execution_id="exec-a")
        start(store, clock, execution_id="exec-b")
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def charge(writer: Store, run: str) -> None:
            try:
                barrier.wait()
                for n in range(25):
                    # each charge also prunes: the old rows race between the two writers
                    old = charged(AT - timedelta(hours=3, microseconds=n))
                    writer.append_events(run, [old, charged(AT + timedelta(microseconds=n))])
            except BaseException as error:  # noqa: BLE001 - reported below
                errors.append(error)

        threads = [
            threading.Thread(target=charge, args=(store, "exec-a")),
            threading.Thread(target=charge, args=(other, "exec-b")),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert errors == []
        recent = store.limit_charges(DEFAULT_TENANT, "refunds", since=AT)
        assert len(recent) == 50
        assert other.limit_charges(DEFAULT_TENANT, "refunds", since=AT) == recent
    finally:
        other.close()
