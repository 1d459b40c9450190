"""The flows API and the flows' triggers inside the service.

`GET /v1/flows` lists the flows with their steps, triggers and ROI; `POST /v1/flows/{name}/runs`
starts one (an `Idempotency-Key` header makes a retried request start one run);
`POST /v1/flows/validate` checks a flow file without loading it (scope `agent:run`).
`POST /v1/hooks/{name}` receives the flows' signed webhooks. The lifespan runs the cron loop
and the inbound SMTP listener (see `aiassist.agent.automation`).

The flows are read when the app is built, so a bad flow file stops the service before it
listens, with the file and line of the problem.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Path, Request, status
from pydantic import BaseModel, ConfigDict, Field

from aiassist.agent.automation import Automation, AutomationConfig, FlowReport
from aiassist.agent.flows import FlowError, parse_flow
from aiassist.agent.runs import RunInfo
from aiassist.agent.runtime import NoProvider
from aiassist.agent.triggers import Event, webhook_router
from aiassist.server.auth import require
from aiassist.server.routers.decisions import AUTH_RESPONSES
from aiassist.store.audit import AuditLog
from aiassist.store.keys import Principal

__all__ = ["flows_router"]

_NAME = Path(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_MAX_FLOW_TEXT = 200_000


class FlowRunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: dict[str, Any] = Field(default_factory=dict, description="The flow's `input`.")
    dry_run: bool = Field(False, description="Run reads, simulate writes, ask no approvals.")
    wait_seconds: float = Field(10.0, ge=0, le=60, description="Wait for the end or a pause.")


class FlowText(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(max_length=_MAX_FLOW_TEXT, description="The flow file's YAML.")
    source: str = Field("<flow>", max_length=200, description="Its name in the messages.")


class Problem(BaseModel):
    line: int
    message: str


class Validated(BaseModel):
    name: str
    tools: list[str]
    steps: int
    max_turns: int


def _automation(request: Request) -> Automation:
    automation: Automation = request.app.state.automation
    return automation


def flows_router(config: AutomationConfig) -> APIRouter:
    """The flows of `config` (`AutomationConfig.from_settings`, which raises `FlowError` on
    a bad file), their triggers and their API."""
    holder: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        holder["audit"] = app.state.aiassist.audit
        agent = app.state.agent  # the agent router's runtime and executor, not a second pair
        executor = agent.executor  # None: runs are driven here; else e.g. Celery workers
        automation = Automation(
            agent.runtime,
            config,
            audit=holder["audit"],
            submit=executor.submit if executor is not None else None,
        )
        app.state.automation = holder["automation"] = automation
        await automation.start()
        try:
            yield
        finally:
            await automation.aclose()
            holder.clear()

    async def start(event: Event) -> Any:
        automation: Automation | None = holder.get("automation")
        if automation is None:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "starting up")
        return await automation.run_event(event)

    def audit() -> AuditLog | None:
        log: AuditLog | None = holder.get("audit")
        return log

    runner = require("agent:run")
    router = APIRouter(lifespan=lifespan)
    router.include_router(webhook_router(config.webhooks, start, audit=audit))
    api = APIRouter(tags=["flows"], responses=AUTH_RESPONSES)

    @api.get("/v1/flows", summary="The flows: steps, triggers and ROI")
    async def flows(request: Request, _: Principal = Depends(runner)) -> list[FlowReport]:
        return await _automation(request).reports()

    @api.post(
        "/v1/flows/validate",
        summary="Check a flow file: 200 with its outline, or 422 with every problem's line",
        responses={422: {"description": "Problems, each with its line"}},
    )
    async def validate(
        body: FlowText, request: Request, _: Principal = Depends(runner)
    ) -> Validated:
        try:
            flow = parse_flow(body.text, body.source)
        except FlowError as exc:
            raise _problems(exc.problems) from None
        tools = _automation(request).runtime.tools
        unknown = [
            (_tool_line(body.text, name), f"unknown tool {name!r}")
            for name in flow.tools
            if tools.get(name) is None
        ]
        if unknown:
            raise _problems(unknown)
        return Validated(
            name=flow.name, tools=flow.tools, steps=len(flow.steps), max_turns=flow.max_turns
        )

    @api.post(
        "/v1/flows/{name}/runs",
        status_code=status.HTTP_201_CREATED,
        summary="Start a flow (once per Idempotency-Key)",
        responses={
            404: {"description": "No such flow"},
            409: {"description": "The flow needs a language model and none is configured"},
        },
    )
    async def run(
        body: FlowRunRequest,
        request: Request,
        name: Annotated[str, _NAME],
        idempotency_key: Annotated[str | None, Header(max_length=150)] = None,
        principal: Principal = Depends(runner),
    ) -> RunInfo:
        automation = _automation(request)
        key = f"api:{principal.key_id}:{idempotency_key}" if idempotency_key else None
        try:
            run_id = await automation.runtime.create_flow_run(
                name, body.input, principal, key=key, dry_run=body.dry_run
            )
        except NoProvider as exc:  # a LookupError too: first
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        except LookupError as exc:
            raise HTTPException(404, exc.args[0]) from None
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        task = request.app.state.agent.spawn(automation.proceed(run_id))
        await asyncio.wait({task}, timeout=body.wait_seconds)
        return await automation.runtime.info(run_id)

    router.include_router(api)
    return router


def _problems(problems: list[tuple[int, str]]) -> HTTPException:
    shown = [Problem(line=line, message=message).model_dump() for line, message in problems]
    return HTTPException(422, {"problems": shown})


def _tool_line(text: str, tool: str) -> int:
    pattern = re.compile(rf"^\s*-?\s*tool:\s*['\"]?{re.escape(tool)}['\"]?\s*(#.*)?$")
    for number, line in enumerate(text.splitlines(), 1):
        if pattern.match(line):
            return number
    return 0
