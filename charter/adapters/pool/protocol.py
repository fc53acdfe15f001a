"""The worker pool's wire protocol: requests, operations, responses, results, errors, health.

Names, fields and JSON shapes are the seed's (SimpleAgents' ``worker.rs``, serde's JSON), so
a message written by one side reads on the other:

* ``WorkerRequest``: ``{"request_id", "workflow_name", "node_id", "timeout_ms" (a number or
  null), "operation"}``;
* ``WorkerOperation``, tagged by ``"kind"``: ``{"kind": "llm", "model", "prompt",
  "scoped_input"}`` (`LlmOperation`) or ``{"kind": "tool", "tool", "input",
  "scoped_input"}`` (`ToolOperation`);
* ``WorkerResponse``: ``{"request_id", "worker_id", "result", "elapsed_ms"}``;
* ``WorkerResult``, tagged by ``"status"``: ``{"status": "success", "output"}``
  (`WorkerSuccess`) or ``{"status": "error", "error"}`` (`WorkerFailure`);
* ``WorkerProtocolError``: ``{"code", "message", "retryable"}`` with ``code`` one of the
  seven `WorkerErrorCode` values;
* ``WorkerHealth``: ``{"worker_id", "status", "consecutive_failures",
  "last_probe_unix_ms"}``.

``to_dict`` gives plain JSON data in that shape (key order as the seed writes it);
``from_dict`` reads it back, strictly: every key of the shape must be there (``timeout_ms``
and ``last_probe_unix_ms`` may be missing, meaning null, as serde reads an absent
``Option``), no other key is accepted (serde ignores unknown keys; a protocol guarding
workers should not), strings are strings, integers are integers (no ``true`` for 1), and
JSON payloads are plain JSON. Errors are `InvalidInput` naming the path
(``$.operation.kind: expected 'llm' or 'tool', got 'sql'``).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from typing import Any, Final, TypeAlias

import attrs

from charter.adapters.codec import parse_json
from charter.core.canonical import canonical_json
from charter.core.errors import InvalidInput, describe
from charter.core.events import JsonValue

__all__ = [
    "LlmOperation",
    "ToolOperation",
    "WorkerErrorCode",
    "WorkerFailure",
    "WorkerHealth",
    "WorkerHealthStatus",
    "WorkerOperation",
    "WorkerProtocolError",
    "WorkerRequest",
    "WorkerResponse",
    "WorkerResult",
    "WorkerSuccess",
]

#: The largest value of the seed's ``u64`` fields.
U64_MAX: Final = 2**64 - 1
_U32_MAX: Final = 2**32 - 1


class WorkerErrorCode(enum.Enum):
    """Stable error codes (the seed's seven)."""

    QUEUE_FULL = "queue_full"
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"
    EXECUTION_FAILED = "execution_failed"
    CIRCUIT_OPEN = "circuit_open"
    CANCELLED = "cancelled"
    INVALID_REQUEST = "invalid_request"


class WorkerHealthStatus(enum.Enum):
    """Coarse health of one worker, as routing sees it."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"  # recent failures or on probation; still receives traffic
    UNAVAILABLE = "unavailable"  # receives no traffic


# ── decoding helpers ───────────────────────────────────────────────────────────────────


def _object(
    data: object, where: str, keys: tuple[str, ...], optional: tuple[str, ...] = ()
) -> Mapping[str, Any]:
    """``data`` as an object with exactly ``keys`` (those in ``optional`` may be missing)."""
    if not isinstance(data, Mapping):
        raise InvalidInput(where, f"expected an object, got {describe(data)}")
    for key in data:
        if key not in keys:
            expected = ", ".join(repr(k) for k in keys)
            raise InvalidInput(f"{where}.{key}", f"unknown key (expected one of {expected})")
    for key in keys:
        if key not in data and key not in optional:
            raise InvalidInput(f"{where}.{key}", "required field missing")
    return data


def _str(data: Mapping[str, Any], key: str, where: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise InvalidInput(f"{where}.{key}", f"expected a string, got {describe(value)}")
    return value


def _bool(data: Mapping[str, Any], key: str, where: str) -> bool:
    value = data[key]
    if not isinstance(value, bool):
        raise InvalidInput(f"{where}.{key}", f"expected true or false, got {describe(value)}")
    return value


def _uint(value: object, where: str, maximum: int = U64_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise InvalidInput(
            where, f"expected an integer between 0 and {maximum}, got {describe(value)}"
        )
    return value


def _optional_uint(data: Mapping[str, Any], key: str, where: str) -> int | None:
    value = data.get(key)
    return None if value is None else _uint(value, f"{where}.{key}")


def _json(data: Mapping[str, Any], key: str, where: str) -> JsonValue:
    value = data[key]
    try:
        canonical_json(value)
    except InvalidInput as error:
        inner = error.where.removeprefix("$")
        path = f"{where}.{key}" + (("" if inner.startswith("[") else ".") + inner if inner else "")
        raise InvalidInput(path, error.problem) from None
    return value


def _enum(cls: type[enum.Enum], value: object, where: str) -> Any:
    try:
        return cls(value)
    except ValueError:
        known = ", ".join(repr(member.value) for member in cls)
        raise InvalidInput(where, f"expected one of {known}, got {describe(value)}") from None


_DUMPS: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


# ── operations ─────────────────────────────────────────────────────────────────────────


@attrs.frozen(kw_only=True)
class LlmOperation:
    """Call a model (``{"kind": "llm", …}``)."""

    model: str
    prompt: str
    scoped_input: JsonValue

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "llm",
            "model": self.model,
            "prompt": self.prompt,
            "scoped_input": self.scoped_input,
        }


@attrs.frozen(kw_only=True)
class ToolOperation:
    """Call a tool (``{"kind": "tool", …}``); ``input`` is the node's static input."""

    tool: str
    input: JsonValue
    scoped_input: JsonValue

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "tool",
            "tool": self.tool,
            "input": self.input,
            "scoped_input": self.scoped_input,
        }


