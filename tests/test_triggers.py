"""Triggers: cron on injected time, signed webhooks over real HTTP, inbound mail over real SMTP."""

from __future__ import annotations

import asyncio
import json
import smtplib
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import select

from aiassist.agent.triggers import (
    CronScheduler,
    EmailTrigger,
    Event,
    Overlap,
    Schedule,
    Webhook,
    webhook_router,
)
from aiassist.signing import sign
from aiassist.store.audit import AuditLog
from aiassist.store.db import make_engine, make_sessionmaker
from aiassist.store.models import AuditEvent

from .conftest import free_port, serving

T0 = datetime(2026, 11, 23, 8, 59, 30, tzinfo=UTC)


class Runs:
    """A starter that records events; each run lasts until `release()` unless told not to."""

    def __init__(self, hold: bool = False) -> None:
        self.started: list[Event] = []
        self.finished: list[str] = []
        self.cancelled: list[str] = []
        self.hold = hold
        self._gate = asyncio.Event()

    def release(self) -> None:
        self._gate.set()

    async def __call__(self, event: Event) -> dict[str, Any]:
        self.started.append(event)
        try:
            if self.hold:
                await self._gate.wait()
        except asyncio.CancelledError:
            self.cancelled.append(event.id)
            raise
        self.finished.append(event.id)
        return {"run": f"run-{len(self.started)}", "payload": event.payload}


# --- cron ------------------------------------------------------------------------------------
async def test_a_schedule_fires_at_its_time_and_not_before() -> None:
    runs = Runs()
    daily = Schedule("daily-report", "0 9 * * *", "daily_report", {"format": "short"})
    scheduler = CronScheduler([daily], runs, clock=lambda: T0)
    assert scheduler.next_due() == datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    assert await scheduler.tick(T0 + timedelta(seconds=29)) == []
    [firing] = await scheduler.tick(T0 + timedelta(seconds=30))
    assert (firing.schedule, firing.action) == ("daily-report", "started")
    assert firing.event.at == datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    assert (firing.event.kind, firing.event.target, firing.event.payload) == (
        "cron",
        "daily_report",
        {"format": "short"},
    )
    await scheduler.join()
    assert runs.finished == [firing.event.id]
    assert scheduler.next_due() == datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


async def test_missed_firings_are_coalesced_into_one() -> None:
    runs = Runs()
    scheduler = CronScheduler([Schedule("5min", "*/5 * * * *", "t")], runs, clock=lambda: T0)
    firings = await scheduler.tick(T0 + timedelta(hours=2))  # 24 firings were due
    assert len(firings) == 1 and len(runs.started) == 1
    assert scheduler.next_due() == datetime(2026, 11, 23, 11, 0, tzinfo=UTC)  # after 10:59:30


async def test_a_schedule_in_a_timezone() -> None:
    runs = Runs()
    shanghai = Schedule("morning", "0 9 * * *", "t", timezone="Asia/Shanghai")
    scheduler = CronScheduler([shanghai], runs, clock=lambda: T0)
    assert scheduler.next_due() == datetime(2026, 11, 24, 1, 0, tzinfo=UTC)  # 09:00 UTC+8


@pytest.mark.parametrize(
    ("overlap", "actions", "started", "cancelled"),
    [
        (Overlap.SKIP, ["started", "skipped", "skipped"], 1, 0),
        (Overlap.QUEUE, ["started", "queued", "queued"], 2, 0),
        (Overlap.CANCEL, ["started", "replaced", "replaced"], 3, 2),
    ],
)
async def test_overlap_policy(
    overlap: Overlap, actions: list[str], started: int, cancelled: int
) -> None:
    runs = Runs(hold=True)
    minute = Schedule("each-minute", "* * * * *", "t", overlap=overlap)
    scheduler = CronScheduler([minute], runs, clock=lambda: T0)
    fired = []
    for i in range(1, 4):
        fired += await scheduler.tick(T0 + timedelta(minutes=i))
    assert [f.action for f in fired] == actions
    assert scheduler.running("each-minute")
    runs.release()
    await scheduler.join()
    assert len(runs.started) == started and len(runs.cancelled) == cancelled
    assert not scheduler.running("each-minute")
    if overlap is Overlap.QUEUE:  # only the latest waiting firing runs, after the first
        assert [e.id for e in runs.started] == [fired[0].event.id, fired[2].event.id]
    await scheduler.aclose()


async def test_a_failing_run_does_not_stop_the_schedule() -> None:
    async def failing(event: Event) -> None:
        raise RuntimeError("downstream is down")

    scheduler = CronScheduler([Schedule("m", "* * * * *", "t")], failing, clock=lambda: T0)
    assert [f.action for f in await scheduler.tick(T0 + timedelta(minutes=1))] == ["started"]
    await scheduler.join()
    assert [f.action for f in await scheduler.tick(T0 + timedelta(minutes=2))] == ["started"]


