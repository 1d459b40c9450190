"""What an alerting window brings with it: the recent changes that may have caused it, the
metric series that went anomalous about then, and the signed webhook it is sent to.

Incidents often follow a change. The audit trail already records the changes aiassist
makes or sees (a model swapped or rolled back, an API version rolled back or forward by
the drift guard), so an alert names those of the last `changes_lookback_s` as possible
causes, newest first. The metric series the same service scored as anomalous in that time
(`RecentMetrics`) come with them, the one that changed first leading. Delivery is the drift
guard's `WebhookAlerter`: signed, retried off the scoring path, never blocking it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from aiassist.drift.alerts import WebhookAlerter
from aiassist.modules.anomaly.series import SeriesAnomaly
from aiassist.modules.anomaly.settings import AnomalySettings

if TYPE_CHECKING:
    from aiassist.store.audit import AuditLog

__all__ = [
    "CHANGE_KINDS",
    "Change",
    "Changes",
    "RecentMetrics",
    "WindowAlerts",
    "audit_changes",
]

#: Kinds of audit events that name a change: models swapped, promoted or rolled back; API
#: versions drifting, rolled back or forward.
CHANGE_KINDS = ("model.", "drift.")

Changes = Callable[[], list["Change"]]


class Change(BaseModel):
    at: datetime
    kind: str = Field(max_length=64, description="e.g. model.swapped, drift.rolled_back.")
    subject: str = Field(max_length=200, description="What changed (module/version, route).")
    actor: str = Field(max_length=100)


def audit_changes(audit: AuditLog, lookback_s: float) -> Changes:
    """The changes of the last `lookback_s` seconds in the audit trail, newest first."""

    def recent() -> list[Change]:
        since = datetime.now(UTC) - timedelta(seconds=lookback_s)
        return [
            Change(at=e.at, kind=e.kind, subject=e.subject, actor=e.actor)
            for e in audit.recent(since, CHANGE_KINDS, limit=10)
        ]

    return recent


class RecentMetrics:
    """The metric anomalies of the last `lookback_s` seconds, bounded, shared by threads."""

    def __init__(self, lookback_s: float, keep: int = 500) -> None:
        self.lookback_s = lookback_s
        self._found: deque[tuple[float, SeriesAnomaly]] = deque(maxlen=keep)
        self._lock = threading.Lock()

    def record(self, anomalies: list[SeriesAnomaly]) -> None:
        now = time.time()
        with self._lock:
            self._found.extend((now, a) for a in anomalies)

    def __call__(self) -> list[SeriesAnomaly]:
        """One entry a series (its latest), the one that changed first leading."""
        since = time.time() - self.lookback_s
        with self._lock:
            latest = {a.series: a for at, a in self._found if at >= since}
        return sorted(latest.values(), key=lambda a: (a.first, -a.score))[:20]


class WindowAlerts:
    """Sends each alerting window (a `detector.ScoredWindow`, which names its log) to the
    configured webhook; one serves every log of a process."""

    def __init__(self, sender: WebhookAlerter) -> None:
        self.sender = sender

    @classmethod
    def configured(cls, settings: AnomalySettings) -> WindowAlerts | None:
        """Alerts to `AIASSIST_ANOMALY_WEBHOOK_URL`, or None when it is not set."""
        if settings.webhook_url is None:
            return None
        secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
        return cls(WebhookAlerter(settings.webhook_url, secret=secret))

    def __call__(self, window: BaseModel) -> None:
        self.sender.send("anomaly.window", window.model_dump())

    def close(self) -> None:
        self.sender.close()
