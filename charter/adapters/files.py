"""Reading YAML / JSON files for the shell: strict, and every error names the file and field.

YAML is parsed with a safe loader that also refuses duplicate keys (PyYAML silently keeps
the last one, which would let a second ``blocked_tools:`` quietly replace the first) and
aliases that expand to more than `MAX_ALIAS_VALUES` values (a "billion laughs" file of a
few hundred bytes would otherwise take minutes and gigabytes to load).

Every file is at most `MAX_FILE_BYTES`, checked before it is parsed, and a workflow is
also at most that much as the JSON the store keeps (`MAX_DEFINITION_BYTES`): ``validate``
and ``run`` refuse the same files, with the same message. A file that is not what was
asked for (``charter validate /etc/shadow``) is refused without quoting its content.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import attrs
import yaml

from charter.adapters.codec import CodecError, parse_json
from charter.adapters.store_support import MAX_DEFINITION_BYTES
from charter.core.errors import InvalidInput, PolicyError, child, describe
from charter.core.policy import CombiningMode, PolicyLayer, PolicyScope, PolicySet
from charter.core.records import MAX_ID_LENGTH
from charter.core.workflow import WorkflowDef, WorkflowInvalid, parse_workflow

__all__ = [
    "MAX_ALIAS_VALUES",
    "MAX_FILE_BYTES",
    "TENANT_FINAL",
    "TENANT_MOST_SPECIFIC",
    "PolicyFile",
    "load_policy_file",
    "load_policy_layer",
    "load_workflow_file",
    "parse_policy_document",
    "read_document",
]


#: The largest file read (a workflow, a policy, an input): a workflow's stored form is
#: limited to this much JSON, and no sensible policy or input comes near it.
MAX_FILE_BYTES: Final = MAX_DEFINITION_BYTES
#: How many values a YAML file's aliases (``*name``, ``<<: *name``) may add in all.
MAX_ALIAS_VALUES: Final = 100_000
#: PyYAML's limit on a plain (implicit) mapping key, in characters.
_YAML_KEY_LIMIT: Final = 1024
_WORD: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
#: How much of a key an error message quotes.
_QUOTED: Final = 60


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB ({size:,} bytes)"


def _plain_word(key: object) -> bool:
    """Whether ``key`` is a short word (a misspelt key, safe to quote back), not a line of
    some other file."""
    return isinstance(key, str) and _WORD.fullmatch(key) is not None


def _quoted(text: str) -> str:
    """``text`` as an error quotes it: repr'd, and cut short if long."""
    return repr(text if len(text) <= _QUOTED else text[:_QUOTED] + "…")


if yaml.__with_libyaml__:  # libyaml scans and parses some twenty times faster
    _Parser: Any = yaml.cyaml.CParser  # type: ignore[attr-defined]
else:  # pragma: no cover - PyYAML built without libyaml
    _Parser = type("_Parser", (yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser), {})


class _StrictLoader(
    yaml.composer.Composer,
    _Parser,  # type: ignore[misc]
    yaml.constructor.SafeConstructor,
    yaml.resolver.Resolver,
):
    """Safe YAML loading (the safe constructor: no arbitrary objects) that refuses duplicate
    mapping keys, recursive aliases and aliases that expand to more than `MAX_ALIAS_VALUES`
    values in all. The parser is libyaml's where PyYAML has it; the nodes are composed here,
    where aliases can be counted."""

    def __init__(self, stream: str) -> None:
        if yaml.__with_libyaml__:
            _Parser.__init__(self, stream)
        else:  # pragma: no cover
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        self._values = 0  # values composed so far, counting each alias's expansion
        self._sizes: dict[str, int] = {}  # each finished anchor's size, aliases included
        self._open: set[str] = set()  # anchors being composed (an alias to one recurses)

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        anchor = getattr(event, "anchor", None)
        if isinstance(event, yaml.AliasEvent):
            mark: Any = event.start_mark  # libyaml's marks are not PyYAML's class
            if anchor in self._open:
                problem = f"alias *{anchor} refers to a value that contains it"
                raise yaml.composer.ComposerError(None, None, problem, mark)
            node = super().compose_node(parent, index)  # an undefined alias is refused here
            self._values += self._sizes.get(str(anchor), 1)
            if self._values > MAX_ALIAS_VALUES:
                problem = (
                    f"aliases expand to more than {MAX_ALIAS_VALUES:,} values (an alias "
                    "bomb?): write the values out, or use fewer aliases"
                )
                raise yaml.composer.ComposerError(None, None, problem, mark)
            return node
        start = self._values
        if anchor is not None:
            self._open.add(anchor)
        node = super().compose_node(parent, index)
        self._values += 1
        if anchor is not None:
            self._open.discard(anchor)
            self._sizes[anchor] = self._values - start
        return node


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)  # resolve `<<` merge keys first, as the safe loader does
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        mark = key_node.start_mark
        if not isinstance(key, str | int | float | bool) and key is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f"a mapping key must be a plain value, not {type(key).__name__}", mark
            )
        if key in seen:
            shown = _quoted(key) if isinstance(key, str) else repr(key)
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {shown} (line {mark.line + 1})", mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates
)


