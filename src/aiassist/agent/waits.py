"""Waits: a flow's `wait` step pauses its run until a time, and nothing is held meanwhile.

    - id: cool_off
      wait: 3d                      # or  until: "{{ input.meeting_at }}"

A `wait` step reaches the runtime as the built-in call `flow.wait` (`flows.WAIT_CALL`), its
deadline in the arguments: `FlowModel` fixes it the first time the step is reached and the
turn is stored, so a run resumed anywhere, any time, waits for that same moment. Then:

- before the deadline the run is *parked*: status `waiting_until`, `resume_at` the deadline,
  no lease. No process, task or worker holds it; `drive()` leaves it alone.
- `resume_due(runtime, now)` wakes the parked runs whose time has come (back to `running`,
  one process wins each) and drives them here or hands them to an executor. The service's
  automation loop calls it every few seconds; the Celery `recover` task does too.
- a woken run settles the call with `{"waited_until": ..., "resumed_at": ...}` (the step's
  result in templates) and the flow goes on with its next step.
- a dry run does not wait: the result says `would_wait_until` and the run goes on at once.

Time is the runtime's `clock`, so tests move it instead of sleeping.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol

import anyio.to_thread

from aiassist.agent.calls import Calls, on
from aiassist.agent.flows import WAIT_CALL
from aiassist.agent.policy import Action, Verdict
from aiassist.agent.providers.base import ToolCall
from aiassist.agent.runs import CallStatus, RunInfo, RunState, RunStatus, RunStore, Unit

__all__ = ["WAIT_CALL", "is_wait", "resume_due", "settle", "wake_due"]

log = logging.getLogger("aiassist.agent")

_VERDICT = Verdict(Action.ALLOW, "a flow's wait step", rule="flow.wait")
_WAKE_BATCH = 100


class Driver(Protocol):
    """What drives woken runs on (a `Runtime`)."""

    store: RunStore
    clock: Callable[[], datetime]

    async def drive(self, run_id: str) -> RunInfo: ...


def is_wait(state: RunState, call: ToolCall) -> bool:
    """Whether `call` is a flow's wait: only a flow run's own model emits these."""
    return call.name == WAIT_CALL and state.run.flow is not None


async def settle(calls: Calls, state: RunState, step: int, call: ToolCall, now: datetime) -> bool:
    """Settle a wait call if its time has come at `now` (or in a dry run); else park the run.

    False when the run is parked: the runtime stops driving it, as for an approval.
    """
    until_text = call.arguments.get("until")
    if state.run.dry_run:
        result: dict[str, Any] = {"dry_run": True, "would_wait_until": until_text}
        await calls.settle_new(state, step, call, None, _VERDICT, CallStatus.SUCCEEDED, result)
        return True
    try:
        until = _utc(datetime.fromisoformat(str(until_text)))
    except ValueError:
        error = {
            "error": f"not a time to wait until: {str(until_text)[:100]!r}",
            "retryable": False,
        }
        await calls.settle_new(state, step, call, None, _VERDICT, CallStatus.FAILED, error)
        return True
    now = _utc(now)
    # `wake_due` leaves the deadline in `resume_at`: a run woken for this wait goes on even
    # if this process's clock is behind the waker's (or the waker was given a later `now`)
    woken = state.run.resume_at
    if now < until and (woken is None or _utc(woken) < until):
        await on(calls.db_in_thread, calls.store.write, state, _park(state, call, until))
        state.run.status, state.run.resume_at = RunStatus.WAITING_UNTIL, until
        if calls.metrics is not None:
            calls.metrics.agent_runs.labels(RunStatus.WAITING_UNTIL.value).inc()
        return False
    result = {"waited_until": until.isoformat(), "resumed_at": now.isoformat()}
    await calls.settle_new(state, step, call, None, _VERDICT, CallStatus.SUCCEEDED, result)
    if woken is not None:
        await on(calls.db_in_thread, calls.store.forget_deadline, state.run.id)
        state.run.resume_at = None
    return True


def _park(state: RunState, call: ToolCall, until: datetime) -> Callable[[Unit], None]:
    """The transaction that parks the run (with the turn that asked for the wait: the
    runtime stores a model turn together with the run's next write)."""

    def work(unit: Unit) -> None:
        unit.let_go(RunStatus.WAITING_UNTIL, resume_at=until)
        unit.audit(
            "agent.run.waiting",
            f"{state.run.id}/{call.id}",
            {"step": call.arguments.get("step"), "until": until.isoformat()},
        )

    return work


def wake_due(store: RunStore, now: datetime, limit: int = _WAKE_BATCH) -> list[str]:
    """Put the parked runs due at `now` back to `running`; the ids this call woke.

    Of several processes waking at once (replicas, workers) exactly one wins each run; a
    run woken but not driven (its waker died) is `running` without a lease, which
    `Runtime.recover()` picks up like any orphan.
    """
    return store.wake_due(_utc(now), limit)


async def resume_due(
    runtime: Driver,
    now: datetime | None = None,
    *,
    submit: Callable[[str], Awaitable[Any]] | None = None,
    limit: int = _WAKE_BATCH,
) -> list[str]:
    """Wake the runs due at `now` (the runtime's clock by default) and drive each here, or
    hand it to `submit` (an executor's, e.g. Celery workers). The ids woken."""
    moment = now if now is not None else runtime.clock()
    woken = await anyio.to_thread.run_sync(partial(wake_due, runtime.store, moment, limit))
    for run_id in woken:
        try:
            if submit is not None:
                await submit(run_id)
            else:
                await runtime.drive(run_id)
        except Exception:  # the run is `running` and unleased: recover() goes on with it
            log.exception("agent run %s could not go on after its wait", run_id)
    return woken


def _utc(moment: datetime) -> datetime:
    """`moment` in UTC; SQLite gives times back without a zone, and they are UTC."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
