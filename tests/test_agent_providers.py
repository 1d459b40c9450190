"""The OpenAI-compatible and Anthropic providers, through their real SDKs, against the vendor
emulator (a documented test double of the vendors' HTTP APIs) on loopback."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from pydantic import SecretStr

from aiassist.agent.providers import (
    Message,
    Provider,
    ProviderError,
    ToolCall,
    Usage,
    cost,
    provider_from_settings,
)
from aiassist.agent.providers.anthropic import AnthropicProvider
from aiassist.agent.providers.emulator import Reply, VendorEmulator
from aiassist.agent.providers.openai import OpenAIProvider
from aiassist.agent.providers.test import TestModel
from aiassist.settings import Settings
from tests.conftest import free_port, wait_healthy

KEY = "sk-test-0123456789"

TOOLS = [
    {
        "name": "create_crm_lead",
        "description": "Create a sales lead.",
        "parameters": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "email": {"type": "string"}},
            "required": ["name", "email"],
        },
    },
    {
        "name": "send_email",
        "description": "Send an email.",
        "parameters": {"type": "object", "properties": {"to": {"type": "string"}}},
    },
]

LEAD = ToolCall("call_a", "create_crm_lead", {"name": "Zhang San", "email": "zhangsan@example.com"})
EMAIL = ToolCall("call_b", "send_email", {"to": "zhangsan@example.com"})
CONVERSATION = [
    Message("system", "You automate the CRM."),
    Message("user", "Zhang San (zhangsan@example.com) wants an intro: create a lead, email him."),
    Message("assistant", "On it.", tool_calls=(LEAD, EMAIL)),
    Message("tool", {"lead_id": 42}, call_id="call_a"),
    Message("tool", {"error": "SMTP is down", "retryable": True}, call_id="call_b"),
]


@pytest.fixture(scope="module")
def vendor() -> Iterator[tuple[str, VendorEmulator]]:
    emulator = VendorEmulator()
    port = free_port()
    config = uvicorn.Config(emulator.app(), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url)
    yield url, emulator
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def emulator(vendor: tuple[str, VendorEmulator]) -> VendorEmulator:
    emulator = vendor[1]
    emulator.replies.clear()
    emulator.requests.clear()
    return emulator


@pytest.fixture
async def providers() -> AsyncIterator[list[OpenAIProvider | AnthropicProvider]]:
    """Providers made by a test, closed after it (their HTTP pools belong to its loop)."""
    made: list[OpenAIProvider | AnthropicProvider] = []
    yield made
    for provider in made:
        await provider.aclose()


@pytest.fixture
def openai_provider(
    vendor: tuple[str, VendorEmulator], providers: list[OpenAIProvider | AnthropicProvider]
) -> Callable[..., OpenAIProvider]:
    def make(**kwargs: Any) -> OpenAIProvider:
        options: dict[str, Any] = {"api_key": SecretStr(KEY), "base_url": f"{vendor[0]}/v1"}
        provider = OpenAIProvider(
            "qwen2.5-7b-instruct", **(options | {"max_retries": 0, "timeout": 5.0} | kwargs)
        )
        providers.append(provider)
        return provider

    return make


@pytest.fixture
def anthropic_provider(
    vendor: tuple[str, VendorEmulator], providers: list[OpenAIProvider | AnthropicProvider]
) -> Callable[..., AnthropicProvider]:
    def make(**kwargs: Any) -> AnthropicProvider:
        options: dict[str, Any] = {"api_key": SecretStr(KEY), "base_url": vendor[0]}
        provider = AnthropicProvider(
            "claude-test", **(options | {"max_retries": 0, "timeout": 5.0} | kwargs)
        )
        providers.append(provider)
        return provider

    return make


# --- OpenAI-compatible ------------------------------------------------------------------------
async def test_openai_request_and_tool_calls(
    emulator: VendorEmulator, openai_provider: Callable[..., OpenAIProvider]
) -> None:
    emulator.replies.append(
        Reply(tool_calls=[("send_email", {"to": "zhangsan@example.com", "subject": "Hi"})])
    )
    provider = openai_provider(input_price_per_mtok=0.5, output_price_per_mtok=1.5)
    assert isinstance(provider, Provider)
    turn = await provider.complete(CONVERSATION, TOOLS)

    (request,) = emulator.requests
    assert request.api == "openai" and request.headers["authorization"] == f"Bearer {KEY}"
    body = request.body
    assert body["model"] == "qwen2.5-7b-instruct"
    assert body["tools"][0] == {"type": "function", "function": TOOLS[0]}
    assert body["messages"] == [
        {"role": "system", "content": "You automate the CRM."},
        {"role": "user", "content": CONVERSATION[1].content},
        {
            "role": "assistant",
            "content": "On it.",
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {
                        "name": "create_crm_lead",
                        "arguments": '{"name": "Zhang San", "email": "zhangsan@example.com"}',
                    },
                },
                {
                    "id": "call_b",
                    "type": "function",
                    "function": {
                        "name": "send_email",
                        "arguments": '{"to": "zhangsan@example.com"}',
                    },
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": '{"lead_id": 42}'},
        {
            "role": "tool",
            "tool_call_id": "call_b",
            "content": '{"error": "SMTP is down", "retryable": true}',
        },
    ]

    assert turn.text is None and turn.model == "qwen2.5-7b-instruct"
    (call,) = turn.tool_calls
    assert call.name == "send_email" and call.id.startswith("call_")
    assert call.arguments == {"to": "zhangsan@example.com", "subject": "Hi"}
    assert turn.usage == Usage(11, 7)
    assert cost(provider, turn.usage) == pytest.approx((11 * 0.5 + 7 * 1.5) / 1e6)


async def test_openai_final_text_without_tools(
    emulator: VendorEmulator, openai_provider: Callable[..., OpenAIProvider]
) -> None:
    emulator.replies.append(Reply("Lead created and email sent.", input_tokens=120))
    provider = openai_provider(max_tokens=256)
    turn = await provider.complete([Message("user", "hello")], [])
    assert turn.text == "Lead created and email sent." and turn.tool_calls == ()
    assert turn.usage == Usage(120, 7)
    body = emulator.requests[0].body
    assert "tools" not in body and body["max_tokens"] == 256


@pytest.mark.parametrize(
    ("reply", "retryable", "message"),
    [
        (Reply(status=429, error="slow down"), True, "openai answered 429: slow down"),
        (Reply(status=503, error="overloaded"), True, "answered 503"),
        (Reply(status=400, error="bad tool schema"), False, "answered 400: bad tool schema"),
        (Reply(status=401, error="invalid key"), False, "answered 401"),
        (Reply(tool_calls=[("send_email", "{not json")]), True, "not a JSON object"),
    ],
    ids=["429", "503", "400", "401", "malformed-arguments"],
)
async def test_openai_errors(
    emulator: VendorEmulator,
    openai_provider: Callable[..., OpenAIProvider],
    reply: Reply,
    retryable: bool,
    message: str,
) -> None:
    emulator.replies.append(reply)
    with pytest.raises(ProviderError, match=message) as failed:
        await openai_provider().complete([Message("user", "hi")], TOOLS)
    assert failed.value.retryable is retryable
    assert KEY not in str(failed.value)


async def test_openai_timeout_and_unreachable(
    emulator: VendorEmulator, openai_provider: Callable[..., OpenAIProvider]
) -> None:
    emulator.replies.append(Reply("late", delay=3))
    with pytest.raises(ProviderError, match="did not answer in time") as timed_out:
        await openai_provider(timeout=0.5).complete([Message("user", "hi")], [])
    assert timed_out.value.retryable is True
    gone = openai_provider(base_url=f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(ProviderError, match="cannot reach the model") as refused:
        await gone.complete([Message("user", "hi")], [])
    assert refused.value.retryable is True


async def test_openai_sdk_retries_a_server_error(
    emulator: VendorEmulator, openai_provider: Callable[..., OpenAIProvider]
) -> None:
    emulator.replies.extend([Reply(status=500), Reply("recovered")])
    turn = await openai_provider(max_retries=1).complete([Message("user", "hi")], [])
    assert turn.text == "recovered" and len(emulator.requests) == 2


# --- Anthropic --------------------------------------------------------------------------------
async def test_anthropic_request_and_tool_use(
    emulator: VendorEmulator, anthropic_provider: Callable[..., AnthropicProvider]
) -> None:
    emulator.replies.append(
        Reply("Retrying the email.", tool_calls=[("send_email", {"to": "zhangsan@example.com"})])
    )
    provider = anthropic_provider(max_tokens=512)
    turn = await provider.complete(CONVERSATION, TOOLS)

    (request,) = emulator.requests
    assert request.api == "anthropic"
    sent = request.headers.get("x-api-key") or request.headers.get("authorization")
    assert sent in (KEY, f"Bearer {KEY}")  # the SDK's choice of header varies by version
    body = request.body
    assert body["model"] == "claude-test" and body["max_tokens"] == 512
    assert body["system"] == "You automate the CRM."
    assert body["tools"][0] == {
        "name": "create_crm_lead",
        "description": "Create a sales lead.",
        "input_schema": TOOLS[0]["parameters"],
    }
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": CONVERSATION[1].content}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "On it."},
                {"type": "tool_use", "id": "call_a", "name": LEAD.name, "input": LEAD.arguments},
                {"type": "tool_use", "id": "call_b", "name": EMAIL.name, "input": EMAIL.arguments},
            ],
        },
        {  # both results of the turn in one user message; the ToolError flagged
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "call_a",
                    "content": '{"lead_id": 42}',
                    "is_error": False,
                },
                {
                    "type": "tool_result",
                    "tool_use_id": "call_b",
                    "content": '{"error": "SMTP is down", "retryable": true}',
                    "is_error": True,
                },
            ],
        },
    ]

    assert turn.text == "Retrying the email." and turn.model == "claude-test"
    (call,) = turn.tool_calls
    assert call.name == "send_email" and call.id.startswith("toolu_")
    assert call.arguments == {"to": "zhangsan@example.com"}
    assert turn.usage == Usage(11, 7)


@pytest.mark.parametrize(
    ("status", "retryable"), [(529, True), (429, True), (500, True), (400, False), (401, False)]
)
async def test_anthropic_errors(
    emulator: VendorEmulator,
    anthropic_provider: Callable[..., AnthropicProvider],
    status: int,
    retryable: bool,
) -> None:
    emulator.replies.append(Reply(status=status, error="scripted failure"))
    with pytest.raises(ProviderError, match=f"answered {status}") as failed:
        await anthropic_provider().complete([Message("user", "hi")], [])
    assert failed.value.retryable is retryable


async def test_anthropic_timeout(
    emulator: VendorEmulator, anthropic_provider: Callable[..., AnthropicProvider]
) -> None:
    emulator.replies.append(Reply("late", delay=3))
    with pytest.raises(ProviderError, match="did not answer in time") as timed_out:
        await anthropic_provider(timeout=0.5).complete([Message("user", "hi")], [])
    assert timed_out.value.retryable is True


# --- configuration ------------------------------------------------------------------------------
def test_no_provider_configured(tmp_path: Path) -> None:
    assert provider_from_settings(Settings(data_dir=tmp_path)) is None
    assert provider_from_settings(Settings(data_dir=tmp_path, agent_provider="none")) is None


async def test_provider_from_settings(
    vendor: tuple[str, VendorEmulator],
    emulator: VendorEmulator,
    providers: list[OpenAIProvider | AnthropicProvider],
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    settings = Settings(
        data_dir=tmp_path,
        agent_provider="openai",
        agent_model="qwen2.5:7b",
        agent_base_url=f"{vendor[0]}/v1",
        agent_api_key_file=key_file,
        agent_input_price_per_mtok=0.2,
        agent_output_price_per_mtok=0.6,
        agent_max_retries=0,
    )
    assert KEY not in repr(settings)
    provider = provider_from_settings(settings)
    assert isinstance(provider, OpenAIProvider)
    providers.append(provider)
    assert (provider.input_price_per_mtok, provider.output_price_per_mtok) == (0.2, 0.6)
    emulator.replies.append(Reply("ok"))
    assert (await provider.complete([Message("user", "hi")], [])).text == "ok"
    assert emulator.requests[-1].headers["authorization"] == f"Bearer {KEY}"
    assert emulator.requests[-1].body["model"] == "qwen2.5:7b"

    claude = provider_from_settings(
        Settings(
            data_dir=tmp_path,
            agent_provider="anthropic",
            agent_model="claude-test",
            agent_base_url=vendor[0],
            agent_api_key=SecretStr(KEY),
        )
    )
    assert isinstance(claude, AnthropicProvider) and claude.max_tokens == 4096
    providers.append(claude)

    local = provider_from_settings(  # a self-hosted endpoint needs no key
        Settings(
            data_dir=tmp_path,
            agent_provider="openai",
            agent_model="m",
            agent_base_url="http://127.0.0.1:9/v1",
        )
    )
    assert isinstance(local, OpenAIProvider)
    providers.append(local)


def make_test_model(settings: Settings) -> TestModel:
    return TestModel(["scripted"])


def test_provider_from_an_import_path_and_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = f"{__name__}:make_test_model"
    assert isinstance(
        provider_from_settings(Settings(data_dir=tmp_path, agent_provider=path)), TestModel
    )
    with pytest.raises(ValueError, match="needs AIASSIST_AGENT_MODEL"):
        provider_from_settings(Settings(data_dir=tmp_path, agent_provider="openai"))
    with pytest.raises(ValueError, match="is not openai, anthropic, none"):
        provider_from_settings(Settings(data_dir=tmp_path, agent_provider="gpt4"))
    with pytest.raises(ValueError, match="cannot import"):
        provider_from_settings(Settings(data_dir=tmp_path, agent_provider="no.such:thing"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="no API key for the OpenAI provider"):
        provider_from_settings(
            Settings(data_dir=tmp_path, agent_provider="openai", agent_model="m")
        )
