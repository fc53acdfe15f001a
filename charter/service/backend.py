"""The store the service works on: the `Store` port, with the signed-answer keywords of
`decide_approval` every adapter has (`charter.adapters.transactions.PlannedStore`)."""

from __future__ import annotations

from typing import Protocol

from charter.core.approvals import ApprovalRefused
from charter.core.events import ApprovalDecision, Event, JsonValue
from charter.core.ports import Store
from charter.core.signing import Signature

__all__ = ["ServiceBackend"]


class ServiceBackend(Store, Protocol):
    def decide_approval(
        self,
        execution_id: str,
        node_id: str,
        *,
        user_id: str,
        decision: ApprovalDecision,
        comment: str | None = None,
        state_patch: JsonValue = None,
        signature: Signature | None = None,
        decided_at: str | None = None,
        recorded_by: JsonValue = None,
    ) -> Event | ApprovalRefused: ...
