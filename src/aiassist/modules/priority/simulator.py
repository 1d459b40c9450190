"""A seeded discrete-event simulation of a worker pool, to compare ways of ordering tasks.

The world it generates (`generate`) is a logistics platform's background work, the seed's
example, with these parts (every number is a constant below, none depends on a policy):

- **Task types** (`TASK_TYPES`): seven kinds with a share of the traffic, a mean estimated
  duration, an SLA (report exports have none), a base business weight, whether bad weather
  slows them, and the static level 0/3/6/9 a legacy system hard-codes per type (Celery's
  four priority steps; 9 runs first). Report exports are 12% of the tasks but about 38% of
  the work (90 s each); notifications are 20% of the tasks and 2% of the work.
- **Per task**: the estimated duration is the type's mean times a mean-one log-normal
  (sigma 0.5: parcel size, route length); the true duration is the estimate times another
  mean-one log-normal (sigma 0.35, the estimate's error) and, for weather-sensitive types,
  the weather factor when the task starts. The deadline is the arrival plus the type's SLA
  times U(0.5, 1.5). The business weight is the type's base times a mean-one log-normal
  (sigma 0.6: customer tier, order value), so importance varies within a type, which a
  per-type level cannot see.
- **Arrivals**: a two-state Markov-modulated Poisson process. Calm periods (mean 600 s) and
  bursts (mean 120 s) alternate with exponential lengths; the rate in a burst is
  `burstiness` times the calm rate, and both are set so that the mean offered load (true
  work per second over workers) is `load`. At load 0.9 and burstiness 4 a burst offers 2.4x
  what the pool can do, so queues build in bursts and drain between them.
- **Anomaly**: bad-weather windows (mean 900 s, severity U(1.3, 2.2)) alternate with clear
  periods so that a share `anomaly_share` of the time is bad weather. The severity is the
  `anomaly` feature of weather-sensitive tasks enqueued then (a platform knows the weather);
  it slows them by the severity at their start.

A second shape, `flood`, is the test of starvation: for `hours`, delivery assignments alone
arrive faster than the pool can run them (`favoured_load` above 1), while report exports,
the low class, trickle in (`low_load`); then nothing more arrives and the pool drains.
Arrivals are Poisson, durations, deadlines and weights drawn as above, no weather. An
ordering that always prefers deliveries and never ages (static levels, EDF: reports have
no deadline) starts no report until the flood is over.

A third shape, `cluster`, is a batch cluster's: days of traffic, four classes whose
importance is constant within each (the static scheme's levels know them exactly), service
times from a second to a day (log-normal, median 2 min, clipped), estimates off by a
log-normal factor, and load that alternates between busy stretches above the pool's
capacity and quieter ones, each lasting hours, so that waits run to hours.

Classes, defined by the truth, not by any policy's label: **high** = business weight
>= `HIGH_WEIGHT` (about 10% of tasks, half of them of the level-9 type, the rest spread over
level-6 types), **low** = business weight < `LOW_WEIGHT` (about 24%, mostly report exports
and notifications: the class a scheduler is tempted to starve).

A policy is a queue: a task is pushed when it arrives, and a free worker pops the next one.
The baselines order by a key computed once, at enqueue (ties: first come), which is what a
broker priority or a heap gives. The module's policy is the `TaskQueue` the asyncio
dispatcher runs on, with the same scoring: priority order (`order_key`, which keeps aging
exact with keys fixed at enqueue) plus the rescue of tasks whose latest start is near,
with its gap.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from aiassist.modules.priority import PriorityDecision, PriorityFeatures, Scoring, TaskQueue
from aiassist.modules.priority import module as priority_module

__all__ = [
    "CLUSTER_CLASSES",
    "EDF",
    "FIFO",
    "HIGH_WEIGHT",
    "LOW_WEIGHT",
    "TASK_TYPES",
    "Deadlines",
    "GeneratorSpec",
    "Key",
    "KeyPolicy",
    "LeastSlack",
    "ModulePolicy",
    "Policy",
    "RunResult",
    "SimQueue",
    "SimTask",
    "StaticLevels",
    "TaskType",
    "Traffic",
    "cluster",
    "features_at",
    "flood",
    "generate",
    "simulate",
    "summarize",
    "traffic_from_tasks",
    "training_examples",
]

#: Business weight from which a task is truly high priority / below which it is low.
HIGH_WEIGHT = 3.0
LOW_WEIGHT = 0.5

_CALM_S, _BURST_S = 600.0, 120.0  # mean lengths of the arrival process's two states
_STORM_S = 900.0  # mean length of a bad-weather window
_SEVERITY = (1.3, 2.2)  # a window's slowdown factor, uniform
_SIGMA_SIZE, _SIGMA_ERROR, _SIGMA_WEIGHT = 0.5, 0.35, 0.6
_SLA_SPREAD = (0.5, 1.5)


@dataclass(frozen=True)
class TaskType:
    name: str
    share: float
    est_mean_s: float
    sla_s: float | None
    weight: float
    weather_sensitive: bool
    level: int  # the legacy static level, 0/3/6/9 (9 first)


TASK_TYPES: tuple[TaskType, ...] = (
    TaskType("dispatch_express", 0.12, 20.0, 120.0, 3.0, True, 9),
    TaskType("delivery_assign", 0.28, 30.0, 600.0, 1.5, True, 6),
    TaskType("route_replan", 0.10, 15.0, 300.0, 2.0, True, 6),
    TaskType("payment_settle", 0.10, 10.0, 900.0, 2.0, False, 6),
    TaskType("customer_notify", 0.20, 3.0, 60.0, 0.6, False, 3),
    TaskType("refund_review", 0.08, 45.0, 1800.0, 1.0, False, 3),
    TaskType("report_export", 0.12, 90.0, None, 0.3, False, 0),
)


class GeneratorSpec(BaseModel):
    """What `generate` draws: bounded so that one run stays small."""

    model_config = ConfigDict(extra="forbid")

    tasks: int = Field(1000, ge=10, le=50_000, description="Tasks to generate.")
    workers: int = Field(8, ge=1, le=256, description="Workers in the pool.")
    load: float = Field(
        0.9, ge=0.05, le=1.5, description="Mean offered load: work arriving / pool capacity."
    )
    burstiness: float = Field(
        4.0, ge=1, le=10, description="Arrival rate in a burst / in a calm period."
    )
    anomaly_share: float = Field(
        0.2, ge=0, le=1, description="Share of the time under bad weather."
    )
    seed: int = Field(0, ge=0, le=2**32 - 1)


@dataclass
class Traffic:
    """The tasks of one run, in arrival order, and the weather they meet."""

    workers: int
    arrival: np.ndarray
    task_type: list[str]
    est: np.ndarray
    true_base: np.ndarray  # true duration before the weather
    deadline: np.ndarray  # absolute; NaN: no deadline
    weight: np.ndarray
    level: np.ndarray
    sensitive: np.ndarray  # slowed by the weather
    base_anomaly: np.ndarray  # an anomaly factor of the task itself (1 in generated traffic)
    storms: list[tuple[float, float, float]] = field(default_factory=list)  # start, end, factor
    _storm_starts: list[float] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._storm_starts = [s for s, _, _ in self.storms]

    def __len__(self) -> int:
        return len(self.arrival)

    def weather(self, t: float) -> float:
        i = bisect.bisect_right(self._storm_starts, t) - 1
        if i >= 0 and t < self.storms[i][1]:
            return self.storms[i][2]
        return 1.0

    def anomaly(self, i: int, t: float) -> float:
        """The slowdown factor task `i` meets at time `t`."""
        factor = float(self.base_anomaly[i])
        return factor * self.weather(t) if self.sensitive[i] else factor

    @property
    def high(self) -> np.ndarray:
        return np.asarray(self.weight >= HIGH_WEIGHT)

    @property
    def low(self) -> np.ndarray:
        return np.asarray(self.weight < LOW_WEIGHT)


def _lognormal_mean_one(rng: np.random.Generator, sigma: float, n: int) -> np.ndarray:
    return rng.lognormal(-sigma * sigma / 2, sigma, n)


def generate(spec: GeneratorSpec) -> Traffic:
    """Draw one run's traffic (see the module docstring); the same spec gives the same run."""
    rng = np.random.default_rng(spec.seed)
    n = spec.tasks
    shares = np.array([t.share for t in TASK_TYPES])
    kinds = rng.choice(len(TASK_TYPES), size=n, p=shares / shares.sum())
    types = [TASK_TYPES[k] for k in kinds]
    est = np.array([t.est_mean_s for t in types]) * _lognormal_mean_one(rng, _SIGMA_SIZE, n)
    true_base = est * _lognormal_mean_one(rng, _SIGMA_ERROR, n)
    weight = np.array([t.weight for t in types]) * _lognormal_mean_one(rng, _SIGMA_WEIGHT, n)
    sla = np.array([math.nan if t.sla_s is None else t.sla_s for t in types])
    sla = sla * rng.uniform(*_SLA_SPREAD, n)
    sensitive = np.array([t.weather_sensitive for t in types])

    # Mean true work per task, counting the weather's mean slowdown on sensitive types.
    mean_severity = (1.0 - spec.anomaly_share) + spec.anomaly_share * sum(_SEVERITY) / 2
    work = sum(t.share * t.est_mean_s * (mean_severity if t.weather_sensitive else 1.0)
               for t in TASK_TYPES) / shares.sum()  # fmt: skip
    mean_rate = spec.load * spec.workers / work
    burst_share = _BURST_S / (_CALM_S + _BURST_S)
    calm_rate = mean_rate / (1.0 - burst_share + spec.burstiness * burst_share)
    arrival = np.empty(n)
    t, i, bursting = 0.0, 0, bool(rng.random() < burst_share)
    while i < n:  # the MMPP: exponential gaps at the current state's rate until it ends
        end = t + rng.exponential(_BURST_S if bursting else _CALM_S)
        rate = calm_rate * (spec.burstiness if bursting else 1.0)
        while i < n:
            t += rng.exponential(1.0 / rate)
            if t >= end:
                t = end  # memoryless: restart the gap at the state change
                break
            arrival[i] = t
            i += 1
        bursting = not bursting

    storms: list[tuple[float, float, float]] = []
    horizon = float(arrival[-1]) * 3 + 3600.0  # far beyond the last finish
    if spec.anomaly_share > 0:
        clear_s = _STORM_S * (1.0 - spec.anomaly_share) / spec.anomaly_share
        s = rng.exponential(clear_s) if clear_s > 0 else 0.0
        while s < horizon:
            length = rng.exponential(_STORM_S) if clear_s > 0 else horizon
            storms.append((s, s + length, float(rng.uniform(*_SEVERITY))))
            s += length + (rng.exponential(clear_s) if clear_s > 0 else 0.0)
    return Traffic(
        workers=spec.workers,
        arrival=arrival,
        task_type=[t.name for t in types],
        est=est,
        true_base=true_base,
        deadline=arrival + sla,
        weight=weight,
        level=np.array([t.level for t in types]),
        sensitive=sensitive,
        base_anomaly=np.ones(n),
        storms=storms,
    )


