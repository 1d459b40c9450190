"""The bot model learns from what a site confirms: sessions scored by the guard, confirmed
human or bot, retrain it on the real PostgreSQL; the daemon promotes the candidate only if
it catches more bots at 1% false positives on people than the stable model."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from aiassist import AIAssistService
from aiassist.modules.bot import module
from aiassist.modules.bot.guard import BotGuard
from aiassist.modules.bot.simulator import GeneratedSession, generate, snapshots
from aiassist.modules.bot.training import recall_at_fpr
from aiassist.registry.store import ModelRegistry
from aiassist.settings import Settings
from aiassist.store.audit import AuditLog
from aiassist.store.db import make_engine, make_sessionmaker
from aiassist.store.models import DecisionRecord, OutcomeRecord
from aiassist.training.daemon import ModelDaemon

from .conftest import daemon_settings, wait_for

NAME = module.name
SESSIONS = 160  # of each kind per phase: 320 outcomes, over conftest's retrain_min_outcomes
TRAINED = 240  # of them trained on, the newest quarter held out (holdout_fraction 0.25)


def replayers(n: int, seed: int) -> list[GeneratedSession]:
    """A bot the generator has no family for: it replays recorded visits with their pages
    and pauses, but keeps no cookie jar and sends no referer."""
    return [
        GeneratedSession("replayer", [replace(h, referer=False, cookie=False) for h in s.hits])
        for s in generate(n, seed, families=("human",))
    ]


def site(n: int, seed: int) -> list[GeneratedSession]:
    """A site's traffic: people and replayers, half each, interleaved."""
    people, bots = generate(n, seed, families=("human",)), replayers(n, seed + 1)
    return [s for pair in zip(people, bots, strict=True) for s in pair]


def browse_and_confirm(sessions: list[GeneratedSession], *, lies: int = 0) -> int:
    """Every request through a guard as the middleware sends it, then each session
    confirmed; the first `lies` the wrong way round (a bug in the reporting code, fixed
    later). Returns how many confirmations were stored."""
    guard, stored = BotGuard(), 0
    for i, session in enumerate(sessions):
        key = f"session-{i}"
        for hit in session.hits:
            guard.answered_sync(guard.score_sync(key, replace(hit, status=0)), hit.status)
        stored += guard.confirm_sync(key, is_bot=session.is_bot != (i < lies))
    assert not guard.confirm_sync("a session never seen", is_bot=True)
    return stored


def confirmed_by_the_site(settings: Settings, sessions: list[GeneratedSession], lies: int) -> None:
    """The site running with the service in local mode, serving the volume's stable model."""
    service = AIAssistService.setup(settings)
    try:
        stable = ModelRegistry(settings.resolved_models_dir).resolve(NAME, "stable")
        wait_for(lambda: service.decider.served_version(NAME) == stable, what=f"{stable} served")
        assert browse_and_confirm(sessions, lies=lies) == len(sessions)
    finally:
        AIAssistService.reset()  # drains the decision recorder


@pytest.fixture
def settings(pg_url: str, tmp_path: Path) -> Settings:
    return daemon_settings(pg_url, tmp_path)


@pytest.fixture
def daemon(settings: Settings) -> Iterator[ModelDaemon]:
    db = make_engine(settings.resolved_database_url)
    registry = ModelRegistry(settings.resolved_models_dir)
    yield ModelDaemon(settings, registry, db, AuditLog(make_sessionmaker(db)), {NAME: module})
    db.dispose()


def recall(daemon: ModelDaemon, version: str, sessions: list[GeneratedSession]) -> float:
    from aiassist.registry.serving import load_checked

    predictor = load_checked(daemon.registry, module, version, latency_budget_us=1e12)
    features = [next(snapshots(s)) for s in sessions]
    scores = np.asarray(predictor.predict([module.encode(f) for f in features]))[:, -1]
    return recall_at_fpr(np.asarray([s.is_bot for s in sessions]), scores)


def test_confirmed_sessions_retrain_the_model_only_when_it_does_better(
    daemon: ModelDaemon, settings: Settings
) -> None:
    bootstrap = daemon.train(NAME, synthetic=True, rows=2000, reason="bootstrap")
    assert (bootstrap.action, bootstrap.version) == ("promoted", "v0001")

    confirmed_by_the_site(settings, site(SESSIONS, seed=21), lies=0)
    with make_sessionmaker(daemon.db)() as db:  # one decision stored per confirmed session,
        stored = db.scalar(select(func.count()).select_from(DecisionRecord))  # not per request
        outcomes = db.scalar(select(func.count()).select_from(OutcomeRecord))
    assert stored == outcomes == 2 * SESSIONS
    result = daemon.maybe_train(NAME)
    assert (result.action, result.version, result.baseline) == ("promoted", "v0002", "v0001")
    assert result.candidate_quality is not None and result.baseline_quality is not None
    assert result.candidate_quality > result.baseline_quality + 0.3, result.reason
    manifest = daemon.registry.manifest(NAME, "v0002")
    assert manifest.training is not None and manifest.training.source == "outcomes"
    unseen = site(150, seed=41)  # replayers the simulator's model lets through
    before, after = recall(daemon, "v0001", unseen), recall(daemon, "v0002", unseen)
    assert after > 0.9 and after > before + 0.3, (before, after)

    confirmed_by_the_site(settings, site(SESSIONS, seed=31), lies=TRAINED)
    misled = daemon.maybe_train(NAME)
    assert (misled.action, misled.version, misled.baseline) == ("rejected", "v0003", "v0002")
    assert "no better than v0002" in misled.reason or "below v0002" in misled.reason
    assert daemon.registry.resolve(NAME, "stable") == "v0002"
