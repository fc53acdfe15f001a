"""Signed answers: the statement, the key files and the checks (charter.core.signing,
charter.adapters.keys)."""

from __future__ import annotations

import stat
from pathlib import Path

import attrs
import pytest

from charter.adapters.keys import load_key, new_key, sign, verify
from charter.core.errors import InvalidInput
from charter.core.signing import (
    Signature,
    Statement,
    check_signed_answer,
    decode_key,
)

STATEMENT = Statement(
    purpose="approval",
    tenant_id="acme",
    execution_id="refund-1",
    node_id="issue_refund",
    attempt=0,
    request_digest="d" * 64,
    decision="approved",
    user_id="finance-lead",
    comment="known customer",
    decided_at="2026-12-07T10:00:00.000000Z",
    policy_digest="p" * 64,
)


@pytest.fixture
def key_file(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "finance-lead.key"
    return path, new_key(path)


def test_a_new_key_is_private_to_its_owner_and_never_overwritten(
    key_file: tuple[Path, str],
) -> None:
    path, public = key_file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert public.startswith("ed25519:")
    assert len(decode_key(public)) == 32
    with pytest.raises(InvalidInput, match="already exists"):
        new_key(path)
    assert load_key(path).public == public


def test_a_signature_verifies_only_over_the_exact_statement(key_file: tuple[Path, str]) -> None:
    path, public = key_file
    signature = sign(load_key(path), STATEMENT)
    keys = {"finance-lead": [public]}
    assert check_signed_answer(STATEMENT, signature, keys, verify=verify) is None
    for change in (
        {"decision": "rejected"},
        {"request_digest": "e" * 64},
        {"attempt": 1},
        {"comment": "edited"},
        {"execution_id": "refund-2"},
        {"policy_digest": "q" * 64},
    ):
        other = attrs.evolve(STATEMENT, **change)
        reason = check_signed_answer(other, signature, keys, verify=verify)
        assert reason is not None
        assert "does not match" in reason


def test_an_answer_without_the_named_key_is_refused(
    key_file: tuple[Path, str], tmp_path: Path
) -> None:
    _, public = key_file
    keys = {"finance-lead": [public]}
    unsigned = check_signed_answer(STATEMENT, None, keys, verify=verify)
    assert unsigned is not None
    assert "requires a signature" in unsigned
    intruder = tmp_path / "intruder.key"
    new_key(intruder)
    forged = check_signed_answer(
        STATEMENT, sign(load_key(intruder), STATEMENT), keys, verify=verify
    )
    assert forged is not None
    assert "not one of 'finance-lead'" in forged


def test_without_keys_no_signature_is_required_but_a_bad_one_is_still_refused() -> None:
    assert check_signed_answer(STATEMENT, None, {}, verify=verify) is None
    junk = Signature(key="ed25519:" + "A" * 43 + "=", value="bm90IGEgc2lnbmF0dXJl")
    assert check_signed_answer(STATEMENT, junk, {}, verify=verify) is not None


@pytest.mark.parametrize(
    "text",
    ["rsa:AAAA", "ed25519:not base64!", "ed25519:AAAA", 42],
    ids=["other-scheme", "bad-base64", "short", "not-text"],
)
def test_a_malformed_public_key_is_refused_naming_the_field(text: object) -> None:
    with pytest.raises(InvalidInput) as refused:
        decode_key(text, "approvers.finance-lead[0]")
    assert refused.value.where == "approvers.finance-lead[0]"


def test_a_file_that_is_not_a_key_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(InvalidInput) as refused:
        load_key(path)
    assert refused.value.where == str(path)
