"""`charter check` through its real entry point: output, exit codes and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from charter.cli import EXIT_APPROVAL, EXIT_BLOCKED, EXIT_OK, EXIT_USAGE, main

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "policy.yaml"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed console script, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "charter.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )


def test_check_prints_decision_rule_and_scope_for_a_block() -> None:
    done = _run("check", str(EXAMPLE), "--tool", "db.drop_prod")
    assert done.returncode == EXIT_BLOCKED
    assert done.stdout.splitlines() == [
        "tool 'db.drop_prod': BLOCK",
        "  reason: tool 'db.drop_prod' matches blocked pattern 'db.drop_*'",
        "  rule:   blocked_tools 'db.drop_*'",
        "  scope:  tenant",
        "combining: most-specific (tenant: most-specific)",
    ]
    assert done.stderr == ""


def test_check_says_which_combining_applies_and_what_a_final_tenant_overruled(
    tmp_path: Path,
) -> None:
    policy = tmp_path / "layers.yaml"
    policy.write_text(
        "tenant: {blocked_tools: ['db.drop_*']}\n"
        "workflow: {require_approval_for: ['db.drop_*'], approver: '*'}\n"
    )
    done = _run("check", str(policy), "--tool", "db.drop_prod")
    assert done.returncode == EXIT_BLOCKED
    lines = done.stdout.splitlines()
    assert "  scope:  tenant" in lines
    assert lines[-2] == (
        "  overruled: the workflow require_approval_for 'db.drop_*' would have made it "
        "REQUIRE APPROVAL (approver: *); the final tenant rule holds"
    )
    assert lines[-1] == "combining: most-specific (tenant: final)"


def test_check_node_approval_overrides_tenant_block_by_default() -> None:
    done = _run("check", str(EXAMPLE), "--tool", "db.drop_staging")
    assert done.returncode == EXIT_APPROVAL
    assert "scope:  node" in done.stdout


def test_check_allows_an_unmatched_tool() -> None:
    done = _run("check", str(EXAMPLE), "--tool", "search")
    assert done.returncode == EXIT_OK
    assert done.stdout.startswith("tool 'search': ALLOW")


def test_check_json_output_is_the_codec_shape(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", str(EXAMPLE), "--tool", "payments.refund", "--json"])
    assert code == EXIT_APPROVAL
    payload = json.loads(capsys.readouterr().out)
    verdict = payload["results"][0]["verdict"]
    assert verdict["decision"] == {"type": "require_approval", "approver": "human"}
    assert (verdict["scope"], verdict["rule"], verdict["pattern"]) == (
        "workflow",
        "require_approval_for",
        "payments.*",
    )


def test_check_tool_and_model_exit_with_the_most_severe(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", str(EXAMPLE), "--tool", "search", "--model", "gpt-4"])
    assert code == EXIT_BLOCKED
    assert "model 'gpt-4': BLOCK" in capsys.readouterr().out


def test_check_resolved_model_is_what_the_allowlist_sees(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(
        ["check", str(EXAMPLE), "--model", "fast", "--resolved-model", "anthropic/claude-x"]
    )
    assert code == EXIT_OK
    capsys.readouterr()


def test_check_bare_set_takes_the_given_scope(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "bare.json"
    policy.write_text('{"blocked_tools": ["rm_*"]}')
    code = main(["check", str(policy), "--tool", "rm_rf", "--scope", "tenant"])
    assert code == EXIT_BLOCKED
    assert "scope:  tenant" in capsys.readouterr().out


def test_deny_overrides_in_the_file_changes_the_decision(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "strict.yaml"
    policy.write_text(
        "combining: deny-overrides\n"
        "tenant: {blocked_tools: ['db.*']}\n"
        "node: {require_approval_for: ['db.read']}\n"
    )
    assert main(["check", str(policy), "--tool", "db.read"]) == EXIT_BLOCKED
    capsys.readouterr()


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ("workflow:\n  blocked_tools: [1]\n", ".yaml",
         "workflow.blocked_tools[0]: expected a string pattern, got int 1"),
        ("workflow:\n  blocked_tools: [a]\n  blocked_tools: [b]\n", ".yaml",
         ":3:3: invalid YAML: duplicate key 'blocked_tools'"),
        ("tenant: {blocked_tools: a}\n", ".yaml",
         "tenant.blocked_tools: expected a list of string patterns, got str 'a'"),
        ("teams: {}\n", ".yaml", "teams: unknown key"),
        ("combining: first-match\n", ".yaml", "combining: expected one of most-specific"),
        ('{"workflow": {', ".json", ":1:15: invalid JSON"),
        ("- a\n- b\n", ".yaml", "not a policy: expected a mapping of keys, got a list (2 items)"),
    ],
    ids=["non-string", "duplicate-key", "bare-string", "unknown-scope", "unknown-mode",
         "broken-json", "not-a-mapping"],
)  # fmt: skip
def test_bad_policy_files_give_one_line_naming_file_and_field(
    tmp_path: Path, content: str, suffix: str, message: str
) -> None:
    policy = tmp_path / f"policy{suffix}"
    policy.write_text(content)
    done = _run("check", str(policy), "--tool", "x")
    assert done.returncode == EXIT_USAGE
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"charter: error: {policy}")
    assert message in lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["check", "missing.yaml", "--tool", "x"], "missing.yaml: no such file"),
        (["check", "EXAMPLE"], "give --tool T and/or --model M"),
        (["check", "EXAMPLE", "--tool", "x", "--resolved-model", "r"], "needs --model"),
        (["check", "EXAMPLE", "--tool", "x", "--scope", "galaxy"], "invalid choice: 'galaxy'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "the following arguments are required: COMMAND"),
    ],
    ids=["missing-file", "no-subject", "resolved-without-model", "bad-scope",
         "unknown-command", "no-command"],
)  # fmt: skip
def test_usage_errors_exit_2_with_one_line(args: list[str], message: str) -> None:
    args = [str(EXAMPLE) if a == "EXAMPLE" else a for a in args]
    done = _run(*args)
    assert done.returncode == EXIT_USAGE
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_every_command_has_help() -> None:
    for args in (["--help"], ["check", "--help"]):
        done = _run(*args)
        assert done.returncode == EXIT_OK
        assert "usage: charter" in done.stdout
