"""LangGraph, offline: a governed ToolNode holds a refund; approved, the resume runs it once."""

from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import tools_condition
from langgraph.types import Command

from charter import ApprovalDecision
from charter.audit import replay_run
from charter.integrations.govern import Governor
from charter.integrations.langgraph import GovernedToolNode

gov = Governor(store="memory:", run_id="lg", policy={"require_approval_for": ["refund"]})
ask = AIMessage("", tool_calls=[{"name": "refund", "args": {"order": "A-17"}, "id": "c1"}])
model = FakeMessagesListChatModel(responses=[ask, AIMessage("done")])


def refund(order: str) -> str:
    """Refund an order."""
    return f"refunded {order}"


graph = StateGraph(MessagesState)
graph.add_node("agent", lambda state: {"messages": [model.invoke(state["messages"])]})
graph.add_node("tools", GovernedToolNode([refund], governor=gov))
graph.add_edge(START, "agent")
graph.add_conditional_edges("agent", tools_condition)
graph.add_edge("tools", "agent")
app, config = graph.compile(checkpointer=InMemorySaver()), {"configurable": {"thread_id": "1"}}

held = app.invoke({"messages": [HumanMessage("refund A-17")]}, config)["__interrupt__"][0].value
print("held:", held["command"])  # a person runs it; here, the same through the store:
gov.store.decide_approval("lg", "refund", user_id="al", decision=ApprovalDecision.APPROVED)
print(app.invoke(Command(resume=True), config)["messages"][-2].content)  # refunded A-17, once
print(replay_run(gov.store, "lg").ok)
