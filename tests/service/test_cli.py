"""``charter tokens new | list | revoke`` and ``charter serve``'s options."""

from __future__ import annotations

from pathlib import Path

import pytest

from charter.adapters.service_store import SqliteServiceStore
from charter.cli import main
from charter.service.tokens import token_digest


def test_tokens_new_list_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "charter.db")
    assert main(["tokens", "new", "--user", "finance-lead", "--expires", "7d", "--db", db]) == 0
    text, note = capsys.readouterr().out.splitlines()
    assert text.startswith("charter_")
    assert "shown once" in note
    store = SqliteServiceStore(Path(db))
    try:
        (record,) = store.list_tokens()
    finally:
        store.close()
    assert record.digest == token_digest(text)
    assert text not in Path(db).read_bytes().decode("latin-1")
    assert main(["tokens", "list", "--db", db]) == 0
    listed = capsys.readouterr().out
    assert record.token_id in listed
    assert "active until" in listed
    assert text not in listed
    assert main(["tokens", "revoke", record.token_id, "--db", db]) == 0
    assert "revoked" in capsys.readouterr().out
    assert main(["tokens", "list", "--db", db]) == 0
    assert "revoked" in capsys.readouterr().out
    assert main(["tokens", "revoke", "nope", "--db", db]) == 2
    assert main(["tokens", "new", "--user", "x", "--expires", "soon", "--db", db]) == 2
    assert "--expires" in capsys.readouterr().err
    assert main(["tokens", "new", "--user", "anonymous", "--db", db]) == 2


def test_serve_refuses_a_webhook_without_a_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CHARTER_WEBHOOK_SECRET", raising=False)
    db = str(tmp_path / "charter.db")
    assert main(["serve", "--db", db, "--webhook", "http://127.0.0.1:9/x"]) == 2
    assert "--webhook-secret" in capsys.readouterr().err
    code = main(["serve", "--db", db, "--webhook", "ftp://x", "--webhook-secret", "s"])
    assert code == 2
