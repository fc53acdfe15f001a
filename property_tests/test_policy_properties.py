"""Properties of glob matching and layered policy evaluation."""

from __future__ import annotations

import re

import attrs
from hypothesis import assume, given
from hypothesis import strategies as st

from charter.core import (
    Allow,
    Block,
    CombiningMode,
    EvaluationContext,
    PolicyDecision,
    PolicyEvaluator,
    PolicyLayer,
    PolicyScope,
    PolicySet,
    RequireApproval,
    glob_match,
)
from charter.core.conditions import Undetermined
from charter.core.policy import ConditionalRule, Rule
from charter.testing.strategies import (
    calls,
    conditional_rules,
    conditions,
    evaluation_contexts,
    glob_patterns,
    json_values,
    names,
    policy_chains,
    policy_sets,
)

MOST_SPECIFIC = PolicyEvaluator(CombiningMode.MOST_SPECIFIC)
DENY_OVERRIDES = PolicyEvaluator(CombiningMode.DENY_OVERRIDES)


def regex_glob(pattern: str, value: str) -> bool:
    """The oracle: the same language as a regular expression."""
    translated = "".join(
        ".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern
    )
    return re.fullmatch(translated, value, re.DOTALL) is not None


def bare(rule: Rule) -> str:
    """The pattern of an unconditional rule (the sets these oracles see have no others)."""
    assert isinstance(rule, str)
    return rule


@given(glob_patterns(alphabet="ab.*?\\[]", max_size=10), names(alphabet="ab.*?\\[]\n", max_size=12))
def test_glob_equals_regex_oracle(pattern: str, value: str) -> None:
    assert glob_match(pattern, value) == regex_glob(pattern, value)


@given(st.text(max_size=8), st.text(max_size=12))
def test_glob_equals_regex_oracle_on_any_unicode(pattern: str, value: str) -> None:
    assert glob_match(pattern, value) == regex_glob(pattern, value)


@given(names(max_size=12))
def test_literal_pattern_matches_only_itself(value: str) -> None:
    assume("*" not in value and "?" not in value)
    assert glob_match(value, value)
    assert not glob_match(value, value + "x")


def test_glob_is_linear_on_star_heavy_patterns() -> None:
    # Exponential backtracking would not finish; the answers themselves are checked too.
    value = "a" * 10_000
    assert glob_match("*" * 50, value)
    assert not glob_match("*a" * 25 + "b", value)
    assert glob_match("*a" * 25 + "*", value)
    assert not glob_match("*a?" * 25 + "b", value)


# ── the oracle for evaluation: upstream's algorithm (reference §2.4), transcribed ──


def reference_evaluate(ctx: EvaluationContext, sets: list[PolicySet]) -> PolicyDecision:
    for policy in reversed(sets):
        if ctx.node_kind_tag == "model" and policy.model_allowlist:
            if any(
                regex_glob(bare(p), name)
                for p in policy.model_allowlist
                for name in ctx.model_candidates()
            ):
                return Allow()
            return Block("model allowlist")
        if ctx.tool_name is not None:
            for p in policy.blocked_tools:
                if regex_glob(bare(p), ctx.tool_name):
                    return Block(f"tool '{ctx.tool_name}' matches blocked pattern '{p}'")
            for p in policy.require_approval_for:
                if regex_glob(bare(p), ctx.tool_name):
                    return RequireApproval("human")
    return Allow()


def _kind(decision: PolicyDecision) -> str:
    return type(decision).__name__


def _severity(decision: PolicyDecision) -> int:
    return {"Allow": 0, "RequireApproval": 1, "Block": 2}[_kind(decision)]


def _sets(chain: tuple[PolicyLayer, ...]) -> list[PolicySet]:
    return [layer.policy for layer in chain]


