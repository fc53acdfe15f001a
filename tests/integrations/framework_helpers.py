"""What the framework integration tests share: a scripted chat model (LangChain's fake,
answering by turn so a resumed graph in another process gets the same answers), tenants
(with approvers' keys for signed answers), the real `charter approve`, and the audit every
test ends with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from charter.adapters.keys import new_key
from charter.adapters.sqlite import SqliteStore
from charter.audit.replay import replay_run, verify_log
from charter.cli import main
from charter.core.events import NodeGated
from charter.core.policy import PolicySet
from charter.core.records import Tenant

__all__ = ["ScriptedChat", "answer", "audited", "keyed_tenant", "tenant", "tool_call"]


def tool_call(name: str, args: dict[str, Any], call_id: str, **usage: int) -> AIMessage:
    """A model turn asking for one tool call (with ``usage_metadata`` when given)."""
    metadata: Any = {**usage, "total_tokens": sum(usage.values())} if usage else None
    return AIMessage(
        content="",
        tool_calls=[{"name": name, "args": args, "id": call_id, "type": "tool_call"}],
        usage_metadata=metadata,
    )


class ScriptedChat(FakeMessagesListChatModel):
    """LangChain's fake chat model, answering turn N (the number of model turns already in
    the conversation) with ``responses[N]`` (the last one after that)."""

    model_name: str = "scripted-1"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        turn = sum(isinstance(message, AIMessage) for message in messages)
        response = self.responses[min(turn, len(self.responses) - 1)].model_copy()
        return ChatResult(generations=[ChatGeneration(message=response)])

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self


def tenant(db: Path, tenant_id: str, policy: dict[str, Any]) -> None:
    """Create ``tenant_id`` in the SQLite store at ``db`` with ``policy``."""
    store = SqliteStore(db)
    try:
        now = store.clock.now()
        store.put_tenant(
            Tenant(
                tenant_id=tenant_id,
                policy=PolicySet.from_dict(policy, tenant=True),
                created_at=now,
                updated_at=now,
            )
        )
    finally:
        store.close()


def keyed_tenant(db: Path, tmp_path: Path, tenant_id: str, policy: dict[str, Any]) -> Path:
    """A tenant whose ``approver`` must sign: returns the approver's private key file."""
    approver = str(policy["approver"])
    key = tmp_path / f"{approver}.key"
    public = new_key(key)
    tenant(db, tenant_id, {**policy, "approvers": {approver: [public]}})
    return key


def answer(db: Path, run_id: str, node_id: str, user: str, *extra: str) -> int:
    """The real ``charter approve`` (in this process), as a `Held.command` says."""
    argv = ["approve", run_id, node_id, "--user", user, "--db", str(db), "--no-continue"]
    return main([*argv, "--quiet", *extra])


def audited(db: Path, run_id: str) -> int:
    """The run's chain verifies and every decision recomputes with no divergence; returns
    how many decisions were replayed."""
    store = SqliteStore(db)
    try:
        assert verify_log(store, runs=[run_id]).ok
        report = replay_run(store, run_id)
        assert report.divergences == ()
        gates = [e for e in store.read_events(run_id) if isinstance(e.kind, NodeGated)]
        assert report.gates == len(gates) > 0
        return report.gates
    finally:
        store.close()
