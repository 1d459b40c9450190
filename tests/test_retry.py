"""Smart retry: the decorator and the httpx transports against a real flaky HTTP server on
loopback, the retry budget, the service being down, the module over HTTP, the trainer and
the benchmark's quick run."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import create_engine, select

from aiassist import AIAssistService
from aiassist.integrations.httpx import AsyncRetryTransport, RetryTransport
from aiassist.modules.retry import RetryDecision, RetryFeatures
from aiassist.modules.retry import module as retry_module
from aiassist.modules.retry.budget import RetryBudget
from aiassist.modules.retry.decorator import smart_retry
from aiassist.modules.retry.errors import ErrorInfo, RetryableError, classify, parse_retry_after
from aiassist.modules.retry.policy import Backoff, RetryPolicy, downstream
from aiassist.modules.retry.tracker import DownstreamTracker
from aiassist.settings import Settings
from aiassist.store.models import DecisionRecord, OutcomeRecord
from tests.conftest import LiveServer, free_port, wait_for

FAST = {"backoff": Backoff(base_s=0.01, cap_s=0.05), "waits": ()}


# --- a flaky downstream ------------------------------------------------------------------
class Flaky:
    """What the server saw: request times per key."""

    def __init__(self) -> None:
        self.hits: dict[str, list[float]] = defaultdict(list)
        self.lock = threading.Lock()

    def count(self, key: str) -> int:
        with self.lock:
            return len(self.hits[key])


def _handler(state: Flaky) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        """/flaky?key=K&fail=N&status=S: the first N requests of K answer S, then 200.
        /limited?key=K&after=A: the first answers 429 with Retry-After A, then 200.
        /status?key=K&status=S: always S."""

        def _serve(self) -> None:
            url = urlsplit(self.path)
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            key = q.get("key", "")
            with state.lock:
                state.hits[key].append(time.monotonic())
                n = len(state.hits[key])
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            headers: dict[str, str] = {}
            if url.path == "/flaky":
                status = int(q.get("status", 503)) if n <= int(q.get("fail", 1)) else 200
            elif url.path == "/limited":
                status = 429 if n == 1 else 200
                if status == 429:
                    headers["Retry-After"] = q.get("after", "1")
            else:
                status = int(q.get("status", 200))
            body = json.dumps({"n": n}).encode()
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture(scope="module")
def flaky() -> Iterator[tuple[str, Flaky]]:
    state = Flaky()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()
    server.server_close()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[AIAssistService]:
    """Local mode on SQLite, no model: the rule decides, decisions and outcomes are stored."""
    ai = AIAssistService(Settings(data_dir=tmp_path, record_flush_seconds=0.05))
    yield ai
    ai.close()


def _name() -> str:
    return f"test-{secrets.token_hex(4)}"


def _rows(service: AIAssistService) -> tuple[list[Any], list[Any]]:
    engine = create_engine(service.settings.resolved_database_url)
    try:
        with engine.connect() as conn:
            decisions = list(conn.execute(select(DecisionRecord).where(
                DecisionRecord.module == "retry")))  # fmt: skip
            outcomes = list(conn.execute(select(OutcomeRecord).where(
                OutcomeRecord.module == "retry")))  # fmt: skip
    finally:
        engine.dispose()
    return decisions, outcomes


# --- the decorator -----------------------------------------------------------------------
def test_decorator_retries_transient_failures_and_records_outcomes(
    flaky: tuple[str, Flaky], service: AIAssistService
) -> None:
    url, state = flaky
    key = _name()

    @smart_retry(downstream=key, service=service, **FAST)
    def fetch() -> int:
        response = httpx.get(f"{url}/flaky", params={"key": key, "fail": 2, "status": 503})
        response.raise_for_status()
        return int(response.json()["n"])

    assert fetch() == 3
    assert state.count(key) == 3
    verdicts = service.metrics.registry.get_sample_value(
        "aiassist_retry_verdicts_total", {"downstream": key, "verdict": "retry"}
    )
    assert verdicts == 2
    wait_for(lambda: len(_rows(service)[0]) >= 2, 10, "the retry decisions to be stored")
    decisions, outcomes = _rows(service)
    assert [o.outcome["succeeded"] for o in sorted(outcomes, key=lambda o: o.id)] == [False, True]
    assert {o.decision_id for o in outcomes} <= {d.id for d in decisions}
    assert all(d.features["downstream"] == key for d in decisions)
    assert decisions[0].features["error_class"] == "overloaded"
    assert decisions[0].features["status_code"] == 503


def test_decorator_async(flaky: tuple[str, Flaky], service: AIAssistService) -> None:
    url, state = flaky
    key = _name()

    @smart_retry(downstream=key, service=service, **FAST)
    async def fetch(client: httpx.AsyncClient) -> int:
        response = await client.get(f"{url}/flaky", params={"key": key, "fail": 1, "status": 502})
        response.raise_for_status()
        return int(response.json()["n"])

    async def main() -> int:
        async with httpx.AsyncClient() as client:
            return await fetch(client)

    assert asyncio.run(main()) == 2
    assert state.count(key) == 2
    wait_for(lambda: len(_rows(service)[1]) == 1, 10, "the outcome")
    assert _rows(service)[1][0].outcome["succeeded"] is True


def test_decorator_gives_up_on_hard_errors(
    flaky: tuple[str, Flaky], service: AIAssistService
) -> None:
    url, state = flaky
    key = _name()

    @smart_retry(downstream=key, service=service, **FAST)
    def fetch() -> None:
        httpx.get(f"{url}/status", params={"key": key, "status": 404}).raise_for_status()

    with pytest.raises(httpx.HTTPStatusError) as raised:
        fetch()
    assert state.count(key) == 1
    assert any("client error" in note for note in raised.value.__notes__)


def test_decorator_gives_up_after_max_attempts(
    flaky: tuple[str, Flaky], service: AIAssistService
) -> None:
    url, state = flaky
    key = _name()

    @smart_retry(downstream=key, service=service, max_attempts=3, **FAST)
    def fetch() -> None:
        httpx.get(f"{url}/status", params={"key": key, "status": 503}).raise_for_status()

    with pytest.raises(httpx.HTTPStatusError) as raised:
        fetch()
    assert state.count(key) == 3
    assert any("attempts are used up" in note for note in raised.value.__notes__)


def test_decorator_honours_retry_after(flaky: tuple[str, Flaky], service: AIAssistService) -> None:
    url, state = flaky
    key = _name()

    @smart_retry(downstream=key, service=service, **FAST)
    def fetch() -> int:
        response = httpx.get(f"{url}/limited", params={"key": key, "after": "1"})
        response.raise_for_status()
        return int(response.json()["n"])

    assert fetch() == 2
    first, second = state.hits[key]
    assert second - first >= 0.95  # never before Retry-After (the backoff alone is < 0.05 s)


def test_decorator_misuse_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="parentheses"):
        smart_retry(lambda: None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not both"):
        smart_retry(policy=RetryPolicy(downstream=_name()), max_attempts=2)


def test_retry_only_what_is_asked(service: AIAssistService) -> None:
    calls: list[str] = []

    @smart_retry(downstream=_name(), service=service, **FAST)
    def work(error: Exception) -> None:
        calls.append(type(error).__name__)
        raise error

    with pytest.raises(ValueError):
        work(ValueError("a bug, not a downstream failure"))
    assert calls == ["ValueError"]  # not retried by default
    with pytest.raises(ConnectionRefusedError):
        work(ConnectionRefusedError("refused"))
    assert calls.count("ConnectionRefusedError") == 4  # an I/O error is, up to max_attempts

    @smart_retry(downstream=_name(), service=service, retry_on=(KeyError,), **FAST)
    def lookup() -> None:
        calls.append("KeyError")
        raise KeyError("cache miss")

    with pytest.raises(KeyError):
        lookup()
    assert calls.count("KeyError") == 4


# --- the budget --------------------------------------------------------------------------
def test_budget_exhaustion_stops_retries(
    flaky: tuple[str, Flaky], service: AIAssistService
) -> None:
    url, state = flaky
    key = _name()
    # 0% of the calls, plus 2 retries per 60 s window.
    downstream(key, budget=RetryBudget(0.0, min_retries_per_s=2 / 60, window_s=60.0))

    @smart_retry(downstream=key, service=service, max_attempts=4, **FAST)
    def fetch() -> None:
        httpx.get(f"{url}/status", params={"key": key, "status": 503}).raise_for_status()

    notes: list[str] = []
    for _ in range(5):
        with pytest.raises(httpx.HTTPStatusError) as raised:
            fetch()
        notes.extend(raised.value.__notes__)
    assert state.count(key) == 5 + 2  # five calls, and the two retries the budget allowed
    assert all("retry budget is spent" in n for n in notes) and len(notes) == 5


def test_no_decision_overrides_the_budget(flaky: tuple[str, Flaky]) -> None:
    """A decider that always retries, with certainty, still stops at the budget."""
    url, state = flaky
    key = _name()

    def always(features: list[RetryFeatures]) -> list[RetryDecision]:
        return [
            RetryDecision(p_recovery=1.0, retry=True, wait_s=0.0, source="model") for _ in features
        ]

    shared = downstream(key, budget=RetryBudget(0.1, min_retries_per_s=1 / 60, window_s=60.0))
    policy = RetryPolicy(downstream=key, shared=shared, decider=always, max_attempts=50,
                         record_outcomes=False, **FAST)  # fmt: skip

    @smart_retry(policy=policy)
    def fetch() -> None:
        httpx.get(f"{url}/status", params={"key": key, "status": 503}).raise_for_status()

    for _ in range(10):
        with pytest.raises(httpx.HTTPStatusError):
            fetch()
    # 10 calls; the budget allows 0.1 x 10 + 1/60 per s x 60 s = 2 retries in the window.
    assert state.count(key) == 12


def test_budget_window_slides() -> None:
    now = [100.0]
    budget = RetryBudget(0.2, min_retries_per_s=0.0, window_s=10.0, clock=lambda: now[0])
    for _ in range(10):
        budget.record_request()
    assert budget.try_acquire() and budget.try_acquire()
    assert not budget.try_acquire()  # 20% of 10
    now[0] += 11.0  # the window moved past every count
    assert budget.state().requests == 0 and not budget.can_retry()
    with pytest.raises(ValueError):
        RetryBudget(-1)


def test_tracker_stats() -> None:
    now = [0.0]
    tracker = DownstreamTracker(window_s=10.0, clock=lambda: now[0])
    for status in (200, 429, 503, 200):
        started = tracker.begin()
        now[0] += 0.1
        tracker.end(started, None if status == 200 else ErrorInfo("other", status))
    t = tracker.begin()
    stats = tracker.stats()
    assert stats.calls == 4 and stats.in_flight == 1
    assert stats.error_rate == 0.5 and stats.rate_429 == 0.25 and stats.rate_503 == 0.25
    assert stats.latency_ms == pytest.approx(100.0)
    assert stats.failure_streak == 0 and stats.since_success_s == pytest.approx(0.0)
    tracker.end(t, ErrorInfo("timeout"))
    now[0] += 30.0
    later = tracker.stats()
    assert later.calls == 0 and later.failure_streak == 1 and later.in_flight == 0


def test_classify() -> None:
    request = httpx.Request("GET", "http://x")
    limited = httpx.Response(429, headers={"Retry-After": "3"}, request=request)
    info = classify(httpx.HTTPStatusError("x", request=request, response=limited))
    assert (info.error_class, info.status_code, info.retry_after_s) == ("rate_limited", 429, 3.0)
    assert classify(httpx.ConnectError("refused")).error_class == "connect"
    assert classify(httpx.ReadTimeout("slow")).error_class == "timeout"
    assert classify(RetryableError(status_code=404)).permanent
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert parse_retry_after("soon") is None
    with pytest.raises(ValueError):
        downstream("not a valid name!")


# --- httpx transports --------------------------------------------------------------------
def test_httpx_transport(flaky: tuple[str, Flaky], service: AIAssistService) -> None:
    url, state = flaky
    key = _name()
    transport = RetryTransport(downstream=key, service=service, **FAST)
    with httpx.Client(transport=transport) as client:
        ok = client.get(f"{url}/flaky", params={"key": key, "fail": 2, "status": 504})
        assert ok.status_code == 200 and ok.json()["n"] == 3
        # POST is not idempotent: not retried, the 503 comes back as it is.
        post_key = _name()
        posted = client.post(f"{url}/status", params={"key": post_key, "status": 503}, json={})
        assert posted.status_code == 503 and state.count(post_key) == 1
        # A client error is returned at once.
        hard_key = _name()
        assert (
            client.get(f"{url}/status", params={"key": hard_key, "status": 404}).status_code == 404
        )
        assert state.count(hard_key) == 1
        # Given up: the last response, with what happened.
        down_key = _name()
        down = client.get(f"{url}/status", params={"key": down_key, "status": 503})
        assert down.status_code == 503 and state.count(down_key) == 4
        assert down.extensions["aiassist_retry"]["verdict"] == "attempts"


def test_httpx_transport_names_any_downstream(
    flaky: tuple[str, Flaky], service: AIAssistService
) -> None:
    url, _ = flaky
    key = _name()
    transport = RetryTransport(downstream=lambda r: f"odd name/ü {key}", service=service, **FAST)
    with httpx.Client(transport=transport) as client:
        response = client.get(f"{url}/flaky", params={"key": key, "fail": 1, "status": 503})
    assert response.status_code == 200
    assert downstream(f"odd_name___{key}").tracker.stats().calls == 2


def test_httpx_transport_connection_refused(service: AIAssistService) -> None:
    port = free_port()  # nothing listens there
    transport = RetryTransport(downstream=_name(), service=service, max_attempts=2, **FAST)
    with httpx.Client(transport=transport) as client, pytest.raises(httpx.ConnectError):
        client.get(f"http://127.0.0.1:{port}/")


def test_async_httpx_transport(flaky: tuple[str, Flaky], service: AIAssistService) -> None:
    url, state = flaky
    key = _name()

    async def main() -> httpx.Response:
        transport = AsyncRetryTransport(downstream=key, service=service, **FAST)
        async with httpx.AsyncClient(transport=transport) as client:
            return await client.get(f"{url}/limited", params={"key": key, "after": "0.2"})

    response = asyncio.run(main())
    assert response.status_code == 200 and state.count(key) == 2


# --- the AI layer away -------------------------------------------------------------------
def test_service_down_the_rule_still_retries(flaky: tuple[str, Flaky]) -> None:
    url, _ = flaky
    key = _name()
    away = AIAssistService(Settings(mode="remote", service_url=f"http://127.0.0.1:{free_port()}",
                                    timeout_ms=500))  # fmt: skip
    seen: list[RetryDecision] = []
    policy = RetryPolicy(downstream=key, service=away, **FAST)
    decide = policy.decide

    def spy(features: list[RetryFeatures]) -> list[RetryDecision]:
        decisions = decide(features)
        seen.extend(decisions)
        return decisions

    policy.decide = spy  # type: ignore[method-assign]

    @smart_retry(policy=policy)
    def fetch() -> int:
        response = httpx.get(f"{url}/flaky", params={"key": key, "fail": 2, "status": 503})
        response.raise_for_status()
        return int(response.json()["n"])

    try:
        assert fetch() == 3
    finally:
        away.close()
    assert len(seen) == 2
    assert all(d.source == "fallback" and d.fallback_reason for d in seen)


# --- the module over HTTP and its model ----------------------------------------------------
def test_module_over_http(live_server: LiveServer, tokens: Any) -> None:
    headers = tokens.header()
    ok = httpx.post(f"{live_server.url}/v1/retry/decide", headers=headers,
                    json={"features": retry_module.example})  # fmt: skip
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body["retry"] is True and body["wait_s"] >= 2.0 and 0 <= body["p_recovery"] <= 1
    bad = httpx.post(f"{live_server.url}/v1/retry/decide", headers=headers,
                     json={"features": {"error_class": "meltdown", "attempt": 0}})  # fmt: skip
    assert bad.status_code == 422
    assert "error_class" in bad.text and "attempt" in bad.text
    outcome = httpx.post(f"{live_server.url}/v1/retry/outcome", headers=headers,
                         json={"decision_id": body["decision_id"],
                               "outcome": {"succeeded": True, "latency_ms": 12.5}})  # fmt: skip
    assert outcome.status_code == 201, outcome.text


def test_trained_model_serves(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    from aiassist.decider import Decider
    from aiassist.metrics import Metrics
    from aiassist.modules.retry.training import trainer
    from aiassist.registry.serving import load_checked
    from aiassist.registry.store import ModelRegistry

    data = trainer.synthetic(3000, 3)
    assert len(data) == 3000 and 0 < data.y.mean() < 1
    registry = ModelRegistry(tmp_path / "models")
    version = trainer.fit(data, 3).publish(registry, retry_module).version  # parity checked
    engine = Decider([retry_module], metrics=Metrics(CollectorRegistry()))
    engine.load("retry", load_checked(registry, retry_module, version, latency_budget_us=1e6))
    decision = engine.decide("retry", retry_module.example)
    assert decision.source == "model" and decision.model_version == version
    assert decision.explanation.startswith("model: P(recovery")
    client_error = dict(retry_module.example, error_class="client_error", status_code=404)
    assert engine.decide("retry", client_error).retry is False  # type: ignore[attr-defined]


def test_daemon_bootstraps_then_retrains_from_recorded_outcomes(
    tmp_path: Path, sqlite_url: str
) -> None:
    """No model: the daemon trains one from the simulator. Then retries recorded through the
    SDK (the simulator's calls, decided by the served model, outcomes reported) make it
    train a new version on those outcomes and judge it on the newest of them."""
    import random

    from prometheus_client import CollectorRegistry

    from aiassist.metrics import Metrics
    from aiassist.modules.retry.simulator import ModulePolicy, WorldSpec, generate, simulate
    from aiassist.registry.serving import load_checked
    from aiassist.registry.store import ModelRegistry
    from aiassist.store.audit import AuditLog
    from aiassist.store.db import make_engine, make_sessionmaker
    from aiassist.training.daemon import ModelDaemon

    settings = Settings(data_dir=tmp_path, database_url=sqlite_url, record_flush_seconds=0.05,
                        retrain_min_outcomes=200, min_train_rows=100)  # fmt: skip
    db = make_engine(sqlite_url)
    registry = ModelRegistry(settings.resolved_models_dir)
    daemon = ModelDaemon(
        settings, registry, db, AuditLog(make_sessionmaker(db)), {"retry": retry_module}
    )
    try:
        first = daemon.maybe_train("retry")
        assert (first.action, first.baseline) == ("promoted", "fallback"), first.reason
        assert first.candidate_quality is not None and first.baseline_quality is not None
        assert first.candidate_quality > first.baseline_quality  # calibrated beats the rule

        ai = AIAssistService(settings, metrics=Metrics(CollectorRegistry()))
        assert first.version is not None
        ai.decider.load("retry", load_checked(registry, retry_module, first.version,
                                             latency_budget_us=1e6))  # fmt: skip

        def decide(features: list[RetryFeatures]) -> list[RetryDecision]:
            return ai.decide_many(retry_module, features)

        world = generate(WorldSpec(duration_s=900, rate_per_s=10, episodes_per_hour=120, seed=4))
        result = simulate(world, lambda t, c, h: ModulePolicy(decide, t, c, h, random.Random(4)))
        assert len(result.examples) >= 200
        for f, succeeded in result.examples:  # what the integrations report after a retry
            [decision] = ai.decide_many(retry_module, [f])
            assert ai.record_outcome(retry_module, decision.decision_id, {"succeeded": succeeded})
        ai.close()

        second = daemon.maybe_train("retry")
        assert second.action in ("promoted", "rejected"), second.reason
        assert second.baseline == first.version and second.version is not None
        manifest = registry.manifest("retry", second.version)
        assert manifest.training is not None and manifest.training.source == "outcomes"
    finally:
        db.dispose()