@given(evaluation_contexts(), policy_chains())
def test_indexed_evaluation_equals_upstream_algorithm(
    ctx: EvaluationContext, chain: tuple[PolicyLayer, ...]
) -> None:
    got = MOST_SPECIFIC.evaluate(ctx, chain)
    want = reference_evaluate(ctx, _sets(chain))
    assert _kind(got) == _kind(want)
    if isinstance(want, Block) and ctx.node_kind_tag != "model":
        assert got == want  # same pattern named: the first matching one in list order


@given(evaluation_contexts(), policy_chains())
def test_deciding_scope_is_the_most_specific_layer_with_an_opinion(
    ctx: EvaluationContext, chain: tuple[PolicyLayer, ...]
) -> None:
    verdict = MOST_SPECIFIC.explain(ctx, chain)
    solo = [
        (layer.scope, MOST_SPECIFIC.explain(ctx, [layer]))
        for layer in reversed(chain)
        if MOST_SPECIFIC.explain(ctx, [layer]).rule is not None
    ]
    if isinstance(verdict.decision, Allow) and verdict.rule is None:
        assert not solo
    else:
        assert solo
        scope, first = solo[0]
        assert verdict.scope == scope
        assert verdict.decision == first.decision


@given(evaluation_contexts(kinds=("tool", "mcp_tool", "python_fn", "agent")), policy_sets())
def test_within_a_set_block_beats_approval(ctx: EvaluationContext, policy: PolicySet) -> None:
    tool = ctx.tool_name
    assert tool is not None  # every acting kind is named
    both = PolicySet(
        blocked_tools=[*policy.blocked_tools, tool],
        require_approval_for=[tool, *policy.require_approval_for],
    )
    for evaluator in (MOST_SPECIFIC, DENY_OVERRIDES):
        assert isinstance(evaluator.evaluate(ctx, [both]), Block)


@given(evaluation_contexts(), policy_chains(), st.integers(min_value=0, max_value=3))
def test_an_empty_set_anywhere_changes_nothing(
    ctx: EvaluationContext, chain: tuple[PolicyLayer, ...], position: int
) -> None:
    sets = _sets(chain)
    padded = [*sets[:position], PolicySet(), *sets[position:]]
    for evaluator in (MOST_SPECIFIC, DENY_OVERRIDES):
        assert evaluator.evaluate(ctx, padded) == evaluator.evaluate(ctx, sets)


def _blocking_set(ctx: EvaluationContext) -> PolicySet:
    """A set that blocks ``ctx`` on its own: its tool name blocked, or (for a model, or a
    node without a name) an allowlist nothing matches."""
    if ctx.node_kind_tag != "model" and ctx.tool_name is not None:
        return PolicySet(blocked_tools=[ctx.tool_name])
    return PolicySet(model_allowlist=["\x00matches-no-generated-name"])


@given(
    evaluation_contexts(kinds=("tool", "mcp_tool", "agent", "model")),
    policy_chains(),
    policy_sets(),
    st.integers(min_value=0, max_value=3),
    st.integers(min_value=0, max_value=3),
)
def test_under_deny_overrides_adding_a_set_never_weakens_a_block(
    ctx: EvaluationContext,
    chain: tuple[PolicyLayer, ...],
    extra: PolicySet,
    block_at: int,
    position: int,
) -> None:
    sets = _sets(chain)
    sets.insert(min(block_at, len(sets)), _blocking_set(ctx))  # a Block by construction
    assert isinstance(DENY_OVERRIDES.evaluate(ctx, sets), Block)
    after = DENY_OVERRIDES.evaluate(ctx, [*sets[:position], extra, *sets[position:]])
    assert isinstance(after, Block)


@given(evaluation_contexts(), policy_chains(), policy_sets(), st.integers(min_value=0, max_value=3))
def test_under_deny_overrides_adding_a_set_never_lowers_severity(
    ctx: EvaluationContext, chain: tuple[PolicyLayer, ...], extra: PolicySet, position: int
) -> None:
    sets = _sets(chain)
    before = DENY_OVERRIDES.evaluate(ctx, sets)
    after = DENY_OVERRIDES.evaluate(ctx, [*sets[:position], extra, *sets[position:]])
    assert _severity(after) >= _severity(before)


