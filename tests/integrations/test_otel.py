"""OpenTelemetry spans and the decision counter, through the real SDK: an in-memory span
exporter and an in-memory metric reader (no mocks)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import attrs
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from charter.adapters.memory import MemoryStore
from charter.adapters.otel import DECISIONS_METRIC, Telemetry
from charter.core.budget import Usage
from charter.core.events import NodeGated
from charter.integrations.govern import Governor, Held, Refused, report_usage


class Recorded:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.telemetry = Telemetry(
            tracer_provider=tracer_provider,
            meter_provider=MeterProvider(metric_readers=[self.reader]),
        )

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def decisions(self) -> dict[tuple[str, str | None], int]:
        counts: dict[tuple[str, str | None], int] = {}
        data = self.reader.get_metrics_data()
        assert data is not None
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name != DECISIONS_METRIC:
                        continue
                    for point in metric.data.data_points:
                        attributes = dict(point.attributes or {})
                        rule = attributes.get("charter.policy.rule")
                        key = (
                            str(attributes["charter.outcome"]),
                            None if rule is None else str(rule),
                        )
                        counts[key] = int(getattr(point, "value", 0))
        return counts


@pytest.fixture
def recorded() -> Recorded:
    return Recorded()


def _attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def test_a_governed_call_has_a_decision_span_and_an_execute_tool_span(
    recorded: Recorded,
) -> None:
    store = MemoryStore()
    governor = Governor(store=store, run_id="o1", telemetry=recorded.telemetry)

    @governor.tool(tool_name="search.web", model="gpt-4o")
    def search(query: str) -> str:
        report_usage(input_tokens=12, output_tokens=3, cost_usd=0.002)
        return query

    assert search("x") == "x"
    gate, tool = recorded.spans()
    assert gate.name == "charter.gate search.web"
    decision = _attributes(gate)
    gated = next(e for e in store.read_events("o1") if isinstance(e.kind, NodeGated))
    assert decision["charter.outcome"] == "run"
    assert decision["charter.run_id"] == "o1"
    assert decision["charter.node_id"] == "search.web"
    assert decision["charter.event.sequence"] == gated.sequence
    assert decision["charter.attempt"] == 0
    assert decision["gen_ai.request.model"] == "gpt-4o"

    assert tool.name == "execute_tool search.web"
    execution = _attributes(tool)
    assert execution["gen_ai.operation.name"] == "execute_tool"
    assert execution["gen_ai.tool.name"] == "search.web"
    assert execution["gen_ai.request.model"] == "gpt-4o"
    assert execution["gen_ai.usage.input_tokens"] == 12
    assert execution["gen_ai.usage.output_tokens"] == 3
    assert execution["charter.usage.cost_usd"] == 0.002
    assert execution["charter.settlement"] == "completed"
    assert execution["charter.event.sequence"] == gated.sequence + 1  # its usage_recorded
    assert recorded.decisions() == {("run", None): 1}


def test_refusals_and_holds_are_decision_spans_without_execution(recorded: Recorded) -> None:
    governor = Governor(
        store=MemoryStore(),
        run_id="o2",
        policy={"blocked_tools": ["db.*"], "require_approval_for": ["pay"]},
        telemetry=recorded.telemetry,
    )
    drop = governor.govern(lambda: None, tool_name="db.drop")
    pay = governor.govern(lambda: None, tool_name="pay")
    with pytest.raises(Refused):
        drop()
    with pytest.raises(Held):
        pay()
    spans = recorded.spans()
    assert [span.name for span in spans] == ["charter.gate db.drop", "charter.gate pay"]
    refused, held = (_attributes(span) for span in spans)
    assert refused["charter.outcome"] == "fail"
    assert refused["charter.policy.rule"] == "blocked_tools"
    assert refused["charter.policy.scope"] == "workflow"
    assert refused["charter.policy.pattern"] == "db.*"
    assert held["charter.outcome"] == "hold"
    assert held["charter.policy.rule"] == "require_approval_for"
    assert recorded.decisions() == {
        ("fail", "blocked_tools"): 1,
        ("hold", "require_approval_for"): 1,
    }


def test_an_exception_marks_the_execute_tool_span(recorded: Recorded) -> None:
    governor = Governor(store=MemoryStore(), run_id="o3", telemetry=recorded.telemetry)

    async def broken() -> None:
        raise RuntimeError("down")

    call = governor.govern(broken)
    with pytest.raises(RuntimeError, match="down"):
        asyncio.run(call())
    _, tool = recorded.spans()
    assert tool.status.status_code is StatusCode.ERROR
    assert _attributes(tool)["error.type"] == "RuntimeError"
    assert _attributes(tool)["charter.settlement"] == "errored"


def test_the_worker_helper_records_a_committed_decision(recorded: Recorded) -> None:
    gated = NodeGated(
        node_id="issue_refund",
        attempt=1,
        outcome="hold",
        reason="approval needed",
        policy_decision="require_approval",
        policy_scope="tenant",
        policy_rule="require_approval_for",
        policy_pattern="payments.*",
    )
    recorded.telemetry.record_decision(
        gated, run_id="refund-1", sequence=9, tool_name="payments.refund"
    )
    with recorded.telemetry.tool_span("payments.refund", run_id="refund-1", node_id="n") as span:
        span.settled(Usage(input_tokens=5, output_tokens=1), sequence=12, outcome="completed")
    decision, tool = recorded.spans()
    assert _attributes(decision) == {
        "charter.node_id": "issue_refund",
        "charter.outcome": "hold",
        "charter.reason": "approval needed",
        "charter.policy.decision": "require_approval",
        "charter.policy.rule": "require_approval_for",
        "charter.policy.scope": "tenant",
        "charter.policy.pattern": "payments.*",
        "charter.run_id": "refund-1",
        "charter.attempt": 1,
        "charter.event.sequence": 9,
        "gen_ai.tool.name": "payments.refund",
    }
    assert _attributes(tool)["gen_ai.usage.input_tokens"] == 5
    assert recorded.decisions() == {("hold", "require_approval_for"): 1}


def test_the_worker_reports_every_decision_and_execution(recorded: Recorded) -> None:
    # The worker's own runs carry the same spans as governed calls (upstream's worker
    # emitted them): a decision span per recorded node_gated, an execute_tool span per
    # executed node, and the counter.
    from pathlib import Path

    from charter.adapters.files import load_policy_layer, load_workflow_file
    from charter.adapters.memory import MemoryStore
    from charter.bootstrap import build_worker
    from charter.core.policy import PolicyScope
    from charter.core.records import Tenant
    from charter.worker import drive, start_run

    examples = Path(__file__).resolve().parents[2] / "examples"
    store = MemoryStore()
    now = store.clock.now()
    policy = load_policy_layer(examples / "tenant-acme.yaml", PolicyScope.TENANT)
    store.put_tenant(Tenant(tenant_id="acme", policy=policy, created_at=now, updated_at=now))
    workflow, _ = load_workflow_file(examples / "research.yaml")
    execution = start_run(store, workflow, tenant_id="acme")
    worker = build_worker(store, telemetry=recorded.telemetry)
    drive(worker, execution.execution_id)
    events = store.read_events(execution.execution_id)
    gated = [(e.sequence, e.kind) for e in events if isinstance(e.kind, NodeGated)]
    spans = recorded.spans()
    decisions = [s for s in spans if "charter.outcome" in _attributes(s)]
    tools = [s for s in spans if _attributes(s).get("gen_ai.operation.name") == "execute_tool"]
    assert sorted(_attributes(s)["charter.event.sequence"] for s in decisions) == sorted(
        sequence for sequence, _ in gated
    )
    ran = [kind for _, kind in gated if kind.outcome == "run"]
    assert len(tools) == len(ran) > 0
    assert {_attributes(s)["charter.run_id"] for s in decisions} == {execution.execution_id}
    assert sum(recorded.decisions().values()) == len(gated)


def test_without_the_api_everything_is_a_no_op() -> None:
    """A process where ``opentelemetry`` cannot be imported still governs calls."""
    script = """
