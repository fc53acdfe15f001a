"""Several items in one transaction (`Store.claim_many`, `Store.commit_group`): a fan-out's
ready items claimed together and their ends committed together, and indistinguishable from
the same claims and commits made one by one.

In the order a reader should learn them:

1. `claim_many` records exactly what as many claims in a row would: the same items
   claimed with the same fences and leases, one ``node_started`` each, the same claims.
2. A group commit records exactly what the same commits made one by one (each followed,
   when the group claims, by the claims a worker would make after them) record: the same
   item rows, events at the same sequences, ledger, snapshot and approvals — over mixes
   of outcomes, usage, forced snapshots, follow-ups and stale fences.
3. A commit of the group that is refused (a stale fence, a bad request) is reported as its
   error and writes nothing; none of the others is lost.
4. A worker that dies after the group's transaction leaves what it claimed there under
   leases that expire: reclaim retries each, as it would any claim.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from charter.adapters.clock import ManualClock
from charter.core.budget import Usage
from charter.core.errors import CharterError, FenceLost, InvalidInput
from charter.core.events import NodeFailed, NodeScheduled
from charter.core.ports import CommitRequest, GroupCommitted, Store
from charter.core.records import Claim, WorkItemStatus
from tests.contract.helpers import (
    CLAIMED,
    COMPLETED,
    HELD,
    LEASE,
    PENDING,
    QUEUE,
    WORKER,
    completed,
    names,
    new_item,
    observe,
    start,
)
from tests.contract.test_chained_claim import _claim_fields, _normalised

FAILED = WorkItemStatus.FAILED


def _claims_one_by_one(store: Store, run: str, limit: int) -> list[Claim]:
    claims = []
    for _ in range(limit):
        claimed = store.claim(WORKER, [QUEUE], lease_secs=LEASE, execution_id=run)
        if claimed is None:
            break
        claims.append(claimed)
    return claims


@pytest.mark.parametrize(("items", "limit"), [(1, 1), (3, 3), (5, 3), (2, 4)])
def test_claim_many_records_exactly_what_claims_in_a_row_would(
    store: Store, clock: ManualClock, items: int, limit: int
) -> None:
    results = {}
    counts = []
    for run, together in (("run-a", False), ("run-b", True)):
        ids = start(store, clock, items, execution_id=run)
        if together:
            claims = list(
                store.claim_many(WORKER, [QUEUE], lease_secs=LEASE, limit=limit, execution_id=run)
            )
        else:
            claims = _claims_one_by_one(store, run, limit)
        results[together] = repr(
            (_normalised(store, run, list(ids)), [_claim_fields(c, run) for c in claims])
        ).replace(run, "RUN")
        counts.append(len(claims))
    assert results[True] == results[False]
    assert counts == [min(items, limit)] * 2


def test_claim_many_takes_one_execution_and_nothing_when_nothing_waits(
    store: Store, clock: ManualClock
) -> None:
    assert store.claim_many(WORKER, [QUEUE], lease_secs=LEASE, limit=4) == ()
    start(store, clock, 2, execution_id="run-a")
    start(store, clock, 2, execution_id="run-b")
    claims = store.claim_many(WORKER, [QUEUE], lease_secs=LEASE, limit=4)
    # The oldest item's run, and only it: the transaction holds one execution.
    assert [c.item.execution_id for c in claims] == ["run-a", "run-a"]
    assert [c.item.status for c in claims] == [CLAIMED, CLAIMED]
    assert all(names(c.events) == ["NodeStarted"] for c in claims)
    assert len({c.events[0].sequence for c in claims}) == 2


# What each request of a group asks, by position: an outcome and its options.
MIXES = [
    pytest.param([{}, {}, {}], id="three-completed"),
    pytest.param([{"outcome": HELD}, {"usage": 3}, {"outcome": FAILED, "usage": 1}], id="mixed"),
    pytest.param([{"snapshot": True}, {"usage": 2, "snapshot": True}], id="snapshots"),
    pytest.param([{"follow": 2}, {"follow": 1}, {}], id="follow-ups"),
    pytest.param([{}, {"stale": True}, {"usage": 5}], id="stale-in-the-middle"),
    pytest.param([{"stale": True}, {"follow": 1}], id="stale-first"),
    pytest.param([{"bad": True}, {}, {"stale": True}], id="bad-and-stale"),
    pytest.param([{}, {"twice": True}], id="the-same-item-twice"),
    pytest.param([{}, {"stale": True}], id="stale-last"),
    pytest.param([{"follow": 3}], id="one-with-follow-ups"),
]


def _requests(
    store: Store, run: str, claims: list[Claim], mix: list[dict[str, Any]]
) -> list[CommitRequest]:
    """The requests of ``mix``, each made for one claim as a worker makes it before any of
    them is committed (so the follow-ups assume the log as it stands now)."""
    last = store.read_events(run)[-1].sequence
    requests = []
    for index, options in enumerate(mix):
        claimed = claims[index - 1 if options.get("twice") else index]
        items = tuple(
            new_item(f"{run}-next-{index}-{n}", execution_id=run, node_id=f"next-{index}-{n}")
            for n in range(options.get("follow", 0))
        )
        usage = options.get("usage")
        requests.append(
            CommitRequest(
                item_id=claimed.item.item_id,
                fence=claimed.fence + (1 if options.get("stale") else 0),
                outcome=options.get("outcome", COMPLETED),
                events=(completed(claimed.item.node_id),),
                usage=None if usage is None else Usage(input_tokens=usage, tool_calls=1),
                succeeded=None if usage is None else True,
                write_snapshot=options.get("snapshot"),
                then_events=tuple(_scheduled(i) for i in items),
                then_items=items,
                then_if_last_sequence=last if items else None,
            )
        )
        if options.get("bad"):
            requests[-1] = attrs.evolve(requests[-1], outcome=WorkItemStatus.PENDING)
    return requests


def _scheduled(item: Any) -> NodeScheduled:
    return NodeScheduled(node_id=item.node_id, queue_type=QUEUE)


def _completions(claims: Any) -> list[CommitRequest]:
    """Each claim's commit as completed, with its ``node_completed``."""
    return [
        CommitRequest(
            item_id=c.item.item_id,
            fence=c.fence,
            outcome=COMPLETED,
            events=(completed(c.item.node_id),),
        )
        for c in claims
    ]