@given(evaluation_contexts(), policy_chains())
def test_deny_overrides_is_never_more_permissive_than_most_specific(
    ctx: EvaluationContext, chain: tuple[PolicyLayer, ...]
) -> None:
    strict = DENY_OVERRIDES.evaluate(ctx, chain)
    default = MOST_SPECIFIC.evaluate(ctx, chain)
    assert _severity(strict) >= _severity(default)


@st.composite
def reshuffled(draw: st.DrawFn, patterns: tuple[Rule, ...]) -> list[Rule]:
    """The same patterns, permuted, with some duplicated."""
    items = list(patterns)
    extra = draw(st.lists(st.sampled_from(items), max_size=3)) if items else []
    return draw(st.permutations(items + extra))


@given(evaluation_contexts(), policy_chains(), st.data())
def test_duplicates_and_order_within_a_list_do_not_change_the_decision(
    ctx: EvaluationContext, chain: tuple[PolicyLayer, ...], data: st.DataObject
) -> None:
    shuffled = tuple(
        PolicyLayer(
            layer.scope,
            PolicySet(
                blocked_tools=data.draw(reshuffled(layer.policy.blocked_tools)),
                require_approval_for=data.draw(reshuffled(layer.policy.require_approval_for)),
                model_allowlist=data.draw(reshuffled(layer.policy.model_allowlist)),
            ),
        )
        for layer in chain
    )
    for evaluator in (MOST_SPECIFIC, DENY_OVERRIDES):
        original = evaluator.explain(ctx, chain)
        other = evaluator.explain(ctx, shuffled)
        assert _kind(other.decision) == _kind(original.decision)
        assert other.scope == original.scope
        assert other.rule == original.rule
        if other.pattern is not None:  # whichever pattern is named, it really matches
            candidates: tuple[str, ...] = (ctx.tool_name,) if ctx.tool_name is not None else ()
            candidates += ctx.model_candidates()
            assert any(glob_match(other.pattern, name) for name in candidates)


@given(evaluation_contexts(), policy_chains())
def test_a_reported_pattern_belongs_to_the_reported_layer_and_rule(
    ctx: EvaluationContext, chain: tuple[PolicyLayer, ...]
) -> None:
    for evaluator in (MOST_SPECIFIC, DENY_OVERRIDES):
        verdict = evaluator.explain(ctx, chain)
        if verdict.rule is None:
            assert isinstance(verdict.decision, Allow)
            continue
        assert verdict.layer is not None
        layer = chain[verdict.layer]
        assert layer.scope == verdict.scope
        if verdict.pattern is not None:
            assert verdict.pattern in getattr(layer.policy, verdict.rule.value)


@given(evaluation_contexts(), policy_sets())
def test_unscoped_sets_evaluate_like_scoped_layers(
    ctx: EvaluationContext, policy: PolicySet
) -> None:
    scoped = MOST_SPECIFIC.explain(ctx, [PolicyLayer(PolicyScope.NODE, policy)])
    plain = MOST_SPECIFIC.explain(ctx, [policy])
    assert scoped.decision == plain.decision
    assert plain.scope is None


# ── final tenant rules (docs/semantics.md §2.5) ──────────────────────────────────────────

APPROVERS = st.sampled_from(("human", "*", "alice", "finance-*"))
EVALUATORS = (MOST_SPECIFIC, DENY_OVERRIDES)


def _final_tenant_and_below(
    tenant: PolicySet, lower: tuple[PolicyLayer, ...]
) -> tuple[PolicyLayer, ...]:
    """A final tenant layer, then the workflow and node layers of ``lower``."""
    below = tuple(layer for layer in lower if layer.scope is not PolicyScope.TENANT)
    return (PolicyLayer(PolicyScope.TENANT, tenant), *below)


