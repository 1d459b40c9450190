"""Any OpenAI-compatible chat-completions endpoint, through the `openai` SDK.

The official API, and everything that speaks its dialect with tools: vLLM, Ollama,
llama.cpp's server, DeepSeek, Qwen (DashScope). Only `base_url` and `model` change.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import openai
from pydantic import SecretStr

from aiassist.agent.providers.base import (
    Message,
    ModelTurn,
    ProviderError,
    ToolCall,
    Usage,
    as_text,
    sdk_error,
)

__all__ = ["OpenAIProvider"]

_NO_KEY = "no-key"  # self-hosted servers ignore the key, but the SDK insists on one


class OpenAIProvider:
    """A chat model behind `POST {base_url}/chat/completions`, with function tools."""

    def __init__(
        self,
        model: str,
        *,
        api_key: SecretStr | str | None = None,
        base_url: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        max_tokens: int | None = None,
        input_price_per_mtok: float = 0.0,
        output_price_per_mtok: float = 0.0,
        name: str = "openai",
    ) -> None:
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        if key is None and base_url is not None:
            key = _NO_KEY
        try:
            self._client = openai.AsyncOpenAI(
                api_key=key, base_url=base_url, timeout=timeout, max_retries=max_retries
            )
        except openai.OpenAIError:
            raise ValueError(
                "no API key for the OpenAI provider: set AIASSIST_AGENT_API_KEY or "
                "OPENAI_API_KEY (or AIASSIST_AGENT_BASE_URL for a self-hosted server)"
            ) from None
        self.model = model
        self.max_tokens = max_tokens
        self.name = name
        self.input_price_per_mtok = input_price_per_mtok
        self.output_price_per_mtok = output_price_per_mtok

    async def complete(
        self, messages: Sequence[Message], tools: Sequence[dict[str, Any]]
    ) -> ModelTurn:
        request: dict[str, Any] = {"model": self.model, "messages": to_openai(messages)}
        if tools:
            request["tools"] = [{"type": "function", "function": dict(t)} for t in tools]
        if self.max_tokens is not None:
            request["max_tokens"] = self.max_tokens
        try:
            response = await self._client.chat.completions.create(**request)
        except openai.OpenAIError as exc:
            raise sdk_error(self.name, exc, openai) from None
        return from_openai(response, self.name)

    async def aclose(self) -> None:
        await self._client.close()


def to_openai(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """The conversation in chat-completions form: tool calls and results paired by id."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "tool":
            out.append({"role": "tool", "tool_call_id": m.call_id, "content": as_text(m.content)})
        elif m.role == "assistant":
            entry: dict[str, Any] = {"role": "assistant", "content": _optional_text(m.content)}
            if m.tool_calls:
                entry["tool_calls"] = [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
                    }
                    for c in m.tool_calls
                ]
            out.append(entry)
        else:
            out.append({"role": m.role, "content": as_text(m.content)})
    return out


def from_openai(response: Any, provider: str) -> ModelTurn:
    """A chat completion as a `ModelTurn`; malformed tool arguments are a retryable error."""
    if not response.choices:
        raise ProviderError(f"{provider}: the answer has no choices", retryable=True)
    message = response.choices[0].message
    calls = []
    for c in message.tool_calls or ():
        function = getattr(c, "function", None)
        if function is None:  # a custom (non-function) tool call: never requested
            raise ProviderError(f"{provider}: unexpected tool call type {c.type!r}")
        try:
            arguments = json.loads(function.arguments or "{}")
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            raise ProviderError(
                f"{provider}: the model sent arguments for {function.name!r} that are not "
                "a JSON object",
                retryable=True,
            )
        calls.append(ToolCall(id=c.id, name=function.name, arguments=arguments))
    usage = response.usage
    return ModelTurn(
        text=message.content or None,
        tool_calls=tuple(calls),
        usage=Usage(usage.prompt_tokens, usage.completion_tokens) if usage else Usage(),
        model=response.model or "",
    )


def _optional_text(content: Any) -> str | None:
    return None if content is None or content == "" else as_text(content)
