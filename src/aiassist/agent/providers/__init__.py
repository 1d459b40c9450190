"""Language-model providers: OpenAI-compatible endpoints, Anthropic, and the test model.

The vendor SDKs are imported only when their provider is built, so the runtime and its
tests do not pay for them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from aiassist.agent.providers.base import (
    Message,
    ModelTurn,
    Provider,
    ProviderError,
    ToolCall,
    Usage,
    cost,
)

if TYPE_CHECKING:
    from aiassist.settings import Settings

__all__ = [
    "Message",
    "ModelTurn",
    "Provider",
    "ProviderError",
    "ToolCall",
    "Usage",
    "cost",
    "provider_from_settings",
]

_SETTING = "AIASSIST_AGENT_PROVIDER"


def provider_from_settings(settings: Settings) -> Provider | None:
    """The configured provider, or None when none is (`agent_provider` unset or `none`).

    `openai` and `anthropic` are built from the `agent_*` settings; anything else is the
    import path `package.module:name` of a function (settings) -> Provider. A wrong value
    raises `ValueError` naming the setting, so a misconfigured service stops at start-up.
    """
    choice = (settings.agent_provider or "none").strip()
    if choice.lower() == "none":
        return None
    if choice.lower() in ("openai", "anthropic"):
        if not settings.agent_model:
            raise ValueError(f"{_SETTING}={choice} needs AIASSIST_AGENT_MODEL (the model name)")
        from aiassist.agent.providers.anthropic import AnthropicProvider
        from aiassist.agent.providers.openai import OpenAIProvider

        vendor = OpenAIProvider if choice.lower() == "openai" else AnthropicProvider
        return vendor(
            settings.agent_model,
            api_key=settings.agent_api_key,
            base_url=settings.agent_base_url,
            timeout=settings.agent_timeout_seconds,
            max_retries=settings.agent_max_retries,
            max_tokens=settings.agent_max_tokens,
            input_price_per_mtok=settings.agent_input_price_per_mtok,
            output_price_per_mtok=settings.agent_output_price_per_mtok,
        )
    module_name, _, attribute = choice.partition(":")
    if not module_name or not attribute:
        raise ValueError(
            f"{_SETTING}: {choice!r} is not openai, anthropic, none or 'package.module:name'"
        )
    try:
        make = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"{_SETTING}: cannot import {choice}: {exc}") from None
    provider = make(settings)
    if not isinstance(provider, Provider):
        raise ValueError(f"{_SETTING}: {choice} did not return a Provider")
    return provider
