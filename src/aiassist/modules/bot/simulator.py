"""Generated traffic for training and measuring the bot module: people and five kinds of bot.

No public access log labels its sessions, so the bootstrap data is generated, seeded and
reproducible. Each family draws its own parameters per session, so families overlap the way
real traffic does (a person sweeping product pages, a crawler that loads assets):

- `human`: pages of a shop (home, categories, products by popularity, search, cart,
  account), each followed by its assets (fewer once cached), a referer chain, think time
  drawn from a log-normal (median ~15 s), browser headers, a rare 404 or failed login;
  varied as people are: power users, listings paged through, referers stripped, cookies
  or assets blocked, old browsers, link prefetching, and several people behind one address.
- `scraper`: an HTTP library or a crawler's name (or a borrowed browser string), a fast
  regular pace, a sweep of product ids or listing pages, dead ids (404), robots.txt.
- `headless`: an automated browser with a browser's user agent and headers, loading assets
  (images often blocked), paced to look human but more regular, sweeping the catalogue.
- `stuffer`: credential stuffing: the login page, then POSTs to it that mostly fail, from
  rotating browser strings; a share of sessions are short (spread over many addresses).
- `low_and_slow`: a distributed crawler: a few pages per address, minutes apart, a
  browser's user agent, no assets, no referer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import numpy as np

from aiassist.modules.bot import BotFeatures
from aiassist.modules.bot.session import Hit, Session

__all__ = [
    "BOT_FAMILIES",
    "FAMILIES",
    "GeneratedSession",
    "access_log",
    "generate",
    "snapshots",
]

BOT_FAMILIES = ("scraper", "headless", "stuffer", "low_and_slow")
FAMILIES = ("human", *BOT_FAMILIES)
LOGIN = "/login"

_BROWSERS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/130.0.0.0 Safari/537.36 Edg/130.0.0.0",
    "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
)
_LIBRARIES = (
    "python-requests/2.32.3",
    "curl/8.5.0",
    "Go-http-client/1.1",
    "okhttp/4.12.0",
    "python-httpx/0.27.0",
    "Java/17.0.2",
    "axios/1.7.7",
)
_CRAWLERS = (
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
    "Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)",
    "Scrapy/2.11.2 (+https://scrapy.org)",
    "Mozilla/5.0 (compatible; MJ12bot/v1.4.8; http://mj12bot.com/)",
)
_HEADLESS = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/131.0.0.0 Safari/537.36",
)
_ASSETS = ("/static/app.css", "/static/app.js", "/static/vendor.js", "/static/logo.svg")
_PRODUCTS = 5000


@dataclass
class GeneratedSession:
    family: str
    hits: list[Hit]

    @property
    def is_bot(self) -> bool:
        return self.family != "human"


class _Writer:
    """Builds one session's hits with the family's header habits."""

    def __init__(self, rng: np.random.Generator, ua: str, habits: dict[str, float]) -> None:
        self.rng, self.ua, self.habits = rng, ua, habits
        self.hits: list[Hit] = []
        self.at = 0.0

    def hit(
        self, path: str, *, status: int = 200, method: str = "GET", referer: bool = False
    ) -> None:
        h, r = self.habits, self.rng
        self.hits.append(
            Hit(
                at=self.at,
                method=method,
                path=path,
                status=status,
                user_agent=self.ua,
                referer=referer,
                header_count=int(r.integers(int(h["headers_lo"]), int(h["headers_hi"]) + 1)),
                accept_language=bool(r.random() < h["accept_language"]),
                sec_fetch=bool(r.random() < h["sec_fetch"]),
                cookie=bool(len(self.hits) > 0 and r.random() < h["cookie"]),
                http2=bool(h["http2"] > 0.5),
            )
        )

    def assets(self, count: int) -> None:
        start = self.at
        for i in range(count):
            self.at = start + float(self.rng.uniform(0.02, 0.9))
            path = (
                _ASSETS[i]
                if i < len(_ASSETS)
                else f"/static/img/{self.rng.integers(1_000_000)}.webp"
            )
            self.hit(path, referer=True)
        self.at = max(self.at, start)


def _habits(rng: np.random.Generator, browser: bool) -> dict[str, float]:
    if browser:
        return {
            "headers_lo": 10, "headers_hi": 16, "accept_language": 0.98,
            "sec_fetch": float(rng.choice([0.0, 0.95], p=[0.15, 0.85])),
            "cookie": 0.95, "http2": float(rng.random() < 0.75),
        }  # fmt: skip
    return {
        "headers_lo": 2, "headers_hi": 7, "accept_language": float(rng.uniform(0, 0.4)),
        "sec_fetch": 0.0, "cookie": float(rng.uniform(0, 0.3)), "http2": float(rng.random() < 0.1),
    }  # fmt: skip


def _bot_habits(rng: np.random.Generator, browser_share: float) -> dict[str, float]:
    """A bot's header habits: its library's, or (`browser_share` of sessions) a browser's,
    copied by the better tools along with the user agent."""
    return _habits(rng, browser=bool(rng.random() < browser_share))


def _product(rng: np.random.Generator) -> int:
    return int(min(rng.zipf(1.3), _PRODUCTS))


def _person_habits(rng: np.random.Generator) -> dict[str, float]:
    """A browser's header habits, varied as people's setups vary."""
    habits = _habits(rng, browser=True)
    if rng.random() < 0.08:  # an old browser or an in-app view: fewer headers, HTTP/1.1
        habits |= {"headers_lo": 5, "headers_hi": 9, "sec_fetch": 0.0, "http2": 0.0}
    if rng.random() < 0.1:  # cookies blocked
        habits["cookie"] = 0.0
    if rng.random() < 0.03:  # no Accept-Language (some privacy setups, some proxies)
        habits["accept_language"] = 0.0
    return habits


def _person(rng: np.random.Generator, ua: str) -> list[Hit]:
    """One person's visit. Most browse a few pages with long pauses; some are quick power
    users; some page through a listing, strip referers, block cookies or assets, or have a
    browser that prefetches links."""
    w = _Writer(rng, ua, _person_habits(rng))
    power = rng.random() < 0.1
    pages = int(rng.integers(20, 150)) if power else 1 + int(rng.lognormal(1.4, 0.9))
    pages = 1 if not power and rng.random() < 0.25 else pages
    think = float(rng.lognormal(np.log(3.0 if power else 15.0), 0.4))
    referers = rng.random() > 0.15
    cached = rng.random() < 0.4  # a returning visitor fetches few assets
    no_assets = rng.random() < 0.02
    prefetch = rng.random() < 0.05
    i = 0
    while i < min(pages, 150):
        roll = rng.random()
        if i == 0 and roll < 0.5:
            path = "/"
        elif roll < 0.2:
            path = f"/category/{rng.integers(1, 40)}"
        elif roll < 0.75:
            path = f"/product/{_product(rng)}"
        elif roll < 0.85:
            path = f"/search?q={rng.integers(10_000)}"
        else:
            path = str(rng.choice(["/cart", "/account", "/checkout", "/help"]))
        status = 404 if rng.random() < 0.01 else 200
        w.hit(path, status=status, referer=referers and (i > 0 or rng.random() < 0.5))
        if not no_assets:
            w.assets(int(rng.integers(0, 3)) if cached and i > 0 else int(rng.integers(3, 25)))
        if prefetch:
            for _ in range(int(rng.integers(1, 5))):
                w.at += float(rng.uniform(0.05, 0.3))
                w.hit(f"/product/{_product(rng)}", referer=referers)
        if path.startswith("/category/") and rng.random() < 0.25:  # pages through it
            for page in range(2, int(rng.integers(3, 12))):
                w.at += float(rng.uniform(2, 9))
                w.hit(f"{path}?page={page}", referer=referers)
                i += 1
        if rng.random() < 0.04:  # logs in: now and then a typo or two first
            for _ in range(int(rng.choice([0, 1, 2, 3], p=[0.75, 0.15, 0.07, 0.03]))):
                w.at += float(rng.uniform(3, 20))
                w.hit(LOGIN, status=401, method="POST", referer=referers)
            w.at += float(rng.uniform(3, 20))
            w.hit(LOGIN, status=303, method="POST", referer=referers)
        w.at += float(np.clip(rng.lognormal(np.log(think), 1.0), 0.8, 1800))
        i += 1
    return w.hits


def _human(rng: np.random.Generator) -> list[Hit]:
    """A person, or (one session in ten) several behind one address with the same browser
    build, as in an office or on a carrier's NAT, whose requests interleave."""
    ua = str(rng.choice(_BROWSERS))
    if rng.random() >= 0.1:
        return _person(rng, ua)
    hits: list[Hit] = []
    for _ in range(int(rng.integers(2, 7))):
        offset = float(rng.uniform(0, 1800))
        hits.extend(replace(hit, at=hit.at + offset) for hit in _person(rng, ua))
    return sorted(hits, key=lambda hit: hit.at)


