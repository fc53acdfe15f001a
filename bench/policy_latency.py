"""Policy decision latency: Charter's `PolicyEvaluator` beside cedarpy and pycasbin.

Run with ``python -m bench.policy_latency [--quick] [--json PATH]``; a Markdown report goes to
stdout, progress to stderr. See ``docs/performance.md`` for what is measured and why.

For each rule count (10, 100, 1,000, 10,000) one rule list is generated: even positions are
literal names ``svc{i}.op{i}``, odd positions prefix globs ``ns{i}.*``. Every engine blocks
(denies) a tool whose name matches any rule, and allows everything else:

* **Charter**: one `PolicySet(blocked_tools=rules)`, decided by `PolicyEvaluator().evaluate`
  with an `EvaluationContext` built beforehand (and, in a second column, built in each call).
* **cedarpy**: ``permit(principal, action, resource);`` plus one ``forbid … when
  { resource.name like "<rule>" };`` per rule, parsed once into a ``cedarpy.PolicySet`` handle;
  the resource entity (with its ``name`` attribute) is parsed once into a ``cedarpy.Entities``
  handle, so each call pays for authorization only.
* **pycasbin**: an `Enforcer` built once from in-memory model text whose matcher is
  ``globMatch(r.obj, p.obj)``, one ``deny`` policy line per rule, and the effect
  ``!some(where (p.eft == deny))``.
* **floor**: the least work such a decision can do in Python: one call of a function doing a
  ``dict`` membership test and one ``str.startswith``.

Two queries per rule count: a *miss* (``svc{n}.op{n}``, which no rule matches) and a *hit* on
the last rule of the list. Before timing, every engine's answer to both queries is checked
(deny on the hit, allow on the miss); a wrong answer stops the run.

**The whole gate** (the call an embedder makes, docs/embedding.md): build a `GateRequest`
(context, policy chain and budget state prepared beforehand, as a worker holds them) and call
`gate_node`, under a three-layer question — a tenant set blocking ``db.drop_*``, a workflow
set requiring approval for ``payments.*`` and a token and cost budget. *RUN* asks for
``orders.lookup`` (allowed), *HOLD* for ``payments.refund`` (held: a ``node_gated`` and a
``tool_approval_required`` event, two request digests). Beside it, **cedarpy deciding the
same question** with prebuilt handles: a permit-all, a forbid for the tenant glob, a forbid
for the approval glob unless ``context.approved``, and a forbid when the context's token or
cost totals reach the limits; the RUN query is allowed and the HOLD query denied by the
approval policy (checked before timing). And **serialising each returned event** for the log
(`charter.adapters.codec.event_text`: the canonical JSON text a store writes), per event.

**Conditional rules** (``{tool: PATTERN, when: CONDITION}``, docs/semantics.md §2.6): a set of
*k* conditional block rules (k = 0, 1, 10, 100), each ``when: call.args.amount > <1000 + i>``,
decided for ``payments.refund`` on a call with ``amount: 120`` (so every condition is false and
the node is allowed). *judged*: every rule's pattern is ``payments.*``, so every condition is
evaluated; *skipped*: every pattern is ``ledger.*``, so only the glob is tried. The report
gives the cost per conditional rule: (median at 100 − median at 0) / 100.

Timing: each (engine, rule count, query) is a *probe*, timed in batches with `timeit` (garbage
collection off, as timeit does). A batch repeats the call enough times to last at least a few
milliseconds; the per-call average of each batch is one sample, and the report gives the median
and the 90th percentile of the samples. Everything is built and verified first; then the
batches of all probes (every engine, rule count and query) are interleaved round-robin, so that
a burst of load on a shared machine hits every engine and rule count alike. Slow probes get
fewer batches (a time budget per probe, with a minimum count) instead of being skipped.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
import timeit
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from charter.adapters.codec import event_text
from charter.core.budget import BudgetLimits, BudgetState
from charter.core.gate import GateRequest, Outcome, gate_node
from charter.core.policy import (
    Allow,
    Block,
    ConditionalRule,
    EvaluationContext,
    PolicyEvaluator,
    PolicySet,
    policy_chain,
)

__all__ = ["main", "rule_patterns", "run"]

RULE_COUNTS: tuple[int, ...] = (10, 100, 1_000, 10_000)
QUERIES: tuple[str, ...] = ("miss", "hit")

#: Targets from the issue, reported against and never asserted.
TARGET_MAX_MEDIAN_US = 5.0
TARGET_FLAT_RATIO = 1.5  # median at the largest rule count / median at the smallest
TARGET_RATIO_RULES = 1_000
TARGET_CEDAR_RATIO = 100.0
TARGET_CASBIN_RATIO = 1_000.0
TARGET_GATE_RUN_US = 5.0
TARGET_GATE_HOLD_US = 15.0
TARGET_EVENT_US = 5.0
TARGET_GATE_CEDAR_RATIO = 10.0

#: The whole-gate probes' pseudo rule count (three layers: tenant, workflow, budget).
GATE_RULES = 3
GATE_QUERIES: dict[str, str] = {"run": "orders.lookup", "hold": "payments.refund"}


#: The conditional-rule probes: rule counts, and each query's rule pattern.
CONDITIONAL_COUNTS: tuple[int, ...] = (0, 1, 10, 100)
CONDITIONAL_QUERIES: dict[str, str] = {"judged": "payments.*", "skipped": "ledger.*"}
CONDITIONAL_CALL: dict[str, Any] = {"args": {"order_id": "A-1042", "amount": 120}}


class BenchmarkError(RuntimeError):
    """An engine gave a wrong decision, or could not be set up."""


# ── settings ───────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Settings:
    """How long to measure."""

    name: str
    batch_seconds: float  # a batch lasts at least this long (one call if the call is slower)
    probe_budget_seconds: float  # timing budget of one probe, shared by its batches
    min_batches: int
    max_batches: int
    build_budget_seconds: float  # budget for repeated builds of one engine at one rule count
    max_builds: int


FULL = Settings("full", 0.005, 3.0, 21, 301, 1.0, 25)
QUICK = Settings("quick", 0.002, 0.4, 7, 51, 0.2, 5)


# ── rules and engines ──────────────────────────────────────────────────────────────────


def rule_patterns(count: int) -> list[str]:
    """The benchmark's rules: half literal names, half prefix globs, alternating."""
    return [f"svc{i}.op{i}" if i % 2 == 0 else f"ns{i}.*" for i in range(count)]


