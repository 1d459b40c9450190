"""aiassist as an MCP server: an official-SDK client over stdio (a real child process) and
streamable HTTP (the inference service on loopback), under the agent's policy."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
import uvicorn
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from pydantic import SecretStr
from sqlalchemy import select

from aiassist.agent import Risk
from aiassist.agent.mcp_server import WAIT_META
from aiassist.agent.sources import BearerAuth
from aiassist.agent.sources.mcp import HttpServer, MCPSource
from aiassist.server import create_app
from aiassist.settings import Settings
from aiassist.store.audit import AuditLog
from aiassist.store.db import make_engine, make_sessionmaker
from aiassist.store.keys import KeyStore
from aiassist.store.models import AgentApproval, AgentRun, AuditEvent
from tests.conftest import free_port, wait_for, wait_healthy
from tests.mcp_tools import effects

ROOT = Path(__file__).resolve().parent.parent
TOOLS = "tests.mcp_tools:tools"
SERVED = {"lookup_order", "create_note", "delete_customer"}  # for a key with agent:run only


class Database:
    """The test's database as the test process sees it (keys, approvals, audit)."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self.sessions = make_sessionmaker(self.engine)
        self.keys = KeyStore(self.sessions, cache_seconds=0)

    def pending(self, tool: str) -> list[str]:
        with self.sessions() as session:
            query = select(AgentApproval.id).where(
                AgentApproval.tool == tool, AgentApproval.status == "pending"
            )
            return list(session.scalars(query))

    def events(self, kind: str) -> list[AuditEvent]:
        with self.sessions() as session:
            return list(session.scalars(select(AuditEvent).where(AuditEvent.kind == kind)))

    def runs(self) -> list[AgentRun]:
        with self.sessions() as session:
            return list(session.scalars(select(AgentRun).order_by(AgentRun.created_at)))

    def verify(self) -> None:
        check = AuditLog(self.sessions).verify()
        assert check.ok, check.reason


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    db = Database(db_url)
    yield db
    db.engine.dispose()


@pytest.fixture
def effects_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    path = str(tmp_path / "effects.jsonl")
    monkeypatch.setenv("AIASSIST_TEST_MCP_EFFECTS", path)  # the in-process service's tools
    return path


def text(result: Any) -> str:
    return " ".join(block.text for block in result.content)


def approve_when_pending(tool: str, db: Database, approve: Any) -> str:
    """Wait (in a thread) until a call of `tool` waits for approval, then approve it."""
    found: list[str] = []

    def pending() -> bool:
        found[:] = db.pending(tool)
        return bool(found)

    wait_for(pending, timeout=60, what=f"an approval for {tool}")
    approve(found[0])
    return found[0]


