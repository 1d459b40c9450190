"""A small ToolSet for the MCP server tests (`AIASSIST_AGENT_TOOLS=tests.mcp_tools:tools`).

Side effects are appended as JSON lines to the file named by `AIASSIST_TEST_MCP_EFFECTS`,
so a test can count them across processes (the stdio server is a child process).
"""

from __future__ import annotations

import json
import os
from typing import Any

from aiassist.agent import Risk, ToolContext, ToolSet, tool


def _effect(kind: str, **data: Any) -> None:
    path = os.environ.get("AIASSIST_TEST_MCP_EFFECTS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"kind": kind, **data}) + "\n")


def effects(path: str) -> list[dict[str, Any]]:
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def tools() -> ToolSet:
    @tool(risk=Risk.READ)
    def lookup_order(order_id: str) -> dict[str, Any]:
        """Look an order up by its id."""
        return {"order_id": order_id, "status": "shipped"}

    @tool(scopes=["agent:run"])
    def create_note(text: str, ctx: ToolContext) -> dict[str, Any]:
        """Attach a note to the customer's file."""
        _effect("note", text=text, key=ctx.idempotency_key)
        return {"noted": text}

    @tool(risk=Risk.IRREVERSIBLE, scopes=["agent:run"])
    def delete_customer(customer_id: str, ctx: ToolContext) -> dict[str, Any]:
        """Delete a customer and their history for good."""
        _effect("delete", customer_id=customer_id, key=ctx.idempotency_key)
        return {"deleted": customer_id}

    @tool(risk=Risk.IRREVERSIBLE, scopes=["admin"])
    def purge_everything() -> dict[str, Any]:
        """Delete every customer."""
        _effect("purge")
        return {"purged": True}

    return ToolSet([lookup_order, create_note, delete_customer, purge_everything])
