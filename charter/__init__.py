"""Charter: the governance engine for AI-agent workflows.

``charter`` is the public facade: the names an embedder needs to decide whether a node or
a tool call may run (the gate and settlement, policy, autonomy and budget values, the
approval fold, events, errors) and to open a store. Everything else lives in its module:
the whole pure core in `charter.core`, storage in `charter.adapters`, the worker in
`charter.worker`, the command line in `charter.cli`, the audit in `charter.audit`, and
Hypothesis strategies for property-testing your own policies in
`charter.testing.strategies` (docs/embedding.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from charter.core.approvals import ApprovalStatus, node_approval_status
from charter.core.autonomy import AgentCard, AutonomyConstraints, AutonomyLevel
from charter.core.budget import BudgetLimits, BudgetState, Usage
from charter.core.errors import CharterError, InvalidInput
from charter.core.events import ApprovalDecision, Event, EventKind
from charter.core.gate import (
    GateRequest,
    GateResult,
    Outcome,
    Settlement,
    SettlementOutcome,
    SettleRequest,
    gate_node,
    settle_node,
)
from charter.core.policy import (
    Allow,
    Block,
    CombiningMode,
    EvaluationContext,
    PolicyDecision,
    PolicyEvaluator,
    PolicySet,
    RequireApproval,
    policy_chain,
)
from charter.core.ports import Store

if TYPE_CHECKING:  # imported on first use: `import charter.core` stays free of adapters
    from charter.bootstrap import build_worker, open_store
    from charter.integrations.govern import Governor, Held, Refused, govern, governed

__version__ = "0.1.0"

__all__ = [
    "AgentCard",
    "Allow",
    "ApprovalDecision",
    "ApprovalStatus",
    "AutonomyConstraints",
    "AutonomyLevel",
    "Block",
    "BudgetLimits",
    "BudgetState",
    "CharterError",
    "CombiningMode",
    "EvaluationContext",
    "Event",
    "EventKind",
    "GateRequest",
    "GateResult",
    "Governor",
    "Held",
    "InvalidInput",
    "Outcome",
    "PolicyDecision",
    "PolicyEvaluator",
    "PolicySet",
    "Refused",
    "RequireApproval",
    "SettleRequest",
    "Settlement",
    "SettlementOutcome",
    "Store",
    "Usage",
    "__version__",
    "build_worker",
    "gate_node",
    "govern",
    "governed",
    "node_approval_status",
    "open_store",
    "policy_chain",
    "settle_node",
]

_LAZY = {
    "build_worker": "charter.bootstrap",
    "open_store": "charter.bootstrap",
    "Governor": "charter.integrations.govern",
    "Held": "charter.integrations.govern",
    "Refused": "charter.integrations.govern",
    "govern": "charter.integrations.govern",
    "governed": "charter.integrations.govern",
}


def __getattr__(name: str) -> object:
    home = _LAZY.get(name)
    if home is None:
        raise AttributeError(f"module 'charter' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(home), name)
