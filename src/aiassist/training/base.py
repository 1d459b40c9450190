"""What a module provides to be trained: a `Trainer`, and the data it is trained on."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import numpy as np

from aiassist.modules import AnyModule, Decision, Features
from aiassist.modules.base import import_attribute
from aiassist.registry.store import Manifest, ModelRegistry, TrainingInfo

__all__ = [
    "Dataset",
    "ExportedModel",
    "Trainer",
    "brier_quality",
    "get_trainer",
    "synthetic_dataset",
]


@dataclass
class Dataset:
    """Examples for one module: validated features, the model's input rows and the labels."""

    features: list[Features]
    X: np.ndarray
    y: np.ndarray
    at: list[datetime | None] = field(default_factory=list)
    source: str = "outcomes"
    last_outcome_id: int | None = None

    def __len__(self) -> int:
        return len(self.features)

    def split(self, holdout_fraction: float) -> tuple[Dataset, Dataset]:
        """Oldest part to train on, newest part held out (the data is in time order)."""
        cut = len(self) - max(1, round(len(self) * holdout_fraction))
        return self._slice(0, cut), self._slice(cut, len(self))

    def _slice(self, start: int, stop: int) -> Dataset:
        return Dataset(
            self.features[start:stop],
            self.X[start:stop],
            self.y[start:stop],
            self.at[start:stop],
            self.source,
            self.last_outcome_id,
        )

    @classmethod
    def build(
        cls, module: AnyModule, features: Sequence[Features], y: Sequence[float], **kwargs: Any
    ) -> Dataset:
        X = np.asarray([module.encode(f) for f in features], dtype=np.float32)
        X = X.reshape(len(features), len(module.feature_names()))
        return cls(list(features), X, np.asarray(y, dtype=np.float64), **kwargs)


@dataclass
class ExportedModel:
    """A trained model in ONNX, with what the registry's manifest needs to describe it."""

    onnx: bytes
    input_name: str
    output_name: str
    n_outputs: int
    framework: str
    metrics: dict[str, float] = field(default_factory=dict)

    def publish(
        self, registry: ModelRegistry, module: AnyModule, training: TrainingInfo | None = None
    ) -> Manifest:
        """Write this model as the next version of `module` in `registry`."""
        return registry.publish(
            module.name,
            self.onnx,
            feature_names=module.feature_names(),
            input_name=self.input_name,
            output_name=self.output_name,
            n_outputs=self.n_outputs,
            framework=self.framework,
            metrics=self.metrics,
            training=training,
        )


class Trainer(Protocol):
    """How one module learns. Quality is higher-is-better and compares any two answerers
    (a model version, another version, the rule fallback) through their decisions."""

    def target(self, outcome: dict[str, Any]) -> float:
        """The label a stored outcome gives."""
        ...

    def fit(self, data: Dataset, seed: int) -> ExportedModel: ...

    def score(self, decision: Decision) -> float:
        """The decision's probability-like score, comparable with the label."""
        ...

    def quality(self, y: np.ndarray, scores: np.ndarray) -> float: ...

    def synthetic(self, n: int, seed: int) -> Dataset:
        """Generated examples so a new install starts with a model (the module's simulator)."""
        ...


def synthetic_dataset(
    module: AnyModule, n: int, world: Callable[[], tuple[Sequence[Features], Sequence[float]]]
) -> Dataset:
    """A trainer's `synthetic` data: the first `n` examples of the worlds `world` draws, one
    after another."""
    features: list[Features] = []
    labels: list[float] = []
    while len(features) < n:
        f, y = world()
        features.extend(f)
        labels.extend(y)
    return Dataset.build(module, features[:n], labels[:n], source="synthetic")


def brier_quality(y: np.ndarray, scores: np.ndarray) -> float:
    """1 - Brier score: rewards calibrated probabilities, not only the right side."""
    return float(1.0 - np.mean((np.asarray(scores) - y) ** 2))


def get_trainer(module: AnyModule) -> Trainer | None:
    if module.trainer is None:
        return None
    trainer: Trainer = import_attribute(module.trainer)
    return trainer
