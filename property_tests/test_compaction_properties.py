"""The compaction planner's rules (`charter.core.compaction`, docs/semantics.md §10),
checked directly: a cut never reaches the run's last event nor goes back over an earlier
compaction; only a finished run is planned; a plan's record continues the previous one."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from charter.core.commit import Head
from charter.core.compaction import GENESIS_HASH, Compaction, cut_sequence, plan_compact
from charter.core.errors import Conflict
from charter.core.records import ExecutionStatus

NOW = datetime(2026, 12, 1, tzinfo=UTC)


@given(
    last=st.integers(min_value=1, max_value=1000),
    done=st.integers(min_value=0, max_value=1000),
    before=st.one_of(st.none(), st.integers(min_value=1, max_value=1100)),
    first_at=st.one_of(st.none(), st.integers(min_value=1, max_value=1100)),
)
def test_a_cut_stays_between_the_previous_one_and_the_last_event(
    last: int, done: int, before: int | None, first_at: int | None
) -> None:
    cut = cut_sequence(
        last_sequence=last, compacted_through=done, before_sequence=before,
        first_at_or_after=None if before is not None else first_at,
    )  # fmt: skip
    if cut is None:
        return
    assert done < cut < last
    if before is not None:
        assert cut <= before - 1
    elif first_at is not None:
        assert cut <= first_at - 1


def _head(status: ExecutionStatus, last: int) -> Head:
    return Head(
        execution_id="r", tenant_id="t", status=status, last_sequence=last, head_hash="h" * 64
    )


@given(
    status=st.sampled_from(ExecutionStatus),
    last=st.integers(min_value=2, max_value=50),
    data=st.data(),
)
def test_only_a_finished_run_is_planned_and_its_record_continues_the_last(
    status: ExecutionStatus, last: int, data: st.DataObject
) -> None:
    done = data.draw(st.integers(min_value=0, max_value=last - 1))
    history = (
        [
            Compaction(
                execution_id="r",
                first_sequence=1,
                through_sequence=done,
                events=done,
                prev_hash=GENESIS_HASH,
                hash="p" * 64,
                snapshot_sequence=last,
                compacted_at=NOW,
            )
        ]
        if done
        else []
    )
    through = data.draw(st.integers(min_value=0, max_value=last + 1))
    head = _head(status, last)
    valid = status.terminal and done < through < last
    if not valid:
        with pytest.raises(Conflict):
            plan_compact(
                "r", head, history, snapshot_sequence=None, through=through,
                expect_hash="x" * 64, stored_hash="x" * 64, now=NOW,
            )  # fmt: skip
        return
    # Another event at the cut than the one read: refused.
    with pytest.raises(Conflict, match="not the one read"):
        plan_compact(
            "r", head, history, snapshot_sequence=last, through=through,
            expect_hash="x" * 64, stored_hash="y" * 64, now=NOW,
        )  # fmt: skip
    plan = plan_compact(
        "r", head, history, snapshot_sequence=last, through=through,
        expect_hash="x" * 64, stored_hash="x" * 64, now=NOW,
    )  # fmt: skip
    record = plan.record
    assert record.first_sequence == done + 1
    assert record.events == through - done
    assert record.prev_hash == (history[-1].hash if history else GENESIS_HASH)
    assert record.hash == "x" * 64
    assert not plan.write_snapshot  # the snapshot was already at the end
    again = plan_compact(
        "r", head, history, snapshot_sequence=last - 1, through=through,
        expect_hash="x" * 64, stored_hash="x" * 64, now=NOW,
    )  # fmt: skip
    assert again.write_snapshot
