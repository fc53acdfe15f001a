"""Ed25519 keys for signed answers, on the `cryptography` library (nothing hand-written).

* `new_key(path)` writes a new private key to ``path`` — PKCS#8 PEM, readable by its owner
  only (mode 0600), never overwriting an existing file — and returns the public key as one
  line ``ed25519:<base64>``;
* `load_key(path)` reads a private key file back (a clear `InvalidInput` naming the file
  otherwise);
* `sign(key, statement)` signs a `charter.core.signing.Statement`;
* `verify(public, message, signature)` is the `charter.core.signing.Verifier` the core's
  checks are given.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from charter.core.errors import InvalidInput
from charter.core.signing import KEY_PREFIX, Signature, Statement

__all__ = [
    "PrivateKey",
    "load_key",
    "new_key",
    "public_key_text",
    "sign",
    "sign_bytes",
    "verify",
]


@attrs.frozen
class PrivateKey:
    """A loaded private key and the file it came from."""

    path: Path
    key: Ed25519PrivateKey = attrs.field(repr=False)

    @property
    def public(self) -> str:
        return public_key_text(self.key.public_key())


def public_key_text(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return KEY_PREFIX + base64.b64encode(raw).decode("ascii")


def new_key(path: str | Path) -> str:
    """Create a private key file at ``path`` (0600; `InvalidInput` if it exists) and return
    its public key line."""
    target = Path(path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        # O_EXCL: never overwrite; the mode is set at creation, so the key is never readable
        # by others, not even for a moment.
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InvalidInput(
            str(target), "a file already exists there; a key is never overwritten"
        ) from None
    except OSError as error:
        raise InvalidInput(str(target), f"cannot create the key file: {error.strerror}") from None
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    return public_key_text(key.public_key())


def load_key(path: str | Path) -> PrivateKey:
    """A private key written by `new_key` (PKCS#8 PEM, Ed25519)."""
    source = Path(path)
    try:
        data = source.read_bytes()
    except OSError as error:
        raise InvalidInput(str(source), f"cannot read the key file: {error.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise InvalidInput(
            str(source), "not an unencrypted PEM private key (make one with `charter keys new`)"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidInput(str(source), "not an Ed25519 private key")
    return PrivateKey(source, key)


def sign(key: PrivateKey, statement: Statement) -> Signature:
    """``key``'s signature over ``statement``'s canonical bytes."""
    value = key.key.sign(statement.message())
    return Signature(key=key.public, value=base64.b64encode(value).decode("ascii"))


def sign_bytes(key: PrivateKey, message: bytes) -> Signature:
    """``key``'s signature over raw bytes (an auditor's anchor)."""
    value = key.key.sign(message)
    return Signature(key=key.public, value=base64.b64encode(value).decode("ascii"))


def verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is ``public``'s Ed25519 signature over ``message``."""
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
