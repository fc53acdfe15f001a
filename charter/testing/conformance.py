"""Charter's conformance corpus: language-neutral cases for other implementations of the core.

The cases are data: ``conformance_cases/{gate,settle,log}.yaml`` next to this module hold
each case's name, description and input in the corpus's own shape (a gate or settle
``request``; a log's ``initial_input`` and ``events``). This runner decodes the inputs with
the project's codec (`charter.adapters.codec`), computes ``expected`` with the core
(`gate_node`, `settle_node`; `materialize`, `budget_after` and the `approval_step` fold for
logs) and writes ``docs/conformance/{gate,settle,log}.json`` (described field by field in
docs/conformance/README.md). ``--check`` recomputes every case of a corpus from its JSON
alone and compares it with ``expected`` as canonical JSON::

    python -m charter.testing.conformance --write docs/conformance   # regenerate
    python -m charter.testing.conformance --check docs/conformance   # recompute every case

Errors name the file, the case and the field (``gate.json: case 'x': request.now: …``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs
import yaml

from charter.adapters.codec import CodecError, dump, load, parse_json
from charter.core.approvals import ApprovalStatus, NotRequested, approval_step
from charter.core.budget import BudgetState, budget_after
from charter.core.canonical import canonical_json
from charter.core.errors import InvalidInput, describe
from charter.core.events import (
    ApprovalConsumed,
    ApprovalExpired,
    ApprovalReceived,
    Event,
    JsonValue,
    ToolApprovalRequired,
)
from charter.core.gate import GateRequest, SettleRequest, gate_node, settle_node
from charter.core.materialize import materialize

__all__ = [
    "CASES_DIR",
    "CORPUS_FILES",
    "FORMAT",
    "INPUTS",
    "VERSION",
    "ConformanceError",
    "CorpusCheck",
    "Failure",
    "build_cases",
    "check_case",
    "check_corpus",
    "corpus",
    "corpus_text",
    "decode_input",
    "difference",
    "encode_input",
    "main",
    "read_corpus_file",
    "replay_log",
    "run_case",
    "write_corpus",
]

#: The ``format`` of every corpus file, and its ``version`` (bumped on an incompatible change
#: of the case shapes, not when cases are added).
FORMAT: Final = "charter-conformance"
VERSION: Final = 1

#: The input keys of each kind of case: a case is ``name``, ``description``, these, and (in a
#: corpus file) ``expected``.
INPUTS: Final[Mapping[str, tuple[str, ...]]] = {
    "gate": ("request",),
    "settle": ("request",),
    "log": ("initial_input", "events"),
}

#: Each kind's corpus file (its case file is ``<kind>.yaml`` in `CASES_DIR`).
CORPUS_FILES: Final[Mapping[str, str]] = {kind: f"{kind}.json" for kind in INPUTS}
CASES_DIR: Final = Path(__file__).with_name("conformance_cases")

#: A JSON object as Python data.
JsonObject = dict[str, Any]


class ConformanceError(InvalidInput):
    """A case file, corpus file or case that cannot be read; the message names the file, the
    case and the field (``gate.json: case 'x': request.budget.total_input_tokens: …``)."""


# ── adapters between the codec's shapes and the corpus's ───────────────────────────────

#: The codec names fields from ``$`` (the value decoded; ``$15.50`` is not a path), and a
#: value decoded by its own ``from_dict`` inside another names them from its own ``$``
#: (``$.budget: $.total_input_tokens``).
_ROOT = re.compile(r"\$(?=[.\[:]|$)")
_INNER_ROOT = re.compile(r": \$(?=[.\[])")


def _load(data: object, cls: Any, where: str) -> Any:
    """``codec.load``, with the error's path starting at ``where``
    (``request.budget.total_input_tokens`` rather than ``$.budget: $.total_input_tokens``)."""
    try:
        return load(data, cls)
    except InvalidInput as error:
        text = _INNER_ROOT.sub("", str(error))
        if _ROOT.search(text):
            raise ConformanceError("", _ROOT.sub(lambda _: where, text)) from None
        moved = error.within(where)
        raise ConformanceError(moved.where, moved.problem) from None


def _with_nulls(value: attrs.AttrsInstance) -> JsonObject:
    """``dump(value)`` with every field whose default is ``None`` present, as ``null``: the
    codec omits such a field while it is ``None``, the corpus lists every key."""
    data: JsonObject = dump(value)
    nulls = {field.name: None for field in attrs.fields(type(value)) if field.default is None}
    return nulls | data


def _event_json(event: Event) -> JsonObject:
    """``dump(event)`` without ``prev_hash`` and ``hash`` while empty (the event is unstored;
    the codec writes them as ``""``, the corpus leaves them out)."""
    data: JsonObject = dump(event)
    for key in ("prev_hash", "hash"):
        if not data.get(key):
            data.pop(key, None)
    return data


def _object(data: object, where: str, keys: Sequence[str]) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ConformanceError(where or "$", f"expected an object, got {describe(data)}")
    for key in data:
        if key not in keys:
            raise ConformanceError(str(key), f"unknown key (expected one of: {', '.join(keys)})")
    for key in keys:
        if key not in data:
            raise ConformanceError(key, "required field missing")
    return data


# ── inputs and outputs of each kind ────────────────────────────────────────────────────


def _events(data: object, where: str = "events") -> tuple[Event, ...]:
    """A log of one execution, sequences 1, 2, 3… (as a store assigns them)."""
    if not isinstance(data, list):
        raise ConformanceError(where, f"expected an array of events, got {describe(data)}")
    events: list[Event] = []
    for index, item in enumerate(data):
        at = f"{where}[{index}]"
        event: Event = _load(item, Event, at)
        if event.sequence != index + 1:
            raise ConformanceError(
                f"{at}.sequence", f"expected {index + 1} (no gaps), got {event.sequence}"
            )
        if events and event.execution_id != events[0].execution_id:
            raise ConformanceError(
                f"{at}.execution_id",
                f"expected {events[0].execution_id!r} (one execution), got {event.execution_id!r}",
            )
        events.append(event)
    return tuple(events)


def decode_input(kind: str, case: Mapping[str, Any]) -> Any:
    """The input of a case of ``kind`` from its JSON: a `GateRequest`, a `SettleRequest`, or
    ``(initial_input, events)``. In a request only ``context`` and ``now`` (gate) or
    ``node_id`` (settle) are required; a missing key takes the request's default."""
    if kind == "gate":
        return _load(case["request"], GateRequest, "request")
    if kind == "settle":
        return _load(case["request"], SettleRequest, "request")
    return _load(case["initial_input"], Any, "initial_input"), _events(case["events"])


