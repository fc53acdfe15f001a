"""`charter.integrations.langgraph` against the real LangGraph and LangChain (a fake chat
model, no network): refusals become error tool messages, holds become interrupts answered
by `charter approve` (signed too) and run once on resume — in this process and in another
one — budgets and model allowlists gate model calls, and every run replays clean."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import StructuredTool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import tools_condition
from langgraph.types import Command

from charter.cli import EXIT_OK, EXIT_USAGE
from charter.core.budget import BudgetLimits
from charter.integrations.govern import Governor, Refused
from charter.integrations.langgraph import CharterMiddleware, GovernedToolNode
from tests.integrations.framework_helpers import (
    ScriptedChat,
    answer,
    audited,
    keyed_tenant,
    tenant,
    tool_call,
)

ROOT = Path(__file__).resolve().parents[2]
CONFIG: Any = {"configurable": {"thread_id": "thread-1"}}


def _tools(calls: list[str]) -> list[StructuredTool]:
    def refund(order: str, amount: int) -> str:
        """Refund an order."""
        calls.append(f"refund {order} {amount}")
        return f"refunded {amount}"

    def drop(table: str) -> str:
        """Drop a table."""
        calls.append(f"drop {table}")
        return "dropped"

    def search(query: str) -> str:
        """Search."""
        calls.append(f"search {query}")
        return f"found {query}"

    return [
        StructuredTool.from_function(refund, name="payments.refund"),
        StructuredTool.from_function(drop, name="db.drop_table"),
        StructuredTool.from_function(search, name="search"),
    ]


def _graph(model: ScriptedChat, node: GovernedToolNode) -> Any:
    def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_node("tools", node)
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition, {"tools": "tools", END: END})
    builder.add_edge("tools", "agent")
    return builder.compile(checkpointer=InMemorySaver())


def _model(*turns: AIMessage) -> ScriptedChat:
    return ScriptedChat(responses=[*turns, AIMessage(content="done")])


def test_a_blocked_tool_becomes_an_error_message_and_never_runs(tmp_path: Path) -> None:
    db = tmp_path / "charter.db"
    tenant(db, "acme", {"blocked_tools": ["db.drop_*"]})
    calls: list[str] = []
    governor = Governor(store=str(db), tenant="acme", run_id="lg-1")
    graph = _graph(
        _model(tool_call("db.drop_table", {"table": "users"}, "c1")),
        GovernedToolNode(_tools(calls), governor=governor),
    )
    result = graph.invoke({"messages": [HumanMessage("drop users")]}, CONFIG)
    refusal = next(m for m in result["messages"] if isinstance(m, ToolMessage))
    assert refusal.status == "error"
    assert "tenant blocked_tools 'db.drop_*'" in str(refusal.content)
    assert "the tool was not run" in str(refusal.content)
    assert result["messages"][-1].content == "done"
    assert calls == []
    governor.close()
    assert audited(db, "lg-1") == 1


def test_on_refusal_raise_raises_refused(tmp_path: Path) -> None:
    db = tmp_path / "charter.db"
    calls: list[str] = []
    governor = Governor(store=str(db), run_id="lg-2", policy={"blocked_tools": ["search"]})
    graph = _graph(
        _model(tool_call("search", {"query": "x"}, "c1")),
        GovernedToolNode(_tools(calls), governor=governor, on_refusal="raise"),
    )
    with pytest.raises(Refused) as refused:
        graph.invoke({"messages": [HumanMessage("search")]}, CONFIG)
    assert (refused.value.rule, refused.value.scope) == ("blocked_tools", "workflow")
    assert calls == []
    governor.close()
    audited(db, "lg-2")


def test_a_hold_interrupts_and_the_approved_call_runs_once_on_resume(tmp_path: Path) -> None:
    db = tmp_path / "charter.db"
    calls: list[str] = []
    governor = Governor(
        store=str(db),
        run_id="lg-3",
        policy={"require_approval_for": ["payments.*"], "approver": "finance-lead"},
    )
    graph = _graph(
        _model(tool_call("payments.refund", {"order": "A-17", "amount": 40}, "c1")),
        GovernedToolNode(_tools(calls), governor=governor),
    )
    paused = graph.invoke({"messages": [HumanMessage("refund")]}, CONFIG)
    request = paused["__interrupt__"][0].value
    assert request["charter"] == "approval_required"
    assert (request["run_id"], request["node_id"], request["approver"]) == (
        "lg-3",
        "payments.refund",
        "finance-lead",
    )
    assert request["arguments"] == {"order": "A-17", "amount": 40}
    assert request["command"].startswith("charter approve lg-3 payments.refund --user finance-lead")
    assert calls == []

    # Resumed without an answer: Charter still holds, so the graph interrupts again.
    again = graph.invoke(Command(resume="go"), CONFIG)
    assert again["__interrupt__"][0].value["node_id"] == "payments.refund"
    assert calls == []

    assert answer(db, "lg-3", "payments.refund", "finance-lead") == EXIT_OK
    done = graph.invoke(Command(resume="approved"), CONFIG)
    assert "__interrupt__" not in done
    assert calls == ["refund A-17 40"]
    result = next(m for m in done["messages"] if isinstance(m, ToolMessage))
    assert result.content == "refunded 40"
    assert done["messages"][-1].content == "done"
    governor.close()
    audited(db, "lg-3")


def test_a_signed_approval_survives_a_process_restart(tmp_path: Path) -> None:
    """Started in one process, approved with a signed `charter approve --key`, resumed
    in another process from the SQLite checkpointer: the refund runs once."""
    db = tmp_path / "charter.db"
    key = keyed_tenant(
        db,
        tmp_path,
        "acme",
        {"require_approval_for": ["payments.*"], "approver": "finance-lead"},
    )

    def app(mode: str) -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, "-m", "tests.integrations.langgraph_app", mode, str(tmp_path)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result

    request = app("start")["interrupt"]
    assert "--key FILE" in request["command"]
    assert not (tmp_path / "effects.txt").exists()
    assert answer(db, request["run_id"], request["node_id"], "finance-lead") == EXIT_USAGE
    assert (
        answer(db, request["run_id"], request["node_id"], "finance-lead", "--key", str(key))
        == EXIT_OK
    )
    assert app("resume") == {"last": "done", "count": 4}
    assert (tmp_path / "effects.txt").read_text() == "A-17:40\n"
    audited(db, request["run_id"])


def test_create_agent_middleware_gates_tools_and_model_budgets(tmp_path: Path) -> None:
    """Through `create_agent`'s middleware: the model's usage_metadata feeds the token
    budget; the call that trips it is withheld and ends the agent."""
    db = tmp_path / "charter.db"
    calls: list[str] = []
    tools = _tools(calls)
    governor = Governor(store=str(db), run_id="lg-5", limits=BudgetLimits(total_tokens=80))
    model = ScriptedChat(
        responses=[
            tool_call("search", {"query": "a"}, "c1", input_tokens=30, output_tokens=10),
            tool_call("search", {"query": "b"}, "c2", input_tokens=40, output_tokens=10),
            AIMessage(content="never shown"),
        ]
    )
    agent = create_agent(
        model,
        tools,
        middleware=[CharterMiddleware(governor, tools=tools, models=["scripted-1"])],
        checkpointer=InMemorySaver(),
    )
    result = agent.invoke({"messages": [HumanMessage("search twice")]}, CONFIG)
    last = result["messages"][-1]
    assert isinstance(last, AIMessage)
    assert "budget:total_tokens" in str(last.content)
    assert "output is withheld" in str(last.content)
    assert calls == ["search a"]
    governor.close()
    audited(db, "lg-5")


def test_a_model_outside_the_allowlist_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "charter.db"
    tenant(db, "acme", {"model_allowlist": ["gpt-*"]})
    calls: list[str] = []
    tools = _tools(calls)
    governor = Governor(store=str(db), tenant="acme", run_id="lg-6")
    agent = create_agent(
        _model(tool_call("search", {"query": "a"}, "c1")),
        tools,
        middleware=[CharterMiddleware(governor, tools=tools, models=["scripted-1"])],
    )
    result = agent.invoke({"messages": [HumanMessage("hi")]})
    assert "model_allowlist" in str(result["messages"][-1].content)
    assert calls == []
    governor.close()
    audited(db, "lg-6")


def test_middleware_holds_a_tool_and_async_resume_runs_it_once(tmp_path: Path) -> None:
    import asyncio

    db = tmp_path / "charter.db"
    calls: list[str] = []
    tools = _tools(calls)
    governor = Governor(store=str(db), run_id="lg-7", policy={"require_approval_for": ["search"]})
    agent = create_agent(
        _model(tool_call("search", {"query": "q"}, "c1")),
        tools,
        middleware=[CharterMiddleware(governor, tools=tools)],
        checkpointer=InMemorySaver(),
    )

    async def go() -> tuple[Any, Any]:
        paused = await agent.ainvoke({"messages": [HumanMessage("search")]}, CONFIG)
        assert answer(db, "lg-7", "search", "alice") == EXIT_OK
        return paused, await agent.ainvoke(Command(resume=True), CONFIG)

    paused, done = asyncio.run(go())
    assert paused["__interrupt__"][0].value["tool_name"] == "search"
    assert done["messages"][-1].content == "done"
    assert calls == ["search q"]
    governor.close()
    audited(db, "lg-7")
