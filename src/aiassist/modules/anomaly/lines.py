"""One log line split into what the detector needs: component, level and message.

No format is configured: a component is the first `name[pid]:` or `name:` token (syslog,
sshd, log4j's `dfs.DataNode$PacketResponder:`), a level the first word that names one
(`INFO`, `[error]`, `WARN`), the host the word between a time and the component (syslog's
`Jun 14 15:16:01 combo sshd[42]:`; `-` when there is none), and the message what follows
the component. Lines that are not
text (binary garbage, undecodable bytes, control characters) or are too long are `None`:
counted as bad by the caller, never fatal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ERROR_LEVELS", "LogLine", "parse_line"]

ERROR_LEVELS = frozenset({"error", "err", "fatal", "crit", "critical", "alert", "emerg", "severe"})
_LEVELS = ERROR_LEVELS | {"info", "notice", "warn", "warning", "debug", "trace"}
_COMPONENT = re.compile(r"(?:^|\s)([A-Za-z][\w.$/()\-]{1,80}?)(?:\[\d+\])?:\s")
_LEVEL = re.compile(r"\b[A-Za-z]{3,8}\b")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f\ufffd]")
_BRACKETS = re.compile(r"^(?:\[[^\]]*\]\s*)+")
_TIME = re.compile(r"^\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?$")
_HOST = re.compile(r"^(?=.*[A-Za-z])[A-Za-z0-9][\w.-]{0,99}$")


@dataclass(frozen=True, slots=True)
class LogLine:
    component: str
    level: str
    message: str
    text: str
    host: str = "-"

    @property
    def is_error(self) -> bool:
        return self.level in ERROR_LEVELS


def parse_line(raw: str | bytes, max_bytes: int = 16_384) -> LogLine | None:
    """The line's parts, or None for a line that is not a log line."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    text = raw.rstrip("\r\n")
    if not text.strip() or len(text) > max_bytes or _CONTROL.search(text):
        return None
    found = _COMPONENT.search(text)
    component = found.group(1) if found else "-"
    message = text[found.end() :] if found else _BRACKETS.sub("", text)
    head = text[: found.start()] if found else text[:60]
    level = next(
        (w.lower() for w in _LEVEL.findall(head + " " + message[:20]) if w.lower() in _LEVELS),
        "-",
    )
    return LogLine(component, level, message or text, text, _host(head) if found else "-")


def _host(head: str) -> str:
    """The header's last word when a time comes right before it, as in syslog's header."""
    words = head.split()
    if len(words) < 2 or not _TIME.match(words[-2]):
        return "-"
    word = words[-1].split("/")[0].rpartition("@")[2]  # `dn228/dn228`, `src@eadmin1`
    return word[:100] if _HOST.match(word) else "-"