# --- stdio -----------------------------------------------------------------------------------
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_stdio_lists_calls_refuses_and_waits_for_approval(
    db_url: str, database: Database, effects_file: str, tmp_path: Path
) -> None:
    client_key = database.keys.create("mcp-client", ["agent:run"], actor="test")
    env = {
        "AIASSIST_DATA_DIR": str(tmp_path),
        "AIASSIST_DATABASE_URL": db_url,
        "AIASSIST_AGENT_TOOLS": TOOLS,
        "AIASSIST_API_KEY": client_key.token,
        "AIASSIST_MCP_APPROVAL_WAIT_SECONDS": "60",
        "AIASSIST_KEY_CACHE_SECONDS": "0",
        "AIASSIST_TEST_MCP_EFFECTS": effects_file,
        "AIASSIST_LOG_LEVEL": "warning",
        "PYTHONPATH": str(ROOT),
    }
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "aiassist", "mcp", "serve", "--stdio"],
        env=env,
        cwd=ROOT,
    )

    def approve_with_the_cli(approval_id: str) -> None:  # another process, as a person would
        done = subprocess.run(
            [sys.executable, "-m", "aiassist", "agent", "approve", approval_id],
            env=os.environ | env,
            cwd=ROOT,
            capture_output=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr.decode()

    async with Client(params, read_timeout_seconds=120) as client:
        listed = {t.name: t for t in (await client.list_tools()).tools}
        assert set(listed) == SERVED  # purge_everything needs admin: not shown
        lookup, delete = listed["lookup_order"], listed["delete_customer"]
        assert lookup.annotations is not None and lookup.annotations.read_only_hint is True
        assert delete.annotations is not None and delete.annotations.destructive_hint is True
        note = listed["create_note"].annotations
        assert note is not None and note.destructive_hint is False and not note.read_only_hint
        assert lookup.input_schema["required"] == ["order_id"]
        assert lookup.description == "Look an order up by its id."

        found = await client.call_tool("lookup_order", {"order_id": "A-1"})
        assert not found.is_error
        assert found.structured_content == {"order_id": "A-1", "status": "shipped"}

        noted = await client.call_tool("create_note", {"text": "called back"})
        assert not noted.is_error and noted.structured_content == {"noted": "called back"}

        invalid = await client.call_tool("create_note", {"text": 42})
        assert invalid.is_error and "invalid arguments" in text(invalid)

        refused = await client.call_tool("purge_everything", {})
        assert refused.is_error
        assert "denied by policy" in text(refused) and "lacks the scopes admin" in text(refused)

        # an irreversible call waits while a person approves it from another process
        approver = asyncio.create_task(
            asyncio.to_thread(
                approve_when_pending, "delete_customer", database, approve_with_the_cli
            )
        )
        deleted = await client.call_tool("delete_customer", {"customer_id": "C-42"})
        approval_id = await approver
        assert not deleted.is_error, text(deleted)
        assert deleted.structured_content == {"deleted": "C-42"}

        # ends the live session's rights
        database.keys.revoke(client_key.principal.key_id, actor="test")
        with pytest.raises(MCPError, match="revoked"):
            await client.list_tools()

    done = effects(effects_file)
    assert [e["kind"] for e in done] == ["note", "delete"]  # once each; no purge
    runs = database.runs()
    assert len(runs) == 5 and {r.principal for r in runs} == {client_key.principal.key_id}
    assert all(r.status == "succeeded" and r.tools == [r.task.split()[-1]] for r in runs)
    [denied] = database.events("agent.policy.denied")
    assert denied.data["tool"] == "purge_everything"
    assert denied.actor == client_key.principal.key_id
    [approved] = database.events("agent.approval.approved")
    assert approved.data["approval"] == approval_id and approved.actor == "service:cli"
    database.verify()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_stdio_refuses_to_start_without_a_usable_key(
    db_url: str, database: Database, tmp_path: Path
) -> None:
    env = os.environ | {
        "AIASSIST_DATA_DIR": str(tmp_path),
        "AIASSIST_DATABASE_URL": db_url,
        "AIASSIST_AGENT_TOOLS": TOOLS,
        "PYTHONPATH": str(ROOT),
    }
    env.pop("AIASSIST_API_KEY", None)
    command = [sys.executable, "-m", "aiassist", "mcp", "serve", "--stdio"]

    def serve(*extra: str, **more: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, *extra], env=env | more, cwd=ROOT, capture_output=True, text=True, timeout=60
        )

    missing = serve()
    assert missing.returncode == 2 and "no API key" in missing.stderr and not missing.stdout
    wrong = serve(AIASSIST_API_KEY="aia_nope_nope")
    assert wrong.returncode == 2 and "invalid or revoked" in wrong.stderr
    decide_only = tmp_path / "key"
    decide_only.write_text(database.keys.create("backend", ["decide"], actor="test").token)
    scoped = serve("--key-file", str(decide_only))
    assert scoped.returncode == 2 and "lacks the scope 'agent:run'" in scoped.stderr


# --- streamable HTTP, mounted in the inference service ---------------------------------------
@pytest.fixture
def service(db_url: str, tmp_path: Path, effects_file: str) -> Iterator[str]:
    settings = Settings(
        data_dir=tmp_path,
        database_url=db_url,
        agent_tools=TOOLS,
        mcp_http=True,
        mcp_approval_wait_seconds=60,
        record_decisions=False,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=free_port(), log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.config.port}"
    wait_healthy(url)
    yield url
    server.should_exit = True
    thread.join(10)


