"""The condition language (`charter.core.conditions`): what it accepts, what it refuses and
where, and how a parsed condition evaluates."""

from __future__ import annotations

from typing import Any

import pytest

from charter.core.conditions import Condition, parse_condition
from charter.core.errors import CharterError, InvalidInput


def holds(source: str, *, state: Any = None, output: Any = None, inputs: Any = None) -> bool:
    """Parse ``source`` and evaluate it; asserts the result is a real bool."""
    result = parse_condition(source).evaluate(state=state, output=output, inputs=inputs)
    assert type(result) is bool
    return result


def refusal(source: object, where: str = "condition") -> InvalidInput:
    """The error ``parse_condition`` raises for ``source``."""
    with pytest.raises(InvalidInput) as caught:
        parse_condition(source, where)
    return caught.value


# ── the three names ────────────────────────────────────────────────────────────────────


def test_state_output_and_inputs_are_read_from_their_own_arguments() -> None:
    condition = parse_condition("state.s == 1 and output.o == 2 and inputs.i == 3")
    assert condition.evaluate(state={"s": 1}, output={"o": 2}, inputs={"i": 3}) is True
    assert condition.evaluate(state={"o": 2}, output={"s": 1}, inputs={"i": 3}) is False
    assert condition.evaluate(state={"s": 1}, output={"o": 2}, inputs={"i": 4}) is False


def test_output_and_inputs_default_to_null() -> None:
    condition = parse_condition("output == null and inputs == null and state == null")
    assert condition.evaluate() is True
    assert condition.evaluate(output={}) is False


# ── access ─────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("state.order.total > 50", True),
        ("state.order.total > 500", False),
        ('state["order"]["total"] == 120', True),
        ("state['order'].currency == 'EUR'", True),
        ('state.order["currency"] != "USD"', True),
        ("state.order.items[0] == 'book'", True),
        ("state.order.items[1] == 'pen'", True),
        ("state.order.items[2] == null", True),  # past the end: missing, so null
        ("state['key with spaces'] == 'yes'", True),
    ],
)
def test_attribute_and_item_access(source: str, expected: bool) -> None:
    state = {
        "order": {"total": 120, "currency": "EUR", "items": ["book", "pen"]},
        "key with spaces": "yes",
    }
    assert holds(source, state=state) is expected


def test_an_attribute_of_a_dunder_name_is_a_key_lookup_not_python_attribute_access() -> None:
    # Lookups never reach Python objects: `__class__` is just a key, absent here.
    assert holds("state.__class__ == null", state={"a": 1}) is True
    assert holds("state.items.__len__ == null", state={"items": [1, 2]}) is True
    assert holds("inputs.__dict__ == null", inputs={}) is True
    # … and present here, where it is read like any other key.
    assert holds("state.__class__ == 'x'", state={"__class__": "x"}) is True


def test_a_mapping_is_indexed_by_string_keys_only() -> None:
    # JSON object keys are strings; an integer index does not coerce to one.
    assert holds("state[0] == null", state={"0": "zero"}) is True
    assert holds("state['0'] == 'zero'", state={"0": "zero"}) is True


def test_a_list_is_indexed_by_integers_only() -> None:
    items = {"items": ["a", "b"]}
    assert holds("state.items[1] == 'b'", state=items) is True
    assert holds("state.items['1'] == null", state=items) is True
    assert holds("state.items[True] == null", state=items) is True  # true is not 1
    assert holds("state.items[0.0] == null", state=items) is True
    assert holds("state.items.first == null", state=items) is True


def test_access_into_a_scalar_is_null() -> None:
    assert holds("state.name.length == null", state={"name": "Ada"}) is True
    assert holds("state.count[0] == null", state={"count": 3}) is True
    assert holds("state.flag.x == null", state={"flag": True}) is True