def query_names(patterns: Sequence[str]) -> dict[str, str]:
    """The tool name of each query: one that no rule matches, one matching only the last rule."""
    count = len(patterns)
    last = patterns[-1]
    hit = last[:-1] + "run" if last.endswith("*") else last
    return {"miss": f"svc{count}.op{count}", "hit": hit}


@dataclass(frozen=True)
class Probe:
    """One decision, ready to time: ``stmt`` runs it with names from ``namespace``;
    ``denied()`` runs it once and says whether the engine denied."""

    stmt: str
    namespace: dict[str, Any]
    denied: Callable[[], bool]


#: An engine compiled for one rule list: gives the probe for a tool name.
ProbeFactory = Callable[[str], Probe]


@dataclass(frozen=True)
class Engine:
    key: str
    label: str
    build_label: str
    build: Callable[[Sequence[str]], ProbeFactory]
    #: The distribution to import (and report the version of); ``None`` for in-tree engines.
    distribution: str | None = None
    module: str | None = None


def _charter_decision(decision: object) -> bool:
    if isinstance(decision, Block):
        return True
    if isinstance(decision, Allow):
        return False
    raise BenchmarkError(f"Charter: unexpected decision {decision!r}")


def _build_charter(patterns: Sequence[str]) -> ProbeFactory:
    evaluator = PolicyEvaluator()
    sets = (PolicySet(blocked_tools=patterns),)

    def probe(name: str) -> Probe:
        ctx = EvaluationContext("node-1", "tool", tool_name=name)
        return Probe(
            "evaluator.evaluate(ctx, sets)",
            {"evaluator": evaluator, "ctx": ctx, "sets": sets},
            lambda: _charter_decision(evaluator.evaluate(ctx, sets)),
        )

    return probe


def _build_charter_with_context(patterns: Sequence[str]) -> ProbeFactory:
    evaluator = PolicyEvaluator()
    sets = (PolicySet(blocked_tools=patterns),)

    def probe(name: str) -> Probe:
        def decide() -> bool:
            ctx = EvaluationContext("node-1", "tool", tool_name=name)
            return _charter_decision(evaluator.evaluate(ctx, sets))

        return Probe(
            'evaluator.evaluate(EvaluationContext("node-1", "tool", tool_name=name), sets)',
            {
                "evaluator": evaluator,
                "EvaluationContext": EvaluationContext,
                "name": name,
                "sets": sets,
            },
            decide,
        )

    return probe


def _floor_decide(name: str, literals: frozenset[str], prefix: str) -> bool:
    """The minimal decision: one hash probe for the literal rules, one prefix comparison."""
    return name in literals or name.startswith(prefix)


def _build_floor(patterns: Sequence[str]) -> ProbeFactory:
    literals = frozenset(p for p in patterns if not p.endswith("*"))
    # The prefix of the last prefix rule: the one the hit query needs. A real index would have
    # to find it (Charter probes a dict once per distinct prefix length); the floor does not.
    prefix = next(p[:-1] for p in reversed(patterns) if p.endswith("*"))

    def probe(name: str) -> Probe:
        return Probe(
            "decide(name, literals, prefix)",
            {"decide": _floor_decide, "name": name, "literals": literals, "prefix": prefix},
            lambda: _floor_decide(name, literals, prefix),
        )

    return probe


