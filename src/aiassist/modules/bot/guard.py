"""Scoring requests as they arrive: the part of the bot module that framework adapters share.

`BotGuard.score` folds a request into its session and asks the AI layer (the
`AIAssistService` singleton, so the model or, without one, the rule fallback) for P(bot);
`BotGuard.answered` folds the status in once the app has answered and stores the session.
Thresholds can differ per route (a login page may challenge earlier than a product page).

Scoring every request stores none of those decisions (that would be a row a request).
When the app learns what a session was (a challenge passed or failed, a purchase, a
manual label) `BotGuard.confirm` decides on the session as it stands and stores that
decision with the outcome: the examples the daemon retrains on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiassist.modules.bot import BotDecision, BotOutcome, BotSettings, module
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
        service = AIAssistService.instance()
        decision = await service.adecide(module, session.features(), record=False)
        return self._scored(key, session, decision, hit)

    def score_sync(self, key: str, hit: Hit) -> Scored:
        """`score` for a WSGI app (Django): the store's blocking door, a plain decide."""
        session = self._fold(self.store.get(key), hit)
        decision = AIAssistService.instance().decide(module, session.features(), record=False)
        return self._scored(key, session, decision, hit)

    async def answered(self, scored: Scored, status: int) -> None:
        scored.session.answered_with(status)
        await self.store.save(scored.key, scored.session)

    def answered_sync(self, scored: Scored, status: int) -> None:
        scored.session.answered_with(status)
        self.store.put(scored.key, scored.session)

    async def confirm(self, key: str, *, is_bot: bool) -> bool:
        """Report what session `key` turned out to be. False if the session is gone (idle
        past its timeout) or the outcome could not be stored."""
        session = await self.store.load(key)
        if session is None:
            return False
        service = AIAssistService.instance()
        decision = await service.adecide(module, session.features())
        return await service.arecord_outcome(
            module, decision.decision_id, BotOutcome(is_bot=is_bot)
        )

    def confirm_sync(self, key: str, *, is_bot: bool) -> bool:
        """`confirm` for a WSGI app (Django)."""
        session = self.store.get(key)
        if session is None:
            return False
        service = AIAssistService.instance()
        decision = service.decide(module, session.features())
        return service.record_outcome(module, decision.decision_id, BotOutcome(is_bot=is_bot))

    def _fold(self, session: Session | None, hit: Hit) -> Session:
        s = self.settings
        if session is None or session.expired(hit.at, s.session_idle_s, s.session_window_s):
            session = Session()
        session.observe(hit, self.login_paths)
        return session

    def _scored(self, key: str, session: Session, decision: BotDecision, hit: Hit) -> Scored:
        decision.action = self.thresholds(hit.path).action(decision.p_bot)
        return Scored(key, session, decision)
