"""``POST /v1/decisions`` with a run named: the call decided and recorded in that run's log
by the same path as a governed Python call (`charter.integrations.govern`), so one rule
decides both, and the decision is in the run's chain, replayable.

The run is a governed session (docs/integrations.md): created by the first decision that
names it, with the tools the request lists (``tools``, default: the call's own), under the
tenant's stored policy; later decisions name one of its tools. The call's identity is its
``call`` JSON (an approval covers the same arguments once). What is recorded is what
``govern`` records before a call runs: ``node_started``, ``agent_tool_invoked{input_hash}``
and the gate's events (``node_gated``, then ``approval_consumed``, ``tool_approval_required``
or the refusal's events). The call itself is made by the caller, after a ``run``; its
settlement (usage, completion) is not reported over HTTP (docs/service.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from charter.core.events import Event, JsonValue, NodeGated, ToolApprovalRequired
from charter.core.ports import Store
from charter.integrations._calls import Gatekeeper, model_node
from charter.integrations.govern import Governor, Held, Refused
from charter.service.backend import ServiceBackend
from charter.service.views import event_json

__all__ = ["SOURCE", "decide_in_run"]

#: The module recorded as the home of the callables of sessions made over HTTP.
SOURCE = "charter.service.decisions"

_DECISIONS = {"run": "run", "hold": "hold", "fail": "refuse"}


class _Recording:
    """The service's store, keeping what the last successful ``append_events`` wrote (the
    decision's events: a governed decision is one compare-and-append)."""

    def __init__(self, store: ServiceBackend) -> None:
        self._store = store
        self.written: Sequence[Event] = ()

    def append_events(self, *args: Any, **kwargs: Any) -> Sequence[Event]:
        written: Sequence[Event] = self._store.append_events(*args, **kwargs)
        self.written = written
        return written

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def decide_in_run(
    store: ServiceBackend,
    *,
    run_id: str,
    tenant_id: str,
    tool: str | None,
    model: str | None,
    tools: Sequence[str] = (),
    models: Sequence[str] = (),
    call: JsonValue = None,
) -> dict[str, JsonValue]:
    """Decide and record one call of ``tool`` (or of ``model``) in run ``run_id`` of
    ``tenant_id`` (see the module doc); ``tools`` and ``models`` are the session's others,
    for a run this call creates. Raises `InvalidInput` (field ``run_id``) when the run
    exists and is not such a session of this tenant, or does not govern the call's tool."""
    recording = _Recording(store)
    governor = Governor(
        store=cast(Store, recording), tenant=tenant_id, run_id=run_id, name="service"
    )
    gatekeeper = Gatekeeper(
        governor,
        tools={*tools, *([tool] if tool is not None else [])},
        models={*models, *([model] if model is not None else [])},
        source=SOURCE,
    )
    name = model_node(model) if model is not None else tool
    assert name is not None
    approver: str | None = None
    try:
        gatekeeper.admit(name, call)
    except Held as held:
        approver = held.approver
    except Refused:
        pass  # recorded (every name asked about is governed by this gatekeeper)
    written = recording.written
    gated = next((e for e in written if isinstance(e.kind, NodeGated)), None)
    if gated is None:  # pragma: no cover - admit returns or raises after recording
        raise AssertionError(f"run {run_id!r}: the decision was not recorded")
    kind = gated.kind
    assert isinstance(kind, NodeGated)
    for event in written:
        if isinstance(event.kind, ToolApprovalRequired):
            approver = event.kind.approver
    return {
        "decision": _DECISIONS[kind.outcome],
        "reason": kind.reason,
        "rule": kind.policy_rule,
        "scope": kind.policy_scope,
        "pattern": kind.policy_pattern,
        "approver": approver if kind.outcome == "hold" else None,
        "request_digest": kind.request_digest,
        "run_id": run_id,
        "node_id": kind.node_id,
        "sequence": gated.sequence,
        "events": [event_json(e) for e in written],
    }
