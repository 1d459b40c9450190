"""`POST /v1/sql/analyze`: the analyser over HTTP, on the database `AIASSIST_SQL_DSN` names.

The URL comes from the service's settings, never from the request, so a key can only have
the configured replica analysed. The analysis runs in a worker thread, one at a time; its
database libraries (the `sql` extra) are imported on first use, and their absence is a 409
that says what to install.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal, Self, cast

from fastapi import APIRouter, Body, Depends, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, model_validator

from aiassist.decider import Decider
from aiassist.modules.sql import IndexDecision, IndexFeatures, module
from aiassist.modules.sql.findings import Analysis
from aiassist.server.auth import require
from aiassist.server.routers.decisions import AUTH_RESPONSES
from aiassist.store.keys import Principal

__all__ = ["AnalyzeRequest", "sql_router"]

MAX_TEXT = 5_000_000


class AnalyzeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: Literal["pg_stat_statements", "queries", "log"] = Field(
        "pg_stat_statements", description="Where the statements come from."
    )
    text: str | None = Field(
        None,
        max_length=MAX_TEXT,
        description="For `queries`: statements separated by semicolons; for `log`: the "
        "server log's lines.",
    )
    top_groups: int | None = Field(None, ge=1, le=10_000, description="Groups to explain.")
    min_cost_factor: float | None = Field(
        None, ge=1.1, le=1000, description="Advise when the planner's cost falls this much."
    )

    @model_validator(mode="after")
    def _text_goes_with_its_source(self) -> Self:
        if (self.source == "pg_stat_statements") != (self.text is None):
            raise ValueError("'text' is needed for source 'queries' or 'log', and only then")
        return self


_EXAMPLES = {
    "queries": {
        "summary": "A list of queries",
        "value": {"source": "queries", "text": "select * from orders where user_id = 42;"},
    },
    "pg_stat_statements": {"summary": "The database's own statistics", "value": {}},
}


def run_analysis(body: AnalyzeRequest, decider: Decider) -> Analysis:
    """The analysis itself (blocking); what the caller or operator can fix is a 4xx."""
    try:
        from aiassist.modules.sql.analysis import analyze, connect
        from aiassist.modules.sql.sources import (
            SourceError,
            from_log,
            from_pg_stat_statements,
            from_queries,
        )
    except ImportError as exc:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"the sql module needs its extra: pip install 'aiassist[sql]' ({exc.name} missing)",
        ) from None
    config = module.config
    dsn = config.dsn
    if dsn is None:
        raise HTTPException(
            status.HTTP_409_CONFLICT, "no database to analyse: set AIASSIST_SQL_DSN"
        )
    overrides = {"top_groups": body.top_groups, "min_cost_factor": body.min_cost_factor}
    config = config.model_copy(update={k: v for k, v in overrides.items() if v is not None})

    def judge(features: IndexFeatures) -> IndexDecision:
        return cast(IndexDecision, decider.decide(module.name, features))

    try:
        conn = connect(dsn.get_secret_value(), config)
    except SourceError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
    with conn:
        try:
            if body.source == "pg_stat_statements":
                statements = from_pg_stat_statements(conn)
            elif body.source == "queries":
                statements = from_queries(body.text or "")
            else:
                statements = from_log((body.text or "").splitlines())
        except SourceError as exc:
            code = status.HTTP_422_UNPROCESSABLE_ENTITY if body.text else status.HTTP_409_CONFLICT
            raise HTTPException(code, str(exc)) from None
        return analyze(conn, statements, settings=config, source=body.source, judge=judge)


def sql_router() -> APIRouter:
    router = APIRouter(prefix="/v1/sql", tags=["sql"])
    running = asyncio.Semaphore(1)  # an analysis holds a database connection for seconds

    @router.post(
        "/analyze",
        summary="Analyse slow queries and advise indexes",
        description="Groups the statements (from pg_stat_statements, or the `text` of a "
        "list of queries or of a server log), explains the costly groups on the database "
        "`AIASSIST_SQL_DSN` names (read-only), names index-defeating patterns with their "
        "plan evidence, and advises indexes whose benefit HypoPG proves.",
        response_model=Analysis,
        responses={
            **AUTH_RESPONSES,
            409: {"description": "No database configured, or no pg_stat_statements in it"},
            422: {"description": "The queries or the log cannot be read"},
            503: {"description": "The database cannot be reached"},
        },
    )
    async def analyze_route(
        request: Request,
        body: Annotated[AnalyzeRequest, Body(openapi_examples=_EXAMPLES)],
        _: Principal = Depends(require("admin")),
    ) -> Analysis:
        decider: Decider = request.app.state.aiassist.decider
        async with running:
            return await run_in_threadpool(run_analysis, body, decider)

    return router