def flood(
    seed: int,
    *,
    workers: int = 16,
    hours: float = 8.0,
    favoured_load: float = 1.05,
    low_load: float = 0.1,
) -> Traffic:
    """Draw a flood (see the module docstring): deliveries at `favoured_load` and reports at
    `low_load` of the pool's capacity for `hours`."""
    rng = np.random.default_rng(seed)
    span = hours * 3600.0
    kinds = {t.name: t for t in TASK_TYPES}
    drawn: list[dict[str, np.ndarray]] = []
    for kind, load in (
        (kinds["delivery_assign"], favoured_load),
        (kinds["report_export"], low_load),
    ):
        n = int(rng.poisson(load * workers / kind.est_mean_s * span))
        est = kind.est_mean_s * _lognormal_mean_one(rng, _SIGMA_SIZE, n)
        arrival = rng.uniform(0.0, span, n)
        true_base = est * _lognormal_mean_one(rng, _SIGMA_ERROR, n)
        sla = math.nan if kind.sla_s is None else kind.sla_s
        deadline = arrival + sla * rng.uniform(*_SLA_SPREAD, n)
        weight = kind.weight * _lognormal_mean_one(rng, _SIGMA_WEIGHT, n)
        kind_index = np.full(n, TASK_TYPES.index(kind))
        drawn.append(dict(arrival=arrival, est=est, true_base=true_base, deadline=deadline,
                          weight=weight, kind=kind_index))  # fmt: skip
    order = np.argsort(np.concatenate([d["arrival"] for d in drawn]), kind="stable")
    c = {key: np.concatenate([d[key] for d in drawn])[order] for key in drawn[0]}
    types = [TASK_TYPES[k] for k in c["kind"]]
    return Traffic(
        workers=workers,
        arrival=c["arrival"],
        task_type=[t.name for t in types],
        est=c["est"],
        true_base=c["true_base"],
        deadline=c["deadline"],
        weight=c["weight"],
        level=np.array([t.level for t in types]),
        sensitive=np.zeros(len(order), dtype=bool),
        base_anomaly=np.ones(len(order)),
    )


