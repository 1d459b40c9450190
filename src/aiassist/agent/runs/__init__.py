"""Agent runs as they are stored: their state and views (`state`) and the one door to
their tables (`store`)."""

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
    new_call,
)
from aiassist.agent.runs.store import RunState, RunStore, Unit

__all__ = [
    "ApprovalConflict",
    "ApprovalInfo",
    "CallInfo",
    "CallStatus",
    "FlowStats",
    "LeaseLost",
    "RunInfo",
    "RunNotFound",
    "RunState",
    "RunStatus",
    "RunStore",
    "Unit",
    "idempotency_key",
    "new_call",
]
