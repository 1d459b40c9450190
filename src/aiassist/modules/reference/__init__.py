"""`reference`: the smallest complete module, kept as the template for new ones.

It answers one question: does a signal call for action, given a threshold? The rule acts
when the signal crosses the threshold; a model outputs the probability that acting is right.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from aiassist.modules.base import Decision, Features, Module, Outcome

__all__ = [
    "ReferenceDecision",
    "ReferenceFeatures",
    "ReferenceModule",
    "ReferenceOutcome",
    "module",
]


class ReferenceFeatures(Features):
    signal: float = Field(ge=-1e9, le=1e9, description="The observed value.")
    threshold: float = Field(0.0, ge=-1e9, le=1e9, description="Act at or above this value.")


class ReferenceDecision(Decision):
    score: float = Field(ge=0, le=1, description="Probability that acting is right.")
    act: bool = Field(description="Whether to act.")


class ReferenceOutcome(Outcome):
    should_have_acted: bool = Field(description="Whether acting turned out to be right.")


class ReferenceModule(Module[ReferenceFeatures, ReferenceDecision, ReferenceOutcome]):
    name = "reference"
    summary = "Template module: act when a signal crosses a threshold."
    Features = ReferenceFeatures
    Decision = ReferenceDecision
    Outcome = ReferenceOutcome
    example = {"signal": 0.82, "threshold": 0.5}
    outcome_example = {"should_have_acted": True}
    trainer = "aiassist.modules.reference.training:trainer"

    def fallback(self, features: ReferenceFeatures) -> ReferenceDecision:
        act = features.signal >= features.threshold
        return ReferenceDecision(
            score=1.0 if act else 0.0,
            act=act,
            explanation=f"rule: signal {'>=' if act else '<'} threshold",
        )

    def encode(self, features: ReferenceFeatures) -> list[float]:
        return [features.signal, features.threshold]

    def decode(self, features: ReferenceFeatures, output: Sequence[float]) -> ReferenceDecision:
        score = min(max(float(output[-1]), 0.0), 1.0)  # P(positive) is the last column
        return ReferenceDecision(
            score=score, act=score >= 0.5, explanation=f"model: P(act is right)={score:.2f}"
        )


module = ReferenceModule()
