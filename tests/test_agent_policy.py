"""Policy, redaction, rate limits and the test model, each on its own."""

from __future__ import annotations

import os
from typing import Any

import pytest
from redis import Redis

from aiassist.agent import RateLimit, Risk, tool
from aiassist.agent.policy import Action, Policy, PolicyError, service_identity
from aiassist.agent.providers.base import Message
from aiassist.agent.providers.test import TestModel, call, script_from_json
from aiassist.agent.ratelimit import MemoryRateLimiter, RedisRateLimiter
from aiassist.agent.redaction import Redactor


@tool(risk=Risk.WRITE, scopes=["agent:run"])
def refund(order_id: str, amount: float) -> dict[str, Any]:
    """Refund an order."""
    return {}


@tool(risk=Risk.IRREVERSIBLE)
def delete_lead(lead_id: str) -> None:
    """Delete a lead."""


@tool(risk=Risk.READ)
def find(email: str) -> None:
    """Find a customer."""


POLICY = Policy.from_yaml(
    """
write: allow
rules:
  - tool: refund
    when: {arg: amount, op: ">", value: 100}
    action: approve
    reason: refunds above 100 need a person
  - tool: "*"
    when: {arg: email, op: matches, value: "@competitor\\\\.com$"}
    action: deny
"""
)
BOT = service_identity("bot", ["agent:run"])
ALL = frozenset({"refund", "delete_lead", "find"})


def decide(
    name: str, arguments: dict[str, Any], *, principal: Any = BOT, allowed: Any = ALL
) -> Any:
    tools = {"refund": refund, "delete_lead": delete_lead, "find": find}
    return POLICY.decide(
        name, arguments, tool=tools.get(name), principal=principal, allowed=allowed
    )


def test_rules_per_tool_and_argument() -> None:
    assert decide("refund", {"order_id": "o", "amount": 20}).action is Action.ALLOW
    big = decide("refund", {"order_id": "o", "amount": 250})
    assert big.action is Action.APPROVE and big.reason == "refunds above 100 need a person"
    assert decide("find", {"email": "a@example.com"}).action is Action.ALLOW
    assert decide("find", {"email": "spy@competitor.com"}).action is Action.DENY


def test_fail_closed() -> None:
    # a rule that cannot be evaluated matches: the stricter answer wins
    assert decide("refund", {"order_id": "o"}).action is Action.APPROVE
    assert decide("refund", {"order_id": "o", "amount": "lots"}).action is Action.APPROVE
    assert decide("unknown", {}, allowed=ALL | {"unknown"}).action is Action.DENY
    assert decide("find", {"email": "x"}, allowed=frozenset()).action is Action.DENY
    nobody = service_identity("nobody", [])
    denied = decide("refund", {"order_id": "o", "amount": 1}, principal=nobody)
    assert denied.action is Action.DENY and "agent:run" in denied.reason
    admin = service_identity("root", ["admin"])
    assert decide("refund", {"order_id": "o", "amount": 1}, principal=admin).action is Action.ALLOW


def test_irreversible_always_needs_approval() -> None:
    assert decide("delete_lead", {"lead_id": "L1"}).action is Action.APPROVE
    lenient = Policy.from_yaml("rules: [{tool: delete_lead, action: allow}]")
    verdict = lenient.decide(
        "delete_lead", {"lead_id": "L1"}, tool=delete_lead, principal=BOT, allowed=ALL
    )
    assert verdict.action is Action.APPROVE
    strict = Policy.from_yaml("write: approve")
    verdict = strict.decide(
        "refund", {"order_id": "o", "amount": 1}, tool=refund, principal=BOT, allowed=ALL
    )
    assert verdict.action is Action.APPROVE


@pytest.mark.parametrize(
    "text",
    [
        "rules: [{tool: refund, action: explode}]",
        "rules: [{tool: refund, action: deny, when: {arg: amount, op: '~', value: 1}}]",
        "surprise: true",
        "rules: [",
        "write: deny",
    ],
)
def test_bad_policy_files_are_refused(text: str) -> None:
    with pytest.raises(PolicyError):
        Policy.from_yaml(text)


def test_redaction() -> None:
    redact = Redactor(["sk-live-abcdef123"])
    data = {
        "password": "hunter22",
        "api_key": "k",
        "X-API-Key": "k",
        "Authorization": "Bearer x",
        "input_tokens": 12,
        "note": "use sk-live-abcdef123 please",
        "nested": [{"access_token": "t", "ok": 1}],
    }
    assert redact(data) == {
        "password": "[redacted]",
        "api_key": "[redacted]",
        "X-API-Key": "[redacted]",
        "Authorization": "[redacted]",
        "input_tokens": 12,
        "note": "use [redacted] please",
        "nested": [{"access_token": "[redacted]", "ok": 1}],
    }


def test_memory_rate_limit() -> None:
    limiter = MemoryRateLimiter()
    limit = RateLimit("crm", calls=2, per_seconds=60)
    assert [limiter.acquire(limit) for _ in range(2)] == [0.0, 0.0]
    assert 0 < limiter.acquire(limit) <= 30


@pytest.mark.redis
def test_redis_rate_limit_is_one_budget_for_every_limiter() -> None:
    url = "redis://127.0.0.1:6379/0"
    key = f"test-{os.urandom(4).hex()}"
    limit = RateLimit(key, calls=3, per_seconds=60)
    one, two = RedisRateLimiter.from_url(url), RedisRateLimiter.from_url(url)
    waits = [one.acquire(limit), two.acquire(limit), one.acquire(limit), two.acquire(limit)]
    assert waits[:3] == [0.0, 0.0, 0.0] and 0 < waits[3] <= 20
    assert Redis.from_url(url).pttl(f"aiassist:ratelimit:{key}") > 0  # never left behind


async def test_the_test_model_plays_its_script_from_the_conversation() -> None:
    model = TestModel([[call("find", email="a@b.c")], lambda messages: "done"])
    first = await model.complete([Message("user", "go")], [find.spec()])
    assert first.tool_calls[0].name == "find" and first.tool_calls[0].id == "call_0_0"
    assert first.usage.input_tokens > 0 and first.usage.output_tokens > 0
    history = [
        Message("user", "go"),
        Message("assistant", None, first.tool_calls),
        Message("tool", {"ok": True}, call_id="call_0_0"),
    ]
    assert (await model.complete(history, [])).text == "done"
    ended = [*history, Message("assistant", "done")]
    assert (await model.complete(ended, [])).text == "The script has no more turns."


@pytest.mark.parametrize("bad", [[], "text", [{"tool_calls": [{"name": 1}]}], [{"x": 1}], [3]])
def test_bad_scripts_are_refused(bad: Any) -> None:
    with pytest.raises(ValueError):
        script_from_json(bad)
