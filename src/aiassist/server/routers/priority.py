"""Deprecated: moved to `aiassist.modules.priority.api`; kept for one release."""

from aiassist._deprecated import moved

__getattr__ = moved(__name__, "aiassist.modules.priority.api")