def encode_input(kind: str, value: Any) -> JsonObject:
    """The input keys of a case of ``kind``, every key present (inverse of `decode_input`)."""
    if kind == "gate":
        return {"request": _with_nulls(value)}
    if kind == "settle":
        return {"request": dump(value)}
    initial, events = value
    return {"initial_input": initial, "events": [_event_json(event) for event in events]}


_APPROVAL_KINDS = (ToolApprovalRequired, ApprovalReceived, ApprovalConsumed, ApprovalExpired)


def replay_log(initial_input: JsonValue, events: Iterable[Event]) -> JsonObject:
    """``{materialized, budget, approvals}`` of a log: `materialize`, `budget_after` from an
    empty budget, and each node named by an approval event with its status, folded in log
    order with `approval_step` (the worker's scheduler's fold)."""
    log = tuple(events)
    approvals: dict[str, ApprovalStatus] = {}
    for event in log:
        if isinstance(event.kind, _APPROVAL_KINDS):
            node = event.kind.node_id
            approvals[node] = approval_step(approvals.get(node, NotRequested()), event)
    return {
        "materialized": materialize(initial_input, log).to_json(),
        "budget": budget_after(BudgetState(), log).to_dict(),
        "approvals": {node: dump(status) for node, status in sorted(approvals.items())},
    }


def _expected(kind: str, value: Any) -> JsonObject:
    """The core's answer for a decoded input, in the shape of ``expected``."""
    if kind == "gate":
        result = _with_nulls(gate_node(value))
        return {key: result[key] for key in ("outcome", "reason", "events")}
    if kind == "settle":
        return _with_nulls(settle_node(value))
    return replay_log(*value)


def _case(case: object, kind: str, *extra: str) -> Mapping[str, Any]:
    obj = _object(case, "", ("name", "description", *INPUTS[kind], *extra))
    for key in ("name", "description"):
        if not isinstance(obj[key], str) or not obj[key] or "\n" in obj[key]:
            raise ConformanceError(key, f"expected a one-line string, got {describe(obj[key])}")
    return obj


