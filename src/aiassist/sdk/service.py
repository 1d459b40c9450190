"""`AIAssistService`: the one object a backend talks to at its decision points.

Create it once at start-up (`AIAssistService.setup()` in a FastAPI lifespan, a Django
`AppConfig.ready`, or at import), then call `decide` wherever the backend decides. It runs
modules in this process (`mode="local"`) or asks the inference service (`mode="remote"`),
and whenever the service is slow, down or wrong, the module's fallback answers instead:
the backend never waits on the AI layer and never fails because of it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar, overload

from pydantic import BaseModel

from aiassist.decider import Decider
from aiassist.metrics import Metrics, default_metrics
from aiassist.modules import AnyModule, Decision, Features, Module, Outcome
from aiassist.sdk.remote import RemoteClient, ServiceUnavailable
from aiassist.settings import Settings, load_settings

if TYPE_CHECKING:
    from aiassist.registry.serving import ModelWatcher

__all__ = ["AIAssistService"]

log = logging.getLogger("aiassist.sdk")

RawFeatures = Features | Mapping[str, Any]
RawOutcome = Outcome | Mapping[str, Any]
ModuleRef = str | Module[Any, Any, Any]
D = TypeVar("D", bound=Decision)


def _name(module: ModuleRef) -> str:
    return module if isinstance(module, str) else module.name


class AIAssistService:
    """Process-wide decision service. Thread-safe, fork-safe, sync and async."""

    _instance: ClassVar[AIAssistService | None] = None
    _instance_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, settings: Settings | None = None, *, metrics: Metrics | None = None) -> None:
        self.settings = settings or load_settings()
        self.metrics = metrics or default_metrics()
        self.decider = Decider(metrics=self.metrics)
        self._remote = RemoteClient(self.settings) if self.settings.mode == "remote" else None
        self._store: _LocalStore | None = None
        self._models: ModelWatcher | None = None
        if self._remote is None:
            self._models = _follow_models(self.settings, self.decider, self.metrics)
            if self.settings.record_decisions:
                self._store = _LocalStore(self.settings, self.metrics)
                self.decider.on_decision = self._store.record_decision
        _live.add(self)

    # --- the singleton -----------------------------------------------------------------
    @classmethod
    def setup(cls, settings: Settings | None = None, **overrides: Any) -> Self:
        """Create the process-wide instance once; later calls return it unchanged."""
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = cls(settings or load_settings(**overrides))
            elif settings is not None or overrides:
                log.warning("AIAssistService.setup() called again: keeping the first settings")
            return cls._instance  # type: ignore[return-value]

    @classmethod
    def instance(cls) -> Self:
        """The process-wide instance, set up from the environment on first use."""
        return cls._instance or cls.setup()  # type: ignore[return-value]

    @classmethod
    def reset(cls) -> None:
        """Close and forget the process-wide instance (tests, reconfiguration)."""
        with cls._instance_lock:
            instance, cls._instance = cls._instance, None
        if instance is not None:
            instance.close()

    @classmethod
    async def areset(cls) -> None:
        """`reset` from async code: also closes this event loop's HTTP client."""
        with cls._instance_lock:
            instance, cls._instance = cls._instance, None
        if instance is not None:
            await instance.aclose()

    @property
    def breaker_state(self) -> str | None:
        """'closed', 'open' or 'half_open' in remote mode; None in local mode."""
        return None if self._remote is None else str(self._remote.breaker.state)

    # --- deciding ----------------------------------------------------------------------
    # Pass the module object instead of its name to get its own Decision type back:
    # `ai.decide(priority.module, {...}).priority` type-checks without a cast.
    @overload
    def decide(
        self,
        module: Module[Any, D, Any],
        features: RawFeatures,
        *,
        raise_errors: bool = False,
        record: bool = True,
    ) -> D: ...
    @overload
    def decide(
        self, module: str, features: RawFeatures, *, raise_errors: bool = False, record: bool = True
    ) -> Decision: ...
    def decide(
        self,
        module: ModuleRef,
        features: RawFeatures,
        *,
        raise_errors: bool = False,
        record: bool = True,
    ) -> Decision:
        """Decide once. Invalid features raise pydantic.ValidationError (a caller bug);
        service failures answer with the fallback unless `raise_errors`. With `record`
        false the decision is not stored: a point deciding on every request records only
        the decisions it will report outcomes for."""
        return self.decide_many(module, [features], raise_errors=raise_errors, record=record)[0]

    @overload
    def decide_many(
        self,
        module: Module[Any, D, Any],
        batch: Sequence[RawFeatures],
        *,
        raise_errors: bool = False,
        record: bool = True,
    ) -> list[D]: ...
    @overload
    def decide_many(
        self,
        module: str,
        batch: Sequence[RawFeatures],
        *,
        raise_errors: bool = False,
        record: bool = True,
    ) -> list[Decision]: ...
    def decide_many(
        self,
        module: ModuleRef,
        batch: Sequence[RawFeatures],
        *,
        raise_errors: bool = False,
        record: bool = True,
    ) -> list[Any]:  # list[D] for a module object, see the overloads
        name = _name(module)
        if self._remote is None:
            return self.decider.decide_many(name, batch, record=record)
        mod, items = self._validated(name, batch)
        try:
            decisions = self._remote.decide_many(mod, items, record=record)
        except ServiceUnavailable as exc:
            if raise_errors:
                raise
            return self._fall_back(mod, items, exc)
        self._count(mod, decisions)
        return decisions

    @overload
    async def adecide(
        self,
        module: Module[Any, D, Any],
        features: RawFeatures,
        *,
        raise_errors: bool = False,
        record: bool = True,
    ) -> D: ...
    @overload
    async def adecide(
        self, module: str, features: RawFeatures, *, raise_errors: bool = False, record: bool = True
    ) -> Decision: ...
    async def adecide(
        self,
        module: ModuleRef,
        features: RawFeatures,
        *,
        raise_errors: bool = False,
        record: bool = True,
    ) -> Decision:
        decided = await self.adecide_many(
            module, [features], raise_errors=raise_errors, record=record
        )
        return decided[0]

    @overload
    async def adecide_many(
        self,
        module: Module[Any, D, Any],
        batch: Sequence[RawFeatures],
        *,
        raise_errors: bool = False,
        record: bool = True,
    ) -> list[D]: ...
    @overload
    async def adecide_many(
        self,
        module: str,
        batch: Sequence[RawFeatures],
        *,
        raise_errors: bool = False,
        record: bool = True,
    ) -> list[Decision]: ...
    async def adecide_many(
        self,
        module: ModuleRef,
        batch: Sequence[RawFeatures],
        *,
        raise_errors: bool = False,
        record: bool = True,
    ) -> list[Any]:  # list[D] for a module object, see the overloads
        name = _name(module)
        if self._remote is None:  # microseconds: no thread hop
            return self.decider.decide_many(name, batch, record=record)
        mod, items = self._validated(name, batch)
        try:
            decisions = await self._remote.adecide_many(mod, items, record=record)
        except ServiceUnavailable as exc:
            if raise_errors:
                raise
            return self._fall_back(mod, items, exc)
        self._count(mod, decisions)
        return decisions

    # --- outcomes ----------------------------------------------------------------------
    def record_outcome(
        self,
        module: ModuleRef,
        decision_id: str,
        outcome: RawOutcome,
        *,
        raise_errors: bool = False,
    ) -> bool:
        """Record what happened after a decision. Returns False if it could not be stored."""
        mod, value = self._outcome(module, outcome)
        try:
            if self._remote is not None:
                self._remote.record_outcome(mod, decision_id, value)
            elif self._store is not None:
                self._store.record_outcome(mod.name, decision_id, value)
            else:
                return False
        except Exception as exc:
            return self._outcome_lost(exc, decision_id, raise_errors)
        self.metrics.outcomes.labels(mod.name).inc()
        return True

    async def arecord_outcome(
        self,
        module: ModuleRef,
        decision_id: str,
        outcome: RawOutcome,
        *,
        raise_errors: bool = False,
    ) -> bool:
        if self._remote is None:  # a database write: off the event loop
            return await asyncio.to_thread(
                self.record_outcome, module, decision_id, outcome, raise_errors=raise_errors
            )
        mod, value = self._outcome(module, outcome)
        try:
            await self._remote.arecord_outcome(mod, decision_id, value)
        except ServiceUnavailable as exc:
            return self._outcome_lost(exc, decision_id, raise_errors)
        self.metrics.outcomes.labels(mod.name).inc()
        return True

    def _outcome_lost(self, exc: Exception, decision_id: str, raise_errors: bool) -> bool:
        if raise_errors:
            raise exc
        log.warning("outcome for decision %s not recorded: %s", decision_id, exc)
        return False

    # --- lifecycle ---------------------------------------------------------------------
    def close(self) -> None:
        if self._remote is not None:
            self._remote.close()
        self._close_local()

    async def aclose(self) -> None:
        if self._remote is not None:
            await self._remote.aclose()
        self._close_local()

    def _close_local(self) -> None:
        if self._models is not None:
            self._models.stop()
        if self._store is not None:
            self._store.close()

    def _after_fork(self) -> None:
        if self._models is not None:
            self._models.after_fork()
        if self._store is not None:
            self._store.after_fork()

    # --- helpers -----------------------------------------------------------------------
    def _validated(
        self, module: str, batch: Sequence[RawFeatures]
    ) -> tuple[AnyModule, list[Features]]:
        return self.decider.module(module), [self.decider.features(module, f) for f in batch]

    def _outcome(self, module: ModuleRef, outcome: RawOutcome) -> tuple[AnyModule, Outcome]:
        mod = self.decider.module(_name(module))
        if isinstance(outcome, mod.Outcome):
            return mod, outcome
        if isinstance(outcome, BaseModel):
            outcome = outcome.model_dump()
        return mod, mod.Outcome.model_validate(outcome)

    def _fall_back(
        self, mod: AnyModule, items: list[Features], exc: ServiceUnavailable
    ) -> list[Decision]:
        self.metrics.fallbacks.labels(mod.name, exc.reason).inc(len(items))
        self.metrics.decisions.labels(mod.name, "fallback").inc(len(items))
        decisions = [mod.fallback(f) for f in items]
        for d in decisions:  # say why, so a degraded answer is visible to the caller
            d.fallback_reason = exc.reason
            d.explanation = f"service unavailable ({exc.reason}); {d.explanation}"[:500]
        if exc.reason == "rejected":  # a wrong key or a version mismatch: someone must act
            log.warning("the inference service refused a request: %s", exc)
        return decisions

    def _count(self, mod: AnyModule, decisions: list[Decision]) -> None:
        for d in decisions:
            self.metrics.decisions.labels(mod.name, d.source).inc()


