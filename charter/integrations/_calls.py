"""What the framework integrations share: a `Gatekeeper` puts one `Governor` around the
tool (and model) calls a framework makes by name, with JSON arguments, and says in plain
data what a hold or a refusal means (docs/integrations.md §3).

Each tool name is one governed node of the session (registered when the gatekeeper is
made: a governor stores its definition on the first call); a call is identified by its
arguments (the framework's JSON), so an approval covers the same arguments once. The
framework's own execution is passed in as a thunk and runs inside the governed call, so
`report_usage` works from the tool's code, and a tool that raises is recorded as failed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final, TypeVar

from charter.core.budget import Usage
from charter.core.errors import InvalidInput
from charter.integrations.govern import Admission, GovernedFunction, Governor, Held, Refused

__all__ = [
    "NOT_GOVERNED",
    "Gatekeeper",
    "approval_request",
    "held_text",
    "model_node",
    "refusal_text",
    "usage_from_metadata",
]

T = TypeVar("T")

#: The rule a `Refused` names for a call of a tool no gatekeeper registered (never run).
NOT_GOVERNED: Final = "not_governed"


def model_node(model: str) -> str:
    """The node (and tool name) a model's calls are recorded under."""
    return f"model:{model}"


def _key(arguments: Any, thunk: Any) -> Any:
    """A call's identity: its arguments only (never the thunk)."""
    return {"arguments": arguments}


def _later() -> Any:
    raise AssertionError("an admitted call is made with the framework's thunk")


_LATER: Final = _later


def _no_usage(_: Any) -> Usage | None:
    return None


def _named(fn: Callable[..., Any], module: str, name: str) -> Callable[..., Any]:
    """``fn`` recorded as ``python:<module>.<name>`` (the node's ``callable``)."""
    fn.__module__ = module
    fn.__qualname__ = name
    fn.__name__ = name
    return fn


def _sync_runner(module: str, name: str) -> Callable[..., Any]:
    def run(arguments: Any, thunk: Callable[[], Any]) -> Any:
        return thunk()

    return _named(run, module, name)


def _async_runner(module: str, name: str) -> Callable[..., Any]:
    async def run(arguments: Any, thunk: Callable[[], Awaitable[Any]]) -> Any:
        return await thunk()

    return _named(run, module, name)


def usage_from_metadata(metadata: Any) -> Usage | None:
    """A `Usage` from token counts named ``input_tokens`` / ``output_tokens`` (LangChain's
    ``usage_metadata``, the Agents SDK's ``Usage``) in a mapping or an object."""
    if metadata is None:
        return None

    def read(name: str) -> int:
        value = (
            metadata.get(name) if isinstance(metadata, Mapping) else getattr(metadata, name, None)
        )
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    return Usage(input_tokens=read("input_tokens"), output_tokens=read("output_tokens"))


