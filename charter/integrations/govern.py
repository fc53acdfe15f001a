"""`govern`: every call of a Python callable gated, recorded, executed and settled by
Charter, with the worker's events, chain and replayability (docs/integrations.md).

A **session** (a `Governor`) is one Charter run: a stored workflow definition with one node
per governed tool (kind ``tool``, ``tool_ref`` = the tool's name; ``model`` with
``model_ref`` when a model is named instead) under a root node ``_session``, the governed
policy as the workflow layer, the budget limits and the agent card. The definition is
labelled ``charter: governed-session`` and versioned by its content digest, so the same
configuration always names the same definition. The run is created without
``workflow_started``: it stays ``pending``, which no scheduler or worker plans, ticks or
drives — only governed calls write to it.

Each call of a governed function:

1. identifies the call: its arguments, bound to the signature (defaults applied), as
   canonical JSON (``call_key`` for arguments that are not plain data), digested;
2. decides, as the worker does (`node_gate_request` on the log as of ``as_of``, the tenant's
   stored policy, the session's policy, the agent card, the budget folded from the log, the
   node's approval status), with the call bound to the invocation
   (`charter.audit.replay.invocation_request`), and appends, by compare-and-append on the
   log it read, ``node_started``, ``agent_tool_invoked{input_hash}`` (the ``as_of`` of the
   decision) and the gate's events (``node_gated``, then ``approval_consumed``,
   ``tool_approval_required`` or the refusal's events ending in ``node_failed``). Another
   writer got there first (`Conflict`): read what it wrote and decide again. The decision is
   thus recorded before the function runs, and an approval is consumed by exactly one call;
3. ``fail`` raises `Refused`, ``hold`` raises `Held` (the function is not called);
4. ``run`` calls the function, then appends its settlement (`settle_node` on the budget the
   decision saw): ``usage_recorded`` and ``node_completed`` — or, if the function raised, a
   ``usage_recorded{succeeded: false}`` and ``node_failed`` before the exception is
   re-raised; if the usage trips a budget, the trip's events and `Refused` (the call ran:
   its value is on the exception). When the tenant's windowed limits counted the call (their
   usage is read at the decision's ``now`` and recorded with it), the settlement also
   charges them: ``limit_charged``, in the same append (docs/semantics.md §4.1).

The attempt of a call is how many calls of its tool the run has run before it, so a held
call asked again (same arguments, nothing else of its tool run meanwhile) is the same
request, and its approval covers it once.

Usage (tokens, cost) comes from what the function returns (a `Usage`, or an object or
mapping with a ``usage`` — OpenAI's ``prompt_tokens`` / ``completion_tokens`` or
``input_tokens`` / ``output_tokens``, and ``cost_usd``), from `report_usage` called inside
the function, or from the ``usage=`` extractor; each call counts as one tool call.

Async functions are awaited on the caller's loop; the store work before and after runs in a
worker thread (`asyncio.to_thread`), never on the loop. Any error while deciding or
recording is raised: a call is never run ungoverned.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import math
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Final, Generic, ParamSpec, TypeVar, cast, overload

import attrs

from charter.adapters.files import load_policy_layer
from charter.adapters.otel import DecisionSpan, Telemetry, ToolSpan, default_telemetry
from charter.audit.replay import invocation_request
from charter.bootstrap import open_store, shown
from charter.core.approvals import ANY_HUMAN, ApprovalStatus, NotRequested, Pending, approval_step
from charter.core.attempt import completed_event, node_gate_request, terminal_failure
from charter.core.autonomy import AgentCard, EscalateLimit, TripCircuitBreaker
from charter.core.budget import BudgetLimits, BudgetState, Usage, budget_after
from charter.core.canonical import content_digest
from charter.core.errors import CharterError, Conflict, InvalidInput, UnknownTenant
from charter.core.events import (
    AgentToolInvoked,
    ApprovalConsumed,
    ApprovalExpired,
    ApprovalReceived,
    Event,
    EventKind,
    NodeGated,
    NodeStarted,
    RateLimitExceeded,
    ToolApprovalRequired,
    UsageRecorded,
)
from charter.core.gate import (
    GateRequest,
    GateResult,
    Outcome,
    Settlement,
    SettlementOutcome,
    SettleRequest,
    gate_node,
    settle_node,
)
from charter.core.limits import charge_event
from charter.core.policy import Block, PolicyScope, PolicySet
from charter.core.ports import NodeResult, Store
from charter.core.records import DEFAULT_TENANT, Execution, Tenant, WorkflowDefinition
from charter.core.scheduler import RunState
from charter.core.workflow import WorkflowDef, parse_workflow
from charter.worker.limits import with_limit_usage

__all__ = [
    "DEFAULT_STORE",
    "GOVERNED_LABEL",
    "SESSION_NODE",
    "Admission",
    "GovernedFunction",
    "Governor",
    "Held",
    "RecordingFailed",
    "Refused",
    "govern",
    "governed",
    "is_governed",
    "report_usage",
]

P = ParamSpec("P")
R = TypeVar("R")

#: The store a governor opens when given none: the embedded SQLite file the CLI uses.
DEFAULT_STORE: Final = "charter.db"
#: The label that marks a governed session's definition (``labels: {charter: …}``).
GOVERNED_LABEL: Final = "governed-session"
#: The root node of a governed session's definition (never gated: every tool hangs off it).
SESSION_NODE: Final = "_session"
_WORKFLOW_ID: Final = "governed"
#: How often a decision is re-made because another writer appended first, before giving up.
_MAX_CONFLICTS: Final = 200
_NOT_REQUESTED: Final = NotRequested()
_APPROVAL_KINDS: Final = (
    ToolApprovalRequired,
    ApprovalReceived,
    ApprovalConsumed,
    ApprovalExpired,
)

PolicyArg = PolicySet | Mapping[str, Any] | str | Path | None
StoreArg = Store | str | Path | None
UsageExtractor = Callable[[Any], "Usage | None"]


# ── what a caller sees ─────────────────────────────────────────────────────────────────


class Refused(CharterError):
    """A governed call Charter refused: a policy block, an autonomy limit or circuit
    breaker, a spent budget, or a rejected approval (the function was not called) — or a
    budget its own usage exceeded (``ran``: it was called, and ``result`` is its value,
    withheld as the worker withholds a node's output when its settlement trips).

    ``outcome`` is ``"fail"``; ``rule`` names what decided: the policy rule
    (``blocked_tools``, ``model_allowlist``), ``circuit_breaker``,
    ``autonomy_limit:<type>``, ``budget:<dimension>`` or ``approval_rejected``; ``scope``
    is the deciding policy layer (``tenant``, ``workflow``, ``node``) for a policy block;
    ``sequence`` is that of the recorded ``node_gated`` (of the ``usage_recorded`` for a
    trip after the call); ``decision`` the recorded ``node_gated`` itself."""

    def __init__(
        self,
        *,
        run_id: str,
        node_id: str,
        tool_name: str,
        reason: str,
        rule: str | None,
        scope: str | None,
        pattern: str | None,
        sequence: int,
        decision: NodeGated | None,
        ran: bool = False,
        result: Any = None,
    ) -> None:
        self.run_id = run_id
        self.node_id = node_id
        self.tool_name = tool_name
        self.outcome = Outcome.FAIL.value
        self.reason = reason
        self.rule = rule
        self.scope = scope
        self.pattern = pattern
        self.sequence = sequence
        self.decision = decision
        self.ran = ran
        self.result = result
        where = f" ({scope} {rule})" if scope and rule else f" ({rule})" if rule else ""
        super().__init__(f"{tool_name}: refused{where}: {reason} [run {run_id}, #{sequence}]")


class Held(CharterError):
    """A governed call that waits for a person's approval (the function was not called).

    ``approver`` is who may answer (a user id, comma-separated user-id globs, or
    ``"human"``: anyone identified); ``command`` answers it from a shell and ``python``
    from code. Once approved, the same call (same arguments) runs exactly once, consuming
    the approval; a repeat, or a call with other arguments, asks again."""

    def __init__(
        self,
        *,
        run_id: str,
        node_id: str,
        tool_name: str,
        approver: str,
        reason: str | None,
        request_digest: str | None,
        sequence: int,
        command: str,
        python: str,
    ) -> None:
        self.run_id = run_id
        self.node_id = node_id
        self.tool_name = tool_name
        self.outcome = Outcome.HOLD.value
        self.approver = approver
        self.reason = reason
        self.request_digest = request_digest
        self.sequence = sequence
        self.command = command
        self.python = python
        super().__init__(
            f"{tool_name}: held for approval by {approver}: {reason} [run {run_id}, "
            f"#{sequence}]; answer with: {command}"
        )


class RecordingFailed(CharterError):
    """The function ran (its decision is recorded) but its settlement could not be
    recorded. ``result`` is its value (or ``error`` the exception it raised)."""

    def __init__(self, message: str, *, result: Any = None, error: BaseException | None = None):
        super().__init__(message)
        self.result = result
        self.error = error


# ── usage ──────────────────────────────────────────────────────────────────────────────


class _Collector:
    """The usage a governed call reports while it runs (`report_usage`)."""

    def __init__(self) -> None:
        self.usage = Usage()
        self.model: str | None = None


_CURRENT: Final[contextvars.ContextVar[_Collector | None]] = contextvars.ContextVar(
    "charter_governed_call", default=None
)


def report_usage(
    *,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cost_usd: float = 0.0,
    iterations: int = 0,
    model: str | None = None,
) -> None:
    """Add usage to the governed call in progress (call it from inside the function; several
    calls add up). Outside a governed call it is `InvalidInput`: usage that would count
    against no budget must not be dropped silently."""
    collector = _CURRENT.get()
    if collector is None:
        raise InvalidInput("report_usage", "called outside a governed call")
    add = Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost_usd=cost_usd,
        iterations=iterations,
    )
    before = collector.usage
    collector.usage = Usage(
        input_tokens=before.input_tokens + add.input_tokens,
        output_tokens=before.output_tokens + add.output_tokens,
        cost_usd=before.cost_usd + add.cost_usd,
        tool_calls=before.tool_calls,
        iterations=before.iterations + add.iterations,
    )
    if model is not None:
        collector.model = model


def _number(source: Any, *names: str) -> Any:
    for name in names:
        value = source.get(name) if isinstance(source, Mapping) else getattr(source, name, None)
        if value is not None:
            return value
    return None


def usage_of(value: Any) -> Usage | None:
    """The usage a function's return value reports: a `Usage`; or an object or mapping
    whose ``usage`` is one, or carries ``input_tokens`` / ``prompt_tokens``,
    ``output_tokens`` / ``completion_tokens``, ``cost_usd``; ``None`` when it reports
    none."""
    if isinstance(value, Usage):
        return value
    usage = value.get("usage") if isinstance(value, Mapping) else getattr(value, "usage", None)
    if usage is None:
        return None
    if isinstance(usage, Usage):
        return usage
    input_tokens = _number(usage, "input_tokens", "prompt_tokens")
    output_tokens = _number(usage, "output_tokens", "completion_tokens")
    cost = _number(usage, "cost_usd")
    if input_tokens is None and output_tokens is None and cost is None:
        return None
    return Usage(
        input_tokens=input_tokens or 0, output_tokens=output_tokens or 0, cost_usd=cost or 0.0
    )


def _total(reported: Usage, returned: Usage | None) -> Usage:
    """What a call used: what it reported plus what its value says, and one tool call (at
    least: a function may say it made more)."""
    extra = returned or Usage()
    return Usage(
        input_tokens=reported.input_tokens + extra.input_tokens,
        output_tokens=reported.output_tokens + extra.output_tokens,
        cost_usd=reported.cost_usd + extra.cost_usd,
        tool_calls=max(1, reported.tool_calls + extra.tool_calls),
        iterations=reported.iterations + extra.iterations,
    )


# ── the identity of a call ─────────────────────────────────────────────────────────────


def _plain(value: Any, depth: int = 0) -> Any:
    """``value`` as plain JSON data for the call's digest; anything else by its type and
    ``repr`` (give ``call_key`` when that is not stable)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if depth > 32:
        return repr(value)
    if isinstance(value, list | tuple):
        return [_plain(item, depth + 1) for item in value]
    if isinstance(value, Mapping) and all(isinstance(key, str) for key in value):
        return {key: _plain(item, depth + 1) for key, item in value.items()}
    kind = type(value)
    return {"$type": f"{kind.__module__}.{kind.__qualname__}", "$repr": repr(value)}


# ── the session ────────────────────────────────────────────────────────────────────────


@attrs.frozen(kw_only=True)
class _Tool:
    node_id: str
    tool_name: str
    model: str | None
    uri: str  # the callable, as ``python:<module>.<qualname>``
    is_async: bool


@attrs.define
class _View:
    """The run as the last decision read it: folded once, then event by event."""

    execution: Execution
    workflow: WorkflowDef
    run: RunState  # the fold, changed in place: each event folded once (never re-stacked)
    budget: BudgetState = attrs.field(factory=BudgetState)
    approvals: dict[str, ApprovalStatus] = attrs.field(factory=dict)
    runs: dict[str, int] = attrs.field(factory=dict)
    last: int = 0
    state_digest: str = ""

    def absorb(self, events: Sequence[Event]) -> bool:
        """Fold ``events`` in if they follow on from the view; False (nothing done) if not."""
        if not events:
            return True
        if events[0].sequence != self.last + 1:
            return False
        before = self.run.state
        self.run.apply(events)
        if self.run.state is not before or not self.state_digest:
            self.state_digest = content_digest(self.run.state)
        self.budget = budget_after(self.budget, events)
        for event in events:
            kind = event.kind
            if isinstance(kind, _APPROVAL_KINDS):
                node = kind.node_id
                self.approvals[node] = approval_step(
                    self.approvals.get(node, _NOT_REQUESTED), event
                )
            elif isinstance(kind, NodeGated) and kind.outcome == Outcome.RUN.value:
                self.runs[kind.node_id] = self.runs.get(kind.node_id, 0) + 1
        self.last = events[-1].sequence
        return True


@attrs.frozen(kw_only=True)
class _Decision:
    tool: _Tool
    attempt: int
    result: GateResult
    gated: Event  # the recorded node_gated
    budget: BudgetState  # what the decision saw (its settlement applies usage to it)
    approval: ApprovalStatus
    request: GateRequest | None = None  # what it was decided on (its limits are charged)


def _policy_set(policy: PolicyArg) -> PolicySet | None:
    if policy is None:
        return None
    if isinstance(policy, PolicySet):
        if policy.final:
            raise InvalidInput(
                "policy",
                "a governed policy is the session's workflow layer, which cannot be final; "
                "put final rules in the tenant's policy",
            )
        if policy.rate_limits:
            raise InvalidInput(
                "policy.rate_limits",
                "windowed limits are the tenant's (they count every run of it): put them in "
                "the tenant's policy",
            )
        return policy
    if isinstance(policy, Mapping):
        return PolicySet.from_dict(policy, "policy")
    if isinstance(policy, str | Path):
        return load_policy_layer(policy, PolicyScope.WORKFLOW)
    raise InvalidInput("policy", "expected a PolicySet, a mapping, a policy file path or None")


def _rules_ir(rules: Iterable[Any]) -> list[Any]:
    """A policy list as plain JSON: a rule object (a condition, an approval expiry) is a
    read-only mapping, stored as the object it stands for."""
    return [rule if isinstance(rule, str) else dict(rule) for rule in rules]


def _policy_ir(policy: PolicySet) -> dict[str, Any]:
    shape: dict[str, Any] = {
        "blocked_tools": _rules_ir(policy.blocked_tools),
        "require_approval_for": _rules_ir(policy.require_approval_for),
        "model_allowlist": _rules_ir(policy.model_allowlist),
    }
    if policy.approver is not None:
        shape["approver"] = policy.approver
    return shape


def _card_ir(card: AgentCard) -> dict[str, Any]:
    shape: dict[str, Any] = {"uri": card.uri, "autonomy": card.autonomy.value}
    if card.id:
        shape["id"] = card.id
    if card.name:
        shape["name"] = card.name
    if card.constraints is not None:
        shape["constraints"] = {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in attrs.asdict(card.constraints, recurse=False).items()
            if value is not None and value != ()
        }
    return shape


def _limits_ir(limits: BudgetLimits) -> dict[str, Any]:
    shape: dict[str, Any] = {}
    tokens = {
        key: value
        for key, value in (
            ("total_tokens", limits.total_tokens),
            ("input_tokens", limits.input_tokens),
            ("output_tokens", limits.output_tokens),
        )
        if value is not None
    }
    if tokens:
        shape["token_budget"] = tokens
    if limits.cost_usd is not None:
        shape["cost_budget_usd"] = limits.cost_usd
    return shape


#: The parts of a session's definition a run created by another process must share.
_SHARED_KEYS: Final = ("policy", "combining", "token_budget", "cost_budget_usd", "agents")


def is_governed(definition: WorkflowDef | Mapping[str, Any]) -> bool:
    """Whether a workflow definition (parsed, or its stored IR) is a governed session's: a
    run of it is written only by governed calls, never planned, driven or continued."""
    raw = definition.raw if isinstance(definition, WorkflowDef) else definition
    labels = raw.get("labels")
    return isinstance(labels, Mapping) and labels.get("charter") == GOVERNED_LABEL


def _worker_id() -> str:
    return f"govern:{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


class Governor:
    """A governed session: one Charter run in which every call of its tools is gated,
    recorded and settled (see the module doc).

    ``policy`` is the session's own layer (a `PolicySet`, its mapping, a policy file path
    or ``None``), between the tenant's stored policy and nothing more specific; ``tenant``
    must exist in the store, except ``"default"``, which is created (without a policy) if
    missing. ``store`` is a `Store`, a SQLite path, ``"memory:"`` or a Postgres URL
    (default ``./charter.db``); one the governor opens it also closes (`close`). ``run_id``
    names the run (made up if not given): give it to find the same run again — after a
    hold, from another process. ``limits`` are the run's token / USD budgets; ``agent`` an
    agent card whose autonomy limits apply to every tool; ``telemetry`` where spans go
    (default: the global OpenTelemetry providers; a no-op without the API).

    Register every tool (`govern`, `tool`) before the first call: the run's definition is
    stored then, with the tools known at that moment.
    """

    def __init__(
        self,
        *,
        policy: PolicyArg = None,
        tenant: str = DEFAULT_TENANT,
        store: StoreArg = None,
        run_id: str | None = None,
        limits: BudgetLimits | None = None,
        agent: AgentCard | None = None,
        name: str = "session",
        telemetry: Telemetry | None = None,
    ) -> None:
        self.policy = _policy_set(policy)
        self.tenant = tenant
        self.limits = limits or BudgetLimits()
        self.agent = agent
        self.name = name
        self.telemetry = telemetry or default_telemetry()
        self._target: str | None
        if store is None or isinstance(store, str | Path):
            self._target = str(store if store is not None else DEFAULT_STORE)
            self.store: Store = open_store(self._target)
            self._owns_store = True
        else:
            path = getattr(store, "path", None)
            self._target = str(path) if isinstance(path, str | Path) else None
            self.store = store
            self._owns_store = False
        self._run_id = run_id or f"governed-{name}-{uuid.uuid4().hex[:12]}"
        self._tools: dict[str, _Tool] = {}
        self._view: _View | None = None
        self._lock = threading.Lock()

    # -- tools --

    @property
    def run_id(self) -> str:
        """The run this session records into."""
        return self._run_id

    def govern(
        self,
        fn: Callable[P, R],
        *,
        tool_name: str | None = None,
        model: str | None = None,
        call_key: Callable[..., Any] | None = None,
        usage: UsageExtractor | None = None,
    ) -> GovernedFunction[P, R]:
        """``fn`` governed in this session, as tool ``tool_name`` (default: its
        ``__name__``; policy globs match it, so name it as your rules do: ``payments.refund``).
        ``model`` makes it a model node (policy model allowlists apply to it). ``call_key``
        (called with the call's arguments) gives the JSON that identifies a call when its
        arguments are not plain data; ``usage`` extracts a `Usage` from its value."""
        name = tool_name or getattr(fn, "__name__", None)
        if not isinstance(name, str) or not name:
            raise InvalidInput("tool_name", f"cannot name the tool of {fn!r}: pass tool_name")
        if name == SESSION_NODE:
            raise InvalidInput("tool_name", f"{SESSION_NODE!r} names the session's root node")
        module = getattr(fn, "__module__", None) or "?"
        qualname = getattr(fn, "__qualname__", None) or name
        tool = _Tool(
            node_id=name,
            tool_name=name,
            model=model,
            uri=f"python:{module}.{qualname}",
            is_async=inspect.iscoroutinefunction(fn),
        )
        with self._lock:
            known = self._tools.get(name)
            if known is not None and attrs.evolve(known, uri=tool.uri, is_async=tool.is_async) != (
                tool
            ):
                raise InvalidInput("tool_name", f"tool {name!r} is already governed differently")
            if known is None and self._view is not None:
                raise InvalidInput(
                    "tool_name",
                    f"run {self._run_id!r} has started without tool {name!r}: register every "
                    "tool before the first call, or use a new session",
                )
            self._tools[name] = tool
        return GovernedFunction(self, fn, tool, call_key=call_key, usage=usage)

    @overload
    def tool(
        self,
        fn: Callable[P, R],
        *,
        tool_name: str | None = None,
        model: str | None = None,
        call_key: Callable[..., Any] | None = None,
        usage: UsageExtractor | None = None,
    ) -> GovernedFunction[P, R]: ...

    @overload
    def tool(
        self,
        fn: None = None,
        *,
        tool_name: str | None = None,
        model: str | None = None,
        call_key: Callable[..., Any] | None = None,
        usage: UsageExtractor | None = None,
    ) -> Callable[[Callable[P, R]], GovernedFunction[P, R]]: ...

    def tool(
        self,
        fn: Callable[P, R] | None = None,
        *,
        tool_name: str | None = None,
        model: str | None = None,
        call_key: Callable[..., Any] | None = None,
        usage: UsageExtractor | None = None,
    ) -> Any:
        """`govern` as a decorator: ``@governor.tool`` or ``@governor.tool(tool_name=…)``."""

        def wrap(function: Callable[P, R]) -> GovernedFunction[P, R]:
            return self.govern(
                function, tool_name=tool_name, model=model, call_key=call_key, usage=usage
            )

        return wrap if fn is None else wrap(fn)

    def close(self) -> None:
        """Close the store if this governor opened it."""
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> Governor:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- the run and its definition --

    def definition_ir(self) -> dict[str, Any]:
        """The session's workflow definition as stored (see the module doc)."""
        nodes: dict[str, Any] = {
            SESSION_NODE: {
                "kind": {"type": "parallel"},
                "description": "a governed session: its tools are called by the application",
            }
        }
        for tool in sorted(self._tools.values(), key=lambda t: t.node_id):
            kind: dict[str, Any] = (
                {"type": "model", "model_ref": tool.model}
                if tool.model is not None
                else {"type": "tool", "tool_ref": tool.tool_name}
            )
            kind["callable"] = tool.uri
            node: dict[str, Any] = {"kind": kind, "description": f"governed {tool.uri}"}
            if self.agent is not None:
                node["agent"] = self.agent.uri
            nodes[tool.node_id] = node
        ir: dict[str, Any] = {
            "workflow_id": _WORKFLOW_ID,
            "name": self.name,
            "tenant_id": self.tenant,
            "start_node": SESSION_NODE,
            "labels": {"charter": GOVERNED_LABEL},
            "nodes": nodes,
            "edges": [
                {"from": SESSION_NODE, "to": node_id}
                for node_id in nodes
                if node_id != SESSION_NODE
            ],
            **_limits_ir(self.limits),
        }
        if self.policy is not None:
            ir["policy"] = _policy_ir(self.policy)
        if self.agent is not None:
            ir["agents"] = [_card_ir(self.agent)]
        # A semantic version whose build part is the digest of everything else: the same
        # configuration names the same stored definition.
        ir["version"] = f"1.0.0+{content_digest(ir)[:16]}"
        return ir

    def _open_view(self) -> _View:
        """The run (created with its definition on first use) folded from its log."""
        store = self.store
        execution = store.get_execution(self._run_id)
        ours = self.definition_ir()
        if execution is None:
            self._ensure_tenant()
            now = store.clock.now()
            store.put_workflow(
                WorkflowDefinition(
                    tenant_id=self.tenant,
                    workflow_id=_WORKFLOW_ID,
                    version=ours["version"],
                    ir=ours,
                    created_at=now,
                )
            )
            with contextlib.suppress(Conflict):  # another process created it meanwhile
                store.create_execution(
                    Execution(
                        execution_id=self._run_id,
                        tenant_id=self.tenant,
                        workflow_id=_WORKFLOW_ID,
                        workflow_version=ours["version"],
                        initial_input={},
                        created_at=now,
                        updated_at=now,
                    )
                )
            execution = store.get_execution(self._run_id)
            if execution is None:  # pragma: no cover - the store just created it
                raise CharterError(f"run {self._run_id!r} vanished after creation")
        stored = store.get_workflow(
            execution.workflow_id, execution.workflow_version, execution.tenant_id
        )
        if stored is None or not isinstance(stored.ir, Mapping) or not is_governed(stored.ir):
            raise InvalidInput(
                "run_id", f"run {self._run_id!r} exists and is not a governed session"
            )
        self._check_compatible(stored.ir, ours, execution)
        workflow = parse_workflow(stored.ir, f"run {self._run_id}")
        view = _View(
            execution=execution, workflow=workflow, run=RunState(workflow, reference=weakref.ref)
        )
        view.state_digest = content_digest(view.run.state)
        view.absorb(store.read_events(self._run_id))
        return view

    def _check_compatible(
        self, stored: Mapping[str, Any], ours: Mapping[str, Any], run: Execution
    ) -> None:
        problems = []
        if run.tenant_id != self.tenant:
            problems.append(f"its tenant is {run.tenant_id!r}, not {self.tenant!r}")
        problems.extend(
            f"its {key} differs" for key in _SHARED_KEYS if stored.get(key) != ours.get(key)
        )
        stored_nodes = stored.get("nodes")
        nodes = stored_nodes if isinstance(stored_nodes, Mapping) else {}
        for node_id, node in ours["nodes"].items():
            if nodes.get(node_id) != node:
                how = "governed differently" if node_id in nodes else "not in it"
                problems.append(f"tool {node_id!r} is {how}")
        if problems:
            raise InvalidInput(
                "run_id",
                f"run {self._run_id!r} was created by another governed session: "
                + "; ".join(problems),
            )

    def _ensure_tenant(self) -> None:
        if self.store.get_tenant(self.tenant) is not None:
            return
        if self.tenant != DEFAULT_TENANT:
            raise UnknownTenant(
                "tenant",
                f"unknown tenant {self.tenant!r}: create it with its policy first "
                f"(`charter tenant {self.tenant} --policy FILE`)",
            )
        now = self.store.clock.now()
        self.store.put_tenant(
            Tenant(tenant_id=self.tenant, name=self.tenant, created_at=now, updated_at=now)
        )

    def _current(self) -> _View:
        if self._view is None:
            self._view = self._open_view()
        return self._view

    def _catch_up(self, view: _View) -> None:
        events = self.store.read_events(self._run_id, after=view.last)
        if not view.absorb(events):  # pragma: no cover - read_events is gapless
            raise CharterError(f"run {self._run_id!r}: its log has a gap after {view.last}")

    # -- one call --

    def _decide(self, tool: _Tool, input_hash: str) -> _Decision:
        """Decide and record one call (see the module doc, step 2)."""
        store = self.store
        with self._lock:
            view = self._current()
            node = view.workflow.nodes.get(tool.node_id)
            if node is None:
                raise InvalidInput(
                    "tool_name", f"run {self._run_id!r} has no tool {tool.node_id!r}"
                )
            for _ in range(_MAX_CONFLICTS):
                tenant = store.get_tenant(view.execution.tenant_id)
                if tenant is None:
                    raise UnknownTenant(
                        "tenant", f"tenant {view.execution.tenant_id!r} is gone: refusing to run"
                    )
                attempt = view.runs.get(tool.node_id, 0)
                approval = view.approvals.get(tool.node_id, _NOT_REQUESTED)
                started = NodeStarted(node_id=tool.node_id, worker_id=_worker_id(), attempt=attempt)
                invoked = AgentToolInvoked(
                    node_id=tool.node_id,
                    agent_uri=tool.uri,
                    mode="async" if tool.is_async else "sync",
                    protocol="python",
                    input_hash=input_hash,
                )
                request = node_gate_request(
                    view.execution,
                    view.workflow,
                    node,
                    tenant.policy,
                    attempt=attempt,
                    budget=view.budget,
                    approval=approval,
                    state_digest=view.state_digest,
                    now=store.clock.now(),
                    as_of=view.last + 2,  # the agent_tool_invoked below
                )
                # The tenant's windowed limits that count this tool, read at `now`.
                request = with_limit_usage(store, view.execution.tenant_id, tenant.policy, request)
                request = invocation_request(request, invoked)
                result = gate_node(request)
                budget = view.budget
                try:
                    written = store.append_events(
                        self._run_id,
                        (started, invoked, *result.events),
                        expected_last_sequence=view.last,
                    )
                except Conflict:
                    self._catch_up(view)  # another writer came first: decide on what it wrote
                    continue
                if not view.absorb(written):  # pragma: no cover - compare-and-append held
                    self._view = None
                return _Decision(
                    tool=tool,
                    attempt=attempt,
                    result=result,
                    gated=written[2],
                    budget=budget,
                    approval=approval,
                    request=request,
                )
        raise CharterError(
            f"run {self._run_id!r}: could not record a decision for {tool.tool_name!r}: "
            f"the log moved on {_MAX_CONFLICTS} times in a row"
        )

    def _settle(
        self,
        decision: _Decision,
        usage: Usage,
        *,
        model: str | None,
        duration_ms: int,
        error: BaseException | None,
    ) -> tuple[Sequence[Event], Settlement]:
        """Record the end of a call that ran (step 4): its usage, then its completion or its
        failure."""
        tool, attempt = decision.tool, decision.attempt
        with self._lock:
            limits = self._current().workflow.limits
        settlement = settle_node(
            SettleRequest(
                node_id=tool.node_id,
                attempt=attempt,
                budget=decision.budget,
                limits=limits,
                usage=usage,
                succeeded=error is None,
            )
        )
        events: list[EventKind] = list(settlement.events)
        if settlement.outcome is SettlementOutcome.COMPLETED:
            result = NodeResult(usage=usage, gen_ai_model=model)
            events.append(
                completed_event(tool.node_id, result, duration_ms=duration_ms, idempotency_key=None)
            )
        elif settlement.outcome is SettlementOutcome.ERRORED and error is not None:
            why = f"{type(error).__qualname__}: {error}"
            events.append(terminal_failure(tool.node_id, attempt, why))
        request = decision.request
        if request is not None:  # the call ran: charge the limits its decision matched
            charge = charge_event(tool.node_id, attempt, request.rate_limits, usage, request.now)
            if charge is not None:
                events.append(charge)
        written = self.store.append_events(self._run_id, events)
        with self._lock:
            view = self._view
            if view is not None and not view.absorb(written):
                pass  # others wrote in between: the next decision reads them (compare-and-append)
        return written, settlement

    def _command(self, node_id: str, approver: str) -> tuple[str, str]:
        user = approver
        if approver == ANY_HUMAN or any(c in approver for c in ",*?[:"):  # globs, group:NAME
            user = "USER"
        db = ""
        if self._target is not None and self._target not in (DEFAULT_STORE, f"./{DEFAULT_STORE}"):
            db = f" --db {shown(self._target)}"
        # Where the tenant names approvers' keys, an answer must be signed (semantics §5).
        tenant = self.store.get_tenant(self.tenant)
        keyed = tenant is not None and tenant.policy is not None and tenant.policy.approver_keys
        key = " --key FILE" if keyed else ""
        # --no-continue: a governed run is continued by calling the function again, not by
        # the CLI's driver (which has no executor for a Python callable).
        command = f"charter approve {self._run_id} {node_id} --user {user}{db}{key} --no-continue"
        python = (
            f"store.decide_approval({self._run_id!r}, {node_id!r}, user_id={user!r}, "
            "decision=charter.ApprovalDecision.APPROVED)"
        )
        return command, python

    def _raise_for(self, decision: _Decision) -> None:
        """Raise what a hold or a refusal means to the caller."""
        result, tool = decision.result, decision.tool
        gated = decision.gated
        kind = gated.kind
        assert isinstance(kind, NodeGated)
        if result.outcome is Outcome.HOLD:
            approver = ANY_HUMAN
            for event_kind in result.events:
                if isinstance(event_kind, ToolApprovalRequired):
                    approver = event_kind.approver
                    break
            else:
                if isinstance(decision.approval, Pending):
                    approver = decision.approval.request.approver
            command, python = self._command(tool.node_id, approver)
            raise Held(
                run_id=self._run_id,
                node_id=tool.node_id,
                tool_name=tool.tool_name,
                approver=approver,
                reason=result.reason,
                request_digest=result.request_digest,
                sequence=gated.sequence,
                command=command,
                python=python,
            )
        rule, scope, pattern = _deciding_rule(result)
        raise Refused(
            run_id=self._run_id,
            node_id=tool.node_id,
            tool_name=tool.tool_name,
            reason=result.reason or "refused",
            rule=rule,
            scope=scope,
            pattern=pattern,
            sequence=gated.sequence,
            decision=kind,
        )


def _deciding_rule(result: GateResult) -> tuple[str | None, str | None, str | None]:
    verdict = result.policy
    if isinstance(verdict.decision, Block):
        scope = verdict.scope.value if verdict.scope is not None else None
        rule = verdict.rule.value if verdict.rule is not None else None
        return rule, scope, verdict.pattern
    match result.autonomy:
        case TripCircuitBreaker():
            return "circuit_breaker", None, None
        case EscalateLimit(limit_type=limit_type):
            return f"autonomy_limit:{limit_type}", None, None
    if result.budget_trip is not None:
        return f"budget:{result.budget_trip.dimension.value}", None, None
    for event in result.events:
        if isinstance(event, RateLimitExceeded):  # a tenant's windowed limit
            return f"rate_limit:{event.limit}", "tenant", None
    return "approval_rejected", None, None


class GovernedFunction(Generic[P, R]):
    """A callable governed by a `Governor`: call it as the function itself (an async
    function's governed form is awaited the same way). ``governor`` and ``run_id`` say
    where its calls are recorded."""

    def __init__(
        self,
        governor: Governor,
        fn: Callable[P, R],
        tool: _Tool,
        *,
        call_key: Callable[..., Any] | None,
        usage: UsageExtractor | None,
    ) -> None:
        self.governor = governor
        self.tool_name = tool.tool_name
        self._fn = fn
        self._tool = tool
        self._call_key = call_key
        self._usage = usage
        try:
            self._signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):
            self._signature = None
        functools.update_wrapper(self, fn)

    @property
    def run_id(self) -> str:
        return self.governor.run_id

    def input_hash(self, *args: Any, **kwargs: Any) -> str:
        """The digest that identifies a call with these arguments (what an approval of it
        binds to)."""
        if self._call_key is not None:
            identity: Any = _plain(self._call_key(*args, **kwargs))
        elif self._signature is not None:
            try:
                bound = self._signature.bind(*args, **kwargs)
            except TypeError as error:
                raise InvalidInput(self.tool_name, f"not a valid call: {error}") from None
            bound.apply_defaults()
            identity = {name: _plain(value) for name, value in bound.arguments.items()}
        else:
            identity = {"args": _plain(list(args)), "kwargs": _plain(kwargs)}
        return content_digest({"tool": self.tool_name, "call": identity})

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        if self._tool.is_async:
            return cast(R, self._acall(args, kwargs))
        return self._call(args, kwargs)

    def _returned_usage(self, value: Any) -> Usage | None:
        return self._usage(value) if self._usage is not None else usage_of(value)

    def _call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
        return self.admit(*args, **kwargs).run()

    async def _acall(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        admission = await self.aadmit(*args, **kwargs)
        return await admission.arun()

    def admit(self, *args: P.args, **kwargs: P.kwargs) -> Admission[R]:
        """Decide and record this call without making it yet: `Refused` or `Held` as a call
        would raise; otherwise an `Admission` to run it with (once). For frameworks that
        ask "may it run?" before they run a tool; calling the governed function is
        ``admit(...).run()``."""
        governor, tool = self.governor, self._tool
        digest = self.input_hash(*args, **kwargs)
        with governor.telemetry.decision_span(
            tool.node_id, tool_name=tool.tool_name, model=tool.model
        ) as span:
            decision = governor._decide(tool, digest)
            self._trace(span, decision)
        if decision.result.outcome is not Outcome.RUN:
            governor._raise_for(decision)
        return Admission(self, decision, digest, args, kwargs)

    async def aadmit(self, *args: P.args, **kwargs: P.kwargs) -> Admission[R]:
        """`admit`, with the store work in a worker thread (never on the event loop)."""
        governor, tool = self.governor, self._tool
        digest = self.input_hash(*args, **kwargs)
        with governor.telemetry.decision_span(
            tool.node_id, tool_name=tool.tool_name, model=tool.model
        ) as span:
            decision = await asyncio.to_thread(governor._decide, tool, digest)
            self._trace(span, decision)
        if decision.result.outcome is not Outcome.RUN:
            governor._raise_for(decision)
        return Admission(self, decision, digest, args, kwargs)

    def _tool_span(self, decision: _Decision, digest: str) -> AbstractContextManager[ToolSpan]:
        tool = self._tool
        return self.governor.telemetry.tool_span(
            tool.tool_name,
            run_id=self.governor.run_id,
            node_id=tool.node_id,
            attempt=decision.attempt,
            model=tool.model,
            call_id=digest,
        )

    def _trace(self, span: DecisionSpan, decision: _Decision) -> None:
        kind = decision.gated.kind
        assert isinstance(kind, NodeGated)
        span.record(kind, run_id=self.governor.run_id, sequence=decision.gated.sequence)

    def _ended(
        self,
        decision: _Decision,
        collector: _Collector,
        started: float,
        value: Any,
        failure: BaseException | None,
    ) -> _Ended:
        """Settle a call that ran and record it (step 4). A value whose usage cannot be
        read fails the call: recorded as an error with the usage it reported, then raised
        as `RecordingFailed`. A settlement that cannot be recorded is `RecordingFailed`."""
        returned = None
        if failure is None:
            try:
                returned = self._returned_usage(value)
            except (InvalidInput, TypeError, ValueError, AttributeError) as error:
                failure = RecordingFailed(
                    f"{self.tool_name}: its usage could not be read: {error}", result=value
                )
                failure.__cause__ = error
        usage = _total(collector.usage, returned)
        try:
            written, settlement = self.governor._settle(
                decision,
                usage,
                model=collector.model or self._tool.model,
                duration_ms=int((time.monotonic() - started) * 1000),
                error=failure,
            )
        except (CharterError, OSError) as error:
            raise RecordingFailed(
                f"{self.tool_name}: ran, but its settlement could not be recorded in run "
                f"{self.governor.run_id!r}: {error}",
                result=value,
                error=failure,
            ) from error
        return _Ended(self, decision, usage, written, settlement, value, failure)


class Admission(Generic[R]):
    """A call decided ``run`` and recorded (`GovernedFunction.admit`), not yet made: `run`
    (or `arun` for an async function) makes it once, records its settlement and returns
    its value as the governed call would. ``instead`` makes that same call the way the
    framework does (a thunk standing for ``fn(*args, **kwargs)``)."""

    def __init__(
        self,
        function: GovernedFunction[Any, R],
        decision: _Decision,
        digest: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.function = function
        self.run_id = function.governor.run_id
        self.node_id = decision.tool.node_id
        self.sequence = decision.gated.sequence
        self._decision = decision
        self._digest = digest
        self._args = args
        self._kwargs = kwargs
        self._used = False
        self._lock = threading.Lock()

    def _take(self) -> None:
        with self._lock:
            if self._used:
                raise InvalidInput(self.node_id, "an admitted call runs once")
            self._used = True

    def run(self, instead: Callable[[], Any] | None = None) -> R:
        """Make the call (``instead()`` if given), settle and record it."""
        self._take()
        function, decision = self.function, self._decision
        collector = _Collector()
        started = time.monotonic()
        with function._tool_span(decision, self._digest) as tool_span:
            token = _CURRENT.set(collector)
            try:
                value = (
                    instead() if instead is not None else function._fn(*self._args, **self._kwargs)
                )
            except BaseException as error:
                _CURRENT.reset(token)
                ended = function._ended(decision, collector, started, None, error)
                ended.trace(tool_span)
                raise
            _CURRENT.reset(token)
            ended = function._ended(decision, collector, started, value, None)
            ended.trace(tool_span)
            return cast(R, ended.outcome())

    async def arun(self, instead: Callable[[], Awaitable[Any]] | None = None) -> Any:
        """`run` for an async function (or an awaitable ``instead``): the call is awaited on
        the caller's loop, its settlement recorded in a worker thread."""
        self._take()
        function, decision = self.function, self._decision
        collector = _Collector()
        started = time.monotonic()
        with function._tool_span(decision, self._digest) as tool_span:
            token = _CURRENT.set(collector)
            try:
                if instead is not None:
                    value = await instead()
                else:
                    made = function._fn(*self._args, **self._kwargs)
                    value = await cast(Coroutine[Any, Any, Any], made)
            except BaseException as error:
                _CURRENT.reset(token)
                ended = await asyncio.to_thread(
                    function._ended, decision, collector, started, None, error
                )
                ended.trace(tool_span)
                raise
            _CURRENT.reset(token)
            ended = await asyncio.to_thread(
                function._ended, decision, collector, started, value, None
            )
            ended.trace(tool_span)
            return ended.outcome()


@attrs.frozen
class _Ended:
    """A call that ran, settled and recorded: what its caller gets."""

    function: GovernedFunction[Any, Any]
    decision: _Decision
    usage: Usage
    written: Sequence[Event]
    settlement: Settlement
    value: Any
    failure: BaseException | None

    def trace(self, span: ToolSpan) -> None:
        span.settled(
            self.usage,
            sequence=_usage_sequence(self.written),
            outcome=self.settlement.outcome.value,
        )

    def outcome(self) -> Any:
        """The call's value — unless reading its usage failed (`RecordingFailed`) or its
        usage tripped a budget (`Refused`, with the value on it)."""
        if self.failure is not None:
            raise self.failure
        settlement = self.settlement
        if settlement.outcome is not SettlementOutcome.FAILED:
            return self.value
        function, trip = self.function, settlement.trip
        raise Refused(
            run_id=function.governor.run_id,
            node_id=function._tool.node_id,
            tool_name=function.tool_name,
            reason=settlement.reason or "budget exceeded",
            rule=f"budget:{trip.dimension.value}" if trip is not None else "budget",
            scope=None,
            pattern=None,
            sequence=_usage_sequence(self.written) or self.decision.gated.sequence,
            decision=None,
            ran=True,
            result=self.value,
        )


def _usage_sequence(written: Iterable[Event]) -> int | None:
    for event in written:
        if isinstance(event.kind, UsageRecorded):
            return event.sequence
    return None


# ── the one-call forms ─────────────────────────────────────────────────────────────────


def govern(
    fn: Callable[P, R],
    *,
    policy: PolicyArg = None,
    tenant: str = DEFAULT_TENANT,
    store: StoreArg = None,
    tool_name: str | None = None,
    run_id: str | None = None,
    limits: BudgetLimits | None = None,
    agent: AgentCard | None = None,
    model: str | None = None,
    call_key: Callable[..., Any] | None = None,
    usage: UsageExtractor | None = None,
    telemetry: Telemetry | None = None,
) -> GovernedFunction[P, R]:
    """``fn`` (sync or async) governed in a session of its own — one `Governor`, so one run
    (``run_id``, or one made up for this governed function) holding this one tool. To
    govern several functions in one run, make a `Governor` and register each with it."""
    governor = Governor(
        policy=policy,
        tenant=tenant,
        store=store,
        run_id=run_id,
        limits=limits,
        agent=agent,
        name=tool_name or str(getattr(fn, "__name__", "session")),
        telemetry=telemetry,
    )
    return governor.govern(fn, tool_name=tool_name, model=model, call_key=call_key, usage=usage)


def governed(
    *,
    policy: PolicyArg = None,
    tenant: str = DEFAULT_TENANT,
    store: StoreArg = None,
    tool_name: str | None = None,
    run_id: str | None = None,
    limits: BudgetLimits | None = None,
    agent: AgentCard | None = None,
    model: str | None = None,
    call_key: Callable[..., Any] | None = None,
    usage: UsageExtractor | None = None,
    telemetry: Telemetry | None = None,
) -> Callable[[Callable[P, R]], GovernedFunction[P, R]]:
    """`govern` as a decorator: ``@governed(policy=…, run_id=…)``."""

    def wrap(fn: Callable[P, R]) -> GovernedFunction[P, R]:
        return govern(
            fn,
            policy=policy,
            tenant=tenant,
            store=store,
            tool_name=tool_name,
            run_id=run_id,
            limits=limits,
            agent=agent,
            model=model,
            call_key=call_key,
            usage=usage,
            telemetry=telemetry,
        )

    return wrap
