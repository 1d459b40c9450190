"""Deprecated: moved to `aiassist.modules.retry.errors`; kept for one release."""

from aiassist._deprecated import moved

__getattr__ = moved(__name__, "aiassist.modules.retry.errors")
