"""`priority`: which task first. Three scores per task (timeliness, load, anomaly), one
combined priority, the expected wait and the risk of missing the deadline.

It replaces a fixed classification (say four levels hard-coded per task type) at the point
where a task is enqueued. How the priority is made (`Scoring`):

- **Latest start**: the deadline minus the duration at anomaly speed (`est_duration_s *
  anomaly`), at least 0. A task without a deadline, or with one beyond the horizon
  (`horizon_s`, 90 min), counts as due at the horizon.
- **Weight**: business weight shortens that time: it is divided by `(1 + weight) **
  weight_exponent`, so an important task is treated as if its deadline were closer.
- **Risk**: the probability of missing the deadline when nothing puts the task ahead (the
  rule's estimate, or the model's) brings it forward by up to `risk_s` seconds.
- **Aging**: `boost_s = horizon - virtual latest start + risk` is a head start over first
  come, first served. Ordering by `enqueued_at - boost_s` (`order_key`) is ordering by
  priority at every later moment; nothing is overtaken by work that arrives more than
  `horizon_s + risk_s` seconds after it, so nothing starves.

The rule fallback computes P(miss) from the slack left after the expected wait; a model
(trained on the simulator in `simulator.py`, then on recorded outcomes) predicts it.
`load` and `anomaly` are reported as scores of their own; they act on the priority through
the latest start (anomaly) and the risk (both).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import Field

from aiassist.modules.base import Decision, Features, Module, Outcome

__all__ = [
    "PriorityDecision",
    "PriorityFeatures",
    "PriorityModule",
    "PriorityOutcome",
    "Scoring",
    "module",
    "order_key",
]

_DAY = 86_400.0


@dataclass(frozen=True)
class Scoring:
    """How the combined priority is made (see the module docstring)."""

    horizon_s: float = 5400.0
    weight_exponent: float = 0.5
    risk_s: float = 60.0


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
    broker_priority: int = Field(ge=0, le=9, description="The same, as a broker priority 0-9.")
    expected_wait_s: float = Field(ge=0, description="Expected wait before the task starts.")
    p_miss: float = Field(ge=0, le=1, description="Probability of missing the deadline.")


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

    def __init__(self, scoring: Scoring | None = None) -> None:
        self.scoring = scoring or Scoring()

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
        if f.deadline_in_s is None:
            due = sc.horizon_s
        else:
            latest_start = f.deadline_in_s - f.est_duration_s * f.anomaly
            due = min(max(latest_start, 0.0), sc.horizon_s)
            due /= (1.0 + f.business_weight) ** sc.weight_exponent
        risk = sc.risk_s * p_miss
        boost = sc.horizon_s - due + risk
        # Seconds until the task is due, on the log scale people read deadlines on; age
        # brings it closer at the pace of the clock, the same as order_key.
        left = max(sc.horizon_s - boost - f.age_s + sc.risk_s, 0.0)
        priority = min(max(1.0 - math.log1p(left) / math.log1p(sc.horizon_s + sc.risk_s), 0.0), 1.0)
        if f.deadline_in_s is None:
            why = "no deadline"
        elif due < latest_start - 0.5:
            why = f"latest start in {latest_start:.0f}s, counted as {due:.0f}s for its weight"
        else:
            why = f"latest start in {latest_start:.0f}s"
        return PriorityDecision(
            timeliness=p_miss,
            load=load,
            anomaly=anomaly,
            priority=priority,
            boost_s=boost,
            broker_priority=min(9, int(priority * 10)),
            expected_wait_s=expected_wait(f),
            p_miss=p_miss,
            explanation=f"{how}; {why}, p_miss={p_miss:.2f}, weight={f.business_weight:g}, "
            f"waited {f.age_s:.0f}s",
        )


def order_key(enqueued_at: float, decision: PriorityDecision) -> float:
    """A dispatcher's sort key, smallest first, for a task enqueued at `enqueued_at` (seconds,
    any clock): fixed at enqueue, it gives the order `priority` gives at any later moment
    (where neither has reached 1), so a heap keeps aging exact."""
    return enqueued_at - decision.boost_s


module = PriorityModule()
