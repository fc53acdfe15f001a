"""The asyncio worker pool (docs/pool.md): the pool itself, its wire protocol, options, breaker
hooks and the executor that runs workflow nodes on it.
"""

from __future__ import annotations

from charter.adapters.pool.pool import (
    BreakerHooks,
    CircuitBreakerHooks,
    LlmOperation,
    ToolOperation,
    WorkerErrorCode,
    WorkerFailure,
    WorkerHandler,
    WorkerHealth,
    WorkerHealthStatus,
    WorkerOperation,
    WorkerPool,
    WorkerPoolError,
    WorkerPoolOptions,
    WorkerProtocolError,
    WorkerRequest,
    WorkerResponse,
    WorkerResult,
    WorkerSecurityPolicy,
    WorkerSuccess,
    check_request,
    request_payload_bytes,
)

__all__ = [
    "BreakerHooks",
    "CircuitBreakerHooks",
    "LlmOperation",
    "ToolOperation",
    "WorkerErrorCode",
    "WorkerFailure",
    "WorkerHandler",
    "WorkerHealth",
    "WorkerHealthStatus",
    "WorkerOperation",
    "WorkerPool",
    "WorkerPoolError",
    "WorkerPoolOptions",
    "WorkerProtocolError",
    "WorkerRequest",
    "WorkerResponse",
    "WorkerResult",
    "WorkerSecurityPolicy",
    "WorkerSuccess",
    "check_request",
    "request_payload_bytes",
]
