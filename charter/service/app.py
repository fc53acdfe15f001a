"""`create_app`: the Starlette application of `charter serve` (docs/service.md).

The API under ``/v1`` (`charter.service.api`), the approvers' page
(`charter.service.page`), ``/healthz`` and ``/readyz``, and the OpenAPI document at
``/v1/openapi.json`` (`charter.service.openapi`). Every request is logged as one JSON line
on the ``charter.service.access`` logger — method, path, status, duration, the token's id
and principal, the client's address — never a token, cookie or body.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from charter.adapters.clock import SystemClock
from charter.adapters.service_store import ServiceStore
from charter.core.errors import InvalidInput, NotFound, StoreUnavailable
from charter.core.ports import Clock
from charter.service import api, page
from charter.service.backend import ServiceBackend
from charter.service.context import ApiError, Service, error_response, invalid
from charter.service.openapi import openapi_document
from charter.service.webhooks import Notifier, Webhook

__all__ = ["ACCESS_LOGGER", "create_app"]

#: The logger of the access log (one JSON object per request).
ACCESS_LOGGER = "charter.service.access"
_log = logging.getLogger(ACCESS_LOGGER)


class AccessLog:
    """ASGI middleware: one JSON line per request, after it is answered."""

    def __init__(self, app: ASGIApp, service: Service) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            state = scope.get("state") or {}
            principal = state.get("principal")
            request = Request(scope)
            record: dict[str, Any] = {
                "method": scope.get("method"),
                "path": scope.get("path"),
                "status": status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                "remote": self.service.remote(request),
                "token": principal.token_id if principal is not None else None,
                "user": principal.user_id if principal is not None else None,
            }
            _log.info(json.dumps(record, ensure_ascii=False))


async def _openapi(request: Request) -> JSONResponse:
    return JSONResponse(openapi_document())


async def _api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    return error_response(error)


async def _invalid(request: Request, error: Exception) -> Response:
    assert isinstance(error, InvalidInput)
    return error_response(invalid(error))


async def _not_found(request: Request, error: Exception) -> Response:
    return error_response(ApiError(404, "not_found", str(error)))


async def _unavailable(request: Request, error: Exception) -> Response:
    return error_response(ApiError(503, "unavailable", "the database is unavailable"))


def create_app(
    store: ServiceBackend,
    tokens: ServiceStore,
    *,
    clock: Clock | None = None,
    public_url: str = "",
    secure_cookies: bool = False,
    trusted_proxies: Sequence[str] = (),
    poll_secs: float = 5.0,
    webhooks: Sequence[Webhook] = (),
    webhook_interval_secs: float = 2.0,
) -> Starlette:
    """The service on ``store`` (any store: memory, SQLite, Postgres) and ``tokens`` (the
    service's tables, `charter.adapters.service_store`). ``public_url`` is how people reach
    the page (links in notifications); ``trusted_proxies`` are the addresses or networks
    whose ``X-Forwarded-For`` is believed; ``poll_secs`` how often the page refreshes its
    pending list. With ``webhooks``, a background thread notifies them (`Notifier`)."""
    service = Service(
        store=store,
        tokens=tokens,
        clock=clock or SystemClock(),
        public_url=public_url.rstrip("/"),
        secure_cookies=secure_cookies,
        trusted_proxies=tuple(trusted_proxies),
        poll_secs=poll_secs,
    )
    notifier = (
        Notifier(store, tokens, webhooks, clock=service.clock, public_url=service.public_url)
        if webhooks
        else None
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        stop = threading.Event()
        thread = None
        if notifier is not None:
            thread = threading.Thread(
                target=notifier.run,
                args=(stop, webhook_interval_secs),
                name="charter-webhooks",
                daemon=True,
            )
            thread.start()
        try:
            yield
        finally:
            stop.set()
            if thread is not None:
                thread.join(timeout=30)

    app = Starlette(
        routes=[
            *api.routes(),
            Route("/v1/openapi.json", _openapi, methods=["GET"]),
            *page.routes(),
        ],
        exception_handlers={
            ApiError: _api_error,
            InvalidInput: _invalid,
            NotFound: _not_found,
            StoreUnavailable: _unavailable,
        },
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.notifier = notifier
    app.add_middleware(AccessLog, service=service)
    return app
