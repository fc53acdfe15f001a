"""The documentation's examples run, and print what the documentation says they print."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"

_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def _blocks(page: str) -> list[str]:
    return _BLOCK.findall((DOCS / page).read_text(encoding="utf-8"))


def test_embedding_guide_runs_and_prints_what_it_claims() -> None:
    blocks = _blocks("embedding.md")
    assert len(blocks) >= 6
    namespace: dict[str, object] = {"__name__": "embedding_example"}
    for number, source in enumerate(blocks, start=1):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(source, f"docs/embedding.md block {number}", "exec"), namespace)
        printed = " ".join(out.getvalue().split())
        # Every `print(...)  # expected` comment (and its continuation lines) must be printed.
        for expected in _claims(source):
            assert expected in printed, f"block {number}: {expected!r} not in {printed!r}"


def _claims(source: str) -> list[str]:
    """What each ``print(...)`` claims to print: its trailing comment, continued by the
    comment-only lines right after it."""
    claims: list[str] = []
    lines = source.splitlines()
    for index, line in enumerate(lines):
        if not line.lstrip().startswith("print("):
            continue
        parts = [line.split(")  #", 1)[1].strip()] if ")  #" in line else []
        for follow in lines[index + 1 :]:
            stripped = follow.strip()
            if not stripped.startswith("#"):
                break
            parts.append(stripped.lstrip("#").strip())
        if parts:
            claims.append(" ".join(" ".join(parts).split()))
    return claims


@pytest.mark.parametrize("page", ["embedding.md"])
def test_every_claim_is_checked(page: str) -> None:
    # The checker above must find the claims it is meant to check.
    claims = [c for block in _blocks(page) for c in _claims(block)]
    assert "circuit breaker tripped: 3 consecutive errors >= 3" in claims
    assert len(claims) >= 6


def test_pool_guide_runs_and_prints_what_it_claims() -> None:
    blocks = _blocks("pool.md")
    assert blocks
    for number, source in enumerate(blocks, start=1):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(source, f"docs/pool.md block {number}", "exec"), {"__name__": "pool"})
        printed = " ".join(out.getvalue().split())
        claims = _claims(source)
        assert claims
        for expected in claims:
            assert expected in printed, f"block {number}: {expected!r} not in {printed!r}"