def cedar_policy_text(patterns: Sequence[str]) -> str:
    """One permit-all policy and one forbid per rule, matching the resource's ``name``."""
    lines = ["permit(principal, action, resource);"]
    for pattern in patterns:
        if '"' in pattern or "\\" in pattern:
            raise BenchmarkError(f"pattern {pattern!r} would need Cedar string escaping")
        lines.append(
            f'forbid(principal, action, resource) when {{ resource.name like "{pattern}" }};'
        )
    return "\n".join(lines) + "\n"


def _build_cedar(patterns: Sequence[str]) -> ProbeFactory:
    cedarpy = importlib.import_module("cedarpy")
    policies = cedarpy.PolicySet.from_str(cedar_policy_text(patterns))
    if len(policies) != len(patterns) + 1:
        raise BenchmarkError(
            f"cedarpy parsed {len(policies)} policies, expected {len(patterns) + 1}"
        )
    is_authorized = cedarpy.is_authorized

    def probe(name: str) -> Probe:
        request = {
            "principal": 'Agent::"bench"',
            "action": 'Action::"call_tool"',
            "resource": f'Tool::"{name}"',
        }
        entity = {"uid": {"type": "Tool", "id": name}, "attrs": {"name": name}, "parents": []}
        entities = cedarpy.Entities.from_json_str(json.dumps([entity]))

        def denied() -> bool:
            result = is_authorized(request, policies, entities)
            errors = list(result.diagnostics.errors)
            if errors:
                raise BenchmarkError(f"cedarpy reported errors for {name!r}: {errors}")
            return not bool(result.allowed)

        return Probe(
            "is_authorized(request, policies, entities)",
            {
                "is_authorized": is_authorized,
                "request": request,
                "policies": policies,
                "entities": entities,
            },
            denied,
        )

    return probe


CASBIN_MODEL = """
[request_definition]
r = obj

[policy_definition]
p = obj, eft

[policy_effect]
e = !some(where (p.eft == deny))

[matchers]
m = globMatch(r.obj, p.obj)
"""


def _build_casbin(patterns: Sequence[str]) -> ProbeFactory:
    casbin = importlib.import_module("casbin")
    casbin_model = importlib.import_module("casbin.model")
    model = casbin_model.Model()
    model.load_model_from_text(CASBIN_MODEL)
    enforcer = casbin.Enforcer(model)
    if patterns and not enforcer.add_policies([[pattern, "deny"] for pattern in patterns]):
        raise BenchmarkError("pycasbin refused the policy lines")
    loaded = len(enforcer.get_policy())
    if loaded != len(patterns):
        raise BenchmarkError(f"pycasbin holds {loaded} policy lines, expected {len(patterns)}")

    def probe(name: str) -> Probe:
        return Probe(
            "enforcer.enforce(name)",
            {"enforcer": enforcer, "name": name},
            lambda: not bool(enforcer.enforce(name)),
        )

    return probe


ENGINES: tuple[Engine, ...] = (
    Engine("floor", "floor (dict + startswith)", "—", _build_floor),
    Engine("charter", "Charter", "Charter `PolicySet`", _build_charter),
    Engine("charter_ctx", "Charter + ctx", "—", _build_charter_with_context),
    Engine(
        "cedarpy",
        "cedarpy",
        "cedarpy `PolicySet.from_str`",
        _build_cedar,
        distribution="cedarpy",
        module="cedarpy",
    ),
    Engine(
        "casbin",
        "pycasbin",
        "pycasbin `Enforcer` + `add_policies`",
        _build_casbin,
        distribution="casbin",
        module="casbin",
    ),
)

ENGINE_KEYS = frozenset(engine.key for engine in ENGINES)

#: Engines whose build time is reported (the others share Charter's build or have none).
BUILD_ENGINES: tuple[str, ...] = ("charter", "cedarpy", "casbin")


# ── the whole gate ─────────────────────────────────────────────────────────────────────

GATE_NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
GATE_CALL = {"order": "A-17", "amount": 40}
GATE_TOKENS = (1_200, 300)
GATE_LIMITS = (50_000, 5.0)

CEDAR_GATE_POLICY = """
permit(principal, action, resource);
@id("tenant-block")
forbid(principal, action, resource) when { resource.name like "db.drop_*" };
@id("workflow-approval")
forbid(principal, action, resource) when { resource.name like "payments.*" && !context.approved };
@id("budget")
forbid(principal, action, resource)
  when { context.total_tokens >= 50000 || context.cost_nanos >= 5000000000 };
"""


def _gate_context(name: str) -> EvaluationContext:
    return EvaluationContext(name.split(".")[-1], "tool", tool_name=name)


def _answer(value: bool) -> Callable[[], bool]:
    """A probe's ``denied`` for the whole-gate probes, whose answers are checked when built."""
    return lambda: value


