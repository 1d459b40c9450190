"""Deprecated: moved to `aiassist.drift.api`; kept for one release."""

from aiassist._deprecated import moved

__getattr__ = moved(__name__, "aiassist.drift.api")
