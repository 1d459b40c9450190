"""Tables: decisions, outcomes, API keys, audit trail. One schema for SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "AgentApproval",
    "AgentMessage",
    "AgentRun",
    "AgentToolCall",
    "ApiKey",
    "AuditEvent",
    "Base",
    "DecisionRecord",
    "DriftIncident",
    "DriftProfile",
    "DriftRoute",
    "OutcomeRecord",
    "utcnow",
]

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map = {datetime: DateTime(timezone=True), dict[str, Any]: JSON}


class DecisionRecord(Base):
    """One decision as it was made: inputs, answer, and who answered."""

    __tablename__ = "decisions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    module: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    source: Mapped[str] = mapped_column(String(16))
    model_version: Mapped[str | None] = mapped_column(String(64))
    features: Mapped[dict[str, Any]]
    decision: Mapped[dict[str, Any]]


class OutcomeRecord(Base):
    """What happened after a decision. Joined to it by decision id, not by a foreign key:
    an outcome may arrive before its decision leaves the recording buffer."""

    __tablename__ = "outcomes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    decision_id: Mapped[str] = mapped_column(String(64), index=True)
    module: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    outcome: Mapped[dict[str, Any]]


class ApiKey(Base):
    """An API key: its public id, the SHA-256 of its secret, and its scopes."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    secret_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class AuditEvent(Base):
    """An append-only, hash-chained event: each row's hash covers the previous row's hash in
    its chain (one chain per agent run, `main` for the rest; see `aiassist.store.audit`)."""

    __tablename__ = "audit_events"
    # Unique, so two writers that read the same chain head cannot both append: one fails.
    __table_args__ = (UniqueConstraint("chain", "seq"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    chain: Mapped[str] = mapped_column(String(100))
    seq: Mapped[int] = mapped_column(BigInteger)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(64), index=True)
    subject: Mapped[str] = mapped_column(String(200))
    data: Mapped[dict[str, Any]]
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


# --- agent runs (migration 0002) -----------------------------------------------------------
class AgentRun(Base):
    """One agent run: the task, who asked, the tools fixed at its start, and where it stands.

    `lease_until` marks the process driving the run; a run whose lease expired (its process
    died) may be taken over and resumed from these rows alone.
    """

    __tablename__ = "agent_runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    principal: Mapped[str] = mapped_column(String(100), index=True)
    scopes: Mapped[str] = mapped_column(String(500))
    task: Mapped[str] = mapped_column(Text)
    tools: Mapped[list[str]] = mapped_column(JSON)
    provider: Mapped[str] = mapped_column(String(64))
    provider_options: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(24), index=True)
    max_steps: Mapped[int] = mapped_column(Integer)
    steps: Mapped[int] = mapped_column(Integer, default=0)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost: Mapped[float] = mapped_column(Float, default=0.0)
    output: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None]
    # automation (0004): the idempotency key a trigger or client gave (one run per key), the
    # flow the run plays, and whether its writes are only simulated
    key: Mapped[str | None] = mapped_column(String(200), unique=True)
    flow: Mapped[str | None] = mapped_column(String(64), index=True)
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # flow waits (0005): when a run paused by a `wait` step (status `waiting_until`) goes on
    resume_at: Mapped[datetime | None] = mapped_column(index=True)


class AgentMessage(Base):
    """One entry of a run's conversation, in order: what the model saw and answered."""

    __tablename__ = "agent_messages"
    __table_args__ = (UniqueConstraint("run_id", "seq"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("agent_runs.id", name="fk_agent_messages_run_id")
    )
    seq: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[Any | None] = mapped_column(JSON)
    tool_calls: Mapped[list[Any] | None] = mapped_column(JSON)
    call_id: Mapped[str | None] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(100))
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)


class AgentToolCall(Base):
    """One tool call of a run, from the policy decision to its result.

    `started_at` set with no `finished_at` is the intent record of a write: written before
    the call, so a resumed run knows the side effect may have happened and repeats it only
    with the same `idempotency_key`.
    """

    __tablename__ = "agent_tool_calls"
    __table_args__ = (UniqueConstraint("run_id", "call_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    run_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("agent_runs.id", name="fk_agent_tool_calls_run_id")
    )
    call_id: Mapped[str] = mapped_column(String(64))
    step: Mapped[int] = mapped_column(Integer)
    tool: Mapped[str] = mapped_column(String(64))
    arguments: Mapped[dict[str, Any]]
    risk: Mapped[str | None] = mapped_column(String(16))
    idempotency_key: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(24))  # not indexed: settling stays a HOT update
    policy: Mapped[dict[str, Any]]
    result: Mapped[Any | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    duration_ms: Mapped[float | None] = mapped_column(Float)


class AgentApproval(Base):
    """A paused call waiting for a person: exactly the tool and arguments that would run.

    Its id is the tool call's id, so an approval can only ever release that one call.
    """

    __tablename__ = "agent_approvals"

    id: Mapped[str] = mapped_column(
        String(32),
        ForeignKey("agent_tool_calls.id", name="fk_agent_approvals_id"),
        primary_key=True,
    )
    run_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("agent_runs.id", name="fk_agent_approvals_run_id"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    tool: Mapped[str] = mapped_column(String(64))
    arguments: Mapped[dict[str, Any]]
    reason: Mapped[str] = mapped_column(String(500))
    requested_by: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16), index=True)
    decided_by: Mapped[str | None] = mapped_column(String(100))
    decided_at: Mapped[datetime | None]
    message: Mapped[str | None] = mapped_column(Text)
    edited_arguments: Mapped[dict[str, Any] | None]


# --- API drift guard (migration 0003) ------------------------------------------------------
class DriftProfile(Base):
    """What one API version's traffic on one endpoint looks like: per field, how often it is
    present and with which JSON types and value shapes. The stable version's profile is the
    reference a new version is judged against; it is stored so it survives restarts."""

    __tablename__ = "drift_profiles"

    endpoint: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    observations: Mapped[int] = mapped_column(BigInteger)
    fields: Mapped[dict[str, Any]]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class DriftIncident(Base):
    """A detected drift of one version on one endpoint: the offending fields, the evidence,
    what was done (rolled back or only alerted) and where the operator stands with it."""

    __tablename__ = "drift_incidents"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    endpoint: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(64), index=True)
    stable_version: Mapped[str] = mapped_column(String(64))
    detected_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    severity: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)
    action: Mapped[str] = mapped_column(String(16))
    fields: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    explanation: Mapped[str] = mapped_column(String(1000))
    observations: Mapped[int] = mapped_column(BigInteger)
    acknowledged_at: Mapped[datetime | None]
    acknowledged_by: Mapped[str | None] = mapped_column(String(100))
    note: Mapped[str | None] = mapped_column(String(500))
    resolved_at: Mapped[datetime | None]
    resolved_by: Mapped[str | None] = mapped_column(String(100))
    accepted: Mapped[bool] = mapped_column(default=False)


class DriftRoute(Base):
    """A version switch the drift middleware honours: requests for `version` are served by
    `target` until someone rolls forward (which deletes the row)."""

    __tablename__ = "drift_routes"

    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    target: Mapped[str] = mapped_column(String(64))
    incident_id: Mapped[int | None] = mapped_column(BigInteger)
    since: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(String(500))
