"""Automation: the flows of a deployment, the triggers that start them, and what they saved.

    automation = Automation.from_settings(settings, runtime)   # flows from AIASSIST_FLOWS_DIR
    await automation.start()        # the cron loop; the SMTP listener if a flow takes mail;
                                    # the waker of runs whose `wait` is over (`waits`)
    app.include_router(automation.webhook_router())
    ...
    await automation.aclose()

Every trigger turns into one `start_flow` on the runtime, as the service identity
`automation` (scopes from `AIASSIST_AUTOMATION_SCOPES`), with the trigger's event as the
run's idempotency key: a webhook resent, a mail redelivered or a schedule fired by two
replicas starts one run. A run goes in-process by default, or to `submit` (an executor that
hands it to workers) when one is given.

Loading is strict: a bad flow file, two flows of one name, two flows on one webhook or
mailbox, or a flow naming a tool that does not exist stop the start-up with a message saying
where. A webhook without a secret is off (logged): nothing unsigned is ever accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio.to_thread
from fastapi import APIRouter
from pydantic import BaseModel, SecretStr

from aiassist.agent.executor import wait_settled
from aiassist.agent.flows import Flow, OnCron, OnEmail, OnWebhook, load_flows
from aiassist.agent.policy import service_identity
from aiassist.agent.runs import FlowStats, RunInfo
from aiassist.agent.runtime import Runtime
from aiassist.agent.triggers import (
    CronScheduler,
    EmailTrigger,
    Event,
    Overlap,
    Schedule,
    Webhook,
    webhook_router,
)
from aiassist.agent.triggers.secrets import SECRET_ENV_PREFIX, secret_for, webhook_secrets
from aiassist.agent.waits import resume_due
from aiassist.settings import Settings
from aiassist.store.audit import AuditLog
from aiassist.store.keys import Principal

__all__ = [
    "Automation",
    "AutomationConfig",
    "FlowReport",
    "Roi",
    "load_flows",
    "webhook_secrets",
]

log = logging.getLogger("aiassist.automation")

#: Hands a stored run to whatever executes it (in-process, or workers); see `Automation`.
Submit = Callable[[str], Awaitable[Any]]


@dataclass(frozen=True)
class AutomationConfig:
    """What the settings say: the flows, the webhooks' secrets, the listener, the scopes."""

    flows: dict[str, Flow] = field(default_factory=dict)
    webhooks: tuple[Webhook, ...] = ()
    smtp_listen: tuple[str, int] | None = None
    scopes: frozenset[str] = frozenset({"agent:run"})

    @classmethod
    def from_settings(cls, settings: Settings) -> AutomationConfig:
        flows = load_flows(settings.flows_dir) if settings.flows_dir is not None else {}
        listen = None
        if settings.smtp_listen is not None:
            host, _, port = settings.smtp_listen.rpartition(":")
            listen = (host, int(port))
        scopes = frozenset(s.strip() for s in settings.automation_scopes.split(",") if s.strip())
        return cls.build(flows, webhook_secrets(settings), smtp_listen=listen, scopes=scopes)

    @classmethod
    def build(
        cls,
        flows: Mapping[str, Flow],
        secrets: Mapping[str, SecretStr] | None = None,
        *,
        smtp_listen: tuple[str, int] | None = None,
        scopes: frozenset[str] = frozenset({"agent:run"}),
    ) -> AutomationConfig:
        """Check the flows' triggers against each other and the secrets; `ValueError` if not."""
        hooks: dict[str, Webhook] = {}
        mailboxes: dict[str, str] = {}
        for flow in flows.values():
            for trigger in flow.triggers:
                if isinstance(trigger, OnWebhook):
                    if trigger.webhook in hooks:
                        raise ValueError(
                            f"flows {hooks[trigger.webhook].target!r} and {flow.name!r} both "
                            f"use the webhook {trigger.webhook!r}"
                        )
                    secret = secret_for(trigger.webhook, secrets or {})
                    if secret is None:  # unsigned requests are never accepted: no route
                        variable = SECRET_ENV_PREFIX + trigger.webhook.upper().replace("-", "_")
                        log.warning(
                            "flow %s: webhook %r is off until it has a secret (set %s or "
                            "AIASSIST_WEBHOOK_SECRETS_FILE)",
                            flow.name,
                            trigger.webhook,
                            variable,
                        )
                        continue
                    hooks[trigger.webhook] = Webhook(trigger.webhook, flow.name, secret)
                elif isinstance(trigger, OnEmail):
                    address = trigger.email.lower()
                    if address in mailboxes:
                        raise ValueError(
                            f"flows {mailboxes[address]!r} and {flow.name!r} both take mail "
                            f"to {address}"
                        )
                    mailboxes[address] = flow.name
        return cls(dict(flows), tuple(hooks.values()), smtp_listen, scopes)

    @property
    def schedules(self) -> list[Schedule]:
        return [
            Schedule(
                f"{flow.name}#{i}",
                trigger.cron,
                flow.name,
                dict(trigger.input),
                Overlap(trigger.overlap),
                trigger.timezone,
            )
            for flow in self.flows.values()
            for i, trigger in enumerate(flow.triggers)
            if isinstance(trigger, OnCron)
        ]

    @property
    def mailboxes(self) -> dict[str, str]:
        return {
            t.email.lower(): flow.name
            for flow in self.flows.values()
            for t in flow.triggers
            if isinstance(t, OnEmail)
        }


