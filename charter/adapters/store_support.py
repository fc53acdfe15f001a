"""What every store adapter does the same way before and after its transaction: input
checks and encodings.

Adapters differ in how they keep data; they must not differ in what they accept. So every
check of a request lives here (run before any transaction opens), with the encodings the
checks produce and the stores share (canonical event texts, UTC time text, listing cursors,
the pending-approval record). Every domain rule is the planner's (`charter.core.commit`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final, TypeGuard, cast

from charter.adapters.codec import event_text, load, loads
from charter.core._check import MAX_COUNT
from charter.core.approvals import ApprovalStatus, Pending
from charter.core.canonical import canonical_json
from charter.core.commit import (
    AppendEvents,
    CommitSpec,
    Head,
    InsertItem,
    PutApproval,
    PutLedger,
    SetStatus,
    UpdateItem,
)
from charter.core.errors import (
    InvalidInput,
    LimitExceeded,
    NotFound,
    UnknownTenant,
)
from charter.core.events import (
    EventKind,
    JsonValue,
    NodeCompleted,
    NodeScheduled,
    NodeStarted,
    event_type,
)
from charter.core.limits import epoch_us
from charter.core.ports import CommitRequest
from charter.core.queue import MAX_ATTEMPTS, MAX_BACKOFF_MS
from charter.core.records import (
    MAX_PAYLOAD_BYTES,
    Execution,
    NewWorkItem,
    PendingApprovalRecord,
    Tenant,
    WorkflowDefinition,
    check_identifier,
    encode_json,
)
from charter.core.signing import Signature

__all__ = [
    "DEFERRABLE",
    "MAX_DEFINITION_BYTES",
    "check_claim_args",
    "check_execution",
    "check_failure",
    "check_follow_up",
    "check_limit",
    "check_moment",
    "check_new_item",
    "check_new_item_payload",
    "check_read",
    "check_seconds",
    "check_signature",
    "check_since",
    "check_tenant",
    "check_workflow",
    "commit_spec",
    "decode_cursor",
    "decoded_tenant",
    "encode_cursor",
    "encode_events",
    "existing",
    "joined_appends",
    "pending_record",
    "plain_json",
    "stamp_text",
    "stored_kind",
    "unknown_tenant",
    "utc_text",
]

#: A workflow definition's IR may be larger than a payload: up to 4 MiB of JSON.
MAX_DEFINITION_BYTES: Final = 4 * 1024 * 1024


def check_tenant(tenant: Tenant) -> None:
    check_identifier(tenant.tenant_id, "tenant_id")


def check_workflow(definition: WorkflowDefinition) -> str:
    """The definition's IR as JSON text, after checking its identifiers and size."""
    check_identifier(definition.tenant_id, "tenant_id")
    check_identifier(definition.workflow_id, "workflow_id")
    check_identifier(definition.version, "version")
    return encode_json(definition.ir, "ir", MAX_DEFINITION_BYTES)


def check_new_item(item: NewWorkItem) -> str:
    """The item's payload as JSON text, after checking identifiers, counts and size."""
    for field in ("item_id", "execution_id", "node_id", "queue"):
        check_identifier(getattr(item, field), field)
    if isinstance(item.max_attempts, bool) or not isinstance(item.max_attempts, int):
        raise InvalidInput("max_attempts", f"expected an integer, got {item.max_attempts!r}")
    if not 1 <= item.max_attempts <= MAX_ATTEMPTS:
        raise InvalidInput("max_attempts", f"expected 1 to {MAX_ATTEMPTS}, got {item.max_attempts}")
    if isinstance(item.backoff_base_ms, bool) or not isinstance(item.backoff_base_ms, int):
        raise InvalidInput("backoff_base_ms", f"expected an integer, got {item.backoff_base_ms!r}")
    if not 0 <= item.backoff_base_ms <= MAX_BACKOFF_MS:
        raise InvalidInput(
            "backoff_base_ms", f"expected 0 to {MAX_BACKOFF_MS}, got {item.backoff_base_ms}"
        )
    if item.available_at is not None:
        check_moment(item.available_at, "available_at")
    return encode_json(item.payload, "payload")


