"""Executors: the code that does a node's work, registered by name, tool or node kind.

An executor is any callable ``(NodeCall) -> NodeResult`` (`charter.core.ports.Executor`).
`ExecutorRegistry.resolve` picks one for a node, first match wins:

1. the executor named by the workflow's tool definition (``tools.<name>.executor``);
2. one registered for the node's policy name (a tool name, exactly or by glob);
3. one registered for the node's kind (``model``, ``condition``, …).

No match is a terminal failure of the node (upstream silently "succeeded" such nodes with an
empty stub: docs/workflows.md §4). The built-in executors, registered by `default_registry`, let
every example run offline:

============  =========================================================================
``echo``      returns ``{tool, args}``; merges ``config.state_patch`` into the state
``fail``      raises ``ExecutorFailed(config.message, retryable=config.retryable)``
``fake_model``a deterministic model: tokens from the prompt length (or ``config``), cost
              from ``config.usd_per_1k_input`` / ``usd_per_1k_output``
``condition`` evaluates a condition node's branches; output ``{chosen_target}``
``noop``      completes with an empty output (``parallel`` and ``join`` nodes)
============  =========================================================================
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from charter.core.budget import Usage
from charter.core.errors import ExecutorFailed, InvalidInput
from charter.core.glob import glob_match
from charter.core.ports import Executor, NodeCall, NodeResult
from charter.core.workflow import NodeDef, WorkflowDef

__all__ = [
    "ExecutorRegistry",
    "condition_executor",
    "default_registry",
    "echo",
    "fail",
    "fake_model",
    "load_plugin",
    "noop",
]


class ExecutorRegistry:
    """Executors by name, by tool-name pattern and by node kind."""

    def __init__(self) -> None:
        self._named: dict[str, Executor] = {}
        self._tools: list[tuple[str, Executor]] = []
        self._kinds: dict[str, Executor] = {}

    def register(self, name: str, executor: Executor) -> None:
        """Make ``executor`` available as ``tools.<tool>.executor: <name>``."""
        self._named[name] = executor

    def register_tool(self, pattern: str, executor: Executor) -> None:
        """Run ``executor`` for nodes whose policy name matches ``pattern`` (a glob)."""
        self._tools.append((pattern, executor))

    def register_kind(self, tag: str, executor: Executor) -> None:
        """Run ``executor`` for nodes of kind ``tag`` that nothing more specific claims."""
        self._kinds[tag] = executor

    def resolve(self, workflow: WorkflowDef, node: NodeDef) -> Executor | None:
        tool = node.context.tool_name
        if tool is not None and tool in workflow.tools:
            named = workflow.tools[tool].executor
            if named is not None:
                return self._named.get(named)
        if tool is not None:
            for pattern, executor in reversed(self._tools):  # the latest registration wins
                if glob_match(pattern, tool):
                    return executor
        return self._kinds.get(node.tag)

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._named))


# ── built-in executors ─────────────────────────────────────────────────────────────────


def _config(call: NodeCall) -> Mapping[str, Any]:
    return call.config if isinstance(call.config, Mapping) else {}


def echo(call: NodeCall) -> NodeResult:
    """Return the call's tool and arguments; merge ``config.state_patch`` into the state."""
    patch = _config(call).get("state_patch", {})
    return NodeResult(
        output={"tool": call.tool_name, "args": call.args},
        state_patch=patch if isinstance(patch, Mapping) else {},
        usage=Usage(tool_calls=1),
    )


def fail(call: NodeCall) -> NodeResult:
    """Always fail (for demonstrating retries and circuit breakers)."""
    config = _config(call)
    retryable = config.get("retryable", True)
    raise ExecutorFailed(
        str(config.get("message", f"{call.tool_name or call.node_id} failed")),
        retryable=bool(retryable),
    )


def fake_model(call: NodeCall) -> NodeResult:
    """A deterministic offline model: same call, same answer, same usage."""
    config = _config(call)
    prompt = call.kind.get("prompt") or call.kind.get("prompt_ref") or ""
    input_tokens = int(config.get("input_tokens", 10 + len(str(prompt)) // 4))
    output_tokens = int(config.get("output_tokens", 50))
    cost = (
        input_tokens * float(config.get("usd_per_1k_input", 0.003))
        + output_tokens * float(config.get("usd_per_1k_output", 0.015))
    ) / 1000
    model = call.resolved_model or call.model_ref or "fake"
    return NodeResult(
        output={"text": f"[{model}] answer to: {str(prompt)[:80]}"},
        state_patch={call.node_id: f"[{model}] done"},
        usage=Usage(input_tokens=input_tokens, output_tokens=output_tokens, cost_usd=cost),
        gen_ai_system="charter-fake",
        gen_ai_model=model,
        finish_reason="stop",
    )


def noop(call: NodeCall) -> NodeResult:
    """Complete with an empty output."""
    return NodeResult(output={}, state_patch={})


def condition_executor(workflow: WorkflowDef) -> Executor:
    """An executor for ``condition`` nodes: the first branch whose condition holds (a branch
    without one is the default) becomes ``output.chosen_target``."""

    def choose(call: NodeCall) -> NodeResult:
        node = workflow.nodes[call.node_id]
        for branch in node.branches:
            if branch.condition is None or branch.condition.evaluate(
                state=call.state, inputs=call.inputs
            ):
                return NodeResult(output={"chosen_target": branch.target}, state_patch={})
        raise ExecutorFailed(f"no branch of {call.node_id!r} matched", retryable=False)

    return choose


def default_registry() -> ExecutorRegistry:
    """The built-in executors (module doc): ``echo``, ``fail`` and ``fake_model`` by name,
    ``fake_model`` for ``model`` nodes, ``noop`` for ``parallel`` and ``join`` nodes.
    (``condition`` nodes are handled by the worker with `condition_executor`.)"""
    registry = ExecutorRegistry()
    registry.register("echo", echo)
    registry.register("fail", fail)
    registry.register("fake_model", fake_model)
    registry.register("noop", noop)
    registry.register_kind("model", fake_model)
    registry.register_kind("parallel", noop)
    registry.register_kind("join", noop)
    return registry


def load_plugin(spec: str, registry: ExecutorRegistry) -> None:
    """Run ``module:function`` with the registry, so it can register its executors (the
    CLI's ``--executors``)."""
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise InvalidInput("--executors", f"expected module:function, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise InvalidInput("--executors", f"cannot import {module_name!r}: {error}") from None
    register: Callable[[ExecutorRegistry], None] | None = getattr(module, function_name, None)
    if not callable(register):
        raise InvalidInput("--executors", f"{module_name!r} has no function {function_name!r}")
    register(registry)