def _read_text(file: Path, limit: int) -> str:
    """The file's text, refused before it is read if it is larger than ``limit`` bytes
    (and, for a pipe or a device, as soon as more than that has been read)."""
    too_large = f"too large: a file may be at most {_megabytes(limit)}"
    try:
        with file.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > limit:
                raise InvalidInput(str(file), f"{too_large}; this one is {_megabytes(size)}")
            blob = handle.read(limit + 1)
    except FileNotFoundError:
        raise InvalidInput(str(file), "no such file") from None
    except IsADirectoryError:
        raise InvalidInput(str(file), "is a directory, expected a file") from None
    except OSError as error:
        raise InvalidInput(str(file), f"cannot read: {error.strerror}") from None
    if len(blob) > limit:
        raise InvalidInput(str(file), too_large)
    try:
        return blob.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidInput(str(file), f"not UTF-8 text ({error.reason})") from None


def _yaml_problem(error: yaml.MarkedYAMLError) -> str:
    problem = str(error.problem)
    mark = error.problem_mark
    if (
        problem.startswith("mapping values are not allowed")
        and mark
        and mark.column > _YAML_KEY_LIMIT
    ):
        # YAML reads a plain key only up to 1024 characters, then reports the colon.
        return (
            f"a key longer than {_YAML_KEY_LIMIT} characters (YAML's limit for a plain key; "
            f"an id may have at most {MAX_ID_LENGTH})"
        )
    return problem


def read_document(path: str | Path, *, max_bytes: int = MAX_FILE_BYTES) -> Any:
    """The data in a YAML or JSON file (``.json`` is parsed as JSON, anything else as YAML,
    which JSON is a subset of). Unreadable, unparsable or too large (``max_bytes``) files
    raise `InvalidInput` naming the file and, where the parser knows it, the line."""
    file = Path(path)
    text = _read_text(file, max_bytes)
    if file.suffix.lower() == ".json":
        try:
            return parse_json(text)
        except CodecError as error:
            where = f"{file}:{error.where}" if error.where else str(file)
            raise InvalidInput(where, f"invalid JSON: {error.problem}") from None
    try:
        # yaml.load with a SafeLoader subclass: no arbitrary object construction.
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark else str(file)
        raise InvalidInput(where, f"invalid YAML: {_yaml_problem(error)}") from None
    except yaml.YAMLError as error:
        raise InvalidInput(str(file), f"invalid YAML: {error}") from None
    except RecursionError:
        raise InvalidInput(str(file), "invalid YAML: nested too deeply") from None
    except (ValueError, TypeError) as error:  # e.g. an integer too long to convert
        raise InvalidInput(str(file), f"invalid YAML: {error}") from None


@attrs.frozen
class PolicyFile:
    """A policy file: its layers (least specific first) and how they combine.

    ``combining`` is the chain's mode (how the layers combine, as a workflow's
    ``combining:``); a tenant layer's finality is carried by its set (`PolicySet.final`).
    """

    layers: tuple[PolicyLayer, ...]
    combining: CombiningMode = CombiningMode.MOST_SPECIFIC

    @property
    def tenant_combining(self) -> str | None:
        """``"final"`` or ``"most-specific"`` for the file's tenant layer (how the tenant's
        rules combine with more specific ones), ``None`` when it has no tenant layer."""
        for layer in self.layers:
            if layer.scope is PolicyScope.TENANT:
                return TENANT_FINAL if layer.policy.final else TENANT_MOST_SPECIFIC
        return None


