"""Properties of budget accounting and the two budget checks."""

from __future__ import annotations

import json

import attrs
from hypothesis import given
from hypothesis import strategies as st

from charter.core import (
    BudgetLimits,
    BudgetPhase,
    BudgetState,
    Usage,
    check_after,
    check_before,
)
from charter.core.budget import nanos
from charter.testing.strategies import budget_limits, budget_states, usages


def _apply_all(state: BudgetState, items: list[Usage]) -> BudgetState:
    for usage in items:
        state = state.apply(usage)
    return state


@given(budget_states(), st.lists(usages(), max_size=8), st.data())
def test_accumulation_is_commutative(
    start: BudgetState, items: list[Usage], data: st.DataObject
) -> None:
    # Parallel nodes commit in any order; the totals must not depend on it (exactly: cost is
    # summed in nano-dollars, not as floats).
    reordered = data.draw(st.permutations(items))
    assert _apply_all(start, items) == _apply_all(start, reordered)


@given(budget_states(), usages(), usages(), usages())
def test_accumulation_is_associative(start: BudgetState, a: Usage, b: Usage, c: Usage) -> None:
    combined = Usage(
        input_tokens=b.input_tokens + c.input_tokens,
        output_tokens=b.output_tokens + c.output_tokens,
        cost_usd=(round(b.cost_usd * 1e9) + round(c.cost_usd * 1e9)) / 1e9,
        tool_calls=b.tool_calls + c.tool_calls,
        iterations=b.iterations + c.iterations,
    )
    assert start.apply(a).apply(b).apply(c) == start.apply(a).apply(combined)


@given(budget_states(), usages())
def test_accumulation_is_monotone(start: BudgetState, usage: Usage) -> None:
    after = start.apply(usage)
    assert after.total_input_tokens >= start.total_input_tokens
    assert after.total_output_tokens >= start.total_output_tokens
    assert after.total_tokens >= start.total_tokens
    assert after.total_cost_usd >= start.total_cost_usd
    assert after.tool_call_count >= start.tool_call_count
    assert after.iteration_count >= start.iteration_count


@given(budget_states(), budget_limits())
def test_a_trip_after_implies_a_trip_before_on_the_same_totals(
    state: BudgetState, limits: BudgetLimits
) -> None:
    # `>` implies `>=`: anything over budget is also spent.
    after = check_after(state, limits)
    if after is not None:
        before = check_before(state, limits)
        assert before is not None
        assert before.phase is BudgetPhase.BEFORE


@given(budget_states(), budget_limits())
def test_a_trip_names_a_limit_the_value_really_reaches(
    state: BudgetState, limits: BudgetLimits
) -> None:
    for trip in (check_before(state, limits), check_after(state, limits)):
        if trip is None:
            continue
        if trip.phase is BudgetPhase.AFTER:
            assert trip.value > trip.limit
        else:
            assert trip.value >= trip.limit
        assert getattr(limits, trip.dimension.value) == trip.limit


@given(budget_states(), budget_limits())
def test_no_trip_means_every_limit_has_headroom(state: BudgetState, limits: BudgetLimits) -> None:
    if check_before(state, limits) is None:
        for limit, value in (
            (limits.total_tokens, state.total_tokens),
            (limits.input_tokens, state.total_input_tokens),
            (limits.output_tokens, state.total_output_tokens),
            (limits.cost_usd, state.total_cost_usd),
        ):
            assert limit is None or value < limit


@given(budget_states(), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))
def test_snapshot_round_trip_keeps_the_budget_and_other_keys(
    state: BudgetState, other: dict[str, int]
) -> None:
    other.pop("__budget", None)
    patched = state.patch_into_snapshot_state(other)
    through_json = json.loads(json.dumps(patched))
    assert BudgetState.from_snapshot_state(through_json) == state
    assert {k: v for k, v in through_json.items() if k != "__budget"} == other


# ── the direct constructor equals the checked one ──


def _reference_apply(state: BudgetState, usage: Usage) -> BudgetState:
    """`BudgetState.apply` through the attrs constructor, every field converted again."""
    return BudgetState(
        total_input_tokens=state.total_input_tokens + usage.input_tokens,
        total_output_tokens=state.total_output_tokens + usage.output_tokens,
        total_cost_usd=(state.cost_nanos + nanos(usage.cost_usd)) / 1_000_000_000,
        iteration_count=state.iteration_count + usage.iterations,
        tool_call_count=state.tool_call_count + usage.tool_calls,
        consecutive_error_count=state.consecutive_error_count,
        circuit_breaker_tripped=state.circuit_breaker_tripped,
    )


@given(budget_states(max_cost_usd=1e6), st.lists(usages(max_cost_usd=1e4), max_size=5))
def test_apply_builds_what_the_checked_constructor_builds(
    state: BudgetState, steps: list[Usage]
) -> None:
    for usage in steps:
        fast, slow = state.apply(usage), _reference_apply(state, usage)
        assert fast == slow
        assert json.dumps(fast.to_dict()) == json.dumps(slow.to_dict())  # bit-identical floats
        assert type(fast.total_cost_usd) is float
        state = fast
        errors = state.record_error()
        assert errors == attrs.evolve(
            state, consecutive_error_count=state.consecutive_error_count + 1
        )
        assert errors.record_success() == attrs.evolve(state, consecutive_error_count=0)
        assert errors.record_success().record_error() == attrs.evolve(
            state, consecutive_error_count=1
        )
