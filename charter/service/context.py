"""What every handler of the service shares: the store, the tokens, the clock and the
settings, with authentication (Bearer tokens for the API, an HttpOnly cookie for the page)
and the JSON error shape. Nothing that matters is kept in process memory: several servers
may serve one database."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from collections.abc import Sequence
from typing import Any, Final, NoReturn

import attrs
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from charter.adapters.service_store import ServiceStore
from charter.core.errors import InvalidInput
from charter.core.ports import Clock
from charter.service.backend import ServiceBackend
from charter.service.tokens import Principal, authenticate

__all__ = [
    "COOKIE",
    "MAX_BODY_BYTES",
    "ApiError",
    "Service",
    "error_response",
    "json_body",
]

#: The page's session cookie: the token itself, HttpOnly, SameSite=Strict.
COOKIE: Final = "charter_session"
#: The largest request body read.
MAX_BODY_BYTES: Final = 1024 * 1024


class ApiError(Exception):
    """An HTTP error with a JSON body ``{"error": {"code", "message", "field"}}``."""

    def __init__(
        self, status: int, code: str, message: str, field: str | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.extra = extra


def error_response(error: ApiError) -> JSONResponse:
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.field is not None:
        body["field"] = error.field
    body.update(error.extra)
    headers = {"WWW-Authenticate": 'Bearer realm="charter"'} if error.status == 401 else None
    return JSONResponse({"error": body}, status_code=error.status, headers=headers)


def bad(field: str, message: str) -> NoReturn:
    raise ApiError(400, "bad_request", f"{field}: {message}", field=field)


async def json_body(request: Request) -> dict[str, Any]:
    """The request's body: one JSON object (an empty body is ``{}``)."""
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, "too_large", f"body: more than {MAX_BODY_BYTES} bytes", field="body")
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        bad("body", f"not JSON: {error}")
    if not isinstance(value, dict):
        bad("body", f"expected a JSON object, got {type(value).__name__}")
    return value


@attrs.define(kw_only=True)
class Service:
    """The service's dependencies and settings (see `charter.service.app.create_app`)."""

    store: ServiceBackend
    tokens: ServiceStore
    clock: Clock
    public_url: str = ""
    secure_cookies: bool = False
    trusted_proxies: tuple[str, ...] = ()
    poll_secs: float = 5.0

    def remote(self, request: Request) -> str | None:
        """The client's address: the peer, or — when the peer is a trusted proxy — the
        nearest untrusted address of ``X-Forwarded-For``."""
        peer = request.client.host if request.client is not None else None
        if peer is None or not self._trusted(peer):
            return peer
        forwarded = request.headers.get("x-forwarded-for", "")
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        for hop in reversed(hops):
            if not self._trusted(hop):
                return hop
        return peer

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        for entry in self.trusted_proxies:
            try:
                if ip in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue
        return False

    async def principal_of(self, text: str | None) -> Principal | None:
        if not text:
            return None
        now = self.clock.now()
        return await run_in_threadpool(authenticate, self.tokens, text, now)

    async def bearer(self, request: Request) -> Principal:
        """The principal of the request's ``Authorization: Bearer`` token, or 401."""
        header = request.headers.get("authorization", "")
        scheme, _, text = header.partition(" ")
        if scheme.lower() != "bearer" or not text.strip():
            raise ApiError(401, "unauthenticated", "a Bearer token is required")
        principal = await self.principal_of(text.strip())
        if principal is None:
            raise ApiError(401, "unauthenticated", "the token is unknown, revoked or expired")
        request.state.principal = principal
        return principal

    async def session(self, request: Request) -> tuple[Principal, str] | None:
        """The page's signed-in principal and its CSRF token, from the session cookie."""
        text = request.cookies.get(COOKIE)
        principal = await self.principal_of(text)
        if principal is None or text is None:
            return None
        request.state.principal = principal
        return principal, csrf_token(text)


def csrf_token(token_text: str) -> str:
    """The page's CSRF token for a session: derived from the session's token, so any
    server can check it and a page of another origin cannot know it."""
    key = hashlib.sha256(token_text.encode("utf-8")).digest()
    return hmac.new(key, b"charter-csrf/1", hashlib.sha256).hexdigest()[:40]


def text_field(body: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            bad(name, "required")
        return None
    if not isinstance(value, str):
        bad(name, f"expected a string, got {type(value).__name__}")
    return value


def check_fields(body: dict[str, Any], allowed: Sequence[str]) -> None:
    for name in body:
        if name not in allowed:
            bad(name, f"unknown field (expected one of {', '.join(allowed)})")


def invalid(error: InvalidInput) -> ApiError:
    return ApiError(400, "bad_request", str(error), field=error.where or None)
