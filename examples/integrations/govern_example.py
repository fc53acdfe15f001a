"""A governed tool, offline: runs, is refused, holds for approval, then runs once."""

import tempfile
from pathlib import Path

import charter
from charter.audit import replay_run
from charter.integrations.govern import Governor, Held, Refused, report_usage

db = Path(tempfile.mkdtemp()) / "charter.db"
policy = {"blocked_tools": ["db.drop_*"], "require_approval_for": ["payments.*"]}
gov = Governor(store=db, policy=policy, run_id="demo", limits=charter.BudgetLimits(cost_usd=1.0))


@gov.tool(tool_name="payments.refund")
def refund(order: str, amount: int) -> str:
    report_usage(input_tokens=120, output_tokens=30, cost_usd=0.01)
    return f"refunded {amount} on {order}"


drop = gov.govern(lambda table: f"dropped {table}", tool_name="db.drop_table")

try:
    drop("users")
except Refused as error:
    print("refused:", error.rule, error.scope, error.reason)
try:
    refund("A-17", 40)
except Held as held:
    print("held for", held.approver, "—", held.command)
    gov.store.decide_approval(
        "demo", "payments.refund", user_id="alice", decision=charter.ApprovalDecision.APPROVED
    )
print(refund("A-17", 40))  # the same call, approved: runs once
print(replay_run(gov.store, "demo").ok)  # every decision recomputes
gov.close()
