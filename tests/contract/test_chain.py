"""The event chain and the kept policy sets, as part of the `Store` contract: every adapter
assigns each event its ``prev_hash`` and ``hash`` in the transaction that numbers it, hands
the log out as stored (`Store.read_chain`), and keeps every tenant policy set by digest.

In the order a reader should learn them:

1. Every event links to the one before (the first to `GENESIS`) and its hash covers its
   stored form; `read_events` carries the same hashes; each execution has its own chain.
2. `read_chain` pages with ``after`` and ``limit``; an unknown execution is `NotFound`;
   ``created_at`` is UTC text with microseconds.
3. Concurrent appends keep one unbroken chain.
4. Policy sets are kept by digest even after the tenant's policy changes.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence

import pytest

from charter.adapters.chain import GENESIS, ChainVerifier, event_hash
from charter.adapters.clock import ManualClock
from charter.core.errors import NotFound
from charter.core.events import ToolCalled
from charter.core.policy import PolicySet
from charter.core.ports import Store
from charter.core.records import ChainLink
from tests.contract.helpers import EXEC, claim, commit, completed, start, tenant


def chain(store: Store, execution_id: str = EXEC) -> tuple[ChainLink, ...]:
    return store.read_chain(execution_id)


def verify(links: Sequence[ChainLink], execution_id: str = EXEC) -> list[str]:
    verifier = ChainVerifier(execution_id, strict=True)
    verifier.feed(links)
    return [str(problem) for problem in verifier.finish()]


def test_every_event_links_to_the_one_before_and_hashes_its_stored_form(
    store: Store, clock: ManualClock
) -> None:
    (_item,) = start(store, clock)
    claimed = claim(store)
    store.append_events(EXEC, [ToolCalled(node_id="n", tool="t")])
    commit(store, claimed, completed(claimed.item.node_id, {"out": "✓", "x": [1, 2.5, -0.0]}))
    links = chain(store)
    assert [link.sequence for link in links] == list(range(1, len(links) + 1))
    assert links[0].prev_hash == GENESIS
    for before, after in itertools.pairwise(links):
        assert after.prev_hash == before.hash
    for link in links:
        assert link.hash == event_hash(
            execution_id=link.execution_id,
            sequence=link.sequence,
            event_id=link.event_id,
            created_at=link.created_at,
            kind_text=link.kind_text,
            prev_hash=link.prev_hash,
        )
    assert verify(links) == []


def test_read_events_carry_the_same_hashes_as_the_chain(store: Store, clock: ManualClock) -> None:
    start(store, clock)
    commit(store, claim(store), completed("x"))
    events = store.read_events(EXEC)
    links = chain(store)
    assert [(e.sequence, e.id, e.prev_hash, e.hash) for e in events] == [
        (link.sequence, link.event_id, link.prev_hash, link.hash) for link in links
    ]
    assert all(e.hash for e in events)


def test_each_execution_has_its_own_chain(store: Store, clock: ManualClock) -> None:
    start(store, clock, execution_id="a")
    start(store, clock, execution_id="b")
    first_a, first_b = chain(store, "a")[0], chain(store, "b")[0]
    assert first_a.prev_hash == first_b.prev_hash == GENESIS
    assert first_a.hash != first_b.hash  # the execution id is part of what is hashed


def test_read_chain_pages_with_after_and_limit(store: Store, clock: ManualClock) -> None:
    start(store, clock)
    store.append_events(EXEC, [completed(f"n{index}") for index in range(9)])
    whole = chain(store)
    assert len(whole) == 10
    assert store.read_chain(EXEC, after=3, limit=4) == whole[3:7]
    assert store.read_chain(EXEC, after=10) == ()
    paged: list[ChainLink] = []
    after = 0
    while page := store.read_chain(EXEC, after=after, limit=3):
        paged.extend(page)
        after = page[-1].sequence
    assert tuple(paged) == whole


def test_read_chain_of_an_unknown_execution_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        store.read_chain("nope")


def test_created_at_is_utc_text_with_microseconds(store: Store, clock: ManualClock) -> None:
    start(store, clock)
    (link,) = chain(store)
    (event,) = store.read_events(EXEC)
    assert link.created_at == event.created_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_concurrent_appends_keep_one_unbroken_chain(store: Store, clock: ManualClock) -> None:
    start(store, clock)

    def writer(name: str) -> None:
        for index in range(15):
            store.append_events(EXEC, [completed(f"{name}{index}")])

    threads = [threading.Thread(target=writer, args=(name,)) for name in "abcd"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    links = chain(store)
    assert len(links) == 61
    assert verify(links) == []


def test_policy_sets_are_kept_by_digest_even_after_the_tenant_changes(
    store: Store, clock: ManualClock
) -> None:
    first = PolicySet(blocked_tools=("shell.*",))
    second = PolicySet(require_approval_for=("payments.*",))
    store.put_tenant(tenant(clock, "acme", policy=first))
    store.put_tenant(tenant(clock, "acme", policy=second))
    assert store.get_policy_set(first.digest) == first
    assert store.get_policy_set(second.digest) == second
    assert store.get_policy_set("0" * 64) is None
