"""Keeping secrets out of logs, the audit trail and model prompts.

Two nets: values under a sensitive key (password, token, api_key, secret, authorization, ...)
are replaced whatever they are, and any configured secret value (a downstream's API key, a
provider key) is replaced wherever it appears inside a string. Both run on everything the
runtime records or shows to a model, so a tool that echoes its credentials leaks nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

__all__ = ["REDACTED", "Redactor"]

REDACTED = "[redacted]"
_SENSITIVE_KEY = re.compile(
    r"(^|[-_.])(pass(word|wd|phrase)?|secret([-_]?key)?|(access|refresh|auth|bearer|id)?[-_]?token"
    r"|api[-_]?key|authorization|credentials?|private[-_]?key|cookie|session[-_]?id)($|[-_.])",
)
_ANYWHERE = ("secret", "password", "apikey", "api_key")


def _sensitive(key: str) -> bool:
    key = key.lower()
    return bool(_SENSITIVE_KEY.search(key)) or any(word in key for word in _ANYWHERE)


_MIN_SECRET_LENGTH = 6  # shorter values would redact ordinary words
_MAX_DEPTH = 32


class Redactor:
    """Replace secrets in JSON-like data. Immutable; `with_secrets` makes a wider one."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values = sorted(
            {s for s in secrets if isinstance(s, str) and len(s) >= _MIN_SECRET_LENGTH},
            key=len,
            reverse=True,  # the longest first, so a secret containing another goes whole
        )
        self._values = tuple(values)
        self._pattern = re.compile("|".join(map(re.escape, values))) if values else None

    def with_secrets(self, secrets: Iterable[str]) -> Redactor:
        return Redactor((*self._values, *secrets))

    def text(self, value: str) -> str:
        return self._pattern.sub(REDACTED, value) if self._pattern is not None else value

    def __call__(self, value: Any, _depth: int = 0) -> Any:
        """A copy of `value` with every secret replaced; non-JSON values become strings."""
        if _depth > _MAX_DEPTH:
            return "[too deep]"
        if isinstance(value, str):
            return self.text(value)
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, dict):
            return {
                str(k): REDACTED
                if _sensitive(str(k)) and v not in (None, "")
                else self(v, _depth + 1)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self(v, _depth + 1) for v in value]
        return self.text(str(value))
