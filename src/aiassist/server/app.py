"""The inference service: a FastAPI app over one `Decider`, with storage, keys and metrics.

`create_app()` builds everything from `Settings`; the lifespan opens the database and the
decision recorder and closes them (draining buffered decisions) on shutdown.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import Engine, text
from starlette.responses import Response

from aiassist.__about__ import __version__
from aiassist.agent.automation import AutomationConfig
from aiassist.agent.tools import ToolSet
from aiassist.decider import Decider
from aiassist.drift.api import drift_router
from aiassist.metrics import Metrics
from aiassist.modules.base import import_attribute
from aiassist.registry.serving import ModelWatcher
from aiassist.registry.store import ModelRegistry
from aiassist.server.auth import require
from aiassist.server.errors import install_error_handlers
from aiassist.server.middleware import MetricsMiddleware, RequestLimitMiddleware
from aiassist.server.routers.agent import agent_router
from aiassist.server.routers.decisions import (
    AUTH_RESPONSES,
    ModuleInfo,
    list_modules,
    module_router,
    unknown_module_router,
)
from aiassist.server.routers.flows import flows_router
from aiassist.server.routers.models import models_router
from aiassist.settings import Settings, load_settings
from aiassist.store.audit import AuditLog
from aiassist.store.db import make_engine, make_sessionmaker
from aiassist.store.keys import KeyStore
from aiassist.store.recorder import DecisionRecorder

__all__ = ["ServiceState", "create_app"]

log = logging.getLogger("aiassist.server")

MAX_BODY_BYTES = 1 << 20

_DESCRIPTION = """
Learned decisions for an existing backend. Every decision names the model version that
answered, or says that the module's rule fallback did.

Authenticate with an API key (`aiassist keys create`) as `Authorization: Bearer <key>`.
"""


@dataclass
class ServiceState:
    settings: Settings
    db: Engine
    keys: KeyStore
    audit: AuditLog
    decider: Decider
    metrics: Metrics
    recorder: DecisionRecorder | None
    registry: ModelRegistry
    watcher: ModelWatcher


async def _anchor_every(audit: AuditLog, seconds: float) -> None:
    """Anchor the audit chains every `seconds`, for as long as the service runs."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await run_in_threadpool(audit.anchor)
        except Exception:  # the database is away for a while: the next turn tries again
            log.warning("could not anchor the audit chains; trying again in %gs", seconds)


def create_app(settings: Settings | None = None, *, agent_tools: ToolSet | None = None) -> FastAPI:
    settings = settings or load_settings()
    metrics = Metrics(CollectorRegistry())
    decider = Decider(metrics=metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = make_engine(settings.resolved_database_url)
        sessions = make_sessionmaker(db)
        recorder = None
        if settings.record_decisions:
            recorder = DecisionRecorder(
                db,
                metrics,
                max_queue=settings.record_queue_size,
                flush_seconds=settings.record_flush_seconds,
            )
            decider.on_decision = recorder
        audit = AuditLog(sessions)
        watcher = ModelWatcher.for_settings(settings, decider, _model_events(audit, metrics))
        app.state.aiassist = ServiceState(
            settings=settings,
            db=db,
            keys=KeyStore(sessions, cache_seconds=settings.key_cache_seconds),
            audit=audit,
            decider=decider,
            metrics=metrics,
            recorder=recorder,
            registry=watcher.registry,
            watcher=watcher,
        )
        await run_in_threadpool(watcher.start)
        anchoring = asyncio.create_task(_anchor_every(audit, settings.audit_anchor_seconds))
        # Everything loaded so far lives as long as the process: keep it out of the
        # collector's full passes, which otherwise stall requests for tens of ms.
        gc.freeze()
        try:
            yield
        finally:
            anchoring.cancel()
            await run_in_threadpool(watcher.stop)
            decider.on_decision = None
            if recorder is not None:
                await run_in_threadpool(recorder.close)
            db.dispose()

    app = FastAPI(
        title="aiassist inference service",
        version=__version__,
        description=_DESCRIPTION,
        lifespan=lifespan,
    )
    app.add_middleware(RequestLimitMiddleware, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    install_error_handlers(app)

    @app.get("/healthz", tags=["service"], summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/readyz", tags=["service"], summary="Readiness: database reachable, models served")
    async def readyz(request: Request) -> JSONResponse:
        state: ServiceState = request.app.state.aiassist
        modules: dict[str, dict[str, Any]] = {}
        for name in state.decider.modules:
            served = state.watcher.served.get(name)
            modules[name] = {"model_version": state.decider.served_version(name)}
            if served is not None and served.error:
                modules[name]["refused"] = {"version": served.refused, "error": served.error}
        try:
            await run_in_threadpool(_ping, state.db)
        except Exception as exc:
            log.warning("readiness: database unreachable: %s", exc)
            body: dict[str, Any] = {"status": "unavailable", "database": "unreachable"}
            return JSONResponse(body | {"modules": modules}, status_code=503)
        return JSONResponse({"status": "ready", "database": "ok", "modules": modules})

    @app.get("/metrics", tags=["service"], summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route(
        "/v1/modules",
        list_modules,
        methods=["GET"],
        tags=["modules"],
        summary="The decision modules and what serves each",
        response_model=list[ModuleInfo],
        responses=AUTH_RESPONSES,
        dependencies=[Depends(require("decide"))],
    )
    for module in decider.modules.values():
        app.include_router(module_router(module))
        if module.router is not None:  # the module's own endpoints, e.g. a simulator
            app.include_router(import_attribute(module.router)())
    app.include_router(models_router())
    app.include_router(drift_router())  # the drift guard is a part of its own, not a module
    automation = AutomationConfig.from_settings(settings)  # a bad flow file stops us here
    app.include_router(agent_router(agent_tools, automation.flows))
    app.include_router(flows_router(automation))  # after the agent's: it uses its runtime
    if settings.mcp_http:  # the agent's tools for MCP clients at /mcp, under the same policy
        app.include_router(importlib.import_module("aiassist.agent.mcp_server").mcp_router())
    app.include_router(unknown_module_router())
    return app


def _model_events(audit: AuditLog, metrics: Metrics) -> Callable[[str, str, dict[str, Any]], None]:
    """Every swap and refusal of a model version is an audit event and a metric."""

    def record(kind: str, module: str, data: dict[str, Any]) -> None:
        metrics.count_model_event(kind, module, data)
        audit.append(kind, f"{module}/{data.get('version')}", actor="service", data=data)

    return record


def _ping(db: Engine) -> None:
    with db.connect() as conn:
        conn.execute(text("SELECT 1"))
