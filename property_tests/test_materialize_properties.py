"""Properties of the materialized-state fold that stores rely on."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from charter.core import STATUS_KINDS, EventKind, ExecutionStatus, status_after
from charter.testing.strategies import event_kinds


@given(event_kinds(), st.sampled_from(ExecutionStatus))
def test_only_status_kinds_change_a_status(kind: EventKind, status: ExecutionStatus) -> None:
    # Stores skip the status fold for appends without a status kind: that is only sound if
    # every other kind leaves every status alone.
    if not isinstance(kind, STATUS_KINDS):
        assert status_after(status, kind) is status


@given(event_kinds(), st.sampled_from([s for s in ExecutionStatus if s.terminal]))
def test_a_terminal_status_never_changes(kind: EventKind, status: ExecutionStatus) -> None:
    assert status_after(status, kind) is status
