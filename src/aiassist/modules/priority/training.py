"""Training for `priority`: a LightGBM classifier of P(miss the deadline), exported to ONNX.

The label is whether the task missed its deadline (`deadline_met` false). `synthetic` runs
the module's simulator under first come, first served on a spread of worlds (load, bursts,
weather, pool size all drawn from the seed), so the bootstrap model learns the risk a task
runs when nothing puts it ahead, which is what its priority should act on.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aiassist.modules import Decision
from aiassist.modules.priority import PriorityFeatures, module
from aiassist.modules.priority.simulator import GeneratorSpec, generate, training_examples
from aiassist.training.base import Dataset, ExportedModel, brier_quality, synthetic_dataset
from aiassist.training.export import fit_lightgbm_classifier

__all__ = ["PriorityTrainer", "trainer"]

_TASKS_PER_WORLD = 2500


class PriorityTrainer:
    def target(self, outcome: dict[str, Any]) -> float:
        return 1.0 if outcome.get("deadline_met") is False else 0.0

    def fit(self, data: Dataset, seed: int) -> ExportedModel:
        return fit_lightgbm_classifier(data, seed)

    def score(self, decision: Decision) -> float:
        return float(decision.p_miss)  # type: ignore[attr-defined]

    def quality(self, y: np.ndarray, scores: np.ndarray) -> float:
        return brier_quality(y, scores)  # calibrated probabilities, not only the right side

    def synthetic(self, n: int, seed: int) -> Dataset:
        rng = np.random.default_rng(seed)

        def world() -> tuple[list[PriorityFeatures], list[float]]:
            spec = GeneratorSpec(
                tasks=_TASKS_PER_WORLD,
                workers=int(rng.choice([2, 4, 8, 16, 32])),
                load=float(rng.uniform(0.5, 1.1)),
                burstiness=float(rng.uniform(1.0, 6.0)),
                anomaly_share=float(rng.uniform(0.0, 0.5)),
                seed=int(rng.integers(2**32)),
            )
            return training_examples(generate(spec))

        return synthetic_dataset(module, n, world)


trainer = PriorityTrainer()
