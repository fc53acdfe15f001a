"""Canonical JSON (RFC 8785 style) and content digests.

The canonical form is what digests are computed over (policy sets, approval requests, and
later the event chain), so it must not depend on key order, whitespace or float formatting:

* objects: keys sorted by their UTF-16 code units, no whitespace;
* strings: only ``"``, ``\\`` and control characters escaped (short forms where JSON has
  them, ``\\u00xx`` otherwise); lone surrogates are refused;
* numbers: integers as written (within signed 64 bits); floats in ECMAScript's shortest
  round-trip form (``1.0`` is ``1``, ``1e21`` is ``1e+21``, ``1e-7`` is ``1e-7``,
  ``1.2345678901234568e18`` is ``1234567890123456800``); NaN and infinities are refused, and
  so are floats from 2**63 up to 1e21 in magnitude, which ECMAScript writes as integers
  outside 64 bits (``9.3e18`` would be ``9300000000000000000``) that could not be read back;
* nesting deeper than `MAX_DEPTH` levels is refused;
* ``true``, ``false``, ``null``; tuples are arrays.

`canonical_json` is the exact reference encoder. `canonical_text` gives the same text
faster: values whose floats are integral or already print as ECMAScript prints them, whose
object keys are ASCII and whose strings are well-formed go through the C JSON encoder, and
anything else falls back to `canonical_json` (a property test checks they agree on every
value, errors included). `content_digest` hashes `canonical_text`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from json import encoder as _json_encoder
from typing import Any, Final

from charter.core.errors import InvalidInput, describe

__all__ = [
    "MAX_DEPTH",
    "NeedsExact",
    "canonical_json",
    "canonical_text",
    "compact_text",
    "content_digest",
    "evict_oldest",
    "fast_text",
    "json_text",
    "number_text",
    "prepare",
    "string_text",
    "text_digest",
]


def number_text(value: float) -> str:
    """A finite float as ECMAScript prints it (shortest round trip; see the module doc)."""
    if not math.isfinite(value):
        raise InvalidInput("", f"expected a finite number, got {value!r}")
    if value == 0:
        return "0"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))  # exact; larger integral floats go through the digits below
    if _INT_RANGE <= abs(value) < 1e21:
        # ECMAScript writes these as integer literals, which read back as integers outside
        # the signed 64-bit range that canonical JSON keeps: the text could not be read back.
        raise InvalidInput(
            "",
            f"number {value!r} is an integer outside the signed 64-bit range when written "
            "as JSON (below 1e21 it has no exponent); a value this large must be a string",
        )
    sign = "-" if value < 0 else ""
    text = repr(abs(value))  # shortest round-trip digits
    mantissa, _, exponent = text.partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    # position of the decimal point relative to the start of `digits` (ES6's "n")
    point = len(whole) + (int(exponent) if exponent else 0)
    if whole == "0":
        leading = len(fraction) - len(fraction.lstrip("0"))
        point = -leading + (int(exponent) if exponent else 0)
    digits = digits.rstrip("0") or "0"
    k = len(digits)
    if k <= point <= 21:
        return sign + digits + "0" * (point - k)
    if 0 < point <= 21:
        return sign + digits[:point] + "." + digits[point:]
    if -6 < point <= 0:
        return sign + "0." + "0" * (-point) + digits
    exp = point - 1
    head = digits[0] + ("." + digits[1:] if k > 1 else "")
    return f"{sign}{head}e{'+' if exp > 0 else '-'}{abs(exp)}"


def _string(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput("", "string contains a lone surrogate") from None
    return json.dumps(value, ensure_ascii=False)


#: Deeper nesting than this is refused rather than risking the interpreter's stack.
MAX_DEPTH = 64
#: Integers are kept exact only within signed 64 bits; larger ones are refused.
_INT_RANGE = 2**63


def _write(value: object, out: list[str], where: str, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise InvalidInput("$", f"JSON nested deeper than {MAX_DEPTH} levels")
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        if not -_INT_RANGE <= value < _INT_RANGE:
            raise InvalidInput(where or "$", "integer outside the signed 64-bit range")
        out.append(str(value))
    elif isinstance(value, float):
        try:
            out.append(number_text(value))
        except InvalidInput as error:
            raise InvalidInput(where or "$", error.problem) from None
    elif isinstance(value, str):
        try:
            out.append(_string(value))
        except InvalidInput as error:
            raise InvalidInput(where or "$", error.problem) from None
    elif isinstance(value, Mapping):
        items = []
        for key in value:
            if not isinstance(key, str):
                raise InvalidInput(
                    where or "$", f"object key must be a string, got {describe(key)}"
                )
            items.append(key)
        items.sort(key=lambda k: k.encode("utf-16-be", "surrogatepass"))
        out.append("{")
        for index, key in enumerate(items):
            if index:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _write(value[key], out, f"{where}.{key}" if where else key, depth + 1)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _write(item, out, f"{where}[{index}]", depth + 1)
        out.append("]")
    else:
        raise InvalidInput(where or "$", f"not a JSON value: {describe(value)}")


def canonical_json(value: object) -> str:
    """The canonical JSON text of a JSON value (see the module doc)."""
    out: list[str] = []
    _write(value, out, "")
    return "".join(out)


def content_digest(value: object) -> str:
    """SHA-256 (hex) of the UTF-8 canonical JSON of ``value``."""
    text = fast_text(value)
    if text is not None:
        try:
            return hashlib.sha256(text.encode("utf-8")).hexdigest()
        except UnicodeEncodeError:
            pass
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


# ── the fast path ──────────────────────────────────────────────────────────────────────

#: The JSON string literal of a string as canonical JSON writes it (only ``"``, ``\\`` and
#: control characters escaped). It does not refuse lone surrogates: text built with it must
#: be encoded to UTF-8 (which does refuse them) before it is trusted, as `text_digest` does.
string_text: Final[Callable[[str], str]] = _json_encoder.encode_basestring

_SAFE_INTEGRAL: Final = 2**53


def _make_dumps() -> Callable[[Any], str]:
    """Compact, key-sorted JSON through the C encoder, made once (``json.dumps`` builds a new
    encoder per call). Values reaching it are acyclic (`_prepare` bounds their depth)."""
    reference = json.JSONEncoder(
        ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":")
    ).encode
    make = getattr(_json_encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython always has the C encoder
        return reference
    try:
        raw = make(None, None, string_text, None, ":", ",", True, False, False)
    except TypeError:  # pragma: no cover - an interpreter with another signature
        return reference

    def dumps(value: Any) -> str:
        return "".join(raw(value, 0))

    sample = {"b": [1, 2.5, None, True], "a": {"\u00e9": "x\n"}}
    return dumps if dumps(sample) == reference(sample) else reference


_dumps: Final = _make_dumps()


class NeedsExact(Exception):
    """Raised by `prepare`: the value needs the exact encoder (`canonical_json`)."""


_Slow = NeedsExact


def _float(value: float) -> float | int:
    """``value`` as the C encoder must see it to print ECMAScript's text (`_Slow` if it
    cannot: NaN, infinities, and exponents printed another way)."""
    if value.is_integer() and -_SAFE_INTEGRAL < value < _SAFE_INTEGRAL:
        return int(value)
    if _INT_RANGE <= abs(value) < 1e21:
        raise _Slow  # refused by the exact encoder, which names where
    text = repr(value)
    # Without an exponent, a non-integral float prints the same shortest digits both ways;
    # an exponent, nan, inf or a large integral float ("9007199254740992.0") needs a look.
    if ("e" in text or "n" in text or value.is_integer()) and (
        not math.isfinite(value) or text != number_text(value)
    ):
        raise _Slow
    return value


def _prepare(value: Any, depth: int) -> Any:
    """``value`` with every float the C encoder would print differently from ECMAScript
    replaced by an equal int (copying only the containers that change); `_Slow` if
    something else needs the exact encoder. ``depth`` is the value's nesting level."""
    kind = type(value)
    if kind is str or value is None or kind is bool:
        return value
    if kind is int:
        if not -_INT_RANGE <= value < _INT_RANGE:
            raise _Slow
        return value
    if kind is float:
        return _float(value)
    if kind is dict:
        if depth >= MAX_DEPTH and (value or depth > MAX_DEPTH):
            raise _Slow
        changed: dict[str, Any] | None = None
        for key, item in value.items():
            if type(key) is not str or not key.isascii():
                raise _Slow
            kind = type(item)
            if kind is str or kind is bool or item is None:
                continue
            new = _prepare(item, depth + 1)
            if new is not item:
                if changed is None:
                    changed = dict(value)
                changed[key] = new
        return value if changed is None else changed
    if kind is list or kind is tuple:
        if depth >= MAX_DEPTH and (value or depth > MAX_DEPTH):
            raise _Slow
        copied: list[Any] | None = None
        for index, item in enumerate(value):
            kind = type(item)
            if kind is str or kind is bool or item is None:
                continue
            new = _prepare(item, depth + 1)
            if new is not item:
                if copied is None:
                    copied = list(value)
                copied[index] = new
        return value if copied is None else copied
    raise _Slow


