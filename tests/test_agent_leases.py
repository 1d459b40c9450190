"""A run's lease: renewed while a model turn is in flight, so a slow turn is not taken over;
not renewed by a dead worker, so its run is taken over."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from aiassist.agent.policy import service_identity
from aiassist.agent.providers.base import Message, ModelTurn
from aiassist.agent.providers.test import TestModel
from aiassist.agent.runs import RunStatus
from aiassist.agent.runtime import Runtime
from aiassist.agent.tools import ToolSet
from aiassist.store.db import make_engine, make_sessionmaker
from aiassist.store.models import AgentMessage, AgentRun
from tests.agent_backend import serve_backend
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
BOT = service_identity("bot", ["agent:run"])
LEASE = 0.4  # seconds: short, so that a turn outlives several leases in a test


class HeldModel:
    """A model whose turn lasts until the test lets it answer."""

    name, input_price_per_mtok, output_price_per_mtok = "held", 0.0, 0.0

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.answer = asyncio.Event()
        self.turns = 0

    async def complete(
        self, messages: Sequence[Message], tools: Sequence[dict[str, Any]]
    ) -> ModelTurn:
        self.turns += 1
        self.entered.set()
        await self.answer.wait()
        return ModelTurn(text="thought it through")


def worker(sessions: sessionmaker[Session], model: Any) -> Runtime:
    return Runtime(
        sessions,
        ToolSet([]),
        lease_seconds=LEASE,
        tool_timeout=LEASE / 2,
        providers={"held": lambda options: model},
    )


def lease_of(sessions: sessionmaker[Session], run_id: str) -> Any:
    with sessions() as session:
        return session.scalar(select(AgentRun.lease_until).where(AgentRun.id == run_id))


async def test_a_model_turn_longer_than_the_lease_is_not_taken_over(
    db_url: str, sessions: sessionmaker[Session]
) -> None:
    model = HeldModel()
    first = worker(sessions, model)
    run_id = await first.create("think hard", principal=BOT, tools=[], provider="held")
    driving = asyncio.create_task(first.drive(run_id))
    await model.entered.wait()
    claimed = lease_of(sessions, run_id)
    # A lease is clock time: no event says it ran out, so the test watches the row.
    with anyio.fail_after(10):  # the lease as first claimed has run out: renewed since
        while lease_of(sessions, run_id) < claimed + timedelta(seconds=LEASE):  # noqa: ASYNC110
            await anyio.sleep(LEASE / 8)

    engine = make_engine(db_url)  # a second worker, its own engine, its own model
    other = HeldModel()
    second = worker(make_sessionmaker(engine), other)
    assert await second.recover() == []
    assert (await second.drive(run_id)).status == RunStatus.RUNNING
    assert other.turns == 0  # the second worker never asked its model
    engine.dispose()

    model.answer.set()
    run = await driving
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.output == "thought it through"
    with sessions() as session:
        roles = session.scalars(
            select(AgentMessage.role).where(AgentMessage.run_id == run_id)
        ).all()
    assert roles.count("assistant") == 1


async def test_a_killed_workers_run_is_taken_over(
    db_url: str, sessions: sessionmaker[Session]
) -> None:
    with serve_backend(free_port()) as backend:
        process = await anyio.open_process(
            [sys.executable, "-m", "tests.agent_worker", "hang", db_url, backend, str(LEASE)],
            cwd=ROOT,
        )
        assert process.stdout is not None
        async with process:
            with anyio.fail_after(30):  # the run id, once its model turn is in flight
                said = b""
                while not said.endswith(b"\n"):
                    said += await process.stdout.receive()
            run_id = said.decode().strip()
            process.send_signal(signal.SIGKILL)  # no release, no more renewals
            await process.wait()

    survivor = Runtime(
        sessions,
        ToolSet([]),
        lease_seconds=LEASE,
        tool_timeout=LEASE / 2,
        providers={"held": lambda options: TestModel([], final_text="took it over")},
    )
    with anyio.fail_after(10):  # taken over once the dead worker's lease runs out
        while await survivor.recover() != [run_id]:  # noqa: ASYNC110 (clock time, as above)
            await anyio.sleep(LEASE / 8)
    run = await survivor.info(run_id)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.output == "took it over"
