"""The inference service (FastAPI).

`create_app` is imported when first asked for: the modules' routers import
`aiassist.server.auth`, and the app imports them, so importing the package must not."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiassist.server.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from aiassist.server.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