def check_new_item_payload(payload: JsonValue) -> str:
    """An item's payload as JSON text (checked with the item before the transaction)."""
    return encode_json(payload, "payload")


def check_execution(execution: Execution) -> None:
    """A new execution's identifiers and initial input."""
    check_identifier(execution.execution_id, "execution_id")
    check_identifier(execution.tenant_id, "tenant_id")
    check_identifier(execution.workflow_id, "workflow_id")
    check_identifier(execution.workflow_version, "workflow_version")
    encode_json(execution.initial_input, "initial_input")


def unknown_tenant(tenant_id: str) -> UnknownTenant:
    return UnknownTenant("tenant_id", f"unknown tenant {tenant_id!r}")


def existing(head: Head | None, execution_id: str) -> Head:
    """The head of an execution that must exist (a work item's)."""
    if head is None:
        raise NotFound(f"execution {execution_id!r} does not exist")
    return head


def plain_json(value: JsonValue) -> JsonValue:
    """``value`` as it reads back from JSON text (tuples become lists)."""
    return json.loads(json.dumps(value))


def commit_spec(request: CommitRequest) -> CommitSpec:
    """A commit request, checked (its events, follow-up and effect encodable, its ids
    well-formed) before any transaction opens, as the planner's `CommitSpec`."""
    if request.effect is not None:
        check_identifier(request.effect.key, "effect.key")
        encode_json(request.effect.result, "effect.result")
    texts = encode_events(request.events)
    then_texts, _ = check_follow_up(request)
    return CommitSpec(
        item_id=request.item_id,
        fence=request.fence,
        outcome=request.outcome,
        events=tuple(request.events),
        usage=request.usage,
        succeeded=request.succeeded,
        write_snapshot=request.write_snapshot,
        effect_key=request.effect.key if request.effect is not None else None,
        effect_result=request.effect.result if request.effect is not None else None,
        then_events=tuple(request.then_events),
        then_items=tuple(request.then_items),
        then_if_last_sequence=request.then_if_last_sequence,
        event_texts=tuple(texts),
        then_texts=tuple(then_texts),
    )


def check_signature(signature: object, decided_at: object) -> None:
    """A signed answer's signature and the time its statement names (both or neither)."""
    if signature is None:
        return
    if not isinstance(signature, Signature):
        raise InvalidInput("signature", f"expected a Signature, got {signature!r}")
    if not isinstance(decided_at, str):
        raise InvalidInput("decided_at", "a signed answer needs the time its statement names")


def check_moment(value: object, field: str) -> datetime:
    """A timezone-aware datetime (a naive one cannot be compared with the store's clock)."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidInput(field, f"expected a timezone-aware datetime, got {value!r}")
    return value


def check_since(since: object, tenant_id: object = "", limit: object = "") -> int:
    """The arguments of `Store.limit_charges`: names as text, ``since`` a timezone-aware
    datetime, returned as epoch microseconds (how charges are kept)."""
    for value, name in ((tenant_id, "tenant_id"), (limit, "limit")):
        if not isinstance(value, str):
            raise InvalidInput(name, f"expected a string, got {value!r}")
    return epoch_us(check_moment(since, "since"))


def check_seconds(value: object, field: str) -> float:
    """A lease or TTL length: a number of seconds, 0 < value <= one day."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(field, f"expected a number of seconds, got {value!r}")
    if not 0 < value <= 86_400:
        raise InvalidInput(field, f"expected 0 < {field} <= 86400, got {value}")
    return float(value)


