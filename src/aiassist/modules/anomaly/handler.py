"""A logging handler that scores the app's own log without ever slowing the app down.

`emit` only formats the record and puts it on a bounded queue (a full queue drops the record
and counts it); one background thread mines, windows and scores. An alert goes to the
`on_alert` callback, by default a warning on the `aiassist.anomaly` logger, whose records
this handler skips so that it never scores its own alerts; with AIASSIST_ANOMALY_WEBHOOK_URL
set, the default detector also sends it to that webhook.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from aiassist.modules.anomaly import module
from aiassist.modules.anomaly.alerts import WindowAlerts
from aiassist.modules.anomaly.detector import LogDetector, ScoredWindow

__all__ = ["AnomalyHandler"]

log = logging.getLogger("aiassist.anomaly")
_STOP = object()


def _warn(window: ScoredWindow) -> None:
    hints = "; ".join(f"{h.kind} {h.name!r}" for h in window.decision.hints)
    log.warning(
        "log anomaly at line %d (score %.2f): %s", window.first_line, window.decision.score, hints
    )


class AnomalyHandler(logging.Handler):
    def __init__(
        self,
        detector: LogDetector | None = None,
        *,
        queue_size: int | None = None,
        on_alert: Callable[[ScoredWindow], None] = _warn,
        level: int = logging.NOTSET,
    ) -> None:
        super().__init__(level)
        #: The webhook alerts of the detector this handler makes (and so closes), if any.
        self._alerts = None if detector else WindowAlerts.configured(module.config)
        self.detector = detector or LogDetector(on_alert=self._alerts)
        self.on_alert = on_alert
        self.dropped = 0
        self.windows = 0
        self._queue: queue.Queue[object] = queue.Queue(
            queue_size or self.detector.settings.queue_size
        )
        self._worker = threading.Thread(target=self._run, name="aiassist-anomaly", daemon=True)
        self._worker.start()
        self.addFilter(lambda record: not record.name.startswith(log.name))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._queue.put_nowait(self.format(record))
        except queue.Full:
            self.dropped += 1
            if (metrics := self.detector.metrics) is not None:
                metrics.anomaly_lines.labels(self.detector.source, "dropped").inc()

    def _run(self) -> None:
        while (line := self._queue.get()) is not _STOP:
            assert isinstance(line, str)
            try:
                scored = self.detector.feed(line)
                if scored is not None:
                    self.windows += 1
                    if scored.alert:
                        self.on_alert(scored)
            except Exception:  # the app's logging must outlive any failure of scoring
                log.exception("scoring a log line failed")
            finally:
                self._queue.task_done()
        self._queue.task_done()

    def flush(self) -> None:
        """Wait until every record queued so far is scored."""
        self._queue.join()

    def close(self) -> None:
        if self._worker.is_alive():
            self._queue.put(_STOP)
            self._worker.join(timeout=10)
        if self._alerts is not None:
            self._alerts.close()  # deliver the alerts still queued
        super().close()
