"""`anomaly`: is this window of a log anomalous, and what changed first and most?

Lines are mined into templates online by Drain3 (`miner`), cut into windows of
`AIASSIST_ANOMALY_WINDOW_LINES` lines, and each window is described against the log's own
baseline (`baseline`) in numbers that mean the same for any log: Poisson surprise of the
burstiest template and component and of a missing regular template, shares of unseen
templates and components, error share, divergence of the template mix. The decision is an
anomaly score with root-cause hints; the fallback scores the largest surprise. The outcome
says whether the window was in fact an incident.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, Field

from aiassist.modules.anomaly.settings import AnomalySettings
from aiassist.modules.base import Decision, Features, Module, Outcome
from aiassist.settings import module_settings

__all__ = [
    "AnomalyDecision",
    "AnomalyFeatures",
    "AnomalyModule",
    "AnomalyOutcome",
    "AnomalySettings",
    "Hint",
    "module",
    "rule_score",
]

log = logging.getLogger("aiassist.anomaly")
_SURPRISE = Field(ge=0, le=300, description="-log10 of the Poisson probability (capped).")
#: The surprise at which the rule's score is one half: a change with a probability of 0.001.
HALF_SURPRISE = 3.0
#: The share of a window's lines of unseen templates that counts as much.
HALF_NEW_SHARE = 0.075


class AnomalyFeatures(Features):
    lines: int = Field(ge=1, le=1_000_000, description="Lines in the window.")
    new_template_share: float = Field(ge=0, le=1, description="Share of lines of unseen templates.")
    new_templates: int = Field(ge=0, le=1_000_000, description="Distinct unseen templates.")
    new_component_share: float = Field(
        ge=0, le=1, description="Share of lines of unseen components."
    )
    burst_surprise: float = _SURPRISE
    missing_surprise: float = _SURPRISE
    component_surprise: float = _SURPRISE
    surprising_templates: int = Field(
        ge=0, le=1_000_000, description="Templates whose count is a surprise of 3 or more."
    )
    missing_regular_share: float = Field(
        ge=0, le=1, description="Share of the templates in nearly every window that are absent."
    )
    error_share: float = Field(ge=0, le=1, description="Share of error-level lines.")
    baseline_error_share: float = Field(ge=0, le=1, description="The same, in the baseline.")
    divergence: float = Field(
        ge=0, le=1, description="Jensen-Shannon divergence of the template mix from baseline."
    )
    learned_windows: int = Field(
        ge=0, le=1_000_000, description="Windows the baseline has learned (its confidence)."
    )


class Hint(BaseModel):
    kind: Literal[
        "new template",
        "template burst",
        "missing template",
        "new component",
        "component burst",
        "new host",
        "host burst",
    ]
    name: str = Field(max_length=500, description="The template or component.")
    component: str = Field("", max_length=100, description="The component it is of.")
    surprise: float = Field(ge=0, le=300)
    evidence: str = Field("", max_length=300, description="The window's first line of it.")
    like: str = Field(
        "", max_length=500, description="For a new template: the known one nearest in meaning."
    )
    similarity: float | None = Field(None, ge=-1, le=1, description="Cosine similarity to it.")
    line: int = Field(
        0,
        ge=0,
        le=1_000_000,
        description="Where in the window it first showed (from 1; 0: absent).",
    )


class AnomalyDecision(Decision):
    score: float = Field(ge=0, le=1, description="How anomalous the window is.")
    anomalous: bool = Field(description="Score at or above AIASSIST_ANOMALY_THRESHOLD.")
    hints: list[Hint] = Field(default_factory=list, max_length=10)


class AnomalyOutcome(Outcome):
    incident: bool = Field(description="Whether the window was in fact part of an incident.")


def rule_score(f: AnomalyFeatures) -> float:
    """One half at HALF_SURPRISE of the most surprising change (or at HALF_NEW_SHARE of
    lines never seen), towards 1 beyond it."""
    novelty = f.new_template_share / HALF_NEW_SHARE * HALF_SURPRISE
    surprise = max(f.burst_surprise, f.missing_surprise, f.component_surprise, novelty)
    return 1 - math.exp(-surprise * math.log(2) / HALF_SURPRISE)


class AnomalyModule(Module[AnomalyFeatures, AnomalyDecision, AnomalyOutcome]):
    name = "anomaly"
    summary = "Is this window of a log anomalous, and which templates changed?"
    Features = AnomalyFeatures
    Decision = AnomalyDecision
    Outcome = AnomalyOutcome
    example = {
        "lines": 100, "new_template_share": 0.12, "new_templates": 2,
        "new_component_share": 0.0, "burst_surprise": 14.2, "missing_surprise": 0.0,
        "component_surprise": 3.1, "surprising_templates": 2, "missing_regular_share": 0.0,
        "error_share": 0.15, "baseline_error_share": 0.02, "divergence": 0.21,
        "learned_windows": 240,
    }  # fmt: skip
    outcome_example = {"incident": True}
    settings = AnomalySettings
    router = "aiassist.modules.anomaly.api:anomaly_router"
    cli = "aiassist.modules.anomaly.cli:app"
    trainer = "aiassist.modules.anomaly.training:trainer"

    def __init__(self, settings: AnomalySettings | None = None) -> None:
        self._settings = settings

    @property
    def config(self) -> AnomalySettings:
        """The given settings, else the process's `AnomalySettings` (read on first use)."""
        if self._settings is None:
            self._settings = module_settings(AnomalySettings, log)
        return self._settings

    def fallback(self, f: AnomalyFeatures) -> AnomalyDecision:
        return self._decide(rule_score(f), "rule: largest surprise")

    def encode(self, f: AnomalyFeatures) -> list[float]:
        return [
            math.log1p(f.lines),
            f.new_template_share,
            math.log1p(f.new_templates),
            f.new_component_share,
            f.burst_surprise,
            f.missing_surprise,
            f.component_surprise,
            math.log1p(f.surprising_templates),
            f.missing_regular_share,
            f.error_share,
            f.error_share - f.baseline_error_share,
            f.divergence,
            math.log1p(f.learned_windows),
        ]

    def feature_names(self) -> list[str]:
        return [
            "log_lines", "new_template_share", "log_new_templates", "new_component_share",
            "burst_surprise", "missing_surprise", "component_surprise", "log_surprising_templates",
            "missing_regular_share",
            "error_share", "error_share_rise", "divergence", "log_learned_windows",
        ]  # fmt: skip

    def decode(self, f: AnomalyFeatures, output: Sequence[float]) -> AnomalyDecision:
        return self._decide(float(output[-1]), "model")

    def _decide(self, score: float, explanation: str) -> AnomalyDecision:
        score = min(max(score, 0.0), 1.0)
        anomalous = score >= self.config.threshold
        return AnomalyDecision(score=round(score, 4), anomalous=anomalous, explanation=explanation)


module = AnomalyModule()
