"""The retry policy: the `retry` module's decision, behind a retry budget.

For one failed attempt the policy

1. gives up at once on a permanent error (a client error), when the attempts or the call's
   deadline are used up, or when the downstream's retry budget is spent;
2. otherwise builds a few candidate waits: the next capped exponential backoff with full
   jitter (never shorter than the downstream's `Retry-After`), then longer steps
   (`waits`, each jittered) that fit in the time left;
3. asks the `retry` module about all of them in one call (`decide_many`) with the failure
   and the downstream's recent stats from its `DownstreamTracker`, and takes the shortest
   wait the answer retries at. The model retries where P(recovery) >= threshold; without a
   model (or with the service down) the rule retries any retryable error at the first
   candidate, which is plain capped exponential backoff with full jitter;
4. takes the retry from the budget (`try_acquire`): if it is spent meanwhile, no retry.

The outcome of every retry (did it succeed) is recorded against its decision through
`AIAssistService`, so the model learns from each downstream's real behaviour.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from aiassist.modules.retry import RetryDecision, RetryFeatures, RetryOutcome
from aiassist.modules.retry import module as retry_module
from aiassist.modules.retry.budget import RetryBudget
from aiassist.modules.retry.errors import ErrorInfo
from aiassist.modules.retry.tracker import DownstreamStats, DownstreamTracker
from aiassist.sdk.service import AIAssistService

__all__ = [
    "Backoff",
    "Downstream",
    "RetryCall",
    "RetryPlan",
    "RetryPolicy",
    "Verdict",
    "choose",
    "downstream",
    "retry_features",
]

log = logging.getLogger("aiassist.retry")

Clock = Callable[[], float]
Verdict = Literal["retry", "declined", "budget", "attempts", "deadline", "permanent"]

_MAX_CANDIDATES: Final = 5
_MAX_RA_JITTER_S: Final = 0.25  # spread retries that honour the same Retry-After


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with full jitter (the AWS architecture blog's variant):
    the n-th retry waits U(0, min(cap_s, base_s * 2 ** (n - 1)))."""

    base_s: float = 0.1
    cap_s: float = 10.0

    def ceiling(self, attempt: int) -> float:
        return min(self.cap_s, self.base_s * 2.0 ** min(attempt - 1, 60))

    def wait(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0.0, self.ceiling(attempt))


class Downstream:
    """What every caller of one downstream in this process shares: its tracker and budget."""

    def __init__(
        self,
        name: str,
        *,
        budget: RetryBudget | None = None,
        tracker: DownstreamTracker | None = None,
    ) -> None:
        RetryFeatures(downstream=name, error_class="other")  # a bad name is a ValueError
        self.name = name
        self.budget = budget or RetryBudget()
        self.tracker = tracker or DownstreamTracker()


_downstreams: dict[str, Downstream] = {}
_downstreams_lock = threading.Lock()


def downstream(name: str, **create: Any) -> Downstream:
    """The process-wide `Downstream` of that name, created on first use (with `budget` or
    `tracker` given here, if any). Raises ValueError for an invalid name."""
    with _downstreams_lock:
        found = _downstreams.get(name)
        if found is None:
            found = _downstreams[name] = Downstream(name, **create)
        elif create:
            raise ValueError(f"downstream {name!r} already exists; configure it before first use")
        return found


def retry_features(
    name: str,
    error: ErrorInfo,
    stats: DownstreamStats,
    *,
    attempt: int,
    elapsed_s: float,
    wait_s: float,
    hour_of_day: float,
    threshold: float,
) -> RetryFeatures:
    """The module's features for one candidate wait, clamped to the module's bounds."""
    return RetryFeatures(
        downstream=name,
        error_class=error.error_class,
        status_code=error.status_code
        if error.status_code and 100 <= error.status_code < 600
        else None,
        exception_type=_exception_name(error.exception_type),
        attempt=min(max(attempt, 1), 100),
        elapsed_s=min(max(elapsed_s, 0.0), 86_400.0),
        wait_s=min(max(wait_s, 0.0), 3600.0),
        retry_after_s=None if error.retry_after_s is None else min(error.retry_after_s, 86_400.0),
        recent_calls=min(stats.calls, 1_000_000_000),
        error_rate=stats.error_rate,
        timeout_rate=stats.timeout_rate,
        connect_rate=stats.connect_rate,
        rate_429=stats.rate_429,
        rate_503=stats.rate_503,
        rate_5xx=stats.rate_5xx,
        latency_ms=min(stats.latency_ms, 3_600_000.0),
        baseline_latency_ms=min(stats.baseline_latency_ms, 3_600_000.0),
        in_flight=min(stats.in_flight, 1_000_000),
        failure_streak=min(stats.failure_streak, 1_000_000_000),
        since_success_s=None
        if stats.since_success_s is None
        else min(stats.since_success_s, 365 * 86_400.0),
        hour_of_day=min(max(hour_of_day, 0.0), 23.999),
        threshold=threshold,
    )


def _exception_name(name: str | None) -> str | None:
    if not name:
        return None
    cleaned = "".join(c for c in name if c.isalnum() or c in "_.")[:128]
    return cleaned or None


