"""`POST /v1/tickets/order`: the open tickets of any ticket system, in the order to work them.

The caller sends its open tickets (each a `TicketFeatures` plus its own `id`) and how many
agents work them; the answer is the order, each ticket's decision (score, category and
queue, predicted work, time to breach) and when it would be taken if the agents worked the
list in that order at the predicted speed, and so whether its SLA would hold.

The last week's SLA figures per category come from the outcomes recorded through
`POST /v1/tickets/outcome`: the router keeps a `SlaWindow` and reads only the outcomes
recorded since its last look, on each request. A ticket that brings its own
`recent_response_s` keeps it.
"""

from __future__ import annotations

import heapq
import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.engine import Engine

from aiassist.decider import Decider
from aiassist.modules.tickets import (
    SlaWindow,
    TicketDecision,
    TicketFeatures,
    TicketsModule,
    TicketsSettings,
    module,
    ticket_queue,
)
from aiassist.server.auth import require
from aiassist.server.routers.decisions import AUTH_RESPONSES
from aiassist.settings import module_settings
from aiassist.store.keys import Principal
from aiassist.store.models import OutcomeRecord

__all__ = ["MAX_TICKETS", "OrderRequest", "OrderResponse", "order_tickets", "tickets_router"]

log = logging.getLogger("aiassist.tickets")

MAX_TICKETS = 1000
_READ_AT_ONCE = 20_000


class OpenTicket(TicketFeatures):
    id: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9_.:#/-]+$",
        description="The ticket's id in your system.",
    )


class OrderRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tickets: list[OpenTicket] = Field(
        min_length=1, max_length=MAX_TICKETS, description="The open tickets."
    )
    agents: int = Field(1, ge=1, le=10_000, description="Agents working them.")
    record: bool = Field(
        True, description="Store the decisions, to report each ticket's outcome later."
    )


class OrderedTicket(BaseModel):
    id: str
    rank: int = Field(description="1: take it first.")
    starts_in_s: float = Field(description="When an agent would take it, at predicted speed.")
    breach_expected: bool | None = Field(description="Taken after its SLA; none: no SLA.")
    decision: TicketDecision


class CategoryFigures(BaseModel):
    tickets: int
    mean_response_s: float
    breach_rate: float


class OrderResponse(BaseModel):
    served_by: str = Field(description="'model' if the model answered for every ticket.")
    model_version: str | None
    tickets: list[OrderedTicket]
    sla: dict[str, CategoryFigures] = Field(
        description="The last week's first-response figures per category, from outcomes."
    )


class RecordedSla:
    """A `SlaWindow` over the outcomes recorded in the service's database."""

    def __init__(self, window_s: float) -> None:
        self.window = SlaWindow(window_s)
        self._last_id = 0
        self._lock = threading.Lock()

    def refresh(self, db: Engine) -> None:
        """Read the outcomes recorded since the last call (within the window)."""
        since = datetime.now(UTC) - timedelta(seconds=self.window.window_s)
        with self._lock:
            query = (
                select(OutcomeRecord.id, OutcomeRecord.created_at, OutcomeRecord.outcome)
                .where(OutcomeRecord.module == module.name, OutcomeRecord.id > self._last_id)
                .order_by(OutcomeRecord.id)
                .limit(_READ_AT_ONCE)
            )
            with db.connect() as conn:
                rows = conn.execute(query).all()
            for row_id, at, outcome in rows:
                self._last_id = max(self._last_id, int(row_id))
                stamp = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
                if stamp < since or not isinstance(outcome, dict):
                    continue
                try:
                    self.window.observe(
                        str(outcome["category"]),
                        float(outcome["responded_s"]),
                        bool(outcome.get("breached")),
                        stamp.timestamp(),
                    )
                except (KeyError, TypeError, ValueError):
                    log.warning("outcome %s is not a tickets outcome: skipped", row_id)


def order_tickets(
    body: OrderRequest, decider: Decider, sla: SlaWindow, now: float
) -> OrderResponse:
    """The order itself (blocking: it may embed texts)."""
    served = cast(TicketsModule, decider.module(module.name))
    raw = [TicketFeatures(**t.model_dump(exclude={"id"})) for t in body.tickets]
    served.reader.read_many([f.text for f in raw], [f.source for f in raw])  # one batch
    features = [served.with_sla(f, sla, now) for f in raw]
    decisions = cast(
        list[TicketDecision], decider.decide_many(module.name, features, record=body.record)
    )
    queue = ticket_queue(served.scoring)
    for i, (f, d) in enumerate(zip(features, decisions, strict=True)):
        queue.push_decision(i, -f.age_s, d, None if f.deadline_in_s is None else f.deadline_in_s)
    free = [0.0] * body.agents
    ordered: list[OrderedTicket] = []
    while len(queue):
        at = heapq.heappop(free)
        i = queue.pop(at)
        d, f = decisions[i], features[i]
        heapq.heappush(free, at + d.est_handling_s)
        breach = None if f.deadline_in_s is None else at > f.deadline_in_s
        ordered.append(
            OrderedTicket(
                id=body.tickets[i].id,
                rank=len(ordered) + 1,
                starts_in_s=round(at, 3),
                breach_expected=breach,
                decision=d,
            )
        )
    sources = {d.source for d in decisions}
    version = decisions[0].model_version if sources == {"model"} else None
    return OrderResponse(
        served_by="model" if sources == {"model"} else "fallback",
        model_version=version,
        tickets=ordered,
        sla={name: CategoryFigures(**vars(figures)) for name, figures in sla.snapshot(now).items()},
    )


def tickets_router() -> APIRouter:
    router = APIRouter(prefix="/v1/tickets", tags=["tickets"])
    settings = module_settings(TicketsSettings, log)
    recorded = RecordedSla(settings.sla_window_days * 86_400.0)

    @router.post(
        "/order",
        summary="Order open tickets by SLA, blast radius and predicted work",
        description=f"Send up to {MAX_TICKETS} open tickets (each the `tickets` features plus "
        "your `id`) and the number of agents. The answer lists them in the order to take "
        "them, each with its decision (category, queue, predicted work, time to breach) "
        "and when an agent would take it at predicted speed. Each decision's "
        "`decision_id` takes the ticket's outcome at `POST /v1/tickets/outcome`.",
        response_model=OrderResponse,
        responses=AUTH_RESPONSES,
    )
    async def order_route(
        request: Request, body: OrderRequest, _: Principal = Depends(require("decide"))
    ) -> OrderResponse:
        state: Any = request.app.state.aiassist
        await run_in_threadpool(recorded.refresh, state.db)
        now = datetime.now(UTC).timestamp()
        return await run_in_threadpool(order_tickets, body, state.decider, recorded.window, now)

    return router
