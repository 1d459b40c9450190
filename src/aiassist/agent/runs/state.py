"""Runs as they are kept: statuses, the views the API and CLI show, and the errors of
driving one."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from aiassist.agent.providers.base import Message, ToolCall
from aiassist.store.models import AgentMessage, AgentToolCall, utcnow

__all__ = [
    "ApprovalConflict",
    "ApprovalInfo",
    "CallInfo",
    "CallStatus",
    "FlowStats",
    "LeaseLost",
    "RunInfo",
    "RunNotFound",
    "RunStatus",
    "idempotency_key",
    "new_call",
    "to_message",
]


class LeaseLost(RuntimeError):
    """Another worker drives this run now: this one must stop and write nothing more of it."""

    def __init__(self, run_id: str, why: str) -> None:
        super().__init__(f"agent run {run_id}: {why}; this worker stops driving it")
        self.run_id = run_id


class ApprovalConflict(Exception):
    """The approval cannot be decided as asked (already decided, edit denied, bad edit)."""

    def __init__(self, message: str, *, status_code: int = 409) -> None:
        super().__init__(message)
        self.status_code = status_code


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


def to_message(row: AgentMessage) -> Message:
    calls = tuple(
        ToolCall(id=c["id"], name=c["name"], arguments=c["arguments"]) for c in row.tool_calls or []
    )
    return Message(role=row.role, content=row.content, tool_calls=calls, call_id=row.call_id)  # type: ignore[arg-type]


def new_call(
    run_id: str,
    step: int,
    call: ToolCall,
    *,
    risk: str | None,
    policy: dict[str, Any],
    status: CallStatus,
    key: str | None = None,
) -> AgentToolCall:
    """A tool call's row as it is first stored (`RunStore` writes it)."""
    return AgentToolCall(
        id=uuid.uuid4().hex,
        run_id=run_id,
        call_id=call.id,
        step=step,
        tool=call.name[:64],
        arguments=call.arguments,
        risk=risk,
        idempotency_key=key or idempotency_key(run_id, step, call.name, call.arguments),
        status=status,
        policy=policy,
        created_at=utcnow(),
    )
