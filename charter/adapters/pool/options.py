"""The worker pool's settings, its request contract and the errors `submit` raises.

`WorkerPoolOptions` and `WorkerSecurityPolicy` carry the seed's fields and defaults (queue
64 per worker, a probe every 5 s, unavailable after 3 consecutive failures, a 30 s request
timeout; identifiers at most 128 bytes, request timeouts at most 120 s, requests at most
256 KiB of JSON), plus the breaker settings Charter adds. Durations are seconds (floats);
the request's own ``timeout_ms`` stays in milliseconds, as on the wire.

`check_request` applies the security policy in the seed's order (``request_id``,
``workflow_name``, ``node_id`` byte lengths, then ``timeout_ms``, then the size of the whole
request as compact JSON) and returns the first reason to refuse, or ``None``.

`WorkerPoolError` has the seed's seven variants as nested classes, so callers write
``except WorkerPoolError.QueueFull``. Each carries the `WorkerErrorCode` it corresponds to and
whether retrying may help.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Final

import attrs

from charter.adapters.pool.protocol import (
    LlmOperation,
    ToolOperation,
    WorkerErrorCode,
    WorkerProtocolError,
    WorkerRequest,
    WorkerResponse,
)
from charter.core.errors import CharterError, InvalidInput, describe

__all__ = [
    "QuickLimits",
    "WorkerPoolError",
    "WorkerPoolOptions",
    "WorkerSecurityPolicy",
    "check_request",
    "encode_pieces",
    "quick_limits",
    "request_checker",
    "request_payload_bytes",
]


# ── errors ─────────────────────────────────────────────────────────────────────────────


class WorkerPoolError(CharterError):
    """What `WorkerPool.submit` raises instead of answering; one subclass per seed variant:
    ``QueueFull``, ``NoHealthyWorker``, ``Worker`` (the handler's error), ``Timeout``,
    ``ShuttingDown``, ``CircuitOpen``, ``InvalidRequest``."""

    #: The protocol code this error corresponds to.
    code: ClassVar[WorkerErrorCode]
    #: Whether trying again (later, or elsewhere) may help.
    retryable: ClassVar[bool] = True
    #: The seed's message.
    text: ClassVar[str] = ""

    QueueFull: ClassVar[type[_QueueFull]]
    NoHealthyWorker: ClassVar[type[_NoHealthyWorker]]
    Worker: ClassVar[type[_Worker]]
    Timeout: ClassVar[type[_Timeout]]
    ShuttingDown: ClassVar[type[_ShuttingDown]]
    CircuitOpen: ClassVar[type[_CircuitOpen]]
    InvalidRequest: ClassVar[type[_InvalidRequest]]

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message if message is not None else self.text)

    def to_protocol_error(self) -> WorkerProtocolError:
        """The same failure as a protocol error (to answer a remote caller with)."""
        return WorkerProtocolError(code=self.code, message=str(self), retryable=self.retryable)


class _QueueFull(WorkerPoolError):
    """Every schedulable worker's queue is full (after trying each in turn)."""

    code = WorkerErrorCode.QUEUE_FULL
    text = "worker queue is full"


class _NoHealthyWorker(WorkerPoolError):
    """No worker is schedulable, or the pool has no workers."""

    code = WorkerErrorCode.UNAVAILABLE
    text = "no healthy worker available"


class _Worker(WorkerPoolError):
    """The handler answered with an error. ``error`` is it; ``response`` the full response
    (worker id, elapsed time) when the handler produced one."""

    code = WorkerErrorCode.EXECUTION_FAILED

    def __init__(self, error: WorkerProtocolError, response: WorkerResponse | None = None) -> None:
        if not isinstance(error, WorkerProtocolError):
            raise InvalidInput("error", f"expected a WorkerProtocolError, got {describe(error)}")
        self.error = error
        self.response = response
        super().__init__(f"worker execution failed: {error.code.value}: {error.message}")

    def to_protocol_error(self) -> WorkerProtocolError:
        return self.error

    @property
    def error_retryable(self) -> bool:
        """The handler's own verdict on retrying."""
        return self.error.retryable


class _Timeout(WorkerPoolError):
    """No answer within the request's timeout; the work was cancelled."""

    code = WorkerErrorCode.TIMEOUT
    text = "worker request timed out"


class _ShuttingDown(WorkerPoolError):
    """The pool is shutting down (or was shut down) before the request finished."""

    code = WorkerErrorCode.CANCELLED
    text = "worker pool is shutting down"


class _CircuitOpen(WorkerPoolError):
    """Every worker that had room refused the request at its circuit breaker."""

    code = WorkerErrorCode.CIRCUIT_OPEN
    text = "request rejected by circuit breaker"


class _InvalidRequest(WorkerPoolError):
    """The request breaks the security policy or is malformed; ``reason`` says how.
    Retrying the same request cannot help."""

    code = WorkerErrorCode.INVALID_REQUEST
    retryable = False

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"worker request rejected: {reason}")


