"""Workflow definitions: the parsed, validated form of a workflow file.

The JSON/YAML shape follows upstream's IR where upstream has the keys (``workflow_id``,
``version``, ``start_node``, ``nodes`` with ``kind: {type: …}``, ``policy``,
``retry_policy``, ``node_timeout_secs``, ``edges`` with ``from`` / ``to`` / ``condition``,
workflow ``policy``, ``token_budget``, ``cost_budget_usd``, ``models``, ``tools``,
``retry_policies``) and adds what Charter needs (``agents``: agent cards; per node
``agent``: the card governing it; ``tenant_id``; ``combining``).

`parse_workflow` checks everything in one pass and raises `WorkflowInvalid` listing every
problem with its path (``nodes.refund.kind.tool_ref: expected a string``): unknown keys and
kinds, node ids that are not strings, bad patterns, budgets and model aliases, edges to
unknown nodes, unreachable nodes, cycles, bad conditions. A definition that parses is one the
scheduler can run.

Upstream's compiled IR loads as upstream's validator accepts it (docs/workflows.md §1.3):
``end`` is the terminal sentinel (an edge or branch target that runs nothing: reaching it
ends that path), a condition node may have no ``branches`` (a pass-through), and ``version``
is a semantic version (or, Charter's older form, a whole number).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, TypeVar

import attrs

from charter.core.autonomy import AgentCard
from charter.core.budget import BudgetLimits
from charter.core.conditions import Condition, parse_condition
from charter.core.errors import InvalidInput, child, describe
from charter.core.nodes import queue_type_for, resolve_model
from charter.core.policy import CombiningMode, EvaluationContext, PolicySet
from charter.core.queue import MAX_ATTEMPTS, MAX_BACKOFF_MS

__all__ = [
    "DEFAULT_RETRY_POLICIES",
    "END",
    "Branch",
    "EdgeDef",
    "NodeDef",
    "Problem",
    "RetryPolicy",
    "ToolDef",
    "WorkflowDef",
    "WorkflowInvalid",
    "parse_workflow",
]


@attrs.frozen
class Problem:
    """One thing wrong with a workflow definition: where, and what."""

    where: str
    problem: str

    def __str__(self) -> str:
        return f"{self.where}: {self.problem}" if self.where else self.problem


class WorkflowInvalid(InvalidInput):
    """A workflow definition with one or more problems (all of them, in `problems`)."""

    def __init__(self, problems: tuple[Problem, ...], source: str = "") -> None:
        self.problems = problems
        self.source = source
        lines = [str(p) for p in problems]
        summary = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(source, f"{summary}:\n  " + "\n  ".join(lines))

    def within(self, prefix: str) -> WorkflowInvalid:
        return WorkflowInvalid(self.problems, prefix.rstrip(":"))


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How often a node is tried and how long to wait in between (exponential backoff
    with jitter: ``backoff_ms × 2^min(attempt, 6)``, plus up to 25 %, at most
    ``max_backoff_ms``)."""

    max_attempts: int = 3
    backoff_ms: int = 1000
    max_backoff_ms: int = 60_000


#: Upstream's named policies (docs/workflows.md), always available.
DEFAULT_RETRY_POLICIES: Final[Mapping[str, RetryPolicy]] = {
    "no_retry": RetryPolicy(max_attempts=1),
    "llm_default": RetryPolicy(max_attempts=3),
    "io_default": RetryPolicy(max_attempts=5),
    "default": RetryPolicy(max_attempts=3),
}


#: The terminal sentinel: an edge or branch target that is not a node (unless the workflow
#: defines a node of that name). Reaching it ends that path; it runs nothing.
END: Final = "end"

_DEFAULT_RETRY: Final = DEFAULT_RETRY_POLICIES["default"]
_NO_LIMITS: Final = BudgetLimits()


