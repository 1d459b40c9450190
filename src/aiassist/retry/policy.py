"""Deprecated: moved to `aiassist.modules.retry.policy`; kept for one release."""

from aiassist._deprecated import moved

__getattr__ = moved(__name__, "aiassist.modules.retry.policy")