#: `cluster`'s classes: business weight, static level, share, SLA in hours (None: none).
CLUSTER_CLASSES = ((5.0, 9, 0.1, 2.0), (2.0, 6, 0.3, 6.0), (1.0, 3, 0.4, 24.0), (0.3, 0, 0.2, None))
_CLUSTER_MEDIAN_S, _CLUSTER_SIGMA, _CLUSTER_SPAN_S = 120.0, 2.0, (1.0, 86_400.0)
_CLUSTER_STRETCH_S = 6 * 3600.0  # mean length of a busy or a quiet stretch
_CLUSTER_SWING = 0.15  # busy stretches offer load x (1 + swing), quiet ones x (1 - swing)


def _clipped_lognormal_mean(median: float, sigma: float, low: float, high: float) -> float:
    """E[min(max(X, low), high)] for X log-normal with that median and sigma."""
    mu = math.log(median)

    def cdf(x: float) -> float:
        return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))

    a, b = (math.log(low) - mu) / sigma, (math.log(high) - mu) / sigma
    inside = math.exp(mu + sigma * sigma / 2) * (cdf(b - sigma) - cdf(a - sigma))
    return inside + low * cdf(a) + high * (1.0 - cdf(b))


def cluster(
    seed: int,
    *,
    workers: int = 16,
    days: float = 3.0,
    load: float = 0.9,
    estimate_sigma: float = 1.0,
) -> Traffic:
    """Draw a batch cluster's traffic (see the module docstring) at mean offered `load`."""
    rng = np.random.default_rng(seed)
    low, high = _CLUSTER_SPAN_S
    work = _clipped_lognormal_mean(_CLUSTER_MEDIAN_S, _CLUSTER_SIGMA, low, high)
    rate, span = load * workers / work, days * 86_400.0
    arrivals: list[float] = []
    t, busy = 0.0, bool(rng.random() < 0.5)
    while t < span:  # Poisson within a stretch, at the stretch's rate
        end = min(t + rng.exponential(_CLUSTER_STRETCH_S), span)
        stretch_rate = rate * (1.0 + (_CLUSTER_SWING if busy else -_CLUSTER_SWING))
        while (t := t + rng.exponential(1.0 / stretch_rate)) < end:
            arrivals.append(t)
        t, busy = end, not busy
    n = len(arrivals)
    kind = rng.choice(len(CLUSTER_CLASSES), n, p=[c[2] for c in CLUSTER_CLASSES])
    true = np.clip(rng.lognormal(math.log(_CLUSTER_MEDIAN_S), _CLUSTER_SIGMA, n), low, high)
    est = np.clip(true * rng.lognormal(0.0, estimate_sigma, n), low, high)
    sla_h = np.array([math.nan if c[3] is None else c[3] for c in CLUSTER_CLASSES])[kind]
    arrival = np.asarray(arrivals)
    return Traffic(
        workers=workers,
        arrival=arrival,
        task_type=[f"level{CLUSTER_CLASSES[k][1]}" for k in kind],
        est=est,
        true_base=true,
        deadline=arrival + sla_h * 3600.0 * rng.uniform(*_SLA_SPREAD, n),
        weight=np.array([c[0] for c in CLUSTER_CLASSES])[kind],
        level=np.array([c[1] for c in CLUSTER_CLASSES])[kind],
        sensitive=np.zeros(n, dtype=bool),
        base_anomaly=np.ones(n),
    )


