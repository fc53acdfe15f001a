"""Webhooks: a request for approval is notified to a receiver on 127.0.0.1, signed, with a
link and a Slack-compatible text; nothing is lost while the receiver fails or across a
restart of the server (the outbox is durable), and nothing is sent twice once delivered."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from charter.adapters.clock import ManualClock
from charter.adapters.service_store import ServiceStore
from charter.core.approvals import ApprovalRefused
from charter.service.backend import ServiceBackend
from charter.service.webhooks import Notifier, Webhook
from tests.service.helpers import held_run, lost_run

SECRET = "s3cret"


class Receiver:
    """A local HTTP receiver that answers ``statuses`` in turn (then 200)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=30)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver([503])
    try:
        yield made
    finally:
        made.close()


def test_a_request_is_notified_once_signed_and_retried_until_delivered(
    backend: tuple[ServiceBackend, ServiceStore], tmp_path: Path, receiver: Receiver
) -> None:
    store, outbox = backend
    held_run(store, tmp_path, "r1")
    clock = ManualClock()
    hooks = [Webhook(url=receiver.url, secret=SECRET, tenant_id="acme")]
    other = [Webhook(url=receiver.url + "/other", secret=SECRET, tenant_id="globex")]
    first = Notifier(store, outbox, [*hooks, *other], clock=clock, public_url="https://c.example")
    assert first.tick() == (1, 0, 1)  # one notification (acme only); the receiver says 503
    (entry,) = outbox.outbox()
    assert entry.attempts == 1
    assert entry.last_error == "HTTP 503"
    assert entry.delivered_at is None
    assert first.tick() == (0, 0, 0)  # already written; not due before its backoff

    clock.advance(60)
    restarted = Notifier(store, outbox, hooks, clock=clock, public_url="https://c.example")
    assert restarted.tick() == (0, 1, 0)  # another server process delivers it
    assert restarted.tick() == (0, 0, 0)
    (entry,) = outbox.outbox()
    assert entry.delivered_at is not None

    assert len(receiver.received) == 2
    headers, body = receiver.received[-1]
    assert headers["X-Charter-Event"] == "tool_approval_required"
    assert headers["X-Charter-Delivery"] == entry.entry_id
    parts = dict(p.split("=", 1) for p in headers["X-Charter-Signature"].split(","))
    expected = hmac.new(
        SECRET.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(parts["v1"], expected)
    payload = json.loads(body)
    assert payload["run_id"] == "r1"
    assert payload["node_id"] == "pay"
    assert payload["approver"] == "finance-lead"
    assert payload["link"] == "https://c.example/#approval-r1-pay"
    assert "finance-lead" in payload["text"]
    assert "<https://c.example/#approval-r1-pay|" in payload["text"]


def test_an_unreachable_receiver_keeps_the_notification(
    backend: tuple[ServiceBackend, ServiceStore], tmp_path: Path
) -> None:
    store, outbox = backend
    held_run(store, tmp_path, "r1")
    clock = ManualClock()
    hooks = [Webhook(url="http://127.0.0.1:9/down", secret=SECRET)]  # discard port: refused
    notifier = Notifier(store, outbox, hooks, clock=clock)
    for _ in range(3):
        _, delivered, failed = notifier.tick()
        assert (delivered, failed) == (0, 1)
        clock.advance(3600)
    (entry,) = outbox.outbox()
    assert entry.attempts == 3
    assert entry.delivered_at is None
    assert entry.last_error


def test_a_lost_outcome_is_notified_signed_and_not_again_once_resolved(
    backend: tuple[ServiceBackend, ServiceStore], tmp_path: Path
) -> None:
    store, outbox = backend
    lost_run(store, tmp_path, "l1")
    receiver = Receiver([])
    try:
        clock = ManualClock()
        hooks = [
            Webhook(url=receiver.url, secret=SECRET, tenant_id="acme"),
            Webhook(url=receiver.url + "/other", secret=SECRET, tenant_id="globex"),
        ]
        notifier = Notifier(store, outbox, hooks, clock=clock, public_url="https://c.example")
        assert notifier.tick() == (1, 1, 0)  # one notification (acme's hook), delivered
        assert notifier.tick() == (0, 0, 0)  # never written twice
        (entry,) = outbox.outbox()
        assert entry.delivered_at is not None
        ((headers, body),) = receiver.received
        assert headers["X-Charter-Event"] == "outcome_unknown"
        assert headers["X-Charter-Delivery"] == entry.entry_id
        parts = dict(p.split("=", 1) for p in headers["X-Charter-Signature"].split(","))
        expected = hmac.new(
            SECRET.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256
        ).hexdigest()
        assert hmac.compare_digest(parts["v1"], expected)
        payload = json.loads(body)
        assert payload["event"] == "outcome_unknown"
        assert (payload["run_id"], payload["node_id"], payload["tenant_id"]) == (
            "l1",
            "post",
            "acme",
        )
        assert payload["attempt"] == 1  # the second attempt found the first one lost
        assert payload["reason"]
        assert payload["link"] == "https://c.example/#lost-l1-post"
        assert "<https://c.example/#lost-l1-post|" in payload["text"]
        # Resolved: nothing more to tell.
        answer = store.resolve_outcome("l1", "post", user_id="ops", resolution="retry")
        assert not isinstance(answer, ApprovalRefused)
        assert notifier.tick() == (0, 0, 0)
    finally:
        receiver.close()
