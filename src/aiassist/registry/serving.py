"""Serving models: ONNX Runtime sessions, checked before use, swapped in without a pause.

Imports onnxruntime and numpy only. A version is served only after it passed every check
(checksum, schema against the module, valid outputs on the module's example, latency within
budget); a version that fails is refused with the reason and the current one keeps serving.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from aiassist.decider import Decider
from aiassist.modules import AnyModule
from aiassist.registry.store import MODEL_FILE, Manifest, ModelRegistry, RegistryError, sha256_file
from aiassist.settings import Settings

__all__ = ["ModelRejected", "ModelWatcher", "OnnxPredictor", "load_checked"]

log = logging.getLogger("aiassist.models")


class ModelRejected(Exception):
    """A version failed a check; `reason` is short (a metric label), the message says more."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}")


def _session_options() -> ort.SessionOptions:
    """Single-row CPU inference beside a web server: one thread, no spinning."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


class OnnxPredictor:
    """One model version in an ONNX Runtime session (thread-safe: `run` may be called
    concurrently)."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.manifest = manifest
        self.version = manifest.version
        self._session = ort.InferenceSession(
            str(path), sess_options=_session_options(), providers=["CPUExecutionProvider"]
        )
        self._input = manifest.input_name
        self._outputs = [manifest.output_name]

    def predict(self, rows: Sequence[Sequence[float]]) -> np.ndarray:
        batch = np.asarray(rows, dtype=np.float32)
        out: np.ndarray = self._session.run(self._outputs, {self._input: batch})[0]
        return out.reshape(len(batch), -1)

    @property
    def session(self) -> ort.InferenceSession:
        return self._session


def load_checked(
    registry: ModelRegistry, module: AnyModule, version: str, *, latency_budget_us: float
) -> OnnxPredictor:
    """Load `version` of `module` and run every check; raise ModelRejected on any failure."""
    try:
        manifest = registry.manifest(module.name, version)
        path = registry.version_dir(module.name, version) / MODEL_FILE
    except RegistryError as exc:
        raise ModelRejected("unreadable", str(exc)) from exc
    if manifest.module != module.name:
        raise ModelRejected("schema", f"manifest is for module {manifest.module!r}")
    actual = sha256_file(path) if path.exists() else "missing"
    if actual != manifest.sha256:
        raise ModelRejected("checksum", f"model.onnx does not match its manifest ({actual[:12]})")
    expected = module.feature_names()
    if manifest.feature_names != expected:
        raise ModelRejected(
            "schema", f"features {manifest.feature_names} do not match the module's {expected}"
        )
    try:
        predictor = OnnxPredictor(path, manifest)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelRejected("invalid_onnx", str(exc).splitlines()[0][:300]) from exc
    _check_io(predictor, manifest, len(expected))
    _check_outputs(predictor, module)
    _check_latency(predictor, module, latency_budget_us)
    return predictor


def _check_io(predictor: OnnxPredictor, manifest: Manifest, n_features: int) -> None:
    inputs = predictor.session.get_inputs()
    if len(inputs) != 1 or inputs[0].name != manifest.input_name:
        names = [i.name for i in inputs]
        raise ModelRejected("schema", f"inputs {names}, manifest says [{manifest.input_name!r}]")
    shape = inputs[0].shape
    width = shape[-1] if shape else None
    if inputs[0].type != "tensor(float)" or len(shape) != 2 or width not in (n_features, None):
        raise ModelRejected(
            "schema", f"input {inputs[0].type} {shape}; the module needs float [N, {n_features}]"
        )
    if manifest.output_name not in {o.name for o in predictor.session.get_outputs()}:
        raise ModelRejected("schema", f"no output named {manifest.output_name!r}")


def _sample_rows(module: AnyModule) -> list[list[float]]:
    features = module.Features.model_validate(module.example)
    return [module.encode(features)] * 8


def _check_outputs(predictor: OnnxPredictor, module: AnyModule) -> None:
    rows = _sample_rows(module)
    try:
        out = predictor.predict(rows)
    except Exception as exc:
        raise ModelRejected("runtime", str(exc).splitlines()[0][:300]) from exc
    if out.shape != (len(rows), predictor.manifest.n_outputs):
        raise ModelRejected(
            "schema",
            f"output shape {out.shape}, expected ({len(rows)}, {predictor.manifest.n_outputs})",
        )
    if not all(math.isfinite(v) for v in out.ravel().tolist()):
        raise ModelRejected("output", "the model produced NaN or infinite values")
    features = module.Features.model_validate(module.example)
    try:
        module.decode(features, out[0])
    except Exception as exc:
        raise ModelRejected("output", f"the module cannot use the output: {exc}") from exc


#: Rounds of the latency check; a version is refused only if every round is over budget.
LATENCY_ROUNDS = 3


