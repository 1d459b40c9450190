"""`PriorityDispatcher`: run coroutine functions in the order the `priority` module scores them.

The embedded default for task priority: no broker, one event loop, a pool of worker
coroutines. Each task is scored once, when it is submitted, through `AIAssistService`
(the model when one is loaded, the least-slack rule otherwise, and the rule again when a
remote service is down), and its outcome is recorded when it ends so that the model learns
from what really happened. The dispatcher fills the features it knows itself (queue length,
workers, their load) when the caller does not give them.

Ordering (`priority.TaskQueue`, the same code the benchmark's simulator runs): a free worker
takes the task with the smallest static key ``t - boost`` (`priority.order_key`: its head
start over first come, first served, in seconds, capped at `horizon`), except that a task
whose latest start is less than `rescue` seconds away goes first (the rescue, earliest
deadline first), so that a deadline that can still be met is not lost to more important
work with time to spare, unless that work is far more important (its weight head start
more than the `AIASSIST_PRIORITY_RESCUE_GAP_S` setting above the rescued task's).

Starvation bound: a task submitted at t' is ahead of one submitted at t in the priority
order only if t' - boost' < t - boost, so t' < t + horizon; and once the first task in that
order has waited out the horizon, every fourth start is taken from the priority order
whatever the rescue wants. However steady a stream of urgent tasks, the lowest class keeps
moving. A static key costs nothing per pop: the heap is never re-sorted.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar, cast

from aiassist.modules.priority import (
    PriorityDecision,
    PriorityFeatures,
    PriorityOutcome,
    TaskQueue,
)
from aiassist.modules.priority import module as priority
from aiassist.sdk.service import AIAssistService

__all__ = ["DispatcherClosed", "DispatcherFull", "Job", "PriorityDispatcher"]

log = logging.getLogger("aiassist.modules.priority.dispatch")

T = TypeVar("T")


class DispatcherFull(RuntimeError):
    """The queue holds `max_queue` tasks: the producer must slow down (or raise the bound)."""


class DispatcherClosed(RuntimeError):
    """The dispatcher is stopping or stopped and takes no new tasks."""


class Job(Generic[T]):
    """A submitted task. Await it for its result; `decision` says why it runs when it does.

    Cancelling the job cancels the task: before it starts it never runs, while it runs its
    coroutine receives `CancelledError`.
    """

    __slots__ = ("_call", "_context", "deadline_in_s", "decision", "enqueued_at", "future")

    def __init__(
        self,
        call: Callable[[], Coroutine[Any, Any, T]],
        decision: PriorityDecision,
        deadline_in_s: float | None,
        enqueued_at: float,
        future: asyncio.Future[T],
    ) -> None:
        self._call = call
        self._context = contextvars.copy_context()  # the submitter's, as create_task does
        self.decision = decision
        self.deadline_in_s = deadline_in_s
        self.enqueued_at = enqueued_at
        self.future = future

    def __await__(self) -> Generator[Any, None, T]:
        return self.future.__await__()

    def cancel(self) -> bool:
        return self.future.cancel()

    def done(self) -> bool:
        return self.future.done()

    def result(self) -> T:
        return self.future.result()


class _JobQueue(asyncio.Queue[Job[Any]]):
    """An asyncio queue (put/get/join/maxsize as usual) whose order is a `TaskQueue`, read
    at the event loop's clock when a worker gets the next job."""

    def __init__(self, maxsize: int, order: TaskQueue[Job[Any]]) -> None:
        self._order = order
        super().__init__(maxsize)

    def _init(self, maxsize: int) -> None:
        self._queue = self._order  # the base class's qsize() and repr read _queue

    def _put(self, item: Job[Any]) -> None:
        self._order.push_decision(item, item.enqueued_at, item.decision, item.deadline_in_s)

    def _get(self) -> Job[Any]:
        return self._order.pop(asyncio.get_running_loop().time())


