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

from aiassist.agent.policy import Action, Policy
from aiassist.agent.redaction import Redactor
from aiassist.agent.runs import ApprovalConflict, ApprovalInfo, RunStore
from aiassist.agent.tools import ToolError, ToolSet
from aiassist.store.audit import Event
from aiassist.store.keys import Principal
from aiassist.store.models import AgentApproval, AgentRun, AgentToolCall

__all__ = ["ApprovalConflict", "decide_approval"]


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

    def edit(run: AgentRun, approval: AgentApproval) -> dict[str, Any] | None:
        if arguments is None:
            return None
        return _recheck(run, approval.tool, arguments, tools, policy)

    def event(approval: AgentApproval, call: AgentToolCall, final: dict[str, Any]) -> Event:
        subject = f"{call.run_id}/{call.call_id}"
        data: dict[str, Any] = {"approval": approval_id, "by": by.key_id, "tool": approval.tool}
        if approve:
            data |= {"arguments": redact(final), "edited": arguments is not None}
            return "agent.approval.approved", subject, data
        return "agent.approval.rejected", subject, data | {"message": redact.text(message or "")}

    rejection = {
        "error": "rejected by the approver",
        "message": redact.text(message or ""),
        "retryable": False,
    }
    return store.decide(
        approval_id,
        by=by.key_id,
        approve=approve,
        message=message,
        edit=edit,
        events=event,
        rejection=rejection,
    )


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