def run_case(kind: str, case: Mapping[str, Any]) -> JsonObject:
    """What a corpus case of ``kind`` computes to, in the shape of its ``expected``."""
    if kind not in INPUTS:
        raise ConformanceError("kind", f"expected one of {', '.join(INPUTS)}, got {kind!r}")
    return _expected(kind, decode_input(kind, _case(case, kind, "expected")))


# ── comparing ──────────────────────────────────────────────────────────────────────────


def _canonical(value: object) -> str:
    try:
        return canonical_json(value)
    except InvalidInput:  # not plain JSON (an integer beyond 64 bits…): never equal to JSON
        return f"<not canonical JSON: {describe(value)}>"


def _shown(value: object) -> str:
    text = _canonical(value)
    return text if len(text) <= 120 else text[:117] + "..."


def difference(expected: object, actual: object, where: str = "expected") -> str | None:
    """The first place where ``actual`` differs from ``expected`` as canonical JSON (objects
    compared key by key, arrays item by item, anything else by its canonical text), or
    ``None`` when they are equal."""
    if isinstance(expected, Mapping) and isinstance(actual, Mapping):
        for key in sorted({*expected, *actual}, key=str):
            at = f"{where}.{key}"
            if key not in actual:
                return f"{at}: expected {_shown(expected[key])}, missing from the result"
            if key not in expected:
                return f"{at}: not expected, got {_shown(actual[key])}"
            found = difference(expected[key], actual[key], at)
            if found is not None:
                return found
        return None
    if isinstance(expected, list | tuple) and isinstance(actual, list | tuple):
        for index, (left, right) in enumerate(zip(expected, actual, strict=False)):
            found = difference(left, right, f"{where}[{index}]")
            if found is not None:
                return found
        if len(expected) != len(actual):
            return f"{where}: expected {len(expected)} items, got {len(actual)}"
        return None
    if _canonical(expected) == _canonical(actual):
        return None
    return f"{where}: expected {_shown(expected)}, got {_shown(actual)}"


def check_case(kind: str, case: Mapping[str, Any]) -> str | None:
    """``None`` if a corpus case recomputes to its ``expected``, else the first difference or
    the decoding error, naming the field."""
    try:
        actual = run_case(kind, case)
    except InvalidInput as error:
        return str(error)
    return difference(case["expected"], actual)


# ── case files ─────────────────────────────────────────────────────────────────────────


class _Loader(yaml.SafeLoader):
    """Safe YAML with JSON's keys: strings, each given once (YAML would keep the last)."""


def _mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[str, Any]:
    seen: set[str] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if not isinstance(key, str) or key in seen:
            problem = (
                f"duplicate key {key!r}" if isinstance(key, str) else f"key {key!r} is not a string"
            )
            raise yaml.constructor.ConstructorError(None, None, problem, key_node.start_mark)
        seen.add(key)
    return dict(loader.construct_pairs(node, deep=True))


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _named(cases: object, file: str) -> list[Any]:
    """``cases`` as a list of objects, each with a name no other has."""
    at = f"{file}: cases" if file else "cases"
    if not isinstance(cases, list):
        raise ConformanceError(at, f"expected an array, got {describe(cases)}")
    seen: set[str] = set()
    for index, case in enumerate(cases):
        name = case.get("name") if isinstance(case, Mapping) else None
        if not isinstance(name, str) or not name:
            raise ConformanceError(f"{at}[{index}]", "expected a case with a name")
        if name in seen:
            raise ConformanceError(f"{at}[{index}].name", f"duplicate case name {name!r}")
        seen.add(name)
    return cases


