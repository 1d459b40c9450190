"""Training for `bot`: a LightGBM classifier of P(bot) on session features, exported to ONNX.

The label is the outcome's `is_bot`. `synthetic` bootstraps from the module's traffic
generator, each session seen part way through as well as at its end, since the middleware
scores sessions as they grow. To it are added *perturbed people*: people's sessions with
one or two features redrawn over their whole range, labelled bot. They teach the model
where people end in every direction, which is what catches a kind of bot it was never
shown (bench/bot.py holds each family out in turn to measure exactly that).

Quality is recall of bots at the operating point, a 1% false positive rate on people: the
daemon promotes a candidate only if it catches more bots than the stable model there, not
merely if it ranks better somewhere people never look.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from annotated_types import Ge, Le

from aiassist.modules import Decision, Features
from aiassist.modules.bot import BotFeatures, module
from aiassist.modules.bot.simulator import GeneratedSession, generate, snapshots
from aiassist.training.base import Dataset, ExportedModel
from aiassist.training.export import fit_lightgbm_classifier

__all__ = ["CUTS", "HUMAN_FPR", "BotTrainer", "examples", "perturbed", "recall_at_fpr", "trainer"]

#: The false positive rate on people that the operating point allows.
HUMAN_FPR = 0.01
#: Where a session is seen in training: part way through, and at its end.
CUTS = (0.1, 0.3, 0.6, 1.0)
#: Perturbed people added, as a share of the bot examples.
PERTURBED_SHARE = 0.5


def _bounds(name: str) -> tuple[float, float] | None:
    """A numeric feature's declared range; None for a flag."""
    field = BotFeatures.model_fields[name]
    if field.annotation is bool:
        return None
    low = next(m.ge for m in field.metadata if isinstance(m, Ge))
    high = next(m.le for m in field.metadata if isinstance(m, Le))
    return float(low), float(high)  # type: ignore[arg-type]


_BOUNDS = {name: _bounds(name) for name in BotFeatures.model_fields}


def perturbed(person: BotFeatures, rng: np.random.Generator) -> BotFeatures:
    """`person` with one or two features redrawn: a flag flipped, a share uniformly, a count
    or a duration log-uniformly over its range."""
    changed: dict[str, Any] = {}
    for name in rng.choice(list(_BOUNDS), size=int(rng.integers(1, 3)), replace=False):
        bounds = _BOUNDS[name]
        if bounds is None:
            changed[name] = not getattr(person, name)
            continue
        low, high = bounds
        value = (
            float(rng.uniform(low, high))
            if high <= 1
            else float(np.expm1(rng.uniform(np.log1p(low), np.log1p(high))))
        )
        annotation = BotFeatures.model_fields[name].annotation
        changed[name] = max(int(value), int(low)) if annotation is int else value
    return person.model_copy(update=changed)


def examples(
    sessions: list[GeneratedSession], seed: int, cuts: tuple[float, ...] = CUTS
) -> tuple[list[Features], list[float]]:
    """Snapshots of `sessions` with their labels, plus perturbed people, shuffled."""
    rng = np.random.default_rng(seed)
    features: list[Features] = []
    labels: list[float] = []
    people: list[BotFeatures] = []
    for session in sessions:
        for snapshot in snapshots(session, cuts):
            features.append(snapshot)
            labels.append(float(session.is_bot))
            if not session.is_bot:
                people.append(snapshot)
    if people:
        for i in rng.integers(0, len(people), int(sum(labels) * PERTURBED_SHARE)):
            features.append(perturbed(people[i], rng))
            labels.append(1.0)
    order = rng.permutation(len(features))
    return [features[i] for i in order], [labels[i] for i in order]


def recall_at_fpr(y: np.ndarray, scores: np.ndarray, fpr: float = HUMAN_FPR) -> float:
    """Share of bots scored above the threshold that flags at most `fpr` of people."""
    y, scores = np.asarray(y) > 0.5, np.asarray(scores, dtype=np.float64)
    people, bots = scores[~y], scores[y]
    if not len(bots):
        return 0.0
    if not len(people):
        return 1.0
    allowed = int(np.floor(fpr * len(people)))  # people who may score above the threshold
    threshold = np.sort(people)[::-1][allowed] if allowed < len(people) else -np.inf
    return float(np.mean(bots > threshold))


class BotTrainer:
    def target(self, outcome: dict[str, Any]) -> float:
        return 1.0 if outcome["is_bot"] else 0.0

    def fit(self, data: Dataset, seed: int) -> ExportedModel:
        return fit_lightgbm_classifier(data, seed)

    def score(self, decision: Decision) -> float:
        return float(decision.p_bot)  # type: ignore[attr-defined]

    def quality(self, y: np.ndarray, scores: np.ndarray) -> float:
        return recall_at_fpr(y, scores)

    def synthetic(self, n: int, seed: int) -> Dataset:
        sessions = generate(max(n // (len(CUTS) + 1), 1), seed)
        features, labels = examples(sessions, seed)
        return Dataset.build(module, features[:n], labels[:n], source="synthetic")


trainer = BotTrainer()
