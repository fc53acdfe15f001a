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
"""

from __future__ import annotations

import json
import typing
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from charter.core import approvals, autonomy, events, policy
from charter.core.autonomy import EscalationTarget, LimitValue, parse_escalation_target
from charter.core.errors import InvalidInput, describe
from charter.core.events import EVENT_KINDS

__all__ = ["CodecError", "converter", "dump", "dumps", "load", "loads"]

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
    return value


# cattrs' default primitive hooks coerce (``str(1)``, ``int("3")``, ``int(True)``); a codec
# for audited records must not, so every primitive is checked exactly.
def _strict_str(value: object, _: type) -> str:
    if not isinstance(value, str):
        raise CodecError("", f"expected a string, got {describe(value)}")
    return value


def _strict_int(value: object, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CodecError("", f"expected an integer, got {describe(value)}")
    return value


def _strict_float(value: object, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CodecError("", f"expected a number, got {describe(value)}")
    return float(value)


def _number(value: object, _: type) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CodecError("", f"expected a number, got {describe(value)}")
    return value


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
    return conv


_TAGGED_UNIONS: tuple[Any, ...] = (
    events.EventKind,
    policy.PolicyDecision,
    autonomy.AutonomyDecision,
    approvals.ApprovalStatus,
)


def _tag_union(conv: cattrs.Converter, union: Any) -> None:
    members: dict[str, type] = {_snake(cls): cls for cls in typing.get_args(union)}
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

# Tags must agree with the core's own table (`charter.core.EVENT_KINDS`).
assert all(_snake(cls) == tag for tag, cls in EVENT_KINDS.items())


def dump(value: object) -> Any:
    """Plain JSON data for a core value (see the module doc for the shape)."""
    try:
        return converter.unstructure(value)
    except InvalidInput:
        raise
    except (TypeError, ValueError) as error:
        raise CodecError("", f"cannot encode {describe(value)}: {error}") from None


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
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise CodecError("$", f"cannot decode {describe(data)}: {error}") from None


def _describe_error(error: BaseException, _type: Any) -> str:
    if isinstance(error, InvalidInput):
        return error.problem if not error.where else f"{error.where}: {error.problem}"
    if isinstance(error, KeyError):
        return "required field missing"
    return cattrs.v.format_exception(error, _type)


def dumps(value: object) -> str:
    """Compact JSON text for a core value; NaN and infinities are refused."""
    try:
        return json.dumps(dump(value), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError as error:
        raise CodecError("", f"not valid JSON: {error}") from None


@typing.overload
def loads(text: str | bytes, cls: type[T]) -> T: ...
@typing.overload
def loads(text: str | bytes, cls: Any) -> Any: ...
def loads(text: str | bytes, cls: Any) -> Any:
    """The core value of type ``cls`` encoded by JSON ``text``."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise CodecError("", f"not valid JSON: {error}") from None
    return load(data, cls)
