"""Token and USD budgets: `BudgetState`, `Usage`, `BudgetLimits` and the two checks.

`BudgetState` has upstream's seven fields and snapshot keys (stored under ``"__budget"``).
Differences, each deliberate (docs/semantics.md, "Budgets"):

* Values are validated: counts are non-negative integers, amounts finite and non-negative.
  NaN, infinities, negatives, bools and strings raise `BudgetError`; a malformed
  ``"__budget"`` raises instead of silently becoming an empty (unlimited) budget.
* Cost is kept on a grid of 1e-9 USD and summed as an integer number of nano-dollars, so
  accumulation is exact, commutative and associative: the total never depends on the order
  in which parallel nodes commit. Amounts and totals up to `MAX_COST_USD` (about 4.5 million
  USD per execution) are exact, in memory and through JSON; larger ones are refused.
* Two checks: before a node runs (``>=``: a spent budget refuses to start anything, so a zero
  limit refuses every node) and after it ran (``>``), each naming the dimension, the limit
  and the value that tripped.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Final

import attrs

from charter.core import _check
from charter.core.errors import BudgetError, describe
from charter.core.events import Event, UsageRecorded

__all__ = [
    "BUDGET_KEY",
    "MAX_COST_USD",
    "BudgetDimension",
    "BudgetLimits",
    "BudgetPhase",
    "BudgetState",
    "BudgetTrip",
    "Usage",
    "budget_after",
    "check_after",
    "check_before",
    "nanos",
]

#: The key of the budget object inside a snapshot's state (upstream's).
BUDGET_KEY: Final = "__budget"

_NANOS_PER_USD: Final = 1_000_000_000
#: The most nano-dollars an amount or a total may hold. Below 2**52 the float USD value
#: ``nanos / 1e9`` (correctly rounded) converts back to the same integer exactly (see
#: `nanos`), so totals, their JSON form and every sum of them stay exact.
_MAX_NANOS: Final = 2**52
#: The largest USD amount (and total) a budget keeps exactly: about 4.5 million USD.
MAX_COST_USD: Final = _MAX_NANOS / _NANOS_PER_USD


def nanos(usd: float) -> int:
    """The nearest whole number of 1e-9 USD to ``usd``, computed exactly (no float error)."""
    numerator, denominator = float(usd).as_integer_ratio()
    scaled = numerator * _NANOS_PER_USD
    return (2 * scaled + denominator) // (2 * denominator)  # round half up, exact


def _to_nanos(value: object, where: str) -> int:
    usd = _check.amount(value, where, BudgetError)
    if usd > MAX_COST_USD:
        raise BudgetError(where, f"expected at most {MAX_COST_USD:.0f} USD, got {usd!r}")
    return nanos(usd)


def _from_nanos(nanos: int) -> float:
    return nanos / _NANOS_PER_USD


def _usd(where: str, value: object) -> float:
    return _from_nanos(_to_nanos(value, where))


# attrs converters must be named functions for mypy to type `__init__`; one per field.
def _total_input_tokens(value: int) -> int:
    return _check.count(value, "total_input_tokens", BudgetError)


def _total_output_tokens(value: int) -> int:
    return _check.count(value, "total_output_tokens", BudgetError)


def _total_cost_usd(value: float) -> float:
    return _usd("total_cost_usd", value)


def _iteration_count(value: int) -> int:
    return _check.count(value, "iteration_count", BudgetError)


def _tool_call_count(value: int) -> int:
    return _check.count(value, "tool_call_count", BudgetError)


def _consecutive_error_count(value: int) -> int:
    return _check.count(value, "consecutive_error_count", BudgetError)


def _tripped(value: bool) -> bool:
    if not isinstance(value, bool):
        raise BudgetError("circuit_breaker_tripped", f"expected a bool, got {describe(value)}")
    return value


def _sum(where: str, left: int, right: int) -> int:
    return _check.count(left + right, where, BudgetError)


def _input_tokens(value: int) -> int:
    return _check.count(value, "input_tokens", BudgetError)


def _output_tokens(value: int) -> int:
    return _check.count(value, "output_tokens", BudgetError)


def _cost_usd(value: float) -> float:
    return _usd("cost_usd", value)


def _tool_calls(value: int) -> int:
    return _check.count(value, "tool_calls", BudgetError)


def _iterations(value: int) -> int:
    return _check.count(value, "iterations", BudgetError)


@attrs.frozen(kw_only=True)
class Usage:
    """What one node consumed, as reported by its executor and settled by the core."""

    input_tokens: int = attrs.field(default=0, converter=_input_tokens)
    output_tokens: int = attrs.field(default=0, converter=_output_tokens)
    cost_usd: float = attrs.field(default=0.0, converter=_cost_usd)
    tool_calls: int = attrs.field(default=0, converter=_tool_calls)
    iterations: int = attrs.field(default=0, converter=_iterations)


@attrs.frozen(kw_only=True)
class BudgetState:
    """Running totals of one execution (upstream's seven fields; immutable)."""

    total_input_tokens: int = attrs.field(default=0, converter=_total_input_tokens)
    total_output_tokens: int = attrs.field(default=0, converter=_total_output_tokens)
    total_cost_usd: float = attrs.field(default=0.0, converter=_total_cost_usd)
    iteration_count: int = attrs.field(default=0, converter=_iteration_count)
    tool_call_count: int = attrs.field(default=0, converter=_tool_call_count)
    consecutive_error_count: int = attrs.field(default=0, converter=_consecutive_error_count)
    circuit_breaker_tripped: bool = attrs.field(default=False, converter=_tripped)

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.total_input_tokens + self.total_output_tokens

    @property
    def cost_nanos(self) -> int:
        """The total cost as an exact integer number of 1e-9 USD."""
        return nanos(self.total_cost_usd)

    def accumulate(
        self,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cost_usd: float | None = None,
    ) -> BudgetState:
        """A new state with the given usage added (``None`` counts as zero)."""
        add_in = 0 if input_tokens is None else _input_tokens(input_tokens)
        add_out = 0 if output_tokens is None else _output_tokens(output_tokens)
        add_cost = 0 if cost_usd is None else _to_nanos(cost_usd, "cost_usd")
        return _state(
            _sum("total_input_tokens", self.total_input_tokens, add_in),
            _sum("total_output_tokens", self.total_output_tokens, add_out),
            _total_cost_usd(_from_nanos(self._cost_sum(add_cost))),
            self.iteration_count,
            self.tool_call_count,
            self.consecutive_error_count,
            self.circuit_breaker_tripped,
        )

    def _cost_sum(self, add_nanos: int) -> int:
        total = self.cost_nanos + add_nanos
        if total > _MAX_NANOS:
            raise BudgetError("total_cost_usd", f"total exceeds {MAX_COST_USD:.0f} USD")
        return total

    def record_success(self) -> BudgetState:
        """A success resets the consecutive-error counter."""
        if self.consecutive_error_count == 0:
            return self  # immutable: the reset state is this one
        return self._with_errors(0)

    def record_error(self) -> BudgetState:
        """An error extends the run of consecutive errors."""
        return self._with_errors(_consecutive_error_count(self.consecutive_error_count + 1))

    def _with_errors(self, errors: int) -> BudgetState:
        return _state(
            self.total_input_tokens,
            self.total_output_tokens,
            self.total_cost_usd,
            self.iteration_count,
            self.tool_call_count,
            errors,
            self.circuit_breaker_tripped,
        )

    def apply(self, usage: Usage) -> BudgetState:
        """A new state with a node's whole usage added (tokens, cost, tool calls, iterations).
        ``usage`` was checked when it was built; each sum is checked here, once (tokens and
        cost first, then tool calls, then iterations: the order a failing sum is named in)."""
        input_tokens = _sum("total_input_tokens", self.total_input_tokens, usage.input_tokens)
        output_tokens = _sum("total_output_tokens", self.total_output_tokens, usage.output_tokens)
        cost = _total_cost_usd(_from_nanos(self._cost_sum(_to_nanos(usage.cost_usd, "cost_usd"))))
        tool_calls = _sum("tool_call_count", self.tool_call_count, usage.tool_calls)
        return _state(
            input_tokens,
            output_tokens,
            cost,
            _sum("iteration_count", self.iteration_count, usage.iterations),
            tool_calls,
            self.consecutive_error_count,
            self.circuit_breaker_tripped,
        )

    # ── snapshot round trip (upstream keys) ──

    def to_dict(self) -> dict[str, int | float | bool]:
        """Upstream's JSON object, every key present."""
        return {
            "total_input_tokens": self.total_input_tokens,
            "total_output_tokens": self.total_output_tokens,
            "total_cost_usd": self.total_cost_usd,
            "iteration_count": self.iteration_count,
            "tool_call_count": self.tool_call_count,
            "consecutive_error_count": self.consecutive_error_count,
            "circuit_breaker_tripped": self.circuit_breaker_tripped,
        }

    @classmethod
    def from_dict(cls, data: object, where: str = BUDGET_KEY) -> BudgetState:
        """Parse upstream's JSON object strictly: every key present with the right type.
        Anything else is a `BudgetError` naming the key (upstream silently used zero)."""
        if not isinstance(data, Mapping):
            raise BudgetError(where, f"expected a budget object, got {describe(data)}")
        fields = tuple(f.name for f in attrs.fields(cls))
        for key in fields:
            if key not in data:
                raise BudgetError(f"{where}.{key}", "missing budget field")
        for key in data:
            if key not in fields:
                raise BudgetError(f"{where}.{key}", "unknown budget field")
        try:
            return cls(**{key: data[key] for key in fields})
        except BudgetError as error:
            raise error.within(where) from None

    @classmethod
    def from_snapshot_state(cls, state: Mapping[str, object]) -> BudgetState:
        """The budget inside a snapshot's state; an empty budget when there is none yet."""
        if not isinstance(state, Mapping):
            raise BudgetError("state", f"expected a state object, got {describe(state)}")
        if BUDGET_KEY not in state:
            return cls()
        return cls.from_dict(state[BUDGET_KEY])

    def patch_into_snapshot_state(self, state: Mapping[str, object]) -> dict[str, object]:
        """A copy of ``state`` with this budget under ``"__budget"``; other keys kept."""
        if not isinstance(state, Mapping):
            raise BudgetError("state", f"expected a state object, got {describe(state)}")
        patched = dict(state)
        patched[BUDGET_KEY] = self.to_dict()
        return patched


_SETTERS = tuple(BudgetState.__dict__[f.name].__set__ for f in attrs.fields(BudgetState))


def _state(
    input_tokens: int,
    output_tokens: int,
    cost_usd: float,
    iterations: int,
    tool_calls: int,
    errors: int,
    tripped: bool,
) -> BudgetState:
    """A `BudgetState` from values already checked (and converted) by the caller, its slots
    set directly: what the attrs constructor would build, without checking them again.
    Only the methods above call it, each with sums `_sum` checked and a cost the field's
    own converter made."""
    state = object.__new__(BudgetState)
    for setter, value in zip(
        _SETTERS,
        (input_tokens, output_tokens, cost_usd, iterations, tool_calls, errors, tripped),
        strict=True,
    ):
        setter(state, value)
    return state


# ── limits and checks ──────────────────────────────────────────────────────────────────


class BudgetDimension(enum.Enum):
    """What a budget limits; values are upstream's ``kind`` strings (``cost_usd`` for cost)."""

    TOTAL_TOKENS = "total_tokens"
    INPUT_TOKENS = "input_tokens"
    OUTPUT_TOKENS = "output_tokens"
    COST_USD = "cost_usd"


class BudgetPhase(enum.Enum):
    """When a check ran: before the node (``>=``) or after it (``>``)."""

    BEFORE = "before"
    AFTER = "after"


def _limit_total(value: int | None) -> int | None:
    return _check.optional_count(value, "total_tokens", BudgetError)


def _limit_input(value: int | None) -> int | None:
    return _check.optional_count(value, "input_tokens", BudgetError)


def _limit_output(value: int | None) -> int | None:
    return _check.optional_count(value, "output_tokens", BudgetError)


def _limit_cost(value: float | None) -> float | None:
    return None if value is None else _usd("cost_usd", value)


@attrs.frozen(kw_only=True)
class BudgetLimits:
    """A workflow's limits: upstream's ``token_budget`` fields plus ``cost_budget_usd``."""

    total_tokens: int | None = attrs.field(default=None, converter=_limit_total)
    input_tokens: int | None = attrs.field(default=None, converter=_limit_input)
    output_tokens: int | None = attrs.field(default=None, converter=_limit_output)
    cost_usd: float | None = attrs.field(default=None, converter=_limit_cost)

    @classmethod
    def from_workflow(
        cls, token_budget: object = None, cost_budget_usd: object = None, where: str = ""
    ) -> BudgetLimits:
        """Limits from upstream's IR keys ``token_budget`` (``{input_tokens, output_tokens,
        total_tokens}``, each optional) and ``cost_budget_usd``."""
        prefix = f"{where}." if where else ""
        tokens: Mapping[str, object] = {}
        if token_budget is not None:
            if not isinstance(token_budget, Mapping):
                raise BudgetError(
                    f"{prefix}token_budget", f"expected a mapping, got {describe(token_budget)}"
                )
            for key in token_budget:
                if key not in ("input_tokens", "output_tokens", "total_tokens"):
                    raise BudgetError(f"{prefix}token_budget.{key}", "unknown token budget key")
            tokens = token_budget
        try:
            return cls(
                total_tokens=_check.optional_count(
                    tokens.get("total_tokens"), "token_budget.total_tokens", BudgetError
                ),
                input_tokens=_check.optional_count(
                    tokens.get("input_tokens"), "token_budget.input_tokens", BudgetError
                ),
                output_tokens=_check.optional_count(
                    tokens.get("output_tokens"), "token_budget.output_tokens", BudgetError
                ),
                cost_usd=(
                    None if cost_budget_usd is None else _usd("cost_budget_usd", cost_budget_usd)
                ),
            )
        except BudgetError as error:
            raise error.within(where) from None


@attrs.frozen(kw_only=True)
class BudgetTrip:
    """A budget check that failed: which dimension, its limit, the value seen, and when."""

    dimension: BudgetDimension
    limit: int | float
    value: int | float
    phase: BudgetPhase

    @property
    def reason(self) -> str:
        """Upstream's message shape, ``>=`` before a node and ``>`` after it."""
        op = ">=" if self.phase is BudgetPhase.BEFORE else ">"
        verb = "exhausted" if self.phase is BudgetPhase.BEFORE else "exceeded"
        if self.dimension is BudgetDimension.COST_USD:
            return f"cost budget {verb}: ${_usd_text(self.value)} {op} ${_usd_text(self.limit)}"
        return f"token budget {verb}: {self.dimension.value} {self.value} {op} {self.limit}"


def _usd_text(amount: float) -> str:
    """Four decimals as upstream, more when needed to tell the amount apart (to 1e-9)."""
    text = f"{amount:.4f}"
    if nanos(float(text)) != nanos(amount):
        text = f"{amount:.9f}".rstrip("0")
    return text


def _check_limits(
    state: BudgetState, limits: BudgetLimits, phase: BudgetPhase
) -> BudgetTrip | None:
    # Upstream's order: total, input, output tokens, then cost. Cost compares exact nanos.
    strict = phase is BudgetPhase.AFTER
    token_checks = (
        (BudgetDimension.TOTAL_TOKENS, limits.total_tokens, state.total_tokens),
        (BudgetDimension.INPUT_TOKENS, limits.input_tokens, state.total_input_tokens),
        (BudgetDimension.OUTPUT_TOKENS, limits.output_tokens, state.total_output_tokens),
    )
    for dimension, limit, value in token_checks:
        if limit is not None and (value > limit if strict else value >= limit):
            return BudgetTrip(dimension=dimension, limit=limit, value=value, phase=phase)
    if limits.cost_usd is not None:
        limit_nanos = nanos(limits.cost_usd)
        spent = state.cost_nanos
        if spent > limit_nanos if strict else spent >= limit_nanos:
            return BudgetTrip(
                dimension=BudgetDimension.COST_USD,
                limit=limits.cost_usd,
                value=state.total_cost_usd,
                phase=phase,
            )
    return None


def check_before(state: BudgetState, limits: BudgetLimits) -> BudgetTrip | None:
    """Before a node runs: refuse when any limit is already reached (``>=``)."""
    return _check_limits(state, limits, BudgetPhase.BEFORE)


def check_after(state: BudgetState, limits: BudgetLimits) -> BudgetTrip | None:
    """After a node ran, on the new totals: trip when any limit is exceeded (``>``)."""
    return _check_limits(state, limits, BudgetPhase.AFTER)


def budget_after(state: BudgetState, events: Iterable[Event]) -> BudgetState:
    """``state`` after ``events``: each ``usage_recorded`` adds its usage and records a
    success or an error; nothing else changes the ledger. A store's ledger is this fold of
    its log (each ledger change is written with its ``usage_recorded``), so anyone holding
    the log can recompute the budget any decision saw."""
    for event in events:
        kind = event.kind
        if isinstance(kind, UsageRecorded):
            state = state.apply(
                Usage(
                    input_tokens=kind.input_tokens,
                    output_tokens=kind.output_tokens,
                    cost_usd=kind.cost_usd,
                    tool_calls=kind.tool_calls,
                    iterations=kind.iterations,
                )
            )
            state = state.record_success() if kind.succeeded else state.record_error()
    return state
