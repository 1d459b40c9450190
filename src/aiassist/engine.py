"""Deprecated: moved to `aiassist.decider` (`Engine` is `Decider` now); kept for one release."""

from aiassist._deprecated import moved

__getattr__ = moved(__name__, "aiassist.decider", renamed={"Engine": "Decider"})
