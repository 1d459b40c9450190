"""Deprecated: moved to `aiassist.modules.priority.dispatch`; kept for one release."""

from aiassist._deprecated import moved

__getattr__ = moved(__name__, "aiassist.modules.priority.dispatch")
