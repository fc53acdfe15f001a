"""Limits and invalid input: refused with a typed error, and nothing written.

In the order a reader should learn them:

1. Work items no store could keep (a lone surrogate or NUL in an id, out-of-range numbers)
   are `InvalidInput` naming the field. A payload over `MAX_PAYLOAD_BYTES` is
   `LimitExceeded` naming the limit; one exactly at the limit is accepted.
2. Identifiers — item, node, queue, execution, worker and claimed queue names — over
   `MAX_ID_LENGTH` are `LimitExceeded`; identifiers exactly at the limit are accepted.
3. Values that are not JSON (sets, bytes, objects, NaN, infinities, non-string keys) in a
   payload, an initial input, an event field or an effect result are `InvalidInput`; an
   oversized event is `LimitExceeded`, in a commit (the item stays claimed) as in an append.
4. Enqueueing for an unknown execution is `NotFound` and enqueues none of the batch.
5. A non-positive lease (claim, heartbeat), a bad reclaim ``limit`` and a naive
   ``available_at`` are `InvalidInput`; an oversized failure error or approval comment is
   `LimitExceeded`.
"""

from __future__ import annotations

from typing import Any, Final

import attrs
import pytest

from charter.adapters.clock import ManualClock
from charter.core.budget import Usage
from charter.core.errors import InvalidInput, LimitExceeded, NotFound
from charter.core.events import WorkflowCompleted, WorkflowFailed
from charter.core.ports import EffectResult, Store
from charter.core.records import MAX_ID_LENGTH, MAX_PAYLOAD_BYTES, WorkItemStatus
from tests.contract.helpers import (
    EFFECT,
    EXEC,
    LEASE,
    QUEUE,
    TOO_LONG,
    WORKER,
    approve,
    claim,
    commit,
    complete,
    completed,
    execution,
    hold_for_approval,
    names,
    new_item,
    node_of,
    observe,
    start,
    started,
)

# ── items and payloads ─────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"item_id": "bad\ud800id"}, "item_id"),
        ({"node_id": "nul\x00here"}, "node_id"),
        ({"max_attempts": 2**63}, "max_attempts"),
        ({"backoff_base_ms": 10**12}, "backoff_base_ms"),
    ],
    ids=["lone-surrogate", "nul", "huge-attempts", "huge-backoff"],
)
def test_an_item_no_store_could_keep_is_refused_naming_its_field(
    store: Store, clock: ManualClock, changes: dict[str, Any], field: str
) -> None:
    start(store, clock, 0)
    before = observe(store)
    with pytest.raises(InvalidInput) as refused:
        store.enqueue([attrs.evolve(new_item("ok"), **changes)])
    assert refused.value.where == field
    assert observe(store) == before


def test_oversized_payload_is_refused_naming_the_limit(store: Store, clock: ManualClock) -> None:
    start(store, clock, 0)
    before = observe(store, "big")
    with pytest.raises(LimitExceeded) as refused:
        store.enqueue([new_item("big", payload="x" * MAX_PAYLOAD_BYTES)])
    assert "payload" in str(refused.value)
    assert str(MAX_PAYLOAD_BYTES) in str(refused.value)
    assert observe(store, "big") == before


def test_payload_at_the_limit_is_accepted(store: Store, clock: ManualClock) -> None:
    start(store, clock, 0)
    payload = "x" * (MAX_PAYLOAD_BYTES - 2)  # plus two quotes: exactly the limit
    store.enqueue([new_item("full", payload=payload)])
    assert claim(store).item.payload == payload


# ── identifiers ────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("field", ["item_id", "node_id", "queue"])
def test_item_identifier_over_the_limit_is_refused(
    store: Store, clock: ManualClock, field: str
) -> None:
    start(store, clock, 0)
    item_id = TOO_LONG if field == "item_id" else "item-1"
    options: dict[str, Any] = {field: TOO_LONG} if field != "item_id" else {}
    before = observe(store, item_id)
    with pytest.raises(LimitExceeded) as refused:
        store.enqueue([new_item(item_id, **options)])
    assert str(MAX_ID_LENGTH) in str(refused.value)
    assert observe(store, item_id) == before


