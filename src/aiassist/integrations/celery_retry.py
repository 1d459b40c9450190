"""Deprecated: moved to `aiassist.integrations.celery.retry`; kept for one release."""

from aiassist._deprecated import moved

__getattr__ = moved(__name__, "aiassist.integrations.celery.retry")
