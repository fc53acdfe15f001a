"""The conformance corpus (docs/conformance/): fresh, recomputable from its JSON alone, and
checked by a check that can fail."""

from __future__ import annotations

import copy
import difflib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given

from charter.adapters.codec import parse_json
from charter.core.canonical import canonical_json
from charter.core.gate import GateRequest, gate_node
from charter.testing import conformance
from charter.testing.conformance import (
    CORPUS_FILES,
    ConformanceError,
    check_corpus,
    corpus_text,
    decode_events,
    decode_gate_request,
    decode_settle_request,
    encode_event,
    encode_gate_request,
    encode_gate_result,
    encode_settle_request,
    read_corpus_file,
    run_case,
)
from charter.testing.strategies import gate_requests

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "docs" / "conformance"
REGENERATE = "python -m charter.testing.conformance --write docs/conformance"


# ── (a) the checked-in corpus is what the code generates ──


@pytest.mark.parametrize("name", sorted(CORPUS_FILES.values()))
def test_checked_in_corpus_is_freshly_generated(name: str) -> None:
    fresh = corpus_text(conformance.corpus()[name])
    path = CORPUS / name
    if not path.exists():
        pytest.fail(f"docs/conformance/{name} is missing: regenerate it with `{REGENERATE}`")
    on_disk = path.read_text(encoding="utf-8")
    if on_disk != fresh:
        diff = difflib.unified_diff(
            on_disk.splitlines(), fresh.splitlines(), "checked in", "generated", lineterm="", n=1
        )
        shown = "\n".join(list(diff)[:40])
        pytest.fail(
            f"docs/conformance/{name} differs from what the code generates; if the change is "
            f"intended, regenerate it with `{REGENERATE}` and review the diff:\n{shown}"
        )


def test_generation_is_deterministic() -> None:
    first = {name: corpus_text(doc) for name, doc in conformance.corpus().items()}
    second = {name: corpus_text(doc) for name, doc in conformance.corpus().items()}
    assert first == second


def test_readme_exists_and_names_every_file() -> None:
    readme = (CORPUS / "README.md").read_text(encoding="utf-8")
    for name in CORPUS_FILES.values():
        assert name in readme
    assert REGENERATE in readme


# ── (b) every case recomputes to its expected output from the JSON alone ──


def _file_cases() -> list[Any]:
    params: list[Any] = []
    for kind, name in CORPUS_FILES.items():
        try:
            cases = read_corpus_file(CORPUS / name, kind)
        except ConformanceError:  # reported by the freshness test
            continue
        params.extend(pytest.param(kind, case, id=f"{kind}:{case['name']}") for case in cases)
    return params


FILE_CASES = _file_cases()


def test_the_corpus_has_cases_of_every_kind() -> None:
    kinds = [param.values[0] for param in FILE_CASES]
    assert kinds.count("gate") >= 30
    assert kinds.count("settle") >= 6
    assert kinds.count("log") >= 5


@pytest.mark.parametrize(("kind", "case"), FILE_CASES)
def test_case_recomputes_from_its_json(kind: str, case: Mapping[str, Any]) -> None:
    actual = run_case(kind, case)
    assert canonical_json(actual) == canonical_json(case["expected"]), conformance.difference(
        case["expected"], actual
    )
    assert "\n" not in case["description"]


@pytest.mark.parametrize(("kind", "case"), FILE_CASES)
def test_case_input_reencodes_to_itself(kind: str, case: Mapping[str, Any]) -> None:
    # The JSON shapes are exact: decoding then encoding gives back the same data, so nothing
    # in a case is ignored by the decoder.
    if kind == "gate":
        again: Any = encode_gate_request(decode_gate_request(case["request"]))
        assert canonical_json(again) == canonical_json(case["request"])
    elif kind == "settle":
        again = encode_settle_request(decode_settle_request(case["request"]))
        assert canonical_json(again) == canonical_json(case["request"])
    else:
        again = [encode_event(event) for event in decode_events(case["events"])]
        assert canonical_json(again) == canonical_json(case["events"])


