"""Properties of the condition language, checked against a reference interpreter.

Expression trees are generated in the language (paths, literals in every spelling, lists,
comparisons, ``and``/``or``/``not``), rendered to text, parsed by `parse_condition` and
evaluated; the result must equal what the small model below computes from the same tree.
The model is written from the module doc, not from the implementation: missing is null,
JSON equality at every depth, ordering only within numbers or within strings, and only
the boolean ``true`` is true.

The strategies live here rather than in `charter.testing.strategies` because conditions are
not yet one of its domain types; they are plural nouns with keyword-only bounds and build
every value constructively.
"""

from __future__ import annotations

import contextlib
import operator
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeAlias

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from charter.core.conditions import Condition, parse_condition
from charter.core.errors import InvalidInput
from charter.testing.strategies import json_values

# ── expression trees ───────────────────────────────────────────────────────────────────

KEYS = ("a", "b", "c", "x y")  # "x y" is only reachable with an index, never an attribute
ROOTS = ("state", "output", "inputs")
COMPARISONS = ("==", "!=", "<", "<=", ">", ">=", "in", "not in")


@attrs.frozen
class Path:
    root: str
    keys: tuple[str | int, ...]
    as_attribute: tuple[bool, ...]  # per key: `.a` rather than `["a"]` (string keys only)


@attrs.frozen
class Literal:
    text: str
    value: Any


@attrs.frozen
class ListOf:
    items: tuple[Expr, ...]


@attrs.frozen
class Compare:
    left: Expr
    rest: tuple[tuple[str, Expr], ...]


@attrs.frozen
class BoolOp:
    op: str  # "and" | "or"
    values: tuple[Expr, ...]


@attrs.frozen
class Not:
    operand: Expr


Expr: TypeAlias = Path | Literal | ListOf | Compare | BoolOp | Not


def render(expr: Expr) -> str:
    """The condition text of a tree; every compound is parenthesized, so no precedence
    question arises."""
    match expr:
        case Path(root=root, keys=keys, as_attribute=styles):
            parts = [
                f".{key}" if style and isinstance(key, str) and key.isidentifier() else f"[{key!r}]"
                for key, style in zip(keys, styles, strict=True)
            ]
            return root + "".join(parts)
        case Literal(text=text):
            return text
        case ListOf(items=items):
            return "[" + ", ".join(render(item) for item in items) + "]"
        case Compare(left=left, rest=rest):
            return "(" + render(left) + "".join(f" {op} {render(r)}" for op, r in rest) + ")"
        case BoolOp(op=op, values=values):
            return "(" + f" {op} ".join(render(v) for v in values) + ")"
        case Not(operand=operand):
            return f"(not {render(operand)})"


# ── the reference interpreter ──────────────────────────────────────────────────────────


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def json_equal(left: Any, right: Any) -> bool:
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    if is_number(left) and is_number(right):
        return bool(left == right)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(
            json_equal(a, b) for a, b in zip(left, right, strict=True)
        )
    if isinstance(left, dict) and isinstance(right, dict):
        return set(left) == set(right) and all(json_equal(left[k], right[k]) for k in left)
    if left is None or right is None:
        return left is None and right is None
    return type(left) is type(right) and bool(left == right)


def json_contains(container: Any, item: Any) -> bool:
    if isinstance(container, str):
        return isinstance(item, str) and item in container
    if isinstance(container, list):
        return any(json_equal(item, element) for element in container)
    if isinstance(container, dict):
        return isinstance(item, str) and item in container
    return False


ORDERINGS: Mapping[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def compare(op: str, left: Any, right: Any) -> bool:
    if op == "==":
        return json_equal(left, right)
    if op == "!=":
        return not json_equal(left, right)
    if op == "in":
        return json_contains(right, left)
    if op == "not in":
        return not json_contains(right, left)
    same_kind = (is_number(left) and is_number(right)) or (
        isinstance(left, str) and isinstance(right, str)
    )
    return same_kind and ORDERINGS[op](left, right)


def model_value(expr: Expr, scope: Mapping[str, Any]) -> Any:
    match expr:
        case Path(root=root, keys=keys):
            value = scope[root]
            for key in keys:
                if isinstance(value, dict) and isinstance(key, str):
                    value = value.get(key)
                elif isinstance(value, list) and isinstance(key, int) and key < len(value):
                    value = value[key]
                else:
                    value = None  # missing is null
            return value
        case Literal(value=value):
            return value
        case ListOf(items=items):
            return [model_value(item, scope) for item in items]
        case Compare(left=left, rest=rest):
            values = [model_value(left, scope)] + [model_value(r, scope) for _, r in rest]
            return all(compare(op, values[i], values[i + 1]) for i, (op, _) in enumerate(rest))
        case BoolOp(op="and", values=values):
            return all(model_value(v, scope) is True for v in values)
        case BoolOp(values=values):
            return any(model_value(v, scope) is True for v in values)
        case Not(operand=operand):
            return model_value(operand, scope) is not True


def model_holds(expr: Expr, scope: Mapping[str, Any]) -> bool:
    return model_value(expr, scope) is True


# ── strategies ─────────────────────────────────────────────────────────────────────────


def scalars() -> st.SearchStrategy[Any]:
    """Small JSON scalars, so that generated literals and state values often coincide."""
    return (
        st.none()
        | st.booleans()
        | st.integers(min_value=-3, max_value=3)
        | st.sampled_from([0.0, 0.5, -1.5, 2.0])
        | st.sampled_from(["", "a", "ab", "b", "x y"])
    )


def documents(*, max_leaves: int = 10) -> st.SearchStrategy[Any]:
    """JSON values whose object keys are those paths use."""
    return st.recursive(
        scalars(),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)
        ),
        max_leaves=max_leaves,
    )


