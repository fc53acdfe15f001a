"""Shared set-up of the service tests: a store (memory, SQLite or Postgres) with the
service's tables beside it, a run of the refund workflow held for approval, tokens."""

from __future__ import annotations

import hashlib
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from charter.adapters.files import load_policy_layer, load_workflow_file
from charter.adapters.service_store import (
    MemoryServiceStore,
    PostgresServiceStore,
    ServiceStore,
    SqliteServiceStore,
)
from charter.bootstrap import build_worker, open_store
from charter.core.policy import PolicyScope
from charter.core.records import Tenant
from charter.service.backend import ServiceBackend
from charter.service.tokens import issue_token
from charter.worker import drive, start_run
from tests.stores import drop_schema, postgres_url, unique_schema_name

ROOT = Path(__file__).resolve().parents[2]

WORKFLOW = """
workflow_id: payout
version: "VERSION"
tenant_id: acme
start_node: pay
tools:
  payments.send:
    idempotent: false
    executor: echo
    config: {state_patch: {paid: true}}
  email.send:
    idempotent: false
    executor: echo
nodes:
  pay:
    kind: {type: tool, tool_ref: payments.send, args: ARGS}
    retry_policy: no_retry
  notify:
    kind: {type: tool, tool_ref: email.send, args: {template: paid}}
edges:
  - {from: pay, to: notify}
policy:
  require_approval_for: ["payments.*"]
  approver: APPROVER
"""


@contextmanager
def backend(kind: str, tmp_path: Path) -> Iterator[tuple[ServiceBackend, ServiceStore]]:
    """A store of ``kind`` and the service's tables beside it, closed (and a Postgres
    schema dropped) afterwards."""
    if kind == "memory":
        store: Any = open_store("memory:")
        tokens: ServiceStore = MemoryServiceStore()
        try:
            yield store, tokens
        finally:
            store.close()
        return
    if kind == "sqlite":
        path = tmp_path / "charter.db"
        store = open_store(path, concurrency=8)
        tokens = SqliteServiceStore(path)
        try:
            yield store, tokens
        finally:
            tokens.close()
            store.close()
        return
    base = postgres_url()
    schema = unique_schema_name()
    separator = "&" if "?" in base else "?"
    url = f"{base}{separator}schema={schema}"
    try:
        store = open_store(url, concurrency=8)
        tokens = PostgresServiceStore(url)
        try:
            yield store, tokens
        finally:
            tokens.close()
            store.close()
    finally:
        drop_schema(base, schema)


def put_tenant(store: ServiceBackend, policy_text: str = "") -> None:
    """Tenant ``acme`` with the example tenant policy, plus ``policy_text`` (YAML) if given."""
    path = ROOT / "examples" / "tenant-acme.yaml"
    if policy_text:
        extra = Path(store_dir(store)) / "tenant.yaml"
        extra.write_text(path.read_text() + "\n" + textwrap.dedent(policy_text))
        path = extra
    policy = load_policy_layer(path, PolicyScope.TENANT)
    now = store.clock.now()
    store.put_tenant(Tenant(tenant_id="acme", policy=policy, created_at=now, updated_at=now))


_DIRS: dict[int, str] = {}


def store_dir(store: object) -> str:
    return _DIRS[id(store)]


def held_run(
    store: ServiceBackend,
    tmp_path: Path,
    run_id: str,
    *,
    args: str = '{to: "ACME-1", amount: 120}',
    approver: str = "finance-lead",
    tenant: str | None = None,
) -> None:
    """A run of the payout workflow (of ``tenant``, default the workflow's ``acme``), driven
    until its payment waits for ``approver``."""
    version = str(int(hashlib.sha256(f"{args}|{approver}".encode()).hexdigest()[:8], 16))
    text = WORKFLOW.replace("ARGS", args).replace("APPROVER", approver)
    text = text.replace("VERSION", version)
    path = tmp_path / f"{run_id}.yaml"
    path.write_text(text)
    workflow, _ = load_workflow_file(path)
    start_run(store, workflow, execution_id=run_id, tenant_id=tenant)
    outcome = drive(build_worker(store), run_id)
    assert outcome.status == "waiting", outcome


def token(tokens: ServiceStore, store: ServiceBackend, user: str) -> str:
    text, _ = issue_token(tokens, user, now=store.clock.now())
    return text


def finish(store: ServiceBackend, run_id: str) -> str:
    """Drive the run after an answer; its final status."""
    return drive(build_worker(store), run_id).status


LEDGER = """
workflow_id: ledger
version: "1"
tenant_id: TENANT
start_node: post
tools:
  ledger.post:
    idempotent: false
    executor: echo
nodes:
  post:
    kind: {type: tool, tool_ref: ledger.post, args: ARGS}
"""


def lost_run(
    store: ServiceBackend,
    tmp_path: Path,
    run_id: str,
    *,
    args: str = '{amount: 5, memo: "rent"}',
    tenant: str = "acme",
) -> None:
    """A run whose only node posts to a ledger that is not idempotent, and whose worker
    abandons its first call after reserving the effect: once the claim's lease runs out the
    node's outcome is lost and waits for a person (``outcome_unknown``)."""
    from charter.core.errors import FenceLost
    from charter.worker import WorkerHooks

    path = tmp_path / f"{run_id}.yaml"
    path.write_text(LEDGER.replace("ARGS", args).replace("TENANT", tenant))
    workflow, _ = load_workflow_file(path)
    start_run(store, workflow, execution_id=run_id)
    abandoned: list[str] = []

    def abandon_first(claim: Any) -> None:
        if not abandoned:
            abandoned.append(claim.item.item_id)
            raise FenceLost("the worker died here")

    worker = build_worker(store, lease_secs=0.2, hooks=WorkerHooks(before_execute=abandon_first))
    outcome = drive(worker, run_id)
    assert outcome.status == "waiting", outcome
    assert outcome.lost_outcomes == ("post",), outcome