def choose(decisions: Sequence[RetryDecision], time_left_s: float) -> RetryDecision | None:
    """The decision with the shortest wait that retries and fits in the time left."""
    fitting = [d for d in decisions if d.retry and d.wait_s <= time_left_s]
    return min(fitting, key=lambda d: d.wait_s) if fitting else None


def _local_hour() -> float:
    now = time.localtime()
    return now.tm_hour + now.tm_min / 60.0


@dataclass
class RetryPlan:
    """What to do after a failed attempt."""

    retry: bool
    verdict: Verdict
    wait_s: float = 0.0
    decision: RetryDecision | None = None  # the decision retried on, or the first declined one

    @property
    def reason(self) -> str:
        if self.decision is not None and self.verdict in ("retry", "declined"):
            return self.decision.explanation
        return {
            "budget": "the downstream's retry budget is spent",
            "attempts": "the attempts are used up",
            "deadline": "no retry fits in the call's deadline",
            "permanent": "a client error: retrying cannot fix it",
        }.get(self.verdict, self.verdict)


@dataclass
class RetryPolicy:
    """How the calls to one downstream are retried. Shared by every call to it; the state
    of one call (attempts, elapsed time) lives in a `RetryCall` from `start()`."""

    downstream: str = "default"
    max_attempts: int = 4
    deadline_s: float = 30.0
    backoff: Backoff = field(default_factory=Backoff)
    waits: tuple[float, ...] = (0.5, 2.0, 5.0)
    max_wait_s: float = 30.0
    threshold: float = 0.7
    service: AIAssistService | None = None
    clock: Clock = time.monotonic
    hour_of_day: Callable[[], float] = _local_hour
    rng: random.Random = field(default_factory=random.Random)
    #: The tracker and budget; default: the process-wide ones of `downstream`.
    shared: Downstream | None = None
    #: Decides instead of the service, e.g. an `Engine` in a simulation (no metrics then).
    decider: Callable[[list[RetryFeatures]], list[RetryDecision]] | None = None
    #: Record each retry's outcome through the service, so the model learns.
    record_outcomes: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 100:
            raise ValueError("max_attempts must be within [1, 100]")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError("threshold must be within [0, 1]")
        if self.shared is None:
            self.shared = downstream(self.downstream)

    @property
    def budget(self) -> RetryBudget:
        assert self.shared is not None
        return self.shared.budget

    @property
    def tracker(self) -> DownstreamTracker:
        assert self.shared is not None
        return self.shared.tracker

    def ai(self) -> AIAssistService:
        return self.service or AIAssistService.instance()

    def start(self) -> RetryCall:
        """A new call: counted by the budget as a request."""
        self.budget.record_request()
        return RetryCall(self, self.clock())

    # --- the plan, in parts the sync and async paths share ------------------------------
    def candidate_waits(self, error: ErrorInfo, attempt: int, time_left_s: float) -> list[float]:
        """The next backoff (at least Retry-After), then longer jittered steps that fit."""
        limit = min(self.max_wait_s, time_left_s)
        first = self.backoff.wait(attempt, self.rng)
        if error.retry_after_s is not None:
            ra = error.retry_after_s
            first = max(first, ra + self.rng.uniform(0.0, min(0.1 * ra, _MAX_RA_JITTER_S)))
        waits = [first] if first <= limit else []
        for step in self.waits:
            w = step * self.rng.uniform(0.8, 1.2)
            if first < w <= limit:
                waits.append(w)
        return sorted(waits)[:_MAX_CANDIDATES]

    def prepare(self, call: RetryCall, error: ErrorInfo) -> RetryPlan | list[RetryFeatures]:
        """The first half of a plan: a plan that needs no decision, or the features of the
        candidate waits to decide on. `conclude` is the second half."""
        if error.permanent:
            return RetryPlan(False, "permanent")
        if call.attempt >= self.max_attempts:
            return RetryPlan(False, "attempts")
        if not self.budget.can_retry():
            return RetryPlan(False, "budget")
        elapsed = self.clock() - call.started
        waits = self.candidate_waits(error, call.attempt, self.deadline_s - elapsed)
        if not waits:
            return RetryPlan(False, "deadline")
        stats, hour = self.tracker.stats(), self.hour_of_day()
        return [
            retry_features(
                self.downstream,
                error,
                stats,
                attempt=call.attempt,
                elapsed_s=elapsed,
                wait_s=w,
                hour_of_day=hour,
                threshold=self.threshold,
            )
            for w in waits
        ]

    def conclude(self, call: RetryCall, decisions: Sequence[RetryDecision]) -> RetryPlan:
        """The plan from the decisions on `prepare`'s features: the shortest wait retried
        at, if the budget still has a retry."""
        time_left = self.deadline_s - (self.clock() - call.started)
        chosen = choose(decisions, time_left)
        if chosen is None:
            return RetryPlan(False, "declined", decision=decisions[0] if decisions else None)
        if not self.budget.try_acquire():  # the guard: no decision overrides it
            return RetryPlan(False, "budget", decision=chosen)
        return RetryPlan(True, "retry", chosen.wait_s, chosen)

    def _fallback(self, features: list[RetryFeatures], exc: Exception) -> list[RetryDecision]:
        log.warning("retry decision for %s failed (%s); the rule decides", self.downstream, exc)
        decisions = [retry_module.fallback(f) for f in features]
        for d in decisions:
            d.fallback_reason = "model_error"
        return decisions

    def decide(self, features: list[RetryFeatures]) -> list[RetryDecision]:
        try:
            if self.decider is not None:
                return self.decider(features)
            return self.ai().decide_many(retry_module, features)
        except Exception as exc:  # the backend never fails because of the AI layer
            return self._fallback(features, exc)

    async def adecide(self, features: list[RetryFeatures]) -> list[RetryDecision]:
        try:
            if self.decider is not None:
                return self.decider(features)
            return await self.ai().adecide_many(retry_module, features)
        except Exception as exc:
            return self._fallback(features, exc)

    def _count(self, plan: RetryPlan) -> None:
        if self.decider is not None:
            return
        try:
            self.ai().metrics.retry_verdicts.labels(self.downstream, plan.verdict).inc()
        except Exception:  # metrics never break a call
            log.debug("retry metrics unavailable", exc_info=True)


