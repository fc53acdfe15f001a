"""`charter mcp-gateway` as a real process, proxying a real MCP server (echo_server.py),
driven by the official SDK's `ClientSession` over stdio: refused and held calls answer with
tool errors, an approved call (signed too) goes through once, a budget fed by the upstream
usage withholds the call that trips it, and the run replays clean."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.types import CallToolResult, TextContent

from charter.cli import EXIT_OK, EXIT_USAGE
from tests.integrations.framework_helpers import answer, audited, keyed_tenant, tenant

ROOT = Path(__file__).resolve().parents[2]
ECHO = Path(__file__).with_name("echo_server.py")


@asynccontextmanager
async def _gateway(tmp_path: Path, *options: str) -> AsyncIterator[ClientSession]:
    argv = ["-m", "charter", "mcp-gateway", "--db", str(tmp_path / "charter.db"), *options]
    params = StdioServerParameters(
        command=sys.executable,
        args=[*argv, "--", sys.executable, str(ECHO)],
        env={**os.environ, "ECHO_LOG": str(tmp_path / "echo.log")},
        cwd=ROOT,
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


def _text(result: CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, TextContent))


def _served(tmp_path: Path) -> list[str]:
    log = tmp_path / "echo.log"
    return log.read_text().splitlines() if log.exists() else []


def _run(test: Callable[[], Any]) -> None:
    anyio.run(test)


def test_refused_held_and_approved_calls(tmp_path: Path) -> None:
    db = tmp_path / "charter.db"
    tenant(db, "acme", {"blocked_tools": ["db.drop_*"]})
    policy = tmp_path / "policy.yaml"
    policy.write_text('require_approval_for: ["payments.*"]\napprover: finance-lead\n')
    options = ("--tenant", "acme", "--policy", str(policy), "--run-id", "mcp-1")

    async def test() -> None:
        async with _gateway(tmp_path, *options) as session:
            listed = await session.list_tools()
            assert {t.name for t in listed.tools} == {
                "echo", "payments.refund", "db.drop_table", "llm", "fail"
            }  # fmt: skip
            assert _text(await session.call_tool("echo", {"text": "hi"})) == "hi"

            refused = await session.call_tool("db.drop_table", {"table": "users"})
            assert refused.is_error
            assert "tenant blocked_tools 'db.drop_*'" in _text(refused)
            assert refused.meta is not None
            assert refused.meta["charter"]["rule"] == "blocked_tools"

            arguments = {"order": "A-17", "amount": 40}
            held = await session.call_tool("payments.refund", arguments)
            assert held.is_error
            assert held.meta is not None
            request = held.meta["charter"]
            assert request["approver"] == "finance-lead"
            assert request["command"] in _text(held)
            assert request["command"].startswith("charter approve mcp-1 payments.refund")
            assert _served(tmp_path) == ["echo hi"]

            assert answer(db, "mcp-1", "payments.refund", "finance-lead") == EXIT_OK
            done = await session.call_tool("payments.refund", arguments)
            assert not done.is_error
            assert _text(done) == "refunded 40 on A-17"
            again = await session.call_tool("payments.refund", arguments)
            assert again.is_error  # the approval is used up
            failed = await session.call_tool("fail", {})
            assert failed.is_error
            assert "fail" in _text(failed)

    _run(test)
    assert _served(tmp_path) == ["echo hi", "refund A-17 40", "fail"]
    assert audited(db, "mcp-1") == 6


def test_a_signed_approval_lets_the_call_through_once(tmp_path: Path) -> None:
    db = tmp_path / "charter.db"
    policy = {"require_approval_for": ["payments.*"], "approver": "finance-lead"}
    key = keyed_tenant(db, tmp_path, "acme", policy)
    arguments = {"order": "A-17", "amount": 40}

    async def test() -> None:
        async with _gateway(tmp_path, "--tenant", "acme", "--run-id", "mcp-2") as session:
            held = await session.call_tool("payments.refund", arguments)
            assert held.meta is not None
            assert "--key FILE" in held.meta["charter"]["command"]
            node = held.meta["charter"]["node_id"]
            assert answer(db, "mcp-2", node, "finance-lead") == EXIT_USAGE  # unsigned
            assert answer(db, "mcp-2", node, "finance-lead", "--key", str(key)) == EXIT_OK
            done = await session.call_tool("payments.refund", arguments)
            assert not done.is_error

    _run(test)
    assert _served(tmp_path) == ["refund A-17 40"]
    audited(db, "mcp-2")


def test_upstream_usage_feeds_the_budget(tmp_path: Path) -> None:
    db = tmp_path / "charter.db"

    async def test() -> None:
        options = ("--run-id", "mcp-3", "--token-budget", "60")
        async with _gateway(tmp_path, *options) as session:
            assert not (await session.call_tool("llm", {"prompt": "a"})).is_error
            tripped = await session.call_tool("llm", {"prompt": "b"})  # 80 > 60
            assert tripped.is_error
            assert "budget:total_tokens" in _text(tripped)
            assert "output is withheld" in _text(tripped)
            spent = await session.call_tool("llm", {"prompt": "c"})
            assert spent.is_error
            assert "the tool was not run" in _text(spent)

    _run(test)
    assert _served(tmp_path) == ["llm a", "llm b"]
    audited(db, "mcp-3")
