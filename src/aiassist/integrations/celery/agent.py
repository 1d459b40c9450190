"""Agent runs and flows driven by Celery workers.

The worker, configured by the same `AIASSIST_*` settings as the service::

    AIASSIST_CELERY_BROKER_URL=amqp://guest:guest@127.0.0.1:5672// \\
    AIASSIST_DATABASE_URL=postgresql+psycopg://... AIASSIST_AGENT_TOOLS=myapp.tools:toolset \\
        celery -A aiassist.integrations.celery.agent worker --concurrency=4

and the producer side (the service, a trigger, a script)::

    executor = CeleryExecutor(make_app(settings))
    await executor.submit(run_id)

The message carries only the run id: the run itself is in the database, so any worker can
drive it and none needs to have seen it before. Each worker process builds its runtime
once, from its settings (tools, policy, provider, flows), on first use.

Delivery is at least once, and that is safe because driving is idempotent:

- `task_acks_late` + `worker_prefetch_multiplier=1` + `task_reject_on_worker_lost`: a
  message is acknowledged only after its run was driven, so the run of a worker killed
  mid-step (by SIGKILL, the OOM killer, a lost node) is delivered again.
- A run that already finished, or waits for an approval, is left as it is.
- A run another process holds a lease on is looked at again when that lease ends: if its
  holder is alive, the run has moved on or finished by then; if it died (the usual reason
  for a redelivery), this worker takes it over. Its write calls are repeated with the same
  idempotency keys, so a downstream that honours them does each side effect once.

The task `aiassist.agent.recover` re-sends the runs nobody drives (their message was lost
by the broker itself, or their worker failed to drive them), and the flow runs whose `wait`
step is over: celery beat sends it every minute (`celery -A aiassist.integrations.celery.agent
beat`, or a worker started with `-B`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

import anyio.to_thread
from celery import Celery, Task, signals
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from aiassist.agent.assembly import build_runtime
from aiassist.agent.runs import RunNotFound, RunStatus
from aiassist.agent.runtime import NoProvider, Runtime
from aiassist.agent.waits import wake_due
from aiassist.settings import Settings, SettingsError, load_settings
from aiassist.store.db import make_engine, make_sessionmaker

__all__ = ["DRIVE_TASK", "RECOVER_TASK", "CeleryExecutor", "make_app"]

log = logging.getLogger("aiassist.agent")
T = TypeVar("T")

#: The task that drives one run; its only argument is the run id.
DRIVE_TASK = "aiassist.agent.drive"
#: The task that re-sends the runs nobody drives; scheduled every minute for celery beat.
RECOVER_TASK = "aiassist.agent.recover"

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_LEASE_MARGIN = 0.5  # seconds past a lease's end before looking again
_DB_RETRIES = 20


class CeleryExecutor:
    """Sends runs to the Celery workers of `app` (built by `make_app`)."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    async def submit(self, run_id: str) -> None:
        # Publishing is blocking I/O (and may reconnect): keep it off the event loop.
        await anyio.to_thread.run_sync(
            partial(self.app.send_task, DRIVE_TASK, args=[run_id], ignore_result=True)
        )


