"""Who drives a run once it exists: this process, or a pool of Celery workers
(`aiassist.integrations.celery.agent.CeleryExecutor`).

    run_id = await runtime.create(task, principal=p, tools=[...], provider="flow", ...)
    await executor.submit(run_id)   # returns at once; the run goes on elsewhere

Creating a run and driving it are separate so that the process that accepts work (an API
request, a trigger, an approval) need not be the one that does it. Both executors rely on
what the runtime already guarantees, whoever calls `drive`: a run is driven by one process
at a time (its lease), resumes from the database after a crash, and never repeats a side
effect (intents and idempotency keys). So submitting a run twice, or to a worker that dies
half-way, costs at most a wasted look at the database.

A run waiting for an approval is not driven: once it is decided, submit it again.
Which executor a service uses (`AIASSIST_AGENT_EXECUTOR`) is chosen where the service is
put together (`aiassist.server.routers.agent.executor_from_settings`): the agent core does
not import the Celery integration, which imports it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from typing import Protocol, runtime_checkable

import anyio.to_thread

from aiassist.agent.runs import RunInfo, RunStatus
from aiassist.agent.runtime import Runtime

__all__ = [
    "Executor",
    "InProcessExecutor",
    "submit_orphaned",
    "wait_settled",
]

log = logging.getLogger("aiassist.agent")


@runtime_checkable
class Executor(Protocol):
    """Hands a stored run to whoever drives it."""

    async def submit(self, run_id: str) -> None:
        """Return once the run is handed over, not when it ends (see `wait_settled`)."""
        ...


class InProcessExecutor:
    """Drives runs in background tasks of this process's event loop.

    The right choice on one machine: nothing else to deploy. The tasks are kept referenced
    (the loop only holds weak references) and a failure is logged, not lost. A run whose
    process dies mid-way is resumed by `Runtime.recover()` when a process starts again.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._tasks: set[asyncio.Task[RunInfo]] = set()

    async def submit(self, run_id: str) -> None:
        task = asyncio.create_task(self.runtime.drive(run_id), name=f"aiassist-run-{run_id}")
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[RunInfo]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("agent run failed in the background: %r", exc, exc_info=exc)

    @property
    def running(self) -> int:
        """Runs this executor is driving right now."""
        return len(self._tasks)

    async def aclose(self) -> None:
        """Stop driving; each interrupted run lets go of its lease so another process can
        take it over at once."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def wait_settled(runtime: Runtime, run_id: str, seconds: float) -> RunInfo:
    """The run once it finished or waits for a person, or as it is after `seconds`.

    Polls the database, so it works whichever executor (and whichever process) drives it.
    """
    deadline = time.monotonic() + seconds
    delay = 0.02
    while True:
        info = await runtime.info(run_id)
        if info.status != RunStatus.RUNNING or time.monotonic() >= deadline:
            return info
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.5)


async def submit_orphaned(
    runtime: Runtime, executor: Executor, *, idle_seconds: float = 0.0
) -> list[str]:
    """Submit every running run that nobody drives (its process died, or it was never
    handed over); what `Runtime.recover()` does in-process, for any executor. Submitting
    a run that is in fact being driven is harmless: its lease turns the extra one away."""
    orphans = await anyio.to_thread.run_sync(
        partial(runtime.store.orphaned, idle_seconds=idle_seconds)
    )
    for run_id in orphans:
        await executor.submit(run_id)
    return orphans
