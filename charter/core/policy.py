"""Layered tool and model policy: `PolicySet`, `EvaluationContext`, `PolicyEvaluator`.

Default combining (upstream's; docs/semantics.md §2.2): layers are visited most specific
first (node, workflow, tenant); the first layer with a non-Allow outcome decides. Within a
layer a model node is checked against the layer's allowlist (a match allows decisively, a
miss blocks), and a named node is checked against ``blocked_tools`` before ``require_approval_for``.

``deny-overrides`` combining is offered too: a Block at any layer wins over everything, model
allowlists intersect (the model must pass every non-empty allowlist), and otherwise the most
specific approval requirement applies. Adding a layer can then only make a decision stricter.

A set may be **final** (``PolicySet(final=True)``; tenant policy files are final unless they
say ``combining: most-specific``): more specific layers may add restrictions to its rules but
never remove one. Its block stays a block, its approval requirement stays one with its
approver, and its allowlist can only be narrowed. The chain is evaluated by the mode as usual,
then bounded by every final layer; a more specific rule that the bound overruled is reported
(`PolicyVerdict.overruled`). docs/semantics.md §2.5 has the exact rules.

Every `PolicySet` is compiled into an index when it is built: literal patterns go into a hash
map, ``prefix*`` patterns into a map keyed by prefix (probed once per distinct prefix length),
and only patterns with inner wildcards are matched one by one. A decision therefore costs the
same with ten literal or prefix rules as with ten thousand.

A rule may carry a condition on the call (`ConditionalRule`: ``{tool: PATTERN, when:
CONDITION}`` in ``blocked_tools`` and ``require_approval_for``, ``{model: PATTERN, when: …}`` in
``model_allowlist``), in the condition language of `charter.core.conditions` over ``call`` (the
call's arguments) and ``node`` (``{id, kind}``). Conditions are parsed when the set is built;
unconditional rules keep their index, and a conditional rule is judged only for a name its
pattern matches. A condition that cannot be evaluated on the call decides fail-closed: a block
or approval rule applies, an allowlist entry admits nothing (docs/semantics.md §2.6).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias, assert_never, cast

import attrs

from charter.core import _check
from charter.core.canonical import content_digest
from charter.core.conditions import POLICY_NAMES, Condition, Undetermined, parse_condition
from charter.core.errors import InvalidInput, PolicyError, child, describe
from charter.core.glob import GlobPattern
from charter.core.limits import RateLimit, parse_rate_limits
from charter.core.nodes import NODE_KINDS, node_kind_info, policy_names, resolve_model
from charter.core.signing import decode_key

__all__ = [
    "ALLOW",
    "Allow",
    "Block",
    "CombiningMode",
    "ConditionalRule",
    "EvaluationContext",
    "Overruled",
    "PolicyDecision",
    "PolicyEvaluator",
    "PolicyLayer",
    "PolicyRule",
    "PolicyScope",
    "PolicySet",
    "PolicyVerdict",
    "RequireApproval",
    "Rule",
    "layer_verdict",
    "policy_chain",
]


class PolicyScope(enum.Enum):
    """Where a policy set comes from, least specific first."""

    TENANT = "tenant"
    WORKFLOW = "workflow"
    NODE = "node"


class PolicyRule(enum.Enum):
    """The list of a policy set that decided."""

    BLOCKED_TOOLS = "blocked_tools"
    REQUIRE_APPROVAL_FOR = "require_approval_for"
    MODEL_ALLOWLIST = "model_allowlist"


class CombiningMode(enum.Enum):
    """How decisions of several layers combine."""

    #: Upstream's: the most specific layer with an opinion decides (it may weaken a less
    #: specific block to an approval, or allow a model a less specific allowlist refuses).
    MOST_SPECIFIC = "most-specific"
    #: Cedar-style: a block anywhere wins; allowlists intersect.
    DENY_OVERRIDES = "deny-overrides"


# ── decisions ──────────────────────────────────────────────────────────────────────────


@attrs.frozen
class Allow:
    """The node may run as far as policy is concerned."""


@attrs.frozen
class Block:
    """The node must not run. ``reason`` names the rule and the pattern."""

    reason: str


@attrs.frozen
class RequireApproval:
    """The node may run only once ``approver`` has approved this exact request."""

    approver: str = "human"


PolicyDecision = Allow | Block | RequireApproval

#: The one `Allow` value; `Allow()` builds an equal one.
ALLOW = Allow()


# ── inputs ─────────────────────────────────────────────────────────────────────────────


@attrs.frozen
class EvaluationContext:
    """The node being decided on, as policy sees it.

    ``model_ref`` is the model as written in the node (possibly an alias); ``resolved_model``
    is the concrete model the alias stands for. When it is known, model allowlists are matched
    against it and never against the alias alone (ARCHITECTURE fix 2). ``delegation_target``
    is the agent a delegating node hands work to (checked against an agent card's
    ``allowed_delegations``).

    A context is checked against the node-kind table when it is built: the tag must be
    known, a model node needs a ``model_ref`` and every other acting kind a ``tool_name``, so
    a misspelt or unnamed node can never slip past the rules meant for it.
    """

    node_id: str
    node_kind_tag: str
    tool_name: str | None = None
    model_ref: str | None = None
    resolved_model: str | None = attrs.field(default=None, kw_only=True)
    delegation_target: str | None = attrs.field(default=None, kw_only=True)

    def __attrs_post_init__(self) -> None:
        # One pass of checks (contexts are built per decision, so this is a hot path).
        if type(self.node_id) is not str:
            _check.text(self.node_id, "node_id", PolicyError)
        tag = self.node_kind_tag
        info = NODE_KINDS.get(tag) if type(tag) is str else None
        if info is None:
            info = node_kind_info(tag, "node_kind_tag")  # raises UnknownNodeKind
        for name in ("tool_name", "model_ref", "resolved_model", "delegation_target"):
            value = getattr(self, name)
            if value is not None and type(value) is not str:
                _check.optional_text(value, name, PolicyError)
        if tag == "model":
            if self.model_ref is None:
                raise PolicyError("model_ref", "a model node needs its model reference")
        elif info.acting and self.tool_name is None:
            raise PolicyError(
                "tool_name", f"a {tag} node acts on the world and needs its policy name"
            )

    @classmethod
    def from_node_kind(
        cls,
        node_id: str,
        kind: Mapping[str, object],
        *,
        models: Mapping[str, object] | None = None,
    ) -> EvaluationContext:
        """The context for a node from its serialized kind (``{"type": "tool", …}``) and the
        workflow's ``models`` table (alias → model), with every acting kind named."""
        names = policy_names(node_id, kind)
        resolved = None
        if names.model_ref is not None:
            resolved = resolve_model(names.model_ref, models)
        return cls(
            node_id,
            str(kind["type"]),
            tool_name=names.tool_name,
            model_ref=names.model_ref,
            resolved_model=resolved,
            delegation_target=names.delegation_target,
        )

    def model_candidates(self) -> tuple[str, ...]:
        """The names a model allowlist may match: the resolved model and its bare model name
        when the alias is resolved, otherwise the reference as written."""
        if self.resolved_model is not None:
            bare = self.resolved_model.rsplit("/", 1)[-1]
            if bare != self.resolved_model:
                return (self.resolved_model, bare)
            return (self.resolved_model,)
        if self.model_ref is not None:
            return (self.model_ref,)
        return ()


