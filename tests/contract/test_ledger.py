"""The budget ledger: each execution's running totals, kept exactly and within bounds.

In the order a reader should learn them:

1. A new execution has an empty ledger; an unknown execution's ledger is `NotFound`.
2. A commit adds its usage exactly (cost in whole nano-dollars, so 0.1 + 0.2 is 0.3). A
   commit that succeeded resets the consecutive-error count, one that did not extends it,
   one without an outcome leaves it; a failure adds its usage and one consecutive error.
3. A stale commit does not touch the ledger, and each execution has its own ledger.
4. A total that would pass its bound is refused with `BudgetError`: the commit writes
   nothing and its item stays claimed.

Park and reclaim leave the ledger alone (`test_queue`, `test_reclaim_and_fences`).
"""

from __future__ import annotations

import pytest

from charter.adapters.clock import ManualClock
from charter.core.budget import MAX_COST_USD, BudgetState, Usage
from charter.core.errors import BudgetError, FenceLost, NotFound
from charter.core.ports import Store
from charter.core.records import WorkItemStatus
from tests.contract.helpers import EXEC, claim, complete, start


def test_new_execution_has_an_empty_ledger(store: Store, clock: ManualClock) -> None:
    start(store, clock)
    assert store.get_ledger(EXEC) == BudgetState()


def test_ledger_of_unknown_execution_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        store.get_ledger("ghost")


def test_commit_usage_accumulates_exactly(store: Store, clock: ManualClock) -> None:
    start(store, clock, 3)
    complete(store, claim(store), usage=Usage(input_tokens=100, output_tokens=7, cost_usd=0.1))
    complete(store, claim(store), usage=Usage(input_tokens=5, cost_usd=0.2, tool_calls=2))
    complete(store, claim(store), usage=Usage(output_tokens=1, iterations=3))
    ledger = store.get_ledger(EXEC)
    assert ledger.cost_nanos == 300_000_000  # 0.1 + 0.2, exactly
    assert ledger == BudgetState(
        total_input_tokens=105,
        total_output_tokens=8,
        total_cost_usd=0.3,
        tool_call_count=2,
        iteration_count=3,
    )


def test_commit_that_succeeded_resets_consecutive_errors(store: Store, clock: ManualClock) -> None:
    (item_id,) = start(store, clock, max_attempts=5)
    store.fail(item_id, claim(store).fence, error="e", delay_ms=0)
    store.fail(item_id, claim(store).fence, error="e", delay_ms=0)
    assert store.get_ledger(EXEC).consecutive_error_count == 2
    complete(store, claim(store), succeeded=True)
    assert store.get_ledger(EXEC).consecutive_error_count == 0


def test_commit_that_did_not_succeed_extends_consecutive_errors(
    store: Store, clock: ManualClock
) -> None:
    start(store, clock, 2)
    complete(store, claim(store), succeeded=False)
    complete(store, claim(store), succeeded=False)
    assert store.get_ledger(EXEC).consecutive_error_count == 2


def test_commit_without_an_outcome_leaves_consecutive_errors(
    store: Store, clock: ManualClock
) -> None:
    start(store, clock, 2)
    complete(store, claim(store), succeeded=False)
    complete(store, claim(store), succeeded=None, usage=Usage(input_tokens=1))
    assert store.get_ledger(EXEC).consecutive_error_count == 1


def test_fail_adds_its_usage_and_one_consecutive_error(store: Store, clock: ManualClock) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    store.fail(item_id, claimed.fence, error="e", usage=Usage(input_tokens=9, cost_usd=0.25))
    assert store.get_ledger(EXEC) == BudgetState(
        total_input_tokens=9, total_cost_usd=0.25, consecutive_error_count=1
    )


def test_stale_commit_does_not_touch_the_ledger(store: Store, clock: ManualClock) -> None:
    start(store, clock)
    claimed = claim(store)
    complete(store, claimed, usage=Usage(input_tokens=1), succeeded=True)
    with pytest.raises(FenceLost):
        complete(store, claimed, usage=Usage(input_tokens=1000), succeeded=False)
    assert store.get_ledger(EXEC) == BudgetState(total_input_tokens=1)


def test_ledgers_are_kept_per_execution(store: Store, clock: ManualClock) -> None:
    start(store, clock, execution_id="exec-a")
    start(store, clock, execution_id="exec-b")
    complete(store, claim(store), usage=Usage(input_tokens=3))
    assert store.get_ledger("exec-a") == BudgetState(total_input_tokens=3)
    assert store.get_ledger("exec-b") == BudgetState()


def test_a_total_past_its_bound_is_refused_and_the_commit_writes_nothing(
    store: Store, clock: ManualClock
) -> None:
    start(store, clock, 3)
    near = MAX_COST_USD - 1.0
    complete(store, claim(store), usage=Usage(cost_usd=near, input_tokens=2**62))
    over = claim(store)
    before = store.read_events(EXEC)
    with pytest.raises(BudgetError, match="total"):
        complete(store, over, usage=Usage(cost_usd=2.0))
    with pytest.raises(BudgetError, match="total_input_tokens"):
        complete(store, over, usage=Usage(input_tokens=2**62))
    assert store.read_events(EXEC) == before
    assert store.get_ledger(EXEC) == BudgetState(total_cost_usd=near, total_input_tokens=2**62)
    assert store.get_item(over.item.item_id).status is WorkItemStatus.CLAIMED  # type: ignore[union-attr]
