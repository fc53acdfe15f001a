"""Signed answers: what an approver's signature covers, and how it is checked.

A tenant that names its approvers' public keys (``approvers: {finance-lead:
["ed25519:…"]}``) is never satisfied by a typed name: every answer to a request whose
approver has keys must carry an Ed25519 signature, by one of those keys, over the canonical
`Statement` of exactly what is answered — the tenant, the run, the node, the attempt, the
request digest (the call's arguments), the decision, the approver, the comment, the time and
the digest of the tenant policy in force (docs/semantics.md §5).

The statement's bytes are canonical JSON (`charter.core.canonical`), so any implementation
recomputes them exactly. Verifying a signature is pure arithmetic, but the core imports no
cryptography library: the caller passes a `Verifier` (`charter.adapters.keys.verify`), the
same port every check here takes, so the core keeps its import rules and stays testable
with any verifier.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping, Sequence
from typing import Final, TypeAlias

import attrs

from charter.core.canonical import canonical_json
from charter.core.errors import InvalidInput

__all__ = [
    "KEY_PREFIX",
    "STATEMENT_FORMAT",
    "Signature",
    "Statement",
    "Verifier",
    "check_signed_answer",
    "decode_key",
    "key_id",
]

#: The prefix of a public key as Charter writes it: ``ed25519:<standard base64 of 32 bytes>``.
KEY_PREFIX: Final = "ed25519:"
#: The ``format`` of a signed statement (what its bytes start with, so a signature over one
#: kind of statement can never be replayed as another).
STATEMENT_FORMAT: Final = "charter-statement/1"

#: ``verify(public_key_bytes, message, signature_bytes) -> bool``: an Ed25519 check.
Verifier: TypeAlias = Callable[[bytes, bytes, bytes], bool]


@attrs.frozen(kw_only=True)
class Statement:
    """Exactly what one answer says. ``purpose`` is ``approval`` (a decision on a request
    for approval) or ``resolution`` (a person's answer about an outcome that was lost)."""

    purpose: str
    tenant_id: str
    execution_id: str
    node_id: str
    attempt: int | None
    request_digest: str | None
    decision: str
    user_id: str
    comment: str | None
    decided_at: str
    policy_digest: str | None

    def to_json(self) -> dict[str, object]:
        return {
            "format": STATEMENT_FORMAT,
            "purpose": self.purpose,
            "tenant_id": self.tenant_id,
            "execution_id": self.execution_id,
            "node_id": self.node_id,
            "attempt": self.attempt,
            "request_digest": self.request_digest,
            "decision": self.decision,
            "user_id": self.user_id,
            "comment": self.comment,
            "decided_at": self.decided_at,
            "policy_digest": self.policy_digest,
        }

    def message(self) -> bytes:
        """The bytes that are signed: the canonical JSON of `to_json`."""
        return canonical_json(self.to_json()).encode("utf-8")


@attrs.frozen(kw_only=True)
class Signature:
    """A signature over a statement: the signer's public key (``ed25519:…``) and the
    signature bytes, base64."""

    key: str
    value: str


def decode_key(key: object, where: str = "key") -> bytes:
    """The 32 bytes of an ``ed25519:<base64>`` public key; `InvalidInput` naming ``where``
    otherwise."""
    if not isinstance(key, str) or not key.startswith(KEY_PREFIX):
        raise InvalidInput(where, f"expected a public key 'ed25519:<base64>', got {key!r}")
    try:
        raw = base64.b64decode(key[len(KEY_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(where, f"not valid base64 after 'ed25519:': {key!r}") from None
    if len(raw) != 32:
        raise InvalidInput(where, f"an Ed25519 public key is 32 bytes, this one is {len(raw)}")
    return raw


def key_id(key: str) -> str:
    """A short, stable name for a public key (its first 16 base64 characters)."""
    return key[len(KEY_PREFIX) : len(KEY_PREFIX) + 16]


def _decode_signature(value: str) -> bytes | None:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 64 else None


def check_signed_answer(
    statement: Statement,
    signature: Signature | None,
    approver_keys: Mapping[str, Sequence[str]],
    *,
    verify: Verifier,
) -> str | None:
    """Why an answer must be refused, or ``None`` when it may be recorded.

    When the tenant names keys for the answering approver (``statement.user_id``), the
    answer must carry a signature by one of them over ``statement``'s exact bytes. When it
    names none for that approver, a signature is not required (and one given is still
    checked against the key it names, so a bad one is never recorded)."""
    keys = tuple(approver_keys.get(statement.user_id, ()))
    if signature is None:
        if keys:
            return (
                f"the tenant requires a signature from {statement.user_id!r}'s key "
                "(answer with --key FILE)"
            )
        return None
    if keys and signature.key not in keys:
        return (
            f"the key {key_id(signature.key)}… is not one of {statement.user_id!r}'s keys "
            "named by the tenant"
        )
    try:
        public = decode_key(signature.key, "signature.key")
    except InvalidInput as error:
        return error.problem
    raw = _decode_signature(signature.value)
    if raw is None or not verify(public, statement.message(), raw):
        return "the signature does not match this answer (it was made over another statement)"
    return None
