"""`Idempotency-Key` for every write: a repeated request gets the first answer, not a new effect.

A caller that may resend a request (an agent resuming after a crash, a retrying client)
sends the same key; the first response is stored and replayed. A key still in flight answers
409, a key reused for another method or path 422. Server errors are not stored, so the
request can be tried again.
"""

from __future__ import annotations

import json
from typing import Any

import anyio.to_thread
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .db import IdempotentResponse

__all__ = ["IdempotencyMiddleware"]

_WRITES = {"POST", "PUT", "PATCH", "DELETE"}


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp, sessions: sessionmaker[Session]) -> None:
        self.app = app
        self.sessions = sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = _key(scope)
        if key is None:
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        stored = await anyio.to_thread.run_sync(self._claim, key, method, path)
        if stored is not None:
            await _answer(send, *stored)
            return
        start: Message = {}
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            status = start.get("status", 500)
            await anyio.to_thread.run_sync(self._settle, key, status, b"".join(chunks))

    def _claim(self, key: str, method: str, path: str) -> tuple[int, bytes] | None:
        """Reserve `key`, or give what to answer instead of running the request."""
        with self.sessions() as session:
            try:
                session.add(IdempotentResponse(key=key, method=method, path=path))
                session.commit()
                return None
            except IntegrityError:
                session.rollback()
            row = session.get(IdempotentResponse, key)
        if row is None:  # settled as a server error in between: the caller may retry
            return 409, _detail("the request with this Idempotency-Key is being retried")
        if (row.method, row.path) != (method, path):
            return 422, _detail(f"Idempotency-Key already used for {row.method} {row.path}")
        if row.status_code is None:
            return 409, _detail("a request with this Idempotency-Key is still in progress")
        return row.status_code, row.body or b""

    def _settle(self, key: str, status: int, body: bytes) -> None:
        with self.sessions.begin() as session:
            row = session.get(IdempotentResponse, key)
            if row is None:
                return
            if status >= 500:
                session.delete(row)
            else:
                row.status_code, row.body = status, body


def _key(scope: Scope) -> str | None:
    if scope["type"] != "http" or scope["method"] not in _WRITES:
        return None
    for name, value in scope["headers"]:
        if name == b"idempotency-key":
            key = value.decode("latin-1").strip()
            return key[:200] or None
    return None


def _detail(message: str) -> bytes:
    return json.dumps({"detail": message}).encode()


async def _answer(send: Send, status: int, body: bytes) -> None:
    headers: list[Any] = [(b"content-type", b"application/json"), (b"idempotent-replay", b"true")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