for _name, _variant in (
    ("QueueFull", _QueueFull),
    ("NoHealthyWorker", _NoHealthyWorker),
    ("Worker", _Worker),
    ("Timeout", _Timeout),
    ("ShuttingDown", _ShuttingDown),
    ("CircuitOpen", _CircuitOpen),
    ("InvalidRequest", _InvalidRequest),
):
    # Reachable (and printed, and pickled) as WorkerPoolError.<variant>, like the seed's
    # enum variants.
    _variant.__name__ = _name
    _variant.__qualname__ = f"WorkerPoolError.{_name}"
    setattr(WorkerPoolError, _name, _variant)


# ── settings ───────────────────────────────────────────────────────────────────────────


def _count_at_least_one(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(attribute.name, f"expected an integer at least 1, got {describe(value)}")


def _positive_seconds(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise InvalidInput(
            attribute.name, f"expected a positive, finite number of seconds, got {describe(value)}"
        )


def _optional_positive_seconds(
    instance: object, attribute: attrs.Attribute[Any], value: object
) -> None:
    if value is not None:
        _positive_seconds(instance, attribute, value)


@attrs.frozen(kw_only=True)
class WorkerSecurityPolicy:
    """Limits every request must respect (the seed's defaults)."""

    max_request_timeout_ms: int = attrs.field(default=120_000, validator=_count_at_least_one)
    max_request_payload_bytes: int = attrs.field(default=256 * 1024, validator=_count_at_least_one)
    max_identifier_length: int = attrs.field(default=128, validator=_count_at_least_one)


@attrs.frozen(kw_only=True)
class WorkerPoolOptions:
    """How the pool runs (the seed's fields and defaults, then Charter's breaker settings).

    * ``queue_capacity``: requests waiting per worker (one more may be running);
    * ``health_probe_interval``: seconds between a worker's health probes;
    * ``unavailable_after_failures``: consecutive failures that open a worker's breaker
      (make it unavailable);
    * ``default_request_timeout``: seconds a request may take when it sets no
      ``timeout_ms``; ``None`` waits for ever. Must not exceed the policy's maximum;
    * ``breaker_reset_timeout``: seconds an open breaker refuses calls before a trial
      (default: the probe interval, when the seed's probe would have healed the worker);
    * ``breaker_half_open_max_calls``: trial calls at a time while half-open;
    * ``breaker_success_threshold``: trial successes that close the breaker;
    * ``shutdown_grace``: seconds `WorkerPool.shutdown` waits for cancelled tasks to end.
    """

    queue_capacity: int = attrs.field(default=64, validator=_count_at_least_one)
    health_probe_interval: float = attrs.field(default=5.0, validator=_positive_seconds)
    unavailable_after_failures: int = attrs.field(default=3, validator=_count_at_least_one)
    default_request_timeout: float | None = attrs.field(
        default=30.0, validator=_optional_positive_seconds
    )
    security_policy: WorkerSecurityPolicy = attrs.field(factory=WorkerSecurityPolicy)
    breaker_reset_timeout: float | None = attrs.field(
        default=None, validator=_optional_positive_seconds
    )
    breaker_half_open_max_calls: int = attrs.field(default=1, validator=_count_at_least_one)
    breaker_success_threshold: int = attrs.field(default=1, validator=_count_at_least_one)
    shutdown_grace: float = attrs.field(default=1.0, validator=_positive_seconds)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.security_policy, WorkerSecurityPolicy):
            raise InvalidInput(
                "security_policy",
                f"expected a WorkerSecurityPolicy, got {describe(self.security_policy)}",
            )
        timeout = self.default_request_timeout
        limit = self.security_policy.max_request_timeout_ms
        if timeout is not None and timeout * 1000 > limit:
            raise InvalidInput(
                "default_request_timeout",
                f"{timeout:g} s exceeds security_policy.max_request_timeout_ms ({limit} ms)",
            )

    @property
    def reset_timeout(self) -> float:
        """The breakers' reset timeout in seconds."""
        if self.breaker_reset_timeout is not None:
            return self.breaker_reset_timeout
        return self.health_probe_interval


# ── the request contract ───────────────────────────────────────────────────────────────

#: What a request whose JSON cannot be written counts as: larger than any limit.
UNMEASURABLE: Final = sys.maxsize


def _not_json(value: object) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON")


def _make_encoder() -> Callable[[object, int], Sequence[str]]:
    """Compact JSON text exactly as `WorkerRequest.to_json` writes it, in pieces (usually
    one), with the C encoder built once (``json.dumps`` builds it again on every call)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython ships the accelerator
        encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        return lambda value, _level: (encoder.encode(value),)
    c_encode: Callable[[object, int], Sequence[str]] = make(
        None, _not_json, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )
    return c_encode


_c_encode: Final = _make_encoder()


def _encode(value: object) -> str:
    return "".join(_c_encode(value, 0))


def _values(request: WorkerRequest) -> list[object]:
    """The request's values in `WorkerRequest.to_json` order, without the keys."""
    op = request.operation
    if type(op) is ToolOperation:
        return [
            request.request_id, request.workflow_name, request.node_id, request.timeout_ms,
            op.tool, op.input, op.scoped_input,
        ]  # fmt: skip
    if type(op) is LlmOperation:
        return [
            request.request_id, request.workflow_name, request.node_id, request.timeout_ms,
            op.model, op.prompt, op.scoped_input,
        ]  # fmt: skip
    raise TypeError("not an operation")


def _key_overhead(operation: LlmOperation | ToolOperation) -> int:
    """What the keys and braces of a request add to the JSON array of its values: the same
    for every request of one operation kind (the values are written identically)."""
    template = WorkerRequest(
        request_id="", workflow_name="", node_id="", timeout_ms=None, operation=operation
    )
    return len(template.to_json()) - len(_encode(_values(template)))


_OVERHEAD: Final[dict[type, int]] = {
    ToolOperation: _key_overhead(ToolOperation(tool="", input=None, scoped_input=None)),
    LlmOperation: _key_overhead(LlmOperation(model="", prompt="", scoped_input=None)),
}


def request_payload_bytes(request: WorkerRequest) -> int:
    """The size of ``request`` as compact JSON in UTF-8 bytes (the seed's measure, equal to
    ``len(request.to_json().encode())``); `UNMEASURABLE` when it is not JSON (a NaN, a set,
    a cycle, a lone surrogate).

    Computed from one encoding of the values alone plus the fixed size of the keys: the pool
    measures every request, and building the nested dictionaries cost more than the rest of
    the check."""
    try:
        text = _encode(_values(request))
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
    except (TypeError, ValueError, RecursionError, UnicodeEncodeError):
        return UNMEASURABLE
    return size + _OVERHEAD[type(request.operation)]


_OPERATION_TEXT_FIELDS: Final[dict[type, tuple[str, ...]]] = {
    LlmOperation: ("model", "prompt"),
    ToolOperation: ("tool",),
}


def _shape_problem(request: object) -> str | None:
    """Why ``request`` is not a well-typed `WorkerRequest` (built in Python, it may not be)."""
    if not isinstance(request, WorkerRequest):
        return f"expected a WorkerRequest, got {describe(request)}"
    # (The common, well-typed case is recognised by `request_checker` before this.)
    operation: object = request.operation
    timeout: object = request.timeout_ms
    for name in ("request_id", "workflow_name", "node_id"):
        value = getattr(request, name)
        if not isinstance(value, str):
            return f"{name}: expected a string, got {describe(value)}"
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int)):
        return f"timeout_ms: expected an integer or None, got {describe(timeout)}"
    names = _OPERATION_TEXT_FIELDS.get(type(operation))
    if names is None:
        return f"operation: expected an LlmOperation or a ToolOperation, got {describe(operation)}"
    for name in names:
        value = getattr(operation, name)
        if not isinstance(value, str):
            return f"operation.{name}: expected a string, got {describe(value)}"
    return None  # subclasses of str or int: well-typed after all


