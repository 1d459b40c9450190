"""Where tools come from besides Python functions: OpenAPI documents and MCP servers.

The MCP source lives in `aiassist.agent.sources.mcp` and is imported from there, so that a
process that only imports OpenAPI operations does not load the MCP SDK.
"""

from aiassist.agent.sources.auth import ApiKeyAuth, Auth, BasicAuth, BearerAuth, FromEnv, Secret
from aiassist.agent.sources.openapi import OpenAPIError, OpenAPISource, Operation

__all__ = [
    "ApiKeyAuth",
    "Auth",
    "BasicAuth",
    "BearerAuth",
    "FromEnv",
    "OpenAPIError",
    "OpenAPISource",
    "Operation",
    "Secret",
]