@given(
    evaluation_contexts(),
    policy_sets(final=True, approvers=APPROVERS),
    policy_chains(approvers=APPROVERS),
)
def test_a_final_tenant_rule_is_never_weakened_by_lower_scopes(
    ctx: EvaluationContext, tenant: PolicySet, lower: tuple[PolicyLayer, ...]
) -> None:
    chain = _final_tenant_and_below(tenant, lower)
    alone = MOST_SPECIFIC.evaluate(ctx, [tenant])
    for evaluator in EVALUATORS:
        decision = evaluator.evaluate(ctx, chain)
        if isinstance(alone, Block):
            # a tool the tenant blocks (or a model its allowlist refuses) stays blocked
            assert isinstance(decision, Block)
        elif isinstance(alone, RequireApproval):
            # the tenant's approval stays required, by the approver the tenant named
            assert isinstance(decision, Block) or decision == alone


@given(
    evaluation_contexts(),
    policy_sets(final=True, approvers=APPROVERS),
    policy_chains(approvers=APPROVERS),
)
def test_a_final_tenant_is_at_least_as_strict_as_each_part_and_as_upstream(
    ctx: EvaluationContext, tenant: PolicySet, lower: tuple[PolicyLayer, ...]
) -> None:
    chain = _final_tenant_and_below(tenant, lower)
    upstream = (PolicyLayer(PolicyScope.TENANT, attrs.evolve(tenant, final=False)), *chain[1:])
    for evaluator in EVALUATORS:
        decision = evaluator.evaluate(ctx, chain)
        assert _severity(decision) >= _severity(evaluator.evaluate(ctx, chain[1:]))
        assert _severity(decision) >= _severity(evaluator.evaluate(ctx, chain[:1]))
        assert _severity(decision) >= _severity(evaluator.evaluate(ctx, upstream))


@given(
    evaluation_contexts(),
    policy_sets(final=True, approvers=APPROVERS),
    policy_chains(approvers=APPROVERS),
)
def test_overruled_is_what_the_chain_decides_without_finality(
    ctx: EvaluationContext, tenant: PolicySet, lower: tuple[PolicyLayer, ...]
) -> None:
    chain = _final_tenant_and_below(tenant, lower)
    upstream = (PolicyLayer(PolicyScope.TENANT, attrs.evolve(tenant, final=False)), *chain[1:])
    for evaluator in EVALUATORS:
        verdict = evaluator.explain(ctx, chain)
        before = evaluator.explain(ctx, upstream)
        if verdict.overruled is None:
            # nothing overruled: finality changed nothing
            assert verdict == before
            continue
        overruled = verdict.overruled
        assert verdict.decision != before.decision
        assert verdict.scope is PolicyScope.TENANT
        assert (overruled.decision, overruled.scope, overruled.rule, overruled.pattern) == (
            before.decision,
            before.scope,
            before.rule,
            before.pattern,
        )
        assert overruled.scope in (PolicyScope.WORKFLOW, PolicyScope.NODE)


@given(evaluation_contexts(), policy_sets(final=True, approvers=APPROVERS), policy_chains())
def test_a_final_tenant_without_objection_changes_nothing(
    ctx: EvaluationContext, tenant: PolicySet, lower: tuple[PolicyLayer, ...]
) -> None:
    chain = _final_tenant_and_below(tenant, lower)
    upstream = (PolicyLayer(PolicyScope.TENANT, attrs.evolve(tenant, final=False)), *chain[1:])
    if isinstance(MOST_SPECIFIC.evaluate(ctx, [tenant]), Allow):
        for evaluator in EVALUATORS:
            assert evaluator.explain(ctx, chain) == evaluator.explain(ctx, upstream)


