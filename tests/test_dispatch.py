"""The asyncio priority dispatcher: order under backlog, aging, outcomes, failures, load,
and ordering by the rule when the inference service is down. A real AIAssistService
throughout (local mode on SQLite, or remote mode pointed at a closed port)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from aiassist import AIAssistService
from aiassist.metrics import Metrics
from aiassist.modules.priority import PriorityFeatures
from aiassist.modules.priority.dispatch import (
    DispatcherClosed,
    DispatcherFull,
    Job,
    PriorityDispatcher,
)
from aiassist.settings import Settings
from aiassist.store.db import make_engine
from aiassist.store.models import DecisionRecord, OutcomeRecord

from .conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")

# Features the least-slack rule orders clearly, however it is tuned: a tight deadline that
# can still be met, against none at all.
URGENT = {"task_type": "urgent", "deadline_in_s": 30.0, "est_duration_s": 1.0}
ROUTINE = {"task_type": "routine"}
CLASSES = (("routine", ROUTINE), ("urgent", URGENT))
N = 12


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[AIAssistService]:
    service = AIAssistService(
        Settings(data_dir=tmp_path, record_flush_seconds=0.05),
        metrics=Metrics(CollectorRegistry()),
    )
    yield service
    await service.aclose()


def sample(service: AIAssistService, name: str, **labels: str) -> float:
    value = service.metrics.registry.get_sample_value(name, {"dispatcher": "default", **labels})
    return value or 0.0


async def echo(value: T, after: float = 0) -> T:
    await asyncio.sleep(after)
    return value


def stored(service: AIAssistService) -> tuple[int, dict[str, dict[str, Any]]]:
    """Decisions stored, and outcomes by decision id, once the recorder has flushed."""
    assert service._store is not None
    service._store.flush()
    engine = make_engine(service.settings.resolved_database_url)
    with engine.connect() as conn:
        decisions = len(conn.execute(select(DecisionRecord.id)).all())
        rows = conn.execute(select(OutcomeRecord.decision_id, OutcomeRecord.outcome)).all()
    engine.dispose()
    return decisions, {decision_id: outcome for decision_id, outcome in rows}


async def occupy(dispatcher: PriorityDispatcher, workers: int = 1) -> asyncio.Event:
    """Keep `workers` workers busy until the returned gate is set; return once they are."""
    gate = asyncio.Event()

    async def hold(started: asyncio.Event) -> None:
        started.set()
        await gate.wait()

    for _ in range(workers):
        started = asyncio.Event()
        await dispatcher.submit(hold, started)
        await started.wait()
    return gate


async def start_order(service: AIAssistService) -> tuple[list[str], list[Job[str]]]:
    """Queue N tasks of each class behind one busy worker, interleaved; return start order."""
    order: list[str] = []

    async def task(label: str) -> str:
        order.append(label)
        return label

    async with PriorityDispatcher(service, workers=1, horizon=60) as dispatcher:
        gate = await occupy(dispatcher)  # the only worker is busy: everything else queues
        jobs = [
            await dispatcher.submit(task, f"{kind}-{i}", features=features)
            for i in range(N)
            for kind, features in CLASSES
        ]
        assert dispatcher.queued == 2 * N
        gate.set()
    return order, jobs


EXPECTED = [f"{kind}-{i}" for kind in ("urgent", "routine") for i in range(N)]


async def test_higher_scored_tasks_start_first_under_backlog(service: AIAssistService) -> None:
    order, jobs = await start_order(service)
    assert order == EXPECTED  # by class, and in submit order within a class
    by_kind = {j.result().split("-")[0]: j.decision for j in jobs}
    assert by_kind["urgent"].priority > by_kind["routine"].priority
    assert (
        by_kind["urgent"].source == "fallback" and by_kind["urgent"].fallback_reason == "no_model"
    )
    assert sample(service, "aiassist_dispatch_tasks_total", status="ok") == 2 * N + 1
    assert sample(service, "aiassist_dispatch_queue_depth") == 0


async def test_service_down_the_rule_still_orders(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        mode="remote",
        service_url=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        timeout_ms=200,
        breaker_failures=3,
        breaker_recovery_seconds=30,
    )
    service = AIAssistService(settings, metrics=Metrics(CollectorRegistry()))
    try:
        order, jobs = await start_order(service)
    finally:
        await service.aclose()
    assert order == EXPECTED
    assert {j.decision.fallback_reason for j in jobs} <= {"unreachable", "breaker_open"}
    assert all(j.decision.explanation.startswith("service unavailable") for j in jobs)
    assert service.breaker_state == "open"


async def test_aging_a_steady_stream_of_urgent_tasks_does_not_starve_a_routine_one(
    service: AIAssistService,
) -> None:
    started: list[str] = []

    async def task(kind: str) -> None:
        started.append(kind)
        await asyncio.sleep(0.005)

    # Urgent tasks arrive about twice as fast as the one worker serves them, so the queue
    # never empties. With horizon 0.2 s an urgent task is ahead of the routine one only if
    # it came less than 0.2 s after it (less still: the difference of priorities counts).
    async with PriorityDispatcher(service, workers=1, horizon=0.2) as dispatcher:
        await dispatcher.submit(asyncio.sleep, 0.05)
        routine = await dispatcher.submit(task, "routine")
        t0 = time.monotonic()
        while not routine.done() and time.monotonic() - t0 < 5:
            await dispatcher.submit(task, "urgent", features=URGENT)
            await asyncio.sleep(0.0025)
        assert routine.done(), "the routine task starved"
        assert dispatcher.queued > 10  # it ran while the stream was still backed up
        waited = time.monotonic() - t0
        await dispatcher.stop(drain=False)
    assert waited < 2.0
    assert started.index("routine") > 5  # overtaken only by the urgent tasks that came soon


async def test_without_aging_the_routine_task_waits_for_the_whole_stream(
    service: AIAssistService,
) -> None:
    started: list[str] = []

    async def task(kind: str) -> None:
        started.append(kind)
        await asyncio.sleep(0.002)

    async with PriorityDispatcher(service, workers=1, horizon=1e6) as dispatcher:
        await dispatcher.submit(asyncio.sleep, 0.02)
        await dispatcher.submit(task, "routine")
        for _ in range(40):
            await dispatcher.submit(task, "urgent", features=URGENT)
            await asyncio.sleep(0.001)
    assert started[-1] == "routine" and len(started) == 41  # the control for the test above


@pytest.mark.parametrize("rescue", [60.0, 0.0])
async def test_a_deadline_close_to_its_latest_start_is_rescued(
    service: AIAssistService, rescue: float
) -> None:
    started: list[str] = []

    async def task(label: str) -> None:
        started.append(label)

    # More weight (within the rescue gap) and time to spare: a higher rank than "due".
    important = {"task_type": "vip", "business_weight": 8.0, "deadline_in_s": 300.0}
    due = {"task_type": "due", "business_weight": 3.0, "deadline_in_s": 30.0}
    async with PriorityDispatcher(service, workers=1, rescue=rescue) as dispatcher:
        gate = await occupy(dispatcher)
        vips = [await dispatcher.submit(task, f"vip-{i}", features=important) for i in range(3)]
        late = await dispatcher.submit(task, "due", features=due)
        assert late.decision.priority < min(j.decision.priority for j in vips)
        assert late.decision.latest_start_s == pytest.approx(29.0)
        gate.set()
    # Its latest start (29 s) is within the rescue window: it goes first despite its rank.
    assert started[0 if rescue else -1] == "due" and len(started) == 4


async def test_the_dispatcher_fills_in_its_own_queue_features(service: AIAssistService) -> None:
    async with PriorityDispatcher(service, workers=2) as dispatcher:
        gate = await occupy(dispatcher, workers=2)
        jobs = [await dispatcher.submit(echo, i, features={"est_duration_s": 2}) for i in range(3)]
        # queue_length i, workers 2, handler_load 1: i * 2 s / 2 workers / (1 - 0.5 * 1)
        assert [j.decision.expected_wait_s for j in jobs] == [0.0, 2.0, 4.0]
        given = await dispatcher.submit(
            echo, 9, features=PriorityFeatures(est_duration_s=2, queue_length=10)
        )
        assert given.decision.expected_wait_s == 20.0  # the caller's queue length wins
        gate.set()
        assert [await j for j in jobs] == [0, 1, 2]


async def test_outcomes_are_recorded(service: AIAssistService) -> None:
    async def work(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "done"

    async def boom() -> None:
        raise RuntimeError("task failed")

    async with PriorityDispatcher(service, workers=2) as dispatcher:
        met = await dispatcher.submit(work, 0, features={"deadline_in_s": 5})
        missed = await dispatcher.submit(work, 0.2, features={"deadline_in_s": 0.05})
        plain = await dispatcher.submit(work, 0)
        failed = await dispatcher.submit(boom, features={"deadline_in_s": 5})
        await asyncio.gather(met, missed, plain, failed, return_exceptions=True)
    # leaving the block waited for the outcomes: they are in the database now
    decisions, outcomes = stored(service)
    assert decisions == 4 and len(outcomes) == 4
    assert outcomes[met.decision.decision_id]["deadline_met"] is True
    assert outcomes[missed.decision.decision_id]["deadline_met"] is False
    assert outcomes[missed.decision.decision_id]["ran_s"] >= 0.19
    assert outcomes[plain.decision.decision_id]["deadline_met"] is None
    assert outcomes[failed.decision.decision_id]["deadline_met"] is False  # no result in time
    registry = service.metrics.registry
    assert registry.get_sample_value("aiassist_outcomes_total", {"module": "priority"}) == 4


async def test_a_failing_task_fails_its_job_not_the_worker(service: AIAssistService) -> None:
    async def boom() -> None:
        raise ValueError("bad input")

    async def ok() -> str:
        return "ok"

    async with PriorityDispatcher(service, workers=1) as dispatcher:
        failing = await dispatcher.submit(boom)
        not_async: Job[Any] = await dispatcher.submit(len, "abc")  # type: ignore[arg-type]
        after = await dispatcher.submit(ok)
        with pytest.raises(ValueError, match="bad input"):
            await failing
        with pytest.raises(TypeError):
            await not_async
        assert await after == "ok"  # the single worker lived on
        with pytest.raises(ValueError):  # bad features are the caller's error, at submit
            await dispatcher.submit(ok, features={"deadline_in_s": "soon"})
    assert sample(service, "aiassist_dispatch_tasks_total", status="error") == 2
    assert sample(service, "aiassist_dispatch_tasks_total", status="ok") == 1


async def test_cancelling_a_job_queued_or_running(service: AIAssistService) -> None:
    started = asyncio.Event()
    seen: list[str] = []

    async def hold() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen.append("cancelled inside")
            raise

    async def note(label: str) -> str:
        seen.append(label)
        return label

    async with PriorityDispatcher(service, workers=1) as dispatcher:
        running = await dispatcher.submit(hold)
        queued = await dispatcher.submit(note, "queued")
        await started.wait()
        assert queued.cancel() and running.cancel()
        assert await dispatcher.run(note, "after") == "after"  # the worker is free again
        with pytest.raises(asyncio.CancelledError):
            await running
        with pytest.raises(asyncio.CancelledError):
            await queued
    assert seen == ["cancelled inside", "after"]
    assert sample(service, "aiassist_dispatch_tasks_total", status="cancelled") == 2
    _, outcomes = stored(service)
    assert len(outcomes) == 1  # a cancelled task has no outcome: it did not run to an end


async def test_stop_drains_or_cancels(service: AIAssistService) -> None:
    drained = PriorityDispatcher(service, workers=1, name="drained")
    jobs = [await drained.submit(echo, i, after=0.005) for i in range(5)]
    await drained.stop()  # drain=True: the backlog runs first
    assert [j.result() for j in jobs] == list(range(5))
    with pytest.raises(DispatcherClosed):
        await drained.submit(asyncio.sleep, 0)
    await drained.stop()  # again: harmless

    now = PriorityDispatcher(service, workers=1, name="now")
    late = PriorityDispatcher(service, workers=1, name="late")
    for dispatcher in (now, late):
        started = asyncio.Event()

        async def runs_long(started: asyncio.Event = started) -> None:
            started.set()
            await asyncio.sleep(30)

        jobs = [await dispatcher.submit(runs_long)]
        await started.wait()  # one runs, two are queued
        jobs += [await dispatcher.submit(asyncio.sleep, 30) for _ in range(2)]
        t0 = time.monotonic()
        if dispatcher is now:
            await dispatcher.stop(drain=False)
        else:
            with pytest.raises(TimeoutError):  # a bounded drain: the rest is cancelled
                async with asyncio.timeout(0.05):
                    await dispatcher.stop()
        assert time.monotonic() - t0 < 1
        assert all(j.future.cancelled() for j in jobs), dispatcher.name
        with pytest.raises(DispatcherClosed):
            await dispatcher.start()

    with pytest.raises(RuntimeError, match="boom"):  # an error in the block: no draining
        async with PriorityDispatcher(service, workers=1, name="error") as dispatcher:
            job = await dispatcher.submit(asyncio.sleep, 30)
            raise RuntimeError("boom")
    assert job.future.cancelled()


async def test_a_full_queue_refuses_or_pushes_back(service: AIAssistService) -> None:
    async with PriorityDispatcher(service, workers=1, max_queue=2) as dispatcher:
        gate = await occupy(dispatcher)
        await dispatcher.submit(asyncio.sleep, 0)
        await dispatcher.submit(asyncio.sleep, 0)
        with pytest.raises(DispatcherFull, match="max_queue"):
            await dispatcher.submit(asyncio.sleep, 0)
        gate.set()

    async with PriorityDispatcher(service, workers=1, max_queue=1, when_full="wait") as waiting:
        gate = await occupy(waiting)
        await waiting.submit(echo, "first")
        second = asyncio.create_task(waiting.submit(echo, "second"))
        done, _ = await asyncio.wait({second}, timeout=0.05)
        assert not done  # backpressure: the producer waits for room
        gate.set()
        assert await (await second) == "second"


async def test_under_load_every_task_runs_once(service: AIAssistService) -> None:
    async def tiny(i: int) -> int:
        await asyncio.sleep(0)
        return i

    n = 2000
    t0 = time.monotonic()
    async with PriorityDispatcher(service, workers=8, max_queue=n) as dispatcher:
        jobs = [
            await dispatcher.submit(tiny, i, features=URGENT if i % 4 == 0 else None)
            for i in range(n)
        ]
        results = await asyncio.gather(*jobs)
    elapsed = time.monotonic() - t0
    assert results == list(range(n))
    assert sample(service, "aiassist_dispatch_tasks_total", status="ok") == n
    waits = [
        sample(service, "aiassist_dispatch_wait_seconds_count", priority=str(p)) for p in range(10)
    ]
    assert sum(waits) == n  # one observation per task, labelled by broker priority
    decisions, outcomes = stored(service)
    assert decisions == n and len(outcomes) == n
    assert elapsed < 15, elapsed


def test_the_documented_example_runs(tmp_path: Path) -> None:
    text = (ROOT / "docs/modules.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    examples = [b for b in blocks if "aiassist.modules.priority.dispatch" in b]
    assert examples
    for example in examples:
        result = subprocess.run(
            [sys.executable, "-c", example],
            env=os.environ | {"AIASSIST_DATA_DIR": str(tmp_path), "AIASSIST_MODE": "local"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
