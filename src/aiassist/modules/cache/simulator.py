"""Seeded key-access traces and a cache to replay them through, to train the model and to
compare preloading policies (`bench/cache.py`). No public key-access trace could be shipped,
so the trace is generated; every number is a constant below or a `TraceSpec` field.

- **Keys** (`keys`, e.g. course pages) have a Zipf popularity (exponent `zipf`) and one of
  four rhythms: office hours (weekdays 9-18), evenings (19-23), weekends, or flat.
- **Drift**: each key's popularity takes a log-normal random walk from day to day (sigma
  `drift`), and `new_share` of the keys are released during the trace, ramping up.
- **Known events** (`events_per_day`, say live classes on a calendar): a key reads x20 from
  30 min before the event to 90 min after; the calendar is a feature, so they can be
  foreseen.
- **Flash crowds** (`flash_per_day`): a key reads x30 for one to three hours, unannounced.
- **Reads**: Poisson counts per key per bucket (`bucket_s`, 10 min), `reads_per_bucket` on
  average at the weekly mean.

`replay` runs the reads through a cache of `capacity` keys: LRU and cache-aside (entries
expire after `ttl_s`), plus, at every plan, the keys a policy predicts hottest, pinned for
the horizon.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Replay", "Trace", "TraceSpec", "generate", "replay", "window_sum"]

DAY_S = 86_400
WEEK_DAYS = 7
RHYTHMS = ("office", "evening", "weekend", "flat")


class TraceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: int = Field(3000, ge=10, le=200_000)
    days: int = Field(14, ge=1, le=120)
    bucket_s: int = Field(600, ge=60, le=3600)
    reads_per_bucket: float = Field(2000.0, gt=0, le=1e6)
    zipf: float = Field(0.9, ge=0, le=3)
    drift: float = Field(0.25, ge=0, le=2)
    new_share: float = Field(0.05, ge=0, le=1)
    events_per_day: int = Field(6, ge=0, le=1000)
    flash_per_day: int = Field(3, ge=0, le=1000)
    seed: int = 0


@dataclass
class Trace:
    spec: TraceSpec
    counts: np.ndarray  # keys x buckets: reads
    rates: np.ndarray  # keys x buckets: the expected reads they were drawn from
    events: list[tuple[int, int]]  # (key, bucket the event starts), known in advance
    names: list[str] = field(default_factory=list)

    @property
    def buckets_per_day(self) -> int:
        return DAY_S // self.spec.bucket_s


def _rhythm(kind: str, hours: np.ndarray, weekday: np.ndarray) -> np.ndarray:
    def bump(center: float, width: float) -> np.ndarray:
        d = np.minimum(np.abs(hours - center), 24 - np.abs(hours - center))
        result: np.ndarray = np.exp(-0.5 * (d / width) ** 2)
        return result

    weekend = weekday >= 5
    if kind == "office":
        return 0.1 + bump(13.5, 3.0) * np.where(weekend, 0.15, 1.0)
    if kind == "evening":
        return 0.1 + bump(21.0, 1.5)
    if kind == "weekend":
        return 0.1 + bump(15.0, 4.0) * np.where(weekend, 1.0, 0.1)
    return np.full_like(hours, 0.6)


def generate(spec: TraceSpec) -> Trace:
    rng = np.random.default_rng(spec.seed)
    per_day = DAY_S // spec.bucket_s
    n_buckets = spec.days * per_day
    t = np.arange(n_buckets)
    hours = (t % per_day) * spec.bucket_s / 3600
    weekday = (t // per_day) % WEEK_DAYS
    popularity = 1.0 / np.arange(1, spec.keys + 1) ** spec.zipf
    popularity = rng.permutation(popularity / popularity.sum())
    kinds = rng.integers(len(RHYTHMS), size=spec.keys)
    profiles = np.stack([_rhythm(k, hours, weekday) for k in RHYTHMS])
    shape = profiles[kinds]
    shape /= shape.mean(axis=1, keepdims=True)
    walk = np.exp(np.cumsum(rng.normal(0, spec.drift, (spec.keys, spec.days)), axis=1))
    daily = np.repeat(walk / walk[:, :1], per_day, axis=1)
    rate = popularity[:, None] * shape * daily
    released = rng.random(spec.keys) < spec.new_share
    for k in np.flatnonzero(released):
        start = int(rng.integers(per_day, n_buckets))
        ramp = np.clip((t - start) / per_day, 0, 1)
        rate[k] *= ramp * 5
    events: list[tuple[int, int]] = []
    for day in range(spec.days):
        for _ in range(spec.events_per_day):
            key = int(rng.integers(spec.keys))
            start = day * per_day + int(rng.integers(per_day))
            events.append((key, start))
            lo, hi = (
                max(0, start - 1800 // spec.bucket_s),
                min(n_buckets, start + 5400 // spec.bucket_s),
            )
            rate[key, lo:hi] += 20 * max(rate[key].mean(), popularity.mean())
        for _ in range(spec.flash_per_day):
            key = int(rng.integers(spec.keys))
            start = day * per_day + int(rng.integers(per_day))
            length = int(rng.integers(3600, 3 * 3600) // spec.bucket_s)
            rate[key, start : start + length] += 30 * max(rate[key].mean(), popularity.mean())
    rate *= spec.reads_per_bucket / rate.sum(axis=0).mean()
    counts = rng.poisson(rate).astype(np.int32)
    names = [f"course:{k}:page" for k in range(spec.keys)]
    return Trace(spec, counts, rate.astype(np.float32), sorted(events, key=lambda e: e[1]), names)


@dataclass
class Replay:
    reads: int = 0
    hits: int = 0
    loads: int = 0  # keys a plan loaded (not cached yet)
    loads_read: int = 0  # ... of which read within the horizon
    pinned_reads: int = 0  # reads served by the keys the plans pinned
    plans: int = 0
    declined: int = 0  # loads declined: they would have evicted a key predicted hotter
    minutes: float = 0.0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.reads if self.reads else 0.0

    @property
    def preload_hit_rate(self) -> float:
        """The share of the keys the plans loaded that were read within their horizon."""
        return self.loads_read / self.loads if self.loads else 0.0

    @property
    def loads_per_min(self) -> float:
        return self.loads / self.minutes if self.minutes else 0.0


#: A policy: (trace, bucket the horizon starts at) -> predicted reads over it, every key.
Policy = Callable[[Trace, int], np.ndarray]


def replay(
    trace: Trace,
    policy: Policy | None,
    *,
    start: int,
    capacity: int,
    budget: int,
    horizon_s: int = 7200,
    ttl_s: int = 1800,
    seed: int = 0,
) -> Replay:
    """Reads from bucket `start` on, through a cache of `capacity` keys.

    Without a policy it is LRU, cache-aside (a miss loads the key, which expires after
    `ttl_s`). With one, every horizon the `budget` keys predicted hottest are *pinned* for the
    horizon (loaded if not cached; kept from eviction), and the rest of the capacity stays
    LRU. A key is pinned only if the LRU key it displaces is predicted colder.
    """
    rng = np.random.default_rng(seed)
    spec = trace.spec
    horizon = horizon_s // spec.bucket_s
    lru: OrderedDict[int, float] = OrderedDict()  # key -> expiry (seconds)
    pinned: dict[int, float] = {}
    unread: set[int] = set()  # loaded by the current plan, not read yet
    out = Replay()
    for b in range(start, trace.counts.shape[1]):
        now = float(b * spec.bucket_s)
        if policy is not None and (b - start) % horizon == 0:
            out.plans += 1
            predicted = policy(trace, b)
            for key, until in pinned.items():  # last plan's pins become plain entries
                lru[key] = max(until, now + ttl_s)
            pinned, unread = {}, set()
            for key in np.argsort(-predicted, kind="stable")[:budget].tolist():
                if key in lru:
                    del lru[key]
                else:
                    while lru and len(lru) + len(pinned) >= capacity:
                        victim = next(iter(lru))
                        if predicted[victim] >= predicted[key]:
                            break
                        lru.popitem(last=False)
                    if len(lru) + len(pinned) >= capacity:
                        out.declined += 1
                        continue
                    out.loads += 1
                    unread.add(key)
                pinned[key] = now + horizon_s
        column = trace.counts[:, b]
        keys = np.repeat(np.arange(len(column)), column)
        rng.shuffle(keys)
        times = now + np.sort(rng.random(len(keys))) * spec.bucket_s
        room = capacity - len(pinned)
        for key, at in zip(keys.tolist(), times.tolist(), strict=True):
            out.reads += 1
            if key in pinned:
                out.hits += 1
                out.pinned_reads += 1
                if key in unread:
                    unread.discard(key)
                    out.loads_read += 1
                continue
            expiry = lru.get(key)
            if expiry is not None and expiry > at:
                out.hits += 1
                lru.move_to_end(key)
                continue
            lru[key] = at + ttl_s
            lru.move_to_end(key)
            while len(lru) > room:
                lru.popitem(last=False)
    out.minutes = (trace.counts.shape[1] - start) * spec.bucket_s / 60
    return out


def window_sum(counts: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Reads per key over buckets [start, stop), zero where the window is before the trace."""
    lo, hi = max(start, 0), max(stop, 0)
    return counts[:, lo:hi].sum(axis=1).astype(np.float64) if hi > lo else np.zeros(len(counts))
