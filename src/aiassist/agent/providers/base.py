"""One small interface in front of every language model the runtime can use.

The runtime speaks in `Message`s and tool specs (name, description, JSON Schema) and gets a
`ModelTurn` back: text, tool calls, token usage. Each provider translates to and from its
vendor's SDK; nothing vendor-specific leaks into runs, policy or audit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = [
    "Message",
    "ModelTurn",
    "Provider",
    "ProviderError",
    "ToolCall",
    "Usage",
    "as_text",
    "cost",
    "sdk_error",
]


@dataclass(frozen=True)
class ToolCall:
    """The model asks for `name(arguments)`; `id` pairs the call with its result."""

    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens
        )


@dataclass(frozen=True)
class Message:
    """One entry of the conversation.

    `system` and `user` carry text; `assistant` carries text and/or tool calls; `tool` carries
    the JSON-able result of the call `call_id` (an error is a result too, see `ToolError`).
    """

    role: Literal["system", "user", "assistant", "tool"]
    content: Any = None
    tool_calls: tuple[ToolCall, ...] = ()
    call_id: str | None = None


@dataclass(frozen=True)
class ModelTurn:
    """What the model answered: tool calls to make, or final text when there are none."""

    text: str | None
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage = field(default_factory=Usage)
    model: str = ""


class ProviderError(Exception):
    """The model was unreachable or answered garbage; `retryable` says if a retry may help."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


@runtime_checkable
class Provider(Protocol):
    """A language model behind one call. Prices are per million tokens, for cost reports."""

    name: str
    input_price_per_mtok: float
    output_price_per_mtok: float

    async def complete(
        self, messages: Sequence[Message], tools: Sequence[dict[str, Any]]
    ) -> ModelTurn: ...


def cost(provider: Provider, usage: Usage) -> float:
    """The cost of `usage` in the provider's currency (USD unless configured otherwise)."""
    return (
        usage.input_tokens * provider.input_price_per_mtok
        + usage.output_tokens * provider.output_price_per_mtok
    ) / 1_000_000


def as_text(content: Any) -> str:
    """A message's content as the text a vendor API takes (JSON for structured results)."""
    if content is None:
        return ""
    return content if isinstance(content, str) else json.dumps(content, default=str)


def sdk_error(provider: str, exc: Exception, sdk: ModuleType) -> ProviderError:
    """A vendor SDK's failure as a `ProviderError` saying whether a retry may help.

    The `openai` and `anthropic` SDKs share their error classes' names and shapes: timeouts,
    unreachable endpoints, 408/409/429 and 5xx are worth a retry, the rest are not.
    """
    if isinstance(exc, sdk.APITimeoutError):
        return ProviderError(f"{provider}: the model did not answer in time", retryable=True)
    if isinstance(exc, sdk.APIConnectionError):
        return ProviderError(
            f"{provider}: cannot reach the model: {type(exc).__name__}", retryable=True
        )
    if isinstance(exc, sdk.APIStatusError):
        status = exc.status_code
        body = exc.body
        inner = body.get("error", body) if isinstance(body, dict) else None
        message = inner.get("message") if isinstance(inner, dict) else None
        said = message if isinstance(message, str) else exc.message
        retryable = status >= 500 or status in (408, 409, 429)
        return ProviderError(f"{provider} answered {status}: {said}"[:1000], retryable=retryable)
    return ProviderError(f"{provider}: {exc}"[:1000])
