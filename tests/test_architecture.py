"""Mechanical checks of the design rules: a pure core, and a pinned public API."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import charter
import charter.core
import charter.testing.strategies

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "charter" / "core"

#: What core modules may import: the standard library's pure parts, attrs, and the core.
ALLOWED_IMPORTS = {
    "__future__",
    "ast",
    "attrs",
    "base64",
    "binascii",
    "collections",
    "collections.abc",
    "datetime",
    "enum",
    "functools",
    "hashlib",
    "itertools",
    "json",
    "math",
    "re",
    "reprlib",
    "unicodedata",
    "types",
    "typing",
}

#: Attribute and function names whose use means reading a clock, drawing randomness or
#: doing I/O.
FORBIDDEN_CALLS = {"now", "utcnow", "today", "uuid1", "uuid4", "open", "print", "input"}


def _core_files() -> list[Path]:
    files = sorted(CORE.glob("*.py"))
    assert files, "core/ has no modules?"
    return files


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative imports are banned"
            found.append((node.lineno, node.module or ""))
    return found


def _impure_imports(path: Path, source: str) -> list[str]:
    """The imports of a core module that the purity rule refuses."""
    return [
        f"{path.name}:{line}: import {name}"
        for line, name in _imports(ast.parse(source))
        if name not in ALLOWED_IMPORTS and not name.startswith("charter.core")
    ]


def _impure_calls(path: Path, source: str) -> list[str]:
    """The calls of a core module that read a clock, draw randomness or do I/O."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in FORBIDDEN_CALLS:
                bad.append(f"{path.name}:{node.lineno}: call to {name}()")
    return bad


@pytest.mark.parametrize("path", _core_files(), ids=lambda p: p.name)
def test_core_module_imports_nothing_that_does_io(path: Path) -> None:
    bad = _impure_imports(path, path.read_text(encoding="utf-8"))
    assert not bad, "core/ must stay pure:\n" + "\n".join(bad)


@pytest.mark.parametrize("path", _core_files(), ids=lambda p: p.name)
def test_core_module_reads_no_clock_and_draws_no_randomness(path: Path) -> None:
    bad = _impure_calls(path, path.read_text(encoding="utf-8"))
    assert not bad, "core/ must take clocks and ids as inputs:\n" + "\n".join(bad)


def test_purity_check_would_catch_an_io_import() -> None:
    # The checks above must be able to fail: run them on a module that imports `time` and
    # reads the clock, and on a clean one.
    dirty = "import time\nfrom datetime import datetime\nx = datetime.now()\nfrom os import path\n"
    where = Path("dirty.py")
    assert _impure_imports(where, dirty) == ["dirty.py:1: import time", "dirty.py:4: import os"]
    assert _impure_calls(where, dirty) == ["dirty.py:3: call to now()"]
    clean = "from datetime import datetime\nfrom charter.core.events import Event\n"
    assert _impure_imports(where, clean) == []
    assert _impure_calls(where, clean) == []


