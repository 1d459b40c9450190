"""Flows and dry runs in the runtime, on SQLite and PostgreSQL: one run per key (also when
two starts race), writes simulated and approvals not requested in a dry run, the run list."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from aiassist.agent.assembly import secret_values
from aiassist.agent.automation import Automation, AutomationConfig
from aiassist.agent.executor import InProcessExecutor
from aiassist.agent.flows import FlowError, load_flows, parse_flow
from aiassist.agent.policy import service_identity
from aiassist.agent.runtime import NoProvider, Runtime
from aiassist.agent.tools import ToolSet, tool
from aiassist.server import create_app
from aiassist.settings import Settings
from aiassist.store.keys import KeyStore
from aiassist.store.models import AgentApproval, AgentRun

from .conftest import serving

BOT = service_identity("bot", ["agent:run"])


class Backend:
    """Python tools that remember what they did."""

    def __init__(self) -> None:
        self.done: list[tuple[str, dict[str, Any]]] = []

    def tools(self) -> ToolSet:
        @tool(risk="read")
        def find_customer(email: str) -> dict[str, Any]:
            """Look a customer up."""
            self.done.append(("find_customer", {"email": email}))
            return {"id": 7, "email": email}

        @tool
        def tag_customer(customer_id: int, tag: str) -> dict[str, Any]:
            """Tag a customer."""
            self.done.append(("tag_customer", {"customer_id": customer_id, "tag": tag}))
            return {"ok": True}

        @tool(risk="irreversible")
        def close_account(customer_id: int) -> dict[str, Any]:
            """Close a customer's account for good."""
            self.done.append(("close_account", {"customer_id": customer_id}))
            return {"closed": customer_id}

        return ToolSet([find_customer, tag_customer, close_account])


OFFBOARD = parse_flow(
    """
name: offboard
minutes_saved: 5
steps:
  - id: who
    tool: find_customer
    args: {email: "{{ input.email }}"}
  - id: tag
    tool: tag_customer
    args: {customer_id: "{{ steps.who.id }}", tag: leaving}
  - id: close
    tool: close_account
    args: {customer_id: "{{ steps.who.id }}"}
"""
)


def runtime(sessions: sessionmaker[Session], backend: Backend) -> Runtime:
    return Runtime(sessions, backend.tools(), flows={"offboard": OFFBOARD})


def approvals(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(AgentApproval)) or 0)


async def test_a_dry_run_reads_simulates_writes_and_asks_nobody(
    sessions: sessionmaker[Session],
) -> None:
    backend = Backend()
    run = await runtime(sessions, backend).start_flow(
        "offboard", {"email": "a@example.com"}, BOT, dry_run=True
    )
    assert run.status == "succeeded" and run.dry_run and run.flow == "offboard"
    assert backend.done == [("find_customer", {"email": "a@example.com"})]  # the read only
    who, tag, close = run.calls
    assert who.result == {"id": 7, "email": "a@example.com"}
    assert tag.result == {
        "dry_run": True,
        "tool": "tag_customer",
        "arguments": {"customer_id": 7, "tag": "leaving"},
    }
    assert close.status == "succeeded" and close.result["dry_run"] is True
    assert "irreversible" in close.result["would_need_approval"]
    assert approvals(sessions) == 0 and run.max_steps == OFFBOARD.max_turns == 10


async def test_a_real_run_waits_for_the_irreversible_step(sessions: sessionmaker[Session]) -> None:
    backend = Backend()
    rt = runtime(sessions, backend)
    run = await rt.start_flow("offboard", {"email": "a@example.com"}, BOT, key="k-1")
    assert run.status == "waiting_approval" and [t for t, _ in backend.done] == [
        "find_customer",
        "tag_customer",
    ]
    [approval] = run.pending_approvals
    done = await rt.approve(approval, by=service_identity("ops", ["agent:approve"]))
    assert done.status == "succeeded" and backend.done[-1] == ("close_account", {"customer_id": 7})
    again = await rt.start_flow("offboard", {"email": "a@example.com"}, BOT, key="k-1")
    assert again.id == run.id and len(backend.done) == 3  # the key's run, not a new one


async def test_racing_starts_with_one_key_make_one_run(sessions: sessionmaker[Session]) -> None:
    backend = Backend()
    rt = runtime(sessions, backend)
    ids = await asyncio.gather(
        *[rt.create_flow_run("offboard", {"email": "b@x.io"}, BOT, key="evt-9") for _ in range(4)]
    )
    assert len(set(ids)) == 1
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(AgentRun)) == 1


