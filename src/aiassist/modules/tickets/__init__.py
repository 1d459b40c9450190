"""`tickets`: which ticket first. User complaints, ops alerts and automated inspection
tasks in one order, by their SLA, their blast radius and the work they take.

Each ticket is read first (`categories.TextReader`): its text gives category probabilities
and an impact estimate, with the packaged MiniLM when the `text` extra is installed, else
with keyword rules. Its **value** is the category's severity weight (expected over the
probabilities, or the category the ticket system gives) times the customer tier's weight
(free 1, pro 1.5, enterprise 3) times 1 + 2 x impact, the larger of the text's impact and
the blast radius (affected users on a log scale, affected services).

- **The rule** (the fallback): SLA deadline first with severity weights. The head start is
  `horizon_s` minus the time left on the SLA (at most `horizon_s`), plus
  `severity_s x ln(value)` (at most `cap_s`). The handling time is the category's typical
  one.
- **The model** predicts the handling time (LightGBM on the structured features, the text
  reading and the category's recent SLA figures; trained on the simulator, then on recorded
  outcomes). The head start is `work_s x log2(1 + value^value_power x 1800 / predicted
  seconds)` (at most `cap_s`): value per unit of work, after Smith's rule (the c-mu rule of
  queueing), which minimises the weighted mean wait, so that short tickets do not wait
  behind long ones; `value_power` 0.5 lets value count less than work.
- Both add `risk_s x P(breach)`, where P(breach) is the chance that the ticket waits past
  its SLA if it waits as its category's tickets waited last week (`sla.SlaWindow`):
  exp(-time left / recent mean response).

Ordering is the `priority` module's `TaskQueue`, unchanged: `enqueued_at - boost_s`, aging
exactly, bounded so nothing starves, and the **rescue**: a ticket whose SLA ends within
`rescue_s` is taken first, earliest SLA first, while it can still be met (a ticket already
past its SLA keeps its place instead of pushing others past theirs), unless the first
ticket in order is worth much more (`rescue_gap_s`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from aiassist.modules.base import Decision, Features, Module, Outcome
from aiassist.modules.priority.queue import TaskQueue
from aiassist.modules.tickets.categories import (
    CATEGORIES,
    CATEGORY_NAMES,
    Reading,
    TextReader,
    expected,
)
from aiassist.modules.tickets.settings import Scoring, TicketsSettings
from aiassist.modules.tickets.sla import SlaWindow
from aiassist.settings import module_settings
from aiassist.text import default_cache_dir

__all__ = [
    "CATEGORY_NAMES",
    "Scoring",
    "SlaWindow",
    "TaskQueue",
    "TicketDecision",
    "TicketFeatures",
    "TicketOutcome",
    "TicketsModule",
    "TicketsSettings",
    "module",
    "ticket_queue",
]

log = logging.getLogger("aiassist.tickets")

_DAY = 86_400.0
Source = Literal["complaint", "alert", "inspection"]
Tier = Literal["free", "pro", "enterprise"]
CategoryName = Literal["outage", "bug", "access", "billing", "question", "inspection"]
TIER_WEIGHT = {"free": 1.0, "pro": 1.5, "enterprise": 3.0}
_SOURCES = ("complaint", "alert", "inspection")
_REFERENCE_WORK_S = 1800.0  # value 1 per half hour of work: the model's unit
_MIN_WORK_S, _MAX_WORK_S = 30.0, 7 * _DAY


class TicketFeatures(Features):
    source: Source = Field("complaint", description="Who opened it: a user, an alert, a check.")
    tier: Tier = Field("free", description="The customer's tier.")
    affected_users: int = Field(
        1, ge=0, le=1_000_000_000, description="Users the fault reaches (blast radius)."
    )
    affected_services: int = Field(0, ge=0, le=10_000, description="Services it touches.")
    deadline_in_s: float | None = Field(
        None,
        ge=-30 * _DAY,
        le=365 * _DAY,
        description="Seconds until the SLA's response time ends (negative: breached); "
        "none: no SLA.",
    )
    age_s: float = Field(0.0, ge=0, le=365 * _DAY, description="Seconds since it was opened.")
    text: str = Field("", max_length=4000, description="Subject and body, or the alert text.")
    category: CategoryName | None = Field(
        None, description="The ticket system's own category, if it has one; else read."
    )
    recent_response_s: float | None = Field(
        None,
        ge=0,
        le=90 * _DAY,
        description="Mean first-response time of the category's tickets last week; the "
        "order endpoint fills it from recorded outcomes.",
    )
    recent_breach_rate: float | None = Field(
        None, ge=0, le=1, description="Share of them that breached their SLA."
    )


class TicketDecision(Decision):
    score: float = Field(ge=0, le=1, description="The order: higher first (with aging).")
    category: str = Field(max_length=32, description="The category, given or read.")
    category_p: float = Field(ge=0, le=1, description="How sure the reading is.")
    queue: str = Field(max_length=32, description="The group that handles the category.")
    impact: float = Field(ge=0, le=1, description="Blast radius and text, 0-1.")
    value: float = Field(ge=0, description="Severity x tier x (1 + 2 x impact).")
    est_handling_s: float = Field(ge=0, description="Predicted time to handle the ticket.")
    breach_in_s: float | None = Field(
        None, description="Seconds until the SLA is breached (negative: already); none: none."
    )
    p_breach: float = Field(ge=0, le=1, description="P(the SLA is breached) at recent speed.")
    boost_s: float = Field(ge=0, description="Head start over first come, first served.")
    weight_boost_s: float = Field(ge=0, description="The part of it that value gives.")
    latest_start_s: float | None = Field(
        None, description="Seconds until the ticket must be taken: its SLA (for the rescue)."
    )
    read_by: str = Field(max_length=16, description="embedding, keywords or given.")


class TicketOutcome(Outcome):
    category: CategoryName = Field(description="What the ticket really was about.")
    responded_s: float = Field(ge=0, le=365 * _DAY, description="Opened to first response.")
    handled_s: float = Field(ge=0, le=365 * _DAY, description="Time spent handling it.")
    breached: bool | None = Field(None, description="SLA breached; none: it had none.")


def blast_radius(f: TicketFeatures) -> float:
    """0-1 from the affected users (a million: 1) and services (ten: 1)."""
    users = math.log10(1.0 + f.affected_users) / 6.0
    return min(1.0, max(users, min(f.affected_services, 10) / 10.0))


class TicketsModule(Module[TicketFeatures, TicketDecision, TicketOutcome]):
    name = "tickets"
    summary = "Which ticket first: SLA, blast radius and predicted work, and the group for it."
    Features = TicketFeatures
    Decision = TicketDecision
    Outcome = TicketOutcome
    example = {
        "source": "complaint",
        "tier": "enterprise",
        "affected_users": 40,
        "affected_services": 1,
        "deadline_in_s": 1800,
        "age_s": 120,
        "text": "Cannot sign in since this morning, the whole sales team is locked out",
    }
    outcome_example = {
        "category": "access",
        "responded_s": 640.0,
        "handled_s": 420.0,
        "breached": False,
    }
    trainer = "aiassist.modules.tickets.training:trainer"
    settings = TicketsSettings
    router = "aiassist.modules.tickets.api:tickets_router"
    cli = "aiassist.modules.tickets.cli:app"

    def __init__(self, scoring: Scoring | None = None, reader: TextReader | None = None) -> None:
        self._scoring = scoring
        self._reader = reader

    @property
    def scoring(self) -> Scoring:
        if self._scoring is None:
            self._scoring = Scoring.from_settings(module_settings(TicketsSettings, log))
        return self._scoring

    @property
    def reader(self) -> TextReader:
        """The text reader the settings ask for (read on first use)."""
        if self._reader is None:
            settings = module_settings(TicketsSettings, log)
            cache = settings.embeddings_dir
            if cache is None and settings.embed_text:
                cache = default_cache_dir()
            self._reader = TextReader(cache, embed=settings.embed_text)
        return self._reader

    def reading(self, f: TicketFeatures) -> Reading:
        if f.category is not None:
            probs = tuple(float(name == f.category) for name in CATEGORY_NAMES)
            return Reading(probs, self.reader.read(f.text, f.source).impact, "given")
        return self.reader.read(f.text, f.source)

    def with_sla(self, f: TicketFeatures, window: SlaWindow, now: float) -> TicketFeatures:
        """`f` with its category's recent response figures from `window` where it has none
        (the category given, else the one its text most likely is)."""
        if f.recent_response_s is not None:
            return f
        r = self.reading(f)
        best = CATEGORY_NAMES[max(range(len(r.probs)), key=lambda i: r.probs[i])]
        sla = window.get(f.category or best, now)
        if sla is None:
            return f
        recent = min(sla.mean_response_s, 90 * _DAY)
        return f.model_copy(
            update={"recent_response_s": recent, "recent_breach_rate": sla.breach_rate}
        )

    def fallback(self, f: TicketFeatures) -> TicketDecision:
        r = self.reading(f)
        work = expected(r.probs, "handling_s")
        return self._decide(f, r, work, by_work=False, how="rule: SLA first")

    def encode(self, f: TicketFeatures) -> list[float]:
        r = self.reading(f)
        deadline = f.deadline_in_s
        return [
            *(float(f.source == s) for s in _SOURCES),
            float(list(TIER_WEIGHT).index(f.tier)),
            math.log1p(f.affected_users),
            float(min(f.affected_services, 100)),
            0.0 if deadline is None else 1.0,
            0.0 if deadline is None else math.copysign(math.log1p(abs(deadline)), deadline),
            math.log1p(f.age_s),
            *r.probs,
            r.impact,
            -1.0 if f.recent_response_s is None else math.log1p(f.recent_response_s),
            -1.0 if f.recent_breach_rate is None else f.recent_breach_rate,
            float(len(f.text)),
        ]

    def feature_names(self) -> list[str]:
        return [
            *(f"source_{s}" for s in _SOURCES),
            "tier",
            "log_affected_users",
            "affected_services",
            "has_sla",
            "signed_log_sla_left",
            "log_age",
            *(f"p_{name}" for name in CATEGORY_NAMES),
            "text_impact",
            "log_recent_response",
            "recent_breach_rate",
            "text_length",
        ]

    def decode(self, f: TicketFeatures, output: Sequence[float]) -> TicketDecision:
        work = min(max(math.expm1(float(output[-1])), _MIN_WORK_S), _MAX_WORK_S)
        how = "model: value per predicted work"
        return self._decide(f, self.reading(f), work, by_work=True, how=how)

    def _decide(
        self, f: TicketFeatures, r: Reading, work_s: float, *, by_work: bool, how: str
    ) -> TicketDecision:
        """The decision for a handling time: the model's head start is value per work
        (`by_work`), the rule's the SLA's and severity's (see the module docstring)."""
        sc = self.scoring
        best = max(range(len(r.probs)), key=lambda i: r.probs[i])
        category = CATEGORIES[best]
        impact = max(r.impact, blast_radius(f))
        value = expected(r.probs, "severity") * TIER_WEIGHT[f.tier] * (1.0 + 2.0 * impact)
        deadline = f.deadline_in_s
        if by_work:
            ratio = value**sc.value_power * _REFERENCE_WORK_S / max(work_s, _MIN_WORK_S)
            weight = min(sc.work_s * math.log2(1.0 + ratio), sc.cap_s)
            boost = weight
        else:
            due = sc.horizon_s if deadline is None else min(max(deadline, 0.0), sc.horizon_s)
            weight = min(sc.severity_s * math.log(max(value, 1.0)), sc.cap_s)
            boost = sc.horizon_s - due + weight
        typical = f.recent_response_s or 2.0 * category.handling_s
        if deadline is None:
            p_breach = 0.0
        else:
            p_breach = 1.0 if deadline <= 0 else math.exp(-deadline / max(typical, 1.0))
        boost += sc.risk_s * p_breach
        top = sc.max_boost_s
        score = min((boost + f.age_s) / top, 1.0) if top > 0 else 1.0
        sla = "no SLA" if deadline is None else f"SLA in {deadline:.0f}s"
        return TicketDecision(
            score=score,
            category=category.name,
            category_p=r.probs[best],
            queue=category.queue,
            impact=impact,
            value=value,
            est_handling_s=work_s,
            breach_in_s=deadline,
            p_breach=p_breach,
            boost_s=boost,
            weight_boost_s=weight,
            latest_start_s=deadline,
            read_by=r.by,
            explanation=f"{how}; {category.name} ({r.by}, p={r.probs[best]:.2f}), "
            f"value {value:.1f}, ~{work_s:.0f}s of work, {sla}, p_breach={p_breach:.2f}",
        )


def ticket_queue(scoring: Scoring) -> TaskQueue[int]:
    """The `TaskQueue` a team takes tickets from, with `scoring`'s rescue, gap and bound."""
    return TaskQueue(
        rescue_s=scoring.rescue_s,
        bound_s=scoring.max_boost_s,
        gap_s=scoring.rescue_gap_s,
        wait_scale=scoring.wait_scale,
    )


module = TicketsModule()
