"""Windowed rate limits: per tenant and per tool (or model) pattern, counts and token / USD
sums over a fixed or sliding window (docs/semantics.md, "Windowed limits").

* A `RateLimit` is one entry of a tenant policy's ``rate_limits`` list: a name, an optional
  ``tool`` or ``model`` glob (absent: every node that names a tool or a model), a window in
  whole seconds, a mode (``fixed``: epoch-aligned buckets; ``sliding``: the last
  ``window`` seconds) and at least one of ``max_calls``, ``max_tokens``, ``max_usd``.
* A `LimitCharge` is what one admitted attempt costs a limit: one call, its tokens and its
  cost in integer nano-dollars (`charter.core.budget.nanos`), at the time it was admitted.
  Charges are recorded as ``limit_charged`` events and kept per tenant and limit by the
  store, written in the same transaction as the events (`ChargeLimits`).
* `window_usage` sums the charges in a limit's window at ``now`` — exact integers — and,
  when a maximum is reached, says when the window frees up. The gate refuses a node when
  any matching limit is reached (``used >= max``, as a budget before a node runs).

Nothing here reads a clock: ``now`` is always passed in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final

import attrs

from charter.core import _check
from charter.core.budget import MAX_COST_USD, Usage, nanos
from charter.core.errors import InvalidInput, PolicyError, child, describe
from charter.core.events import JsonValue, LimitCharged, NodeGated, RateLimitExceeded
from charter.core.glob import glob_match

if TYPE_CHECKING:
    from charter.core.policy import EvaluationContext

__all__ = [
    "FIXED",
    "MODES",
    "SLIDING",
    "ChargeLimits",
    "LimitCharge",
    "RateLimit",
    "WindowUsage",
    "charge_event",
    "charge_writes",
    "epoch_us",
    "expected_charge",
    "from_epoch_us",
    "limit_refusal",
    "matching_limits",
    "parse_rate_limits",
    "usage_from_record",
    "window_since",
    "window_text",
    "window_usage",
]

FIXED: Final = "fixed"
SLIDING: Final = "sliding"
MODES: Final = (FIXED, SLIDING)
#: The longest window: a year and a day.
MAX_WINDOW_SECS: Final = 366 * 86_400
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_US: Final = timedelta(microseconds=1)
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_WINDOW: Final = re.compile(r"([1-9][0-9]{0,8})([smhd])")
_KEYS: Final = ("name", "tool", "model", "window", "mode", "max_calls", "max_tokens", "max_usd")


def epoch_us(moment: datetime) -> int:
    """Microseconds since the Unix epoch (exact; how stores keep a charge's time)."""
    return (moment - _EPOCH) // _US


def from_epoch_us(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def window_text(secs: int) -> str:
    """``3600`` → ``1h``; the largest unit that divides the window."""
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if secs % size == 0:
            return f"{secs // size}{unit}"
    return f"{secs}s"


def _name(value: object) -> str:
    text = _check.text(value, "name", PolicyError)
    if not text.strip():
        raise PolicyError("name", "expected a non-empty name")
    return text


def _pattern(value: object, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise PolicyError(where, f"expected a glob pattern, got {describe(value)}")
    try:
        (text,) = _check.patterns([value], where, PolicyError)
    except PolicyError as error:
        raise PolicyError(where, error.problem) from None
    if not text:
        raise PolicyError(where, "expected a non-empty glob pattern")
    return text


def _tool(value: object) -> str | None:
    return _pattern(value, "tool")


def _model(value: object) -> str | None:
    return _pattern(value, "model")


def _window(value: object) -> int:
    if isinstance(value, str):
        found = _WINDOW.fullmatch(value)
        if found is None:
            raise PolicyError(
                "window", f"expected seconds or a duration such as '90s', '30m', '1h', '1d', "
                f"got {value!r}"
            )  # fmt: skip
        secs = int(found[1]) * _UNITS[found[2]]
    elif isinstance(value, int) and not isinstance(value, bool):
        secs = value
    else:
        raise PolicyError(
            "window", f"expected seconds or a duration such as '1h', got {describe(value)}"
        )
    if not 0 < secs <= MAX_WINDOW_SECS:
        raise PolicyError("window", f"expected 1 second to 366 days, got {secs} seconds")
    return secs


def _mode(value: object) -> str:
    if value not in MODES:
        raise PolicyError("mode", f"expected fixed or sliding, got {describe(value)}")
    return str(value)


def _max_calls(value: object) -> int | None:
    return _check.optional_count(value, "max_calls", PolicyError)


def _max_tokens(value: object) -> int | None:
    return _check.optional_count(value, "max_tokens", PolicyError)


def _max_usd(value: object) -> float | None:
    usd = _check.optional_amount(value, "max_usd", PolicyError)
    if usd is not None and usd > MAX_COST_USD:
        raise PolicyError("max_usd", f"expected at most {MAX_COST_USD:.0f} USD, got {usd!r}")
    return usd


@attrs.frozen
class RateLimit:
    """One windowed limit of a tenant (see the module doc). Its fields are the policy
    file's keys, checked and in canonical form (``window`` in seconds)."""

    name: str = attrs.field(converter=_name)
    window: int = attrs.field(converter=_window)
    mode: str = attrs.field(default=SLIDING, converter=_mode)
    tool: str | None = attrs.field(default=None, converter=_tool)
    model: str | None = attrs.field(default=None, converter=_model)
    max_calls: int | None = attrs.field(default=None, converter=_max_calls)
    max_tokens: int | None = attrs.field(default=None, converter=_max_tokens)
    max_usd: float | None = attrs.field(default=None, converter=_max_usd)
    _max_nanos: int | None = attrs.field(init=False, eq=False, repr=False, hash=False)

    def __attrs_post_init__(self) -> None:
        if self.tool is not None and self.model is not None:
            raise PolicyError("model", "a limit names a tool pattern or a model pattern, not both")
        if self.max_calls is None and self.max_tokens is None and self.max_usd is None:
            raise PolicyError(
                "max_calls", "expected at least one of max_calls, max_tokens, max_usd"
            )
        object.__setattr__(
            self, "_max_nanos", None if self.max_usd is None else nanos(self.max_usd)
        )

    @property
    def max_usd_nanos(self) -> int | None:
        return self._max_nanos

    @property
    def window_secs(self) -> int:
        return self.window

    def to_json(self) -> dict[str, JsonValue]:
        """The canonical shape (what the policy set's digest covers)."""
        shape: dict[str, JsonValue] = {
            "name": self.name,
            "window": self.window,
            "mode": self.mode,
        }
        for key in ("tool", "model", "max_calls", "max_tokens", "max_usd"):
            value = getattr(self, key)
            if value is not None:
                shape[key] = value
        return shape

    def matches(self, ctx: EvaluationContext) -> bool:
        """Whether the limit counts ``ctx``'s node: its tool matches ``tool``, a model name
        of it matches ``model``; with neither, any node that names a tool or a model."""
        if self.tool is not None:
            return ctx.tool_name is not None and glob_match(self.tool, ctx.tool_name)
        candidates = ctx.model_candidates()
        if self.model is not None:
            return any(glob_match(self.model, name) for name in candidates)
        return ctx.tool_name is not None or bool(candidates)

    @classmethod
    def from_dict(cls, data: object, where: str) -> RateLimit:
        if not isinstance(data, Mapping):
            raise PolicyError(
                where, f"expected a mapping (name, window, max_…), got {describe(data)}"
            )
        for key in data:
            if key not in _KEYS:
                raise PolicyError(
                    child(where, str(key)),
                    f"unknown limit key (expected one of: {', '.join(_KEYS)})",
                )
        for key in ("name", "window"):
            if key not in data:
                raise PolicyError(child(where, key), "required")
        try:
            return cls(**{str(key): value for key, value in data.items()})
        except InvalidInput as error:
            raise error.within(where) from None


def parse_rate_limits(value: object, where: str = "rate_limits") -> tuple[RateLimit, ...] | None:
    """A tenant's ``rate_limits`` list (mappings or `RateLimit`\\ s), names unique; an empty
    or absent list is ``None`` (so a set without limits digests as before the key)."""
    if value is None:
        return None
    if not isinstance(value, list | tuple):
        raise PolicyError(where, f"expected a list of limits, got {describe(value)}")
    limits: list[RateLimit] = []
    seen: set[str] = set()
    for index, item in enumerate(value):
        at = f"{where}[{index}]"
        limit = item if isinstance(item, RateLimit) else RateLimit.from_dict(item, at)
        if limit.name in seen:
            raise PolicyError(child(at, "name"), f"duplicate limit name {limit.name!r}")
        seen.add(limit.name)
        limits.append(limit)
    return tuple(limits) or None


def matching_limits(
    limits: Iterable[RateLimit] | None, ctx: EvaluationContext
) -> tuple[RateLimit, ...]:
    """The limits that count ``ctx``'s node, in policy order."""
    return tuple(limit for limit in limits or () if limit.matches(ctx))


# ── usage in a window ──────────────────────────────────────────────────────────────────


@attrs.frozen
class LimitCharge:
    """One charge of a limit: an admitted attempt's call, tokens and nano-dollars, at the
    time it was admitted."""

    at: datetime
    calls: int = 1
    tokens: int = 0
    usd_nanos: int = 0


def _fixed_bounds(limit: RateLimit, now: datetime) -> tuple[int, int]:
    size = limit.window * 1_000_000
    now_us = epoch_us(now)
    start = now_us - now_us % size
    return start, start + size


def window_since(limit: RateLimit, now: datetime) -> datetime:
    """The earliest time a charge in the window at ``now`` can have: what a store reads from
    (``at >= since``; `window_usage` applies the exact bounds)."""
    if limit.mode == FIXED:
        return from_epoch_us(_fixed_bounds(limit, now)[0])
    return now - timedelta(seconds=limit.window)


def _in_window(limit: RateLimit, now: datetime) -> tuple[int, int | None]:
    """``(low, high)`` in epoch µs: a charge is in the window when ``low < at`` (sliding) /
    ``low <= at < high`` (fixed)."""
    if limit.mode == FIXED:
        return _fixed_bounds(limit, now)
    return epoch_us(now) - limit.window * 1_000_000, None


def _counted(limit: RateLimit, charges: Iterable[LimitCharge], now: datetime) -> list[LimitCharge]:
    low, high = _in_window(limit, now)
    if high is None:  # sliding: every charge after now - window (later ones too: fail closed)
        return [c for c in charges if epoch_us(c.at) > low]
    return [c for c in charges if low <= epoch_us(c.at) < high]


@attrs.frozen(kw_only=True)
class WindowUsage:
    """A limit's usage in its window at ``now`` and, when a maximum is reached, when the
    window frees up (``frees_at``; ``None`` when nothing is reached, or when a maximum of 0
    admits nothing ever)."""

    limit: RateLimit
    calls: int = 0
    tokens: int = 0
    usd_nanos: int = 0
    frees_at: datetime | None = None

    def __attrs_post_init__(self) -> None:
        if type(self.limit) is not RateLimit:
            raise InvalidInput("limit", f"expected a RateLimit, got {describe(self.limit)}")
        for name in ("calls", "tokens", "usd_nanos"):
            _check.count(getattr(self, name), name)
        frees: object = self.frees_at
        if frees is not None and (not isinstance(frees, datetime) or frees.tzinfo is None):
            raise InvalidInput("frees_at", "expected a timezone-aware datetime")

    def reached(self) -> list[tuple[str, int, int]]:
        """Each maximum reached: ``(key, max, used)`` (``used >= max``)."""
        limit, out = self.limit, []
        if limit.max_calls is not None and self.calls >= limit.max_calls:
            out.append(("max_calls", limit.max_calls, self.calls))
        if limit.max_tokens is not None and self.tokens >= limit.max_tokens:
            out.append(("max_tokens", limit.max_tokens, self.tokens))
        nano_max = limit.max_usd_nanos
        if nano_max is not None and self.usd_nanos >= nano_max:
            out.append(("max_usd", nano_max, self.usd_nanos))
        return out

    def record(self) -> dict[str, JsonValue]:
        """What ``node_gated.rate_limits`` records of it (replay rebuilds it from this)."""
        out: dict[str, JsonValue] = {
            **self.limit.to_json(),
            "calls": self.calls,
            "tokens": self.tokens,
            "usd_nanos": self.usd_nanos,
        }
        if self.frees_at is not None:
            out["frees_at"] = self.frees_at.isoformat()
        return out

    @classmethod
    def from_record(cls, limit: RateLimit, record: object) -> WindowUsage:
        """The usage a recorded decision saw for ``limit`` (zero when it recorded none)."""
        if not isinstance(record, Mapping):
            return cls(limit=limit)
        frees = record.get("frees_at")
        return cls(
            limit=limit,
            calls=_int(record.get("calls")),
            tokens=_int(record.get("tokens")),
            usd_nanos=_int(record.get("usd_nanos")),
            frees_at=datetime.fromisoformat(frees) if isinstance(frees, str) else None,
        )


def _int(value: object) -> int:
    return value if type(value) is int and value >= 0 else 0


def _dimension(charge: LimitCharge, key: str) -> int:
    if key == "max_calls":
        return charge.calls
    if key == "max_tokens":
        return charge.tokens
    return charge.usd_nanos


def charges_after(charges: Iterable[LimitCharge], at_us: int) -> list[LimitCharge]:
    """The charges made at or after ``at_us`` (epoch µs)."""
    return [c for c in charges if epoch_us(c.at) >= at_us]


def window_usage(limit: RateLimit, charges: Iterable[LimitCharge], now: datetime) -> WindowUsage:
    """The exact usage of ``limit`` in its window at ``now`` from its ``charges`` (any order;
    charges outside the window are ignored), and when it frees up if a maximum is reached:
    the window's end (fixed), or the moment enough of the oldest charges have left it
    (sliding: a charge made at ``t`` leaves at ``t + window``)."""
    counted_all = list(charges)
    counted = sorted(_counted(limit, counted_all, now), key=lambda c: c.at)
    usage = WindowUsage(
        limit=limit,
        calls=sum(c.calls for c in counted),
        tokens=sum(c.tokens for c in counted),
        usd_nanos=sum(c.usd_nanos for c in counted),
    )
    reached = usage.reached()
    if not reached:
        return usage
    if any(maximum == 0 for _, maximum, _ in reached):
        return usage  # a maximum of 0 admits nothing, ever
    if limit.mode == FIXED:
        # The window's end, unless charges stamped later (a writer whose clock is ahead)
        # already fill the next window too: then the first window end after them.
        end = _fixed_bounds(limit, now)[1]
        while window_usage(limit, charges_after(counted_all, end), from_epoch_us(end)).reached():
            end += limit.window * 1_000_000
        return attrs.evolve(usage, frees_at=from_epoch_us(end))
    window = timedelta(seconds=limit.window)
    frees = now
    for key, maximum, used in reached:
        left = used
        for charge in counted:
            left -= _dimension(charge, key)
            if left < maximum:
                frees = max(frees, charge.at + window)
                break
    return attrs.evolve(usage, frees_at=frees)


def limit_refusal(
    usages: Sequence[WindowUsage], node_id: str
) -> tuple[str, RateLimitExceeded] | None:
    """The first reached limit as a refusal: its reason (naming the limit, its window and
    when it frees up) and its ``rate_limit_exceeded`` event; ``None`` when none is reached."""
    for usage in usages:
        reached = usage.reached()
        if not reached:
            continue
        limit = usage.limit
        key, maximum, used = reached[0]
        shown = _amount(key, maximum), _amount(key, used)
        window = f"{limit.mode} {window_text(limit.window)} window"
        if usage.frees_at is None:
            when = f"{key} is 0: it admits nothing"
        else:
            when = f"frees up at {usage.frees_at.isoformat()}"
        reason = (
            f"rate limit '{limit.name}' reached: {shown[1]} used of {key} {shown[0]} in the "
            f"{window}; {when}"
        )
        event = RateLimitExceeded(
            node_id=node_id,
            limit=limit.name,
            window_secs=limit.window,
            mode=limit.mode,
            dimension=key,
            maximum=maximum,
            used=used,
            frees_at=usage.frees_at,
        )
        return reason, event
    return None


def _amount(key: str, value: int) -> str:
    if key != "max_usd":
        return str(value)
    whole, frac = divmod(value, 1_000_000_000)
    return f"{whole}.{frac:09d}".rstrip("0").rstrip(".") + " USD"


# ── charging ───────────────────────────────────────────────────────────────────────────


def charge_event(
    node_id: str,
    attempt: int,
    usages: Sequence[WindowUsage] | None,
    usage: Usage | None,
    at: datetime,
) -> LimitCharged | None:
    """The ``limit_charged`` event of an admitted attempt that ran: one call, its tokens
    (input + output) and cost, charged to every limit its decision matched (``usages``),
    at the decision's time ``at``; ``None`` when no limit matched."""
    if not usages:
        return None
    spent = usage if usage is not None else Usage()
    return LimitCharged(
        node_id=node_id,
        attempt=attempt,
        at=at,
        limits=[{"name": u.limit.name, "window": u.limit.window} for u in usages],
        calls=1,
        tokens=spent.input_tokens + spent.output_tokens,
        usd_nanos=nanos(spent.cost_usd),
    )


@attrs.frozen(kw_only=True)
class ChargeLimits:
    """A write of the commit path: add one row per limit to the tenant's charges (and drop
    that limit's rows older than its window before ``at``, which no window can count any
    more). Insert-only, so concurrent writers never lose each other's charges."""

    tenant_id: str
    execution_id: str
    names: tuple[tuple[str, int], ...]  # (limit name, window seconds)
    at_us: int
    calls: int
    tokens: int
    usd_nanos: int


def charge_writes(tenant_id: str, execution_id: str, kind: LimitCharged) -> ChargeLimits:
    """The store write a ``limit_charged`` event implies (`charter.core.commit.LogDraft`)."""
    names: list[tuple[str, int]] = []
    for index, entry in enumerate(kind.limits if isinstance(kind.limits, list) else []):
        where = f"limits[{index}]"
        if not isinstance(entry, dict):
            raise InvalidInput(where, f"expected {{name, window}}, got {describe(entry)}")
        name = _check.text(entry.get("name"), child(where, "name"))
        window = _check.count(entry.get("window"), child(where, "window"))
        names.append((name, window))
    if not names:
        raise InvalidInput("limits", "a limit_charged event names at least one limit")
    for field in ("calls", "tokens", "usd_nanos"):
        _check.count(getattr(kind, field), field)
    return ChargeLimits(
        tenant_id=tenant_id,
        execution_id=execution_id,
        names=tuple(names),
        at_us=epoch_us(kind.at),
        calls=kind.calls,
        tokens=kind.tokens,
        usd_nanos=kind.usd_nanos,
    )


def usage_from_record(limits: Sequence[RateLimit], record: object) -> tuple[WindowUsage, ...]:
    """The usage a recorded decision (``node_gated.rate_limits``) saw for each of ``limits``
    (the tenant's limits that match the node), by name: what a replay decides again from.
    A limit the record does not name is taken as unused, so the recomputed record differs."""
    seen = {
        entry.get("name"): entry
        for entry in (record if isinstance(record, list) else [])
        if isinstance(entry, Mapping)
    }
    return tuple(WindowUsage.from_record(limit, seen.get(limit.name)) for limit in limits)


def expected_charge(
    gated: NodeGated, usage: Usage | None, node_id: str, attempt: int
) -> LimitCharged | None:
    """The ``limit_charged`` event a recorded run decision owes once its attempt ran with
    ``usage``: what replay recomputes each recorded charge from (``None``: the decision
    matched no limit)."""
    entries = gated.rate_limits if isinstance(gated.rate_limits, list) else []
    if not entries or gated.decided_at is None:
        return None
    spent = usage if usage is not None else Usage()
    return LimitCharged(
        node_id=node_id,
        attempt=attempt,
        at=gated.decided_at,
        limits=[
            {"name": entry.get("name"), "window": entry.get("window")}
            for entry in entries
            if isinstance(entry, Mapping)
        ],
        calls=1,
        tokens=spent.input_tokens + spent.output_tokens,
        usd_nanos=nanos(spent.cost_usd),
    )