_SCOPES = tuple(scope.value for scope in PolicyScope)

#: A tenant's ``combining:``: its rules are final (the default) or upstream's most-specific.
TENANT_FINAL = "final"
TENANT_MOST_SPECIFIC = CombiningMode.MOST_SPECIFIC.value
_TENANT_MODES = (TENANT_FINAL, TENANT_MOST_SPECIFIC)


def _tenant_set(data: object, where: str) -> PolicySet:
    """A tenant layer: a policy set plus an optional ``combining: final | most-specific``
    (default ``final``: more specific layers may add restrictions, never remove one)."""
    if not isinstance(data, Mapping) or "combining" not in data:
        return attrs.evolve(PolicySet.from_dict(data, where, tenant=True), final=True)
    raw = data["combining"]
    at = child(where, "combining")
    if raw == CombiningMode.DENY_OVERRIDES.value:
        raise PolicyError(
            at,
            "a tenant's rules are final by default, which keeps every tenant block and "
            "allowlist as deny-overrides would and also keeps the tenant's approver; how a "
            "workflow's own layers combine is the workflow's `combining:`. Expected "
            f"{' or '.join(_TENANT_MODES)}, got 'deny-overrides'",
        )
    if raw not in _TENANT_MODES:
        raise PolicyError(
            at,
            f"expected {' or '.join(_TENANT_MODES)} (how the tenant's rules combine with "
            f"workflow and node rules), got {describe(raw)}",
        )
    rules = {key: value for key, value in data.items() if key != "combining"}
    return attrs.evolve(PolicySet.from_dict(rules, where, tenant=True), final=raw == TENANT_FINAL)


def _layer(scope: PolicyScope, data: object, where: str) -> PolicyLayer:
    if scope is PolicyScope.TENANT:
        return PolicyLayer(scope, _tenant_set(data, where))
    return PolicyLayer(scope, PolicySet.from_dict(data, where))


def _is_bare(keys: set[object], scope: PolicyScope) -> bool:
    rules = set(PolicySet.KEYS)
    if scope is PolicyScope.TENANT:
        # A bare tenant set may say how it combines; it must still hold a rule list or a
        # tenant key (a file of rate limits alone, say), so that a layered file's top-level
        # `combining:` alone is not taken for one.
        tenant_keys = set(PolicySet.TENANT_KEYS)
        return bool(keys & (rules | tenant_keys)) and keys <= rules | {"combining", *tenant_keys}
    return keys <= rules


