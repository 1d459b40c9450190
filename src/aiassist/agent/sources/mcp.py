"""MCP servers as a tool source, through the official `mcp` SDK (2.x).

`MCPSource` connects to one server (a local command over stdio, or a URL over streamable
HTTP), lists its tools and turns each into a `Tool` whose call is a `tools/call` on that
session. It is an async context manager: the session, and the server process for stdio,
live exactly as long as the `async with` block (entered and left in the same task), in a
task of their own, so a connection is bounded by `connect_timeout` as a whole and a server
that dies later fails the calls, not the caller.

The server's annotations are hints from the server itself: `readOnlyHint` makes a tool `read`
and `destructiveHint` makes it `irreversible`; anything else is `write`. The operator's
`risk` mapping wins over hints, and `trust_hints=False` ignores them altogether.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types
from anyio.abc import TaskGroup, TaskStatus
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp_types.jsonrpc import CONNECTION_CLOSED, REQUEST_TIMEOUT

from aiassist.agent.sources.auth import Auth
from aiassist.agent.sources.validation import schema_validator
from aiassist.agent.tools import RateLimit, Risk, Tool, ToolContext, ToolError, ToolSet

__all__ = ["HttpServer", "MCPConnectError", "MCPSource", "StdioServer"]

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
_MAX_PAGES = 100
_MAX_TEXT = 100_000
_SSE_READ_SECONDS = 300.0  # an idle event stream may stay open this long


@dataclass(frozen=True)
class StdioServer:
    """A server started as a child process, speaking MCP on its stdin and stdout.

    The child gets a minimal environment (PATH, HOME, ...) plus `env`: nothing else of
    this process's environment, so no secret leaks into a third-party server by accident.
    """

    command: str
    args: Sequence[str] = ()
    env: Mapping[str, str] | None = field(default=None, repr=False)
    cwd: str | Path | None = None


@dataclass(frozen=True)
class HttpServer:
    """A server reached over streamable HTTP at `url`, with optional credentials."""

    url: str
    auth: Auth | None = None


class MCPConnectError(ConnectionError):
    """The server could not be started, reached or initialised in time."""


class MCPSource:
    """The tools of one MCP server. `name` becomes each tool's source: `mcp:<name>`."""

    def __init__(
        self,
        name: str,
        server: StdioServer | HttpServer,
        *,
        connect_timeout: float = 10.0,
        call_timeout: float = 30.0,
        risk: Mapping[str, Risk | str] | None = None,
        scopes: Mapping[str, Iterable[str]] | None = None,
        trust_hints: bool = True,
        prefix: str = "",
        rate_limit: RateLimit | None = None,
    ) -> None:
        if not _NAME.match(name):
            raise ValueError(f"MCP server name {name!r} must match {_NAME.pattern}")
        self.name = name
        self.server = server
        self.connect_timeout = connect_timeout
        self.call_timeout = call_timeout
        self.trust_hints = trust_hints
        self.prefix = prefix
        self.rate_limit = rate_limit
        self._risk = {k: Risk(v) for k, v in (risk or {}).items()}
        self._scopes = {k: frozenset(v) for k, v in (scopes or {}).items()}
        self._client: Client | None = None
        self._group: TaskGroup | None = None
        self._closing = anyio.Event()
        self._failure: str | None = None
        self._tools: ToolSet = ToolSet()
        self.skipped: dict[str, str] = {}

    # --- lifecycle --------------------------------------------------------------------------
    async def __aenter__(self) -> MCPSource:
        if self._group is not None:
            raise RuntimeError(f"MCP source {self.name!r} is already connected")
        self._closing = anyio.Event()
        self._failure = None
        group = anyio.create_task_group()
        await group.__aenter__()
        try:
            with anyio.fail_after(self.connect_timeout):
                listed: list[mcp_types.Tool] = await group.start(self._serve)
            self._tools = self._build(listed)
        except BaseException as exc:
            self._closing.set()
            group.cancel_scope.cancel()
            await group.__aexit__(None, None, None)
            if isinstance(exc, TimeoutError):
                why = f"no answer within {self.connect_timeout:g}s (timed out)"
            elif isinstance(exc, Exception) and not isinstance(exc, ValueError):
                why = _reason(exc)
            else:
                raise
            raise MCPConnectError(f"cannot connect to MCP server {self.name!r}: {why}") from None
        self._group = group
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        group, self._group = self._group, None
        if group is not None:
            self._closing.set()
            await group.__aexit__(None, None, None)

    async def _serve(self, *, task_status: TaskStatus[list[mcp_types.Tool]]) -> None:
        """Hold the session open in a task of its own until the source is closed.

        A session that breaks later (the server process dies) does not tear down the
        caller's block: its calls fail as `ToolError`s naming the reason instead.
        """
        started = False
        try:
            async with AsyncExitStack() as stack:
                client = await stack.enter_async_context(self._connect(stack))
                listed = await self._list(client)
                self._client = client
                task_status.started(listed)
                started = True
                await self._closing.wait()
        except Exception as exc:
            if not started:
                raise
            self._failure = _reason(exc)
            logger.warning("MCP server %r disconnected: %s", self.name, self._failure)
        finally:
            self._client = None

    def _connect(self, stack: AsyncExitStack) -> Client:
        # The session's default read timeout bounds the handshake and the listing; each
        # call gets `call_timeout` instead.
        if isinstance(self.server, StdioServer):
            params = StdioServerParameters(
                command=self.server.command,
                args=list(self.server.args),
                env=dict(self.server.env) if self.server.env is not None else None,
                cwd=self.server.cwd,
            )
            return Client(params, read_timeout_seconds=self.connect_timeout)
        headers = self.server.auth.headers() if self.server.auth is not None else {}
        http = httpx2.AsyncClient(
            headers=headers,
            timeout=httpx2.Timeout(self.connect_timeout, read=_SSE_READ_SECONDS),
        )
        stack.push_async_callback(http.aclose)
        transport = streamable_http_client(self.server.url, http_client=http)
        return Client(transport, read_timeout_seconds=self.connect_timeout)

    async def _list(self, client: Client) -> list[mcp_types.Tool]:
        tools: list[mcp_types.Tool] = []
        cursor: str | None = None
        for _ in range(_MAX_PAGES):
            page = await client.list_tools(cursor=cursor)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if cursor is None:
                break
        return tools

    # --- tools ------------------------------------------------------------------------------
    def tools(self, names: Iterable[str] | None = None) -> ToolSet:
        """The server's tools, or only `names` (a per-run allowlist)."""
        if self._group is None:
            raise RuntimeError(f"MCP source {self.name!r} is not connected: use `async with`")
        return self._tools.only(names)

    def _build(self, listed: list[mcp_types.Tool]) -> ToolSet:
        tools = ToolSet()
        for spec in listed:
            name = self.prefix + re.sub(r"[^A-Za-z0-9_-]+", "_", spec.name)
            schema = spec.input_schema
            if len(name) > 64 or name in tools:
                self.skipped[spec.name] = f"name {name!r} is too long or not unique"
            elif not isinstance(schema, dict) or schema.get("type") != "object":
                self.skipped[spec.name] = "its input schema is not an object"
            else:
                tools.add(self._tool(name, spec))
        unknown = (
            (set(self._risk) | set(self._scopes))
            - {t.name for t in tools}
            - {s.name for s in listed}
        )
        if unknown:
            raise ValueError(f"risk or scopes given for unknown MCP tools: {sorted(unknown)}")
        return tools

    def _tool(self, name: str, spec: mcp_types.Tool) -> Tool:
        validate = schema_validator(spec.input_schema)
        risk = self._risk.get(name, self._risk.get(spec.name)) or self._hinted_risk(spec)

        async def call(arguments: dict[str, Any], context: ToolContext) -> Any:
            validate(arguments)
            if context.dry_run and risk is not Risk.READ:
                return {"dry_run": True, "tool": spec.name, "arguments": arguments}
            return await self._call(spec.name, arguments)

        return Tool(
            name=name,
            description=(spec.description or spec.title or spec.name)[:2000],
            parameters=spec.input_schema,
            call=call,
            risk=risk,
            scopes=self._scopes.get(name, self._scopes.get(spec.name, frozenset())),
            rate_limit=self.rate_limit,
            source=f"mcp:{self.name}",
            validate=validate,
        )

    def _hinted_risk(self, spec: mcp_types.Tool) -> Risk:
        hints = spec.annotations
        if not self.trust_hints or hints is None:
            return Risk.WRITE
        if hints.read_only_hint:
            return Risk.READ
        if hints.destructive_hint:
            return Risk.IRREVERSIBLE
        return Risk.WRITE

    async def _call(self, tool: str, arguments: dict[str, Any]) -> Any:
        client = self._client
        where = f"{tool} on MCP server {self.name!r}"
        if client is None:
            why = f" ({self._failure})" if self._failure else ""
            raise ToolError(f"{where}: not connected{why}", retryable=False)
        try:
            result = await client.call_tool(tool, arguments, read_timeout_seconds=self.call_timeout)
        except MCPError as exc:
            if exc.code == REQUEST_TIMEOUT:
                message = f"{where} timed out after {self.call_timeout:g}s"
            else:
                message = f"{where} failed: {exc.message}"
            retryable = exc.code in (REQUEST_TIMEOUT, CONNECTION_CLOSED)
            raise ToolError(message, retryable=retryable) from None
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise ToolError(f"{where}: the connection is closed", retryable=True) from None
        if result.is_error:
            raise ToolError(f"{where} failed: {_text(result.content)}", retryable=False)
        if result.structured_content is not None:
            return result.structured_content
        blocks = [_block(b) for b in result.content]
        return blocks[0] if len(blocks) == 1 and isinstance(blocks[0], str) else blocks