# ── missing paths are null ─────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("state.flag == null", True),
        ("state.flag == true", False),
        ("state.flag != true", True),
        ("state.flag == false", False),  # null is not false
        ("state.a.b.c == null", True),
        ("state.flag", False),
        ("not state.flag", True),
        ("null in [state.flag]", True),
        ("[state.flag, 1] == [null, 1]", True),
        ("state.flag in [null]", True),
        ("state.flag in 'abc'", False),
        ("state.flag < 1", False),
    ],
)
def test_a_missing_path_is_null(source: str, expected: bool) -> None:
    assert holds(source, state={}) is expected


def test_a_present_null_and_a_missing_key_are_the_same() -> None:
    assert holds("state.a == state.b", state={"a": None}) is True


def test_state_itself_may_be_any_value() -> None:
    assert holds("state.a == null", state=None) is True
    assert holds("state.a == null", state=[1, 2]) is True
    assert holds("state == 'plain'", state="plain") is True
    assert holds("state[0] == 1", state=[1, 2]) is True


# ── literals ───────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("state.v == 'it'", "it"),
        ('state.v == "it"', "it"),
        ("state.v == 42", 42),
        ("state.v == 4.5", 4.5),
        ("state.v == -3", -3),
        ("state.v == -0.25", -0.25),
        ("state.v == 1e3", 1000),
        ("state.v == [1, 'two', null]", [1, "two", None]),
        ("state.v == [[1], []]", [[1], []]),
        ("state.v == (1, 2)", [1, 2]),  # a parenthesized tuple is a list
        ("state.v == [-1, -2.5]", [-1, -2.5]),
    ],
)
def test_literals(source: str, expected: object) -> None:
    assert holds(source, state={"v": expected}) is True
    assert holds(source, state={"v": "something else"}) is False


@pytest.mark.parametrize(
    ("spelling", "value"),
    [
        ("true", True),
        ("True", True),
        ("false", False),
        ("False", False),
        ("null", None),
        ("None", None),
    ],
)
def test_true_false_and_null_have_json_and_python_spellings(spelling: str, value: object) -> None:
    assert holds(f"state.v == {spelling}", state={"v": value}) is True
    assert holds(f"state.v != {spelling}", state={"v": value}) is False


def test_a_bare_literal_holds_only_when_it_is_the_boolean_true() -> None:
    assert holds("true") is True
    assert holds("True") is True
    for source in ("false", "null", "1", "'yes'", "[1]", "[]", "1.0"):
        assert holds(source) is False, source


# ── truth: only the boolean true is true ───────────────────────────────────────────────


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), (False, False), (1, False), ("yes", False), ([1], False), ({"a": 1}, False)],
)
def test_a_path_alone_holds_only_for_the_boolean_true(value: object, expected: bool) -> None:
    assert holds("state.v", state={"v": value}) is expected
    assert holds("not state.v", state={"v": value}) is (not expected)


# ── and, or, not, parentheses ──────────────────────────────────────────────────────────


@pytest.mark.parametrize(("a", "b"), [(True, True), (True, False), (False, True), (False, False)])
def test_and_or_not_truth_tables(a: bool, b: bool) -> None:
    state = {"a": a, "b": b}
    assert holds("state.a and state.b", state=state) is (a and b)
    assert holds("state.a or state.b", state=state) is (a or b)
    assert holds("not state.a", state=state) is (not a)
    assert holds("not (state.a and state.b)", state=state) is (not (a and b))


def test_and_and_or_treat_non_booleans_as_false() -> None:
    # Python's `1 and True` is True; here 1 is not the boolean true.
    assert holds("1 and true") is False
    assert holds("true and 1") is False
    assert holds("'x' or false") is False
    assert holds("state.missing or true", state={}) is True
    assert holds("false and state.missing", state={}) is False


def test_and_or_chains_of_more_than_two() -> None:
    assert holds("true and true and true") is True
    assert holds("true and true and false") is False
    assert holds("false or false or true") is True
    assert holds("false or false or false") is False


