"""MCP, offline: `charter mcp-gateway` proxies a tiny MCP server (this file, run with `serve`);
a real client sees a refusal as a tool error, and the allowed call goes through."""

import os
import sys
import tempfile
from pathlib import Path

import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.server.mcpserver import MCPServer

if sys.argv[1:] == ["serve"]:  # the upstream server the gateway starts
    upstream = MCPServer("tiny")
    upstream.tool(name="echo")(lambda text: text)
    upstream.tool(name="db.drop_table")(lambda table: f"dropped {table}")
    upstream.run()
    sys.exit()

folder = Path(tempfile.mkdtemp())
(folder / "policy.yaml").write_text('blocked_tools: ["db.drop_*"]\n')
gateway = ["-m", "charter", "mcp-gateway", "--db", str(folder / "charter.db"), "--run-id", "mcp"]
gateway += ["--policy", str(folder / "policy.yaml"), "--", sys.executable, __file__, "serve"]


async def main() -> None:
    params = StdioServerParameters(command=sys.executable, args=gateway, env=dict(os.environ))
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        print([tool.name for tool in (await session.list_tools()).tools])
        refused = await session.call_tool("db.drop_table", {"table": "users"})
        print(refused.is_error, refused.content[0].text)  # names the rule; nothing dropped
        print((await session.call_tool("echo", {"text": "hello"})).content[0].text)


anyio.run(main)
# Then: charter audit replay mcp --db <folder>/charter.db — every decision recomputes.
