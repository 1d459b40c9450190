"""A test double of the LLM vendors' HTTP APIs: OpenAI chat completions and Anthropic messages.

`VendorEmulator` is a small FastAPI app that answers `POST /v1/chat/completions` and
`POST /v1/messages` from a script of `Reply`s, in each vendor's wire format, and records
every request it receives. Served on loopback, it lets the real SDK-backed providers be
tested end to end (request translation, response parsing, error mapping, retries) and lets
a demo run offline. It is not a model: it knows nothing but its script.

    emulator = VendorEmulator([Reply(tool_calls=[("add", {"a": 1, "b": 2})]), Reply("3")])
    uvicorn.run(emulator.app(), port=8099)   # then base_url="http://127.0.0.1:8099/v1"
"""

from __future__ import annotations

import itertools
import json
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

__all__ = ["RecordedRequest", "Reply", "VendorEmulator"]

_ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}


@dataclass(frozen=True)
class Reply:
    """One scripted answer: text and/or tool calls, or (with `status` >= 400) an error.

    A tool call's arguments may be a string, sent as is (to emulate a model that writes
    malformed JSON); `delay` holds the answer back, to exercise timeouts.
    """

    text: str | None = None
    tool_calls: Sequence[tuple[str, dict[str, Any] | str]] = ()
    status: int = 200
    error: str = "scripted error"
    delay: float = 0.0
    input_tokens: int = 11
    output_tokens: int = 7


@dataclass(frozen=True)
class RecordedRequest:
    api: str  # "openai" or "anthropic"
    headers: dict[str, str]
    body: dict[str, Any]


class VendorEmulator:
    """Plays `replies` in order to whichever vendor API is called; records the requests."""

    def __init__(self, replies: Iterable[Reply] = ()) -> None:
        self.replies: deque[Reply] = deque(replies)
        self.requests: list[RecordedRequest] = []
        self._ids = itertools.count(1)

    def app(self) -> FastAPI:
        app = FastAPI(title="LLM vendor emulator (test double)")

        @app.get("/healthz")
        async def healthz() -> dict[str, bool]:
            return {"ok": True}

        @app.post("/v1/chat/completions")
        async def chat_completions(request: Request) -> JSONResponse:
            reply = await self._next("openai", request)
            if reply.status >= 400:
                error = {"message": reply.error, "type": "scripted", "code": None}
                return JSONResponse({"error": error}, status_code=reply.status)
            return JSONResponse(self._openai(reply, self.requests[-1].body))

        @app.post("/v1/messages")
        async def messages(request: Request) -> JSONResponse:
            reply = await self._next("anthropic", request)
            if reply.status >= 400:
                kind = _ANTHROPIC_ERRORS.get(reply.status, "api_error")
                error = {"type": kind, "message": reply.error}
                return JSONResponse({"type": "error", "error": error}, status_code=reply.status)
            return JSONResponse(self._anthropic(reply, self.requests[-1].body))

        return app

    async def _next(self, api: str, request: Request) -> Reply:
        body = await request.json()
        self.requests.append(RecordedRequest(api, dict(request.headers), body))
        reply = self.replies.popleft() if self.replies else Reply(status=500, error="no reply")
        if reply.delay:
            await anyio.sleep(reply.delay)
        return reply

    def _openai(self, reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": reply.text}
        if reply.tool_calls:
            message["tool_calls"] = [
                {
                    "id": f"call_{next(self._ids)}",
                    "type": "function",
                    "function": {"name": name, "arguments": _arguments(arguments)},
                }
                for name, arguments in reply.tool_calls
            ]
        return {
            "id": f"chatcmpl-{next(self._ids)}",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", ""),
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": "tool_calls" if reply.tool_calls else "stop",
                }
            ],
            "usage": {
                "prompt_tokens": reply.input_tokens,
                "completion_tokens": reply.output_tokens,
                "total_tokens": reply.input_tokens + reply.output_tokens,
            },
        }

    def _anthropic(self, reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if reply.text is not None:
            content.append({"type": "text", "text": reply.text})
        for name, arguments in reply.tool_calls:
            content.append(
                {
                    "type": "tool_use",
                    "id": f"toolu_{next(self._ids)}",
                    "name": name,
                    "input": arguments,
                }
            )
        return {
            "id": f"msg_{next(self._ids)}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", ""),
            "content": content,
            "stop_reason": "tool_use" if reply.tool_calls else "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens},
        }


def _arguments(arguments: dict[str, Any] | str) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments)