def parse_policy_document(
    data: object, where: str = "policy", scope: PolicyScope = PolicyScope.WORKFLOW
) -> PolicyFile:
    """A policy file from parsed data. Two shapes are accepted:

    * layered: ``{tenant: SET, workflow: SET, node: SET, combining: MODE}`` (each optional),
      where ``combining`` (``most-specific`` | ``deny-overrides``) is the chain's mode;
    * a bare set: ``{blocked_tools: […], require_approval_for: […], model_allowlist: […]}``,
      taken as one layer at ``scope``.

    A tenant layer (``tenant:``, or a bare set at tenant scope) is final unless it says
    ``combining: most-specific`` (docs/semantics.md §2.5); ``deny-overrides`` there is refused
    with the reason. Every other key is refused, naming it.
    """
    if not isinstance(data, Mapping):
        raise PolicyError(where or "policy", f"expected a mapping, got {describe(data)}")
    known = {*_SCOPES, "combining", *PolicySet.KEYS, *PolicySet.TENANT_KEYS}
    if not any(key in known for key in data) and not all(map(_plain_word, data)):
        # Not a policy at all (`charter check /etc/shadow`): its keys are not quoted.
        raise PolicyError(
            where or "policy",
            f"none of its keys is a policy key (expected some of {', '.join(sorted(known))})",
        )
    if not data:
        raise PolicyError(
            where or "policy",
            "the policy is empty (expected tenant, workflow or node layers, or a bare set)",
        )
    keys = set(data)
    if _is_bare(keys, scope):
        return PolicyFile((_layer(scope, data, where),))
    unknown = sorted(str(key) for key in keys if key not in (*_SCOPES, "combining"))
    if unknown:
        # Name a key that is unknown in either shape first (a misspelt `combinig:` next to
        # `blocked_tools:`), rather than a rule list that is only out of place.
        tenant = scope is PolicyScope.TENANT
        allowed = (*PolicySet.KEYS, *PolicySet.TENANT_KEYS) if tenant else PolicySet.KEYS
        strange = [key for key in unknown if key not in allowed] or unknown
        owner = ""
        if not tenant and strange[0] in PolicySet.TENANT_KEYS:
            owner = f"; {strange[0]} belongs to a tenant's policy"
        raise PolicyError(
            child(where, strange[0]),
            "unknown key (expected tenant, workflow, node and combining, "
            f"or a bare set with {', '.join(allowed)}"
            f"{' and combining' if tenant else ''}){owner}",
        )
    combining = CombiningMode.MOST_SPECIFIC
    if "combining" in data:
        raw = data["combining"]
        modes = [mode.value for mode in CombiningMode]
        if raw not in modes:
            raise PolicyError(
                child(where, "combining"),
                f"expected one of {', '.join(modes)}, got {describe(raw)}",
            )
        combining = CombiningMode(raw)
    layers = tuple(
        _layer(PolicyScope(name), data[name], child(where, name))
        for name in _SCOPES
        if name in data  # an empty layer (`workflow:` with nothing) is refused, not skipped
    )
    if not layers:
        raise PolicyError(where or "policy", "no layers (expected tenant, workflow or node)")
    return PolicyFile(layers, combining)


def _refuse_empty_patterns(policy: PolicySet | None, where: str) -> None:
    """An empty pattern matches no name: a rule holding one would silently do nothing."""
    if policy is None:
        return
    for key in PolicySet.KEYS[:3]:
        for index, pattern in enumerate(getattr(policy, key)):
            if not pattern:
                raise PolicyError(
                    f"{child(where, key)}[{index}]",
                    "an empty pattern matches no name (remove it, or write the name)",
                )


def _kind(data: object) -> str:
    """What a document is, without quoting it."""
    if data is None:
        return "an empty document"
    if isinstance(data, str):
        return f"plain text ({len(data):,} characters)"
    if isinstance(data, list):
        return f"a list ({len(data):,} items)"
    return f"a {type(data).__name__}"


def _mapping_document(data: object, path: str | Path, what: str) -> Mapping[Any, Any]:
    """``data`` if it is a mapping; otherwise the file is not a ``what`` and is refused
    without quoting what it holds (it may be any file: ``/etc/shadow``)."""
    if not isinstance(data, Mapping):
        raise InvalidInput(
            str(path), f"not a {what}: expected a mapping of keys, got {_kind(data)}"
        )
    return data


def load_policy_file(path: str | Path, scope: PolicyScope = PolicyScope.WORKFLOW) -> PolicyFile:
    """Read and parse a policy file; errors name the file and the field."""
    data = _mapping_document(read_document(path), path, "policy")
    try:
        policy = parse_policy_document(data, where="", scope=scope)
        for layer in policy.layers:
            _refuse_empty_patterns(
                layer.policy, "" if _is_bare(set(data), scope) else layer.scope.value
            )
    except InvalidInput as error:
        raise error.within(f"{path}:") from None
    return policy


def load_policy_layer(path: str | Path, scope: PolicyScope) -> PolicySet:
    """The ``scope`` layer of a policy file: a bare set (taken at ``scope``), or the layer of
    that name in a layered file; a file without one is `InvalidInput` naming it.

    A tenant policy file must use everything it says (docs/semantics.md §2.5): at tenant
    scope a layered file may hold only ``tenant:`` (which says how it combines inside
    itself, ``combining: final | most-specific``); another layer or a top-level
    ``combining`` would be ignored and is refused, naming the file and the key. At workflow
    or node scope the named layer is picked out of a layered file (``charter audit what-if
    --scope workflow --policy examples/policy.yaml``).
    """
    data = _mapping_document(read_document(path), path, "policy")
    try:
        policy = parse_policy_document(data, where="", scope=scope)
        for layer in policy.layers:
            _refuse_empty_patterns(
                layer.policy, "" if _is_bare(set(data), scope) else layer.scope.value
            )
    except InvalidInput as error:
        raise error.within(f"{path}:") from None
    if scope is PolicyScope.TENANT:
        _refuse_unused_tenant_keys(path, data)
    layers = [layer for layer in policy.layers if layer.scope is scope]
    if len(layers) != 1:
        raise InvalidInput(
            str(path), f"expected one {scope.value} layer (a bare set or '{scope.value}:')"
        )
    return layers[0].policy


