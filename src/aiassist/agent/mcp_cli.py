"""`aiassist mcp serve`: the agent's tools for MCP clients, over stdio or streamable HTTP.

Tools, policy and database come from the same settings as the service. Over stdio the
process acts as one API key (`AIASSIST_API_KEY`, `AIASSIST_API_KEY_FILE` or `--key-file`);
over HTTP every request brings its own. Nothing is written to stdout but MCP messages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

__all__ = ["app"]

app = typer.Typer(help="Serve the agent's tools to MCP clients.", no_args_is_help=True)
err = Console(stderr=True)


@app.callback()
def _group() -> None:
    """Serve the agent's tools to MCP clients."""


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]{message}[/red]")
    return typer.Exit(2)


@app.command("serve")
def serve(
    stdio: Annotated[bool, typer.Option("--stdio", help="Speak MCP on stdin/stdout.")] = False,
    http: Annotated[bool, typer.Option("--http", help="Serve streamable HTTP at /mcp.")] = False,
    host: Annotated[str, typer.Option(help="Address to bind (--http).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to bind (--http).")] = 8765,
    key_file: Annotated[
        Path | None, typer.Option(help="File holding the API key to act as (--stdio).")
    ] = None,
    tool: Annotated[
        list[str] | None, typer.Option("--tool", "-t", help="Serve only these tools.")
    ] = None,
) -> None:
    """Serve the configured tools (AIASSIST_AGENT_TOOLS) under the agent's policy."""
    import anyio

    from aiassist.agent.assembly import build_runtime
    from aiassist.agent.mcp_server import REQUIRED_SCOPE, MCPToolServer
    from aiassist.settings import SettingsError, load_settings
    from aiassist.store.db import make_engine, make_sessionmaker
    from aiassist.store.keys import KeyStore

    if stdio == http:
        raise _fail("choose one transport: --stdio or --http")
    try:
        settings = load_settings()
    except SettingsError as exc:
        raise _fail(str(exc)) from None
    sessions = make_sessionmaker(make_engine(settings.resolved_database_url))
    keys = KeyStore(sessions, cache_seconds=settings.key_cache_seconds)
    try:
        runtime = build_runtime(settings, sessions)
        server = MCPToolServer(
            runtime, tools=tool or None, approval_wait=settings.mcp_approval_wait_seconds
        )
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if http:
        import uvicorn

        uvicorn.run(
            server.http_app(keys.authenticate, host=host),
            host=host,
            port=port,
            log_level=settings.log_level,
        )
        return
    token = _stdio_key(key_file, settings)
    principal = keys.authenticate(token)
    if principal is None:
        raise _fail("invalid or revoked API key")
    if not principal.allows(REQUIRED_SCOPE):
        raise _fail(f"API key {principal.key_id!r} lacks the scope {REQUIRED_SCOPE!r}")
    anyio.run(server.serve_stdio, token, keys.authenticate)


def _stdio_key(key_file: Path | None, settings: Any) -> str:
    if key_file is not None:
        try:
            token = key_file.read_text().strip()
        except OSError as exc:
            raise _fail(f"--key-file: {exc}") from None
    else:
        secret = settings.api_key
        token = secret.get_secret_value().strip() if secret is not None else ""
    if not token:
        raise _fail(
            "no API key to act as: set AIASSIST_API_KEY (or AIASSIST_API_KEY_FILE) or give "
            "--key-file; create one with `aiassist keys create --name NAME --scope agent:run`"
        )
    return token