def gate_probes() -> dict[tuple[str, int, str], Probe]:
    """The whole-gate probes (Charter build + `gate_node`, event serialisation) and cedarpy's
    equivalent decision, each verified once."""
    chain = policy_chain(
        tenant=PolicySet(blocked_tools=["db.drop_*"]),
        workflow=PolicySet(require_approval_for=["payments.*"]),
    )
    budget = BudgetState(total_input_tokens=GATE_TOKENS[0], total_output_tokens=GATE_TOKENS[1])
    limits = BudgetLimits(total_tokens=GATE_LIMITS[0], cost_usd=GATE_LIMITS[1])
    probes: dict[tuple[str, int, str], Probe] = {}
    events: dict[str, Any] = {}
    for query, name in GATE_QUERIES.items():
        ctx = _gate_context(name)
        namespace = {
            "gate_node": gate_node,
            "GateRequest": GateRequest,
            "ctx": ctx,
            "chain": chain,
            "budget": budget,
            "limits": limits,
            "call": GATE_CALL,
            "now": GATE_NOW,
        }

        def decide(ctx: EvaluationContext = ctx) -> Any:
            return gate_node(
                GateRequest(
                    context=ctx,
                    policies=chain,
                    budget=budget,
                    limits=limits,
                    call=GATE_CALL,
                    now=GATE_NOW,
                )
            )

        result = decide()
        want = Outcome.RUN if query == "run" else Outcome.HOLD
        if result.outcome is not want:
            raise BenchmarkError(f"gate_node gave {result.outcome} for {name!r}, expected {want}")
        for kind in result.events:
            events.setdefault(type(kind).__name__, kind)
        probes[("gate", GATE_RULES, query)] = Probe(
            "gate_node(GateRequest(context=ctx, policies=chain, budget=budget, limits=limits,"
            " call=call, now=now))",
            namespace,
            _answer(query == "hold"),
        )
    for label, kind in events.items():
        probes[("event_text", GATE_RULES, label)] = Probe(
            "event_text(kind)",
            {"event_text": event_text, "kind": kind},
            _answer(not isinstance(event_text(kind), str)),
        )
    try:
        cedarpy = importlib.import_module("cedarpy")
    except ImportError:
        return probes
    policies = cedarpy.PolicySet.from_str(CEDAR_GATE_POLICY)
    is_authorized = cedarpy.is_authorized
    for query, name in GATE_QUERIES.items():
        request = {
            "principal": 'Agent::"bench"',
            "action": 'Action::"call_tool"',
            "resource": f'Tool::"{name}"',
            "context": {
                "total_tokens": sum(GATE_TOKENS),
                "cost_nanos": 0,
                "approved": False,
            },
        }
        entity = {"uid": {"type": "Tool", "id": name}, "attrs": {"name": name}, "parents": []}
        entities = cedarpy.Entities.from_json_str(json.dumps([entity]))
        answer = is_authorized(request, policies, entities)
        if list(answer.diagnostics.errors):
            raise BenchmarkError(f"cedarpy errors: {list(answer.diagnostics.errors)}")
        reasons = set(answer.diagnostics.reasons)
        denied = not bool(answer.allowed)
        # cedarpy names parsed policies policy0, policy1, … in order (the approval forbid is
        # the third); an engine honouring @id would say workflow-approval.
        approval = ({"policy2"}, {"workflow-approval"})
        if denied != (query == "hold") or (denied and reasons not in approval):
            raise BenchmarkError(f"cedarpy answered {answer.allowed} ({reasons}) for {name!r}")
        probes[("cedar_gate", GATE_RULES, query)] = Probe(
            "is_authorized(request, policies, entities)",
            {
                "is_authorized": is_authorized,
                "request": request,
                "policies": policies,
                "entities": entities,
            },
            _answer(denied),
        )
    return probes


def conditional_probes() -> dict[tuple[str, int, str], Probe]:
    """The conditional-rule probes (module doc), each verified to allow once."""
    evaluator = PolicyEvaluator()
    ctx = EvaluationContext("refund", "tool", tool_name="payments.refund")
    probes: dict[tuple[str, int, str], Probe] = {}
    for query, pattern in CONDITIONAL_QUERIES.items():
        for count in CONDITIONAL_COUNTS:
            rules = [
                ConditionalRule("tool", pattern, f"call.args.amount > {1000 + i}")
                for i in range(count)
            ]
            sets = (PolicySet(blocked_tools=rules),)
            verdict = evaluator.explain(ctx, sets, call=CONDITIONAL_CALL)
            if not isinstance(verdict.decision, Allow):
                raise BenchmarkError(f"conditional rules ({query}, {count}): {verdict}")
            probes[("conditional", count, query)] = Probe(
                "evaluator.evaluate(ctx, sets, call=call)",
                {"evaluator": evaluator, "ctx": ctx, "sets": sets, "call": CONDITIONAL_CALL},
                _answer(False),
            )
    return probes