class ConditionalRule(Mapping[str, str | float]):
    """A rule object: a pattern with a condition on the call, an approval expiry, or both.

    ``{tool: PATTERN, when: CONDITION}`` (``subject`` ``"tool"``, in ``blocked_tools`` and
    ``require_approval_for``) or ``{model: PATTERN, when: CONDITION}`` (``subject``
    ``"model"``, in ``model_allowlist``) applies only when its condition holds on the call.
    In ``require_approval_for`` an entry may also say ``expires_after_secs: SECONDS``: how
    long an approval given under this rule stays usable (docs/semantics.md §5.2); ``when``
    is then optional (``{tool: PATTERN, expires_after_secs: 600}`` is an unconditional rule).

    It is its own JSON shape (a read-only mapping of those keys), so it encodes, digests
    and compares as that object. The condition is parsed once, when the rule is built.
    """

    __slots__ = ("_condition", "_hash", "expires_after_secs", "pattern", "subject", "when")

    subject: str
    pattern: str
    when: str | None
    expires_after_secs: float | None
    _condition: Condition | None
    _hash: int

    def __init__(
        self,
        subject: str,
        pattern: str,
        when: str | None,
        where: str = "rule",
        *,
        expires_after_secs: float | None = None,
    ) -> None:
        if subject not in ("tool", "model"):
            raise PolicyError(where, f"expected 'tool' or 'model', got {describe(subject)}")
        (checked,) = _check.patterns([pattern], child(where, subject), PolicyError)
        if not checked:
            raise PolicyError(
                f"{child(where, subject)}[0]", "an empty pattern matches no name (write the name)"
            )
        expiry = _seconds(expires_after_secs, child(where, "expires_after_secs"))
        if expiry is not None and subject != "tool":
            raise PolicyError(
                child(where, "expires_after_secs"),
                "an approval expiry belongs on a require_approval_for rule",
            )
        condition: Condition | None = None
        if when is not None:
            try:
                condition = parse_condition(when, child(where, "when"), names=POLICY_NAMES)
            except InvalidInput as error:
                raise PolicyError(error.where, error.problem) from None
        elif expiry is None:
            raise PolicyError(
                where,
                f"expected {{{subject}: PATTERN, when: CONDITION}}: missing key 'when'",
            )
        setter = object.__setattr__
        setter(self, "subject", subject)
        setter(self, "pattern", checked)
        setter(self, "when", when)
        setter(self, "expires_after_secs", expiry)
        setter(self, "_condition", condition)
        setter(self, "_hash", hash((subject, checked, when, expiry)))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"a ConditionalRule is immutable (cannot set {name})")

    def __getitem__(self, key: str) -> str | float:
        if key == self.subject:
            return self.pattern
        if key == "when" and self.when is not None:
            return self.when
        if key == "expires_after_secs" and self.expires_after_secs is not None:
            return self.expires_after_secs
        raise KeyError(key)

    def _keys(self) -> tuple[str, ...]:
        keys = [self.subject]
        if self.when is not None:
            keys.append("when")
        if self.expires_after_secs is not None:
            keys.append("expires_after_secs")
        return tuple(keys)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ConditionalRule):
            return (self.subject, self.pattern, self.when, self.expires_after_secs) == (
                other.subject,
                other.pattern,
                other.when,
                other.expires_after_secs,
            )
        return Mapping.__eq__(self, other)

    def __repr__(self) -> str:
        expiry = ""
        if self.expires_after_secs is not None:
            expiry = f", expires_after_secs={self.expires_after_secs!r}"
        return f"ConditionalRule({self.subject}={self.pattern!r}, when={self.when!r}{expiry})"

    def judge(self, call: object, ctx: EvaluationContext) -> bool | Undetermined:
        """Whether the condition holds on ``call`` for the node of ``ctx`` (never raises;
        a rule without a condition always holds)."""
        if self._condition is None:
            return True
        return self._condition.judge(_names(call, ctx))

    @classmethod
    def parse(
        cls, data: Mapping[str, object], subject: str, where: str, *, approval: bool = False
    ) -> ConditionalRule:
        """A rule from its JSON shape, every key checked (errors name ``where``).
        ``approval``: the rule is a ``require_approval_for`` entry (it may carry
        ``expires_after_secs``)."""
        keys = set(data)
        allowed = {subject, "when", "expires_after_secs"} if approval else {subject, "when"}
        required = {subject} if approval and "expires_after_secs" in keys else {subject, "when"}
        if not (required <= keys <= allowed):
            unknown = sorted(str(key) for key in keys - allowed)
            missing = sorted(required - keys)
            problem = f"unknown key {unknown[0]!r}" if unknown else f"missing key {missing[0]!r}"
            if unknown == ["expires_after_secs"]:
                problem += " (an approval expiry belongs on a require_approval_for rule)"
            shape = f"{{{subject}: PATTERN, when: CONDITION"
            shape += ", expires_after_secs: SECONDS}" if approval else "}"
            raise PolicyError(where, f"expected {shape}: {problem}")
        pattern, when = data[subject], data.get("when")
        if not isinstance(pattern, str):
            raise PolicyError(
                child(where, subject), f"expected a string pattern, got {describe(pattern)}"
            )
        if (when is not None and not isinstance(when, str)) or ("when" in keys and when is None):
            raise PolicyError(
                child(where, "when"), f"expected a condition string, got {describe(when)}"
            )
        expiry = data.get("expires_after_secs")
        # `_seconds` (called by the constructor) checks the value and names the field.
        return cls(subject, pattern, when, where, expires_after_secs=cast("float | None", expiry))


