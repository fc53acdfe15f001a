"""``charter serve``: the HTTP API, the approvers' page and webhooks (docs/service.md),
on uvicorn. Needs ``pip install 'charter[serve]'``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from charter.adapters.service_store import open_service_store
from charter.cli.common import EXIT_OK, db_option, open_db
from charter.core.errors import InvalidInput

__all__ = ["add_serve"]

_SECRET_VARIABLE = "CHARTER_WEBHOOK_SECRET"


def add_serve(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve the HTTP API, the approvers' page and webhooks",
        description=(
            "Serve the /v1 API (Bearer tokens: charter tokens new), the approvers' page at / "
            "and webhooks, on the same store as the workers. Put TLS in front of it."
        ),
    )
    db_option(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument(
        "--public-url", metavar="URL", default="", help="how people reach the page (for links)"
    )
    serve.add_argument(
        "--webhook",
        metavar="[TENANT=]URL",
        action="append",
        default=[],
        help="POST notifications to URL (for TENANT only, when given); repeatable",
    )
    serve.add_argument(
        "--webhook-secret",
        metavar="SECRET",
        default=None,
        help=f"the HMAC-SHA256 key of the webhooks' signatures (default: ${_SECRET_VARIABLE})",
    )
    serve.add_argument(
        "--trusted-proxy",
        metavar="ADDRESS|NETWORK",
        action="append",
        default=[],
        help="believe X-Forwarded-For from this proxy (repeatable)",
    )
    serve.add_argument(
        "--secure-cookies", action="store_true", help="mark the page's cookie Secure (HTTPS)"
    )
    serve.add_argument("--quiet", action="store_true", help="no access log")
    serve.set_defaults(handler=_serve)


def _webhooks(args: argparse.Namespace) -> list[Any]:
    from charter.service.webhooks import Webhook

    if not args.webhook:
        return []
    secret = args.webhook_secret or os.environ.get(_SECRET_VARIABLE)
    if not secret:
        raise InvalidInput("--webhook-secret", f"required with --webhook (or ${_SECRET_VARIABLE})")
    hooks = []
    for spec in args.webhook:
        tenant, _, url = spec.rpartition("=") if "=" in spec.split("://", 1)[0] else ("", "", spec)
        if not url.startswith(("http://", "https://")):
            raise InvalidInput("--webhook", f"expected [TENANT=]http(s)://…, got {spec!r}")
        hooks.append(Webhook(url=url, secret=secret, tenant_id=tenant or None))
    return hooks


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from charter.service import create_app
    except ImportError as error:
        raise InvalidInput(
            "serve", f"needs the service's packages: pip install 'charter[serve]' ({error})"
        ) from None
    hooks = _webhooks(args)
    store = open_db(args)
    tokens = open_service_store(args.db)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("charter.service.access", "charter.service.webhooks"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING if args.quiet and name.endswith("access") else logging.INFO)
        logger.propagate = False
    app = create_app(
        store,
        tokens,
        public_url=args.public_url or f"http://{args.host}:{args.port}",
        secure_cookies=args.secure_cookies,
        trusted_proxies=args.trusted_proxy,
        webhooks=hooks,
    )
    print(f"charter serve: http://{args.host}:{args.port}/ (Ctrl-C to stop)", flush=True)
    try:
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            access_log=False,
            log_level="warning",
            proxy_headers=False,
        )
    finally:
        tokens.close()
        store.close()
    return EXIT_OK
