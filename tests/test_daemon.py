"""The model daemon on the real PostgreSQL, with outcomes recorded through the service path:
bootstrap from the simulator, retrain from outcomes, promote or reject on held-out data."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select
from typer.testing import CliRunner

from aiassist import AIAssistService
from aiassist.cli import _stop_child, app
from aiassist.metrics import Metrics
from aiassist.modules.reference import module
from aiassist.registry.store import MODEL_FILE, ModelRegistry
from aiassist.settings import Settings
from aiassist.store.audit import AuditLog
from aiassist.store.db import make_engine, make_sessionmaker
from aiassist.store.models import AuditEvent
from aiassist.training.daemon import ModelDaemon

from .conftest import LiveServer, Tokens, daemon_settings, wait_for

NAME = module.name
MIN_OUTCOMES = 300  # conftest.daemon_settings's retrain_min_outcomes
PROBE = {"signal": 0.8, "threshold": 0.0}  # acts in the simulator's world, not in a shifted one


@pytest.fixture
def settings(pg_url: str, tmp_path: Path) -> Settings:
    """PostgreSQL only (overrides conftest's)."""
    return daemon_settings(pg_url, tmp_path)


@dataclass
class Daemon:
    daemon: ModelDaemon
    registry: ModelRegistry
    audit: AuditLog
    settings: Settings

    def events(self, kind: str) -> list[AuditEvent]:
        with make_sessionmaker(self.daemon.db)() as session:
            query = select(AuditEvent).where(AuditEvent.kind == kind).order_by(AuditEvent.id)
            return list(session.scalars(query))

    def cycles(self, action: str) -> float:
        value = self.daemon.metrics.registry.get_sample_value(
            "aiassist_daemon_cycles_total", {"module": NAME, "action": action}
        )
        return value or 0.0


@pytest.fixture
def daemon(settings: Settings) -> Iterator[Daemon]:
    db = make_engine(settings.resolved_database_url)
    registry = ModelRegistry(settings.resolved_models_dir)
    audit = AuditLog(make_sessionmaker(db))
    yield Daemon(
        ModelDaemon(settings, registry, db, audit, {NAME: module}), registry, audit, settings
    )
    db.dispose()


# --- outcomes ----------------------------------------------------------------------------
Example = tuple[dict[str, float], bool]


def world(n: int, seed: int, *, shift: float = 0.0, inverted: int = 0) -> list[Example]:
    """What happens after decisions: acting is right with P = sigmoid(4 (signal - threshold
    - shift)), the simulator's logic (shift 0) or a world whose real threshold sits higher.
    The first `inverted` outcomes are reported the wrong way round (a bug in the reporting
    code that was fixed later)."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(0.0, 1.0, n)
    threshold = rng.uniform(-0.5, 0.5, n)
    right = rng.random(n) < 1 / (1 + np.exp(-4 * (signal - threshold - shift)))
    return [
        ({"signal": float(s), "threshold": float(t)}, bool(r) != (i < inverted))
        for i, (s, t, r) in enumerate(zip(signal, threshold, right, strict=True))
    ]


def record_over_http(live_server: LiveServer, token: str, examples: list[Example]) -> None:
    """The backend's way: decide through the service (SDK, remote mode), report outcomes."""
    settings = Settings(
        mode="remote", service_url=live_server.url, api_key=token, timeout_ms=30_000
    )
    service = AIAssistService(settings, metrics=Metrics(CollectorRegistry()))
    try:
        decisions = service.decide_many(NAME, [f for f, _ in examples], raise_errors=True)
        for decision, (_, right) in zip(decisions, examples, strict=True):
            outcome = {"should_have_acted": right}
            assert service.record_outcome(NAME, decision.decision_id, outcome, raise_errors=True)
    finally:
        service.close()
    live_server.state.recorder.flush()  # the decisions, buffered in the service, are stored


def record_in_process(settings: Settings, examples: list[Example]) -> None:
    """The SDK in local mode: the same engine, recorder and outcome table, no HTTP."""
    local = Settings(
        data_dir=settings.data_dir,
        database_url=settings.database_url,
        record_flush_seconds=0.05,
        mode="local",
    )
    service = AIAssistService(local, metrics=Metrics(CollectorRegistry()))
    try:
        decisions = service.decide_many(NAME, [f for f, _ in examples])
        for decision, (_, right) in zip(decisions, examples, strict=True):
            outcome = {"should_have_acted": right}
            assert service.record_outcome(NAME, decision.decision_id, outcome, raise_errors=True)
    finally:
        service.close()  # drains the decision recorder


# --- the cycles --------------------------------------------------------------------------
def test_bootstrap_from_the_simulator(daemon: Daemon) -> None:
    result = daemon.daemon.maybe_train(NAME)
    assert (result.action, result.version, result.baseline) == ("promoted", "v0001", "fallback")
    assert result.candidate_quality is not None and result.baseline_quality is not None
    assert result.candidate_quality > result.baseline_quality + 0.02  # beats the hard rule
    assert result.reason.startswith("held-out quality") and "fallback" in result.reason

    registry = daemon.registry
    assert registry.tags(NAME) == {"candidate": "v0001", "stable": "v0001"}
    manifest = registry.manifest(NAME, "v0001")
    assert manifest.training is not None
    assert (manifest.training.source, manifest.training.rows) == ("synthetic", 15_000)
    assert manifest.training.holdout_rows == 5_000
    assert manifest.framework == "scikit-learn" and manifest.feature_names == [
        "signal",
        "threshold",
    ]
    assert [m.actor for m in registry.history(NAME)] == ["daemon", "daemon"]

    check = daemon.audit.verify()
    assert check.ok, check.reason
    [trained] = daemon.events("model.trained")
    assert trained.subject == f"{NAME}/v0001" and trained.data["source"] == "synthetic"
    [promoted] = daemon.events("model.promoted")
    assert promoted.data["baseline"] == "fallback" and promoted.actor == "daemon"
    assert daemon.cycles("promoted") == 1
    quality = daemon.daemon.metrics.registry.get_sample_value(
        "aiassist_model_quality", {"module": NAME, "which": "candidate"}
    )
    assert quality == pytest.approx(result.candidate_quality)

    again = daemon.daemon.maybe_train(NAME)  # a model exists and nothing new happened
    assert again.action == "skipped"
    assert again.reason == f"0 new outcomes, waiting for {MIN_OUTCOMES}"
    assert registry.versions(NAME) == ["v0001"]


def test_retrains_from_recorded_outcomes_and_promotes(
    daemon: Daemon, live_server: LiveServer, tokens: Tokens
) -> None:
    """Outcomes recorded over HTTP show the world's real threshold is higher than the
    simulator's: the retrained model is better on held-out data, promoted, and served."""
    assert daemon.daemon.maybe_train(NAME).action == "promoted"  # v0001 from the simulator
    state = live_server.state
    wait_for(lambda: state.decider.served_version(NAME) == "v0001")  # the service follows
    client = httpx.Client(base_url=live_server.url, headers=tokens.header("decide"), timeout=30)
    before = client.post(f"/v1/{NAME}/decide", json={"features": PROBE}).json()
    assert (before["source"], before["model_version"], before["act"]) == ("model", "v0001", True)

    record_over_http(live_server, tokens.both, world(400, seed=7, shift=1.0))
    result = daemon.daemon.maybe_train(NAME)
    assert (result.action, result.version, result.baseline) == ("promoted", "v0002", "v0001")
    assert result.candidate_quality is not None and result.baseline_quality is not None
    assert result.candidate_quality > result.baseline_quality
    assert result.reason.endswith("on 100 examples")
    assert daemon.registry.resolve(NAME, "stable") == "v0002"
    manifest = daemon.registry.manifest(NAME, "v0002")
    assert manifest.training is not None
    assert (manifest.training.source, manifest.training.rows) == ("outcomes", 300)
    assert manifest.training.holdout_rows == 100
    assert manifest.training.window_start is not None
    assert manifest.training.window_start <= manifest.training.window_end  # type: ignore[operator]

    wait_for(lambda: state.decider.served_version(NAME) == "v0002")  # hot-swapped by its watcher
    after = client.post(f"/v1/{NAME}/decide", json={"features": PROBE}).json()
    assert (after["source"], after["model_version"], after["act"]) == ("model", "v0002", False)
    assert after["score"] < 0.5 < before["score"]
    client.close()

    def swapped() -> list[str]:  # audited by the service just after the swap
        return [e.data["version"] for e in daemon.events("model.swapped")]

    wait_for(lambda: swapped() == ["v0001", "v0002"], what="the swap's audit event")
    assert [e.subject for e in daemon.events("model.promoted")] == [
        f"{NAME}/v0001",
        f"{NAME}/v0002",
    ]
    check = daemon.audit.verify()
    assert check.ok, check.reason

    record_over_http(live_server, tokens.both, world(5, seed=8, shift=1.0))
    skipped = daemon.daemon.maybe_train(NAME)  # only the outcomes since the last cycle count
    assert (skipped.action, skipped.reason) == (
        "skipped",
        f"5 new outcomes, waiting for {MIN_OUTCOMES}",
    )


def test_a_worse_candidate_is_rejected(daemon: Daemon) -> None:
    """The older outcomes were reported inverted; the newest (held out) are right: the
    candidate learned the inversion and loses to the stable version on held-out data."""
    assert daemon.daemon.maybe_train(NAME).action == "promoted"
    record_in_process(daemon.settings, world(400, seed=11, inverted=300))
    result = daemon.daemon.maybe_train(NAME)
    assert (result.action, result.version, result.baseline) == ("rejected", "v0002", "v0001")
    assert result.candidate_quality is not None and result.baseline_quality is not None
    assert result.candidate_quality < result.baseline_quality - 0.1
    assert result.reason.startswith("held-out quality")
    assert "is below v0001's" in result.reason and result.reason.endswith("on 100 examples")

    registry = daemon.registry
    assert registry.resolve(NAME, "stable") == "v0001"
    assert registry.resolve(NAME, "candidate") == "v0002"
    assert (registry.version_dir(NAME, "v0002") / MODEL_FILE).exists()  # kept, to inspect
    verdict = registry.verdict(NAME, "v0002")
    assert verdict is not None
    assert (verdict["verdict"], verdict["reason"]) == ("rejected", result.reason)
    assert verdict["baseline"] == "v0001"
    assert verdict["candidate_quality"] == pytest.approx(result.candidate_quality)

    [rejected] = daemon.events("model.rejected")
    assert rejected.subject == f"{NAME}/v0002" and rejected.data["reason"] == result.reason
    assert [e.subject for e in daemon.events("model.promoted")] == [f"{NAME}/v0001"]
    check = daemon.audit.verify()
    assert check.ok, check.reason
    assert daemon.cycles("rejected") == 1

    again = daemon.daemon.maybe_train(NAME)  # the same outcomes are not trained on twice
    assert (again.action, again.reason) == (
        "skipped",
        f"0 new outcomes, waiting for {MIN_OUTCOMES}",
    )


def test_too_few_outcomes_are_skipped(daemon: Daemon) -> None:
    assert daemon.daemon.maybe_train(NAME).action == "promoted"
    record_in_process(daemon.settings, world(40, seed=3))
    result = daemon.daemon.maybe_train(NAME)
    assert (result.action, result.reason) == (
        "skipped",
        f"40 new outcomes, waiting for {MIN_OUTCOMES}",
    )
    # The schedule makes it train on whatever is new, but 40 examples are too few.
    later = daemon.daemon.maybe_train(NAME, now=time.time() + 2 * 86_400)
    assert (later.action, later.reason) == ("skipped", "40 examples, need 100")
    assert daemon.registry.versions(NAME) == ["v0001"]
    assert daemon.registry.tags(NAME) == {"candidate": "v0001", "stable": "v0001"}
    assert len(daemon.events("model.trained")) == 1  # the bootstrap only
    assert daemon.cycles("skipped") == 2  # waiting for outcomes, then too few examples


# --- the command line --------------------------------------------------------------------
def test_cli_train_and_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIASSIST_DATA_DIR", str(tmp_path))
    for name in ("AIASSIST_DATABASE_URL", "AIASSIST_MODELS_DIR", "AIASSIST_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    runner = CliRunner()

    trained = runner.invoke(app, ["train", NAME, "--synthetic", "--rows", "2000"])
    assert trained.exit_code == 0, trained.output
    assert "promoted reference v0001: held-out quality" in trained.stdout

    # A second version on the volume: a copy of the first, as another team might publish.
    registry = ModelRegistry(tmp_path / "models")
    first = registry.manifest(NAME, "v0001")
    registry.publish(
        NAME,
        registry.version_dir(NAME, "v0001") / MODEL_FILE,
        feature_names=first.feature_names,
        input_name=first.input_name,
        output_name=first.output_name,
        n_outputs=first.n_outputs,
        framework=first.framework,
    )
    registry.reject(NAME, "v0002", "held-out quality 0.70 is below v0001's 0.80", {})

    listed = runner.invoke(app, ["models", "list"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    cells = [
        [cell.strip() for cell in line.strip()[1:-1].split("│")]
        for line in listed.stdout.splitlines()
        if "│ v000" in line
    ]
    rows = {row[1]: row for row in cells}
    assert set(rows) == {"v0001", "v0002"}, listed.stdout
    assert rows["v0001"][:5] == [
        NAME,
        "v0001",
        "candidate, stable",
        "scikit-learn",
        "1600 synthetic",
    ]
    assert rows["v0002"][:5] == [NAME, "v0002", "", "scikit-learn", ""]
    assert rows["v0001"][6] == ""
    assert rows["v0002"][6] == "rejected: held-out quality 0.70 is below v0001's 0.80"

    shown = runner.invoke(app, ["models", "show", NAME])
    assert shown.exit_code == 0 and '"version": "v0001"' in shown.stdout

    # An operator overrides the verdict.
    promoted = runner.invoke(app, ["models", "promote", NAME, "v0002", "--reason", "copy"])
    assert promoted.exit_code == 0, promoted.output
    assert "reference: stable -> v0002 (was v0001)" in promoted.stdout
    back = runner.invoke(app, ["models", "rollback", NAME])
    assert back.exit_code == 0, back.output
    assert "reference: stable -> v0001 (was v0002)" in back.stdout
    assert registry.resolve(NAME, "stable") == "v0001"

    refused = runner.invoke(app, ["models", "rollback", NAME])
    assert refused.exit_code == 1 and "no earlier 'stable' version" in refused.output
    missing = runner.invoke(app, ["models", "promote", NAME, "v0042"])
    assert missing.exit_code == 1 and "has no version 'v0042'" in missing.output
    unknown = runner.invoke(app, ["models", "promote", "nosuch", "v0001"])
    assert unknown.exit_code == 2 and "unknown module 'nosuch'" in unknown.output
    assert registry.resolve(NAME, "stable") == "v0001"

    db = make_engine(f"sqlite:///{tmp_path / 'aiassist.db'}")
    try:
        audit = AuditLog(make_sessionmaker(db))
        check = audit.verify()
        with make_sessionmaker(db)() as session:
            kinds = [e.kind for e in session.scalars(select(AuditEvent).order_by(AuditEvent.id))]
    finally:
        db.dispose()
    assert check.ok, check.reason
    assert kinds == ["model.trained", "model.promoted", "model.tag_moved", "model.rolled_back"]


def test_a_stop_ends_a_pass_between_modules(daemon: Daemon) -> None:
    """A stop asked for ends the pass before the next module instead of training it."""
    stop = threading.Event()
    stop.set()
    assert daemon.daemon.run_once(stop=stop) == []
    assert daemon.registry.versions(NAME) == []


def test_the_daemon_stops_at_once_in_the_middle_of_a_training(tmp_path: Path) -> None:
    """SIGTERM does not wait for a bootstrap that takes minutes, and leaves no version half
    written: the training is redone on the next start."""
    env = os.environ | {
        "AIASSIST_DATA_DIR": str(tmp_path),
        "AIASSIST_DAEMON_METRICS_PORT": "0",
        "AIASSIST_BOOTSTRAP_ROWS": "5000000",
    }
    env.pop("AIASSIST_DATABASE_URL", None)
    child = subprocess.Popen(
        [sys.executable, "-m", "aiassist", "daemon"], env=env, stderr=subprocess.PIPE, text=True
    )
    assert child.stderr is not None
    started = threading.Event()

    def watch(lines: IO[str]) -> None:
        for line in lines:  # the pass starts right after this line
            if "model daemon watching" in line:
                started.set()

    threading.Thread(target=watch, args=(child.stderr,), daemon=True).start()
    try:
        assert started.wait(60), "the daemon did not start"
    finally:
        child.terminate()
    assert child.wait(10) == 0
    assert all(ModelRegistry(tmp_path / "models").versions(m) == [] for m in ("bot", NAME))


def test_up_kills_a_daemon_that_outlives_its_grace() -> None:
    """A daemon deep in a training that ignores SIGTERM still ends with `aiassist up`."""
    child = subprocess.Popen(
        [sys.executable, "-c", _IGNORES_SIGTERM], stdout=subprocess.PIPE, text=False
    )
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    _stop_child(child, grace=0.5)
    assert child.returncode == -signal.SIGKILL


_IGNORES_SIGTERM = (
    "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); signal.pause()"
)
