"""An MCP gateway governed by Charter (``pip install 'charter[mcp]'``; docs/integrations.md
§5; ``charter mcp-gateway``).

`serve_gateway` is an MCP server over stdio that starts another MCP server (a subprocess,
through the official SDK's stdio client), lists its tools as its own, and gates every
``tools/call``: the tool's name is what policy globs match, its arguments identify the call
(an approval covers the same arguments once), and every decision is recorded in one
Charter run (the governor's). What the client gets:

* **run** — the upstream server's result, as it is (an upstream ``isError`` result is
  recorded as a failed call; usage it reports in ``_meta["usage"]`` feeds the budgets, and
  a result whose usage trips a budget is withheld: a tool error instead);
* **fail** — a tool error (``isError``) naming the rule; the upstream tool is not called;
* **hold** — a tool error saying who answers and the ``charter approve …`` command, with
  the approval request in ``_meta["charter"]``; once approved, the same call (same
  arguments) goes through, once.

Tools, prompts and resources other than tools are not proxied.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import mcp.types as types
from mcp import ClientSession, StdioServerParameters, stdio_client, stdio_server
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server

from charter.core.budget import Usage
from charter.integrations._calls import Gatekeeper, approval_request, held_text, refusal_text
from charter.integrations.govern import Governor, Held, Refused, usage_of

__all__ = ["GATEWAY_NAME", "gated_call", "list_upstream_tools", "result_usage", "serve_gateway"]

GATEWAY_NAME: Final = "charter-mcp-gateway"
_SOURCE: Final = "charter.integrations.mcp_gateway"


class _UpstreamError(Exception):
    """The upstream tool answered with ``isError``: recorded as a failed call."""

    def __init__(self, result: types.CallToolResult) -> None:
        super().__init__("the upstream tool reported an error")
        self.result = result


def _error(text: str, meta: dict[str, Any]) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        is_error=True,
        _meta={"charter": meta},
    )


def result_usage(result: Any) -> Usage | None:
    """The usage an upstream result reports in ``_meta["usage"]`` (``input_tokens``,
    ``output_tokens``, ``cost_usd``), if any: it feeds the run's budgets."""
    meta = getattr(result, "meta", None)
    return usage_of(meta) if isinstance(meta, dict) else None


async def list_upstream_tools(session: ClientSession) -> list[types.Tool]:
    """Every tool the upstream server lists (all pages)."""
    tools: list[types.Tool] = []
    cursor: str | None = None
    while True:
        params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await session.list_tools(params=params)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            return tools


async def gated_call(
    gate: Gatekeeper, session: ClientSession, name: str, arguments: dict[str, Any]
) -> types.CallToolResult:
    """One ``tools/call`` through Charter: decided, recorded, forwarded if it may run."""

    async def forward() -> types.CallToolResult:
        result = await session.call_tool(name, arguments)
        if result.is_error:
            raise _UpstreamError(result)
        return result

    try:
        return await gate.acall(name, arguments, forward)
    except Held as held:
        return _error(held_text(held), approval_request(held))
    except Refused as refused:
        return _error(
            refusal_text(refused),
            {
                "charter": "refused",
                "run_id": refused.run_id,
                "node_id": refused.node_id,
                "rule": refused.rule,
                "scope": refused.scope,
                "pattern": refused.pattern,
                "reason": refused.reason,
            },
        )
    except _UpstreamError as failed:
        return failed.result


async def serve_gateway(
    command: str,
    args: Sequence[str],
    governor: Governor,
    *,
    env: dict[str, str] | None = None,
) -> None:
    """Serve MCP on this process's stdin/stdout until the client goes away, proxying the
    upstream server ``command args`` with every tool call governed by ``governor``."""
    upstream = StdioServerParameters(command=command, args=list(args), env=env)
    async with stdio_client(upstream) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        tools = await list_upstream_tools(session)
        gate = Gatekeeper(
            governor,
            tools=[tool.name for tool in tools],
            source=_SOURCE,
            tool_usage=result_usage,
        )

        async def on_list_tools(
            context: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
        ) -> types.ListToolsResult:
            return types.ListToolsResult(tools=tools)

        async def on_call_tool(
            context: ServerRequestContext[Any], params: types.CallToolRequestParams
        ) -> types.CallToolResult:
            return await gated_call(gate, session, params.name, dict(params.arguments or {}))

        server: Server[Any] = Server(
            GATEWAY_NAME, on_list_tools=on_list_tools, on_call_tool=on_call_tool
        )
        async with stdio_server() as (server_read, server_write):
            await server.run(server_read, server_write, server.create_initialization_options())
