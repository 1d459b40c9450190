"""The Celery autoretry hook on a real RabbitMQ broker with a real worker process: a task
that fails transiently is retried until it succeeds, a hard error is not retried, and the
worker records each retry's outcome."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery
from sqlalchemy import create_engine, select

from aiassist.store.db import upgrade
from aiassist.store.models import OutcomeRecord
from tests.celery_workers import BROKERS, delete_queue, reachable, start_worker, stop_worker
from tests.conftest import wait_for
from tests.retry_celery_app import REDIS_URL, make_app

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Celery, Path]]:
    url = BROKERS["rabbitmq"]
    if not reachable(url) or not reachable(REDIS_URL):
        pytest.skip("RabbitMQ or Redis not reachable")
    queue = f"aiassist-retry-test-{secrets.token_hex(4)}"
    data_dir = tmp_path_factory.mktemp("celery-retry")
    upgrade(f"sqlite:///{data_dir / 'aiassist.db'}")
    app = make_app(url, queue)
    env = os.environ | {
        "AIASSIST_TEST_BROKER_URL": url,
        "AIASSIST_TEST_QUEUE": queue,
        "AIASSIST_TEST_REDIS_URL": REDIS_URL,
        "AIASSIST_DATA_DIR": str(data_dir),
        "AIASSIST_MODE": "local",
        "AIASSIST_RECORD_FLUSH_SECONDS": "0.05",
    }
    proc = start_worker("tests.retry_celery_app", queue, env, data_dir / "worker.log", pool="solo")
    try:
        yield app, data_dir
    finally:
        stop_worker(proc)
        try:
            delete_queue(app, "rabbitmq", queue)
        finally:
            app.close()


def _attempts(client: redis.Redis, key: str) -> list[dict[str, float]]:
    return [json.loads(x) for x in client.lrange(key, 0, -1)]


@pytest.mark.rabbitmq
@pytest.mark.redis
def test_autoretry_hook_on_rabbitmq(worker: tuple[Celery, Path]) -> None:
    app, data_dir = worker
    client = redis.Redis.from_url(REDIS_URL)
    transient, hard = (f"aiassist-retry-test:{secrets.token_hex(4)}" for _ in range(2))
    try:
        app.tasks["aiassist_retry_test.call"].apply_async((transient, 2, 503))
        app.tasks["aiassist_retry_test.call"].apply_async((hard, 5, 404))
        wait_for(lambda: client.llen(transient) >= 3, 60, "the transient task's three attempts")
        assert [a["retries"] for a in _attempts(client, transient)] == [0, 1, 2]
        wait_for(lambda: client.llen(hard) >= 1, 30, "the hard-failing task")
        db = create_engine(f"sqlite:///{data_dir / 'aiassist.db'}")
        try:

            def outcomes() -> list[bool]:
                with db.connect() as conn:
                    rows = conn.execute(
                        select(OutcomeRecord).where(OutcomeRecord.module == "retry")
                    )
                    return [r.outcome["succeeded"] for r in sorted(rows, key=lambda r: r.id)]

            wait_for(lambda: len(outcomes()) >= 2, 30, "the retries' outcomes")
            assert outcomes() == [False, True]
        finally:
            db.dispose()
        # The 404 was never retried (the transient task's retries ran after it was queued).
        assert len(_attempts(client, hard)) == 1
    finally:
        client.delete(transient, hard)
        client.close()