#: The longest approval expiry: a year (as ``resolution_deadline_secs``).
_MAX_SECONDS = 366 * 86_400


def _seconds(value: object, where: str) -> float | None:
    """A duration in seconds: a positive, finite number of at most a year; ``None`` kept."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PolicyError(where, f"expected seconds (a number), got {describe(value)}")
    if not 0 < value <= _MAX_SECONDS:
        raise PolicyError(where, f"expected 0 < seconds <= one year, got {value!r}")
    return float(value)


def _names(call: object, ctx: EvaluationContext) -> dict[str, object]:
    """What a rule's condition sees: ``call`` and ``node`` (``{id, kind}``)."""
    return {"call": call, "node": {"id": ctx.node_id, "kind": ctx.node_kind_tag}}


if TYPE_CHECKING:
    #: A rule of a policy list: a glob pattern, or a pattern with a condition.
    Rule: TypeAlias = str | ConditionalRule
else:
    # The codec reads and writes a rule as the JSON value it is (a string or an object); the
    # set's converters build and check each one.
    Rule = Any


def _pattern_of(rule: Rule) -> str:
    return rule if isinstance(rule, str) else rule.pattern


def _when_of(rule: Rule) -> str | None:
    return None if isinstance(rule, str) else rule.when


#: How a conditional rule decided: its condition, and why it could not be evaluated (if so).
_Judged = tuple[str, str | None]


@attrs.frozen
class _RuleIndex:
    """One list of patterns, indexed; answers "the first pattern in list order that matches".

    Literal patterns are a dict lookup, ``prefix*`` patterns one dict lookup per distinct
    prefix length, and only the remaining general patterns are tried one by one.
    """

    literals: Mapping[str, int]
    prefixes: Mapping[str, int]
    prefix_lengths: tuple[int, ...]
    general: tuple[tuple[int, GlobPattern], ...]
    #: Conditional rules in list order, each with its compiled pattern, its condition and
    #: the condition's text; checked one by one, and their conditions judged only for a
    #: name the pattern matches. (A rule object without a condition is indexed by pattern.)
    conditional: tuple[tuple[int, GlobPattern, Condition, str], ...] = ()

    @classmethod
    def build(cls, rules: Sequence[Rule]) -> _RuleIndex:
        literals: dict[str, int] = {}
        prefixes: dict[str, int] = {}
        general: list[tuple[int, GlobPattern]] = []
        conditional: list[tuple[int, GlobPattern, Condition, str]] = []
        for index, rule in enumerate(rules):
            if not isinstance(rule, str):
                condition, when = rule._condition, rule.when
                if condition is not None and when is not None:
                    conditional.append((index, GlobPattern(rule.pattern), condition, when))
                    continue
            compiled = GlobPattern(_pattern_of(rule))
            if compiled.kind == "literal":
                literals.setdefault(compiled.literal, index)
            elif compiled.kind == "prefix":
                prefixes.setdefault(compiled.literal, index)
            else:
                general.append((index, compiled))
        lengths = tuple(sorted({len(p) for p in prefixes}))
        return cls(literals, prefixes, lengths, tuple(general), tuple(conditional))

    def first_rule(
        self, name: str, call: object, ctx: EvaluationContext
    ) -> tuple[int, _Judged | None] | None:
        """The first rule in list order that applies to ``name`` on ``call``: an
        unconditional match, or a conditional one whose condition holds or cannot be
        evaluated (fail-closed). With it, how its condition decided (``None``: no
        condition)."""
        best = self.first_match(name)
        if not self.conditional:
            return None if best is None else (best, None)
        values: dict[str, object] | None = None  # built once, for the first rule judged
        for index, compiled, condition, when in self.conditional:
            if best is not None and index > best:
                break
            if compiled.matches(name):
                if values is None:
                    values = _names(call, ctx)
                judged = condition.judge(values)
                if judged is True:
                    return index, (when, None)
                if isinstance(judged, Undetermined):
                    return index, (when, judged.problem)
        return None if best is None else (best, None)

    def first_admitting(
        self, names: Iterable[str], call: object, ctx: EvaluationContext
    ) -> tuple[int, _Judged | None] | None:
        """For an allowlist: the first entry admitting one of ``names``. A conditional entry
        admits only when its condition holds; one that cannot be evaluated admits nothing
        (fail-closed)."""
        best = self.any_match(names)
        if not self.conditional:
            return None if best is None else (best, None)
        candidates = tuple(names)
        for index, compiled, condition, when in self.conditional:
            if best is not None and index > best:
                break
            matches = any(compiled.matches(name) for name in candidates)
            if matches and condition.judge(_names(call, ctx)) is True:
                return index, (when, None)
        return None if best is None else (best, None)

    def first_match(self, name: str) -> int | None:
        best = self.literals.get(name)
        if self.prefix_lengths:
            prefixes = self.prefixes
            size = len(name)
            for length in self.prefix_lengths:
                if length > size:
                    break
                hit = prefixes.get(name[:length])
                if hit is not None and (best is None or hit < best):
                    best = hit
        for index, compiled in self.general:
            if best is not None and index > best:
                break
            if compiled.matches(name):
                return index
        return best

    def any_match(self, names: Iterable[str]) -> int | None:
        found: int | None = None
        for name in names:
            hit = self.first_match(name)
            if hit is not None and (found is None or hit < found):
                found = hit
        return found


