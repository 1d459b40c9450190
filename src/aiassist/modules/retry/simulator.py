"""A seeded discrete-event simulation of calls to a failing downstream, to train and compare
retry policies in virtual time (an hour of traffic takes about a second).

The world `generate` draws (every number is a constant below or a `WorldSpec` field):

- **Calls** arrive as a Poisson process at `rate_per_s`, modulated over the day (+-30%,
  peaking mid-afternoon). Each call may make several attempts within its deadline
  (`deadline_s`); each attempt times out after `timeout_s`.
- **Healthy** downstream: latency log-normal (median `latency_ms`, sigma 0.4); 0.3% of the
  attempts fail at random (half 500, half timeouts).
- **Episodes** interrupt it, `episodes_per_hour` of them, separated by exponential gaps;
  each is one of four kinds, drawn with the weights in `KINDS`:
  - *blip* (0.3-3 s): each attempt fails with probability 0.9-1, as a fast 502 or a
    timeout. Gone as fast as it came.
  - *rate limit* (10-60 s): a fixed-window quota (windows of 1, 2 or 5 s) admits 60-100%
    of the mean traffic per window (busy windows overflow, quiet ones have room); an
    attempt over it gets 429 with `Retry-After` = the time until its window ends.
    Attempts are served in arrival order, so a retry that honours Retry-After lands at the
    start of the next window, ahead of most new calls.
  - *overload* (10-60 s): the downstream serves 50-90% of the usual rate. With A attempts
    started in the last second and capacity C, an attempt succeeds with probability
    min(C / A, 1) * max(1 - 0.5 (A / C - 1), 0.1): beyond capacity, goodput falls as the
    excess grows (congestion collapse), so retries make it worse. It fails as a 503 or a
    timeout; latency stretches with the excess.
  - *outage* (30-240 s): every attempt fails fast (connection refused, or 503 from the load
    balancer without Retry-After) until it ends.

Everything random about one attempt (does it fail, how, its latency) is drawn in advance
per (call, attempt number) from the seed, so policies run on the same traffic meet the same
luck and differ only by what they decide. `DownstreamTracker` and `RetryBudget`, the
classes the library uses, keep the downstream's stats and the budgets on the virtual clock.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from aiassist.modules.retry import RetryDecision, RetryFeatures
from aiassist.modules.retry import module as retry_module
from aiassist.modules.retry.budget import RetryBudget
from aiassist.modules.retry.errors import ErrorInfo
from aiassist.modules.retry.policy import (
    Backoff,
    Downstream,
    RetryCall,
    RetryPolicy,
    retry_features,
)
from aiassist.modules.retry.tracker import DownstreamTracker

__all__ = [
    "KINDS",
    "MAX_ATTEMPTS",
    "Episode",
    "Exploration",
    "ExponentialBackoff",
    "ModulePolicy",
    "NoRetry",
    "RunResult",
    "SimPolicy",
    "TokenThrottle",
    "World",
    "WorldSpec",
    "generate",
    "rule_decider",
    "simulate",
    "summarize",
    "training_examples",
]

Kind = Literal["healthy", "blip", "rate_limit", "overload", "outage"]
#: Episode kinds and their weights.
KINDS: Final[dict[Kind, float]] = {"blip": 0.4, "rate_limit": 0.25, "overload": 0.2, "outage": 0.15}
_DURATION: Final[dict[Kind, tuple[float, float]]] = {
    "blip": (0.3, 3.0),
    "rate_limit": (10.0, 60.0),
    "overload": (10.0, 60.0),
    "outage": (30.0, 240.0),
}
_HEALTHY_FAIL = 0.003
_SIGMA_LATENCY = 0.4
_WINDOWS_S = (1.0, 2.0, 5.0)
#: The most attempts any policy makes for one call (draws are made for these many).
MAX_ATTEMPTS: Final = 8


class WorldSpec(BaseModel):
    """What `generate` draws: bounded so that one run stays small."""

    model_config = ConfigDict(extra="forbid")

    duration_s: float = Field(1800.0, ge=10, le=86_400, description="Virtual seconds of traffic.")
    rate_per_s: float = Field(10.0, gt=0, le=500, description="Mean calls per second.")
    episodes_per_hour: float = Field(40.0, ge=0, le=600, description="Failure episodes per hour.")
    latency_ms: float = Field(40.0, gt=0, le=10_000, description="Median healthy latency.")
    timeout_s: float = Field(1.0, gt=0, le=60, description="Per-attempt timeout.")
    deadline_s: float = Field(10.0, gt=0, le=600, description="Per-call deadline.")
    start_hour: float = Field(9.0, ge=0, lt=24, description="Time of day at the start.")
    seed: int = Field(0, ge=0, le=2**32 - 1)


@dataclass(frozen=True)
class Episode:
    kind: Kind
    start: float
    end: float
    severity: float  # blip: failure probability; rate limit, overload: share of usual rate
    window_s: float = 1.0  # rate limit only


@dataclass
class World:
    spec: WorldSpec
    arrival: np.ndarray
    episodes: list[Episode]
    u_fail: np.ndarray  # [call, attempt] uniform draws
    u_kind: np.ndarray
    z_latency: np.ndarray  # standard normal draws

    def __len__(self) -> int:
        return len(self.arrival)

    def __post_init__(self) -> None:
        self._starts = [e.start for e in self.episodes]

    def episode_at(self, t: float) -> Episode | None:
        k = bisect.bisect_right(self._starts, t) - 1
        if k >= 0 and t < self.episodes[k].end:
            return self.episodes[k]
        return None

    def hour(self, t: float) -> float:
        return (self.spec.start_hour + t / 3600.0) % 24.0


def generate(spec: WorldSpec) -> World:
    rng = np.random.default_rng(spec.seed)
    # Arrivals: Poisson at the peak rate, thinned by the time-of-day profile.
    peak = spec.rate_per_s * 1.3
    n_max = int(peak * spec.duration_s * 1.2) + 100
    times = np.cumsum(rng.exponential(1.0 / peak, n_max))
    times = times[times < spec.duration_s]
    hours = (spec.start_hour + times / 3600.0) % 24.0
    profile = 1.0 + 0.3 * np.sin(2 * np.pi * (hours - 9.0) / 24.0)
    arrival = times[rng.random(len(times)) < profile / 1.3]

    episodes: list[Episode] = []
    kinds = list(KINDS)
    weights = np.array([KINDS[k] for k in kinds])
    if spec.episodes_per_hour > 0:
        gap = 3600.0 / spec.episodes_per_hour
        t = float(rng.exponential(gap))
        while t < spec.duration_s:
            kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
            length = float(rng.uniform(*_DURATION[kind]))
            severity = {
                "blip": rng.uniform(0.9, 1.0),
                "rate_limit": rng.uniform(0.6, 1.0),
                "overload": rng.uniform(0.5, 0.9),
                "outage": 1.0,
            }[kind]
            window = float(rng.choice(_WINDOWS_S)) if kind == "rate_limit" else 1.0
            episodes.append(Episode(kind, t, t + length, float(severity), window))
            t += length + float(rng.exponential(gap))
    shape = (len(arrival), MAX_ATTEMPTS)
    return World(
        spec, arrival, episodes, rng.random(shape), rng.random(shape), rng.standard_normal(shape)
    )


# --- policies ----------------------------------------------------------------------------
class SimPolicy(Protocol):
    """What a retry policy does in the simulation: given a failed attempt, the wait before
    the next one, or None to give up."""

    name: str

    def start(self, now: float) -> Any: ...

    def failed(
        self, state: Any, now: float, attempt: int, error: ErrorInfo, time_left_s: float
    ) -> float | None: ...

    def finished(self, ok: bool) -> None: ...


class NoRetry:
    name = "no_retry"

    def start(self, now: float) -> None:
        return None

    def failed(
        self, state: Any, now: float, attempt: int, error: ErrorInfo, time_left_s: float
    ) -> float | None:
        return None

    def finished(self, ok: bool) -> None:
        pass


class ExponentialBackoff:
    """tenacity's `stop_after_attempt(max_attempts)` + `wait_random_exponential(multiplier,
    max)`: retry any error after U(0, min(max, multiplier * 2**n)); Retry-After is not read.
    With a `budget`, only while the budget has room (Envoy/Finagle style)."""

    def __init__(
        self,
        rng: random.Random,
        *,
        max_attempts: int = 4,
        multiplier: float = 0.1,
        max_wait_s: float = 10.0,
        budget: RetryBudget | None = None,
        name: str = "exponential_backoff",
    ) -> None:
        self.name, self.rng, self.budget = name, rng, budget
        self.max_attempts, self.backoff = max_attempts, Backoff(multiplier, max_wait_s)

    def start(self, now: float) -> None:
        if self.budget is not None:
            self.budget.record_request()

    def failed(
        self, state: Any, now: float, attempt: int, error: ErrorInfo, time_left_s: float
    ) -> float | None:
        if attempt >= self.max_attempts or error.permanent:
            return None
        wait = self.backoff.wait(attempt, self.rng)
        if wait > time_left_s:
            return None
        if self.budget is not None and not self.budget.try_acquire():
            return None
        return wait

    def finished(self, ok: bool) -> None:
        pass


class TokenThrottle(ExponentialBackoff):
    """gRPC retry throttling (gRFC A6) in front of the same backoff: a token bucket of
    `max_tokens` that loses 1 per failed attempt and gains `token_ratio` per success;
    retries are allowed only while more than half the tokens remain."""

    def __init__(
        self, rng: random.Random, *, max_tokens: float = 10.0, token_ratio: float = 0.1
    ) -> None:
        super().__init__(rng, name="grpc_token_throttle")
        self.max_tokens, self.token_ratio, self.tokens = max_tokens, token_ratio, max_tokens

    def failed(
        self, state: Any, now: float, attempt: int, error: ErrorInfo, time_left_s: float
    ) -> float | None:
        if self.tokens <= self.max_tokens / 2:
            return None
        return super().failed(state, now, attempt, error, time_left_s)

    def finished(self, ok: bool) -> None:
        if ok:
            self.tokens = min(self.tokens + self.token_ratio, self.max_tokens)
        else:
            self.tokens = max(self.tokens - 1.0, 0.0)


class ModulePolicy:
    """`RetryPolicy`, the library's own, deciding with `decide` (an engine serving the
    model, or the module's rule) behind a Finagle-style budget of its own."""

    def __init__(
        self,
        decide: Callable[[list[RetryFeatures]], list[RetryDecision]],
        tracker: DownstreamTracker,
        clock: Callable[[], float],
        hour: Callable[[], float],
        rng: random.Random,
        *,
        name: str = "learned",
        budget_ratio: float = 0.2,
        max_attempts: int = 4,
        deadline_s: float = 10.0,
    ) -> None:
        self.name = name
        self.decisions: list[RetryDecision] = []
        self._asked: dict[str, RetryFeatures] = {}
        shared = Downstream("sim", budget=RetryBudget(budget_ratio, clock=clock), tracker=tracker)

        def recorded(features: list[RetryFeatures]) -> list[RetryDecision]:
            decisions = decide(features)
            self.decisions.extend(decisions)
            self._asked = {d.decision_id: f for f, d in zip(features, decisions, strict=True)}
            return decisions

        self.policy = RetryPolicy(
            downstream="sim",
            max_attempts=max_attempts,
            deadline_s=deadline_s,
            clock=clock,
            hour_of_day=hour,
            rng=rng,
            shared=shared,
            decider=recorded,
            record_outcomes=False,
        )

    def start(self, now: float) -> dict[str, Any]:
        return {"call": self.policy.start()}

    def failed(
        self, state: Any, now: float, attempt: int, error: ErrorInfo, time_left_s: float
    ) -> float | None:
        call: RetryCall = state["call"]
        call.attempt = attempt
        step = self.policy.prepare(call, error)
        if isinstance(step, list):
            step = self.policy.conclude(call, self.policy.decide(step))
        if not step.retry or step.decision is None or step.wait_s > time_left_s:
            return None
        # The features retried on: `simulate` labels them with the retry's outcome, which
        # is what the service records as this decision's outcome.
        state["features"] = self._asked[step.decision.decision_id]
        return step.wait_s

    def finished(self, ok: bool) -> None:
        pass


class Exploration:
    """Training data: retry most failures after a random wait (log-uniform 20 ms - 10 s, or
    just past Retry-After half of the time it is given), recording the features of each
    retry; `simulate` labels each with whether that retry succeeded."""

    name = "exploration"

    def __init__(
        self,
        tracker: DownstreamTracker,
        clock: Callable[[], float],
        hour: Callable[[], float],
        rng: random.Random,
        retry_share: float = 0.8,
    ) -> None:
        self.tracker, self.clock, self.hour, self.rng = tracker, clock, hour, rng
        self.retry_share = retry_share
        self.pending: dict[int, RetryFeatures] = {}
        self.examples: list[tuple[RetryFeatures, float]] = []

    def start(self, now: float) -> dict[str, float]:
        return {"started": now}

    def failed(
        self, state: Any, now: float, attempt: int, error: ErrorInfo, time_left_s: float
    ) -> float | None:
        if attempt >= MAX_ATTEMPTS or error.permanent or self.rng.random() > self.retry_share:
            return None
        ra = error.retry_after_s
        if ra is not None and self.rng.random() < 0.5:
            wait = ra + self.rng.uniform(0.0, 0.25)
        else:
            wait = math.exp(self.rng.uniform(math.log(0.02), math.log(10.0)))
        if wait > time_left_s:
            return None
        state["features"] = retry_features(
            "sim",
            error,
            self.tracker.stats(),
            attempt=attempt,
            elapsed_s=now - state["started"],
            wait_s=wait,
            hour_of_day=self.hour(),
            threshold=0.7,
        )
        return wait

    def finished(self, ok: bool) -> None:
        pass


# --- running -----------------------------------------------------------------------------
@dataclass
class RunResult:
    policy: str
    attempts: np.ndarray  # per call
    ok: np.ndarray  # per call: succeeded within its deadline
    latency_s: np.ndarray  # per call: arrival to the end of its last attempt
    retries: int = 0
    retries_ok: int = 0
    examples: list[tuple[RetryFeatures, float]] = field(default_factory=list)


_START, _END = 0, 1


def _attempt(world: World, i: int, k: int, t: float, recent: int) -> tuple[float, ErrorInfo | None]:
    """Latency and error of attempt k of call i started at t, with `recent` attempts
    started in the last second (the load an overloaded downstream sees)."""
    spec = world.spec
    e = world.episode_at(t)
    u, v = float(world.u_fail[i, k]), float(world.u_kind[i, k])
    latency = spec.latency_ms / 1000.0 * math.exp(_SIGMA_LATENCY * float(world.z_latency[i, k]))
    timeout = spec.timeout_s
    if e is not None and e.kind == "outage":
        if v < 0.6:
            return 0.001, ErrorInfo("connect", None, "ConnectError")
        return 0.002, ErrorInfo("overloaded", 503, "HTTPStatusError")
    if e is not None and e.kind == "blip" and u < e.severity:
        if v < 0.5:
            return 0.005, ErrorInfo("server_error", 502, "HTTPStatusError")
        return timeout, ErrorInfo("timeout", None, "ReadTimeout")
    if e is not None and e.kind == "overload":
        capacity = e.severity * spec.rate_per_s
        excess = max(recent / capacity - 1.0, 0.0)
        # Beyond capacity, work is wasted on attempts that time out: goodput falls as the
        # excess grows (congestion collapse), so piling retries on makes things worse.
        p_ok = min(capacity / max(recent, 1), 1.0) * max(1.0 - 0.5 * excess, 0.1)
        p_fail = min(max(1.0 - p_ok, 0.05), 0.97)
        latency *= 1.0 + 2.0 * excess
        if u < p_fail:
            if v < 0.5:
                return 0.01, ErrorInfo("overloaded", 503, "HTTPStatusError")
            return timeout, ErrorInfo("timeout", None, "ReadTimeout")
    elif u < _HEALTHY_FAIL:
        if v < 0.5:
            return latency, ErrorInfo("server_error", 500, "HTTPStatusError")
        return timeout, ErrorInfo("timeout", None, "ReadTimeout")
    if latency >= timeout:
        return timeout, ErrorInfo("timeout", None, "ReadTimeout")
    return latency, None


def simulate(
    world: World,
    make_policy: Callable[[DownstreamTracker, Callable[[], float], Callable[[], float]], SimPolicy],
) -> RunResult:
    """Run every call of `world` under the policy `make_policy(tracker, clock, hour)` builds
    (the tracker and clocks are the simulation's)."""
    now = 0.0

    def clock() -> float:
        return now

    def hour() -> float:
        return world.hour(now)

    tracker = DownstreamTracker(clock=clock)
    policy = make_policy(tracker, clock, hour)
    spec, n = world.spec, len(world)
    attempts = np.zeros(n, dtype=np.int64)
    ok = np.zeros(n, dtype=bool)
    latency = np.zeros(n)
    state: list[Any] = [None] * n
    started_at = np.zeros(n)
    recent: deque[float] = deque()
    quota: dict[tuple[float, int], int] = {}
    events: list[tuple[float, int, int, int]] = [(float(t), i, _START, 0) for i, t in
                                                 enumerate(world.arrival)]  # fmt: skip
    heapq.heapify(events)
    pending_error: dict[int, ErrorInfo | None] = {}
    retries = retries_ok = 0
    examples: list[tuple[RetryFeatures, float]] = []
    while events:
        now, i, kind, k = heapq.heappop(events)
        arrival = float(world.arrival[i])
        if kind == _START:
            if k == 0:
                state[i] = policy.start(now)
            attempts[i] = k + 1
            while recent and recent[0] < now - 1.0:
                recent.popleft()
            recent.append(now)
            started_at[i] = tracker.begin()
            duration, error = _attempt(world, i, k, now, len(recent))
            e = world.episode_at(now)
            if error is None and e is not None and e.kind == "rate_limit":
                window = math.floor(now / e.window_s)
                used = quota.get((e.start, window), 0)
                limit = max(int(e.severity * spec.rate_per_s * e.window_s), 1)
                if used >= limit:
                    ra = math.ceil(((window + 1) * e.window_s - now) * 10.0) / 10.0
                    duration, error = 0.003, ErrorInfo("rate_limited", 429, "HTTPStatusError", ra)
                else:
                    quota[(e.start, window)] = used + 1
            pending_error[i] = error
            heapq.heappush(events, (now + duration, i, _END, k))
            continue
        error = pending_error.pop(i)
        tracker.end(started_at[i], error)
        policy.finished(error is None)
        if k > 0:
            retries += 1
            retries_ok += error is None
            features = state[i].pop("features", None) if isinstance(state[i], dict) else None
            if features is not None:
                examples.append((features, 1.0 if error is None else 0.0))
        if error is None:
            ok[i] = now <= arrival + spec.deadline_s
            latency[i] = now - arrival
            continue
        time_left = arrival + spec.deadline_s - spec.timeout_s - now
        wait = None
        if k + 1 < MAX_ATTEMPTS and time_left > 0:
            wait = policy.failed(state[i], now, k + 1, error, time_left)
        if wait is None:
            latency[i] = now - arrival
            continue
        heapq.heappush(events, (now + max(wait, 0.0), i, _START, k + 1))
    return RunResult(policy.name, attempts, ok, latency, retries, retries_ok, examples)


def _in_episodes(world: World, kind: Kind) -> np.ndarray:
    mask = np.zeros(len(world), dtype=bool)
    for e in world.episodes:
        if e.kind == kind:
            mask |= (world.arrival >= e.start) & (world.arrival < e.end)
    return mask


def summarize(world: World, result: RunResult) -> dict[str, float]:
    """Success rate, retry precision, load amplification (overall and by episode kind) and
    latency percentiles of one run."""
    out: dict[str, float] = {
        "calls": float(len(world)),
        "success_rate": float(np.mean(result.ok)) if len(world) else 0.0,
        "retries": float(result.retries),
        "retry_precision": result.retries_ok / result.retries if result.retries else 0.0,
        "amplification": float(np.sum(result.attempts) / max(len(world), 1)),
        "p50_latency_s": float(np.percentile(result.latency_s, 50)) if len(world) else 0.0,
        "p99_latency_s": float(np.percentile(result.latency_s, 99)) if len(world) else 0.0,
    }
    for kind in KINDS:
        mask = _in_episodes(world, kind)
        calls = int(np.sum(mask))
        out[f"{kind}_calls"] = float(calls)
        out[f"{kind}_success_rate"] = float(np.mean(result.ok[mask])) if calls else 0.0
        out[f"{kind}_amplification"] = (
            float(np.sum(result.attempts[mask]) / calls) if calls else 0.0
        )
    healthy = ~np.any([_in_episodes(world, k) for k in KINDS], axis=0)
    out["healthy_success_rate"] = float(np.mean(result.ok[healthy])) if np.any(healthy) else 0.0
    return out


def training_examples(
    world: World, seed: int, retry_share: float = 0.8
) -> list[tuple[RetryFeatures, float]]:
    """Features of the retries an exploring client made in `world` and whether each one
    succeeded (1.0) or failed (0.0)."""
    rng = random.Random(seed)

    def make(tracker: DownstreamTracker, clock: Callable[[], float],
             hour: Callable[[], float]) -> SimPolicy:  # fmt: skip
        return Exploration(tracker, clock, hour, rng, retry_share)

    return simulate(world, make).examples


def rule_decider(features: list[RetryFeatures]) -> list[RetryDecision]:
    """The module's rule fallback, as a `ModulePolicy` decider."""
    return [retry_module.fallback(f) for f in features]
