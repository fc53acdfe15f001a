"""A scripted `Model` for the OpenAI Agents SDK (no network): turn N (the number of tool
calls already in the conversation) answers with ``turns[N]`` — a tool call or a text."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from agents import Model, ModelResponse, Usage, set_tracing_disabled
from agents.items import TResponseStreamEvent
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)

__all__ = ["ScriptedModel", "call", "say"]

set_tracing_disabled(True)  # offline: no trace export

Turn = tuple[Any, int, int]  # (output item, input tokens, output tokens)


def call(name: str, arguments: dict[str, Any], call_id: str, tokens: int = 0) -> Turn:
    item = ResponseFunctionToolCall(
        arguments=json.dumps(arguments),
        call_id=call_id,
        name=name,
        type="function_call",
        id=f"fc-{call_id}",
        status="completed",
    )
    return item, tokens, 0


def say(text: str, tokens: int = 0) -> Turn:
    item = ResponseOutputMessage(
        id="msg-1",
        content=[ResponseOutputText(text=text, type="output_text", annotations=[])],
        role="assistant",
        status="completed",
        type="message",
    )
    return item, tokens, 0


class ScriptedModel(Model):
    def __init__(self, *turns: Turn) -> None:
        self.turns = list(turns)

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        items = kwargs.get("input", args[1] if len(args) > 1 else "")
        made = 0
        if isinstance(items, list):
            made = sum(
                1
                for item in items
                if isinstance(item, dict) and item.get("type") == "function_call"
            )
        item, input_tokens, output_tokens = self.turns[min(made, len(self.turns) - 1)]
        usage = Usage(
            requests=1,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            total_tokens=input_tokens + output_tokens,
        )
        return ModelResponse(output=[item], usage=usage, response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[TResponseStreamEvent]:
        raise NotImplementedError("scripted: use Runner.run")