def http_client(url: str, token: str) -> Client:
    http = httpx2.AsyncClient(
        headers={"authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30, read=120)
    )
    return Client(streamable_http_client(f"{url}/mcp", http_client=http), read_timeout_seconds=120)


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_http_needs_a_key_with_agent_run(service: str, database: Database) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    missing = httpx.post(f"{service}/mcp", json=body)
    assert missing.status_code == 401 and "missing API key" in missing.json()["detail"]
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = httpx.post(f"{service}/mcp", json=body, headers={"authorization": "Bearer aia_x_y"})
    assert wrong.status_code == 401 and "invalid or revoked" in wrong.json()["detail"]
    decide = database.keys.create("backend", ["decide"], actor="test").token
    scoped = httpx.post(f"{service}/mcp", json=body, headers={"authorization": f"Bearer {decide}"})
    assert scoped.status_code == 403 and "agent:run" in scoped.json()["detail"]
    revoked = database.keys.create("gone", ["agent:run"], actor="test")
    database.keys.revoke(revoked.principal.key_id, actor="test")
    gone = httpx.post(
        f"{service}/mcp", json=body, headers={"authorization": f"Bearer {revoked.token}"}
    )
    assert gone.status_code == 401


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_http_lists_calls_refuses_and_waits_for_approval(
    service: str, database: Database, effects_file: str
) -> None:
    client_key = database.keys.create("mcp-client", ["agent:run"], actor="test")
    admin = database.keys.create("operator", ["admin"], actor="test").token
    ops = database.keys.create("ops", ["agent:approve"], actor="test").token

    def approve_over_the_api(approval_id: str) -> None:
        r = httpx.post(
            f"{service}/v1/approvals/{approval_id}",
            json={"decision": "approve", "wait_seconds": 0},
            headers={"authorization": f"Bearer {ops}"},
            timeout=60,
        )
        assert r.status_code == 200, r.text

    def reject_over_the_api(approval_id: str) -> None:
        r = httpx.post(
            f"{service}/v1/approvals/{approval_id}",
            json={"decision": "reject", "message": "keep them", "wait_seconds": 0},
            headers={"authorization": f"Bearer {ops}"},
            timeout=60,
        )
        assert r.status_code == 200, r.text

    async with http_client(service, admin) as client:  # an admin sees every tool
        assert {t.name for t in (await client.list_tools()).tools} == SERVED | {"purge_everything"}

    async with http_client(service, client_key.token) as client:
        assert {t.name for t in (await client.list_tools()).tools} == SERVED
        noted = await client.call_tool("create_note", {"text": "over http"})
        assert not noted.is_error and noted.structured_content == {"noted": "over http"}
        assert noted.meta is not None and len(noted.meta["aiassist/run_id"]) == 32

        refused = await client.call_tool("purge_everything", {})
        assert refused.is_error and "lacks the scopes admin" in text(refused)
        unknown = await client.call_tool("rm_rf", {})
        assert unknown.is_error and "unknown tool 'rm_rf'" in text(unknown)

        # approved while the call waits: the client gets the real result
        approver = asyncio.create_task(
            asyncio.to_thread(
                approve_when_pending, "delete_customer", database, approve_over_the_api
            )
        )
        told: list[str] = []

        async def progress(done: float, total: float | None, message: str | None) -> None:
            told.append(message or "")

        deleted = await client.call_tool(
            "delete_customer", {"customer_id": "C-1"}, progress_callback=progress
        )
        approval = await approver
        assert not deleted.is_error, text(deleted)
        assert deleted.structured_content == {"deleted": "C-1"}
        assert told == [f"waiting for approval {approval}"]  # told while it waited

        # rejected while the call waits: an error with the approver's message
        rejecter = asyncio.create_task(
            asyncio.to_thread(
                approve_when_pending, "delete_customer", database, reject_over_the_api
            )
        )
        kept = await client.call_tool("delete_customer", {"customer_id": "C-9"})
        await rejecter
        assert kept.is_error and "rejected by the approver: keep them" in text(kept)

        # not approved in time: an error naming the approval; the run stays paused
        started = time.monotonic()
        waiting = await client.call_tool(
            "delete_customer", {"customer_id": "C-2"}, meta={WAIT_META: 0.5}
        )
        assert time.monotonic() - started < 30
        assert waiting.is_error and waiting.structured_content is not None
        approval_id = waiting.structured_content["approval_id"]
        run_id = waiting.structured_content["run_id"]
        assert f"aiassist agent approve {approval_id}" in text(waiting)
        assert f"/v1/approvals/{approval_id}" in text(waiting)
        assert database.pending("delete_customer") == [approval_id]
        assert [e["customer_id"] for e in effects(effects_file) if e["kind"] == "delete"] == ["C-1"]

    # approved later, with nobody waiting: the run goes on and has the real result
    approve_over_the_api(approval_id)
    run: dict[str, Any] = {}

    def finished() -> bool:
        run.update(
            httpx.get(
                f"{service}/v1/agent/runs/{run_id}",
                headers={"authorization": f"Bearer {client_key.token}"},
            ).json()
        )
        return run["status"] == "succeeded"

    wait_for(finished, timeout=60, what="the approved run to finish")
    assert run["calls"][0]["result"] == {"deleted": "C-2"}
    assert run["provider"] == "call"  # the one-call provider, not a model's name
    assert [e["customer_id"] for e in effects(effects_file) if e["kind"] == "delete"] == [
        "C-1",
        "C-2",
    ]
    [denied] = database.events("agent.policy.denied")
    assert denied.data["tool"] == "purge_everything"
    assert denied.actor == client_key.principal.key_id
    assert len(database.events("agent.approval.approved")) == 2
    assert len(database.events("agent.approval.rejected")) == 1
    database.verify()


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_risk_round_trips_through_the_mcp_tool_source(
    service: str, database: Database
) -> None:
    """aiassist's own MCP client source reads the served tools back with their risk."""
    token = database.keys.create("mcp-client", ["agent:run"], actor="test").token
    server = HttpServer(f"{service}/mcp", auth=BearerAuth(SecretStr(token)))
    async with MCPSource("aiassist", server, connect_timeout=30) as source:
        risks = {t.name: t.risk for t in source.tools()}
    assert risks == {
        "lookup_order": Risk.READ,
        "create_note": Risk.WRITE,
        "delete_customer": Risk.IRREVERSIBLE,
    }


@pytest.fixture
def standalone(db_url: str, tmp_path: Path, effects_file: str) -> Iterator[str]:
    """`aiassist mcp serve --http` as a child process, serving only `lookup_order`."""
    port = free_port()
    env = os.environ | {
        "AIASSIST_DATA_DIR": str(tmp_path),
        "AIASSIST_DATABASE_URL": db_url,
        "AIASSIST_AGENT_TOOLS": TOOLS,
        "AIASSIST_LOG_LEVEL": "warning",
        "PYTHONPATH": str(ROOT),
    }
    command = ["mcp", "serve", "--http", "--port", str(port), "--tool", "lookup_order"]
    proc = subprocess.Popen([sys.executable, "-m", "aiassist", *command], env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"

    def refusing() -> bool:  # up: it answers, and refuses a request without a key
        assert proc.poll() is None, "the MCP server exited"
        try:
            return httpx.post(f"{url}/mcp", json={}, timeout=1).status_code == 401
        except httpx.TransportError:
            return False

    try:
        wait_for(refusing, timeout=60, what="aiassist mcp serve --http")
        yield url
    finally:
        proc.terminate()
        proc.wait(15)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_standalone_http_server_process(standalone: str, database: Database) -> None:
    """`aiassist mcp serve --http`: its own process, keys checked on every request."""
    token = database.keys.create("mcp-client", ["agent:run"], actor="test").token
    async with http_client(standalone, token) as client:
        assert [t.name for t in (await client.list_tools()).tools] == ["lookup_order"]
        found = await client.call_tool("lookup_order", {"order_id": "B-7"})
        assert found.structured_content == {"order_id": "B-7", "status": "shipped"}
        hidden = await client.call_tool("create_note", {"text": "x"})
        assert hidden.is_error and "unknown tool" in text(hidden)
    database.verify()