class Gatekeeper:
    """``governor`` around the calls of ``tools`` and ``models`` (names), made by a
    framework (``source``: the module recorded as the callables' home)."""

    def __init__(
        self,
        governor: Governor,
        *,
        tools: Iterable[str],
        models: Iterable[str] = (),
        source: str,
        model_usage: Callable[[Any], Usage | None] = _no_usage,
        tool_usage: Callable[[Any], Usage | None] = _no_usage,
    ) -> None:
        self.governor = governor
        self._sync: dict[str, GovernedFunction[..., Any]] = {}
        self._async: dict[str, GovernedFunction[..., Any]] = {}
        for name in sorted(set(tools)):
            self._register(name, None, source, tool_usage)
        for model in sorted(set(models)):
            self._register(model_node(model), model, source, model_usage)

    def _register(
        self, name: str, model: str | None, source: str, usage: Callable[[Any], Usage | None]
    ) -> None:
        if name in self._sync:
            raise InvalidInput("tools", f"{name!r} is named twice")
        for table, runner in ((self._sync, _sync_runner), (self._async, _async_runner)):
            table[name] = self.governor.govern(
                runner(source, name), tool_name=name, model=model, call_key=_key, usage=usage
            )

    @property
    def run_id(self) -> str:
        return self.governor.run_id

    @property
    def names(self) -> frozenset[str]:
        """The governed node names (tools, and ``model:<name>`` for models)."""
        return frozenset(self._sync)

    def _function(self, table: Mapping[str, GovernedFunction[..., Any]], name: str) -> Any:
        function = table.get(name)
        if function is None:
            raise Refused(
                run_id=self.governor.run_id,
                node_id=name,
                tool_name=name,
                reason=f"{name!r} is not governed in this session: refused without running",
                rule=NOT_GOVERNED,
                scope=None,
                pattern=None,
                sequence=0,
                decision=None,
            )
        return function

    def call(self, name: str, arguments: Any, thunk: Callable[[], T]) -> T:
        """Decide and record the call of ``name`` with ``arguments``; run ``thunk`` if it
        may run (`Refused` / `Held` otherwise, from `charter.integrations.govern`)."""
        function = self._function(self._sync, name)
        result: T = function(arguments, thunk)
        return result

    async def acall(self, name: str, arguments: Any, thunk: Callable[[], Awaitable[T]]) -> T:
        """`call` for an async thunk (the store work runs off the event loop)."""
        function = self._function(self._async, name)
        result: T = await function(arguments, thunk)
        return result

    def admit(self, name: str, arguments: Any) -> Admission[Any]:
        """Decide and record a call of ``name`` now, to be made later (`Admission.run` with
        the framework's thunk): `Refused` / `Held` as `call` raises them."""
        return self._function(self._sync, name).admit(arguments, _LATER)  # type: ignore[no-any-return]

    async def aadmit(self, name: str, arguments: Any) -> Admission[Any]:
        """`admit` for an async call (`Admission.arun`)."""
        function = self._function(self._async, name)
        return await function.aadmit(arguments, _LATER)  # type: ignore[no-any-return]

    def call_model(self, model: str, request: Any, thunk: Callable[[], T]) -> T:
        """Decide and record a call of ``model`` (its policy name: allowlists apply)."""
        return self.call(model_node(model), request, thunk)

    async def acall_model(self, model: str, request: Any, thunk: Callable[[], Awaitable[T]]) -> T:
        return await self.acall(model_node(model), request, thunk)


def approval_request(held: Held, arguments: Any = None) -> dict[str, Any]:
    """What a framework shows for a hold (a LangGraph interrupt's value, an MCP error's
    structured content): where the call waits, who answers, and the command that answers
    it. ``arguments`` (the call's, for the person; never stored by Charter) is added when
    given."""
    request: dict[str, Any] = {
        "charter": "approval_required",
        "run_id": held.run_id,
        "node_id": held.node_id,
        "tool_name": held.tool_name,
        "approver": held.approver,
        "reason": held.reason,
        "request_digest": held.request_digest,
        "sequence": held.sequence,
        "command": held.command,
    }
    if arguments is not None:
        request["arguments"] = arguments
    return request


def held_text(held: Held) -> str:
    """A hold as the model (or an MCP client) reads it: who answers, and how."""
    return (
        f"Charter holds {held.tool_name} for approval by {held.approver}: {held.reason} "
        f"(the tool was not run). Answer with: {held.command} — then make the same call "
        f"again; it runs once. [Charter run {held.run_id}, event #{held.sequence}]"
    )


def refusal_text(refused: Refused) -> str:
    """A refusal as the model (or an MCP client) reads it: the tool, the rule, the reason
    and where it is recorded."""
    rule = refused.rule or "policy"
    where = f"{refused.scope} {rule}" if refused.scope else rule
    pattern = f" {refused.pattern!r}" if refused.pattern else ""
    tail = (
        " (the tool ran, but its output is withheld)" if refused.ran else " (the tool was not run)"
    )
    recorded = (
        f" [Charter run {refused.run_id}, event #{refused.sequence}]"
        if refused.sequence
        else f" [Charter run {refused.run_id}, not recorded]"
    )
    return (
        f"Charter refused {refused.tool_name} by rule {where}{pattern}: {refused.reason}"
        f"{tail}{recorded}"
    )
