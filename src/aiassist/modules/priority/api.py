"""`POST /v1/priority/simulate`: a queue simulated under the served model, FIFO and static
four levels side by side, so a new user sees in minutes whether the model orders work well.

The simulation runs in a worker thread on a private decider that shares the served model
(so simulated decisions are neither recorded nor counted as real ones); its size is bounded
so that it answers within a second or two.
"""

from __future__ import annotations

import asyncio
import math
from typing import Annotated, Literal, Self

import numpy as np
from fastapi import APIRouter, Body, Depends, Request
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict, Field, model_validator

from aiassist.decider import Decider
from aiassist.metrics import Metrics
from aiassist.modules.priority import module
from aiassist.modules.priority.simulator import (
    FIFO,
    HIGH_WEIGHT,
    LOW_WEIGHT,
    GeneratorSpec,
    ModulePolicy,
    SimTask,
    StaticLevels,
    generate,
    simulate,
    summarize,
    traffic_from_tasks,
)
from aiassist.server.auth import require
from aiassist.server.routers.decisions import AUTH_RESPONSES
from aiassist.store.keys import Principal

__all__ = ["MAX_GENERATED_TASKS", "MAX_LISTED_TASKS", "priority_router"]

MAX_LISTED_TASKS = 2000
MAX_GENERATED_TASKS = 5000
PolicyName = Literal["model", "fifo", "static"]


class SimulationSpec(GeneratorSpec):
    """The simulator's generator (see `aiassist.modules.priority.simulator`), smaller."""

    tasks: int = Field(1000, ge=10, le=MAX_GENERATED_TASKS, description="Tasks to generate.")
    workers: int = Field(8, ge=1, le=128, description="Workers in the pool.")


class SimulateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tasks: list[SimTask] | None = Field(
        None, min_length=1, max_length=MAX_LISTED_TASKS, description="Your own tasks."
    )
    workers: int | None = Field(
        None, ge=1, le=128, description="Pool size for `tasks` (default 4)."
    )
    generate: SimulationSpec | None = Field(None, description="Or: traffic to generate.")
    show: int = Field(
        100, ge=0, le=MAX_LISTED_TASKS, description="How many tasks to list, in arrival order."
    )

    @model_validator(mode="after")
    def _one_of(self) -> Self:
        if (self.tasks is None) == (self.generate is None):
            raise ValueError("send exactly one of 'tasks' (a list) or 'generate' (a spec)")
        if self.generate is not None and self.workers is not None:
            raise ValueError("'workers' goes with 'tasks'; a 'generate' spec has its own")
        return self


class Summary(BaseModel):
    high_mean_wait_s: float
    high_p95_wait_s: float
    mean_wait_s: float
    p95_wait_s: float
    deadline_miss_pct: float = Field(description="Share of tasks with a deadline that missed.")
    high_miss_pct: float
    weighted_miss_pct: float = Field(description="Business weight of misses / of all.")
    low_max_wait_s: float = Field(description="Longest wait of the low class (starvation).")
    max_wait_s: float
    throughput_per_min: float


class Slot(BaseModel):
    worker: int
    start_s: float
    wait_s: float
    missed: bool | None = Field(description="None: the task has no deadline.")


class TaskRow(BaseModel):
    index: int = Field(description="Position in the request's `tasks` (or generation order).")
    task_type: str
    arrival_s: float
    deadline_s: float | None
    business_weight: float
    high: bool
    static_level: int
    priority: float = Field(description="The module's priority at enqueue (higher first).")
    p_miss: float
    model: Slot
    fifo: Slot
    static: Slot


class SimulateResponse(BaseModel):
    served_by: Literal["model", "fallback"]
    model_version: str | None
    tasks: int
    workers: int
    high_tasks: int
    classes: str
    summary: dict[PolicyName, Summary]
    allocation: list[TaskRow]


