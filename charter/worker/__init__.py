"""The worker shell: claim → gate → execute → commit, around the core's decisions.

* `Worker` (`charter.worker.worker`) processes claimed work items, one fenced commit each;
  build one with `charter.bootstrap.build_worker`.
* `Scheduler` and `RunView` (`charter.worker.scheduling`) fold each execution's log
  incrementally and append its next plans with compare-and-append.
* `Definitions` (`charter.worker.definitions`) caches parsed workflow definitions.
* `start_run` and `drive` (`charter.worker.runs`) start a run and drive it in-process until
  it finishes or waits for a person (``charter run``).

The rest is the worker's own machinery: running an executor (`charter.worker.execution`),
writing an attempt's end (`charter.worker.commits`), renewing leases
(`charter.worker.heartbeats`).
"""

from __future__ import annotations

from charter.worker.definitions import Definitions
from charter.worker.runs import RunOutcome, drive, start_run
from charter.worker.scheduling import RunView, Scheduler
from charter.worker.worker import (
    ALL_QUEUES,
    DEFAULT_BATCH,
    DEFAULT_CHAIN_LIMIT,
    Worker,
    WorkerHooks,
)

__all__ = [
    "ALL_QUEUES",
    "DEFAULT_BATCH",
    "DEFAULT_CHAIN_LIMIT",
    "Definitions",
    "RunOutcome",
    "RunView",
    "Scheduler",
    "Worker",
    "WorkerHooks",
    "drive",
    "start_run",
]
