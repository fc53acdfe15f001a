"""Canonical JSON (RFC 8785 style) and content digests.

The canonical form is what digests are computed over (policy sets, approval requests, and
later the event chain), so it must not depend on key order, whitespace or float formatting:

* objects: keys sorted by their UTF-16 code units, no whitespace;
* strings: only ``"``, ``\\`` and control characters escaped (short forms where JSON has
  them, ``\\u00xx`` otherwise); lone surrogates are refused;
* numbers: integers as written; floats in ECMAScript's shortest round-trip form (``1.0`` is
  ``1``, ``1e21`` is ``1e+21``, ``1e-7`` is ``1e-7``); NaN and infinities are refused;
* ``true``, ``false``, ``null``; tuples are arrays.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping

from charter.core.errors import InvalidInput, describe

__all__ = ["canonical_json", "content_digest"]


def _number(value: float) -> str:
    if not math.isfinite(value):
        raise InvalidInput("", f"expected a finite number, got {value!r}")
    if value == 0:
        return "0"
    if value.is_integer() and abs(value) < 1e21:
        return str(int(value))
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


def _write(value: object, out: list[str], where: str) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        try:
            out.append(_number(value))
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
            _write(value[key], out, f"{where}.{key}" if where else key)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _write(item, out, f"{where}[{index}]")
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
