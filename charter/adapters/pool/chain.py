"""The order in which the worker pool calls its hooks (docs/pool.md §5): its own breakers
(`BreakerHooks`) first, then the caller's `CircuitBreakerHooks`, if any. A caller's observer
that raises is logged and ignored; a caller's ``allow_request`` that raises refuses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from charter.adapters.pool.hooks import BreakerHooks, CircuitBreakerHooks
from charter.adapters.pool.protocol import WorkerErrorCode, WorkerProtocolError, WorkerRequest

log = logging.getLogger("charter.adapters.pool")


class HookChain:
    """The pool's breakers, then the caller's hooks (``hooks``; `None`: none)."""

    __slots__ = ("breakers", "hooks")

    def __init__(self, breakers: BreakerHooks, hooks: CircuitBreakerHooks | None) -> None:
        self.breakers = breakers
        self.hooks = hooks

    def allow(self, worker_id: str, request: WorkerRequest) -> bool:
        if not self.breakers.allow_request(worker_id, request):
            return False
        hooks = self.hooks
        if hooks is None:
            return True
        try:
            allowed = hooks.allow_request(worker_id, request) is True
        except Exception:
            log.exception("allow_request hook failed; refusing")
            allowed = False
        if not allowed:
            self.breakers.on_request_rejected(worker_id, request, WorkerErrorCode.CIRCUIT_OPEN)
        return allowed

    def failure(self, worker_id: str, request: WorkerRequest, error: WorkerProtocolError) -> None:
        self.breakers.on_request_failure(worker_id, request, error)
        if self.hooks is not None:
            observe(self.hooks.on_request_failure, worker_id, request, error)

    def rejected(
        self, worker_id: str | None, request: WorkerRequest, reason: WorkerErrorCode
    ) -> None:
        self.breakers.on_request_rejected(worker_id, request, reason)
        if self.hooks is not None:
            observe(self.hooks.on_request_rejected, worker_id, request, reason)


def observe(hook: Callable[..., object], *args: object) -> None:
    """Call a caller's observer hook; log what it raises."""
    try:
        hook(*args)
    except Exception:
        log.exception("pool hook %s failed", getattr(hook, "__name__", hook))
