"""`priority`: which task first. Three scores per task (timeliness, load, anomaly), one
combined priority, the expected wait and the risk of missing the deadline.

It replaces a fixed classification (say four levels hard-coded per task type) at the point
where a task is enqueued. How the priority is made (`Scoring`, set from the
`AIASSIST_PRIORITY_*` settings):

- **Latest start**: the deadline minus the duration at anomaly speed (`est_duration_s *
  anomaly`). A task without a deadline, or with one beyond the horizon (`horizon_s`,
  90 min), counts as due at the horizon; the sooner it is due, the larger its head start
  (`horizon_s - latest start`).
- **Weight**: business weight adds `weight_s * ln(1 + weight)` seconds of head start, at
  most `weight_cap_s`. Importance orders the queue; deadlines are kept by the rescue below,
  not by running every task with a deadline before every task without one.
- **Risk**: the probability of missing the deadline when nothing puts the task ahead (the
  rule's estimate, or the model's) adds up to `risk_s` seconds.
- **Aging**: the sum is `boost_s`, a head start over first come, first served. Ordering by
  `enqueued_at - boost_s` (`order_key`) is ordering by priority at every later moment, and
  nothing is overtaken by work that arrives more than `max_boost_s` after it. `priority` is
  `(boost_s + age_s) / max_boost_s` (at most 1), and `broker_priority` its tenth.
- **Rescue** (`TaskQueue`, used by the dispatcher and the simulator alike): a queued task
  whose latest start is less than `rescue_s` away starts before the priority order, the
  earliest deadline first, so a deadline that can still be met is not lost to a more
  important task with time to spare.
- **Waits of hours** (`TaskQueue` too): head starts grow with the longest recent wait
  (`wait_scale`), so aged work does not overtake everything that matters more; once the
  oldest task has waited `max_boost_s`, one start in four is its, so nothing starves.
- **Gap**: nor does the rescue overtake a task whose weight head start (`weight_boost_s`)
  is more than `rescue_gap_s` above the rescued task's: with the default 1500 s (one
  `weight_s`), a task whose 1 + weight is more than e (2.7) times the other's goes first. A
  deadline is kept against work of comparable importance, not against work that matters
  several times more.

The rule fallback computes P(miss) from the slack left after the expected wait; a model
(trained on the simulator in `simulator.py`, then on recorded outcomes) predicts it.
`load` and `anomaly` are reported as scores of their own; they act on the priority through
the latest start (anomaly) and the risk (both).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from pydantic import Field

from aiassist.modules.base import Decision, Features, Module, Outcome
from aiassist.modules.priority.queue import TaskQueue
from aiassist.modules.priority.settings import PrioritySettings, Scoring
from aiassist.settings import module_settings

__all__ = [
    "PriorityDecision",
    "PriorityFeatures",
    "PriorityModule",
    "PriorityOutcome",
    "PrioritySettings",
    "Scoring",
    "TaskQueue",
    "module",
    "order_key",
]

log = logging.getLogger("aiassist.priority")

_DAY = 86_400.0


class PriorityFeatures(Features):
    task_type: str = Field(
        "default",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="Kind of task.",
    )
    deadline_in_s: float | None = Field(
        None,
        ge=-30 * _DAY,
        le=365 * _DAY,
        description="Seconds until the deadline or SLA ends (negative: already late); "
        "none: no deadline.",
    )
    est_duration_s: float = Field(1.0, ge=0, le=_DAY, description="Estimated processing time.")
    business_weight: float = Field(1.0, ge=0, le=100, description="Importance to the business.")
    queue_length: int = Field(0, ge=0, le=10_000_000, description="Tasks waiting at the handler.")
    workers: int = Field(1, ge=1, le=100_000, description="Workers serving that queue.")
    handler_load: float = Field(0.0, ge=0, le=1, description="Utilisation of the handling site.")
    anomaly: float = Field(
        1.0,
        ge=0.1,
        le=10,
        description="External slowdown factor, "
        "1 = normal (e.g. 1.8 in a storm for a delivery hub).",
    )
    age_s: float = Field(0.0, ge=0, le=30 * _DAY, description="Seconds waited so far.")
    retries: int = Field(0, ge=0, le=1000, description="Attempts before this one.")


class PriorityDecision(Decision):
    timeliness: float = Field(ge=0, le=1, description="Urgency from the deadline: P(miss).")
    load: float = Field(ge=0, le=1, description="Pressure at the handling site.")
    anomaly: float = Field(ge=0, le=1, description="How abnormal conditions are.")
    priority: float = Field(ge=0, le=1, description="Combined priority: higher runs first.")
    boost_s: float = Field(
        ge=0,
        description="Head start over first come, first served, in seconds: ordering by "
        "enqueue time minus boost_s is ordering by priority as tasks age (see order_key).",
    )
    weight_boost_s: float = Field(
        0.0,  # what an older service, which does not send it, means: no gap
        ge=0,
        description="The part of boost_s that business weight gives: a rescue does not "
        "overtake a task whose weight_boost_s is much higher (see TaskQueue).",
    )
    broker_priority: int = Field(ge=0, le=9, description="The same, as a broker priority 0-9.")
    expected_wait_s: float = Field(ge=0, description="Expected wait before the task starts.")
    p_miss: float = Field(ge=0, le=1, description="Probability of missing the deadline.")
    latest_start_s: float | None = Field(
        None,
        description="Seconds from now until the task must start to meet its deadline at "
        "anomaly speed (negative: already too late); none without a deadline. A dispatcher "
        "rescues a task whose latest start is near (see TaskQueue).",
    )


class PriorityOutcome(Outcome):
    waited_s: float = Field(ge=0, le=30 * _DAY, description="Seconds from enqueue to start.")
    ran_s: float = Field(ge=0, le=30 * _DAY, description="Seconds from start to finish.")
    deadline_met: bool | None = Field(None, description="None when the task had no deadline.")


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(min(x, 50.0), -50.0)))


def expected_wait(f: PriorityFeatures) -> float:
    """Queueing estimate: the work ahead shared by the workers, slowed by load and anomaly."""
    ahead = f.queue_length * f.est_duration_s * f.anomaly / f.workers
    return ahead / max(1.0 - 0.5 * f.handler_load, 0.5)


def slack(f: PriorityFeatures) -> float | None:
    """Seconds to spare if the task waits its expected time and runs at anomaly speed."""
    if f.deadline_in_s is None:
        return None
    return f.deadline_in_s - expected_wait(f) - f.est_duration_s * f.anomaly


class PriorityModule(Module[PriorityFeatures, PriorityDecision, PriorityOutcome]):
    name = "priority"
    summary = "Which task first: timeliness, load and anomaly scores and one priority."
    Features = PriorityFeatures
    Decision = PriorityDecision
    Outcome = PriorityOutcome
    example = {
        "task_type": "delivery",
        "deadline_in_s": 1800,
        "est_duration_s": 240,
        "business_weight": 3,
        "queue_length": 40,
        "workers": 8,
        "handler_load": 0.85,
        "anomaly": 1.6,
        "age_s": 30,
        "retries": 0,
    }
    outcome_example = {"waited_s": 95.0, "ran_s": 310.0, "deadline_met": True}
    trainer = "aiassist.modules.priority.training:trainer"
    settings = PrioritySettings
    router = "aiassist.modules.priority.api:priority_router"
    cli = "aiassist.modules.priority.cli:app"

    def __init__(self, scoring: Scoring | None = None) -> None:
        self._scoring = scoring

    @property
    def scoring(self) -> Scoring:
        """The given scoring, else the process's `PrioritySettings` (read on first use)."""
        if self._scoring is None:
            self._scoring = Scoring.from_settings(module_settings(PrioritySettings, log))
        return self._scoring

    def fallback(self, f: PriorityFeatures) -> PriorityDecision:
        s = slack(f)
        # Least slack: the risk rises as the spare time shrinks relative to the task's length.
        p_miss = 0.0 if s is None else _sigmoid(-s / max(f.est_duration_s * f.anomaly, 1.0))
        return self._decide(f, p_miss, "rule: least slack")

    def encode(self, f: PriorityFeatures) -> list[float]:
        s = slack(f)
        scale = max(f.est_duration_s * f.anomaly, 1.0)
        return [
            0.0 if s is None else 1.0,
            0.0 if s is None else max(min(s / scale, 50.0), -50.0),
            math.log1p(max(f.deadline_in_s or 0.0, 0.0)),
            math.log1p(f.est_duration_s),
            math.log1p(f.business_weight),
            math.log1p(f.queue_length / f.workers),
            f.handler_load,
            f.anomaly,
            math.log1p(f.age_s),
            float(f.retries),
        ]

    def feature_names(self) -> list[str]:
        return [
            "has_deadline",
            "slack_ratio",
            "log_deadline",
            "log_duration",
            "log_weight",
            "log_queue_per_worker",
            "handler_load",
            "anomaly",
            "log_age",
            "retries",
        ]

    def decode(self, f: PriorityFeatures, output: Sequence[float]) -> PriorityDecision:
        p_miss = 0.0 if f.deadline_in_s is None else min(max(float(output[-1]), 0.0), 1.0)
        return self._decide(f, p_miss, "model: learned deadline risk")

    def _decide(self, f: PriorityFeatures, p_miss: float, how: str) -> PriorityDecision:
        sc = self.scoring
        load = min(
            1.0, 0.5 * f.handler_load + 0.5 * (1 - math.exp(-f.queue_length / (4 * f.workers)))
        )
        anomaly = min(max((f.anomaly - 1.0) / 1.5, 0.0), 1.0)
        latest_start = None
        due = sc.horizon_s
        if f.deadline_in_s is not None:
            latest_start = f.deadline_in_s - f.est_duration_s * f.anomaly
            due = min(max(latest_start, 0.0), sc.horizon_s)
        weight = min(sc.weight_s * math.log1p(f.business_weight), sc.weight_cap_s)
        boost = sc.horizon_s - due + weight + sc.risk_s * p_miss
        # The share of the largest head start the task has, counting its wait: age raises
        # it at the pace of the clock, so it orders tasks as order_key does.
        top = sc.max_boost_s
        priority = min((boost + f.age_s) / top, 1.0) if top > 0 else 1.0
        why = "no deadline" if latest_start is None else f"latest start in {latest_start:.0f}s"
        return PriorityDecision(
            timeliness=p_miss,
            load=load,
            anomaly=anomaly,
            priority=priority,
            boost_s=boost,
            weight_boost_s=weight,
            broker_priority=min(9, int(priority * 10)),
            expected_wait_s=expected_wait(f),
            p_miss=p_miss,
            latest_start_s=latest_start,
            explanation=f"{how}; {why}, p_miss={p_miss:.2f}, weight={f.business_weight:g} "
            f"(+{weight:.0f}s), waited {f.age_s:.0f}s",
        )


def order_key(enqueued_at: float, decision: PriorityDecision) -> float:
    """A dispatcher's sort key, smallest first, for a task enqueued at `enqueued_at` (seconds,
    any clock): fixed at enqueue, it gives the order `priority` gives at any later moment
    (where neither has reached 1), so a heap keeps aging exact."""
    return enqueued_at - decision.boost_s


module = PriorityModule()
