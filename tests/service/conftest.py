"""Fixtures of the service tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from charter.adapters.service_store import ServiceStore
from charter.service import create_app
from charter.service.backend import ServiceBackend
from tests.service import helpers


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[ServiceBackend, ServiceStore]]:
    with helpers.backend(request.param, tmp_path) as (store, tokens):
        helpers._DIRS[id(store)] = str(tmp_path)
        helpers.put_tenant(store)
        yield store, tokens


@pytest.fixture
def memory(tmp_path: Path) -> Iterator[tuple[ServiceBackend, ServiceStore]]:
    with helpers.backend("memory", tmp_path) as (store, tokens):
        helpers._DIRS[id(store)] = str(tmp_path)
        helpers.put_tenant(store)
        yield store, tokens


@pytest.fixture
def client(memory: tuple[ServiceBackend, ServiceStore]) -> Iterator[TestClient]:
    store, tokens = memory
    with TestClient(create_app(store, tokens)) as test_client:
        yield test_client
