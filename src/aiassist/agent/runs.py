"""Runs as they are stored: statuses, the views the API and CLI show, and the run store.

Everything a run is lives in four tables (see `aiassist.store.models`): the run, its
conversation, its tool calls and its approvals. The runtime keeps no state of its own that
the database does not have, so any process can pick a run up where another left it.

Each change is one transaction that also appends its audit events to the hash chain, so the
trail and the state never disagree: either both are written or neither is.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Connection, Engine, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.dml import Insert

from aiassist.agent.providers.base import Message, ToolCall
from aiassist.store import script
from aiassist.store.audit import append_events, append_statements, chain_heads, plain_json
from aiassist.store.models import (
    AgentApproval,
    AgentMessage,
    AgentRun,
    AgentToolCall,
    Base,
    utcnow,
)
from aiassist.store.script import Statement

__all__ = [
    "ApprovalInfo",
    "CallInfo",
    "CallStatus",
    "FlowStats",
    "LeaseLost",
    "RunInfo",
    "RunNotFound",
    "RunStatus",
    "RunStore",
    "idempotency_key",
]

T = TypeVar("T")
_RETRIES = 30


class LeaseLost(RuntimeError):
    """Another worker drives this run now: this one must stop and write nothing more of it."""

    def __init__(self, run_id: str, why: str) -> None:
        super().__init__(f"agent run {run_id}: {why}; this worker stops driving it")
        self.run_id = run_id


def _raise_if_seq_clash(exc: IntegrityError) -> None:
    """`LeaseLost` if `exc` is a second writer's message at a `(run_id, seq)` already taken.

    That is not contention on the audit chain, which a retry resolves: it means another
    worker holds the run, so retrying would only write the same clash again.
    """
    said = str(exc.orig)
    if "agent_messages" not in said or "seq" not in said:
        return
    params = exc.params
    rows = params if isinstance(params, list | tuple) else [params]
    run_id = next(
        (
            str(r["run_id"])
            for r in rows
            if isinstance(r, dict) and isinstance(r.get("run_id"), str)
        ),
        "?",
    )
    raise LeaseLost(run_id, "another worker wrote its next message") from exc


class RunStatus(StrEnum):
    RUNNING = "running"
    WAITING_APPROVAL = "waiting_approval"
    WAITING_UNTIL = "waiting_until"  # a flow's wait step: parked until `resume_at`
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class CallStatus(StrEnum):
    DENIED = "denied"  # the policy refused it; the model was told why
    WAITING_APPROVAL = "waiting_approval"
    APPROVED = "approved"  # a person approved it; not called yet
    REJECTED = "rejected"
    STARTED = "started"  # the intent record: the call may have happened
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class RunNotFound(LookupError):
    pass


def idempotency_key(run_id: str, step: int, tool: str, arguments: dict[str, Any]) -> str:
    """The same call in the same step of the same run always gets the same key."""
    canonical = json.dumps(
        [run_id, step, tool, arguments], sort_keys=True, separators=(",", ":"), default=str
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


# --- views ---------------------------------------------------------------------------------
class CallInfo(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    call_id: str
    step: int
    tool: str
    arguments: dict[str, Any]
    risk: str | None
    status: str
    policy: dict[str, Any]
    result: Any
    idempotency_key: str
    duration_ms: float | None


class RunInfo(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    status: str
    task: str
    principal: str
    tools: list[str]
    provider: str
    steps: int
    max_steps: int
    input_tokens: int
    output_tokens: int
    cost: float
    output: str | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    key: str | None = None
    flow: str | None = None
    dry_run: bool = False
    resume_at: datetime | None = None  # when a run `waiting_until` goes on
    calls: list[CallInfo] = []
    pending_approvals: list[str] = []


class FlowStats(BaseModel):
    """What a flow's real runs (dry runs excluded) did: the figures its ROI is made of."""

    runs: int = 0
    succeeded: int = 0
    failed: int = 0
    waiting: int = 0
    errors_caught: int = 0  # failed or retried tool calls, each a person's interruption saved