async def test_flow_runs_are_refused_clearly(sessions: sessionmaker[Session]) -> None:
    rt = runtime(sessions, Backend())
    with pytest.raises(LookupError, match="no flow named 'nope'"):
        await rt.create_flow_run("nope", {}, BOT)
    with pytest.raises(ValueError, match="idempotency key"):
        await rt.create_flow_run("offboard", {}, BOT, key="x" * 201)
    rt.flows["ask"] = parse_flow(
        "name: ask\nsteps:\n  - id: q\n    agent: who?\n    output: {name: string}\n"
    )
    with pytest.raises(NoProvider, match="no language model"):
        await rt.create_flow_run("ask", {}, BOT)


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_the_api_dry_run_flag_and_the_run_list(settings: Settings, keys: KeyStore) -> None:
    backend = Backend()
    mine = {"authorization": f"Bearer {keys.create('bot', ['agent:run'], actor='test').token}"}
    other = {"authorization": f"Bearer {keys.create('other', ['agent:run'], actor='test').token}"}
    script = [
        {"tool_calls": [{"name": "tag_customer", "arguments": {"customer_id": 1, "tag": "vip"}}]},
        "done",
    ]
    with serving(create_app(settings, agent_tools=backend.tools())) as url:
        for dry_run in (True, False, True):
            response = httpx.post(
                f"{url}/v1/agent/runs",
                json={
                    "task": "tag customer 1 as vip",
                    "tools": ["tag_customer"],
                    "script": script,
                    "dry_run": dry_run,
                },
                headers=mine,
                timeout=30,
            )
            assert response.status_code == 201, response.text
            assert response.json()["dry_run"] is dry_run
            assert response.json()["status"] == "succeeded"
        assert len(backend.done) == 1  # only the real run tagged

        def listed(headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
            response = httpx.get(f"{url}/v1/agent/runs", params=params, headers=headers, timeout=10)
            assert response.status_code == 200, response.text
            result: list[dict[str, Any]] = response.json()
            return result

        everything = listed(mine)
        assert [r["dry_run"] for r in everything] == [True, False, True]  # newest first
        page = listed(mine, limit=2, offset=1)
        assert [r["id"] for r in page] == [r["id"] for r in everything[1:]]
        assert listed(mine, status="failed") == [] and listed(other) == []
        assert (
            httpx.get(
                f"{url}/v1/agent/runs", params={"status": "bogus"}, headers=mine, timeout=10
            ).status_code
            == 422
        )


def test_configuration_secrets_and_conflicts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flows = tmp_path / "flows"
    flows.mkdir()
    hook = "name: {name}\ntriggers:\n  - webhook: {hook}\nsteps:\n  - id: a\n    tool: t\n"
    (flows / "a.yaml").write_text(hook.format(name="a", hook="orders"))
    (flows / "b.yml").write_text(hook.format(name="b", hook="crm-events"))
    secrets_file = tmp_path / "secrets.yaml"
    secrets_file.write_text("orders: from-the-file-0123456789\n")
    monkeypatch.setenv("AIASSIST_WEBHOOK_SECRET_CRM_EVENTS", "from-the-environment-0123")
    settings = Settings(data_dir=tmp_path, flows_dir=flows, webhook_secrets_file=secrets_file)
    config = AutomationConfig.from_settings(settings)
    assert {(h.name, h.target, h.secret.get_secret_value()) for h in config.webhooks} == {
        ("orders", "a", "from-the-file-0123456789"),
        ("crm-events", "b", "from-the-environment-0123"),
    }
    assert "from-the-file-0123456789" in secret_values(settings)  # kept out of logs and audit

    monkeypatch.delenv("AIASSIST_WEBHOOK_SECRET_CRM_EVENTS")
    off = AutomationConfig.from_settings(settings)  # no secret: the webhook is off
    assert [h.name for h in off.webhooks] == ["orders"]

    (flows / "b.yml").write_text(hook.format(name="b", hook="orders"))
    with pytest.raises(ValueError, match="both use the webhook 'orders'"):
        AutomationConfig.from_settings(settings)
    (flows / "b.yml").write_text("# the same name twice\n" + hook.format(name="a", hook="x"))
    with pytest.raises(FlowError) as raised:
        load_flows(flows)
    assert raised.value.problems == [(2, f"{flows / 'a.yaml'} has the same name")]


async def test_runs_go_through_an_executor_when_given(sessions: sessionmaker[Session]) -> None:
    backend = Backend()
    rt = runtime(sessions, backend)
    executor = InProcessExecutor(rt)
    automation = Automation(
        rt, AutomationConfig.build({"offboard": OFFBOARD}), submit=executor.submit
    )
    run = await automation.run("offboard", {"email": "c@example.com"}, key="via-executor")
    assert run.status == "waiting_approval" and run.principal == "service:automation"
    assert [t for t, _ in backend.done] == ["find_customer", "tag_customer"]
    await executor.aclose()