class SimTask(BaseModel):
    """One task given by hand: what it is and when it arrives. The queue's own features
    (queue length, workers, load, age) are the simulation's, at the task's enqueue time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    arrival_s: float = Field(ge=0, le=7 * 86_400, description="Arrival, seconds from the start.")
    task_type: str = Field("default", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    deadline_in_s: float | None = Field(
        None, ge=0, le=365 * 86_400, description="Deadline, seconds after arrival; none: none."
    )
    est_duration_s: float = Field(1.0, ge=0, le=86_400, description="Estimated duration.")
    true_duration_s: float | None = Field(
        None, ge=0, le=86_400, description="Actual duration; default: estimate x anomaly."
    )
    business_weight: float = Field(1.0, ge=0, le=100)
    anomaly: float = Field(1.0, ge=0.1, le=10, description="External slowdown factor.")
    static_level: int | None = Field(
        None,
        ge=0,
        le=9,
        description="The level a static scheme gives it (9 first); default: the level of "
        "the simulator's task type of that name, else 3.",
    )


_LEVELS = {t.name: t.level for t in TASK_TYPES}


def traffic_from_tasks(tasks: Sequence[SimTask], workers: int) -> tuple[Traffic, list[int]]:
    """Traffic of hand-written tasks, in arrival order, and each one's index in `tasks`."""
    order = sorted(range(len(tasks)), key=lambda i: tasks[i].arrival_s)
    ts = [tasks[i] for i in order]
    arrival = np.array([t.arrival_s for t in ts], dtype=float)
    est = np.array([t.est_duration_s for t in ts], dtype=float)
    anomaly = np.array([t.anomaly for t in ts], dtype=float)
    true = np.array(
        [t.est_duration_s * t.anomaly if t.true_duration_s is None else t.true_duration_s
         for t in ts], dtype=float,
    )  # fmt: skip
    relative = np.array([math.nan if t.deadline_in_s is None else t.deadline_in_s for t in ts])
    levels = [
        t.static_level if t.static_level is not None else _LEVELS.get(t.task_type, 3) for t in ts
    ]
    traffic = Traffic(
        workers=workers,
        arrival=arrival,
        task_type=[t.task_type for t in ts],
        est=est,
        true_base=true / anomaly,  # the run applies the task's anomaly at its start
        deadline=arrival + relative,
        weight=np.array([t.business_weight for t in ts], dtype=float),
        level=np.array(levels),
        sensitive=np.zeros(len(ts), dtype=bool),
        base_anomaly=anomaly,
    )
    return traffic, order