def test_execution_id_over_the_limit_is_refused(store: Store, clock: ManualClock) -> None:
    with pytest.raises(LimitExceeded):
        store.create_execution(execution(clock, TOO_LONG), [started()])
    assert store.get_execution(TOO_LONG) is None
    assert store.list_executions().items == ()


def test_worker_id_over_the_limit_is_refused(store: Store, clock: ManualClock) -> None:
    (item_id,) = start(store, clock)
    before = observe(store, item_id)
    with pytest.raises(LimitExceeded):
        store.claim(TOO_LONG, [QUEUE], lease_secs=LEASE)
    assert observe(store, item_id) == before


def test_claimed_queue_name_over_the_limit_is_refused(store: Store, clock: ManualClock) -> None:
    (item_id,) = start(store, clock)
    before = observe(store, item_id)
    with pytest.raises(LimitExceeded):
        store.claim(WORKER, [QUEUE, TOO_LONG], lease_secs=LEASE)
    assert observe(store, item_id) == before


def test_identifiers_at_the_limit_are_accepted(store: Store, clock: ManualClock) -> None:
    longest = "y" * MAX_ID_LENGTH
    store.create_execution(execution(clock, longest), [started()])
    store.enqueue([new_item(longest, execution_id=longest, node_id=longest, queue=longest)])
    claimed = claim(store, queues=[longest], worker=longest)
    assert (claimed.item.item_id, claimed.item.worker_id) == (longest, longest)


# ── values that are not JSON, events over the limit ────────────────────────────────────

NOT_JSON: Final[dict[str, object]] = {
    "set": {1, 2},
    "bytes": b"raw",
    "object": object(),
    "nan": float("nan"),
    "infinity": float("inf"),
    "int-keys": {1: "one"},
    "nested-int-keys": {"outer": [{2: "two"}]},
}


@pytest.mark.parametrize("payload", NOT_JSON.values(), ids=NOT_JSON.keys())
def test_non_json_payload_is_invalid_input(
    store: Store, clock: ManualClock, payload: object
) -> None:
    start(store, clock, 0)
    before = observe(store, "item-1")
    with pytest.raises(InvalidInput) as refused:
        store.enqueue([new_item("item-1", payload=payload)])
    assert not isinstance(refused.value, LimitExceeded)
    assert observe(store, "item-1") == before


@pytest.mark.parametrize("value", NOT_JSON.values(), ids=NOT_JSON.keys())
def test_non_json_initial_input_is_invalid_input(
    store: Store, clock: ManualClock, value: object
) -> None:
    with pytest.raises(InvalidInput):
        store.create_execution(execution(clock, initial_input=value))
    assert store.get_execution(EXEC) is None


def test_non_json_event_field_is_invalid_and_appends_nothing(
    store: Store, clock: ManualClock
) -> None:
    start(store, clock)
    before = observe(store)
    with pytest.raises(InvalidInput):
        store.append_events(EXEC, [WorkflowFailed("ok"), WorkflowCompleted({"s": {1, 2}})])
    assert observe(store) == before


def test_oversized_event_in_commit_is_refused_and_the_item_stays_claimed(
    store: Store, clock: ManualClock
) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    before = observe(store, item_id)
    huge = completed(node_of(item_id), "x" * MAX_PAYLOAD_BYTES)
    with pytest.raises(LimitExceeded):
        commit(store, claimed, huge, usage=Usage(input_tokens=1), write_snapshot=True)
    assert observe(store, item_id) == before
    assert names(complete(store, claimed)) == ["NodeCompleted"]  # the claim still holds