async def test_run_loop_fires_on_the_clock() -> None:
    now = T0 + timedelta(seconds=29.95)
    looked, fired = asyncio.Event(), asyncio.Event()
    reads = 0

    def clock() -> datetime:
        nonlocal reads
        reads += 1
        if reads > 3:  # the loop has slept and looked again, more than once
            looked.set()
        return now

    runs = Runs()
    scheduler = CronScheduler(
        [Schedule("m", "* * * * *", "t")], runs, clock=clock, on_fire=lambda _: fired.set()
    )
    loop = asyncio.create_task(scheduler.run(max_sleep=0.01))
    await asyncio.wait_for(looked.wait(), 5)
    assert runs.started == []  # not due yet: it went back to sleep
    now = T0 + timedelta(seconds=31)
    await asyncio.wait_for(fired.wait(), 5)
    loop.cancel()
    await scheduler.join()
    assert len(runs.started) == 1 and runs.finished == [runs.started[0].id]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cron": "61 * * * *"}, "is not a 5-field cron"),
        ({"cron": "* * * *"}, "is not a 5-field cron"),
        ({"timezone": "Mars/Olympus"}, "unknown timezone"),
    ],
)
def test_bad_schedules_are_refused(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Schedule(**{"name": "x", "cron": "* * * * *", "target": "t", **kwargs})


# --- webhooks ---------------------------------------------------------------------------------
SECRET = "whsec-0123456789abcdef"


@pytest.fixture
def audit(sqlite_url: str) -> Iterator[AuditLog]:
    engine = make_engine(sqlite_url)
    yield AuditLog(make_sessionmaker(engine))
    engine.dispose()


def refusals(log: AuditLog) -> list[str]:
    with log._sessions() as session:
        query = select(AuditEvent).where(AuditEvent.kind == "webhook.refused")
        return [e.data["reason"] for e in session.scalars(query)]


@pytest.fixture
def hook_server(audit: AuditLog) -> Iterator[tuple[str, Runs]]:
    runs = Runs()
    app = FastAPI()
    hook = Webhook("new-ticket", "ticket_intake", SecretStr(SECRET))
    app.include_router(webhook_router([hook], runs, audit=audit))
    with serving(app) as url:
        yield url, runs


def post(url: str, body: bytes, secret: str = SECRET, stamp: int | None = None) -> httpx.Response:
    stamp = int(time.time()) if stamp is None else stamp
    headers = {
        "x-aiassist-timestamp": str(stamp),
        "x-aiassist-signature": sign(secret, stamp, body),
        "content-type": "application/json",
    }
    return httpx.post(f"{url}/v1/hooks/new-ticket", content=body, headers=headers, timeout=10)


def test_a_signed_webhook_starts_its_flow_once(
    hook_server: tuple[str, Runs], audit: AuditLog
) -> None:
    url, runs = hook_server
    body = json.dumps({"email": "zhangsan@example.com", "subject": "Where is my order?"}).encode()
    first = post(url, body)
    assert first.status_code == 200, first.text
    answer = first.json()
    assert answer["target"] == "ticket_intake" and answer["result"]["run"] == "run-1"
    [event] = runs.started
    assert (event.kind, event.target, event.trigger) == ("webhook", "ticket_intake", "new-ticket")
    assert event.payload["subject"] == "Where is my order?" and event.id == answer["event"]

    stamp = int(time.time())
    resent = [post(url, body, stamp=stamp).json()["event"] for _ in range(2)]
    assert resent[0] == resent[1]  # the same delivery resent is the same event
    assert audit.verify().ok


def test_bad_webhooks_are_refused_and_audited(
    hook_server: tuple[str, Runs], audit: AuditLog
) -> None:
    url, runs = hook_server
    body = b'{"email": "x@example.com"}'
    assert post(url, body, secret="not-the-secret-at-all").status_code == 401
    stale = post(url, body, stamp=int(time.time()) - 3600)
    assert stale.status_code == 401 and "tolerance" in stale.json()["detail"]
    unsigned = httpx.post(f"{url}/v1/hooks/new-ticket", content=body)
    assert unsigned.status_code == 401 and "missing" in unsigned.json()["detail"]
    assert runs.started == []
    assert post(url, body).status_code == 200 and len(runs.started) == 1
    assert refusals(audit) == [
        "signature does not match",
        "timestamp outside the tolerance (replayed?)",
        "missing x-aiassist-timestamp or x-aiassist-signature",
    ]
    assert post(url, b"[1, 2]").status_code == 422
    assert httpx.post(f"{url}/v1/hooks/nope", content=body).status_code == 404


def test_a_webhook_secret_must_be_long() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        Webhook("w", "t", SecretStr("short"))


# --- inbound email -----------------------------------------------------------------------------
def send(port: int, to: str, subject: str = "Interested", body: str = "Hello") -> None:
    message = EmailMessage()
    message["From"] = "Zhang San <zhangsan@example.com>"
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = "<m1@example.com>"
    message.set_content(body)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.send_message(message)


def test_inbound_email_starts_the_flow_of_its_address() -> None:
    received: list[Event] = []

    async def start(event: Event) -> None:
        received.append(event)

    trigger = EmailTrigger({"Sales@order-center.example": "lead_intake"}, start)
    port = free_port()
    controller = trigger.serve(port=port)
    try:
        send(port, "sales@order-center.example", body="I want to learn about the product.")
        [event] = received
        assert (event.kind, event.target) == ("email", "lead_intake")
        assert event.payload == {
            "sender": "zhangsan@example.com",
            "sender_name": "Zhang San",
            "to": "sales@order-center.example",
            "subject": "Interested",
            "text": "I want to learn about the product.",
            "message_id": "<m1@example.com>",
        }
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            send(port, "nobody@order-center.example")
        send(port, "sales@order-center.example")  # the same message again: the same event
        assert received[1].id == received[0].id
    finally:
        controller.stop()


def test_a_failing_start_asks_the_sender_to_retry() -> None:
    async def start(event: Event) -> None:
        raise RuntimeError("database down")

    trigger = EmailTrigger({"sales@order-center.example": "lead_intake"}, start)
    port = free_port()
    controller = trigger.serve(port=port)
    try:
        with pytest.raises(smtplib.SMTPDataError) as raised:
            send(port, "sales@order-center.example")
        assert raised.value.smtp_code == 451
    finally:
        controller.stop()