def conditional_summary(report: Report) -> dict[str, Any]:
    """Medians (µs) per rule count and the cost per conditional rule, for each query."""
    out: dict[str, Any] = {}
    low, high = CONDITIONAL_COUNTS[0], CONDITIONAL_COUNTS[-1]
    for query in CONDITIONAL_QUERIES:
        medians = {
            count: _median(report, "conditional", count, query) for count in CONDITIONAL_COUNTS
        }
        first, last = medians[low], medians[high]
        per_rule = (last - first) / (high - low) if first is not None and last is not None else None
        out[query] = {"median_us": medians, "per_rule_us": per_rule}
    return out


def _conditional_markdown(report: Report) -> list[str]:
    summary = conditional_summary(report)
    by_key = {(m.engine, m.rules, m.query): m for m in report.measurements}
    lines = [
        "",
        "#### Conditional rules (µs per decision: median, p90 in brackets)",
        "",
        "k conditional block rules `when: call.args.amount > …` (all false on the call);",
        "*judged*: every pattern matches the tool, so every condition is evaluated; *skipped*:",
        "no pattern matches, so only the glob is tried.",
        "",
        "| query | " + " | ".join(f"k = {k}" for k in CONDITIONAL_COUNTS) + " | per rule |",
        "|:---|" + "---:|" * (len(CONDITIONAL_COUNTS) + 1),
    ]
    for query in CONDITIONAL_QUERIES:
        cells = [query]
        for count in CONDITIONAL_COUNTS:
            found = by_key.get(("conditional", count, query))
            cells.append("—" if found is None else f"{_us(found.median_us)} [{_us(found.p90_us)}]")
        per_rule = summary[query]["per_rule_us"]
        cells.append("—" if per_rule is None else f"{per_rule * 1e3:,.0f} ns")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


# ── measurement ────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Measurement:
    engine: str
    rules: int
    query: str
    median_us: float
    p90_us: float
    batches: int
    calls_per_batch: int


@dataclass(frozen=True)
class BuildCost:
    engine: str
    rules: int
    median_ms: float
    builds: int


@dataclass
class _Timed:
    key: tuple[str, int, str]
    timer: timeit.Timer
    number: int
    batches: int
    samples: list[float]


def _calibrate(timer: timeit.Timer, batch_seconds: float) -> tuple[int, float]:
    """Calls per batch (1, 2, 5, 10, 20, … as `timeit.Timer.autorange`) for a batch of at
    least ``batch_seconds``, and the per-call time seen."""
    number = 1
    while True:
        for factor in (1, 2, 5):
            calls = number * factor
            elapsed = timer.timeit(calls)
            if elapsed >= batch_seconds:
                return calls, elapsed / calls
        number *= 10


def _percentile(samples: Sequence[float], fraction: float) -> float:
    ordered = sorted(samples)
    if len(ordered) == 1:
        return ordered[0]
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _measure(probes: dict[tuple[str, int, str], Probe], settings: Settings) -> list[Measurement]:
    timed: list[_Timed] = []
    for key, probe in probes.items():
        timer = timeit.Timer(probe.stmt, globals=probe.namespace)
        timer.timeit(1)  # warm up (first-call caches, lazy imports)
        number, per_call = _calibrate(timer, settings.batch_seconds)
        affordable = int(settings.probe_budget_seconds / max(per_call * number, 1e-9))
        batches = max(settings.min_batches, min(settings.max_batches, affordable))
        timed.append(_Timed(key, timer, number, batches, []))
    rounds = max(t.batches for t in timed)
    for round_index in range(rounds):
        for entry in timed:
            # Spread a probe's batches evenly over the rounds, interleaved with the others.
            due = (
                round_index + 1
            ) * entry.batches // rounds - round_index * entry.batches // rounds
            for _ in range(due):
                entry.samples.append(entry.timer.timeit(entry.number) / entry.number)
    return [
        Measurement(
            engine=entry.key[0],
            rules=entry.key[1],
            query=entry.key[2],
            median_us=statistics.median(entry.samples) * 1e6,
            p90_us=_percentile(entry.samples, 0.9) * 1e6,
            batches=len(entry.samples),
            calls_per_batch=entry.number,
        )
        for entry in timed
    ]


def _time_build(
    engine: Engine, patterns: Sequence[str], settings: Settings
) -> tuple[ProbeFactory, BuildCost]:
    durations: list[float] = []
    while True:
        gc.collect()
        start = time.perf_counter()
        factory = engine.build(patterns)
        durations.append(time.perf_counter() - start)
        if len(durations) >= settings.max_builds:
            break
        if len(durations) >= 3 and sum(durations) >= settings.build_budget_seconds:
            break
    cost = BuildCost(engine.key, len(patterns), statistics.median(durations) * 1e3, len(durations))
    return factory, cost