_int_text: Final = int.__repr__


def _float_text(value: float) -> str:
    """A float as ECMAScript prints it (`number_text`), the common cases without its work;
    `NeedsExact` for NaN and infinities (the exact encoder names them)."""
    if value.is_integer() and -_SAFE_INTEGRAL < value < _SAFE_INTEGRAL:
        return _int_text(int(value))
    if _INT_RANGE <= abs(value) < 1e21:
        raise NeedsExact  # refused by the exact encoder, which names where
    text = repr(value)
    # Without an exponent, a non-integral float prints the same shortest digits both ways.
    if "e" in text or "n" in text or value.is_integer():
        if not math.isfinite(value):
            raise NeedsExact
        return number_text(value)
    return text


#: Recent object shapes (a dict's keys in its own order) with the keys in canonical order,
#: each with its ``"key":`` text. Only small objects whose keys are all ASCII ``str`` are
#: kept (their canonical order is then plain string order); the oldest shape goes first.
_SHAPES: dict[tuple[str, ...], tuple[tuple[str, str], ...]] = {}
_SHAPES_MAX = 1024
_SHAPE_KEYS_MAX = 32


def evict_oldest(cache: dict[Any, Any]) -> None:
    """Remove the oldest entry of a bounded cache (a no-op if another thread just did)."""
    try:
        oldest = next(iter(cache))
    except (StopIteration, RuntimeError):  # emptied or changed meanwhile: nothing to do
        return
    cache.pop(oldest, None)


