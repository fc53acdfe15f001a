"""OpenTelemetry for gate decisions and governed tool calls (docs/integrations.md, "OTel").

Two kinds of span and one counter, following the OpenTelemetry GenAI semantic conventions
where they have a name for the thing, and ``charter.*`` attributes for the rest:

* a **decision span** (``charter.gate <tool>``) for every gate decision: its outcome,
  reason, deciding rule, scope and pattern, the run, node and attempt, and the sequence of
  the ``node_gated`` event that records it (`decision_span`, or `record_decision` for a
  decision already made — what the worker calls after its commit);
* an **``execute_tool`` span** (``execute_tool <tool>``, `tool_span`) around each execution
  the gate allowed: ``gen_ai.operation.name = "execute_tool"``, ``gen_ai.tool.name``,
  ``gen_ai.tool.type``, ``gen_ai.request.model`` when a model is named, and once the call
  is settled ``gen_ai.usage.input_tokens`` / ``gen_ai.usage.output_tokens`` with
  ``charter.usage.cost_usd`` and the sequence of its ``usage_recorded``; an exception sets
  the span's status to error with ``error.type``;
* a counter ``charter.decisions`` (unit ``{decision}``) of decisions by
  ``charter.outcome`` (``run`` | ``hold`` | ``fail``) and ``charter.policy.rule``.

Everything here is a no-op unless ``opentelemetry-api`` is installed (``pip install
'charter[otel]'``); with the API alone the spans go to the API's no-op provider until the
application configures an SDK. A `Telemetry` uses the global tracer and meter providers
unless it is given its own.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from typing import Any, Final

from charter.core.budget import Usage
from charter.core.events import NodeGated

try:  # the API is optional: without it every call here does nothing
    from opentelemetry import metrics as otel_metrics
    from opentelemetry import trace as otel_trace
    from opentelemetry.trace import Status, StatusCode

    AVAILABLE: bool = True
except ImportError:  # pragma: no cover - exercised only where the API is not installed
    AVAILABLE = False

try:  # where the API keeps the global meter provider (private: in doubt, reporting goes on)
    from opentelemetry.metrics import _internal as _metrics_state
except ImportError:  # pragma: no cover - another version of the API
    _metrics_state = None  # type: ignore[assignment]

_SET: Final = object()  # a global the API no longer has: taken as set (reporting goes on)

__all__ = [
    "AVAILABLE",
    "DECISIONS_METRIC",
    "INSTRUMENTATION_NAME",
    "DecisionSpan",
    "Telemetry",
    "ToolSpan",
    "decision_attributes",
    "decision_span",
    "default_telemetry",
    "record_decision",
    "tool_span",
]

#: The instrumentation scope of Charter's spans and metrics.
INSTRUMENTATION_NAME: Final = "charter"
#: The decision counter's name.
DECISIONS_METRIC: Final = "charter.decisions"

Attributes = dict[str, Any]


def decision_attributes(
    gated: NodeGated,
    *,
    run_id: str | None = None,
    sequence: int | None = None,
    tool_name: str | None = None,
    model: str | None = None,
) -> Attributes:
    """The attributes of a decision span for the recorded decision ``gated`` (``None``
    values left out: OpenTelemetry refuses them)."""
    values: dict[str, Any] = {
        "charter.outcome": gated.outcome,
        "charter.reason": gated.reason,
        "charter.policy.decision": gated.policy_decision,
        "charter.policy.rule": gated.policy_rule,
        "charter.policy.scope": gated.policy_scope,
        "charter.policy.pattern": gated.policy_pattern,
        "charter.autonomy": gated.autonomy,
        "charter.approval": gated.approval,
        "charter.run_id": run_id,
        "charter.node_id": gated.node_id,
        "charter.attempt": gated.attempt,
        "charter.event.sequence": sequence,
        "charter.as_of": gated.as_of,
        "gen_ai.tool.name": tool_name,
        "gen_ai.request.model": model,
    }
    return {key: value for key, value in values.items() if value is not None}


class DecisionSpan:
    """The span of one gate decision, open while it is made; `record` puts the decision on
    it (and counts it) once it is known."""

    def __init__(self, telemetry: Telemetry, span: Any, tool_name: str | None, model: str | None):
        self._telemetry = telemetry
        self._span = span
        self._tool_name = tool_name
        self._model = model

    def record(self, gated: NodeGated, *, run_id: str | None, sequence: int | None) -> None:
        """Set the decision's attributes and count it by outcome."""
        attributes = decision_attributes(
            gated, run_id=run_id, sequence=sequence, tool_name=self._tool_name, model=self._model
        )
        if self._span is not None:
            self._span.set_attributes(attributes)
        self._telemetry.count(gated)


