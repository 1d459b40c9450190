"""One tool call, from the model's request to its stored result.

The policy decides first: a denied call never runs and the model is told why. A call that
needs approval pauses the run. A `write` or `irreversible` call writes its intent record
before the call, so a resumed run that finds an intent without a result makes the call
again with the same idempotency key. Tool errors, timeouts, rate limits and invalid
arguments are results the model can read (`{"error": ..., "retryable": ...}`), not failures
of the run. Every step is written through the run store (`aiassist.agent.runs`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from pydantic import BaseModel

from aiassist.agent.flows import DRY_RUN_PLACEHOLDER
from aiassist.agent.policy import Action, Policy, Verdict
from aiassist.agent.providers.base import Message, ToolCall
from aiassist.agent.ratelimit import RateLimiter
from aiassist.agent.redaction import Redactor
from aiassist.agent.runs import (
    CallStatus,
    RunState,
    RunStatus,
    RunStore,
    Unit,
    idempotency_key,
    new_call,
)
from aiassist.agent.tools import Risk, Tool, ToolContext, ToolError, ToolSet
from aiassist.metrics import Metrics
from aiassist.store.audit import plain_json
from aiassist.store.keys import Principal
from aiassist.store.models import AgentApproval, AgentToolCall, utcnow

__all__ = ["DRY_RUN_AWARE_SOURCES", "Calls", "jsonable", "on"]

T = TypeVar("T")
log = logging.getLogger("aiassist.agent")

#: Tool sources that honour `ToolContext.dry_run` themselves (the OpenAPI source answers with
#: the request it would send); other sources' writes are never called in a dry run.
DRY_RUN_AWARE_SOURCES = frozenset({"openapi"})
_MAX_RESULT_CHARS = 20_000

#: Awaits a model turn or a tool call while the run's lease is renewed (`Runtime`).
Leased = Callable[[str, Awaitable[Any]], Awaitable[Any]]


async def on(in_thread: bool, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` in a worker thread, or right here on the loop."""
    if not in_thread:
        return fn(*args, **kwargs)
    return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))


def jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return plain_json(value)


