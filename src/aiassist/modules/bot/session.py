"""A session's requests folded into the bot module's features, in constant time per request.

A session is keyed by a cookie when the app names one, else by a digest of the client
address and the user agent; raw addresses are never kept. It ends after an idle timeout or
a maximum age, and a new one begins. Every field is a counter or a running sum (the paths
seen are bounded), so a session serialises to a small JSON object for a shared store.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from aiassist.modules.bot import BotFeatures
from aiassist.modules.bot.useragent import classify

__all__ = ["Hit", "Session", "session_key"]

_ASSETS = (
    ".css", ".js", ".mjs", ".png", ".jpg", ".jpeg", ".gif", ".svg", ".ico", ".webp",
    ".avif", ".woff", ".woff2", ".ttf", ".otf", ".map", ".mp4", ".webm",
)  # fmt: skip
_BURST_GAP_S = 0.5
_MAX_PAGES = 64  # distinct page paths remembered for entropy and uniqueness


def session_key(client: str, user_agent: str, cookie: str | None = None) -> str:
    """The session's id: of the cookie if there is one, else of address and user agent."""
    source = f"c\0{cookie}" if cookie else f"a\0{client}\0{user_agent}"
    return hashlib.blake2b(source.encode("utf-8", "replace"), digest_size=12).hexdigest()


@dataclass(frozen=True)
class Hit:
    """One request as the bot module sees it (from a live request or a log line)."""

    at: float  # seconds, any epoch
    method: str
    path: str
    status: int = 0  # 0: not answered yet (a live request being scored)
    user_agent: str = ""
    referer: bool = False
    header_count: int = 0
    accept_language: bool = False
    sec_fetch: bool = False
    cookie: bool = False
    http2: bool = False
    headers_known: bool = True  # False for a log line: only referer and user agent are known


def _log2(count: int) -> float:
    return math.log2(count) if count else 0.0


def _is_asset(path: str) -> bool:
    return path.lower().endswith(_ASSETS) or path.startswith(("/static/", "/assets/"))