@given(evaluation_contexts(), policy_chains(tenant_final=False))
def test_sets_that_are_not_final_evaluate_as_upstream(
    ctx: EvaluationContext, chain: tuple[PolicyLayer, ...]
) -> None:
    for layer in chain:
        assert layer.policy.final is None
    assert MOST_SPECIFIC.explain(ctx, chain).overruled is None
    got = MOST_SPECIFIC.evaluate(ctx, chain)
    assert _kind(got) == _kind(reference_evaluate(ctx, _sets(chain)))


# ── conditional rules (docs/semantics.md §2.6) ─────────────────────────────────────────

#: A pattern no drawn name matches (names use the strategies' alphabet, never ``#``).
NEVER = "#never"


def resolved(policy: PolicySet, ctx: EvaluationContext, call: object) -> PolicySet:
    """The unconditional set a conditional one amounts to on ``call``: a block or approval
    rule whose condition holds or cannot be evaluated becomes its bare pattern, one whose
    condition is false is dropped; an allowlist entry stays only when its condition holds
    (otherwise it admits nothing, so it becomes a pattern that matches no name: the list
    stays non-empty, as it was)."""

    def tools(rules: tuple[Rule, ...]) -> list[str]:
        out = []
        for rule in rules:
            if isinstance(rule, str):
                out.append(rule)
            elif rule.judge(call, ctx) is not False:
                out.append(rule.pattern)
        return out

    def models(rules: tuple[Rule, ...]) -> list[str]:
        return [
            rule
            if isinstance(rule, str)
            else rule.pattern
            if rule.judge(call, ctx) is True
            else NEVER
            for rule in rules
        ]

    return attrs.evolve(
        policy,
        blocked_tools=tools(policy.blocked_tools),
        require_approval_for=tools(policy.require_approval_for),
        model_allowlist=models(policy.model_allowlist),
    )


@given(
    evaluation_contexts(),
    policy_chains(conditional=True, tenant_final=None),
    calls(),
    st.sampled_from([MOST_SPECIFIC, DENY_OVERRIDES]),
)
def test_a_conditional_chain_decides_as_its_resolved_unconditional_chain(
    ctx: EvaluationContext,
    chain: tuple[PolicyLayer, ...],
    call: object,
    evaluator: PolicyEvaluator,
) -> None:
    # So a rule whose condition holds (or cannot be evaluated) acts exactly as its
    # unconditional form, and one whose condition is false as if it were not there.
    plain = tuple(PolicyLayer(layer.scope, resolved(layer.policy, ctx, call)) for layer in chain)
    got = evaluator.explain(ctx, chain, call=call)
    want = evaluator.explain(ctx, plain)
    assert _kind(got.decision) == _kind(want.decision)
    if isinstance(want.decision, RequireApproval):
        assert got.decision == want.decision
    assert (got.scope, got.rule, got.pattern, got.layer) == (
        want.scope,
        want.rule,
        want.pattern,
        want.layer,
    )
    assert (got.overruled is None) == (want.overruled is None)


@given(
    evaluation_contexts(kinds=("tool", "mcp_tool", "python_fn")),
    conditional_rules(),
    policy_sets(conditional=True),
    calls(),
    st.sampled_from([MOST_SPECIFIC, DENY_OVERRIDES]),
)
def test_a_conditional_block_never_allows_what_its_unconditional_form_blocks(
    ctx: EvaluationContext,
    rule: ConditionalRule,
    rest: PolicySet,
    call: object,
    evaluator: PolicyEvaluator,
) -> None:
    judged = rule.judge(call, ctx)
    assume(judged is not False)  # it holds, or cannot be evaluated
    conditional = attrs.evolve(rest, blocked_tools=(rule, *rest.blocked_tools))
    unconditional = attrs.evolve(rest, blocked_tools=(rule.pattern, *rest.blocked_tools))
    layers = [PolicyLayer(PolicyScope.WORKFLOW, conditional)]
    plain = [PolicyLayer(PolicyScope.WORKFLOW, unconditional)]
    blocked = isinstance(evaluator.evaluate(ctx, plain, call=call), Block)
    if blocked:
        assert isinstance(evaluator.evaluate(ctx, layers, call=call), Block)
    verdict = evaluator.explain(ctx, layers, call=call)
    if verdict.condition == rule.when and isinstance(judged, Undetermined):
        assert verdict.condition_problem == judged.problem


