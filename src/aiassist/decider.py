"""The decider runs modules in this process: model when one is loaded, fallback otherwise.

Both the SDK's local mode and the inference service decide through a `Decider` (named
so, not `Engine`, to stay apart from SQLAlchemy's `Engine` that the same code holds). A model
that raises never surfaces: the fallback answers and the reason is counted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import Counter
from pydantic import BaseModel

from aiassist.metrics import Metrics, default_metrics
from aiassist.modules import AnyModule, Decision, Features, available_modules, get_module

__all__ = ["Decider", "Predictor"]

log = logging.getLogger("aiassist.decider")

#: Called with (module name, features, decision) for every decision, e.g. to store it.
DecisionHook = Callable[[str, Features, Decision], None]


class Predictor(Protocol):
    """A loaded model: a batch of input rows in, a batch of output rows out."""

    @property
    def version(self) -> str: ...

    def predict(self, rows: Sequence[Sequence[float]]) -> Iterable[Sequence[float]]: ...


class Decider:
    """Decides for a set of modules. Thread-safe: predictors are swapped by reference."""

    def __init__(
        self,
        modules: Iterable[AnyModule] | None = None,
        *,
        metrics: Metrics | None = None,
        on_decision: DecisionHook | None = None,
    ) -> None:
        chosen = available_modules().values() if modules is None else modules
        self.modules: dict[str, AnyModule] = {m.name: m for m in chosen}
        self.metrics = metrics or default_metrics()
        self.on_decision = on_decision
        self._predictors: dict[str, Predictor] = {}
        self._children: dict[tuple[Counter, tuple[str, ...]], Counter] = {}

    def module(self, name: str) -> AnyModule:
        if name in self.modules:
            return self.modules[name]
        get_module(name)  # raises UnknownModuleError, listing what exists
        raise LookupError(f"module {name!r} is not enabled in this decider")

    # --- models ------------------------------------------------------------------------
    def load(self, name: str, predictor: Predictor | None) -> None:
        """Serve `predictor` for module `name` from the next decision on (None: fallback)."""
        self.module(name)
        if predictor is None:
            self._predictors.pop(name, None)
        else:
            self._predictors[name] = predictor

    def predictor(self, name: str) -> Predictor | None:
        """The model serving module `name` now (None: the fallback answers)."""
        return self._predictors.get(name)

    def served_version(self, name: str) -> str | None:
        predictor = self.predictor(name)
        return predictor.version if predictor else None

    # --- deciding ----------------------------------------------------------------------
    def features(self, name: str, features: Features | Mapping[str, Any]) -> Features:
        """Validate raw features for module `name` (raises pydantic.ValidationError)."""
        cls: type[Features] = self.module(name).Features
        if isinstance(features, cls):
            return features
        if isinstance(features, BaseModel):
            features = features.model_dump()
        return cls.model_validate(features)

    def decide(
        self, name: str, features: Features | Mapping[str, Any], *, record: bool = True
    ) -> Decision:
        return self.decide_many(name, [features], record=record)[0]

    def decide_many(
        self, name: str, batch: Sequence[Features | Mapping[str, Any]], *, record: bool = True
    ) -> list[Decision]:
        """Decide for each item; `record` false keeps the decisions from `on_decision`."""
        module = self.module(name)
        items = [self.features(name, f) for f in batch]
        if not items:
            return []
        predictor = self._predictors.get(name)
        decisions = None if predictor is None else self._from_model(module, predictor, items)
        if decisions is None:
            reason = "no_model" if predictor is None else "model_error"
            decisions = [module.fallback(f) for f in items]
            for d in decisions:
                d.fallback_reason = reason
            self._count(self.metrics.fallbacks, name, reason, n=len(items))
        self._count(self.metrics.decisions, name, decisions[0].source, n=len(items))
        if record and self.on_decision is not None:
            for f, d in zip(items, decisions, strict=True):
                self.on_decision(name, f, d)
        return decisions

    def _from_model(
        self, module: AnyModule, predictor: Predictor, items: list[Features]
    ) -> list[Decision] | None:
        try:
            outputs = predictor.predict([module.encode(f) for f in items])
            decisions = [module.decode(f, out) for f, out in zip(items, outputs, strict=True)]
        except Exception:
            log.exception("module %s: model %s failed", module.name, predictor.version)
            return None
        for d in decisions:
            d.source = "model"
            d.model_version = predictor.version
        return decisions

    def _count(self, counter: Counter, *labels: str, n: int) -> None:
        """Increment a labelled counter; children are cached (labels() costs microseconds)."""
        key = (counter, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = counter.labels(*labels)
        child.inc(n)
