"""The SDK a backend embeds: `AIAssistService` and the remote client behind it."""

from aiassist.sdk.remote import ServiceUnavailable
from aiassist.sdk.service import AIAssistService

__all__ = ["AIAssistService", "ServiceUnavailable"]
