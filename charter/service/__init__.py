"""`charter serve`: an authenticated HTTP API, a page for approvers and webhooks, on the
same store as the workers (docs/service.md). Needs ``pip install 'charter[serve]'``.

Only `charter.cli` imports this package; it imports the adapters, the core, the
composition root and the worker, and prints nothing (it logs)."""

from __future__ import annotations

from charter.service.app import create_app

__all__ = ["create_app"]
