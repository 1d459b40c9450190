"""Stores decisions off the request path: a bounded buffer flushed in batches by one thread.

A decision costs the caller one queue put. The buffer is flushed every `flush_seconds` or
when it holds `batch_size` rows, and drained on `close()`. When the database is slower than
the traffic for long enough to fill the buffer, new decisions are dropped and counted
rather than slowing the backend down.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from sqlalchemy import Engine

from aiassist.metrics import Metrics
from aiassist.modules import Decision, Features
from aiassist.store.models import DecisionRecord, utcnow

__all__ = ["DecisionRecorder"]

log = logging.getLogger("aiassist.recorder")
_STOP = object()
_COLUMNS = ("id", "module", "created_at", "source", "model_version", "features", "decision")
_STAMPED = {"decision_id", "source", "model_version"}  # columns of their own
Row = tuple[Any, ...]


class DecisionRecorder:
    def __init__(
        self,
        engine: Engine,
        metrics: Metrics,
        *,
        max_queue: int = 10_000,
        flush_seconds: float = 0.2,
        batch_size: int = 500,
    ) -> None:
        self._engine = engine
        self._metrics = metrics
        self._queue: queue.Queue[Any] = queue.Queue(max_queue)
        self._flush_seconds = flush_seconds
        self._batch_size = batch_size
        # Rows go to the driver's executemany nearly as they are (JSON already serialized
        # by pydantic-core in the caller; on SQLite only the timestamp is formatted). That
        # keeps this thread's hold on the GIL short, and so the deciding threads' tail.
        self._sqlite = engine.dialect.name == "sqlite"
        mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        columns, marks = ", ".join(_COLUMNS), ", ".join([mark] * len(_COLUMNS))
        table = DecisionRecord.__tablename__
        self._sql = f"INSERT INTO {table} ({columns}) VALUES ({marks})"  # noqa: S608 (constants)
        self._thread = threading.Thread(target=self._run, name="aiassist-recorder", daemon=True)
        self._thread.start()

    def __call__(self, module: str, features: Features, decision: Decision) -> None:
        row = (
            decision.decision_id,
            module,
            utcnow(),
            decision.source,
            decision.model_version,
            features.model_dump_json(),
            decision.model_dump_json(exclude=_STAMPED),
        )
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            self._metrics.records_dropped.inc()

    def flush(self, timeout: float = 10.0) -> None:
        """Block until everything queued so far is stored (tests, shutdown)."""
        done = threading.Event()
        self._queue.put(done, timeout=timeout)
        done.wait(timeout)

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout=30)

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            batch: list[Row] = []
            waiters: list[threading.Event] = []
            deadline = time.monotonic() + self._flush_seconds
            while True:
                if item is _STOP:
                    stop = True
                elif isinstance(item, threading.Event):
                    waiters.append(item)
                else:
                    batch.append(item)
                remaining = deadline - time.monotonic()
                if stop or waiters or len(batch) >= self._batch_size or remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            self._write(batch)
            for waiter in waiters:
                waiter.set()

    def _write(self, batch: list[Row]) -> None:
        if not batch:
            return
        if self._sqlite:  # SQLAlchemy's storage format for DateTime on SQLite
            batch = [(r[0], r[1], f"{r[2]:%Y-%m-%d %H:%M:%S.%f}", *r[3:]) for r in batch]
        try:
            with self._engine.begin() as conn:
                conn.exec_driver_sql(self._sql, batch)
        except Exception:
            # A lost batch must not kill the thread: the next batches still get stored.
            log.exception("could not store %d decisions", len(batch))
            self._metrics.records_dropped.inc(len(batch))
