"""Upstream JamJet budget tests, ported (reference §5 and §9).

Sources ported: ``state/src/budget.rs`` unit tests and ``state/tests/research_budget.rs``.
Upstream compared totals with ad-hoc ``>``; here the same scenarios go through Charter's
`check_after` (strict ``>``, upstream's post-execution order: total, input, output, cost)
with `BudgetLimits`. Charter's `BudgetState` is immutable: every update returns a new state.
Tests named ``test_charter_*`` pin a deliberate divergence from upstream.
"""

from __future__ import annotations

import json

import attrs
import pytest

from charter.core import (
    BUDGET_KEY,
    AutonomyConstraints,
    AutonomyContext,
    AutonomyEnforcer,
    AutonomyLevel,
    BudgetDimension,
    BudgetError,
    BudgetLimits,
    BudgetPhase,
    BudgetState,
    BudgetTrip,
    TripCircuitBreaker,
    check_after,
    check_before,
)


def _repeat(state: BudgetState, times: int, inp: int, out: int, cost: float) -> BudgetState:
    for _ in range(times):
        state = state.accumulate(inp, out, cost)
    return state


# ── state/src/budget.rs unit tests ──────────────────────────────────────────────────────


def _roundtrip_fixture() -> tuple[BudgetState, dict[str, object]]:
    budget = attrs.evolve(BudgetState().accumulate(100, 50, 0.002), iteration_count=2)
    return budget, budget.patch_into_snapshot_state({"answer": "hello"})


def test_roundtrip_via_snapshot_state() -> None:
    budget, state = _roundtrip_fixture()
    loaded = BudgetState.from_snapshot_state(state)
    assert (
        loaded.total_input_tokens,
        loaded.total_output_tokens,
        loaded.total_cost_usd,
        loaded.iteration_count,
    ) == (100, 50, 0.002, 2)
    assert loaded == budget


def test_roundtrip_via_snapshot_state_preserves_other_keys() -> None:
    _, state = _roundtrip_fixture()
    assert state["answer"] == "hello"


def test_total_tokens() -> None:
    assert BudgetState().accumulate(300, 200, None).total_tokens == 500


# ── state/tests/research_budget.rs ──────────────────────────────────────────────────────


def test_budget_accumulates_across_multiple_model_calls() -> None:
    calls = [
        (2_000, 1_000, 0.003),
        (5_000, 3_000, 0.008),
        (8_000, 4_000, 0.012),
        (12_000, 6_000, 0.018),
        (15_000, 8_000, 0.023),
    ]
    budget = BudgetState()
    for inp, out, cost in calls:
        budget = budget.accumulate(inp, out, cost).record_success()
    # Charter sums cost on an exact 1e-9 USD grid, so the total is exact (upstream: ±1e-9).
    assert (
        budget.total_input_tokens,
        budget.total_output_tokens,
        budget.total_tokens,
        budget.total_cost_usd,
        budget.consecutive_error_count,
    ) == (42_000, 22_000, 64_000, 0.064, 0)


def test_detect_token_budget_not_exceeded_at_480k_after_30_calls() -> None:
    # First half of upstream's `detect_token_budget_exceeded`.
    budget = _repeat(BudgetState(), 30, 10_000, 6_000, 0.016)
    assert budget.total_tokens == 480_000
    assert check_after(budget, BudgetLimits(total_tokens=500_000)) is None


def test_detect_token_budget_exceeded() -> None:
    budget = _repeat(BudgetState(), 30, 10_000, 6_000, 0.016).accumulate(15_000, 10_000, 0.025)
    assert check_after(budget, BudgetLimits(total_tokens=500_000)) == BudgetTrip(
        dimension=BudgetDimension.TOTAL_TOKENS,
        limit=500_000,
        value=505_000,
        phase=BudgetPhase.AFTER,
    )


def test_detect_cost_budget_not_exceeded_at_exactly_15_after_30_calls() -> None:
    # First half of upstream's `detect_cost_budget_exceeded` (post-check is strict `>`).
    budget = _repeat(BudgetState(), 30, 50_000, 20_000, 0.50)
    assert budget.total_cost_usd == 15.0
    assert check_after(budget, BudgetLimits(cost_usd=15.0)) is None


def test_detect_cost_budget_exceeded() -> None:
    budget = _repeat(BudgetState(), 31, 50_000, 20_000, 0.50)
    trip = check_after(budget, BudgetLimits(cost_usd=15.0))
    assert trip == BudgetTrip(
        dimension=BudgetDimension.COST_USD, limit=15.0, value=15.5, phase=BudgetPhase.AFTER
    )


def test_detect_cost_budget_exceeded_reason_text() -> None:
    budget = _repeat(BudgetState(), 31, 50_000, 20_000, 0.50)
    trip = check_after(budget, BudgetLimits(cost_usd=15.0))
    assert trip is not None
    assert trip.reason == "cost budget exceeded: $15.5000 > $15.0000"


def test_charter_check_before_refuses_at_exactly_the_cost_limit() -> None:
    # Reference §10.1 (#114 C2) / §11.6: Charter also checks before a node runs, with `>=`.
    budget = _repeat(BudgetState(), 30, 50_000, 20_000, 0.50)
    assert check_before(budget, BudgetLimits(cost_usd=15.0)) == BudgetTrip(
        dimension=BudgetDimension.COST_USD, limit=15.0, value=15.0, phase=BudgetPhase.BEFORE
    )


def _crashed_budget() -> BudgetState:
    return attrs.evolve(_repeat(BudgetState(), 15, 8_000, 4_000, 0.012), iteration_count=15)


def _persist(state: dict[str, object]) -> dict[str, object]:
    loaded: dict[str, object] = json.loads(json.dumps(state))
    return loaded


