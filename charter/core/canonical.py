"""Canonical JSON (RFC 8785 style) and content digests.

The canonical form is what digests are computed over (policy sets, approval requests, and
later the event chain), so it must not depend on key order, whitespace or float formatting:

* objects: keys sorted by their UTF-16 code units, no whitespace;
* strings: only ``"``, ``\\`` and control characters escaped (short forms where JSON has
  them, ``\\u00xx`` otherwise); lone surrogates are refused;
* numbers: integers as written (within signed 64 bits); floats in ECMAScript's shortest
  round-trip form (``1.0`` is ``1``, ``1e21`` is ``1e+21``, ``1e-7`` is ``1e-7``,
  ``1.2345678901234568e20`` is ``123456789012345680000``); NaN and infinities are refused;
* nesting deeper than `MAX_DEPTH` levels is refused;
* ``true``, ``false``, ``null``; tuples are arrays.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping

from charter.core.errors import InvalidInput, describe

__all__ = ["MAX_DEPTH", "canonical_json", "content_digest", "number_text"]


def number_text(value: float) -> str:
    """A finite float as ECMAScript prints it (shortest round trip; see the module doc)."""
    if not math.isfinite(value):
        raise InvalidInput("", f"expected a finite number, got {value!r}")
    if value == 0:
        return "0"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))  # exact; larger integral floats go through the digits below
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
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()
