"""Scoring requests as they arrive: the part of the bot module that framework adapters share.

`BotGuard.score` folds a request into its session and asks the AI layer (the
`AIAssistService` singleton, so the model or, without one, the rule fallback) for P(bot);
`BotGuard.answered` folds the status in once the app has answered and stores the session.
Thresholds can differ per route (a login page may challenge earlier than a product page).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiassist.modules.bot import BotDecision, BotSettings, module
from aiassist.modules.bot.session import Hit, Session
from aiassist.modules.bot.sessions import MemorySessions, SessionStore
from aiassist.modules.bot.settings import Thresholds
from aiassist.sdk import AIAssistService

__all__ = ["BotGuard", "Scored", "Thresholds"]


@dataclass
class Scored:
    """A request's score and what the guard needs to finish it."""

    key: str
    session: Session
    decision: BotDecision


@dataclass
class BotGuard:
    settings: BotSettings = field(default_factory=lambda: module.config)
    store: SessionStore = field(default_factory=MemorySessions)
    #: Path prefixes with their own thresholds; the longest matching prefix wins.
    routes: dict[str, Thresholds] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.default = Thresholds.from_settings(self.settings)
        self.login_paths = frozenset(self.settings.login_paths)
        self._prefixes = sorted(self.routes, key=len, reverse=True)

    def thresholds(self, path: str) -> Thresholds:
        for prefix in self._prefixes:
            if path.startswith(prefix):
                return self.routes[prefix]
        return self.default

    async def score(self, key: str, hit: Hit) -> Scored:
        session = self._fold(await self.store.load(key), hit)
        decision = await AIAssistService.instance().adecide(module, session.features())
        return self._scored(key, session, decision, hit)

    def score_sync(self, key: str, hit: Hit) -> Scored:
        """`score` for a WSGI app (Django): the store's blocking door, a plain decide."""
        session = self._fold(self.store.get(key), hit)
        decision = AIAssistService.instance().decide(module, session.features())
        return self._scored(key, session, decision, hit)

    async def answered(self, scored: Scored, status: int) -> None:
        scored.session.answered_with(status)
        await self.store.save(scored.key, scored.session)

    def answered_sync(self, scored: Scored, status: int) -> None:
        scored.session.answered_with(status)
        self.store.put(scored.key, scored.session)

    def _fold(self, session: Session | None, hit: Hit) -> Session:
        s = self.settings
        if session is None or session.expired(hit.at, s.session_idle_s, s.session_window_s):
            session = Session()
        session.observe(hit, self.login_paths)
        return session

    def _scored(self, key: str, session: Session, decision: BotDecision, hit: Hit) -> Scored:
        decision.action = self.thresholds(hit.path).action(decision.p_bot)
        return Scored(key, session, decision)
