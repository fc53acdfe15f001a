"""``charter tokens new | list | revoke``: the API tokens of ``charter serve``
(docs/service.md). A token is printed once, when it is made; the database keeps only its
SHA-256 digest."""

from __future__ import annotations

import argparse
from typing import Any

from charter.adapters.service_store import ServiceStore, open_service_store
from charter.cli.common import EXIT_OK, db_option, open_db
from charter.core.errors import InvalidInput

__all__ = ["add_tokens"]


def add_tokens(commands: Any) -> None:
    tokens = commands.add_parser(
        "tokens",
        help="API tokens for charter serve",
        description="Make, list and revoke the tokens `charter serve` accepts.",
    )
    verbs = tokens.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    made = verbs.add_parser(
        "new",
        help="make a token for a user and print it (once)",
        description=(
            "Make a token that acts as USER (the approver it answers as) and print it on one "
            "line. It is shown only now: the database keeps its SHA-256 digest."
        ),
    )
    made.add_argument("--user", required=True, metavar="USER")
    made.add_argument(
        "--expires", metavar="DURATION", help="e.g. 30m, 12h, 7d, 2w (default: never)"
    )
    made.add_argument(
        "--tenant",
        metavar="TENANT",
        help="scope the token to this tenant's runs, approvals and decisions (default: all)",
    )
    db_option(made)
    made.set_defaults(handler=_new)
    listed = verbs.add_parser("list", help="list tokens (never their text)")
    db_option(listed)
    listed.set_defaults(handler=_list)
    revoked = verbs.add_parser("revoke", help="revoke a token by its id")
    revoked.add_argument("token_id", metavar="ID")
    db_option(revoked)
    revoked.set_defaults(handler=_revoke)


def _open(args: argparse.Namespace) -> tuple[Any, ServiceStore]:
    store = open_db(args)
    try:
        return store, open_service_store(args.db)
    except BaseException:
        store.close()
        raise


def _new(args: argparse.Namespace) -> int:
    from charter.service.tokens import issue_token, parse_duration

    expires = parse_duration(args.expires) if args.expires else None
    store, tokens = _open(args)
    try:
        if args.tenant is not None and store.get_tenant(args.tenant) is None:
            raise InvalidInput("--tenant", f"no tenant {args.tenant!r}")
        text, record = issue_token(
            tokens, args.user, now=store.clock.now(), expires_in=expires, tenant_id=args.tenant
        )
    finally:
        tokens.close()
        store.close()
    print(text)
    until = f", expires {record.expires_at.isoformat()}" if record.expires_at else ""
    scope = f" of tenant {record.tenant_id}" if record.tenant_id is not None else ""
    print(f"token {record.token_id} for {record.user_id}{scope}{until} (shown once)", flush=True)
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    store, tokens = _open(args)
    try:
        records = tokens.list_tokens()
        now = store.clock.now()
    finally:
        tokens.close()
        store.close()
    for record in records:
        if record.revoked_at is not None:
            state = f"revoked {record.revoked_at.isoformat()}"
        elif record.expires_at is not None and record.expires_at <= now:
            state = f"expired {record.expires_at.isoformat()}"
        elif record.expires_at is not None:
            state = f"active until {record.expires_at.isoformat()}"
        else:
            state = "active"
        tenant = record.tenant_id if record.tenant_id is not None else "*"
        print(
            f"{record.token_id}  {record.user_id}  {tenant}  "
            f"{record.created_at.isoformat()}  {state}"
        )
    return EXIT_OK


def _revoke(args: argparse.Namespace) -> int:
    store, tokens = _open(args)
    try:
        record = tokens.revoke_token(args.token_id, store.clock.now())
    finally:
        tokens.close()
        store.close()
    if record is None:
        raise InvalidInput("ID", f"no token {args.token_id!r}")
    print(f"token {record.token_id} of {record.user_id} revoked")
    return EXIT_OK
