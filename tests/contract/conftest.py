"""The fixtures every contract test uses: a `ManualClock` and, parametrized over
`tests.stores.STORE_KINDS`, a fresh store reading time from it (closed after the test,
whether it passed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from charter.adapters.clock import ManualClock
from charter.core.ports import Store
from tests.stores import STORE_KINDS, make_store


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=STORE_KINDS, ids=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock) -> Iterator[Store]:
    kind: str = request.param
    opened = make_store(kind, tmp_path, clock)
    yield opened
    opened.close()