def _rules(value: object, where: str, subject: str, *, approval: bool = False) -> tuple[Rule, ...]:
    """A list of rules: glob patterns (checked as before) and ``{subject: PATTERN, when:
    CONDITION}`` objects, each condition parsed (an error names ``where[i].when``).
    ``approval``: the list is ``require_approval_for`` (its rules may carry
    ``expires_after_secs``; any other list refuses it, naming it)."""
    if isinstance(value, list | tuple) and any(not isinstance(item, str) for item in value):
        # Strings are checked exactly as a list of patterns is (same paths and messages);
        # a mapping stands in as a placeholder and is checked as a rule below.
        _check.patterns(
            [item if not isinstance(item, Mapping) else "-" for item in value], where, PolicyError
        )
        out: list[Rule] = []
        for index, item in enumerate(value):
            at = f"{where}[{index}]"
            if isinstance(item, ConditionalRule):
                if item.subject != subject:
                    raise PolicyError(
                        at, f"expected {{{subject}: PATTERN, when: …}}, got a {item.subject} rule"
                    )
                if item.expires_after_secs is not None and not approval:
                    raise PolicyError(
                        child(at, "expires_after_secs"),
                        "an approval expiry belongs on a require_approval_for rule",
                    )
                out.append(item)
            elif isinstance(item, Mapping):
                out.append(ConditionalRule.parse(item, subject, at, approval=approval))
            else:
                out.append(item)
        return tuple(out)
    return _check.patterns(value, where, PolicyError)


def _blocked_tools(value: Iterable[Rule | Mapping[str, str]]) -> tuple[Rule, ...]:
    return _rules(value, "blocked_tools", "tool")


def _require_approval_for(value: Iterable[Rule | Mapping[str, str | float]]) -> tuple[Rule, ...]:
    return _rules(value, "require_approval_for", "tool", approval=True)


def _model_allowlist(value: Iterable[Rule | Mapping[str, str]]) -> tuple[Rule, ...]:
    return _rules(value, "model_allowlist", "model")


def _final(value: bool | None) -> bool | None:
    # ``False`` is stored as ``None`` so a set that is not final equals, digests and encodes
    # exactly like one built before the field existed.
    if value is None or value is False:
        return None
    if value is True:
        return True
    raise PolicyError("final", f"expected true or false, got {describe(value)}")


def _approver_keys(value: object) -> tuple[tuple[str, tuple[str, ...]], ...] | None:
    """``{approver: [key, …]}`` (or its pairs) as sorted pairs, each key checked; none is
    kept as ``None`` (so a set without keys encodes and digests as before the field)."""
    if value is None or value == () or value == {} or value == []:
        return None
    shape = f"expected a mapping of approver names to lists of keys, got {describe(value)}"
    if isinstance(value, Mapping):
        items: list[object] = list(value.items())
    elif isinstance(value, tuple | list):
        items = list(value)
    else:
        raise PolicyError("approvers", shape)
    out: dict[str, tuple[str, ...]] = {}
    for item in items:
        if not (isinstance(item, tuple | list) and len(item) == 2):
            raise PolicyError("approvers", shape)
        name, keys = item
        where = child("approvers", str(name))
        text = _check.text(name, "approvers", PolicyError)
        if isinstance(keys, str) or not isinstance(keys, Iterable):
            raise PolicyError(where, f"expected a list of public keys, got {describe(keys)}")
        checked = []
        for index, key in enumerate(keys):
            try:
                decode_key(key, f"{where}[{index}]")
            except InvalidInput as error:
                raise PolicyError(error.where, error.problem) from None
            checked.append(key)
        if not checked:
            raise PolicyError(where, "expected at least one public key (or leave the name out)")
        out[text] = tuple(checked)
    return tuple(sorted(out.items()))


_GROUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _approver_groups(value: object) -> tuple[tuple[str, tuple[str, ...]], ...] | None:
    """``{group: [user id, …]}`` (or its pairs) as sorted pairs of a group name (letters,
    digits, ``_.-``) and its members, exact user ids (no globs, commas or ``group:``), sorted
    and without repeats; none is kept as ``None`` (a set without groups encodes and digests
    as before the field)."""
    if value is None or value == () or value == {} or value == []:
        return None
    shape = f"expected a mapping of group names to lists of user ids, got {describe(value)}"
    if isinstance(value, Mapping):
        items: list[object] = list(value.items())
    elif isinstance(value, tuple | list):
        items = list(value)
    else:
        raise PolicyError("approver_groups", shape)
    out: dict[str, tuple[str, ...]] = {}
    for item in items:
        if not (isinstance(item, tuple | list) and len(item) == 2):
            raise PolicyError("approver_groups", shape)
        name, members = item
        where = child("approver_groups", str(name))
        if not isinstance(name, str) or not _GROUP_NAME.match(name):
            raise PolicyError(
                where, "expected a group name of letters, digits, '_', '.' or '-' (at most 64)"
            )
        if isinstance(members, str) or not isinstance(members, Iterable):
            raise PolicyError(where, f"expected a list of user ids, got {describe(members)}")
        checked: set[str] = set()
        for index, member in enumerate(members):
            if (
                not isinstance(member, str)
                or not member.strip()
                or member != member.strip()
                or any(c in member for c in ",*?[")
                or member.startswith("group:")
            ):
                raise PolicyError(
                    f"{where}[{index}]",
                    f"expected an exact user id (no globs or commas), got {describe(member)}",
                )
            checked.add(member)
        if not checked:
            raise PolicyError(where, "expected at least one member (or leave the group out)")
        out[name] = tuple(sorted(checked))
    return tuple(sorted(out.items()))


def _deadline(value: object) -> float | None:
    """A lost outcome's deadline: seconds, positive and finite (at most a year)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PolicyError("resolution_deadline_secs", f"expected seconds, got {describe(value)}")
    if not 0 < value <= 366 * 86_400:
        raise PolicyError(
            "resolution_deadline_secs", f"expected 0 < seconds <= one year, got {value!r}"
        )
    return float(value)


def _expiries(rules: Sequence[Rule]) -> dict[tuple[str, str | None], float | None]:
    """`PolicySet._expiries`: the first rule per (pattern, condition), as the index picks it."""
    if all(isinstance(rule, str) or rule.expires_after_secs is None for rule in rules):
        return {}
    found: dict[tuple[str, str | None], float | None] = {}
    for rule in rules:
        key = (rule, None) if isinstance(rule, str) else (rule.pattern, rule.when)
        found.setdefault(key, None if isinstance(rule, str) else rule.expires_after_secs)
    return found


def _approval_expiry(value: object) -> float | None:
    """The tenant's default approval expiry: seconds, positive and finite (at most a year)."""
    return _seconds(value, "approval_expiry_secs")


