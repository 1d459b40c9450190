"""Training for `tickets`: a LightGBM regressor of log(1 + handling seconds), in ONNX.

The label is the outcome's `handled_s`. `synthetic` runs the module's simulator on a spread
of teams (size, load, with and without incident storms, all drawn from the seed), so the
bootstrap model learns what each kind of ticket costs from its source, tier, blast radius
and text reading; retraining on recorded outcomes learns what it costs this team.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from aiassist.modules import Decision
from aiassist.modules.tickets import TicketFeatures, module
from aiassist.modules.tickets.simulator import GeneratorSpec, generate, training_examples
from aiassist.training.base import Dataset, ExportedModel, brier_quality, synthetic_dataset
from aiassist.training.export import fit_lightgbm_regressor

__all__ = ["TicketsTrainer", "trainer"]

_TICKETS_PER_WORLD = 2000


class TicketsTrainer:
    def target(self, outcome: dict[str, Any]) -> float:
        return math.log1p(float(outcome["handled_s"]))

    def fit(self, data: Dataset, seed: int) -> ExportedModel:
        return fit_lightgbm_regressor(data, seed, n_estimators=150)

    def score(self, decision: Decision) -> float:
        return math.log1p(float(decision.est_handling_s))  # type: ignore[attr-defined]

    def quality(self, y: np.ndarray, scores: np.ndarray) -> float:
        return brier_quality(y, scores)  # 1 - mean squared error of log(1 + seconds)

    def synthetic(self, n: int, seed: int) -> Dataset:
        rng = np.random.default_rng(seed)

        def world() -> tuple[list[TicketFeatures], list[float]]:
            spec = GeneratorSpec(
                tickets=_TICKETS_PER_WORLD,
                agents=int(rng.choice([2, 4, 8, 16])),
                load=float(rng.uniform(0.5, 1.05)),
                storms=bool(rng.random() < 0.7),
                seed=int(rng.integers(2**32)),
            )
            return training_examples(generate(spec))

        return synthetic_dataset(module, n, world)


trainer = TicketsTrainer()
