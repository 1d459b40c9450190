"""One small interface in front of every language model the runtime can use.

The runtime speaks in `Message`s and tool specs (name, description, JSON Schema) and gets a
`ModelTurn` back: text, tool calls, token usage. Each provider translates to and from its
vendor's SDK; nothing vendor-specific leaks into runs, policy or audit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = ["Message", "ModelTurn", "Provider", "ProviderError", "ToolCall", "Usage", "cost"]


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