class PriorityDispatcher:
    """An asyncio worker pool that runs the highest-priority submitted task first.

    ```
    async with PriorityDispatcher(AIAssistService.instance(), workers=8) as dispatcher:
        job = await dispatcher.submit(send_invoice, order_id, features={"deadline_in_s": 30})
        await job
    ```

    - `horizon`: the longest head start a task may get over first come, first served, and
      so the longest extra wait the lowest class may suffer (see the module docstring).
      None: the priority module's own bound (`Scoring.max_boost_s`).
    - `rescue`: seconds before its latest start at which a task runs out of priority order.
      None: the `AIASSIST_PRIORITY_RESCUE_S` setting; 0: off.
    - `max_queue`: tasks waiting at most. When full, `submit` raises `DispatcherFull`
      (`when_full="raise"`) or waits for room (`"wait"`: backpressure on the producer).
    - metrics go to the service's registry: queue depth, wait by broker priority,
      finished tasks by status; `name` labels them.
    """

    def __init__(
        self,
        service: AIAssistService | None = None,
        *,
        workers: int = 4,
        max_queue: int = 10_000,
        horizon: float | None = None,
        rescue: float | None = None,
        when_full: Literal["raise", "wait"] = "raise",
        record_outcomes: bool = True,
        name: str = "default",
    ) -> None:
        if workers < 1 or max_queue < 1:
            raise ValueError("workers and max_queue must be >= 1")
        if (horizon is not None and horizon < 0) or (rescue is not None and rescue < 0):
            raise ValueError("horizon and rescue must be >= 0")
        self.service = service or AIAssistService.instance()
        self.workers = workers
        self.max_queue = max_queue
        self.horizon = priority.scoring.max_boost_s if horizon is None else horizon
        self.rescue = priority.scoring.rescue_s if rescue is None else rescue
        self.when_full = when_full
        self.record_outcomes = record_outcomes
        self.name = name
        self.order: TaskQueue[Job[Any]] = TaskQueue(
            rescue_s=self.rescue,
            bound_s=self.horizon,
            gap_s=priority.scoring.rescue_gap_s,
            wait_scale=priority.scoring.wait_scale,
        )
        self._queue = _JobQueue(max_queue, self.order)
        self._outcomes: asyncio.Queue[tuple[str, PriorityOutcome]] = asyncio.Queue(max_queue)
        self._busy = 0
        self._workers: list[asyncio.Task[None]] = []
        self._recorder: asyncio.Task[None] | None = None
        self._closing = False
        self._cancelling = False
        self._stopped = asyncio.Event()
        metrics = self.service.metrics
        self._depth = metrics.dispatch_depth.labels(name)
        self._waits = metrics.dispatch_waits
        self._done = metrics.dispatch_tasks

    # --- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Start the workers (`submit` does it on first use)."""
        if self._closing:
            raise DispatcherClosed(f"dispatcher {self.name!r} is stopped")
        if not self._workers:
            self._workers = [
                asyncio.create_task(self._work(), name=f"aiassist-dispatch-{self.name}-{i}")
                for i in range(self.workers)
            ]
            self._recorder = asyncio.create_task(self._record(), name="aiassist-outcomes")

    async def stop(self, drain: bool = True) -> None:
        """Take no new tasks, then finish the queued ones (`drain`) or cancel them.

        To bound a drain, wrap it: ``async with asyncio.timeout(30): await d.stop()``
        cancels what is left when time is up. Outcomes of the tasks that ran are recorded
        before this returns. Calling it again is harmless.
        """
        if self._closing:
            await self._stopped.wait()
            return
        self._closing = True
        try:
            if drain and self._workers:
                await self._queue.join()
        finally:  # also when cancelled or timed out: never leave workers behind
            try:
                await self._shut_down()
            finally:
                self._stopped.set()

    async def _shut_down(self) -> None:
        self._cancelling = True
        while not self._queue.empty():  # nothing left after a drain; else cancel it
            job = self._queue.get_nowait()
            if job.cancel():
                self._done.labels(self.name, "cancelled").inc()
            self._queue.task_done()
        self._depth.set(0)
        for worker in self._workers:  # a worker's running task is cancelled with it
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        if self._recorder is not None:  # outcomes of the tasks that ran are kept
            await self._outcomes.join()
            self._recorder.cancel()
            await asyncio.gather(self._recorder, return_exceptions=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop(drain=exc_type is None)  # on an error, don't run the backlog

    @property
    def queued(self) -> int:
        """Tasks waiting for a worker (including cancelled ones not yet popped)."""
        return self._queue.qsize()

    # --- submitting --------------------------------------------------------------------
    async def submit(
        self,
        fn: Callable[..., Awaitable[T]],
        /,
        *args: Any,
        features: PriorityFeatures | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Job[T]:
        """Score `fn(*args, **kwargs)` with the `priority` module and queue it.

        `features` describe the task (deadline, duration, weight, ...); invalid ones raise
        pydantic.ValidationError. `queue_length`, `workers` and `handler_load` default to
        this dispatcher's own. A service that is down never fails this: its rule answers.
        The task runs in a copy of the caller's context, as `asyncio.create_task` would.
        """
        if self._closing:
            raise DispatcherClosed(f"dispatcher {self.name!r} is stopping; task refused")
        if self.when_full == "raise" and self._queue.full():
            raise self._full()
        feats = cast(
            PriorityFeatures,
            self.service.decider.features(priority.name, self._with_own_features(features)),
        )
        await self.start()
        loop = asyncio.get_running_loop()
        enqueued_at = loop.time()
        decision = await self.service.adecide(priority, feats)
        if self._closing:  # stopped while the service answered
            raise DispatcherClosed(f"dispatcher {self.name!r} is stopping; task refused")

        async def call() -> T:
            return await fn(*args, **kwargs)

        job = Job(call, decision, feats.deadline_in_s, enqueued_at, loop.create_future())
        if self.when_full == "wait":
            await self._queue.put(job)
            if self._cancelling:  # the queue was emptied while we waited for room
                job.cancel()
                raise DispatcherClosed(f"dispatcher {self.name!r} stopped; task refused")
        else:
            try:
                self._queue.put_nowait(job)
            except asyncio.QueueFull:
                raise self._full() from None
        self._depth.set(self._queue.qsize())
        return job

    async def run(
        self,
        fn: Callable[..., Awaitable[T]],
        /,
        *args: Any,
        features: PriorityFeatures | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> T:
        """`submit` and wait for the result."""
        return await (await self.submit(fn, *args, features=features, **kwargs))

    def _with_own_features(
        self, features: PriorityFeatures | Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """The caller's features, plus the queue's own where the caller gave none."""
        if isinstance(features, PriorityFeatures):
            given = features.model_dump(include=features.model_fields_set)
        else:
            given = dict(features or {})
        own = {
            "queue_length": self._queue.qsize(),
            "workers": self.workers,
            "handler_load": self._busy / self.workers,
        }
        return own | given

    def _full(self) -> DispatcherFull:
        return DispatcherFull(
            f"dispatcher {self.name!r} has {self.max_queue} tasks queued (max_queue): "
            "slow the producer down, add workers, raise max_queue, or use when_full='wait'"
        )

    # --- working -----------------------------------------------------------------------
    async def _work(self) -> None:
        me = asyncio.current_task()
        while me is None or not me.cancelling():  # a job that swallowed our cancel ends here
            job = await self._queue.get()
            self._depth.set(self._queue.qsize())
            try:
                if job.done():  # cancelled by its caller while it waited
                    self._done.labels(self.name, "cancelled").inc()
                else:
                    await self._run(job)
            finally:
                self._queue.task_done()

    async def _run(self, job: Job[Any]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        self._waits.labels(self.name, str(job.decision.broker_priority)).observe(
            started - job.enqueued_at
        )
        # The task runs as its own asyncio task, so that cancelling the job cancels it
        # without cancelling the worker.
        running = loop.create_task(job._call(), context=job._context)
        job.future.add_done_callback(lambda f: running.cancel() if f.cancelled() else None)
        status = "ok"
        self._busy += 1
        try:
            result = await running
        except asyncio.CancelledError:
            job.cancel()
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                self._done.labels(self.name, "cancelled").inc()
                raise  # the worker itself is stopping: its job goes with it
            status = "cancelled"
        except Exception as exc:  # the task's failure is its caller's, never the worker's
            status = "error"
            if not job.done():
                job.future.set_exception(exc)
        else:
            if not job.done():
                job.future.set_result(result)
        finally:
            self._busy -= 1
        finished = loop.time()
        self._done.labels(self.name, status).inc()
        if status != "cancelled" and self.record_outcomes:
            self._outcome(job, started, finished, failed=status == "error")

    def _outcome(self, job: Job[Any], started: float, finished: float, failed: bool) -> None:
        # A failed task delivered nothing by its deadline: missed (as the Celery integration).
        deadline = job.deadline_in_s
        met = None if deadline is None else not failed and finished - job.enqueued_at <= deadline
        outcome = PriorityOutcome(
            waited_s=max(started - job.enqueued_at, 0.0),
            ran_s=max(finished - started, 0.0),
            deadline_met=met,
        )
        try:  # recorded by another task: a slow service never holds a worker
            self._outcomes.put_nowait((job.decision.decision_id, outcome))
        except asyncio.QueueFull:
            log.warning("dispatcher %r: outcome buffer full, outcome dropped", self.name)

    async def _record(self) -> None:
        while True:
            decision_id, outcome = await self._outcomes.get()
            try:  # arecord_outcome reports service trouble as False; anything else is a bug
                await self.service.arecord_outcome(priority, decision_id, outcome)
            except Exception:
                log.exception("dispatcher %r: recording an outcome failed", self.name)
            finally:
                self._outcomes.task_done()