def _verify(label: str, rules: int, query: str, name: str, probe: Probe) -> None:
    denied = probe.denied()
    expected = query == "hit"
    if denied != expected:
        want = "deny" if expected else "allow"
        got = "deny" if denied else "allow"
        raise BenchmarkError(
            f"{label} at {rules} rules answered {got} for the {query} query {name!r}; "
            f"expected {want}"
        )


# ── run ────────────────────────────────────────────────────────────────────────────────


@dataclass
class Report:
    settings: Settings
    started: str
    finished: str
    machine: dict[str, Any]
    peers: dict[str, str | None]  # engine key → version, None when not installed
    loop_overhead_us: float
    measurements: list[Measurement]
    builds: list[BuildCost]


def _peer_version(engine: Engine) -> str | None:
    if engine.module is None:
        return "in-tree"
    try:
        importlib.import_module(engine.module)
    except ImportError:
        return None
    try:
        return importlib.metadata.version(engine.distribution or engine.module)
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine() -> dict[str, Any]:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cores": os.cpu_count(),
        "usable_cores": affinity,
        "cpu": _cpu_model(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "load_average_at_start": list(load) if load is not None else None,
    }


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(settings: Settings, rule_counts: Sequence[int] = RULE_COUNTS) -> Report:
    """Build, verify and time every available engine at every rule count."""
    started = datetime.now(UTC).isoformat(timespec="seconds")
    machine = _machine()
    peers = {engine.key: _peer_version(engine) for engine in ENGINES}
    available = [engine for engine in ENGINES if peers[engine.key] is not None]
    for engine in ENGINES:
        if peers[engine.key] is None:
            _progress(f"{engine.label}: not installed, skipped")
    overhead = min(timeit.repeat("pass", number=1_000_000, repeat=5)) / 1_000_000 * 1e6
    builds: list[BuildCost] = []
    # Everything is built (and verified) first, then all probes of all rule counts are timed
    # together, so that drift in the machine's load cannot masquerade as a cost of rule count.
    probes: dict[tuple[str, int, str], Probe] = {}
    for rules in rule_counts:
        patterns = rule_patterns(rules)
        names = query_names(patterns)
        for engine in available:
            _progress(f"{rules:>6} rules: building {engine.label}")
            factory, cost = _time_build(engine, patterns, settings)
            if engine.key in BUILD_ENGINES:
                builds.append(cost)
            for query in QUERIES:
                probe = factory(names[query])
                _verify(engine.label, rules, query, names[query], probe)
                probes[(engine.key, rules, query)] = probe
    _progress("building the whole-gate probes")
    probes.update(gate_probes())
    _progress("building the conditional-rule probes")
    probes.update(conditional_probes())
    _progress(f"timing {len(probes)} probes, interleaved")
    measurements = _measure(probes, settings)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    machine["load_average_at_end"] = list(load) if load is not None else None
    return Report(
        settings=settings,
        started=started,
        finished=datetime.now(UTC).isoformat(timespec="seconds"),
        machine=machine,
        peers=peers,
        loop_overhead_us=overhead,
        measurements=measurements,
        builds=builds,
    )


# ── report ─────────────────────────────────────────────────────────────────────────────


