"""The Celery app of the smart-retry end-to-end test (`celery -A tests.retry_celery_app`).

`call` fails `fail_times` times with the given HTTP status, then succeeds; each attempt
appends a JSON line to a Redis list so the test sees every attempt the worker made.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from celery import Celery

from aiassist.integrations.celery.retry import SmartRetryTask
from aiassist.modules.retry.errors import RetryableError
from aiassist.modules.retry.policy import Backoff
from tests.celery_workers import worker_app

REDIS_URL = os.environ.get("AIASSIST_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def make_app(broker_url: str, queue: str) -> Celery:
    app = worker_app("aiassist_retry_test", broker_url, queue)

    @app.task(
        name="aiassist_retry_test.call",
        bind=True,
        shared=False,
        base=SmartRetryTask,
        autoretry_for=(RetryableError,),
        max_retries=4,
        retry_downstream="celery-flaky",
        retry_options={"backoff": Backoff(0.01, 0.05), "waits": ()},
    )
    def call(self: Any, log_key: str, fail_times: int, status: int) -> None:
        client = redis.Redis.from_url(REDIS_URL)
        try:
            client.rpush(log_key, json.dumps({"retries": self.request.retries, "t": time.time()}))
        finally:
            client.close()
        if self.request.retries < fail_times:
            raise RetryableError(status_code=status)

    return app


if "AIASSIST_TEST_BROKER_URL" in os.environ:  # in a worker
    app = make_app(os.environ["AIASSIST_TEST_BROKER_URL"], os.environ["AIASSIST_TEST_QUEUE"])
