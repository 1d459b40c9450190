"""Deprecated: moved to `aiassist.agent.assembly`; kept for one release."""

from aiassist._deprecated import moved

__getattr__ = moved(__name__, "aiassist.agent.assembly")
