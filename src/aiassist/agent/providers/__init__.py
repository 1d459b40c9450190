"""Language-model providers: OpenAI-compatible endpoints, Anthropic, and the test model."""

from aiassist.agent.providers.base import (
    Message,
    ModelTurn,
    Provider,
    ProviderError,
    ToolCall,
    Usage,
    cost,
)

__all__ = ["Message", "ModelTurn", "Provider", "ProviderError", "ToolCall", "Usage", "cost"]
