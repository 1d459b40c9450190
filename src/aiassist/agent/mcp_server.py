"""The runtime's tools served over MCP (official `mcp` SDK): stdio and streamable HTTP.

An MCP client is one more caller of the same tools, so it gets the same guard rails as an
agent run: every `tools/call` *is* an agent run, of one call. The run's provider is "call"
(`aiassist.agent.runtime.OneCall`: "make this call, then stop", no model), so it is
persisted, audited and resumable by any process exactly like any other run, under the
caller's principal and an allowlist of that one tool. What the policy says is what the client gets:

- allowed → the tool's result;
- denied (scopes, rules) → an `isError` result with the reason, and an audit event;
- needs approval → the call waits up to `approval_wait` seconds, polling the run, while a
  person approves it (`aiassist agent approve <id>`, `POST /v1/approvals/{id}`): the real
  result if approved in time, otherwise an `isError` result naming the approval. Nothing
  is held meanwhile: the run stays paused in the database and goes on when approved.

`tools/list` shows the tools the caller's scopes admit, with their JSON Schemas; the risk
class travels as annotations (`readOnlyHint` for read, `destructiveHint` for irreversible),
which is also how `aiassist.agent.sources.mcp` reads a server's tools back.

Who the caller is: over HTTP, the API key each request carries (`Authorization: Bearer`);
over stdio, the key the process was started with, checked again on every request so a
revocation ends a live session. Either way the key needs the `agent:run` scope.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import anyio.to_thread
import mcp_types
from fastapi import APIRouter, FastAPI
from mcp import MCPError
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types.jsonrpc import INVALID_REQUEST
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from aiassist.__about__ import __version__
from aiassist.agent.runs import CallInfo, CallStatus, RunInfo, RunStatus
from aiassist.agent.runtime import Runtime
from aiassist.agent.tools import Risk, Tool
from aiassist.store.keys import Principal

__all__ = ["REQUIRED_SCOPE", "WAIT_META", "KeyGuard", "MCPToolServer", "mcp_router"]

log = logging.getLogger("aiassist.agent.mcp")

#: The scope a key needs to use the MCP server at all (each tool may require more).
REQUIRED_SCOPE = "agent:run"
#: `_meta` key of a tools/call asking to wait less for an approval (seconds, e.g. 0).
WAIT_META = "aiassist/approval_wait_seconds"
_PRINCIPAL = "aiassist.principal"  # where the HTTP guard leaves the caller in the ASGI scope
_MAX_ARGUMENT_CHARS = 100_000
_MAX_BODY_BYTES = 1 << 20
_META_RUN = "aiassist/run_id"
_SETTLED = frozenset(
    {CallStatus.SUCCEEDED, CallStatus.FAILED, CallStatus.DENIED, CallStatus.REJECTED}
)

Authenticate = Callable[[str], Principal | None]
PrincipalOf = Callable[[ServerRequestContext[Any, Any]], Awaitable[Principal]]
Progress = Callable[[float, float | None, str], Awaitable[None]]


class MCPToolServer:
    """A `Runtime`'s tools as an MCP server; see the module docstring for the contract.

    `tools` narrows what is served (default: every tool of the runtime); `approval_wait` is
    how long a call that needs approval waits for it, `poll_seconds` how often it looks.
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        tools: Iterable[str] | None = None,
        approval_wait: float = 60.0,
        poll_seconds: float = 0.25,
        name: str = "aiassist",
    ) -> None:
        if approval_wait < 0 or poll_seconds <= 0:
            raise ValueError("approval_wait must be >= 0 and poll_seconds > 0")
        self.runtime = runtime
        try:
            self.served = frozenset(t.name for t in runtime.tools.only(tools))
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
        self.approval_wait = approval_wait
        self.poll_seconds = poll_seconds
        self.name = name

    # --- the two MCP methods, for one principal ----------------------------------------
    def visible(self, principal: Principal) -> list[Tool]:
        """The tools `principal` may call: served here, and every required scope held."""
        return [
            t
            for t in self.runtime.tools
            if t.name in self.served and all(principal.allows(s) for s in t.scopes)
        ]

    def list_tools(self, principal: Principal) -> mcp_types.ListToolsResult:
        return mcp_types.ListToolsResult(tools=[_describe(t) for t in self.visible(principal)])

    async def call_tool(
        self,
        principal: Principal,
        name: str,
        arguments: dict[str, Any] | None,
        *,
        progress: Progress | None = None,
        wait: float | None = None,
    ) -> mcp_types.CallToolResult:
        """Run `name(arguments)` as a one-call run of `principal` and answer with its outcome.

        `wait` shortens the wait for an approval (a client that must not block asks for 0);
        it never lengthens it past `approval_wait`.
        """
        arguments = arguments or {}
        if name not in self.served:
            return _error(f"unknown tool {name!r}: tools/list shows the tools served here")
        if len(json.dumps(arguments, default=str)) > _MAX_ARGUMENT_CHARS:
            return _error(f"the arguments are larger than {_MAX_ARGUMENT_CHARS} characters")
        try:
            run_id = await self.runtime.create(
                f"MCP tools/call {name}",
                principal=principal,
                tools=[name],
                provider="call",
                provider_options={"tool": name, "arguments": arguments},
                max_steps=2,
            )
        except ValueError as exc:
            return _error(str(exc))
        info = await self.runtime.drive(run_id)
        if info.status in (RunStatus.WAITING_APPROVAL, RunStatus.RUNNING):
            limit = self.approval_wait if wait is None else min(max(wait, 0), self.approval_wait)
            info = await self._wait(info, limit, progress)
        return _outcome(info)

    async def _wait(self, info: RunInfo, limit: float, progress: Progress | None) -> RunInfo:
        """Poll a paused (or elsewhere driven) run until it ends or `limit` seconds pass.

        A run approved by a process that does not drive it (a bare `Runtime.decide`) is
        driven from here; one another process is driving is left to it.
        """
        started = time.monotonic()
        deadline = started + limit
        told = ""
        while info.status in (RunStatus.WAITING_APPROVAL, RunStatus.RUNNING):
            if progress is not None and info.pending_approvals:
                message = f"waiting for approval {info.pending_approvals[0]}"
                if message != told:
                    told = message
                    with suppress(Exception):  # progress is a courtesy: never fail the call
                        await progress(time.monotonic() - started, limit, message)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await anyio.sleep(min(self.poll_seconds, remaining))
            info = await self.runtime.info(info.id)
            if info.status == RunStatus.RUNNING:
                info = await self.runtime.drive(info.id)
        return info

    # --- transports ------------------------------------------------------------------------
    def server(self, principal_of: PrincipalOf) -> Server[Any]:
        """The low-level MCP server; `principal_of` says who sent each request."""

        async def list_tools(
            ctx: ServerRequestContext[Any, Any], params: mcp_types.PaginatedRequestParams | None
        ) -> mcp_types.ListToolsResult:
            return self.list_tools(await principal_of(ctx))

        async def call_tool(
            ctx: ServerRequestContext[Any, Any], params: mcp_types.CallToolRequestParams
        ) -> mcp_types.CallToolResult:
            principal = await principal_of(ctx)

            async def progress(done: float, total: float | None, message: str) -> None:
                await ctx.session.report_progress(done, total, message)

            wait = (params.meta or {}).get(WAIT_META)
            return await self.call_tool(
                principal,
                params.name,
                params.arguments,
                progress=progress,
                wait=float(wait) if isinstance(wait, (int, float)) and wait >= 0 else None,
            )

        return Server(
            self.name,
            version=__version__,
            instructions="Backend tools under aiassist's policy: some calls wait for a "
            "person's approval, and every call is audited.",
            on_list_tools=list_tools,
            on_call_tool=call_tool,
        )

    async def serve_stdio(self, token: str, authenticate: Authenticate) -> None:
        """Serve on stdin/stdout as the key `token`, re-checked on every request."""

        async def principal_of(ctx: ServerRequestContext[Any, Any]) -> Principal:
            principal = await anyio.to_thread.run_sync(authenticate, token)
            if principal is None or not principal.allows(REQUIRED_SCOPE):
                raise MCPError(INVALID_REQUEST, "the API key is revoked or lacks agent:run")
            return principal

        server = self.server(principal_of)
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())

    def session_manager(self, *, host: str | None) -> StreamableHTTPSessionManager:
        """Streamable HTTP, stateless: any replica answers any request, each one
        authenticated on its own by `KeyGuard`. Bound to a loopback `host`, requests must
        also name it (DNS-rebinding protection, as the SDK does for local servers)."""
        return StreamableHTTPSessionManager(
            app=self.server(_principal_of_request),
            stateless=True,
            security_settings=_security(host),
            max_request_body_size=_MAX_BODY_BYTES,
        )

    def http_app(
        self, authenticate: Authenticate, *, host: str = "127.0.0.1", path: str = "/mcp"
    ) -> Starlette:
        """A standalone ASGI app serving MCP at `path` (`aiassist mcp serve --http`)."""
        manager = self.session_manager(host=host)
        endpoint = KeyGuard(StreamableHTTPASGIApp(manager), authenticate)

        @asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            async with manager.run():
                yield

        return Starlette(routes=[Route(path, endpoint=endpoint)], lifespan=lifespan)


