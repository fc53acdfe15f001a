"""OpenAI Agents SDK function tools (and models) governed by Charter
(``pip install 'charter[openai-agents]'``; docs/integrations.md §4).

`CharterTools(governor, tools).tools` are the agent's `FunctionTool`s, each with three
hooks of the SDK set:

* ``needs_approval`` — Charter decides the call (and records it) when the SDK asks whether
  it needs approval: a **hold** answers yes, so the run stops with an interruption
  (``result.interruptions``; `CharterTools.held` gives the approval request: command,
  approver). A person answers with ``charter approve …``; `CharterTools.answer` then
  approves (or rejects) in the SDK's `RunState` exactly the interruptions Charter's log says
  were answered, and the resumed run makes the call, which consumes the approval: it runs
  once;
* a tool **input guardrail** — a **refusal** becomes ``ToolGuardrailFunctionOutput.
  reject_content`` (the model reads which rule refused, the tool does not run); a call the
  SDK runs without having asked (approved in the `RunState`, or resumed in another
  process) is decided here;
* ``on_invoke_tool`` — the admitted call is made and settled: its usage, its failure
  recorded; a budget its usage trips withholds its output.

`GovernedModel(model, governor, name=…)` governs a `Model`'s calls: the policy's model
allowlist, and the response's ``usage`` settled against the run's token budgets (the same
usage the SDK adds up in ``result.context_wrapper.usage``). A refused or held model call
raises `Refused` / `Held` out of ``Runner.run``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from agents import (
    FunctionTool,
    Model,
    ModelResponse,
    RunContextWrapper,
    RunState,
    Tool,
    ToolGuardrailFunctionOutput,
    ToolInputGuardrailData,
    tool_input_guardrail,
)
from agents.items import TResponseStreamEvent
from agents.tool_context import ToolContext

from charter.core.approvals import Pending, Rejected, node_approval_status
from charter.core.errors import InvalidInput
from charter.integrations._calls import (
    Gatekeeper,
    approval_request,
    held_text,
    refusal_text,
    usage_from_metadata,
)
from charter.integrations.govern import Admission, Governor, Held, Refused

__all__ = ["CharterTools", "GovernedModel", "governed_tools"]

_SOURCE = "charter.integrations.openai_agents"


def _arguments(text: str) -> Any:
    try:
        return json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {"$unparsed": text}


class CharterTools:
    """``tools`` (the SDK's `FunctionTool`s, e.g. from ``@function_tool``) governed by
    ``governor`` (one Charter run): give ``charter.tools`` to the `Agent`."""

    def __init__(self, governor: Governor, tools: Iterable[FunctionTool]) -> None:
        originals = list(tools)
        self.governor = governor
        self._gate = Gatekeeper(governor, tools=[t.name for t in originals], source=_SOURCE)
        # What Charter decided for each call id the SDK asked about, until the call is made.
        self._decided: dict[str, Admission[Any] | Held | Refused] = {}
        self.tools: list[Tool] = [self._governed(tool) for tool in originals]

    def _governed(self, tool: FunctionTool) -> FunctionTool:
        name = tool.name
        invoke = tool.on_invoke_tool
        decided = self._decided
        gate = self._gate

        async def needs_approval(
            context: RunContextWrapper[Any], params: dict[str, Any], call_id: str
        ) -> bool:
            try:
                decided[call_id] = await gate.aadmit(name, params)
            except Held as held:
                decided[call_id] = held
                return True
            except Refused as refused:
                decided[call_id] = refused
            return False

        @tool_input_guardrail(name=f"charter:{name}")
        async def charter_guardrail(data: ToolInputGuardrailData) -> ToolGuardrailFunctionOutput:
            context = data.context
            entry = decided.get(context.tool_call_id)
            if isinstance(entry, Admission):
                return ToolGuardrailFunctionOutput.allow()
            decided.pop(context.tool_call_id, None)
            if isinstance(entry, Refused):
                return ToolGuardrailFunctionOutput.reject_content(
                    refusal_text(entry), output_info=_info(entry)
                )
            # Not decided yet (approved in the RunState, or resumed elsewhere): decide now.
            try:
                decided[context.tool_call_id] = await gate.aadmit(
                    name, _arguments(context.tool_arguments)
                )
            except Held as held:
                return ToolGuardrailFunctionOutput.reject_content(
                    held_text(held), output_info=approval_request(held)
                )
            except Refused as refused:
                return ToolGuardrailFunctionOutput.reject_content(
                    refusal_text(refused), output_info=_info(refused)
                )
            return ToolGuardrailFunctionOutput.allow()

        async def on_invoke_tool(context: ToolContext[Any], arguments: str) -> Any:
            entry = decided.pop(context.tool_call_id, None)
            try:
                admission = (
                    entry
                    if isinstance(entry, Admission)
                    else await gate.aadmit(name, _arguments(arguments))
                )

                async def make() -> Any:
                    return await invoke(context, arguments)

                return await admission.arun(make)
            except Held as held:
                return held_text(held)
            except Refused as refused:
                return refusal_text(refused)

        governed = copy.copy(tool)
        governed.on_invoke_tool = on_invoke_tool
        governed.needs_approval = needs_approval
        governed.tool_input_guardrails = [*(tool.tool_input_guardrails or ()), charter_guardrail]
        return governed

    def held(self, call_id: str) -> dict[str, Any] | None:
        """The approval request of an interrupted call (by its call id), if Charter held it
        in this process: run, node, approver, ``command``."""
        entry = self._decided.get(call_id)
        return approval_request(entry) if isinstance(entry, Held) else None

    def answer(self, state: RunState[Any, Any]) -> list[Any]:
        """Answer ``state``'s interruptions from Charter's log: a call whose node Charter
        holds and a person approved is approved, one a person rejected is rejected (with
        the reason); one Charter never held is approved (Charter decides it when it runs).
        Returns the interruptions still waiting for a person."""
        events = self.governor.store.read_events(self.governor.run_id)
        waiting = []
        for item in state.get_interruptions():
            node = item.tool_name or ""
            if node not in self._gate.names:
                raise InvalidInput(node, "not a tool these Charter tools govern")
            status = node_approval_status(events, node)
            if isinstance(status, Pending):
                waiting.append(item)
            elif isinstance(status, Rejected):
                reason = f"rejected in Charter by {status.user_id}"
                if status.comment:
                    reason += f": {status.comment}"
                state.reject(item, rejection_message=reason)
            else:
                state.approve(item)
        return waiting


def _info(refused: Refused) -> dict[str, Any]:
    return {
        "charter": "refused",
        "run_id": refused.run_id,
        "node_id": refused.node_id,
        "rule": refused.rule,
        "scope": refused.scope,
        "pattern": refused.pattern,
        "reason": refused.reason,
        "sequence": refused.sequence,
    }


class GovernedModel(Model):
    """``model`` with every call governed by ``governor`` as model ``name`` (its policy
    name: allowlists apply); the response's usage feeds the run's token budgets. Streaming
    is not governed: ``stream_response`` refuses (use ``Runner.run``)."""

    def __init__(self, model: Model, governor: Governor, *, name: str) -> None:
        self.model = model
        self.name = name
        self._gate = Gatekeeper(
            governor,
            tools=(),
            models=[name],
            source=_SOURCE,
            model_usage=lambda response: usage_from_metadata(getattr(response, "usage", None)),
        )

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        items = kwargs.get("input", args[1] if len(args) > 1 else None)
        key = {"input": items if isinstance(items, str | list) else repr(items)}

        async def call() -> ModelResponse:
            return await self.model.get_response(*args, **kwargs)

        return await self._gate.acall_model(self.name, key, call)

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[TResponseStreamEvent]:
        raise InvalidInput(
            self.name, "a governed model does not stream: run the agent with Runner.run"
        )


def governed_tools(governor: Governor, tools: Sequence[FunctionTool]) -> list[Tool]:
    """``CharterTools(governor, tools).tools``."""
    return CharterTools(governor, tools).tools
