"""`POST /v1/anomaly/logs`: lines of a named log in, its scored windows out.

Each source (`app`, `nginx`, ...) has its own detector, templates and baseline, kept under
the service's data directory so that a restart resumes where it was. Lines that do not
complete a window wait for the next request of the same source.

`POST /v1/anomaly/metrics`: samples of Prometheus-style series in (JSON, or the text
exposition format), each scored against its series' own seasonal baseline, and the
anomalous series ranked: the one that changed first leading, then by how much.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aiassist.decider import Decider
from aiassist.metrics import Metrics
from aiassist.modules.anomaly import AnomalyDecision, AnomalyFeatures, module
from aiassist.modules.anomaly.alerts import Changes, RecentMetrics, WindowAlerts, audit_changes
from aiassist.modules.anomaly.detector import LogDetector, ScoredWindow
from aiassist.modules.anomaly.exposition import ExpositionError, parse_exposition
from aiassist.modules.anomaly.series import (
    MetricSample,
    SeriesAnomaly,
    SeriesScore,
    SeriesScorer,
    rank,
)
from aiassist.server.auth import require
from aiassist.server.routers.decisions import AUTH_RESPONSES
from aiassist.store.keys import Principal

__all__ = ["LogsRequest", "LogsResponse", "MetricsRequest", "MetricsResponse", "anomaly_router"]


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

    def __init__(
        self,
        root: Path,
        decider: Decider,
        changes: Changes,
        recent: RecentMetrics,
        metrics: Metrics,
    ) -> None:
        self.root = root
        self.decider = decider
        self.changes = changes
        self.recent = recent
        self.metrics = metrics
        self.alerts = WindowAlerts.configured(module.config)
        self._made: dict[str, tuple[threading.Lock, LogDetector]] = {}
        self._lock = threading.Lock()

    def feed(self, body: LogsRequest) -> LogsResponse:
        with self._lock:
            if body.source not in self._made:
                detector = LogDetector(
                    state_dir=self.root / body.source,
                    decide=self._decide,
                    source=body.source,
                    metrics=self.metrics,
                    changes=self.changes,
                    recent_metrics=self.recent,
                    on_alert=self.alerts,
                )
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


#: Samples one request may carry.
MAX_SAMPLES = 10_000
#: Where the series are kept under the anomaly state directory: a name no log source takes.
SERIES_DIR = "@metrics"
#: The Prometheus text format's media type (OpenMetrics, whose timestamps are seconds, is not).
_TEXT = "text/plain"


class MetricsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    samples: list[MetricSample] = Field(
        min_length=1, max_length=MAX_SAMPLES, description="Samples of any series, in any order."
    )


class MetricsResponse(BaseModel):
    accepted: int = Field(description="Samples of this request that were scored.")
    skipped: int = Field(
        description="Samples not scored: not newer than their series' last, a counter's "
        "first (it has no rate yet), or, in the text format, not finite."
    )
    series: int = Field(description="Series the service keeps now.")
    scores: list[SeriesScore] = Field(description="One a scored sample, in the request's order.")
    anomalies: list[SeriesAnomaly] = Field(
        description="The anomalous series (at most 100): the one that changed first leading, "
        "those that changed at the same time by how much."
    )


def _inlined(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its `$defs` written in place: the route reads its body
    itself, so FastAPI does not list the model under the document's components."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return cast(dict[str, Any], resolve(schema))


_METRICS_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _inlined(MetricsRequest)},
            "text/plain": {
                "schema": {"type": "string", "maxLength": 1 << 20},
                "example": "# TYPE http_requests_total counter\n"
                'http_requests_total{route="/orders"} 1027\n',
            },
        },
    }
}


def _metric_samples(raw: bytes, media: str) -> tuple[list[MetricSample], int]:
    """The samples of a body in either format; 415 or 422 naming what is wrong."""
    if media == _TEXT:
        try:
            return parse_exposition(raw.decode("utf-8"), MAX_SAMPLES)
        except UnicodeDecodeError:
            raise HTTPException(422, "the text exposition format is UTF-8") from None
        except ExpositionError as exc:
            raise HTTPException(422, str(exc)) from None
    if media and media != "application/json" and not media.endswith("+json"):
        detail = f"send JSON or the Prometheus text format (text/plain), not {media[:100]}"
        raise HTTPException(415, detail)
    try:
        return MetricsRequest.model_validate_json(raw).samples, 0
    except ValidationError as exc:
        errors: list[Any] = []
        for e in exc.errors(include_url=False):
            found: dict[str, Any] = {**e, "loc": ("body", *e["loc"])}
            if isinstance(given := found.get("input"), bytes):  # a body that is not JSON
                found["input"] = given[:200].decode("utf-8", "replace")
            errors.append(found)
        raise RequestValidationError(errors) from None


class _MetricsScorer:
    """The service's one series scorer, made on first use."""

    def __init__(self, root: Path, recent: RecentMetrics) -> None:
        self.scorer = SeriesScorer(module.config, state_dir=root)
        self.recent = recent

    def score(self, samples: list[MetricSample], skipped: int) -> MetricsResponse:
        scored = self.scorer.score(samples, now=time.time())
        anomalies = rank(scored.scores, top=100)
        self.recent.record(anomalies)
        return MetricsResponse(
            accepted=len(scored.scores),
            skipped=skipped + scored.skipped,
            series=len(self.scorer),
            scores=scored.scores,
            anomalies=anomalies,
        )


def anomaly_router() -> APIRouter:
    router = APIRouter(prefix="/v1/anomaly", tags=["anomaly"])
    made: list[_Detectors] = []
    recent = RecentMetrics(module.config.changes_lookback_s)

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
            changes = audit_changes(state.audit, module.config.changes_lookback_s)
            made.append(_Detectors(root, state.decider, changes, recent, state.metrics))
        return await run_in_threadpool(made[0].feed, body)

    scorers: list[_MetricsScorer] = []

    @router.post(
        "/metrics",
        summary="Score samples of metric series",
        description='Takes samples as JSON (`{"samples": [{"name", "labels", '
        '"value", "timestamp", "counter"}]}`) or in the Prometheus text exposition '
        "format (`content-type: text/plain`, as a `/metrics` endpoint serves it). Each sample "
        "is scored against its series' seasonal baseline (`AIASSIST_ANOMALY_SEASON_*`) by "
        "robust z and a CUSUM change-point test, with the reason: spike, dip or level shift.",
        response_model=MetricsResponse,
        responses=AUTH_RESPONSES,
        openapi_extra=_METRICS_BODY,
    )
    async def metrics_route(
        request: Request, _: Principal = Depends(require("decide"))
    ) -> MetricsResponse:
        media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        samples, left_out = _metric_samples(await request.body(), media)
        if not scorers:
            state = request.app.state.aiassist
            root = module.config.state_dir or state.settings.data_dir / "anomaly"
            scorers.append(_MetricsScorer(root / SERIES_DIR, recent))
        return await run_in_threadpool(scorers[0].score, samples, left_out)

    return router