def check_read(after: object, limit: object) -> None:
    if isinstance(after, bool) or not isinstance(after, int) or after < 0:
        raise InvalidInput("after", f"expected a sequence number >= 0, got {after!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidInput("limit", f"expected a positive number of events, got {limit!r}")


def check_failure(error: object, delay_ms: object) -> None:
    if not isinstance(error, str):
        raise InvalidInput("error", f"expected a string, got {error!r}")
    if delay_ms is not None and (
        isinstance(delay_ms, bool) or not isinstance(delay_ms, int) or delay_ms < 0
    ):
        raise InvalidInput("delay_ms", f"expected a delay in milliseconds >= 0, got {delay_ms!r}")


def encode_events(events: Sequence[EventKind]) -> list[str]:
    """Each event kind as canonical JSON text (the codec's shape; what the event chain
    hashes), refusing any over 256 KiB and any that is not plain JSON. (On every append,
    so the common case is kept short: the error path names the event.)"""
    encoded = []
    for index, kind in enumerate(events):
        try:
            text = event_text(kind)  # exactly canonical_text(dump(kind)), per-kind
            if len(text) * 4 > MAX_PAYLOAD_BYTES:  # a character is at most 4 bytes
                size = len(text.encode("utf-8"))
                if size > MAX_PAYLOAD_BYTES:
                    raise LimitExceeded(
                        "",
                        f"{size} bytes of JSON exceed the limit of {MAX_PAYLOAD_BYTES} bytes",
                    )
            encoded.append(text)
        except InvalidInput as error:
            where = f"events[{index}] ({event_type(kind)})"
            raise type(error)(where, error.problem) from None
    return encoded


def check_claim_args(
    worker_id: str, queues: Sequence[str], lease_secs: float, execution_id: str | None = None
) -> None:
    check_identifier(worker_id, "worker_id")
    if execution_id is not None:
        check_identifier(execution_id, "execution_id")
    if not isinstance(queues, list | tuple):
        raise InvalidInput("queues", f"expected a list of queue names, got {queues!r}")
    for index, queue in enumerate(queues):
        check_identifier(queue, f"queues[{index}]")
    check_seconds(lease_secs, "lease_secs")


def check_follow_up(request: CommitRequest) -> tuple[list[str], list[str]]:
    """A commit's follow-up (``then_events``, ``then_items``): the events as JSON text and
    the items' payloads, checked before anything is written."""
    encoded: list[str] = []
    if request.then_events:
        try:
            encoded = encode_events(request.then_events)
        except InvalidInput as error:
            raise type(error)(f"then_{error.where}", error.problem) from None
    return encoded, [check_new_item(item) for item in request.then_items]


def utc_text(moment: datetime) -> str:
    """A sortable text form of an aware datetime (UTC, microseconds, ``Z``)."""
    if moment.tzinfo is None:
        raise InvalidInput("datetime", "expected a timezone-aware datetime")
    text = moment.astimezone(UTC).isoformat(timespec="microseconds")
    return text[:-6] + "Z"  # "+00:00" → "Z": fixed width, so text order is time order


#: `utc_text`, remembered for recent moments: a transaction stamps its events, and a store
#: writes the same moment into their rows and its items', several times over.
stamp_text: Final = functools.lru_cache(maxsize=1024)(utc_text)


def encode_cursor(ordinal: int) -> str:
    """A listing cursor: the creation ordinal of the last execution returned."""
    return f"c{ordinal}"


def decode_cursor(cursor: object) -> int | None:
    """The creation ordinal a listing cursor names; a cursor not made by us is `InvalidInput`."""
    if cursor is None:
        return None
    if not (isinstance(cursor, str) and cursor.startswith("c") and cursor[1:].isdecimal()):
        raise InvalidInput("cursor", "not a cursor returned by list_executions")
    return int(cursor[1:])


def check_limit(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise InvalidInput("limit", f"expected 1 <= limit <= 1000, got {limit!r}")
    return limit


def pending_record(
    execution_id: str,
    node_id: str,
    tenant_id: str,
    status: ApprovalStatus,
    requested_at: datetime,
) -> PendingApprovalRecord | None:
    """An open approval request as `Store.pending_approvals` lists it (the row's keys and
    the request's own fields), or ``None`` if ``status`` is not an open request."""
    if not isinstance(status, Pending):
        return None
    request = status.request
    return PendingApprovalRecord(
        execution_id=execution_id,
        tenant_id=tenant_id,
        node_id=node_id,
        tool_name=request.tool_name,
        approver=request.approver,
        request_digest=request.request_digest,
        attempt=request.attempt,
        context=request.context,
        sequence=request.sequence,
        requested_at=requested_at,
        expires_after_secs=request.expires_after_secs,
    )


def decoded_tenant(cache: dict[str, tuple[str, Tenant]], tenant_id: str, text: str) -> Tenant:
    """The tenant stored as ``text``, decoded once per stored text. Decoding compiles the
    tenant's policy indexes; the decoded record is immutable, so the same text (read at
    every claim) is decoded once and kept in ``cache``. Any update changes the text (it
    carries ``updated_at``), so a changed policy is never served from the cache."""
    cached = cache.get(tenant_id)
    if cached is not None and cached[0] == text:
        return cached[1]
    tenant = loads(text, Tenant)
    cache[tenant_id] = (text, tenant)
    return tenant


#: The writes of a plan that neither read nor write events (nor the head they continue): an
#: append may be written after them, so that consecutive appends to one execution are
#: written as one batch (`charter.adapters.transactions.PlannedStore._apply`).
DEFERRABLE: Final = (UpdateItem, InsertItem, PutLedger, PutApproval, SetStatus)


def joined_appends(batch: Sequence[AppendEvents]) -> AppendEvents:
    """Consecutive appends to one execution as one (their kinds and texts in order)."""
    if len(batch) == 1:
        return batch[0]
    first = batch[0]
    kinds: list[EventKind] = []
    texts: list[str] = []
    for write in batch:
        expected = first.first_sequence + len(kinds)
        if write.execution_id != first.execution_id or write.first_sequence != expected:
            raise AssertionError(f"appends to join are not consecutive: {batch}")
        kinds += write.kinds
        texts += write.texts if write.texts is not None else encode_events(write.kinds)
    return AppendEvents(
        execution_id=first.execution_id,
        first_sequence=first.first_sequence,
        kinds=tuple(kinds),
        texts=tuple(texts),
    )


# ── decoding the store's own event rows ──

_STARTED_KEYS: Final = frozenset({"type", "node_id", "worker_id", "attempt"})
_COMPLETED_KEYS: Final = frozenset({"type", "node_id", "output", "state_patch", "duration_ms"})
_SCHEDULED_KEYS: Final = frozenset({"type", "node_id", "queue_type"})


def _count(value: object) -> TypeGuard[int]:
    return type(value) is int and 0 <= value <= MAX_COUNT


def stored_kind(data: JsonValue) -> EventKind:
    """The event kind of ``data``, a stored event's parsed ``kind_json``: the same value, or
    the same error, as ``codec.load(data, EventKind)``.

    The kinds a run appends most (``node_scheduled``, ``node_started`` and a plain
    ``node_completed``) are built directly when every field has exactly the type the codec
    accepts (a JSON value checked by the same `canonical_json`); anything else, and anything
    these checks doubt, goes through the codec."""
    if type(data) is dict:
        tag = data.get("type")
        node = data.get("node_id")
        if type(node) is str:
            keys = data.keys()
            if tag == "node_started":
                worker, attempt = data.get("worker_id"), data.get("attempt")
                if type(worker) is str and _count(attempt) and keys == _STARTED_KEYS:
                    return NodeStarted(node_id=node, worker_id=worker, attempt=attempt)
            elif tag == "node_completed":
                duration = data.get("duration_ms")
                if _count(duration) and keys == _COMPLETED_KEYS:
                    output, patch = data["output"], data["state_patch"]
                    if _plain(output) and _plain(patch):
                        return NodeCompleted(
                            node_id=node, output=output, state_patch=patch, duration_ms=duration
                        )
            elif tag == "node_scheduled":
                queue = data.get("queue_type")
                if type(queue) is str and keys == _SCHEDULED_KEYS:
                    return NodeScheduled(node_id=node, queue_type=queue)
    return cast(EventKind, load(data, EventKind))


def _plain(value: JsonValue) -> bool:
    """Whether the codec takes ``value`` as a JSON value (its own check: `canonical_json`)."""
    if value is None or (type(value) is dict and not value):
        return True  # (null, or an empty object: nothing to check)
    try:
        canonical_json(value)
    except InvalidInput:
        return False
    return True