@attrs.frozen(kw_only=True)
class ToolDef:
    """What a workflow says about a tool: whether repeating a call is harmless, and which
    built-in or registered executor implements it."""

    name: str
    idempotent: bool = False
    executor: str | None = None
    config: Any = None


@attrs.frozen
class Branch:
    """A condition node's branch: go to ``target`` when ``condition`` holds (``None``: else)."""

    target: str
    condition: Condition | None = None


@attrs.frozen(kw_only=True)
class NodeDef:
    """One node of a workflow."""

    node_id: str
    kind: Mapping[str, Any]
    tag: str
    queue: str
    context: EvaluationContext
    policy: PolicySet | None = None
    retry: RetryPolicy = _DEFAULT_RETRY
    timeout_secs: float | None = None
    agent: AgentCard | None = None
    branches: tuple[Branch, ...] = ()
    description: str = ""
    labels: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class EdgeDef:
    """A dependency: ``target`` may run after ``source`` completed (and ``condition``, if
    any, held on ``source``'s output and the state at that moment)."""

    source: str
    target: str
    condition: Condition | None = None


@attrs.frozen(kw_only=True)
class WorkflowDef:
    """A validated workflow (see the module doc)."""

    workflow_id: str
    version: str
    name: str = ""
    description: str = ""
    tenant_id: str = "default"
    start_node: str
    nodes: Mapping[str, NodeDef]
    edges: tuple[EdgeDef, ...] = ()
    #: Edges into the terminal sentinel ``end``: checked, never followed (nothing runs there).
    terminal_edges: tuple[EdgeDef, ...] = ()
    policy: PolicySet | None = None
    combining: CombiningMode = CombiningMode.MOST_SPECIFIC
    limits: BudgetLimits = _NO_LIMITS
    models: Mapping[str, Any] = attrs.field(factory=dict)
    tools: Mapping[str, ToolDef] = attrs.field(factory=dict)
    agents: Mapping[str, AgentCard] = attrs.field(factory=dict)
    labels: Mapping[str, str] = attrs.field(factory=dict)
    state_schema: Any = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, eq=False, repr=False)
    _incoming: Mapping[str, tuple[EdgeDef, ...]] = attrs.field(init=False, eq=False, repr=False)
    _outgoing: Mapping[str, tuple[EdgeDef, ...]] = attrs.field(init=False, eq=False, repr=False)
    _position: Mapping[str, int] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        incoming: dict[str, list[EdgeDef]] = {name: [] for name in self.nodes}
        outgoing: dict[str, list[EdgeDef]] = {name: [] for name in self.nodes}
        for edge in self.edges:
            incoming.setdefault(edge.target, []).append(edge)
            outgoing.setdefault(edge.source, []).append(edge)
        object.__setattr__(self, "_incoming", {k: tuple(v) for k, v in incoming.items()})
        object.__setattr__(self, "_outgoing", {k: tuple(v) for k, v in outgoing.items()})
        object.__setattr__(self, "_position", {name: i for i, name in enumerate(self.nodes)})

    def incoming(self, node_id: str) -> tuple[EdgeDef, ...]:
        """The edges into a node (indexed once, when the definition is built)."""
        return self._incoming.get(node_id, ())

    def outgoing(self, node_id: str) -> tuple[EdgeDef, ...]:
        """The edges out of a node."""
        return self._outgoing.get(node_id, ())

    def in_order(self, node_ids: Iterable[str]) -> list[str]:
        """``node_ids`` in the order the definition lists its nodes (unknown ids last)."""
        position = self._position
        last = len(position)
        return sorted(node_ids, key=lambda name: position.get(name, last))


# ── parsing ────────────────────────────────────────────────────────────────────────────

