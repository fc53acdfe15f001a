"""Webhooks: people are told when a run waits for them.

On every open request for approval (``tool_approval_required``) and every lost outcome
waiting for a person (``outcome_unknown``), each configured webhook whose tenant matches
receives a JSON POST: what waits, a link to the page, and a Slack-compatible ``text``. It
is signed: ``X-Charter-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``.

Nothing is lost when the receiver is down or the server restarts: a notification is first
written to the durable outbox (`charter.adapters.service_store`, under an id derived from
the webhook, the run, the node and the request's sequence, so several servers scanning
the same database write it once), then delivered, and retried with exponential backoff
(2, 4, 8 … seconds, at most an hour apart) until a receiver answers 2xx. A delivery is
claimed with a lease, so two servers never send it at once; a receiver may still see a
notification twice (a server that dies after sending, before recording it): deduplicate
on ``X-Charter-Delivery``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import timedelta
from typing import Final
from urllib.parse import quote

import attrs

from charter.adapters.service_store import OutboxEntry, ServiceStore
from charter.core.events import JsonValue, OutcomeUnknown
from charter.core.ports import Clock
from charter.service.backend import ServiceBackend
from charter.service.resolutions import lost_outcomes

__all__ = ["Notifier", "Webhook", "signature_header"]

_log = logging.getLogger("charter.service.webhooks")
_LEASE_SECS: Final = 60.0
_MAX_BACKOFF_SECS: Final = 3600
_TIMEOUT_SECS: Final = 10.0


@attrs.frozen(kw_only=True)
class Webhook:
    """Where to send notifications: ``url``, for ``tenant_id`` (``None``: every tenant),
    signed with ``secret``."""

    url: str
    secret: str
    tenant_id: str | None = None

    def wants(self, tenant_id: str) -> bool:
        return self.tenant_id is None or self.tenant_id == tenant_id


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Charter-Signature`` of ``body`` sent at ``timestamp`` (Unix seconds)."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def _entry_id(hook: Webhook, event: str, run_id: str, node_id: str, sequence: int) -> str:
    text = "\n".join((hook.url, event, run_id, node_id, str(sequence)))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class Notifier:
    """Finds what waits for a person, writes notifications to the outbox and delivers
    them. `tick` does one round (`scan`, then `deliver`); `run` repeats it until stopped."""

    def __init__(
        self,
        store: ServiceBackend,
        outbox: ServiceStore,
        webhooks: Sequence[Webhook],
        *,
        clock: Clock,
        public_url: str = "",
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.webhooks = tuple(webhooks)
        self.clock = clock
        self.public_url = public_url.rstrip("/")

    def _enqueue(self, hook: Webhook, entry_id: str, body: dict[str, JsonValue]) -> bool:
        now = self.clock.now()
        payload = {"id": entry_id, **body}
        return self.outbox.enqueue(
            OutboxEntry(
                entry_id=entry_id,
                url=hook.url,
                body=json.dumps(payload, ensure_ascii=False, sort_keys=True),
                created_at=now,
                next_attempt_at=now,
            )
        )

    def scan(self) -> int:
        """Write a notification for each open request and each waiting lost outcome not
        notified yet; how many were new."""
        added = 0
        for record in self.store.pending_approvals():
            link = (
                f"{self.public_url}/#approval-{quote(record.execution_id)}-{quote(record.node_id)}"
            )
            text = (
                f"Charter: {record.tool_name} (node {record.node_id}) in run "
                f"{record.execution_id} (tenant {record.tenant_id}) waits for "
                f"{record.approver}'s approval: <{link}|open the page>"
            )
            for hook in self.webhooks:
                if not hook.wants(record.tenant_id):
                    continue
                entry = _entry_id(
                    hook,
                    "tool_approval_required",
                    record.execution_id,
                    record.node_id,
                    record.sequence,
                )
                body: dict[str, JsonValue] = {
                    "event": "tool_approval_required",
                    "tenant_id": record.tenant_id,
                    "run_id": record.execution_id,
                    "node_id": record.node_id,
                    "tool": record.tool_name,
                    "approver": record.approver,
                    "attempt": record.attempt,
                    "request_digest": record.request_digest,
                    "link": link,
                    "text": text,
                }
                added += self._enqueue(hook, entry, body)
        added += self._scan_lost()
        return added

    def _scan_lost(self) -> int:
        added = 0
        for execution, event, _ in lost_outcomes(self.store):
            kind = event.kind
            assert isinstance(kind, OutcomeUnknown)
            hooks = [h for h in self.webhooks if h.wants(execution.tenant_id)]
            run = execution.execution_id
            link = f"{self.public_url}/#lost-{quote(run)}-{quote(kind.node_id)}"
            text = (
                f"Charter: the outcome of node {kind.node_id} in run {run} (tenant "
                f"{execution.tenant_id}) is unknown and waits for a person: "
                f"<{link}|open the page>"
            )
            for hook in hooks:
                body: dict[str, JsonValue] = {
                    "event": "outcome_unknown",
                    "tenant_id": execution.tenant_id,
                    "run_id": run,
                    "node_id": kind.node_id,
                    "attempt": kind.attempt,
                    "reason": kind.reason,
                    "link": link,
                    "text": text,
                }
                entry = _entry_id(hook, "outcome_unknown", run, kind.node_id, event.sequence)
                added += self._enqueue(hook, entry, body)
        return added

    def deliver(self, limit: int = 50) -> tuple[int, int]:
        """Deliver the due notifications; (delivered, failed)."""
        now = self.clock.now()
        done = failed = 0
        for entry in self.outbox.claim_due(now, lease_secs=_LEASE_SECS, limit=limit):
            error = self._post(entry)
            if error is None:
                self.outbox.delivered(entry.entry_id, self.clock.now())
                done += 1
                continue
            delay = min(2 ** min(entry.attempts, 20), _MAX_BACKOFF_SECS)
            retry_at = self.clock.now() + timedelta(seconds=delay)
            self.outbox.failed(entry.entry_id, error=error, retry_at=retry_at)
            _log.warning(
                json.dumps(
                    {
                        "webhook": entry.url,
                        "delivery": entry.entry_id,
                        "error": error,
                        "attempts": entry.attempts,
                        "retry_in_secs": delay,
                    }
                )
            )
            failed += 1
        return done, failed

    def _post(self, entry: OutboxEntry) -> str | None:
        hook = next((h for h in self.webhooks if h.url == entry.url), None)
        if hook is None:
            return "this webhook is no longer configured"
        body = entry.body.encode("utf-8")
        timestamp = int(self.clock.now().timestamp())
        event = json.loads(entry.body).get("event", "")
        request = urllib.request.Request(
            entry.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": "charter-webhooks/1",
                "X-Charter-Event": str(event),
                "X-Charter-Delivery": entry.entry_id,
                "X-Charter-Signature": signature_header(hook.secret, timestamp, body),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=_TIMEOUT_SECS) as response:
                status = int(response.status)
        except urllib.error.HTTPError as error:
            return f"HTTP {error.code}"
        except (urllib.error.URLError, OSError, ValueError) as error:
            return f"{type(error).__name__}: {error}"
        return None if 200 <= status < 300 else f"HTTP {status}"

    def tick(self) -> tuple[int, int, int]:
        """One round: (new notifications, delivered, failed)."""
        added = self.scan()
        done, failed = self.deliver()
        return added, done, failed

    def run(self, stop: threading.Event, interval_secs: float) -> None:
        """`tick` every ``interval_secs`` until ``stop`` is set (errors are logged, and the
        next round tries again)."""
        while not stop.is_set():
            try:
                self.tick()
            except Exception as error:  # noqa: BLE001 - a round that failed is retried
                _log.warning(json.dumps({"webhooks": "round failed", "error": repr(error)}))
            stop.wait(interval_secs)
