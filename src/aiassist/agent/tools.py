"""Tools: what an agent run or a flow may call, whatever the source.

A tool is a name, a description, a JSON Schema of its arguments, a risk class, the scopes a
principal needs to call it, an optional shared rate limit and an async `call`. Python
functions become tools with `@tool`; OpenAPI operations and MCP tools are turned into the same
`Tool` by their sources, so the runtime and its policy see one kind of thing.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, get_type_hints, overload

import anyio.to_thread
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

__all__ = [
    "RateLimit",
    "Risk",
    "Tool",
    "ToolContext",
    "ToolError",
    "ToolSet",
    "tool",
]

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what OpenAI and Anthropic accept


class Risk(StrEnum):
    """How much damage a wrong call can do; the policy decides what each class needs."""

    READ = "read"
    WRITE = "write"
    IRREVERSIBLE = "irreversible"


@dataclass(frozen=True)
class RateLimit:
    """At most `calls` per `per_seconds` for everything sharing `key` (e.g. one downstream)."""

    key: str
    calls: int
    per_seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.calls < 1 or self.per_seconds <= 0:
            raise ValueError("a rate limit needs calls >= 1 and per_seconds > 0")


@dataclass(frozen=True)
class ToolContext:
    """What the runtime tells a tool about the call it is making.

    `idempotency_key` is derived from run, step and arguments: a downstream that honours it
    (an `Idempotency-Key` header, a unique column) never repeats a side effect on resume.
    `resumed` is true when a crashed run repeats a call whose outcome was never recorded: the
    side effect may already have happened, so a tool may look the result up by the key.
    """

    run_id: str
    call_id: str
    idempotency_key: str
    principal: str
    dry_run: bool = False
    resumed: bool = False


class ToolError(Exception):
    """A failed call, given back to the model as data instead of failing the run."""

    def __init__(self, message: str, *, retryable: bool = False, data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.data = data

    def as_result(self) -> dict[str, Any]:
        result: dict[str, Any] = {"error": self.message, "retryable": self.retryable}
        if self.data is not None:
            result["data"] = self.data
        return result


Call = Callable[[dict[str, Any], ToolContext], Awaitable[Any]]
Validator = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Tool:
    """One callable operation. `validate` raises `ToolError` on bad arguments."""

    name: str
    description: str
    parameters: dict[str, Any]
    call: Call
    risk: Risk = Risk.WRITE
    scopes: frozenset[str] = frozenset()
    rate_limit: RateLimit | None = None
    source: str = "python"
    validate: Validator | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"tool name {self.name!r} must match {_NAME.pattern}")
        if self.parameters.get("type") != "object":
            raise ValueError(f"tool {self.name!r}: parameters must be a JSON Schema object")

    def check(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """The arguments as the tool will receive them, or `ToolError` naming what is wrong."""
        return self.validate(arguments) if self.validate is not None else arguments

    def spec(self) -> dict[str, Any]:
        """What a model is shown: name, description and argument schema, nothing else."""
        return {"name": self.name, "description": self.description, "parameters": self.parameters}


class ToolSet:
    """Tools by name; `only()` gives the per-run allowlist the model is shown."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for t in tools:
            self.add(t)

    def add(self, t: Tool) -> Tool:
        if t.name in self._tools:
            raise ValueError(f"two tools are named {t.name!r}")
        self._tools[t.name] = t
        return t

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def only(self, names: Iterable[str] | None) -> ToolSet:
        if names is None:
            return ToolSet(self)
        wanted = list(names)
        unknown = [n for n in wanted if n not in self._tools]
        if unknown:
            raise KeyError(f"unknown tools: {', '.join(unknown)}")
        return ToolSet(self._tools[n] for n in wanted)

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools


# --- Python functions ----------------------------------------------------------------------
def _arguments_model(fn: Callable[..., Any]) -> tuple[type[BaseModel], str | None]:
    """A Pydantic model of `fn`'s parameters, and the name of its ToolContext one if any."""
    hints = get_type_hints(fn)
    fields: dict[str, Any] = {}
    context_param = None
    for param in inspect.signature(fn).parameters.values():
        annotation = hints.get(param.name, Any)
        if annotation is ToolContext:
            context_param = param.name
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"tool {fn.__name__!r}: *args and **kwargs cannot be described")
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (annotation, default)
    model = create_model(
        f"{fn.__name__}_arguments", __config__=ConfigDict(extra="forbid"), **fields
    )
    return model, context_param


def _from_function(
    fn: Callable[..., Any],
    *,
    name: str | None,
    risk: Risk | str,
    scopes: Iterable[str],
    rate_limit: RateLimit | None,
) -> Tool:
    model, context_param = _arguments_model(fn)
    schema = model.model_json_schema()
    schema.pop("title", None)
    description = inspect.cleandoc(fn.__doc__ or "").strip() or fn.__name__

    def validate(arguments: dict[str, Any]) -> dict[str, Any]:
        try:
            return dict(model.model_validate(arguments))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in exc.errors()
            )
            raise ToolError(f"invalid arguments: {problems}", retryable=False) from None

    is_async = inspect.iscoroutinefunction(fn)

    async def call(arguments: dict[str, Any], context: ToolContext) -> Any:
        kwargs = dict(arguments)
        if context_param is not None:
            kwargs[context_param] = context
        if is_async:
            return await fn(**kwargs)
        return await anyio.to_thread.run_sync(lambda: fn(**kwargs))

    return Tool(
        name=name or fn.__name__,
        description=description,
        parameters=schema,
        call=call,
        risk=Risk(risk),
        scopes=frozenset(scopes),
        rate_limit=rate_limit,
        source="python",
        validate=validate,
    )


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...
@overload
def tool(
    *,
    name: str | None = None,
    risk: Risk | str = Risk.WRITE,
    scopes: Iterable[str] = (),
    rate_limit: RateLimit | None = None,
) -> Callable[[Callable[..., Any]], Tool]: ...
def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    risk: Risk | str = Risk.WRITE,
    scopes: Iterable[str] = (),
    rate_limit: RateLimit | None = None,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Turn a typed function (sync or async) into a `Tool`; its docstring is the description.

    Unmarked tools are `write`: a tool that only reads says so, so nothing is under-guarded.
    A parameter annotated `ToolContext` receives the call's context and is not shown to the model.
    """

    def wrap(f: Callable[..., Any]) -> Tool:
        return _from_function(f, name=name, risk=risk, scopes=scopes, rate_limit=rate_limit)

    return wrap(fn) if fn is not None else wrap
