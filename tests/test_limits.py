"""Windowed limits in the core (`charter.core.limits`): usage in a window, when it frees up,
the gate's refusal, and the configuration's errors.

The property tests come first: for any charges and any ``now``, the core's usage and its
decision agree with a brute-force model that re-counts every charge from scratch (and, for
a sliding window, tries every moment a charge leaves it), in both modes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from charter.core.budget import Usage
from charter.core.errors import PolicyError
from charter.core.events import LimitCharged, NodeFailed, NodeGated, RateLimitExceeded
from charter.core.gate import GateInputError, GateRequest, Outcome, gate_node
from charter.core.limits import (
    FIXED,
    SLIDING,
    LimitCharge,
    RateLimit,
    WindowUsage,
    charge_event,
    charge_writes,
    limit_refusal,
    matching_limits,
    usage_from_record,
    window_since,
    window_usage,
)
from charter.core.policy import EvaluationContext, PolicySet

BASE = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
US = timedelta(microseconds=1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# ── the brute-force model ──────────────────────────────────────────────────────────────


def _micros(moment: datetime) -> int:
    return round((moment - EPOCH).total_seconds() * 1_000_000)


def _in_window(limit: RateLimit, at: datetime, now: datetime) -> bool:
    if limit.mode == SLIDING:
        return at > now - timedelta(seconds=limit.window)
    size = limit.window * 1_000_000
    bucket = _micros(now) // size
    return _micros(at) // size == bucket


def _totals(limit: RateLimit, charges: list[LimitCharge], now: datetime) -> tuple[int, int, int]:
    inside = [c for c in charges if _in_window(limit, c.at, now)]
    return (
        sum(c.calls for c in inside),
        sum(c.tokens for c in inside),
        sum(c.usd_nanos for c in inside),
    )


def _over(limit: RateLimit, totals: tuple[int, int, int]) -> bool:
    maxima = (limit.max_calls, limit.max_tokens, limit.max_usd_nanos)
    return any(m is not None and used >= m for m, used in zip(maxima, totals, strict=True))


def _brute_frees_at(limit: RateLimit, charges: list[LimitCharge], now: datetime) -> datetime | None:
    totals = _totals(limit, charges, now)
    if not _over(limit, totals):
        return None
    maxima = (limit.max_calls, limit.max_tokens, limit.max_usd_nanos)
    if any(m == 0 and used >= m for m, used in zip(maxima, totals, strict=True) if m is not None):
        return None
    if limit.mode == FIXED:
        size = limit.window * 1_000_000
        first, last = _micros(now) // size + 1, max(_micros(c.at) for c in charges) // size + 1
        moments = [EPOCH + timedelta(microseconds=b * size) for b in range(first, last + 1)]
    else:
        window = timedelta(seconds=limit.window)
        moments = sorted({c.at + window for c in charges if c.at + window > now})
    for moment in moments:
        if not _over(limit, _totals(limit, charges, moment)):
            return moment
    raise AssertionError("a window always frees up once every charge has left it")


# ── strategies ─────────────────────────────────────────────────────────────────────────


@st.composite
def limits(draw: st.DrawFn) -> RateLimit:
    maxima = draw(
        st.tuples(
            st.none() | st.integers(0, 6),
            st.none() | st.integers(0, 400),
            st.none() | st.sampled_from([0.0, 0.1, 0.3, 1.0, 2.5]),
        ).filter(lambda m: m != (None, None, None))
    )
    return RateLimit(
        name="l",
        window=draw(st.integers(1, 600)),
        mode=draw(st.sampled_from([FIXED, SLIDING])),
        max_calls=maxima[0],
        max_tokens=maxima[1],
        max_usd=maxima[2],
    )


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[RateLimit, list[LimitCharge], datetime]:
    limit = draw(limits())
    span = limit.window * 2_000_000
    now = BASE + draw(st.integers(0, span)) * US
    size = limit.window * 1_000_000
    into = _micros(now) % size  # how far now is into its fixed bucket
    # the edges of both windows: exactly one window ago, the bucket's start and end
    edges = [-size, -size + 1, -size - 1, -into, -into - 1, size - into, 0]
    charges = draw(
        st.lists(
            st.builds(
                LimitCharge,
                at=(st.integers(-span, 1_000) | st.sampled_from(edges)).map(
                    lambda off: now + off * US
                ),
                calls=st.integers(0, 2),
                tokens=st.integers(0, 200),
                usd_nanos=st.sampled_from([0, 1, 100_000_000, 200_000_000, 999_999_999]),
            ),
            max_size=12,
        )
    )
    return limit, charges, now


@given(scenarios())
def test_usage_in_the_window_is_the_exact_sum_of_its_charges(
    case: tuple[RateLimit, list[LimitCharge], datetime],
) -> None:
    limit, charges, now = case
    usage = window_usage(limit, charges, now)
    assert (usage.calls, usage.tokens, usage.usd_nanos) == _totals(limit, charges, now)
    # order of the charges never matters
    assert window_usage(limit, list(reversed(charges)), now) == usage


@given(scenarios())
def test_the_decision_and_when_it_frees_up_agree_with_the_brute_force_model(
    case: tuple[RateLimit, list[LimitCharge], datetime],
) -> None:
    limit, charges, now = case
    usage = window_usage(limit, charges, now)
    refused = limit_refusal([usage], "n")
    assert (refused is not None) == _over(limit, _totals(limit, charges, now))
    assert usage.frees_at == _brute_frees_at(limit, charges, now)
    if usage.frees_at is not None:
        # at that moment the window admits the next call again
        later = window_usage(limit, charges, usage.frees_at)
        assert limit_refusal([later], "n") is None
        assert usage.frees_at > now


@given(scenarios())
def test_a_store_read_from_window_since_sees_every_charge_the_window_counts(
    case: tuple[RateLimit, list[LimitCharge], datetime],
) -> None:
    limit, charges, now = case
    since = window_since(limit, now)
    read = [c for c in charges if c.at >= since]
    assert window_usage(limit, read, now) == window_usage(limit, charges, now)


# ── examples ───────────────────────────────────────────────────────────────────────────


def _limit(**options: object) -> RateLimit:
    fields: dict[str, object] = {"name": "refunds", "window": "1h", "max_calls": 2}
    fields.update(options)
    return RateLimit.from_dict(fields, "rate_limits[0]")


def test_sliding_window_frees_when_the_oldest_charge_leaves() -> None:
    limit = _limit(mode="sliding")
    charges = [LimitCharge(at=BASE), LimitCharge(at=BASE + timedelta(minutes=10))]
    usage = window_usage(limit, charges, BASE + timedelta(minutes=30))
    assert usage.calls == 2
    assert usage.frees_at == BASE + timedelta(hours=1)
    refused = limit_refusal([usage], "refund")
    assert refused is not None
    reason, event = refused
    assert reason == (
        "rate limit 'refunds' reached: 2 used of max_calls 2 in the sliding 1h window; "
        "frees up at 2026-12-07T13:00:00+00:00"
    )
    assert event == RateLimitExceeded(
        node_id="refund", limit="refunds", window_secs=3600, mode="sliding",
        dimension="max_calls", maximum=2, used=2, frees_at=BASE + timedelta(hours=1),
    )  # fmt: skip


def test_fixed_window_frees_at_its_end_and_starts_empty() -> None:
    limit = _limit(mode="fixed")
    charges = [
        LimitCharge(at=BASE + timedelta(minutes=50)),
        LimitCharge(at=BASE + timedelta(minutes=59)),
    ]
    usage = window_usage(limit, charges, BASE + timedelta(minutes=59, seconds=30))
    assert usage.frees_at == BASE + timedelta(hours=1)
    assert window_usage(limit, charges, BASE + timedelta(hours=1)).calls == 0


def test_usd_sums_are_exact_nanos() -> None:
    limit = _limit(max_calls=None, max_usd=0.3)
    charges = [
        LimitCharge(at=BASE, usd_nanos=100_000_000),
        LimitCharge(at=BASE, usd_nanos=200_000_000),
    ]
    usage = window_usage(limit, charges, BASE)
    assert usage.usd_nanos == 300_000_000  # 0.1 + 0.2 == 0.3, exactly
    reason, _ = limit_refusal([usage], "n") or ("", None)
    assert "0.3 USD used of max_usd 0.3 USD" in reason


def test_a_zero_maximum_admits_nothing_and_never_frees() -> None:
    usage = window_usage(_limit(max_calls=0), [], BASE)
    assert usage.frees_at is None
    reason, _ = limit_refusal([usage], "n") or ("", None)
    assert reason.endswith("max_calls is 0: it admits nothing")


def test_matching_by_tool_model_or_every_acting_node() -> None:
    tool = EvaluationContext("n", "tool", tool_name="payments.refund")
    model = EvaluationContext("m", "model", model_ref="openai/gpt-4o")
    cond = EvaluationContext("c", "condition")
    by_tool = _limit(tool="payments.*")
    by_model = _limit(name="gpt", model="gpt-*")
    every = _limit(name="all")
    found = matching_limits((by_tool, by_model, every), tool)
    assert found == (by_tool, every)
    assert matching_limits((by_tool, by_model, every), model) == (every,)
    resolved = EvaluationContext("m", "model", model_ref="fast", resolved_model="openai/gpt-4o")
    assert matching_limits((by_model,), resolved) == (by_model,)
    assert matching_limits((by_tool, by_model, every), cond) == ()


def _entry(**fields: object) -> dict[str, object]:
    entry: dict[str, object] = {"name": "x", "window": 60, "max_calls": 1}
    entry.update(fields)
    return {key: value for key, value in entry.items() if value is not _DROP}


_DROP = object()


@pytest.mark.parametrize(
    ("entry", "where", "problem"),
    [
        (_entry(window="1w"), "window", "expected seconds"),
        (_entry(window=0), "window", "1 second to 366 days"),
        (_entry(window=True), "window", "expected seconds"),
        (_entry(max_calls=_DROP), "max_calls", "at least one of"),
        (_entry(max_calls=-1), "max_calls", "non-negative"),
        (_entry(max_usd="5"), "max_usd", "number"),
        (_entry(max_usd=float("nan")), "max_usd", "finite"),
        (_entry(mode="rolling"), "mode", "fixed or sliding"),
        (_entry(per="tenant"), "per", "unknown limit key"),
        (_entry(name=_DROP), "name", "required"),
        (_entry(name=""), "name", "non-empty"),
        (_entry(tool="a", model="b"), "model", "not both"),
        (_entry(tool="db.[a-z]"), "tool", "not pattern syntax"),
        (_entry(model=["a"]), "model", "glob pattern"),
    ],
)
def test_bad_limits_are_refused_naming_the_field(
    entry: dict[str, object], where: str, problem: str
) -> None:
    with pytest.raises(PolicyError) as raised:
        PolicySet.from_dict({"rate_limits": [entry]}, "policy", tenant=True)
    assert raised.value.where == f"policy.rate_limits[0].{where}"
    assert problem in raised.value.problem


def test_limits_are_a_tenant_key_only_and_names_are_unique() -> None:
    with pytest.raises(PolicyError, match="rate_limits belong to a tenant"):
        PolicySet.from_dict({"rate_limits": []}, "workflow.policy")
    twice = [{"name": "x", "window": 60, "max_calls": 1}] * 2
    with pytest.raises(PolicyError, match="duplicate limit name 'x'"):
        PolicySet.from_dict({"rate_limits": twice}, tenant=True)
    with pytest.raises(PolicyError, match="expected a list of limits"):
        PolicySet.from_dict({"rate_limits": {"name": "x"}}, tenant=True)


def test_limits_change_the_policy_digest_and_an_empty_list_does_not() -> None:
    plain = PolicySet()
    assert PolicySet(rate_limits=[]).digest == plain.digest
    assert PolicySet(rate_limits=[_limit()]).digest != plain.digest
    assert (
        PolicySet(rate_limits=[_limit()]).digest
        != PolicySet(rate_limits=[_limit(window=60)]).digest
    )


# ── the gate ───────────────────────────────────────────────────────────────────────────


def _request(*usages: WindowUsage) -> GateRequest:
    ctx = EvaluationContext("refund", "tool", tool_name="payments.refund")
    return GateRequest(context=ctx, now=BASE, rate_limits=usages)


def test_the_gate_refuses_a_reached_limit_and_records_what_it_saw() -> None:
    limit = _limit()
    usage = window_usage(limit, [LimitCharge(at=BASE - timedelta(minutes=5))] * 2, BASE)
    result = gate_node(_request(usage))
    assert result.outcome is Outcome.FAIL
    assert result.reason is not None
    assert "rate limit 'refunds' reached" in result.reason
    gated, exceeded, failed = result.events
    assert isinstance(gated, NodeGated)
    assert isinstance(exceeded, RateLimitExceeded)
    assert isinstance(failed, NodeFailed)
    assert not failed.retryable
    assert gated.rate_limits == [
        {"name": "refunds", "window": 3600, "mode": "sliding", "max_calls": 2, "calls": 2,
         "tokens": 0, "usd_nanos": 0, "frees_at": "2026-12-07T12:55:00+00:00"},
    ]  # fmt: skip
    # what replay does: the usage rebuilt from the record decides the same
    again = gate_node(_request(*usage_from_record((limit,), gated.rate_limits)))
    assert again.events == result.events


def test_the_gate_runs_a_node_under_its_limits_and_records_no_key_without_any() -> None:
    limit = _limit()
    usage = window_usage(limit, [LimitCharge(at=BASE)], BASE)
    result = gate_node(_request(usage))
    assert result.outcome is Outcome.RUN
    assert isinstance(result.events[0], NodeGated)
    assert result.events[0].rate_limits is not None
    plain = gate_node(_request())
    assert isinstance(plain.events[0], NodeGated)
    assert plain.events[0].rate_limits is None


def test_the_gate_refuses_misuse() -> None:
    with pytest.raises(GateInputError, match="rate_limits"):
        GateRequest(context=EvaluationContext("n", "condition"), now=BASE, rate_limits="x")  # type: ignore[arg-type]
    with pytest.raises(GateInputError, match=r"rate_limits\[0\]"):
        GateRequest(context=EvaluationContext("n", "condition"), now=BASE, rate_limits=[1])  # type: ignore[list-item]


def test_a_charge_is_one_call_with_the_attempts_tokens_and_exact_cost() -> None:
    limit = _limit()
    usage = WindowUsage(limit=limit)
    charge = charge_event(
        "refund", 3, [usage], Usage(input_tokens=5, output_tokens=7, cost_usd=0.1), BASE
    )
    assert charge == LimitCharged(
        node_id="refund", attempt=3, at=BASE, limits=[{"name": "refunds", "window": 3600}],
        calls=1, tokens=12, usd_nanos=100_000_000,
    )  # fmt: skip
    assert charge_event("refund", 0, [], None, BASE) is None
    write = charge_writes("t", "e", charge)
    assert write.names == (("refunds", 3600),)
    assert write.usd_nanos == 100_000_000
    with pytest.raises(Exception, match="at least one limit"):
        charge_writes("t", "e", attrs.evolve(charge, limits=[]))
