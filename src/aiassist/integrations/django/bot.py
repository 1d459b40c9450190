"""Django middleware of the bot module: scores each request and puts the decision on it
(`request.bot`, a `BotDecision`, or None if scoring failed) for the app's own auth, and
the session's id (`request.bot_session`) for `bot_guard().confirm_sync(...)` once the app
learns what the session was.

    INSTALLED_APPS = [..., "aiassist.integrations.django"]   # sets the AI layer up
    MIDDLEWARE = ["aiassist.integrations.django.bot.BotMiddleware", ...]
    AIASSIST_BOT = {
        "act": False,                    # True: 403 for block, 429 for rate_limit
        "session_cookie": "sessionid",   # else: a digest of address and user agent
        "redis_url": None,               # sessions shared by processes; else in memory
        "routes": {"/login": {"challenge_at": 0.3, "rate_limit_at": 0.6, "block_at": 0.9}},
        "trust_forwarded": False,        # behind a proxy that sets X-Forwarded-For
        "retry_after_s": 30,
    }

Scoring never fails a request: an error is logged and the request goes on unscored.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

from aiassist.modules.bot import module
from aiassist.modules.bot.guard import BotGuard, Scored
from aiassist.modules.bot.session import Hit, session_key
from aiassist.modules.bot.sessions import MemorySessions, RedisSessions, SessionStore
from aiassist.modules.bot.settings import Thresholds

__all__ = ["BotMiddleware", "bot_guard"]

log = logging.getLogger("aiassist.bot")
_guard: BotGuard | None = None
_lock = threading.Lock()


def _options() -> dict[str, Any]:
    return dict(getattr(settings, "AIASSIST_BOT", {}))


def bot_guard() -> BotGuard:
    """The process's guard, built once from `settings.AIASSIST_BOT`."""
    global _guard
    with _lock:
        if _guard is None:
            options = _options()
            config = module.config
            url = options.get("redis_url")
            store: SessionStore = (
                RedisSessions(url, ttl_s=config.session_idle_s) if url else MemorySessions()
            )
            routes = {p: Thresholds(**t) for p, t in options.get("routes", {}).items()}
            _guard = BotGuard(config, store, routes)
        return _guard


def _hit(request: HttpRequest) -> Hit:
    meta = request.META
    query = meta.get("QUERY_STRING", "")
    return Hit(
        at=time.time(),
        method=request.method or "GET",
        path=(request.path + ("?" + query if query else ""))[:512],
        user_agent=str(meta.get("HTTP_USER_AGENT", ""))[:1000],
        referer="HTTP_REFERER" in meta,
        header_count=sum(1 for k in meta if k.startswith("HTTP_")),
        accept_language="HTTP_ACCEPT_LANGUAGE" in meta,
        sec_fetch="HTTP_SEC_FETCH_MODE" in meta or "HTTP_SEC_FETCH_SITE" in meta,
        cookie="HTTP_COOKIE" in meta,
        http2=str(meta.get("SERVER_PROTOCOL", "")).startswith(("HTTP/2", "HTTP/3")),
    )


class BotMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.guard = bot_guard()
        options = _options()
        self.act = bool(options.get("act", False))
        self.cookie: str | None = options.get("session_cookie")
        self.trust_forwarded = bool(options.get("trust_forwarded", False))
        self.retry_after_s = int(options.get("retry_after_s", 30))

    def _key(self, request: HttpRequest, hit: Hit) -> str:
        address = str(request.META.get("REMOTE_ADDR", ""))
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR")
        if self.trust_forwarded and forwarded:
            address = str(forwarded).split(",")[0].strip()
        cookie = request.COOKIES.get(self.cookie) if self.cookie else None
        return session_key(address, hit.user_agent, cookie or None)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        key: str | None = None
        scored: Scored | None = None
        try:
            hit = _hit(request)
            key = self._key(request, hit)
            scored = self.guard.score_sync(key, hit)
        except Exception:
            log.exception("bot scoring failed; the request goes on unscored")
        request.bot, request.bot_session = (scored.decision if scored else None), key
        if scored is None:
            return self.get_response(request)
        response = self._answer(scored, request)
        try:
            self.guard.answered_sync(scored, response.status_code)
        except Exception:
            log.exception("bot: storing the session failed")
        return response

    def _answer(self, scored: Scored, request: HttpRequest) -> HttpResponse:
        action = scored.decision.action if self.act else "allow"
        if action == "block":
            return JsonResponse({"detail": "refused: this client looks automated"}, status=403)
        if action == "rate_limit":
            response = JsonResponse({"detail": "too many requests from this client"}, status=429)
            response["Retry-After"] = str(self.retry_after_s)
            return response
        return self.get_response(request)
