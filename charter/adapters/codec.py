"""JSON codec for every core value, in upstream's JSON shape.

``dump(value)`` gives plain JSON data (dicts, lists, strings, numbers, booleans, ``None``);
``load(data, type)`` rebuilds the value, and ``load(dump(v), type(v)) == v`` for every core
value. ``dumps`` / ``loads`` do the same through JSON text.

Shape rules (upstream's serde conventions):

* closed unions (event kinds, policy and autonomy decisions, approval statuses) are objects
  tagged with ``"type": "<snake_case class name>"`` next to their fields;
* enums are their string values; tuples are arrays; datetimes are RFC 3339 text (``Z`` for
  UTC);
* a field whose default is ``None`` is omitted while it is ``None`` (upstream's
  ``skip_serializing_if = "Option::is_none"``); on load a missing one is ``None``;
* escalation targets are their string form (``human_approval``, ``supervisor_agent:<id>``).

Bad input raises `CodecError` (an `InvalidInput`) naming the path of every bad field, e.g.
``$.kind.attempt: expected int``. Nothing here touches files or the network.

``event_text(kind)`` is what a log stores for an event kind: the canonical JSON text of
``dump(kind)`` (`charter.core.canonical`). Each kind has its own encoder, made from its
fields when this module is imported, that reads the fields, checks each has the type it
declares and writes each member's text in canonical key order (JSON values through
`charter.core.canonical.json_text`), joined once; anything it does not expect (a value of
another type, an integer beyond 64 bits, a non-finite float, a lone surrogate) takes the
generic path, ``canonical_text(dump(kind))``, so the text is always exactly that (a
property test checks it on every kind). ``node_gated``'s values of known shape have their
own writers: the budget and limits objects in one format each, the layer records' text
remembered per content (strings and ``true`` only), and the last UTC timestamp's text
(property-checked on every member changed to odd values).
"""

from __future__ import annotations

import enum
import json
import math
import typing
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from charter.core import approvals, autonomy, events, policy
from charter.core._check import MAX_COUNT
from charter.core.autonomy import EscalationTarget, LimitValue, parse_escalation_target
from charter.core.budget import BudgetState
from charter.core.canonical import (
    NeedsExact,
    canonical_json,
    canonical_text,
    evict_oldest,
    json_text,
    string_text,
)
from charter.core.errors import InvalidInput, describe
from charter.core.events import type_tag

__all__ = [
    "CodecError",
    "converter",
    "dump",
    "dumps",
    "event_text",
    "load",
    "loads",
    "parse_json",
]

T = TypeVar("T")


class CodecError(InvalidInput):
    """Data that does not decode to the requested type."""


def _snake(cls: type) -> str:
    name = cls.__name__
    return "".join(
        ("_" + ch.lower()) if ch.isupper() and i else ch.lower() for i, ch in enumerate(name)
    )


