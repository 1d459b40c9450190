"""`retry`: is this failed call worth retrying after a given wait, and how likely is the
retry to succeed?

Not every timeout deserves a retry. A blip passes in a second; a rate limit ends when the
downstream said it would (`Retry-After`); an overloaded downstream gets worse with every
retry; a hard outage does not recover within any backoff a caller can afford. The features
describe the failure (error class, HTTP status, exception type, attempt, elapsed time), the
downstream's recent health as this process saw it (error mix, latency against its usual
latency, calls in flight, 429/503 rates, failure streak, time since its last success), the
`Retry-After` it sent, the time of day, and the wait being considered (`wait_s`).

The model estimates P(recovery within the wait): the probability that a retry made after
`wait_s` succeeds. It retries only when that is at least `threshold` (0.7 by default). The
callers (`policy.py`, `decorator.py`) ask about a few candidate waits at once and take the shortest
one worth it, and they put every retry behind a retry budget that no answer can override.

The rule fallback is what a careful client does without a model: retry every error that is
not a client error (4xx other than 408/425/429), after the wait asked (the caller's capped
exponential backoff with full jitter), never before `Retry-After`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final, Literal, get_args

from pydantic import Field

from aiassist.modules.base import Decision, Features, Module, Outcome

__all__ = [
    "ERROR_CLASSES",
    "ErrorClass",
    "RetryDecision",
    "RetryFeatures",
    "RetryModule",
    "RetryOutcome",
    "module",
]

ErrorClass = Literal[
    "timeout", "connect", "rate_limited", "overloaded", "server_error", "client_error", "other"
]
ERROR_CLASSES: Final[tuple[ErrorClass, ...]] = get_args(ErrorClass)

_DAY = 86_400.0
_MAX_CALLS = 1_000_000_000

#: The rule's rough chance that a retry of each class succeeds on a healthy-looking downstream.
_RULE_BASE: Final[dict[str, float]] = {
    "timeout": 0.6,
    "connect": 0.5,
    "rate_limited": 0.5,
    "overloaded": 0.5,
    "server_error": 0.6,
    "client_error": 0.02,
    "other": 0.4,
}


class RetryFeatures(Features):
    downstream: str = Field(
        "default",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="Name of the downstream called (a service, a host).",
    )
    error_class: ErrorClass = Field(description="What kind of failure the attempt met.")
    status_code: int | None = Field(None, ge=100, le=599, description="HTTP status, if any.")
    exception_type: str | None = Field(
        None,
        max_length=128,
        pattern=r"^[A-Za-z0-9_.]+$",
        description="Exception class name, if any.",
    )
    attempt: int = Field(1, ge=1, le=100, description="Attempts made so far (1: the first).")
    elapsed_s: float = Field(0.0, ge=0, le=_DAY, description="Seconds since the first attempt.")
    wait_s: float = Field(0.0, ge=0, le=3600, description="The wait before the retry considered.")
    retry_after_s: float | None = Field(
        None, ge=0, le=_DAY, description="Retry-After the downstream sent, in seconds."
    )
    recent_calls: int = Field(0, ge=0, le=_MAX_CALLS, description="Attempts ended lately.")
    error_rate: float = Field(0.0, ge=0, le=1, description="Share of them that failed.")
    timeout_rate: float = Field(0.0, ge=0, le=1, description="Share that timed out.")
    connect_rate: float = Field(0.0, ge=0, le=1, description="Share that could not connect.")
    rate_429: float = Field(0.0, ge=0, le=1, description="Share answered 429.")
    rate_503: float = Field(0.0, ge=0, le=1, description="Share answered 503.")
    rate_5xx: float = Field(0.0, ge=0, le=1, description="Share answered 5xx.")
    latency_ms: float = Field(0.0, ge=0, le=3_600_000, description="Recent mean latency.")
    baseline_latency_ms: float = Field(
        0.0, ge=0, le=3_600_000, description="Usual latency of successful calls (0: unknown)."
    )
    in_flight: int = Field(0, ge=0, le=1_000_000, description="Calls in flight to it now.")
    failure_streak: int = Field(0, ge=0, le=_MAX_CALLS, description="Failures in a row.")
    since_success_s: float | None = Field(
        None, ge=0, le=365 * _DAY, description="Seconds since its last success (none: never)."
    )
    hour_of_day: float = Field(12.0, ge=0, lt=24, description="Local time of day, in hours.")
    threshold: float = Field(
        0.7, ge=0, le=1, description="Retry only when P(recovery) is at least this."
    )


class RetryDecision(Decision):
    p_recovery: float = Field(
        ge=0, le=1, description="Probability that a retry after wait_s succeeds."
    )
    retry: bool = Field(description="Whether to retry.")
    wait_s: float = Field(ge=0, description="Seconds to wait before the retry.")


class RetryOutcome(Outcome):
    succeeded: bool = Field(description="Whether the retry made after the decision succeeded.")
    latency_ms: float | None = Field(None, ge=0, le=3_600_000, description="The retry's latency.")
    error_class: ErrorClass | None = Field(None, description="How the retry failed, if it did.")


def _log(x: float) -> float:
    return math.log1p(max(x, 0.0))


class RetryModule(Module[RetryFeatures, RetryDecision, RetryOutcome]):
    name = "retry"
    summary = "Retry a failed call? P(recovery within the wait), retry or not, the wait."
    Features = RetryFeatures
    Decision = RetryDecision
    Outcome = RetryOutcome
    example = {
        "downstream": "payments",
        "error_class": "rate_limited",
        "status_code": 429,
        "exception_type": "HTTPStatusError",
        "attempt": 1,
        "elapsed_s": 0.12,
        "wait_s": 2.0,
        "retry_after_s": 2.0,
        "recent_calls": 180,
        "error_rate": 0.3,
        "rate_429": 0.3,
        "latency_ms": 45.0,
        "baseline_latency_ms": 40.0,
        "in_flight": 12,
        "failure_streak": 2,
        "since_success_s": 0.1,
        "hour_of_day": 14.5,
    }
    outcome_example = {"succeeded": True, "latency_ms": 42.0}
    trainer = "aiassist.modules.retry.training:trainer"

    def fallback(self, f: RetryFeatures) -> RetryDecision:
        base = _RULE_BASE[f.error_class]
        if f.retry_after_s is not None and f.wait_s >= f.retry_after_s:
            base = max(base, 0.8)
        p = base * (1.0 - 0.7 * f.error_rate) * 0.8 ** (f.attempt - 1)
        retry = f.error_class != "client_error"
        how = "retryable" if retry else "not retryable"
        return self._decision(
            f, p, retry, f"rule: {f.error_class} is {how}; capped exponential backoff"
        )

    def encode(self, f: RetryFeatures) -> list[float]:
        classes = [1.0 if f.error_class == c else 0.0 for c in ERROR_CLASSES]
        has_ra = f.retry_after_s is not None
        ra = f.retry_after_s or 0.0
        baseline = f.baseline_latency_ms
        hour = 2.0 * math.pi * f.hour_of_day / 24.0
        return [
            *classes,
            float(f.status_code or 0),
            float(f.attempt),
            _log(f.elapsed_s),
            _log(f.wait_s),
            1.0 if has_ra else 0.0,
            _log(ra),
            min(max(f.wait_s - ra, -60.0), 60.0) if has_ra else 0.0,
            _log(f.recent_calls),
            f.error_rate,
            f.timeout_rate,
            f.connect_rate,
            f.rate_429,
            f.rate_503,
            f.rate_5xx,
            _log(f.latency_ms),
            math.log((f.latency_ms + 1.0) / (baseline + 1.0)) if baseline > 0 else 0.0,
            _log(f.in_flight),
            _log(f.failure_streak),
            -1.0 if f.since_success_s is None else _log(f.since_success_s),
            math.sin(hour),
            math.cos(hour),
        ]

    def feature_names(self) -> list[str]:
        return [
            *(f"class_{c}" for c in ERROR_CLASSES),
            "status_code",
            "attempt",
            "log_elapsed",
            "log_wait",
            "has_retry_after",
            "log_retry_after",
            "wait_minus_retry_after",
            "log_recent_calls",
            "error_rate",
            "timeout_rate",
            "connect_rate",
            "rate_429",
            "rate_503",
            "rate_5xx",
            "log_latency",
            "log_latency_ratio",
            "log_in_flight",
            "log_failure_streak",
            "log_since_success",
            "hour_sin",
            "hour_cos",
        ]

    def decode(self, f: RetryFeatures, output: Sequence[float]) -> RetryDecision:
        p = min(max(float(output[-1]), 0.0), 1.0)  # P(success) is the last column
        # A client error fails the same way again: no model answer retries it.
        retry = p >= f.threshold and f.error_class != "client_error"
        return self._decision(f, p, retry, "model")

    def _decision(self, f: RetryFeatures, p: float, retry: bool, how: str) -> RetryDecision:
        wait = max(f.wait_s, f.retry_after_s or 0.0)
        if how == "model":
            verdict = ">=" if p >= f.threshold else "<"
            head = f"model: P(recovery within {wait:.2f}s)={p:.2f} {verdict} {f.threshold:.2f}"
        else:
            head = f"{how}, wait {wait:.2f}s (estimated P(recovery)={p:.2f})"
        mix = f"errors {f.error_rate:.0%} of {f.recent_calls} recent calls"
        if f.failure_streak:
            mix += f", {f.failure_streak} failed in a row"
        status = f" {f.status_code}" if f.status_code else ""
        return RetryDecision(
            p_recovery=p,
            retry=retry,
            wait_s=wait,
            explanation=f"{head}; {f.error_class}{status}, attempt {f.attempt}, {mix}"[:500],
        )


module = RetryModule()
