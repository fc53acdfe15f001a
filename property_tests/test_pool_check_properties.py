"""The pool's request check with its policy bound in (`request_checker`, docs/pool.md §2):
for every request, the same verdict and message as the rules applied one by one with the
exact measure — around the point where its cheap comparison stops
vouching (payload limits at and around the request's size and the bound's), with payloads
long enough that the encoder answers in several pieces, and for hostile requests alike."""

from __future__ import annotations

from typing import Any, Final

from hypothesis import given, settings
from hypothesis import strategies as st

from charter.adapters.pool import (
    LlmOperation,
    ToolOperation,
    WorkerRequest,
    WorkerSecurityPolicy,
    check_request,
    options,
)
from charter.adapters.pool.options import request_checker


def _plain_verdict(request: WorkerRequest, policy: WorkerSecurityPolicy) -> str | None:
    """The rules one by one, measuring exactly (`options._check_slowly`, itself held to
    the rule written out plainly in test_breaker_properties)."""
    return options._check_slowly(request, policy)


_TEXT: Final = st.text(st.sampled_from('ab"\\\n\x00\x1fé\ud800'), max_size=6) | st.text(
    st.sampled_from("abc-_.:/ "), max_size=8
)
_SCALARS: Final = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | _TEXT
    | st.sampled_from([b"bytes", {1, 2}, Ellipsis])
)
_PAYLOADS: Final = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(_TEXT, inner, max_size=3)
        | st.dictionaries(st.integers(0, 9), inner, max_size=2)
    ),
    max_leaves=8,
)
#: Long enough that the C encoder hands its text back in more than one piece (it joins
#: every 100,000 pieces): what the check must join before measuring.
_LONG: Final = st.integers(min_value=50_001, max_value=50_003).map(lambda n: [7] * n)
# Mostly short ASCII identifiers and printable tool names (what the cheap comparison
# takes), sometimes not.
_IDS: Final = st.text(st.sampled_from("abc-0"), max_size=6) | _TEXT


@st.composite
def _cases(draw: st.DrawFn) -> tuple[WorkerRequest, WorkerSecurityPolicy]:
    payloads = _PAYLOADS | _LONG if draw(st.integers(0, 9)) == 0 else _PAYLOADS
    operation: Any
    if draw(st.integers(0, 4)):
        operation = ToolOperation(
            tool=draw(_IDS), input=draw(payloads), scoped_input=draw(payloads)
        )
    else:
        operation = LlmOperation(model=draw(_IDS), prompt=draw(_TEXT), scoped_input=draw(payloads))
    request = WorkerRequest(
        request_id=draw(_IDS),
        workflow_name=draw(_IDS),
        node_id=draw(_IDS),
        timeout_ms=draw(st.none() | st.integers(min_value=-2, max_value=2**70)),
        operation=operation,
    )
    limit = draw(st.integers(min_value=1, max_value=8))
    try:
        size = len(request.to_json().encode("utf-8"))
    except (TypeError, ValueError, RecursionError, UnicodeEncodeError):
        size = 300
    # The cheap comparison vouches up to a bound: the identifiers at 6 bytes a character of
    # the limit, the timeout at 21 characters, the tool name at twice its length. Limits
    # at and around the exact size, and around where that bound lands.
    slack = 3 * (6 * limit + 2) + 21 + 40
    payload_limit = max(
        1,
        size
        + draw(
            st.integers(min_value=-3, max_value=3)
            | st.integers(min_value=slack - 60, max_value=slack + 60)
        ),
    )
    policy = WorkerSecurityPolicy(
        max_request_timeout_ms=draw(st.integers(min_value=1, max_value=2**68)),
        max_request_payload_bytes=payload_limit,
        max_identifier_length=limit,
    )
    return request, policy


@settings(max_examples=500, deadline=None)
@given(_cases())
def test_the_bound_checker_answers_the_plain_rule(
    case: tuple[WorkerRequest, WorkerSecurityPolicy],
) -> None:
    request, policy = case
    expected = _plain_verdict(request, policy)
    assert request_checker(policy)(request) == expected
    assert check_request(request, policy) == expected


def test_a_long_payload_is_measured_whole() -> None:
    """The encoder's text of a long payload comes in pieces; the check counts them all
    (counting the first alone would let a request too large by one byte through)."""
    request = WorkerRequest(
        request_id="r",
        workflow_name="w",
        node_id="n",
        operation=ToolOperation(tool="t", input=[7] * 200_000, scoped_input={}),
    )
    size = len(request.to_json().encode("utf-8"))
    # Identifiers of at most 1 character: the bound is close to the exact size.
    fits = WorkerSecurityPolicy(max_request_payload_bytes=size, max_identifier_length=1)
    assert request_checker(fits)(request) is None
    short = WorkerSecurityPolicy(max_request_payload_bytes=size - 1, max_identifier_length=1)
    assert request_checker(short)(request) == (
        f"request payload {size} bytes exceeds max {size - 1}"
    )
