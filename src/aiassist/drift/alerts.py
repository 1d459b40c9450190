"""Drift alerts: a signed webhook POST, retried off the request path.

The body is JSON, signed as `aiassist.signing` describes, so the receiver can check both who
sent it and that it is not a replay (`verify_signature`). Delivery is retried with
exponential backoff on transport errors, 429 and 5xx; a 4xx other than 429 is final.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from typing import Any

import httpx

from aiassist.metrics import Metrics
from aiassist.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

__all__ = ["WebhookAlerter"]

log = logging.getLogger("aiassist.drift")
_STOP = object()


class WebhookAlerter:
    """Posts alerts to one URL from its own thread; `send` never blocks or raises."""

    def __init__(
        self,
        url: str,
        *,
        secret: str | None = None,
        metrics: Metrics | None = None,
        attempts: int = 4,
        backoff_s: float = 0.5,
        timeout_s: float = 5.0,
    ) -> None:
        self.url = url
        self._secret = secret
        self._metrics = metrics
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._timeout_s = timeout_s
        self._queue: queue.Queue[Any] = queue.Queue(1000)
        self._thread = threading.Thread(target=self._run, name="aiassist-drift-alerts", daemon=True)
        self._thread.start()

    def send(self, event: str, payload: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait((event, payload))
        except queue.Full:
            log.error("drift alert dropped (alert queue full): %s", event)
            self._count("dropped")

    def flush(self, timeout: float = 30.0) -> None:
        """Block until every alert queued so far has been delivered or given up on."""
        done = threading.Event()
        self._queue.put(done, timeout=timeout)
        done.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP, timeout=timeout)
            self._thread.join(timeout)

    def _run(self) -> None:
        with httpx.Client(timeout=self._timeout_s) as client:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                if isinstance(item, threading.Event):
                    item.set()
                    continue
                event, payload = item
                self._deliver(client, event, payload)

    def _deliver(self, client: httpx.Client, event: str, payload: dict[str, Any]) -> None:
        body = json.dumps({"event": event} | payload, default=str, sort_keys=True).encode()
        for attempt in range(1, self._attempts + 1):
            timestamp = f"{time.time():.0f}"
            headers = {
                "content-type": "application/json",
                "x-aiassist-event": event,
                TIMESTAMP_HEADER: timestamp,
            }
            if self._secret:
                headers[SIGNATURE_HEADER] = sign(self._secret, timestamp, body)
            try:
                response = client.post(self.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                reason = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 300:
                    self._count("sent")
                    return
                reason = f"HTTP {response.status_code}"
                if response.status_code < 500 and response.status_code != 429:
                    break
            if attempt < self._attempts:
                time.sleep(self._backoff_s * 2 ** (attempt - 1))
        log.error("drift alert %s not delivered to the webhook: %s", event, reason)
        self._count("failed")

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.drift_alerts.labels(outcome).inc()
