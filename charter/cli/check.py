"""``charter check`` and ``charter validate``: a policy file's decision for a tool or a model,
and a workflow file's problems."""

from __future__ import annotations

import argparse
import json
from typing import Any

from charter.adapters.codec import CodecError, dump, parse_json
from charter.adapters.files import PolicyFile, load_policy_file, load_workflow_file
from charter.cli.common import EXIT_APPROVAL, EXIT_BLOCKED, EXIT_OK
from charter.cli.render import duration
from charter.core.errors import CharterError
from charter.core.expiry import approval_validity
from charter.core.limits import RateLimit, matching_limits, window_text
from charter.core.policy import (
    Allow,
    Block,
    EvaluationContext,
    PolicyDecision,
    PolicyEvaluator,
    PolicyScope,
    PolicyVerdict,
    RequireApproval,
)

__all__ = ["add_check", "add_validate"]


def add_validate(commands: Any) -> None:
    validate = commands.add_parser(
        "validate",
        help="check a workflow file and report every problem",
        description="Validate FILE; print every problem with its path, or OK.",
    )
    validate.add_argument("file", metavar="FILE")
    validate.set_defaults(handler=_validate)


def add_check(commands: Any) -> None:
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
    check.add_argument(
        "--call",
        metavar="JSON",
        help=(
            "the call as the gate sees it, a JSON object (a workflow node's is "
            '{"args": {...}, "state_digest": ...}); conditional rules are judged on it '
            "(default: none, so a condition on the call cannot be evaluated and its rule "
            "applies)"
        ),
    )
    check.add_argument("--json", action="store_true", help="print JSON instead of text")
    check.set_defaults(handler=_check)


def _validate(args: argparse.Namespace) -> int:
    workflow, _ = load_workflow_file(args.file)
    print(
        f"{args.file}: OK — {workflow.workflow_id} v{workflow.version}, "
        f"{len(workflow.nodes)} nodes, {len(workflow.edges)} edges"
    )
    return EXIT_OK


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
        if verdict.condition is not None:
            lines.append(f"  when:   {verdict.condition}")
            if verdict.condition_problem is None:
                lines.append("          (holds on the call)")
            else:
                lines.append(
                    f"          (could not be evaluated: {verdict.condition_problem} "
                    "→ treated as matching)"
                )
    else:
        lines.append("  rule:   none matched (default allow)")
    overruled = verdict.overruled
    if overruled is not None:
        scope = overruled.scope.value if overruled.scope is not None else "a lower scope"
        rule = overruled.rule.value if overruled.rule is not None else "rule"
        pattern = f" '{overruled.pattern}'" if overruled.pattern is not None else ""
        lines.append(
            f"  overruled: the {scope} {rule}{pattern} would have made it "
            f"{_decision_text(overruled.decision)}; the final tenant rule holds"
        )
    return lines


def _decision_text(decision: PolicyDecision) -> str:
    match decision:
        case Allow():
            return "ALLOW"
        case Block():
            return "BLOCK"
        case RequireApproval(approver=approver):
            return f"REQUIRE APPROVAL (approver: {approver})"


def _check(args: argparse.Namespace) -> int:
    if args.tool is None and args.model is None:
        raise CharterError("check: give --tool T and/or --model M")
    if args.resolved_model is not None and args.model is None:
        raise CharterError("check: --resolved-model needs --model")
    call = _call(args.call)
    policy: PolicyFile = load_policy_file(args.policy, PolicyScope(args.scope))
    evaluator = PolicyEvaluator(policy.combining)
    results: list[tuple[str, EvaluationContext, PolicyVerdict]] = []
    if args.tool is not None:
        ctx = EvaluationContext(args.node, "tool", tool_name=args.tool)
        verdict = evaluator.explain(ctx, policy.layers, call=call)
        results.append((f"tool '{args.tool}'", ctx, verdict))
    if args.model is not None:
        ctx = EvaluationContext(
            args.node, "model", model_ref=args.model, resolved_model=args.resolved_model
        )
        verdict = evaluator.explain(ctx, policy.layers, call=call)
        results.append((f"model '{args.model}'", ctx, verdict))
    rate_limits = tuple(
        limit
        for layer in policy.layers
        if layer.scope is PolicyScope.TENANT
        for limit in layer.policy.rate_limits or ()
    )
    # How long an approval it asks for stays usable once given (docs/semantics.md §5.2).
    validity = {
        id(verdict): approval_validity(policy.layers, verdict, ctx, call)
        for _, ctx, verdict in results
        if isinstance(verdict.decision, RequireApproval)
    }
    if args.json:
        payload: dict[str, Any] = {
            "combining": policy.combining.value,
            "tenant_combining": policy.tenant_combining,
            "results": [
                {"context": dump(ctx), "verdict": dump(v)}
                | {"rate_limits": [lim.to_json() for lim in matching_limits(rate_limits, ctx)]}
                | ({"expires_after_secs": validity[id(v)]} if validity.get(id(v)) else {})
                for _, ctx, v in results
            ],
        }
        if args.call is not None:
            payload["call"] = call
        print(json.dumps(payload, indent=2, ensure_ascii=False))
    else:
        for subject, ctx, verdict in results:
            lines = _verdict_lines(subject, verdict)
            if validity.get(id(verdict)) is not None:
                lines.append(
                    f"  expiry: an approval stays usable {duration(validity[id(verdict)])} "
                    "once given"
                )
            print("\n".join(lines))
            for limit in matching_limits(rate_limits, ctx):
                print(f"  limit:  {_limit_text(limit)} (counts this call)")
        tenant = policy.tenant_combining
        mode = policy.combining.value + (f" (tenant: {tenant})" if tenant is not None else "")
        print(f"combining: {mode}")
    return max(_severity(verdict) for _, _, verdict in results)


def _limit_text(limit: RateLimit) -> str:
    """``'refunds': max_calls 2 in a sliding 1h window``."""
    maxima = [
        f"{key} {value}"
        for key, value in (
            ("max_calls", limit.max_calls),
            ("max_tokens", limit.max_tokens),
            ("max_usd", limit.max_usd),
        )
        if value is not None
    ]
    window = f"a {limit.mode} {window_text(limit.window)} window"
    return f"'{limit.name}': {', '.join(maxima)} in {window}"


def _call(text: str | None) -> object:
    """``--call``: a JSON object (strictly parsed), or ``None`` when not given."""
    if text is None:
        return None
    try:
        call = parse_json(text)
    except CodecError as error:
        raise CharterError(f"check: --call is not valid JSON ({error.problem})") from None
    if not isinstance(call, dict):
        raise CharterError(
            f'check: --call must be a JSON object such as \'{{"args": {{"amount": 150}}}}\', '
            f"got {type(call).__name__}"
        )
    return call
