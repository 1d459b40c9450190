"""Celery end to end, on real RabbitMQ and Redis brokers with a real worker process.

One worker per broker (`--concurrency=1`), on a queue of its own. Each test first keeps the
worker busy with a blocking task, queues a batch whose scores clearly differ, in an order
that FIFO would get wrong, then releases the blocker: the tasks must start highest score
first. The worker records outcomes in local mode into a SQLite database the test reads.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from sqlalchemy import create_engine, select

from aiassist import AIAssistService
from aiassist.integrations.celery.priority import (
    PrioritizedTask,
    broker_kind,
    broker_priority,
    configure_priority,
    enqueue,
    prioritize,
    queue_features,
)
from aiassist.modules.priority import PriorityFeatures
from aiassist.modules.priority import module as priority
from aiassist.settings import Settings
from aiassist.store.db import upgrade
from aiassist.store.models import DecisionRecord, OutcomeRecord
from tests.celery_app import REDIS_URL, make_app
from tests.celery_workers import BROKERS, delete_queue, reachable, start_worker, stop_worker
from tests.conftest import wait_for

#: Three classes of task with clearly different needs. Their levels are computed when the
#: test runs (the scoring evolves); the lowest and the highest must differ. The load is
#: given, so the broker's queue length (filled in when it is not) cannot move a level.
_LOAD: dict[str, Any] = {"queue_length": 0, "workers": 1}
CLASSES = {
    "report": PriorityFeatures(task_type="report", est_duration_s=1, **_LOAD),
    "notify": PriorityFeatures(task_type="notify", deadline_in_s=8, est_duration_s=4, **_LOAD),
    "dispatch": PriorityFeatures(
        task_type="dispatch", deadline_in_s=30, est_duration_s=20, business_weight=3, **_LOAD
    ),
}


def _classes() -> list[tuple[str, PriorityFeatures, int]]:
    """The classes as (name, features, level), lowest level first."""
    ranked = sorted(
        ((name, f, priority.fallback(f).broker_priority) for name, f in CLASSES.items()),
        key=lambda c: c[2],
    )
    assert ranked[0][2] < ranked[-1][2], f"the classes no longer differ: {ranked}"
    return ranked


@dataclass
class Worker:
    broker: str
    queue: str
    app: Celery  # the producer side, configured as the worker's app
    data_dir: Path
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.data_dir / 'aiassist.db'}"

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module", params=["rabbitmq", "redis"])
def worker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    broker = str(request.param)
    url = BROKERS[broker]
    if not reachable(url) or not reachable(REDIS_URL):
        pytest.skip(f"{broker} or Redis not reachable")
    queue = f"aiassist-test-{broker}-{secrets.token_hex(4)}"
    data_dir = tmp_path_factory.mktemp(f"celery-{broker}")
    upgrade(f"sqlite:///{data_dir / 'aiassist.db'}")  # before two processes open it
    app = make_app(url, queue)
    app.control.purge()
    log_path = data_dir / "worker.log"
    env = os.environ | {
        "AIASSIST_TEST_BROKER_URL": url,
        "AIASSIST_TEST_QUEUE": queue,
        "AIASSIST_TEST_REDIS_URL": REDIS_URL,
        "AIASSIST_DATA_DIR": str(data_dir),
        "AIASSIST_MODE": "local",
        "AIASSIST_RECORD_FLUSH_SECONDS": "0.05",
    }
    proc = start_worker("tests.celery_app", queue, env, log_path)
    # What PrioritizedTask scores with in this process (not the singleton: no stray files).
    producer = AIAssistService(Settings(data_dir=data_dir, record_flush_seconds=0.05))
    configure_priority(app, service=producer)
    try:
        yield Worker(broker, queue, app, data_dir, proc, log_path)
    finally:
        stop_worker(proc)
        producer.close()
        try:
            delete_queue(app, broker, queue)
        finally:
            app.close()


@pytest.fixture
def log() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    client.close()


def _block(worker: Worker, log: redis.Redis) -> tuple[str, str]:
    """Make the single worker process busy; return the log key and the release key."""
    token = secrets.token_hex(4)
    log_key, release_key = f"aiassist-test:log:{token}", f"aiassist-test:release:{token}"
    worker.app.control.purge()
    worker.app.tasks["aiassist_test.blocker"].apply_async((log_key, release_key))
    try:
        wait_for(lambda: log.llen(log_key) >= 1, 60, "the worker to start the blocker")
    except TimeoutError:
        pytest.fail(f"the worker did not start a task:\n{worker.log_tail()}")
    return log_key, release_key


def _started(worker: Worker, log: redis.Redis, log_key: str, count: int) -> list[dict[str, Any]]:
    try:
        wait_for(lambda: log.llen(log_key) >= count, 30, f"{count} tasks to start")
    except TimeoutError:
        pytest.fail(f"only {log.llen(log_key)} of {count} started:\n{worker.log_tail()}")
    entries = [json.loads(e) for e in log.lrange(log_key, 0, -1)]
    log.delete(log_key, log_key.replace(":log:", ":release:"))
    return entries


def _outcomes(worker: Worker, decision_ids: set[str], count: int) -> list[dict[str, Any]]:
    """The outcomes the worker recorded for these decisions, once `count` have arrived."""
    engine = create_engine(worker.db_url)
    query = select(OutcomeRecord.decision_id, OutcomeRecord.module, OutcomeRecord.outcome).where(
        OutcomeRecord.decision_id.in_(decision_ids)
    )
    rows: list[Any] = []

    def arrived() -> bool:
        nonlocal rows
        with engine.connect() as conn:
            rows = list(conn.execute(query))
        return len(rows) >= count

    try:
        wait_for(arrived, 15, f"{count} outcomes")
    except TimeoutError:
        pytest.fail(f"{len(rows)} of {count} outcomes recorded:\n{worker.log_tail()}")
    finally:
        engine.dispose()
    assert {r.module for r in rows} == {"priority"}
    return [{"decision_id": r.decision_id, **r.outcome} for r in rows]


def _run_batch(worker: Worker, log: redis.Redis, service: AIAssistService) -> list[dict[str, Any]]:
    """Block the worker, queue 3 x the classes lowest first, release; return the starts."""
    classes = _classes()
    log_key, release_key = _block(worker, log)
    work = worker.app.tasks["aiassist_test.work"]
    sent = []
    for i in range(3):  # lowest first: FIFO would start them exactly in the wrong order
        for cls, features, _ in classes:
            name = f"{cls}-{i}"
            enqueue(work, (log_key, name), features=features, service=service)
            sent.append(name)
    log.set(release_key, 1, ex=60)
    entries = _started(worker, log, log_key, 1 + len(sent))
    assert entries[0]["name"] == "blocker" and entries[0]["decision_id"] is None
    batch = entries[1:]
    assert sorted(e["name"] for e in batch) == sorted(sent)
    expected = {cls: level for cls, _, level in classes}
    assert all(e["level"] == expected[e["name"].split("-")[0]] for e in batch)
    started_levels = [e["level"] for e in batch]
    if started_levels != sorted(started_levels, reverse=True):
        # Tolerate one task reserved by the worker before the batch was complete.
        assert batch[0]["name"] == sent[0], [e["name"] for e in batch]
        assert started_levels[1:] == sorted(started_levels[1:], reverse=True), [
            e["name"] for e in batch
        ]
    return batch


@pytest.mark.redis
def test_higher_scored_tasks_start_first_and_outcomes_are_recorded(
    worker: Worker, log: redis.Redis
) -> None:
    service = AIAssistService(Settings(data_dir=worker.data_dir, record_flush_seconds=0.05))
    try:
        batch = _run_batch(worker, log, service)
    finally:
        service.close()  # flushes the decisions recorded at enqueue time
    assert {e["source"] for e in batch} == {"fallback"}  # no model on this volume
    classes = _classes()
    lowest, highest = classes[0][0], classes[-1][0]
    ids = {e["decision_id"] for e in batch}
    outcomes = _outcomes(worker, ids, len(batch))
    assert len(outcomes) == len(batch) and {o["decision_id"] for o in outcomes} == ids
    by_id = {o["decision_id"]: o for o in outcomes}
    waits: dict[str, list[float]] = {}
    for e in batch:
        o = by_id[e["decision_id"]]
        cls = e["name"].split("-")[0]
        waits.setdefault(cls, []).append(o["waited_s"])
        assert o["ran_s"] >= 0.02
        assert (o["deadline_met"] is None) == (CLASSES[cls].deadline_in_s is None)
    assert max(waits[highest]) < min(waits[lowest])
    # The producer's decisions and the worker's outcomes join on the decision id.
    engine = create_engine(worker.db_url)
    try:
        with engine.connect() as conn:
            recorded = set(
                conn.scalars(select(DecisionRecord.id).where(DecisionRecord.id.in_(ids)))
            )
    finally:
        engine.dispose()
    assert recorded == ids


@pytest.mark.redis
def test_service_down_still_orders_by_the_rule(worker: Worker, log: redis.Redis) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    service = AIAssistService(
        Settings(
            mode="remote",
            service_url=f"http://127.0.0.1:{closed}",
            data_dir=worker.data_dir,
            timeout_ms=200,
        )
    )
    try:
        batch = _run_batch(worker, log, service)
    finally:
        service.close()
    assert {e["source"] for e in batch} == {"fallback"}
    assert service.breaker_state == "open"
    assert len(_outcomes(worker, {e["decision_id"] for e in batch}, len(batch))) == len(batch)


@pytest.mark.redis
def test_prioritized_task_failure_and_retry_record_one_outcome(
    worker: Worker, log: redis.Redis
) -> None:
    log_key, release_key = _block(worker, log)
    flaky = worker.app.tasks["aiassist_test.flaky"]
    assert isinstance(flaky, PrioritizedTask)
    flaky.delay(log_key, "retry", "retry", 60.0)
    flaky.delay(log_key, "fail", "fail", 60.0)
    log.set(release_key, 1, ex=60)
    entries = _started(worker, log, log_key, 4)  # blocker, retry twice, fail
    runs: dict[str, list[dict[str, Any]]] = {}
    for e in entries[1:]:
        runs.setdefault(e["name"], []).append(e)
    assert [r["retries"] for r in runs["retry"]] == [0, 1]
    retry_id = runs["retry"][0]["decision_id"]
    assert retry_id and runs["retry"][1]["decision_id"] == retry_id  # the retry kept it
    fail_id = runs["fail"][0]["decision_id"]
    outcomes = {o["decision_id"]: o for o in _outcomes(worker, {retry_id, fail_id}, 2)}
    assert outcomes[retry_id]["deadline_met"] is True
    assert outcomes[fail_id]["deadline_met"] is False  # failed, however fast
    time.sleep(0.3)  # no late second outcome for the retried decision
    assert len(_outcomes(worker, {retry_id, fail_id}, 2)) == 2


@pytest.mark.redis
def test_queue_length_and_workers_come_from_the_broker(worker: Worker, log: redis.Redis) -> None:
    log_key, release_key = _block(worker, log)
    work = worker.app.tasks["aiassist_test.work"]
    for i in range(3):  # unscored: the blocker holds the only worker process
        work.apply_async((log_key, f"queued-{i}"))
    # RabbitMQ counts its consumers (one worker, concurrency 1); Redis cannot tell.
    expected = {"queue_length": 3} | ({"workers": 1} if worker.broker == "rabbitmq" else {})
    found: dict[str, int] = {}

    def probed() -> bool:  # the broker is asked at most once a second per queue
        nonlocal found
        found = queue_features(worker.app)
        return found == expected

    try:
        wait_for(probed, 15, "the broker to count the queued tasks")
    except TimeoutError:
        pytest.fail(f"queue_features: {found}, expected {expected}")
    finally:
        log.set(release_key, 1, ex=60)
    _started(worker, log, log_key, 4)
    configured = Celery("cfg", broker=worker.app.conf.broker_url, set_as_current=False)
    configured.conf.task_default_queue = worker.queue
    configure_priority(configured, workers=7)
    try:  # a configured pool size wins over the broker's count
        assert queue_features(configured)["workers"] == 7
        assert queue_features(configured, "aiassist-test-no-such-queue") == {
            "queue_length": 0,
            "workers": 7,
        }
    finally:
        configured.close()


# --- no broker needed --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("amqp://guest@127.0.0.1//", "amqp"),
        ("pyamqp://guest@127.0.0.1//", "amqp"),
        ("redis://127.0.0.1:6379/0", "redis"),
        ("rediss://127.0.0.1:6380/0", "redis"),
        ("memory://", "other"),
    ],
)
def test_configuration_per_broker(url: str, kind: str) -> None:
    app = Celery("cfg", broker=url, set_as_current=False)
    assert configure_priority(app) == kind == broker_kind(app)
    conf = app.conf
    assert conf.worker_prefetch_multiplier == 1 and conf.task_acks_late is True
    if kind == "amqp":
        assert conf.task_queue_max_priority == 10 and conf.task_default_priority == 0
        assert broker_priority("amqp", 9) == 9
    if kind == "redis":
        options = conf.broker_transport_options
        assert options["priority_steps"] == list(range(10))
        assert options["queue_order_strategy"] == "priority"
        assert conf.task_default_priority == 9  # unscored: served last, as on RabbitMQ
        assert broker_priority("redis", 9) == 0


def test_prioritize_never_raises_and_shadow_mode_keeps_the_priority() -> None:
    app = Celery("cfg", broker="redis://127.0.0.1:6379/0", set_as_current=False)
    configure_priority(app)
    service = AIAssistService(Settings(mode="remote", service_url="http://127.0.0.1:9"))
    try:
        assert prioritize(app, {"deadline_in_s": "soon"}, {"queue": "q"}, service=service) == {
            "queue": "q"
        }
        options = prioritize(app, CLASSES["dispatch"], {"priority": 4}, service=service)
        assert options["priority"] == 4 and options["headers"]["aiassist_decision_id"]
        level = options["headers"]["aiassist_level"]
        assert prioritize(app, CLASSES["dispatch"], service=service)["priority"] == 9 - level
    finally:
        service.close()
