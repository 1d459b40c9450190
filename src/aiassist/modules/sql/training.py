"""Training for `sql`: a LightGBM regressor of the latency an index leaves (after / before),
exported to ONNX.

The label is the measured ratio of an outcome: the served queries' mean latency after the
advised index was created over the mean before (from pg_stat_statements), at most 1.

`synthetic` is the bootstrap, a stated assumption rather than data: a query's latency is a
fixed part (parse, network, executor start-up, 0.02-0.3 ms) plus work that scales with the
planner's cost, and the planner's cost factor holds only in part (latency falls by the cost
factor to a power of 0.5-1: caches and estimates flatter it). Under it, fast queries gain
little whatever the cost factor says, which the rule's `1 / cost_factor` misses. Real
outcomes replace the assumption as they arrive.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aiassist.modules import Decision
from aiassist.modules.sql import IndexFeatures, module
from aiassist.training.base import Dataset, ExportedModel, brier_quality
from aiassist.training.export import fit_lightgbm_regressor

__all__ = ["SqlTrainer", "realized_ratio", "trainer"]


def realized_ratio(outcome: dict[str, Any]) -> float:
    before = float(outcome["latency_before_ms"])
    return min(float(outcome["latency_after_ms"]) / before, 1.0) if before > 0 else 1.0


class SqlTrainer:
    def target(self, outcome: dict[str, Any]) -> float:
        return realized_ratio(outcome)

    def fit(self, data: Dataset, seed: int) -> ExportedModel:
        return fit_lightgbm_regressor(data, seed, n_estimators=150, min_child_samples=20)

    def score(self, decision: Decision) -> float:
        return float(decision.expected_ratio)  # type: ignore[attr-defined]

    def quality(self, y: np.ndarray, scores: np.ndarray) -> float:
        return brier_quality(y, scores)  # 1 - mean squared error of the ratio

    def synthetic(self, n: int, seed: int) -> Dataset:
        rng = np.random.default_rng(seed)
        factor = np.exp(rng.uniform(np.log(1.1), np.log(1e5), n))
        mean_ms = np.exp(rng.uniform(np.log(0.05), np.log(5000.0), n))
        fixed_ms = np.minimum(rng.uniform(0.02, 0.3, n), mean_ms)
        holds = rng.uniform(0.5, 1.0, n)
        after = fixed_ms + (mean_ms - fixed_ms) / factor**holds
        noise = np.exp(rng.normal(0.0, 0.1, n))
        ratio = np.clip(after / mean_ms * noise, 0.0, 1.0)
        rows = np.exp(rng.uniform(np.log(1e3), np.log(1e9), n))
        features = [
            IndexFeatures(
                cost_factor=float(factor[i]),
                calls=int(rng.integers(1, 1_000_000)),
                mean_ms=float(mean_ms[i]),
                table_rows=float(rows[i]),
                table_writes=int(rng.integers(0, 10_000_000)),
                keys=int(rng.integers(1, 4)),
                table_indexes=int(rng.integers(0, 12)),
                size_mb=float(rows[i] * rng.uniform(16, 64) / 1e6),
            )
            for i in range(n)
        ]
        return Dataset.build(module, features, list(ratio), source="synthetic")


trainer = SqlTrainer()
