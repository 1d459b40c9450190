"""Flow `wait` steps, on SQLite and PostgreSQL: a run parks holding nothing, goes on when its
time comes (and not before), in another runtime too, from the automation loop; a dry run does
not wait; bad durations are refused with their line. Time is injected, never slept."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from aiassist.agent.automation import Automation, AutomationConfig
from aiassist.agent.flows import WAIT_CALL, FlowError, FlowModel, WaitStep, parse_flow
from aiassist.agent.policy import service_identity
from aiassist.agent.providers.base import Message
from aiassist.agent.runtime import Runtime
from aiassist.agent.tools import ToolSet, tool
from aiassist.agent.waits import wake_due
from aiassist.store.db import make_engine, make_sessionmaker
from aiassist.store.models import AgentRun, AuditEvent

BOT = service_identity("bot", ["agent:run"])
T0 = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
THREE_DAYS = timedelta(days=3)

NURTURE = parse_flow(
    """
name: nurture
steps:
  - id: intro
    tool: send_email
    args: {to: "{{ input.email }}", subject: Welcome}
  - id: cool_off
    wait: 3d
  - id: follow_up
    tool: update_lead
    args:
      email: "{{ input.email }}"
      status: "followed up after {{ steps.cool_off.waited_until }}"
"""
)

MEETING = parse_flow(
    """
name: meeting
steps:
  - id: until_meeting
    until: "{{ input.meeting_at }}"
  - id: reminder
    when: "input.remind"
    wait: 15m
  - id: notes
    tool: update_lead
    args: {email: "{{ input.email }}", status: met}
"""
)


class Clock:
    """The runtime's time, moved by the test."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Backend:
    """Python tools that count what they did."""

    def __init__(self) -> None:
        self.done: list[tuple[str, dict[str, Any]]] = []

    def tools(self) -> ToolSet:
        @tool
        def send_email(to: str, subject: str) -> dict[str, Any]:
            """Send an email."""
            self.done.append(("send_email", {"to": to, "subject": subject}))
            return {"sent_to": to}

        @tool
        def update_lead(email: str, status: str) -> dict[str, Any]:
            """Update a CRM lead."""
            self.done.append(("update_lead", {"email": email, "status": status}))
            return {"email": email, "status": status}

        return ToolSet([send_email, update_lead])

    def count(self, name: str) -> int:
        return sum(1 for done, _ in self.done if done == name)


def runtime(sessions: sessionmaker[Session], backend: Backend, clock: Clock) -> Runtime:
    return Runtime(
        sessions, backend.tools(), flows={"nurture": NURTURE, "meeting": MEETING}, clock=clock
    )


def utc(moment: datetime | None) -> datetime | None:
    """SQLite gives times back without their zone; they are UTC."""
    return moment.replace(tzinfo=UTC) if moment and moment.tzinfo is None else moment


def row(sessions: sessionmaker[Session], run_id: str) -> AgentRun:
    with sessions() as session:
        run = session.get(AgentRun, run_id)
        assert run is not None
        return run


# --- the language ------------------------------------------------------------------------------
def test_a_wait_step_parses_and_takes_one_turn() -> None:
    cool_off = NURTURE.steps[1]
    assert isinstance(cool_off, WaitStep) and cool_off.duration == THREE_DAYS
    assert NURTURE.tools == ["send_email", "update_lead"]  # a wait is no tool
    assert NURTURE.waits and NURTURE.max_turns == 3 + 1 + 3 + 1
    durations = {"90s": 90, "15m": 900, "2h": 7200, "90d": 90 * 86400}
    for text, seconds in durations.items():
        step = parse_flow(f"name: x\nsteps:\n  - id: w\n    wait: {text}\n").steps[0]
        assert isinstance(step, WaitStep) and step.duration == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("step", "line", "words"),
    [
        ("    wait: 3 days\n", 6, "not a duration"),
        ("    wait: 90\n", 6, "not a duration"),
        ("    wait: 0s\n", 6, "more than 0"),
        ("    wait: 91d\n", 6, "at most 90 days"),
        ("    wait: 2w\n", 6, "not a duration"),
        ("    wait: 1h\n    until: '2026-12-01T09:00:00Z'\n", 5, "either `wait`"),
        ("    until: '{{ input.at'\n", 6, "until"),
        ("    wait: 1h\n    when: 'input.x =='\n", 7, "when"),
        ("    wait: 1h\n    tool: t\n", 6, "wait"),  # a tool step has no `wait`
    ],
)
def test_a_bad_wait_names_its_line(step: str, line: int, words: str) -> None:
    text = "name: x\nsteps:\n  - id: a\n    tool: t\n  - id: w\n" + step  # `w` is on line 5
    with pytest.raises(FlowError) as caught:
        parse_flow(text, "waits.yaml")
    problems = caught.value.problems
    assert any(n == line and words in message for n, message in problems), problems
    assert f"waits.yaml:{line}:" in str(caught.value)


