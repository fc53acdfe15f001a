"""The ``charter`` command line.

Exit codes (documented in docs/cli.md):

====  =====================================================
0     allowed / success
1     internal error (a bug: please report it)
2     bad input or usage (file, field, argument)
3     ``check``: approval required
4     ``check``: blocked
====  =====================================================

Bad input is reported as one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import NoReturn

from charter.adapters.codec import dump
from charter.adapters.files import PolicyFile, load_policy_file
from charter.core.errors import CharterError, describe
from charter.core.policy import (
    Allow,
    Block,
    EvaluationContext,
    PolicyEvaluator,
    PolicyScope,
    PolicyVerdict,
    RequireApproval,
)

__all__ = ["EXIT_APPROVAL", "EXIT_BLOCKED", "EXIT_INTERNAL", "EXIT_OK", "EXIT_USAGE", "main"]

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_APPROVAL = 3
EXIT_BLOCKED = 4


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="charter",
        description="Charter: run, hold for approval, or refuse each node of an agent workflow.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    check = commands.add_parser(
        "check",
        help="evaluate a policy file for a tool and/or a model",
        description=(
            "Evaluate POLICY for a tool call and/or a model call and print the decision, the "
            "deciding rule and its scope. Exit 0 if allowed, 3 if approval is required, 4 if "
            "blocked (the most severe when both --tool and --model are given)."
        ),
    )
    check.add_argument("policy", metavar="POLICY", help="policy file (YAML or JSON)")
    check.add_argument("--tool", metavar="T", help="tool name to check")
    check.add_argument("--model", metavar="M", help="model reference to check")
    check.add_argument(
        "--resolved-model",
        metavar="R",
        help="the concrete model M stands for (allowlists then match R, not the alias)",
    )
    check.add_argument(
        "--scope",
        choices=[scope.value for scope in PolicyScope],
        default=PolicyScope.WORKFLOW.value,
        help="scope of a bare (unlayered) policy set (default: workflow)",
    )
    check.add_argument("--node", metavar="ID", default="check", help="node id to report")
    check.add_argument("--json", action="store_true", help="print JSON instead of text")
    check.set_defaults(handler=_check)
    return parser


def _severity(verdict: PolicyVerdict) -> int:
    match verdict.decision:
        case Block():
            return EXIT_BLOCKED
        case RequireApproval():
            return EXIT_APPROVAL
        case Allow():
            return EXIT_OK


def _verdict_lines(subject: str, verdict: PolicyVerdict) -> list[str]:
    decision = verdict.decision
    lines = []
    match decision:
        case Allow():
            lines.append(f"{subject}: ALLOW")
        case Block(reason=reason):
            lines.append(f"{subject}: BLOCK")
            lines.append(f"  reason: {reason}")
        case RequireApproval(approver=approver):
            lines.append(f"{subject}: REQUIRE APPROVAL (approver: {approver})")
    if verdict.rule is not None:
        scope = verdict.scope.value if verdict.scope is not None else "unknown"
        pattern = f" '{verdict.pattern}'" if verdict.pattern is not None else ""
        lines.append(f"  rule:   {verdict.rule.value}{pattern}")
        lines.append(f"  scope:  {scope}")
    else:
        lines.append("  rule:   none matched (default allow)")
    return lines


def _check(args: argparse.Namespace) -> int:
    if args.tool is None and args.model is None:
        raise CharterError("check: give --tool T and/or --model M")
    if args.resolved_model is not None and args.model is None:
        raise CharterError("check: --resolved-model needs --model")
    policy: PolicyFile = load_policy_file(args.policy, PolicyScope(args.scope))
    evaluator = PolicyEvaluator(policy.combining)
    results: list[tuple[str, EvaluationContext, PolicyVerdict]] = []
    if args.tool is not None:
        ctx = EvaluationContext(args.node, "tool", tool_name=args.tool)
        results.append((f"tool '{args.tool}'", ctx, evaluator.explain(ctx, policy.layers)))
    if args.model is not None:
        ctx = EvaluationContext(
            args.node, "model", model_ref=args.model, resolved_model=args.resolved_model
        )
        results.append((f"model '{args.model}'", ctx, evaluator.explain(ctx, policy.layers)))
    if args.json:
        payload = {
            "combining": policy.combining.value,
            "results": [{"context": dump(ctx), "verdict": dump(v)} for _, ctx, v in results],
        }
        print(json.dumps(payload, indent=2, ensure_ascii=False))
    else:
        for subject, _, verdict in results:
            print("\n".join(_verdict_lines(subject, verdict)))
    return max(_severity(verdict) for _, _, verdict in results)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (see the module doc)."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except CharterError as error:
        print(f"charter: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as error:  # noqa: BLE001 - last resort: one line, never a traceback
        print(
            f"charter: internal error: {type(error).__name__}: {describe(error)} "
            "(this is a bug in Charter; please report it with the command line)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
