"""The shortcuts the SQLite store takes when it reads back its own rows and links its chain,
each held to the reference path it stands for: the same value, or the same error.

* `store_support.stored_kind` (a snapshot's fold decodes the events since the last one)
  against ``codec.load(data, EventKind)``;
* `chain._quoted` (an event id and a hash in the chain's envelope) against the encoder;
* `sqlite_rows._payload` (an item's payload) against `json.loads`.

Each was checked against a planted bug (a type check dropped, a bound moved, an escape let
through): these properties fail on it."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from charter.adapters import chain, sqlite_rows
from charter.adapters.codec import load
from charter.adapters.store_support import stored_kind
from charter.core.canonical import MAX_DEPTH
from charter.core.errors import InvalidInput
from charter.core.events import EventKind

_MAX = 2**63 - 1

# Values near every bound the codec checks: bools for integers, negative and 64-bit
# overflowing counts, floats, non-finite numbers, nested JSON, deep nesting, odd text.
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=3),
    st.sampled_from([_MAX, _MAX + 1, -_MAX, 2**64]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.sampled_from(["", "n", "node-1", "\x00", "é", "\ud800"]),
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)


def _deep(depth: int) -> Any:
    value: Any = {}
    for _ in range(depth):
        value = {"a": value}
    return value


_FIELDS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "node_started": {"node_id": st.text(max_size=6), "worker_id": st.text(max_size=6),
                     "attempt": st.integers(min_value=0, max_value=5)},
    "node_completed": {"node_id": st.text(max_size=6), "output": _json, "state_patch": _json,
                       "duration_ms": st.integers(min_value=0, max_value=5)},
    "node_scheduled": {"node_id": st.text(max_size=6), "queue_type": st.text(max_size=6)},
}  # fmt: skip
_OPTIONAL = ["gen_ai_system", "cost_usd", "provenance", "idempotency_key", "type", "extra"]


@st.composite
def _near_kinds(draw: st.DrawFn) -> Any:
    """A kind's JSON as stored, then perhaps bent: a field given another value (of any type),
    dropped, or joined by another key (known or not), or the tag changed."""
    tag = draw(st.sampled_from([*_FIELDS, "node_failed", "workflow_completed", None]))
    data: dict[str, Any] = {} if tag is None else {"type": tag}
    for name, values in _FIELDS.get(tag or "", {}).items():
        data[name] = draw(values)
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        change = draw(st.sampled_from(["replace", "drop", "add"]))
        if change == "replace" and data:
            data[draw(st.sampled_from(sorted(data)))] = draw(_json)
        elif change == "drop" and data:
            del data[draw(st.sampled_from(sorted(data)))]
        elif change == "add":
            data[draw(st.sampled_from(_OPTIONAL))] = draw(_json)
    if draw(st.booleans()) and tag == "node_completed":
        data["output"] = _deep(draw(st.integers(min_value=MAX_DEPTH - 1, max_value=MAX_DEPTH + 1)))
    return data if draw(st.integers(0, 20)) else draw(_json)  # now and then not an object


def _outcome(decode: Any, data: Any) -> tuple[str, Any]:
    try:
        return "value", decode(data)
    except InvalidInput as error:
        return "error", (type(error), str(error))


def _same(a: tuple[str, Any], b: tuple[str, Any]) -> bool:
    """Equal outcomes (a NaN inside a decoded value equals itself: compared as text)."""
    if a[0] != b[0]:
        return False
    if a[0] == "error":
        return bool(a[1] == b[1])
    return type(a[1]) is type(b[1]) and repr(a[1]) == repr(b[1])


@settings(max_examples=1500)
@given(_near_kinds())
@example({"type": "node_started", "node_id": "n", "worker_id": "w", "attempt": True})
@example({"type": "node_started", "node_id": "n", "worker_id": "w", "attempt": _MAX + 1})
@example({"type": "node_completed", "node_id": "n", "output": math.nan, "state_patch": {},
          "duration_ms": 0})  # fmt: skip
@example({"type": "node_completed", "node_id": "n", "output": {}, "state_patch": None,
          "duration_ms": 0, "gen_ai_model": None})  # fmt: skip
@example({"type": "node_completed", "node_id": "n", "state_patch": {}, "duration_ms": 0,
          "extra": 1})  # fmt: skip
@example({"type": "node_scheduled", "node_id": "n", "queue_type": 1})
def test_stored_kind_is_the_codec(data: Any) -> None:
    assert _same(_outcome(stored_kind, data), _outcome(lambda d: load(d, EventKind), data))


@pytest.mark.parametrize(
    "text",
    [
        '{"type":"node_started","node_id":"n1","worker_id":"w","attempt":0}',
        '{"type":"node_completed","node_id":"n1","output":{"a":[1,2.5,"x",null]},'
        '"state_patch":{"k":true},"duration_ms":3}',
        '{"type":"node_scheduled","node_id":"n1","queue_type":"tool"}',
    ],
)
def test_stored_kind_builds_the_common_kinds(text: str) -> None:
    data = json.loads(text)
    assert stored_kind(data) == load(data, EventKind)


@given(st.text() | st.text(alphabet="0123456789abcdefABCDEF", min_size=1))
@example("0" * 64)
@example("ab\u0660")  # a digit that is not ASCII
@example("")
def test_quoted_is_the_encoder(text: str) -> None:
    assert chain._quoted(text) == chain._dumps(text)


@given(
    st.sampled_from(["{}", " {}", "{ }", "[]", "{}\n", '{"a":1}', "null"])
    | st.builds(json.dumps, _json)
)
def test_payload_is_json_loads(text: str) -> None:
    ours, reference = sqlite_rows._payload(text), json.loads(text)
    assert type(ours) is type(reference)
    assert repr(ours) == repr(reference)  # (a NaN compared by its text)
    if type(ours) is dict:
        assert ours is not sqlite_rows._payload(text)  # a new object each time
