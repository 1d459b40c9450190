"""Deprecated: moved to `aiassist.registry.serving`; kept for one release."""

from aiassist._deprecated import moved

__getattr__ = moved(__name__, "aiassist.registry.serving")
