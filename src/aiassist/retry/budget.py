"""Deprecated: moved to `aiassist.modules.retry.budget`; kept for one release."""

from aiassist._deprecated import moved

__getattr__ = moved(__name__, "aiassist.modules.retry.budget")
