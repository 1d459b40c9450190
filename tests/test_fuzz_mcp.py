"""The MCP surface of the service (`/mcp`, streamable HTTP) answers bad input with a
JSON-RPC error or a tool error, never a server error: raw bodies that are not JSON-RPC, and
tool calls whose arguments hypothesis generates, against a real service process."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import ScopedService, scoped_service

EXAMPLES = int(os.environ.get("AIASSIST_FUZZ_EXAMPLES", "10")) * 5
ROOT = Path(__file__).resolve().parents[1]
TOOLS = ["lookup_order", "create_note", "delete_customer", "purge_everything", "rm_rf"]
SERVER_FAULT = -32603  # JSON-RPC "internal error"


@dataclass(frozen=True)
class Endpoint:
    url: str
    client: httpx.Client  # one connection pool for every call, holding the key's headers


@pytest.fixture(scope="module")
def mcp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    env = {
        "AIASSIST_MCP_HTTP": "true",
        "AIASSIST_AGENT_TOOLS": "tests.mcp_tools:tools",
        "AIASSIST_MCP_APPROVAL_WAIT_SECONDS": "0",  # an irreversible call answers "pending"
        "AIASSIST_TEST_MCP_EFFECTS": str(tmp_path_factory.mktemp("effects") / "effects.jsonl"),
        "PYTHONPATH": str(ROOT),
    }
    service: ScopedService
    with scoped_service(tmp_path_factory.mktemp("mcp"), **env) as service:
        headers = service.headers("agent:run") | {
            "accept": "application/json, text/event-stream",
            "content-type": "application/json",
        }
        with httpx.Client(headers=headers, timeout=30) as client:
            yield Endpoint(f"{service.process.url}/mcp", client)


def post(mcp: Endpoint, body: str | bytes) -> tuple[int, list[dict[str, Any]]]:
    """The status and the JSON-RPC messages of the answer (plain JSON or server-sent events)."""
    response = mcp.client.post(mcp.url, content=body)
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        # SSE lines end in CR, LF or CRLF only: str.splitlines() would also cut the JSON at
        # the U+2028, U+0085 or form feeds that a message's strings may hold unescaped
        lines = re.split(r"\r\n|\r|\n", response.text)
        return response.status_code, [json.loads(x[5:]) for x in lines if x.startswith("data:")]
    return response.status_code, [response.json()] if response.content else []


def assert_answered(status: int, messages: list[dict[str, Any]]) -> None:
    assert status < 500, messages
    for message in messages:
        assert message.get("jsonrpc") == "2.0", message
        error = message.get("error")
        assert ("result" in message) != (error is not None), message
        if error is not None:
            assert error["code"] != SERVER_FAULT and error["message"], message


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=200),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=20), inner),
    max_leaves=20,
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(tool=st.sampled_from(TOOLS), arguments=json_values)
def test_tool_calls_with_any_arguments_are_answered(
    mcp: Endpoint, tool: str, arguments: Any
) -> None:
    call = {"name": tool, "arguments": arguments}
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": call})
    status, messages = post(mcp, body)
    assert_answered(status, messages)
    [message] = messages
    if "result" in message and not isinstance(arguments, dict):
        assert message["result"]["isError"]


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    method=st.text(max_size=40) | st.sampled_from(["tools/call", "tools/list"]), params=json_values
)
def test_any_method_and_params_are_answered(mcp: Endpoint, method: str, params: Any) -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": 7, "method": method, "params": params})
    assert_answered(*post(mcp, body))


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("not json", -32700),
        ("[" * 5000 + "]" * 5000, -32700),
        ("[1, 2]", -32602),
        ('{"jsonrpc": "1.0", "id": 1, "method": "tools/list"}', -32602),
        ('{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": "x"}', -32602),
        (b"\xff\xfe{", -32700),
    ],
)
def test_what_is_not_json_rpc_is_a_400_naming_why(
    mcp: Endpoint, body: str | bytes, code: int
) -> None:
    status, [message] = post(mcp, body)
    assert status == 400
    assert message["error"]["code"] == code and message["error"]["message"]


def test_non_finite_arguments_are_a_tool_error_naming_the_field(
    mcp: Endpoint,
) -> None:
    for number in ["NaN", "Infinity", "-Infinity"]:
        body = (
            '{"jsonrpc": "2.0", "id": 1, "method": "tools/call", '
            f'"params": {{"name": "create_note", "arguments": {{"text": {number}}}}}}}'
        )
        status, [message] = post(mcp, body)
        assert status == 200 and message["result"]["isError"]
        assert "text" in message["result"]["content"][0]["text"]
