"""Node kinds: their tags, the queue each is dispatched to, and the name policy matches.

Upstream derives the policy-relevant names by reflection over the serialized node kind and
misses several acting kinds (docs/semantics.md §2.4): ``mcp_tool`` reads a key that does not exist,
and ``python_fn``, ``java_fn``, ``finalizer``, ``agent_tool`` and ``coordinator`` have no name
at all, so tool rules silently never apply to them. Here the mapping is an explicit table and
every kind that acts on the world has a policy name (ARCHITECTURE fix 1):

=================  ==========================================================
kind               policy name (``EvaluationContext.tool_name``)
=================  ==========================================================
tool, finalizer    ``tool_ref``
mcp_tool           ``tool`` (the bare tool name, as tool rules are written)
python_fn          ``"<module>.<function>"``
java_fn            ``"<class>.<method>"``
agent              ``agent_ref``
a2a_task           ``skill``
agent_discovery    ``skill``
agent_tool         the explicit agent URI; ``"agent_tool:<node id>"`` for ``auto``
coordinator        ``"coordinator:<node id>"`` (its target is chosen at run time)
model              no tool name; ``model_ref`` (and the resolved model) instead
=================  ==========================================================

Kinds that only route or wait (condition, parallel, join, human_approval, wait, subgraph,
policy, limit_exceeded, memory_retrieval, eval) have no policy name.

Delegating kinds also name the agent they hand work to (``PolicyNames.delegation_target``,
checked against an agent card's ``allowed_delegations``): ``agent`` its ``agent_ref``,
``agent_tool`` its target, ``a2a_task`` its ``remote_agent``; ``coordinator`` and
``agent_discovery`` choose at run time, so their target is a name derived from the node id
that no allowlist of agent ids contains (a card that restricts delegations refuses them).

An unknown tag is an error: a node Charter cannot classify is a node it cannot govern.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import attrs

from charter.core.errors import InvalidInput, UnknownNodeKind, describe

__all__ = [
    "NODE_KINDS",
    "NodeKindInfo",
    "PolicyNames",
    "node_kind_info",
    "node_kind_tag",
    "policy_names",
    "queue_type_for",
    "resolve_model",
]


@attrs.frozen
class NodeKindInfo:
    """What Charter knows about one node kind tag."""

    tag: str
    queue_type: str
    acting: bool  # whether it can act on the world (and so must have a policy name)


def _kinds(*rows: tuple[str, str, bool]) -> Mapping[str, NodeKindInfo]:
    return {tag: NodeKindInfo(tag, queue, acting) for tag, queue, acting in rows}


#: Every node kind tag upstream's IR defines, with its queue (docs/semantics.md §2.4).
NODE_KINDS: Final[Mapping[str, NodeKindInfo]] = _kinds(
    ("model", "model", True),
    ("tool", "tool", True),
    ("python_fn", "python_tool", True),
    ("java_fn", "java_tool", True),
    ("condition", "general", False),
    ("parallel", "general", False),
    ("join", "general", False),
    ("human_approval", "general", False),
    ("wait", "general", False),
    ("subgraph", "general", False),
    ("policy", "general", False),
    ("limit_exceeded", "general", False),
    ("memory_retrieval", "retrieval", False),
    ("finalizer", "tool", True),
    ("agent", "general", True),
    ("mcp_tool", "tool", True),
    ("a2a_task", "tool", True),
    ("agent_discovery", "general", True),
    ("coordinator", "general", True),
    ("agent_tool", "general", True),
    ("eval", "general", False),
)


@attrs.frozen
class PolicyNames:
    """The names of a node that policy rules are matched against, and the agent it hands
    work to (for delegating kinds)."""

    tool_name: str | None = None
    model_ref: str | None = None
    delegation_target: str | None = None


def node_kind_info(tag: object, where: str = "type") -> NodeKindInfo:
    """What Charter knows about a node kind tag; an unknown tag is `UnknownNodeKind`."""
    if not isinstance(tag, str):
        raise UnknownNodeKind(where, f"expected a node kind tag, got {describe(tag)}")
    info = NODE_KINDS.get(tag)
    if info is None:
        known = ", ".join(sorted(NODE_KINDS))
        raise UnknownNodeKind(where, f"unknown node kind {tag!r} (known: {known})")
    return info


def node_kind_tag(kind: Mapping[str, object], where: str = "kind") -> str:
    """The ``type`` tag of a serialized node kind; unknown or missing tags are errors."""
    if not isinstance(kind, Mapping):
        raise InvalidInput(where, f"expected a mapping with a 'type' key, got {describe(kind)}")
    return node_kind_info(kind.get("type"), f"{where}.type").tag


def queue_type_for(tag: str) -> str:
    """The queue a node of kind ``tag`` is dispatched to."""
    return node_kind_info(tag).queue_type


def _field(kind: Mapping[str, object], key: str, where: str) -> str:
    value = kind.get(key)
    if not isinstance(value, str):
        raise InvalidInput(f"{where}.{key}", f"expected a string, got {describe(value)}")
    return value


def policy_names(node_id: str, kind: Mapping[str, object], where: str = "kind") -> PolicyNames:
    """The policy names of a node, from its serialized kind (the table in this module's doc)."""
    tag = node_kind_tag(kind, where)
    match tag:
        case "model":
            return PolicyNames(model_ref=_field(kind, "model_ref", where))
        case "tool" | "finalizer":
            return PolicyNames(tool_name=_field(kind, "tool_ref", where))
        case "mcp_tool":
            return PolicyNames(tool_name=_field(kind, "tool", where))
        case "python_fn":
            module = _field(kind, "module", where)
            return PolicyNames(tool_name=f"{module}.{_field(kind, 'function', where)}")
        case "java_fn":
            cls = _field(kind, "class", where)
            return PolicyNames(tool_name=f"{cls}.{_field(kind, 'method', where)}")
        case "agent":
            agent = _field(kind, "agent_ref", where)
            return PolicyNames(tool_name=agent, delegation_target=agent)
        case "a2a_task":
            remote = kind.get("remote_agent")
            if remote is not None and not isinstance(remote, str):
                raise InvalidInput(
                    f"{where}.remote_agent", f"expected a string, got {describe(remote)}"
                )
            return PolicyNames(tool_name=_field(kind, "skill", where), delegation_target=remote)
        case "agent_discovery":
            skill = _field(kind, "skill", where)
            return PolicyNames(tool_name=skill, delegation_target=f"agent_discovery:{node_id}")
        case "agent_tool":
            target = _agent_tool_target(node_id, kind.get("agent"), where)
            return PolicyNames(tool_name=target, delegation_target=target)
        case "coordinator":
            name = f"coordinator:{node_id}"
            return PolicyNames(tool_name=name, delegation_target=name)
        case _:
            return PolicyNames()


def _agent_tool_target(node_id: str, agent: object, where: str) -> str:
    # Upstream serializes `AgentTarget` as {"explicit": "<uri>"} or "auto"; a bare URI string
    # is accepted too, as workflow authors write it.
    if agent == "auto":
        return f"agent_tool:{node_id}"
    if isinstance(agent, str):
        return agent
    if isinstance(agent, Mapping) and isinstance(agent.get("explicit"), str):
        return str(agent["explicit"])
    raise InvalidInput(
        f"{where}.agent",
        f"expected an agent URI, {{'explicit': URI}} or 'auto', got {describe(agent)}",
    )


def resolve_model(model_ref: str, models: Mapping[str, object] | None) -> str | None:
    """The concrete model an alias stands for, as ``"provider/model"`` (or ``"model"``).

    ``models`` is the workflow's ``models`` table: alias → ``{"provider": …, "model": …}`` or
    alias → model string. ``None`` when the reference is not an alias (then the reference is
    itself the model name).
    """
    if models is None:
        return None
    if not isinstance(models, Mapping):
        raise InvalidInput("models", f"expected a mapping of aliases, got {describe(models)}")
    if model_ref not in models:
        return None
    entry = models[model_ref]
    where = f"models.{model_ref}"
    if isinstance(entry, str):
        return entry
    if not isinstance(entry, Mapping):
        raise InvalidInput(where, f"expected a model name or a mapping, got {describe(entry)}")
    model = entry.get("model")
    if not isinstance(model, str):
        raise InvalidInput(f"{where}.model", f"expected a string, got {describe(model)}")
    provider = entry.get("provider")
    if provider is None:
        return model
    if not isinstance(provider, str):
        raise InvalidInput(f"{where}.provider", f"expected a string, got {describe(provider)}")
    return f"{provider}/{model}"
