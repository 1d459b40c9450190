"""What went wrong with a call to a downstream, in the terms a retry decision needs.

A failure is an `ErrorInfo`: its class (timeout, connect, rate_limited, overloaded,
server_error, client_error, other), the HTTP status and exception type when there is one,
and the `Retry-After` the downstream asked for. `classify` maps exceptions (httpx, the
standard library, `RetryableError`) and `classify_status` maps HTTP responses.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import httpx

from aiassist.modules.retry import ERROR_CLASSES, ErrorClass

__all__ = [
    "ERROR_CLASSES",
    "RETRYABLE_STATUSES",
    "ErrorClass",
    "ErrorInfo",
    "RetryableError",
    "classify",
    "classify_status",
    "parse_retry_after",
]

#: Statuses a retry may fix: timeouts, rate limits, and a gateway or server in trouble.
RETRYABLE_STATUSES: Final = frozenset({408, 425, 429, 500, 502, 503, 504})

#: The longest Retry-After honoured (a downstream asking for more is treated as down).
MAX_RETRY_AFTER_S: Final = 86_400.0


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """One failed attempt, as the retry module's features describe it."""

    error_class: ErrorClass
    status_code: int | None = None
    exception_type: str | None = None
    retry_after_s: float | None = None

    @property
    def permanent(self) -> bool:
        """A client error: the same request will fail the same way, whatever the wait."""
        return self.error_class == "client_error"


class RetryableError(Exception):
    """Raise it from business code to describe a failure precisely (status, Retry-After),
    e.g. after a client library reported an HTTP error in its own way."""

    def __init__(
        self,
        message: str = "",
        *,
        status_code: int | None = None,
        retry_after_s: float | None = None,
        error_class: ErrorClass | None = None,
    ) -> None:
        super().__init__(message or f"downstream answered {status_code}")
        self.status_code = status_code
        self.retry_after_s = retry_after_s
        self.error_class = error_class


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delay-seconds or an HTTP date.

    None when absent or unreadable; bounded to [0, MAX_RETRY_AFTER_S].
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def classify_status(
    status_code: int, headers: Mapping[str, str] | httpx.Headers | None = None
) -> ErrorInfo | None:
    """The failure an HTTP status means, or None for a success (below 400)."""
    if status_code < 400:
        return None
    retry_after = parse_retry_after((headers or {}).get("retry-after"))
    if status_code in (408, 504):
        error_class: ErrorClass = "timeout"
    elif status_code == 429:
        error_class = "rate_limited"
    elif status_code == 503:
        error_class = "overloaded"
    elif status_code == 425:
        error_class = "other"
    elif status_code >= 500:
        error_class = "server_error"
    else:
        error_class = "client_error"
    return ErrorInfo(error_class, status_code, None, retry_after)


def classify(exc: BaseException) -> ErrorInfo:
    """The failure an exception means."""
    name = type(exc).__name__[:128]
    if isinstance(exc, RetryableError):
        base = classify_status(exc.status_code) if exc.status_code else None
        error_class = exc.error_class or (base.error_class if base else "other")
        return ErrorInfo(error_class, exc.status_code, name, exc.retry_after_s)
    if isinstance(exc, httpx.HTTPStatusError):
        info = classify_status(exc.response.status_code, exc.response.headers)
        error_class = info.error_class if info else "other"
        retry_after = info.retry_after_s if info else None
        return ErrorInfo(error_class, exc.response.status_code, name, retry_after)
    if isinstance(exc, httpx.TimeoutException | TimeoutError | asyncio.TimeoutError):
        return ErrorInfo("timeout", None, name)
    if isinstance(exc, httpx.ConnectError | ConnectionError | socket.gaierror):
        return ErrorInfo("connect", None, name)
    if isinstance(exc, httpx.TransportError | OSError):
        return ErrorInfo("other", None, name)
    return ErrorInfo("other", None, name)
