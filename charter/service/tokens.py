"""API tokens: made once, shown once, stored only as a SHA-256 digest.

A token's text is ``charter_<id>_<secret>``: ``id`` names it in listings, logs and the
record of every answer it gives (``recorded_by.token``), ``secret`` is 32 random bytes. The
server keeps ``sha256(text)`` only, so a copy of the database does not hold a usable
token. Each token acts as one principal (``--user``): the person every request made with it
answers as, whatever a request's body says. A token made with ``--tenant`` is scoped to that
tenant (`Principal.sees`): it sees, answers and records into that tenant's runs only.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime, timedelta
from typing import Final

import attrs

from charter.adapters.service_store import ServiceStore, TokenRecord
from charter.core.approvals import approver_allows
from charter.core.errors import InvalidInput

__all__ = ["PREFIX", "Principal", "authenticate", "issue_token", "parse_duration", "token_digest"]

#: How every token's text begins (so a leaked one is recognisable by secret scanners).
PREFIX: Final = "charter_"
_DURATION: Final = re.compile(r"^(\d+)([smhdw])$")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@attrs.frozen(kw_only=True)
class Principal:
    """Who a request acts as: the token's user and the token's id, and the tenant the token
    is scoped to (``None``: every tenant)."""

    user_id: str
    token_id: str
    tenant_id: str | None = None

    def sees(self, tenant_id: str | None) -> bool:
        """Whether this principal may see and act on ``tenant_id``'s runs and approvals."""
        return self.tenant_id is None or tenant_id == self.tenant_id


def token_digest(text: str) -> str:
    """The SHA-256 (hex) of a token's text: what is stored and looked up."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``12h``, ``7d``, ``2w`` as a duration (at least one second)."""
    match = _DURATION.match(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise InvalidInput(
            "--expires", f"expected a duration like 30m, 12h, 7d or 2w, got {text!r}"
        )
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def issue_token(
    tokens: ServiceStore,
    user_id: str,
    *,
    now: datetime,
    expires_in: timedelta | None = None,
    tenant_id: str | None = None,
) -> tuple[str, TokenRecord]:
    """Make a token for ``user_id`` (scoped to ``tenant_id`` when given): its text (to show
    once) and the stored record."""
    if not approver_allows("human", user_id):
        raise InvalidInput("--user", f"expected an identified person's id, got {user_id!r}")
    if len(user_id) > 128:
        raise InvalidInput("--user", "at most 128 characters")
    if tenant_id is not None and not tenant_id.strip():
        raise InvalidInput("--tenant", "expected a tenant id, got an empty one")
    token_id = secrets.token_hex(6)
    text = f"{PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
    record = TokenRecord(
        token_id=token_id,
        user_id=user_id,
        digest=token_digest(text),
        created_at=now,
        expires_at=now + expires_in if expires_in is not None else None,
        tenant_id=tenant_id,
    )
    tokens.add_token(record)
    return text, record


def authenticate(tokens: ServiceStore, text: str | None, now: datetime) -> Principal | None:
    """The principal of a token's text, if it names a usable token (not revoked, not
    expired); ``None`` otherwise."""
    if not text or not text.startswith(PREFIX) or len(text) > 200:
        return None
    record = tokens.token_by_digest(token_digest(text))
    if record is None or not record.usable(now):
        return None
    if not secrets.compare_digest(record.digest, token_digest(text)):  # pragma: no cover
        return None
    return Principal(user_id=record.user_id, token_id=record.token_id, tenant_id=record.tenant_id)
