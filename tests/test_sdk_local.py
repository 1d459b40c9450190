"""The SDK in local mode: modules run in this process, decisions and outcomes are stored."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select

from aiassist import AIAssistService, UnknownModuleError
from aiassist.decider import Decider
from aiassist.metrics import Metrics
from aiassist.modules.reference import ReferenceFeatures
from aiassist.settings import Settings
from aiassist.store.db import make_engine, make_sessionmaker
from aiassist.store.models import DecisionRecord, OutcomeRecord

from .conftest import model_daemon, wait_for


class LinearModel:
    """A Predictor computing a clipped linear score: the engine only needs `predict`."""

    version = "lin-1"

    def predict(self, rows: Sequence[Sequence[float]]) -> list[list[float]]:
        return [[min(max(0.5 + (signal - threshold) / 10, 0.0), 1.0)] for signal, threshold in rows]


class BrokenModel:
    version = "broken-1"

    def predict(self, rows: Sequence[Sequence[float]]) -> list[list[float]]:
        raise RuntimeError("model file damaged")


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


def test_engine_uses_the_model_and_names_its_version(metrics: Metrics) -> None:
    engine = Decider(metrics=metrics)
    assert engine.decide("reference", {"signal": 3.0}).source == "fallback"
    engine.load("reference", LinearModel())
    decision = engine.decide("reference", {"signal": 3.0, "threshold": 1.0})
    assert (decision.source, decision.model_version) == ("model", "lin-1")
    assert decision.score == pytest.approx(0.7)  # type: ignore[attr-defined]
    assert engine.served_version("reference") == "lin-1"
    engine.load("reference", None)
    assert engine.decide("reference", {"signal": 3.0}).source == "fallback"


def test_a_failing_model_never_surfaces(metrics: Metrics) -> None:
    engine = Decider(metrics=metrics)
    engine.load("reference", BrokenModel())
    decisions = engine.decide_many("reference", [{"signal": 3.0}, {"signal": -1.0}])
    assert [d.source for d in decisions] == ["fallback", "fallback"]
    assert [d.fallback_reason for d in decisions] == ["model_error", "model_error"]
    assert [d.act for d in decisions] == [True, False]  # type: ignore[attr-defined]
    assert (
        metrics.registry.get_sample_value(
            "aiassist_fallbacks_total", {"module": "reference", "reason": "model_error"}
        )
        == 2
    )


def test_engine_accepts_models_dicts_and_other_pydantic_models(metrics: Metrics) -> None:
    engine = Decider(metrics=metrics)
    features = ReferenceFeatures(signal=1.0)
    assert engine.features("reference", features) is features
    assert engine.features("reference", {"signal": 1.0}) == features


def test_unknown_module_is_a_clear_error(metrics: Metrics) -> None:
    with pytest.raises(UnknownModuleError, match=r"unknown module 'nope'; available: .*reference"):
        Decider(metrics=metrics).decide("nope", {})


@pytest.fixture
def local(tmp_path: Path, metrics: Metrics) -> Iterator[AIAssistService]:
    service = AIAssistService(
        Settings(data_dir=tmp_path, record_flush_seconds=0.05), metrics=metrics
    )
    yield service
    service.close()


def count(url: str, table: type) -> int:
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        n = session.scalar(select(func.count()).select_from(table))
    engine.dispose()
    return int(n or 0)


def test_local_mode_stores_decisions_and_outcomes(local: AIAssistService) -> None:
    decision = local.decide("reference", {"signal": 0.4, "threshold": 0.5})
    assert decision.act is False  # type: ignore[attr-defined]
    assert local.record_outcome("reference", decision.decision_id, {"should_have_acted": True})
    assert local._store is not None
    local._store.flush()
    url = local.settings.resolved_database_url
    assert count(url, DecisionRecord) == 1 and count(url, OutcomeRecord) == 1
    assert local.breaker_state is None


def test_module_objects_work_as_names(local: AIAssistService) -> None:
    from aiassist.modules.reference import module as reference

    decision = local.decide(reference, {"signal": 2.0})  # typed as ReferenceDecision
    assert decision.act is True and decision.score == 1.0
    assert local.record_outcome(reference, decision.decision_id, {"should_have_acted": True})


async def test_local_mode_async(local: AIAssistService) -> None:
    decision = await local.adecide("reference", {"signal": 1.0})
    assert decision.act  # type: ignore[attr-defined]
    assert await local.arecord_outcome(
        "reference", decision.decision_id, {"should_have_acted": True}
    )


def test_invalid_outcome_is_a_caller_error(local: AIAssistService) -> None:
    with pytest.raises(ValueError, match="should_have_acted"):
        local.record_outcome("reference", "abc", {"right": True})


def test_singleton(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIASSIST_DATA_DIR", str(tmp_path))
    AIAssistService.reset()
    try:
        first = AIAssistService.instance()  # set up from the environment on first use
        assert AIAssistService.setup() is first
        assert AIAssistService.setup(timeout_ms=5) is first  # the first settings stay
        assert first.settings.data_dir == tmp_path
    finally:
        AIAssistService.reset()
    assert AIAssistService._instance is None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_safe(local: AIAssistService) -> None:
    """A pre-fork server (gunicorn --preload) sets up once, then every worker decides."""
    local.decide("reference", {"signal": 1.0})
    pid = os.fork()
    if pid == 0:  # the child: decide and store with its own recorder thread and connections
        try:
            for _ in range(5):
                local.decide("reference", {"signal": 2.0})
            local.close()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert local._store is not None
    local._store.flush()
    assert count(local.settings.resolved_database_url, DecisionRecord) == 6


def test_local_mode_serves_the_stable_model_on_the_volume(tmp_path: Path, metrics: Metrics) -> None:
    """The daemon promotes a model while the backend runs: the in-process service serves it
    (its forked workers too) and follows the tag when it moves, as the inference service
    does."""
    from aiassist.modules.reference import module as reference

    settings = Settings(data_dir=tmp_path, record_flush_seconds=0.05, model_poll_seconds=0.05)
    daemon = model_daemon(settings, reference)
    service = AIAssistService(settings, metrics=metrics)
    try:
        assert service.decide("reference", {"signal": 1.0}).source == "fallback"  # no model yet
        assert daemon.train("reference", synthetic=True, rows=2000, reason="test").action == (
            "promoted"
        )
        wait_for(lambda: service.decider.served_version("reference") == "v0001")
        decision = service.decide("reference", {"signal": 1.0})
        assert (decision.source, decision.model_version) == ("model", "v0001")
        swaps = metrics.registry.get_sample_value(
            "aiassist_model_swaps_total", {"module": "reference"}
        )
        assert swaps == 1

        pid = os.fork()
        if pid == 0:  # a worker: decides with the model, then follows the tag on its own
            code = 1
            try:
                if service.decide("reference", {"signal": 1.0}).source == "model":
                    deadline = time.monotonic() + 20
                    while time.monotonic() < deadline and code:
                        if service.decider.served_version("reference") is None:
                            code = 0
                        time.sleep(0.02)
            finally:
                os._exit(code)
        daemon.registry.set_tag("reference", "stable", None, actor="test", reason="unload")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        wait_for(lambda: service.decider.served_version("reference") is None)
        assert service.decide("reference", {"signal": 1.0}).source == "fallback"
    finally:
        service.close()
        daemon.db.dispose()