class ToolSpan:
    """The ``execute_tool`` span of one governed execution; `settled` adds its usage."""

    def __init__(self, span: Any) -> None:
        self._span = span

    def settled(self, usage: Usage, *, sequence: int | None, outcome: str) -> None:
        """The settled usage (GenAI token attributes, ``charter.usage.cost_usd``), the
        sequence of its ``usage_recorded`` and how the call ended (``completed`` |
        ``failed``)."""
        if self._span is None:
            return
        values: dict[str, Any] = {
            "gen_ai.usage.input_tokens": usage.input_tokens,
            "gen_ai.usage.output_tokens": usage.output_tokens,
            "charter.usage.cost_usd": usage.cost_usd,
            "charter.usage.tool_calls": usage.tool_calls,
            "charter.settlement": outcome,
        }
        if sequence is not None:
            values["charter.event.sequence"] = sequence
        self._span.set_attributes(values)


class Telemetry:
    """Where Charter's spans and the decision counter go: the global providers by default,
    or the given ones (tests pass the SDK's in-memory exporter and reader). Cheap to make;
    the tracer and counter are created on first use."""

    def __init__(self, *, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        self._tracer: Any = None
        self._counter: Any = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Whether the OpenTelemetry API is installed (else everything is a no-op)."""
        return AVAILABLE

    def _get_tracer(self) -> Any:
        if not AVAILABLE:
            return None
        if self._tracer is None:
            with self._lock:
                if self._tracer is None:
                    provider = self._tracer_provider or otel_trace.get_tracer_provider()
                    self._tracer = provider.get_tracer(INSTRUMENTATION_NAME)
        return self._tracer

    def _get_counter(self) -> Any:
        if not AVAILABLE:
            return None
        if self._counter is None:
            with self._lock:
                if self._counter is None:
                    provider = self._meter_provider or otel_metrics.get_meter_provider()
                    meter = provider.get_meter(INSTRUMENTATION_NAME)
                    self._counter = meter.create_counter(
                        DECISIONS_METRIC,
                        unit="{decision}",
                        description="Gate decisions, by outcome (run, hold, fail)",
                    )
        return self._counter

    def count(self, gated: NodeGated) -> None:
        """Count one decision by its outcome and deciding policy rule."""
        counter = self._get_counter()
        if counter is None:
            return
        attributes = {"charter.outcome": gated.outcome}
        if gated.policy_rule is not None:
            attributes["charter.policy.rule"] = gated.policy_rule
        counter.add(1, attributes)

    @contextlib.contextmanager
    def decision_span(
        self,
        node_id: str,
        *,
        tool_name: str | None = None,
        model: str | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> Iterator[DecisionSpan]:
        """A span open while a decision about ``node_id`` is made and recorded; call
        ``record`` on what it yields with the recorded decision."""
        tracer = self._get_tracer()
        if tracer is None:
            yield DecisionSpan(self, None, tool_name, model)
            return
        name = f"charter.gate {tool_name or model or node_id}"
        start = {"charter.node_id": node_id, **(attributes or {})}
        with tracer.start_as_current_span(name, attributes=start) as span:
            yield DecisionSpan(self, span, tool_name, model)

    def unset(self) -> bool:
        """Whether what this telemetry reports goes nowhere now: it has no providers of its
        own and no global ones are set yet, so its spans are the API's non-recording ones
        and its counts are dropped (the API's proxies start passing them on only once an
        application sets its providers). False when in doubt."""
        if not AVAILABLE:
            return True
        if self._tracer_provider is not None or self._meter_provider is not None:
            return False
        if self._tracer is None or self._counter is None:
            # As the first report would: the providers an environment names are set now.
            self._get_tracer()
            self._get_counter()
        # What the API's proxy tracer and counter look at before passing anything on.
        return (
            getattr(otel_trace, "_TRACER_PROVIDER", _SET) is None
            and getattr(_metrics_state, "_METER_PROVIDER", _SET) is None
        )

    def silent(self) -> bool:
        """Whether a span opened here now would change nothing: the telemetry is `unset`,
        and the current span records nothing — then the API's span is that current span
        itself (or, without the API, there is none), so code run inside it sees the same
        current span either way. False when in doubt."""
        if not AVAILABLE:
            return True
        current = otel_trace.get_current_span()
        return self.unset() and isinstance(current, otel_trace.NonRecordingSpan)

    def record_decision(
        self,
        gated: NodeGated,
        *,
        run_id: str | None = None,
        sequence: int | None = None,
        tool_name: str | None = None,
        model: str | None = None,
    ) -> None:
        """A decision already made (say, by a worker that has just committed it): one
        decision span carrying it, and the counter. Nothing at all while the telemetry is
        `unset`: nothing runs inside that span, so opening one that records nothing, and
        counting where nothing counts, would change nothing."""
        if self.unset():
            return
        with self.decision_span(gated.node_id, tool_name=tool_name, model=model) as span:
            span.record(gated, run_id=run_id, sequence=sequence)

    @contextlib.contextmanager
    def tool_span(
        self,
        tool_name: str,
        *,
        run_id: str | None = None,
        node_id: str | None = None,
        attempt: int | None = None,
        model: str | None = None,
        call_id: str | None = None,
    ) -> Iterator[ToolSpan]:
        """The ``execute_tool`` span around one execution; an exception escaping it marks
        the span as an error (``error.type``) and is re-raised."""
        tracer = self._get_tracer()
        if tracer is None or self.silent():
            yield ToolSpan(None)
            return
        values: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": tool_name,
            "gen_ai.tool.type": "function",
            "gen_ai.tool.call.id": call_id,
            "gen_ai.request.model": model,
            "charter.run_id": run_id,
            "charter.node_id": node_id,
            "charter.attempt": attempt,
        }
        start = {key: value for key, value in values.items() if value is not None}
        with tracer.start_as_current_span(
            f"execute_tool {tool_name}",
            attributes=start,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield ToolSpan(span)
            except BaseException as error:
                span.set_attribute("error.type", type(error).__qualname__)
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, str(error)))
                raise


_DEFAULT: Final = Telemetry()


def default_telemetry() -> Telemetry:
    """The `Telemetry` on the global providers (what `govern` uses unless given one)."""
    return _DEFAULT


def decision_span(
    node_id: str, *, tool_name: str | None = None, model: str | None = None
) -> contextlib.AbstractContextManager[DecisionSpan]:
    """`Telemetry.decision_span` on the global providers."""
    return _DEFAULT.decision_span(node_id, tool_name=tool_name, model=model)


def record_decision(
    gated: NodeGated,
    *,
    run_id: str | None = None,
    sequence: int | None = None,
    tool_name: str | None = None,
    model: str | None = None,
) -> None:
    """`Telemetry.record_decision` on the global providers: for the worker, once per
    committed ``node_gated`` (with its run and sequence)."""
    _DEFAULT.record_decision(
        gated, run_id=run_id, sequence=sequence, tool_name=tool_name, model=model
    )


def tool_span(
    tool_name: str,
    *,
    run_id: str | None = None,
    node_id: str | None = None,
    attempt: int | None = None,
    model: str | None = None,
    call_id: str | None = None,
) -> contextlib.AbstractContextManager[ToolSpan]:
    """`Telemetry.tool_span` on the global providers: for the worker, around an
    executor's call."""
    return _DEFAULT.tool_span(
        tool_name, run_id=run_id, node_id=node_id, attempt=attempt, model=model, call_id=call_id
    )
