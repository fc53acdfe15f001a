"""``charter mcp-gateway``: an MCP server over stdio that proxies another one (started as a
subprocess) with every tool call gated and recorded by Charter
(`charter.integrations.mcp_gateway`; needs ``pip install 'charter[mcp]'``)."""

from __future__ import annotations

import argparse
from typing import Any

from charter.cli.common import EXIT_OK, db_option
from charter.core.errors import InvalidInput

__all__ = ["add_mcp_gateway"]


def add_mcp_gateway(commands: Any) -> None:
    gateway = commands.add_parser(
        "mcp-gateway",
        help="serve MCP on stdio, proxying another MCP server with every tool call governed",
        description=(
            "Start COMMAND ARGS… (an MCP server on stdio), list its tools as this server's, "
            "and decide every tools/call with Charter: refused calls and held calls answer "
            "with a tool error (isError) naming the rule or the `charter approve` command; "
            "an approved call goes through once. Every decision is recorded in RUN."
        ),
    )
    gateway.add_argument("--tenant", default="default", help="the tenant (default: default)")
    gateway.add_argument("--policy", metavar="FILE", help="the session's policy file")
    gateway.add_argument(
        "--run-id", metavar="RUN", help="the Charter run to record into (default: a new one)"
    )
    gateway.add_argument(
        "--token-budget", type=int, metavar="N", help="the run's total-token budget"
    )
    gateway.add_argument(
        "--cost-budget-usd", type=float, metavar="USD", help="the run's cost budget"
    )
    db_option(gateway)
    gateway.add_argument("upstream", nargs=argparse.REMAINDER, metavar="-- COMMAND ARGS")
    gateway.set_defaults(handler=_gateway)


def _gateway(args: argparse.Namespace) -> int:
    upstream = list(args.upstream)
    if upstream and upstream[0] == "--":
        upstream = upstream[1:]
    if not upstream:
        raise InvalidInput("COMMAND", "name the MCP server to proxy after --")
    try:
        import os

        import anyio

        from charter.core.budget import BudgetLimits
        from charter.integrations.govern import Governor
        from charter.integrations.mcp_gateway import serve_gateway
    except ModuleNotFoundError as missing:
        raise InvalidInput(
            "mcp-gateway", f"{missing.name} is not installed: pip install 'charter[mcp]'"
        ) from None
    governor = Governor(
        policy=args.policy,
        tenant=args.tenant,
        store=args.db,
        run_id=args.run_id,
        limits=BudgetLimits(total_tokens=args.token_budget, cost_usd=args.cost_budget_usd),
        name="mcp-gateway",
    )

    async def serve() -> None:
        # The upstream server gets this process's environment (the SDK's default is a few
        # variables only).
        await serve_gateway(upstream[0], upstream[1:], governor, env=dict(os.environ))

    try:
        anyio.run(serve)
    finally:
        governor.close()
    return EXIT_OK