def test_cases_cover_every_outcome() -> None:
    outcomes: dict[str, set[str]] = {"gate": set(), "settle": set(), "log": set()}
    for param in FILE_CASES:
        kind, case = param.values
        expected = case["expected"]
        outcomes[kind].add(
            expected["materialized"]["status"] if kind == "log" else expected["outcome"]
        )
    assert outcomes["gate"] == {"run", "hold", "fail"}
    assert outcomes["settle"] == {"completed", "errored", "failed"}
    assert {"completed", "failed", "cancelled", "running"} <= outcomes["log"]


def test_log_approvals_cover_every_status_the_worker_reaches() -> None:
    statuses = {
        status["type"]
        for param in FILE_CASES
        if param.values[0] == "log"
        for status in param.values[1]["expected"]["approvals"].values()
    }
    assert {"consumed", "rejected"} <= statuses


# ── (c) the check can fail ──


def _copy_corpus(tmp_path: Path) -> Path:
    target = tmp_path / "corpus"
    shutil.copytree(CORPUS, target)
    return target


def _edit(folder: Path, name: str, change: Callable[[list[dict[str, Any]]], None]) -> None:
    path = folder / name
    document = json.loads(path.read_text(encoding="utf-8"))
    change(document["cases"])
    path.write_text(corpus_text(document), encoding="utf-8")


def test_the_corpus_copy_checks_clean(tmp_path: Path) -> None:
    result = check_corpus(_copy_corpus(tmp_path))
    assert result.ok, [str(failure) for failure in result.failures]
    assert result.checked == len(FILE_CASES)


MUTATIONS: list[tuple[str, str, Callable[[dict[str, Any]], None], str]] = [
    (
        "gate.json",
        "outcome",
        lambda case: case["expected"].update(
            outcome="run" if case["expected"]["outcome"] != "run" else "fail"
        ),
        "expected.outcome",
    ),
    (
        "gate.json",
        "reason",
        lambda case: case["expected"].update(reason="something else"),
        "expected.reason",
    ),
    (
        "gate.json",
        "event field",
        lambda case: case["expected"]["events"][0].update(attempt=7),
        "expected.events[0].attempt",
    ),
    (
        "settle.json",
        "budget",
        lambda case: case["expected"]["budget"].update(total_input_tokens=1),
        "expected.budget.total_input_tokens",
    ),
    (
        "settle.json",
        "a missing event",
        lambda case: case["expected"]["events"].pop(),
        "expected.events",
    ),
    (
        "log.json",
        "materialized status",
        lambda case: case["expected"]["materialized"].update(status="paused"),
        "expected.materialized.status",
    ),
    (
        "log.json",
        "budget as a different number",
        lambda case: case["expected"]["budget"].update(total_cost_usd=0.000001),
        "expected.budget.total_cost_usd",
    ),
]


@pytest.mark.parametrize(
    ("name", "change", "field"),
    [
        pytest.param(name, change, field, id=f"{name}:{what}")
        for name, what, change, field in MUTATIONS
    ],
)
def test_altering_one_expected_field_fails_the_check(
    tmp_path: Path, name: str, change: Callable[[dict[str, Any]], None], field: str
) -> None:
    folder = _copy_corpus(tmp_path)
    _edit(folder, name, lambda cases: change(cases[-1]))
    victim = json.loads((folder / name).read_text(encoding="utf-8"))["cases"][-1]["name"]
    result = check_corpus(folder)
    assert [(f.file, f.case) for f in result.failures] == [(name, victim)]
    assert result.failures[0].problem.startswith(field), result.failures[0].problem


