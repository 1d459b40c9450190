"""A seeded discrete-event simulation of a support team, to compare ways of ordering tickets.

The world `generate` draws (every number is a constant below; none depends on a policy):

- **Three sources.** User complaints (`COMPLAINT_MIX`: bugs, sign-in trouble, billing,
  questions, a few outage reports), ops alerts (mostly outages, some bugs and failed
  checks) and automated inspection tasks (certificates, disks, backups, patches), at shares
  `SOURCE_SHARES` of the calm traffic.
- **Text.** Each ticket's text is one of its category's templates (`TEMPLATES`) with a
  product area or a service filled in. About half the templates use the words a keyword
  rule looks for; the others say the same in other words, as users do.
- **Work.** The true handling time is the category's mean (`HANDLING_S`; an outage report
  from a user is linked to the incident in minutes, the alert that raised it takes the
  fix) times a mean-one log-normal (sigma `_SIGMA_WORK`).
- **SLA classes.** The first response is due within `SLA_S`: enterprise complaints 30 min,
  pro 2 h, free 8 h, alerts 15 min, inspections 24 h. A breach is a first response (the
  start of work) after that.
- **Blast radius.** Affected users and services per source and category (outages: hundreds
  to a million users and one to five services; a complaint: its own team).
- **Incident storms.** Incidents start as a Poisson process (mean gap `_STORM_GAP_S`) and
  last U(20, 60) min; during one, alerts arrive at `_STORM_ALERTS_PER_S` (one in five
  minutes) and users report the outage at `_STORM_REPORTS_PER_S` (one a minute), for a
  team of eight (rates scale with the team: a larger team serves more customers), on top
  of the calm traffic.
- **Load.** The calm arrival rate is set so that the mean offered work, storms included,
  is `load` times what the team can do.

A policy is a queue: a ticket is pushed when it arrives and a free agent pops the next
one. The baselines order by a key fixed at arrival (ties: first come): FIFO, static
severity levels (alerts, then enterprise, pro, free complaints and inspections), SLA
deadline first. The module's policy is the module's decision for each ticket (with the
team's last-week SLA figures from its own `SlaWindow`) in the `priority` module's
`TaskQueue`, the same one its order endpoint uses.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from aiassist.modules.priority import simulator as priority_simulator
from aiassist.modules.priority.simulator import FIFO, Key, KeyPolicy, Policy, SimQueue
from aiassist.modules.tickets import (
    SlaWindow,
    TicketDecision,
    TicketFeatures,
    ticket_queue,
)
from aiassist.modules.tickets import module as tickets_module
from aiassist.modules.tickets.settings import Scoring

__all__ = [
    "EDF",
    "FIFO",
    "HANDLING_S",
    "SLA_S",
    "TEMPLATES",
    "GeneratorSpec",
    "KeyPolicy",
    "ModulePolicy",
    "Policy",
    "RunResult",
    "SimQueue",
    "StaticLevels",
    "Traffic",
    "TrueShortestFirst",
    "generate",
    "simulate",
    "summarize",
    "training_examples",
]

SOURCE_SHARES = {"complaint": 0.6, "alert": 0.15, "inspection": 0.25}
COMPLAINT_MIX = {"bug": 0.2, "access": 0.25, "billing": 0.2, "question": 0.3, "outage": 0.05}
ALERT_MIX = {"outage": 0.7, "bug": 0.15, "inspection": 0.15}
TIER_SHARES = {"free": 0.5, "pro": 0.35, "enterprise": 0.15}
#: Mean handling seconds by (source, category); a user's outage report is linked to the
#: incident, the alert is the fix.
HANDLING_S = {
    ("complaint", "outage"): 240.0,
    ("complaint", "bug"): 3600.0,
    ("complaint", "access"): 420.0,
    ("complaint", "billing"): 720.0,
    ("complaint", "question"): 300.0,
    ("alert", "outage"): 2400.0,
    ("alert", "bug"): 1800.0,
    ("alert", "inspection"): 600.0,
    ("inspection", "inspection"): 900.0,
}
#: First-response SLA in seconds, by source and (for complaints) tier.
SLA_S = {"enterprise": 1800.0, "pro": 7200.0, "free": 28_800.0, "alert": 900.0,
         "inspection": 86_400.0}  # fmt: skip
_SIGMA_WORK = 0.8
_STORM_GAP_S = 6 * 3600.0
_STORM_LENGTH_S = (1200.0, 3600.0)
_STORM_ALERTS_PER_S = 1 / 300.0  # for a team of _TEAM agents; rates scale with the team
_STORM_REPORTS_PER_S = 1 / 60.0
_TEAM = 8

_AREAS = ("reports", "the dashboard", "the invoices page", "project settings",
          "the mobile app", "user management")  # fmt: skip
_SERVICES = ("api-gateway", "billing-db", "auth", "search", "storage", "web")
#: Per (source, category): templates; `{a}` a product area, `{s}` a service.
TEMPLATES: dict[tuple[str, str], tuple[str, ...]] = {
    ("complaint", "outage"): (
        "The site is down for us, nothing works",
        "We keep getting 503 errors on {a}",
        "Your app has been unreachable for twenty minutes",
        "{a} stays blank for everyone in our office, it just spins",
    ),
    ("complaint", "bug"): (
        "Bug: {a} shows wrong totals since the update",
        "The app crashes when I open {a}",
        "{a} displays yesterday's numbers instead of today's",
        "Since your last release, saving in {a} silently loses my changes",
    ),
    ("complaint", "access"): (
        "Cannot log in to my account",
        "Password reset mail never arrives",
        "My colleague is not allowed to open {a}, please grant it",
        "The two-step code is rejected every time I try to get in",
    ),
    ("complaint", "billing"): (
        "I was charged twice this month",
        "The invoice has the wrong company address",
        "Why did our plan cost more this month than last?",
        "Please cancel the renewal, we were billed for seats we removed",
    ),
    ("complaint", "question"): (
        "How do I export {a} to a spreadsheet?",
        "Is it possible to add more seats to our plan?",
        "Could you explain what the options in {a} do?",
        "Where can I read about the limits of {a}?",
    ),
    ("alert", "outage"): (
        "ALERT {s} error rate 14% above threshold",
        "ALERT {s} p99 latency 4.2s, requests timing out",
        "{s} health check failing in eu-west, 3 of 3 probes",
        "{s}: 5xx responses spiking, pager triggered",
    ),
    ("alert", "bug"): (
        "ALERT {s} exception count rising after deploy",
        "{s} job results differ from the previous run",
    ),
    ("alert", "inspection"): (
        "ALERT {s} disk 91% full",
        "{s} replica lag above 30 s",
    ),
    ("inspection", "inspection"): (
        "Scheduled check: TLS certificate of {s} expires in 9 days",
        "Inspection: disk usage on {s} at 87%",
        "Nightly backup verification of {s} reported a warning",
        "Patch level of {s} is two releases behind",
    ),
}


class GeneratorSpec(BaseModel):
    """What `generate` draws: bounded so that one run stays small."""

    model_config = ConfigDict(extra="forbid")

    tickets: int = Field(5000, ge=10, le=100_000, description="Tickets to generate.")
    agents: int = Field(8, ge=1, le=500, description="Agents working the queue.")
    load: float = Field(0.9, ge=0.05, le=1.5, description="Mean offered work / capacity.")
    storms: bool = Field(True, description="Incident storms on top of the calm traffic.")
    seed: int = Field(0, ge=0, le=2**32 - 1)


@dataclass
class Traffic:
    """The tickets of one run, in arrival order."""

    agents: int
    arrival: np.ndarray
    source: list[str]
    tier: list[str]
    category: list[str]
    text: list[str]
    users: np.ndarray
    services: np.ndarray
    deadline: np.ndarray  # absolute; NaN: no SLA
    work: np.ndarray  # true handling seconds
    storms: list[tuple[float, float]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.arrival)

    def features(self, i: int, now: float) -> TicketFeatures:
        """What the ticket system knows about ticket `i` at `now`."""
        d = float(self.deadline[i])
        return TicketFeatures(
            source=self.source[i],
            tier=self.tier[i],
            affected_users=int(self.users[i]),
            affected_services=int(self.services[i]),
            deadline_in_s=None if math.isnan(d) else d - now,
            age_s=max(now - float(self.arrival[i]), 0.0),
            text=self.text[i],
        )


def _pick(rng: np.random.Generator, mix: dict[str, float], n: int) -> list[str]:
    names = list(mix)
    p = np.array([mix[k] for k in names])
    return [names[k] for k in rng.choice(len(names), size=n, p=p / p.sum())]


def _mean_work(mix: dict[str, float], source: str) -> float:
    total = sum(mix.values())
    return sum(share * HANDLING_S[(source, c)] for c, share in mix.items()) / total


def generate(spec: GeneratorSpec) -> Traffic:
    """Draw one run's tickets (see the module docstring); the same spec gives the same run."""
    rng = np.random.default_rng(spec.seed)
    calm_work = (
        SOURCE_SHARES["complaint"] * _mean_work(COMPLAINT_MIX, "complaint")
        + SOURCE_SHARES["alert"] * _mean_work(ALERT_MIX, "alert")
        + SOURCE_SHARES["inspection"] * HANDLING_S[("inspection", "inspection")]
    )
    storm_work_per_s, scale = 0.0, spec.agents / _TEAM
    if spec.storms:
        mean_length = sum(_STORM_LENGTH_S) / 2
        share = mean_length / (_STORM_GAP_S + mean_length)
        storm_work_per_s = (
            share
            * scale
            * (
                _STORM_ALERTS_PER_S * HANDLING_S[("alert", "outage")]
                + _STORM_REPORTS_PER_S * HANDLING_S[("complaint", "outage")]
            )
        )
    capacity = float(spec.agents)
    calm_rate = max(spec.load * capacity - storm_work_per_s, 0.05 * capacity) / calm_work

    # Calm arrivals, storms over the same span, the first `tickets` of both.
    calm_times = np.cumsum(rng.exponential(1.0 / calm_rate, spec.tickets))
    sources = _pick(rng, SOURCE_SHARES, spec.tickets)
    mixes = {"complaint": COMPLAINT_MIX, "alert": ALERT_MIX, "inspection": {"inspection": 1.0}}
    picked = {s: iter(_pick(rng, mix, spec.tickets)) for s, mix in mixes.items()}
    rows = [(float(t), s, next(picked[s])) for t, s in zip(calm_times, sources, strict=True)]
    storms: list[tuple[float, float]] = []
    if spec.storms:
        t = float(rng.exponential(_STORM_GAP_S))
        while t < calm_times[-1]:
            end = t + float(rng.uniform(*_STORM_LENGTH_S))
            storms.append((t, end))
            for rate, kind in ((_STORM_ALERTS_PER_S, "alert"),
                               (_STORM_REPORTS_PER_S, "complaint")):  # fmt: skip
                k = int(rng.poisson(rate * scale * (end - t)))
                rows += [(float(a), kind, "outage") for a in rng.uniform(t, end, k)]
            t = end + float(rng.exponential(_STORM_GAP_S))
    rows.sort(key=lambda r: r[0])
    rows = rows[: spec.tickets]
    n = len(rows)

    arrival = np.array([r[0] for r in rows])
    source = [r[1] for r in rows]
    category = [r[2] for r in rows]
    tiers = _pick(rng, TIER_SHARES, n)
    tier = [t if s == "complaint" else ("enterprise" if s == "alert" else "free")
            for s, t in zip(source, tiers, strict=True)]  # fmt: skip
    mean = np.array([HANDLING_S[(s, c)] for s, c in zip(source, category, strict=True)])
    work = mean * rng.lognormal(-(_SIGMA_WORK**2) / 2, _SIGMA_WORK, n)
    sla = np.array([SLA_S[t if s == "complaint" else s] for s, t in zip(source, tier, strict=True)])
    texts, users, services = [], np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    for i in range(n):
        templates = TEMPLATES[(source[i], category[i])]
        template = templates[int(rng.integers(len(templates)))]
        area = _AREAS[int(rng.integers(len(_AREAS)))]
        service = _SERVICES[int(rng.integers(len(_SERVICES)))]
        texts.append(template.format(a=area, s=service))
        if category[i] == "outage":
            users[i] = int(10 ** rng.uniform(2, 6))
            services[i] = int(rng.integers(1, 6))
        elif source[i] == "complaint":
            users[i] = int(rng.integers(1, 50 if tier[i] == "enterprise" else 5))
        else:
            services[i] = 1
    return Traffic(
        agents=spec.agents,
        arrival=arrival,
        source=source,
        tier=tier,
        category=category,
        text=texts,
        users=users,
        services=services,
        deadline=arrival + sla,
        work=work,
        storms=storms,
    )


