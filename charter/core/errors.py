"""The exception hierarchy.

Domain outcomes (blocked, over budget, needs approval) are decisions, never exceptions.
Exceptions are for misuse of the API and for bad external input; every one derives from
`CharterError` and its message says where the problem is, what was expected and what was
found, e.g. ``policy.yaml: workflow.blocked_tools[2]: expected a string pattern, got int 42``.
"""

from __future__ import annotations

import reprlib

__all__ = [
    "AutonomyError",
    "BudgetError",
    "CharterError",
    "Conflict",
    "ExecutorFailed",
    "FenceLost",
    "IncompatibleStore",
    "InvalidInput",
    "LimitExceeded",
    "NotFound",
    "PolicyError",
    "StoreError",
    "StoreUnavailable",
    "UnknownNodeKind",
    "UnknownTenant",
]


class CharterError(Exception):
    """Base class of every error Charter raises on purpose."""


class InvalidInput(CharterError, ValueError):
    """A value from outside (file, payload, argument) is malformed.

    ``where`` is the path to the offending field (``blocked_tools[2]``), ``problem`` what
    was expected and what was found. The message joins the two.
    """

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}" if where else problem)

    def within(self, prefix: str) -> InvalidInput:
        """The same error with its location nested under ``prefix`` (a file or a parent key)."""
        if not prefix:
            return self
        if not self.where:
            where = prefix
        elif prefix.endswith(":"):
            where = f"{prefix} {self.where}"
        elif self.where.startswith("["):
            where = f"{prefix}{self.where}"
        else:
            where = f"{prefix}.{self.where}"
        return type(self)(where, self.problem)


class PolicyError(InvalidInput):
    """A policy set or policy file is malformed."""


class UnknownNodeKind(InvalidInput):
    """A node kind tag is not one Charter knows; refusing is the only safe answer."""


class AutonomyError(InvalidInput):
    """An agent card, autonomy level or autonomy constraint is malformed."""


class BudgetError(InvalidInput):
    """A budget value or limit is malformed (wrong type, negative, NaN or infinite)."""


class LimitExceeded(InvalidInput):
    """An identifier, payload or event is larger than the store accepts."""


class UnknownTenant(InvalidInput):
    """A tenant the store does not know; nothing is written for it."""


class ExecutorFailed(CharterError):
    """An executor could not do a node's work. ``retryable`` says whether trying again may
    help (a timeout, a 503) or not (a refusal, bad arguments)."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        self.retryable = retryable
        super().__init__(message)


class StoreError(CharterError):
    """The store could not do what was asked. Subclasses say why; any other `StoreError`
    is an infrastructure failure, to be treated as retryable and never as an allow."""


class FenceLost(StoreError):
    """The caller's fence is stale: the item was reclaimed, re-claimed or settled. Nothing
    was written; the caller no longer owns the item and must stop."""


class NotFound(StoreError):
    """The named execution, item or record does not exist."""


class Conflict(StoreError):
    """The write contradicts what is stored (a duplicate id with other content, an approval
    already used); nothing was written."""


class IncompatibleStore(StoreError):
    """The database is not a Charter store, is newer than this code, or is corrupt."""


class StoreUnavailable(StoreError):
    """The database could not be reached or stayed locked past its timeout (retryable)."""


def child(where: str, key: str) -> str:
    """The path of ``key`` inside ``where`` (``workflow`` + ``blocked_tools``)."""
    return f"{where}.{key}" if where else key


_REPR = reprlib.Repr()
_REPR.maxlevel = 2
_REPR.maxstring = 40
_REPR.maxother = 40
_REPR.maxlong = 40
for _name in ("maxlist", "maxtuple", "maxdict", "maxset", "maxfrozenset"):
    setattr(_REPR, _name, 4)


def describe(value: object) -> str:
    """A short, safe rendering of a bad value for error messages: type and a bounded repr.

    Bounded while it is built (depth, items, length), so a hostile value — a huge integer,
    a deeply nested or alias-bombed YAML structure — cannot make an error message expensive.
    """
    try:
        text = _REPR.repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the real error
        text = "<unprintable>"
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"
