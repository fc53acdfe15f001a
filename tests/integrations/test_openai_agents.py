"""`charter.integrations.openai_agents` against the real OpenAI Agents SDK with a scripted
model (no network): a refusal through the tool input guardrail, a hold through the SDK's
approval interruption answered by `charter approve` (signed too) and run once after
`RunState.approve`, a model budget fed by the response usage, and every run replaying
clean."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from agents import Agent, Runner, function_tool

from charter.cli import EXIT_OK
from charter.core.budget import BudgetLimits
from charter.integrations.govern import Governor, Refused
from charter.integrations.openai_agents import CharterTools, GovernedModel
from tests.integrations.agents_helpers import ScriptedModel, call, say
from tests.integrations.framework_helpers import answer, audited, keyed_tenant, tenant


def _tools(calls: list[str]) -> list[Any]:
    @function_tool(name_override="payments.refund")
    def refund(order: str, amount: int) -> str:
        """Refund an order."""
        calls.append(f"refund {order} {amount}")
        return f"refunded {amount}"

    @function_tool(name_override="db.drop_table")
    def drop(table: str) -> str:
        """Drop a table."""
        calls.append(f"drop {table}")
        return "dropped"

    @function_tool
    def search(query: str) -> str:
        """Search."""
        calls.append(f"search {query}")
        return f"found {query}"

    return [refund, drop, search]


def _outputs(result: Any) -> list[str]:
    return [str(item.output) for item in result.new_items if item.type == "tool_call_output_item"]


def test_a_blocked_tool_is_rejected_by_the_guardrail(tmp_path: Path) -> None:
    db = tmp_path / "charter.db"
    tenant(db, "acme", {"blocked_tools": ["db.drop_*"]})
    calls: list[str] = []
    governor = Governor(store=str(db), tenant="acme", run_id="oa-1")
    charter = CharterTools(governor, _tools(calls))
    model = ScriptedModel(call("db.drop_table", {"table": "users"}, "c1"), say("done"))
    agent = Agent(name="ops", model=model, tools=charter.tools)
    result = asyncio.run(Runner.run(agent, "drop users"))
    assert result.final_output == "done"
    assert calls == []
    (output,) = _outputs(result)
    assert "tenant blocked_tools 'db.drop_*'" in output
    guardrail = result.tool_input_guardrail_results[0]
    assert guardrail.output.behavior["type"] == "reject_content"
    assert guardrail.output.output_info["rule"] == "blocked_tools"
    governor.close()
    assert audited(db, "oa-1") == 1


def _held_then_approved(db: Path, run_id: str, *approve_extra: str) -> None:
    calls: list[str] = []
    governor = Governor(store=str(db), tenant="acme", run_id=run_id)
    charter = CharterTools(governor, _tools(calls))
    model = ScriptedModel(
        call("payments.refund", {"order": "A-17", "amount": 40}, "c1"), say("done")
    )
    agent = Agent(name="support", model=model, tools=charter.tools)
    first = asyncio.run(Runner.run(agent, "refund A-17"))
    (item,) = first.interruptions
    request = charter.held("c1")
    assert request is not None
    assert (request["run_id"], request["node_id"], request["approver"]) == (
        run_id,
        "payments.refund",
        "finance-lead",
    )
    assert calls == []

    state = first.to_state()
    waiting = charter.answer(state)  # nobody answered yet
    assert [w.raw_item.call_id for w in waiting] == [item.raw_item.call_id] == ["c1"]  # type: ignore[union-attr]
    assert answer(db, run_id, "payments.refund", "finance-lead", *approve_extra) == EXIT_OK
    state = first.to_state()
    assert charter.answer(state) == []
    done = asyncio.run(Runner.run(agent, state))
    assert done.final_output == "done"
    assert calls == ["refund A-17 40"]
    assert _outputs(done) == ["refunded 40"]
    governor.close()
    audited(db, run_id)
    return None


def test_a_hold_interrupts_and_runs_once_after_the_charter_approval(tmp_path: Path) -> None:
    db = tmp_path / "charter.db"
    tenant(db, "acme", {"require_approval_for": ["payments.*"], "approver": "finance-lead"})
    _held_then_approved(db, "oa-2")


def test_a_signed_approval_answers_the_interruption(tmp_path: Path) -> None:
    db = tmp_path / "charter.db"
    policy = {"require_approval_for": ["payments.*"], "approver": "finance-lead"}
    key = keyed_tenant(db, tmp_path, "acme", policy)
    _held_then_approved(db, "oa-3", "--key", str(key))


def test_a_rejection_in_charter_rejects_the_call(tmp_path: Path) -> None:
    from charter.cli import main

    db = tmp_path / "charter.db"
    calls: list[str] = []
    governor = Governor(store=str(db), run_id="oa-4", policy={"require_approval_for": ["search"]})
    charter = CharterTools(governor, _tools(calls))
    model = ScriptedModel(call("search", {"query": "q"}, "c1"), say("ok"))
    agent = Agent(name="a", model=model, tools=charter.tools)
    first = asyncio.run(Runner.run(agent, "search"))
    argv = ["reject", "oa-4", "search", "--user", "bob", "--comment", "no", "--db", str(db)]
    assert main([*argv, "--no-continue", "--quiet"]) == EXIT_OK
    state = first.to_state()
    assert charter.answer(state) == []
    done = asyncio.run(Runner.run(agent, state))
    assert calls == []
    assert "rejected in Charter by bob: no" in _outputs(done)[0]
    governor.close()
    audited(db, "oa-4")


def test_model_usage_feeds_the_budget(tmp_path: Path) -> None:
    db = tmp_path / "charter.db"
    calls: list[str] = []
    governor = Governor(store=str(db), run_id="oa-5", limits=BudgetLimits(total_tokens=50))
    charter = CharterTools(governor, _tools(calls))
    scripted = ScriptedModel(
        call("search", {"query": "a"}, "c1", tokens=30),
        call("search", {"query": "b"}, "c2", tokens=30),
        say("never"),
    )
    model = GovernedModel(scripted, governor, name="gpt-test")
    agent = Agent(name="a", model=model, tools=charter.tools)
    with pytest.raises(Refused) as refused:
        asyncio.run(Runner.run(agent, "search twice"))
    assert refused.value.rule == "budget:total_tokens"
    assert refused.value.ran  # the second model call ran; its answer is withheld
    assert calls == ["search a"]
    governor.close()
    audited(db, "oa-5")


def test_a_model_outside_the_allowlist_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "charter.db"
    governor = Governor(store=str(db), run_id="oa-6", policy={"model_allowlist": ["gpt-*"]})
    model = GovernedModel(ScriptedModel(say("hi")), governor, name="other-model")
    with pytest.raises(Refused) as refused:
        asyncio.run(Runner.run(Agent(name="a", model=model), "hi"))
    assert refused.value.rule == "model_allowlist"
    governor.close()
    audited(db, "oa-6")
