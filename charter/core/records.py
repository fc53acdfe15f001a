"""What the store keeps: definitions, executions, snapshots, tenants, work items, effects.

These are plain immutable values shared by every adapter, with the input limits every
adapter enforces the same way (`check_identifier`, `encode_json`): identifiers are 1–128
characters, JSON payloads and events at most 256 KiB once encoded. A value over a limit is
refused with `LimitExceeded` naming the limit, before anything is written.
"""

from __future__ import annotations

import enum
import json
from datetime import datetime
from typing import Final, Generic, TypeVar

import attrs

from charter.core.errors import InvalidInput, LimitExceeded, describe
from charter.core.events import Event, JsonValue
from charter.core.policy import PolicySet

__all__ = [
    "DEFAULT_TENANT",
    "MAX_ID_LENGTH",
    "MAX_PAYLOAD_BYTES",
    "ChainLink",
    "Claim",
    "EffectAbandoned",
    "EffectAcquired",
    "EffectHeld",
    "EffectRecorded",
    "EffectReservation",
    "Execution",
    "ExecutionStatus",
    "NewWorkItem",
    "Page",
    "PendingApprovalRecord",
    "Snapshot",
    "Tenant",
    "TenantLimits",
    "TenantStatus",
    "WorkItem",
    "WorkItemStatus",
    "WorkflowDefinition",
    "check_identifier",
    "encode_json",
]

#: Identifiers (tenants, workflows, executions, nodes, items, queues, workers, keys).
MAX_ID_LENGTH: Final = 128
#: A work item payload or one event, encoded as compact UTF-8 JSON.
MAX_PAYLOAD_BYTES: Final = 256 * 1024
#: The tenant every store starts with.
DEFAULT_TENANT: Final = "default"


_ENCODE: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def check_identifier(value: object, field: str) -> str:
    """A non-empty string of at most `MAX_ID_LENGTH` characters."""
    if not isinstance(value, str):
        raise InvalidInput(field, f"expected an identifier string, got {describe(value)}")
    if not value:
        raise InvalidInput(field, "expected a non-empty identifier")
    if len(value) > MAX_ID_LENGTH:
        raise LimitExceeded(
            field,
            f"identifier of {len(value)} characters exceeds the limit of {MAX_ID_LENGTH}",
        )
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInput(field, "expected text, got a lone surrogate") from None
        if "\x00" in value:
            raise InvalidInput(field, "expected text without NUL characters")
    elif "\x00" in value:
        raise InvalidInput(field, "expected text without NUL characters")
    return value


def encode_json(value: JsonValue, field: str, limit: int = MAX_PAYLOAD_BYTES) -> str:
    """Compact JSON text of a plain JSON value, refusing non-JSON values (sets, bytes,
    objects, NaN, infinities, non-string keys) and anything larger than ``limit`` bytes."""
    try:
        text = _ENCODE(value)
    except (TypeError, ValueError) as error:
        raise InvalidInput(field, f"expected a JSON value: {error}") from None
    if _non_string_keys(value):
        raise InvalidInput(field, "expected a JSON value: object keys must be strings")
    if len(text) * 4 > limit:  # a character is at most 4 bytes: count only when it matters
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > limit:
            raise LimitExceeded(field, f"{size} bytes of JSON exceed the limit of {limit} bytes")
    return text


def _non_string_keys(value: object) -> bool:
    # json.dumps silently turns int/float/bool/None keys into strings; a round trip would
    # then not give back the value that was stored. (Iterative: this runs on every event.)
    pending = [value]
    while pending:
        current = pending.pop()
        if isinstance(current, dict):
            for key, item in current.items():
                if type(key) is not str:
                    return True
                if isinstance(item, dict | list | tuple):
                    pending.append(item)
        elif isinstance(current, list | tuple):
            pending.extend(item for item in current if isinstance(item, dict | list | tuple))
    return False


# ── definitions, executions, snapshots ─────────────────────────────────────────────────


@attrs.frozen(kw_only=True)
class WorkflowDefinition:
    """A stored workflow (its IR as JSON), by tenant, id and version."""

    tenant_id: str = DEFAULT_TENANT
    workflow_id: str
    version: str
    ir: JsonValue
    created_at: datetime


class ExecutionStatus(enum.Enum):
    """Where a run is; derived by the store from the lifecycle events it appends."""

    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LIMIT_EXCEEDED = "limit_exceeded"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL_EXECUTION


_TERMINAL_EXECUTION = frozenset(
    {
        ExecutionStatus.COMPLETED,
        ExecutionStatus.FAILED,
        ExecutionStatus.CANCELLED,
        ExecutionStatus.LIMIT_EXCEEDED,
    }
)


@attrs.frozen(kw_only=True)
class Execution:
    """One run of a workflow. ``last_sequence`` is the sequence of its latest event."""

    execution_id: str
    tenant_id: str = DEFAULT_TENANT
    workflow_id: str
    workflow_version: str
    status: ExecutionStatus = ExecutionStatus.PENDING
    initial_input: JsonValue = None
    parent_execution_id: str | None = None
    segment_number: int = 0
    created_at: datetime
    updated_at: datetime
    last_sequence: int = 0