def _scraper(rng: np.random.Generator) -> list[Hit]:
    kind = rng.random()
    ua = str(rng.choice(_LIBRARIES if kind < 0.5 else _CRAWLERS if kind < 0.7 else _BROWSERS))
    w = _Writer(rng, ua, _bot_habits(rng, 0.3 if ua in _BROWSERS else 0.0))
    if rng.random() < 0.5:
        w.hit("/robots.txt")
        w.at += float(rng.uniform(0.2, 2))
    gap, jitter = float(rng.uniform(0.2, 4.0)), float(rng.uniform(0.02, 0.4))
    start, listing = int(rng.integers(1, _PRODUCTS)), rng.random() < 0.3
    dead = float(rng.uniform(0.0, 0.3))
    for i in range(int(rng.integers(15, 400))):
        path = f"/category/{start % 40}?page={i}" if listing else f"/product/{start + i}"
        w.hit(path, status=404 if rng.random() < dead else 200, referer=rng.random() < 0.1)
        w.at += max(gap * (1 + jitter * rng.standard_normal()), 0.05)
    return w.hits


def _headless(rng: np.random.Generator) -> list[Hit]:
    ua = str(rng.choice(_HEADLESS if rng.random() < 0.05 else _BROWSERS))
    w = _Writer(rng, ua, _habits(rng, browser=True))
    images = rng.random() < 0.5
    median, spread = float(rng.uniform(2, 20)), float(rng.uniform(0.05, 0.6))
    order = rng.permutation(_PRODUCTS)[: int(rng.integers(20, 300))] + 1
    w.hit("/")
    w.assets(int(rng.integers(3, 8)))
    for product in order:
        w.at += float(rng.lognormal(np.log(median), spread))
        w.hit(f"/product/{product}", status=404 if rng.random() < 0.03 else 200, referer=True)
        w.assets(int(rng.integers(3, 12)) if images else int(rng.integers(0, 3)))
    return w.hits


