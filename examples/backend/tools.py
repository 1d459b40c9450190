"""The order center's API as agent tools: `AIASSIST_AGENT_TOOLS=examples.backend.tools:toolset`.

The backend's own OpenAPI document is imported when the service starts (so the backend must
be up first; `aiassist up` sees to it). Risk follows the HTTP method, except `issue_refund`,
which the backend marks `x-aiassist-risk: irreversible`: a run waits for a person there.
"""

from __future__ import annotations

import os

from aiassist.agent.sources.openapi import OpenAPISource
from aiassist.agent.tools import ToolSet

__all__ = ["toolset"]


def toolset() -> ToolSet:
    url = os.environ.get("BACKEND_URL", "http://127.0.0.1:8080").rstrip("/")
    return OpenAPISource(f"{url}/openapi.json", base_url=url, source="order-center").tools()
