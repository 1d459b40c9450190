"""The replay report in Markdown: bands, a histogram of P(bot), thresholds, top sessions."""

from __future__ import annotations

from aiassist.modules.bot.replay import Replay

__all__ = ["THRESHOLDS", "markdown"]

THRESHOLDS = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
_BAR = 40


def markdown(result: Replay, *, source: str, answered_by: str, top: int = 20) -> str:
    sessions = len(result.sessions)
    lines = [
        f"# Bot replay of `{source}`",
        "",
        f"{result.lines:,} lines, {result.skipped:,} not in combined format (skipped); "
        f"{sessions:,} sessions, scored by {answered_by}.",
        "",
        "| band | sessions | share | requests |",
        "| --- | ---: | ---: | ---: |",
    ]
    for band, (n, requests) in result.band_counts().items():
        lines.append(f"| {band} | {n:,} | {n / max(sessions, 1):.1%} | {requests:,} |")
    lines += ["", "## P(bot) of the sessions", "", "```"]
    bins = [0] * 10
    for s in result.sessions:
        bins[min(int(s.decision.p_bot * 10), 9)] += 1
    widest = max(bins) or 1
    for i, n in enumerate(bins):
        bar = "█" * round(_BAR * n / widest)
        lines.append(f"{i / 10:.1f}-{(i + 1) / 10:.1f} {bar:<{_BAR}} {n:,}")
    lines += [
        "```",
        "",
        "## What each threshold would flag",
        "",
        "Set `AIASSIST_BOT_CHALLENGE_AT`, `_RATE_LIMIT_AT` and `_BLOCK_AT` where the share "
        "flagged matches what the site can afford to challenge or refuse.",
        "",
        "| P(bot) at least | sessions | share | requests |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for threshold, n, requests in result.flagged_at(THRESHOLDS):
        share = n / max(sessions, 1)
        lines.append(f"| {threshold:.2f} | {n:,} | {share:.1%} | {requests:,} |")
    lines += [
        "",
        f"## The {min(top, sessions)} highest-scoring sessions",
        "",
        "| session | user agent | requests | minutes | P(bot) | band | signals |",
        "| --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for s in result.sessions[:top]:
        agent = (s.user_agent[:60] or "(none)").replace("|", "\\|")
        minutes = (s.last - s.first) / 60
        signals = "; ".join(s.decision.signals) or "-"
        lines.append(
            f"| {s.key[:10]} | {agent} | {s.requests:,} | {minutes:,.1f} | "
            f"{s.decision.p_bot:.2f} | {s.decision.action} | {signals} |"
        )
    return "\n".join(lines) + "\n"
