"""The shipped flows from their triggers to their end states, end to end.

Real PostgreSQL (aiassist's database and the example backend's), real HTTP (both apps under
uvicorn on loopback, the backend's OpenAPI imported as tools), real SMTP (aiosmtpd: the
backend's outbound sink and aiassist's inbound listener). Time is injected into the cron
scheduler, never slept.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import smtplib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from email import message_from_bytes
from email.message import EmailMessage, Message
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from examples.backend.app import create_app as create_backend
from examples.backend.db import BackendSettings
from fastapi import FastAPI
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from aiassist import AIAssistService
from aiassist.agent.automation import Automation
from aiassist.agent.flows import FlowError
from aiassist.agent.sources.openapi import OpenAPISource
from aiassist.server import create_app
from aiassist.settings import Settings
from aiassist.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from aiassist.store.db import make_engine, make_sessionmaker
from aiassist.store.keys import KeyStore
from aiassist.store.models import AuditEvent

from .conftest import PG_ADMIN_URL, free_port, serving, wait_for

ROOT = Path(__file__).resolve().parent.parent
FLOWS = ROOT / "examples" / "backend" / "flows"
SECRET = "support-webhook-secret-0123456789"


@dataclass
class Inbox:
    """The backend's outbound mail server: keeps every message."""

    messages: list[Message] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"

    def to(self, address: str) -> list[Message]:
        return [m for m in self.messages if m["To"] == address]


@dataclass
class Stack:
    backend: str
    backend_app: FastAPI
    service: str
    app: FastAPI
    inbox: Inbox
    smtp_port: int
    runner: dict[str, str]
    approver: dict[str, str]
    admin: dict[str, str]  # sees every principal's runs, the service identity's too
    pg_url: str

    @property
    def automation(self) -> Automation:
        automation: Automation = self.app.state.automation
        return automation

    def get(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.backend}{path}", params=params, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    def run(self, run_id: str) -> dict[str, Any]:
        response = httpx.get(
            f"{self.service}/v1/agent/runs/{run_id}", headers=self.admin, timeout=10
        )
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def runs(self, **params: Any) -> list[dict[str, Any]]:
        response = httpx.get(
            f"{self.service}/v1/agent/runs", params=params, headers=self.admin, timeout=10
        )
        assert response.status_code == 200, response.text
        result: list[dict[str, Any]] = response.json()
        return result

    def settled(self, run_id: str) -> dict[str, Any]:
        """The run once it ended or paused (polled, generously)."""
        wait_for(lambda: self.run(run_id)["status"] != "running", 30, f"run {run_id} to settle")
        return self.run(run_id)