# --- policies ----------------------------------------------------------------------------
Key = tuple[float, float]
TrafficT = TypeVar("TrafficT")
FeaturesT = TypeVar("FeaturesT")
TrafficT_contra = TypeVar("TrafficT_contra", contravariant=True)
FeaturesT_contra = TypeVar("FeaturesT_contra", contravariant=True)


class SimQueue(Protocol[FeaturesT_contra]):
    """Queued task indices, in a policy's order."""

    def __len__(self) -> int: ...

    def push(self, i: int, now: float, f: FeaturesT_contra | None) -> None: ...

    def pop(self, now: float) -> int: ...


class Policy(Protocol[TrafficT_contra, FeaturesT_contra]):
    """A way of ordering tasks: a fresh queue per run."""

    name: str
    uses_features: bool

    def queue(self, traffic: TrafficT_contra) -> SimQueue[FeaturesT_contra]: ...


class Deadlines(Protocol):
    """What `EDF` reads of a run's traffic."""

    deadline: np.ndarray  # absolute; NaN: no deadline


class _KeyQueue(Generic[TrafficT, FeaturesT]):
    def __init__(self, policy: KeyPolicy[TrafficT, FeaturesT], traffic: TrafficT) -> None:
        self._policy, self._traffic = policy, traffic
        self._heap: list[tuple[Key, int]] = []

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, i: int, now: float, f: FeaturesT | None) -> None:
        heapq.heappush(self._heap, (self._policy.key(self._traffic, i, now, f), i))

    def pop(self, now: float) -> int:
        return heapq.heappop(self._heap)[1]


