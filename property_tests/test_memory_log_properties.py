"""The memory store's event log (`charter.adapters.memory._Log`): versions share one list,
and no version ever changes, whichever version a later append starts from (a transaction
that failed after appending leaves entries past the committed version's length)."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from charter.adapters.memory import _Log
from charter.core.events import Event, NodeCompleted

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
