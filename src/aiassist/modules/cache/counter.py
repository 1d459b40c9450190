"""`CountingRedis`: the app's redis-py client, counting its reads per key and per bucket.

A drop-in subclass of `redis.Redis`: GET and MGET answer as always; the client also counts,
for a `sample_rate` share of them, a read of each key, whether it was a miss, and the
value's length (never the value). Counts are kept in memory and written, at most every
`flush_s` and on `flush()`, with one pipeline of HINCRBY into hashes per time bucket
(`<prefix>reads:<bucket>`, `<prefix>misses:<bucket>`; they expire after eight days), and
per key family (`course:{n}:page`) into `<prefix>families:<bucket>`.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import redis

__all__ = ["CountingRedis", "key_family"]

_IDS = re.compile(r"(?<![A-Za-z])(?:\d+|[0-9a-f]{8,}(?:-[0-9a-f]{4,})*)(?![A-Za-z])")
RETENTION_S = 8 * 86_400  # a week ago's horizon, and a day of slack
_OPTIONS = ("bucket_s", "sample_rate", "prefix", "flush_s", "clock")


def key_family(key: str) -> str:
    """The key with its ids replaced: `course:123:page` -> `course:{n}:page`."""
    return _IDS.sub("{n}", key)


class CountingRedis(redis.Redis):
    def __init__(
        self,
        *args: Any,
        bucket_s: int = 600,
        sample_rate: float = 1.0,
        prefix: str = "aiassist:cache:",
        flush_s: float = 5.0,
        clock: Callable[[], float] = time.time,
        **kwargs: Any,
    ) -> None:
        """`clock`: the time reads are counted at (a replay of old traffic passes its own)."""
        super().__init__(*args, **kwargs)
        self.clock = clock
        self.bucket_s, self.sample_rate, self.prefix, self.flush_s = (
            bucket_s, sample_rate, prefix, flush_s,
        )  # fmt: skip
        self._reads: Counter[tuple[int, str]] = Counter()
        self._misses: Counter[tuple[int, str]] = Counter()
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()
        self._flushed = time.monotonic()

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> CountingRedis:
        """As `redis.Redis.from_url`, taking the counting options too."""
        counting = {k: kwargs.pop(k) for k in _OPTIONS if k in kwargs}
        return cls(connection_pool=redis.ConnectionPool.from_url(url, **kwargs), **counting)

    def execute_command(self, *args: Any, **options: Any) -> Any:
        result = super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        command = str(args[0]).upper() if args else ""
        if command == "GET" and len(args) == 2:
            self._count([args[1]], [result])
        elif command == "MGET":
            self._count(list(args[1:]), list(result or ()))
        return result

    def _count(self, keys: list[Any], values: list[Any]) -> None:
        bucket = int(self.clock()) // self.bucket_s
        weight = 1.0 / self.sample_rate
        with self._lock:
            for key, value in zip(keys, values, strict=False):
                if self.sample_rate < 1.0 and random.random() >= self.sample_rate:
                    continue
                name = key.decode() if isinstance(key, bytes) else str(key)
                self._reads[bucket, name] += weight  # type: ignore[assignment]
                if value is None:
                    self._misses[bucket, name] += weight  # type: ignore[assignment]
                else:
                    self._sizes[name] = len(value) if isinstance(value, bytes | str) else 0
            due = time.monotonic() - self._flushed >= self.flush_s
        if due:
            self.flush()

    def flush(self) -> None:
        """Write the counts so far (one pipeline) and start again."""
        with self._lock:
            reads, misses, sizes = self._reads, self._misses, self._sizes
            self._reads, self._misses, self._sizes = Counter(), Counter(), {}
            self._flushed = time.monotonic()
        if not reads:
            return
        pipe = self.pipeline(transaction=False)
        touched: set[str] = set()
        for kind, counts in (("reads", reads), ("misses", misses)):
            for (bucket, name), n in counts.items():
                hash_key = f"{self.prefix}{kind}:{bucket}"
                pipe.hincrbyfloat(hash_key, name, n)
                touched.add(hash_key)
                if kind == "reads":
                    family = f"{self.prefix}families:{bucket}"
                    pipe.hincrbyfloat(family, key_family(name), n)
                    touched.add(family)
        for name, size in sizes.items():
            pipe.hset(f"{self.prefix}sizes", name, size)
        for hash_key in touched:
            pipe.expire(hash_key, RETENTION_S)
        pipe.execute()