def _refuse_unused_tenant_keys(path: str | Path, data: object) -> None:
    keys = set(data) if isinstance(data, Mapping) else set()
    if _is_bare(keys, PolicyScope.TENANT):
        return
    for key in sorted(str(key) for key in keys):
        if key == PolicyScope.TENANT.value:
            continue
        if key == "combining":
            problem = (
                "would be ignored: a tenant policy is one layer, and this is the chain's "
                "mode; say how the tenant's rules combine inside the tenant layer "
                "(`tenant: {combining: most-specific, …}`)"
            )
        else:
            problem = (
                "would be ignored: a tenant policy is one layer, "
                "expected only 'tenant:' (or a bare set)"
            )
        raise InvalidInput(key, problem).within(f"{path}:")


#: The keys every workflow has: a mapping with none of them is not a workflow.
_WORKFLOW_KEYS: Final = ("workflow_id", "version", "start_node", "nodes")


def load_workflow_file(path: str | Path) -> tuple[WorkflowDef, dict[str, Any]]:
    """Read, validate and return a workflow file's definition and its raw JSON form (what
    the store keeps). Every problem is reported at once, each with the file and its path.

    The limits are checked here, so that ``validate`` refuses what ``run`` would: the file
    and its JSON form at most `MAX_DEFINITION_BYTES` each (the file's size before it is
    parsed), and its ids (``workflow_id``, ``version``, ``tenant_id``, node ids) at most
    `MAX_ID_LENGTH` characters. A file that is not a workflow at all is refused without
    quoting it."""
    data = _mapping_document(read_document(path, max_bytes=MAX_DEFINITION_BYTES), path, "workflow")
    if not any(key in data for key in _WORKFLOW_KEYS):
        raise InvalidInput(
            str(path), f"not a workflow: it has none of the keys {', '.join(_WORKFLOW_KEYS)}"
        )
    try:
        definition = parse_workflow(data, str(path))
    except WorkflowInvalid as error:
        raise error.within(f"{path}:") from None
    _check_ids(definition, path)
    try:
        _refuse_empty_patterns(definition.policy, "policy")
        for node_id, node in definition.nodes.items():
            _refuse_empty_patterns(node.policy, f"nodes.{node_id}.policy")
    except InvalidInput as error:
        raise error.within(f"{path}:") from None
    raw = dict(data)
    _check_stored_size(raw, path)
    return definition, raw


def _check_ids(definition: WorkflowDef, path: str | Path) -> None:
    ids = [
        ("workflow_id", definition.workflow_id),
        ("version", definition.version),
        ("tenant_id", definition.tenant_id),
        *((f"nodes.{_quoted(node)}", node) for node in definition.nodes),
    ]
    for where, value in ids:
        if len(value) > MAX_ID_LENGTH:
            raise InvalidInput(
                f"{path}: {where}",
                f"{len(value):,} characters; an id may have at most {MAX_ID_LENGTH}",
            )


def _check_stored_size(raw: Mapping[str, Any], path: str | Path) -> None:
    """The workflow as the store keeps it (compact JSON) fits `MAX_DEFINITION_BYTES`."""
    try:
        text = json.dumps(raw, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        return  # not JSON: the store refuses it, naming the value
    if len(text) * 4 <= MAX_DEFINITION_BYTES:
        return
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_DEFINITION_BYTES:
        raise InvalidInput(
            str(path),
            f"too large: a workflow may be at most {_megabytes(MAX_DEFINITION_BYTES)} as "
            f"the JSON the store keeps; this one is {_megabytes(size)}",
        )
