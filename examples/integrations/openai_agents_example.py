"""OpenAI Agents SDK, offline: Charter holds a refund, its approval answers the interruption."""

import asyncio

from agents import Agent, Model, ModelResponse, Runner, Usage, function_tool, set_tracing_disabled
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage
from openai.types.responses import ResponseOutputText as Text

from charter import ApprovalDecision
from charter.integrations.govern import Governor
from charter.integrations.openai_agents import CharterTools

set_tracing_disabled(True)
ask = ResponseFunctionToolCall(arguments='{"order": "A-17"}', call_id="c1", name="refund", type="function_call")  # noqa: E501  # fmt: skip
text = [Text(text="done", type="output_text", annotations=[])]
done = ResponseOutputMessage(id="m", content=text, role="assistant", status="completed", type="message")  # noqa: E501  # fmt: skip


class Scripted(Model):  # a stand-in for a real model: asks for the refund, then says done
    async def get_response(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        turn = ask if isinstance(kwargs["input"], str) or len(kwargs["input"]) < 2 else done
        return ModelResponse(output=[turn], usage=Usage(requests=1), response_id=None)

    stream_response = None  # type: ignore[assignment]


@function_tool
def refund(order: str) -> str:
    """Refund an order."""
    return f"refunded {order}"


gov = Governor(store="memory:", run_id="oa", policy={"require_approval_for": ["refund"]})
charter = CharterTools(gov, [refund])
agent = Agent(name="support", model=Scripted(), tools=charter.tools)
first = asyncio.run(Runner.run(agent, "refund A-17"))
print("held:", charter.held("c1"))  # {'command': 'charter approve oa refund --user USER …', …}
gov.store.decide_approval("oa", "refund", user_id="alice", decision=ApprovalDecision.APPROVED)
charter.answer(state := first.to_state())  # approves in the RunState what Charter approved
print(asyncio.run(Runner.run(agent, state)).final_output)  # the refund ran once: done