def _text_bound(text: str) -> int:
    """An upper bound on the UTF-8 bytes of ``text`` (exactly a `str`) written as a JSON
    string, quotes included; -1 when it cannot be written (a lone surrogate).

    Printable text has no control characters, so only ``"`` and ``\\`` grow, to two bytes
    each: at most twice its bytes. In other text a control character (one byte) grows to at
    most six (``\\u001f``). ASCII has one byte per character and no surrogates."""
    if text.isascii():
        size = len(text)
    else:
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            return -1
    return 2 * size + 2 if text.isprintable() else 6 * size + 2


#: What every request's JSON adds to its seven values: keys, braces, separators (the larger
#: of the two kinds').
_FIXED_BOUND: Final = max(_OVERHEAD.values()) + 8


def check_request(request: WorkerRequest, policy: WorkerSecurityPolicy) -> str | None:
    """The first reason ``policy`` refuses ``request`` (the seed's order, see the module
    doc), or ``None``. Charter also refuses a malformed request and ``timeout_ms`` 0 (a
    request that can only time out).

    The pool checks every request, so the common case is cheap: a well-typed request with
    short ASCII identifiers has its payloads encoded (not the whole request) and the rest
    bounded from lengths and the policy's limits; when that bound is within the payload
    limit, so is the request. Otherwise the request is measured exactly
    (`request_payload_bytes`): the verdict is always the exact measure's, and so is every
    message. The same as ``request_checker(policy)(request)``."""
    return request_checker(policy)(request)