def _approver(value: str | None) -> str | None:
    if value is None:
        return None
    text = _check.text(value, "approver", PolicyError)
    if not text.strip():
        raise PolicyError("approver", "expected a user id, a glob of user ids or 'human'")
    return text


@attrs.frozen
class PolicySet:
    """One layer of policy: three lists of glob patterns (each may be empty).

    * ``blocked_tools``: a node whose policy name matches is blocked.
    * ``require_approval_for``: a node whose policy name matches needs approval — by
      ``approver`` when set (a user id, comma-separated user-id globs, or ``"human"`` for
      any identified person; the default), an extension of upstream's shape.
    * ``model_allowlist``: when non-empty, a model node whose model matches none is blocked.
    * ``approver_keys`` (Charter's, tenant files' ``approvers: {name: [ed25519:…]}``): the
      public keys whose signature an answer by that approver must carry (a list, for
      rotation; docs/semantics.md §5); ``resolver``: who may resolve a lost outcome (same
      form as ``approver``; default any identified person); ``resolution_deadline_secs``:
      how long a lost outcome may wait for an answer before its node fails;
      ``approver_groups``: named groups of user ids an approver or resolver may name as
      ``group:NAME`` (docs/semantics.md §5).
      ``rate_limits`` (`charter.core.limits`): the tenant's windowed limits.
      ``approval_expiry_secs``: how long an approval stays usable once recorded, unless the
      rule that asked for it says otherwise (``expires_after_secs`` on a
      ``require_approval_for`` entry; docs/semantics.md §5.2).
    * ``final`` (Charter's): when true, more specific layers may add restrictions to this
      set's rules but never remove one (docs/semantics.md §2.5). Tenant policy files are
      final by default; in code the default is upstream's (not final). ``False`` is kept as
      ``None``, so a set that is not final equals, digests and encodes as before the field.

    Lists are kept as given (order matters only for which pattern a reason names: the first
    matching one in list order, as upstream). The set is compiled into an index on creation.
    """

    KEYS = ("blocked_tools", "require_approval_for", "model_allowlist", "approver")

    blocked_tools: tuple[Rule, ...] = attrs.field(default=(), converter=_blocked_tools)
    require_approval_for: tuple[Rule, ...] = attrs.field(
        default=(), converter=_require_approval_for
    )
    model_allowlist: tuple[Rule, ...] = attrs.field(default=(), converter=_model_allowlist)
    approver: str | None = attrs.field(default=None, kw_only=True, converter=_approver)
    final: bool | None = attrs.field(default=None, kw_only=True, converter=_final)
    approver_keys: tuple[tuple[str, tuple[str, ...]], ...] | None = attrs.field(
        default=None, kw_only=True, converter=_approver_keys
    )
    resolver: str | None = attrs.field(default=None, kw_only=True, converter=_approver)
    resolution_deadline_secs: float | None = attrs.field(
        default=None, kw_only=True, converter=_deadline
    )
    approver_groups: tuple[tuple[str, tuple[str, ...]], ...] | None = attrs.field(
        default=None, kw_only=True, converter=_approver_groups
    )
    rate_limits: tuple[RateLimit, ...] | None = attrs.field(
        default=None, kw_only=True, converter=parse_rate_limits
    )
    approval_expiry_secs: float | None = attrs.field(
        default=None, kw_only=True, converter=_approval_expiry
    )
    _blocked: _RuleIndex = attrs.field(init=False, eq=False, repr=False, hash=False)
    _approval: _RuleIndex = attrs.field(init=False, eq=False, repr=False, hash=False)
    _allow: _RuleIndex = attrs.field(init=False, eq=False, repr=False, hash=False)
    _digest: str = attrs.field(init=False, eq=False, repr=False, hash=False)
    _requires: RequireApproval = attrs.field(init=False, eq=False, repr=False, hash=False)
    #: ``(pattern, condition) -> expires_after_secs`` of the first ``require_approval_for``
    #: rule with that pattern and condition (``charter.core.expiry``); empty when no rule
    #: of the set carries an expiry.
    _expiries: Mapping[tuple[str, str | None], float | None] = attrs.field(
        init=False, eq=False, repr=False, hash=False
    )

    def __attrs_post_init__(self) -> None:
        setter = object.__setattr__
        setter(self, "_expiries", _expiries(self.require_approval_for))
        setter(self, "_blocked", _RuleIndex.build(self.blocked_tools))
        setter(self, "_approval", _RuleIndex.build(self.require_approval_for))
        setter(self, "_allow", _RuleIndex.build(self.model_allowlist))
        setter(self, "_requires", RequireApproval(self.approver or "human"))
        shape: dict[str, object] = {
            "blocked_tools": list(self.blocked_tools),
            "model_allowlist": list(self.model_allowlist),
            "require_approval_for": list(self.require_approval_for),
        }
        if self.approver is not None:
            shape["approver"] = self.approver
        if self.final:
            shape["final"] = True
        if self.approver_keys:
            shape["approvers"] = {name: list(keys) for name, keys in self.approver_keys}
        if self.resolver is not None:
            shape["resolver"] = self.resolver
        if self.resolution_deadline_secs is not None:
            shape["resolution_deadline_secs"] = self.resolution_deadline_secs
        if self.approver_groups:
            shape["approver_groups"] = {name: list(users) for name, users in self.approver_groups}
        if self.rate_limits:
            shape["rate_limits"] = [limit.to_json() for limit in self.rate_limits]
        if self.approval_expiry_secs is not None:
            shape["approval_expiry_secs"] = self.approval_expiry_secs
        setter(self, "_digest", content_digest(shape))

    @property
    def keys_by_approver(self) -> dict[str, tuple[str, ...]]:
        """The public keys the set names for each approver (signed answers; empty: none)."""
        return dict(self.approver_keys or ())

    @property
    def groups(self) -> dict[str, tuple[str, ...]]:
        """The approver groups the set defines, by name (``group:NAME`` in an approver;
        docs/semantics.md §5)."""
        return dict(self.approver_groups or ())

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of the set's canonical JSON: what an audit records to say which
        policy decided."""
        return self._digest

    #: Keys only a tenant's set may have (who may answer, and with which keys).
    TENANT_KEYS = (
        "approvers",
        "resolver",
        "resolution_deadline_secs",
        "approver_groups",
        "approval_expiry_secs",
        "rate_limits",
    )

    @classmethod
    def from_dict(cls, data: object, where: str = "policy", *, tenant: bool = False) -> PolicySet:
        """A policy set from its JSON shape (upstream ``PolicySetIr`` plus the optional
        ``approver``); a missing list is empty; an unknown key, a non-list or a non-string
        pattern is an error naming it. Finality is not part of this shape: a tenant policy
        file says it with ``combining:`` (`charter.adapters.files`), code with ``final=``."""
        if not isinstance(data, Mapping):
            raise PolicyError(where, f"expected a mapping of pattern lists, got {describe(data)}")
        allowed = (*cls.KEYS, *cls.TENANT_KEYS) if tenant else cls.KEYS
        for key in data:
            if key not in allowed:
                extra = ""
                if not tenant:
                    extra = f"; {', '.join(cls.TENANT_KEYS)} belong to a tenant"
                raise PolicyError(
                    child(where, str(key)),
                    f"unknown policy key (expected one of: {', '.join(allowed)}){extra}",
                )
        blocked, approval, allow = (
            _rules(data.get(key, ()), child(where, key), subject, approval=asks)
            for key, subject, asks in zip(
                cls.KEYS[:3], ("tool", "tool", "model"), (False, True, False), strict=True
            )
        )
        try:
            return cls(
                blocked,
                approval,
                allow,
                approver=data.get("approver"),
                approver_keys=data.get("approvers"),
                resolver=data.get("resolver"),
                resolution_deadline_secs=data.get("resolution_deadline_secs"),
                approver_groups=data.get("approver_groups"),
                rate_limits=data.get("rate_limits"),
                approval_expiry_secs=data.get("approval_expiry_secs"),
            )
        except PolicyError as error:
            raise error.within(where) from None


def _scope(value: PolicyScope | str) -> PolicyScope:
    if isinstance(value, PolicyScope):
        return value
    for scope in PolicyScope:
        if value == scope.value:
            return scope
    raise PolicyError("scope", f"expected tenant, workflow or node, got {describe(value)}")


def _policy(value: PolicySet) -> PolicySet:
    if not isinstance(value, PolicySet):
        raise PolicyError("policy", f"expected a PolicySet, got {describe(value)}")
    return value


@attrs.frozen
class PolicyLayer:
    """A policy set with the scope it comes from. Only a tenant's set may carry the default
    approval expiry (``approval_expiry_secs``): elsewhere it would be ignored, so it is
    refused (a rule says ``expires_after_secs`` instead; docs/semantics.md §5.2)."""

    scope: PolicyScope = attrs.field(converter=_scope)
    policy: PolicySet = attrs.field(converter=_policy)

    def __attrs_post_init__(self) -> None:
        if self.policy.approval_expiry_secs is not None and self.scope is not PolicyScope.TENANT:
            raise PolicyError(
                "approval_expiry_secs",
                f"the default approval expiry belongs to the tenant's policy, not a "
                f"{self.scope.value}'s (a require_approval_for rule may say expires_after_secs)",
            )


def policy_chain(
    tenant: PolicySet | None = None,
    workflow: PolicySet | None = None,
    node: PolicySet | None = None,
) -> tuple[PolicyLayer, ...]:
    """The chain of present layers, least specific first, each labelled with its scope."""
    layers = (
        (PolicyScope.TENANT, tenant),
        (PolicyScope.WORKFLOW, workflow),
        (PolicyScope.NODE, node),
    )
    return tuple(PolicyLayer(scope, policy) for scope, policy in layers if policy is not None)


# ── evaluation ─────────────────────────────────────────────────────────────────────────


@attrs.frozen(kw_only=True)
class Overruled:
    """A more specific rule that would have relaxed a final layer's rule, and did not.

    It is what the chain would have decided had no layer been final: ``decision`` (weaker
    than the verdict's, or an approval by another approver), from ``rule`` / ``pattern`` of
    the layer at index ``layer`` (``scope`` as in `PolicyVerdict`).
    """

    decision: PolicyDecision
    scope: PolicyScope | None = None
    rule: PolicyRule | None = None
    pattern: str | None = None
    layer: int | None = None
    condition: str | None = None


@attrs.frozen(kw_only=True)
class PolicyVerdict:
    """A decision with its explanation: the deciding layer, rule and pattern.

    ``scope`` is ``None`` when the decision is Allow or the deciding set had no scope;
    ``pattern`` is ``None`` for Allow and for a model that no allowlist pattern matched.
    ``overruled`` is set when a final layer's rule decided against a more specific rule that
    would have relaxed it (docs/semantics.md §2.5), and says what that rule would have done.
    ``condition`` is the deciding rule's ``when:`` when it has one (docs/semantics.md §2.6),
    and ``condition_problem`` why it could not be evaluated on the call, when it could not
    (the rule was then applied: fail-closed). Both are ``None`` for an unconditional rule.
    """

    decision: PolicyDecision
    scope: PolicyScope | None = None
    rule: PolicyRule | None = None
    pattern: str | None = None
    layer: int | None = None
    overruled: Overruled | None = None
    condition: str | None = None
    condition_problem: str | None = None

    @property
    def condition_note(self) -> str:
        """`` when <condition>`` for a conditional rule, followed by ``(condition could not
        be evaluated: … → treated as matching)`` when it could not be; empty otherwise."""
        return _condition_note(self.condition, self.condition_problem)


_ALLOW_VERDICT = PolicyVerdict(decision=ALLOW)
_MAX_LISTED = 5


def _condition_note(condition: str | None, problem: str | None) -> str:
    if condition is None:
        return ""
    if problem is None:
        return f" when {condition}"
    return f" when {condition} (condition could not be evaluated: {problem} → treated as matching)"


def _rule_text(rule: Rule) -> str:
    if isinstance(rule, str) or rule.when is None:
        return repr(_pattern_of(rule))
    return f"{rule.pattern!r} when {rule.when}"


def _allowlist_text(patterns: Sequence[Rule]) -> str:
    shown = ", ".join(_rule_text(p) for p in patterns[:_MAX_LISTED])
    extra = len(patterns) - _MAX_LISTED
    return f"{shown}, … and {extra} more" if extra > 0 else shown


def _model_block(ctx: EvaluationContext, policy: PolicySet) -> Block:
    model = ctx.model_ref if ctx.model_ref is not None else "unknown"
    resolved = ""
    if ctx.resolved_model is not None and ctx.resolved_model != ctx.model_ref:
        resolved = f" (resolved to '{ctx.resolved_model}')"
    return Block(
        f"model '{model}'{resolved} is not in the allowlist "
        f"(allowed: {_allowlist_text(policy.model_allowlist)})"
    )


def _tool_block(tool_name: str, pattern: str, judged: _Judged | None) -> Block:
    note = "" if judged is None else _condition_note(*judged)
    return Block(f"tool '{tool_name}' matches blocked pattern '{pattern}'{note}")


def _as_layer(item: PolicySet | PolicyLayer) -> tuple[PolicyScope | None, PolicySet]:
    if isinstance(item, PolicyLayer):
        return item.scope, item.policy
    if isinstance(item, PolicySet):
        return None, item
    raise PolicyError("sets", f"expected PolicySet or PolicyLayer items, got {describe(item)}")


#: What a deciding layer found: decision, scope, rule, pattern (if any), layer index, and
#: how the rule's condition decided (``None``: an unconditional rule).
_Hit = tuple[PolicyDecision, PolicyScope | None, PolicyRule, str | None, int, _Judged | None]


def _mode(value: CombiningMode | str) -> CombiningMode:
    if isinstance(value, CombiningMode):
        return value
    for mode in CombiningMode:
        if value == mode.value:
            return mode
    known = ", ".join(mode.value for mode in CombiningMode)
    raise PolicyError("mode", f"expected one of {known}, got {describe(value)}")


@attrs.frozen
class PolicyEvaluator:
    """Stateless evaluator of a chain of policy sets (least specific first)."""

    mode: CombiningMode = attrs.field(default=CombiningMode.MOST_SPECIFIC, converter=_mode)

    def evaluate(
        self,
        ctx: EvaluationContext,
        sets: Sequence[PolicySet | PolicyLayer],
        *,
        call: object = None,
    ) -> PolicyDecision:
        """The decision for ``ctx`` under ``sets`` (ordered least → most specific).
        ``call`` is what conditional rules see as ``call`` (a JSON value; ``None``: the
        call is not known, so a condition on it cannot be evaluated and its rule applies)."""
        # `_decide`, written out: the decision alone needs neither the overruled hit nor
        # the mode's match statement (docs/performance.md: the evaluator alone).
        if type(ctx) is not EvaluationContext and not isinstance(ctx, EvaluationContext):
            raise PolicyError("ctx", f"expected an EvaluationContext, got {describe(ctx)}")
        if type(sets) is not tuple and not isinstance(sets, list | tuple):
            raise PolicyError("sets", f"expected a list of policy sets, got {describe(sets)}")
        if self.mode is CombiningMode.MOST_SPECIFIC:
            hit = _most_specific(ctx, sets, call)
        else:
            hit = _deny_overrides(ctx, sets, call)
        hit = _bound_by_final_layers(ctx, sets, hit, call)
        return ALLOW if hit is None else hit[0]

    def explain(
        self,
        ctx: EvaluationContext,
        sets: Sequence[PolicySet | PolicyLayer],
        *,
        call: object = None,
    ) -> PolicyVerdict:
        """The decision for ``ctx`` (on ``call``, as for `evaluate`) with the layer, rule,
        pattern and condition that produced it, and the more specific rule a final layer
        overruled, if any."""
        return _verdict(*self._decide(ctx, sets, call))

    def _decide(
        self, ctx: EvaluationContext, sets: Sequence[PolicySet | PolicyLayer], call: object
    ) -> tuple[_Hit | None, _Hit | None]:
        """The deciding hit, and the hit a final layer overruled (``None`` when none was)."""
        if not isinstance(ctx, EvaluationContext):
            raise PolicyError("ctx", f"expected an EvaluationContext, got {describe(ctx)}")
        if not isinstance(sets, list | tuple):
            raise PolicyError("sets", f"expected a list of policy sets, got {describe(sets)}")
        return _decide(self.mode, ctx, sets, call)


def _decide(
    mode: CombiningMode,
    ctx: EvaluationContext,
    sets: Sequence[PolicySet | PolicyLayer],
    call: object,
) -> tuple[_Hit | None, _Hit | None]:
    match mode:
        case CombiningMode.DENY_OVERRIDES:
            hit = _deny_overrides(ctx, sets, call)
        case CombiningMode.MOST_SPECIFIC:
            hit = _most_specific(ctx, sets, call)
        case _:  # pragma: no cover - the converter admits only the two modes
            assert_never(mode)
    bounded = _bound_by_final_layers(ctx, sets, hit, call)
    if bounded is hit:
        return hit, None
    return bounded, hit


def layer_verdict(
    mode: CombiningMode,
    ctx: EvaluationContext,
    layers: Sequence[PolicyLayer],
    call: object = None,
) -> PolicyVerdict:
    """`PolicyEvaluator.explain` for a caller whose inputs are already checked (the gate's
    request checked its context, mode, layers and call when it was built): the same verdict,
    without checking them again, and the one shared Allow verdict when nothing decided."""
    return _verdict(*_decide(mode, ctx, layers, call))


def _verdict(hit: _Hit | None, relaxed: _Hit | None) -> PolicyVerdict:
    if hit is None:
        return _ALLOW_VERDICT
    decision, scope, rule, pattern, layer, judged = hit
    overruled = None
    if relaxed is not None:
        was, was_scope, was_rule, was_pattern, was_layer, was_judged = relaxed
        overruled = Overruled(
            decision=was,
            scope=was_scope,
            rule=was_rule,
            pattern=was_pattern,
            layer=was_layer,
            condition=None if was_judged is None else was_judged[0],
        )
    condition, problem = (None, None) if judged is None else judged
    return PolicyVerdict(
        decision=decision,
        scope=scope,
        rule=rule,
        pattern=pattern,
        layer=layer,
        overruled=overruled,
        condition=condition,
        condition_problem=problem,
    )


def _allowlist(
    ctx: EvaluationContext,
    scope: PolicyScope | None,
    policy: PolicySet,
    position: int,
    call: object,
) -> _Hit:
    """What a non-empty allowlist decides on a model node: Allow by the first admitting
    entry, or Block."""
    found = policy._allow.first_admitting(ctx.model_candidates(), call, ctx)
    if found is not None:
        hit, judged = found
        pattern = _pattern_of(policy.model_allowlist[hit])
        return (ALLOW, scope, PolicyRule.MODEL_ALLOWLIST, pattern, position, judged)
    block = _model_block(ctx, policy)
    return (block, scope, PolicyRule.MODEL_ALLOWLIST, None, position, None)


def _most_specific(
    ctx: EvaluationContext, sets: Sequence[PolicySet | PolicyLayer], call: object
) -> _Hit | None:
    is_model = ctx.node_kind_tag == "model"
    tool_name = ctx.tool_name
    for position in range(len(sets) - 1, -1, -1):
        item = sets[position]
        scope: PolicyScope | None
        if type(item) is PolicyLayer:
            scope, policy = item.scope, item.policy
        elif type(item) is PolicySet:
            scope, policy = None, item
        else:
            scope, policy = _as_layer(item)
        if is_model and policy.model_allowlist:
            return _allowlist(ctx, scope, policy, position, call)
        if tool_name is not None:
            found = _tool_rules(ctx, tool_name, scope, policy, position, call)
            if found is not None:
                return found
    return None


def _tool_rules(
    ctx: EvaluationContext,
    tool_name: str,
    scope: PolicyScope | None,
    policy: PolicySet,
    position: int,
    call: object,
) -> _Hit | None:
    if policy.blocked_tools:
        found = policy._blocked.first_rule(tool_name, call, ctx)
        if found is not None:
            hit, judged = found
            pattern = _pattern_of(policy.blocked_tools[hit])
            block = _tool_block(tool_name, pattern, judged)
            return (block, scope, PolicyRule.BLOCKED_TOOLS, pattern, position, judged)
    if policy.require_approval_for:
        found = policy._approval.first_rule(tool_name, call, ctx)
        if found is not None:
            hit, judged = found
            pattern = _pattern_of(policy.require_approval_for[hit])
            rule = PolicyRule.REQUIRE_APPROVAL_FOR
            return (policy._requires, scope, rule, pattern, position, judged)
    return None


def _deny_overrides(
    ctx: EvaluationContext, sets: Sequence[PolicySet | PolicyLayer], call: object
) -> _Hit | None:
    is_model = ctx.node_kind_tag == "model"
    tool_name = ctx.tool_name
    approval: _Hit | None = None
    for position in range(len(sets) - 1, -1, -1):
        item = sets[position]
        scope: PolicyScope | None
        if type(item) is PolicyLayer:
            scope, policy = item.scope, item.policy
        elif type(item) is PolicySet:
            scope, policy = None, item
        else:
            scope, policy = _as_layer(item)
        if is_model and policy.model_allowlist:
            decided = _allowlist(ctx, scope, policy, position, call)
            if isinstance(decided[0], Block):
                return decided
            continue
        if tool_name is None:
            continue
        found = _tool_rules(ctx, tool_name, scope, policy, position, call)
        if found is None:
            continue
        if isinstance(found[0], Block):
            return found
        if approval is None:
            approval = found
    return approval


# ── final layers ───────────────────────────────────────────────────────────────────────


def _layer_alone(
    ctx: EvaluationContext,
    scope: PolicyScope | None,
    policy: PolicySet,
    position: int,
    call: object,
) -> _Hit | None:
    """What one set decides on its own (``None``: it has no opinion on ``ctx``)."""
    if ctx.node_kind_tag == "model":
        if not policy.model_allowlist:
            return None
        return _allowlist(ctx, scope, policy, position, call)
    if ctx.tool_name is None:
        return None
    return _tool_rules(ctx, ctx.tool_name, scope, policy, position, call)


def _bound(current: _Hit | None, floor: _Hit) -> _Hit | None:
    """``current`` unless it is weaker than what a final layer decided alone (``floor``).

    A final Allow (its allowlist admits the model) bounds nothing: a more specific layer may
    still refuse. A final Block wins over anything but another Block. A final approval wins
    over Allow, and over an approval by another approver (the final layer's approver stays).
    """
    decision = floor[0]
    if isinstance(decision, Allow):
        return current
    if current is None:
        return floor
    now = current[0]
    if isinstance(now, Block):
        return current
    if isinstance(decision, Block):
        return floor
    if isinstance(now, RequireApproval) and now.approver == decision.approver:
        return current
    return floor


def _bound_by_final_layers(
    ctx: EvaluationContext,
    sets: Sequence[PolicySet | PolicyLayer],
    hit: _Hit | None,
    call: object,
) -> _Hit | None:
    """``hit`` bounded by every final layer, most specific first, so that the least specific
    final layer (the tenant) has the last word. Returns ``hit`` itself when nothing changed."""
    for position in range(len(sets) - 1, -1, -1):
        item = sets[position]
        if type(item) is PolicyLayer:
            if not item.policy.final:
                continue
        elif type(item) is PolicySet and not item.final:
            continue
        scope, policy = _as_layer(item)
        if not policy.final:
            continue
        floor = _layer_alone(ctx, scope, policy, position, call)
        if floor is not None:
            hit = _bound(hit, floor)
    return hit