def _outcome(result: Any) -> Any:
    if isinstance(result, CharterError):
        return type(result).__name__
    return [(event.sequence, event.kind) for event in result]


@pytest.mark.parametrize("claim_limit", [0, 2], ids=["no-claim", "claims-after"])
@pytest.mark.parametrize("mix", MIXES)
def test_a_group_commit_records_exactly_what_the_commits_one_by_one_would(
    store: Store, clock: ManualClock, mix: list[dict[str, Any]], claim_limit: int
) -> None:
    results = {}
    for run, together in (("run-a", False), ("run-b", True)):
        waiting = 2  # (a fan-out's siblings, left for the claims after the commits)
        ids = start(store, clock, len(mix) + waiting, execution_id=run)
        claims = list(
            store.claim_many(WORKER, [QUEUE], lease_secs=LEASE, limit=len(mix), execution_id=run)
        )
        requests = _requests(store, run, claims, mix)
        outcomes: list[Any]
        if together:
            group = store.commit_group(
                requests, WORKER, [QUEUE], lease_secs=LEASE, claim_limit=claim_limit
            )
            outcomes = [_outcome(result) for result in group.results]
            after = list(group.claims)
        else:
            outcomes = []
            for request in requests:
                try:
                    outcomes.append(_outcome(store.commit(request)))
                except CharterError as error:
                    outcomes.append(_outcome(error))
            after = _claims_one_by_one(store, run, claim_limit) if claim_limit else []
        follow = [
            f"{run}-next-{index}-{n}"
            for index, options in enumerate(mix)
            for n in range(options.get("follow", 0))
        ]
        refused = [o for o in outcomes if isinstance(o, str)]
        results[together] = repr(
            (
                _normalised(store, run, [*ids, *follow]),
                outcomes,
                [_claim_fields(claimed, run) for claimed in after],
            )
        ).replace(run, "RUN")
    assert results[True] == results[False]
    assert len(refused) == sum(
        1 for options in mix if options.get("stale") or options.get("bad") or options.get("twice")
    )


