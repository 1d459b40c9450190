"""MCP servers as a tool source: a real server process (tests/mcp_server.py), stdio and HTTP."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from aiassist.agent import Risk, ToolContext, ToolError
from aiassist.agent.sources import BearerAuth
from aiassist.agent.sources.mcp import HttpServer, MCPConnectError, MCPSource, StdioServer
from tests.conftest import free_port, wait_for

SERVER = str(Path(__file__).with_name("mcp_server.py"))
TOKEN = "mcp-test-token"


def context(dry_run: bool = False) -> ToolContext:
    return ToolContext("run-1", "call-1", "idem-1", "tester", dry_run=dry_run)


def stdio(**kwargs: Any) -> MCPSource:
    """The test server over stdio; a generous connect timeout for a loaded machine."""
    options = {"connect_timeout": 30.0} | kwargs
    return MCPSource("notes", StdioServer(sys.executable, [SERVER, "stdio"]), **options)


@pytest.fixture(scope="module")
def http_server() -> Iterator[str]:
    """The same server over streamable HTTP, as a child process on a free port."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, SERVER, "http", str(port), TOKEN])
    url = f"http://127.0.0.1:{port}/mcp"

    def up() -> bool:
        assert proc.poll() is None, "the MCP server exited"
        try:
            httpx.get(url, timeout=0.5)
            return True
        except httpx.TransportError:
            return False

    try:
        wait_for(up, timeout=30, what="the MCP HTTP server")
        yield url
    finally:
        proc.terminate()
        proc.wait(15)


async def test_stdio_server_tools_are_listed_and_called() -> None:
    async with stdio(risk={"list_notes": "write"}, scopes={"create_note": ["notes:write"]}) as s:
        tools = s.tools()
        assert {t.name for t in tools} == {
            "add",
            "create_note",
            "delete_note",
            "list_notes",
            "explode",
            "slow",
            "die",
        }
        by_name = {t.name: t for t in tools}
        assert by_name["add"].risk is Risk.READ  # readOnlyHint
        assert by_name["delete_note"].risk is Risk.IRREVERSIBLE  # destructiveHint
        assert by_name["create_note"].risk is Risk.WRITE  # no hint: write
        assert by_name["list_notes"].risk is Risk.WRITE  # the operator's mapping wins
        assert by_name["create_note"].scopes == {"notes:write"}
        assert all(t.source == "mcp:notes" for t in tools)
        assert by_name["add"].description == "Add two integers."
        assert by_name["add"].parameters["required"] == ["a", "b"]

        assert await by_name["add"].call({"a": 2, "b": 3}, context()) == {"result": 5}
        note = await by_name["create_note"].call({"text": "call Zhang San"}, context())
        assert note == {"id": 1, "text": "call Zhang San"}
        listing = await by_name["list_notes"].call({}, context())
        assert listing == {"notes": [{"id": 1, "text": "call Zhang San"}]}

        with pytest.raises(ToolError, match="a: 'two' is not of type 'integer'") as invalid:
            by_name["add"].check({"a": "two", "b": 1})
        assert invalid.value.retryable is False

        assert [t.name for t in s.tools(["add"])] == ["add"]
        with pytest.raises(KeyError):
            s.tools(["rm_rf"])


async def test_a_failing_tool_is_a_tool_error() -> None:
    async with stdio() as s:
        tools = s.tools()
        explode, delete = tools.get("explode"), tools.get("delete_note")
        assert explode is not None and delete is not None
        with pytest.raises(ToolError, match="explode on MCP server 'notes' failed") as failed:
            await explode.call({"reason": "boom"}, context())
        assert failed.value.retryable is False
        with pytest.raises(ToolError, match="no note 42"):
            await delete.call({"note_id": 42}, context())


async def test_a_slow_call_times_out_and_the_session_survives() -> None:
    async with stdio(call_timeout=0.5) as s:
        tools = s.tools()
        slow, add = tools.get("slow"), tools.get("add")
        assert slow is not None and add is not None
        with pytest.raises(ToolError, match=r"timed out after 0.5s") as timed_out:
            await slow.call({"seconds": 3}, context())
        assert timed_out.value.retryable is True
        started = time.monotonic()
        while True:  # the server answers again once its blocking sleep is over
            try:
                assert await add.call({"a": 1, "b": 1}, context()) == {"result": 2}
                break
            except ToolError:
                assert time.monotonic() - started < 20


async def test_a_server_that_dies_fails_the_calls_not_the_caller() -> None:
    async with stdio(call_timeout=5) as s:
        tools = s.tools()
        die, add = tools.get("die"), tools.get("add")
        assert die is not None and add is not None
        with pytest.raises(ToolError):
            await die.call({}, context())
        with pytest.raises(ToolError) as after:
            await add.call({"a": 1, "b": 1}, context())
        assert "MCP server 'notes'" in after.value.message
    # leaving the block is clean: no exception group escapes


async def test_dry_run_does_not_call_a_writing_tool() -> None:
    async with stdio() as s:
        tools = s.tools()
        create, listing = tools.get("create_note"), tools.get("list_notes")
        assert create is not None and listing is not None
        preview = await create.call({"text": "x"}, context(dry_run=True))
        assert preview == {"dry_run": True, "tool": "create_note", "arguments": {"text": "x"}}
        assert await listing.call({}, context(dry_run=True)) == {"notes": []}  # reads run


async def test_streamable_http_with_a_token_from_a_secret(http_server: str) -> None:
    server = HttpServer(http_server, auth=BearerAuth(SecretStr(TOKEN)))
    assert TOKEN not in repr(server)
    async with MCPSource("remote", server, prefix="remote_", connect_timeout=30) as s:
        tools = s.tools()
        add = tools.get("remote_add")
        assert add is not None and add.source == "mcp:remote"
        assert await add.call({"a": 20, "b": 22}, context()) == {"result": 42}
        create = tools.get("remote_create_note")
        assert create is not None
        assert (await create.call({"text": "over http"}, context()))["text"] == "over http"


async def test_connection_failures_are_clear(http_server: str) -> None:
    with pytest.raises(MCPConnectError, match="cannot connect to MCP server 'remote'"):
        async with MCPSource("remote", HttpServer(http_server), connect_timeout=30):  # no token
            pass
    unused = f"http://127.0.0.1:{free_port()}/mcp"
    with pytest.raises(MCPConnectError, match="ConnectError"):
        async with MCPSource("gone", HttpServer(unused), connect_timeout=5):
            pass
    silent = StdioServer(sys.executable, ["-c", "import time; time.sleep(60)"])
    started = time.monotonic()
    with pytest.raises(MCPConnectError, match="timed out"):
        async with MCPSource("silent", silent, connect_timeout=1):
            pass
    assert time.monotonic() - started < 30


def test_tools_need_a_connection() -> None:
    with pytest.raises(RuntimeError, match="not connected"):
        stdio().tools()
    with pytest.raises(ValueError, match="server name"):
        MCPSource("bad name", HttpServer("http://127.0.0.1:1/mcp"))


async def test_hints_can_be_ignored_and_mappings_are_checked() -> None:
    async with stdio(trust_hints=False) as s:
        assert {t.risk for t in s.tools()} == {Risk.WRITE}  # an untrusted server's hints
    with pytest.raises(ValueError, match="unknown MCP tools: \\['delete_notes'\\]"):
        async with stdio(risk={"delete_notes": "read"}):  # a typo must not pass silently
            pass