async def test_the_flow_model_fixes_the_deadline_in_its_call() -> None:
    model = FlowModel(NURTURE, {"email": "a@example.com"}, clock=Clock())
    system, task = Message("system", "s"), Message("user", "t")
    first = await model.complete([system, task], [])
    assert [c.id for c in first.tool_calls] == ["intro~1"]
    sent = [system, task, Message("assistant", first.text, first.tool_calls)]
    sent.append(Message("tool", {"sent_to": "a@example.com"}, call_id="intro~1"))
    second = await model.complete(sent, [])
    (wait,) = second.tool_calls
    assert wait.id == "cool_off~1" and wait.name == WAIT_CALL
    assert wait.arguments == {"step": "cool_off", "until": (T0 + THREE_DAYS).isoformat()}


# --- the runtime -------------------------------------------------------------------------------
async def test_a_wait_parks_the_run_and_goes_on_when_due(sessions: sessionmaker[Session]) -> None:
    backend, clock = Backend(), Clock()
    rt = runtime(sessions, backend, clock)
    run = await rt.start_flow("nurture", {"email": "a@example.com"}, BOT)
    assert run.status == "waiting_until"
    assert utc(run.resume_at) == T0 + THREE_DAYS
    assert backend.done == [("send_email", {"to": "a@example.com", "subject": "Welcome"})]
    stored = row(sessions, run.id)
    assert stored.lease_owner is None and stored.lease_until is None  # nothing holds it

    # before its time: neither driving it nor waking it does anything
    assert (await rt.drive(run.id)).status == "waiting_until"
    clock.now = T0 + THREE_DAYS - timedelta(seconds=1)
    assert await rt.resume_due() == []
    assert (await rt.info(run.id)).status == "waiting_until"
    assert await rt.recover() == []  # a parked run is no orphan
    assert backend.count("update_lead") == 0

    # its time, given to resume_due (the runtime's own clock still says earlier)
    assert await rt.resume_due(T0 + THREE_DAYS) == [run.id]
    done = await rt.info(run.id)
    assert done.status == "succeeded" and done.resume_at is None
    assert backend.count("send_email") == 1 and backend.count("update_lead") == 1
    _, wait, follow_up = done.calls
    assert wait.tool == WAIT_CALL and wait.status == "succeeded"
    assert wait.result["waited_until"] == (T0 + THREE_DAYS).isoformat()
    assert follow_up.arguments["status"] == f"followed up after {(T0 + THREE_DAYS).isoformat()}"
    assert await rt.resume_due(T0 + 2 * THREE_DAYS) == []  # once only

    with sessions() as session:
        kinds = session.scalars(
            select(AuditEvent.kind).where(AuditEvent.subject.startswith(run.id))
        ).all()
    assert "agent.run.waiting" in kinds and "agent.run.resumed" in kinds


async def test_a_parked_run_goes_on_in_another_runtime(sessions: sessionmaker[Session]) -> None:
    backend = Backend()
    first = runtime(sessions, backend, Clock())
    run = await first.start_flow("nurture", {"email": "b@example.com"}, BOT, key="lead-9")
    assert run.status == "waiting_until"
    del first  # the process is gone: nothing of the run lived in it

    later = Clock(T0 + THREE_DAYS + timedelta(minutes=5))
    restarted = runtime(sessions, backend, later)
    assert await restarted.resume_due() == [run.id]
    done = await restarted.info(run.id)
    assert done.status == "succeeded"
    assert [c.tool for c in done.calls] == ["send_email", WAIT_CALL, "update_lead"]
    assert done.calls[1].result["resumed_at"] == later.now.isoformat()
    assert backend.count("send_email") == 1 and backend.count("update_lead") == 1


async def test_until_a_time_from_the_input_and_when(sessions: sessionmaker[Session]) -> None:
    backend, clock = Backend(), Clock()
    rt = runtime(sessions, backend, clock)
    meeting_at = T0 + timedelta(hours=2)
    run = await rt.start_flow(
        "meeting",
        {"email": "c@example.com", "meeting_at": meeting_at.isoformat(), "remind": True},
        BOT,
    )
    assert run.status == "waiting_until" and utc(run.resume_at) == meeting_at

    clock.now = meeting_at  # the reminder's own 15 minutes start when it is reached
    assert await rt.resume_due() == [run.id]
    run = await rt.info(run.id)
    assert run.status == "waiting_until" and utc(run.resume_at) == meeting_at + timedelta(
        minutes=15
    )
    clock.now += timedelta(minutes=15)
    assert await rt.resume_due() == [run.id]
    assert (await rt.info(run.id)).status == "succeeded"

    # skipped by `when`, and a time already past: no wait at all
    past = {"email": "d@example.com", "meeting_at": "2026-11-01T09:00:00", "remind": False}
    quick = await rt.start_flow("meeting", past, BOT)
    assert quick.status == "succeeded" and [c.tool for c in quick.calls] == [
        WAIT_CALL,
        "update_lead",
    ]

    # not a time, or too far away: the run fails and says why
    bad = await rt.start_flow("meeting", {"email": "e@example.com", "meeting_at": "soon"}, BOT)
    assert bad.status == "failed" and "not an ISO datetime" in (bad.error or "")
    far = {"email": "f@example.com", "meeting_at": (T0 + timedelta(days=91)).isoformat()}
    too_far = await rt.start_flow("meeting", far, BOT)
    assert too_far.status == "failed" and "more than 90 days" in (too_far.error or "")
    assert backend.count("update_lead") == 2