@given(
    evaluation_contexts(kinds=("tool", "mcp_tool", "python_fn")),
    conditions(),
    policy_chains(conditional=True, tenant_final=None),
    calls(),
    st.sampled_from([MOST_SPECIFIC, DENY_OVERRIDES]),
)
def test_an_unevaluable_condition_never_allows(
    ctx: EvaluationContext,
    when: str,
    chain: tuple[PolicyLayer, ...],
    call: object,
    evaluator: PolicyEvaluator,
) -> None:
    rule = ConditionalRule("tool", "*", when)
    assume(isinstance(rule.judge(call, ctx), Undetermined))
    # The rule in the most specific layer, as a block and as an approval requirement.
    block, approval = PolicySet(blocked_tools=[rule]), PolicySet(require_approval_for=[rule])
    blocked = evaluator.evaluate(ctx, (*chain, PolicyLayer(PolicyScope.NODE, block)), call=call)
    assert isinstance(blocked, Block)
    held = evaluator.evaluate(ctx, (*chain, PolicyLayer(PolicyScope.NODE, approval)), call=call)
    assert not isinstance(held, Allow)


@given(conditions(), json_values(), evaluation_contexts(kinds=("tool", "model")))
def test_judging_a_condition_never_raises_and_gives_a_boolean_or_a_reason(
    when: str, call: object, ctx: EvaluationContext
) -> None:
    judged = ConditionalRule("tool", "*", when).judge(call, ctx)
    assert judged is True or judged is False or isinstance(judged, Undetermined)
    if isinstance(judged, Undetermined):
        assert judged.problem


@st.composite
def _overlapping_chains(
    draw: st.DrawFn,
) -> tuple[EvaluationContext, list[PolicySet | PolicyLayer]]:
    """A context and up to three sets whose rules often name it, the first final (so final
    layers often bound, and overrule, the more specific ones), each set bare or scoped."""
    ctx = draw(evaluation_contexts(kinds=("tool", "model", "mcp_tool")))
    name = ctx.tool_name or ctx.model_ref or "x"
    patterns = st.sampled_from(["*", name, name[:1] + "*", "a*", "b.*"])
    first = policy_sets(patterns=patterns, final=True, conditional=True, approvers=APPROVERS)
    rest = policy_sets(patterns=patterns, final=None, conditional=True, approvers=APPROVERS)
    sets = draw(st.lists(first, max_size=1)) + draw(st.lists(rest, min_size=1, max_size=2))
    scopes = (PolicyScope.TENANT, PolicyScope.WORKFLOW, PolicyScope.NODE)
    return ctx, [
        PolicyLayer(scopes[index], policy) if draw(st.booleans()) else policy
        for index, policy in enumerate(sets)
    ]


@given(_overlapping_chains(), st.none() | calls(), st.sampled_from(EVALUATORS))
def test_evaluate_decides_as_explain(
    drawn: tuple[EvaluationContext, list[PolicySet | PolicyLayer]],
    call: object,
    evaluator: PolicyEvaluator,
) -> None:
    # `evaluate` is the decision alone, written apart from `explain` for speed: any chain
    # (final layers anywhere, conditional rules, bare sets beside layers, either mode)
    # gets the decision `explain` gives.
    ctx, chain = drawn
    for given_as in (chain, tuple(chain)):
        want = evaluator.explain(ctx, given_as, call=call).decision
        assert evaluator.evaluate(ctx, given_as, call=call) == want
