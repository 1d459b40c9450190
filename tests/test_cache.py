"""The cache module on real Redis: the counting client counts reads, misses and sizes per
key and family (never values); the preloader decides from those counts, loads the keys
likely hot through the app's loader within its budgets and Redis' free memory (so nothing is
evicted), never overwrites what the app wrote, and records each loaded key's reads as its
outcome."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client import REGISTRY

from aiassist.modules.cache import CacheFeatures, CacheSettings, module
from aiassist.modules.cache.counter import CountingRedis, key_family
from aiassist.modules.cache.preload import Preloader
from aiassist.modules.cache.simulator import TraceSpec, generate, replay
from aiassist.sdk import AIAssistService

pytestmark = [pytest.mark.redis, pytest.mark.services]

BUCKET = 600
MONDAY = 1_767_571_200  # 2026-01-05 00:00 UTC


class Clock:
    def __init__(self, at: float) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


@pytest.fixture
def server(redis_server: tuple[str, subprocess.Popen[bytes]]) -> Iterator[str]:
    yield redis_server[0]


def test_key_families_hide_the_ids() -> None:
    assert key_family("course:123:page") == "course:{n}:page"
    assert key_family("user:9f86d081884c7d65:cart") == "user:{n}:cart"
    assert key_family("v2:home") == "v2:home"  # a version is part of the name


def test_the_client_counts_reads_misses_and_sizes_never_values(server: str) -> None:
    clock = Clock(MONDAY + 3 * BUCKET + 5)
    client = CountingRedis.from_url(server, bucket_s=BUCKET, flush_s=3600, clock=clock)
    client.set("course:1:page", b"secret syllabus")
    assert client.get("course:1:page") == b"secret syllabus"
    assert client.get("course:2:page") is None
    assert client.mget(["course:1:page", "course:3:page"]) == [b"secret syllabus", None]
    client.flush()
    bucket = int(clock()) // BUCKET
    plain = redis.Redis.from_url(server)
    reads = plain.hgetall(f"aiassist:cache:reads:{bucket}")
    assert {k: float(v) for k, v in reads.items()} == {
        b"course:1:page": 2.0, b"course:2:page": 1.0, b"course:3:page": 1.0,
    }  # fmt: skip
    misses = plain.hgetall(f"aiassist:cache:misses:{bucket}")
    assert {k: float(v) for k, v in misses.items()} == {b"course:2:page": 1, b"course:3:page": 1}
    assert float(plain.hget(f"aiassist:cache:families:{bucket}", "course:{n}:page") or 0) == 4
    assert plain.hget("aiassist:cache:sizes", "course:1:page") == b"15"
    assert 0 < plain.ttl(f"aiassist:cache:reads:{bucket}") <= 8 * 86_400
    for key in plain.scan_iter("aiassist:cache:*"):
        kind = plain.type(key)
        stored = plain.hvals(key) if kind == b"hash" else [plain.get(key)]
        assert all(b"secret" not in (v or b"") for v in stored), key


def test_a_sampled_client_scales_its_counts(server: str) -> None:
    clock = Clock(MONDAY)
    client = CountingRedis.from_url(server, sample_rate=0.25, flush_s=3600, clock=clock)
    for _ in range(40):
        client.mget([f"k:{i}" for i in range(50)])
    client.flush()
    total = sum(float(v) for v in client.hvals(f"aiassist:cache:reads:{int(MONDAY) // 600}"))
    assert 1500 <= total <= 2500  # 2,000 reads, a quarter counted, each as four


def _history(server: str, days: int = 8) -> tuple[CountingRedis, float]:
    """A week and a day of reads of a generated trace, counted as the app's client would."""
    trace = generate(TraceSpec(keys=120, days=days, reads_per_bucket=40, seed=3))
    clock = Clock(MONDAY)
    client = CountingRedis.from_url(server, bucket_s=BUCKET, flush_s=1e9, clock=clock)
    for b in range(trace.counts.shape[1]):
        clock.at = MONDAY + b * BUCKET
        keys = [f"course:{k}:page" for k in range(120) for _ in range(trace.counts[k, b])]
        if keys:
            client.mget(keys)
        if b % 144 == 143:
            client.flush()
    client.flush()
    return client, MONDAY + trace.counts.shape[1] * BUCKET