def make_app(settings: Settings) -> Celery:
    """The Celery app of agent runs: the producer's and the worker's side alike."""
    if not settings.celery_broker_url:
        raise SettingsError("AIASSIST_CELERY_BROKER_URL is not set: no broker to use")
    app = Celery("aiassist", broker=settings.celery_broker_url, set_as_current=False)
    app.conf.update(
        task_default_queue=settings.agent_queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        beat_schedule={"aiassist-agent-recover": {"task": RECOVER_TASK, "schedule": 60.0}},
    )
    driver = _Driver(settings)

    def drive(self: Task, run_id: str) -> str:
        """Drive the run until it finishes or waits; see the module docstring."""
        if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
            log.warning("ignoring a drive message with an invalid run id")
            return "invalid"
        try:
            status, look_again = driver.drive(run_id)
        except DBAPIError as exc:  # the database is away: try again later, not never
            if self.request.retries >= _DB_RETRIES:
                raise
            log.warning("agent run %s: database unavailable (%s)", run_id, type(exc).__name__)
            raise self.retry(countdown=min(2.0**self.request.retries, 60.0)) from None
        if look_again is not None:
            raise self.retry(countdown=look_again)
        return status

    app.task(name=DRIVE_TASK, bind=True, shared=False, max_retries=None)(drive)

    def recover() -> int:
        """Send a drive message for every running run nobody drives, and for every run
        whose flow `wait` is over (woken here); how many were sent."""
        orphans = driver.orphaned() + driver.due()
        for run_id in orphans:
            app.send_task(DRIVE_TASK, args=[run_id], ignore_result=True)
        return len(orphans)

    app.task(name=RECOVER_TASK, shared=False)(recover)

    def check(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            driver.check()

    signals.worker_init.connect(check, weak=False)
    return app


class _Driver:
    """A worker process's runtime and the event loop that drives its runs.

    Built on first use in each process (a prefork child builds its own after the fork:
    database connections and event loops must not cross one). The loop lives in a thread
    of its own, so the tasks of any pool (prefork, solo, threads) share one runtime.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._runtime: Runtime | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _build(self) -> tuple[Runtime, Engine]:
        engine = make_engine(self.settings.resolved_database_url)
        runtime = build_runtime(self.settings, make_sessionmaker(engine))  # flows included
        return runtime, engine

    def check(self) -> None:
        """Stop the worker at start-up if it could not drive a run (e.g. the tools of
        AIASSIST_AGENT_TOOLS cannot be imported), instead of failing every task later."""
        try:
            _, engine = self._build()
        except ValueError as exc:
            raise SystemExit(f"aiassist agent worker: {exc}") from None
        engine.dispose()

    def _started(self) -> tuple[Runtime, asyncio.AbstractEventLoop]:
        with self._lock:
            if self._pid != os.getpid() or self._runtime is None or self._loop is None:
                self._runtime, _ = self._build()
                self._loop = asyncio.new_event_loop()
                threading.Thread(
                    target=self._loop.run_forever, name="aiassist-agent-loop", daemon=True
                ).start()
                self._pid = os.getpid()
            return self._runtime, self._loop

    def _run(self, make: Callable[[Runtime], Coroutine[Any, Any, T]]) -> T:
        runtime, loop = self._started()
        future: Future[T] = asyncio.run_coroutine_threadsafe(make(runtime), loop)
        return future.result()

    def drive(self, run_id: str) -> tuple[str, float | None]:
        """(the run's status, seconds until it should be looked at again or None)."""
        try:
            info = self._run(lambda runtime: runtime.drive(run_id))
        except RunNotFound:
            log.warning("agent run %s does not exist in this worker's database", run_id)
            return "missing", None
        except NoProvider as exc:  # this worker lacks the run's model: say so, loudly
            log.error("agent run %s cannot be driven here: %s", run_id, exc)
            return "no-provider", None
        if info.status != RunStatus.RUNNING:
            return info.status, None  # finished, or waiting for a person
        runtime, _ = self._started()
        return info.status, self._lease_left(runtime, run_id) + _LEASE_MARGIN

    def orphaned(self) -> list[str]:
        runtime, _ = self._started()
        return runtime.store.orphaned()

    def due(self) -> list[str]:
        """The runs whose wait is over, woken (see `aiassist.agent.waits`)."""
        runtime, _ = self._started()
        return wake_due(runtime.store, runtime.clock())

    def _lease_left(self, runtime: Runtime, run_id: str) -> float:
        """Seconds until another process's lease on the run ends (0 if it has ended)."""
        until = runtime.store.lease_until(run_id)
        if until is None:
            return 0.0
        if until.tzinfo is None:  # SQLite keeps no time zone: the runtime wrote UTC
            until = until.replace(tzinfo=UTC)
        left = (until - datetime.now(UTC)).total_seconds()
        return min(max(left, 0.0), runtime.lease_seconds)


def __getattr__(name: str) -> Celery:
    """`celery -A aiassist.integrations.celery.agent worker` finds `app` here, configured
    from the environment when first asked for (importing this module configures nothing)."""
    if name in ("app", "celery"):
        global _app
        if _app is None:
            _app = make_app(load_settings())
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_app: Celery | None = None
