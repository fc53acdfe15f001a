"""The fold's copy-on-write tables (`charter.core.scheduler._Table`): every view taken
iterates, sizes and reads exactly as a plain dict copied at that moment, however deep the
tables over views go (the empty view's shortcut included)."""

from __future__ import annotations

import weakref
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from charter.core.scheduler import _MapView, _Table

_keys = st.sampled_from("abcdef")
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), _keys, st.integers(0, 3)),
        st.tuples(st.just("remove"), _keys, st.just(0)),
        st.tuples(st.just("view"), _keys, st.just(0)),
        st.tuples(st.just("over"), _keys, st.just(0)),  # a new table over a view of this one
    ),
    max_size=60,
)


@given(_ops, st.booleans())
def test_views_are_the_table_as_it_was(ops: list[tuple[str, str, int]], weakly: bool) -> None:
    reference: Any = weakref.ref if weakly else (lambda view: lambda: view)
    table = _Table(reference=reference)
    plain: dict[str, int] = {}
    taken: list[tuple[_MapView, dict[str, int]]] = []
    for op, key, value in ops:
        if op == "put":
            table.put(key, value)
            plain[key] = value
        elif op == "remove":
            table.remove(key)
            plain.pop(key, None)
        else:
            view = table.view()
            taken.append((view, dict(plain)))
            if op == "over":
                table = _Table(view, reference)
    for view, expected in taken:
        assert sorted(view) == sorted(expected)
        assert len(view) == len(expected)
        assert dict(view.items()) == expected
        for key in "abcdef":
            assert view.get(key) == expected.get(key)