@pytest.fixture
def backend_db() -> Iterator[str]:
    """An empty PostgreSQL database for the example backend (it creates its tables)."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"aiassist_backend_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def stack(
    pg_url: str,
    sqlite_url: str,
    backend_db: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Stack]:
    inbox, sink_port = Inbox(), free_port()
    sink = Controller(inbox, hostname="127.0.0.1", port=sink_port)
    sink.start()
    AIAssistService.reset()
    AIAssistService.setup(Settings(data_dir=tmp_path / "backend-ai", database_url=sqlite_url))
    backend_app = create_backend(BackendSettings(database_url=backend_db, smtp_port=sink_port))
    try:
        with serving(backend_app) as backend:
            document = httpx.get(f"{backend}/openapi.json", timeout=10).json()
            tools = OpenAPISource(document, base_url=backend).tools()
            monkeypatch.setenv("AIASSIST_WEBHOOK_SECRET_SUPPORT", SECRET)
            smtp_port = free_port()
            settings = Settings(
                data_dir=tmp_path / "service",
                database_url=pg_url,
                flows_dir=FLOWS,
                smtp_listen=f"127.0.0.1:{smtp_port}",
            )
            engine = make_engine(pg_url)
            keys = KeyStore(make_sessionmaker(engine), cache_seconds=0)
            runner = keys.create("ops", ["agent:run"], actor="test").token
            approver = keys.create("manager", ["agent:approve"], actor="test").token
            admin = keys.create("operator", ["admin"], actor="test").token
            engine.dispose()
            app = create_app(settings, agent_tools=tools)
            with serving(app) as service:
                wait_for(lambda: getattr(app.state, "automation", None) is not None, 20)
                yield Stack(
                    backend,
                    backend_app,
                    service,
                    app,
                    inbox,
                    smtp_port,
                    {"authorization": f"Bearer {runner}"},
                    {"authorization": f"Bearer {approver}"},
                    {"authorization": f"Bearer {admin}"},
                    pg_url,
                )
    finally:
        AIAssistService.reset()
        sink.stop()


def mail(stack: Stack, subject: str, body: str, message_id: str = "<q1@example.com>") -> None:
    message = EmailMessage()
    message["From"] = "Zhang San <zhangsan@example.com>"
    message["To"] = "sales@order-center.example"
    message["Subject"] = subject
    message["Message-ID"] = message_id
    message.set_content(body)
    with smtplib.SMTP("127.0.0.1", stack.smtp_port, timeout=30) as smtp:
        smtp.send_message(message)


def calls(run: dict[str, Any]) -> list[tuple[str, str]]:
    return [(c["tool"], c["status"]) for c in run["calls"]]


# --- inbound email -> lead_intake ------------------------------------------------------------
@pytest.mark.postgres
def test_inbound_mail_becomes_a_lead_an_intro_and_a_follow_up(stack: Stack) -> None:
    mail(stack, "Product question", "Hello, I would like to learn about your product.")
    [run] = stack.runs(flow="lead_intake")  # recorded before the mail was acknowledged
    run = stack.settled(run["id"])
    [lead] = stack.get("/leads")
    assert lead["status"] == "contacted" and lead["follow_up_at"] is not None
    assert "Product question" in lead["interest"]
    [intro] = stack.inbox.to("zhangsan@example.com")
    assert intro["Subject"] == "Re: Product question"
    assert "Hello Zhang San" in intro.get_payload()

    assert run["status"] == "succeeded" and run["principal"] == "service:automation"
    assert run["key"].startswith("email:sales@order-center.example:")
    assert calls(run) == [
        ("create_crm_lead", "succeeded"),
        ("send_email", "succeeded"),
        ("update_crm_lead", "succeeded"),
    ]

    mail(stack, "Product question", "Hello again", message_id="<q1@example.com>")  # redelivered
    assert len(stack.runs(flow="lead_intake")) == 1 and len(stack.get("/leads")) == 1

    # ROI, by the API and by Prometheus
    flows = httpx.get(f"{stack.service}/v1/flows", headers=stack.runner, timeout=10).json()
    lead_flow = next(f for f in flows if f["name"] == "lead_intake")
    assert lead_flow["triggers"] == [{"email": "sales@order-center.example"}]
    assert [s["id"] for s in lead_flow["steps"]] == ["lead", "intro", "follow_up"]
    assert lead_flow["roi"] == {
        "runs": 1,
        "succeeded": 1,
        "failed": 0,
        "waiting_approval": 0,
        "success_rate": 1.0,
        "errors_caught": 0,
        "minutes_saved": 6.0,
    }
    metrics = httpx.get(f"{stack.service}/metrics", timeout=10).text
    assert 'aiassist_flow_runs_total{flow="lead_intake",status="succeeded"} 1.0' in metrics
    assert 'aiassist_flow_minutes_saved_total{flow="lead_intake"} 6.0' in metrics


@pytest.mark.postgres
def test_a_dry_run_lists_the_calls_and_changes_nothing(stack: Stack) -> None:
    email = {
        "sender": "li.si@example.com",
        "sender_name": "Li Si",
        "subject": "Prices",
        "text": "What does it cost?",
    }
    response = httpx.post(
        f"{stack.service}/v1/flows/lead_intake/runs",
        json={"input": email, "dry_run": True},
        headers=stack.runner,
        timeout=30,
    )
    assert response.status_code == 201, response.text
    run = stack.settled(response.json()["id"])
    assert run["status"] == "succeeded" and run["dry_run"] is True
    assert stack.get("/leads") == [] and stack.get("/emails") == [] and stack.inbox.messages == []
    lead, intro, follow_up = run["calls"]
    assert lead["tool"] == "create_crm_lead" and lead["arguments"]["body"] == {
        "name": "Li Si",
        "email": "li.si@example.com",
        "interest": "Prices: What does it cost?",
    }
    assert lead["result"]["dry_run"] is True and lead["result"]["method"] == "POST"
    assert lead["result"]["url"] == f"{stack.backend}/leads"
    assert intro["tool"] == "send_email" and intro["arguments"]["body"]["to"] == "li.si@example.com"
    assert follow_up["arguments"]["lead_id"] == "<unknown in a dry run>"
    assert follow_up["arguments"]["body"] == {"status": "contacted", "follow_up_in_days": 3}
    flows = httpx.get(f"{stack.service}/v1/flows", headers=stack.runner, timeout=10).json()
    assert next(f for f in flows if f["name"] == "lead_intake")["roi"]["runs"] == 0


# --- signed webhook -> ticket_intake -----------------------------------------------------------
def post_hook(
    stack: Stack, body: bytes, secret: str = SECRET, stamp: int | None = None
) -> httpx.Response:
    stamp = stamp or int(time.time())
    headers = {TIMESTAMP_HEADER: str(stamp), SIGNATURE_HEADER: sign(secret, stamp, body)}
    url = f"{stack.service}/v1/hooks/support"
    return httpx.post(url, content=body, headers=headers, timeout=30)


@pytest.mark.postgres
def test_a_signed_webhook_opens_and_assigns_a_ticket(stack: Stack) -> None:
    body = json.dumps(
        {"email": "wu@example.com", "subject": "Parcel is late", "body": "Where is my delivery?"}
    ).encode()
    stamp = int(time.time())
    response = post_hook(stack, body, stamp=stamp)
    assert response.status_code == 200, response.text
    assert response.json()["result"]["status"] == "succeeded", response.text
    [ticket] = stack.get("/tickets")
    assert (ticket["category"], ticket["assignee"], ticket["status"]) == (
        "delivery",
        "wang.wei",
        "assigned",
    )
    triage = ticket["triage"]  # the tickets module's answer, kept with the ticket
    assert triage["source"] == "fallback" and triage["queue"] and 0 < triage["score"] <= 1
    assert post_hook(stack, body, stamp=stamp).status_code == 200  # resent: one event, one run
    assert len(stack.get("/tickets")) == 1 and len(stack.runs(flow="ticket_intake")) == 1

    refused = post_hook(stack, body, secret="not-the-secret-at-all-0000")
    assert refused.status_code == 401
    engine = make_engine(stack.pg_url)
    with make_sessionmaker(engine)() as session:
        kinds = session.scalars(
            select(AuditEvent.kind).where(AuditEvent.subject == "webhook/support")
        ).all()
    engine.dispose()
    assert "webhook.refused" in kinds
    assert len(stack.get("/tickets")) == 1


# --- refund: waits for a person ---------------------------------------------------------------
@pytest.mark.postgres
def test_a_refund_waits_for_approval_then_pays_and_confirms(stack: Stack) -> None:
    order = httpx.post(
        f"{stack.backend}/orders", json={"customer_id": "c-7", "amount": 80.0}, timeout=10
    ).json()
    request = {"order_id": order["id"], "amount": 30.0, "reason": "broken", "email": "c7@ex.com"}
    response = httpx.post(
        f"{stack.service}/v1/flows/refund/runs",
        json={"input": request},
        headers=stack.runner | {"Idempotency-Key": "refund-c7-1"},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    run = stack.settled(response.json()["id"])
    assert run["status"] == "waiting_approval"
    assert calls(run) == [("request_refund", "succeeded"), ("issue_refund", "waiting_approval")]
    [refund] = [c["result"] for c in run["calls"] if c["tool"] == "request_refund"]
    assert refund["status"] == "requested" and stack.inbox.messages == []  # nothing paid

    again = httpx.post(
        f"{stack.service}/v1/flows/refund/runs",
        json={"input": request},
        headers=stack.runner | {"Idempotency-Key": "refund-c7-1"},
        timeout=30,
    )
    assert again.json()["id"] == run["id"]  # a retried request: the same run

    [approval] = run["pending_approvals"]
    decided = httpx.post(
        f"{stack.service}/v1/approvals/{approval}",
        json={"decision": "approve", "wait_seconds": 30},
        headers=stack.approver,
        timeout=60,
    )
    assert decided.status_code == 200, decided.text
    run = stack.settled(run["id"])
    assert run["status"] == "succeeded", run
    assert stack.get(f"/orders/{order['id']}")["status"] == "refunded"
    [confirmation] = stack.inbox.to("c7@ex.com")
    assert confirmation["Subject"] == "Your refund of 30.0"


# --- cron: daily_report on injected time --------------------------------------------------------
@pytest.mark.postgres
def test_the_daily_report_fires_on_schedule(stack: Stack) -> None:
    httpx.post(
        f"{stack.backend}/tickets",
        json={"customer_email": "a@ex.com", "subject": "Login error", "body": "cannot log in"},
        timeout=10,
    )
    automation, loop = stack.automation, stack.automation.loop
    assert loop is not None
    due = automation.scheduler.next_due()
    assert due is not None and (due.hour, due.minute) == (18, 0)

    def tick(seconds: float) -> list[Any]:
        at = due + timedelta(seconds=seconds)
        return asyncio.run_coroutine_threadsafe(automation.scheduler.tick(at), loop).result(30)

    assert tick(-1) == []  # a second early: nothing
    [firing] = tick(0)
    assert (firing.schedule, firing.action) == ("daily_report#0", "started")
    wait_for(lambda: len(stack.inbox.messages) == 1, 30, "the daily report")
    [report] = stack.inbox.to("manager@order-center.example")
    assert report["Subject"].startswith("Daily report ")
    assert "Open tickets: 1" in report.get_payload() and "Login error" in report.get_payload()
    [run] = stack.runs(flow="daily_report")
    assert stack.settled(run["id"])["status"] == "succeeded"
    assert run["key"] == f"cron:daily_report#0:{due.isoformat()}"


# --- a failing step -------------------------------------------------------------------------------
@pytest.mark.postgres
def test_a_failing_step_retries_then_fails_recorded_and_is_not_repeated(stack: Stack) -> None:
    settings: BackendSettings = stack.backend_app.state.settings
    stack.backend_app.state.settings = settings.model_copy(update={"smtp_port": free_port()})
    email = {"sender": "x@example.com", "sender_name": "X", "subject": "Hi", "text": "More?"}
    body = {"input": email}
    headers = stack.runner | {"Idempotency-Key": "mail-x-1"}
    response = httpx.post(
        f"{stack.service}/v1/flows/lead_intake/runs", json=body, headers=headers, timeout=60
    )
    run = stack.settled(response.json()["id"])
    assert run["status"] == "failed"
    assert "step 'intro' failed after 3 attempts" in run["error"] and "502" in run["error"]
    assert calls(run) == [
        ("create_crm_lead", "succeeded"),
        ("send_email", "failed"),
        ("send_email", "failed"),
        ("send_email", "failed"),
    ]
    assert all(c["result"]["retryable"] for c in run["calls"][1:])

    stack.backend_app.state.settings = settings  # the mail server is back; a retry by key...
    again = httpx.post(
        f"{stack.service}/v1/flows/lead_intake/runs", json=body, headers=headers, timeout=60
    )
    assert again.json()["id"] == run["id"] and again.json()["status"] == "failed"
    assert len(stack.get("/leads")) == 1 and stack.inbox.messages == []  # ...repeats nothing

    flows = httpx.get(f"{stack.service}/v1/flows", headers=stack.runner, timeout=10).json()
    roi = next(f for f in flows if f["name"] == "lead_intake")["roi"]
    assert (roi["failed"], roi["errors_caught"], roi["success_rate"]) == (1, 3, 0.0)
    assert [r["id"] for r in stack.runs(status="failed")] == [run["id"]]


# --- validation and configuration --------------------------------------------------------------
@pytest.mark.postgres
def test_validate_names_lines_and_unknown_tools(stack: Stack) -> None:
    def validate(text_: str) -> httpx.Response:
        return httpx.post(
            f"{stack.service}/v1/flows/validate",
            json={"text": text_, "source": "mine.yaml"},
            headers=stack.runner,
            timeout=10,
        )

    good = validate((FLOWS / "refund.yaml").read_text())
    assert good.status_code == 200 and good.json()["tools"][1] == "issue_refund"
    bad = validate("name: x\nsteps:\n  - id: a\n    tool: t\n    colour: red\n")
    assert bad.status_code == 422
    [problem] = bad.json()["detail"]["problems"]
    assert problem["line"] == 5 and "colour" in problem["message"]
    unknown = validate("name: x\nsteps:\n  - id: a\n    tool: launch_rocket\n")
    assert unknown.status_code == 422
    assert unknown.json()["detail"]["problems"] == [
        {"line": 4, "message": "unknown tool 'launch_rocket'"}
    ]
    assert httpx.get(f"{stack.service}/v1/flows", timeout=10).status_code == 401
    missing = httpx.post(
        f"{stack.service}/v1/flows/nope/runs", json={}, headers=stack.runner, timeout=10
    )
    assert missing.status_code == 404


def test_a_bad_flow_file_stops_the_start_up(tmp_path: Path, sqlite_url: str) -> None:
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "ok.yaml").write_text((FLOWS / "refund.yaml").read_text())
    (flows / "bad.yaml").write_text(
        "name: bad\nsteps:\n  - id: a\n    tool: t\n    triggers: []\ntriggers:\n"
        "  - cron: '61 * * * *'\n"
    )
    settings = Settings(data_dir=tmp_path, database_url=sqlite_url, flows_dir=flows)
    with pytest.raises(FlowError) as raised:
        create_app(settings)
    assert str(raised.value).startswith(f"{flows / 'bad.yaml'}:")
    assert {line for line, _ in raised.value.problems} == {5, 7}