def test_budget_survives_crash_via_snapshot() -> None:
    snapshot = {
        "case_id": "PATENT-2024-0847",
        "precedents_found": 12,
        "memo_draft": "Analysis in progress...",
    }
    persisted = _persist(_crashed_budget().patch_into_snapshot_state(snapshot))
    recovered = BudgetState.from_snapshot_state(persisted)
    assert (
        recovered.total_input_tokens,
        recovered.total_output_tokens,
        recovered.total_tokens,
        recovered.total_cost_usd,
        recovered.iteration_count,
    ) == (120_000, 60_000, 180_000, 0.18, 15)


def test_budget_survives_crash_via_snapshot_preserves_business_data() -> None:
    snapshot = {"case_id": "PATENT-2024-0847", "precedents_found": 12}
    persisted = _persist(_crashed_budget().patch_into_snapshot_state(snapshot))
    assert (persisted["case_id"], persisted["precedents_found"]) == ("PATENT-2024-0847", 12)


def _after_three_errors() -> BudgetState:
    budget = BudgetState().accumulate(5_000, 2_000, 0.007).record_success()
    return budget.record_error().record_error().record_error()


def _autonomy_from_budget(budget: BudgetState) -> AutonomyContext:
    # The mapping of reference §4.5 step 2 (threshold fixed at 3).
    return AutonomyContext(
        agent_ref="legal-research",
        autonomy_level=AutonomyLevel.BOUNDED_AUTONOMOUS,
        constraints=AutonomyConstraints(
            max_iterations=100, token_budget=500_000, cost_budget_usd=15.0
        ),
        current_iterations=budget.iteration_count,
        current_tool_calls=budget.tool_call_count,
        current_cost_usd=budget.total_cost_usd,
        current_tokens=budget.total_tokens,
        consecutive_errors=budget.consecutive_error_count,
        circuit_breaker_threshold=3,
    )


def test_error_tracking_integrates_with_circuit_breaker() -> None:
    budget = _after_three_errors()
    assert budget.consecutive_error_count == 3
    decision = AutonomyEnforcer().check(_autonomy_from_budget(budget), None)
    assert decision == TripCircuitBreaker(consecutive_errors=3, threshold=3)


def test_error_tracking_success_resets_consecutive_errors() -> None:
    # Last step of upstream's `error_tracking_integrates_with_circuit_breaker`.
    assert _after_three_errors().record_success().consecutive_error_count == 0


def _memo_budget() -> BudgetState:
    return _repeat(BudgetState(), 50, 3_000, 8_000, 0.011)


_MEMO_LIMITS = BudgetLimits(
    input_tokens=500_000, output_tokens=300_000, total_tokens=500_000, cost_usd=15.0
)


def test_multiple_budget_dimensions_checked_simultaneously() -> None:
    # All four limits at once: the first trip in upstream's worker order (§5.3) is reported.
    assert check_after(_memo_budget(), _MEMO_LIMITS) == BudgetTrip(
        dimension=BudgetDimension.TOTAL_TOKENS,
        limit=500_000,
        value=550_000,
        phase=BudgetPhase.AFTER,
    )


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        pytest.param(BudgetLimits(input_tokens=500_000), None, id="input-150k-ok"),
        pytest.param(
            BudgetLimits(output_tokens=300_000),
            BudgetTrip(
                dimension=BudgetDimension.OUTPUT_TOKENS,
                limit=300_000,
                value=400_000,
                phase=BudgetPhase.AFTER,
            ),
            id="output-400k-exceeded",
        ),
        pytest.param(
            BudgetLimits(total_tokens=500_000),
            BudgetTrip(
                dimension=BudgetDimension.TOTAL_TOKENS,
                limit=500_000,
                value=550_000,
                phase=BudgetPhase.AFTER,
            ),
            id="total-550k-exceeded",
        ),
        pytest.param(BudgetLimits(cost_usd=15.0), None, id="cost-0.55-ok"),
    ],
)
def test_multiple_budget_dimensions_each_dimension(
    limits: BudgetLimits, expected: BudgetTrip | None
) -> None:
    assert check_after(_memo_budget(), limits) == expected


# ── Charter divergences (reference §5.1, §5.4; ARCHITECTURE fix 5) ──────────────────────


def test_charter_from_snapshot_state_without_budget_is_empty() -> None:
    assert BudgetState.from_snapshot_state({"answer": "hello"}) == BudgetState()


@pytest.mark.parametrize(
    "malformed",
    [
        pytest.param(None, id="null"),
        pytest.param("oops", id="string"),
        pytest.param({"total_input_tokens": 5}, id="missing-keys"),
        pytest.param({**BudgetState().to_dict(), "total_input_tokens": -1}, id="negative"),
        pytest.param({**BudgetState().to_dict(), "total_cost_usd": float("nan")}, id="nan-cost"),
    ],
)
def test_charter_malformed_budget_raises_instead_of_silent_zero(malformed: object) -> None:
    # Reference §5.1: upstream silently yields an all-zero (unlimited) budget here.
    with pytest.raises(BudgetError, match=BUDGET_KEY):
        BudgetState.from_snapshot_state({BUDGET_KEY: malformed})


def test_charter_patch_into_snapshot_state_leaves_input_unchanged() -> None:
    state: dict[str, object] = {"answer": "hello"}
    BudgetState().accumulate(1, 1, None).patch_into_snapshot_state(state)
    assert state == {"answer": "hello"}


@pytest.mark.parametrize("cost", [float("nan"), float("inf"), -0.01])
def test_charter_accumulate_rejects_non_finite_or_negative_cost(cost: float) -> None:
    # ARCHITECTURE fix 5: NaN / infinite / negative values are rejected.
    with pytest.raises(BudgetError, match="cost_usd"):
        BudgetState().accumulate(1, 1, cost)
