"""Training for `retry`: a LightGBM classifier of P(a retry after the wait succeeds),
exported to ONNX with a parity check.

The label is `succeeded` of the retry's outcome. `synthetic` runs the module's simulator
(`simulator.py`) over a spread of worlds (traffic, latency, timeouts, deadlines, episode
frequency, time of day, all drawn from the seed) under exploring clients that retry a share of the
failures (20-90%) after random waits, so the bootstrap model sees every kind of failure retried
early and late; the daemon then retrains it from the outcomes real retries record.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aiassist.modules import Decision, Features
from aiassist.modules.retry import module
from aiassist.modules.retry.simulator import WorldSpec, generate, training_examples
from aiassist.training.base import Dataset, ExportedModel, brier_quality
from aiassist.training.export import fit_lightgbm_classifier

__all__ = ["RetryTrainer", "trainer"]

_WORLD_S = 300.0  # virtual seconds per simulated world
_PER_WORLD = 1000  # examples kept from one world


class RetryTrainer:
    def target(self, outcome: dict[str, Any]) -> float:
        return 1.0 if outcome.get("succeeded") else 0.0

    def fit(self, data: Dataset, seed: int) -> ExportedModel:
        return fit_lightgbm_classifier(
            data, seed, n_estimators=150, num_leaves=31, min_child_samples=50
        )

    def score(self, decision: Decision) -> float:
        return float(decision.p_recovery)  # type: ignore[attr-defined]

    def quality(self, y: np.ndarray, scores: np.ndarray) -> float:
        return brier_quality(y, scores)  # calibrated probabilities, not only the right side

    def synthetic(self, n: int, seed: int) -> Dataset:
        rng = np.random.default_rng(seed)
        features: list[Features] = []
        labels: list[float] = []
        while len(features) < n:
            spec = WorldSpec(
                duration_s=_WORLD_S,
                rate_per_s=float(np.exp(rng.uniform(np.log(2.0), np.log(40.0)))),
                episodes_per_hour=float(rng.uniform(40.0, 120.0)),
                latency_ms=float(np.exp(rng.uniform(np.log(10.0), np.log(200.0)))),
                timeout_s=float(rng.uniform(0.5, 3.0)),
                deadline_s=float(rng.uniform(5.0, 30.0)),
                start_hour=float(rng.uniform(0.0, 24.0)),
                seed=int(rng.integers(2**32)),
            )
            # Many short worlds, each capped: a model must not learn one world's timeline.
            # Clients that retry more or less often: the downstream's stats look different
            # under a cautious policy than under an eager one, and the model meets both.
            share = float(rng.uniform(0.2, 0.9))
            examples = training_examples(generate(spec), int(rng.integers(2**32)), share)
            for f, y in examples[:_PER_WORLD]:
                # Time of day tells nothing in the simulator, yet in a five-minute world it
                # would name the world (and let a model memorise its episodes): drawn anew.
                hour = float(rng.uniform(0.0, 24.0))
                features.append(f.model_copy(update={"hour_of_day": hour}))
                labels.append(y)
        return Dataset.build(module, features[:n], labels[:n], source="synthetic")


trainer = RetryTrainer()
