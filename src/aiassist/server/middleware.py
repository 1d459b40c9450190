"""Pure ASGI middleware: request latency metrics and request size limits."""

from __future__ import annotations

import json
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aiassist.metrics import Metrics

__all__ = ["MetricsMiddleware", "RequestLimitMiddleware"]


class MetricsMiddleware:
    """Observes every HTTP request in `aiassist_http_request_duration_seconds`."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.request_latency.labels(scope["method"], template, str(status)).observe(
                time.perf_counter() - start
            )


class RequestLimitMiddleware:
    """Refuses headers over `max_header_bytes` with 431 and bodies over `max_bytes` with 413,
    before they are parsed (the HTTP parser in front sets no header limit of its own)."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_header_bytes: int = 32 << 10) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header_bytes = 0
        for name, value in scope["headers"]:
            header_bytes += len(name) + len(value)
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await _refuse(send, 413, f"request body larger than {self.max_bytes} bytes")
                return
        if header_bytes > self.max_header_bytes:
            detail = f"request headers larger than {self.max_header_bytes} bytes"
            await _refuse(send, 431, detail)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await _refuse(send, 413, f"request body larger than {self.max_bytes} bytes")


async def _refuse(send: Send, status: int, detail: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps({"detail": detail}).encode()})


class _TooLarge(Exception):
    pass
