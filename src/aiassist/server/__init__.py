"""The inference service (FastAPI)."""

from aiassist.server.app import create_app

__all__ = ["create_app"]
