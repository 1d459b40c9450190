"""`@smart_retry`: retry a function's transient failures the way the `retry` module decides.

    @smart_retry(downstream="payments")
    def charge(order_id: int) -> Receipt: ...

    @smart_retry(downstream="payments", max_attempts=3, deadline_s=10)
    async def refund(order_id: int) -> None: ...

An exception from the function is classified (`aiassist.modules.retry.errors.classify`: httpx
errors with their status and Retry-After, timeouts, connection errors, `RetryableError`),
and the policy decides: retry after a wait, or give up and re-raise the exception with a
note saying why. Only exceptions in `retry_on` are considered (default: `DOWNSTREAM_ERRORS`,
failures of I/O: httpx's, `OSError` with its timeouts and connection errors, and
`RetryableError`; a bug in the function is never retried); `give_up_on` ones are re-raised
at once. Add a client library's own errors to `retry_on` (e.g. `requests.RequestException`).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

import httpx

from aiassist.modules.retry.errors import RetryableError, classify
from aiassist.modules.retry.policy import RetryPlan, RetryPolicy

__all__ = ["DOWNSTREAM_ERRORS", "smart_retry"]

F = TypeVar("F", bound=Callable[..., Any])
ExceptionTypes = tuple[type[BaseException], ...]

#: What `smart_retry` retries by default: failures of the call, not of the code around it.
DOWNSTREAM_ERRORS: ExceptionTypes = (httpx.HTTPError, OSError, RetryableError)


def _note(exc: BaseException, plan: RetryPlan, attempts: int) -> None:
    exc.add_note(f"aiassist retry: gave up after {attempts} attempt(s): {plan.reason}")


def smart_retry(
    downstream: str = "default",
    *,
    retry_on: ExceptionTypes = DOWNSTREAM_ERRORS,
    give_up_on: ExceptionTypes = (),
    policy: RetryPolicy | None = None,
    **options: Any,
) -> Callable[[F], F]:
    """Decorate a sync or async function so that its failures are retried by the policy.

    `options` are `RetryPolicy` fields (`max_attempts`, `deadline_s`, `backoff`, `waits`,
    `threshold`, `service`, ...); or pass a ready `policy`.
    """
    if callable(downstream):
        raise TypeError("use @smart_retry(downstream=...) or @smart_retry(), with parentheses")
    if policy is not None and options:
        raise TypeError(f"pass either a policy or policy options, not both: {sorted(options)}")
    chosen = policy or RetryPolicy(downstream=downstream, **options)

    def wants_retry(exc: BaseException) -> bool:
        return isinstance(exc, retry_on) and not isinstance(exc, give_up_on)

    def decorate(fn: F) -> F:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                call = chosen.start()
                while True:
                    call.begin()
                    try:
                        result = await fn(*args, **kwargs)
                    except asyncio.CancelledError:
                        call.cancel()
                        raise
                    except BaseException as exc:
                        if not wants_retry(exc):
                            await call.agive_up(classify(exc))
                            raise
                        plan = await call.afailed(classify(exc))
                        if not plan.retry:
                            _note(exc, plan, call.attempt)
                            raise
                        await asyncio.sleep(plan.wait_s)
                        continue
                    await call.asucceeded()
                    return result

            return cast(F, async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            call = chosen.start()
            while True:
                call.begin()
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    if not wants_retry(exc):
                        call.give_up(classify(exc))
                        raise
                    plan = call.failed(classify(exc))
                    if not plan.retry:
                        _note(exc, plan, call.attempt)
                        raise
                    time.sleep(plan.wait_s)
                    continue
                call.succeeded()
                return result

        return cast(F, wrapper)

    return decorate
