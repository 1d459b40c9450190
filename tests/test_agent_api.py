"""The agent API over real HTTP: runs, approvals, auth and validation, a service restart."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import uvicorn

from aiassist.server import create_app
from aiassist.settings import Settings
from aiassist.store.keys import KeyStore
from tests.agent_backend import crm_tools, effects, serve_backend
from tests.conftest import ServiceProcess, free_port, wait_healthy

pytestmark = pytest.mark.parametrize("db_url", ["postgres"], indirect=True)

LEAD = {"name": "Zhang San", "email": "zhangsan@example.com"}
SCRIPT = [
    {"tool_calls": [{"name": "create_crm_lead", "arguments": LEAD}]},
    {
        "tool_calls": [
            {
                "name": "send_email",
                "arguments": {"to": LEAD["email"], "subject": "Hello", "body": "Our product"},
            }
        ]
    },
    "Lead created, intro email sent.",
]


@pytest.fixture(scope="module")
def backend() -> Iterator[str]:
    with serve_backend(free_port()) as url:
        yield url


@dataclass
class Keys:
    run: str
    approve: str
    other: str
    decide: str

    def h(self, which: str) -> dict[str, str]:
        return {"authorization": f"Bearer {getattr(self, which)}"}


@pytest.fixture
def agent_keys(keys: KeyStore) -> Keys:
    return Keys(
        run=keys.create("sales-bot", ["agent:run"], actor="test").token,
        approve=keys.create("ops", ["agent:approve"], actor="test").token,
        other=keys.create("other-bot", ["agent:run"], actor="test").token,
        decide=keys.create("backend", ["decide"], actor="test").token,
    )


@pytest.fixture
def service(settings: Settings, backend: str) -> Iterator[str]:
    app = create_app(settings, agent_tools=crm_tools(backend))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url)
    yield url
    server.should_exit = True
    thread.join(10)


def test_the_lead_example_over_the_api(service: str, agent_keys: Keys) -> None:
    body = {
        "task": "Zhang San wants to learn about the product",
        "tools": ["create_crm_lead", "send_email"],
        "script": SCRIPT,
        "wait_seconds": 60,
    }
    r = httpx.post(f"{service}/v1/agent/runs", json=body, headers=agent_keys.h("run"), timeout=90)
    assert r.status_code == 201, r.text
    run = r.json()
    assert run["status"] == "succeeded" and run["output"] == "Lead created, intro email sent."
    assert [c["tool"] for c in run["calls"]] == ["create_crm_lead", "send_email"]
    assert run["input_tokens"] > 0 and run["cost"] > 0
    again = httpx.get(f"{service}/v1/agent/runs/{run['id']}", headers=agent_keys.h("run"))
    assert again.status_code == 200 and again.json()["status"] == "succeeded"
    hidden = httpx.get(f"{service}/v1/agent/runs/{run['id']}", headers=agent_keys.h("other"))
    assert hidden.status_code == 404  # another principal's run is not shown
    metrics = httpx.get(f"{service}/metrics").text
    assert 'aiassist_agent_tool_calls_total{status="succeeded",tool="send_email"} 1.0' in metrics
    assert 'aiassist_agent_runs_total{status="succeeded"} 1.0' in metrics


def test_approve_and_reject_over_the_api(service: str, agent_keys: Keys, backend: str) -> None:
    script = [
        {"tool_calls": [{"name": "delete_lead", "arguments": {"lead_id": "L999"}}]},
        "done",
    ]
    body = {
        "task": "delete lead L999",
        "tools": ["delete_lead"],
        "script": script,
        "wait_seconds": 60,
    }
    run = httpx.post(
        f"{service}/v1/agent/runs", json=body, headers=agent_keys.h("run"), timeout=90
    ).json()
    assert run["status"] == "waiting_approval" and len(run["pending_approvals"]) == 1
    approval_id = run["pending_approvals"][0]

    assert httpx.get(f"{service}/v1/approvals", headers=agent_keys.h("run")).status_code == 403
    listed = httpx.get(f"{service}/v1/approvals", headers=agent_keys.h("approve")).json()
    [shown] = [a for a in listed if a["id"] == approval_id]
    assert shown["tool"] == "delete_lead" and shown["arguments"] == {"lead_id": "L999"}

    url = f"{service}/v1/approvals/{approval_id}"
    r = httpx.post(url, json={"decision": "approve"}, headers=agent_keys.h("run"))
    assert r.status_code == 403
    r = httpx.post(url, json={"decision": "maybe"}, headers=agent_keys.h("approve"))
    assert r.status_code == 422
    r = httpx.post(
        url, json={"decision": "approve", "arguments": {"lead": 1}}, headers=agent_keys.h("approve")
    )
    assert r.status_code == 422 and "lead_id" in r.json()["detail"]
    r = httpx.post(
        url,
        json={"decision": "approve", "wait_seconds": 60},
        headers=agent_keys.h("approve"),
        timeout=90,
    )
    assert r.status_code == 200, r.text
    done = r.json()["run"]
    assert done["status"] == "succeeded"
    assert done["calls"][0]["result"] == {"deleted": False, "reason": "no such lead"}
    r = httpx.post(url, json={"decision": "reject"}, headers=agent_keys.h("approve"))
    assert r.status_code == 409 and "already approved" in r.json()["detail"]
    missing = f"{service}/v1/approvals/{'0' * 32}"
    assert (
        httpx.post(
            missing, json={"decision": "reject"}, headers=agent_keys.h("approve")
        ).status_code
        == 404
    )

    run = httpx.post(
        f"{service}/v1/agent/runs", json=body, headers=agent_keys.h("run"), timeout=90
    ).json()
    url = f"{service}/v1/approvals/{run['pending_approvals'][0]}"
    r = httpx.post(
        url,
        json={"decision": "reject", "message": "keep it", "wait_seconds": 60},
        headers=agent_keys.h("approve"),
        timeout=90,
    )
    assert r.status_code == 200
    assert r.json()["run"]["calls"][0]["result"]["message"] == "keep it"
    assert r.json()["run"]["status"] == "succeeded"


def test_auth_and_validation(service: str, agent_keys: Keys) -> None:
    url = f"{service}/v1/agent/runs"
    good = {"task": "x", "tools": ["send_email"], "script": ["hi"]}
    assert httpx.post(url, json=good).status_code == 401
    assert (
        httpx.post(url, json=good, headers={"authorization": "Bearer aia_x_y"}).status_code == 401
    )
    assert httpx.post(url, json=good, headers=agent_keys.h("decide")).status_code == 403
    for bad in (
        {"task": "x", "script": ["hi"]},  # no tools
        {**good, "task": ""},
        {**good, "surprise": 1},
        {**good, "tools": ["nope"]},
        {**good, "script": [{"tool_calls": "many"}]},
        {**good, "max_steps": 0},
        {**good, "max_steps": 999},
        {**good, "tools": ["x" * 65]},
    ):
        r = httpx.post(url, json=bad, headers=agent_keys.h("run"))
        assert r.status_code == 422, (bad, r.text)
    r = httpx.post(
        url, json={"task": "send an email", "tools": ["send_email"]}, headers=agent_keys.h("run")
    )
    assert r.status_code == 409 and "AIASSIST_AGENT_PROVIDER" in r.json()["detail"]
    r = httpx.post(
        url,
        json={"task": "send an email", "tools": ["send_email"], "provider": "openai"},
        headers=agent_keys.h("run"),
    )
    assert r.status_code == 409 and "AIASSIST_AGENT_PROVIDER" in r.json()["detail"]
    assert httpx.get(f"{url}/not-an-id", headers=agent_keys.h("run")).status_code == 422
    assert httpx.get(f"{url}/{'0' * 32}", headers=agent_keys.h("run")).status_code == 404


def test_a_run_waits_across_a_service_restart(
    settings: Settings, agent_keys: Keys, backend: str
) -> None:
    service = ServiceProcess(settings, free_port())
    service.env |= {
        "AIASSIST_AGENT_TOOLS": "tests.agent_backend:tools_from_env",
        "AGENT_TEST_BACKEND": backend,
    }
    service.start()
    try:
        lead = httpx.post(
            f"{backend}/leads", json={"name": "Li Si", "email": "li@example.com"}
        ).json()
        script = [
            {"tool_calls": [{"name": "delete_lead", "arguments": {"lead_id": lead["id"]}}]},
            "Deleted.",
        ]
        body = {
            "task": "delete the lead",
            "tools": ["delete_lead"],
            "script": script,
            "wait_seconds": 60,
        }
        run = httpx.post(
            f"{service.url}/v1/agent/runs", json=body, headers=agent_keys.h("run"), timeout=90
        ).json()
        assert run["status"] == "waiting_approval"
        service.kill()  # nothing of the run lives in the process
        service.start()
        approval = run["pending_approvals"][0]
        r = httpx.post(
            f"{service.url}/v1/approvals/{approval}",
            json={"decision": "approve", "wait_seconds": 60},
            headers=agent_keys.h("approve"),
            timeout=90,
        )
        assert r.status_code == 200, r.text
        assert r.json()["run"]["status"] == "succeeded"
        assert r.json()["run"]["calls"][0]["result"] == {"deleted": True, "id": lead["id"]}
        assert effects(backend)["delete"] >= 1
    finally:
        service.kill()
