"""Rate limits per downstream (`RateLimit.key`), shared by every process that calls it.

A token bucket: `calls` tokens refilled over `per_seconds`, one taken per call. With Redis
(`AIASSIST_REDIS_URL`) the bucket lives in Redis and a small Lua script takes a token
atomically, on the Redis server's clock, so all workers and replicas share one budget.
Without Redis the bucket is in memory: right for one process, and said so at start-up.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Protocol

from aiassist.agent.tools import RateLimit

if TYPE_CHECKING:
    from redis import Redis

__all__ = ["MemoryRateLimiter", "RateLimiter", "RedisRateLimiter", "rate_limiter"]


class RateLimiter(Protocol):
    def acquire(self, limit: RateLimit) -> float:
        """Take one call from `limit`'s budget: 0.0 if granted, else seconds until one is."""
        ...


class MemoryRateLimiter:
    """Token buckets in this process only."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def acquire(self, limit: RateLimit) -> float:
        rate = limit.calls / limit.per_seconds
        with self._lock:
            now = time.monotonic()
            tokens, at = self._buckets.get(limit.key, (float(limit.calls), now))
            tokens = min(float(limit.calls), tokens + (now - at) * rate)
            wait = 0.0
            if tokens >= 1:
                tokens -= 1
            else:
                wait = (1 - tokens) / rate
            self._buckets[limit.key] = (tokens, now)
            return wait


# KEYS[1] bucket; ARGV: capacity, seconds to refill it. Returns the wait as a string (Lua
# numbers come back from Redis as integers otherwise).
_TAKE = """
local capacity = tonumber(ARGV[1])
local rate = capacity / tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) * 2000) + 1000)
return tostring(wait)
"""


class RedisRateLimiter:
    """Token buckets in Redis, shared across processes and hosts."""

    def __init__(self, client: Redis, *, prefix: str = "aiassist:ratelimit:") -> None:
        self._client = client
        self._prefix = prefix
        self._take = client.register_script(_TAKE)

    @classmethod
    def from_url(cls, url: str) -> RedisRateLimiter:
        from redis import Redis

        return cls(Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2))

    def acquire(self, limit: RateLimit) -> float:
        wait = self._take(keys=[self._prefix + limit.key], args=[limit.calls, limit.per_seconds])
        return float(wait.decode() if isinstance(wait, bytes) else wait)


def rate_limiter(redis_url: str | None) -> RateLimiter:
    """The limiter for a process: Redis-backed when a URL is configured, else in memory."""
    return RedisRateLimiter.from_url(redis_url) if redis_url else MemoryRateLimiter()
