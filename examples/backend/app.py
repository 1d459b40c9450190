"""A customer and order center: the "main backend" of a deployment, adopting aiassist.

The business code is what it was before aiassist: customers, CRM leads, orders, refunds,
support tickets and outbound email, each behind a plain REST endpoint with an `operationId`,
so its OpenAPI document imports as agent tools. Every write honours `Idempotency-Key`.

Adopting aiassist's decision modules added these things, marked `# aiassist:` below:

1. `AIAssistService.setup()` in the lifespan (settings from `AIASSIST_*` variables; in
   docker compose `AIASSIST_MODE=remote` points it at the inference service);
2. the hold-or-accept choice for an order asks the `reference` module instead of comparing
   in place. Its rule fallback *is* the old comparison, so nothing changes until a trained
   model is promoted, and whenever the service is slow or down the backend still answers;
3. the reviewer's verdict is recorded as the decision's outcome, so models learn from it;
4. `triage_ticket` asks the `tickets` module where a new ticket stands: its order score,
   category and queue, predicted work and time to its SLA (the `ticket_intake` flow calls
   it after opening the ticket).

Run it with `uvicorn examples.backend.app:app` from the repository root (SQLite in
`backend.db`, mail to an SMTP server on 127.0.0.1:8025; see `BackendSettings`).
"""

from __future__ import annotations

import smtplib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_json
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aiassist.modules.reference import module as reference
from aiassist.modules.tickets import module as tickets
from aiassist.sdk import AIAssistService

from . import db
from .idempotency import IdempotencyMiddleware
from .mail import send_email

__all__ = ["app", "create_app"]

#: Hold an order for review when it is this many times the customer's average order.
REVIEW_RATIO = 5.0
#: The "average" of a customer without history, so a first order is judged too.
FIRST_ORDER_AVERAGE = 50.0

#: Control characters and line breaks of every kind: a mail header holding one injects another.
_BREAKS = "\x00-\x1f\x7f\x85\u2028\u2029"
_PART = f"[^@\\s{_BREAKS}]+"
Email = Annotated[str, Field(min_length=3, max_length=254, pattern=f"^{_PART}@{_PART}\\.{_PART}$")]
#: One line of text: a name or a subject.
Name = Annotated[str, Field(min_length=1, max_length=200, pattern=f"^[^{_BREAKS}]+$")]
Text = Annotated[str, Field(min_length=1, max_length=10_000)]
#: A row id as the database holds it (a 64-bit integer), so a larger one is a 422, not a 500.
RowId = Annotated[int, Field(ge=1, le=2**63 - 1)]
PathId = Annotated[int, Path(ge=1, le=2**63 - 1)]


# --- schemas ------------------------------------------------------------------------------
class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class CustomerIn(BaseModel):
    name: Name
    email: Email


class CustomerOut(Out):
    id: int
    name: str
    email: str


class LeadIn(BaseModel):
    name: Name = Field(description="The prospective customer's name.")
    email: Email
    interest: Text = Field(description="What the customer wants to know or buy.")


class LeadUpdate(BaseModel):
    status: Literal["new", "contacted", "qualified", "lost"] | None = None
    owner: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    follow_up_in_days: int | None = Field(None, ge=0, le=365)


class LeadOut(Out):
    id: int
    customer_id: int
    interest: str
    status: str
    owner: str | None
    follow_up_at: datetime | None


class OrderIn(BaseModel):
    customer_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    amount: float = Field(
        gt=0, le=1_000_000, allow_inf_nan=False, description="Order total in the shop currency."
    )


class DecisionInfo(BaseModel):
    """What aiassist answered, kept with the order so the outcome can be joined to it."""

    decision_id: str
    source: str = Field(description="'model' or 'fallback' (the rule answered).")
    model_version: str | None
    score: float
    explanation: str


class OrderOut(Out):
    id: int
    customer_id: str
    amount: float
    status: Literal["accepted", "held_for_review", "rejected", "refunded"]
    decision: DecisionInfo


class Review(BaseModel):
    fraud: bool = Field(description="The reviewer's verdict.")