def _us(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _ratio(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}×"
    return f"{value:.1f}×" if value >= 10 else f"{value:.2f}×"


def _ms(value: float) -> str:
    return f"{value:,.1f}" if value >= 10 else f"{value:.2f}"


@dataclass(frozen=True)
class Target:
    description: str
    measured: str
    met: bool | None  # None: could not be evaluated (a peer is not installed)


def _median(report: Report, engine: str, rules: int, query: str) -> float | None:
    for m in report.measurements:
        if (m.engine, m.rules, m.query) == (engine, rules, query):
            return m.median_us
    return None


def targets(report: Report) -> list[Target]:
    """The issue's targets, evaluated on ``report`` (never asserted)."""
    counts = sorted({m.rules for m in report.measurements if m.engine in ENGINE_KEYS})
    result: list[Target] = []
    charter = {
        (m.rules, m.query): m.median_us for m in report.measurements if m.engine == "charter"
    }
    if not charter:
        return result
    worst_key = max(charter, key=lambda key: charter[key])
    worst = charter[worst_key]
    result.append(
        Target(
            f"Charter median ≤ {TARGET_MAX_MEDIAN_US:g} µs at every rule count",
            f"worst {_us(worst)} µs ({worst_key[1]}, {worst_key[0]:,} rules)",
            worst <= TARGET_MAX_MEDIAN_US,
        )
    )
    if len(counts) >= 2:
        low, high = counts[0], counts[-1]
        parts = []
        flat = True
        for query in QUERIES:
            ratio = charter[(high, query)] / charter[(low, query)]
            flat = flat and ratio <= TARGET_FLAT_RATIO
            parts.append(f"{query} {_ratio(ratio)}")
        result.append(
            Target(
                f"Charter flat in rule count (median at {high:,} / at {low:,} ≤ "
                f"{TARGET_FLAT_RATIO:g})",
                ", ".join(parts),
                flat,
            )
        )
    for peer, label, wanted in (
        ("cedarpy", "cedarpy", TARGET_CEDAR_RATIO),
        ("casbin", "pycasbin", TARGET_CASBIN_RATIO),
    ):
        description = f"≥ {wanted:,.0f}× faster than {label} at {TARGET_RATIO_RULES:,} rules"
        if report.peers.get(peer) is None:
            result.append(Target(description, "not installed", None))
            continue
        ratios = []
        for query in QUERIES:
            mine = _median(report, "charter", TARGET_RATIO_RULES, query)
            theirs = _median(report, peer, TARGET_RATIO_RULES, query)
            if mine is None or theirs is None:
                continue
            ratios.append((query, theirs / mine))
        if not ratios:
            result.append(Target(description, f"{TARGET_RATIO_RULES:,} rules not measured", None))
            continue
        measured = ", ".join(f"{query} {_ratio(ratio)}" for query, ratio in ratios)
        result.append(Target(description, measured, all(r >= wanted for _, r in ratios)))
    return result


def gate_summary(report: Report) -> dict[str, Any]:
    """The whole-gate figures: medians (µs) and the ratios of medians of the same run."""
    out: dict[str, Any] = {}
    for query in GATE_QUERIES:
        mine = _median(report, "gate", GATE_RULES, query)
        cedar = _median(report, "cedar_gate", GATE_RULES, query)
        out[query] = {
            "gate_median_us": mine,
            "cedarpy_median_us": cedar,
            "cedarpy_over_gate": cedar / mine if mine and cedar else None,
        }
    out["event_text_median_us"] = {
        m.query: m.median_us for m in report.measurements if m.engine == "event_text"
    }
    return out


def gate_targets(report: Report) -> list[Target]:
    """The issue's whole-gate targets, evaluated on ``report`` (never asserted)."""
    summary = gate_summary(report)
    result = []
    for query, limit in (("run", TARGET_GATE_RUN_US), ("hold", TARGET_GATE_HOLD_US)):
        median = summary[query]["gate_median_us"]
        if median is not None:
            result.append(
                Target(
                    f"build + `gate_node`, {query.upper()}: median ≤ {limit:g} µs",
                    f"{_us(median)} µs",
                    median <= limit,
                )
            )
        ratio = summary[query]["cedarpy_over_gate"]
        result.append(
            Target(
                f"{query.upper()} ≥ {TARGET_GATE_CEDAR_RATIO:g}× faster than cedarpy's decision",
                "cedarpy not installed" if ratio is None else _ratio(ratio),
                None if ratio is None else ratio >= TARGET_GATE_CEDAR_RATIO,
            )
        )
    texts = summary["event_text_median_us"]
    if texts:
        worst = max(texts, key=lambda label: texts[label])
        result.append(
            Target(
                f"serialising an event ≤ {TARGET_EVENT_US:g} µs",
                ", ".join(f"{label} {_us(value)} µs" for label, value in texts.items()),
                texts[worst] <= TARGET_EVENT_US,
            )
        )
    return result


def _gate_markdown(report: Report) -> list[str]:
    summary = gate_summary(report)
    by_key = {(m.engine, m.query): m for m in report.measurements}

    def cell(engine: str, query: str) -> str:
        found = by_key.get((engine, query))
        return "—" if found is None else f"{_us(found.median_us)} [{_us(found.p90_us)}]"

    lines = [
        "",
        "#### The whole gate (µs per call: median, p90 in brackets)",
        "",
        "Build a `GateRequest` and call `gate_node` (tenant block glob, workflow approval glob,",
        "a token and cost budget), beside cedarpy deciding the same question with prebuilt",
        "handles, in the same interleaved run.",
        "",
        "| query | Charter: build + `gate_node` | cedarpy `is_authorized` | cedarpy / Charter |",
        "|:---|---:|---:|---:|",
    ]
    for query in GATE_QUERIES:
        ratio = summary[query]["cedarpy_over_gate"]
        lines.append(
            f"| {query.upper()} | {cell('gate', query)} | {cell('cedar_gate', query)} | "
            f"{'—' if ratio is None else _ratio(ratio)} |"
        )
    lines += [
        "",
        "| event (`codec.event_text`) | µs per event |",
        "|:---|---:|",
    ]
    for m in report.measurements:
        if m.engine == "event_text":
            lines.append(f"| `{m.query}` | {_us(m.median_us)} [{_us(m.p90_us)}] |")
    return lines


def render_markdown(report: Report) -> str:
    machine = report.machine
    usable = machine.get("usable_cores")
    cores = f"{machine['cores']} cores"
    if usable is not None and usable != machine["cores"]:
        cores += f" ({usable} usable)"
    versions = ", ".join(
        f"{engine.label} {report.peers[engine.key] or 'not installed'}"
        for engine in ENGINES
        if engine.module is not None
    )
    load_start = machine.get("load_average_at_start")
    load_end = machine.get("load_average_at_end")
    load = ""
    if load_start is not None and load_end is not None:
        load = f" Load average (1 min) {load_start[0]:.2f} at start, {load_end[0]:.2f} at end."
    settings = report.settings
    lines = [
        "### Policy decision latency run",
        "",
        f"Run {report.started} → {report.finished} (UTC), {settings.name} mode. "
        f"Machine: {cores}, {machine['cpu']}; {machine['python']} on {machine['platform']}."
        f"{load}",
        "",
        f"Peers: {versions}. Batches of ≥ {settings.batch_seconds * 1e3:g} ms, "
        f"{settings.min_batches}–{settings.max_batches} batches per probe "
        f"(≤ {settings.probe_budget_seconds:g} s each), interleaved; "
        f"timeit loop overhead {report.loop_overhead_us * 1e3:.0f} ns per call (not subtracted).",
        "",
        "#### Decision latency (µs per decision: median, p90 in brackets)",
        "",
    ]
    present = [engine for engine in ENGINES if report.peers[engine.key] is not None]
    missing = [engine for engine in ENGINES if report.peers[engine.key] is None]
    header = ["rules", "query", *(engine.label for engine in ENGINES)]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---:", ":---", *("---:" for _ in ENGINES)]) + "|")
    by_key = {(m.engine, m.rules, m.query): m for m in report.measurements}
    counts = sorted({m.rules for m in report.measurements if m.engine in ENGINE_KEYS})
    for rules in counts:
        for query in QUERIES:
            cells = [f"{rules:,}", query]
            for engine in ENGINES:
                found = by_key.get((engine.key, rules, query))
                if engine in missing:
                    cells.append("not installed")
                elif found is None:
                    cells.append("—")
                else:
                    cells.append(f"{_us(found.median_us)} [{_us(found.p90_us)}]")
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "#### Ratios of medians",
        "",
        "| rules | query | Charter / floor | Charter + ctx / Charter "
        "| cedarpy / Charter | pycasbin / Charter |",
        "|---:|:---|---:|---:|---:|---:|",
    ]
    for rules in counts:
        for query in QUERIES:
            cells = [f"{rules:,}", query]
            for numerator, denominator in (
                ("charter", "floor"),
                ("charter_ctx", "charter"),
                ("cedarpy", "charter"),
                ("casbin", "charter"),
            ):
                top = by_key.get((numerator, rules, query))
                bottom = by_key.get((denominator, rules, query))
                if report.peers.get(numerator) is None:
                    cells.append("not installed")
                elif top is None or bottom is None:
                    cells.append("—")
                else:
                    cells.append(_ratio(top.median_us / bottom.median_us))
            lines.append("| " + " | ".join(cells) + " |")
    build_engines = [e for e in ENGINES if e.key in BUILD_ENGINES]
    lines += [
        "",
        "#### Building the rules once (ms, median)",
        "",
        "| rules | " + " | ".join(e.build_label for e in build_engines) + " |",
        "|---:|" + "---:|" * len(build_engines),
    ]
    builds = {(b.engine, b.rules): b for b in report.builds}
    for rules in counts:
        cells = [f"{rules:,}"]
        for engine in build_engines:
            build = builds.get((engine.key, rules))
            if engine not in present:
                cells.append("not installed")
            elif build is None:
                cells.append("—")
            else:
                cells.append(f"{_ms(build.median_ms)} (×{build.builds})")
        lines.append("| " + " | ".join(cells) + " |")
    lines += _gate_markdown(report)
    lines += _conditional_markdown(report)
    lines += ["", "#### Targets (reported, not asserted)", "", "| target | measured | met |"]
    lines.append("|:---|:---|:---:|")
    for target in [*targets(report), *gate_targets(report)]:
        met = "n/a" if target.met is None else ("yes" if target.met else "**no**")
        lines.append(f"| {target.description} | {target.measured} | {met} |")
    return "\n".join(lines) + "\n"


def report_json(report: Report) -> dict[str, Any]:
    return {
        "benchmark": "policy_latency",
        "settings": asdict(report.settings),
        "started": report.started,
        "finished": report.finished,
        "machine": report.machine,
        "peers": report.peers,
        "loop_overhead_us": report.loop_overhead_us,
        "measurements": [asdict(m) for m in report.measurements],
        "builds": [asdict(b) for b in report.builds],
        "gate": gate_summary(report),
        "conditional_rules": conditional_summary(report),
        "targets": [asdict(t) for t in [*targets(report), *gate_targets(report)]],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.policy_latency",
        description="Policy decision latency of Charter, cedarpy and pycasbin, side by side.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer and shorter batches (a smoke run)"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    try:
        report = run(settings)
    except BenchmarkError as error:
        print(f"policy_latency: {error}", file=sys.stderr)
        return 1
    sys.stdout.write(render_markdown(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report_json(report), indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
