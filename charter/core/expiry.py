"""Approval expiry: how long an approval stays usable, and when a given one stops counting.

docs/semantics.md §5.2 states the rules; in short:

* the tenant's ``approval_expiry_secs`` is the default, a ``require_approval_for`` entry's
  ``expires_after_secs`` overrides it for the approvals that rule asks for. A workflow or
  node rule may only shorten the tenant's default, never lengthen it; a final layer's own
  approval rule for the call bounds it too (a more specific layer cannot outlast it);
* the validity is fixed when the request is raised (``tool_approval_required
  .expires_after_secs``), and an approval's ``expires_at`` when the answer is recorded: the
  answer's recording time plus that validity (`expiry_of`);
* the gate uses an approval only strictly before its ``expires_at``
  (`charter.core.approvals.approval_expired`).

Pure: the caller passes every time; nothing here reads a clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from charter.core.approvals import ApprovalRequest
from charter.core.policy import (
    EvaluationContext,
    PolicyLayer,
    PolicyRule,
    PolicyScope,
    PolicySet,
    PolicyVerdict,
    RequireApproval,
    _layer_alone,
)

__all__ = ["approval_validity", "expiry_of", "rule_expiry"]


def _shorter(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def rule_expiry(policy: PolicySet, pattern: str | None, condition: str | None) -> float | None:
    """The ``expires_after_secs`` of the ``require_approval_for`` rule of ``policy`` that
    decided with ``pattern`` and ``condition`` (the first such rule in list order, which
    is the one the index chose); ``None`` when it has none. A lookup in the table the set
    built with its index."""
    if pattern is None:
        return None
    return policy._expiries.get((pattern, condition))


def approval_validity(
    layers: Sequence[PolicyLayer],
    verdict: PolicyVerdict,
    ctx: EvaluationContext,
    call: object,
) -> float | None:
    """How long an approval of a request raised under ``verdict`` stays usable once
    recorded (seconds; ``None``: it does not expire)."""
    if not any(layer.policy.approval_expiry_secs or layer.policy._expiries for layer in layers):
        return None  # nothing in the chain expires: the common case, decided at once
    default: float | None = None
    for layer in layers:
        if layer.scope is PolicyScope.TENANT:
            default = _shorter(default, layer.policy.approval_expiry_secs)
    validity = default
    deciding = verdict.layer
    if (
        verdict.rule is PolicyRule.REQUIRE_APPROVAL_FOR
        and deciding is not None
        and 0 <= deciding < len(layers)
    ):
        own = rule_expiry(layers[deciding].policy, verdict.pattern, verdict.condition)
        if layers[deciding].scope is PolicyScope.TENANT:
            validity = own if own is not None else default
        else:
            validity = _shorter(own, default)
    for position, layer in enumerate(layers):
        if not layer.policy.final or position == deciding:
            continue
        hit = _layer_alone(ctx, layer.scope, layer.policy, position, call)
        if hit is not None and isinstance(hit[0], RequireApproval):
            pattern, judged = hit[3], hit[5]
            condition = None if judged is None else judged[0]
            validity = _shorter(validity, rule_expiry(layer.policy, pattern, condition))
    return validity


def expiry_of(request: ApprovalRequest, recorded_at: datetime) -> datetime | None:
    """When an approval of ``request`` recorded at ``recorded_at`` stops counting."""
    if request.expires_after_secs is None:
        return None
    return recorded_at + timedelta(seconds=request.expires_after_secs)
