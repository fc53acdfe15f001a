"""Parsed workflow definitions, read from the store once per (tenant, id, version)."""

from __future__ import annotations

import threading

from charter.core.errors import NotFound
from charter.core.ports import Store
from charter.core.records import Execution
from charter.core.workflow import WorkflowDef, parse_workflow

__all__ = ["Definitions"]


class Definitions:
    """Parsed workflow definitions, loaded from the store once per (tenant, id, version)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._cache: dict[tuple[str, str, str], WorkflowDef] = {}
        self._lock = threading.Lock()

    def for_execution(self, execution: Execution) -> WorkflowDef:
        key = (execution.tenant_id, execution.workflow_id, execution.workflow_version)
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached
        stored = self._store.get_workflow(
            execution.workflow_id, execution.workflow_version, execution.tenant_id
        )
        if stored is None:
            raise NotFound(
                f"workflow {execution.workflow_id!r} version {execution.workflow_version!r} "
                f"of tenant {execution.tenant_id!r} is not stored"
            )
        parsed = parse_workflow(stored.ir, f"workflow {execution.workflow_id}")
        with self._lock:
            self._cache[key] = parsed
        return parsed