async def test_a_dry_run_does_not_wait(sessions: sessionmaker[Session]) -> None:
    backend = Backend()
    rt = runtime(sessions, backend, Clock())
    run = await rt.start_flow("nurture", {"email": "a@example.com"}, BOT, dry_run=True)
    assert run.status == "succeeded" and run.resume_at is None
    _, wait, follow_up = run.calls
    assert wait.result == {"dry_run": True, "would_wait_until": (T0 + THREE_DAYS).isoformat()}
    assert follow_up.result["dry_run"] is True
    assert backend.done == []  # writes simulated, and nothing waited


async def test_one_waker_wins_each_run(sessions: sessionmaker[Session]) -> None:
    rt = runtime(sessions, Backend(), Clock())
    run = await rt.start_flow("nurture", {"email": "a@example.com"}, BOT)
    assert wake_due(rt.store, T0) == []
    assert wake_due(rt.store, T0 + THREE_DAYS) == [run.id]
    assert wake_due(rt.store, T0 + THREE_DAYS) == []  # a second replica finds nothing
    assert (await rt.info(run.id)).status == "running"  # woken, not driven: recover() goes on
    assert await rt.recover() == [run.id]
    assert (await rt.info(run.id)).status == "succeeded"


async def test_the_automation_loop_resumes_due_runs(sessions: sessionmaker[Session]) -> None:
    backend, clock = Backend(), Clock()
    rt = runtime(sessions, backend, clock)
    automation = Automation(rt, AutomationConfig.build({"nurture": NURTURE}), wake_seconds=0.05)
    await automation.start()
    try:
        run = await automation.run("nurture", {"email": "g@example.com"}, key="signup-1")
        assert run.status == "waiting_until"
        clock.now = T0 + THREE_DAYS
        info = await wait_for_status(rt, run.id, "succeeded")
        assert info.status == "succeeded" and backend.count("update_lead") == 1
    finally:
        await automation.aclose()


async def wait_for_status(rt: Runtime, run_id: str, status: str, seconds: float = 30.0) -> Any:
    """The run once it has `status`, or as it is after `seconds` (polled: the loop is real)."""
    deadline = time.monotonic() + seconds
    info = await rt.info(run_id)
    while info.status != status and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        info = await rt.info(run_id)
    return info


@pytest.mark.redis
def test_the_celery_recover_task_wakes_due_runs(sqlite_url: str, tmp_path: Path) -> None:
    """The beat's `recover` task wakes a due run and sends it to the workers (real Redis
    broker, the queue read directly); the run then goes on wherever it is driven."""
    import json

    import redis

    from aiassist.integrations.celery.agent import RECOVER_TASK, make_app
    from aiassist.settings import Settings

    broker = "redis://127.0.0.1:6379/0"
    queue = f"aiassist-waits-{secrets.token_hex(4)}"
    (tmp_path / "flows").mkdir()
    engine = make_engine(sqlite_url)
    backend = Backend()
    days_ago = Clock(datetime.now(UTC) - timedelta(days=4))  # its wait ended a day ago
    rt = runtime(make_sessionmaker(engine), backend, days_ago)
    run = asyncio.run(rt.start_flow("nurture", {"email": "h@example.com"}, BOT))
    assert run.status == "waiting_until"
    settings = Settings(
        data_dir=tmp_path,
        database_url=sqlite_url,
        celery_broker_url=broker,
        agent_queue=queue,
        flows_dir=tmp_path / "flows",
    )
    client = redis.Redis.from_url(broker)
    try:
        assert make_app(settings).tasks[RECOVER_TASK]() == 1
        (message,) = [json.loads(m) for m in client.lrange(queue, 0, -1)]
        assert message["headers"]["argsrepr"] == repr([run.id])
    finally:
        client.delete(queue)
        client.close()
    assert row(make_sessionmaker(engine), run.id).status == "running"  # woken, sent
    assert asyncio.run(rt.recover()) == [run.id]  # a worker's drive, here
    assert asyncio.run(rt.info(run.id)).status == "succeeded"
    assert backend.count("update_lead") == 1
    engine.dispose()


# --- the docs ----------------------------------------------------------------------------------
def test_the_documented_wait_flow_parses() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "automation.md").read_text()
    (text,) = [b for b in re.findall(r"```yaml\n(.*?)```", doc, flags=re.S) if "wait:" in b]
    flow = parse_flow(text)
    assert any(isinstance(s, WaitStep) for s in flow.steps)