def test_precedence_and_parentheses() -> None:
    # `not` binds tighter than `and`, which binds tighter than `or`.
    assert holds("true or true and false") is True
    assert holds("(true or true) and false") is False
    assert holds("not false and false") is False
    assert holds("not (false and false)") is True
    assert holds("not 1 == 2") is True  # `not` applies to the comparison


def test_a_comparison_of_boolean_results() -> None:
    assert holds("(1 < 2) == true") is True
    assert holds("(1 < 2) == 1") is False  # the result is a boolean, and true is not 1
    assert holds("(true and true) == true") is True


# ── comparisons ────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("state.n == 5", True),
        ("state.n != 5", False),
        ("state.n < 6", True),
        ("state.n < 5", False),
        ("state.n <= 5", True),
        ("state.n > 4", True),
        ("state.n > 5", False),
        ("state.n >= 5", True),
        ("state.n >= 5.5", False),
        ("state.n == 5.0", True),  # 1 equals 1.0
        ("state.n > -1", True),
        ("-2 < -1", True),
        ("state.s < 'b'", True),  # strings order as Python's do
        ("state.s >= 'apple'", True),
        ("'B' < 'a'", True),
        ("1 < state.n < 6", True),  # chained, as in Python
        ("1 < state.n < 5", False),
        ("1 < 2 > 1", True),
        ("state.n == state.n", True),
    ],
)
def test_comparisons(source: str, expected: bool) -> None:
    assert holds(source, state={"n": 5, "s": "apple"}) is expected


@pytest.mark.parametrize(
    "source",
    [
        "'3' < 4",
        "'3' > 4",
        "4 <= '3'",
        "4 >= '3'",
        "null < 1",
        "null >= 0",
        "true < 2",  # a boolean is not a number
        "false >= 0",
        "[1] < [2]",  # lists are not ordered
        "[1] <= [1]",
        "state.obj > 0",
        "state.obj <= state.obj",
    ],
)
def test_ordering_values_of_different_types_is_false(source: str) -> None:
    assert holds(source, state={"obj": {"a": 1}}) is False


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("true == 1", False),
        ("false == 0", False),
        ("1 != true", True),
        ("1 == 1.0", True),
        ("[1] == [true]", False),
        ("[1, [2]] == [1.0, [2.0]]", True),
        ("[1, 2] == [2, 1]", False),
        ("[1] == [1, 1]", False),
        ("null == false", False),
        ("'1' == 1", False),
        ("state.d == state.same", True),
        ("state.d == state.booly", False),  # {"a": 1} is not {"a": true}
        ("state.d == state.other", False),
    ],
)
def test_equality_is_json_equality_at_every_depth(source: str, expected: bool) -> None:
    state = {"d": {"a": 1}, "same": {"a": 1.0}, "booly": {"a": True}, "other": {"a": 1, "b": 2}}
    assert holds(source, state=state) is expected


# ── in / not in ────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("'ell' in state.word", True),  # substring
        ("'xyz' in state.word", False),
        ("1 in state.word", False),  # only a string is in a string
        ("'b' in state.letters", True),  # list membership
        ("'z' in state.letters", False),
        ("1.0 in [1, 2]", True),
        ("true in [1]", False),
        ("1 in [true]", False),
        ("[1] in [[1], [2]]", True),
        ("'a' in state.obj", True),  # a key of an object
        ("'z' in state.obj", False),
        ("1 in state.obj", False),
        ("1 in state.n", False),  # a number contains nothing
        ("'a' in state.missing", False),
        ("'a' not in state.letters", False),
        ("'z' not in state.letters", True),
        ("'z' not in state.n", True),
        ("'z' not in state.missing", True),
    ],
)
def test_in_and_not_in(source: str, expected: bool) -> None:
    state = {"word": "hello", "letters": ["a", "b"], "obj": {"a": 1}, "n": 5}
    assert holds(source, state=state) is expected


# ── whitespace ─────────────────────────────────────────────────────────────────────────