@attrs.frozen(kw_only=True)
class Snapshot:
    """The materialized state of an execution as of ``at_sequence``."""

    execution_id: str
    at_sequence: int
    state: JsonValue
    created_at: datetime


T = TypeVar("T")


@attrs.frozen
class Page(Generic[T]):
    """One page of a listing; ``next_cursor`` is ``None`` on the last page."""

    items: tuple[T, ...]
    next_cursor: str | None = None


# ── tenants ────────────────────────────────────────────────────────────────────────────


class TenantStatus(enum.Enum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    ARCHIVED = "archived"


@attrs.frozen(kw_only=True)
class TenantLimits:
    """Upstream's tenant limits, stored with the tenant (see docs/store.md for which are
    enforced where)."""

    max_concurrent_executions: int | None = None
    max_workflows: int | None = None
    max_tokens_per_month: int | None = None
    max_cost_per_month_usd: float | None = None


@attrs.frozen(kw_only=True)
class Tenant:
    """A tenant, its policy layer and limits."""

    tenant_id: str
    name: str = ""
    status: TenantStatus = TenantStatus.ACTIVE
    policy: PolicySet | None = None
    limits: TenantLimits | None = None
    created_at: datetime
    updated_at: datetime


# ── the work queue ─────────────────────────────────────────────────────────────────────


class WorkItemStatus(enum.Enum):
    """A work item's state. ``pending`` and ``claimed`` are live; the rest are terminal."""

    PENDING = "pending"
    CLAIMED = "claimed"
    COMPLETED = "completed"
    HELD = "held"  # settled while the node waits for a person (approval)
    FAILED = "failed"
    DEAD_LETTERED = "dead_lettered"

    @property
    def terminal(self) -> bool:
        return self not in (WorkItemStatus.PENDING, WorkItemStatus.CLAIMED)


@attrs.frozen(kw_only=True)
class NewWorkItem:
    """A work item to enqueue. The caller chooses its id (so a retried enqueue is
    idempotent); ``available_at`` defaults to now."""

    item_id: str
    execution_id: str
    node_id: str
    queue: str
    payload: JsonValue = None
    max_attempts: int = 3
    backoff_base_ms: int = 1000
    available_at: datetime | None = None


@attrs.frozen(kw_only=True)
class WorkItem:
    """A work item as stored. ``fence`` grows by one on every claim; only the holder of the
    current fence of a claimed item may heartbeat, commit, park or fail it."""

    item_id: str
    tenant_id: str
    execution_id: str
    node_id: str
    queue: str
    payload: JsonValue
    attempt: int
    max_attempts: int
    backoff_base_ms: int
    status: WorkItemStatus
    available_at: datetime
    created_at: datetime
    worker_id: str | None = None
    lease_expires_at: datetime | None = None
    fence: int = 0
    last_error: str | None = None


@attrs.frozen(kw_only=True)
class Claim:
    """A claimed item and the fence that proves the claim.

    A store also hands back what the claiming transaction read and wrote, so that the
    claimant need not read it again (docs/store.md, "Claims"): ``events``, the events the
    claim appended (its ``node_started``), and ``tenant``, the item's tenant as of the
    claim (``None`` when the tenant is unknown, or the store did not say: read it then)."""

    item: WorkItem
    fence: int
    lease_expires_at: datetime
    events: tuple[Event, ...] = attrs.field(default=(), eq=False, repr=False)
    tenant: Tenant | None = attrs.field(default=None, eq=False, repr=False)


# ── tool effects ───────────────────────────────────────────────────────────────────────


@attrs.frozen
class EffectAcquired:
    """The caller holds the reservation: it may fire the side effect."""


@attrs.frozen(kw_only=True)
class EffectAbandoned:
    """The reservation of a claim that is gone (its lease expired) ran out without a recorded
    result: the effect may or may not have happened. The caller now holds the reservation;
    only an idempotent effect may be fired again."""

    item_id: str
    fence: int
    expired_at: datetime


@attrs.frozen(kw_only=True)
class EffectHeld:
    """Another claim holds a live reservation; do not fire."""

    item_id: str
    fence: int
    expires_at: datetime


@attrs.frozen
class EffectRecorded:
    """The effect already happened; here is its recorded result (replay it, do not fire)."""

    result: JsonValue


EffectReservation = EffectAcquired | EffectAbandoned | EffectHeld | EffectRecorded


@attrs.frozen(kw_only=True)
class PendingApprovalRecord:
    """An open approval request, as listed by the store."""

    execution_id: str
    tenant_id: str
    node_id: str
    tool_name: str
    approver: str
    request_digest: str | None
    attempt: int | None
    context: JsonValue
    sequence: int
    requested_at: datetime
    #: How long an approval of it will stay usable once given (docs/semantics.md §5.2;
    #: ``None``: it does not expire).
    expires_after_secs: float | None = None


@attrs.frozen(kw_only=True)
class ChainLink:
    """One stored event exactly as stored, for verifying the chain without decoding it:
    ``kind_text`` is its canonical JSON, ``created_at`` its UTC text
    (``YYYY-MM-DDTHH:MM:SS.ffffffZ``)."""

    execution_id: str
    sequence: int
    event_id: str
    created_at: str
    kind_text: str
    prev_hash: str
    hash: str
