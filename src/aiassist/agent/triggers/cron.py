"""Cron schedules with an overlap policy, on an injectable clock.

`tick(now)` fires every schedule due at `now`; `run()` is the loop that sleeps until the
next one is due and ticks. Tests drive `tick` with the times they want instead of sleeping.
Firings missed while the process was down or busy are coalesced into one, the way
schedulers that have to survive restarts usually do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from aiassist.agent.triggers.base import Event, Starter

__all__ = ["CronScheduler", "Firing", "Overlap", "Schedule"]

log = logging.getLogger("aiassist.triggers")


class Overlap(StrEnum):
    """What to do when a schedule fires while its previous run is still going."""

    SKIP = "skip"  # drop this firing
    QUEUE = "queue"  # start it when the previous run ends (at most one waits)
    CANCEL = "cancel"  # cancel the previous run, start this one


@dataclass(frozen=True)
class Schedule:
    name: str
    cron: str  # five fields: minute hour day-of-month month day-of-week
    target: str
    payload: dict[str, Any] = field(default_factory=dict)
    overlap: Overlap = Overlap.SKIP
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        if len(self.cron.split()) != 5 or not croniter.is_valid(self.cron):
            raise ValueError(f"schedule {self.name!r}: {self.cron!r} is not a 5-field cron")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            problem = f"schedule {self.name!r}: unknown timezone {self.timezone!r}"
            raise ValueError(problem) from None

    def next_after(self, moment: datetime) -> datetime:
        local = moment.astimezone(ZoneInfo(self.timezone))
        nxt: datetime = croniter(self.cron, local).get_next(datetime)
        return nxt.astimezone(UTC)


Action = Literal["started", "skipped", "queued", "replaced"]


@dataclass(frozen=True)
class Firing:
    schedule: str
    event: Event
    action: Action


@dataclass
class _State:
    schedule: Schedule
    due: datetime
    running: asyncio.Task[Any] | None = None
    queued: Event | None = None


class CronScheduler:
    def __init__(
        self,
        schedules: Iterable[Schedule],
        start: Starter,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_fire: Callable[[Firing], None] | None = None,
    ) -> None:
        self._start = start
        self._clock = clock
        self._on_fire = on_fire
        now = clock()
        self._states: dict[str, _State] = {}
        for s in schedules:
            if s.name in self._states:
                raise ValueError(f"two schedules are named {s.name!r}")
            self._states[s.name] = _State(s, s.next_after(now))

    def next_due(self) -> datetime | None:
        return min((s.due for s in self._states.values()), default=None)

    def running(self, name: str) -> bool:
        task = self._states[name].running
        return task is not None and not task.done()

    async def tick(self, now: datetime | None = None) -> list[Firing]:
        """Fire every schedule due at `now` (the clock's time by default), once each."""
        now = now or self._clock()
        firings = []
        for state in self._states.values():
            if state.due > now:
                continue
            s = state.schedule
            event = Event(s.target, "cron", dict(s.payload), s.name, at=state.due)
            firings.append(Firing(state.schedule.name, event, self._fire(state, event)))
            state.due = state.schedule.next_after(now)  # coalesce what was missed
        for firing in firings:
            log.info("schedule %s: %s %s", firing.schedule, firing.action, firing.event.id)
            if self._on_fire is not None:
                self._on_fire(firing)
        await asyncio.sleep(0)  # let the started runs begin
        return firings

    def _fire(self, state: _State, event: Event) -> Action:
        if state.running is None or state.running.done():
            self._launch(state, event)
            return "started"
        match state.schedule.overlap:
            case Overlap.SKIP:
                return "skipped"
            case Overlap.QUEUE:
                state.queued = event
                return "queued"
            case Overlap.CANCEL:
                state.running.cancel()
                self._launch(state, event)
                return "replaced"

    def _launch(self, state: _State, event: Event) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(self._start(event))
        state.running = task

        def done(t: asyncio.Task[Any]) -> None:
            if not t.cancelled() and t.exception() is not None:
                name, error = state.schedule.name, t.exception()
                log.error("schedule %s: run %s failed: %r", name, event.id, error)
            if state.running is t and state.queued is not None:
                queued, state.queued = state.queued, None
                self._launch(state, queued)

        task.add_done_callback(done)

    async def run(self, max_sleep: float = 60.0) -> None:
        """Tick forever, sleeping until the next schedule is due (re-checking the clock)."""
        while True:
            due = self.next_due()
            if due is None:
                return
            wait = (due - self._clock()).total_seconds()
            if wait > 0:
                await asyncio.sleep(min(wait, max_sleep))
                continue
            await self.tick()

    async def join(self) -> None:
        """Wait until no run is going and none is queued behind one (a graceful stop)."""
        while tasks := [s.running for s in self._states.values() if s.running]:
            if all(t.done() for t in tasks):
                return
            # a run's done callback starts its queued successor before this gather returns
            await asyncio.gather(*tasks, return_exceptions=True)

    async def aclose(self) -> None:
        """Cancel the runs still going and wait for them to stop."""
        tasks = [s.running for s in self._states.values() if s.running and not s.running.done()]
        for state in self._states.values():
            state.queued = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