def build_cases(kind: str, directory: str | Path = CASES_DIR) -> list[JsonObject]:
    """The corpus cases of ``kind`` from the case file ``<kind>.yaml`` in ``directory``: each
    case's input decoded, written back in full and computed with the core (``expected``).
    Errors name the file and the case (``gate.yaml: case 'x': request.now: …``)."""
    path = Path(directory) / f"{kind}.yaml"
    try:
        with path.open(encoding="utf-8") as stream:
            data = yaml.load(stream, Loader=_Loader)
    except OSError as error:
        raise ConformanceError(path.name, f"cannot read: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ConformanceError(path.name, f"invalid YAML: {error}") from None
    built = []
    for case in _named(data, path.name):
        try:
            value = decode_input(kind, _case(case, kind))
            inputs, expected = encode_input(kind, value), _expected(kind, value)
        except InvalidInput as error:
            raise ConformanceError(f"{path.name}: case {case['name']!r}", str(error)) from None
        built.append({"name": case["name"], "description": case["description"], **inputs})
        built[-1]["expected"] = expected
    return built


# ── corpus files ───────────────────────────────────────────────────────────────────────


def corpus(directory: str | Path = CASES_DIR) -> dict[str, JsonObject]:
    """Every corpus file's content by file name, built from the case files in ``directory``."""
    documents = {}
    for kind, name in CORPUS_FILES.items():
        cases = build_cases(kind, directory)
        documents[name] = {"format": FORMAT, "version": VERSION, "kind": kind, "cases": cases}
    return documents


def corpus_text(document: object) -> str:
    """A corpus file's text: sorted keys, one-space indent, UTF-8 as is, a final newline."""
    return json.dumps(document, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def write_corpus(directory: str | Path, cases: str | Path = CASES_DIR) -> tuple[Path, ...]:
    """Write the corpus files into ``directory`` (created if missing) from the case files in
    ``cases``; returns the paths written."""
    documents = corpus(cases)  # every case computed before any file is touched
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name, document in documents.items():
        path = target / name
        path.write_text(corpus_text(document), encoding="utf-8")
        written.append(path)
    return tuple(written)


def read_corpus_file(path: str | Path, kind: str) -> list[Mapping[str, Any]]:
    """The cases of a corpus file of ``kind``, its envelope checked; errors name the file."""
    file = Path(path)
    try:
        data = parse_json(file.read_bytes())
    except OSError as error:
        raise ConformanceError(file.name, f"cannot read: {error.strerror}") from None
    except CodecError as error:
        raise ConformanceError(file.name, f"invalid JSON: {error}") from None
    try:
        document = _object(data, "", ("format", "version", "kind", "cases"))
        for key, wanted in (("format", FORMAT), ("version", VERSION), ("kind", kind)):
            if document[key] != wanted:
                raise ConformanceError(key, f"expected {wanted!r}, got {document[key]!r}")
        return _named(document["cases"], "")
    except InvalidInput as error:
        raise ConformanceError(file.name, str(error)) from None


@attrs.frozen
class Failure:
    """A case (or a whole file, when ``case`` is ``None``) that did not check out."""

    file: str
    case: str | None
    problem: str

    def __str__(self) -> str:
        if self.case is None:
            return f"{self.file}: {self.problem}"
        return f"{self.file}: case {self.case!r}: {self.problem}"


@attrs.frozen
class CorpusCheck:
    """The result of `check_corpus`: how many cases were recomputed, and the failures."""

    checked: int
    failures: tuple[Failure, ...]

    @property
    def ok(self) -> bool:
        return not self.failures


def check_corpus(directory: str | Path) -> CorpusCheck:
    """Recompute every case of the corpus in ``directory`` from its JSON alone."""
    folder = Path(directory)
    checked = 0
    failures: list[Failure] = []
    for kind, name in CORPUS_FILES.items():
        try:
            cases = read_corpus_file(folder / name, kind)
        except ConformanceError as error:
            failures.append(Failure(name, None, error.problem))
            continue
        for case in cases:
            checked += 1
            problem = check_case(kind, case)
            if problem is not None:
                failures.append(Failure(name, str(case["name"]), problem))
    return CorpusCheck(checked, tuple(failures))


# ── command line ───────────────────────────────────────────────────────────────────────


def main(argv: Sequence[str] | None = None) -> int:
    """``--write DIR`` (exit 2 on a bad case file) or ``--check DIR`` (exit 1 on a failure)."""
    parser = argparse.ArgumentParser(
        prog="python -m charter.testing.conformance",
        description="Charter's conformance corpus: language-neutral JSON cases with the exact "
        "outputs of Charter's core.",
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", metavar="DIR", help="write the corpus files into DIR")
    action.add_argument(
        "--check", metavar="DIR", help="recompute every case in DIR and compare it with expected"
    )
    parser.add_argument(
        "--cases", metavar="DIR", default=CASES_DIR, help="the case files --write reads"
    )
    args = parser.parse_args(argv)
    if args.write is not None:
        try:
            written = write_corpus(args.write, args.cases)
        except ConformanceError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        for path in written:
            print(f"wrote {path} ({len(read_corpus_file(path, path.stem))} cases)")
        return 0
    result = check_corpus(args.check)
    for failure in result.failures:
        print(f"FAIL {failure}")
    if result.failures:
        print(f"{len(result.failures)} failing, {result.checked} cases checked in {args.check}")
        return 1
    print(f"ok: {result.checked} cases checked in {args.check}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