import sys
sys.modules["opentelemetry"] = None  # as if not installed
from charter.adapters.memory import MemoryStore
from charter.adapters import otel
from charter.integrations.govern import govern
assert not otel.AVAILABLE
double = govern(lambda x: 2 * x, store=MemoryStore(), tool_name="double")
assert double(21) == 42
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_a_failing_exporter_never_fails_a_node(
    recorded: Recorded, caplog: pytest.LogCaptureFixture
) -> None:
    # Decisions are reported after they are committed: an exporter that raises must not
    # turn into an error of the attempt (the worker would try to fail a settled claim).
    from pathlib import Path

    from charter.adapters.files import load_workflow_file
    from charter.adapters.memory import MemoryStore
    from charter.bootstrap import build_worker
    from charter.worker import drive, start_run

    class Broken(Telemetry):
        def record_decision(self, gated: NodeGated, **fields: Any) -> None:
            raise RuntimeError("exporter down")

    examples = Path(__file__).resolve().parents[2] / "examples"
    store = MemoryStore()
    workflow, _ = load_workflow_file(examples / "research.yaml")
    workflow = attrs.evolve(workflow, tenant_id="default")
    execution = start_run(store, workflow, tenant_id="default")
    worker = build_worker(store, telemetry=Broken())
    outcome = drive(worker, execution.execution_id)
    clean = build_worker(MemoryStore(), telemetry=recorded.telemetry)
    expected = drive(clean, start_run(clean.store, workflow, tenant_id="default").execution_id)
    assert outcome.status == expected.status
    events = store.read_events(execution.execution_id)
    assert not any("exporter down" in str(event.kind) for event in events)
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert errors == []
    assert any("could not report a decision span" in r.getMessage() for r in caplog.records)


