"""The test model: a scripted provider for tests, dry runs and evaluation without a network.

It plays a script, one entry per model turn. An entry is final text, a list of tool calls,
or a function of the conversation so far that returns one of those (to react to a tool's
result or error). Which entry comes next is read from the conversation itself (the number
of assistant turns in it), so a run resumed in another process continues the script where
it stopped. Token usage is estimated from the text sizes (about four characters a token),
so cost reports have plausible figures.

    TestModel([
        [call("create_crm_lead", name="Zhang San", email="zhangsan@example.com")],
        [call("send_email", to="zhangsan@example.com", subject="Hello")],
        "Lead created and intro email sent.",
    ])

A script made only of text and calls is JSON (`{"text": ...}`, `{"tool_calls": [...]}`), so
it can be sent to the API and stored with a run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

from aiassist.agent.providers.base import Message, ModelTurn, ProviderError, ToolCall, Usage

__all__ = ["Entry", "TestModel", "call", "script_from_json"]

#: One turn of a script: final text, tool calls, or a function of the conversation.
Entry: TypeAlias = "str | ToolCall | Sequence[ToolCall] | ModelTurn | dict[str, Any] | Callable[[Sequence[Message]], Entry]"  # noqa: E501

_CHARS_PER_TOKEN = 4
MAX_SCRIPT_TURNS = 200


def call(name: str, /, **arguments: Any) -> ToolCall:
    """A tool call for a script; its id is assigned when the turn is played."""
    return ToolCall(id="", name=name, arguments=arguments)


def script_from_json(data: Any) -> list[Entry]:
    """A script as the API receives it: a list of `"text"`, `{"text": ...}` or
    `{"tool_calls": [{"name": ..., "arguments": {...}}]}`; `ValueError` names a bad entry."""
    if not isinstance(data, list) or not data or len(data) > MAX_SCRIPT_TURNS:
        raise ValueError(f"a script is a list of 1 to {MAX_SCRIPT_TURNS} turns")
    return [_from_json(i, entry) for i, entry in enumerate(data)]


def _from_json(index: int, entry: Any) -> Entry:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and set(entry) <= {"text", "tool_calls"}:
        calls = entry.get("tool_calls") or []
        text = entry.get("text")
        if isinstance(calls, list) and (text is None or isinstance(text, str)):
            parsed = []
            for c in calls:
                if not (
                    isinstance(c, dict)
                    and isinstance(c.get("name"), str)
                    and isinstance(c.get("arguments", {}), dict)
                    and set(c) <= {"name", "arguments"}
                ):
                    break
                parsed.append(ToolCall(id="", name=c["name"], arguments=c.get("arguments", {})))
            else:
                if parsed or text is not None:
                    return ModelTurn(text=text, tool_calls=tuple(parsed))
    raise ValueError(
        f"script turn {index}: expected a string, {{'text': ...}} or "
        "{'tool_calls': [{'name': ..., 'arguments': {...}}]}"
    )


def _estimate_tokens(value: Any) -> int:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return max(1, len(text) // _CHARS_PER_TOKEN)


class TestModel:
    """A `Provider` that answers from a script instead of a language model.

    When the script is exhausted it ends the run with `final_text`. Prices are nominal
    (per million tokens) so that cost figures are exercised; set them to model a real one.
    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(
        self,
        script: Sequence[Entry],
        *,
        name: str = "test",
        final_text: str = "The script has no more turns.",
        input_price_per_mtok: float = 0.5,
        output_price_per_mtok: float = 1.5,
    ) -> None:
        self.script = list(script)
        self.name = name
        self.model = f"{name}-model"
        self.final_text = final_text
        self.input_price_per_mtok = input_price_per_mtok
        self.output_price_per_mtok = output_price_per_mtok

    async def complete(
        self, messages: Sequence[Message], tools: Sequence[dict[str, Any]]
    ) -> ModelTurn:
        turn_index = sum(1 for m in messages if m.role == "assistant")
        if turn_index >= len(self.script):
            turn = ModelTurn(text=self.final_text)
        else:
            turn = self._turn(self.script[turn_index], messages)
        calls = tuple(
            ToolCall(id=c.id or f"call_{turn_index}_{i}", name=c.name, arguments=c.arguments)
            for i, c in enumerate(turn.tool_calls)
        )
        prompt = [
            {"role": m.role, "content": m.content, "calls": [c.name for c in m.tool_calls]}
            for m in messages
        ]
        answer = [turn.text, [(c.name, c.arguments) for c in calls]]
        usage = Usage(_estimate_tokens([prompt, list(tools)]), _estimate_tokens(answer))
        return ModelTurn(text=turn.text, tool_calls=calls, usage=usage, model=self.model)

    def _turn(self, entry: Entry, messages: Sequence[Message]) -> ModelTurn:
        for _ in range(10):  # a function may return another function; not forever
            if callable(entry):
                entry = entry(messages)
                continue
            if isinstance(entry, ModelTurn):
                return entry
            if isinstance(entry, str):
                return ModelTurn(text=entry)
            if isinstance(entry, ToolCall):
                return ModelTurn(text=None, tool_calls=(entry,))
            if isinstance(entry, dict):
                turn = _from_json(0, entry)
                assert isinstance(turn, ModelTurn)
                return turn
            if isinstance(entry, list | tuple) and all(isinstance(c, ToolCall) for c in entry):
                return ModelTurn(text=None, tool_calls=tuple(entry))
            break
        raise ProviderError(f"the test model's script has an entry it cannot play: {entry!r}")