class ApprovalInfo(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    run_id: str
    tool: str
    arguments: dict[str, Any]
    reason: str
    status: str
    requested_by: str
    decided_by: str | None
    decided_at: datetime | None
    message: str | None
    edited_arguments: dict[str, Any] | None
    created_at: datetime


# --- the state a process drives ------------------------------------------------------------
@dataclass
class RunState:
    """A run rebuilt from the database: the row, the conversation, the calls by call id."""

    run: AgentRun
    messages: list[Message]
    calls: dict[str, AgentToolCall]
    answered: set[str] = field(default_factory=set)  # call ids with a tool message
    shown: list[Message] = field(default_factory=list)  # the prompt so far, redacted
    leased_at: float = field(default_factory=time.monotonic)  # when the lease was renewed
    #: writes that ride along with the run's next transaction (a model turn, see the runtime)
    deferred: list[Callable[[Unit], None]] = field(default_factory=list)
    specs: list[dict[str, Any]] | None = None  # the tool specs the model is shown, per run

    def pending(self) -> list[tuple[int, ToolCall]]:
        """The last model turn's calls that have no result in the conversation yet."""
        for message in reversed(self.messages):
            if message.role == "assistant":
                return [
                    (self.run.steps, c) for c in message.tool_calls if c.id not in self.answered
                ]
        return []


def to_message(row: AgentMessage) -> Message:
    calls = tuple(
        ToolCall(id=c["id"], name=c["name"], arguments=c["arguments"]) for c in row.tool_calls or []
    )
    return Message(role=row.role, content=row.content, tool_calls=calls, call_id=row.call_id)  # type: ignore[arg-type]


# --- the store -----------------------------------------------------------------------------
_INSERTS: dict[type[Base], Insert] = {}


def _insert(model: type[Base]) -> Insert:
    statement = _INSERTS.get(model)
    if statement is None:  # inline: no RETURNING of the generated keys, nobody reads them
        statement = _INSERTS[model] = insert(model).inline()
    return statement


class Unit:
    """One transaction of the runtime: state changes plus the audit events describing them.

    With a `connection`, statements go straight to it (the hot path skips the ORM's
    bookkeeping) and `session`, made on first use, is for the few writes that want the ORM.
    Without one, they are gathered in `statements` and sent at once (`RunStore.unit`).
    """

    def __init__(self, connection: Connection | None, actor: str) -> None:
        self.connection = connection
        self.actor = actor
        self.statements: list[Statement] = []
        self._session: Session | None = None
        self._events: list[tuple[str, str, dict[str, Any]]] = []
        self._messages: list[dict[str, Any]] = []

    @property
    def session(self) -> Session:
        """An ORM session inside this unit's transaction (committed with it, not by itself)."""
        if self.connection is None:
            raise RuntimeError("a unit that only writes has no session")
        if self._session is None:
            self._session = Session(bind=self.connection, expire_on_commit=False)
        return self._session

    def insert(self, row: Base) -> None:
        """Insert `row` as a Core statement: the hot path skips the ORM's bookkeeping."""
        state = row.__dict__  # what was set: the rest is None or a column default
        values = {c.key: state.get(c.key) for c in row.__table__.columns}
        self.insert_values(type(row), {k: v for k, v in values.items() if v is not None})

    def insert_values(self, model: type[Base], *rows: dict[str, Any]) -> None:
        """Insert `rows` (column values) of `model`, defaults filled in; with a connection
        in one statement."""
        if self.connection is None:
            self.statements += [(_insert(model), row) for row in rows]
        else:
            script.execute(self.connection, _insert(model), rows)

    def message(
        self,
        run_id: str,
        seq: int,
        role: str,
        content: Any,
        *,
        tool_calls: list[dict[str, Any]] | None = None,
        call_id: str | None = None,
        model: str | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
    ) -> None:
        """Add a message to the conversation; a unit's messages go in one statement."""
        self._messages.append(
            {
                "run_id": run_id,
                "seq": seq,
                "role": role,
                "content": content,
                "tool_calls": tool_calls,
                "call_id": call_id,
                "model": model,
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
            }
        )

    def execute(self, statement: Executable, parameters: dict[str, Any] | None = None) -> None:
        if self.connection is None:
            self.statements.append((statement, parameters or {}))
        else:
            script.execute(self.connection, statement, [parameters or {}])

    def audit(self, kind: str, subject: str, data: dict[str, Any]) -> None:
        self._events.append((kind, subject, plain_json(data)))

    def _flush(self, head: str | None) -> str | None:
        """Write (or gather) what is left; the audit chain's new head (None: no events)."""
        if self._session is not None:
            self._session.flush()
        if self._messages:
            self.insert_values(AgentMessage, *self._messages)
        if self.connection is not None:
            return append_events(self.connection, self.actor, self._events, head)
        if not self._events:
            return None
        assert head is not None, "a gathering unit chains onto a known head"
        statements, new_head = append_statements(head, self.actor, self._events)
        self.statements += statements
        return new_head

    def _close(self) -> None:
        if self._session is not None:
            self._session.close()


@dataclass
class _Pending:
    """A unit sent without waiting (`RunStore.unit(wait=False)`), and how to run it again."""

    sent: script.Sent
    head: str | None  # the audit chain's head once it commits
    work: Callable[[Unit], Any]
    actor: str
    durable: bool
    #: True once committed as sent; False if it failed and was run again (`confirm`)
    committed: bool | None = None


class RunStore:
    """Transactions over the agent tables. Synchronous: the runtime decides where it runs
    (on its event loop or in a worker thread, see `Runtime`)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self.engine: Engine = sessions.kw["bind"]
        self._scripts = self.engine.dialect.name == "postgresql" and self.engine.driver == "psycopg"
        self._pending: _Pending | None = None
        self._lock = threading.Lock()
        self._confirming = threading.RLock()  # a failed unit runs again from inside

    def unit(
        self,
        work: Callable[[Unit], T],
        *,
        actor: str,
        durable: bool = True,
        writes_only: bool = False,
        wait: bool = True,
    ) -> T:
        """Run `work` in one transaction with its audit events; retried when another writer
        appended to the audit chain first (the chain's unique `prev_hash` refuses a fork).

        `durable=False` lets PostgreSQL return from the commit before its disk flush (about
        a millisecond here): for what a crash may lose because it is done again on resume,
        like a call's result. The next durable commit flushes it anyway: the log is written
        in order. SQLite in WAL mode never waits for the disk at commit (`aiassist.store.db`).

        `writes_only` promises that `work` reads nothing back and uses no session: on
        PostgreSQL, when this process knows the audit chain's head (`ChainHeads`), the
        whole transaction then goes to the server in one round trip (`aiassist.store.script`).
        `wait=False` returns as soon as it is sent, for what a crash may lose as with
        `durable=False`: this store's next transaction takes the server's answer first
        (`confirm`), once it is written out and ready to go: the server finishes the one
        while the client writes the other.
        """
        for attempt in range(_RETRIES):
            unit = None
            with self._lock:
                pending = self._pending
            head = pending.head if pending is not None else chain_heads.get(self.engine)
            try:
                if writes_only and self._scripts and head is not None:
                    unit = Unit(None, actor)
                    result = work(unit)
                    new_head = unit._flush(head)
                    ready = script.Script(self.engine, unit.statements, durable=durable)
                    if pending is not None and not self._confirmed(pending):
                        ready.close()  # it was run again: the chain's head moved
                        continue
                    sent = ready.send()
                    if not wait and self._hold(_Pending(sent, new_head, work, actor, durable)):
                        return result
                    sent.wait()
                else:
                    self.confirm()
                    with self.engine.begin() as connection:
                        if not durable and connection.dialect.name == "postgresql":
                            connection.exec_driver_sql(script.NOT_DURABLE)
                        unit = Unit(connection, actor)
                        result = work(unit)
                        new_head = unit._flush(head)
            except (IntegrityError, OperationalError) as exc:
                if isinstance(exc, IntegrityError):
                    _raise_if_seq_clash(exc)
                    chain_heads.contended(self.engine)  # most likely a fork refused: read the head
                if attempt == _RETRIES - 1:
                    raise
                time.sleep(random.uniform(0, 0.005 * (attempt + 1)))
                continue
            finally:
                if unit is not None:
                    unit._close()
            chain_heads.committed(self.engine, new_head)
            return result
        raise AssertionError("unreachable")

    def _hold(self, pending: _Pending) -> bool:
        """Keep `pending` for `confirm`, unless another unit's answer is awaited already."""
        with self._lock:
            if self._pending is not None:
                return False
            self._pending = pending
            return True

    def confirm(self) -> None:
        """Take the server's answer to the unit sent without waiting, if any; if it failed,
        the unit runs again (its error is raised if it fails every time)."""
        with self._confirming:
            with self._lock:
                pending, self._pending = self._pending, None
            if pending is None:
                return
            try:
                pending.sent.wait()
            except (IntegrityError, OperationalError) as exc:
                pending.committed = False
                if isinstance(exc, IntegrityError):
                    _raise_if_seq_clash(exc)
                    chain_heads.contended(self.engine)
                self.unit(
                    pending.work, actor=pending.actor, durable=pending.durable, writes_only=True
                )
            else:
                pending.committed = True
                chain_heads.committed(self.engine, pending.head)

    def _confirmed(self, pending: _Pending) -> bool:
        """Whether `pending` committed as it was sent (its head is the chain's)."""
        if pending.committed is None:
            self.confirm()  # or waits for the thread confirming it
        return bool(pending.committed)

    # --- reads -----------------------------------------------------------------------------
    def load(self, run_id: str) -> RunState:
        with self.sessions() as session:
            run = session.get(AgentRun, run_id)
            if run is None:
                raise RunNotFound(run_id)
            rows = session.scalars(
                select(AgentMessage).where(AgentMessage.run_id == run_id).order_by(AgentMessage.seq)
            ).all()
            calls = session.scalars(
                select(AgentToolCall).where(AgentToolCall.run_id == run_id)
            ).all()
        messages = [to_message(r) for r in rows]
        answered = {m.call_id for m in messages if m.role == "tool" and m.call_id}
        return RunState(run, messages, {c.call_id: c for c in calls}, answered)

    def info(self, run_id: str) -> RunInfo:
        with self.sessions() as session:
            run = session.get(AgentRun, run_id)
            if run is None:
                raise RunNotFound(run_id)
            calls = session.scalars(
                select(AgentToolCall)
                .where(AgentToolCall.run_id == run_id)
                .order_by(AgentToolCall.step, AgentToolCall.created_at)
            ).all()
            pending = session.scalars(
                select(AgentApproval.id).where(
                    AgentApproval.run_id == run_id, AgentApproval.status == "pending"
                )
            ).all()
        info = RunInfo.model_validate(run)
        info.calls = [CallInfo.model_validate(c) for c in calls]
        info.pending_approvals = list(pending)
        return info

    def approval(self, approval_id: str) -> ApprovalInfo | None:
        with self.sessions() as session:
            row = session.get(AgentApproval, approval_id)
            return ApprovalInfo.model_validate(row) if row is not None else None

    def approvals(self, *, status: str | None = "pending", limit: int = 100) -> list[ApprovalInfo]:
        query = select(AgentApproval).order_by(AgentApproval.created_at).limit(limit)
        if status is not None:
            query = query.where(AgentApproval.status == status)
        with self.sessions() as session:
            return [ApprovalInfo.model_validate(r) for r in session.scalars(query)]

    def runs(
        self,
        *,
        status: str | None = None,
        flow: str | None = None,
        principal: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[RunInfo]:
        """Runs, newest first, without their calls (`info` has those)."""
        query = select(AgentRun).order_by(AgentRun.created_at.desc(), AgentRun.id)
        if status is not None:
            query = query.where(AgentRun.status == status)
        if flow is not None:
            query = query.where(AgentRun.flow == flow)
        if principal is not None:
            query = query.where(AgentRun.principal == principal)
        with self.sessions() as session:
            rows = session.scalars(query.limit(limit).offset(offset)).all()
            return [RunInfo.model_validate(r) for r in rows]

    def flow_stats(self) -> dict[str, FlowStats]:
        """Per flow: runs by status and the tool calls that failed (each retried or fatal)."""
        real = AgentRun.flow.is_not(None) & AgentRun.dry_run.is_(False)
        stats: dict[str, FlowStats] = {}
        with self.sessions() as session:
            by_status = session.execute(
                select(AgentRun.flow, AgentRun.status, func.count())
                .where(real)
                .group_by(AgentRun.flow, AgentRun.status)
            ).all()
            errors = session.execute(
                select(AgentRun.flow, func.count())
                .join(AgentToolCall, AgentToolCall.run_id == AgentRun.id)
                .where(real, AgentToolCall.status == CallStatus.FAILED)
                .group_by(AgentRun.flow)
            ).all()
        for flow, status, count in by_status:
            s = stats.setdefault(str(flow), FlowStats())
            s.runs += count
            if status == RunStatus.SUCCEEDED:
                s.succeeded += count
            elif status == RunStatus.FAILED:
                s.failed += count
            elif status == RunStatus.WAITING_APPROVAL:
                s.waiting += count
        for flow, count in errors:
            stats.setdefault(str(flow), FlowStats()).errors_caught = count
        return stats

    def orphaned(self, limit: int = 100) -> list[str]:
        """Running runs nobody drives: their process died (lease expired) or never claimed."""
        now = utcnow()
        with self.sessions() as session:
            return list(
                session.scalars(
                    select(AgentRun.id)
                    .where(
                        AgentRun.status == RunStatus.RUNNING,
                        or_(AgentRun.lease_until.is_(None), AgentRun.lease_until < now),
                    )
                    .order_by(AgentRun.created_at)
                    .limit(limit)
                )
            )

    # --- leases ----------------------------------------------------------------------------
    def claim(self, run_id: str, owner: str, seconds: float) -> bool:
        """Become the one process driving `run_id`, if it is running and nobody else is."""
        now = utcnow()
        with self.sessions() as session:
            result = session.execute(
                update(AgentRun)
                .where(
                    AgentRun.id == run_id,
                    AgentRun.status == RunStatus.RUNNING,
                    or_(
                        AgentRun.lease_until.is_(None),
                        AgentRun.lease_until < now,
                        AgentRun.lease_owner == owner,
                    ),
                )
                .values(lease_owner=owner, lease_until=now + timedelta(seconds=seconds))
            )
            session.commit()
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def renew(self, run_id: str, owner: str, seconds: float) -> bool:
        """Extend `owner`'s lease on `run_id`; False if another worker holds it now."""
        now = utcnow()
        with self.sessions() as session:
            result = session.execute(
                update(AgentRun)
                .where(AgentRun.id == run_id, AgentRun.lease_owner == owner)
                .values(lease_until=now + timedelta(seconds=seconds))
            )
            session.commit()
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def release(self, run_id: str, owner: str) -> None:
        with self.sessions() as session:
            session.execute(
                update(AgentRun)
                .where(AgentRun.id == run_id, AgentRun.lease_owner == owner)
                .values(lease_owner=None, lease_until=None)
            )
            session.commit()
