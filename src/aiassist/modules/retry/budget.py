"""The retry budget: a hard cap on retries that no decision can override.

Finagle's `RetryBudget` and Envoy's retry budgets answer the same question: when every call
to a downstream fails, how many retries may a client add? Retrying each failure a few times
multiplies the load on a downstream that is already down; a budget keeps retries within a
share of the calls (`ratio`, 20% by default) over a sliding window, plus a small allowance
(`min_retries_per_s`) so that a client with little traffic can still retry at all.

    retries in the window <= ratio * first attempts in the window + min_retries_per_s * window_s

A learned policy decides *which* failures deserve a retry; the budget decides how many the
downstream can be asked to absorb. The policy asks the model only while the budget has
room, and takes a retry from the budget before it sleeps.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["BudgetState", "RetryBudget"]

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class BudgetState:
    requests: int  # first attempts counted in the window
    retries: int  # retries taken in the window
    allowed: float  # retries the window allows

    @property
    def available(self) -> float:
        return max(self.allowed - self.retries, 0.0)


class RetryBudget:
    """Retries allowed over a sliding window, counted in one-second buckets. Thread-safe.

    `clock` is monotonic seconds (a simulation passes its own virtual clock).
    """

    def __init__(
        self,
        ratio: float = 0.2,
        *,
        min_retries_per_s: float = 1.0,
        window_s: float = 10.0,
        clock: Clock = time.monotonic,
    ) -> None:
        if not 0.0 <= ratio <= 10.0:
            raise ValueError("ratio must be within [0, 10]")
        if min_retries_per_s < 0 or not math.isfinite(min_retries_per_s):
            raise ValueError("min_retries_per_s must be a finite number >= 0")
        if not 1.0 <= window_s <= 3600.0:
            raise ValueError("window_s must be within [1, 3600]")
        self.ratio = ratio
        self.min_retries_per_s = min_retries_per_s
        self.window_s = window_s
        self._clock = clock
        self._slots = math.ceil(window_s)
        self._requests = [0] * self._slots
        self._retries = [0] * self._slots
        self._second = math.floor(clock())
        self._lock = threading.Lock()

    def record_request(self) -> None:
        """Count a first attempt (a retry is counted by `try_acquire`)."""
        with self._lock:
            self._advance()
            self._requests[self._second % self._slots] += 1

    def can_retry(self) -> bool:
        """Whether a retry would be allowed now (without taking it)."""
        with self._lock:
            self._advance()
            return self._state().available >= 1.0

    def try_acquire(self) -> bool:
        """Take one retry from the budget; False (and nothing taken) when it is spent."""
        with self._lock:
            self._advance()
            if self._state().available < 1.0:
                return False
            self._retries[self._second % self._slots] += 1
            return True

    def state(self) -> BudgetState:
        with self._lock:
            self._advance()
            return self._state()

    def _state(self) -> BudgetState:
        requests, retries = sum(self._requests), sum(self._retries)
        allowed = self.ratio * requests + self.min_retries_per_s * self.window_s
        return BudgetState(requests, retries, allowed)

    def _advance(self) -> None:
        """Empty the buckets of the seconds that left the window since the last call."""
        now = math.floor(self._clock())
        if now <= self._second:
            return
        for second in range(self._second + 1, min(now, self._second + self._slots) + 1):
            self._requests[second % self._slots] = 0
            self._retries[second % self._slots] = 0
        self._second = now