class KeyPolicy(Generic[TrafficT, FeaturesT]):
    """A key per task, computed when it is enqueued: the smallest runs first."""

    name, uses_features = "key", False

    def key(self, traffic: TrafficT, i: int, now: float, f: FeaturesT | None) -> Key:
        raise NotImplementedError

    def queue(self, traffic: TrafficT) -> SimQueue[FeaturesT]:
        return _KeyQueue(self, traffic)


class FIFO(KeyPolicy[object, object]):
    name = "fifo"

    def key(self, traffic: object, i: int, now: float, f: object) -> Key:
        return (now, 0.0)


class StaticLevels(KeyPolicy[Traffic, PriorityFeatures]):
    """The legacy scheme: a fixed level per task type (9 first), first come within a level."""

    name = "static"

    def key(self, traffic: Traffic, i: int, now: float, f: PriorityFeatures | None) -> Key:
        return (-float(traffic.level[i]), now)


class EDF(KeyPolicy[Deadlines, object]):
    """Earliest deadline first; tasks without a deadline after all others."""

    name = "edf"

    def key(self, traffic: Deadlines, i: int, now: float, f: object) -> Key:
        d = float(traffic.deadline[i])
        return (math.inf if math.isnan(d) else d, now)


class LeastSlack(KeyPolicy[Traffic, PriorityFeatures]):
    """Least slack first: deadline minus estimated duration (the latest start time)."""

    name = "least_slack"

    def key(self, traffic: Traffic, i: int, now: float, f: PriorityFeatures | None) -> Key:
        d = float(traffic.deadline[i])
        return (math.inf if math.isnan(d) else d - float(traffic.est[i]), now)


class _ModuleQueue:
    def __init__(self, policy: ModulePolicy) -> None:
        self._policy = policy
        scoring = policy.scoring
        self._queue: TaskQueue[int] = TaskQueue(
            rescue_s=scoring.rescue_s,
            bound_s=scoring.max_boost_s,
            gap_s=scoring.rescue_gap_s,
            wait_scale=scoring.wait_scale,
        )

    def __len__(self) -> int:
        return len(self._queue)

    def push(self, i: int, now: float, f: PriorityFeatures | None) -> None:
        assert f is not None
        decision: PriorityDecision = self._policy._decide(f)
        self._policy.decisions[i] = decision
        self._queue.push_decision(i, now, decision, f.deadline_in_s)

    def pop(self, now: float) -> int:
        i = self._queue.pop(now)
        self._policy.rescued = self._queue.rescued
        return i


class ModulePolicy:
    """The `priority` module as the dispatcher runs it: `decide` scores each task (the rule
    fallback by default, or an engine's), a `TaskQueue` with `scoring`'s rescue, gap and bound
    (default: the module's) orders them."""

    uses_features = True

    def __init__(
        self,
        decide: Callable[[PriorityFeatures], Any] | None = None,
        name: str = "module",
        scoring: Scoring | None = None,
    ) -> None:
        self.name = name
        self._decide = decide or priority_module.fallback
        self.scoring = scoring or priority_module.scoring
        self.decisions: dict[int, PriorityDecision] = {}
        self.rescued = 0  # tasks the last run took out of priority order

    def queue(self, traffic: Traffic) -> SimQueue[PriorityFeatures]:
        self.decisions, self.rescued = {}, 0
        return _ModuleQueue(self)


def features_at(traffic: Traffic, i: int, now: float, waiting: int, busy: int) -> PriorityFeatures:
    """What the backend knows about task `i` when it enqueues it at `now`."""
    d = float(traffic.deadline[i])
    return PriorityFeatures(
        task_type=traffic.task_type[i],
        deadline_in_s=None if math.isnan(d) else min(max(d - now, -2_500_000.0), 31_000_000.0),
        est_duration_s=min(float(traffic.est[i]), 86_400.0),
        business_weight=min(float(traffic.weight[i]), 100.0),
        queue_length=min(waiting, 10_000_000),
        workers=traffic.workers,
        handler_load=busy / traffic.workers,
        anomaly=min(max(traffic.anomaly(i, now), 0.1), 10.0),
    )


