"""Celery: let the `retry` module decide each `autoretry_for` (or `self.retry`) retry.

    from aiassist.integrations.celery.retry import SmartRetryTask

    @app.task(bind=True, base=SmartRetryTask, autoretry_for=(httpx.HTTPError,),
              max_retries=5, retry_downstream="payments")
    def charge(self, order_id: int) -> None: ...

Celery's autoretry catches the exception and calls `task.retry(exc=...)`; `SmartRetryTask`
hooks that call. The failure is classified (status, Retry-After, timeout, refused
connection) and the policy decides, with the downstream's stats and retry budget in this
worker process: give up (the task fails with the exception, and a note says why) or retry
with the countdown it chose, which replaces `retry_backoff`'s. `max_retries` still bounds
the attempts. A manual `raise self.retry(exc=exc)` goes through the same hook.

The decision id and the time of the first attempt travel in the retry's message headers, so
whichever worker runs the retry records its outcome (did it succeed) through
`AIAssistService` (`retry_service`, default the process-wide instance).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

from celery import Task
from celery.exceptions import Retry

from aiassist.integrations.celery.priority import task_headers
from aiassist.modules.retry.errors import classify
from aiassist.modules.retry.policy import RetryCall, RetryPolicy
from aiassist.sdk.service import AIAssistService

__all__ = ["HEADER_FIRST_AT", "HEADER_RETRY_DECISION", "SmartRetryTask"]

log = logging.getLogger("aiassist.celery")

HEADER_RETRY_DECISION: Final = "aiassist_retry_decision_id"
HEADER_FIRST_AT: Final = "aiassist_retry_first_at"  # Unix time of the first attempt
_CALL: Final = "aiassist_retry_call"  # where the running attempt's RetryCall is kept


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


class SmartRetryTask(Task):  # type: ignore[misc]  # celery ships no type information
    """Task base class whose retries the `retry` module decides (see the module doc)."""

    #: The downstream this task calls (default: the task's name).
    retry_downstream: str | None = None
    #: `RetryPolicy` fields (`deadline_s`, `threshold`, `waits`, ...).
    retry_options: dict[str, Any] | None = None
    #: The service that decides and records (default: `AIAssistService.instance()`).
    retry_service: AIAssistService | None = None

    _retry_policy: RetryPolicy | None = None

    def retry_policy(self) -> RetryPolicy:
        if self._retry_policy is None:
            max_attempts = 100 if self.max_retries is None else min(self.max_retries + 1, 100)
            options: dict[str, Any] = {"max_attempts": max_attempts, "deadline_s": 3600.0}
            options |= self.retry_options or {}
            self._retry_policy = RetryPolicy(
                downstream=self.retry_downstream or self.name.replace("/", ".")[:64],
                service=self.retry_service,
                clock=time.time,  # attempts may run in different processes
                **options,
            )
        return self._retry_policy

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if request.called_directly:
            return super().__call__(*args, **kwargs)
        call = self._begin(request)
        try:
            result = super().__call__(*args, **kwargs)
        except Retry:
            raise  # `retry` ended the attempt and decided
        except BaseException as exc:
            if getattr(request, _CALL, None) is call:  # not ended by `retry`
                self._safely(call.give_up, classify(exc))
            raise
        self._safely(call.succeeded)
        return result

    def retry(
        self,
        args: Any = None,
        kwargs: Any = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: Any = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Any:
        request = self.request
        call: RetryCall | None = getattr(request, _CALL, None)
        if exc is None or call is None:  # nothing to judge: Celery's own behaviour
            return super().retry(args, kwargs, exc, throw, eta, countdown, max_retries, **options)
        setattr(request, _CALL, None)
        try:
            plan = call.failed(classify(exc))
        except Exception:  # the policy never breaks a task: Celery's own retry then
            log.exception("retry policy failed for %s; Celery's retry applies", self.name)
            return super().retry(args, kwargs, exc, throw, eta, countdown, max_retries, **options)
        if not plan.retry:
            exc.add_note(f"aiassist retry: gave up after {call.attempt} attempt(s): {plan.reason}")
            raise exc
        headers = {**(request.headers or {}), **task_headers(request)}
        headers[HEADER_FIRST_AT] = call.started
        headers[HEADER_RETRY_DECISION] = plan.decision.decision_id if plan.decision else None
        options["headers"] = {**headers, **(options.get("headers") or {})}
        return super().retry(args, kwargs, exc, throw, None, plan.wait_s, max_retries, **options)

    def _begin(self, request: Any) -> RetryCall:
        policy = self.retry_policy()
        headers = task_headers(request)
        retries = int(request.retries or 0)
        first_at = _float(headers.get(HEADER_FIRST_AT))
        if retries == 0 or first_at is None:
            policy.budget.record_request()
            first_at = time.time()
        pending = headers.get(HEADER_RETRY_DECISION) if retries else None
        call = RetryCall(
            policy, first_at, attempt=retries, pending_decision_id=str(pending) if pending else None
        )
        call.begin()
        setattr(request, _CALL, call)
        return call

    def _safely(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("aiassist: retry bookkeeping failed for %s", self.name)