def _stuffer(rng: np.random.Generator) -> list[Hit]:
    w = _Writer(rng, str(rng.choice(_BROWSERS)), _bot_habits(rng, 0.4))
    if rng.random() < 0.5:
        w.hit(LOGIN)
        w.at += float(rng.uniform(0.5, 3))
    attempts = int(rng.integers(2, 8)) if rng.random() < 0.4 else int(rng.integers(8, 300))
    gap = float(rng.uniform(0.3, 8.0))
    for _ in range(attempts):
        status = 303 if rng.random() < 0.01 else 401
        w.hit(LOGIN, method="POST", status=status, referer=rng.random() < 0.5)
        w.at += float(rng.uniform(0.5, 1.5)) * gap
    return w.hits


def _low_and_slow(rng: np.random.Generator) -> list[Hit]:
    w = _Writer(rng, str(rng.choice(_BROWSERS)), _bot_habits(rng, 0.3))
    start = int(rng.integers(1, _PRODUCTS))
    for i in range(int(rng.integers(3, 25))):
        product = start + i if rng.random() < 0.5 else int(rng.integers(1, _PRODUCTS))
        w.hit(f"/product/{product}", status=404 if rng.random() < 0.05 else 200,
              referer=rng.random() < 0.3)  # fmt: skip
        if rng.random() < 0.2:
            w.assets(int(rng.integers(1, 5)))
        w.at += float(rng.uniform(20, 600))
    return w.hits


