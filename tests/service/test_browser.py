"""The approvers' page in a real headless Chromium (Debian's ``chromium``, driven by
Playwright; CI installs it): sign in with a token, see the pending approval with its
arguments, approve it, watch the run complete; an argument holding ``<script>`` renders as
text; the pending list updates by itself. With ``CHARTER_SCREENSHOTS=docs`` the
screenshots are written to docs/service-*.png (otherwise to the test's directory)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from charter.adapters.service_store import ServiceStore
from charter.core.events import OutcomeResolved
from charter.service import create_app
from charter.service.backend import ServiceBackend
from tests.service.helpers import ROOT, finish, held_run, lost_run, token
from tests.service.server import serving

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
#: How long one page action may wait (ms): a bound, not a measurement.
WAIT_MS = 30_000

# Skipped without chromium on a developer's machine; CI (CI=true) installs it, so there a
# missing browser fails instead of hiding the tests.
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and os.environ.get("CI") != "true",
    reason="needs Debian's chromium (apt-get install chromium)",
)


@pytest.fixture
def browser_context(tmp_path: Path) -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
            viewport={"width": 430, "height": 1100},
        )
        context.set_default_timeout(WAIT_MS)
        try:
            yield context
        finally:
            context.close()


def _shot(page: Any, tmp_path: Path, name: str) -> None:
    folder = ROOT / "docs" if os.environ.get("CHARTER_SCREENSHOTS") == "docs" else tmp_path
    page.screenshot(path=str(folder / f"service-{name}.png"), full_page=True)


def test_sign_in_see_the_call_approve_and_watch_the_run_complete(
    memory: tuple[ServiceBackend, ServiceStore], tmp_path: Path, browser_context: Any
) -> None:
    store, tokens = memory
    hostile = '{to: "<script>window.pwned = 1</script>", amount: 120, note: "<b>bold</b>"}'
    held_run(store, tmp_path, "payout-1", args=hostile)
    text = token(tokens, store, "finance-lead")
    app = create_app(store, tokens, poll_secs=0.2)
    with serving(app) as base:
        page = browser_context.new_page()
        page.goto(base + "/")
        page.fill("#token", "charter_wrong_token")
        page.click("button[type=submit]")
        assert "unknown, revoked or expired" in page.inner_text("main")
        page.fill("#token", text)
        page.click("button[type=submit]")
        card = page.locator("section.approval[data-run='payout-1']")
        card.wait_for()
        arguments = card.locator("pre.arguments").inner_text()
        assert '"to": "<script>window.pwned = 1</script>"' in arguments
        assert '"note": "<b>bold</b>"' in arguments
        assert page.evaluate("window.pwned") is None
        assert card.locator("pre.arguments b").count() == 0
        details = card.inner_text()
        for shown in ("payments.send", "payout", "finance-lead", "require_approval_for"):
            assert shown in details
        cookies = browser_context.cookies()
        (session,) = [c for c in cookies if c["name"] == "charter_session"]
        assert session["httpOnly"]
        assert session["sameSite"] == "Strict"
        assert page.evaluate("document.cookie") == ""
        _shot(page, tmp_path, "approvals")

        # A request raised while the page is open appears without a reload.
        held_run(store, tmp_path, "payout-2")
        page.locator("section.approval[data-run='payout-2']").wait_for()

        card.locator("textarea").fill("known customer")
        card.locator("button.approve").click()
        page.locator("#message").wait_for()
        assert "Recorded" in page.inner_text("#message")
        assert page.locator("section.approval[data-run='payout-1']").count() == 0

        assert finish(store, "payout-1") == "completed"
        page.goto(base + "/runs/payout-1")
        assert page.inner_text("#run-status") == "completed"
        states = page.locator("svg.graph g.node")
        assert states.count() == 2
        assert page.locator("g.node[data-node='pay']").get_attribute("data-state") == "completed"
        timeline = page.inner_text("main")
        assert "finance-lead" in timeline
        _shot(page, tmp_path, "run")
        page.goto(base + "/runs")
        assert "payout-2" in page.inner_text("main")


def test_an_approval_needs_the_csrf_token(
    memory: tuple[ServiceBackend, ServiceStore], tmp_path: Path, browser_context: Any
) -> None:
    store, tokens = memory
    held_run(store, tmp_path, "payout-1")
    app = create_app(store, tokens)
    with serving(app) as base:
        page = browser_context.new_page()
        page.goto(base + "/")
        page.fill("#token", token(tokens, store, "finance-lead"))
        page.click("button[type=submit]")
        page.locator("section.approval").wait_for()
        page.evaluate("document.querySelector('input[name=csrf]').value = 'forged'")
        page.locator("button.approve").click()
        assert "CSRF" in page.inner_text("main")
    assert store.pending_approvals()  # nothing recorded


def test_resolve_a_lost_outcome_on_the_page(
    memory: tuple[ServiceBackend, ServiceStore], tmp_path: Path, browser_context: Any
) -> None:
    store, tokens = memory
    lost_run(
        store, tmp_path, "ledger-1", args='{amount: 5, memo: "<script>window.pwned = 1</script>"}'
    )
    app = create_app(store, tokens, poll_secs=0.2)
    with serving(app) as base:
        page = browser_context.new_page()
        page.goto(base + "/")
        page.fill("#token", token(tokens, store, "ops"))
        page.click("button[type=submit]")
        card = page.locator("section.lost[data-run='ledger-1']")
        card.wait_for()
        assert (
            '"memo": "<script>window.pwned = 1</script>"'
            in card.locator("pre.arguments").inner_text()
        )
        assert page.evaluate("window.pwned") is None
        assert "ledger.post" in card.inner_text()
        _shot(page, tmp_path, "lost-outcome")
        card.locator("textarea[name=output]").fill('{"posted": true}')
        card.locator("textarea[name=comment]").fill("the bank shows it")
        card.locator("button[value=succeeded]").click()
        page.locator("#message").wait_for()
        assert "Recorded" in page.inner_text("#message")
        assert page.locator("section.lost[data-run='ledger-1']").count() == 0
    assert finish(store, "ledger-1") == "completed"
    (resolved,) = [
        e.kind for e in store.read_events("ledger-1") if isinstance(e.kind, OutcomeResolved)
    ]
    assert resolved.user_id == "ops"
    assert resolved.output == {"posted": True}
