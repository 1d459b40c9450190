"""Bot scoring as pure ASGI middleware, for FastAPI and Starlette.

    app.add_middleware(BotMiddleware, guard=BotGuard(), act=True)

Each request is folded into its session and scored before the app sees it; the decision
is put on the request for the app's own auth (`request.state.bot`, a `BotDecision`), and
the session's id as `request.state.bot_session`, for `BotGuard.confirm` once the app learns
what the session was (a challenge passed, a purchase made). With
`act`, a session in the block band gets 403, in the rate-limit band 429 with Retry-After,
and in the challenge band the `challenge` ASGI app (a CAPTCHA page, a proof of work) when
one is given. Scoring never fails a request: if it raises, the request goes on unscored
(`request.state.bot` is None) and the error is logged.
"""

from __future__ import annotations

import json
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aiassist.modules.bot.guard import BotGuard, Scored
from aiassist.modules.bot.session import Hit, session_key

__all__ = ["BotMiddleware"]

log = logging.getLogger("aiassist.bot")

_MAX_UA = 1000  # bytes of the user agent the features read


def _hit(scope: Scope) -> tuple[Hit, dict[bytes, bytes]]:
    headers: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        headers.setdefault(name, value)  # the first of a repeated header
    query = scope.get("query_string", b"")
    path = scope["path"] + ("?" + query.decode("latin-1") if query else "")
    return (
        Hit(
            at=time.time(),
            method=scope["method"],
            path=path[:512],
            user_agent=headers.get(b"user-agent", b"")[:_MAX_UA].decode("latin-1"),
            referer=b"referer" in headers,
            header_count=len(scope["headers"]),
            accept_language=b"accept-language" in headers,
            sec_fetch=b"sec-fetch-mode" in headers or b"sec-fetch-site" in headers,
            cookie=b"cookie" in headers,
            http2=scope.get("http_version", "1.1") not in ("1.0", "1.1"),
        ),
        headers,
    )


class BotMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        guard: BotGuard | None = None,
        *,
        act: bool = False,
        challenge: ASGIApp | None = None,
        session_cookie: str | None = None,
        trust_forwarded: bool = False,
        retry_after_s: int = 30,
    ) -> None:
        self.app = app
        self.guard = guard or BotGuard()
        self.act, self.challenge, self.retry_after_s = act, challenge, retry_after_s
        self.cookie = session_cookie.encode() if session_cookie else None
        self.trust_forwarded = trust_forwarded

    def _key(self, scope: Scope, hit: Hit, headers: dict[bytes, bytes]) -> str:
        client = scope.get("client") or ("", 0)
        address = str(client[0])
        if self.trust_forwarded and b"x-forwarded-for" in headers:
            address = headers[b"x-forwarded-for"].split(b",")[0].strip().decode("latin-1")
        return session_key(address, hit.user_agent, self._cookie(headers))

    def _cookie(self, headers: dict[bytes, bytes]) -> str | None:
        if self.cookie is None or b"cookie" not in headers:
            return None
        for part in headers[b"cookie"].split(b";"):
            name, _, value = part.strip().partition(b"=")
            if name == self.cookie and value:
                return value.decode("latin-1")
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        key: str | None = None
        scored: Scored | None = None
        try:
            hit, headers = _hit(scope)
            key = self._key(scope, hit, headers)
            scored = await self.guard.score(key, hit)
        except Exception:
            log.exception("bot scoring failed; the request goes on unscored")
        state = scope.setdefault("state", {})
        state["bot"], state["bot_session"] = (scored.decision if scored else None), key
        if scored is None:
            await self.app(scope, receive, send)
            return
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._answer(scored, scope, receive, send_status)
        finally:
            try:
                await self.guard.answered(scored, status or 500)
            except Exception:
                log.exception("bot: storing the session failed")

    async def _answer(self, scored: Scored, scope: Scope, receive: Receive, send: Send) -> None:
        action = scored.decision.action if self.act else "allow"
        if action == "block":
            await _refuse(send, 403, "refused: this client looks automated", {})
        elif action == "rate_limit":
            retry = {"retry-after": str(self.retry_after_s)}
            await _refuse(send, 429, "too many requests from this client", retry)
        elif action == "challenge" and self.challenge is not None:
            await self.challenge(scope, receive, send)
        else:
            await self.app(scope, receive, send)


async def _refuse(send: Send, status: int, detail: str, extra: dict[str, str]) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
