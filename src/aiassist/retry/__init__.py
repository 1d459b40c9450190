"""Smart retries: retry a failed call only when the `retry` module expects it to recover,
after the wait it names, and never beyond the downstream's retry budget.

- `smart_retry`: a decorator for sync and async functions;
- `RetryPolicy` / `RetryCall`: the policy and one call's attempts, for other integrations
  (`aiassist.integrations.httpx`, `aiassist.integrations.celery_retry`);
- `RetryBudget`: the Finagle/Envoy-style cap on retries that no decision overrides;
- `DownstreamTracker`: each downstream's recent error mix, latency and load;
- `classify`, `ErrorInfo`, `RetryableError`: what a failure was.
"""

from aiassist.retry.budget import BudgetState, RetryBudget
from aiassist.retry.decorator import DOWNSTREAM_ERRORS, smart_retry
from aiassist.retry.errors import ErrorInfo, RetryableError, classify, classify_status
from aiassist.retry.policy import (
    Backoff,
    Downstream,
    RetryCall,
    RetryPlan,
    RetryPolicy,
    downstream,
)
from aiassist.retry.tracker import DownstreamStats, DownstreamTracker

__all__ = [
    "DOWNSTREAM_ERRORS",
    "Backoff",
    "BudgetState",
    "Downstream",
    "DownstreamStats",
    "DownstreamTracker",
    "ErrorInfo",
    "RetryBudget",
    "RetryCall",
    "RetryPlan",
    "RetryPolicy",
    "RetryableError",
    "classify",
    "classify_status",
    "downstream",
    "smart_retry",
]
