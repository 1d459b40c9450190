"""An order center: the "main backend" of a deployment, adopting aiassist at one decision point.

The business code is what it was before aiassist: orders come in, an order far above what
the customer usually spends is held for manual review, and a reviewer later says whether it
was fraud. Adopting aiassist added exactly three things, each marked `# aiassist:` below:

1. `AIAssistService.setup()` in the lifespan (settings from `AIASSIST_*` variables; in
   docker compose `AIASSIST_MODE=remote` points it at the inference service);
2. the hold-or-accept choice asks the `reference` module instead of comparing in place.
   Its rule fallback *is* the old comparison, so nothing changes until a trained model is
   promoted, and whenever the service is slow or down the backend still answers at once;
3. the reviewer's verdict is recorded as the decision's outcome, so models learn from it.

Run it with `uvicorn examples.backend.app:app` from the repository root.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

from fastapi import FastAPI, HTTPException, status
from pydantic import BaseModel, Field

from aiassist.modules.reference import module as reference
from aiassist.sdk import AIAssistService

__all__ = ["app"]

#: Hold an order for review when it is this many times the customer's average order.
REVIEW_RATIO = 5.0
#: The "average" of a customer without history, so a first order is judged too.
FIRST_ORDER_AVERAGE = 50.0


# --- the business model -------------------------------------------------------------------
class OrderIn(BaseModel):
    customer_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    amount: float = Field(gt=0, le=1_000_000, description="Order total in the shop currency.")


class DecisionInfo(BaseModel):
    """What aiassist answered, kept with the order so the outcome can be joined to it."""

    decision_id: str
    source: str = Field(description="'model' or 'fallback' (the rule answered).")
    model_version: str | None
    score: float
    explanation: str


class Order(BaseModel):
    id: int
    customer_id: str
    amount: float
    status: Literal["accepted", "held_for_review", "rejected"]
    decision: DecisionInfo


class Review(BaseModel):
    fraud: bool = Field(description="The reviewer's verdict.")


class ReviewResult(BaseModel):
    order: Order
    outcome_recorded: bool = Field(
        description="False when the AI layer could not store it; the review still counts."
    )


# --- storage (in memory: this is a demo, the decision flow is the point) -------------------
_orders: dict[int, Order] = {}
_ids = itertools.count(1)


def _customer_average(customer_id: str) -> float:
    """Average of the customer's accepted orders (held and rejected ones would skew it)."""
    amounts = [
        o.amount
        for o in _orders.values()
        if o.customer_id == customer_id and o.status == "accepted"
    ]
    return sum(amounts) / len(amounts) if amounts else FIRST_ORDER_AVERAGE


# --- the app ------------------------------------------------------------------------------
@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Create the AI layer once per process, before the first request, and close it last.

    A wrong `AIASSIST_*` setting stops start-up here with a message naming it, rather
    than surfacing later at a decision point.
    """
    AIAssistService.setup()  # aiassist: 1. once, at start-up
    try:
        yield
    finally:
        await AIAssistService.areset()


app = FastAPI(title="order center (aiassist example backend)", lifespan=lifespan)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness of the backend itself; it does not depend on the AI service being up."""
    return {"status": "ok"}


@app.post("/orders", status_code=status.HTTP_201_CREATED)
async def place_order(order: OrderIn) -> Order:
    """Accept an order, or hold it for review when it is unusually large for the customer."""
    ratio = order.amount / max(_customer_average(order.customer_id), 1.0)
    # aiassist: 2. the decision point. Before: `hold = ratio >= REVIEW_RATIO`.
    decision = await AIAssistService.instance().adecide(
        reference, {"signal": ratio, "threshold": REVIEW_RATIO}
    )  # given the module object, the answer is typed as its ReferenceDecision
    placed = Order(
        id=next(_ids),
        customer_id=order.customer_id,
        amount=order.amount,
        status="held_for_review" if decision.act else "accepted",
        decision=DecisionInfo(
            decision_id=decision.decision_id,
            source=decision.source,
            model_version=decision.model_version,
            score=decision.score,
            explanation=decision.explanation,
        ),
    )
    _orders[placed.id] = placed
    return placed


@app.get("/orders/{order_id}")
async def get_order(order_id: int) -> Order:
    return _find(order_id)


@app.post("/orders/{order_id}/review")
async def review_order(order_id: int, review: Review) -> ReviewResult:
    """A reviewer's verdict: reject fraud, accept the rest, and teach the AI layer."""
    order = _find(order_id)
    order.status = "rejected" if review.fraud else "accepted"
    # aiassist: 3. what actually happened. Holding was right exactly when it was fraud.
    recorded = await AIAssistService.instance().arecord_outcome(
        reference, order.decision.decision_id, {"should_have_acted": review.fraud}
    )
    return ReviewResult(order=order, outcome_recorded=recorded)


def _find(order_id: int) -> Order:
    order = _orders.get(order_id)
    if order is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no order {order_id}")
    return order