def test_the_preloader_loads_what_is_likely_hot_within_its_budget(
    server: str, tmp_path: Path
) -> None:
    client, now = _history(server)
    client.set("course:0:page", b"written by the app", ex=60)
    loaded: list[str] = []

    def loader(key: str) -> bytes:
        loaded.append(key)
        return f"page of {key}".encode()

    settings = CacheSettings(budget_keys=10, loads_per_s=10_000)
    service = AIAssistService.setup(data_dir=tmp_path)
    try:
        preloader = Preloader(client, loader, service, settings=settings)
        plan = preloader.plan(now)
        assert 100 <= plan.candidates <= 120 and len(plan.loaded) == len(loaded) == 10
        assert "course:0:page" not in loaded  # cached already: left alone
        assert client.get("course:0:page") == b"written by the app"
        for key in loaded:
            assert client.get(key) == f"page of {key}".encode()
            assert 7000 < client.ttl(key) <= 7200
        predicted = [p.predicted_reads for p in plan.loaded]
        assert predicted == sorted(predicted, reverse=True) and predicted[-1] > 0
        # its horizon ends: the reads each loaded key had are recorded as its outcome
        client.clock.at = now + 5  # type: ignore[attr-defined]
        client.mget(loaded[:3] * 4)
        client.flush()
        settled = preloader.settle(now + 7200)
        assert (settled.recorded, settled.read, preloader.pending) == (10, 3, [])
        assert REGISTRY.get_sample_value("aiassist_cache_preload_hit_ratio") == 0.3
    finally:
        AIAssistService.reset()


def test_the_preloader_never_makes_redis_evict(server: str, tmp_path: Path) -> None:
    client, now = _history(server)
    sizes = {f"course:{k}:page": 10_000 for k in range(120)}
    client.hset("aiassist:cache:sizes", mapping=sizes)  # type: ignore[arg-type]
    client.connection_pool.disconnect()  # the replay's buffers go with its connections
    used = int(client.info("memory")["used_memory"])
    limit = int((used + 150_000) / 0.9)  # 150 kB free past the 10% margin: a dozen pages
    client.config_set("maxmemory", str(limit))
    client.config_set("maxmemory-policy", "allkeys-lru")
    service = AIAssistService.setup(data_dir=tmp_path)
    try:
        preloader = Preloader(
            client, lambda key: b"x" * 10_000, service,
            settings=CacheSettings(budget_keys=50, loads_per_s=10_000),
        )  # fmt: skip
        plan = preloader.plan(now)
    finally:
        AIAssistService.reset()
    assert plan.loaded and plan.skipped_budget > 0  # what fits, not all 50
    assert len(plan.loaded) * 10_000 <= plan.room_bytes < 50 * 10_000
    assert int(client.info("stats")["evicted_keys"]) == 0


def test_the_fallback_is_ewma_projected_over_the_horizon() -> None:
    features = CacheFeatures(**module.example)
    decision = module.fallback(features)
    assert decision.predicted_reads == pytest.approx(7.5 * 12)
    assert len(module.encode(features)) == len(module.feature_names())


def test_pinned_keys_beat_lru_alone_on_a_generated_trace() -> None:
    trace = generate(TraceSpec(keys=300, days=9, reads_per_bucket=60, seed=5))
    start = 8 * trace.buckets_per_day

    def expected(t: object, b: int) -> object:
        return trace.rates[:, b : b + 12].sum(axis=1)

    alone = replay(trace, None, start=start, capacity=60, budget=40)
    pinned = replay(trace, expected, start=start, capacity=60, budget=40)  # type: ignore[arg-type]
    assert alone.reads == pinned.reads > 0 and alone.loads == 0 < pinned.loads
    assert pinned.hit_rate > alone.hit_rate and 0 < pinned.preload_hit_rate <= 1


def test_the_docs_example_runs(server: str, tmp_path: Path) -> None:
    from .test_docs import python_blocks

    [block] = [b for b in python_blocks("docs/modules.md") if "CountingRedis.from_url" in b]
    AIAssistService.setup(data_dir=tmp_path)
    try:
        exec(block.replace("redis://127.0.0.1:6379/0", server), {})
    finally:
        AIAssistService.reset()
    assert redis.Redis.from_url(server).exists("course:7:page")  # read once: loaded