def scopes(*, values: st.SearchStrategy[Any] | None = None) -> st.SearchStrategy[dict[str, Any]]:
    """The three names a condition reads."""
    values = documents() if values is None else values
    return st.fixed_dictionaries(dict.fromkeys(ROOTS, values))


SPELLINGS: Mapping[object, tuple[str, ...]] = {
    True: ("true", "True"),
    False: ("false", "False"),
    None: ("null", "None"),
}


@st.composite
def literals(draw: st.DrawFn) -> Literal:
    """Scalar literals, each in one of its spellings (``true``/``True``, ``-1``, ``'a'``)."""
    value = draw(scalars())
    if value is None or isinstance(value, bool):
        return Literal(draw(st.sampled_from(SPELLINGS[value])), value)
    return Literal(repr(value), value)


@st.composite
def paths(draw: st.DrawFn, *, roots: tuple[str, ...] = ROOTS, max_keys: int = 3) -> Path:
    """``state.a[0]["x y"]`` and the like."""
    keys = tuple(draw(st.lists(st.sampled_from(KEYS) | st.integers(0, 3), max_size=max_keys)))
    styles = tuple(draw(st.lists(st.booleans(), min_size=len(keys), max_size=len(keys))))
    return Path(draw(st.sampled_from(roots)), keys, styles)


def expressions(*, max_leaves: int = 12) -> st.SearchStrategy[Expr]:
    """Expression trees in the language, of every construct it has."""
    leaves: st.SearchStrategy[Expr] = st.one_of(paths(), literals())

    def extend(inner: st.SearchStrategy[Expr]) -> st.SearchStrategy[Expr]:
        return st.one_of(
            st.builds(ListOf, st.lists(inner, max_size=3).map(tuple)),
            st.builds(
                Compare,
                inner,
                st.lists(
                    st.tuples(st.sampled_from(COMPARISONS), inner), min_size=1, max_size=2
                ).map(tuple),
            ),
            st.builds(
                BoolOp,
                st.sampled_from(["and", "or"]),
                st.lists(inner, min_size=2, max_size=3).map(tuple),
            ),
            st.builds(Not, inner),
        )

    return st.recursive(leaves, extend, max_leaves=max_leaves)


TOKENS = (
    "state", "output", "inputs", ".", "a", "b", "[", "]", "(", ")", "0", "-", "-1", "1.5",
    "'x'", '"y"', "true", "false", "null", "None", "True", "==", "!=", "<", "<=", ">", ">=",
    "in", "not", "and", "or", ",", "+", "*", "**", "f", "lambda", ":", "if", "else", "for",
    "is", "~", "\\", "'", '"', "\n", "b'x'", "...", "1j", ":=", "{", "}", "@", "#", "\t",
    "__class__", "\x00", "\ud800", "é", "await", "yield", ";", "=",
)  # fmt: skip


def token_soups(*, max_tokens: int = 25) -> st.SearchStrategy[str]:
    """Strings of condition-like tokens: mostly not conditions, often nearly so."""
    separators = st.sampled_from(["", " "])
    return st.tuples(st.lists(st.sampled_from(TOKENS), max_size=max_tokens), separators).map(
        lambda parts: parts[1].join(parts[0])
    )


SHAPES = (
    ("state", ".a", ""),
    ("state", "[0]", ""),
    ("", "not ", "true"),
    ("", "[", ""),
    ("", "(", "true"),
    ("", "-", "1"),
    ("true", " and true", ""),
    ("1", " < 2", ""),
)


