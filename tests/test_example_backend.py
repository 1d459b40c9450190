"""The example customer and order center on real PostgreSQL, with mail to a real SMTP server."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from examples.backend.app import create_app
from examples.backend.db import BackendSettings
from fastapi.testclient import TestClient

from aiassist import AIAssistService
from aiassist.settings import Settings

from .conftest import free_port


@dataclass
class Inbox:
    """An aiosmtpd handler keeping every message it receives."""

    messages: list[Message] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, int]]:
    handler, port = Inbox(), free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler, port
    controller.stop()


@pytest.fixture
def settings(sqlite_url: str, tmp_path: Path) -> Settings:
    """aiassist itself runs in the backend's process, on its own SQLite file."""
    return Settings(data_dir=tmp_path, database_url=sqlite_url)


@contextmanager
def serve(backend: BackendSettings, settings: Settings) -> Iterator[TestClient]:
    AIAssistService.reset()
    AIAssistService.setup(settings)  # the lifespan's setup() keeps these
    try:
        with TestClient(create_app(backend)) as client:
            yield client
    finally:
        AIAssistService.reset()


@pytest.fixture
def client(pg_url: str, inbox: tuple[Inbox, int], settings: Settings) -> Iterator[TestClient]:
    with serve(BackendSettings(database_url=pg_url, smtp_port=inbox[1]), settings) as client:
        yield client


def test_the_seed_example_lead_and_intro_email(
    client: TestClient, inbox: tuple[Inbox, int]
) -> None:
    lead = client.post(
        "/leads",
        json={"name": "Zhang San", "email": "zhangsan@example.com", "interest": "the product"},
    )
    assert lead.status_code == 201, lead.text
    assert lead.json()["status"] == "new"
    [customer] = client.get("/customers", params={"email": "ZhangSan@example.com"}).json()
    assert customer == {
        "id": lead.json()["customer_id"],
        "name": "Zhang San",
        "email": "zhangsan@example.com",
    }

    sent = client.post(
        "/emails",
        json={"to": "zhangsan@example.com", "subject": "Welcome", "body": "Here is our product."},
    )
    assert sent.status_code == 201, sent.text
    [message] = inbox[0].messages
    assert message["To"] == "zhangsan@example.com" and message["Subject"] == "Welcome"
    assert message["Message-ID"] == sent.json()["message_id"]
    assert "Here is our product." in message.get_payload()

    updated = client.patch(
        f"/leads/{lead.json()['id']}", json={"status": "contacted", "follow_up_in_days": 3}
    )
    assert updated.json()["status"] == "contacted" and updated.json()["follow_up_at"]


def test_an_idempotency_key_replays_the_first_answer(
    client: TestClient, inbox: tuple[Inbox, int]
) -> None:
    body = {"to": "a@example.com", "subject": "Once", "body": "only once"}
    headers = {"Idempotency-Key": "run-1/step-2/abc"}
    first = client.post("/emails", json=body, headers=headers)
    again = client.post("/emails", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["idempotent-replay"] == "true"
    assert len(inbox[0].messages) == 1 and len(client.get("/emails").json()) == 1

    other = client.post(
        "/tickets",
        json={"customer_email": "a@example.com", "subject": "x", "body": "y"},
        headers=headers,
    )
    assert other.status_code == 422 and "already used for POST /emails" in other.json()["detail"]


def test_concurrent_repeats_have_one_effect(client: TestClient, inbox: tuple[Inbox, int]) -> None:
    body = {"to": "b@example.com", "subject": "Race", "body": "one"}
    headers = {"Idempotency-Key": "race"}
    with ThreadPoolExecutor(4) as pool:
        answers = pool.map(lambda _: client.post("/emails", json=body, headers=headers), range(4))
        codes = sorted(r.status_code for r in answers)
    assert 201 in codes and set(codes) <= {201, 409}
    assert len(inbox[0].messages) == 1


def test_a_mail_server_outage_is_a_502_and_can_be_retried(pg_url: str, settings: Settings) -> None:
    with serve(BackendSettings(database_url=pg_url, smtp_port=free_port()), settings) as c:
        headers = {"Idempotency-Key": "k"}
        body = {"to": "c@example.com", "subject": "s", "body": "b"}
        failed = c.post("/emails", json=body, headers=headers)
        assert failed.status_code == 502 and "mail server" in failed.json()["detail"]
        assert c.post("/emails", json=body, headers=headers).status_code == 502  # not replayed


def test_refund_request_then_issue_once(client: TestClient) -> None:
    order = client.post("/orders", json={"customer_id": "c1", "amount": 40.0}).json()
    assert order["status"] == "accepted" and order["decision"]["source"] == "fallback"
    too_much = client.post("/refunds", json={"order_id": order["id"], "amount": 41, "reason": "x"})
    assert too_much.status_code == 422
    refund = client.post("/refunds", json={"order_id": order["id"], "amount": 40, "reason": "late"})
    assert refund.json()["status"] == "requested"
    paid = client.post(f"/refunds/{refund.json()['id']}/issue")
    assert paid.json()["status"] == "paid"
    assert client.post(f"/refunds/{refund.json()['id']}/issue").status_code == 409
    assert client.get(f"/orders/{order['id']}").json()["status"] == "refunded"
    assert client.post("/refunds/999/issue").status_code == 404


def test_tickets_and_the_daily_report(client: TestClient) -> None:
    new = {"customer_email": "d@example.com", "subject": "Invoice", "body": "wrong VAT"}
    ticket = client.post("/tickets", json=new).json()
    assigned = client.post(
        f"/tickets/{ticket['id']}/assign", json={"assignee": "li", "category": "billing"}
    ).json()
    assert (assigned["status"], assigned["assignee"], assigned["category"]) == (
        "assigned",
        "li",
        "billing",
    )
    client.post("/leads", json={"name": "W", "email": "w@example.com", "interest": "pricing"})
    client.post("/orders", json={"customer_id": "c2", "amount": 30.0})
    client.post("/orders", json={"customer_id": "c2", "amount": 3000.0})  # held for review
    report = client.get("/reports/daily").json()
    assert report["new_leads"] == 1 and report["orders"] == 2 and report["revenue"] == 30.0
    assert report["held_for_review"] == 1 and report["open_tickets"] == 1


def test_bad_input_is_a_422_naming_the_field(client: TestClient) -> None:
    response = client.post("/leads", json={"name": "", "email": "not-an-email", "interest": "x"})
    assert response.status_code == 422
    assert {tuple(e["loc"]) for e in response.json()["detail"]} == {
        ("body", "name"),
        ("body", "email"),
    }
    assert client.post("/customers", json={"name": "A", "email": "a@b.co"}).status_code == 201
    assert client.post("/customers", json={"name": "A", "email": "A@b.co"}).status_code == 409


def test_every_operation_has_an_id_for_tool_import(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    ids = [op["operationId"] for path in spec["paths"].values() for op in path.values()]
    assert len(ids) == len(set(ids))
    assert {"create_crm_lead", "send_email", "issue_refund", "daily_report"} <= set(ids)
