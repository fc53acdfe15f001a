"""Threads racing on one store: the queue's exclusivity holds under contention.

In the order a reader should learn them:

1. Workers claiming from one queue at once never get the same item twice: every item is
   handed out exactly once, with fence 1, and each claim appends one ``node_started``.
2. Many threads committing one claim at once: exactly one wins, the others get
   `FenceLost`, and the node has exactly one terminal event and its usage counted once.

Concurrent appends keeping one unbroken hash chain are checked in `test_chain`; whole
worker processes killed mid-run are exercised per adapter in `tests/test_sqlite_store.py`,
`tests/test_postgres_store.py` and the worker end-to-end tests.
"""

from __future__ import annotations

import threading

from charter.adapters.clock import ManualClock
from charter.core.budget import Usage
from charter.core.errors import FenceLost
from charter.core.ports import Store
from charter.core.records import Claim
from tests.contract.helpers import (
    EXEC,
    LEASE,
    QUEUE,
    claim,
    complete,
    completed,
    names,
    node_of,
    start,
    terminal_node_events,
)


def test_concurrent_claims_never_hand_out_an_item_twice(store: Store, clock: ManualClock) -> None:
    items = start(store, clock, 20)
    barrier = threading.Barrier(6)
    got: list[Claim] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        barrier.wait()
        while (claimed := store.claim(name, [QUEUE], lease_secs=LEASE)) is not None:
            with lock:
                got.append(claimed)

    threads = [threading.Thread(target=worker, args=(f"w{n}",)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(c.item.item_id for c in got) == sorted(items)
    assert {c.fence for c in got} == {1}
    assert names(store.read_events(EXEC)).count("NodeStarted") == 20


def test_concurrent_commits_of_one_claim_have_exactly_one_winner(
    store: Store, clock: ManualClock
) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    barrier = threading.Barrier(8)
    outcomes: list[str] = []
    lock = threading.Lock()

    def settle() -> None:
        barrier.wait()
        try:
            complete(store, claimed, usage=Usage(input_tokens=1))
            outcome = "won"
        except FenceLost:
            outcome = "lost"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=settle) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["lost"] * 7 + ["won"]
    assert terminal_node_events(store) == [completed(node_of(item_id))]
    assert store.get_ledger(EXEC).total_input_tokens == 1
