"""What a user agent string says about its client, as features (never as the decision).

A known crawler names itself, an HTTP library keeps its default, an automated browser may
leave `Headless` in; a faked browser string says nothing, which is why the other features
matter. The patterns are the usual fixed-rule list, so the rule fallback is an honest
baseline: what a UA list plus a rate limit catches today.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["UserAgent", "classify"]

_KNOWN_BOTS = re.compile(
    r"bot\b|crawl|spider|slurp|bingpreview|facebookexternalhit|embedly|ahrefs|semrush|"
    r"mj12|dotbot|petalbot|yandex|baidu|sogou|exabot|archive\.org|ia_archiver|scrapy|"
    r"nutch|heritrix|httrack|wget|masscan|zgrab|nikto|sqlmap",
    re.IGNORECASE,
)
_LIBRARIES = re.compile(
    r"^(python-requests|python-urllib|python-httpx|aiohttp|curl|go-http-client|okhttp|"
    r"java|apache-httpclient|libwww-perl|node-fetch|axios|undici|ruby|php|guzzle|"
    r"postmanruntime|insomnia|restsharp|dart)",
    re.IGNORECASE,
)
_HEADLESS = re.compile(r"headless|phantomjs|puppeteer|playwright|selenium|webdriver", re.I)
_BROWSER = re.compile(r"^Mozilla/5\.0 \(.+\) .*(Gecko|AppleWebKit)", re.IGNORECASE)
_MAX_LENGTH = 1000  # longer strings are cut before matching: bounded work per request


@dataclass(frozen=True)
class UserAgent:
    known_bot: bool
    library: bool
    headless: bool
    missing: bool
    browser_like: bool


def classify(value: str | None) -> UserAgent:
    """The flags of one user agent string; any string (garbage, huge, unicode) is taken."""
    return _classify((value or "")[:_MAX_LENGTH])


@lru_cache(maxsize=4096)  # a site sees few distinct strings, and the patterns cost ~30 us
def _classify(value: str) -> UserAgent:
    text = value.strip()
    return UserAgent(
        known_bot=bool(_KNOWN_BOTS.search(text)),
        library=bool(_LIBRARIES.match(text)),
        headless=bool(_HEADLESS.search(text)),
        missing=not text,
        browser_like=bool(_BROWSER.match(text)),
    )
