"""The run store: the one code that reads and writes the agent tables.

Everything a run is lives in four tables (see `aiassist.store.models`): the run, its
conversation, its tool calls and its approvals. The runtime keeps no state of its own that
the database does not have, so any process can pick a run up where another left it.

Each change is one transaction (`Unit`) that also appends its audit events to the run's
own hash chain, so the trail and the state never disagree. The process driving a run holds
its lease and is the only writer of its chain, so it appends onto the head it knows without
reading it; a second writer is refused by the unique `(chain, seq)` or `(run_id, seq)`, and
that is `LeaseLost`, not a race to retry. On PostgreSQL a driver's transaction goes through
psycopg's pipeline (its statements sent without waiting for each answer: three round
trips, BEGIN, the statements, COMMIT, whatever their number), and psycopg prepares the
statements a connection runs often (`prepare_threshold`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, bindparam, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from aiassist.agent.providers.base import Message, ToolCall
from aiassist.agent.runs.state import (
    ApprovalConflict,
    ApprovalInfo,
    CallInfo,
    CallStatus,
    FlowStats,
    LeaseLost,
    RunInfo,
    RunNotFound,
    RunStatus,
    idempotency_key,
    to_message,
)
from aiassist.store.audit import Event, Head, append_events, head_of, plain_json, run_chain
from aiassist.store.models import AgentApproval, AgentMessage, AgentRun, AgentToolCall, utcnow

__all__ = ["RunState", "RunStore", "Unit"]

T = TypeVar("T")
log = logging.getLogger("aiassist.agent")
_TRANSIENT_RETRIES = 3
#: a commit that does not wait for the server's disk flush (PostgreSQL)
_NOT_DURABLE = "SET LOCAL synchronous_commit TO OFF"

# the hot path's statements, built once (bound parameters are prefixed: the bare column
# names are SQLAlchemy's own in a SET clause)
_INSERT_MESSAGES = insert(AgentMessage).inline()
_INSERT_CALL = insert(AgentToolCall).inline()
_INSERT_APPROVAL = insert(AgentApproval).inline()
_STORE_TURN = (
    update(AgentRun)
    .where(AgentRun.id == bindparam("p_run"))
    .values(
        steps=bindparam("p_steps"),
        input_tokens=AgentRun.input_tokens + bindparam("p_input"),
        output_tokens=AgentRun.output_tokens + bindparam("p_output"),
        cost=AgentRun.cost + bindparam("p_cost"),
        updated_at=bindparam("p_now"),
        lease_until=bindparam("p_lease"),
    )
)
_RENEW_LEASE = (
    update(AgentRun)
    .where(AgentRun.id == bindparam("p_run"))
    .values(updated_at=bindparam("p_now"), lease_until=bindparam("p_lease"))
)
_SETTLE_CALL = (
    update(AgentToolCall)
    .where(AgentToolCall.id == bindparam("p_id"))
    .values(
        status=bindparam("p_status"),
        result=bindparam("p_result"),
        finished_at=bindparam("p_now"),
        duration_ms=bindparam("p_duration"),
    )
)
_START_CALL = (
    update(AgentToolCall)
    .where(AgentToolCall.id == bindparam("p_id"))
    .values(status=CallStatus.STARTED, started_at=bindparam("p_now"))
)


def _row(row: AgentToolCall | AgentRun | AgentApproval) -> dict[str, Any]:
    """The column values set on `row` (the rest take their defaults)."""
    state = row.__dict__
    return {c.key: state[c.key] for c in row.__table__.columns if state.get(c.key) is not None}


class Unit:
    """One transaction of one run: its state changes and the audit events describing them.

    Only writes: whatever it needs to know, the run's state (`RunState`) has. On PostgreSQL
    they are sent without waiting for each one's answer (a pipeline) and the commit
    answers for all of them.
    """

    def __init__(self, connection: Connection, run_id: str, actor: str) -> None:
        self.connection = connection
        self.run_id = run_id
        self.actor = actor
        self.events: list[Event] = []
        self._messages: list[dict[str, Any]] = []

    def message(
        self,
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
                "run_id": self.run_id,
                "seq": seq,
                "created_at": utcnow(),
                "role": role,
                "content": content,
                "tool_calls": tool_calls,
                "call_id": call_id,
                "model": model,
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
            }
        )

    def add_call(self, row: AgentToolCall) -> None:
        self.connection.execute(_INSERT_CALL, _row(row))

    def start_call(self, row: AgentToolCall) -> None:
        """An approved call's intent record: it is about to be made."""
        self.connection.execute(_START_CALL, {"p_id": row.id, "p_now": row.started_at})

    def settle_call(
        self, row_id: str, status: CallStatus, result: Any, duration_ms: float | None
    ) -> None:
        self.connection.execute(
            _SETTLE_CALL,
            {
                "p_id": row_id,
                "p_status": status,
                "p_result": result,
                "p_now": utcnow(),
                "p_duration": duration_ms,
            },
        )

    def add_approval(self, row: AgentApproval) -> None:
        self.connection.execute(_INSERT_APPROVAL, _row(row))

    def store_turn(
        self, steps: int, input_tokens: int, output_tokens: int, cost: float, lease: float
    ) -> None:
        """A model turn's counts, and the lease it renews."""
        now = utcnow()
        self.connection.execute(
            _STORE_TURN,
            {
                "p_run": self.run_id,
                "p_steps": steps,
                "p_input": input_tokens,
                "p_output": output_tokens,
                "p_cost": cost,
                "p_now": now,
                "p_lease": now + timedelta(seconds=lease),
            },
        )

    def renew_lease(self, seconds: float) -> None:
        now = utcnow()
        self.connection.execute(
            _RENEW_LEASE,
            {"p_run": self.run_id, "p_now": now, "p_lease": now + timedelta(seconds=seconds)},
        )

    def let_go(self, status: RunStatus, **values: Any) -> None:
        """The run ends or waits (`values`: its output, error, `resume_at`): no lease."""
        self.connection.execute(
            update(AgentRun)
            .where(AgentRun.id == self.run_id)
            .values(
                status=status, updated_at=utcnow(), lease_owner=None, lease_until=None, **values
            )
        )

    def audit(self, kind: str, subject: str, data: dict[str, Any]) -> None:
        self.events.append((kind, subject, plain_json(data)))

    def flush(self, head: Head) -> Head:
        """Write the messages and the audit events; the chain's new head."""
        if self._messages:
            self.connection.execute(_INSERT_MESSAGES, self._messages)
            self._messages = []
        events, self.events = self.events, []
        return append_events(self.connection, self.actor, events, head)


