"""The conformance corpus (docs/conformance/): fresh, recomputable from its JSON alone, and
checked by a check that can fail; its case files (charter/testing/conformance_cases/) read
strictly."""

from __future__ import annotations

import copy
import difflib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given

from charter.adapters.codec import dump, parse_json
from charter.core.approvals import ApprovalStatus, NotRequested, approval_step
from charter.core.budget import BudgetState, budget_after
from charter.core.canonical import canonical_json
from charter.core.events import (
    ApprovalConsumed,
    ApprovalReceived,
    Event,
    NodeGated,
    ToolApprovalRequired,
)
from charter.core.gate import GateRequest, gate_node
from charter.testing import conformance
from charter.testing.conformance import (
    CASES_DIR,
    CORPUS_FILES,
    INPUTS,
    ConformanceError,
    check_corpus,
    corpus_text,
    decode_input,
    encode_input,
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
    again = encode_input(kind, decode_input(kind, case))
    assert canonical_json(again) == canonical_json({key: case[key] for key in INPUTS[kind]})


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
            "request.policies.policy.blocked_tools: expected an array",
        ),
        (
            "gate.json",
            lambda case: case["request"].update(colour="blue"),
            "request: extra fields found (colour)",
        ),
        (
            "gate.json",
            lambda case: case["request"].update(now="2025-03-01T12:00:00"),
            "request.now: timestamp needs a timezone offset",
        ),
        (
            "settle.json",
            lambda case: case["request"]["usage"].update(cost_usd=-1),
            "request.usage: cost_usd: expected a finite non-negative number",
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
    text = json.dumps(encode_input("gate", request), ensure_ascii=False, allow_nan=False)
    decoded = decode_input("gate", parse_json(text))
    assert decoded == request
    assert canonical_json(dump(gate_node(decoded))) == canonical_json(dump(gate_node(request)))


# ── (f) the case files: data, read strictly ──


def _copy_cases(tmp_path: Path) -> Path:
    target = tmp_path / "cases"
    shutil.copytree(CASES_DIR, target)
    return target


def _edit_cases(folder: Path, kind: str, change: Callable[[list[dict[str, Any]]], None]) -> str:
    """Apply ``change`` to a copied case file; returns the name of its second case."""
    path = folder / f"{kind}.yaml"
    cases = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(cases)
    path.write_text(yaml.safe_dump(cases, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return str(cases[1]["name"])


def test_case_files_build_the_corpus_case_for_case() -> None:
    for kind, name in CORPUS_FILES.items():
        built = [case["name"] for case in conformance.build_cases(kind)]
        assert built == [case["name"] for case in read_corpus_file(CORPUS / name, kind)]


@pytest.mark.parametrize(
    ("kind", "change", "message"),
    [
        (
            "gate",
            lambda case: case["request"].update(now="2025-03-01T12:00:00"),
            "request.now: timestamp needs a timezone offset",
        ),
        (
            "gate",
            lambda case: case["request"]["budget"].update(total_input_tokens=-3),
            "request.budget.total_input_tokens: expected a non-negative integer",
        ),
        (
            "gate",
            lambda case: case.update(expected={"outcome": "run"}),
            "expected: unknown key (expected one of: name, description, request)",
        ),
        ("gate", lambda case: case.pop("request"), "request: required field missing"),
        (
            "settle",
            lambda case: case["request"]["budget"].pop("total_cost_usd"),
            "request.budget.total_cost_usd: missing budget field",
        ),
        (
            "settle",
            lambda case: case.update(description="two\nlines"),
            "description: expected a one-line string",
        ),
        (
            "log",
            lambda case: case["events"][2].update(sequence=9),
            "events[2].sequence: expected 3 (no gaps), got 9",
        ),
        (
            "log",
            lambda case: case["events"][3]["kind"].update(type="node_teleported"),
            "events[3].kind: type: unknown type 'node_teleported'",
        ),
    ],
    ids=[
        "naive-now",
        "budget",
        "expected-given",
        "no-request",
        "settle-budget",
        "two-lines",
        "sequence",
        "event-type",
    ],
)
def test_a_malformed_case_file_names_the_file_and_the_case(
    tmp_path: Path, kind: str, change: Callable[[dict[str, Any]], None], message: str
) -> None:
    folder = _copy_cases(tmp_path)
    if kind == "gate":  # the second gate case has a budget only once it is given one
        _edit_cases(folder, kind, lambda cases: cases[1]["request"].update(budget=_EMPTY_BUDGET))
    victim = _edit_cases(folder, kind, lambda cases: change(cases[1]))
    with pytest.raises(ConformanceError) as raised:
        conformance.corpus(folder)
    assert str(raised.value).startswith(f"{kind}.yaml: case {victim!r}: {message}")


_EMPTY_BUDGET = BudgetState().to_dict()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- name: a\n  description: [x\n", "gate.yaml: invalid YAML: "),
        ("- name: a\n  description: x\n  name: b\n", "gate.yaml: invalid YAML: duplicate key"),
        ("- {name: a, yes: 1}\n", "gate.yaml: invalid YAML: key True is not a string"),
        ("cases: []\n", "gate.yaml: cases: expected an array"),
        ("- description: x\n", "gate.yaml: cases[0]: expected a case with a name"),
        (
            "- {name: a, description: x, request: {}}\n- {name: a}\n",
            "gate.yaml: cases[1].name: duplicate case name 'a'",
        ),
    ],
    ids=["syntax", "duplicate-key", "bool-key", "not-a-list", "no-name", "duplicate-name"],
)
def test_a_broken_case_file_names_the_file(tmp_path: Path, text: str, message: str) -> None:
    folder = _copy_cases(tmp_path)
    (folder / "gate.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(ConformanceError) as raised:
        conformance.corpus(folder)
    assert str(raised.value).startswith(message)


def test_a_missing_case_file_names_the_file(tmp_path: Path) -> None:
    folder = _copy_cases(tmp_path)
    (folder / "log.yaml").unlink()
    with pytest.raises(ConformanceError, match=r"^log\.yaml: cannot read"):
        conformance.corpus(folder)


def test_cli_write_refuses_a_malformed_case_file(tmp_path: Path) -> None:
    folder = _copy_cases(tmp_path)
    victim = _edit_cases(folder, "settle", lambda cases: cases[1]["request"].update(attempt="x"))
    out = tmp_path / "out"
    done = _cli("--write", str(out), "--cases", str(folder))
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: settle.yaml: case {victim!r}: request.attempt:")
    assert not out.exists()  # nothing written when a case is bad


# ── (g) the logs still read as the core wrote them ──


def _approval_tags(log: Sequence[Event]) -> dict[str, str]:
    statuses: dict[str, ApprovalStatus] = {}
    for event in log:
        if isinstance(event.kind, ToolApprovalRequired | ApprovalReceived | ApprovalConsumed):
            node = event.kind.node_id
            statuses[node] = approval_step(statuses.get(node, NotRequested()), event)
    return {node: dump(status)["type"] for node, status in statuses.items()}


@pytest.mark.parametrize("case", conformance.build_cases("log"), ids=lambda case: str(case["name"]))
def test_log_case_reads_as_written_by_the_core(case: dict[str, Any]) -> None:
    # The logs were written by the core, as the worker writes them (each node_gated records
    # the budget, approval status and log position it was decided from); now that they are
    # data, an edit that breaks that reading fails here.
    _, log = decode_input("log", case)
    started = log[0].created_at
    for index, event in enumerate(log):
        assert event.id == f"{event.execution_id}-{event.sequence:03d}"
        assert event.created_at == started + timedelta(seconds=index)
        if isinstance(event.kind, NodeGated):
            assert event.kind.as_of == index
            assert event.kind.decided_at == event.created_at
            assert event.kind.budget == budget_after(BudgetState(), log[:index]).to_dict()
            tags = _approval_tags(log[:index])
            assert event.kind.approval == tags.get(event.kind.node_id, "not_requested")