# --- policies ----------------------------------------------------------------------------
#: The legacy scheme's levels (higher first): by source, and complaints by tier.
STATIC_LEVELS = {"alert": 3, "enterprise": 2, "pro": 1, "free": 0, "inspection": 0}


class StaticLevels(KeyPolicy[Traffic, TicketFeatures]):
    """Static severity levels: alerts, then enterprise, pro, free complaints and
    inspections; first come within a level."""

    name = "static"

    def key(self, traffic: Traffic, i: int, now: float, f: TicketFeatures | None) -> Key:
        s = traffic.source[i]
        return (-float(STATIC_LEVELS[traffic.tier[i] if s == "complaint" else s]), now)


class EDF(priority_simulator.EDF):
    """SLA deadline first (earliest first response due)."""

    name = "deadline_first"


class TrueShortestFirst(KeyPolicy[Traffic, TicketFeatures]):
    """Shortest true handling time first, SLAs ignored: a bound no real system reaches (it
    knows each ticket's work exactly), to show what the backlog allows at this load."""

    name = "oracle_shortest_first"

    def key(self, traffic: Traffic, i: int, now: float, f: TicketFeatures | None) -> Key:
        return (float(traffic.work[i]), now)


class _ModuleQueue:
    def __init__(self, policy: ModulePolicy) -> None:
        self._policy = policy
        self._queue = ticket_queue(policy.scoring)

    def __len__(self) -> int:
        return len(self._queue)

    def push(self, i: int, now: float, f: TicketFeatures | None) -> None:
        assert f is not None
        decision: TicketDecision = self._policy.decide(f)
        self._policy.decisions[i] = decision
        self._queue.push_decision(i, now, decision, f.deadline_in_s)

    def pop(self, now: float) -> int:
        return self._queue.pop(now)


