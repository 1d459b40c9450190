"""The model daemon: retrain from outcomes, validate against the stable version, promote or reject.

One cycle per module: when enough new outcomes arrived (or the schedule says so, or there
is no model yet and the module ships a simulator), train a candidate on the older part of
the data, publish it under the `candidate` tag, and judge it on the newest part (held out):
it must load and pass every serving check (checksum, schema, outputs, latency budget) and
score at least as well as what serves now (the stable version, or the rule fallback when
there is none). Then `stable` moves to it; otherwise it stays a rejected candidate with the
reason. Every outcome of a cycle is an audit event and a metric.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy import Engine as DbEngine

from aiassist.modules import AnyModule, Features
from aiassist.registry.serving import ModelRejected, OnnxPredictor, load_checked
from aiassist.registry.store import Manifest, ModelRegistry, TrainingInfo
from aiassist.settings import Settings
from aiassist.store.audit import AuditLog
from aiassist.training.base import Dataset, Trainer, get_trainer
from aiassist.training.dataset import count_outcomes, load_dataset

__all__ = ["CycleResult", "DaemonMetrics", "ModelDaemon"]

log = logging.getLogger("aiassist.daemon")

Action = Literal["promoted", "rejected", "skipped", "failed"]


@dataclass
class CycleResult:
    module: str
    action: Action
    reason: str
    version: str | None = None
    candidate_quality: float | None = None
    baseline_quality: float | None = None
    baseline: str | None = None  # the stable version compared against, or "fallback"


class DaemonMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.cycles = Counter(
            "aiassist_daemon_cycles",
            "Training cycles by module and result.",
            ["module", "action"],
            registry=registry,
        )
        self.quality = Gauge(
            "aiassist_model_quality",
            "Held-out quality of the last candidate and of what it was compared with.",
            ["module", "which"],
            registry=registry,
        )


class ModelDaemon:
    def __init__(
        self,
        settings: Settings,
        registry: ModelRegistry,
        db: DbEngine,
        audit: AuditLog,
        modules: dict[str, AnyModule],
        metrics: DaemonMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.db = db
        self.audit = audit
        self.modules = modules
        self.metrics = metrics or DaemonMetrics(CollectorRegistry())

    # --- the loop ----------------------------------------------------------------------
    def run_forever(self, stop: threading.Event) -> None:
        log.info("model daemon watching %s", self.registry.root)
        while not stop.is_set():
            self.run_once(stop=stop)
            stop.wait(self.settings.daemon_poll_seconds)

    def run_once(
        self, *, now: float | None = None, stop: threading.Event | None = None
    ) -> list[CycleResult]:
        """One pass over the modules; a stop asked for ends it between two modules."""
        results = []
        for name in self.modules:
            if stop is not None and stop.is_set():
                break
            try:
                results.append(self.maybe_train(name, now=now))
            except Exception as exc:  # one module's failure must not stop the others
                log.exception("module %s: training cycle failed", name)
                results.append(
                    self._finish(CycleResult(name, "failed", f"{type(exc).__name__}: {exc}"))
                )
        return results

    def maybe_train(self, name: str, *, now: float | None = None) -> CycleResult:
        """Train if the module is due: enough new outcomes, the schedule, or no model yet."""
        module = self.modules[name]
        trainer = get_trainer(module)
        if trainer is None:
            return CycleResult(name, "skipped", "the module has no trainer")
        now = time.time() if now is None else now
        state = self._state(name)
        new = count_outcomes(self.db, name, after_id=state.get("last_outcome_id", 0))
        due_by_schedule = (
            now - state.get("last_trained_at", 0) >= self.settings.retrain_interval_seconds
        )
        if self.registry.resolve(name, "stable") is None and not self.registry.versions(name):
            return self.train(
                name,
                synthetic=True,
                rows=self.settings.bootstrap_rows,
                reason="bootstrap: no model yet",
            )
        if new >= self.settings.retrain_min_outcomes or (due_by_schedule and new > 0):
            return self.train(name, reason=f"{new} new outcomes")
        waiting = f"{new} new outcomes, waiting for {self.settings.retrain_min_outcomes}"
        return self._finish(CycleResult(name, "skipped", waiting))

    # --- one cycle ---------------------------------------------------------------------
    def train(
        self,
        name: str,
        *,
        synthetic: bool = False,
        reason: str = "",
        seed: int = 0,
        rows: int = 20_000,
    ) -> CycleResult:
        """Train a candidate now, judge it on held-out data, promote or reject it."""
        module = self.modules[name]
        trainer = get_trainer(module)
        if trainer is None:
            return CycleResult(name, "skipped", "the module has no trainer")
        data = (
            trainer.synthetic(rows, seed) if synthetic else load_dataset(self.db, module, trainer)
        )
        if len(data) < self.settings.min_train_rows:
            return self._finish(
                CycleResult(
                    name, "skipped", f"{len(data)} examples, need {self.settings.min_train_rows}"
                )
            )
        train, holdout = data.split(self.settings.holdout_fraction)
        exported = trainer.fit(train, seed)
        manifest = exported.publish(self.registry, module, _training_info(train, holdout, seed))
        self.registry.set_tag(name, "candidate", manifest.version, actor="daemon", reason=reason)
        self.audit.append(
            "model.trained",
            f"{name}/{manifest.version}",
            actor="daemon",
            data={"reason": reason, "rows": len(train), "source": data.source},
        )
        result = self.judge(module, trainer, manifest, holdout)
        seen = {} if data.last_outcome_id is None else {"last_outcome_id": data.last_outcome_id}
        self._save_state(name, **seen)
        return self._finish(result)

    def judge(
        self, module: AnyModule, trainer: Trainer, manifest: Manifest, holdout: Dataset
    ) -> CycleResult:
        name, version = module.name, manifest.version
        budget = self.settings.model_latency_budget_us
        try:
            candidate = load_checked(self.registry, module, version, latency_budget_us=budget)
        except ModelRejected as exc:
            return self._reject(CycleResult(name, "rejected", str(exc), version))
        stable_version = self.registry.resolve(name, "stable")
        stable: OnnxPredictor | None = None
        if stable_version is not None:
            try:
                stable = load_checked(self.registry, module, stable_version, latency_budget_us=1e12)
            except ModelRejected as exc:
                log.warning(
                    "module %s: stable %s cannot be loaded (%s); comparing with the fallback",
                    name,
                    stable_version,
                    exc,
                )
        y = holdout.y
        q_candidate = trainer.quality(y, _scores(module, trainer, holdout.features, candidate))
        q_baseline = trainer.quality(y, _scores(module, trainer, holdout.features, stable))
        baseline = stable.version if stable is not None else "fallback"
        result = CycleResult(name, "promoted", "", version, q_candidate, q_baseline, baseline)
        self.metrics.quality.labels(name, "candidate").set(q_candidate)
        self.metrics.quality.labels(name, "baseline").set(q_baseline)
        # A stable model is replaced only by a better one; the fallback by one no worse.
        better = q_candidate > q_baseline if stable is not None else q_candidate >= q_baseline
        on = f"{baseline}'s {q_baseline:.4f} on {len(holdout)} examples"
        if not better:
            verdict = "below" if q_candidate < q_baseline else "no better than"
            result.action = "rejected"
            result.reason = f"held-out quality {q_candidate:.4f} is {verdict} {on}"
            return self._reject(result)
        result.reason = f"held-out quality {q_candidate:.4f} {'>' if stable else '>='} {on}"
        self.registry.set_tag(name, "stable", version, actor="daemon", reason=result.reason)
        self.audit.append(
            "model.promoted", f"{name}/{version}", actor="daemon", data=asdict(result)
        )
        return result

    # --- helpers -----------------------------------------------------------------------
    def _reject(self, result: CycleResult) -> CycleResult:
        assert result.version is not None
        self.registry.reject(result.module, result.version, result.reason, asdict(result))
        self.audit.append(
            "model.rejected",
            f"{result.module}/{result.version}",
            actor="daemon",
            data=asdict(result),
        )
        log.warning(
            "module %s: candidate %s rejected: %s", result.module, result.version, result.reason
        )
        return result

    def _finish(self, result: CycleResult) -> CycleResult:
        self.metrics.cycles.labels(result.module, result.action).inc()
        if result.action == "promoted":
            log.info("module %s: promoted %s (%s)", result.module, result.version, result.reason)
        return result

    def _state_path(self, name: str) -> Path:
        return self.registry.root / name / "daemon.json"

    def _state(self, name: str) -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads(self._state_path(name).read_text())
        except FileNotFoundError:
            return {}
        return state

    def _save_state(self, name: str, **changes: Any) -> None:
        path = self._state_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = self._state(name) | changes | {"last_trained_at": time.time()}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(path)


def _scores(
    module: AnyModule, trainer: Trainer, features: list[Features], predictor: OnnxPredictor | None
) -> np.ndarray:
    """Scores of whatever answers: the model's decisions, or the rule's when there is none."""
    if predictor is None:
        decisions = [module.fallback(f) for f in features]
    else:
        outputs = predictor.predict([module.encode(f) for f in features])
        decisions = [module.decode(f, out) for f, out in zip(features, outputs, strict=True)]
    return np.asarray([trainer.score(d) for d in decisions], dtype=np.float64)


def _training_info(train: Dataset, holdout: Dataset, seed: int) -> TrainingInfo:
    times = [t for t in train.at if t is not None]
    return TrainingInfo(
        rows=len(train),
        holdout_rows=len(holdout),
        seed=seed,
        source=train.source,
        window_start=min(times) if times else None,
        window_end=max(times) if times else None,
    )
