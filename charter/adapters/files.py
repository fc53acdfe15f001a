"""Reading YAML / JSON files for the shell: strict, and every error names the file and field.

YAML is parsed with a safe loader that also refuses duplicate keys (PyYAML silently keeps
the last one, which would let a second ``blocked_tools:`` quietly replace the first).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import yaml

from charter.adapters.codec import CodecError, parse_json
from charter.core.errors import InvalidInput, PolicyError, child, describe
from charter.core.policy import CombiningMode, PolicyLayer, PolicyScope, PolicySet
from charter.core.workflow import WorkflowDef, WorkflowInvalid, parse_workflow

__all__ = [
    "TENANT_FINAL",
    "TENANT_MOST_SPECIFIC",
    "PolicyFile",
    "load_policy_file",
    "load_policy_layer",
    "load_workflow_file",
    "parse_policy_document",
    "read_document",
]


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML loading that refuses duplicate mapping keys."""


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
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {mark.line + 1})", mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates
)


def read_document(path: str | Path) -> Any:
    """The data in a YAML or JSON file (``.json`` is parsed as JSON, anything else as YAML,
    which JSON is a subset of). Unreadable or unparsable files raise `InvalidInput`
    naming the file and, where the parser knows it, the line."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInput(str(file), "no such file") from None
    except IsADirectoryError:
        raise InvalidInput(str(file), "is a directory, expected a file") from None
    except UnicodeDecodeError as error:
        raise InvalidInput(str(file), f"not UTF-8 text ({error.reason})") from None
    except OSError as error:
        raise InvalidInput(str(file), f"cannot read: {error.strerror}") from None
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
        raise InvalidInput(where, f"invalid YAML: {error.problem}") from None
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
        # A bare tenant set may say how it combines; it must still hold a rule list, so
        # that a layered file's top-level `combining:` alone is not taken for one.
        return bool(keys & rules) and keys <= rules | {"combining", *PolicySet.TENANT_KEYS}
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
        raise PolicyError(
            child(where, strange[0]),
            "unknown key (expected tenant, workflow, node and combining, "
            f"or a bare set with {', '.join(allowed)}"
            f"{' and combining' if tenant else ''})",
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


def load_policy_file(path: str | Path, scope: PolicyScope = PolicyScope.WORKFLOW) -> PolicyFile:
    """Read and parse a policy file; errors name the file and the field."""
    data = read_document(path)
    try:
        return parse_policy_document(data, where="", scope=scope)
    except InvalidInput as error:
        raise error.within(f"{path}:") from None


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
    data = read_document(path)
    try:
        policy = parse_policy_document(data, where="", scope=scope)
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


def load_workflow_file(path: str | Path) -> tuple[WorkflowDef, dict[str, Any]]:
    """Read, validate and return a workflow file's definition and its raw JSON form (what
    the store keeps). Every problem is reported at once, each with the file and its path."""
    data = read_document(path)
    try:
        definition = parse_workflow(data, str(path))
    except WorkflowInvalid as error:
        raise error.within(f"{path}:") from None
    raw = dict(data) if isinstance(data, Mapping) else {}
    return definition, raw