def test_an_integral_float_is_the_same_number(tmp_path: Path) -> None:
    # Canonical JSON is the equality: 3000 and 3000.0 are one number, not a difference.
    folder = _copy_corpus(tmp_path)

    def as_float(cases: list[dict[str, Any]]) -> None:
        budget = cases[0]["expected"]["budget"]
        budget["total_input_tokens"] = float(budget["total_input_tokens"])

    _edit(folder, "settle.json", as_float)
    assert check_corpus(folder).ok


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        (
            "gate.json",
            lambda case: case["request"]["budget"].update(total_input_tokens="3"),
            "request.budget.total_input_tokens: expected a non-negative integer",
        ),
        (
            "gate.json",
            lambda case: case["request"]["policies"].append(
                {"scope": "node", "policy": {"blocked_tools": "shell.*"}}
            ),
            "request.policies[",
        ),
        (
            "gate.json",
            lambda case: case["request"].update(colour="blue"),
            "request.colour: unknown key",
        ),
        (
            "gate.json",
            lambda case: case["request"].update(now="2025-03-01T12:00:00"),
            "request.now: timestamp needs a timezone offset",
        ),
        (
            "settle.json",
            lambda case: case["request"]["usage"].update(cost_usd=-1),
            "request.usage",
        ),
        (
            "log.json",
            lambda case: case["events"][2]["kind"].update(attempt="x"),
            "events[2].kind.attempt: expected an integer",
        ),
        (
            "log.json",
            lambda case: case["events"][2].update(sequence=9),
            "events[2].sequence: expected 3 (no gaps), got 9",
        ),
    ],
    ids=["budget", "policy", "unknown-key", "naive-now", "usage", "event", "sequence"],
)
def test_a_malformed_case_names_file_case_and_field(
    tmp_path: Path, name: str, change: Callable[[dict[str, Any]], None], message: str
) -> None:
    folder = _copy_corpus(tmp_path)
    _edit(folder, name, lambda cases: change(cases[1]))
    victim = json.loads((folder / name).read_text(encoding="utf-8"))["cases"][1]["name"]
    (failure,) = check_corpus(folder).failures
    assert (failure.file, failure.case) == (name, victim)
    assert failure.problem.startswith(message), failure.problem
    assert str(failure).startswith(f"{name}: case {victim!r}: {message}")


def test_a_broken_file_is_reported_not_raised(tmp_path: Path) -> None:
    folder = _copy_corpus(tmp_path)
    (folder / "settle.json").write_text('{"format": "charter-conformance",', encoding="utf-8")
    (folder / "log.json").unlink()
    document = json.loads((folder / "gate.json").read_text(encoding="utf-8"))
    document["cases"].append(copy.deepcopy(document["cases"][0]))
    (folder / "gate.json").write_text(corpus_text(document), encoding="utf-8")
    problems = {f.file: f.problem for f in check_corpus(folder).failures}
    assert problems["gate.json"].startswith("cases[")
    assert "duplicate case name" in problems["gate.json"]
    assert problems["settle.json"].startswith("invalid JSON")
    assert problems["log.json"].startswith("cannot read")


# ── (d) the command line ──


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "charter.testing.conformance", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )


def test_cli_check_passes_on_the_corpus() -> None:
    done = _cli("--check", str(CORPUS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(f"ok: {len(FILE_CASES)} cases checked")


def test_cli_check_fails_on_a_corrupted_copy(tmp_path: Path) -> None:
    folder = _copy_corpus(tmp_path)
    _edit(folder, "gate.json", lambda cases: cases[1]["expected"].update(outcome="run"))
    _edit(folder, "log.json", lambda cases: cases[0]["expected"]["approvals"].update(x={}))
    gate = json.loads((folder / "gate.json").read_text(encoding="utf-8"))["cases"][1]["name"]
    log = json.loads((folder / "log.json").read_text(encoding="utf-8"))["cases"][0]["name"]
    done = _cli("--check", str(folder))
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"FAIL gate.json: case {gate!r}: expected.outcome")
    assert lines[1].startswith(f"FAIL log.json: case {log!r}: expected.approvals.x")
    assert lines[2] == f"2 failing, {len(FILE_CASES)} cases checked in {folder}"


def test_cli_write_and_help(tmp_path: Path) -> None:
    # In process: the same entry point, without a second interpreter start-up.
    assert conformance.main(["--write", str(tmp_path / "out")]) == 0
    for name in CORPUS_FILES.values():
        assert (tmp_path / "out" / name).read_bytes() == (CORPUS / name).read_bytes()
    done = _cli("--help")
    assert done.returncode == 0
    assert "--write DIR" in done.stdout
    assert "--check DIR" in done.stdout
    assert _cli().returncode == 2  # one of --write and --check is required


# ── (e) encoding a gate request loses nothing the gate decides from ──


@given(gate_requests())
def test_gate_request_json_round_trip(request: GateRequest) -> None:
    text = json.dumps(encode_gate_request(request), ensure_ascii=False, allow_nan=False)
    decoded = decode_gate_request(parse_json(text))
    assert decoded == request
    assert canonical_json(encode_gate_result(gate_node(decoded))) == canonical_json(
        encode_gate_result(gate_node(request))
    )
