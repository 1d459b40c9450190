"""Scoring an access log offline: Apache/Nginx "combined" lines folded into sessions.

A log has no headers beyond the referer and the user agent, so its requests carry
`headers_known=False` and the model reads their sessions as it was trained to read logs.
Sessions are keyed as the middleware keys them (a digest of address and user agent, the
address itself never kept) and end as its sessions do (idle timeout, maximum age). The
report says how many sessions and requests fall in each action band, which sessions scored
highest and why, and how many sessions each threshold would flag: what to set
`AIASSIST_BOT_*_AT` from.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from aiassist.modules.bot import BotDecision, BotFeatures
from aiassist.modules.bot.session import Hit, Session, session_key

__all__ = ["LogLine", "Replay", "ScoredSession", "parse_line", "replay"]

_COMBINED = re.compile(
    r'^(?P<host>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] "(?P<request>[^"]*)" (?P<status>\d{3}) '
    r'\S+(?: "(?P<referer>[^"]*)" "(?P<agent>[^"]*)")?'
)
_TIME = "%d/%b/%Y:%H:%M:%S %z"
BANDS = ("allow", "challenge", "rate_limit", "block")


@dataclass(frozen=True)
class LogLine:
    client: str
    hit: Hit


def parse_line(line: str) -> LogLine | None:
    """One combined-format line, or None for a line that is not one (counted, skipped)."""
    match = _COMBINED.match(line)
    if match is None:
        return None
    try:
        at = datetime.strptime(match["time"], _TIME).timestamp()
    except ValueError:
        return None
    method, _, rest = match["request"].partition(" ")
    path, _, protocol = rest.rpartition(" ") if " " in rest else (rest, "", "")
    referer = match["referer"] or "-"
    return LogLine(
        match["host"],
        Hit(
            at=at,
            method=method[:16] or "-",
            path=(path or "/")[:512],
            status=int(match["status"]),
            user_agent=(match["agent"] or "")[:1000],
            referer=referer not in ("", "-"),
            http2=protocol.startswith("HTTP/2") or protocol.startswith("HTTP/3"),
            headers_known=False,
        ),
    )


@dataclass
class ScoredSession:
    key: str
    user_agent: str
    requests: int
    first: float
    last: float
    decision: BotDecision


@dataclass
class Replay:
    lines: int = 0
    skipped: int = 0
    sessions: list[ScoredSession] = field(default_factory=list)

    def band_counts(self) -> dict[str, tuple[int, int]]:
        """Sessions and requests in each action band."""
        counts = {band: [0, 0] for band in BANDS}
        for s in self.sessions:
            counts[s.decision.action][0] += 1
            counts[s.decision.action][1] += s.requests
        return {band: (n, r) for band, (n, r) in counts.items()}

    def flagged_at(self, thresholds: Iterable[float]) -> list[tuple[float, int, int]]:
        """For each threshold: sessions and requests with P(bot) at or above it."""
        return [
            (
                t,
                sum(s.decision.p_bot >= t for s in self.sessions),
                sum(s.requests for s in self.sessions if s.decision.p_bot >= t),
            )
            for t in thresholds
        ]


def replay(
    lines: Iterable[str],
    decide: Callable[[list[BotFeatures]], list[BotDecision]],
    *,
    idle_s: float,
    window_s: float,
    login_paths: frozenset[str] = frozenset(),
) -> Replay:
    """Fold `lines` into sessions and score each at its end (`decide` takes a batch)."""
    result = Replay()
    live: dict[str, tuple[Session, str]] = {}
    ended: list[tuple[str, Session, str]] = []
    for line in lines:
        result.lines += 1
        parsed = parse_line(line.rstrip("\n"))
        if parsed is None:
            result.skipped += 1
            continue
        hit = parsed.hit
        key = session_key(parsed.client, hit.user_agent)
        current = live.get(key)
        if current is not None and current[0].expired(hit.at, idle_s, window_s):
            ended.append((key, *current))
            current = None
        if current is None:
            current = live[key] = (Session(), hit.user_agent)
        current[0].observe(hit, login_paths)
    ended.extend((key, session, agent) for key, (session, agent) in live.items())
    for chunk in _chunks(ended, 1000):
        features = [session.features() for _, session, _ in chunk]
        for (key, session, agent), d in zip(chunk, decide(features), strict=True):
            result.sessions.append(
                ScoredSession(key, agent, session.requests, session.started, session.last, d)
            )
    result.sessions.sort(key=lambda s: -s.decision.p_bot)
    return result


def _chunks(
    items: list[tuple[str, Session, str]], size: int
) -> Iterator[list[tuple[str, Session, str]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
