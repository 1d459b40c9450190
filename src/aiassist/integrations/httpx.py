"""httpx transports that retry the way the `retry` module decides.

    import httpx
    from aiassist.integrations.httpx import AsyncRetryTransport, RetryTransport

    client = httpx.Client(transport=RetryTransport(downstream="payments"))
    async_client = httpx.AsyncClient(transport=AsyncRetryTransport(downstream="payments"))

A response with a retryable status (408, 425, 429, 500, 502, 503, 504) or a transport error
(timeout, refused connection) is a failed attempt: the policy decides whether to send the
request again and after how long, honouring `Retry-After`, behind the downstream's retry
budget. When it gives up, the last response is returned as it is (or the last error
raised), so the client behaves as without the transport.

Only idempotent methods are retried by default (`methods`); the request body is read into
memory once so that it can be sent again. The downstream defaults to the request's host.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

import httpx

from aiassist.modules.retry.errors import RETRYABLE_STATUSES, ErrorInfo, classify, classify_status
from aiassist.modules.retry.policy import RetryCall, RetryPlan, RetryPolicy

__all__ = ["IDEMPOTENT_METHODS", "AsyncRetryTransport", "RetryTransport"]

IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})

Downstream = str | Callable[[httpx.Request], str] | None
_INVALID = re.compile(r"[^A-Za-z0-9_.:-]")


class _Policies:
    """The policy of each downstream this transport talks to, made on first use."""

    def __init__(
        self, downstream: Downstream, methods: Iterable[str], options: dict[str, Any]
    ) -> None:
        self._downstream = downstream
        self._options = options
        self._policies: dict[str, RetryPolicy] = {}
        self.methods = frozenset(m.upper() for m in methods)

    def name(self, request: httpx.Request) -> str:
        """The downstream's name, made valid: a host or a function never breaks a request."""
        if callable(self._downstream):
            raw = self._downstream(request)
        else:
            raw = self._downstream or request.url.host
        return _INVALID.sub("_", str(raw or ""))[:64] or "default"

    def for_request(self, request: httpx.Request) -> RetryPolicy | None:
        if request.method.upper() not in self.methods:
            return None
        name = self.name(request)
        policy = self._policies.get(name)
        if policy is None:
            policy = self._policies[name] = RetryPolicy(downstream=name, **self._options)
        return policy


def _failure(response: httpx.Response) -> ErrorInfo | None:
    if response.status_code not in RETRYABLE_STATUSES:
        return None
    return classify_status(response.status_code, response.headers)


class RetryTransport(httpx.BaseTransport):
    """Wraps a transport (default `httpx.HTTPTransport()`) with the retry policy.

    `options` are `RetryPolicy` fields (`max_attempts`, `deadline_s`, `threshold`,
    `service`, ...). `downstream` names the downstream, or is a function of the request.
    """

    def __init__(
        self,
        transport: httpx.BaseTransport | None = None,
        *,
        downstream: Downstream = None,
        methods: Iterable[str] = IDEMPOTENT_METHODS,
        **options: Any,
    ) -> None:
        self._transport = transport or httpx.HTTPTransport()
        self._policies = _Policies(downstream, methods, options)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        policy = self._policies.for_request(request)
        if policy is None:
            return self._transport.handle_request(request)
        request.read()  # a streamed body could not be sent twice
        call = policy.start()
        while True:
            call.begin()
            try:
                response = self._transport.handle_request(request)
            except httpx.TransportError as exc:
                plan = call.failed(classify(exc))
                if not plan.retry:
                    raise
                time.sleep(plan.wait_s)
                continue
            error = _failure(response)
            if error is None:
                _succeeded_or_permanent(call, response)
                return response
            plan = call.failed(error)
            if not plan.retry:
                return _gave_up(response, plan, call)
            response.read()
            response.close()
            time.sleep(plan.wait_s)

    def close(self) -> None:
        self._transport.close()


class AsyncRetryTransport(httpx.AsyncBaseTransport):
    """The async form of `RetryTransport` (default inner: `httpx.AsyncHTTPTransport()`)."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        downstream: Downstream = None,
        methods: Iterable[str] = IDEMPOTENT_METHODS,
        **options: Any,
    ) -> None:
        self._transport = transport or httpx.AsyncHTTPTransport()
        self._policies = _Policies(downstream, methods, options)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        policy = self._policies.for_request(request)
        if policy is None:
            return await self._transport.handle_async_request(request)
        await request.aread()
        call = policy.start()
        while True:
            call.begin()
            try:
                response = await self._transport.handle_async_request(request)
            except httpx.TransportError as exc:
                plan = await call.afailed(classify(exc))
                if not plan.retry:
                    raise
                await asyncio.sleep(plan.wait_s)
                continue
            except asyncio.CancelledError:
                call.cancel()
                raise
            error = _failure(response)
            if error is None:
                status = classify_status(response.status_code, response.headers)
                if status is None:
                    await call.asucceeded()
                else:
                    await call.agive_up(status)
                return response
            plan = await call.afailed(error)
            if not plan.retry:
                return _gave_up(response, plan, call)
            await response.aread()
            await response.aclose()
            await asyncio.sleep(plan.wait_s)

    async def aclose(self) -> None:
        await self._transport.aclose()


def _succeeded_or_permanent(call: RetryCall, response: httpx.Response) -> None:
    """A success, or a client error the policy never retries (counted as a failure)."""
    status = classify_status(response.status_code, response.headers)
    if status is None:
        call.succeeded()
    else:
        call.give_up(status)


def _gave_up(response: httpx.Response, plan: RetryPlan, call: RetryCall) -> httpx.Response:
    response.extensions["aiassist_retry"] = {
        "attempts": call.attempt,
        "verdict": plan.verdict,
        "reason": plan.reason,
    }
    return response