_GLOBALS_SCRIPT = """
import sys
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from charter.adapters.otel import default_telemetry
from charter.core.events import NodeGated

gated = NodeGated(node_id="n", attempt=1, outcome="run", reason="ok", as_of=3)
telemetry = default_telemetry()
assert telemetry.unset()
telemetry.record_decision(gated, run_id="r", sequence=4)  # goes nowhere: no providers yet
which = sys.argv[1]
exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
if which == "traces":
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
else:
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
# Set either one, the same telemetry (its tracer and counter made before) reports again.
assert not telemetry.unset()
telemetry.record_decision(gated, run_id="r", sequence=9)
if which == "traces":
    spans = exporter.get_finished_spans()
    assert [span.attributes["charter.event.sequence"] for span in spans] == [9], spans
else:
    data = reader.get_metrics_data()
    points = [
        point.value
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
    ]
    assert points == [1], points
print("ok")
"""


@pytest.mark.parametrize("which", ["traces", "metrics"])
def test_decisions_go_nowhere_only_until_a_global_provider_is_set(which: str) -> None:
    """Without providers of its own or global ones, `Telemetry.record_decision` does nothing
    (the API would drop it anyway); once an application sets either global provider, the
    same telemetry reports every decision again."""
    done = subprocess.run(
        [sys.executable, "-c", _GLOBALS_SCRIPT, which],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_telemetry_with_its_own_providers_is_never_unset(recorded: Recorded) -> None:
    assert not recorded.telemetry.unset()


_SILENT_SCRIPT = """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from charter.adapters.otel import default_telemetry

telemetry = default_telemetry()
assert telemetry.silent()
outside = trace.get_current_span()
with telemetry.tool_span("t", run_id="r", node_id="n", attempt=1):
    assert trace.get_current_span() is outside  # what an executor sees: the same span
# An application's own provider (not the global one) with a span current: the tool span
# is opened as before (the API's non-recording child of it).
exporter = InMemorySpanExporter()
own = TracerProvider()
own.add_span_processor(SimpleSpanProcessor(exporter))
with own.get_tracer("app").start_as_current_span("app") as app:
    assert not telemetry.silent()
    with telemetry.tool_span("t", run_id="r", node_id="n", attempt=1):
        inner = trace.get_current_span()
        assert inner is not app
        assert inner.get_span_context() == app.get_span_context()
# Once the global provider is set, the same telemetry records tool spans.
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
assert not telemetry.silent()
with telemetry.tool_span("t", run_id="r", node_id="n", attempt=1):
    pass
assert [s.name for s in exporter.get_finished_spans()] == ["app", "execute_tool t"]
print("ok")
"""


def test_a_silent_tool_span_is_not_opened_and_changes_nothing() -> None:
    """`Telemetry.silent`: no provider set and no recording span current; then a tool span
    is not opened, and code inside sees the current span it would have seen."""
    done = subprocess.run(
        [sys.executable, "-c", _SILENT_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