class KeyGuard:
    """ASGI middleware: only requests with an API key holding `agent:run` get through.

    A missing or unknown key is a 401 and a key without the scope a 403, each with a JSON
    `detail` saying what to do, like the rest of the service's API. With `anonymous`, every
    request is that principal and no key is asked for (the service with `AIASSIST_AUTH=false`).
    """

    def __init__(
        self, app: ASGIApp, authenticate: Authenticate, *, anonymous: Principal | None = None
    ) -> None:
        self.app = app
        self.authenticate = authenticate
        self.anonymous = anonymous

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.anonymous is not None:
            await self.app({**scope, _PRINCIPAL: self.anonymous}, receive, send)
            return
        token = _token(scope)
        if not token:
            await _refuse(
                send,
                401,
                "missing API key: send 'Authorization: Bearer <key>' (create one with "
                "`aiassist keys create --name NAME --scope agent:run`)",
            )
            return
        principal = await anyio.to_thread.run_sync(self.authenticate, token)
        if principal is None:
            await _refuse(send, 401, "invalid or revoked API key")
            return
        if not principal.allows(REQUIRED_SCOPE):
            await _refuse(
                send,
                403,
                f"API key {principal.key_id!r} lacks the scope {REQUIRED_SCOPE!r} "
                f"(it has: {', '.join(sorted(principal.scopes))})",
            )
            return
        await self.app({**scope, _PRINCIPAL: principal}, receive, send)