@dataclass
class Calls:
    """Carries out a run's tool calls under the policy, each step stored as it happens.

    `db_in_thread` is where reads and the rarer writes run; `writes_in_thread` where a
    call's own writes (its intent, its result: one pipelined transaction each) run (see `Runtime`).
    """

    store: RunStore
    tools: ToolSet
    policy: Policy
    redact: Redactor
    rate_limiter: RateLimiter
    leased: Leased
    tool_timeout: float
    rate_limit_wait: float
    lease_seconds: float
    db_in_thread: bool
    writes_in_thread: bool
    metrics: Metrics | None = None

    async def resolve(
        self,
        state: RunState,
        step: int,
        call: ToolCall,
        principal: Principal,
        allowed: frozenset[str],
    ) -> bool:
        """Settle one call the model asked for; False when the run must wait for a person."""
        record = state.calls.get(call.id)
        if record is None:
            tool = self.tools.get(call.name) if call.name in allowed else None
            verdict = self.policy.decide(
                call.name, call.arguments, tool=tool, principal=principal, allowed=allowed
            )
            if verdict.action is Action.DENY or tool is None:
                denied = {"error": f"denied by policy: {verdict.reason}", "retryable": False}
                await self.settle_new(state, step, call, tool, verdict, CallStatus.DENIED, denied)
                return True
            try:
                arguments = tool.check(call.arguments)
            except ToolError as exc:
                status, result = CallStatus.FAILED, exc.as_result()
                if state.run.dry_run and DRY_RUN_PLACEHOLDER in json.dumps(call.arguments):
                    status = CallStatus.SUCCEEDED  # a flow's dry run: shown, not checkable
                    result = {
                        "dry_run": True,
                        "tool": tool.name,
                        "arguments": call.arguments,
                        "unchecked": "depends on values only a real run has: " + exc.message,
                    }
                await self.settle_new(state, step, call, tool, verdict, status, result)
                return True
            if verdict.action is Action.APPROVE and not state.run.dry_run:
                await self._request_approval(state, step, call, tool, arguments, verdict)
                return False
            return await self._execute(
                state, step, call.id, tool, arguments, verdict, resumed=False
            )
        status = CallStatus(record.status)
        if status is CallStatus.WAITING_APPROVAL:  # found so on resuming: it waits again
            wait = partial(Unit.let_go, status=RunStatus.WAITING_APPROVAL)
            await on(self.db_in_thread, self.store.write, state, wait)
            return False
        tool = self.tools.get(record.tool)
        if status in (CallStatus.APPROVED, CallStatus.STARTED):
            verdict = Verdict(
                Action(record.policy.get("action", "allow")), record.policy.get("reason", "")
            )
            if tool is None:
                gone = {"error": f"tool {record.tool!r} is no longer available", "retryable": False}
                await self._settle(state, record, CallStatus.FAILED, gone)
                return True
            return await self._execute(
                state,
                step,
                call.id,
                tool,
                record.arguments,
                verdict,
                resumed=status is CallStatus.STARTED,
            )
        # rejected, or settled without its message (cannot happen: one transaction)
        await self._settle(state, record, CallStatus(record.status), record.result)
        return True

    async def _execute(
        self,
        state: RunState,
        step: int,
        call_id: str,
        tool: Tool,
        arguments: dict[str, Any],
        verdict: Verdict,
        *,
        resumed: bool,
    ) -> bool:
        record = state.calls.get(call_id)
        if tool.rate_limit is not None:
            refusal = await self._take_rate_limit(tool)
            if refusal is not None:
                if record is None:
                    call = ToolCall(call_id, tool.name, arguments)
                    await self.settle_new(
                        state, step, call, tool, verdict, CallStatus.FAILED, refusal
                    )
                else:
                    await self._settle(state, record, CallStatus.FAILED, refusal)
                return True
        key = (
            record.idempotency_key
            if record is not None
            else idempotency_key(state.run.id, step, tool.name, arguments)
        )
        fresh = record is None or record.status != CallStatus.STARTED
        if fresh and tool.risk is not Risk.READ:  # the intent record, before the side effect
            record = await on(
                self.writes_in_thread,
                self._write_intent,
                state,
                step,
                call_id,
                tool,
                arguments,
                verdict,
                key,
            )
            state.calls[call_id] = record
        dry_run = bool(state.run.dry_run)
        context = ToolContext(
            run_id=state.run.id,
            call_id=call_id,
            idempotency_key=key,
            principal=state.run.principal,
            dry_run=dry_run,
            resumed=resumed,
        )
        started = time.perf_counter()
        ok = False
        try:
            if dry_run and tool.risk is not Risk.READ and tool.source not in DRY_RUN_AWARE_SOURCES:
                raw: Any = {"dry_run": True, "tool": tool.name, "arguments": arguments}
            else:
                with anyio.fail_after(self.tool_timeout):
                    raw = await self.leased(state.run.id, tool.call(arguments, context))
            result = jsonable(raw)
            if dry_run and verdict.action is Action.APPROVE:  # what a real run would wait for
                result = {"result": result} if not isinstance(result, dict) else result
                result = {**result, "would_need_approval": verdict.reason}
            ok = True
        except ToolError as exc:
            result = exc.as_result()
        except TimeoutError:
            result = {
                "error": f"the call timed out after {self.tool_timeout:g}s",
                "retryable": True,
            }
        except Exception as exc:  # a tool's bug is the model's information, not the run's end
            log.warning("tool %s raised %s", tool.name, type(exc).__name__)
            result = {"error": f"{type(exc).__name__}: {exc}", "retryable": False}
        duration_ms = (time.perf_counter() - started) * 1000
        result = _bounded(self.redact(result))
        status = CallStatus.SUCCEEDED if ok else CallStatus.FAILED
        record = state.calls.get(call_id)
        if record is None:  # a read: no intent was written, the row is written with its result
            call = ToolCall(call_id, tool.name, arguments)
            await self.settle_new(
                state, step, call, tool, verdict, status, result, key=key, duration_ms=duration_ms
            )
        else:
            await self._settle(state, record, status, result, duration_ms=duration_ms)
        return True

    async def _take_rate_limit(self, tool: Tool) -> dict[str, Any] | None:
        """Wait for the downstream's budget up to `rate_limit_wait`; past it, tell the model."""
        assert tool.rate_limit is not None
        deadline = time.monotonic() + self.rate_limit_wait
        while True:
            try:
                wait = await on(self.db_in_thread, self.rate_limiter.acquire, tool.rate_limit)
            except Exception as exc:  # fail closed: no budget known, no call
                log.warning("rate limiter unavailable: %s", type(exc).__name__)
                return {"error": "the rate limiter is unavailable", "retryable": True}
            if wait <= 0:
                return None
            if time.monotonic() + wait > deadline:
                return {
                    "error": f"rate limited: {tool.rate_limit.key} allows {tool.rate_limit.calls} "
                    f"calls per {tool.rate_limit.per_seconds:g}s",
                    "retryable": True,
                    "retry_after_seconds": round(wait, 3),
                }
            await anyio.sleep(wait)

    # --- what each step writes -------------------------------------------------------------
    def _row(
        self,
        state: RunState,
        step: int,
        call: ToolCall,
        tool: Tool | None,
        verdict: Verdict,
        status: CallStatus,
        key: str | None = None,
    ) -> AgentToolCall:
        risk = tool.risk.value if tool is not None else None
        return new_call(
            state.run.id, step, call, risk=risk, policy=verdict.as_dict(), status=status, key=key
        )

    def _write_intent(
        self,
        state: RunState,
        step: int,
        call_id: str,
        tool: Tool,
        arguments: dict[str, Any],
        verdict: Verdict,
        key: str,
    ) -> AgentToolCall:
        existing = state.calls.get(call_id)
        if existing is not None:  # approved: the row exists
            row = existing
        else:
            row = self._row(
                state,
                step,
                ToolCall(call_id, tool.name, arguments),
                tool,
                verdict,
                CallStatus.STARTED,
                key,
            )
        subject = f"{state.run.id}/{call_id}"

        def work(unit: Unit) -> None:
            row.status = CallStatus.STARTED
            row.started_at = utcnow()
            if existing is not None:
                unit.start_call(row)
            else:
                unit.add_call(row)
                unit.audit("agent.policy", subject, {"tool": tool.name, **verdict.as_dict()})
            unit.audit(
                "agent.tool.started",
                subject,
                {
                    "tool": tool.name,
                    "arguments": self.redact(arguments),
                    "risk": tool.risk.value,
                    "idempotency_key": key,
                },
            )

        self.store.write(state, work)
        return row

    async def settle_new(
        self,
        state: RunState,
        step: int,
        call: ToolCall,
        tool: Tool | None,
        verdict: Verdict,
        status: CallStatus,
        result: Any,
        *,
        key: str | None = None,
        duration_ms: float | None = None,
    ) -> None:
        """Store a call that has no row yet with its result: denied, invalid, a read, a wait."""
        row = self._row(state, step, call, tool, verdict, status, key)
        await on(
            self.writes_in_thread,
            self._write_result,
            state,
            row,
            status,
            result,
            duration_ms,
            verdict,
        )

    async def _settle(
        self,
        state: RunState,
        record: AgentToolCall,
        status: CallStatus,
        result: Any,
        *,
        duration_ms: float | None = None,
    ) -> None:
        await on(
            self.writes_in_thread,
            self._write_result,
            state,
            record,
            status,
            result,
            duration_ms,
            None,
        )

    def _write_result(
        self,
        state: RunState,
        record: AgentToolCall,
        status: CallStatus,
        result: Any,
        duration_ms: float | None,
        verdict: Verdict | None,
    ) -> None:
        """The call's result and its message; `verdict` for a call that has no row yet."""
        seq = len(state.messages)
        subject = f"{state.run.id}/{record.call_id}"
        # a new row's policy event shows the arguments; an intent's were shown when written
        redacted_arguments = self.redact(record.arguments) if verdict is not None else None
        renew = time.monotonic() - state.leased_at > self.lease_seconds / 4

        def work(unit: Unit) -> None:
            if verdict is not None:
                record.status = status
                record.result = result
                record.finished_at = utcnow()
                record.duration_ms = duration_ms
                unit.add_call(record)
                kind = "agent.policy.denied" if status is CallStatus.DENIED else "agent.policy"
                unit.audit(
                    kind,
                    subject,
                    {"tool": record.tool, "arguments": redacted_arguments, **verdict.as_dict()},
                )
            else:
                unit.settle_call(record.id, status, result, duration_ms)
            unit.message(seq, "tool", result, call_id=record.call_id)
            if renew:  # a long turn of many calls keeps its lease; a short one saves a write
                unit.renew_lease(self.lease_seconds)
            if status is not CallStatus.DENIED:
                unit.audit(
                    f"agent.tool.{'succeeded' if status is CallStatus.SUCCEEDED else 'failed'}",
                    subject,
                    {
                        "tool": record.tool,
                        "status": status.value,
                        "result": _summary(result),
                        "duration_ms": duration_ms,
                    },
                )

        # not durable: a result lost in a crash is got again on resume (a read is repeated,
        # a write's intent makes it repeat with the same idempotency key)
        self.store.write(state, work, durable=False)
        if renew:
            state.leased_at = time.monotonic()
        if self.metrics is not None:
            self.metrics.agent_tool_calls.labels(record.tool, status.value).inc()
        record.status = status
        record.result = result
        state.calls[record.call_id] = record
        state.messages.append(Message("tool", result, call_id=record.call_id))
        state.answered.add(record.call_id)

    async def _request_approval(
        self,
        state: RunState,
        step: int,
        call: ToolCall,
        tool: Tool,
        arguments: dict[str, Any],
        verdict: Verdict,
    ) -> None:
        row = self._row(
            state,
            step,
            ToolCall(call.id, call.name, arguments),
            tool,
            verdict,
            CallStatus.WAITING_APPROVAL,
        )
        approval = AgentApproval(
            id=row.id,
            run_id=state.run.id,
            created_at=utcnow(),
            tool=tool.name,
            arguments=arguments,
            reason=verdict.reason[:500],
            requested_by=state.run.principal,
            status="pending",
        )

        def work(unit: Unit) -> None:
            unit.add_call(row)
            unit.add_approval(approval)
            unit.let_go(RunStatus.WAITING_APPROVAL)
            unit.audit(
                "agent.approval.requested",
                f"{state.run.id}/{call.id}",
                {
                    "approval": row.id,
                    "tool": tool.name,
                    "arguments": self.redact(arguments),
                    **verdict.as_dict(),
                },
            )

        await on(self.db_in_thread, self.store.write, state, work)
        state.calls[call.id] = row
        if self.metrics is not None:
            self.metrics.agent_runs.labels(RunStatus.WAITING_APPROVAL.value).inc()


def _bounded(result: Any) -> Any:
    text = json.dumps(result, ensure_ascii=False)
    if len(text) <= _MAX_RESULT_CHARS:
        return result
    return {"truncated": True, "result": text[:_MAX_RESULT_CHARS]}


def _summary(result: Any) -> Any:
    text = json.dumps(result, ensure_ascii=False)
    return result if len(text) <= 2000 else {"truncated": text[:2000]}
