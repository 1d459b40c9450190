"""Hot swaps under load, over real HTTP: promotions and rollbacks never fail a request, every
answer names the version that gave it, and versions change in the order the tag moved."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from aiassist import AIAssistService
from aiassist.metrics import Metrics
from aiassist.modules.reference import module as reference
from aiassist.modules.reference.training import trainer
from aiassist.registry.store import ModelRegistry
from aiassist.settings import Settings

from .conftest import LiveServer, ServiceProcess, Tokens

FEATURES = {"features": {"signal": 0.3, "threshold": 0.1}}


def publish_versions(models_dir: Path, count: int) -> list[str]:
    registry = ModelRegistry(models_dir)
    versions = []
    for seed in range(count):
        exported = trainer.fit(trainer.synthetic(2000, seed), seed)
        versions.append(exported.publish(registry, reference).version)
    return versions


def compress(seq: list[str | None]) -> list[str | None]:
    return [v for i, v in enumerate(seq) if i == 0 or v != seq[i - 1]]


def is_subsequence(small: list[str | None], big: list[str | None]) -> bool:
    it = iter(big)
    return all(any(x == y for y in it) for x in small)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_promotions_and_rollbacks_under_load(
    settings: Settings, live_server: LiveServer, tokens: Tokens
) -> None:
    versions = publish_versions(settings.resolved_models_dir, 3)
    admin = httpx.Client(base_url=live_server.url, headers=tokens.header("admin"), timeout=10)
    assert (
        admin.post("/v1/admin/models/reference/promote", json={"version": versions[0]}).json()[
            "serving"
        ]
        == versions[0]
    )

    per_thread: list[list[tuple[int, str | None]]] = [[], []]
    stop = threading.Event()

    def load(seen: list[tuple[int, str | None]]) -> None:
        with httpx.Client(base_url=live_server.url, headers=tokens.header(), timeout=10) as c:
            while not stop.is_set():
                r = c.post("/v1/reference/decide", json=FEATURES)
                seen.append((r.status_code, r.json().get("model_version")))

    threads = [threading.Thread(target=load, args=(seen,)) for seen in per_thread]
    for t in threads:
        t.start()
    moves = [versions[0]]
    try:
        for i in range(12):  # 12 promotions and 12 rollbacks
            target = versions[1 + i % 2]
            served = admin.post("/v1/admin/models/reference/promote", json={"version": target})
            assert served.json()["serving"] == target
            moves.append(target)
            time.sleep(0.02)
            back = admin.post("/v1/admin/models/reference/rollback", json={})
            assert back.status_code == 200, back.text
            moves.append(back.json()["serving"])
            time.sleep(0.02)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert moves[2::2] == [versions[0]] * 12  # every rollback went back to the first version
    seen = per_thread[0] + per_thread[1]
    assert len(seen) > 100
    assert all(status == 200 for status, _ in seen), "a request failed during a swap"
    assert all(version in versions for _, version in seen), "an answer came from no model"
    for answers in per_thread:  # a sequential caller sees versions in the order of the moves
        observed = compress([v for _, v in answers])
        assert len(observed) > 1
        assert is_subsequence(observed, moves), (observed, moves)
    audit = live_server.state.audit.verify()
    assert audit.ok
    metrics = admin.get("/metrics").text
    assert 'aiassist_model_swaps_total{module="reference"} 25.0' in metrics
    rollbacks = 'aiassist_model_tag_moves_total{kind="rollback",module="reference",tag="stable"}'
    assert f"{rollbacks} 12.0" in metrics
    admin.close()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_restart_keeps_callers_whole_and_reloads_the_model(
    settings: Settings, service_process: ServiceProcess, tokens: Tokens
) -> None:
    """Kill and restart the service while a remote SDK keeps deciding: the caller sees no
    error (fallbacks counted), and after the restart the stable model answers again."""
    version = publish_versions(settings.resolved_models_dir, 1)[0]
    ModelRegistry(settings.resolved_models_dir).set_tag("reference", "stable", version, actor="t")
    sdk = AIAssistService(
        Settings(mode="remote", service_url=service_process.url, api_key=tokens.both,
                 timeout_ms=100, breaker_failures=3, breaker_recovery_seconds=0.3),
        metrics=Metrics(CollectorRegistry()),
    )  # fmt: skip

    def decide_until_model(limit: float = 30.0) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            d = sdk.decide("reference", FEATURES["features"])
            if d.source == "model":
                assert d.model_version == version
                return
            assert d.fallback_reason is not None
            time.sleep(0.02)
        raise AssertionError("the service never answered with its model")

    service_process.start(wait=False)
    decide_until_model()
    service_process.kill()
    for _ in range(30):
        d = sdk.decide("reference", FEATURES["features"])
        assert d.source == "fallback" and d.fallback_reason in ("unreachable", "breaker_open")
    service_process.start(wait=False)
    decide_until_model()
    fallbacks = sdk.metrics.registry.get_sample_value(
        "aiassist_fallbacks_total", {"module": "reference", "reason": "unreachable"}
    )
    assert fallbacks is not None and fallbacks >= 3


def test_a_passing_refusal_is_retried(tmp_path: Path) -> None:
    """A version refused for a passing reason (here: its manifest unreadable for a moment)
    is checked again after `retry_seconds`; an operator's promote re-checks at once."""
    from aiassist.decider import Decider
    from aiassist.registry.serving import ModelWatcher

    version = publish_versions(tmp_path, 1)[0]
    registry = ModelRegistry(tmp_path)
    engine = Decider(metrics=Metrics(CollectorRegistry()))
    watcher = ModelWatcher(registry, engine, latency_budget_us=1e6, retry_seconds=3600)
    manifest = registry.version_dir("reference", version) / "manifest.json"
    saved = manifest.read_bytes()
    manifest.write_bytes(b"{")  # a volume hiccup
    registry.set_tag("reference", "stable", version, actor="t")
    watcher.sync()
    assert watcher.served["reference"].refused == version
    manifest.write_bytes(saved)
    watcher.sync()
    assert engine.served_version("reference") is None  # not retried before its time
    watcher.sync(retry_refused=True)
    assert engine.served_version("reference") == version
    assert watcher.served["reference"].error is None
