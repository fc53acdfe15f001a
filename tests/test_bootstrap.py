"""The composition root (`charter.bootstrap`): which store a target opens, and how workers
are wired."""

from __future__ import annotations

from pathlib import Path

import pytest

from charter.adapters.clock import ManualClock
from charter.adapters.executors import ExecutorRegistry
from charter.adapters.memory import MemoryStore
from charter.adapters.sqlite import SqliteStore
from charter.bootstrap import build_registry, build_worker, open_store, shown
from charter.core.errors import InvalidInput, NotFound
from charter.core.events import Event, WorkflowCompleted
from charter.core.ports import NodeCall, NodeResult
from charter.core.workflow import WorkflowDef, parse_workflow
from charter.worker import Scheduler, drive, start_run
from tests.stores import drop_schema, postgres_url, unique_schema_name


def test_memory_opens_a_memory_store_on_the_given_clock() -> None:
    clock = ManualClock()
    store = open_store("memory:", clock=clock)
    assert isinstance(store, MemoryStore)
    assert store.clock is clock


def test_a_path_opens_a_sqlite_store_creating_the_file(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    store = open_store(path)
    try:
        assert isinstance(store, SqliteStore)
        assert store.path == path
        assert path.exists()
    finally:
        store.close()
    again = open_store(str(path), must_exist=True)  # a string path, now existing
    try:
        assert isinstance(again, SqliteStore)
    finally:
        again.close()


def test_a_missing_sqlite_file_that_must_exist_is_not_found_and_not_created(
    tmp_path: Path,
) -> None:
    path = tmp_path / "nothing.db"
    with pytest.raises(NotFound, match=r"nothing\.db: no such database"):
        open_store(path, must_exist=True)
    assert not path.exists()


def test_a_memory_store_never_exists_before_it_is_opened() -> None:
    with pytest.raises(NotFound, match="memory:"):
        open_store("memory:", must_exist=True)


@pytest.mark.parametrize(
    "target", ["mysql://app@db.example/charter", "redis://cache:6379/0", "http://example.com/"]
)
def test_a_url_of_another_scheme_is_invalid_input_naming_it(target: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        open_store(target)
    assert raised.value.where == target
    assert "postgresql://" in raised.value.problem


def test_a_bad_url_is_named_without_its_password() -> None:
    with pytest.raises(InvalidInput) as raised:
        open_store("mysql://app:s3cret@db.example/charter?password=other")
    assert raised.value.where == "mysql://app@db.example/charter?password=***"
    assert "s3cret" not in str(raised.value)
    assert "other" not in str(raised.value)


def test_shown_hides_passwords_of_urls_only() -> None:
    assert shown("postgresql://u:pw@h:5432/db?schema=s") == "postgresql://u@h:5432/db?schema=s"
    assert shown("postgres://h/db?password=pw&schema=s") == "postgres://h/db?password=***&schema=s"
    assert shown("postgresql://u@h/db") == "postgresql://u@h/db"
    assert shown(Path("a/b.db")) == "a/b.db"
    assert shown("charter.db") == "charter.db"


def test_concurrency_must_be_positive() -> None:
    with pytest.raises(InvalidInput, match="concurrency"):
        open_store("memory:", concurrency=0)


def test_a_postgres_url_opens_a_postgres_store() -> None:
    url = postgres_url()
    from charter.adapters.postgres import PostgresStore

    schema = unique_schema_name()
    try:
        with pytest.raises(NotFound):
            open_store(f"{url}?schema={schema}", must_exist=True)
        store = open_store(f"{url}?schema={schema}", concurrency=8)
        try:
            assert isinstance(store, PostgresStore)
            assert store.schema == schema
        finally:
            store.close()
    finally:
        drop_schema(url, schema)


def _workflow() -> WorkflowDef:
    return parse_workflow(
        {
            "workflow_id": "w",
            "version": "1",
            "start_node": "a",
            "nodes": {"a": {"kind": {"type": "tool", "tool_ref": "notes.write"}}},
            "edges": [],
            "tools": {"notes.write": {"executor": "echo"}},
        }
    )


def test_build_worker_wires_a_scheduler_that_reports_every_event() -> None:
    store = MemoryStore(ManualClock())
    seen: list[Event] = []
    worker = build_worker(store, on_events=seen.extend, worker_id="w-1", lease_secs=5.0)
    assert (worker.worker_id, worker.lease_secs) == ("w-1", 5.0)
    run = start_run(store, _workflow())
    outcome = drive(worker, run.execution_id, sleep=lambda _: None)
    assert outcome.status == "completed"
    assert [e.sequence for e in seen] == [e.sequence for e in store.read_events(run.execution_id)]
    assert isinstance(seen[-1].kind, WorkflowCompleted)


def test_build_worker_shares_a_scheduler_and_refuses_a_second_listener() -> None:
    store = MemoryStore(ManualClock())
    registry = ExecutorRegistry()
    first = build_worker(store, executors=registry)
    second = build_worker(store, executors=registry, scheduler=first.scheduler)
    assert second.scheduler is first.scheduler
    assert second.executors is registry
    with pytest.raises(InvalidInput, match="on_events"):
        build_worker(store, scheduler=Scheduler(store), on_events=print)


def test_build_registry_runs_each_plugin_on_the_built_in_executors() -> None:
    registry = build_registry(["tests.test_bootstrap:register_shout"])
    assert "shout" in registry.names()
    assert "echo" in registry.names()
    with pytest.raises(InvalidInput):
        build_registry(["no-colon"])


def register_shout(registry: ExecutorRegistry) -> None:
    """A plugin, as ``--executors tests.test_bootstrap:register_shout`` names it."""
    registry.register("shout", _shout)


def _shout(call: NodeCall) -> NodeResult:
    return NodeResult(output=str(call.args).upper())
