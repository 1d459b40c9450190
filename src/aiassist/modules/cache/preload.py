"""`Preloader`: every horizon, rank the keys by the reads the module predicts, and fill the
ones likely hot by calling the app's own loader, before they are asked for.

It reads the counts `CountingRedis` wrote, decides for every key seen in the last day (and
in the coming hours a week ago), and loads the hottest that are not cached, within the
plan's budget of keys and bytes and within the memory Redis has free under `maxmemory`
(less `memory_margin` of it, for the allocator's overhead and the app's own writes): loading
does not make Redis evict, so it never displaces a key hotter than the one it loads.
Loads are paced (`loads_per_s`), written with `SET ... EX horizon NX` (a value the app wrote
meanwhile wins), and recorded as decisions; `settle` later records each loaded key's reads
within its horizon as the outcome.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import redis
from prometheus_client import Counter, Gauge

from aiassist.modules.cache import CacheDecision, CacheFeatures, CacheSettings, module
from aiassist.modules.cache.history import feature_rows

__all__ = ["Loaded", "Plan", "Preloader", "Settled"]

Loader = Callable[[str], "bytes | str | None"]
_DAY = 86_400
LOADS = Counter("aiassist_cache_loads", "Keys the cache preloader loaded.")
PRELOAD_HIT_RATIO = Gauge(
    "aiassist_cache_preload_hit_ratio",
    "Share of the keys loaded by the plans settled last that were read within their horizon.",
)


@dataclass
class Loaded:
    key: str
    predicted_reads: float
    decision_id: str
    until_s: float  # when its horizon ends


@dataclass
class Settled:
    recorded: int  # loaded keys whose horizon ended, their outcomes recorded
    read: int  # ... of which read within it

    @property
    def preload_hit_rate(self) -> float:
        return self.read / self.recorded if self.recorded else 0.0


@dataclass
class Plan:
    at_s: float
    candidates: int = 0
    loaded: list[Loaded] = field(default_factory=list)
    skipped_cached: int = 0
    skipped_budget: int = 0
    missing: int = 0  # the loader had no value
    room_bytes: int = 0  # the byte budget, or the memory free under maxmemory if less


class Preloader:
    def __init__(
        self,
        client: redis.Redis,
        loader: Loader,
        service: Any,
        *,
        settings: CacheSettings | None = None,
        events: Callable[[float, float], Iterable[str]] = lambda start, end: (),
    ) -> None:
        """`service`: the `AIAssistService` (model or rule); `events(start, end)`: the keys
        a known event concerns between those times (a calendar), if the app has one."""
        self.client, self.loader, self.service = client, loader, service
        self.settings = settings or CacheSettings()
        self.events = events
        self.pending: list[Loaded] = []

    def _counts(self, now_s: float) -> tuple[list[str], np.ndarray, int]:
        """Keys and their reads per bucket over the past week (only the buckets the features
        read are fetched); the last column is the bucket in progress at `now_s`, so the
        horizon starts where it ends."""
        s = self.settings
        per_day = _DAY // s.bucket_s
        now = int(now_s) // s.bucket_s + 1
        horizon = s.horizon_s // s.bucket_s
        wanted = [
            *range(now - per_day, now),
            *range(now - 7 * per_day, now - 7 * per_day + horizon),
        ]
        pipe = self.client.pipeline(transaction=False)
        for bucket in wanted:
            pipe.hgetall(f"{s.key_prefix}reads:{bucket}")
        hashes = cast(list[dict[bytes, bytes]], pipe.execute())
        keys = sorted({k.decode() for h in hashes for k in h})
        index = {k: i for i, k in enumerate(keys)}
        span = 7 * per_day + horizon
        counts = np.zeros((len(keys), span), dtype=np.float64)
        for bucket, values in zip(wanted, hashes, strict=True):
            column = bucket - (now - 7 * per_day)
            for key, n in values.items():
                counts[index[key.decode()], column] = float(n)
        return keys, counts, 7 * per_day

    def plan(self, now_s: float | None = None) -> Plan:
        """Decide, pick and load; returns what it did."""
        s = self.settings
        now_s = time.time() if now_s is None else now_s
        keys, counts, column = self._counts(now_s)
        out = Plan(at_s=now_s, candidates=len(keys))
        if not keys:
            return out
        flagged = set(self.events(now_s, now_s + s.horizon_s))
        rows = feature_rows(
            counts, column, bucket_s=s.bucket_s, horizon_s=s.horizon_s,
            start_s=(int(now_s) // s.bucket_s + 1 - column) * s.bucket_s,
            events=[i for i, k in enumerate(keys) if k in flagged],
        )  # fmt: skip
        features = [CacheFeatures(**row) for row in rows]
        decisions = cast(
            list[CacheDecision], self.service.decide_many(module, features, record=False)
        )
        order = sorted(range(len(keys)), key=lambda i: -decisions[i].predicted_reads)
        sizes = self.client.hgetall(f"{s.key_prefix}sizes")
        room = out.room_bytes = self._free_bytes(s.budget_bytes)
        chosen: list[int] = []
        pipe = self.client.pipeline(transaction=False)
        for i in order[: s.budget_keys * 4]:
            pipe.exists(keys[i])
        cached = dict(zip(order, pipe.execute(), strict=False))
        for i in order:
            if len(chosen) >= s.budget_keys or decisions[i].predicted_reads <= 0:
                break
            if cached.get(i, 1):  # already cached (or beyond the checked head)
                out.skipped_cached += 1
                continue
            size = int(sizes.get(keys[i].encode(), b"0"))
            if size > room:
                out.skipped_budget += 1
                continue
            room -= size
            chosen.append(i)
        recorded = cast(
            list[CacheDecision],
            self.service.decide_many(module, [features[i] for i in chosen]),
        )
        for i, decision in zip(chosen, recorded, strict=True):
            value = self.loader(keys[i])
            if value is None:
                out.missing += 1
                continue
            self.client.set(keys[i], value, ex=s.horizon_s, nx=True)
            loaded = Loaded(
                keys[i], decision.predicted_reads, decision.decision_id, now_s + s.horizon_s
            )
            out.loaded.append(loaded)
            LOADS.inc()
            time.sleep(1.0 / s.loads_per_s)  # the pace: a rate, not a wait for an event
        self.pending.extend(out.loaded)
        return out

    def _free_bytes(self, budget: int) -> int:
        memory = self.client.info("memory")
        limit = int(memory.get("maxmemory", 0))
        if not limit:
            return budget
        usable = int(limit * (1 - self.settings.memory_margin))
        return max(min(budget, usable - int(memory.get("used_memory", 0))), 0)

    def settle(self, now_s: float | None = None) -> Settled:
        """Record, for each loaded key whose horizon has ended, its reads within it as the
        outcome (from the counters), and the share read as `aiassist_cache_preload_hit_ratio`."""
        s = self.settings
        now_s = time.time() if now_s is None else now_s
        done = [p for p in self.pending if p.until_s <= now_s]
        read = 0
        self.pending = [p for p in self.pending if p.until_s > now_s]
        for loaded in done:
            first = int(loaded.until_s - s.horizon_s) // s.bucket_s
            pipe = self.client.pipeline(transaction=False)
            for bucket in range(first, first + s.horizon_s // s.bucket_s):
                pipe.hget(f"{s.key_prefix}reads:{bucket}", loaded.key)
            reads = sum(float(v) for v in pipe.execute() if v is not None)
            self.service.record_outcome(module, loaded.decision_id, {"reads": round(reads)})
            read += reads > 0
        settled = Settled(len(done), read)
        if done:
            PRELOAD_HIT_RATIO.set(settled.preload_hit_rate)
        return settled
