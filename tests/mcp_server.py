"""A small MCP server built with the official SDK, for the MCP tool-source tests.

Run as `python tests/mcp_server.py stdio` or `python tests/mcp_server.py http PORT [TOKEN]`
(streamable HTTP on 127.0.0.1:PORT/mcp; with TOKEN, requests must carry `Bearer TOKEN`).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel

server = MCPServer("notes", log_level="CRITICAL")
_notes: dict[int, str] = {}


class Note(BaseModel):
    id: int
    text: str


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def create_note(text: str) -> Note:
    """Store a note and return it with its id."""
    note_id = len(_notes) + 1
    _notes[note_id] = text
    return Note(id=note_id, text=text)


@server.tool(annotations=ToolAnnotations(destructive_hint=True))
def delete_note(note_id: int) -> str:
    """Delete a note for good."""
    if _notes.pop(note_id, None) is None:
        raise ToolError(f"no note {note_id}")  # an anticipated failure: its message is shown
    return f"deleted {note_id}"


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def list_notes() -> dict[str, Any]:
    """Every note, by id."""
    return {"notes": [{"id": k, "text": v} for k, v in sorted(_notes.items())]}


@server.tool()
def explode(reason: str) -> str:
    """Always crashes (the server hides a crash's message from the client)."""
    raise RuntimeError(f"exploded: {reason}")


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def slow(seconds: float) -> str:
    """Sleep, then answer (blocks the server: a stand-in for a stuck downstream)."""
    time.sleep(seconds)
    return "done"


@server.tool()
def die() -> str:
    """Ends the server process at once, as a crash would."""
    os._exit(3)


def main(argv: list[str]) -> None:
    if argv[:1] == ["http"]:
        import uvicorn

        port = int(argv[1])
        token = argv[2] if len(argv) > 2 else None
        app = server.streamable_http_app(host="127.0.0.1")
        if token is not None:
            app = _require_bearer(app, token)
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
    else:
        server.run("stdio")


def _require_bearer(app: Any, token: str) -> Any:
    """Refuse requests without the bearer token (to test headers from secrets)."""

    async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            if headers.get(b"authorization") != f"Bearer {token}".encode():
                await send({"type": "http.response.start", "status": 401, "headers": []})
                await send({"type": "http.response.body", "body": b"unauthorized"})
                return
        await app(scope, receive, send)

    return guarded


if __name__ == "__main__":
    main(sys.argv[1:])