@dataclass
class Session:
    """Running sums over one session's requests (see `features`)."""

    started: float = 0.0
    last: float = 0.0
    requests: int = 0
    assets: int = 0
    answered: int = 0
    errors: int = 0
    not_found: int = 0
    referers: int = 0
    posts: int = 0
    headers: int = 0
    headers_seen: int = 0  # requests whose headers were seen (not log lines)
    accept_language: int = 0
    sec_fetch: int = 0
    cookies: int = 0
    http2: int = 0
    bursts: int = 0
    page_gaps: int = 0
    page_gap_sum: float = 0.0
    page_gap_sq: float = 0.0
    last_page_at: float = -1.0
    last_parent: str = ""
    last_leaf: str = ""
    siblings: int = 0
    robots: bool = False
    login_attempts: int = 0
    last_was_login: bool = False  # the request observed last POSTed to a login path
    login_streak: int = 0
    login_streak_max: int = 0
    ua: list[bool] = field(default_factory=lambda: [False] * 5)
    pages: dict[str, int] = field(default_factory=dict)
    other_pages: int = 0
    page_total: int = 0
    page_log_sum: float = 0.0  # sum of c * log2(c) over the page counts: entropy in O(1)

    def expired(self, now: float, idle_s: float, window_s: float) -> bool:
        return self.requests > 0 and (now - self.last > idle_s or now - self.started > window_s)

    def observe(self, hit: Hit, login_paths: frozenset[str] = frozenset()) -> None:
        """Fold one request in; its status may come later (`answered`)."""
        if self.requests == 0:
            self.started = self.last = hit.at
        elif hit.at - self.last < _BURST_GAP_S:
            self.bursts += 1
        self.last = max(self.last, hit.at)
        self.requests += 1
        self.referers += hit.referer
        self.posts += hit.method == "POST"
        self.http2 += hit.http2
        if hit.headers_known:
            self.headers_seen += 1
            self.headers += min(hit.header_count, 200)
            self.accept_language += hit.accept_language
            self.sec_fetch += hit.sec_fetch
            self.cookies += hit.cookie
        a = classify(hit.user_agent)
        now = (a.known_bot, a.library, a.headless, a.missing, a.browser_like)
        self.ua = [seen or flag for seen, flag in zip(self.ua, now, strict=True)]
        path = hit.path[:512]
        bare = path.split("?", 1)[0]
        if bare == "/robots.txt":
            self.robots = True
        if _is_asset(bare):
            self.assets += 1
        else:
            self._page(path, hit.at)  # with its query: ?page=1, ?page=2 are a sweep
        self.last_was_login = hit.method == "POST" and bare in login_paths
        if hit.status:
            self.answered_with(hit.status)

    def answered_with(self, status: int) -> None:
        """The status of the request observed last, once the app has answered."""
        self.answered += 1
        self.errors += 400 <= status < 500
        self.not_found += status == 404
        if self.last_was_login:
            self.login_attempts += 1
            failed = status in (401, 403)
            self.login_streak = self.login_streak + 1 if failed else 0
            self.login_streak_max = max(self.login_streak_max, self.login_streak)

    def _page(self, path: str, at: float) -> None:
        if self.last_page_at >= 0:
            gap = max(at - self.last_page_at, 0.0)
            self.page_gaps += 1
            self.page_gap_sum += gap
            self.page_gap_sq += gap * gap
        self.last_page_at = at
        parent, _, leaf = path.rpartition("/")
        if parent == self.last_parent and leaf != self.last_leaf and self.page_total:
            self.siblings += 1
        self.last_parent, self.last_leaf = parent, leaf
        self.page_total += 1
        if path in self.pages or len(self.pages) < _MAX_PAGES:
            count = self.pages[path] = self.pages.get(path, 0) + 1
        else:
            count = self.other_pages = self.other_pages + 1
        self.page_log_sum += count * math.log2(count) - (count - 1) * _log2(count - 1)

    def features(self) -> BotFeatures:
        n, pages = max(self.requests, 1), self.page_total
        duration = max(self.last - self.started, 0.0)
        mean_gap = self.page_gap_sum / self.page_gaps if self.page_gaps else 0.0
        variance = self.page_gap_sq / self.page_gaps - mean_gap**2 if self.page_gaps else 0.0
        cv = math.sqrt(max(variance, 0.0)) / mean_gap if mean_gap > 0 else 0.0
        entropy = math.log2(pages) - self.page_log_sum / pages if pages else 0.0
        answered, seen = max(self.answered, 1), max(self.headers_seen, 1)
        return BotFeatures(
            requests=min(self.requests, 10_000_000),
            duration_s=min(duration, 7 * 86_400.0),
            rate_per_min=min(pages * 60.0 / max(duration, 60.0), 1e6),
            burst_share=self.bursts / n,
            page_gap_mean_s=min(mean_gap, 86_400.0),
            page_gap_cv=min(cv, 100.0),
            asset_share=self.assets / n,
            error_share=self.errors / answered,
            not_found_share=self.not_found / answered,
            referer_share=self.referers / n,
            unique_page_share=(len(self.pages) + self.other_pages) / pages if pages else 0.0,
            sibling_share=self.siblings / (pages - 1) if pages > 1 else 0.0,
            path_entropy=min(max(entropy, 0.0), 32.0),
            robots_hit=self.robots,
            login_attempts=min(self.login_attempts, 1_000_000),
            login_fail_streak=min(self.login_streak_max, 1_000_000),
            post_share=self.posts / n,
            headers_seen=self.headers_seen > 0,
            header_count_mean=self.headers / seen,
            accept_language_share=self.accept_language / seen,
            sec_fetch_share=self.sec_fetch / seen,
            cookie_share=self.cookies / seen,
            http2_share=self.http2 / n,
            ua_known_bot=self.ua[0],
            ua_library=self.ua[1],
            ua_headless=self.ua[2],
            ua_missing=self.ua[3],
            ua_browser_like=self.ua[4],
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Session:
        return cls(**data)