def _datetime_text(value: datetime) -> str:
    if value.tzinfo is None:
        raise CodecError("", f"datetimes must be timezone-aware, got naive {value.isoformat()}")
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _datetime_value(value: object, _: type) -> datetime:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise CodecError("", f"expected an RFC 3339 timestamp, got {describe(value)}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise CodecError("", f"expected an RFC 3339 timestamp, got {value!r}") from None
    if parsed.tzinfo is None:
        raise CodecError("", f"timestamp needs a timezone offset, got {value!r}")
    if parsed.utcoffset() == UTC.utcoffset(None) and value.endswith("Z"):
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def _limit_value(value: object, _: type) -> LimitValue:
    if isinstance(value, list | tuple):
        if not all(isinstance(item, str) for item in value):
            raise CodecError("", f"expected a list of strings, got {describe(value)}")
        return tuple(value)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise CodecError("", f"expected a number, a string or a list, got {describe(value)}")
    return value


def _json_value(value: object, _: type) -> Any:
    """A plain JSON value, checked: objects with string keys, arrays, strings, finite numbers,
    booleans and null, nested at most `MAX_DEPTH` levels."""
    try:
        canonical_json(value)
    except InvalidInput as error:
        raise CodecError(error.where.removeprefix("$"), error.problem) from None
    return value


# cattrs' default primitive hooks coerce (``str(1)``, ``int("3")``, ``int(True)``); a codec
# for audited records must not, so every primitive is checked exactly.
def _strict_str(value: object, _: type) -> str:
    if not isinstance(value, str):
        raise CodecError("", f"expected a string, got {describe(value)}")
    return value


# Every integer a core value holds is a count (attempts, sequences, tokens, limits…) and
# every float an amount: negative counts, counts beyond 64 bits and non-finite amounts are
# refused here, so a log cannot smuggle in values the core would never produce.
def _strict_int(value: object, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CodecError("", f"expected an integer, got {describe(value)}")
    if not 0 <= value <= MAX_COUNT:
        raise CodecError(
            "", f"expected an integer between 0 and {MAX_COUNT}, got {describe(value)}"
        )
    return value


def _strict_float(value: object, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CodecError("", f"expected a number, got {describe(value)}")
    if not math.isfinite(value):
        raise CodecError("", f"expected a finite number, got {value!r}")
    return float(value)


def _number(value: object, _: type) -> int | float:
    if isinstance(value, int) and not isinstance(value, bool):
        return _strict_int(value, int)
    return _strict_float(value, float)


def _is_sequence(tp: Any) -> bool:
    args = typing.get_args(tp)
    return typing.get_origin(tp) is tuple and len(args) == 2 and args[1] is Ellipsis


def _sequence(conv: cattrs.Converter, tp: Any) -> Callable[[Any, type], tuple[Any, ...]]:
    """Tuples decode only from JSON arrays: a bare string, a mapping or a set would
    otherwise be iterated (``"claude-*"`` would become nine one-character patterns)."""
    (item, _ellipsis) = typing.get_args(tp)

    def structure(value: object, _: type) -> tuple[Any, ...]:
        if not isinstance(value, list | tuple):
            raise CodecError("", f"expected an array, got {describe(value)}")
        items = []
        for index, element in enumerate(value):
            try:
                items.append(conv.structure(element, item))
            except InvalidInput as error:
                raise CodecError(f"[{index}]{error.where}", error.problem) from None
        return tuple(items)

    return structure


def _budget_state(value: object, _: type) -> BudgetState:
    # Strict like upstream's own decoding: every key present (a missing one is an error,
    # never a zero that would silently unlimit a budget).
    return BudgetState.from_dict(value, "$")


def _strict_bool(value: object, _: type) -> bool:
    if not isinstance(value, bool):
        raise CodecError("", f"expected true or false, got {describe(value)}")
    return value


def _omit_none_defaults(cls: type) -> dict[str, Any]:
    return {
        field.name: override(omit_if_default=True)
        for field in attrs.fields(cls)
        if field.init and field.default is None
    }


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(detailed_validation=True, forbid_extra_keys=True)
    conv.register_unstructure_hook(datetime, _datetime_text)
    conv.register_structure_hook(datetime, _datetime_value)
    conv.register_structure_hook(typing.Any, _json_value)
    conv.register_structure_hook(str, _strict_str)
    conv.register_structure_hook(int, _strict_int)
    conv.register_structure_hook(float, _strict_float)
    conv.register_structure_hook(bool, _strict_bool)
    conv.register_structure_hook_func(lambda t: t == int | float, _number)
    conv.register_structure_hook_func(lambda t: t == LimitValue, _limit_value)
    conv.register_structure_hook_factory(_is_sequence, lambda tp: _sequence(conv, tp))
    conv.register_unstructure_hook_func(
        lambda t: t == EscalationTarget, lambda target: target.as_str()
    )
    conv.register_unstructure_hook(autonomy.HumanApproval, lambda target: target.as_str())
    conv.register_unstructure_hook(autonomy.SupervisorAgent, lambda target: target.as_str())
    conv.register_structure_hook_func(
        lambda t: t == EscalationTarget,
        lambda value, _: (
            parse_escalation_target(value)
            if isinstance(value, str)
            else _raise(f"expected an escalation target string, got {describe(value)}")
        ),
    )

    # Hooks for attrs classes are made on first use, so the tagged unions below and the
    # classes that contain them can refer to each other in any order.
    conv.register_unstructure_hook_factory(
        attrs.has, lambda cls: make_dict_unstructure_fn(cls, conv, **_omit_none_defaults(cls))
    )
    conv.register_structure_hook_factory(
        attrs.has,
        lambda cls: make_dict_structure_fn(
            cls, conv, _cattrs_forbid_extra_keys=True, **_omit_none_defaults(cls)
        ),
    )

    # Closed unions are tagged with "type": every member carries its tag whether it is
    # encoded on its own or as a union, and a union decodes by dispatching on the tag.
    for union in _TAGGED_UNIONS:
        _tag_union(conv, union)
    conv.register_structure_hook(BudgetState, _budget_state)
    return conv


_TAGGED_UNIONS: tuple[Any, ...] = (
    events.EventKind,
    policy.PolicyDecision,
    autonomy.AutonomyDecision,
    approvals.ApprovalStatus,
)


def _tag_union(conv: cattrs.Converter, union: Any) -> None:
    members: dict[str, type] = {type_tag(cls): cls for cls in typing.get_args(union)}
    tags = {cls: tag for tag, cls in members.items()}
    known = ", ".join(sorted(members))

    def unstructure_member(cls: type) -> Callable[[Any], dict[str, Any]]:
        fields: Callable[[Any], dict[str, Any]] = make_dict_unstructure_fn(
            cls, conv, **_omit_none_defaults(cls)
        )
        tag = tags[cls]
        return lambda value: {"type": tag, **fields(value)}

    def structure_member(cls: type) -> Callable[[Any, type], Any]:
        fields: Callable[[Any, type], Any] = make_dict_structure_fn(
            cls, conv, _cattrs_forbid_extra_keys=True, **_omit_none_defaults(cls)
        )
        tag = tags[cls]

        def structure(data: Any, _: type) -> Any:
            if not isinstance(data, dict):
                raise CodecError("", f"expected an object tagged {tag!r}, got {describe(data)}")
            if data.get("type", tag) != tag:
                raise CodecError("type", f"expected {tag!r}, got {data.get('type')!r}")
            return fields({k: v for k, v in data.items() if k != "type"}, cls)

        return structure

    def structure_union(data: Any, _: type) -> Any:
        if not isinstance(data, dict):
            raise CodecError("", f"expected an object with a 'type' tag, got {describe(data)}")
        tag = data.get("type")
        cls = members.get(tag) if isinstance(tag, str) else None
        if cls is None:
            raise CodecError("type", f"unknown type {tag!r} (expected one of: {known})")
        return conv.structure(data, cls)

    conv.register_unstructure_hook_factory(lambda t: t in tags, unstructure_member)
    conv.register_structure_hook_factory(lambda t: t in tags, structure_member)
    conv.register_structure_hook_func(lambda t: t == union, structure_union)
    conv.register_unstructure_hook_func(lambda t: t == union, lambda value: conv.unstructure(value))


def _raise(message: str) -> typing.NoReturn:
    raise CodecError("", message)


#: The one converter; other adapters may reuse it for their own records.
converter = _make_converter()


def dump(value: object) -> Any:
    """Plain JSON data for a core value (see the module doc for the shape)."""
    try:
        return converter.unstructure(value)
    except InvalidInput:
        raise
    except (TypeError, ValueError, RecursionError) as error:
        raise CodecError("", f"cannot encode {describe(value)}: {error}") from None


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a key given twice (JSON would silently keep the last)."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise CodecError("", f"duplicate key {key!r}")
        result[key] = value
    return result


def parse_json(text: str | bytes) -> Any:
    """JSON text to data, strictly: duplicate keys, NaN/Infinity, numbers beyond Python's
    integer-string limit and nesting deep enough to exhaust the stack are `CodecError`s."""
    if not isinstance(text, str | bytes):
        raise CodecError("", f"expected JSON text, got {describe(text)}")
    try:
        return json.loads(
            text, object_pairs_hook=_refuse_duplicates, parse_constant=_refuse_constant
        )
    except json.JSONDecodeError as error:
        raise CodecError(f"{error.lineno}:{error.colno}", error.msg) from None
    except RecursionError:
        raise CodecError("", "JSON nested too deeply") from None
    except CodecError:
        raise
    except ValueError as error:  # e.g. an integer with too many digits
        raise CodecError("", f"not valid JSON: {error}") from None


def _refuse_constant(name: str) -> Any:
    raise CodecError("", f"{name} is not a JSON number")


@typing.overload
def load(data: object, cls: type[T]) -> T: ...
@typing.overload
def load(data: object, cls: Any) -> Any: ...
def load(data: object, cls: Any) -> Any:
    """The core value of type ``cls`` encoded by ``data``; `CodecError` names every bad field."""
    try:
        return converter.structure(data, cls)
    except InvalidInput as error:
        raise CodecError(error.where or "$", error.problem) from None
    except cattrs.BaseValidationError as error:
        messages = []
        for message in cattrs.transform_error(error, path="$", format_exception=_describe_error):
            problem, _, path = message.rpartition(" @ ")
            messages.append(f"{path}: {problem}")
        raise CodecError("", "; ".join(messages)) from None
    except (TypeError, ValueError, KeyError, AttributeError, RecursionError) as error:
        raise CodecError("$", f"cannot decode {describe(data)}: {error}") from None


def _describe_error(error: BaseException, _type: Any) -> str:
    if isinstance(error, InvalidInput):
        return error.problem if not error.where else f"{error.where}: {error.problem}"
    if isinstance(error, KeyError):
        return "required field missing"
    return cattrs.v.format_exception(error, _type)


def dumps(value: object) -> str:
    """Compact JSON text for a core value; NaN, infinities and non-JSON values are refused."""
    data = dump(value)
    try:
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as error:
        raise CodecError("", f"not valid JSON: {error}") from None


@typing.overload
def loads(text: str | bytes, cls: type[T]) -> T: ...
@typing.overload
def loads(text: str | bytes, cls: Any) -> Any: ...
def loads(text: str | bytes, cls: Any) -> Any:
    """The core value of type ``cls`` encoded by JSON ``text``."""
    return load(parse_json(text), cls)


# ── event text: one encoder per kind ──────────────────────────────────────────────────

_INT_LOW, _INT_HIGH = -(2**63), 2**63
_int_text = int.__repr__
_SAFE_INTEGRAL = 2**53  # integral floats below it print as their integer (`json_text`)


def _strings_text(value: Any) -> str:
    if type(value) is not tuple:
        raise NeedsExact
    for item in value:
        if type(item) is not str:
            raise NeedsExact
    return "[" + ",".join([string_text(item) for item in value]) + "]"


def _scalar_text(value: Any) -> str:
    """``null``, an integer or a float as `json_text` writes it; `NeedsExact` otherwise."""
    if value is None:
        return "null"
    kind = type(value)
    if kind is int:
        if _INT_LOW <= value < _INT_HIGH:
            return _int_text(value)
        raise NeedsExact
    if kind is float:
        if value.is_integer() and -_SAFE_INTEGRAL < value < _SAFE_INTEGRAL:
            return _int_text(int(value))
        return json_text(value, 1)
    raise NeedsExact


#: The keys of a budget object (`BudgetState.to_dict`) in the order it writes them.
_BUDGET_ORDER = (
    "total_input_tokens",
    "total_output_tokens",
    "total_cost_usd",
    "iteration_count",
    "tool_call_count",
    "consecutive_error_count",
    "circuit_breaker_tripped",
)


def _budget_text(value: Any) -> str:
    """`json_text` of a JSON value at nesting level 1, a budget object (`BudgetState.to_dict`:
    six counts and a flag) written in one format without its per-key work; any other
    value, or a member of another type, through `json_text`."""
    if type(value) is dict and tuple(value) == _BUDGET_ORDER:
        inputs, outputs, cost, iterations, calls, errors, tripped = value.values()
        if (
            type(inputs) is int
            and type(outputs) is int
            and type(iterations) is int
            and type(calls) is int
            and type(errors) is int
            and (tripped is True or tripped is False)
            and _INT_LOW <= inputs < _INT_HIGH
            and _INT_LOW <= outputs < _INT_HIGH
            and _INT_LOW <= iterations < _INT_HIGH
            and _INT_LOW <= calls < _INT_HIGH
            and _INT_LOW <= errors < _INT_HIGH
        ):
            return (
                f'{{"circuit_breaker_tripped":{"true" if tripped else "false"},'
                f'"consecutive_error_count":{_int_text(errors)},'
                f'"iteration_count":{_int_text(iterations)},'
                f'"tool_call_count":{_int_text(calls)},'
                f'"total_cost_usd":{_scalar_text(cost)},'
                f'"total_input_tokens":{_int_text(inputs)},'
                f'"total_output_tokens":{_int_text(outputs)}}}'
            )
    return json_text(value, 1)


#: The keys of the gate's limits object in the order it writes them.
_LIMITS_ORDER = ("total_tokens", "input_tokens", "output_tokens", "cost_usd")


def _limits_text(value: Any) -> str:
    """`json_text` at nesting level 1, the gate's limits object (four numbers or nulls)
    written in one format; any other value through `json_text`."""
    if type(value) is dict and tuple(value) == _LIMITS_ORDER:
        total, given_in, given_out, cost = value.values()
        return (
            f'{{"cost_usd":{_scalar_text(cost)},'
            f'"input_tokens":{"null" if given_in is None else _scalar_text(given_in)},'
            f'"output_tokens":{"null" if given_out is None else _scalar_text(given_out)},'
            f'"total_tokens":{"null" if total is None else _scalar_text(total)}}}'
        )
    return json_text(value, 1)


#: The text of recent lists of flat records (the gate's layer records): a list of dicts
#: whose every value is a ``str`` or ``True``, keyed by the records' items. Equal keys hold
#: equal strings and ``True`` only (no ``1`` passes for ``True``), so equal keys have the
#: same canonical text. Bounded: the oldest entry goes first.
_RECORDS: dict[tuple[tuple[tuple[Any, Any], ...], ...], str] = {}
_RECORDS_MAX = 1024


def _records_text(value: Any) -> str:
    """`json_text` at nesting level 1, remembered for a list of flat records (above)."""
    if type(value) is not list:
        return json_text(value, 1)
    parts = []
    for record in value:
        if type(record) is not dict:
            return json_text(value, 1)
        items = tuple(record.items())
        for _, item in items:
            if type(item) is not str and item is not True:
                return json_text(value, 1)
        parts.append(items)
    key = tuple(parts)
    text = _RECORDS.get(key)
    if text is None:
        text = json_text(value, 1)
        if len(_RECORDS) >= _RECORDS_MAX:
            evict_oldest(_RECORDS)
        _RECORDS[key] = text
    return text


#: The last UTC datetime written and its text (a datetime is immutable, and UTC's offset
#: never changes, so the same object always has the same text; one gate's events share it).
_LAST_TIME: tuple[datetime | None, str] = (None, "")


def _datetime_json(value: Any) -> str:
    """The JSON string of an aware datetime as `dump` writes it (`NeedsExact` otherwise)."""
    global _LAST_TIME
    last = _LAST_TIME  # read once: another thread may replace it
    if value is last[0]:
        return last[1]
    if type(value) is not datetime or value.tzinfo is None:
        raise NeedsExact
    if value.tzinfo is UTC:
        text = _utc_json(value)
        _LAST_TIME = (value, text)
        return text
    return _datetime_json_exact(value)


def _datetime_json_exact(value: datetime) -> str:
    """`_datetime_json` of an aware datetime from its ``isoformat``: what `dump` writes."""
    text = value.isoformat()
    if text.endswith("+00:00"):
        text = text[:-6] + "Z"
    return string_text(text)


#: The last minute of a UTC datetime written and the text that starts its JSON string:
#: ``"YYYY-MM-DDTHH:MM:`` (the ``isoformat`` of any second of that minute starts with it).
_LAST_MINUTE: tuple[tuple[int, int, int, int, int] | None, str] = (None, "")
#: ``00`` … ``59``: a second as ``isoformat`` writes it.
_SECONDS: tuple[str, ...] = tuple(f"{second:02d}" for second in range(60))


def _utc_json(value: datetime) -> str:
    """`_datetime_json_exact` of a UTC datetime (``tzinfo is UTC``) without ``isoformat``'s
    offset work: its minute's text (kept for the last minute), then the seconds, the
    microseconds when not 0 (six digits), and ``Z`` (property-checked equal)."""
    global _LAST_MINUTE
    minute = (value.year, value.month, value.day, value.hour, value.minute)
    last = _LAST_MINUTE  # read once: another thread may replace it
    if last[0] == minute:
        head = last[1]
    else:
        head = '"' + value.replace(second=0, microsecond=0, tzinfo=None).isoformat()[:-2]
        _LAST_MINUTE = (minute, head)
    micro = value.microsecond
    if micro:
        return f'{head}{_SECONDS[value.second]}.{micro:06d}Z"'
    return f'{head}{_SECONDS[value.second]}Z"'


#: Fields whose JSON value has a known shape, written by their own writer (each falls back
#: to `json_text` for any other value).
_FIELD_WRITERS: dict[tuple[type, str], Callable[[Any], str]] = {
    (events.NodeGated, "budget"): _budget_text,
    (events.NodeGated, "limits"): _limits_text,
    (events.NodeGated, "policies"): _records_text,
}


#: How a field of each declared type is written (``x`` holds the value, ``t`` gets its
#: text; raise `NeedsExact` for anything unexpected): the source lines.
_FIELD_CODE: dict[str, tuple[str, ...]] = {
    "str": ("if type(x) is not str: raise NeedsExact", "t = S(x)"),
    "int": (
        "if type(x) is not int or not _INT_LOW <= x < _INT_HIGH: raise NeedsExact",
        "t = I(x)",
    ),
    "float": (
        "if type(x) is float: t = J(x, 1)",
        "elif type(x) is int and _INT_LOW <= x < _INT_HIGH: t = I(x)",
        "else: raise NeedsExact",
    ),
    "bool": (
        "if x is True: t = 'true'",
        "elif x is False: t = 'false'",
        "else: raise NeedsExact",
    ),
    "datetime": ("t = D(x)",),
    "enum": ("if type(x) is not E_{name}: raise NeedsExact", "t = S(x._value_)"),
    "json": ("t = J(x, 1)",),
    "written": ("t = W_{name}(x)",),
    "strings": ("t = _strings_text(x)",),
    "values": ("if type(x) is not tuple: raise NeedsExact", "t = J(x, 1)"),
}


def _field_kind(hint: Any) -> tuple[str, bool] | None:
    """The `_FIELD_CODE` key of a declared field type and whether it may be ``None``;
    ``None`` for a type the per-kind encoders leave to the generic path."""
    optional = False
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, type(int | None)) and type(None) in args:
        rest = [arg for arg in args if arg is not type(None)]
        if len(rest) != 1:
            return None
        hint, optional = rest[0], True
    if hint is typing.Any:
        return "json", optional
    if hint is bool:
        return "bool", optional
    if hint in (str, int, float, datetime):
        return hint.__name__, optional
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        if not all(isinstance(member.value, str) for member in hint):
            return None
        return "enum", optional
    if typing.get_origin(hint) is tuple and typing.get_args(hint)[1:] == (Ellipsis,):
        item = typing.get_args(hint)[0]
        if item is str:
            return "strings", optional
        if item is typing.Any:
            return "values", optional
    return None


def _kind_encoder(cls: type) -> Callable[[Any], str] | None:
    """The event-text encoder of one kind, or ``None`` if a field's type needs the generic
    path. It writes each member's text (``,"name":value``) in canonical key order and joins
    them once; a field whose default is ``None`` is left out while it is ``None`` (as
    `dump`)."""
    hints = typing.get_type_hints(cls)
    names: dict[str, Any] = {
        "NeedsExact": NeedsExact,
        "datetime": datetime,
        "_datetime_text": _datetime_text,
        "_INT_LOW": _INT_LOW,
        "_INT_HIGH": _INT_HIGH,
        "_strings_text": _strings_text,
        "S": string_text,
        "I": int.__repr__,
        "J": json_text,
        "D": _datetime_json,
    }
    members: list[tuple[str, str | None, bool, bool]] = [("type", None, False, False)]
    for field in attrs.fields(cls):
        if not field.init or not field.name.isidentifier() or not field.name.isascii():
            return None
        if field.name == "type":
            return None
        found = _field_kind(hints[field.name])
        if found is None:
            return None
        kind, optional = found
        writer = _FIELD_WRITERS.get((cls, field.name))
        if writer is not None and kind == "json":
            kind, names[f"W_{field.name}"] = "written", writer
        names[f"E_{field.name}"] = hints[field.name] if kind == "enum" else None
        # Left out while None when its default is None (as `dump` does); otherwise null.
        nullable = optional and kind not in ("json", "written")
        members.append((field.name, kind, field.default is None, nullable))
    members.sort(key=lambda member: member[0])  # ASCII names: canonical order is str order
    source = ["def encode(v):"]
    # The text is one f-string: a member always written has its ``,"name":`` in it, and a
    # member that may be left out or null is a piece holding its whole text (or '').
    template = []  # ASCII names and tags: no brace, quote or backslash to escape
    for index, (name, writes, omit, nullable) in enumerate(members):
        prefix = "," + string_text(name) + ":"
        if writes is None:  # the type tag
            template.append(prefix + string_text(type_tag(cls)))
            continue
        source.append(f"    x = v.{name}")
        if omit:
            source.append(f"    if x is None: p{index} = ''")
        elif nullable:
            source.append(f"    if x is None: p{index} = {prefix + 'null'!r}")
        else:
            source += ["    " + code.format(name=name) for code in _FIELD_CODE[writes]]
            source.append(f"    p{index} = t")
            template.append(prefix + f"{{p{index}}}")
            continue
        source.append("    else:")
        source += ["        " + code.format(name=name) for code in _FIELD_CODE[writes]]
        source.append(f"        p{index} = {prefix!r} + t")
        template.append(f"{{p{index}}}")
    pieces = "".join(template)
    source += [
        f"    text = '{{' + f'{pieces}'[1:] + '}}'",
        "    text.encode('utf-8')",
        "    return text",
    ]
    exec("\n".join(source), names)  # our own source, built from the fields above
    encoder: Callable[[Any], str] = names["encode"]
    return encoder


_KIND_ENCODERS: dict[type, Callable[[Any], str]] = {}
for _kind in typing.get_args(events.EventKind):
    _made = _kind_encoder(_kind)
    if _made is not None:
        _KIND_ENCODERS[_kind] = _made


def event_text(kind: events.EventKind) -> str:
    """The canonical JSON text of an event kind as a log stores it: exactly
    ``canonical_text(dump(kind))``, through the kind's own encoder when it can."""
    encoder = _KIND_ENCODERS.get(type(kind))
    if encoder is not None:
        try:
            return encoder(kind)
        except (NeedsExact, ValueError, TypeError, UnicodeEncodeError, RecursionError):
            pass
    return canonical_text(dump(kind))
