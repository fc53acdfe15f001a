"""Approver groups (docs/semantics.md §5): ``group:NAME`` admits exactly the members the
tenant's ``approver_groups`` lists — when the request was made (recorded in the request, so
the fold reads it from the log) and, at the store, still when the answer is given. Nothing
else decides: not a glob look-alike, not the group's own name, not "human"."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from charter.adapters.memory import MemoryStore
from charter.core.approvals import (
    Approved,
    Pending,
    approver_allows,
    may_answer,
    node_approval_status,
)
from charter.core.errors import PolicyError
from charter.core.events import ApprovalDecision, ApprovalReceived, Event, ToolApprovalRequired
from charter.core.gate import GateRequest, Outcome, gate_node
from charter.core.policy import EvaluationContext, PolicySet, policy_chain

_T0 = datetime(2026, 1, 1, tzinfo=UTC)
USERS = st.sampled_from(
    ["alice", "bob", "carol", "dave", "finance", "group:finance", "human", "al*", "ALICE", " bob"]
)
MEMBERS = st.sets(st.sampled_from(["alice", "bob", "carol", "dave", "ALICE"]), max_size=4)


def _event(sequence: int, kind: object) -> Event:
    return Event(
        id=f"e{sequence}",
        execution_id="r",
        sequence=sequence,
        kind=kind,  # type: ignore[arg-type]
        created_at=_T0,
        prev_hash="0" * 64,
        hash=f"{sequence:064x}",
    )


def _tenant(groups: dict[str, set[str]]) -> PolicySet:
    data: dict[str, object] = {
        "require_approval_for": ["payments.*"],
        "approver": "group:finance",
    }
    if any(groups.values()):
        data["approver_groups"] = {k: sorted(v) for k, v in groups.items() if v}
    return PolicySet.from_dict(data, tenant=True)


def _ask(policy: PolicySet) -> ToolApprovalRequired:
    result = gate_node(
        GateRequest(
            context=EvaluationContext("pay", "tool", "payments.send"),
            attempt=0,
            policies=policy_chain(policy),
            call={"amount": 1},
            now=_T0,
        )
    )
    assert result.outcome is Outcome.HOLD
    (ask,) = [e for e in result.events if isinstance(e, ToolApprovalRequired)]
    return ask


@given(finance=MEMBERS, ops=MEMBERS, user=USERS)
def test_membership_alone_decides(finance: set[str], ops: set[str], user: str) -> None:
    groups = {"finance": finance, "ops": ops}
    assert approver_allows("group:finance", user, groups) == (user in finance)
    assert approver_allows("group:ops, group:finance", user, groups) == (
        user in finance or user in ops
    )
    assert not approver_allows("group:nobody", user, groups)
    assert not approver_allows("group:finance", user, None)


@given(then=MEMBERS, now=MEMBERS, user=USERS)
def test_the_request_records_the_group_and_the_fold_admits_members_then(
    then: set[str], now: set[str], user: str
) -> None:
    ask = _ask(_tenant({"finance": then}))
    assert ask.approver == "group:finance"
    assert isinstance(ask.context, dict)
    assert ask.context["approver_groups"] == {"finance": sorted(then)}
    answer = ApprovalReceived(
        node_id="pay",
        user_id=user,
        decision=ApprovalDecision.APPROVED,
        request_digest=ask.request_digest,
    )
    status = node_approval_status([_event(1, ask), _event(2, answer)], "pay")
    assert isinstance(status, Approved if user in then else Pending)
    # The store's planner also asks the tenant's groups at the answer: both must admit.
    assert may_answer(ask.approver, ask.context, user, {"finance": now}) == (
        user in then and user in now
    )


@given(then=MEMBERS, now=MEMBERS, user=USERS)
def test_the_store_records_an_answer_only_from_a_member_then_and_now(
    then: set[str], now: set[str], user: str
) -> None:
    store = MemoryStore()
    from charter.core.records import Execution, Tenant

    store.put_tenant(
        Tenant(tenant_id="t", policy=_tenant({"finance": then}), created_at=_T0, updated_at=_T0)
    )
    store.create_execution(
        Execution(
            execution_id="r",
            tenant_id="t",
            workflow_id="w",
            workflow_version="1",
            initial_input={},
            created_at=_T0,
            updated_at=_T0,
        )
    )
    store.append_events("r", [_ask(_tenant({"finance": then}))])
    store.put_tenant(
        Tenant(tenant_id="t", policy=_tenant({"finance": now}), created_at=_T0, updated_at=_T0)
    )
    before = store.read_events("r")
    outcome = store.decide_approval("r", "pay", user_id=user, decision=ApprovalDecision.APPROVED)
    recorded = isinstance(outcome, Event)
    assert recorded == (user in then and user in now)
    if not recorded:
        assert store.read_events("r") == before


@pytest.mark.parametrize(
    ("groups", "field"),
    [
        ({"finance": []}, "approver_groups.finance"),
        ({"finance": ["al*"]}, "approver_groups.finance[0]"),
        ({"finance": ["a,b"]}, "approver_groups.finance[0]"),
        ({"finance": ["group:ops"]}, "approver_groups.finance[0]"),
        ({"fin ance": ["alice"]}, "approver_groups.fin ance"),
        ({"finance": "alice"}, "approver_groups.finance"),
        (["finance"], "approver_groups"),
    ],
)
def test_bad_groups_name_the_field(groups: object, field: str) -> None:
    with pytest.raises(PolicyError) as error:
        PolicySet.from_dict({"approver_groups": groups}, tenant=True)
    assert error.value.where == f"policy.{field}"


def test_groups_belong_to_a_tenant_and_change_the_digest() -> None:
    with pytest.raises(PolicyError):
        PolicySet.from_dict({"approver_groups": {"finance": ["alice"]}})
    plain = PolicySet.from_dict({}, tenant=True)
    grouped = PolicySet.from_dict({"approver_groups": {"finance": ["alice"]}}, tenant=True)
    assert plain.digest == PolicySet().digest
    assert grouped.digest != plain.digest
