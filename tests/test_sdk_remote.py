"""The SDK in remote mode keeps answering while the service is down, starting, failing or
hanging, and picks the service up again by itself. Real servers on loopback throughout."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from prometheus_client import CollectorRegistry
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from aiassist import AIAssistService, ServiceUnavailable
from aiassist.metrics import Metrics
from aiassist.settings import Settings
from aiassist.store.models import DecisionRecord

from .conftest import LiveServer, ServiceProcess, Tokens, free_port, wait_healthy

FEATURES = {"signal": 2.0, "threshold": 1.0}


def remote(url: str, token: str | None = None, **overrides: object) -> AIAssistService:
    settings = Settings(
        mode="remote",
        service_url=url,
        api_key=token,
        timeout_ms=overrides.pop("timeout_ms", 200),
        breaker_failures=overrides.pop("breaker_failures", 3),
        breaker_recovery_seconds=overrides.pop("breaker_recovery_seconds", 0.5),
        **overrides,
    )
    return AIAssistService(settings, metrics=Metrics(CollectorRegistry()))


def fallbacks(service: AIAssistService, reason: str) -> float:
    value = service.metrics.registry.get_sample_value(
        "aiassist_fallbacks_total", {"module": "reference", "reason": reason}
    )
    return value or 0.0


def test_remote_decisions_come_from_the_service(live_server: LiveServer, tokens: Tokens) -> None:
    service = remote(live_server.url, tokens.both)
    decision = service.decide("reference", FEATURES, raise_errors=True)
    assert decision.act is True  # type: ignore[attr-defined]
    assert "service unavailable" not in decision.explanation
    many = service.decide_many("reference", [FEATURES, {"signal": 0.0, "threshold": 1.0}])
    assert [d.act for d in many] == [True, False]  # type: ignore[attr-defined]
    assert service.record_outcome("reference", decision.decision_id, {"should_have_acted": True})
    live_server.state.recorder.flush()
    assert (
        service.metrics.registry.get_sample_value(
            "aiassist_decisions_total", {"module": "reference", "source": "fallback"}
        )
        == 3
    )  # the service has no model yet: its rule answered, not ours
    assert fallbacks(service, "unreachable") == 0


async def test_a_decision_asked_not_to_be_recorded_is_not_stored(
    live_server: LiveServer, tokens: Tokens
) -> None:
    service = remote(live_server.url, tokens.both)
    kept = service.decide("reference", FEATURES, raise_errors=True)
    skipped = service.decide("reference", FEATURES, raise_errors=True, record=False)
    batch = await service.adecide_many("reference", [FEATURES] * 2, record=False)
    live_server.state.recorder.flush()
    ids = [kept.decision_id, skipped.decision_id, *(d.decision_id for d in batch)]
    with live_server.state.db.connect() as conn:
        stored = conn.scalars(select(DecisionRecord.id).where(DecisionRecord.id.in_(ids))).all()
    assert stored == [kept.decision_id]


async def test_async_remote_decisions(live_server: LiveServer, tokens: Tokens) -> None:
    service = remote(live_server.url, tokens.both)
    decisions = await asyncio.gather(*(service.adecide("reference", FEATURES) for _ in range(20)))
    assert all("service unavailable" not in d.explanation for d in decisions)
    assert await service.arecord_outcome(
        "reference", decisions[0].decision_id, {"should_have_acted": True}
    )
    await service.aclose()


def test_invalid_features_are_a_caller_error(live_server: LiveServer, tokens: Tokens) -> None:
    service = remote(live_server.url, tokens.both)
    with pytest.raises(ValueError, match="signal"):
        service.decide("reference", {"signal": "high"})


def test_stopped_service_falls_back_then_opens_the_breaker() -> None:
    service = remote(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    decisions = [service.decide("reference", FEATURES) for _ in range(10)]
    assert all(d.source == "fallback" and d.act for d in decisions)  # type: ignore[attr-defined]
    assert all(d.explanation.startswith("service unavailable") for d in decisions)
    assert [d.fallback_reason for d in decisions] == ["unreachable"] * 3 + ["breaker_open"] * 7
    assert fallbacks(service, "unreachable") == 3  # breaker_failures
    assert fallbacks(service, "breaker_open") == 7  # no more network calls
    with pytest.raises(ServiceUnavailable):
        service.decide("reference", FEATURES, raise_errors=True)


def test_wrong_key_falls_back_as_rejected(live_server: LiveServer) -> None:
    service = remote(live_server.url, "aia_0000_wrong")
    assert service.decide("reference", FEATURES).act  # type: ignore[attr-defined]
    assert fallbacks(service, "rejected") == 1
    assert not service.record_outcome("reference", "abc", {"should_have_acted": True})


class Misbehaving:
    """A real HTTP server that answers 500, or hangs, as the test says."""

    def __init__(self) -> None:
        self.mode = "error"

        async def decide(request: Request) -> Response:
            if self.mode == "hang":
                await asyncio.sleep(2)
            if self.mode == "garbage":
                return JSONResponse({"unexpected": True})
            return JSONResponse({"detail": "boom"}, status_code=500)

        app = Starlette(routes=[Route("/v1/reference/decide", decide, methods=["POST"]),
                                Route("/healthz", lambda r: JSONResponse({}))])  # fmt: skip
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)


@pytest.fixture
def misbehaving() -> Iterator[Misbehaving]:
    m = Misbehaving()
    m.thread.start()
    wait_healthy(m.url)
    yield m
    m.server.should_exit = True
    m.thread.join(10)


@pytest.mark.parametrize(
    ("mode", "reason"), [("error", "service_error"), ("garbage", "bad_response")]
)
def test_errors_fall_back(misbehaving: Misbehaving, mode: str, reason: str) -> None:
    misbehaving.mode = mode
    service = remote(misbehaving.url, breaker_failures=100)
    decisions = [service.decide("reference", FEATURES) for _ in range(5)]
    assert all(d.act for d in decisions)  # type: ignore[attr-defined]
    assert fallbacks(service, reason) == 5


def test_hang_falls_back_within_the_timeout(misbehaving: Misbehaving) -> None:
    misbehaving.mode = "hang"
    service = remote(misbehaving.url, timeout_ms=50, breaker_failures=100)
    for _ in range(3):
        start = time.perf_counter()
        assert service.decide("reference", FEATURES).act  # type: ignore[attr-defined]
        assert time.perf_counter() - start < 0.5  # the 2 s hang is never waited for
    assert fallbacks(service, "timeout") == 3


async def test_async_hang_falls_back(misbehaving: Misbehaving) -> None:
    misbehaving.mode = "hang"
    service = remote(misbehaving.url, timeout_ms=50, breaker_failures=100)
    start = time.perf_counter()
    decisions = await asyncio.gather(*(service.adecide("reference", FEATURES) for _ in range(10)))
    assert time.perf_counter() - start < 1.0
    assert all(d.act for d in decisions)  # type: ignore[attr-defined]
    assert fallbacks(service, "timeout") == 10
    await service.aclose()


def test_survives_restart_and_recovers(service_process: ServiceProcess, tokens: Tokens) -> None:
    """Start-up, outage and recovery, with a caller deciding the whole time: 0 exceptions."""
    service = remote(service_process.url, tokens.both, timeout_ms=100)

    def decide_until(condition, limit: float = 30.0) -> int:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + limit
        served = 0
        while time.monotonic() < deadline:
            d = service.decide("reference", FEATURES)  # never raises
            assert d.act  # type: ignore[attr-defined]
            served += "service unavailable" not in d.explanation
            if condition(served):
                return served
            time.sleep(0.01)
        raise AssertionError("condition not reached")

    service_process.start(wait=False)  # decide while it is still starting
    decide_until(lambda served: served >= 20)
    assert fallbacks(service, "unreachable") + fallbacks(service, "breaker_open") > 0

    service_process.kill()
    before = fallbacks(service, "unreachable") + fallbacks(service, "breaker_open")
    for _ in range(50):
        assert service.decide("reference", FEATURES).act  # type: ignore[attr-defined]
    after = fallbacks(service, "unreachable") + fallbacks(service, "breaker_open")
    assert after - before == 50

    service_process.start(wait=False)
    decide_until(lambda served: served >= 20)  # picked up again without any intervention
    assert service.breaker_state == "closed"