# --- running -----------------------------------------------------------------------------
@dataclass
class RunResult:
    policy: str
    start: np.ndarray
    finish: np.ndarray
    worker: np.ndarray
    features: list[PriorityFeatures] = field(default_factory=list)  # when recorded

    def wait(self, traffic: Traffic) -> np.ndarray:
        return np.asarray(self.start - traffic.arrival)

    def missed(self, traffic: Traffic) -> np.ndarray:
        """True where a deadline was missed; tasks without one never miss."""
        has = ~np.isnan(traffic.deadline)
        return np.asarray(has & (self.finish > np.where(has, traffic.deadline, np.inf)))


def simulate(
    traffic: Traffic, policy: Policy[Traffic, PriorityFeatures], *, record_features: bool = False
) -> RunResult:
    """Run the pool over `traffic` under `policy` until every task finished."""
    n = len(traffic)
    start, finish = np.full(n, math.nan), np.full(n, math.nan)
    worker = np.full(n, -1, dtype=np.int64)
    features: list[PriorityFeatures] = []
    waiting = policy.queue(traffic)
    running: list[tuple[float, int]] = []  # (finish time, worker)
    free = list(range(traffic.workers))
    heapq.heapify(free)
    arrival = traffic.arrival.tolist()
    need_features = record_features or policy.uses_features
    k = 0
    while k < n or running:
        next_arrival = arrival[k] if k < n else math.inf
        if running and running[0][0] <= next_arrival:
            now, w = heapq.heappop(running)
            heapq.heappush(free, w)
        else:
            now, i = next_arrival, k
            k += 1
            f = features_at(traffic, i, now, len(waiting), len(running)) if need_features else None
            if record_features:
                assert f is not None
                features.append(f)
            waiting.push(i, now, f)
        while free and waiting:
            i = waiting.pop(now)
            w = heapq.heappop(free)
            duration = float(traffic.true_base[i]) * traffic.anomaly(i, now)
            start[i], finish[i], worker[i] = now, now + duration, w
            heapq.heappush(running, (now + duration, w))
    return RunResult(policy.name, start, finish, worker, features)


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if len(x) else 0.0


def _p95(x: np.ndarray) -> float:
    return float(np.percentile(x, 95)) if len(x) else 0.0


def summarize(traffic: Traffic, result: RunResult) -> dict[str, float]:
    """The figures the issue asks for, for one run."""
    wait = result.wait(traffic)
    missed = result.missed(traffic)
    has_deadline = ~np.isnan(traffic.deadline)
    high, low = traffic.high, traffic.low
    span = float(np.max(result.finish) - np.min(traffic.arrival)) if len(traffic) else 0.0
    deadline_weight = float(np.sum(traffic.weight[has_deadline]))
    return {
        "tasks": float(len(traffic)),
        "high_tasks": float(np.sum(high)),
        "high_mean_wait_s": _mean(wait[high]),
        "high_p95_wait_s": _p95(wait[high]),
        "level9_mean_wait_s": _mean(wait[traffic.level == 9]),
        "mean_wait_s": _mean(wait),
        "p95_wait_s": _p95(wait),
        "deadline_miss_pct": 100.0 * float(np.sum(missed)) / max(int(np.sum(has_deadline)), 1),
        "weighted_miss_pct": 100.0
        * float(np.sum(traffic.weight[missed]))
        / max(deadline_weight, 1e-9),
        "high_miss_pct": 100.0
        * float(np.sum(missed & high))
        / max(int(np.sum(has_deadline & high)), 1),
        "low_max_wait_s": float(np.max(wait[low])) if np.any(low) else 0.0,
        "max_wait_s": float(np.max(wait)) if len(wait) else 0.0,
        "throughput_per_min": 60.0 * len(traffic) / span if span > 0 else 0.0,
    }


# --- training data -----------------------------------------------------------------------
def training_examples(
    traffic: Traffic, policy: Policy[Traffic, PriorityFeatures] | None = None
) -> tuple[list[PriorityFeatures], list[float]]:
    """Features at enqueue time and whether the deadline was then missed, for every task
    with a deadline. Under FIFO (the default) the label is the risk a task runs when nothing
    puts it ahead: what a priority should act on."""
    result = simulate(traffic, policy or FIFO(), record_features=True)
    missed = result.missed(traffic)
    rows = [i for i in range(len(traffic)) if not math.isnan(traffic.deadline[i])]
    return [result.features[i] for i in rows], [float(missed[i]) for i in rows]
