"""Credentials a tool source sends downstream, read at call time and never shown.

A value is a `SecretStr` or a `FromEnv` naming the variable that holds it, so a rotated
secret is picked up without rebuilding the tools and no secret sits in a tool's description,
repr, log line or error message.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from typing import Literal

from pydantic import SecretStr

from aiassist.agent.tools import ToolError

__all__ = ["ApiKeyAuth", "Auth", "BasicAuth", "BearerAuth", "FromEnv", "Secret", "reveal"]


@dataclass(frozen=True)
class FromEnv:
    """A secret held by an environment variable, read on every call."""

    variable: str


Secret = SecretStr | FromEnv


def reveal(secret: Secret) -> str:
    """The secret's value; a missing variable is a `ToolError` naming the variable only."""
    if isinstance(secret, SecretStr):
        return secret.get_secret_value()
    value = os.environ.get(secret.variable)
    if not value:
        raise ToolError(f"credential variable {secret.variable} is not set", retryable=False)
    return value


@dataclass(frozen=True)
class BearerAuth:
    """`Authorization: Bearer <token>`."""

    token: Secret = field(repr=False)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {reveal(self.token)}"}

    def params(self) -> dict[str, str]:
        return {}


@dataclass(frozen=True)
class ApiKeyAuth:
    """An API key in a header (default), a query parameter or a cookie."""

    name: str
    value: Secret = field(repr=False)
    location: Literal["header", "query", "cookie"] = "header"

    def headers(self) -> dict[str, str]:
        if self.location == "header":
            return {self.name: reveal(self.value)}
        if self.location == "cookie":
            return {"Cookie": f"{self.name}={reveal(self.value)}"}
        return {}

    def params(self) -> dict[str, str]:
        return {self.name: reveal(self.value)} if self.location == "query" else {}


@dataclass(frozen=True)
class BasicAuth:
    """HTTP basic authentication."""

    username: str
    password: Secret = field(repr=False)

    def headers(self) -> dict[str, str]:
        pair = f"{self.username}:{reveal(self.password)}".encode()
        return {"Authorization": f"Basic {base64.b64encode(pair).decode()}"}

    def params(self) -> dict[str, str]:
        return {}


Auth = BearerAuth | ApiKeyAuth | BasicAuth
