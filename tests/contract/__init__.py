"""The `Store` contract: every adapter passes every test here (the spec is the module doc of
`charter.core.ports`).

Each test runs once per kind in `tests.stores.STORE_KINDS` (ids ``[memory]``, ``[sqlite]``…)
on a fresh store whose time comes from a `ManualClock` (the fixtures are in `conftest`; the
builders the tests share, such as `start`, `claim`, `commit` and `observe`, are in
`tests.contract.helpers`). Each test checks one behaviour and compares exact values: event
kinds by class name and by field, items and ledgers as whole records. "Nothing written" is
checked by comparing everything observable about the execution (`observe`) before and after
the refused call.

One module per topic, each opening with the guarantees it checks. Read them in this order:

1. `test_executions` — tenants, workflow definitions, executions and their derived status,
   listing executions page by page.
2. `test_events` — the event log: append, read, sequences without gaps, compare-and-append.
3. `test_queue` — work items: enqueue, claim (fence and lease), heartbeat, park, fail.
4. `test_reclaim_and_fences` — expired leases are reclaimed, and every operation made with a
   fence that is no longer the item's current claim is refused without writing anything.
5. `test_commit` — the one fenced commit: settle the item, append its events, the
   scheduler's follow-up, snapshots.
6. `test_ledger` — the budget ledger: what adds to it, what resets it, its bounds.
7. `test_approvals` — approval requests, decisions, and consuming an approval once.
8. `test_effects` — tool-effect reservations and recorded results.
9. `test_chain` — the hash chain over each execution's events, and kept policy sets.
10. `test_concurrency` — threads racing for one item or one claim.
11. `test_bad_input` — limits and invalid input: refused, nothing written.

Upstream's queue/fencing tests (jamjet-semantics.md §9) are ported where the port has the
operation: fences, stale-fence rejection, crash-then-reclaim, park, tool effects, concurrent
commits, sibling snapshots. Term bumps, rollover and store reopening are not part of the port.
"""
