"""Training for `cache`: a LightGBM regressor of log(1 + reads over the horizon), exported
to ONNX.

`synthetic` replays generated traces (`simulator.py`: rhythms of the day and week, drift,
new keys, known events, flash crowds), drawing their shape from the seed, and takes every
key's features at random moments past the first week with the reads that followed as the
label. The daemon retrains from the outcomes the preloader records (a preloaded key's reads
within the horizon).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from aiassist.modules import Decision
from aiassist.modules.cache import CacheFeatures, module
from aiassist.modules.cache.history import feature_rows
from aiassist.modules.cache.simulator import Trace, TraceSpec, generate, window_sum
from aiassist.training.base import Dataset, ExportedModel, brier_quality
from aiassist.training.export import fit_lightgbm_regressor

__all__ = ["CacheTrainer", "examples", "features_at", "trainer"]

#: 2026-01-05, a Monday at 00:00 UTC: simulated traces start there.
TRACE_START_S = 1_767_571_200
_HORIZON_S = 7200


def features_at(trace: Trace, now: int, horizon_s: int = _HORIZON_S) -> list[CacheFeatures]:
    """Every key's features for the horizon starting at bucket `now` of a simulated trace."""
    horizon = horizon_s // trace.spec.bucket_s
    upcoming = {k for k, start in trace.events if now <= start < now + horizon}
    rows = feature_rows(
        trace.counts, now, bucket_s=trace.spec.bucket_s, horizon_s=horizon_s,
        start_s=TRACE_START_S, events=upcoming,
    )  # fmt: skip
    return [CacheFeatures(**row) for row in rows]


def examples(
    trace: Trace, moments: list[int], horizon_s: int = _HORIZON_S
) -> tuple[list[CacheFeatures], list[float]]:
    """Every key's features at each moment, and log(1 + its reads over the horizon)."""
    horizon = horizon_s // trace.spec.bucket_s
    features: list[CacheFeatures] = []
    labels: list[float] = []
    for now in moments:
        features.extend(features_at(trace, now, horizon_s))
        future = window_sum(trace.counts, now, now + horizon)
        labels.extend(math.log1p(float(v)) for v in future)
    return features, labels


class CacheTrainer:
    def target(self, outcome: dict[str, Any]) -> float:
        return math.log1p(float(outcome["reads"]))

    def fit(self, data: Dataset, seed: int) -> ExportedModel:
        return fit_lightgbm_regressor(data, seed, n_estimators=200, num_leaves=31)

    def score(self, decision: Decision) -> float:
        return math.log1p(float(decision.predicted_reads))  # type: ignore[attr-defined]

    def quality(self, y: np.ndarray, scores: np.ndarray) -> float:
        return brier_quality(y, scores)  # 1 - mean squared error of log(1 + reads)

    def synthetic(self, n: int, seed: int) -> Dataset:
        rng = np.random.default_rng(seed)
        features: list[CacheFeatures] = []
        labels: list[float] = []
        while len(features) < n:
            spec = TraceSpec(
                keys=int(rng.integers(200, 1500)),
                days=10,
                reads_per_bucket=float(np.exp(rng.uniform(np.log(300), np.log(5000)))),
                zipf=float(rng.uniform(0.6, 1.2)),
                drift=float(rng.uniform(0.05, 0.4)),
                events_per_day=int(rng.integers(0, 12)),
                flash_per_day=int(rng.integers(0, 6)),
                seed=int(rng.integers(2**32)),
            )
            trace = generate(spec)
            per_day = trace.buckets_per_day
            moments = sorted(rng.integers(7 * per_day, 10 * per_day - 12, size=3).tolist())
            f, y = examples(trace, moments)
            features.extend(f)
            labels.extend(y)
        order = rng.permutation(len(features))[:n]
        return Dataset.build(
            module, [features[i] for i in order], [labels[i] for i in order], source="synthetic"
        )


trainer = CacheTrainer()