class RetryCall:
    """One logical call and its attempts. Not shared between threads or tasks.

    Use: `begin()` before each attempt, then `succeeded()` or `failed(error)` after it;
    `failed` returns the plan (retry after `wait_s`, or give up). The async variants
    (`afailed`, `asucceeded`) decide and record without blocking the event loop.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        started: float,
        *,
        attempt: int = 0,
        pending_decision_id: str | None = None,
    ) -> None:
        self.policy = policy
        self.started = started
        self.attempt = attempt  # attempts begun; a call resumed elsewhere starts from its count
        self.retries = 0
        self._attempt_started = 0.0
        self._pending = pending_decision_id  # the decision the running attempt follows

    @property
    def elapsed_s(self) -> float:
        return self.policy.clock() - self.started

    def begin(self) -> None:
        self.attempt += 1
        self._attempt_started = self.policy.tracker.begin()

    def succeeded(self) -> None:
        latency = self.policy.tracker.end(self._attempt_started, None)
        self._report(self._outcome(latency, None))

    async def asucceeded(self) -> None:
        latency = self.policy.tracker.end(self._attempt_started, None)
        await self._areport(self._outcome(latency, None))

    def give_up(self, error: ErrorInfo) -> None:
        """The attempt failed in a way the caller does not retry (not a retryable error)."""
        latency = self.policy.tracker.end(self._attempt_started, error)
        self._report(self._outcome(latency, error))

    async def agive_up(self, error: ErrorInfo) -> None:
        latency = self.policy.tracker.end(self._attempt_started, error)
        await self._areport(self._outcome(latency, error))

    def cancel(self) -> None:
        """The attempt was cancelled: it tells nothing about the downstream."""
        self.policy.tracker.abandon()
        self._pending = None

    def failed(self, error: ErrorInfo) -> RetryPlan:
        latency = self.policy.tracker.end(self._attempt_started, error)
        self._report(self._outcome(latency, error))
        step = self.policy.prepare(self, error)
        if isinstance(step, list):
            step = self.policy.conclude(self, self.policy.decide(step))
        return self._planned(step)

    async def afailed(self, error: ErrorInfo) -> RetryPlan:
        latency = self.policy.tracker.end(self._attempt_started, error)
        await self._areport(self._outcome(latency, error))
        step = self.policy.prepare(self, error)
        if isinstance(step, list):
            step = self.policy.conclude(self, await self.policy.adecide(step))
        return self._planned(step)

    def _planned(self, plan: RetryPlan) -> RetryPlan:
        self.policy._count(plan)
        if plan.retry and plan.decision is not None:
            self.retries += 1
            self._pending = plan.decision.decision_id
        return plan

    def _outcome(
        self, latency_s: float, error: ErrorInfo | None
    ) -> tuple[str, RetryOutcome] | None:
        decision_id, self._pending = self._pending, None
        if decision_id is None:
            return None
        outcome = RetryOutcome(
            succeeded=error is None,
            latency_ms=min(latency_s * 1000.0, 3_600_000.0),
            error_class=None if error is None else error.error_class,
        )
        return decision_id, outcome

    def _report(self, pair: tuple[str, RetryOutcome] | None) -> None:
        if pair is None or not self.policy.record_outcomes:
            return
        try:
            self.policy.ai().record_outcome(retry_module, pair[0], pair[1])
        except Exception:  # an outcome lost is logged, never raised into the call
            log.warning("retry outcome for %s not recorded", self.policy.downstream, exc_info=True)

    async def _areport(self, pair: tuple[str, RetryOutcome] | None) -> None:
        if pair is None or not self.policy.record_outcomes:
            return
        try:
            await self.policy.ai().arecord_outcome(retry_module, pair[0], pair[1])
        except Exception:
            log.warning("retry outcome for %s not recorded", self.policy.downstream, exc_info=True)