def test_oversized_event_in_append_events_appends_nothing(store: Store, clock: ManualClock) -> None:
    start(store, clock)
    before = observe(store)
    with pytest.raises(LimitExceeded):
        store.append_events(EXEC, [WorkflowFailed("fine"), WorkflowFailed("x" * MAX_PAYLOAD_BYTES)])
    assert observe(store) == before


def test_non_json_effect_result_is_refused_and_the_item_stays_claimed(
    store: Store, clock: ManualClock
) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    before = observe(store, item_id, effect_keys=[EFFECT])
    with pytest.raises(InvalidInput):
        complete(store, claimed, effect=EffectResult(key=EFFECT, result={"raw": b"bytes"}))
    assert observe(store, item_id, effect_keys=[EFFECT]) == before


# ── unknown execution ──────────────────────────────────────────────────────────────────


def test_enqueue_for_unknown_execution_is_not_found_and_writes_nothing(
    store: Store, clock: ManualClock
) -> None:
    start(store, clock, 0)
    before = observe(store, "item-ok")
    with pytest.raises(NotFound):
        store.enqueue([new_item("item-ok"), new_item("item-lost", execution_id="ghost")])
    assert observe(store, "item-ok") == before
    assert store.get_item("item-lost") is None


# ── leases, limits, times and texts ────────────────────────────────────────────────────


@pytest.mark.parametrize("lease_secs", [0, -1, -0.001])
def test_claim_with_a_non_positive_lease_is_refused(
    store: Store, clock: ManualClock, lease_secs: float
) -> None:
    (item_id,) = start(store, clock)
    before = observe(store, item_id)
    with pytest.raises(InvalidInput):
        store.claim(WORKER, [QUEUE], lease_secs=lease_secs)
    assert observe(store, item_id) == before


@pytest.mark.parametrize("lease_secs", [0, -1, -0.001])
def test_heartbeat_with_a_non_positive_lease_is_refused(
    store: Store, clock: ManualClock, lease_secs: float
) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    before = observe(store, item_id)
    with pytest.raises(InvalidInput):
        store.heartbeat(item_id, claimed.fence, lease_secs=lease_secs)
    assert observe(store, item_id) == before


@pytest.mark.parametrize("limit", [0, -1, 1001, True, 2.0])
def test_reclaim_refuses_a_bad_limit_and_changes_nothing(
    store: Store, clock: ManualClock, limit: Any
) -> None:
    start(store, clock, 2)
    claim(store)
    claim(store)
    clock.advance(LEASE + 1)
    with pytest.raises(InvalidInput, match="limit"):
        store.reclaim_expired(limit=limit)
    assert [i.status for i in (store.get_item(f"{EXEC}-item-{n}") for n in (0, 1)) if i] == [
        WorkItemStatus.CLAIMED,
        WorkItemStatus.CLAIMED,
    ]


def test_naive_available_at_is_refused(store: Store, clock: ManualClock) -> None:
    start(store, clock, 0)
    naive = clock.now().replace(tzinfo=None)
    with pytest.raises(InvalidInput):
        store.enqueue([new_item("item-1", available_at=naive)])
    assert store.get_item("item-1") is None


def test_oversized_failure_error_is_refused_and_writes_nothing(
    store: Store, clock: ManualClock
) -> None:
    (item_id,) = start(store, clock)
    claimed = claim(store)
    before = observe(store, item_id)
    with pytest.raises(LimitExceeded):
        store.fail(item_id, claimed.fence, error="x" * MAX_PAYLOAD_BYTES)
    assert observe(store, item_id) == before


def test_oversized_approval_decision_is_refused_and_writes_nothing(
    store: Store, clock: ManualClock
) -> None:
    hold_for_approval(store, clock)
    before = observe(store)
    with pytest.raises(LimitExceeded):
        approve(store, "alice", comment="x" * MAX_PAYLOAD_BYTES)
    assert observe(store) == before