_TOP_KEYS: Final = {
    "workflow_id", "version", "name", "description", "tenant_id", "start_node", "nodes",
    "edges", "policy", "combining", "token_budget", "cost_budget_usd", "models", "tools",
    "retry_policies", "agents", "labels", "state_schema", "mcp_servers", "remote_agents",
}  # fmt: skip
#: Upstream keys Charter does not implement: refused when set, so nothing looks configured
#: and silently does nothing (a data policy or a timeout that is not enforced is worse than
#: an error). ``timeouts`` is checked key by key (`_TIMEOUTS`).
_UNSUPPORTED: Final = {
    "continue_as_new": "continue-as-new segments are not supported",
    "on_budget_exceeded": "routing on a budget trip is not supported (a trip fails the node)",
    "data_policy": "data policies are not enforced by Charter; remove the key",
    "strategy_metadata": (
        "strategy compiler metadata is not part of upstream's IR, and Charter would not "
        "enforce its limits; bound the run with token_budget and cost_budget_usd instead"
    ),
}
#: Upstream's ``timeouts`` keys, each refused when set: upstream's runtime reads none of them
#: and Charter enforces none of them at the workflow level.
_TIMEOUTS: Final = {
    "node_timeout": "a workflow-wide node timeout is not supported; set node_timeout_secs per node",
    "workflow_timeout": (
        "workflow-level timeouts are not supported; set node_timeout_secs per node"
    ),
    "heartbeat_interval": (
        "lease renewal is a worker setting (a third of its lease period), not a workflow's"
    ),
    "approval_timeout": "set timeout_secs on each human_approval node instead",
}
#: Keys of upstream's tool configurations, refused when set: Charter binds executors by name
#: (``executor``) and does not enforce schemas or permissions.
_TOOL_UNSUPPORTED: Final = {
    "kind": "upstream's executor bindings are not supported; name an executor with 'executor'",
    "reference": (
        "upstream's executor bindings are not supported; name an executor with 'executor'"
    ),
    "input_schema": "tool schemas are not enforced by Charter; remove the key",
    "output_schema": "tool schemas are not enforced by Charter; remove the key",
    "permissions": (
        "tool permissions are not enforced by Charter; express them as policy "
        "(blocked_tools, require_approval_for)"
    ),
}
#: Keys of upstream's model configurations beyond provider and model, refused when set:
#: Charter passes executors the resolved model name only.
_MODEL_UNSUPPORTED: Final = {
    "temperature": "model parameters are not passed to executors; put them in the executor",
    "max_tokens": "model parameters are not passed to executors; bound tokens with token_budget",
    "timeout_secs": "set node_timeout_secs on the model's nodes instead",
    "retry_policy": "set retry_policy on the model's nodes instead",
}
#: A version: semantic versioning's MAJOR.MINOR.PATCH with optional pre-release and build
#: suffixes, or a whole number (Charter's form before versions were checked).
_NUMBER: Final = r"(?:0|[1-9][0-9]*)"
_PRE_RELEASE: Final = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
_BUILD: Final = r"[0-9A-Za-z-]+"
_VERSION: Final = re.compile(
    rf"{_NUMBER}\.{_NUMBER}\.{_NUMBER}"
    rf"(?:-{_PRE_RELEASE}(?:\.{_PRE_RELEASE})*)?"
    rf"(?:\+{_BUILD}(?:\.{_BUILD})*)?"
    rf"|{_NUMBER}",
    re.ASCII,
)
_NODE_KEYS: Final = {
    "id", "kind", "policy", "retry_policy", "node_timeout_secs", "description", "labels",
    "agent",
}  # fmt: skip
_NODE_UNSUPPORTED: Final = {
    "data_policy": "data policies are not enforced by Charter; remove the key",
}

T = TypeVar("T")


def _is_set(value: object) -> bool:
    """Whether an unsupported key configures something: anything but null, false or an
    empty mapping or list. (Identity, not ``in (None, False)``: ``0 == False``, and
    ``on_budget_exceeded: 0`` is set.)"""
    if value is None or value is False:
        return False
    return not (isinstance(value, Mapping | list) and not value)