class ModulePolicy:
    """The `tickets` module as its order endpoint runs it: `decide` (the rule fallback by
    default, or an engine's) for each ticket, the `TaskQueue` with `scoring`'s rescue."""

    uses_features = True

    def __init__(
        self,
        decide: Callable[[TicketFeatures], Any] | None = None,
        name: str = "module",
        scoring: Scoring | None = None,
    ) -> None:
        self.name = name
        self.decide = decide or tickets_module.fallback
        self.scoring = scoring or tickets_module.scoring
        self.decisions: dict[int, TicketDecision] = {}

    def queue(self, traffic: Traffic) -> SimQueue[TicketFeatures]:
        self.decisions = {}
        return _ModuleQueue(self)


# --- running -----------------------------------------------------------------------------
@dataclass
class RunResult:
    policy: str
    start: np.ndarray
    finish: np.ndarray
    features: list[TicketFeatures] = field(default_factory=list)  # when recorded

    def wait(self, traffic: Traffic) -> np.ndarray:
        return np.asarray(self.start - traffic.arrival)

    def breached(self, traffic: Traffic) -> np.ndarray:
        """True where the first response came after the SLA; no SLA: never."""
        has = ~np.isnan(traffic.deadline)
        return np.asarray(has & (self.start > np.where(has, traffic.deadline, np.inf)))