def mcp_router() -> APIRouter:
    """`/mcp` in the inference service (`AIASSIST_MCP_HTTP=true`), over the agent API's own
    runtime and key store; include it after the agent router, whose runtime it uses."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from aiassist.server.auth import ANONYMOUS

        state = app.state.aiassist
        settings = state.settings
        tools = MCPToolServer(
            app.state.agent.runtime, approval_wait=settings.mcp_approval_wait_seconds
        )
        # No DNS-rebinding check here: a proxy may rewrite Host, and the API key a browser
        # never sends on its own is what protects the endpoint.
        manager = tools.session_manager(host=None)
        app.state.mcp = KeyGuard(
            StreamableHTTPASGIApp(manager),
            state.keys.authenticate,
            anonymous=None if settings.auth else ANONYMOUS,
        )
        async with manager.run():
            yield

    router = APIRouter(lifespan=lifespan)
    router.routes.append(Route("/mcp", _ServiceEndpoint(), include_in_schema=False))
    return router


class _ServiceEndpoint:
    """The guarded MCP app the lifespan built; an instance, so Starlette routes it as ASGI."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await scope["app"].state.mcp(scope, receive, send)


# --- helpers ---------------------------------------------------------------------------------
def _describe(tool: Tool) -> mcp_types.Tool:
    """A tool as `tools/list` shows it; MCP's default for `destructiveHint` is true, so a
    write tool says false explicitly."""
    read = tool.risk is Risk.READ
    annotations = mcp_types.ToolAnnotations(
        read_only_hint=read,
        destructive_hint=None if read else tool.risk is Risk.IRREVERSIBLE,
    )
    return mcp_types.Tool(
        name=tool.name,
        description=tool.description,
        input_schema=tool.parameters,
        annotations=annotations,
        meta={"aiassist/risk": tool.risk.value},
    )


