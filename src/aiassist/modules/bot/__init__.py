"""`bot`: the probability that a session is automated, as an input to the app's own auth.

It does not replace authentication; it gives it a better input. Features describe the
session so far (`session.Session` folds each request in): its pace and regularity, what it
fetches (pages or assets, a sweep of sibling paths, robots.txt, 404s), its headers and
login failures, and what its user agent claims. The answer is P(bot), an action band
(allow / challenge / rate_limit / block at `AIASSIST_BOT_*_AT`), and the signals that
stood out. The fallback is today's usual fixed rule, a user-agent list plus a rate limit,
so comparing the model with it is honest.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from pydantic import Field

from aiassist.modules.base import Decision, Features, Module, Outcome
from aiassist.modules.bot.settings import Action, BotSettings, Thresholds
from aiassist.settings import module_settings

__all__ = [
    "Action",
    "BotDecision",
    "BotFeatures",
    "BotModule",
    "BotOutcome",
    "BotSettings",
    "Thresholds",
    "module",
]

log = logging.getLogger("aiassist.bot")


class BotFeatures(Features):
    requests: int = Field(ge=1, le=10_000_000, description="Requests in the session so far.")
    duration_s: float = Field(ge=0, le=7 * 86_400, description="First to last request.")
    rate_per_min: float = Field(
        ge=0,
        le=1e6,
        description="Pages (not assets, which a CDN serves) a minute, over at least a minute.",
    )
    burst_share: float = Field(ge=0, le=1, description="Requests < 0.5 s after the previous.")
    page_gap_mean_s: float = Field(ge=0, le=86_400, description="Mean time between pages.")
    page_gap_cv: float = Field(
        ge=0, le=100, description="Spread of the time between pages (std / mean): low is regular."
    )
    asset_share: float = Field(ge=0, le=1, description="Requests for CSS, JS, images, fonts.")
    error_share: float = Field(ge=0, le=1, description="Answers 4xx.")
    not_found_share: float = Field(ge=0, le=1, description="Answers 404.")
    referer_share: float = Field(ge=0, le=1, description="Requests with a Referer.")
    unique_page_share: float = Field(ge=0, le=1, description="Distinct pages / pages.")
    sibling_share: float = Field(
        ge=0, le=1, description="Page after page under the same parent path: a sweep."
    )
    path_entropy: float = Field(ge=0, le=32, description="Entropy of the pages (bits).")
    robots_hit: bool = Field(description="Fetched /robots.txt.")
    login_attempts: int = Field(ge=0, le=1_000_000, description="POSTs to a login path.")
    login_fail_streak: int = Field(ge=0, le=1_000_000, description="Most failed logins in a row.")
    post_share: float = Field(ge=0, le=1, description="POST requests.")
    headers_seen: bool = Field(
        True,
        description="Whether the headers were seen; false for a log replay (the four "
        "header features below are then 0).",
    )
    header_count_mean: float = Field(ge=0, le=200, description="Headers a request.")
    accept_language_share: float = Field(ge=0, le=1, description="With Accept-Language.")
    sec_fetch_share: float = Field(ge=0, le=1, description="With Sec-Fetch-* (browsers).")
    cookie_share: float = Field(ge=0, le=1, description="With a Cookie.")
    http2_share: float = Field(ge=0, le=1, description="Over HTTP/2 or later.")
    ua_known_bot: bool = Field(description="The user agent names a crawler or a scanner.")
    ua_library: bool = Field(description="The user agent is an HTTP library's default.")
    ua_headless: bool = Field(description="The user agent admits a headless browser.")
    ua_missing: bool = Field(description="No user agent.")
    ua_browser_like: bool = Field(description="The user agent looks like a browser.")


class BotDecision(Decision):
    p_bot: float = Field(ge=0, le=1, description="Probability that the session is automated.")
    action: Action = Field(description="The band P(bot) falls in (thresholds in settings).")
    signals: list[str] = Field(
        default_factory=list, max_length=5, description="What stood out, strongest first."
    )


class BotOutcome(Outcome):
    is_bot: bool = Field(
        description="Confirmed automated (e.g. failed a challenge, manual label) or human "
        "(passed a challenge, made a purchase)."
    )


def _signals(f: BotFeatures) -> list[str]:
    """The traits of the session that bots show and people rarely do, strongest first.

    Each is (strength, text template, value); only the five reported are formatted."""
    enough = f.requests >= 5
    found = [
        (3.0 * f.ua_known_bot, "user agent names a crawler", 0.0),
        (3.0 * f.ua_library, "user agent is an HTTP library", 0.0),
        (3.0 * f.ua_headless, "user agent admits a headless browser", 0.0),
        (2.5 * f.ua_missing, "no user agent", 0.0),
        (min(f.login_fail_streak / 3.0, 3.0), "{:.0f} failed logins in a row", f.login_fail_streak),
        (min(f.rate_per_min / 60.0, 3.0) * (f.requests >= 10), "{:.0f} req/min", f.rate_per_min),
        (
            2.0 * (enough and f.page_gap_mean_s > 0 and f.page_gap_cv < 0.25),
            "regular pacing (cv {:.2f})",
            f.page_gap_cv,
        ),
        (2.0 * f.sibling_share * enough, "sweeps sibling paths ({:.0%})", f.sibling_share),
        (1.5 * f.robots_hit, "fetched robots.txt", 0.0),
        (3.0 * f.not_found_share * enough, "{:.0%} not found", f.not_found_share),
        (1.2 * (enough and f.asset_share < 0.05), "fetches no assets", 0.0),
        (
            1.0 * (f.headers_seen and f.requests >= 3 and f.accept_language_share < 0.5),
            "no Accept-Language",
            0.0,
        ),
    ]
    found.sort(key=lambda item: -item[0])
    return [text.format(value) for strength, text, value in found[:5] if strength > 0]


class BotModule(Module[BotFeatures, BotDecision, BotOutcome]):
    name = "bot"
    summary = "P(bot) of a session, for the app's auth: allow, challenge, rate-limit or block."
    Features = BotFeatures
    Decision = BotDecision
    Outcome = BotOutcome
    example = {
        "requests": 42,
        "duration_s": 61.0,
        "rate_per_min": 41.3,
        "burst_share": 0.05,
        "page_gap_mean_s": 1.5,
        "page_gap_cv": 0.08,
        "asset_share": 0.0,
        "error_share": 0.12,
        "not_found_share": 0.1,
        "referer_share": 0.0,
        "unique_page_share": 1.0,
        "sibling_share": 0.9,
        "path_entropy": 5.4,
        "robots_hit": True,
        "login_attempts": 0,
        "login_fail_streak": 0,
        "post_share": 0.0,
        "header_count_mean": 4.0,
        "accept_language_share": 0.0,
        "sec_fetch_share": 0.0,
        "cookie_share": 0.0,
        "http2_share": 0.0,
        "ua_known_bot": False,
        "ua_library": True,
        "ua_headless": False,
        "ua_missing": False,
        "ua_browser_like": False,
    }
    outcome_example = {"is_bot": True}
    trainer = "aiassist.modules.bot.training:trainer"
    settings = BotSettings
    cli = "aiassist.modules.bot.cli:app"

    def __init__(self, settings: BotSettings | None = None) -> None:
        self._settings = settings
        self._thresholds: Thresholds | None = None

    @property
    def config(self) -> BotSettings:
        """The given settings, else the process's `BotSettings` (read on first use)."""
        if self._settings is None:
            self._settings = module_settings(BotSettings, log)
        return self._settings

    def action(self, p_bot: float) -> Action:
        if self._thresholds is None:
            self._thresholds = Thresholds.from_settings(self.config)
        return self._thresholds.action(p_bot)

    def fallback(self, f: BotFeatures) -> BotDecision:
        s = self.config
        listed = f.ua_known_bot or f.ua_library or f.ua_headless or f.ua_missing
        fast = f.requests >= s.rule_min_requests and f.rate_per_min > s.rule_rate_per_min
        p_bot = 1.0 if listed or fast else 0.0
        rule = "user agent on the list" if listed else ("over the rate limit" if fast else "")
        return BotDecision(
            p_bot=p_bot,
            action=self.action(p_bot),
            signals=_signals(f) if p_bot else [],
            explanation=f"rule: {rule or 'no rule matched'}",
        )

    def encode(self, f: BotFeatures) -> list[float]:
        return [
            math.log1p(f.requests),
            math.log1p(f.duration_s),
            math.log1p(f.rate_per_min),
            f.burst_share,
            math.log1p(f.page_gap_mean_s),
            f.page_gap_cv,
            f.asset_share,
            f.error_share,
            f.not_found_share,
            f.referer_share,
            f.unique_page_share,
            f.sibling_share,
            f.path_entropy,
            float(f.robots_hit),
            math.log1p(f.login_attempts),
            math.log1p(f.login_fail_streak),
            f.post_share,
            float(f.headers_seen),
            f.header_count_mean,
            f.accept_language_share,
            f.sec_fetch_share,
            f.cookie_share,
            f.http2_share,
            float(f.ua_known_bot),
            float(f.ua_library),
            float(f.ua_headless),
            float(f.ua_missing),
            float(f.ua_browser_like),
        ]

    def decode(self, f: BotFeatures, output: Sequence[float]) -> BotDecision:
        p_bot = min(max(float(output[-1]), 0.0), 1.0)  # P(bot) is the last column
        action = self.action(p_bot)
        return BotDecision(
            p_bot=p_bot,
            action=action,
            signals=_signals(f) if action != "allow" else [],  # most requests: no cost
            explanation=f"model: P(bot)={p_bot:.2f}",
        )


module = BotModule()
