"""The Celery app of the end-to-end priority tests.

Workers load it with `celery -A tests.celery_app worker`; the broker URL and the queue come
from the environment so that every test run uses its own queue. The tests build their
producer side with `make_app` and the same arguments.

Each task appends a JSON line {name, t, level, source} to a Redis list when it starts, so the
test sees the order in which the single worker process started them.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from celery import Celery

from aiassist.integrations.celery.priority import PrioritizedTask, configure_priority, task_headers
from tests.celery_workers import worker_app

REDIS_URL = os.environ.get("AIASSIST_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class FlakyError(RuntimeError):
    """Raised on purpose by `flaky`."""


def _log(self: Any, log_key: str, name: str) -> None:
    headers = task_headers(self.request)
    entry = {
        "name": name,
        "t": time.time(),
        "level": headers.get("aiassist_level"),
        "source": headers.get("aiassist_source"),
        "decision_id": headers.get("aiassist_decision_id"),
        "retries": self.request.retries,
    }
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.rpush(log_key, json.dumps(entry))
    finally:
        client.close()


def make_app(broker_url: str, queue: str) -> Celery:
    app = worker_app("aiassist_test", broker_url, queue)
    configure_priority(app)

    @app.task(name="aiassist_test.blocker", bind=True, shared=False)
    def blocker(self: Any, log_key: str, release_key: str) -> None:
        """Keeps the only worker process busy until the test has queued its batch."""
        _log(self, log_key, "blocker")
        client = redis.Redis.from_url(REDIS_URL)
        try:
            deadline = time.monotonic() + 30
            while not client.exists(release_key) and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            client.close()

    @app.task(name="aiassist_test.work", bind=True, shared=False)
    def work(self: Any, log_key: str, name: str) -> None:
        _log(self, log_key, name)
        time.sleep(0.02)

    @app.task(
        name="aiassist_test.flaky",
        bind=True,
        shared=False,
        base=PrioritizedTask,
        priority_features=lambda log_key, name, mode, deadline_in_s: {
            "task_type": "flaky",
            "deadline_in_s": deadline_in_s,
        },
    )
    def flaky(self: Any, log_key: str, name: str, mode: str, deadline_in_s: float) -> None:
        """mode 'fail' raises; 'retry' retries once, then succeeds."""
        _log(self, log_key, name)
        if mode == "fail":
            raise FlakyError(name)
        if mode == "retry" and self.request.retries == 0:
            raise self.retry(countdown=0, max_retries=1)

    return app


if "AIASSIST_TEST_BROKER_URL" in os.environ:  # in a worker
    app = make_app(os.environ["AIASSIST_TEST_BROKER_URL"], os.environ["AIASSIST_TEST_QUEUE"])
