"""The agent API: start runs, follow them, and decide the calls that wait for a person.

`POST /v1/agent/runs` (scope `agent:run`) starts a run in the background and answers when it
finished, paused for an approval, or after `wait_seconds`; `GET /v1/agent/runs/{id}` follows
it. `GET /v1/approvals` and `POST /v1/approvals/{id}` (scope `agent:approve`) list and decide
paused calls; a decided run goes on in the background. Nothing is held while a run waits:
a restarted service resumes the runs whose process died.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from aiassist.agent.approvals import ApprovalConflict
from aiassist.agent.assembly import build_runtime
from aiassist.agent.executor import Executor, InProcessExecutor, submit_orphaned, wait_settled
from aiassist.agent.flows import Flow
from aiassist.agent.runs import ApprovalInfo, RunInfo, RunNotFound
from aiassist.agent.runtime import NoProvider, Runtime
from aiassist.agent.tools import ToolSet
from aiassist.server.auth import require
from aiassist.server.routers.decisions import AUTH_RESPONSES
from aiassist.settings import Settings, SettingsError
from aiassist.store.db import make_sessionmaker
from aiassist.store.keys import Principal

__all__ = ["agent_router", "executor_from_settings"]

log = logging.getLogger("aiassist.agent")

_TOOL_NAME = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
_ID = Path(min_length=32, max_length=32, pattern=r"^[0-9a-f]{32}$")
_WAIT = Field(10.0, ge=0, le=60, description="Seconds to wait for the run to finish or pause.")


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str = Field(min_length=1, max_length=20_000)
    tools: list[Annotated[str, _TOOL_NAME]] = Field(
        max_length=200, description="The tools this run may use: the model sees only these."
    )
    provider: str | None = Field(
        None, max_length=64, description="'test' for a scripted run; default: the configured."
    )
    script: list[Any] | None = Field(
        None,
        max_length=200,
        description="Turns for the test model: 'final text', {'text': ...} or "
        "{'tool_calls': [{'name': ..., 'arguments': {...}}]}.",
    )
    max_steps: int = Field(10, ge=1, le=1000, description="Most model turns the run may take.")
    dry_run: bool = Field(
        False,
        description="Run reads, simulate writes, request no approvals: the run's calls show "
        "exactly what a real run would do.",
    )
    wait_seconds: float = _WAIT


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision: Literal["approve", "reject"]
    arguments: dict[str, Any] | None = Field(
        None, description="Approve with these arguments instead (validated and re-checked)."
    )
    message: str | None = Field(None, max_length=2000, description="Told to the model.")
    wait_seconds: float = _WAIT


class Decided(BaseModel):
    approval: ApprovalInfo
    run: RunInfo


@dataclass
class _Agent:
    runtime: Runtime
    executor: Executor | None = None  # None: runs are driven here, on this loop
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("agent run failed in the background: %r", task.exception())


def _agent(request: Request) -> _Agent:
    agent: _Agent = request.app.state.agent
    return agent


async def _settle(agent: _Agent, run_id: str, wait: float) -> RunInfo:
    if agent.executor is not None:  # e.g. Celery workers drive it; follow it in the database
        await agent.executor.submit(run_id)
        return await wait_settled(agent.runtime, run_id, wait)
    task = agent.spawn(agent.runtime.drive(run_id))
    await asyncio.wait({task}, timeout=wait)
    return await agent.runtime.info(run_id)


async def _recover_every(runtime: Runtime, executor: Executor | None, seconds: float) -> None:
    """Drive on, here or on the workers, the runs nobody drives: at start every one whose
    process died, then every `seconds` those idle that long (a decision recorded where the
    run could not go on, a process that died since)."""
    idle = 0.0
    while True:
        try:
            if executor is None:
                await runtime.recover(idle_seconds=idle)
            else:
                await submit_orphaned(runtime, executor, idle_seconds=idle)
        except Exception:  # the database is away for a while: the next turn tries again
            log.warning("could not look for agent runs to resume; trying again in %gs", seconds)
        idle = seconds
        await asyncio.sleep(seconds)


def agent_router(
    tools: ToolSet | None = None, flows: Mapping[str, Flow] | None = None
) -> APIRouter:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = app.state.aiassist
        runtime = build_runtime(
            state.settings,
            make_sessionmaker(state.db),
            tools=tools,
            metrics=state.metrics,
            flows=flows,
        )
        settings = state.settings
        executor = None
        if settings.agent_executor != "inprocess":
            executor = executor_from_settings(settings, runtime)
        agent = app.state.agent = _Agent(runtime, executor)
        agent.spawn(_recover_every(runtime, executor, settings.agent_recover_seconds))
        try:
            yield
        finally:
            for task in list(agent.tasks):
                task.cancel()
            for task in list(agent.tasks):
                with suppress(BaseException):
                    await task

    runner, approver = require("agent:run"), require("agent:approve")
    router = APIRouter(tags=["agent"], responses=AUTH_RESPONSES, lifespan=lifespan)

    @router.post(
        "/v1/agent/runs",
        status_code=status.HTTP_201_CREATED,
        summary="Start an agent run",
        responses={
            409: {"description": "No language model is configured for this run"},
            422: {"description": "Invalid task, tools or script"},
        },
    )
    async def start(
        body: RunRequest, request: Request, principal: Principal = Depends(runner)
    ) -> RunInfo:
        agent = _agent(request)
        limit = request.app.state.aiassist.settings.agent_max_steps
        if body.max_steps > limit:
            raise HTTPException(422, f"max_steps is at most {limit} (AIASSIST_AGENT_MAX_STEPS)")
        provider, options = body.provider, None
        if body.script is not None:
            if provider not in (None, "test"):
                raise HTTPException(422, "a script is played by the test model: omit provider")
            provider, options = "test", {"script": body.script}
        elif provider == "test":
            raise HTTPException(422, "the test model needs a script")
        elif provider is not None and provider != agent.runtime.default_provider:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"provider {provider!r} is not configured: set AIASSIST_AGENT_PROVIDER "
                "(see docs/agent.md)",
            )
        try:
            run_id = await agent.runtime.create(
                body.task,
                principal=principal,
                tools=body.tools,
                provider=provider,
                provider_options=options,
                max_steps=body.max_steps,
                dry_run=body.dry_run,
            )
        except NoProvider as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        return await _settle(agent, run_id, body.wait_seconds)

    @router.get("/v1/agent/runs", summary="Runs, newest first (an admin sees everyone's)")
    async def runs(
        request: Request,
        run_status: Annotated[
            Literal["running", "waiting_approval", "waiting_until", "succeeded", "failed", "all"],
            Query(alias="status"),
        ] = "all",
        flow: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
        principal: Principal = Depends(runner),
    ) -> list[RunInfo]:
        return await run_in_threadpool(
            _agent(request).runtime.store.runs,
            status=None if run_status == "all" else run_status,
            flow=flow,
            principal=None if principal.allows("admin") else principal.key_id,
            limit=limit,
            offset=offset,
        )

    @router.get("/v1/agent/runs/{run_id}", summary="A run: status, calls, usage and cost")
    async def show(
        request: Request,
        run_id: Annotated[str, _ID],
        principal: Principal = Depends(runner),
    ) -> RunInfo:
        try:
            info = await _agent(request).runtime.info(run_id)
        except RunNotFound:
            raise HTTPException(404, f"no run {run_id}") from None
        if info.principal != principal.key_id and not principal.allows("admin"):
            raise HTTPException(404, f"no run {run_id}")  # others' runs are not disclosed
        return info

    @router.get("/v1/approvals", summary="Calls waiting for a person (or decided ones)")
    async def approvals(
        request: Request,
        state: Literal["pending", "approved", "rejected", "all"] = "pending",
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        _: Principal = Depends(approver),
    ) -> list[ApprovalInfo]:
        return await run_in_threadpool(
            _agent(request).runtime.store.approvals,
            status=None if state == "all" else state,
            limit=limit,
        )

    @router.post(
        "/v1/approvals/{approval_id}",
        summary="Approve (optionally with edited arguments) or reject a paused call",
        responses={
            404: {"description": "No such approval"},
            409: {"description": "Already decided, or the edited call is denied by policy"},
            422: {"description": "The edited arguments are invalid for the tool"},
        },
    )
    async def decide(
        body: Decision,
        request: Request,
        approval_id: Annotated[str, _ID],
        principal: Principal = Depends(approver),
    ) -> Decided:
        agent = _agent(request)
        if body.decision == "reject" and body.arguments is not None:
            raise HTTPException(422, "arguments are for approving with edits, not rejecting")
        try:
            approval = await agent.runtime.decide(
                approval_id,
                by=principal,
                approve=body.decision == "approve",
                arguments=body.arguments,
                message=body.message,
            )
        except RunNotFound:
            raise HTTPException(404, f"no approval {approval_id}") from None
        except ApprovalConflict as exc:
            raise HTTPException(exc.status_code, str(exc)) from None
        run = await _settle(agent, approval.run_id, body.wait_seconds)
        return Decided(approval=approval, run=run)

    return router


def executor_from_settings(settings: Settings, runtime: Runtime) -> Executor:
    """`AIASSIST_AGENT_EXECUTOR`: `inprocess` drives with `runtime`; `celery` sends runs to
    the workers of `AIASSIST_CELERY_BROKER_URL` (which build their own runtime)."""
    if settings.agent_executor == "inprocess":
        return InProcessExecutor(runtime)
    if not settings.celery_broker_url:
        raise SettingsError(
            "AIASSIST_AGENT_EXECUTOR=celery needs AIASSIST_CELERY_BROKER_URL "
            "(e.g. amqp://guest:guest@127.0.0.1:5672//)"
        )
    try:
        from aiassist.integrations.celery.agent import CeleryExecutor, make_app
    except ImportError as exc:
        raise SettingsError(
            f"AIASSIST_AGENT_EXECUTOR=celery needs the celery extra: {exc}"
        ) from None
    app = make_app(settings)
    return CeleryExecutor(app)
