"""Reading the usage of a tenant's windowed limits for one decision, and charging them
(`charter.core.limits`; docs/semantics.md, "Windowed limits").

Shared by the worker and `charter.integrations.govern`: the limits of the tenant's policy
that match the node, each with its charges read from the store at ``now`` and summed by the
core (`window_usage`); the gate decides on them and records them in ``node_gated``.
"""

from __future__ import annotations

from datetime import datetime

import attrs

from charter.core.gate import GateRequest
from charter.core.limits import WindowUsage, matching_limits, window_since, window_usage
from charter.core.policy import PolicySet
from charter.core.ports import Store

__all__ = ["read_limit_usage", "with_limit_usage"]


def read_limit_usage(
    store: Store, tenant_id: str, policy: PolicySet | None, request: GateRequest
) -> tuple[WindowUsage, ...]:
    """The usage, at ``request.now``, of each of ``policy``'s limits that counts the node."""
    now: datetime = request.now
    limits = matching_limits(policy.rate_limits if policy is not None else None, request.context)
    return tuple(
        window_usage(
            limit, store.limit_charges(tenant_id, limit.name, since=window_since(limit, now)), now
        )
        for limit in limits
    )


def with_limit_usage(
    store: Store, tenant_id: str, policy: PolicySet | None, request: GateRequest
) -> GateRequest:
    """``request`` with the usage of its matching limits (itself when none matches)."""
    if policy is None or not policy.rate_limits:
        return request
    usage = read_limit_usage(store, tenant_id, policy, request)
    return attrs.evolve(request, rate_limits=usage) if usage else request