@st.composite
def deep_nestings(draw: st.DrawFn) -> str:
    """One construct repeated up to the length limit: ``state.a.a.a…``, ``not not …``,
    ``[[[…`` (closed again), so nesting depth, not length, is what is tested."""
    head, repeated, tail = draw(st.sampled_from(SHAPES))
    closes = repeated in ("[", "(")
    room = (2000 - len(head) - len(tail)) // (len(repeated) + closes)
    times = draw(st.just(room) | st.integers(min_value=1, max_value=room))
    closing = "]" * times if repeated == "[" else ")" * times if repeated == "(" else ""
    return head + repeated * times + tail + closing


def parse_or_none(source: str) -> Condition | None:
    """The parsed condition, or None when it is refused (and refused only as bad input)."""
    try:
        return parse_condition(source)
    except InvalidInput as error:
        refused = error
    assert refused.where == "condition"
    assert refused.problem
    return None


# ── properties ─────────────────────────────────────────────────────────────────────────


@given(st.text(max_size=80) | token_soups())
def test_parsing_arbitrary_text_returns_a_condition_or_raises_invalid_input(source: str) -> None:
    condition = parse_or_none(source)
    if condition is not None:
        assert condition.source == source


@given(token_soups(), scopes(values=json_values()))
def test_any_parsed_condition_evaluates_to_a_bool_on_any_json(
    source: str, scope: dict[str, Any]
) -> None:
    condition = parse_or_none(source)
    if condition is not None:
        assert type(condition.evaluate(**scope)) is bool


@given(deep_nestings(), scopes(values=json_values()))
def test_nesting_up_to_the_length_limit_is_refused_or_evaluates(
    source: str, scope: dict[str, Any]
) -> None:
    # Never a RecursionError, whether at parsing or at evaluation, even for a caller whose
    # stack is nearly full.
    condition = parse_or_none(source)
    if condition is not None:
        with stack_of(_SPARE_FRAMES):
            result = condition.evaluate(**scope)
        assert type(result) is bool


#: What evaluating an accepted condition may take from the caller's stack: the language's
#: nesting limit (100) and then some, far below the roughly 1000 frames Python allows.
_SPARE_FRAMES = 250


@contextlib.contextmanager
def stack_of(frames: int) -> Iterator[None]:
    """Run the block with only ``frames`` more frames allowed than are in use now.

    Hypothesis raises the recursion limit while it runs a test (by 2000), which would hide a
    stack exhaustion that an ordinary caller meets; this puts a tight limit back."""
    depth = 0
    frame = sys._getframe()
    while frame.f_back is not None:
        frame = frame.f_back
        depth += 1
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + frames)
    try:
        yield
    finally:
        sys.setrecursionlimit(previous)


@given(expressions(), scopes())
def test_a_rendered_tree_parses_and_evaluates_as_the_reference_interpreter(
    expr: Expr, scope: dict[str, Any]
) -> None:
    source = render(expr)
    condition = parse_condition(source)
    assert condition.source == source
    assert condition.evaluate(**scope) is model_holds(expr, scope)


@given(expressions(), scopes(values=json_values()))
def test_a_rendered_tree_never_raises_on_arbitrary_json(expr: Expr, scope: dict[str, Any]) -> None:
    result = parse_condition(render(expr)).evaluate(**scope)
    assert result is model_holds(expr, scope)


@given(expressions(), scopes())
def test_not_is_the_negation(expr: Expr, scope: dict[str, Any]) -> None:
    source = render(expr)
    plain = parse_condition(source).evaluate(**scope)
    assert parse_condition(f"not ({source})").evaluate(**scope) is (not plain)
    assert parse_condition(f"not not ({source})").evaluate(**scope) is plain


@given(expressions(), expressions(), scopes())
def test_de_morgan(a: Expr, b: Expr, scope: dict[str, Any]) -> None:
    left = parse_condition(f"not ({render(a)} and {render(b)})").evaluate(**scope)
    right = parse_condition(f"(not {render(a)}) or (not {render(b)})").evaluate(**scope)
    assert left is right


@given(expressions(), scopes(), st.sampled_from([" ", "\t", "\n", "  \n\t "]))
def test_surrounding_whitespace_changes_nothing(
    expr: Expr, scope: dict[str, Any], blank: str
) -> None:
    source = render(expr)
    padded = parse_condition(blank + source + blank).evaluate(**scope)
    assert padded is parse_condition(source).evaluate(**scope)


@given(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([*sorted(ORDERINGS), "==", "!="]),
)
def test_integer_comparisons_agree_with_python(a: int, b: int, op: str) -> None:
    python = {**ORDERINGS, "==": operator.eq, "!=": operator.ne}[op](a, b)
    assert parse_condition(f"state.a {op} state.b").evaluate(state={"a": a, "b": b}) is python
    assert parse_condition(f"{a!r} {op} {b!r}").evaluate() is python


