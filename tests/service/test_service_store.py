"""The service's tables beside each store: tokens (digests only) and the outbox."""

from __future__ import annotations

from datetime import timedelta

import pytest

from charter.adapters.service_store import OutboxEntry, ServiceStore
from charter.core.errors import Conflict
from charter.service.backend import ServiceBackend
from charter.service.tokens import authenticate, issue_token, parse_duration, token_digest


def test_tokens_are_stored_as_digests_and_can_be_revoked(
    backend: tuple[ServiceBackend, ServiceStore],
) -> None:
    store, tokens = backend
    now = store.clock.now()
    text, record = issue_token(tokens, "alice", now=now, expires_in=timedelta(days=1))
    assert record.digest == token_digest(text)
    (listed,) = tokens.list_tokens()
    assert listed == record
    assert text not in repr(listed)
    principal = authenticate(tokens, text, now)
    assert principal is not None
    assert (principal.user_id, principal.token_id) == ("alice", record.token_id)
    assert authenticate(tokens, text, now + timedelta(days=2)) is None  # expired
    assert authenticate(tokens, text + "x", now) is None
    revoked = tokens.revoke_token(record.token_id, now)
    assert revoked is not None
    assert revoked.revoked_at is not None
    assert authenticate(tokens, text, now) is None
    assert tokens.revoke_token("nope", now) is None
    with pytest.raises(Conflict):
        tokens.add_token(record)


def test_the_outbox_claims_each_entry_once_per_lease(
    backend: tuple[ServiceBackend, ServiceStore],
) -> None:
    store, outbox = backend
    now = store.clock.now()
    entry = OutboxEntry(
        entry_id="e1", url="http://x", body="{}", created_at=now, next_attempt_at=now
    )
    assert outbox.enqueue(entry)
    assert not outbox.enqueue(entry)
    (claimed,) = outbox.claim_due(now, lease_secs=30, limit=10)
    assert claimed.attempts == 1
    assert outbox.claim_due(now, lease_secs=30, limit=10) == ()  # leased
    outbox.failed("e1", error="HTTP 500", retry_at=now + timedelta(seconds=5))
    assert outbox.claim_due(now + timedelta(seconds=6), lease_secs=30, limit=10)
    outbox.delivered("e1", now + timedelta(seconds=7))
    assert outbox.claim_due(now + timedelta(days=1), lease_secs=30, limit=10) == ()


@pytest.mark.parametrize("text", ["", "5", "0m", "3y", "m5"])
def test_bad_durations_are_refused(text: str) -> None:
    from charter.core.errors import InvalidInput

    with pytest.raises(InvalidInput):
        parse_duration(text)


def test_durations() -> None:
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("2w") == timedelta(days=14)
