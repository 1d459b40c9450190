"""Training for `reference`: logistic regression (scikit-learn), exported with skl2onnx.

The simulator draws signals and thresholds and labels acting right with a probability that
rises smoothly with signal - threshold; a calibrated model beats the hard rule there.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aiassist.modules import Decision
from aiassist.modules.reference import ReferenceFeatures, module
from aiassist.training.base import Dataset, ExportedModel, brier_quality
from aiassist.training.export import check_parity, sklearn_to_onnx


class ReferenceTrainer:
    def target(self, outcome: dict[str, Any]) -> float:
        return 1.0 if outcome["should_have_acted"] else 0.0

    def fit(self, data: Dataset, seed: int) -> ExportedModel:
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=10.0, random_state=seed, max_iter=1000)
        model.fit(data.X, data.y.astype(int))
        exported = sklearn_to_onnx(model, data.X.shape[1])
        sample = data.X[:512]
        check_parity(exported, sample, model.predict_proba(sample))
        return exported

    def score(self, decision: Decision) -> float:
        return float(decision.score)  # type: ignore[attr-defined]

    def quality(self, y: np.ndarray, scores: np.ndarray) -> float:
        return brier_quality(y, scores)  # calibrated probabilities, not only the right side

    def synthetic(self, n: int, seed: int) -> Dataset:
        rng = np.random.default_rng(seed)
        signal = rng.normal(0.0, 1.0, n)
        threshold = rng.uniform(-0.5, 0.5, n)
        p_right = 1.0 / (1.0 + np.exp(-4.0 * (signal - threshold)))
        y = (rng.random(n) < p_right).astype(float)
        features = [
            ReferenceFeatures(signal=float(s), threshold=float(t))
            for s, t in zip(signal, threshold, strict=True)
        ]
        return Dataset.build(module, features, list(y), source="synthetic")


trainer = ReferenceTrainer()
