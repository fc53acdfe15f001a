"""The event chain's fast canonical encoder is the exact one, and its hash links events."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charter.adapters.chain import (
    GENESIS,
    ChainVerifier,
    canonical_text,
    envelope_text,
    event_hash,
    link_hashes,
)
from charter.adapters.codec import dump
from charter.adapters.memory import MemoryStore
from charter.core.canonical import NeedsExact, canonical_json, json_text
from charter.core.errors import InvalidInput
from charter.core.events import EVENT_KINDS, EventKind
from charter.core.records import DEFAULT_TENANT, Execution
from charter.testing import strategies

_keys = st.text(max_size=6) | st.sampled_from(["a", "b", "\ue000", "\U0001f600", "é", "A"])
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0.0, -0.0, 1.0, 1e16, 1e21, 1e-7, 1e-6, 123.456, 2.0**53, 5e-324])
    | st.text()
    | st.sampled_from(["\ud800", "\x00\x1f\x7f", '"\\', "\u2028"])
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=12,
)


def _exact(value: Any) -> str | type[InvalidInput]:
    try:
        return canonical_json(value)
    except InvalidInput:
        return InvalidInput


@given(_values)
def test_the_fast_encoder_gives_exactly_the_canonical_text(value: Any) -> None:
    expected = _exact(value)
    if expected is InvalidInput:
        with pytest.raises(InvalidInput):
            canonical_text(value)
    else:
        assert canonical_text(value) == expected


@given(_values, st.integers(min_value=0, max_value=3))
def test_the_direct_writer_gives_the_canonical_text_or_defers_to_the_exact_encoder(
    value: Any, depth: int
) -> None:
    """`json_text` (the gate's and the event encoders' writer) prints exactly the canonical
    text, or says `NeedsExact`; a lone surrogate it writes as is is refused on encoding."""
    expected = _exact(value)
    try:
        text = json_text(value, depth)
    except NeedsExact:
        return
    if expected is InvalidInput:
        with pytest.raises(UnicodeEncodeError):
            text.encode("utf-8")
    else:
        assert text == expected


def test_the_direct_writer_defers_past_the_nesting_limit() -> None:
    deep: Any = 0
    for _ in range(70):
        deep = [deep]
    with pytest.raises(NeedsExact):
        json_text(deep)
    with pytest.raises(NeedsExact):
        json_text({"a": [1]}, 64)
    assert json_text({"a": []}, 63) == '{"a":[]}'


def test_nesting_past_the_limit_is_refused_by_both() -> None:
    deep: Any = 0
    for _ in range(70):
        deep = [deep]
    with pytest.raises(InvalidInput):
        canonical_text(deep)


_ids = st.text(alphabet="abcdef0123456789-", min_size=1, max_size=12)


@given(_ids, st.integers(1, 2**40), _ids, _values.filter(lambda v: _exact(v) is not InvalidInput))
def test_the_envelope_is_the_canonical_json_of_the_event(
    execution_id: str, sequence: int, event_id: str, kind: Any
) -> None:
    created = "2026-11-21T12:00:00.000000Z"
    fields = {
        "execution_id": execution_id,
        "sequence": sequence,
        "event_id": event_id,
        "created_at": created,
        "kind_text": canonical_text(kind),
        "prev_hash": GENESIS,
    }
    text = envelope_text(**fields)  # type: ignore[arg-type]
    assert text == canonical_json(
        {
            "created_at": created,
            "execution_id": execution_id,
            "id": event_id,
            "kind": kind,
            "prev_hash": GENESIS,
            "sequence": sequence,
        }
    )
    assert json.loads(text)["kind"] == json.loads(canonical_json(kind))
    assert event_hash(**fields) == hashlib.sha256(text.encode()).hexdigest()  # type: ignore[arg-type]


@given(st.lists(_values.filter(lambda v: _exact(v) is not InvalidInput), min_size=2, max_size=6))
def test_a_chain_commits_to_every_earlier_event(kinds: list[Any]) -> None:
    def chain(texts: list[str]) -> list[str]:
        hashes, previous = [], GENESIS
        for sequence, text in enumerate(texts, start=1):
            previous = event_hash(
                execution_id="x",
                sequence=sequence,
                event_id=f"e{sequence}",
                created_at="2026-11-21T12:00:00.000000Z",
                kind_text=text,
                prev_hash=previous,
            )
            hashes.append(previous)
        return hashes

    texts = [canonical_text(kind) for kind in kinds]
    original = chain(texts)
    changed = chain([texts[0] + " ", *texts[1:]])  # any change to the first event…
    assert all(a != b for a, b in zip(original, changed, strict=True))  # …changes every hash


#: Kinds any caller may append (approvals are consumed, expired and answered, and windowed
#: limits charged, only under the store's rules, which refuse arbitrary ones).
_FREE_KINDS = tuple(
    sorted(
        set(EVENT_KINDS)
        - {"approval_consumed", "approval_expired", "approval_received", "limit_charged"}
    )
)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.lists(strategies.event_kinds(kinds=_FREE_KINDS), min_size=1, max_size=4),
        min_size=1,
        max_size=5,
    )
)
def test_any_event_sequence_chains_and_verifies(batches: list[list[EventKind]]) -> None:
    """Whatever events are appended, in whatever batches, the stored log is a chain that
    verifies (strictly: every kind in canonical form) — and its hashes are the ones an
    independent recomputation from the stored values gives."""
    store = MemoryStore()
    now = store.clock.now()
    store.create_execution(
        Execution(
            execution_id="x",
            tenant_id=DEFAULT_TENANT,
            workflow_id="w",
            workflow_version="1",
            initial_input=None,
            created_at=now,
            updated_at=now,
        ),
        [],
    )
    for batch in batches:
        store.append_events("x", batch)
    links = store.read_chain("x")
    assert len(links) == sum(map(len, batches))
    verifier = ChainVerifier("x", strict=True)
    verifier.feed(links)
    assert verifier.finish() == []
    previous = GENESIS
    for link, event in zip(links, store.read_events("x"), strict=True):
        assert link.kind_text == canonical_json(dump(event.kind))
        assert (event.prev_hash, event.hash) == (previous, link.hash)
        previous = link.hash


_any_text = st.text() | _ids


@given(
    _any_text,
    st.integers(1, 2**40),
    _any_text,
    st.lists(
        st.tuples(_any_text, _values.filter(lambda v: _exact(v) is not InvalidInput)), max_size=5
    ),
    st.sampled_from([GENESIS, "ab" * 32, 'odd "prev"']),
)
def test_a_batch_is_linked_as_each_event_hashed_on_its_own(
    execution_id: str,
    first: int,
    created: str,
    batch: list[tuple[str, Any]],
    prev: str,
) -> None:
    # `link_hashes` (what every append runs) shares the batch's envelope prefix; each link
    # must still be `event_hash` of that event's own canonical envelope, chained.
    texts = [canonical_text(kind) for _, kind in batch]
    links = link_hashes(
        execution_id=execution_id,
        first_sequence=first,
        prev_hash=prev,
        created_at=created,
        event_ids=[event_id for event_id, _ in batch],
        kind_texts=texts,
    )
    expected = []
    for offset, ((event_id, _), text) in enumerate(zip(batch, texts, strict=True)):
        this = event_hash(
            execution_id=execution_id, sequence=first + offset, event_id=event_id,
            created_at=created, kind_text=text, prev_hash=prev,
        )  # fmt: skip
        expected.append((prev, this))
        prev = this
    assert links == expected