@given(
    st.text(max_size=8),
    st.text(max_size=8),
    st.sampled_from([*sorted(ORDERINGS), "==", "!="]),
)
def test_string_comparisons_agree_with_python(a: str, b: str, op: str) -> None:
    python = {**ORDERINGS, "==": operator.eq, "!=": operator.ne}[op](a, b)
    assert parse_condition(f"state.a {op} state.b").evaluate(state={"a": a, "b": b}) is python
    assert parse_condition(f"{a!r} {op} {b!r}").evaluate() is python


@given(st.text(max_size=8), st.text(max_size=8))
def test_string_in_is_substring(a: str, b: str) -> None:
    holds = parse_condition("state.a in state.b").evaluate(state={"a": a, "b": b})
    assert holds is (a in b)


@given(
    st.integers(min_value=-100, max_value=100) | st.floats(allow_nan=False),
    st.text(max_size=4) | st.none() | st.booleans() | st.lists(st.integers(), max_size=2),
    st.sampled_from(sorted(ORDERINGS)),
)
def test_ordering_a_number_against_anything_else_is_false(
    number: float, other: object, op: str
) -> None:
    state = {"n": number, "o": other}
    assert parse_condition(f"state.n {op} state.o").evaluate(state=state) is False
    assert parse_condition(f"state.o {op} state.n").evaluate(state=state) is False


@given(json_values())
def test_json_equality_is_reflexive_and_membership_follows(value: Any) -> None:
    state = {"v": value}
    assert parse_condition("state.v == state.v").evaluate(state=state) is True
    assert parse_condition("state.v != state.v").evaluate(state=state) is False
    assert parse_condition("state.v in [1, state.v]").evaluate(state=state) is True


@given(json_values(), json_values())
def test_equality_is_symmetric(a: Any, b: Any) -> None:
    state = {"a": a, "b": b}
    forward = parse_condition("state.a == state.b").evaluate(state=state)
    assert parse_condition("state.b == state.a").evaluate(state=state) is forward
    assert forward is json_equal(a, b)


def value_expressions(
    *, roots: tuple[str, ...] = ROOTS, max_leaves: int = 8
) -> st.SearchStrategy[Expr]:
    """Expressions that stand for a value rather than a truth: paths, literals, lists."""
    return st.recursive(
        st.one_of(paths(roots=roots), literals()),
        lambda inner: st.builds(ListOf, st.lists(inner, max_size=3).map(tuple)),
        max_leaves=max_leaves,
    )


@given(value_expressions(roots=("state", "output")), scopes())
def test_a_value_expression_equals_its_value(expr: Expr, scope: dict[str, Any]) -> None:
    # Whatever a path, literal or list stands for (a missing path: null, inside a list too)
    # compares equal to that value handed in from outside (through `inputs`).
    expected = model_value(expr, scope)
    condition = parse_condition(f"{render(expr)} == inputs.expected")
    assert (
        condition.evaluate(
            state=scope["state"], output=scope["output"], inputs={"expected": expected}
        )
        is True
    )


def swap_numbers_for_booleans(value: Any) -> Any:
    """The same document with every 0 and 1 replaced by false and true."""
    if isinstance(value, list):
        return [swap_numbers_for_booleans(item) for item in value]
    if isinstance(value, dict):
        return {key: swap_numbers_for_booleans(item) for key, item in value.items()}
    if is_number(value) and value in (0, 1):
        return value == 1
    return value


@given(documents())
def test_true_is_not_1_at_any_depth(document: Any) -> None:
    ones = [document, 1]
    state = {"ones": ones, "trues": swap_numbers_for_booleans(ones)}
    assert parse_condition("state.ones == state.trues").evaluate(state=state) is False
    assert parse_condition("state.ones != state.trues").evaluate(state=state) is True
    assert parse_condition("state.ones in [state.trues]").evaluate(state=state) is False
    assert parse_condition("state.ones == state.ones").evaluate(state=state) is True


@given(paths(), documents())
def test_a_path_that_leads_nowhere_is_null(path: Path, document: Any) -> None:
    # Extending any path with a key no document has makes it missing, hence null.
    missing = Path(path.root, (*path.keys, "absent"), (*path.as_attribute, True))
    scope = dict.fromkeys(ROOTS, document)
    assert parse_condition(f"{render(missing)} == null").evaluate(**scope) is True
    assert parse_condition(render(missing)).evaluate(**scope) is False


@given(st.text(max_size=30))
def test_a_condition_longer_than_2000_characters_is_refused(tail: str) -> None:
    source = "true or " * 250 + "true" + tail  # 2004 characters and more
    with pytest.raises(InvalidInput) as refused:
        parse_condition(source)
    assert refused.value.problem == "a condition may be at most 2000 characters"
