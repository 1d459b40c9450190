"""Where sessions live between requests: this process's memory, or Redis for several.

`RedisSessions` keeps each session as a small JSON value that expires with the session's
idle timeout. When Redis fails (down, slow, refusing), requests go on with sessions in
memory and a warning; Redis is tried again after `retry_s`. The backend never fails
because its session store did.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from typing import Protocol

from aiassist.modules.bot.session import Session

__all__ = ["MemorySessions", "RedisSessions", "SessionStore"]

log = logging.getLogger("aiassist.bot")


class SessionStore(Protocol):
    """Both doors: `load`/`save` for ASGI apps, `get`/`put` for WSGI ones (Django)."""

    async def load(self, key: str) -> Session | None: ...

    async def save(self, key: str, session: Session) -> None: ...

    def get(self, key: str) -> Session | None: ...

    def put(self, key: str, session: Session) -> None: ...


class MemorySessions:
    """The most recently seen `capacity` sessions of this process (the oldest go first)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    async def load(self, key: str) -> Session | None:
        return self.get(key)

    async def save(self, key: str, session: Session) -> None:
        self.put(key, session)

    def get(self, key: str) -> Session | None:
        session = self._sessions.get(key)
        if session is not None:
            self._sessions.move_to_end(key)
        return session

    def put(self, key: str, session: Session) -> None:
        self._sessions[key] = session
        self._sessions.move_to_end(key)
        while len(self._sessions) > self.capacity:
            self._sessions.popitem(last=False)

    def __len__(self) -> int:
        return len(self._sessions)


class RedisSessions:
    """Sessions shared by every process of the app, in Redis (redis-py, its asyncio client
    for `load`/`save` and its blocking one for `get`/`put`; neither connects before use)."""

    def __init__(
        self,
        url: str,
        *,
        ttl_s: float,
        timeout_s: float = 0.05,
        prefix: str = "aiassist:bot:",
        retry_s: float = 5.0,
    ) -> None:
        import redis
        import redis.asyncio

        self.prefix, self.retry_s, self.ttl_ms = prefix, retry_s, int(ttl_s * 1000)
        self.fallback = MemorySessions()
        self._down_until = 0.0
        self._async = redis.asyncio.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._sync = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )

    @property
    def degraded(self) -> bool:
        """Whether sessions are in memory now because Redis failed."""
        return time.monotonic() < self._down_until

    async def load(self, key: str) -> Session | None:
        if self.degraded:
            return self.fallback.get(key)
        try:
            raw = await self._async.get(self.prefix + key)
        except Exception as exc:  # any failure of the store: go on in memory
            self._failed(exc)
            return self.fallback.get(key)
        return _decoded(raw)

    async def save(self, key: str, session: Session) -> None:
        if self.degraded:
            self.fallback.put(key, session)
            return
        try:
            await self._async.set(self.prefix + key, _encoded(session), px=self.ttl_ms)
        except Exception as exc:
            self._failed(exc)
            self.fallback.put(key, session)

    def get(self, key: str) -> Session | None:
        if self.degraded:
            return self.fallback.get(key)
        try:
            raw = self._sync.get(self.prefix + key)
        except Exception as exc:
            self._failed(exc)
            return self.fallback.get(key)
        return _decoded(raw)

    def put(self, key: str, session: Session) -> None:
        if self.degraded:
            self.fallback.put(key, session)
            return
        try:
            self._sync.set(self.prefix + key, _encoded(session), px=self.ttl_ms)
        except Exception as exc:
            self._failed(exc)
            self.fallback.put(key, session)

    def _failed(self, exc: Exception) -> None:
        log.warning("bot sessions: Redis failed (%s); in memory for %.0f s", exc, self.retry_s)
        self._down_until = time.monotonic() + self.retry_s

    async def aclose(self) -> None:
        await self._async.aclose()
        self._sync.close()


def _encoded(session: Session) -> str:
    return json.dumps(session.to_json(), separators=(",", ":"))


def _decoded(raw: bytes | str | None) -> Session | None:
    return None if raw is None else Session.from_json(json.loads(raw))
