"""A tiny real MCP server (the SDK's MCPServer, stdio) for the gateway tests: every call
it serves is appended to the file named by ``ECHO_LOG``, so a test can count them."""

from __future__ import annotations

import os
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from mcp.types import CallToolResult, TextContent

server = MCPServer("echo")


def _log(line: str) -> None:
    with Path(os.environ["ECHO_LOG"]).open("a") as out:
        out.write(line + "\n")


@server.tool(name="echo")
def echo(text: str) -> str:
    """Say it back."""
    _log(f"echo {text}")
    return text


@server.tool(name="payments.refund")
def refund(order: str, amount: int) -> str:
    """Refund an order."""
    _log(f"refund {order} {amount}")
    return f"refunded {amount} on {order}"


@server.tool(name="db.drop_table")
def drop(table: str) -> str:
    """Drop a table."""
    _log(f"drop {table}")
    return f"dropped {table}"


@server.tool(name="llm")
def llm(prompt: str) -> CallToolResult:
    """A model behind a tool: reports its usage in _meta."""
    _log(f"llm {prompt}")
    return CallToolResult(
        content=[TextContent(type="text", text=f"answer to {prompt}")],
        _meta={"usage": {"input_tokens": 30, "output_tokens": 10}},
    )


@server.tool(name="fail")
def fail() -> str:
    """Always fails."""
    _log("fail")
    raise ValueError("it failed")


if __name__ == "__main__":
    server.run()