def _check_latency(predictor: OnnxPredictor, module: AnyModule, budget_us: float) -> None:
    """Refuse a model whose single-row median latency is over budget in every round.

    The check runs beside live traffic during a swap, so the measure has to be the model's
    own cost, not the service's contention: the median (a slow model is slow on every
    call; a busy moment only stretches the tail), in this thread's CPU time (not the time
    spent waiting for the GIL), in the best of a few rounds.
    """
    row = _sample_rows(module)[:1]
    for _ in range(20):  # warm-up: first runs allocate
        predictor.predict(row)
    best = math.inf
    for _ in range(LATENCY_ROUNDS):
        timings = []
        for _ in range(101):
            start = time.thread_time_ns()
            predictor.predict(row)
            timings.append((time.thread_time_ns() - start) / 1000)
        best = min(best, sorted(timings)[len(timings) // 2])
        if best <= budget_us:
            return
    raise ModelRejected(
        "latency",
        f"median {best:.0f} µs over the budget of {budget_us:.0f} µs "
        f"(best of {LATENCY_ROUNDS} rounds)",
    )


#: Refusal reasons that can pass: a busy moment (latency), a volume hiccup (unreadable).
_PASSING = frozenset({"latency", "unreadable"})


@dataclass
class ServedModel:
    version: str | None = None
    error: str | None = None  # why the last version the tag named was refused
    refused: str | None = None
    retry_at: float = math.inf  # time.monotonic() after which `refused` is checked again


@dataclass
class ModelWatcher:
    """Follows the `stable` tag of every module and hot-swaps the decider's predictor.

    Loading and checking happen on this thread; the decider's reference is replaced only
    once the new session is ready, so requests never wait and never fail during a swap.
    """

    registry: ModelRegistry
    decider: Decider
    latency_budget_us: float
    poll_seconds: float = 1.0
    tag: str = "stable"
    retry_seconds: float = 60.0  # how soon a version refused for a passing reason is retried
    on_event: Callable[[str, str, dict[str, Any]], None] | None = None  # audit, metrics
    served: dict[str, ServedModel] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def for_settings(
        cls,
        settings: Settings,
        decider: Decider,
        on_event: Callable[[str, str, dict[str, Any]], None] | None = None,
    ) -> ModelWatcher:
        """A watcher of the volume, latency budget and poll interval that `settings` name."""
        return cls(
            ModelRegistry(settings.resolved_models_dir),
            decider,
            latency_budget_us=settings.model_latency_budget_us,
            poll_seconds=settings.model_poll_seconds,
            on_event=on_event,
        )

    def start(self) -> None:
        self.sync()
        self._watch()

    def after_fork(self) -> None:
        """In a forked child: the watching thread stayed in the parent; watch from here."""
        self._stop, self._lock = threading.Event(), threading.Lock()
        self._watch()

    def _watch(self) -> None:
        self._thread = threading.Thread(target=self._run, name="aiassist-models", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.sync()
            except Exception:  # keep watching whatever one pass hit
                log.exception("model watcher pass failed")

    def sync(self, *, retry_refused: bool = False) -> None:
        """One pass: load what the tag names now, for every module whose tags changed.

        `retry_refused`: check a version refused earlier again (an operator moved the tag).
        """
        with self._lock:
            for name, module in self.decider.modules.items():
                self._follow(name, module, retry_refused)

    def _follow(self, name: str, module: AnyModule, retry_refused: bool = False) -> None:
        served = self.served.setdefault(name, ServedModel())
        wanted = self.registry.resolve(name, self.tag)
        if wanted == served.version:
            served.error, served.refused = None, None  # the tag names what serves again
            served.retry_at = math.inf
            return
        if (
            wanted is not None
            and wanted == served.refused
            and not retry_refused
            and time.monotonic() < served.retry_at
        ):
            return
        if wanted is None:
            self.decider.load(name, None)
            self._event("model.unloaded", name, {"version": served.version})
            served.version, served.error, served.refused = None, None, None
            return
        try:
            predictor = load_checked(
                self.registry, module, wanted, latency_budget_us=self.latency_budget_us
            )
        except ModelRejected as exc:
            log.error(
                "module %s: version %s refused, %s keeps serving: %s",
                name,
                wanted,
                served.version or "the fallback",
                exc,
            )
            served.error, served.refused = str(exc), wanted
            passing = exc.reason in _PASSING  # worth another try later; the others are final
            served.retry_at = time.monotonic() + self.retry_seconds if passing else math.inf
            self._event(
                "model.refused", name, {"version": wanted, "reason": exc.reason, "detail": str(exc)}
            )
            return
        previous = served.version
        self.decider.load(name, predictor)
        served.version, served.error, served.refused = wanted, None, None
        served.retry_at = math.inf
        log.info("module %s: now serving %s (was %s)", name, wanted, previous or "fallback")
        self._event("model.swapped", name, {"version": wanted, "previous": previous})

    def _event(self, kind: str, module: str, data: dict[str, Any]) -> None:
        if self.on_event is not None:
            try:
                self.on_event(kind, module, data)
            except Exception:
                log.exception("model event hook failed")
