"""Pure ASGI middleware for FastAPI and Starlette: honours the version switches and feeds
the drift guard.

    app.add_middleware(DriftMiddleware, guard=DriftGuard(DriftConfig(stable="v1", scheme="path")))

A request for a switched version is rewritten before the app sees it (`/v2/orders` becomes
`/v1/orders`, or `X-API-Version: v2` becomes `v1`): the app's own routing serves it with the
stable version. Sampled requests have their JSON body, query string and (2xx, JSON) response
copied as they stream by and handed to the guard once the response is sent.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aiassist.drift.clients import ClientHints
from aiassist.drift.guard import DriftGuard

__all__ = ["DriftMiddleware"]


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


def _hints(scope: Scope) -> ClientHints:
    """The headers a client is told by, in one pass (decoded on the guard's thread)."""
    auth = key = agent = forwarded = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            auth = value
        elif name == b"user-agent":
            agent = value
        elif name == b"x-api-key":
            key = value
        elif name == b"x-forwarded-for":
            forwarded = value
    peer = scope.get("client")
    return ClientHints(
        auth.decode("latin-1") if auth else None,
        key.decode("latin-1") if key else None,
        agent.decode("latin-1") if agent else None,
        forwarded.decode("latin-1") if forwarded else None,
        str(peer[0]) if peer else None,
    )


def _is_json(content_type: bytes | None) -> bool:
    return content_type is not None and b"json" in content_type


class DriftMiddleware:
    def __init__(self, app: ASGIApp, guard: DriftGuard) -> None:
        self.app = app
        self.guard = guard
        self.max_bytes = guard.config.max_body_bytes
        header = guard.config.client_header
        self.client_header = header.lower().encode() if header else None
        self.identify = guard.config.identify_clients

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        guard = self.guard
        scheme = guard.scheme
        path: str = scope["path"]

        def lookup(name: str) -> str | None:
            value = _header(scope, name.encode())
            return None if value is None else value.decode("latin-1")

        version = scheme.version(path, lookup)
        if version is None or not guard.knows(version):
            await self.app(scope, receive, send)
            return
        target = guard.route(version)
        if target is not None:
            scope = self._switch(scope, path, target)
            guard.metrics.drift_rerouted.labels(version, target).inc()
        if not guard.sampled():
            await self.app(scope, receive, send)
            return

        limit = self.max_bytes
        request_chunks: list[bytes] = []
        request_size = 0
        response_chunks: list[bytes] = []
        response_size = 0
        response_json = False
        status = 0

        async def receive_copy() -> Message:
            nonlocal request_size
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                request_size += len(chunk)
                if request_size <= limit:
                    request_chunks.append(chunk)
            return message

        async def send_copy(message: Message) -> None:
            nonlocal status, response_json, response_size
            if message["type"] == "http.response.start":
                status = message["status"]
                response_json = 200 <= status < 300 and _is_json(_header(message, b"content-type"))
            elif message["type"] == "http.response.body" and response_json:
                chunk = message.get("body", b"")
                response_size += len(chunk)
                if response_size <= limit:
                    response_chunks.append(chunk)
            await send(message)

        await self.app(scope, receive_copy, send_copy)

        route = scope.get("route")
        template = getattr(route, "path", None)
        if not isinstance(template, str) or status in (404, 405):
            return
        body: bytes | None = None
        if request_size <= limit:
            if _is_json(_header(scope, b"content-type")):
                body = b"".join(request_chunks)
            elif request_size == 0:
                body = b""
        response = (
            b"".join(response_chunks)
            if response_json and response_size <= limit and target is None
            else None
        )
        client = _header(scope, self.client_header) if self.client_header else None
        hints = _hints(scope) if client is None and self.identify else None
        guard.submit(
            scope["method"],
            template,
            version,
            body=body,
            query=scope.get("query_string", b"").decode("latin-1"),
            response=response,
            rerouted=target is not None,
            client=client.decode("latin-1") if client is not None else None,
            hints=hints,
        )

    def _switch(self, scope: Scope, path: str, target: str) -> Scope:
        """A copy of the scope asking for `target` instead."""
        scheme = self.guard.scheme
        scope = dict(scope)
        new_path = scheme.switch(path, target)
        if new_path != path:
            scope["path"] = new_path
            if "raw_path" in scope:
                scope["raw_path"] = new_path.encode()
        if scheme.header:
            name = scheme.header.encode()
            headers = [(k, v) for k, v in scope["headers"] if k != name]
            headers.append((name, target.encode()))
            scope["headers"] = headers
        return scope