def _call(info: RunInfo) -> CallInfo | None:
    return info.calls[0] if info.calls else None


def _outcome(info: RunInfo) -> mcp_types.CallToolResult:
    """The run's one call as an MCP result; a pending approval says how to give it."""
    meta = {_META_RUN: info.id}
    call = _call(info)
    if info.status == RunStatus.WAITING_APPROVAL and info.pending_approvals:
        approval = info.pending_approvals[0]
        reason = call.policy.get("reason", "") if call is not None else ""
        return _error(
            f"this call needs a person's approval ({reason}); approval {approval} is pending. "
            f"Approve it with `aiassist agent approve {approval}` or POST "
            f"/v1/approvals/{approval} (scope agent:approve), or reject it with `aiassist "
            f"agent reject {approval}`; run {info.id} then goes on and GET "
            f"/v1/agent/runs/{info.id} shows the result.",
            {"status": "waiting_approval", "approval_id": approval, "run_id": info.id},
            meta,
        )
    if call is None or call.status not in _SETTLED:
        why = info.error or f"the run is {info.status}"
        return _error(
            f"the call has no result yet: {why} (run {info.id})",
            {"status": info.status, "run_id": info.id},
            meta,
        )
    result = call.result
    if call.status == CallStatus.SUCCEEDED:
        text = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)
        return mcp_types.CallToolResult(
            content=[mcp_types.TextContent(type="text", text=text)],
            structured_content=result if isinstance(result, dict) else None,
            meta=meta,
        )
    message = result.get("error") if isinstance(result, dict) else None
    if call.status == CallStatus.REJECTED and isinstance(result, dict) and result.get("message"):
        message = f"{message}: {result['message']}"
    structured = result if isinstance(result, dict) else {"error": str(result)}
    return _error(str(message or result), {**structured, "status": call.status}, meta)


def _error(
    message: str,
    structured: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> mcp_types.CallToolResult:
    return mcp_types.CallToolResult(
        content=[mcp_types.TextContent(type="text", text=message)],
        structured_content=structured,
        is_error=True,
        meta=meta,
    )


async def _principal_of_request(ctx: ServerRequestContext[Any, Any]) -> Principal:
    request = ctx.request
    principal = request.scope.get(_PRINCIPAL) if request is not None else None
    if not isinstance(principal, Principal):  # only reachable behind no KeyGuard: refuse
        raise MCPError(INVALID_REQUEST, "unauthenticated request")
    return principal


def _token(scope: Scope) -> str | None:
    headers: dict[bytes, bytes] = dict(scope["headers"])
    authorization = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    key = headers.get(b"x-api-key", b"").decode("latin-1").strip()
    return key or None


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _security(host: str | None) -> TransportSecuritySettings | None:
    if host not in ("127.0.0.1", "localhost", "::1"):
        return None
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
        allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
    )