def test_surrounding_whitespace_and_newlines_inside_parentheses_are_allowed() -> None:
    assert holds("   state.a == 1  \n", state={"a": 1}) is True
    assert holds("\tstate.a == 1", state={"a": 1}) is True
    assert holds("(state.a ==\n 1)", state={"a": 1}) is True


# ── the parsed value ───────────────────────────────────────────────────────────────────


def test_a_condition_keeps_its_source_and_compares_by_it() -> None:
    condition = parse_condition("state.a == 1")
    assert isinstance(condition, Condition)
    assert condition.source == "state.a == 1"
    assert condition == parse_condition("state.a == 1")
    assert condition != parse_condition("state.a == 2")
    assert hash(condition) == hash(parse_condition("state.a == 1"))


def test_a_condition_can_be_evaluated_many_times() -> None:
    condition = parse_condition("state.n > 2")
    assert [condition.evaluate(state={"n": n}) for n in range(5)] == [
        False,
        False,
        False,
        True,
        True,
    ]


# ── refusals ───────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("len(state.items) > 0", "call is not allowed in a condition at column 1"),
        ("state.get('a') == 1", "call is not allowed in a condition at column 1"),
        ("__import__('os')", "call is not allowed in a condition at column 1"),
        ("state.a + 1 == 2", "binop is not allowed in a condition at column 1"),
        ("state.a * 2", "binop is not allowed"),
        ("state.a % 2 == 0", "binop is not allowed"),
        ("state.a ** 2", "binop is not allowed"),
        ("lambda: true", "lambda is not allowed in a condition at column 1"),
        ("[x for x in state]", "listcomp is not allowed"),
        ("{k: 1 for k in state}", "dictcomp is not allowed"),
        ("(x for x in state)", "generatorexp is not allowed"),
        ("{x for x in state}", "setcomp is not allowed"),
        ("{'a': 1} == state", "dict is not allowed"),
        ("{1} == state", "set is not allowed"),
        ("1 if state.a else 2", "ifexp is not allowed"),
        ("(y := 1)", "namedexpr is not allowed"),
        ("f'{state}' == 'x'", "joinedstr is not allowed"),
        ("[*state.items] == []", "starred is not allowed"),
        ("await state.a", "await is not allowed in a condition at column 1"),
        ("state.a is None", "is is not allowed"),
        ("state.a is not None", "isnot is not allowed"),
        ("state[0:1] == []", "an index must be a literal (at column 7)"),
        ("state[state.k] == 1", "an index must be a literal (at column 7)"),
        ("state.items[-1] == 1", "an index must be a literal (at column 13)"),
        ("-state.a == 1", "only 'not' and a minus sign on a number are allowed (at column 1)"),
        ("+1 == 1", "only 'not' and a minus sign on a number are allowed"),
        ("~1 == -2", "only 'not' and a minus sign on a number are allowed"),
        ("--1 == 1", "only 'not' and a minus sign on a number are allowed"),
        ("-true == 1", "only 'not' and a minus sign on a number are allowed"),
        ("-'a' == 1", "only 'not' and a minus sign on a number are allowed"),
        ("b'x' == state.a", "a literal of type bytes is not allowed at column 1"),
        ("... == state.a", "a literal of type ellipsis is not allowed at column 1"),
        ("state.a == 1j", "a literal of type complex is not allowed at column 12"),
    ],
)
def test_constructs_outside_the_language_are_refused(source: str, problem: str) -> None:
    error = refusal(source)
    assert problem in error.problem
    assert repr(source) in error.problem  # the message quotes the condition


@pytest.mark.parametrize(
    ("source", "name", "column"),
    [
        ("x == 1", "x", 1),
        ("state.a == foo", "foo", 12),
        ("os.system", "os", 1),
        ("TRUE", "TRUE", 1),
        ("state.a and open", "open", 13),
    ],
)
def test_other_names_are_refused_with_their_position(source: str, name: str, column: int) -> None:
    error = refusal(source)
    assert f"unknown name {name!r} at column {column}" in error.problem
    assert "expected state, output, inputs, true, false or null" in error.problem


