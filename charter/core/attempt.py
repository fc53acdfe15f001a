"""One attempt of one workflow node, as pure functions: the gate request it is decided on.

The worker asks the core with these, and `charter.audit` rebuilds the same inputs from the
log to recompute a recorded decision: one function for both, so the two cannot drift apart.
"""

from __future__ import annotations

from datetime import datetime

from charter.core.approvals import ApprovalStatus
from charter.core.budget import BudgetState
from charter.core.gate import GateRequest
from charter.core.policy import PolicySet, policy_chain
from charter.core.records import Execution
from charter.core.workflow import NodeDef, WorkflowDef

__all__ = ["node_gate_request"]


def node_gate_request(
    execution: Execution,
    workflow: WorkflowDef,
    node: NodeDef,
    tenant_policy: PolicySet | None,
    *,
    attempt: int,
    budget: BudgetState,
    approval: ApprovalStatus,
    state_digest: str,
    now: datetime,
    as_of: int,
) -> GateRequest:
    """The gate request of a node's attempt, from its inputs as read from the log at
    ``as_of``: what the worker asks the core, and what `charter.audit` rebuilds from the log
    to recompute a recorded decision (one function, so the two cannot drift apart). The
    call is the node's arguments with the digest of the run's state (``state_digest``:
    `content_digest` of the state), so an approval covers exactly the call it saw."""
    return GateRequest(
        context=node.context,
        attempt=attempt,
        policies=policy_chain(tenant_policy, workflow.policy, node.policy),
        combining=workflow.combining,
        agent=node.agent,
        budget=budget,
        limits=workflow.limits,
        approval=approval,
        call={"args": node.kind.get("args"), "state_digest": state_digest},
        now=now,
        run_started_at=execution.created_at,
        as_of=as_of,
    )