_CHECKERS: Final[dict[WorkerSecurityPolicy, Callable[[WorkerRequest], str | None]]] = {}

#: The largest ``timeout_ms`` the bound counts at 21 characters (``null`` or 20 digits).
_TIMEOUT_BOUND: Final = 10**20 - 1


@attrs.frozen
class QuickLimits:
    """What `request_checker`'s first test compares with, from one policy (`quick_limits`):
    the identifier limit, the largest ``timeout_ms`` it settles, and ``room``, what the
    payload limit leaves for the payloads' JSON and six times the tool name once every other
    term of `_request_bound` is counted at its largest (keys and separators, three
    identifiers of ``identifier_limit`` characters at 6 bytes each, quoted, a timeout of 21
    characters, the tool name's quotes)."""

    identifier_limit: int
    max_timeout: int
    room: int


def quick_limits(policy: WorkerSecurityPolicy) -> QuickLimits:
    """The constants of `request_checker`'s first test for ``policy``."""
    limit = policy.max_identifier_length
    return QuickLimits(
        identifier_limit=limit,
        max_timeout=min(policy.max_request_timeout_ms, _TIMEOUT_BOUND),
        room=policy.max_request_payload_bytes - (_FIXED_BOUND + 3 * (6 * limit + 2) + 21 + 2),
    )


#: The C encoder `request_checker`'s first test calls (`WorkerPool.submit` inlines the test).
encode_pieces: Final = _c_encode


def request_checker(policy: WorkerSecurityPolicy) -> Callable[[WorkerRequest], str | None]:
    """`check_request` with ``policy`` bound in: a function of the request alone, with the
    policy's limits turned into constants once (the pool makes one and checks every request
    with it).

    Its first test is the usual request's: a `ToolOperation` with an ASCII tool name, short
    ASCII identifiers and a timeout within the limit, whose two payloads encode as ASCII
    JSON. For it, `_request_bound` is at most the fixed part plus the payloads' text plus
    six times the tool name (twice when it is printable, which this test does not ask), so
    the request is within the payload limit when those fit in what the limit leaves
    (`QuickLimits.room`): one comparison, made with nothing else computed. Anything else —
    or a bound above the limit — goes to `_check_bounded`, which answers exactly (property-
    tested: the verdicts and messages are the exact measure's). `WorkerPool.submit` makes
    the same test inline, then calls this for whatever the test does not settle."""
    checker = _CHECKERS.get(policy)
    if checker is not None:
        return checker
    quick = quick_limits(policy)
    limit, max_timeout, room = quick.identifier_limit, quick.max_timeout, quick.room
    encode = _c_encode

    def check(request: WorkerRequest) -> str | None:
        if type(request) is not WorkerRequest:
            return _check_slowly(request, policy)
        operation: object = request.operation
        timeout: object = request.timeout_ms
        request_id, workflow_name = request.request_id, request.workflow_name
        node_id = request.node_id
        if not (
            type(request_id) is str
            and type(workflow_name) is str
            and type(node_id) is str
            and (timeout is None or type(timeout) is int)
            and (
                (type(operation) is ToolOperation and type(operation.tool) is str)
                or (
                    type(operation) is LlmOperation
                    and type(operation.model) is str
                    and type(operation.prompt) is str
                )
            )
            # Most identifiers are short ASCII, where characters are bytes: no encoding.
            and len(request_id) <= limit
            and len(workflow_name) <= limit
            and len(node_id) <= limit
            and request_id.isascii()
            and workflow_name.isascii()
            and node_id.isascii()
        ):
            return _check_slowly(request, policy)
        if type(operation) is ToolOperation and (
            timeout is None or (type(timeout) is int and 0 < timeout <= max_timeout)
        ):
            tool = operation.tool
            if tool.isascii():
                try:
                    chunks = encode((operation.input, operation.scoped_input), 0)
                except (TypeError, ValueError, RecursionError):
                    return _check_bounded(request, policy)
                # One piece, unless the payloads are long (the encoder joins its output
                # every 100,000 pieces).
                text = chunks[0] if len(chunks) == 1 else "".join(chunks)
                if text.isascii() and len(text) + 6 * len(tool) <= room:
                    return None
        return _check_bounded(request, policy)

    if len(_CHECKERS) < 64:  # policies are few; never let the memo grow without bound
        _CHECKERS[policy] = check
    return check


