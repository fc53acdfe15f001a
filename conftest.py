"""Shared pytest configuration: Hypothesis profiles, chosen by HYPOTHESIS_PROFILE, and a
closing line when the Postgres tests were skipped.

* ``dev`` (default): quick feedback, 100 examples per property.
* ``ci``: more examples, no deadline (CI machines are shared and noisy), derandomized so a
  failure reproduces on rerun.

The Postgres tests need ``CHARTER_TEST_POSTGRES_URL`` (``.ci/run`` sets it); without it they
are skipped, and the run ends by saying how many and how to run them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile(
    "ci",
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


#: The variable that names the Postgres server for tests (`tests.stores`).
POSTGRES_URL_VARIABLE = "CHARTER_TEST_POSTGRES_URL"


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> Iterator[None]:
    """One closing line (after pytest's own summary) when tests were skipped for want of a
    Postgres server."""
    yield
    if os.environ.get(POSTGRES_URL_VARIABLE):
        return
    skipped = [
        report
        for report in terminalreporter.stats.get("skipped", [])
        if POSTGRES_URL_VARIABLE in str(getattr(report, "longrepr", ""))
    ]
    if skipped:
        terminalreporter.write_line(
            f"{len(skipped)} Postgres test(s) skipped: {POSTGRES_URL_VARIABLE} is not set. "
            f"Run them with {POSTGRES_URL_VARIABLE}=postgresql://postgres@127.0.0.1:5432/test "
            "(any Postgres server you may create schemas in)",
            yellow=True,
            bold=True,
        )