_EXAMPLES = {
    "generate": {
        "summary": "Generated bursty traffic",
        "value": {"generate": {"tasks": 1000, "workers": 8, "load": 0.9, "burstiness": 4,
                               "anomaly_share": 0.2, "seed": 7}, "show": 20},
    },
    "tasks": {
        "summary": "Your own tasks",
        "value": {"workers": 1, "tasks": [
            {"arrival_s": 0, "task_type": "report_export", "est_duration_s": 60,
             "business_weight": 0.3, "static_level": 0},
            {"arrival_s": 1, "task_type": "delivery_assign", "deadline_in_s": 600,
             "est_duration_s": 30, "business_weight": 1.5, "static_level": 6},
            {"arrival_s": 2, "task_type": "dispatch_express", "deadline_in_s": 90,
             "est_duration_s": 20, "business_weight": 4, "static_level": 6},
        ]},
    },
}  # fmt: skip


def run_simulation(body: SimulateRequest, decider: Decider) -> SimulateResponse:
    """The simulation itself (blocking; the route runs it in a worker thread)."""
    served = decider.module(module.name)  # the service's own instance of the module
    private = Decider([served], metrics=Metrics(CollectorRegistry()))
    predictor = decider.predictor(module.name)
    private.load(module.name, predictor)
    if body.tasks is not None:
        traffic, index = traffic_from_tasks(body.tasks, body.workers or 4)
    else:
        assert body.generate is not None
        traffic = generate(body.generate)
        index = list(range(len(traffic)))
    policy = ModulePolicy(lambda f: private.decide(module.name, f), name="model")
    runs = {"model": simulate(traffic, policy), "fifo": simulate(traffic, FIFO()),
            "static": simulate(traffic, StaticLevels())}  # fmt: skip
    summary = {name: Summary(**summarize(traffic, run)) for name, run in runs.items()}
    missed = {name: run.missed(traffic) for name, run in runs.items()}
    rows = []
    high = traffic.high
    for i in range(min(body.show, len(traffic))):
        d = float(traffic.deadline[i])
        decision = policy.decisions[i]
        slots = {
            name: Slot(
                worker=int(run.worker[i]),
                start_s=round(float(run.start[i]), 3),
                wait_s=round(float(run.start[i] - traffic.arrival[i]), 3),
                missed=None if math.isnan(d) else bool(missed[name][i]),
            )
            for name, run in runs.items()
        }
        rows.append(
            TaskRow(
                index=index[i],
                task_type=traffic.task_type[i],
                arrival_s=round(float(traffic.arrival[i]), 3),
                deadline_s=None if math.isnan(d) else round(d, 3),
                business_weight=round(float(traffic.weight[i]), 4),
                high=bool(high[i]),
                static_level=int(traffic.level[i]),
                priority=decision.priority,
                p_miss=decision.p_miss,
                **slots,
            )
        )
    version = predictor.version if predictor is not None else None
    answered = {d.source for d in policy.decisions.values()}
    return SimulateResponse(
        served_by="model" if answered == {"model"} else "fallback",
        model_version=version if answered == {"model"} else None,
        tasks=len(traffic),
        workers=traffic.workers,
        high_tasks=int(np.sum(high)),
        classes=f"high: business_weight >= {HIGH_WEIGHT:g}; low: business_weight < {LOW_WEIGHT:g}",
        summary=summary,
        allocation=rows,
    )


def priority_router() -> APIRouter:
    router = APIRouter(prefix="/v1/priority", tags=["priority"])
    # A simulation is up to a second of CPU: at most two at a time, so that a burst of them
    # queues here instead of starving the decisions this process serves.
    running = asyncio.Semaphore(2)

    @router.post(
        "/simulate",
        summary="Simulate a queue under the served model, FIFO and static four levels",
        description="Send `tasks` (your own, up to "
        f"{MAX_LISTED_TASKS}, with a pool of `workers`) or `generate` (a bursty traffic spec, "
        f"up to {MAX_GENERATED_TASKS} tasks). The answer compares, for the same tasks, the "
        "model the service serves (or the rule fallback), first come first served, and a "
        "static four-level scheme: wait times, deadline misses, the low class's longest "
        "wait, and each task's worker, start and wait under each.",
        response_model=SimulateResponse,
        responses=AUTH_RESPONSES,
    )
    async def simulate_route(
        request: Request,
        body: Annotated[SimulateRequest, Body(openapi_examples=_EXAMPLES)],
        _: Principal = Depends(require("decide")),
    ) -> SimulateResponse:
        decider: Decider = request.app.state.aiassist.decider
        async with running:
            return await run_in_threadpool(run_simulation, body, decider)

    return router