_MAKERS = {
    "human": _human,
    "scraper": _scraper,
    "headless": _headless,
    "stuffer": _stuffer,
    "low_and_slow": _low_and_slow,
}


def generate(
    sessions: int,
    seed: int,
    families: tuple[str, ...] = FAMILIES,
    bot_share: float = 0.5,
    logged_share: float = 0.25,
) -> list[GeneratedSession]:
    """`sessions` sessions, `bot_share` of them bots spread evenly over `families`' bots;
    `logged_share` of them as an access log records them (no headers but referer and
    user agent), so a model also reads replayed logs."""
    rng = np.random.default_rng(seed)
    bots = [f for f in families if f != "human"]
    out = []
    for _ in range(sessions):
        family = str(rng.choice(bots)) if bots and rng.random() < bot_share else "human"
        if family == "human" and "human" not in families:
            family = str(rng.choice(bots))
        hits = _MAKERS[family](rng)
        if rng.random() < logged_share:
            hits = [_as_logged(hit) for hit in hits]
        out.append(GeneratedSession(family, hits))
    return out


def _as_logged(hit: Hit) -> Hit:
    return replace(
        hit,
        at=float(int(hit.at)),
        headers_known=False,
        header_count=0,
        accept_language=False,
        sec_fetch=False,
        cookie=False,
    )  # fmt: skip  (a log keeps whole seconds)


def snapshots(
    session: GeneratedSession,
    cuts: tuple[float, ...] = (1.0,),
    login_paths: frozenset[str] = frozenset({LOGIN}),
) -> Iterator[BotFeatures]:
    """The session's features after each fraction `cuts` of its requests (1.0: the end),
    as a live scorer sees it part way through."""
    state, hits, marks = (
        Session(),
        session.hits,
        sorted({max(1, round(c * len(session.hits))) for c in cuts}),
    )
    done = 0
    for mark in marks:
        for hit in hits[done:mark]:
            state.observe(hit, login_paths)
        done = mark
        yield state.features()


def access_log(sessions: list[GeneratedSession], seed: int, start: float = 1.7e9) -> list[str]:
    """The sessions as an Nginx/Apache "combined" log, in time order: each from an address
    of its own (10.0.0.0/8), starting within a day of `start`."""
    rng = np.random.default_rng(seed)
    timed: list[tuple[float, str]] = []
    for n, session in enumerate(sessions):
        address = f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"
        offset = start + float(rng.uniform(0, 86_400))
        for hit in session.hits:
            at = datetime.fromtimestamp(offset + hit.at, UTC)
            protocol = "HTTP/2.0" if hit.http2 else "HTTP/1.1"
            referer = "https://shop.example/" if hit.referer else "-"
            line = (
                f"{address} - - [{at.strftime('%d/%b/%Y:%H:%M:%S %z')}] "
                f'"{hit.method} {hit.path} {protocol}" {hit.status or 200} '
                f'{int(rng.integers(200, 60_000))} "{referer}" "{hit.user_agent}"'
            )
            timed.append((offset + hit.at, line))
    return [line for _, line in sorted(timed)]
