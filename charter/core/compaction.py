"""Compaction of a finished run's log, planned as a pure function (docs/semantics.md §10).

A finished run's log may have its oldest events removed, replaced by the run's final
snapshot and summarised by a `Compaction` record — the removed events' first and last
sequence, their count, the ``prev_hash`` the first of them continued from and the ``hash``
of the last one. The first retained event's ``prev_hash`` is that hash, so the chain still
verifies from the record on, and an archive of the removed events verifies against it.

The rules, decided here once for every store:

* only a **finished** run (completed, failed, cancelled, limit exceeded) is compacted: a
  run that is pending, running or paused (waiting for a person) never is. A finished run
  has no open question: answers and resolutions are refused once a run has finished
  (`charter.core.answers`), so no approval or lost outcome can still be answered;
* the cut is the last event recorded before ``--before`` (a sequence: every event whose
  sequence is lower; a time: every event up to the first one recorded at or after it),
  and **never the run's last event**: it stays, carrying the head of the chain (where an
  anchor and any later append continue) and showing how the run ended;
* the run's snapshot is first brought to the run's end (a fold of the retained events
  onto the latest snapshot), so the materialized state — status, workflow state, outputs —
  is exactly what the whole log gives;
* a compaction extends the previous one (removing the events after its cut), never
  overlaps it; a cut at or before the previous one changes nothing;
* the writer states the hash of the event it read at the cut (``expect_hash``): if the
  stored event there is not that one, nothing is written (`Conflict`) — so what an archive
  holds is exactly what was removed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final

import attrs

from charter.core.commit import Head
from charter.core.errors import Conflict, NotFound
from charter.core.records import ExecutionStatus

__all__ = [
    "GENESIS_HASH",
    "Compaction",
    "CompactionPlan",
    "compactable",
    "cut_sequence",
    "plan_compact",
]

#: The ``prev_hash`` of a run's first event (`charter.adapters.chain.GENESIS`).
GENESIS_HASH: Final = "0" * 64


@attrs.frozen(kw_only=True)
class Compaction:
    """One compaction of a run's log: events ``first_sequence``…``through_sequence``
    (``events`` of them) were removed; the first continued the chain from ``prev_hash``,
    the last had ``hash`` (the next retained event's ``prev_hash``); the run's snapshot at
    ``snapshot_sequence`` stands for them."""

    execution_id: str
    first_sequence: int
    through_sequence: int
    events: int
    prev_hash: str
    hash: str
    snapshot_sequence: int
    compacted_at: datetime


@attrs.frozen(kw_only=True)
class CompactionPlan:
    """What one compaction writes, in order: the snapshot brought to the run's end (if it is
    not there yet), the removal of events up to ``record.through_sequence``, the record."""

    write_snapshot: bool
    record: Compaction


def compactable(status: ExecutionStatus) -> str | None:
    """Why a run in ``status`` may not be compacted (``None``: it may)."""
    if status.terminal:
        return None
    if status is ExecutionStatus.PAUSED:
        return "it is waiting (paused for a person); only finished runs are compacted"
    return f"it is still {status.value}; only finished runs are compacted"


def cut_sequence(
    *,
    last_sequence: int,
    compacted_through: int,
    before_sequence: int | None = None,
    first_at_or_after: int | None = None,
) -> int | None:
    """The last sequence a compaction removes, or ``None`` when it would remove nothing.

    ``before_sequence``: remove the events whose sequence is lower. ``first_at_or_after``
    (for a time): the first event recorded at or after it (``None``: every event was
    recorded before it). Never the last event (see the module doc); never at or before the
    previous compaction's cut (``compacted_through``)."""
    if before_sequence is not None:
        through = before_sequence - 1
    elif first_at_or_after is not None:
        through = first_at_or_after - 1
    else:
        through = last_sequence
    through = min(through, last_sequence - 1)
    return through if through > compacted_through else None


def plan_compact(
    execution_id: str,
    head: Head | None,
    history: Sequence[Compaction],
    *,
    snapshot_sequence: int | None,
    through: int,
    expect_hash: str,
    stored_hash: str | None,
    now: datetime,
) -> CompactionPlan:
    """Plan the compaction of ``execution_id`` through sequence ``through`` from what the
    store read under the run's lock: its `Head`, its compaction ``history`` (oldest first),
    its latest snapshot's sequence, and the stored hash of event ``through``. Raises
    `NotFound` (no such run) or `Conflict` (not finished, nothing to remove, or the event
    at the cut is not the one the caller read and archived) before anything is written."""
    if head is None:
        raise NotFound(f"execution {execution_id!r} does not exist")
    refusal = compactable(head.status)
    if refusal is not None:
        raise Conflict(f"execution {execution_id!r} cannot be compacted: {refusal}")
    previous = history[-1] if history else None
    first = previous.through_sequence + 1 if previous is not None else 1
    if through < first or through >= head.last_sequence:
        raise Conflict(
            f"execution {execution_id!r}: cannot compact through event {through} (events "
            f"{first}–{head.last_sequence - 1} may be removed; the last event stays)"
        )
    if stored_hash != expect_hash:
        raise Conflict(
            f"execution {execution_id!r}: event {through} is not the one read "
            f"(hash {stored_hash!r}, expected {expect_hash!r}); nothing was compacted"
        )
    record = Compaction(
        execution_id=execution_id,
        first_sequence=first,
        through_sequence=through,
        events=through - first + 1,
        prev_hash=previous.hash if previous is not None else GENESIS_HASH,
        hash=expect_hash,
        snapshot_sequence=head.last_sequence,
        compacted_at=now,
    )
    return CompactionPlan(
        write_snapshot=snapshot_sequence != head.last_sequence,
        record=record,
    )