class ReviewResult(BaseModel):
    order: OrderOut
    outcome_recorded: bool = Field(
        description="False when the AI layer could not store it; the review still counts."
    )


class RefundIn(BaseModel):
    order_id: RowId
    amount: float = Field(gt=0, le=1_000_000, allow_inf_nan=False)
    reason: Text


class RefundOut(Out):
    id: int
    order_id: int
    amount: float
    reason: str
    status: str


class TicketIn(BaseModel):
    customer_email: Email
    subject: Name
    body: Text


class TicketAssignment(BaseModel):
    assignee: str = Field(min_length=1, max_length=100)
    category: Literal["billing", "delivery", "technical", "general"] = "general"


#: First-response SLA by customer tier, minutes.
SLA_MINUTES = {"free": 480, "pro": 120, "enterprise": 30}


class TicketTriageIn(BaseModel):
    tier: Literal["free", "pro", "enterprise"] = "free"
    affected_users: int = Field(1, ge=0, le=1_000_000_000)


class TicketTriage(BaseModel):
    """What aiassist answered about a ticket, kept with it."""

    decision_id: str
    source: str = Field(description="'model' or 'fallback' (the rule answered).")
    score: float = Field(description="The order: higher first.")
    category: str
    queue: str
    est_handling_s: float
    sla_due_at: datetime
    explanation: str


class TicketOut(Out):
    id: int
    customer_email: str
    subject: str
    body: str
    category: str
    status: str
    assignee: str | None
    triage: TicketTriage | None = None


class EmailIn(BaseModel):
    to: Email
    subject: Name
    body: Text


class EmailOut(Out):
    id: int
    to: str
    subject: str
    message_id: str
    sent_at: datetime


class DailyReport(BaseModel):
    day: str
    new_leads: int
    orders: int
    revenue: float
    held_for_review: int
    refunds_requested: int
    refunded_amount: float
    open_tickets: int


