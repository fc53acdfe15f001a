"""LangGraph and LangChain tool (and model) calls governed by Charter
(``pip install 'charter[langgraph]'``; docs/integrations.md §3).

* `GovernedToolNode` — LangGraph's prebuilt `ToolNode` with every tool call gated;
  `tool_call_wrappers` gives the same as the ``wrap_tool_call`` / ``awrap_tool_call`` pair
  for a `ToolNode` you build yourself.
* `CharterMiddleware` — the same for `langchain.agents.create_agent`, through the agent
  middleware's ``wrap_tool_call`` hooks; with ``models=``, model calls are gated too (the
  policy's model allowlist; the response's ``usage_metadata`` feeds the token budgets).

What each decision becomes:

* **run** — the tool runs (inside the governed call: its usage, its failure are recorded);
* **fail** — a `ToolMessage` with ``status="error"`` naming the rule, which the model reads
  (``on_refusal="raise"``: `Refused` is raised instead); for a model call, an `AIMessage`
  saying so, which ends the agent's loop (or `Refused`);
* **hold** — LangGraph's `interrupt()` with the approval request (`approval_request`: run,
  node, approver, ``command``). The graph pauses in its checkpointer; a person answers
  with ``charter approve …``; resuming with ``Command(resume=…)`` re-runs the node, and the
  call, now approved, runs exactly once. The resume value is not the answer: Charter's
  recorded approval is (resumed without one, the node interrupts again).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Literal

from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.tools import BaseTool
from langgraph.prebuilt import ToolNode
from langgraph.prebuilt.tool_node import ToolCallRequest
from langgraph.types import Command, interrupt

from charter.core.budget import Usage
from charter.integrations._calls import (
    Gatekeeper,
    approval_request,
    refusal_text,
    usage_from_metadata,
)
from charter.integrations.govern import Governor, Held, Refused

__all__ = [
    "CharterMiddleware",
    "GovernedToolNode",
    "model_name",
    "response_usage",
    "tool_call_wrappers",
]

OnRefusal = Literal["message", "raise"]
ToolResult = ToolMessage | Command[Any]
_SOURCE = "charter.integrations.langgraph"


class _ToolErrored(Exception):
    """A tool whose error LangGraph turned into an error message: recorded as failed."""

    def __init__(self, message: ToolMessage) -> None:
        super().__init__(str(message.content))
        self.message = message


def _checked(result: ToolResult) -> ToolResult:
    if isinstance(result, ToolMessage) and result.status == "error":
        raise _ToolErrored(result)
    return result


def _tool_names(tools: Iterable[BaseTool | Callable[..., Any] | str]) -> list[str]:
    names = []
    for tool in tools:
        if isinstance(tool, str):
            names.append(tool)
        elif isinstance(tool, BaseTool):
            names.append(tool.name)
        else:
            names.append(str(getattr(tool, "__name__", tool)))
    return names


def response_usage(response: Any) -> Usage | None:
    """The token usage of a model's response (an `AIMessage`, a `ModelResponse`, or a list
    of messages): the sum of their ``usage_metadata``."""
    if isinstance(response, ModelResponse):
        messages: Sequence[Any] = response.result
    elif isinstance(response, BaseMessage):
        messages = [response]
    elif isinstance(response, list | tuple):
        messages = response
    else:
        messages = [getattr(response, "model_response", None)]
        inner = messages[0]
        if isinstance(inner, ModelResponse):
            messages = inner.result
    total = Usage()
    for message in messages:
        usage = usage_from_metadata(getattr(message, "usage_metadata", None))
        if usage is not None:
            total = Usage(
                input_tokens=total.input_tokens + usage.input_tokens,
                output_tokens=total.output_tokens + usage.output_tokens,
            )
    return total


def model_name(model: Any) -> str | None:
    """The name a chat model reports (``model_name`` or ``model``), if any."""
    for attribute in ("model_name", "model", "model_id"):
        value = getattr(model, attribute, None)
        if isinstance(value, str) and value:
            return value
    return None


class _ToolGate:
    """The ``wrap_tool_call`` / ``awrap_tool_call`` pair over one `Gatekeeper`."""

    def __init__(self, gate: Gatekeeper, on_refusal: OnRefusal) -> None:
        self.gate = gate
        self.on_refusal = on_refusal

    def _refused(self, refused: Refused, request: ToolCallRequest) -> ToolMessage:
        if self.on_refusal == "raise":
            raise refused
        call = request.tool_call
        return ToolMessage(
            content=refusal_text(refused),
            name=call["name"],
            tool_call_id=call["id"] or "",
            status="error",
        )

    @staticmethod
    def _pause(held: Held, request: ToolCallRequest) -> None:
        call = request.tool_call
        interrupt({**approval_request(held, call["args"]), "tool_call_id": call["id"]})

    def wrap(
        self, request: ToolCallRequest, execute: Callable[[ToolCallRequest], ToolResult]
    ) -> ToolResult:
        call = request.tool_call

        def run() -> ToolResult:
            return _checked(execute(request))

        while True:
            try:
                return self.gate.call(call["name"], call["args"], run)
            except Held as held:
                self._pause(held, request)  # resumed: decide again (interrupts if still held)
            except Refused as refused:
                return self._refused(refused, request)
            except _ToolErrored as errored:
                return errored.message

    async def awrap(
        self,
        request: ToolCallRequest,
        execute: Callable[[ToolCallRequest], Awaitable[ToolResult]],
    ) -> ToolResult:
        call = request.tool_call

        async def run() -> ToolResult:
            return _checked(await execute(request))

        while True:
            try:
                return await self.gate.acall(call["name"], call["args"], run)
            except Held as held:
                self._pause(held, request)
            except Refused as refused:
                return self._refused(refused, request)
            except _ToolErrored as errored:
                return errored.message


def tool_call_wrappers(
    governor: Governor,
    tools: Iterable[BaseTool | Callable[..., Any] | str],
    *,
    on_refusal: OnRefusal = "message",
) -> tuple[
    Callable[[ToolCallRequest, Callable[[ToolCallRequest], ToolResult]], ToolResult],
    Callable[
        [ToolCallRequest, Callable[[ToolCallRequest], Awaitable[ToolResult]]],
        Awaitable[ToolResult],
    ],
]:
    """``(wrap_tool_call, awrap_tool_call)`` for a `ToolNode`: every call of ``tools``
    (their names) governed by ``governor``; a tool not among them is refused."""
    gate = _ToolGate(Gatekeeper(governor, tools=_tool_names(tools), source=_SOURCE), on_refusal)
    return gate.wrap, gate.awrap


class GovernedToolNode(ToolNode):
    """LangGraph's `ToolNode` with every tool call governed by ``governor`` (one Charter
    run). ``on_refusal``: ``"message"`` (the model reads the refusal) or ``"raise"``.
    Other keyword arguments go to `ToolNode`."""

    def __init__(
        self,
        tools: Sequence[BaseTool | Callable[..., Any]],
        *,
        governor: Governor,
        on_refusal: OnRefusal = "message",
        **kwargs: Any,
    ) -> None:
        wrap, awrap = tool_call_wrappers(governor, tools, on_refusal=on_refusal)
        super().__init__(tools, wrap_tool_call=wrap, awrap_tool_call=awrap, **kwargs)
        self.governor = governor


def _model_request_key(request: ModelRequest[Any]) -> Any:
    """What identifies a model call (for an approval of it): the messages' types and
    contents."""
    return {
        "messages": [
            {"type": message.type, "content": message.content} for message in request.messages
        ]
    }


class CharterMiddleware(AgentMiddleware[Any, Any, Any]):
    """Agent middleware for `langchain.agents.create_agent`: every call of ``tools`` (the
    agent's tools, or their names) governed by ``governor``; with ``models`` (the model
    names the agent may call — a policy allowlist decides which of them may run), every
    model call too, its ``usage_metadata`` settled against the run's budgets. A model call
    is named by the chat model's ``model_name`` / ``model``, or ``model`` when given."""

    def __init__(
        self,
        governor: Governor,
        *,
        tools: Iterable[BaseTool | Callable[..., Any] | str],
        models: Iterable[str] = (),
        model: str | None = None,
        on_refusal: OnRefusal = "message",
    ) -> None:
        super().__init__()
        names = list(models)
        if model is not None and model not in names:
            names.append(model)
        gate = Gatekeeper(
            governor,
            tools=_tool_names(tools),
            models=names,
            source=_SOURCE,
            model_usage=response_usage,
        )
        self.governor = governor
        self._tools = _ToolGate(gate, on_refusal)
        self._gate = gate
        self._models = bool(names)
        self._model = model
        self._on_refusal = on_refusal

    def wrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], ToolResult],
    ) -> ToolResult:
        return self._tools.wrap(request, handler)

    async def awrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], Awaitable[ToolResult]],
    ) -> ToolResult:
        return await self._tools.awrap(request, handler)

    def _name(self, request: ModelRequest[Any]) -> str:
        return self._model or model_name(request.model) or "unnamed"

    def _model_refused(self, refused: Refused) -> AIMessage:
        if self._on_refusal == "raise":
            raise refused
        return AIMessage(content=refusal_text(refused))

    def wrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], ModelResponse[Any]],
    ) -> ModelResponse[Any] | AIMessage:
        if not self._models:
            return handler(request)
        key = _model_request_key(request)
        while True:
            try:
                return self._gate.call_model(self._name(request), key, lambda: handler(request))
            except Held as held:
                interrupt(approval_request(held))
            except Refused as refused:
                return self._model_refused(refused)

    async def awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> ModelResponse[Any] | AIMessage:
        if not self._models:
            return await handler(request)
        key = _model_request_key(request)

        async def run() -> ModelResponse[Any]:
            return await handler(request)

        while True:
            try:
                return await self._gate.acall_model(self._name(request), key, run)
            except Held as held:
                interrupt(approval_request(held))
            except Refused as refused:
                return self._model_refused(refused)
