"""Glob matching with upstream JamJet's semantics, in time linear in the value.

Semantics (docs/semantics.md §1): ``*`` matches any run of characters, dots and slashes included;
``?`` matches exactly one character; every other character, ``[``, ``]`` and ``\\`` included,
is literal. Matching is case-sensitive and anchored at both ends. Characters are Unicode code
points.

Upstream matches by naive recursive backtracking, exponential in the number of stars. Here a
pattern is split at its stars into segments; the first segment must match at the start, the
last at the end, and each middle segment is matched at its leftmost possible position after
the previous one. Greedy leftmost placement is correct because a star can absorb anything
between two segments: if any placement works, the leftmost one leaves the most room for the
rest. There is no backtracking, so the number of stars never multiplies the work.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Final

import attrs

from charter.core.errors import InvalidInput, describe

__all__ = ["GlobPattern", "glob_match"]

_KIND_LITERAL: Final = "literal"
_KIND_PREFIX: Final = "prefix"
_KIND_GENERAL: Final = "general"


def _segment_matcher(segment: str) -> re.Pattern[str] | str:
    """A literal segment stays a string (``str.find`` / ``startswith``); a segment with ``?``
    becomes a quantifier-free regex, which cannot backtrack."""
    if "?" not in segment:
        return segment
    return re.compile("".join("." if ch == "?" else re.escape(ch) for ch in segment), re.DOTALL)


def _fixed_match(matcher: re.Pattern[str] | str, value: str, pos: int) -> bool:
    if isinstance(matcher, str):
        return value.startswith(matcher, pos)
    return matcher.match(value, pos) is not None


@attrs.frozen
class GlobPattern:
    """A glob pattern compiled once for repeated matching.

    ``kind`` is ``"literal"`` (no wildcard), ``"prefix"`` (literal text followed by a single
    trailing ``*``) or ``"general"``; policy indexes use it to answer literal and prefix rules
    with hash lookups.
    """

    pattern: str
    kind: str = attrs.field(init=False, eq=False, repr=False)
    literal: str = attrs.field(init=False, eq=False, repr=False)
    _head: re.Pattern[str] | str = attrs.field(init=False, eq=False, repr=False)
    _middle: tuple[re.Pattern[str] | str, ...] = attrs.field(init=False, eq=False, repr=False)
    _tail: re.Pattern[str] | str | None = attrs.field(init=False, eq=False, repr=False)
    _head_length: int = attrs.field(init=False, eq=False, repr=False)
    _tail_length: int = attrs.field(init=False, eq=False, repr=False)
    _min_length: int = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        pattern = self.pattern
        if not isinstance(pattern, str):
            raise InvalidInput("pattern", f"expected a string pattern, got {describe(pattern)}")
        segments = pattern.split("*")
        setter = object.__setattr__
        if len(segments) == 1 and "?" not in pattern:
            setter(self, "kind", _KIND_LITERAL)
            setter(self, "literal", pattern)
        elif len(segments) == 2 and segments[1] == "" and "?" not in segments[0]:
            setter(self, "kind", _KIND_PREFIX)
            setter(self, "literal", segments[0])
        else:
            setter(self, "kind", _KIND_GENERAL)
            setter(self, "literal", "")
        setter(self, "_head", _segment_matcher(segments[0]))
        if len(segments) == 1:
            setter(self, "_middle", ())
            setter(self, "_tail", None)
        else:
            setter(self, "_middle", tuple(_segment_matcher(s) for s in segments[1:-1] if s))
            setter(self, "_tail", _segment_matcher(segments[-1]))
        setter(self, "_head_length", len(segments[0]))
        setter(self, "_tail_length", len(segments[-1]) if len(segments) > 1 else 0)
        setter(self, "_min_length", len(pattern) - pattern.count("*"))

    def matches(self, value: str) -> bool:
        """Whether the whole of ``value`` matches the pattern."""
        if self.kind == _KIND_LITERAL:
            return value == self.literal
        if self.kind == _KIND_PREFIX:
            return value.startswith(self.literal)
        if len(value) < self._min_length:
            return False
        head = self._head
        tail = self._tail
        if tail is None:  # no star: `?` wildcards only, the lengths must agree
            return len(value) == self._min_length and _fixed_match(head, value, 0)
        if not _fixed_match(head, value, 0):
            return False
        pos = self._head_length
        end = len(value) - self._tail_length  # the tail is anchored at the end, no overlap
        for segment in self._middle:
            if isinstance(segment, str):
                found = value.find(segment, pos, end)
                if found < 0:
                    return False
                pos = found + len(segment)
            else:
                hit = segment.search(value, pos, end)
                if hit is None:
                    return False
                pos = hit.end()
        if pos > end:
            return False
        return _fixed_match(tail, value, end)


@lru_cache(maxsize=4096)
def _compiled(pattern: str) -> GlobPattern:
    return GlobPattern(pattern)


def glob_match(pattern: str, value: str) -> bool:
    """Whether ``value`` matches the glob ``pattern`` (upstream semantics, linear time).

    >>> glob_match("foo.*", "foo.bar"), glob_match("foo.*", "foobar"), glob_match("*", "")
    (True, False, True)
    """
    if type(value) is not str:
        raise InvalidInput("value", f"expected a string, got {describe(value)}")
    if type(pattern) is not str:
        raise InvalidInput("pattern", f"expected a string pattern, got {describe(pattern)}")
    return _compiled(pattern).matches(value)
