"""`SlaWindow`: the last week's SLA response times per category, from recorded outcomes.

Small and bounded whatever the traffic: per category, one bucket per hour holds the count,
the sum of response times and the breaches; the window keeps running totals and drops
buckets as they age out. A ticket's features take its category's mean response time and
breach rate from it (`TicketFeatures.recent_response_s`, `recent_breach_rate`), so the
order learns from how long this team has really been taking.

Times are seconds on one clock (epoch seconds in the service, simulated in the simulator).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

__all__ = ["CategorySla", "SlaWindow"]

_BUCKET_S = 3600.0


@dataclass(frozen=True)
class CategorySla:
    tickets: int
    mean_response_s: float
    breach_rate: float


class _Totals:
    __slots__ = ("breaches", "buckets", "count", "total_s")

    def __init__(self) -> None:
        self.buckets: deque[list[float]] = deque()  # [hour, count, total_s, breaches]
        self.count = 0
        self.total_s = 0.0
        self.breaches = 0


class SlaWindow:
    """Response times and breaches per category over the last `window_s` seconds."""

    def __init__(self, window_s: float = 7 * 86_400.0) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        self.window_s = window_s
        self._by_category: dict[str, _Totals] = {}
        self._lock = threading.Lock()

    def observe(self, category: str, response_s: float, breached: bool, at: float) -> None:
        """One ticket's first response, `response_s` after it was opened, at time `at`."""
        hour = at // _BUCKET_S
        with self._lock:
            totals = self._by_category.setdefault(category, _Totals())
            buckets = totals.buckets
            if buckets and buckets[-1][0] >= hour:
                bucket = buckets[-1]  # late arrivals join the newest bucket
            else:
                bucket = [hour, 0.0, 0.0, 0.0]
                buckets.append(bucket)
            bucket[1] += 1
            bucket[2] += response_s
            bucket[3] += breached
            totals.count += 1
            totals.total_s += response_s
            totals.breaches += breached
            self._expire(totals, at)

    def get(self, category: str, now: float) -> CategorySla | None:
        """The category's figures at `now`; None when it has none in the window."""
        with self._lock:
            totals = self._by_category.get(category)
            if totals is None:
                return None
            self._expire(totals, now)
            if totals.count == 0:
                return None
            return CategorySla(
                totals.count, totals.total_s / totals.count, totals.breaches / totals.count
            )

    def snapshot(self, now: float) -> dict[str, CategorySla]:
        with self._lock:
            names = list(self._by_category)
        found = {name: self.get(name, now) for name in names}
        return {name: sla for name, sla in found.items() if sla is not None}

    def _expire(self, totals: _Totals, now: float) -> None:
        oldest = (now - self.window_s) // _BUCKET_S
        while totals.buckets and totals.buckets[0][0] < oldest:
            _, count, total_s, breaches = totals.buckets.popleft()
            totals.count -= int(count)
            totals.total_s -= total_s
            totals.breaches -= int(breaches)