def _block(block: Any) -> Any:
    """One content block as JSON: text as is, binary data described rather than copied."""
    if isinstance(block, mcp_types.TextContent):
        return block.text[:_MAX_TEXT]
    if isinstance(block, (mcp_types.ImageContent, mcp_types.AudioContent)):
        return {"type": block.type, "mime_type": block.mime_type, "bytes": len(block.data) * 3 // 4}
    if isinstance(block, mcp_types.EmbeddedResource):
        resource = block.resource
        shown: dict[str, Any] = {"type": "resource", "uri": str(resource.uri)}
        if isinstance(resource, mcp_types.TextResourceContents):
            shown["text"] = resource.text[:_MAX_TEXT]
        return shown
    if isinstance(block, mcp_types.ResourceLink):
        return {"type": "resource_link", "uri": str(block.uri), "name": block.name}
    return block.model_dump(mode="json", by_alias=True, exclude_none=True)


def _text(content: Sequence[Any]) -> str:
    texts = [b.text for b in content if isinstance(b, mcp_types.TextContent)]
    return " ".join(texts)[:2000] or "the tool reported an error"


def _reason(exc: BaseException) -> str:
    """The innermost failures of `exc`, which task groups wrap in exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(dict.fromkeys(_reason(e) for e in exc.exceptions))
    if isinstance(exc, MCPError):
        return exc.message
    if isinstance(exc, ToolError):
        return exc.message
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
