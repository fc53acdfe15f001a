"""The event chain: canonical event text and the hash that links each event to the one
before it (docs/audit.md).

Each stored event is the canonical JSON (RFC 8785 style, `charter.core.canonical`) of its
kind in the codec's shape, and the hash of an event is the SHA-256 (hex) of the canonical
JSON of its envelope::

    {"created_at": "<UTC, microseconds, Z>", "execution_id": …, "id": …,
     "kind": <the kind's canonical JSON>, "prev_hash": <the previous event's hash>,
     "sequence": n}

The first event of an execution has ``prev_hash`` `GENESIS` (64 zeros). Because the kind
text is already canonical, the envelope is assembled around it as text, in the canonical
key order — which is what makes hashing (at every append) and verifying (a million events)
cheap. Any other implementation can recompute the same bytes from the same values.

`canonical_text` is `charter.core.canonical.canonical_json` made fast for the common case:
values whose floats are integral or already print as ECMAScript prints them, whose object
keys are ASCII, and whose strings are well-formed go through the C JSON encoder; anything
else falls back to the exact (slower) encoder. Both give the same text (a property test
checks it).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Final

from charter.core.canonical import MAX_DEPTH, canonical_json, number_text

__all__ = ["GENESIS", "canonical_text", "envelope_text", "event_hash"]

#: The ``prev_hash`` of an execution's first event.
GENESIS: Final = "0" * 64

_INT_RANGE: Final = 2**63
_SAFE_INTEGRAL: Final = 2**53
_dumps = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":")
).encode


class _Slow(Exception):
    """The value needs the exact encoder."""


def _prepare(value: Any, depth: int) -> Any:
    """``value`` with every float the C encoder would print differently from ECMAScript
    replaced by an equal int; `_Slow` if something else needs the exact encoder."""
    if depth > MAX_DEPTH:
        raise _Slow
    kind = type(value)
    if kind is str or value is None or kind is bool:
        return value
    if kind is int:
        if not -_INT_RANGE <= value < _INT_RANGE:
            raise _Slow
        return value
    if kind is float:
        if value.is_integer() and abs(value) < _SAFE_INTEGRAL:
            return int(value)
        if repr(value) != number_text(value):  # also refuses NaN and infinities
            raise _Slow
        return value
    if kind is dict:
        out = {}
        for key, item in value.items():
            if type(key) is not str or not key.isascii():
                raise _Slow
            out[key] = _prepare(item, depth + 1)
        return out
    if kind is list or kind is tuple:
        return [_prepare(item, depth + 1) for item in value]
    raise _Slow


def canonical_text(value: Any) -> str:
    """The canonical JSON text of a JSON value: exactly `canonical_json`'s, faster."""
    try:
        text = _dumps(_prepare(value, 0))
        text.encode("utf-8")  # a lone surrogate cannot be encoded: let the exact path say so
    except (_Slow, UnicodeEncodeError, ValueError):
        return canonical_json(value)
    return text


def envelope_text(
    *,
    execution_id: str,
    sequence: int,
    event_id: str,
    created_at: str,
    kind_text: str,
    prev_hash: str,
) -> str:
    """The canonical JSON of an event's envelope around its (canonical) kind text;
    ``created_at`` is the stored UTC text."""
    return (
        f'{{"created_at":{_dumps(created_at)},"execution_id":{_dumps(execution_id)},'
        f'"id":{_dumps(event_id)},"kind":{kind_text},"prev_hash":{_dumps(prev_hash)},'
        f'"sequence":{sequence}}}'
    )


def event_hash(
    *,
    execution_id: str,
    sequence: int,
    event_id: str,
    created_at: str,
    kind_text: str,
    prev_hash: str,
) -> str:
    """The SHA-256 (hex) of `envelope_text`."""
    text = envelope_text(
        execution_id=execution_id,
        sequence=sequence,
        event_id=event_id,
        created_at=created_at,
        kind_text=kind_text,
        prev_hash=prev_hash,
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
