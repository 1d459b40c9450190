"""Recent health of one downstream, as seen from this process: the signals a retry
decision reads.

Every attempt is counted when it starts (in flight) and when it ends (its latency and error
class). `stats()` sums the last `window_s` seconds, kept in one-second buckets so that a
call costs a few microseconds and memory stays fixed however busy the downstream is.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiassist.modules.retry.errors import ErrorInfo

__all__ = ["DownstreamStats", "DownstreamTracker"]

Clock = Callable[[], float]

# Counters per bucket, by position.
_CALLS, _ERRORS, _TIMEOUTS, _CONNECTS, _R429, _R503, _R5XX, _LATENCY = range(8)
_BASELINE_ALPHA = 0.01  # weight of one success in the long-run latency (about 100 calls)


@dataclass(frozen=True, slots=True)
class DownstreamStats:
    """The downstream's recent error mix, latency and load."""

    calls: int  # attempts that ended in the window
    error_rate: float
    timeout_rate: float
    connect_rate: float
    rate_429: float
    rate_503: float
    rate_5xx: float
    latency_ms: float  # mean latency of the attempts that ended in the window (0: none)
    baseline_latency_ms: float  # long-run mean latency of successful attempts (0: none yet)
    in_flight: int
    failure_streak: int  # attempts failed in a row, across all callers in this process
    since_success_s: float | None  # seconds since the last success (None: none seen)


class DownstreamTracker:
    """Per-downstream counters over a sliding window. Thread-safe."""

    def __init__(self, window_s: float = 10.0, *, clock: Clock = time.monotonic) -> None:
        if not 1.0 <= window_s <= 3600.0:
            raise ValueError("window_s must be within [1, 3600]")
        self.window_s = window_s
        self._clock = clock
        self._slots = math.ceil(window_s)
        self._buckets = [[0.0] * 8 for _ in range(self._slots)]
        self._second = math.floor(clock())
        self._in_flight = 0
        self._streak = 0
        self._last_success: float | None = None
        self._baseline_ms = 0.0
        self._lock = threading.Lock()

    def begin(self) -> float:
        """An attempt starts; returns its start time for `end`."""
        with self._lock:
            self._in_flight += 1
        return self._clock()

    def end(self, started: float, error: ErrorInfo | None) -> float:
        """The attempt that began at `started` ended (error None: it succeeded); returns
        its latency in seconds."""
        now = self._clock()
        latency = max(now - started, 0.0)
        with self._lock:
            self._in_flight = max(self._in_flight - 1, 0)
            self._advance(now)
            bucket = self._buckets[self._second % self._slots]
            bucket[_CALLS] += 1
            bucket[_LATENCY] += latency
            if error is None:
                self._streak = 0
                self._last_success = now
                ms = latency * 1000.0
                self._baseline_ms = (
                    ms if self._baseline_ms == 0.0 else self._baseline_ms + _BASELINE_ALPHA *
                    (ms - self._baseline_ms)
                )  # fmt: skip
                return latency
            self._streak += 1
            bucket[_ERRORS] += 1
            status = error.status_code or 0
            bucket[_TIMEOUTS] += error.error_class == "timeout"
            bucket[_CONNECTS] += error.error_class == "connect"
            bucket[_R429] += status == 429
            bucket[_R503] += status == 503
            bucket[_R5XX] += status >= 500
        return latency

    def abandon(self) -> None:
        """An attempt that began ended without telling anything (cancelled)."""
        with self._lock:
            self._in_flight = max(self._in_flight - 1, 0)

    def stats(self) -> DownstreamStats:
        now = self._clock()
        with self._lock:
            self._advance(now)
            total = [sum(b[i] for b in self._buckets) for i in range(8)]
            calls = total[_CALLS]
            share = (lambda i: total[i] / calls) if calls else (lambda i: 0.0)
            return DownstreamStats(
                calls=int(calls),
                error_rate=share(_ERRORS),
                timeout_rate=share(_TIMEOUTS),
                connect_rate=share(_CONNECTS),
                rate_429=share(_R429),
                rate_503=share(_R503),
                rate_5xx=share(_R5XX),
                latency_ms=1000.0 * total[_LATENCY] / calls if calls else 0.0,
                baseline_latency_ms=self._baseline_ms,
                in_flight=self._in_flight,
                failure_streak=self._streak,
                since_success_s=None
                if self._last_success is None
                else max(now - self._last_success, 0.0),
            )

    def _advance(self, now: float) -> None:
        second = math.floor(now)
        if second <= self._second:
            return
        for s in range(self._second + 1, min(second, self._second + self._slots) + 1):
            self._buckets[s % self._slots] = [0.0] * 8
        self._second = second