WorkerOperation: TypeAlias = LlmOperation | ToolOperation


def _operation(data: object, where: str) -> WorkerOperation:
    if not isinstance(data, Mapping):
        raise InvalidInput(where, f"expected an object tagged by 'kind', got {describe(data)}")
    kind = data.get("kind")
    if kind == "llm":
        fields = _object(data, where, ("kind", "model", "prompt", "scoped_input"))
        return LlmOperation(
            model=_str(fields, "model", where),
            prompt=_str(fields, "prompt", where),
            scoped_input=_json(fields, "scoped_input", where),
        )
    if kind == "tool":
        fields = _object(data, where, ("kind", "tool", "input", "scoped_input"))
        return ToolOperation(
            tool=_str(fields, "tool", where),
            input=_json(fields, "input", where),
            scoped_input=_json(fields, "scoped_input", where),
        )
    raise InvalidInput(f"{where}.kind", f"expected 'llm' or 'tool', got {describe(kind)}")


# ── requests ───────────────────────────────────────────────────────────────────────────


@attrs.frozen(kw_only=True)
class WorkerRequest:
    """One unit of work for a worker. ``request_id`` correlates the response (the pool
    refuses a second request with the id of one still in flight); ``timeout_ms`` overrides
    the pool's default timeout."""

    request_id: str
    workflow_name: str
    node_id: str
    timeout_ms: int | None = None
    operation: WorkerOperation

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "workflow_name": self.workflow_name,
            "node_id": self.node_id,
            "timeout_ms": self.timeout_ms,
            "operation": self.operation.to_dict(),
        }

    def to_json(self) -> str:
        """Compact JSON text (what the pool's payload limit measures, in UTF-8 bytes)."""
        text: str = _DUMPS(self.to_dict())
        return text

    @classmethod
    def from_dict(cls, data: object, where: str = "$") -> WorkerRequest:
        fields = _object(
            data,
            where,
            ("request_id", "workflow_name", "node_id", "timeout_ms", "operation"),
            optional=("timeout_ms",),
        )
        return cls(
            request_id=_str(fields, "request_id", where),
            workflow_name=_str(fields, "workflow_name", where),
            node_id=_str(fields, "node_id", where),
            timeout_ms=_optional_uint(fields, "timeout_ms", where),
            operation=_operation(fields["operation"], f"{where}.operation"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> WorkerRequest:
        return cls.from_dict(parse_json(text))


# ── errors and results ─────────────────────────────────────────────────────────────────


@attrs.frozen(kw_only=True)
class WorkerProtocolError:
    """A structured error, returned by handlers and carried in responses. ``retryable``
    says whether the caller may safely try again."""

    code: WorkerErrorCode
    message: str
    retryable: bool

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code.value, "message": self.message, "retryable": self.retryable}

    @classmethod
    def from_dict(cls, data: object, where: str = "$") -> WorkerProtocolError:
        fields = _object(data, where, ("code", "message", "retryable"))
        return cls(
            code=_enum(WorkerErrorCode, fields["code"], f"{where}.code"),
            message=_str(fields, "message", where),
            retryable=_bool(fields, "retryable", where),
        )


@attrs.frozen
class WorkerSuccess:
    """The handler's output (``{"status": "success", "output": …}``)."""

    output: JsonValue

    def to_dict(self) -> dict[str, Any]:
        return {"status": "success", "output": self.output}


@attrs.frozen
class WorkerFailure:
    """The handler's error (``{"status": "error", "error": {…}}``)."""

    error: WorkerProtocolError

    def to_dict(self) -> dict[str, Any]:
        return {"status": "error", "error": self.error.to_dict()}


WorkerResult: TypeAlias = WorkerSuccess | WorkerFailure


def _result(data: object, where: str) -> WorkerResult:
    if not isinstance(data, Mapping):
        raise InvalidInput(where, f"expected an object tagged by 'status', got {describe(data)}")
    status = data.get("status")
    if status == "success":
        fields = _object(data, where, ("status", "output"))
        return WorkerSuccess(_json(fields, "output", where))
    if status == "error":
        fields = _object(data, where, ("status", "error"))
        return WorkerFailure(WorkerProtocolError.from_dict(fields["error"], f"{where}.error"))
    raise InvalidInput(f"{where}.status", f"expected 'success' or 'error', got {describe(status)}")


@attrs.frozen(kw_only=True)
class WorkerResponse:
    """What a worker answered; ``elapsed_ms`` is the handler call's wall time."""

    request_id: str
    worker_id: str
    result: WorkerResult
    elapsed_ms: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "worker_id": self.worker_id,
            "result": self.result.to_dict(),
            "elapsed_ms": self.elapsed_ms,
        }

    def to_json(self) -> str:
        text: str = _DUMPS(self.to_dict())
        return text

    @classmethod
    def from_dict(cls, data: object, where: str = "$") -> WorkerResponse:
        fields = _object(data, where, ("request_id", "worker_id", "result", "elapsed_ms"))
        return cls(
            request_id=_str(fields, "request_id", where),
            worker_id=_str(fields, "worker_id", where),
            result=_result(fields["result"], f"{where}.result"),
            elapsed_ms=_uint(fields["elapsed_ms"], f"{where}.elapsed_ms"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> WorkerResponse:
        return cls.from_dict(parse_json(text))


# ── health ─────────────────────────────────────────────────────────────────────────────


@attrs.frozen(kw_only=True)
class WorkerHealth:
    """One worker's health, as `WorkerPool.health_snapshot` reports it."""

    worker_id: str
    status: WorkerHealthStatus
    consecutive_failures: int
    last_probe_unix_ms: int | None = None

    def is_schedulable(self) -> bool:
        """Whether routing may send it work (anything but unavailable)."""
        return self.status is not WorkerHealthStatus.UNAVAILABLE

    def to_dict(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "status": self.status.value,
            "consecutive_failures": self.consecutive_failures,
            "last_probe_unix_ms": self.last_probe_unix_ms,
        }

    @classmethod
    def from_dict(cls, data: object, where: str = "$") -> WorkerHealth:
        fields = _object(
            data,
            where,
            ("worker_id", "status", "consecutive_failures", "last_probe_unix_ms"),
            optional=("last_probe_unix_ms",),
        )
        return cls(
            worker_id=_str(fields, "worker_id", where),
            status=_enum(WorkerHealthStatus, fields["status"], f"{where}.status"),
            consecutive_failures=_uint(
                fields["consecutive_failures"], f"{where}.consecutive_failures", _U32_MAX
            ),
            last_probe_unix_ms=_optional_uint(fields, "last_probe_unix_ms", where),
        )
