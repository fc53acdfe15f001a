"""Validators shared by the core's value classes (private).

Each raises the `InvalidInput` subclass it is given, naming the field, what was expected and
what was found. They never coerce silently: ``True`` is not a count, ``"3"`` is not a number,
``NaN`` is not an amount.
"""

from __future__ import annotations

import math

from charter.core.errors import InvalidInput, describe

__all__ = [
    "MAX_COUNT",
    "amount",
    "count",
    "optional_amount",
    "optional_count",
    "optional_text",
    "patterns",
    "text",
]

#: Counters and token totals are stored as signed 64-bit integers by every adapter.
MAX_COUNT = 2**63 - 1


def text(value: object, where: str, error: type[InvalidInput] = InvalidInput) -> str:
    if not isinstance(value, str):
        raise error(where, f"expected a string, got {describe(value)}")
    return value


def optional_text(
    value: object, where: str, error: type[InvalidInput] = InvalidInput
) -> str | None:
    return None if value is None else text(value, where, error)


def count(value: object, where: str, error: type[InvalidInput] = InvalidInput) -> int:
    """A non-negative integer (bools refused) that fits a signed 64-bit column."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(where, f"expected a non-negative integer, got {describe(value)}")
    if value < 0:
        raise error(where, f"expected a non-negative integer, got {value}")
    if value > MAX_COUNT:
        raise error(where, f"expected an integer at most {MAX_COUNT}, got {value}")
    return value


def optional_count(
    value: object, where: str, error: type[InvalidInput] = InvalidInput
) -> int | None:
    return None if value is None else count(value, where, error)


def amount(value: object, where: str, error: type[InvalidInput] = InvalidInput) -> float:
    """A finite, non-negative number (int or float; bools refused), returned as float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise error(where, f"expected a finite non-negative number, got {describe(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise error(where, f"expected a finite non-negative number, got {value!r}")
    if number < 0:
        raise error(where, f"expected a finite non-negative number, got {value!r}")
    return number


def optional_amount(
    value: object, where: str, error: type[InvalidInput] = InvalidInput
) -> float | None:
    return None if value is None else amount(value, where, error)


def patterns(
    value: object, where: str, error: type[InvalidInput] = InvalidInput, what: str = "pattern"
) -> tuple[str, ...]:
    """A list (or tuple) of strings, returned as a tuple.

    Only a list or a tuple is accepted. A bare string is refused (iterating it would make
    one pattern per character — ``"claude-*"`` would allow every model); so are mappings
    (their keys would be taken silently) and sets (no stable order, so no stable digest).
    Strings must be valid Unicode text (no lone surrogates). A pattern with ``[`` or ``]``
    is refused: they would be literal characters, not a class (docs/semantics.md §1), so
    ``"db.[a-z]*"`` would match no tool anyone meant. (An empty pattern, which matches
    nothing, is refused where files are read: `charter.adapters.files`.)"""
    if not isinstance(value, list | tuple):
        raise error(where, f"expected a list of string {what}s, got {describe(value)}")
    items = tuple(value)
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise error(f"{where}[{index}]", f"expected a string {what}, got {describe(item)}")
        if not _encodable(item):
            raise error(f"{where}[{index}]", f"{what} contains a lone surrogate (not text)")
        if what == "pattern" and ("[" in item or "]" in item):
            raise error(
                f"{where}[{index}]",
                f"{item!r}: '[' and ']' are not pattern syntax (only * and ? are wildcards); "
                "it would match only names with brackets in them",
            )
    return items


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
