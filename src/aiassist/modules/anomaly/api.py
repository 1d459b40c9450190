"""`POST /v1/anomaly/logs`: lines of a named log in, its scored windows out.

Each source (`app`, `nginx`, ...) has its own detector, templates and baseline, kept under
the service's data directory so that a restart resumes where it was. Lines that do not
complete a window wait for the next request of the same source.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated, cast

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from aiassist.decider import Decider
from aiassist.modules.anomaly import AnomalyDecision, AnomalyFeatures, module
from aiassist.modules.anomaly.detector import LogDetector, ScoredWindow
from aiassist.server.auth import require
from aiassist.server.routers.decisions import AUTH_RESPONSES
from aiassist.store.keys import Principal

__all__ = ["LogsRequest", "LogsResponse", "anomaly_router"]


class LogsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(
        "app", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Which log the lines are of."
    )
    lines: list[Annotated[str, Field(max_length=1 << 20)]] = Field(
        min_length=1, max_length=10_000, description="Consecutive lines, oldest first."
    )


class LogsResponse(BaseModel):
    source: str
    accepted: int = Field(description="Lines of this request that were mined.")
    bad_lines: int = Field(description="Lines of this request that were not log lines.")
    windows: list[ScoredWindow] = Field(description="Windows these lines completed.")


class _Detectors:
    """One detector a source, created on first use, each behind its own lock."""

    def __init__(self, root: Path, decider: Decider) -> None:
        self.root = root
        self.decider = decider
        self._made: dict[str, tuple[threading.Lock, LogDetector]] = {}
        self._lock = threading.Lock()

    def feed(self, body: LogsRequest) -> LogsResponse:
        with self._lock:
            if body.source not in self._made:
                detector = LogDetector(state_dir=self.root / body.source, decide=self._decide)
                self._made[body.source] = (threading.Lock(), detector)
            lock, detector = self._made[body.source]
        with lock:
            bad_before = detector.bad_lines
            windows = [w for line in body.lines if (w := detector.feed(line)) is not None]
            bad = detector.bad_lines - bad_before
        return LogsResponse(
            source=body.source, accepted=len(body.lines) - bad, bad_lines=bad, windows=windows
        )

    def _decide(self, features: AnomalyFeatures) -> AnomalyDecision:
        return cast(AnomalyDecision, self.decider.decide(module.name, features))


def anomaly_router() -> APIRouter:
    router = APIRouter(prefix="/v1/anomaly", tags=["anomaly"])
    made: list[_Detectors] = []

    @router.post(
        "/logs",
        summary="Score lines of a log",
        description="Mines the lines into templates (Drain3), cuts them into windows of "
        "`AIASSIST_ANOMALY_WINDOW_LINES` lines, and scores each completed window against "
        "the source's baseline, with root-cause hints (the templates and components that "
        "changed most).",
        response_model=LogsResponse,
        responses=AUTH_RESPONSES,
    )
    async def logs_route(
        request: Request, body: LogsRequest, _: Principal = Depends(require("decide"))
    ) -> LogsResponse:
        if not made:
            state = request.app.state.aiassist
            root = module.config.state_dir or state.settings.data_dir / "anomaly"
            made.append(_Detectors(root, state.decider))
        return await run_in_threadpool(made[0].feed, body)

    return router