def test_a_stale_fence_loses_none_of_the_others(store: Store, clock: ManualClock) -> None:
    ids = start(store, clock, 3)
    claims = list(store.claim_many(WORKER, [QUEUE], lease_secs=LEASE, limit=3))
    # The middle item is reclaimed and claimed again by another worker: this claim is stale.
    clock.advance(LEASE + 1)
    store.heartbeat(claims[0].item.item_id, claims[0].fence, lease_secs=LEASE)
    store.heartbeat(claims[2].item.item_id, claims[2].fence, lease_secs=LEASE)
    store.reclaim_expired()
    clock.advance(3600)
    other = store.claim("worker-2", [QUEUE], lease_secs=LEASE)
    assert other is not None
    assert other.item.item_id == ids[1]
    before = observe(store, ids[1])["items"]
    group = store.commit_group(_completions(claims))
    first, middle, last = group.results
    assert isinstance(middle, FenceLost)
    assert isinstance(first, tuple)
    assert isinstance(last, tuple)
    assert names(first) == names(last) == ["NodeCompleted"]
    assert last[0].sequence == first[0].sequence + 1
    assert observe(store, ids[1])["items"] == before
    for item_id in (ids[0], ids[2]):
        item = store.get_item(item_id)
        assert item is not None
        assert item.status is COMPLETED
    assert group.events == (*first, *last)


def test_a_group_that_claims_hands_back_claims_a_worker_holds(
    store: Store, clock: ManualClock
) -> None:
    ids = start(store, clock, 5)
    claims = store.claim_many(WORKER, [QUEUE], lease_secs=LEASE, limit=2)
    group = store.commit_group(
        [CommitRequest(item_id=c.item.item_id, fence=c.fence, outcome=COMPLETED) for c in claims],
        WORKER,
        [QUEUE],
        lease_secs=LEASE,
        claim_limit=2,
    )
    assert [c.item.item_id for c in group.claims] == [ids[2], ids[3]]
    assert names(group.events) == ["NodeStarted", "NodeStarted"]
    for claimed in group.claims:
        assert claimed.item.status is CLAIMED
        assert claimed.item.worker_id == WORKER
        assert claimed.tenant is not None
        store.heartbeat(claimed.item.item_id, claimed.fence, lease_secs=LEASE)


def test_a_worker_that_dies_after_a_group_is_recovered_by_lease(
    store: Store, clock: ManualClock
) -> None:
    ids = start(store, clock, 4, max_attempts=3)
    claims = store.claim_many(WORKER, [QUEUE], lease_secs=LEASE, limit=2)
    group = store.commit_group(
        _completions(claims),
        WORKER,
        [QUEUE],
        lease_secs=LEASE,
        claim_limit=2,
    )
    held = [c.item.item_id for c in group.claims]
    assert held == [ids[2], ids[3]]
    # The worker dies here: the committed items stay committed, the claimed ones are
    # claimed until their leases end, then retried.
    clock.advance(LEASE - 1)
    assert store.reclaim_expired().retried == ()
    clock.advance(2)
    result = store.reclaim_expired()
    assert sorted(item.item_id for item in result.retried) == held
    for item_id in held:
        item = store.get_item(item_id)
        assert item is not None
        assert (item.status, item.attempt) == (PENDING, 1)
    for item_id in ids[:2]:
        item = store.get_item(item_id)
        assert item is not None
        assert item.status is COMPLETED
    retried = [e.kind for e in store.read_events("exec-1") if isinstance(e.kind, NodeFailed)]
    assert sorted(kind.node_id for kind in retried) == sorted(c.item.node_id for c in group.claims)
    # The dead worker's claims are refused; new claims take the items with new fences.
    with pytest.raises(FenceLost):
        store.commit(CommitRequest(item_id=held[0], fence=group.claims[0].fence, outcome=COMPLETED))
    clock.advance(3600)
    again = store.claim_many("worker-2", [QUEUE], lease_secs=LEASE, limit=4)
    assert sorted(c.item.item_id for c in again) == held
    assert all(c.fence > group.claims[0].fence for c in again)


def test_a_group_takes_the_arguments_a_claim_takes(store: Store, clock: ManualClock) -> None:
    ids = start(store, clock, 2)
    claims = store.claim_many(WORKER, [QUEUE], lease_secs=LEASE, limit=2)
    requests = [
        CommitRequest(item_id=c.item.item_id, fence=c.fence, outcome=COMPLETED) for c in claims
    ]
    before = observe(store, *ids)
    bad: list[tuple[str | None, int, float]] = [
        (WORKER, -1, LEASE),
        (WORKER, 1001, LEASE),
        (None, 1, LEASE),
        (WORKER, 1, -1.0),
    ]
    for worker, limit, lease in bad:
        with pytest.raises(InvalidInput):
            store.commit_group(requests, worker, [QUEUE], lease_secs=lease, claim_limit=limit)
    with pytest.raises(InvalidInput, match="limit"):
        store.claim_many(WORKER, [QUEUE], lease_secs=LEASE, limit=0)
    assert observe(store, *ids) == before
    assert store.commit_group([]) == GroupCommitted()