def simulate(
    traffic: Traffic, policy: Policy[Traffic, TicketFeatures], *, record_features: bool = False
) -> RunResult:
    """The team works `traffic` under `policy` until every ticket is handled. The features
    carry the team's own last-week SLA figures per category, as the order endpoint gives."""
    n = len(traffic)
    start, finish = np.full(n, math.nan), np.full(n, math.nan)
    features: list[TicketFeatures] = []
    waiting = policy.queue(traffic)
    running: list[float] = []  # finish times
    window = SlaWindow()
    arrival = traffic.arrival.tolist()
    need = record_features or policy.uses_features
    k = 0
    while k < n or running:
        next_arrival = arrival[k] if k < n else math.inf
        if running and running[0] <= next_arrival:
            now = heapq.heappop(running)
        else:
            now, i = next_arrival, k
            k += 1
            f = None
            if need:
                f = tickets_module.with_sla(traffic.features(i, now), window, now)
                if record_features:
                    features.append(f)
            waiting.push(i, now, f)
        while len(running) < traffic.agents and len(waiting):
            i = waiting.pop(now)
            start[i], finish[i] = now, now + float(traffic.work[i])
            heapq.heappush(running, finish[i])
            d = float(traffic.deadline[i])
            window.observe(traffic.category[i], now - arrival[i], now > d, now)
    return RunResult(policy.name, start, finish, features)


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if len(x) else 0.0


def summarize(traffic: Traffic, result: RunResult) -> dict[str, float]:
    """Backlog time (arrival to first response), SLA breaches, by source too."""
    wait = result.wait(traffic)
    breached = result.breached(traffic)
    has = ~np.isnan(traffic.deadline)
    source = np.array(traffic.source)
    out = {
        "tickets": float(len(traffic)),
        "mean_backlog_s": _mean(wait),
        "p95_backlog_s": float(np.percentile(wait, 95)) if len(wait) else 0.0,
        "max_backlog_s": float(np.max(wait)) if len(wait) else 0.0,
        "sla_breaches": float(np.sum(breached)),
        "sla_breach_pct": 100.0 * float(np.sum(breached)) / max(int(np.sum(has)), 1),
    }
    for s in ("complaint", "alert", "inspection"):
        mask = source == s
        out[f"{s}_mean_backlog_s"] = _mean(wait[mask])
        out[f"{s}_breach_pct"] = 100.0 * float(np.mean(breached[mask])) if mask.any() else 0.0
    outage = np.array([c == "outage" for c in traffic.category])
    out["outage_mean_backlog_s"] = _mean(wait[outage])
    return out


# --- training data -----------------------------------------------------------------------
def training_examples(traffic: Traffic) -> tuple[list[TicketFeatures], list[float]]:
    """Features at arrival (under FIFO, with the team's SLA figures) and log(1 + the true
    handling seconds) of every ticket."""
    result = simulate(traffic, FIFO(), record_features=True)
    return result.features, [math.log1p(float(w)) for w in traffic.work]
