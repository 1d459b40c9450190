"""aiassist: learned decisions and safe AI automation for an existing Python backend."""

from aiassist.__about__ import __version__
from aiassist.modules import Decision, Features, Module, Outcome, UnknownModuleError
from aiassist.sdk import AIAssistService, ServiceUnavailable
from aiassist.settings import Settings, SettingsError

__all__ = [
    "AIAssistService",
    "Decision",
    "Features",
    "Module",
    "Outcome",
    "ServiceUnavailable",
    "Settings",
    "SettingsError",
    "UnknownModuleError",
    "__version__",
]
