"""Shared pytest configuration: Hypothesis profiles, chosen by HYPOTHESIS_PROFILE.

* ``dev`` (default): quick feedback, 100 examples per property.
* ``ci``: more examples, no deadline (CI machines are shared and noisy), derandomized so a
  failure reproduces on rerun.
"""

from __future__ import annotations

import os

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
