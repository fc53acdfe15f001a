"""Conditions on edges and condition nodes: a small, safe expression language.

A condition is a Python-like boolean expression over three names:

* ``state`` — the workflow state (the merged state patches so far),
* ``output`` — the output of the node the edge leaves (or, in a condition node, ``None``),
* ``inputs`` — the run's initial input.

It may use attribute and item access (``state.order.total``, ``state["kind"]``,
``output.items[0]``); literals: strings, numbers (negative ones too), lists, and
``true``/``false``/``null`` or ``True``/``False``/``None``; comparisons
(``== != < <= > >= in not in``); ``and``, ``or``, ``not``; parentheses. Nothing else: no
calls, no arithmetic, no other names, no other literals (bytes, ``...``, complex numbers). A
missing key or attribute is ``null`` rather than an error (inside a list literal too), so
``state.flag == true`` is simply false while ``flag`` is unset. Equality is JSON equality, at
any depth: ``true`` is not ``1``, ``1`` equals ``1.0``. Comparing values of different types
with ``<`` and the like is false (``"3" < 4`` is neither an error nor true). Only the boolean
``true`` counts as true: ``state.name`` alone, or ``1 and true``, is false.

A condition is at most 2000 characters long and nested at most 100 levels deep (so that
evaluating it cannot exhaust the stack). Expressions are parsed once (`parse_condition`, which
names the position of any error in the text as written) and evaluated purely
(`Condition.evaluate`).

Policy rules use the same language over other names (``parse_condition(…,
names=POLICY_NAMES)``: ``call``, the call's arguments as a JSON object, and ``node``, ``{id,
kind}``) and are judged strictly (`Condition.judge`, docs/semantics.md §2.6): where an edge
reads a missing field as ``null`` and a type mismatch as false, a rule's condition is then
*undetermined* (`Undetermined`, naming the field and the problem), and the policy treats the
rule as matching (fail-closed). ``and``/``or``/``not`` follow three-valued logic: ``false and
X`` is false and ``true or X`` true whatever ``X`` is; any other use of an undetermined part
leaves the whole undetermined.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs

from charter.core.errors import InvalidInput

__all__ = ["EDGE_NAMES", "POLICY_NAMES", "Condition", "Undetermined", "parse_condition"]

#: The names an edge or condition node's expression may use.
EDGE_NAMES: Final = ("state", "output", "inputs")
#: The names a policy rule's ``when:`` may use: the call's arguments and the node.
POLICY_NAMES: Final = ("call", "node")
_CONSTANTS: Final = {"true": True, "false": False, "null": None}
_MAX_LENGTH: Final = 2000
_MAX_DEPTH: Final = 100
_LITERALS: Final = (str, int, float, bool, type(None))  # JSON's scalars; not bytes, `...`, 1j


class _Missing:
    """A path that leads nowhere; compares like ``null``."""


_MISSING = _Missing()


def _check(node: ast.AST, source: str, at: _Locator, names: tuple[str, ...]) -> None:
    """Refuse anything outside the language, naming the offending construct."""
    allowed = (
        ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.Compare,
        ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn, ast.USub,
        ast.Attribute, ast.Subscript, ast.Name, ast.Load, ast.Constant, ast.List, ast.Tuple,
    )  # fmt: skip
    for child in ast.walk(node):
        if not isinstance(child, allowed):
            where = f" at {at.node(child)}" if hasattr(child, "col_offset") else ""
            raise InvalidInput(
                "condition",
                f"{type(child).__name__.lower()} is not allowed in a condition{where}: {source!r}",
            )
        if isinstance(child, ast.Name) and child.id not in names and child.id not in _CONSTANTS:
            raise InvalidInput(
                "condition",
                f"unknown name {child.id!r} at {at.node(child)} (expected {', '.join(names)}, "
                f"true, false or null): {source!r}",
            )
        if isinstance(child, ast.Constant) and type(child.value) not in _LITERALS:
            raise InvalidInput(
                "condition",
                f"a literal of type {type(child.value).__name__} is not allowed at "
                f"{at.node(child)} (expected a string, a number, true, false or null): {source!r}",
            )
        if isinstance(child, ast.UnaryOp) and not (
            isinstance(child.op, ast.Not) or _negative_number(child)
        ):
            raise InvalidInput(
                "condition",
                f"only 'not' and a minus sign on a number are allowed (at {at.node(child)}): "
                f"{source!r}",
            )
        if isinstance(child, ast.Subscript) and not isinstance(child.slice, ast.Constant):
            raise InvalidInput(
                "condition", f"an index must be a literal (at {at.node(child.slice)}): {source!r}"
            )
    if _depth(node) > _MAX_DEPTH:
        raise InvalidInput("condition", f"nested more than {_MAX_DEPTH} levels deep: {source!r}")


def _depth(tree: ast.AST) -> int:
    # Iterative: the tree may be deeper than the stack allows to recurse over.
    deepest = 0
    pending = [(tree, 1)]
    while pending:
        node, depth = pending.pop()
        deepest = max(deepest, depth)
        pending.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


class _Locator:
    """Turns a position in the stripped text that was parsed into one in the source as
    written (``column 5``, or ``line 2, column 3`` past the first line)."""

    def __init__(self, source: str, text: str) -> None:
        self._source = source
        self._text = text
        self._indent = len(source) - len(source.lstrip())

    def char(self, lineno: int, column: int) -> str:
        """``column`` is 1-based and counts characters on line ``lineno`` of the text."""
        lines = self._text.split("\n")
        index = sum(len(line) + 1 for line in lines[: max(lineno - 1, 0)]) + column - 1
        index = min(max(index, 0), len(self._text)) + self._indent
        line = self._source.count("\n", 0, index) + 1
        column = index - (self._source.rfind("\n", 0, index) + 1) + 1
        return f"column {column}" if line == 1 else f"line {line}, column {column}"

    def node(self, node: ast.AST) -> str:
        """The position of a node (whose ``col_offset`` counts UTF-8 bytes, not characters)."""
        lineno: int = getattr(node, "lineno", 1)
        offset: int = getattr(node, "col_offset", 0)
        lines = self._text.split("\n")
        line = lines[lineno - 1] if 0 < lineno <= len(lines) else ""
        chars = len(line.encode("utf-8")[:offset].decode("utf-8", errors="ignore"))
        return self.char(lineno, chars + 1)


def _negative_number(node: ast.UnaryOp) -> bool:
    operand = node.operand
    return (
        isinstance(node.op, ast.USub)
        and isinstance(operand, ast.Constant)
        and isinstance(operand.value, int | float)
        and not isinstance(operand.value, bool)
    )


@attrs.frozen
class Undetermined:
    """A condition that could not be evaluated on the values given, and why (``problem``:
    ``call.args.amount is missing``, ``call.args.amount is a string, compared with a
    number``)."""

    problem: str


@attrs.frozen
class Condition:
    """A parsed condition (build it with `parse_condition`)."""

    source: str
    _tree: ast.Expression = attrs.field(eq=False, repr=False)
    # The strict evaluator (`judge`), compiled once into closures over the checked tree.
    _strict: _Compiled = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_strict", _compile(self._tree.body))

    def evaluate(self, *, state: Any = None, output: Any = None, inputs: Any = None) -> bool:
        """Whether the condition holds for these values (always a bool, never raises)."""
        scope = {"state": state, "output": output, "inputs": inputs}
        value = _eval(self._tree.body, scope)
        return value is True

    def judge(self, values: Mapping[str, Any]) -> bool | Undetermined:
        """The condition over ``values`` (name → JSON value), strictly: ``True`` or
        ``False`` when it is determined, `Undetermined` when a field it needs is missing or
        a value has the wrong type for what is done with it. Never raises."""
        try:
            value = self._strict(values)
        except _Unknown as unknown:
            return Undetermined(unknown.problem)
        if type(value) is bool:
            return value
        return Undetermined(f"the condition gives {_kind(value)}, not true or false")


def parse_condition(
    source: object, where: str = "condition", *, names: tuple[str, ...] = EDGE_NAMES
) -> Condition:
    """Parse a condition over ``names`` (an edge's by default), or raise `InvalidInput`
    naming ``where`` and the problem."""
    if not isinstance(source, str):
        raise InvalidInput(where, f"expected a condition string, got {type(source).__name__}")
    if len(source) > _MAX_LENGTH:
        raise InvalidInput(where, f"a condition may be at most {_MAX_LENGTH} characters")
    text = source.strip()  # leading blanks would be an "unexpected indent"
    at = _Locator(source, text)
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as error:
        position = f" at {at.char(error.lineno or 1, error.offset)}" if error.offset else ""
        raise InvalidInput(
            where, f"not a valid condition ({error.msg}{position}): {source!r}"
        ) from None
    except ValueError as error:  # a lone surrogate is not text the parser can read
        raise InvalidInput(where, f"not a valid condition ({error}): {source!r}") from None
    try:
        _check(tree, source, at, names)
    except InvalidInput as error:
        raise InvalidInput(where, error.problem) from None
    return Condition(source, tree)


def _eval(node: ast.expr, scope: Mapping[str, Any]) -> Any:
    match node:
        case ast.Constant(value=value):
            return value
        case ast.Name(id=name):
            return _CONSTANTS[name] if name in _CONSTANTS else scope[name]
        case ast.List(elts=items) | ast.Tuple(elts=items):
            return [_plain(_eval(item, scope)) for item in items]
        case ast.Attribute(value=base, attr=key):
            return _lookup(_eval(base, scope), key)
        case ast.Subscript(value=base, slice=ast.Constant(value=key)):
            return _lookup(_eval(base, scope), key)
        case ast.BoolOp(op=ast.And(), values=values):
            return all(_eval(v, scope) is True for v in values)
        case ast.BoolOp(op=ast.Or(), values=values):
            return any(_eval(v, scope) is True for v in values)
        case ast.UnaryOp(op=ast.Not(), operand=operand):
            return _eval(operand, scope) is not True
        case ast.UnaryOp(op=ast.USub(), operand=ast.Constant(value=int() | float() as number)):
            return -number
        case ast.Compare(left=left, ops=ops, comparators=rights):
            current = _eval(left, scope)
            for op, right_node in zip(ops, rights, strict=True):
                right = _eval(right_node, scope)
                if not _compare(op, current, right):
                    return False
                current = right
            return True
    raise AssertionError(f"unchecked node {type(node).__name__}")  # pragma: no cover


def _lookup(base: Any, key: object) -> Any:
    if isinstance(base, Mapping) and isinstance(key, str):
        return base.get(key, _MISSING)
    if isinstance(base, list) and isinstance(key, int) and not isinstance(key, bool):
        return base[key] if -len(base) <= key < len(base) else _MISSING
    return _MISSING


def _plain(value: Any) -> Any:
    return None if value is _MISSING else value


def _compare(op: ast.cmpop, left: Any, right: Any) -> bool:
    left, right = _plain(left), _plain(right)
    match op:
        case ast.Eq():
            return _same(left, right)
        case ast.NotEq():
            return not _same(left, right)
        case ast.In():
            return _contains(right, left)
        case ast.NotIn():
            return not _contains(right, left)
    if not _orderable(left, right):
        return False
    match op:
        case ast.Lt():
            return bool(left < right)
        case ast.LtE():
            return bool(left <= right)
        case ast.Gt():
            return bool(left > right)
        case ast.GtE():
            return bool(left >= right)
    return False  # pragma: no cover - every comparison operator is handled above


def _same(left: Any, right: Any) -> bool:
    # JSON equality, at every depth: true is not 1 (nor [true] [1]), 1 equals 1.0.
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(_same, left, right))
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        return left.keys() == right.keys() and all(_same(left[k], right[k]) for k in left)
    return bool(left == right)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _orderable(left: Any, right: Any) -> bool:
    return (_number(left) and _number(right)) or (isinstance(left, str) and isinstance(right, str))


def _contains(container: Any, item: Any) -> bool:
    if isinstance(container, str):
        return isinstance(item, str) and item in container
    if isinstance(container, list):
        return any(_same(item, element) for element in container)
    if isinstance(container, Mapping):
        return isinstance(item, str) and item in container
    return False


# ── strict evaluation (policy rules) ───────────────────────────────────────────────────


class _Unknown(Exception):
    """A part of a condition that cannot be evaluated on the values given."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def _kind(value: Any) -> str:
    """A JSON value's type, as a problem names it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if _number(value):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__  # pragma: no cover - the values are JSON


def _family(value: Any) -> str:
    return "number" if _number(value) else _kind(value)


#: A compiled part of a condition: its value over the names, or `_Unknown` raised.
_Compiled = Callable[[Mapping[str, Any]], Any]


def _compile(node: ast.expr) -> _Compiled:
    """The strict evaluator of a checked tree, as closures (one per node), so that judging a
    condition walks no tree and dispatches on no node type."""
    match node:
        case ast.Constant(value=value):
            return lambda _: value
        case ast.Name(id=name) if name in _CONSTANTS:
            constant = _CONSTANTS[name]
            return lambda _: constant
        case ast.Name(id=name):
            return lambda scope: scope.get(name)
        case ast.List(elts=items) | ast.Tuple(elts=items):
            parts = tuple(_compile(item) for item in items)
            return lambda scope: [part(scope) for part in parts]
        case (
            ast.Attribute(value=base, attr=key)
            | ast.Subscript(value=base, slice=ast.Constant(value=key))
        ):
            return _reader(node, base, key)
        case ast.BoolOp(op=op, values=values):
            return _boolean(isinstance(op, ast.Or), values)
        case ast.UnaryOp(op=ast.Not(), operand=operand):
            inner = _compile(operand)
            return lambda scope: not _truth(inner(scope), operand)
        case ast.UnaryOp(op=ast.USub(), operand=ast.Constant(value=int() | float() as number)):
            negative = -number
            return lambda _: negative
        case ast.Compare(left=left, ops=ops, comparators=rights):
            return _comparison(left, ops, rights)
    raise AssertionError(f"unchecked node {type(node).__name__}")  # pragma: no cover


def _reader(node: ast.expr, base: ast.expr, key: object) -> _Compiled:
    container_of = _compile(base)

    def read(scope: Mapping[str, Any]) -> Any:
        container = container_of(scope)
        if type(container) is dict and type(key) is str:  # the common case, without ABCs
            found = container.get(key, _MISSING)
        else:
            found = _lookup(container, key)
        if found is _MISSING:
            if isinstance(container, Mapping | list):
                raise _Unknown(f"{ast.unparse(node)} is missing")
            raise _Unknown(
                f"{ast.unparse(node)} is missing ({ast.unparse(base)} is {_kind(container)})"
            )
        return found

    return read


def _boolean(is_or: bool, values: list[ast.expr]) -> _Compiled:
    """``and`` / ``or`` in three-valued logic: the deciding value (false for ``and``, true for
    ``or``) settles it whatever else is unknown; otherwise an unknown part makes it unknown."""
    parts = tuple((_compile(value), value) for value in values)

    def combine(scope: Mapping[str, Any]) -> bool:
        problem: str | None = None
        for part, node in parts:
            try:
                value = _truth(part(scope), node)
            except _Unknown as unknown:
                problem = problem or unknown.problem
                continue
            if value is is_or:
                return is_or
        if problem is not None:
            raise _Unknown(problem)
        return not is_or

    return combine


def _comparison(left: ast.expr, ops: list[ast.cmpop], rights: list[ast.expr]) -> _Compiled:
    first = _compile(left)
    steps = tuple(
        (_compile(right), right, _strict_op(op)) for op, right in zip(ops, rights, strict=True)
    )
    if len(steps) == 1:  # the common case: one comparison
        ((second, right_node, compare),) = steps

        def single(scope: Mapping[str, Any]) -> bool:
            return compare(first(scope), second(scope), left, right_node)

        return single

    def chain(scope: Mapping[str, Any]) -> bool:
        # ``a < b < c``: false as soon as a determined step is false; else unknown if any was.
        problem: str | None = None
        current: Any = _MISSING
        current_node = left
        try:
            current = first(scope)
        except _Unknown as unknown:
            problem = unknown.problem
        for part, right_node, compare in steps:
            try:
                right = part(scope)
            except _Unknown as unknown:
                problem = problem or unknown.problem
                current, current_node = _MISSING, right_node
                continue
            if current is not _MISSING:
                try:
                    if not compare(current, right, current_node, right_node):
                        return False
                except _Unknown as unknown:
                    problem = problem or unknown.problem
            current, current_node = right, right_node
        if problem is not None:
            raise _Unknown(problem)
        return True

    return chain


def _truth(value: Any, node: ast.expr) -> bool:
    if type(value) is bool:
        return value
    raise _Unknown(f"{ast.unparse(node)} is {_kind(value)}, not true or false")


_StrictOp = Callable[[Any, Any, ast.expr, ast.expr], bool]


def _mismatch(
    left: Any, right: Any, left_node: ast.expr, right_node: ast.expr, what: str
) -> _Unknown:
    return _Unknown(
        f"{ast.unparse(left_node)} is {_kind(left)}, {what} {ast.unparse(right_node)} "
        f"({_kind(right)})"
    )


def _strict_op(op: ast.cmpop) -> _StrictOp:
    """One comparison operator, strictly: ``==``/``!=`` between values of different JSON
    types (neither null), ``in`` on what is not a container of the item's kind, and ordering
    of anything but two numbers or two strings are `_Unknown`."""
    match op:
        case ast.Eq() | ast.NotEq():
            wanted = isinstance(op, ast.Eq)

            def equal(left: Any, right: Any, left_node: ast.expr, right_node: ast.expr) -> bool:
                if left is not None and right is not None and _family(left) != _family(right):
                    raise _mismatch(left, right, left_node, right_node, "compared with")
                return _same(left, right) is wanted

            return equal
        case ast.In() | ast.NotIn():
            inside = isinstance(op, ast.In)

            def contains(left: Any, right: Any, left_node: ast.expr, right_node: ast.expr) -> bool:
                if isinstance(right, list):
                    found = any(_same(left, element) for element in right)
                elif isinstance(right, str | Mapping) and isinstance(left, str):
                    found = left in right
                else:
                    raise _mismatch(left, right, left_node, right_node, "looked up in")
                return found is inside

            return contains

    order: Callable[[Any, Any], bool] = _ORDERS[type(op)]

    def ordered(left: Any, right: Any, left_node: ast.expr, right_node: ast.expr) -> bool:
        kinds = type(left), type(right)
        if kinds in _ORDERABLE_TYPES:  # plain JSON numbers or strings: no ABC checks
            return order(left, right)
        if not _orderable(left, right):
            raise _mismatch(left, right, left_node, right_node, "compared with")
        return order(left, right)

    return ordered


_ORDERABLE_TYPES: Final = frozenset(
    {(int, int), (int, float), (float, int), (float, float), (str, str)}
)
_ORDERS: Final[dict[type[ast.cmpop], Callable[[Any, Any], bool]]] = {
    ast.Lt: lambda left, right: left < right,
    ast.LtE: lambda left, right: left <= right,
    ast.Gt: lambda left, right: left > right,
    ast.GtE: lambda left, right: left >= right,
}