def _shape(value: dict[Any, Any]) -> tuple[tuple[str, str], ...]:
    keys = tuple(value)
    for key in keys:
        if type(key) is not str or not key.isascii():
            raise NeedsExact
    order = tuple([(key, string_text(key) + ":") for key in sorted(keys)])
    if len(keys) <= _SHAPE_KEYS_MAX:
        if len(_SHAPES) >= _SHAPES_MAX:
            evict_oldest(_SHAPES)
        _SHAPES[keys] = order
    return order


def json_text(value: Any, depth: int = 0) -> str:
    """The canonical text of a JSON value sitting at nesting level ``depth``, written
    directly in Python (no prepared copy, no C encoder set-up per value); `NeedsExact`
    whenever only the exact encoder can say: another type, a key that is not an ASCII
    ``str``, an integer outside 64 bits, a non-finite float, nesting too deep. A lone
    surrogate is written as it is: encode the text to UTF-8 (which refuses it) before
    trusting it, as `text_digest` does."""
    kind = type(value)
    if kind is str:
        return string_text(value)
    if value is None:
        return "null"
    if kind is int:
        if -_INT_RANGE <= value < _INT_RANGE:
            return _int_text(value)
        raise NeedsExact
    if kind is bool:
        return "true" if value else "false"
    if kind is float:
        return _float_text(value)
    if kind is dict:
        if depth >= MAX_DEPTH and (value or depth > MAX_DEPTH):
            raise NeedsExact
        order = _SHAPES.get(tuple(value))
        if order is None:
            order = _shape(value)
        parts = []
        inner = depth + 1
        for key, prefix in order:  # scalars written here, containers by recursion
            item = value[key]
            kind = type(item)
            if kind is str:
                parts.append(prefix + string_text(item))
            elif kind is int and -_INT_RANGE <= item < _INT_RANGE:
                parts.append(prefix + _int_text(item))
            elif item is None:
                parts.append(prefix + "null")
            elif item is True:
                parts.append(prefix + "true")
            elif item is False:
                parts.append(prefix + "false")
            elif kind is float:
                parts.append(prefix + _float_text(item))
            else:
                parts.append(prefix + json_text(item, inner))
        return "{" + ",".join(parts) + "}"
    if kind is list or kind is tuple:
        if depth >= MAX_DEPTH and (value or depth > MAX_DEPTH):
            raise NeedsExact
        inner = depth + 1
        return "[" + ",".join([json_text(item, inner) for item in value]) + "]"
    raise NeedsExact


def prepare(value: Any, depth: int = 0) -> Any:
    """A JSON value made ready for `compact_text` (which then prints its canonical text, up
    to a lone surrogate that encoding to UTF-8 refuses); `NeedsExact` when only the exact
    encoder can say. ``depth`` is the nesting level the value will sit at."""
    return _prepare(value, depth)


def compact_text(prepared: Any) -> str:
    """The compact, key-sorted JSON text of a value `prepare` returned (or of a dict of
    ASCII keys whose values it returned): its canonical text."""
    return _dumps(prepared)


def fast_text(value: Any, depth: int = 0) -> str | None:
    """`canonical_text` without its fallback: the text, or ``None`` when only the exact
    encoder can say (the text may still hold a lone surrogate: encode it to UTF-8 before
    trusting it). ``depth`` is the nesting level ``value`` will sit at."""
    try:
        return _dumps(_prepare(value, depth))
    except (_Slow, ValueError, TypeError, RecursionError):
        return None


def canonical_text(value: Any) -> str:
    """The canonical JSON text of a JSON value: exactly `canonical_json`'s, faster."""
    text = fast_text(value)
    if text is None:
        return canonical_json(value)
    try:
        text.encode("utf-8")  # a lone surrogate cannot be encoded: let the exact path say so
    except UnicodeEncodeError:
        return canonical_json(value)
    return text


def text_digest(text: str) -> str:
    """SHA-256 (hex) of canonical text's UTF-8 bytes; a lone surrogate is `InvalidInput`."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput("", "string contains a lone surrogate") from None
    return hashlib.sha256(data).hexdigest()
