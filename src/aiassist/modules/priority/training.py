"""Training for `priority`: a LightGBM classifier of P(miss the deadline), exported to ONNX.

The label is whether the task missed its deadline (`deadline_met` false). `synthetic` runs
the module's simulator under first come, first served on a spread of worlds (load, bursts,
weather, pool size all drawn from the seed), so the bootstrap model learns the risk a task
runs when nothing puts it ahead, which is what its priority should act on.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aiassist.modules import Decision, Features
from aiassist.modules.priority import module
from aiassist.modules.priority.simulator import GeneratorSpec, generate, training_examples
from aiassist.training.base import Dataset, ExportedModel
from aiassist.training.export import check_parity, lightgbm_to_onnx

__all__ = ["PriorityTrainer", "trainer"]

_TASKS_PER_WORLD = 2500


class PriorityTrainer:
    def target(self, outcome: dict[str, Any]) -> float:
        return 1.0 if outcome.get("deadline_met") is False else 0.0

    def fit(self, data: Dataset, seed: int) -> ExportedModel:
        from lightgbm import LGBMClassifier

        model = LGBMClassifier(
            n_estimators=120,
            num_leaves=15,
            learning_rate=0.08,
            min_child_samples=40,
            subsample=0.8,
            subsample_freq=1,
            colsample_bytree=0.9,
            random_state=seed,
            deterministic=True,
            force_row_wise=True,
            n_jobs=1,
            verbose=-1,
        )
        model.fit(data.X, data.y.astype(int))
        exported = lightgbm_to_onnx(model, data.X.shape[1])
        sample = data.X[:512]
        check_parity(exported, sample, np.asarray(model.predict_proba(sample)))
        return exported

    def score(self, decision: Decision) -> float:
        return float(decision.p_miss)  # type: ignore[attr-defined]

    def quality(self, y: np.ndarray, scores: np.ndarray) -> float:
        """1 - Brier score: rewards calibrated probabilities, not only the right side."""
        return float(1.0 - np.mean((np.asarray(scores) - y) ** 2))

    def synthetic(self, n: int, seed: int) -> Dataset:
        rng = np.random.default_rng(seed)
        features: list[Features] = []
        labels: list[float] = []
        while len(features) < n:
            spec = GeneratorSpec(
                tasks=_TASKS_PER_WORLD,
                workers=int(rng.choice([2, 4, 8, 16, 32])),
                load=float(rng.uniform(0.5, 1.1)),
                burstiness=float(rng.uniform(1.0, 6.0)),
                anomaly_share=float(rng.uniform(0.0, 0.5)),
                seed=int(rng.integers(2**32)),
            )
            f, y = training_examples(generate(spec))
            features.extend(f)
            labels.extend(y)
        return Dataset.build(module, features[:n], labels[:n], source="synthetic")


trainer = PriorityTrainer()
