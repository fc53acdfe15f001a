"""The pool's request check with its policy bound in (`request_checker`, docs/pool.md §2):
for every request, the same verdict and message as the rules applied one by one with the
exact measure — around the point where its cheap comparison stops
vouching (payload limits at and around the request's size and the bound's), with payloads
long enough that the encoder answers in several pieces, and for hostile requests alike."""

from __future__ import annotations

import asyncio
from typing import Any, Final

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

from charter.adapters.pool import (
    LlmOperation,
    ToolOperation,
    WorkerHandler,
    WorkerPool,
    WorkerPoolError,
    WorkerPoolOptions,
    WorkerRequest,
    WorkerResponse,
    WorkerSecurityPolicy,
    WorkerSuccess,
    check_request,
    options,
)
from charter.adapters.pool.options import request_checker
from charter.adapters.pool.slots import success_response


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
    # the limit, the timeout at 21 characters, the tool name at six times its length.
    # Limits at and around the exact size, and around where that bound lands.
    tool_name = operation.tool if isinstance(operation, ToolOperation) else ""
    slack = 3 * (6 * limit + 2) + 21 + 40 + 4 * len(tool_name)
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


class _Answer(WorkerHandler):
    """Answers every request with a fixed output."""

    def __init__(self, output: Any) -> None:
        self.output = output

    async def handle(self, request: WorkerRequest) -> Any:
        return self.output


async def _submit(
    request: WorkerRequest, policy: WorkerSecurityPolicy, output: Any
) -> WorkerResponse | str:
    pool = WorkerPool(
        [_Answer(output)],
        WorkerPoolOptions(security_policy=policy, default_request_timeout=None),
    )
    try:
        return await pool.submit(request)
    except WorkerPoolError.InvalidRequest as error:
        return error.reason
    finally:
        await pool.shutdown()


_OUTPUTS: Final = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(_cases(), _OUTPUTS)
def test_the_pool_refuses_exactly_what_the_check_refuses(
    case: tuple[WorkerRequest, WorkerSecurityPolicy], output: Any
) -> None:
    """`WorkerPool.submit` settles the usual request inline (docs/pool.md §2) and asks the
    checker for the rest: its verdict and message are the check's for every request, and
    what it accepts is answered with a response equal to the one attrs' ``__init__`` builds
    (`slots.NewResponse` / `NewSuccess` give each object its class after filling it in)."""
    request, policy = case
    expected = check_request(request, policy)
    answer = asyncio.run(_submit(request, policy, output))
    if expected is not None:
        assert answer == expected
        return
    assert isinstance(answer, WorkerResponse)
    assert type(answer) is WorkerResponse
    assert type(answer.result) is WorkerSuccess
    built = WorkerResponse(
        request_id=request.request_id,
        worker_id="worker-0",
        result=WorkerSuccess(output),
        elapsed_ms=answer.elapsed_ms,
    )
    assert answer == built
    assert answer.to_dict() == built.to_dict()
    assert type(answer.elapsed_ms) is int
    assert answer.elapsed_ms >= 0


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=5), st.text(max_size=5), _OUTPUTS, st.integers(0, 2**40))
def test_a_success_response_is_the_one_init_builds(
    request_id: str, worker_id: str, output: Any, elapsed_ms: int
) -> None:
    response = success_response(request_id, worker_id, output, elapsed_ms)
    built = WorkerResponse(
        request_id=request_id,
        worker_id=worker_id,
        result=WorkerSuccess(output),
        elapsed_ms=elapsed_ms,
    )
    assert type(response) is WorkerResponse
    assert type(response.result) is WorkerSuccess
    assert response == built
    assert repr(response) == repr(built)
    assert [getattr(response, a.name) for a in attrs.fields(WorkerResponse)] == [
        getattr(built, a.name) for a in attrs.fields(WorkerResponse)
    ]
