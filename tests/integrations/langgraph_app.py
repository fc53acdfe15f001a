"""A LangGraph agent whose tool calls Charter governs, with a file-backed checkpointer: the
restart test starts it in one process and resumes it in another.

    python -m tests.integrations.langgraph_app start|resume DIR

prints one JSON line: the interrupt's value, or the last message.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import StructuredTool
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import tools_condition
from langgraph.types import Command

from charter.integrations.govern import Governor
from charter.integrations.langgraph import GovernedToolNode
from tests.integrations.framework_helpers import ScriptedChat, tool_call

RUN = "lg-restart"
CONFIG: Any = {"configurable": {"thread_id": "t-1"}}


def build(folder: Path, governor: Governor, saver: SqliteSaver) -> Any:
    effects = folder / "effects.txt"

    def refund(order: str, amount: int) -> str:
        """Refund an order."""
        with effects.open("a") as out:
            out.write(f"{order}:{amount}\n")
        return f"refunded {amount} on {order}"

    model = ScriptedChat(
        responses=[
            tool_call("payments.refund", {"order": "A-17", "amount": 40}, "c1"),
            AIMessage(content="done"),
        ]
    )

    def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    tool = StructuredTool.from_function(refund, name="payments.refund")
    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_node("tools", GovernedToolNode([tool], governor=governor))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition, {"tools": "tools", END: END})
    builder.add_edge("tools", "agent")
    return builder.compile(checkpointer=saver)


def main(mode: str, folder: Path) -> dict[str, Any]:
    governor = Governor(
        store=str(folder / "charter.db"),
        tenant="acme",
        run_id=RUN,
        policy={"require_approval_for": ["payments.*"]},
    )
    connection = sqlite3.connect(folder / "checkpoints.db", check_same_thread=False)
    try:
        graph = build(folder, governor, SqliteSaver(connection))
        if mode == "start":
            result = graph.invoke({"messages": [HumanMessage("refund A-17")]}, CONFIG)
        else:
            result = graph.invoke(Command(resume="approved"), CONFIG)
        if "__interrupt__" in result:
            return {"interrupt": result["__interrupt__"][0].value}
        return {"last": str(result["messages"][-1].content), "count": len(result["messages"])}
    finally:
        connection.close()
        governor.close()


if __name__ == "__main__":
    sys.stdout.write(json.dumps(main(sys.argv[1], Path(sys.argv[2]))) + "\n")