def _check_bounded(request: WorkerRequest, policy: WorkerSecurityPolicy) -> str | None:
    """`check_request` for a well-typed request with short ASCII identifiers (what
    `request_checker` has established): the timeout, then the bound of `_request_bound`,
    and the exact measure when the bound is not within the limit."""
    timeout = request.timeout_ms
    if timeout is not None:
        if timeout > policy.max_request_timeout_ms:
            return f"timeout_ms {timeout} exceeds max {policy.max_request_timeout_ms}"
        if timeout <= 0:
            return f"timeout_ms {timeout} is not positive"
    bound = _request_bound(request, policy.max_identifier_length)
    if 0 <= bound <= policy.max_request_payload_bytes:
        return None
    return _payload_problem(request, policy)


def _request_bound(request: WorkerRequest, identifier_limit: int) -> int:
    """An upper bound on ``request_payload_bytes(request)`` for a well-typed request whose
    identifiers are ASCII of at most ``identifier_limit`` characters, or -1 when it cannot
    be written as JSON (or this cannot tell).

    Only the JSON payloads are encoded (once, together); the names and the prompt, plain
    strings, are bounded from their length, the identifiers from the limit: at most 6
    bytes a character (``\\u001f``), quoted. A timeout is ``null`` or at most 21
    characters."""
    operation = request.operation
    if type(operation) is ToolOperation:
        payload: object = [operation.input, operation.scoped_input]
        tool = operation.tool  # `_text_bound`, inlined for the usual printable ASCII name
        texts = 2 * len(tool) + 2 if tool.isascii() and tool.isprintable() else _text_bound(tool)
    elif type(operation) is LlmOperation:
        payload = operation.scoped_input
        model = _text_bound(operation.model)
        prompt = _text_bound(operation.prompt)
        texts = -1 if model < 0 or prompt < 0 else model + prompt
    else:
        return -1
    timeout = request.timeout_ms
    if texts < 0 or not (timeout is None or -(10**20) < timeout < 10**20):
        return -1
    try:
        chunks = _c_encode(payload, 0)
        text = chunks[0] if len(chunks) == 1 else "".join(chunks)
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
    except (TypeError, ValueError, RecursionError, UnicodeEncodeError):
        return -1
    return _FIXED_BOUND + 3 * (6 * identifier_limit + 2) + 21 + texts + size


def _payload_problem(request: WorkerRequest, policy: WorkerSecurityPolicy) -> str | None:
    """The payload rule, measured exactly."""
    size = request_payload_bytes(request)
    if size > policy.max_request_payload_bytes:
        shown = "unmeasurable (not JSON)" if size == UNMEASURABLE else f"{size} bytes"
        return f"request payload {shown} exceeds max {policy.max_request_payload_bytes}"
    return None


def _check_slowly(request: WorkerRequest, policy: WorkerSecurityPolicy) -> str | None:
    """`check_request` for every request, rule by rule, measuring exactly."""
    problem = _shape_problem(request)
    if problem is not None:
        return problem
    limit = policy.max_identifier_length
    ids = (request.request_id, request.workflow_name, request.node_id)
    for name, value in zip(("request_id", "workflow_name", "node_id"), ids, strict=True):
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > limit:
            return f"{name} length {size} exceeds max {limit}"
    timeout = request.timeout_ms
    if timeout is not None:
        if timeout > policy.max_request_timeout_ms:
            return f"timeout_ms {timeout} exceeds max {policy.max_request_timeout_ms}"
        if timeout <= 0:
            return f"timeout_ms {timeout} is not positive"
    return _payload_problem(request, policy)