def test_installed_package_exposes_core_only_as_charter_core(tmp_path: Path) -> None:
    # Run outside the repository (pytest puts the repository root on sys.path).
    probe = (
        "import importlib.util, charter.core\n"
        "assert charter.core.__name__ == 'charter.core'\n"
        "find = importlib.util.find_spec\n"
        "print(find('core') is None, find('adapters') is None)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["True", "True"]


CORE_API = [
    "ALLOW", "ANY_HUMAN", "AgentCard", "AgentToolCompleted", "AgentToolFailed",
    "AgentToolInvoked", "AgentToolProgress", "AgentToolTerminated", "AgentToolTurn", "Allow",
    "ApprovalConsumed", "ApprovalDecision", "ApprovalExpired", "ApprovalReceived",
    "ApprovalRefused",
    "ApprovalRequest", "ApprovalStatus", "Approved", "AutonomyConstraints", "AutonomyContext",
    "AutonomyDecision", "AutonomyEnforcer", "AutonomyError", "AutonomyLevel",
    "AutonomyLimitReached", "BUDGET_KEY", "Block", "BlockedOn", "Branch", "BreakerEvent",
    "BreakerState", "BreakerStatus", "BreakerStep", "BudgetDimension", "BudgetError",
    "BudgetExceeded", "BudgetLimits", "BudgetPhase", "BudgetState", "BudgetTrip", "CallOutcome",
    "ChainLink",
    "CharterError", "ChildWorkflowCompleted", "ChildWorkflowFailed", "ChildWorkflowStarted",
    "CircuitBreaker", "CircuitBreakerClosed", "CircuitBreakerCounted",
    "CircuitBreakerHalfOpened", "CircuitBreakerOpened", "CircuitBreakerTripped", "Claim",
    "Clock", "CombiningMode", "CommitRequest", "Condition", "Conflict", "Consumed", "Expired",
    "CoordinatorDecision", "CoordinatorDiscovery", "CoordinatorScoring", "CostBudgetExceeded",
    "CriticVerdict", "DEFAULT_RETRY_POLICIES", "DEFAULT_TENANT", "EVENT_KINDS", "EdgeDef",
    "EffectAbandoned", "EffectAcquired", "EffectHeld", "EffectRecorded", "EffectReservation",
    "EffectResult", "EscalateLimit", "EscalationRequired", "EscalationTarget",
    "EvaluationContext", "Event", "EventKind", "Execution", "ExecutionStatus", "Executor",
    "ExecutorFailed", "ExternalEventReceived", "FenceLost", "GateInputError",
    "GateRequest", "GateResult", "GlobPattern", "HumanApproval", "IncompatibleStore",
    "InterruptRaised", "InvalidInput", "IterationCompleted", "IterationStarted", "JsonValue",
    "LimitExceeded",
    "MAX_COST_USD",
    "MAX_PAYLOAD_BYTES", "Materialized", "NODE_KINDS", "NewWorkItem", "NodeCall",
    "NodeCancelled", "NodeCompleted", "NodeDef", "NodeFailed", "NodeGated", "NodeKindInfo",
    "NodeParked", "NodeProgress", "NodeResult", "NodeScheduled", "NodeSkipped", "NodeStarted",
    "NodeState", "NotFound", "NotRequested", "Outcome", "Page", "Pending",
    "PendingApprovalRecord", "Permit", "Plan", "PlanGenerated", "PolicyDecision", "PolicyError",
    "PolicyEvaluator", "PolicyLayer", "PolicyRule", "PolicyScope", "PolicySet",
    "PolicyVerdict", "PolicyViolation", "Proceed", "Progress", "ProvenanceMetadata",
    "ReclaimResult", "Rejected", "RequireApproval", "RequireToolApproval", "RetryPolicy",
    "RetryScheduled", "RunStatus", "SegmentBoundary", "SettleRequest",
    "Settlement", "SettlementOutcome", "Snapshot", "StepStatus", "Store", "StoreError",
    "StoreUnavailable", "StrategyCompleted", "StrategyLimitHit", "StrategyStarted",
    "SupervisorAgent", "Tenant", "TenantLimits", "TenantStatus", "TimerCreated", "TimerFired",
    "TokenBudgetExceeded", "ToolApprovalRequired", "ToolCalled", "ToolDef",
    "TripCircuitBreaker", "UnknownNodeKind", "UnknownTenant", "Usage", "UsageRecorded",
    "WorkItem", "WorkItemStatus", "WorkflowCancelled", "WorkflowCompleted", "WorkflowDef",
    "WorkflowDefinition", "WorkflowFailed", "WorkflowInvalid", "WorkflowRun", "WorkflowRunStep",
    "WorkflowStarted", "approval_step",
    "budget_after", "canonical_json", "check_after", "check_before",
    "constraints_from_dict", "content_digest", "decide_approval",
    "event_type", "fold", "gate_node", "glob_match", "materialize",
    "node_approval_status", "node_kind_tag",
    "parse_condition", "parse_escalation_target", "parse_workflow",
    "pending_approvals", "plan", "policy_chain",
    "request_digest", "run_record",
    "run_steps", "settle_node",
]  # fmt: skip

STRATEGIES_API = [
    "agent_cards", "approval_rules", "approval_statuses", "autonomy_constraints",
    "autonomy_contexts",
    "budget_limits", "budget_states", "calls", "circuit_breakers", "conditional_rules",
    "conditions", "datetimes", "evaluation_contexts",
    "event_kinds", "events", "gate_requests", "glob_patterns", "json_floats", "json_values",
    "names",
    "policy_chains", "policy_sets", "usages", "worker_requests", "worker_responses",
    "workflow_documents",
]  # fmt: skip


def test_core_public_api_is_pinned() -> None:
    # A change here is a change to what embedders may rely on: update docs/ with it.
    assert sorted(charter.core.__all__) == sorted(CORE_API)


FACADE_API = [
    "AgentCard", "Allow", "ApprovalDecision", "ApprovalStatus", "AutonomyConstraints",
    "AutonomyLevel", "Block", "BudgetLimits", "BudgetState", "CharterError", "CombiningMode",
    "EvaluationContext", "Event", "EventKind", "GateRequest", "GateResult", "Governor", "Held",
    "InvalidInput", "Refused", "govern", "governed",
    "Outcome", "PolicyDecision", "PolicyEvaluator", "PolicySet", "RequireApproval",
    "SettleRequest", "Settlement", "SettlementOutcome", "Store", "Usage", "__version__",
    "build_worker", "gate_node", "node_approval_status", "open_store", "policy_chain",
    "settle_node",
]  # fmt: skip


def test_facade_exports_what_an_embedder_needs() -> None:
    # The facade is a short list chosen for embedders, not the whole core: each name is the
    # core's own object (or the composition root's).
    import charter.bootstrap
    import charter.integrations.govern

    assert sorted(charter.__all__) == sorted(FACADE_API)
    lazy = {"open_store": charter.bootstrap, "build_worker": charter.bootstrap}
    lazy.update(dict.fromkeys(("Governor", "Held", "Refused", "govern", "governed"),
                              charter.integrations.govern))  # fmt: skip
    for name in FACADE_API:
        if name == "__version__":
            continue
        assert getattr(charter, name) is getattr(lazy.get(name, charter.core), name)


def test_importing_the_core_loads_no_adapter(tmp_path: Path) -> None:
    probe = (
        "import sys, charter.core, charter\n"
        "print(sorted(m for m in sys.modules if m.startswith(('charter.adapters', "
        "'charter.worker', 'sqlite3', 'psycopg'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def test_strategies_public_api_is_pinned() -> None:
    assert sorted(charter.testing.strategies.__all__) == sorted(STRATEGIES_API)


@pytest.mark.parametrize(
    "module", [charter, charter.core, charter.testing.strategies], ids=lambda m: m.__name__
)
def test_every_exported_name_exists(module: object) -> None:
    missing = [name for name in module.__all__ if not hasattr(module, name)]  # type: ignore[attr-defined]
    assert not missing


#: Modules outside `charter.cli` allowed to print, and why.
PRINTS_ALLOWED = {
    # A developer's generator with its own `python -m` command line (docs/conformance).
    "charter/testing/conformance.py",
}


def _package_modules() -> list[Path]:
    return sorted((ROOT / "charter").rglob("*.py"))


def test_only_the_cli_prints() -> None:
    offenders: list[str] = []
    for path in _package_modules():
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith("charter/cli/") or relative in PRINTS_ALLOWED:
            continue
        offenders.extend(
            f"{relative}:{node.lineno}"
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print"
        )
    assert not offenders, "only charter.cli prints:\n" + "\n".join(offenders)


def test_code_cites_docs_not_files_outside_the_repository() -> None:
    # Comments and docstrings point readers at docs/, which ships with the code.
    outside = ("reference §", "../shared", "seeds/0", "jamjet-semantics.md")
    offenders = [
        f"{path.relative_to(ROOT)}: {marker!r}"
        for path in _package_modules()
        for marker in outside
        if marker in path.read_text(encoding="utf-8")
    ]
    assert not offenders, "\n".join(offenders)
