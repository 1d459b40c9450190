"""Approvals: a person's answer to a call the policy paused.

An approval is keyed by the paused call's id and shows exactly the tool and arguments that
would run. Deciding it is one transaction: the approval leaves `pending` (only one of two
concurrent deciders can make it do so), the call becomes `approved` (with the arguments
that will run) or `rejected` (with the result the model will read), the run is ready to go
on, and the decision is audited. Nothing waits in memory meanwhile: whichever process
drives the run next (`Runtime.drive`) carries the decision out.

Edited arguments are validated by the tool and checked by the policy again, against the
run's own allowlist and principal: an approver can change what runs, not widen what the
run may do.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import update

from aiassist.agent.policy import Action, Policy
from aiassist.agent.redaction import Redactor
from aiassist.agent.runs import (
    ApprovalInfo,
    CallStatus,
    RunNotFound,
    RunStatus,
    RunStore,
    Unit,
    idempotency_key,
)
from aiassist.agent.tools import ToolError, ToolSet
from aiassist.store.keys import Principal
from aiassist.store.models import AgentApproval, AgentRun, AgentToolCall, utcnow

__all__ = ["ApprovalConflict", "decide_approval"]


class ApprovalConflict(Exception):
    """The approval cannot be decided as asked (already decided, edit denied, bad edit)."""

    def __init__(self, message: str, *, status_code: int = 409) -> None:
        super().__init__(message)
        self.status_code = status_code


def decide_approval(
    store: RunStore,
    approval_id: str,
    *,
    by: Principal,
    approve: bool,
    arguments: dict[str, Any] | None,
    message: str | None,
    tools: ToolSet,
    policy: Policy,
    redact: Redactor,
) -> ApprovalInfo:
    """Record a decision; `RunNotFound` for an unknown id, `ApprovalConflict` otherwise."""

    def work(unit: Unit) -> ApprovalInfo:
        session = unit.session
        now = utcnow()
        moved = session.execute(
            update(AgentApproval)
            .where(AgentApproval.id == approval_id, AgentApproval.status == "pending")
            .values(
                status="approved" if approve else "rejected",
                decided_by=by.key_id,
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
        subject = f"{run.id}/{call.call_id}"
        if approve:
            final = approval.arguments
            if arguments is not None:
                final = _recheck(run, approval.tool, arguments, tools, policy)
                approval.edited_arguments = final
                call.arguments = final
                call.idempotency_key = idempotency_key(run.id, call.step, call.tool, final)
            call.status = CallStatus.APPROVED
            unit.audit(
                "agent.approval.approved",
                subject,
                {
                    "approval": approval_id,
                    "by": by.key_id,
                    "tool": approval.tool,
                    "arguments": redact(final),
                    "edited": arguments is not None,
                },
            )
        else:
            call.status = CallStatus.REJECTED
            call.result = {
                "error": "rejected by the approver",
                "message": redact.text(message or ""),
                "retryable": False,
            }
            call.finished_at = now
            unit.audit(
                "agent.approval.rejected",
                subject,
                {
                    "approval": approval_id,
                    "by": by.key_id,
                    "tool": approval.tool,
                    "message": redact.text(message or ""),
                },
            )
        if run.status == RunStatus.WAITING_APPROVAL:
            run.status = RunStatus.RUNNING
            run.updated_at = now
        session.flush()
        return ApprovalInfo.model_validate(approval)

    return store.unit(work, actor=by.key_id)


def _recheck(
    run: AgentRun, name: str, arguments: dict[str, Any], tools: ToolSet, policy: Policy
) -> dict[str, Any]:
    tool = tools.get(name)
    if tool is None:
        raise ApprovalConflict(f"tool {name!r} is no longer available")
    try:
        checked = tool.check(arguments)
    except ToolError as exc:
        raise ApprovalConflict(exc.message, status_code=422) from None
    principal = Principal(run.principal, run.principal, frozenset(run.scopes.split(",")))
    verdict = policy.decide(
        name, checked, tool=tool, principal=principal, allowed=frozenset(run.tools)
    )
    if verdict.action is Action.DENY:
        raise ApprovalConflict(f"the edited call is denied by policy: {verdict.reason}")
    return checked