# --- the app ------------------------------------------------------------------------------
def create_app(settings: db.BackendSettings | None = None) -> FastAPI:
    """The backend on its own database; `app` below is the one uvicorn serves."""
    settings = settings or db.BackendSettings()
    engine, sessions = db.connect(settings.database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        """Create the AI layer once per process, before the first request, and close it last.

        A wrong `AIASSIST_*` setting stops start-up here with a message naming it.
        """
        AIAssistService.setup()  # aiassist: 1. once, at start-up
        try:
            yield
        finally:
            await AIAssistService.areset()
            engine.dispose()

    app = FastAPI(
        title="order center",
        description="Customers, CRM leads, orders, refunds, tickets and email "
        "(the aiassist example backend). Writes honour `Idempotency-Key`.",
        lifespan=lifespan,
    )
    app.add_middleware(IdempotencyMiddleware, sessions=sessions)
    app.add_exception_handler(RequestValidationError, _invalid)  # type: ignore[arg-type]
    app.state.settings = settings
    app.state.sessions = sessions
    app.include_router(_routes())
    return app


async def _invalid(request: Request, exc: RequestValidationError) -> Response:
    """FastAPI's 422, with NaN and Infinity (which Python's JSON parser reads and strict JSON
    lacks) echoed as strings rather than failing to encode."""
    body = to_json({"detail": exc.errors()}, inf_nan_mode="strings", fallback=str)
    return Response(body, status_code=422, media_type="application/json")


def _session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions.begin() as session:
        yield session


SessionDep = Annotated[Session, Depends(_session)]


def _get(session: Session, model: type[Any], id_: int) -> Any:
    row = session.get(model, id_)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no {model.__tablename__[:-1]} {id_}")
    return row


def _routes() -> APIRouter:
    r = APIRouter()

    @r.get("/healthz", tags=["meta"], operation_id="healthz")
    def healthz() -> dict[str, str]:
        """Liveness of the backend itself; it does not depend on the AI service being up."""
        return {"status": "ok"}

    # --- customers and CRM leads -----------------------------------------------------------
    @r.post("/customers", status_code=201, tags=["crm"], operation_id="create_customer")
    def create_customer(body: CustomerIn, session: SessionDep) -> CustomerOut:
        """Register a customer; the email must be new."""
        customer = db.Customer(name=body.name, email=body.email.lower())
        session.add(customer)
        try:
            session.flush()
        except IntegrityError:
            raise HTTPException(409, f"a customer with email {body.email} exists") from None
        return CustomerOut.model_validate(customer)

    @r.get("/customers", tags=["crm"], operation_id="find_customers")
    def find_customers(
        session: SessionDep, email: Annotated[str | None, Query(max_length=254)] = None
    ) -> list[CustomerOut]:
        """Customers, optionally only the one with this email."""
        query = select(db.Customer).order_by(db.Customer.id).limit(500)
        if email is not None:
            query = query.where(db.Customer.email == email.lower())
        return [CustomerOut.model_validate(c) for c in session.scalars(query)]

    @r.post("/leads", status_code=201, tags=["crm"], operation_id="create_crm_lead")
    def create_crm_lead(body: LeadIn, session: SessionDep) -> LeadOut:
        """Create a CRM lead for a prospective customer (the customer is created if new)."""
        email = body.email.lower()
        customer = session.scalar(select(db.Customer).where(db.Customer.email == email))
        if customer is None:
            customer = db.Customer(name=body.name, email=email)
            session.add(customer)
            session.flush()
        lead = db.Lead(customer_id=customer.id, interest=body.interest)
        session.add(lead)
        session.flush()
        return LeadOut.model_validate(lead)

    @r.get("/leads", tags=["crm"], operation_id="list_leads")
    def list_leads(
        session: SessionDep,
        lead_status: Annotated[
            Literal["new", "contacted", "qualified", "lost"] | None, Query(alias="status")
        ] = None,
    ) -> list[LeadOut]:
        """Leads, newest first, optionally of one status."""
        query = select(db.Lead).order_by(db.Lead.id.desc()).limit(500)
        if lead_status is not None:
            query = query.where(db.Lead.status == lead_status)
        return [LeadOut.model_validate(lead) for lead in session.scalars(query)]

    @r.patch("/leads/{lead_id}", tags=["crm"], operation_id="update_crm_lead")
    def update_crm_lead(lead_id: PathId, body: LeadUpdate, session: SessionDep) -> LeadOut:
        """Change a lead's status or owner, or schedule its follow-up."""
        lead = _get(session, db.Lead, lead_id)
        if body.status is not None:
            lead.status = body.status
        if body.owner is not None:
            lead.owner = body.owner
        if body.follow_up_in_days is not None:
            lead.follow_up_at = datetime.now(UTC) + timedelta(days=body.follow_up_in_days)
        session.flush()
        return LeadOut.model_validate(lead)

    # --- orders (the aiassist decision point) ----------------------------------------------
    @r.post("/orders", status_code=201, tags=["orders"], operation_id="place_order")
    def place_order(body: OrderIn, session: SessionDep) -> OrderOut:
        """Accept an order, or hold it for review when it is unusually large for the customer."""
        average = session.scalar(
            select(func.avg(db.Order.amount)).where(
                db.Order.customer_id == body.customer_id, db.Order.status == "accepted"
            )
        )
        ratio = body.amount / max(average or FIRST_ORDER_AVERAGE, 1.0)
        # aiassist: 2. the decision point. Before: `hold = ratio >= REVIEW_RATIO`.
        decision = AIAssistService.instance().decide(
            reference, {"signal": ratio, "threshold": REVIEW_RATIO}
        )  # given the module object, the answer is typed as its ReferenceDecision
        order = db.Order(
            customer_id=body.customer_id,
            amount=body.amount,
            status="held_for_review" if decision.act else "accepted",
            decision=DecisionInfo(
                decision_id=decision.decision_id,
                source=decision.source,
                model_version=decision.model_version,
                score=decision.score,
                explanation=decision.explanation,
            ).model_dump(),
        )
        session.add(order)
        session.flush()
        return OrderOut.model_validate(order)

    @r.get("/orders/{order_id}", tags=["orders"], operation_id="get_order")
    def get_order(order_id: PathId, session: SessionDep) -> OrderOut:
        return OrderOut.model_validate(_get(session, db.Order, order_id))

    @r.post("/orders/{order_id}/review", tags=["orders"], operation_id="review_order")
    def review_order(order_id: PathId, review: Review, session: SessionDep) -> ReviewResult:
        """A reviewer's verdict: reject fraud, accept the rest, and teach the AI layer."""
        order = _get(session, db.Order, order_id)
        order.status = "rejected" if review.fraud else "accepted"
        # aiassist: 3. what actually happened. Holding was right exactly when it was fraud.
        recorded = AIAssistService.instance().record_outcome(
            reference, order.decision["decision_id"], {"should_have_acted": review.fraud}
        )
        session.flush()
        return ReviewResult(order=OrderOut.model_validate(order), outcome_recorded=recorded)

    # --- refunds ---------------------------------------------------------------------------
    @r.post("/refunds", status_code=201, tags=["refunds"], operation_id="request_refund")
    def request_refund(body: RefundIn, session: SessionDep) -> RefundOut:
        """Record a customer's refund request; nothing is paid until `issue_refund`."""
        order = _get(session, db.Order, body.order_id)
        if body.amount > order.amount:
            raise RequestValidationError(
                [
                    {
                        "type": "less_than_equal",
                        "loc": ("body", "amount"),
                        "msg": f"a refund must not exceed the order's {order.amount}",
                        "input": body.amount,
                        "ctx": {"le": order.amount},
                    }
                ]
            )
        refund = db.Refund(order_id=order.id, amount=body.amount, reason=body.reason)
        session.add(refund)
        session.flush()
        return RefundOut.model_validate(refund)

    @r.post(
        "/refunds/{refund_id}/issue",
        tags=["refunds"],
        operation_id="issue_refund",
        openapi_extra={"x-aiassist-risk": "irreversible"},  # agents need an approval
    )
    def issue_refund(refund_id: PathId, session: SessionDep) -> RefundOut:
        """Pay a requested refund back to the customer. Money leaves: this cannot be undone."""
        refund = _get(session, db.Refund, refund_id)
        if refund.status != "requested":
            raise HTTPException(409, f"refund {refund_id} is already {refund.status}")
        refund.status = "paid"
        order = _get(session, db.Order, refund.order_id)
        order.status = "refunded"
        session.flush()
        return RefundOut.model_validate(refund)

    @r.delete("/refunds/{refund_id}", tags=["refunds"], operation_id="reject_refund")
    def reject_refund(refund_id: PathId, session: SessionDep) -> RefundOut:
        """Turn a refund request down."""
        refund = _get(session, db.Refund, refund_id)
        if refund.status != "requested":
            raise HTTPException(409, f"refund {refund_id} is already {refund.status}")
        refund.status = "rejected"
        session.flush()
        return RefundOut.model_validate(refund)

    # --- tickets ---------------------------------------------------------------------------
    @r.post("/tickets", status_code=201, tags=["tickets"], operation_id="open_ticket")
    def open_ticket(body: TicketIn, session: SessionDep) -> TicketOut:
        """Open a support ticket."""
        ticket = db.Ticket(
            customer_email=body.customer_email.lower(), subject=body.subject, body=body.body
        )
        session.add(ticket)
        session.flush()
        return TicketOut.model_validate(ticket)

    @r.get("/tickets", tags=["tickets"], operation_id="list_tickets")
    def list_tickets(
        session: SessionDep,
        ticket_status: Annotated[
            Literal["open", "assigned", "closed"] | None, Query(alias="status")
        ] = None,
    ) -> list[TicketOut]:
        """Tickets, oldest first, optionally of one status."""
        query = select(db.Ticket).order_by(db.Ticket.id).limit(500)
        if ticket_status is not None:
            query = query.where(db.Ticket.status == ticket_status)
        return [TicketOut.model_validate(t) for t in session.scalars(query)]

    @r.post("/tickets/{ticket_id}/triage", tags=["tickets"], operation_id="triage_ticket")
    def triage_ticket(ticket_id: PathId, body: TicketTriageIn, session: SessionDep) -> TicketOut:
        """Score a ticket for the queue: its order, category, queue and time to its SLA."""
        ticket = _get(session, db.Ticket, ticket_id)
        opened = ticket.created_at.replace(tzinfo=ticket.created_at.tzinfo or UTC)
        due = opened + timedelta(minutes=SLA_MINUTES[body.tier])
        now = datetime.now(UTC)
        # aiassist: 4. the tickets decision point: the rule (SLA first) until a model serves.
        decision = AIAssistService.instance().decide(
            tickets,
            {
                "source": "complaint",
                "tier": body.tier,
                "affected_users": body.affected_users,
                "deadline_in_s": (due - now).total_seconds(),
                "age_s": max((now - opened).total_seconds(), 0.0),
                "text": f"{ticket.subject}\n{ticket.body}"[:4000],
            },
        )
        ticket.triage = TicketTriage(
            decision_id=decision.decision_id,
            source=decision.source,
            score=decision.score,
            category=decision.category,
            queue=decision.queue,
            est_handling_s=decision.est_handling_s,
            sla_due_at=due,
            explanation=decision.explanation,
        ).model_dump(mode="json")
        session.flush()
        return TicketOut.model_validate(ticket)

    @r.post("/tickets/{ticket_id}/assign", tags=["tickets"], operation_id="assign_ticket")
    def assign_ticket(ticket_id: PathId, body: TicketAssignment, session: SessionDep) -> TicketOut:
        """Give a ticket a category and an assignee."""
        ticket = _get(session, db.Ticket, ticket_id)
        ticket.assignee, ticket.category, ticket.status = body.assignee, body.category, "assigned"
        session.flush()
        return TicketOut.model_validate(ticket)

    # --- email -----------------------------------------------------------------------------
    @r.post("/emails", status_code=201, tags=["email"], operation_id="send_email")
    def send(body: EmailIn, request: Request, session: SessionDep) -> EmailOut:
        """Send a plain-text email to a customer."""
        try:
            sent = send_email(session, request.app.state.settings, body.to, body.subject, body.body)
        except (OSError, smtplib.SMTPException) as exc:
            raise HTTPException(502, f"the mail server refused or is down: {exc}") from None
        session.flush()
        return EmailOut.model_validate(sent)

    @r.get("/emails", tags=["email"], operation_id="list_emails")
    def list_emails(
        session: SessionDep, to: Annotated[str | None, Query(max_length=254)] = None
    ) -> list[EmailOut]:
        """Sent email, oldest first, optionally to one address."""
        query = select(db.SentEmail).order_by(db.SentEmail.id).limit(500)
        if to is not None:
            query = query.where(db.SentEmail.to == to)
        return [EmailOut.model_validate(e) for e in session.scalars(query)]

    # --- reports ---------------------------------------------------------------------------
    @r.get("/reports/daily", tags=["reports"], operation_id="daily_report")
    def daily_report(session: SessionDep) -> DailyReport:
        """Today's figures (UTC) across leads, orders, refunds and tickets."""
        since = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)

        def count(model: Any, *where: Any) -> int:
            return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)

        def total(column: Any, *where: Any) -> float:
            return float(session.scalar(select(func.coalesce(func.sum(column), 0)).where(*where)))

        return DailyReport(
            day=since.date().isoformat(),
            new_leads=count(db.Lead, db.Lead.created_at >= since),
            orders=count(db.Order, db.Order.created_at >= since),
            revenue=total(
                db.Order.amount, db.Order.created_at >= since, db.Order.status == "accepted"
            ),
            held_for_review=count(db.Order, db.Order.status == "held_for_review"),
            refunds_requested=count(db.Refund, db.Refund.status == "requested"),
            refunded_amount=total(
                db.Refund.amount, db.Refund.created_at >= since, db.Refund.status == "paid"
            ),
            open_tickets=count(db.Ticket, db.Ticket.status != "closed"),
        )

    return r


app = create_app()
