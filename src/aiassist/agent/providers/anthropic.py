"""Anthropic's messages API, through the `anthropic` SDK.

Tool calls are `tool_use` blocks of the assistant; their results go back as `tool_result`
blocks of the next user message (all results of one turn in one message, as the API wants),
with `is_error` set when the result is a `ToolError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anthropic
from pydantic import SecretStr

from aiassist.agent.providers.base import (
    Message,
    ModelTurn,
    ToolCall,
    Usage,
    as_text,
    sdk_error,
)

__all__ = ["AnthropicProvider"]


class AnthropicProvider:
    """A Claude model behind `POST {base_url}/v1/messages`, with tools."""

    def __init__(
        self,
        model: str,
        *,
        api_key: SecretStr | str | None = None,
        base_url: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        max_tokens: int = 4096,
        input_price_per_mtok: float = 0.0,
        output_price_per_mtok: float = 0.0,
        name: str = "anthropic",
    ) -> None:
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        try:
            self._client = anthropic.AsyncAnthropic(
                api_key=key, base_url=base_url, timeout=timeout, max_retries=max_retries
            )
        except anthropic.AnthropicError:
            raise ValueError(
                "no API key for the Anthropic provider: set AIASSIST_AGENT_API_KEY or "
                "ANTHROPIC_API_KEY"
            ) from None
        self.model = model
        self.max_tokens = max_tokens
        self.name = name
        self.input_price_per_mtok = input_price_per_mtok
        self.output_price_per_mtok = output_price_per_mtok

    async def complete(
        self, messages: Sequence[Message], tools: Sequence[dict[str, Any]]
    ) -> ModelTurn:
        system, conversation = to_anthropic(messages)
        request: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "messages": conversation,
        }
        if system:
            request["system"] = system
        if tools:
            request["tools"] = [
                {
                    "name": t["name"],
                    "description": t.get("description", ""),
                    "input_schema": t["parameters"],
                }
                for t in tools
            ]
        try:
            response = await self._client.messages.create(**request)
        except anthropic.AnthropicError as exc:
            raise sdk_error(self.name, exc, anthropic) from None
        return from_anthropic(response)

    async def aclose(self) -> None:
        await self._client.close()


def to_anthropic(messages: Sequence[Message]) -> tuple[str, list[dict[str, Any]]]:
    """The system prompt, and the conversation with same-role neighbours merged."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "system":
            system.append(as_text(m.content))
            continue
        blocks: list[dict[str, Any]]
        if m.role == "tool":
            role = "user"
            blocks = [
                {
                    "type": "tool_result",
                    "tool_use_id": m.call_id,
                    "content": as_text(m.content),
                    "is_error": _is_error(m.content),
                }
            ]
        else:
            role = m.role
            blocks = [{"type": "text", "text": as_text(m.content)}] if m.content else []
            blocks += [
                {"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments}
                for c in m.tool_calls
            ]
        if not blocks:  # the API refuses an empty message; an empty turn says nothing
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    return "\n\n".join(system), out


def from_anthropic(response: Any) -> ModelTurn:
    texts = [b.text for b in response.content if b.type == "text"]
    calls = [
        ToolCall(id=b.id, name=b.name, arguments=dict(b.input))
        for b in response.content
        if b.type == "tool_use"
    ]
    usage = response.usage
    return ModelTurn(
        text="".join(texts) or None,
        tool_calls=tuple(calls),
        usage=Usage(usage.input_tokens, usage.output_tokens) if usage else Usage(),
        model=response.model or "",
    )


def _is_error(content: Any) -> bool:
    """A `ToolError.as_result()`: {"error": ..., "retryable": ...}."""
    return isinstance(content, dict) and "error" in content and "retryable" in content