def _follow_models(settings: Settings, decider: Decider, metrics: Metrics) -> ModelWatcher | None:
    """Local mode serves the models on the volume as the service does: the `stable` version
    of every module, checked before it serves, swapped when the daemon moves the tag.
    Without onnxruntime (the light SDK) the rules answer."""
    try:
        from aiassist.registry.serving import ModelWatcher
    except ImportError:  # pragma: no cover - depends on the installed extras
        log.warning("local mode: onnxruntime is not installed, the modules' rules answer")
        return None

    watcher = ModelWatcher.for_settings(settings, decider, metrics.count_model_event)
    watcher.start()
    return watcher


class _LocalStore:
    """Local mode's storage: the decision recorder and synchronous outcome writes.

    Imported lazily so that the light SDK (remote mode) needs no database drivers.
    """

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        try:
            from aiassist.store.db import make_engine, upgrade
            from aiassist.store.recorder import DecisionRecorder
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise RuntimeError(
                "local mode stores decisions and needs `pip install aiassist[server]`; "
                "or set AIASSIST_MODE=remote, or AIASSIST_RECORD_DECISIONS=false"
            ) from exc
        self._settings = settings
        self._metrics = metrics
        url = settings.resolved_database_url
        if url.startswith("sqlite"):  # the embedded default migrates itself
            upgrade(url)
        self._db = make_engine(url)
        self._recorder_cls = DecisionRecorder
        self._recorder = self._new_recorder()

    def _new_recorder(self) -> Any:
        return self._recorder_cls(
            self._db,
            self._metrics,
            max_queue=self._settings.record_queue_size,
            flush_seconds=self._settings.record_flush_seconds,
        )

    def record_decision(self, module: str, features: Features, decision: Decision) -> None:
        self._recorder(module, features, decision)

    def record_outcome(self, module: str, decision_id: str, outcome: Outcome) -> None:
        from sqlalchemy import insert

        from aiassist.store.models import OutcomeRecord

        with self._db.begin() as conn:
            conn.execute(
                insert(OutcomeRecord).values(
                    decision_id=decision_id, module=module, outcome=outcome.model_dump(mode="json")
                )
            )

    def flush(self) -> None:
        self._recorder.flush()

    def after_fork(self) -> None:
        self._db.dispose(close=False)  # the parent's connections stay the parent's
        self._recorder = self._new_recorder()

    def close(self) -> None:
        self._recorder.close()
        self._db.dispose()


_live: weakref.WeakSet[AIAssistService] = weakref.WeakSet()


def _reinit_after_fork() -> None:
    for service in list(_live):
        service._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_after_fork)
