"""The agent runtime end to end: the test model against a real HTTP backend, real databases."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from aiassist.agent.approvals import ApprovalConflict
from aiassist.agent.policy import Action, Condition, Policy, Rule, service_identity
from aiassist.agent.providers.base import Message
from aiassist.agent.providers.test import TestModel, call
from aiassist.agent.runs import CallStatus, RunStatus
from aiassist.agent.runtime import Runtime
from aiassist.store.audit import AuditLog
from aiassist.store.db import make_engine, make_sessionmaker
from aiassist.store.keys import KeyStore
from aiassist.store.models import AgentToolCall, AuditEvent
from tests.agent_backend import INJECTION, crm_tools, effects, serve_backend
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
SALES = service_identity("sales-bot", ["agent:run"])
LEAD = {"name": "Zhang San", "email": "zhangsan@example.com"}
TASK = (
    "Customer Zhang San wants to learn about the product, email zhangsan@example.com: "
    "create a lead and send an intro email."
)


@pytest.fixture(scope="module")
def backend() -> Iterator[str]:
    with serve_backend(free_port()) as url:
        yield url


def runtime(sessions: sessionmaker[Session], backend: str, **kwargs: Any) -> Runtime:
    return Runtime(sessions, crm_tools(backend), **kwargs)


def audit_kinds(sessions: sessionmaker[Session], run_id: str) -> list[str]:
    with sessions() as session:
        rows = session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
    return [r.kind for r in rows if r.subject.split("/")[0] == run_id]


def last_result(messages: Sequence[Message]) -> Any:
    return next(m.content for m in reversed(messages) if m.role == "tool")


async def test_lead_and_intro_email(sessions: sessionmaker[Session], backend: str) -> None:
    before = effects(backend)
    script = [
        {"tool_calls": [{"name": "create_crm_lead", "arguments": LEAD}]},
        {
            "tool_calls": [
                {
                    "name": "send_email",
                    "arguments": {
                        "to": LEAD["email"],
                        "subject": "Welcome",
                        "body": "Here is our product.",
                    },
                }
            ]
        },
        "Created lead and sent the intro email.",
    ]
    run = await runtime(sessions, backend).start(
        TASK,
        principal=SALES,
        tools=["create_crm_lead", "send_email"],
        provider="test",
        provider_options={"script": script},
    )
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert [c.tool for c in run.calls] == ["create_crm_lead", "send_email"]
    assert all(c.status == CallStatus.SUCCEEDED for c in run.calls)
    assert run.calls[0].result["email"] == LEAD["email"]
    assert run.calls[1].result == {"sent": True, "to": LEAD["email"]}
    assert run.output == "Created lead and sent the intro email."
    assert run.steps == 3 and run.input_tokens > 0 and run.output_tokens > 0 and run.cost > 0
    after = effects(backend)
    assert after.get("lead", 0) - before.get("lead", 0) == 1
    assert after.get("email", 0) - before.get("email", 0) == 1
    kinds = audit_kinds(sessions, run.id)
    assert kinds[0] == "agent.run.started" and kinds[-1] == "agent.run.finished"
    assert kinds.count("agent.tool.started") == 2 and kinds.count("agent.tool.succeeded") == 2
    assert "agent.model.turn" in kinds and "agent.policy" in kinds


async def test_a_tool_error_goes_back_to_the_model_which_recovers(
    sessions: sessionmaker[Session], backend: str
) -> None:
    seen: list[Any] = []

    def after_lookup(messages: Sequence[Message]) -> Any:
        result = last_result(messages)
        seen.append(result)
        if "error" in result and result["retryable"]:
            return [call("lookup_customer", email=LEAD["email"])]  # try again
        return [call("create_crm_lead", **LEAD)]

    model = TestModel(
        [
            [call("lookup_customer", email=LEAD["email"])],
            after_lookup,
            after_lookup,
            "Done.",
        ]
    )
    run = await runtime(sessions, backend).start(
        TASK, principal=SALES, tools=["lookup_customer", "create_crm_lead"], provider=model
    )
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert seen[0] == {"error": "backend answered 503", "retryable": True}
    assert seen[1]["segment"] == "smb"
    assert [c.status for c in run.calls] == ["failed", "succeeded", "succeeded"]
    assert "agent.tool.failed" in audit_kinds(sessions, run.id)


async def test_invalid_arguments_and_the_step_budget(
    sessions: sessionmaker[Session], backend: str
) -> None:
    model = TestModel([[call("create_crm_lead", name="x")]] * 5)  # email missing, forever
    run = await runtime(sessions, backend).start(
        TASK, principal=SALES, tools=["create_crm_lead"], provider=model, max_steps=3
    )
    assert run.status == RunStatus.FAILED
    assert run.error == "step budget exhausted: 3 model turns"
    assert len(run.calls) == 3
    assert all(c.status == "failed" and "email" in c.result["error"] for c in run.calls)
    assert run.calls[0].result["retryable"] is False


async def test_delete_waits_for_approval_across_a_restart(
    sessions: sessionmaker[Session], backend: str, db_url: str
) -> None:
    script = [
        {"tool_calls": [{"name": "create_crm_lead", "arguments": LEAD}]},
        {"tool_calls": [{"name": "delete_lead", "arguments": {"lead_id": "L-placeholder"}}]},
        "Deleted.",
    ]
    first = runtime(sessions, backend)
    run = await first.start(
        "create then delete a lead",
        principal=SALES,
        tools=["create_crm_lead", "delete_lead"],
        provider="test",
        provider_options={"script": script},
    )
    assert run.status == RunStatus.WAITING_APPROVAL
    lead_id = run.calls[0].result["id"]
    [approval] = await first.approvals()
    assert approval.tool == "delete_lead" and approval.arguments == {"lead_id": "L-placeholder"}
    assert approval.id == run.calls[1].id and approval.reason.startswith("irreversible")
    del first  # the process goes away; nothing waits in memory

    engine = make_engine(db_url)  # "another process": its own engine and runtime
    second = Runtime(make_sessionmaker(engine), crm_tools(backend))
    approver = service_identity("ops", ["agent:approve"])
    deletes = effects(backend).get("delete", 0)
    done = await second.approve(approval.id, by=approver, arguments={"lead_id": lead_id})
    engine.dispose()
    assert done.status == RunStatus.SUCCEEDED, done.error
    assert done.calls[1].result == {"deleted": True, "id": lead_id}  # the real result
    assert done.calls[1].arguments == {"lead_id": lead_id}
    assert effects(backend)["delete"] == deletes + 1
    assert lead_id not in effects_leads(backend)
    kinds = audit_kinds(sessions, run.id)
    assert "agent.approval.requested" in kinds and "agent.approval.approved" in kinds


async def test_a_run_resumes_only_while_its_api_key_is_valid(
    sessions: sessionmaker[Session], backend: str
) -> None:
    keys = KeyStore(sessions)
    key = keys.create("crm-bot", ["agent:run"], actor="test")
    script = [{"tool_calls": [{"name": "delete_lead", "arguments": {"lead_id": "L-1"}}]}, "ok"]
    first = runtime(sessions, backend, keys=keys)
    run = await first.start(
        "delete a lead",
        principal=key.principal,
        tools=["delete_lead"],
        provider="test",
        provider_options={"script": script},
    )
    assert run.status == RunStatus.WAITING_APPROVAL
    # revoked while the run waits for a person
    assert keys.revoke(key.principal.key_id, actor="test")

    deletes = effects(backend).get("delete", 0)
    second = runtime(sessions, backend, keys=KeyStore(sessions))  # another process
    done = await second.approve(
        run.pending_approvals[0], by=service_identity("ops", ["agent:approve"])
    )
    assert done.status == RunStatus.FAILED
    assert done.error is not None and "was revoked" in done.error
    assert effects(backend).get("delete", 0) == deletes  # the tool was not called
    kinds = audit_kinds(sessions, run.id)
    assert kinds[-2:] == ["agent.run.principal_refused", "agent.run.finished"]
    assert "agent.tool.started" not in kinds

    # a key that still holds agent:run goes on; a service identity is not an API key
    live = keys.create("other-bot", ["agent:run"], actor="test")
    for principal in (live.principal, SALES):
        ok = await second.start(
            "read",
            principal=principal,
            tools=["create_crm_lead"],
            provider=TestModel([[call("create_crm_lead", **LEAD)]]),
        )
        assert ok.status == RunStatus.SUCCEEDED, ok.error


async def test_the_call_provider_makes_one_given_call(
    sessions: sessionmaker[Session], backend: str
) -> None:
    rt = runtime(sessions, backend)
    run = await rt.start(
        "one call",
        principal=SALES,
        tools=["create_crm_lead"],
        provider="call",
        provider_options={"tool": "create_crm_lead", "arguments": LEAD},
    )
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.provider == "call" and run.steps == 2 and run.cost == 0
    assert [c.tool for c in run.calls] == ["create_crm_lead"]
    assert run.calls[0].status == CallStatus.SUCCEEDED
    with pytest.raises(ValueError, match='"call" provider'):
        await rt.create("bad", principal=SALES, provider="call", provider_options={"tool": 1})


def effects_leads(url: str) -> list[str]:
    import httpx

    return list(httpx.get(f"{url}/effects").json()["leads"])


async def test_a_rejected_approval_is_the_models_tool_result(
    sessions: sessionmaker[Session], backend: str
) -> None:
    answers: list[Any] = []

    def after(messages: Sequence[Message]) -> str:
        answers.append(last_result(messages))
        return "Understood, not refunding."

    policy = Policy(
        rules=(
            Rule(
                tool="refund",
                action=Action.APPROVE,
                when=(Condition(arg="amount", op=">", value=100),),
                reason="refunds above 100 need a person",
            ),
            Rule(
                tool="refund",
                action=Action.DENY,
                when=(Condition(arg="amount", op=">", value=1000),),
                reason="no refund above 1000",
            ),
        )
    )
    rt = runtime(sessions, backend, policy=policy)
    model = TestModel([[call("refund", order_id="o-1", amount=250)], after])
    run = await rt.start("refund order o-1", principal=SALES, tools=["refund"], provider=model)
    assert run.status == RunStatus.WAITING_APPROVAL
    [approval] = await rt.approvals()
    assert approval.reason == "refunds above 100 need a person"
    # an edit cannot smuggle in bad arguments
    with pytest.raises(ApprovalConflict, match="amount"):
        await rt.decide(
            approval.id, by=SALES, approve=True, arguments={"order_id": "o-1", "amount": "lots"}
        )
    with pytest.raises(ApprovalConflict, match="denied by policy: no refund above 1000"):
        await rt.decide(  # an approver cannot approve what the policy forbids
            approval.id, by=SALES, approve=True, arguments={"order_id": "o-1", "amount": 5000}
        )
    await rt.decide(approval.id, by=SALES, approve=False, message="too much, offer a voucher")
    done = await rt.drive(run.id, provider=model)
    assert done.status == RunStatus.SUCCEEDED
    assert answers == [
        {
            "error": "rejected by the approver",
            "message": "too much, offer a voucher",
            "retryable": False,
        }
    ]
    assert done.calls[0].status == "rejected"
    with pytest.raises(ApprovalConflict, match="already rejected"):
        await rt.decide(approval.id, by=SALES, approve=True)

    small = await rt.start(
        "refund order o-2",
        principal=SALES,
        tools=["refund"],
        provider=TestModel([[call("refund", order_id="o-2", amount=20)], "ok"]),
    )
    assert small.status == RunStatus.SUCCEEDED and small.calls[0].result["refunded"] == 20


async def test_an_injection_in_tool_output_cannot_widen_the_run(
    sessions: sessionmaker[Session], backend: str
) -> None:
    def gullible(messages: Sequence[Message]) -> Any:
        assert INJECTION in str(last_result(messages))
        return [call("delete_all_leads")]  # a model that falls for it

    model = TestModel([[call("read_inbox")], gullible, "I will not do that."])
    admin = service_identity("root", ["admin"])  # even an all-powerful principal
    run = await runtime(sessions, backend).start(
        "summarise the inbox", principal=admin, tools=["read_inbox"], provider=model
    )
    assert run.status == RunStatus.SUCCEEDED
    denied = run.calls[1]
    assert denied.tool == "delete_all_leads" and denied.status == CallStatus.DENIED
    assert denied.result == {
        "error": "denied by policy: tool 'delete_all_leads' is not allowed in this run",
        "retryable": False,
    }
    with sessions() as session:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.kind == "agent.policy.denied")
        ).all()
    assert any(e.data["tool"] == "delete_all_leads" for e in events)


async def test_a_crash_between_intent_and_result_does_not_repeat_the_side_effect(
    db_url: str, backend: str, sessions: sessionmaker[Session]
) -> None:
    before = effects(backend).get("lead", 0)
    worker = await anyio.run_process(
        [sys.executable, "-m", "tests.agent_worker", "crash", db_url, backend],
        cwd=ROOT,
        check=False,
    )
    assert worker.returncode == 17, worker.stderr.decode()  # died inside the tool call
    run_id = worker.stdout.decode().strip().splitlines()[-1]
    assert effects(backend)["lead"] == before + 1  # the side effect happened once
    with sessions() as session:
        [intent] = session.scalars(select(AgentToolCall).where(AgentToolCall.run_id == run_id))
    assert intent.status == CallStatus.STARTED and intent.finished_at is None

    rt = runtime(sessions, backend, lease_seconds=60)
    assert await rt.recover() == []  # the dead process's lease has not expired yet
    with sessions() as session:  # let it expire now rather than wait a minute
        from aiassist.store.models import AgentRun

        session.execute(update(AgentRun).values(lease_until=None))
        session.commit()
    assert await rt.recover() == [run_id]
    run = await rt.info(run_id)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.calls[0].status == CallStatus.SUCCEEDED
    assert run.calls[0].idempotency_key == intent.idempotency_key
    assert run.calls[0].result["email"] == LEAD["email"]
    assert effects(backend)["lead"] == before + 1  # resumed without a second lead


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
@pytest.mark.redis
async def test_a_rate_limit_is_shared_by_two_worker_processes_through_redis(
    db_url: str, backend: str
) -> None:
    key = f"partner-{os.urandom(4).hex()}"
    before = effects(backend).get("ping", 0)
    command = [sys.executable, "-m", "tests.agent_worker", "ping", db_url, backend, key]
    env = os.environ | {"AIASSIST_REDIS_URL": "redis://127.0.0.1:6379/0"}
    async with anyio.create_task_group() as workers:  # two processes at the same time
        results: list[Any] = []

        async def worker() -> None:
            results.append(await anyio.run_process(command, cwd=ROOT, env=env, check=False))

        workers.start_soon(worker)
        workers.start_soon(worker)
    assert all(r.returncode == 0 for r in results), [r.stderr.decode() for r in results]
    granted = [int(r.stdout.decode().split()[-1]) for r in results]
    assert sum(granted) == 3  # 3 calls per 10 minutes, across both processes
    assert effects(backend)["ping"] == before + 3
    engine = make_engine(db_url)  # two processes appended to one audit chain: still one chain
    assert AuditLog(make_sessionmaker(engine)).verify().ok
    engine.dispose()


async def test_audit_verify_detects_an_edited_or_deleted_row(
    sessions: sessionmaker[Session], backend: str
) -> None:
    model = TestModel([[call("create_crm_lead", **LEAD)], "ok"])
    await runtime(sessions, backend).start(
        "lead", principal=SALES, tools=["create_crm_lead"], provider=model
    )
    log = AuditLog(sessions)
    assert log.verify().ok
    with sessions() as session:
        rows = session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
        target = next(r for r in rows if r.kind == "agent.tool.started")
        session.execute(
            update(AuditEvent)
            .where(AuditEvent.id == target.id)
            .values(data={**target.data, "arguments": {"name": "Someone Else"}})
        )
        session.commit()
    check = log.verify()
    assert not check.ok and check.first_bad_id == target.id and check.reason == "content altered"


async def test_secrets_never_reach_audit_or_the_model(
    sessions: sessionmaker[Session], backend: str
) -> None:
    from aiassist.agent import tool
    from aiassist.agent.redaction import Redactor
    from aiassist.agent.tools import ToolSet

    secret = "sk-live-0123456789abcdef"

    @tool(name="connect")
    def connect(host: str, password: str) -> dict[str, str]:
        """Connect to a host."""
        return {"status": f"connected with key {secret}", "token": "abc123456"}

    prompts: list[str] = []

    def check(messages: Sequence[Message]) -> str:
        prompts.append(repr(messages))
        return "done"

    rt = Runtime(sessions, ToolSet([connect]), redactor=Redactor([secret]))
    model = TestModel([[call("connect", host="db", password="hunter22")], check])
    run = await rt.start(f"connect using {secret}", principal=SALES, provider=model)
    assert run.status == RunStatus.SUCCEEDED
    with sessions() as session:
        trail = repr([(e.kind, e.data) for e in session.scalars(select(AuditEvent))])
    for text in (trail, prompts[0], repr(run.calls[0].result)):
        assert secret not in text and "hunter22" not in text and "abc123456" not in text
    assert "[redacted]" in prompts[0]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_broken_model_or_rate_limiter_fails_safely(
    sessions: sessionmaker[Session], backend: str
) -> None:
    from aiassist.agent.ratelimit import RedisRateLimiter

    class Broken(TestModel):
        async def complete(self, messages: Any, tools: Any) -> Any:
            raise RuntimeError("connection reset")

    run = await runtime(sessions, backend).start(
        "anything", principal=SALES, tools=[], provider=Broken([])
    )
    assert run.status == RunStatus.FAILED and run.error == "model: RuntimeError('connection reset')"

    nowhere = RedisRateLimiter.from_url(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens
    model = TestModel([[call("ping_partner")], "ok"])
    run = await runtime(sessions, backend, rate_limiter=nowhere).start(
        "ping", principal=SALES, tools=["ping_partner"], provider=model
    )
    assert run.status == RunStatus.SUCCEEDED
    assert run.calls[0].result == {"error": "the rate limiter is unavailable", "retryable": True}