@dataclass
class RunState:
    """A run rebuilt from the database: the row, the conversation, the calls by call id,
    and the head of its audit chain (only the lease holder appends to it)."""

    run: AgentRun
    messages: list[Message]
    calls: dict[str, AgentToolCall]
    head: Head
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


class RunStore:
    """Transactions over the agent tables. Synchronous: the runtime decides where it runs
    (on its event loop or in a worker thread, see `Runtime`)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self.engine: Engine = sessions.kw["bind"]
        self._pipelines = (
            self.engine.dialect.name == "postgresql" and self.engine.driver == "psycopg"
        )

    # --- a driven run's writes -------------------------------------------------------------
    def write(self, state: RunState, work: Callable[[Unit], T], *, durable: bool = True) -> T:
        """One transaction of the run `state` holds the lease of: its deferred writes (a model
        turn, see the runtime) first, then `work`, then their audit events.

        `durable=False` lets PostgreSQL return from the commit before its disk flush (about
        a millisecond here): for what a crash may lose because it is done again on resume,
        like a call's result. The next durable commit flushes it anyway: the log is written
        in order. SQLite in WAL mode never waits for the disk at commit (`aiassist.store.db`).
        """
        deferred = list(state.deferred)
        run = state.run
        for attempt in range(_TRANSIENT_RETRIES):
            try:
                with self.engine.begin() as connection, self._pipeline(connection):
                    if not durable and connection.dialect.name == "postgresql":
                        connection.exec_driver_sql(_NOT_DURABLE)
                    unit = Unit(connection, run.id, run.principal)
                    for write in deferred:
                        write(unit)
                    result = work(unit)
                    head = unit.flush(state.head)
            except IntegrityError as exc:  # a second writer took a (run, seq) or (chain, seq)
                raise LeaseLost(run.id, "another worker wrote to it") from exc
            except OperationalError:
                if attempt == _TRANSIENT_RETRIES - 1:
                    raise
                log.warning("agent run %s: a transaction failed, trying again", run.id)
                time.sleep(0.01 * (attempt + 1))
                continue
            state.head = head
            del state.deferred[: len(deferred)]
            return result
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def _pipeline(self, connection: Connection) -> Iterator[None]:
        """psycopg's pipeline on PostgreSQL: the statements go without waiting for each
        answer. What fails only when it ends is raised as SQLAlchemy raises it elsewhere."""
        if not self._pipelines:
            yield
            return
        import psycopg

        try:
            with connection.connection.driver_connection.pipeline():  # type: ignore[union-attr]
                yield
        except psycopg.IntegrityError as exc:
            raise IntegrityError("the run's transaction", None, exc) from exc
        except psycopg.OperationalError as exc:
            raise OperationalError("the run's transaction", None, exc) from exc

    # --- transactions of runs nobody drives --------------------------------------------------
    def create(self, run: AgentRun, messages: list[tuple[str, Any]], event: Event) -> str:
        """Store a new run, its first messages and its start event; with a `key` already
        used, the existing run's id instead (one run per key)."""
        for _ in range(2):  # a twin with the same key that commits first: answer its id
            try:
                with self.sessions.begin() as session:
                    if run.key is not None:
                        existing = session.scalar(
                            select(AgentRun.id).where(AgentRun.key == run.key)
                        )
                        if existing is not None:
                            return existing
                    connection = session.connection()
                    connection.execute(insert(AgentRun).inline(), _row(run))
                    unit = Unit(connection, run.id, run.principal)
                    for seq, (role, content) in enumerate(messages):
                        unit.message(seq, role, content)
                    unit.audit(*event)
                    unit.flush(Head.empty(run_chain(run.id)))
                return run.id
            except IntegrityError:
                if run.key is None:
                    raise
        raise AssertionError("unreachable: the key's run exists, or the insert succeeded")

    @staticmethod
    def _append(session: Session, run_id: str, actor: str, event: Event) -> None:
        """Audit `event` on the chain of `run_id`, which nobody drives: read its head."""
        kind, subject, data = event
        connection = session.connection()
        head = head_of(connection, run_chain(run_id))
        append_events(connection, actor, [(kind, subject, plain_json(data))], head)

    def decide(
        self,
        approval_id: str,
        *,
        by: str,
        approve: bool,
        message: str | None,
        edit: Callable[[AgentRun, AgentApproval], dict[str, Any] | None],
        events: Callable[[AgentApproval, AgentToolCall, dict[str, Any]], Event],
        rejection: dict[str, Any],
    ) -> ApprovalInfo:
        """Record a person's answer to an approval: it leaves `pending` (only one of two
        concurrent deciders can make it), the call becomes `approved` (with `edit`'s
        arguments, if it returns any) or `rejected` (with the `rejection` result), the run
        is ready to go on, and `events` says how it is audited."""
        with self.sessions.begin() as session:
            now = utcnow()
            moved = session.execute(
                update(AgentApproval)
                .where(AgentApproval.id == approval_id, AgentApproval.status == "pending")
                .values(
                    status="approved" if approve else "rejected",
                    decided_by=by,
                    decided_at=now,
                    message=message,
                )
            )
            approval = session.get(AgentApproval, approval_id)
            if approval is None:
                raise RunNotFound(f"no approval {approval_id!r}")
            if not moved.rowcount:  # type: ignore[attr-defined]
                raise ApprovalConflict(f"approval {approval_id} is already {approval.status}")
            run = session.get(AgentRun, approval.run_id)
            call = session.get(AgentToolCall, approval_id)
            assert run is not None and call is not None
            final = approval.arguments
            if approve:
                edited = edit(run, approval)
                if edited is not None:
                    final = approval.edited_arguments = call.arguments = edited
                    call.idempotency_key = idempotency_key(run.id, call.step, call.tool, edited)
                call.status = CallStatus.APPROVED
            else:
                call.status = CallStatus.REJECTED
                call.result = rejection
                call.finished_at = now
            if run.status == RunStatus.WAITING_APPROVAL:
                run.status = RunStatus.RUNNING
                run.updated_at = now
            session.flush()
            self._append(session, run.id, by, events(approval, call, final))
            return ApprovalInfo.model_validate(approval)

    def wake_due(self, now: datetime, limit: int) -> list[str]:
        """Put the runs parked until `now` or before back to `running`; the ids woken.

        Each wake is a conditional update, so of several processes waking at once exactly
        one wins each run."""
        with self.sessions() as session:
            due = session.execute(
                select(AgentRun.id, AgentRun.principal)
                .where(AgentRun.status == RunStatus.WAITING_UNTIL, AgentRun.resume_at <= now)
                .order_by(AgentRun.resume_at)
                .limit(limit)
            ).all()
        woken = []
        for run_id, principal in due:
            with self.sessions.begin() as session:
                moved = session.execute(
                    update(AgentRun)
                    .where(
                        AgentRun.id == run_id,
                        AgentRun.status == RunStatus.WAITING_UNTIL,
                        AgentRun.resume_at <= now,
                    )
                    .values(status=RunStatus.RUNNING, updated_at=utcnow())
                )
                if not moved.rowcount:  # type: ignore[attr-defined]
                    continue
                event = ("agent.run.resumed", run_id, {"at": now.isoformat()})
                self._append(session, run_id, principal, event)
            woken.append(run_id)
        return woken

    def forget_deadline(self, run_id: str) -> None:
        """A run's wait is over: `resume_at` means "due" only while a run waits."""
        with self.sessions.begin() as session:
            session.execute(
                update(AgentRun)
                .where(AgentRun.id == run_id, AgentRun.status == RunStatus.RUNNING)
                .values(resume_at=None)
            )

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
            head = head_of(session.connection(), run_chain(run_id))
        messages = [to_message(r) for r in rows]
        answered = {m.call_id for m in messages if m.role == "tool" and m.call_id}
        return RunState(run, messages, {c.call_id: c for c in calls}, head, answered)

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

    def lease_until(self, run_id: str) -> datetime | None:
        """When the lease on `run_id` ends (None: nobody holds it)."""
        with self.sessions() as session:
            return session.scalar(select(AgentRun.lease_until).where(AgentRun.id == run_id))

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

    def orphaned(self, limit: int = 100, *, idle_seconds: float = 0.0) -> list[str]:
        """Running runs nobody drives: their process died (lease expired) or never claimed;
        with `idle_seconds`, only those unchanged that long (a run just created or decided
        is about to be driven by whoever did it)."""
        now = utcnow()
        query = select(AgentRun.id).where(
            AgentRun.status == RunStatus.RUNNING,
            or_(AgentRun.lease_until.is_(None), AgentRun.lease_until < now),
        )
        if idle_seconds:
            query = query.where(AgentRun.updated_at < now - timedelta(seconds=idle_seconds))
        with self.sessions() as session:
            return list(session.scalars(query.order_by(AgentRun.created_at).limit(limit)))

    # --- leases ----------------------------------------------------------------------------
    def claim(self, run_id: str, owner: str, seconds: float) -> bool:
        """Become the one process driving `run_id`, if it is running and nobody else is."""
        now = utcnow()
        with self.sessions.begin() as session:
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
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def renew(self, run_id: str, owner: str, seconds: float) -> bool:
        """Extend `owner`'s lease on `run_id`; False if another worker holds it now."""
        now = utcnow()
        with self.sessions.begin() as session:
            result = session.execute(
                update(AgentRun)
                .where(AgentRun.id == run_id, AgentRun.lease_owner == owner)
                .values(lease_until=now + timedelta(seconds=seconds))
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def release(self, run_id: str, owner: str) -> None:
        with self.sessions.begin() as session:
            session.execute(
                update(AgentRun)
                .where(AgentRun.id == run_id, AgentRun.lease_owner == owner)
                .values(lease_owner=None, lease_until=None)
            )
