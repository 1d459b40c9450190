"""API-key authentication and scope checks for the inference service.

A key is sent as `Authorization: Bearer <key>` or `X-API-Key: <key>`. Missing or unknown
keys get 401, keys without the needed scope get 403, each with a message saying what to do.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import HTTPException, Request, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from aiassist.store.keys import SCOPES, Principal

__all__ = ["ANONYMOUS", "require"]

ANONYMOUS = Principal("anonymous", "auth disabled", frozenset(SCOPES))

_bearer = HTTPBearer(
    auto_error=False,
    description="An aiassist API key, `aia_<id>_<secret>` (also accepted as `X-API-Key`).",
)


def require(scope: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency that admits only keys holding `scope` (or `admin`)."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    async def dependency(
        request: Request,
        # The scope named here is what the OpenAPI document lists as the operation's role.
        bearer: HTTPAuthorizationCredentials | None = Security(_bearer, scopes=[scope]),
    ) -> Principal:
        state = request.app.state.aiassist
        if not state.settings.auth:
            return ANONYMOUS
        # One security dependency only: each one FastAPI resolves costs every request.
        token = bearer.credentials if bearer is not None else request.headers.get("x-api-key")
        if not token:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>' "
                "(create one with `aiassist keys create`)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        principal = state.keys.authenticate(token)
        if principal is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "invalid or revoked API key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not principal.allows(scope):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"API key {principal.key_id!r} lacks the scope {scope!r} "
                f"(it has: {', '.join(sorted(principal.scopes))})",
            )
        request.state.principal = principal
        return principal  # type: ignore[no-any-return]

    return dependency