@pytest.mark.parametrize(
    ("source", "position"),
    [
        ("state.a == = 1", "invalid syntax at column 12"),
        ("  state.a == = 1", "invalid syntax at column 14"),  # in the text as written
        ("1 1", "invalid syntax at column 3"),
        ("(state.a == 1", "'(' was never closed at column 1"),
        ("state.a == 1)", "unmatched ')' at column 13"),
        ("'é' == = 1", "invalid syntax at column 8"),  # characters, not bytes
        ("(1 ==\n  = 2)", "invalid syntax at line 2, column 3"),
    ],
)
def test_syntax_errors_name_the_position(source: str, position: str) -> None:
    error = refusal(source)
    assert error.problem.startswith("not a valid condition (")
    assert position in error.problem


def test_a_refused_construct_is_located_in_the_text_as_written() -> None:
    assert "call is not allowed in a condition at column 14" in refusal("  state.a == f(1)").problem
    # A column counts characters, even after a non-ASCII one.
    assert "call is not allowed in a condition at column 8" in refusal("'é' == f(1)").problem
    assert "at line 2, column 3" in refusal("(true and\n  f())").problem


@pytest.mark.parametrize("source", ["", "   ", "\n", "state.a ==", "state.", "and", "not"])
def test_empty_and_incomplete_conditions_are_refused(source: str) -> None:
    assert refusal(source).problem.startswith("not a valid condition (")


@pytest.mark.parametrize(
    "source",
    [
        "state.a == 1; state.b == 2",  # a statement sequence
        "import os",
        "state.a = 1",
        "yield state.a",
        "state.a == 0777",
    ],
)
def test_statements_and_invalid_python_are_syntax_errors(source: str) -> None:
    assert refusal(source).problem.startswith("not a valid condition (")


@pytest.mark.parametrize("source", ["state.a == '\x00'", "\x00", "state.a == '\ud800'"])
def test_text_the_parser_cannot_read_is_refused(source: str) -> None:
    # A NUL byte or a lone surrogate (which a JSON document can carry) is bad input,
    # never a UnicodeEncodeError or a ValueError from the parser.
    assert refusal(source).problem.startswith("not a valid condition (")


@pytest.mark.parametrize(("value", "kind"), [(42, "int"), (None, "NoneType"), (["a"], "list")])
def test_a_condition_must_be_a_string(value: object, kind: str) -> None:
    error = refusal(value)
    assert error.problem == f"expected a condition string, got {kind}"


def test_a_condition_may_be_2000_characters_but_no_more() -> None:
    padding = "x" * (2000 - len("state.a == ''"))
    longest = f"state.a == '{padding}'"
    assert len(longest) == 2000
    assert holds(longest, state={"a": padding}) is True
    error = refusal(longest + " ")
    assert error.problem == "a condition may be at most 2000 characters"


def test_a_condition_may_not_be_nested_deeper_than_100_levels() -> None:
    # Within the length limit, a chain of attributes could otherwise exhaust the stack
    # when evaluated (Python's recursion limit is about 1000).
    assert holds("state" + ".a" * 90 + " == null", state={}) is True
    deep = "state" + ".a" * 990
    assert "nested more than 100 levels deep" in refusal(deep).problem
    assert "nested more than 100 levels deep" in refusal("not " * 120 + "true").problem
    assert "nested more than 100 levels deep" in refusal("[" * 120 + "]" * 120).problem


def test_errors_name_the_given_location_and_are_charter_errors() -> None:
    error = refusal("f()", "edges[3].condition")
    assert error.where == "edges[3].condition"
    assert str(error).startswith("edges[3].condition: call is not allowed")
    assert isinstance(error, CharterError)
    assert isinstance(error, ValueError)


def test_the_default_location_is_condition() -> None:
    assert refusal("f()").where == "condition"
    assert refusal(3).where == "condition"
