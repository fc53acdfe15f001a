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

`canonical_text` (re-exported from `charter.core.canonical`, where the gate's digests use
it too) is `charter.core.canonical.canonical_json` made fast for the common case: values
whose floats are integral or already print as ECMAScript prints them, whose object keys are
ASCII, and whose strings are well-formed go through the C JSON encoder; anything else falls
back to the exact (slower) encoder. Both give the same text (a property test checks it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Final

import attrs

from charter.core.canonical import canonical_text
from charter.core.errors import InvalidInput
from charter.core.records import ChainLink

__all__ = [
    "GENESIS",
    "ChainProblem",
    "ChainVerifier",
    "canonical_text",
    "envelope_text",
    "event_hash",
    "link_hashes",
]

#: The ``prev_hash`` of an execution's first event.
GENESIS: Final = "0" * 64

_dumps = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":")
).encode


def _quoted(text: str) -> str:
    """``_dumps(text)``: an ASCII letters-and-digits text (an event id, a hex hash) needs no
    escape, so it is only put in quotes; any other goes through the encoder."""
    if text.isascii() and text.isalnum():
        return f'"{text}"'
    return _dumps(text)


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


def link_hashes(
    *,
    execution_id: str,
    first_sequence: int,
    prev_hash: str,
    created_at: str,
    event_ids: Sequence[str],
    kind_texts: Sequence[str],
) -> list[tuple[str, str]]:
    """``(prev_hash, hash)`` of each of a batch of events appended together (numbered from
    ``first_sequence``, all stamped ``created_at``), continuing the chain from ``prev_hash``
    (the hash of the event before the batch, or `GENESIS`)."""
    # `envelope_text`, with what the batch shares (the time, the execution) encoded once.
    shared = f'{{"created_at":{_dumps(created_at)},"execution_id":{_dumps(execution_id)},"id":'
    sha256 = hashlib.sha256
    out = []
    sequence = first_sequence
    for event_id, kind_text in zip(event_ids, kind_texts, strict=True):
        text = (
            f'{shared}{_quoted(event_id)},"kind":{kind_text},"prev_hash":{_quoted(prev_hash)},'
            f'"sequence":{sequence}}}'
        )
        this = sha256(text.encode("utf-8")).hexdigest()
        out.append((prev_hash, this))
        prev_hash = this
        sequence += 1
    return out


@attrs.frozen
class ChainProblem:
    """Where an execution's chain is broken, and how."""

    execution_id: str
    sequence: int
    event_id: str | None
    problem: str

    def __str__(self) -> str:
        event = f" ({self.event_id})" if self.event_id else ""
        return f"{self.execution_id} #{self.sequence}{event}: {self.problem}"


class ChainVerifier:
    """Checks one execution's stored events, fed in order a page at a time (its memory does
    not grow with the log): numbering 1, 2, 3… without gaps; each ``prev_hash`` the stored
    hash of the event before; each hash recomputed from the stored content; with
    ``strict``, each kind in canonical form. `finish` checks the tail against an anchor —
    ``(sequence, hash)`` exported earlier — which catches a truncated tail or a tail
    rewritten with fresh hashes, the two changes a chain alone cannot reveal."""

    def __init__(self, execution_id: str, *, strict: bool = False) -> None:
        self.execution_id = execution_id
        self.strict = strict
        self.problems: list[ChainProblem] = []
        self.count = 0
        self.last_sequence = 0
        self.head = GENESIS
        self._anchored: dict[int, str] = {}
        self._watch: int | None = None

    def resume(self, sequence: int, hash_: str) -> None:
        """Start after event ``sequence`` whose hash was ``hash_`` (a compacted prefix,
        docs/semantics.md §10: the next event must continue from it)."""
        self.last_sequence = sequence
        self.head = hash_

    def expect(self, sequence: int, hash_: str) -> None:
        """Ask `finish` to check that event ``sequence`` is still there with ``hash_``."""
        self._watch = sequence
        self._anchored.clear()
        self._anchored[sequence] = hash_

    def _problem(self, sequence: int, event_id: str | None, problem: str) -> None:
        self.problems.append(ChainProblem(self.execution_id, sequence, event_id, problem))

    def feed(self, links: Iterable[ChainLink]) -> None:
        for link in links:
            expected = self.last_sequence + 1
            if link.sequence > expected:
                missing = (
                    f"event {expected} is missing"
                    if link.sequence == expected + 1
                    else f"events {expected}–{link.sequence - 1} are missing"
                )
                self._problem(link.sequence, link.event_id, f"{missing} (removed?)")
            elif link.sequence < expected:
                self._problem(
                    link.sequence,
                    link.event_id,
                    f"out of order: comes after event {self.last_sequence}",
                )
            if link.prev_hash != self.head:
                self._problem(
                    link.sequence,
                    link.event_id,
                    "its prev_hash is not the hash of the event before it "
                    "(an earlier event was removed, inserted or replaced)",
                )
            recomputed = event_hash(
                execution_id=link.execution_id,
                sequence=link.sequence,
                event_id=link.event_id,
                created_at=link.created_at,
                kind_text=link.kind_text,
                prev_hash=link.prev_hash,
            )
            if recomputed != link.hash or link.execution_id != self.execution_id:
                self._problem(
                    link.sequence,
                    link.event_id,
                    "its content does not match its hash (the event was modified)",
                )
            if self.strict:
                self._check_canonical(link)
            if self._watch == link.sequence and self._anchored[link.sequence] != link.hash:
                self._problem(
                    link.sequence,
                    link.event_id,
                    "differs from the anchored event (the log was rewritten from here on)",
                )
                self._watch = None
            elif self._watch == link.sequence:
                self._watch = None
            self.head = link.hash
            self.last_sequence = max(self.last_sequence, link.sequence)
            self.count += 1

    def _check_canonical(self, link: ChainLink) -> None:
        try:
            canonical = canonical_text(json.loads(link.kind_text))
        except (ValueError, InvalidInput):
            canonical = None
        if canonical != link.kind_text:
            self._problem(link.sequence, link.event_id, "its kind is not canonical JSON")

    def finish(self) -> list[ChainProblem]:
        """The problems found (empty: the chain holds)."""
        if self._watch is not None:
            self._problem(
                self._watch,
                None,
                f"the anchored event is gone: the log ends at {self.last_sequence} "
                "(the tail was truncated)",
            )
            self._watch = None
        return self.problems
