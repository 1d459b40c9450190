"""The bot module's settings (`AIASSIST_BOT_*`, or `[bot]` in the config file)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from aiassist.settings import ModuleSettings

__all__ = ["Action", "BotSettings", "Thresholds"]

Action = Literal["allow", "challenge", "rate_limit", "block"]

_DAY = 86_400.0


class BotSettings(ModuleSettings):
    model_config = SettingsConfigDict(env_prefix="AIASSIST_BOT_")

    challenge_at: float = Field(0.5, ge=0, le=1, description="P(bot) from which to challenge.")
    rate_limit_at: float = Field(0.8, ge=0, le=1, description="P(bot) from which to slow down.")
    block_at: float = Field(0.95, ge=0, le=1, description="P(bot) from which to refuse.")
    rule_rate_per_min: float = Field(
        60.0, gt=0, le=1e6, description="The fallback's rate limit: pages a minute."
    )
    rule_min_requests: int = Field(
        20, ge=1, le=1_000_000, description="Requests a session needs before the rate counts."
    )
    session_idle_s: float = Field(
        1800.0, gt=0, le=_DAY, description="A session ends after this long without requests."
    )
    session_window_s: float = Field(
        6 * 3600.0, gt=0, le=7 * _DAY, description="A session ends this long after it began."
    )
    login_paths: list[str] = Field(
        ["/login", "/signin", "/api/login", "/auth/login", "/account/login"],
        max_length=100,
        description="Paths whose POSTs are login attempts (401/403 answers count as failures).",
    )


@dataclass(frozen=True)
class Thresholds:
    """P(bot) from which each action applies."""

    challenge_at: float = 0.5
    rate_limit_at: float = 0.8
    block_at: float = 0.95

    @classmethod
    def from_settings(cls, settings: BotSettings) -> Thresholds:
        return cls(settings.challenge_at, settings.rate_limit_at, settings.block_at)

    def action(self, p_bot: float) -> Action:
        if p_bot >= self.block_at:
            return "block"
        if p_bot >= self.rate_limit_at:
            return "rate_limit"
        return "challenge" if p_bot >= self.challenge_at else "allow"