class _Collector:
    """Gathers problems instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, where: str, problem: str) -> None:
        self.problems.append(Problem(where, problem))

    def attempt(self, where: str, build: Callable[[], T]) -> T | None:
        try:
            return build()
        except InvalidInput as error:
            inner = error.where
            path = (
                child(where, inner) if inner and not inner.startswith(where) else (inner or where)
            )
            self.add(path, error.problem)
            return None


def _mapping(value: object, where: str, out: _Collector) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        out.add(where, f"expected a mapping, got {describe(value)}")
        return {}
    return value


def _text(value: object, where: str, out: _Collector, *, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        out.add(where, f"expected a non-empty string, got {describe(value)}")
        return ""
    return value


def _retry_policy(data: object, where: str, out: _Collector) -> RetryPolicy | None:
    fields = _mapping(data, where, out)
    for key in fields:
        if key not in ("max_attempts", "backoff_ms", "max_backoff_ms"):
            out.add(child(where, str(key)), "unknown retry policy key")
    values: dict[str, int] = {}
    bounds = (
        ("max_attempts", 1, MAX_ATTEMPTS),
        ("backoff_ms", 0, MAX_BACKOFF_MS),
        ("max_backoff_ms", 0, MAX_BACKOFF_MS),
    )
    for key, low, high in bounds:
        if key in fields:
            value = fields[key]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                out.add(
                    child(where, key),
                    f"expected an integer from {low} to {high}, got {describe(value)}",
                )
            else:
                values[key] = value
    base = values.get("backoff_ms", RetryPolicy().backoff_ms)
    cap = values.get("max_backoff_ms", RetryPolicy().max_backoff_ms)
    if cap < base:
        out.add(
            child(where, "max_backoff_ms"),
            f"expected at least backoff_ms ({base}), got {cap}",
        )
        values.pop("max_backoff_ms", None)
        values.pop("backoff_ms", None)
    return RetryPolicy(**values)


def _timeout(value: object, where: str, out: _Collector) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        out.add(where, f"expected a number of seconds, got {describe(value)}")
        return None
    if not math.isfinite(value) or value <= 0:
        out.add(where, f"expected a positive, finite number of seconds, got {value!r}")
        return None
    return float(value)


def _labels(value: object, where: str, out: _Collector) -> dict[str, str]:
    """Observability labels: a mapping of strings to strings (upstream's type)."""
    labels: dict[str, str] = {}
    for key, text in _mapping(value, where, out).items():
        if not isinstance(text, str):
            out.add(child(where, str(key)), f"expected a string label, got {describe(text)}")
        else:
            labels[str(key)] = text
    return labels


def _check_timeouts(value: object, out: _Collector) -> None:
    if not _is_set(value):
        return
    for key, setting in _mapping(value, "timeouts", out).items():
        where = child("timeouts", str(key))
        if key not in _TIMEOUTS:
            out.add(where, f"unknown timeouts key (upstream's: {', '.join(_TIMEOUTS)})")
        elif _is_set(setting):
            out.add(where, _TIMEOUTS[key])


def _check_connections(top: Mapping[str, Any], out: _Collector) -> None:
    """``mcp_servers`` and ``remote_agents``: tables of named connection settings, kept in
    the definition (`WorkflowDef.raw`) for executors that connect."""
    for key in ("mcp_servers", "remote_agents"):
        for name, entry in _mapping(top.get(key), key, out).items():
            _mapping(entry, f"{key}.{name}", out)


def parse_workflow(data: object, source: str = "") -> WorkflowDef:
    """The validated definition, or `WorkflowInvalid` listing every problem."""
    out = _Collector()
    top = _mapping(data, "", out)
    if not top and not out.problems:
        out.add("", "the workflow is empty")
    for key in top:
        if key in _UNSUPPORTED:
            if _is_set(top[key]):
                out.add(str(key), _UNSUPPORTED[key])
        elif key == "timeouts":
            _check_timeouts(top[key], out)
        elif key not in _TOP_KEYS:
            out.add(str(key), "unknown workflow key")
    workflow_id = _text(top.get("workflow_id"), "workflow_id", out)
    version = _text(top.get("version"), "version", out)
    if version and not _VERSION.fullmatch(version):
        out.add(
            "version",
            'expected a semantic version MAJOR.MINOR.PATCH such as "1.0.0" (optionally with '
            f'-pre-release and +build suffixes) or a whole number such as "1", got {version!r}',
        )
        version = ""
    labels = _labels(top.get("labels"), "labels", out)
    _check_connections(top, out)
    start = _text(top.get("start_node"), "start_node", out)
    tenant = _text(top.get("tenant_id", "default"), "tenant_id", out)

    policy = None
    if top.get("policy") is not None:
        policy = out.attempt("policy", lambda: PolicySet.from_dict(top["policy"], "policy"))
    combining = CombiningMode.MOST_SPECIFIC
    if "combining" in top:
        modes = [mode.value for mode in CombiningMode]
        if top["combining"] in modes:
            combining = CombiningMode(top["combining"])
        else:
            out.add(
                "combining", f"expected one of {', '.join(modes)}, got {describe(top['combining'])}"
            )
    tokens = out.attempt("", lambda: BudgetLimits.from_workflow(top.get("token_budget")))
    cost = out.attempt("", lambda: BudgetLimits.from_workflow(None, top.get("cost_budget_usd")))
    limits = None
    if tokens is not None and cost is not None:
        limits = attrs.evolve(tokens, cost_usd=cost.cost_usd)
    models = _mapping(top.get("models"), "models", out)
    # Each alias is checked once, at its own path; nodes resolve against the good ones only
    # (a bad alias is reported here, not as `nodes.<id>.models.<alias>` once per node).
    resolvable = {
        alias: entry
        for alias, entry in models.items()
        if out.attempt("", functools.partial(resolve_model, alias, models)) is not None
    }
    for alias, entry in models.items():
        if isinstance(entry, Mapping):
            for key in entry:
                where = f"models.{alias}.{key}"
                if key in _MODEL_UNSUPPORTED:
                    if _is_set(entry[key]):
                        out.add(where, _MODEL_UNSUPPORTED[key])
                elif key not in ("provider", "model"):
                    out.add(where, "unknown model key (expected provider, model)")

    tools: dict[str, ToolDef] = {}
    for name, spec in _mapping(top.get("tools"), "tools", out).items():
        where = f"tools.{name}"
        fields = _mapping(spec, where, out)
        for key in fields:
            if key in _TOOL_UNSUPPORTED:
                if _is_set(fields[key]):
                    out.add(child(where, str(key)), _TOOL_UNSUPPORTED[key])
            elif key not in ("idempotent", "executor", "config", "description", "parameters"):
                out.add(child(where, str(key)), "unknown tool key")
        idempotent = fields.get("idempotent", False)
        if not isinstance(idempotent, bool):
            out.add(f"{where}.idempotent", f"expected true or false, got {describe(idempotent)}")
            idempotent = False
        executor = fields.get("executor")
        if executor is not None and not isinstance(executor, str):
            out.add(f"{where}.executor", f"expected an executor name, got {describe(executor)}")
            executor = None
        tools[str(name)] = ToolDef(
            name=str(name), idempotent=idempotent, executor=executor, config=fields.get("config")
        )

    agents: dict[str, AgentCard] = {}
    raw_agents = top.get("agents")
    if isinstance(raw_agents, list):
        entries = [(f"agents[{i}]", card) for i, card in enumerate(raw_agents)]
    else:
        entries = [(f"agents.{k}", v) for k, v in _mapping(raw_agents, "agents", out).items()]
    for where, card_data in entries:
        card = out.attempt(where, functools.partial(AgentCard.from_dict, card_data, where))
        if card is not None:
            if card.uri in agents:
                out.add(where, f"agent {card.uri!r} is defined twice")
            agents[card.uri] = card

    policies = dict(DEFAULT_RETRY_POLICIES)
    for name, spec in _mapping(top.get("retry_policies"), "retry_policies", out).items():
        parsed = _retry_policy(spec, f"retry_policies.{name}", out)
        if parsed is not None:
            policies[str(name)] = parsed

    nodes: dict[str, NodeDef] = {}
    raw_nodes = _mapping(top.get("nodes"), "nodes", out)
    if not raw_nodes and "nodes" in top:
        out.add("nodes", "a workflow needs at least one node")
    ids: list[object] = list(raw_nodes)  # YAML allows `1:`; edges and start_node name strings
    for node_id in ids:
        if not isinstance(node_id, str):
            out.add(f"nodes.{node_id}", f"expected a string node id, got {describe(node_id)}")
    raw_nodes = {key: raw_nodes[key] for key in ids if isinstance(key, str)}
    for node_id, spec in raw_nodes.items():
        node = _parse_node(str(node_id), spec, resolvable, agents, policies, out)
        if node is not None:
            nodes[node.node_id] = node

    parsed_edges = _parse_edges(top.get("edges"), out)
    # `end` is the terminal sentinel unless a node has that name (then it is that node).
    sentinel = END not in raw_nodes
    edges = tuple(e for e in parsed_edges if not (sentinel and e.target == END))
    terminal = tuple(e for e in parsed_edges if sentinel and e.target == END)
    _check_graph(start, nodes, raw_nodes, parsed_edges, out)

    if out.problems:
        raise WorkflowInvalid(tuple(out.problems), source)
    return WorkflowDef(
        workflow_id=workflow_id,
        version=version,
        name=str(top.get("name") or ""),
        description=str(top.get("description") or ""),
        tenant_id=tenant,
        start_node=start,
        nodes=nodes,
        edges=edges,
        terminal_edges=terminal,
        policy=policy,
        combining=combining,
        limits=limits or BudgetLimits(),
        models=models,
        tools=tools,
        agents=agents,
        labels=labels,
        state_schema=top.get("state_schema"),
        raw=top,
    )


def _parse_node(
    node_id: str,
    spec: object,
    models: Mapping[str, Any],
    agents: Mapping[str, AgentCard],
    policies: Mapping[str, RetryPolicy],
    out: _Collector,
) -> NodeDef | None:
    where = f"nodes.{node_id}"
    fields = _mapping(spec, where, out)
    for key in fields:
        if key in _NODE_UNSUPPORTED:
            if _is_set(fields[key]):
                out.add(child(where, str(key)), _NODE_UNSUPPORTED[key])
        elif key not in _NODE_KEYS:
            out.add(child(where, str(key)), "unknown node key")
    if "id" in fields and fields["id"] != node_id:
        out.add(f"{where}.id", f"does not match the node's key {node_id!r}")
    kind = fields.get("kind")
    ctx = None
    if not isinstance(kind, Mapping):
        out.add(f"{where}.kind", f"expected a mapping with a 'type', got {describe(kind)}")
        kind = {}
    else:
        ctx = out.attempt(
            where, lambda: EvaluationContext.from_node_kind(node_id, kind, models=models)
        )
    tag = ctx.node_kind_tag if ctx is not None else ""
    policy = None
    if fields.get("policy") is not None:
        policy = out.attempt(
            f"{where}.policy", lambda: PolicySet.from_dict(fields["policy"], f"{where}.policy")
        )
    retry = policies["default"]
    if fields.get("retry_policy") is not None:
        reference = fields["retry_policy"]
        if isinstance(reference, str):
            if reference in policies:
                retry = policies[reference]
            else:
                known = ", ".join(sorted(policies))
                out.add(
                    f"{where}.retry_policy", f"unknown retry policy {reference!r} (known: {known})"
                )
        else:
            retry = _retry_policy(reference, f"{where}.retry_policy", out) or retry
    agent = None
    if fields.get("agent") is not None:
        reference = fields["agent"]
        if isinstance(reference, str) and reference in agents:
            agent = agents[reference]
        else:
            out.add(f"{where}.agent", f"no agent card named {describe(reference)} under agents")
    branches: tuple[Branch, ...] = ()
    if tag == "condition":
        branches = _parse_branches(kind.get("branches"), f"{where}.kind.branches", out)
        if kind.get("expression") is not None:
            # What upstream's strategy compilers write to describe the guard; routing is by
            # `branches` (upstream's Condition kind has no such field). Its syntax is checked.
            at = f"{where}.kind.expression"
            out.attempt(at, functools.partial(parse_condition, kind["expression"], at))
    labels = _labels(fields.get("labels"), f"{where}.labels", out)
    if tag == "human_approval":
        approver = kind.get("approver", "human")
        if not isinstance(approver, str) or not approver.strip():
            out.add(
                f"{where}.kind.approver", f"expected a user id or 'human', got {describe(approver)}"
            )
        out.attempt(
            f"{where}.kind.timeout_secs", lambda: _timeout_or_raise(kind.get("timeout_secs"))
        )
    timeout = _timeout(fields.get("node_timeout_secs"), f"{where}.node_timeout_secs", out)
    if ctx is None:
        return None  # the kind's problems are recorded; the rest was checked too
    return NodeDef(
        node_id=node_id,
        kind=kind,
        tag=tag,
        queue=queue_type_for(tag),
        context=ctx,
        policy=policy,
        retry=retry,
        timeout_secs=timeout,
        agent=agent,
        branches=branches,
        description=str(fields.get("description") or ""),
        labels=labels,
    )


def _timeout_or_raise(value: object) -> float | None:
    out = _Collector()
    parsed = _timeout(value, "", out)
    if out.problems:
        raise InvalidInput("", out.problems[0].problem)
    return parsed


def _parse_branches(value: object, where: str, out: _Collector) -> tuple[Branch, ...]:
    if not isinstance(value, list):
        out.add(where, f"expected a list of branches, got {describe(value)}")
        return ()
    branches = []  # none: a pass-through, as upstream (docs/workflows.md §1.3)
    for index, spec in enumerate(value):
        at = f"{where}[{index}]"
        fields = _mapping(spec, at, out)
        for key in fields:
            if key not in ("condition", "target"):
                out.add(child(at, str(key)), "unknown branch key (expected condition, target)")
        target = _text(fields.get("target"), f"{at}.target", out)
        condition = None
        if fields.get("condition") is not None:
            condition = out.attempt(
                f"{at}.condition",
                functools.partial(parse_condition, fields["condition"], f"{at}.condition"),
            )
        branches.append(Branch(target, condition))
    return tuple(branches)


def _parse_edges(value: object, out: _Collector) -> tuple[EdgeDef, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        out.add("edges", f"expected a list of edges, got {describe(value)}")
        return ()
    edges = []
    seen: set[tuple[str, str]] = set()
    for index, spec in enumerate(value):
        where = f"edges[{index}]"
        fields = _mapping(spec, where, out)
        for key in fields:
            if key not in ("from", "to", "condition"):
                out.add(child(where, str(key)), "unknown edge key (expected from, to, condition)")
        source = _text(fields.get("from"), f"{where}.from", out)
        target = _text(fields.get("to"), f"{where}.to", out)
        condition = None
        if fields.get("condition") is not None:
            condition = out.attempt(
                f"{where}.condition",
                functools.partial(parse_condition, fields["condition"], f"{where}.condition"),
            )
        if (source, target) in seen:
            out.add(where, f"a second edge from {source!r} to {target!r}")
        seen.add((source, target))
        edges.append(EdgeDef(source=source, target=target, condition=condition))
    return tuple(edges)


def _check_graph(
    start: str,
    nodes: Mapping[str, NodeDef],
    raw_nodes: Mapping[str, Any],
    edges: tuple[EdgeDef, ...],
    out: _Collector,
) -> None:
    """Check the graph; ``edges`` are all of them, in the file's order (``end`` included)."""
    known = set(raw_nodes)
    if start and start not in known:
        out.add("start_node", f"no node named {start!r}")
    successors: dict[str, list[str]] = {name: [] for name in known}
    ends: set[str] = set()  # nodes with an edge to the terminal sentinel
    for index, edge in enumerate(edges):
        terminal = edge.target == END and END not in known
        for side, name in (("from", edge.source), ("to", edge.target)):
            if name and name not in known and not (terminal and side == "to"):
                sentinel = f" ({END!r} is only a target)" if name == END else ""
                out.add(f"edges[{index}].{side}", f"no node named {name!r}{sentinel}")
        if terminal:
            ends.add(edge.source)
        elif edge.source in successors and edge.target in known:
            successors[edge.source].append(edge.target)
    for node in nodes.values():
        for index, branch in enumerate(node.branches):
            at = f"nodes.{node.node_id}.kind.branches[{index}].target"
            if not branch.target:
                continue  # reported where it was parsed
            if branch.target == END and END not in known:
                if node.node_id not in ends:
                    out.add(
                        at,
                        f"no edge from {node.node_id!r} to {END!r} (a branch chooses among the "
                        "condition node's edges; 'end' ends the path)",
                    )
            elif branch.target not in known:
                out.add(at, f"no node named {branch.target!r}")
            elif branch.target not in successors[node.node_id]:
                out.add(
                    at,
                    f"no edge from {node.node_id!r} to {branch.target!r} (a branch chooses among "
                    "the condition node's edges)",
                )
        fallback = node.kind.get("fallback_node") if node.tag == "human_approval" else None
        at = f"nodes.{node.node_id}.kind.fallback_node"
        if fallback is None:
            pass
        elif not isinstance(fallback, str):
            out.add(at, f"expected a node id, got {describe(fallback)}")
        elif fallback not in known:
            out.add(at, f"no node named {fallback!r}")
        elif fallback not in successors[node.node_id]:
            out.add(
                at,
                f"no edge from {node.node_id!r} to {fallback!r} (the fallback is one of the "
                "approval node's successors, taken on timeout)",
            )
    cycle = _find_cycle(successors)
    if cycle:
        out.add("edges", f"cycle: {' -> '.join(cycle)} (workflows are acyclic; use retries)")
    if start not in known:
        return
    # Unreachable nodes: nothing leads to them from the start node.
    reached = {start}
    frontier = [start]
    while frontier:
        for target in successors[frontier.pop()]:
            if target not in reached:
                reached.add(target)
                frontier.append(target)
    for name in sorted(known - reached):
        out.add(f"nodes.{name}", f"unreachable from the start node {start!r}")
    if any(start in targets for targets in successors.values()):
        out.add("start_node", f"{start!r} has incoming edges; the start node must be a root")


def _find_cycle(successors: Mapping[str, list[str]]) -> list[str]:
    """One cycle of the graph as a node path, or an empty list."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(successors, white)
    for root in sorted(successors):
        if color[root] != white:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path = [root]
        color[root] = grey
        while stack:
            node, index = stack[-1]
            targets = successors[node]
            if index < len(targets):
                stack[-1] = (node, index + 1)
                nxt = targets[index]
                if color[nxt] == grey:
                    return [*path[path.index(nxt) :], nxt]
                if color[nxt] == white:
                    color[nxt] = grey
                    stack.append((nxt, 0))
                    path.append(nxt)
            else:
                color[node] = black
                stack.pop()
                path.pop()
    return []