class Roi(BaseModel):
    """What a flow's real runs gave: counts, success rate, errors caught, minutes saved."""

    runs: int
    succeeded: int
    failed: int
    waiting_approval: int
    success_rate: float | None  # of the runs that ended; None before the first
    errors_caught: int
    minutes_saved: float


class FlowReport(BaseModel):
    name: str
    description: str
    minutes_saved_per_run: float
    tools: list[str]
    steps: list[dict[str, Any]]
    triggers: list[dict[str, Any]]
    roi: Roi


def roi(flow: Flow, stats: FlowStats | None) -> Roi:
    s = stats or FlowStats()
    ended = s.succeeded + s.failed
    return Roi(
        runs=s.runs,
        succeeded=s.succeeded,
        failed=s.failed,
        waiting_approval=s.waiting,
        success_rate=round(s.succeeded / ended, 4) if ended else None,
        errors_caught=s.errors_caught,
        minutes_saved=s.succeeded * flow.minutes_saved,
    )


class Automation:
    """The flows on a runtime, and their triggers running (see the module docstring)."""

    def __init__(
        self,
        runtime: Runtime,
        config: AutomationConfig,
        *,
        audit: AuditLog | Callable[[], AuditLog | None] | None = None,
        submit: Submit | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        settle_seconds: float = 3600.0,
        wake_seconds: float = 5.0,
    ) -> None:
        """`submit` hands a run to an executor (`Executor.submit`, e.g. Celery workers);
        without one, runs are driven in this process. Every `wake_seconds` the runs whose
        `wait` step is over go on (when a flow has one)."""
        for flow in config.flows.values():
            unknown = [t for t in flow.tools if runtime.tools.get(t) is None]
            if unknown:
                raise ValueError(f"flow {flow.name!r} uses unknown tools: {', '.join(unknown)}")
        runtime.flows.update(config.flows)
        self.runtime = runtime
        self.config = config
        self.principal: Principal = service_identity("automation", config.scopes)
        self._audit = audit
        self._submit = submit
        self.settle_seconds = settle_seconds
        self.wake_seconds = wake_seconds
        self.scheduler = CronScheduler(config.schedules, self.run_event, clock=clock)
        self.email = EmailTrigger(config.mailboxes, self._start_from_mail)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cron: asyncio.Task[None] | None = None
        self._waker: asyncio.Task[None] | None = None
        self._smtp: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @classmethod
    def from_settings(cls, settings: Settings, runtime: Runtime, **options: Any) -> Automation:
        """Flows from `AIASSIST_FLOWS_DIR`, secrets and listener from the settings."""
        return cls(runtime, AutomationConfig.from_settings(settings), **options)

    @property
    def flows(self) -> dict[str, Flow]:
        return self.config.flows

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop `start()` ran on: where runs go on (another thread may submit to it)."""
        return self._loop

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Run the cron loop, and listen for mail when a flow takes mail and a port is set."""
        self._loop = asyncio.get_running_loop()
        if self.scheduler.next_due() is not None:
            self._cron = asyncio.create_task(self.scheduler.run())
        if any(flow.waits for flow in self.flows.values()):
            self._waker = asyncio.create_task(self._wake())
        if self.config.smtp_listen is not None and self.email.routes:
            host, port = self.config.smtp_listen
            self._smtp = await anyio.to_thread.run_sync(self.email.serve, host, port)
            log.info("inbound mail for %s on %s:%d", ", ".join(self.email.routes), host, port)

    async def aclose(self) -> None:
        if self._smtp is not None:
            await anyio.to_thread.run_sync(self._smtp.stop)
            self._smtp = None
        for task in (self._cron, self._waker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._cron = self._waker = None
        await self.scheduler.aclose()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    def webhook_router(self) -> APIRouter:
        """`POST /v1/hooks/{name}` for the flows' webhooks."""
        return webhook_router(self.config.webhooks, self.run_event, audit=self._audit)

    # --- starting runs ---------------------------------------------------------------------
    async def run(
        self,
        name: str,
        input: Mapping[str, Any] | None = None,
        *,
        principal: Principal | None = None,
        key: str | None = None,
        dry_run: bool = False,
    ) -> RunInfo:
        """Start the flow `name` (once per `key`) and see it to its end or first pause."""
        run_id = await self.runtime.create_flow_run(
            name, input, principal or self.principal, key=key, dry_run=dry_run
        )
        return await self.proceed(run_id)

    async def run_event(self, event: Event) -> dict[str, Any]:
        """The `Starter` of every trigger: one run per event, as the service identity."""
        info = await self.run(event.target, event.payload, key=_event_key(event))
        return {"run": info.id, "status": info.status, "error": info.error}

    async def proceed(self, run_id: str) -> RunInfo:
        """Drive a stored run here, or hand it to the executor and follow it to its end or
        first pause (a schedule's overlap policy needs to know when its run is over)."""
        if self._submit is not None:
            await self._submit(run_id)
            return await wait_settled(self.runtime, run_id, self.settle_seconds)
        return await self.runtime.drive(run_id)

    async def resume_due(self, now: datetime | None = None) -> list[str]:
        """Go on with the runs whose `wait` is over at `now` (the runtime's clock by
        default): each handed to the executor, or driven in a task of this process."""
        return await resume_due(self.runtime, now, submit=self._submit or self._hand_over)

    async def _hand_over(self, run_id: str) -> None:
        self._spawn(run_id)

    async def _wake(self) -> None:
        while True:
            try:
                await self.resume_due()
            except Exception:  # the database is away: try again at the next beat
                log.exception("could not resume the flow runs whose wait is over")
            await asyncio.sleep(self.wake_seconds)

    async def _start_from_mail(self, event: Event) -> dict[str, Any]:
        """Mail arrives on the listener's own thread: record the run there, so the sender
        is answered 250 only once it is stored, and drive it on the service's loop."""
        run_id = await self.runtime.create_flow_run(
            event.target, event.payload, self.principal, key=_event_key(event)
        )
        loop = self._loop
        if loop is None or loop is _running_loop():
            self._spawn(run_id)
        else:
            loop.call_soon_threadsafe(self._spawn, run_id)
        return {"run": run_id}

    def _spawn(self, run_id: str) -> None:
        task = asyncio.ensure_future(self.proceed(run_id))
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("flow run %s failed to go on: %r", run_id, t.exception())

        task.add_done_callback(done)

    async def wait_idle(self) -> None:
        """Wait for the runs started from mail to end or pause (for tests and shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # --- reports ---------------------------------------------------------------------------
    async def reports(self) -> list[FlowReport]:
        stats = await anyio.to_thread.run_sync(self.runtime.store.flow_stats)
        return [report(flow, stats.get(name)) for name, flow in sorted(self.flows.items())]


def report(flow: Flow, stats: FlowStats | None) -> FlowReport:
    return FlowReport(
        name=flow.name,
        description=flow.description,
        minutes_saved_per_run=flow.minutes_saved,
        tools=flow.tools,
        steps=[s.model_dump(exclude_defaults=True) for s in flow.steps],
        triggers=[t.model_dump(exclude_defaults=True) for t in flow.triggers],
        roi=roi(flow, stats),
    )


def _event_key(event: Event) -> str:
    """One run per event; a schedule's firing is named by its time, so replicas agree."""
    if event.kind == "cron":
        return f"cron:{event.trigger}:{event.at.astimezone(UTC).isoformat()}"[:200]
    return f"{event.kind}:{event.trigger}:{event.id}"[:200]


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
