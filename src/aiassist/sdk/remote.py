"""HTTP client for the inference service: tight timeouts behind a circuit breaker.

Every failure (timeout, refused connection, 5xx, unexpected answer) is raised as
`ServiceUnavailable` with a short reason; `AIAssistService` turns it into a fallback.
While the breaker is open, calls fail at once without touching the network, and after
`breaker_recovery_seconds` trial calls go through again and close it on success.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

import httpx
from circuitbreaker import CircuitBreaker
from pydantic import ValidationError

from aiassist.__about__ import __version__
from aiassist.modules import AnyModule, Decision, Features, Outcome
from aiassist.settings import Settings

__all__ = ["RemoteClient", "ServiceUnavailable"]


class ServiceUnavailable(Exception):
    """The inference service could not answer; `reason` is a metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


class RemoteClient:
    def __init__(self, settings: Settings) -> None:
        self._base_url = settings.service_url.rstrip("/")
        self._timeout = httpx.Timeout(settings.timeout_ms / 1000)
        # A small pool: decisions are short, and httpcore slows down with many connections.
        self._limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        self._headers = {"user-agent": f"aiassist-sdk/{__version__}"}
        if settings.api_key is not None:
            self._headers["authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
        self.breaker = CircuitBreaker(
            failure_threshold=settings.breaker_failures,
            recovery_timeout=settings.breaker_recovery_seconds,
            expected_exception=ServiceUnavailable,
            name=f"aiassist:{self._base_url}",
        )
        self._pid = os.getpid()
        self._client: httpx.Client | None = None
        self._aclients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}

    # --- connection pools, one per process (and per event loop) ------------------------
    def _check_fork(self) -> None:
        if os.getpid() != self._pid:  # pools inherited across fork are not safe to use
            self._pid = os.getpid()
            self._client = None
            self._aclients = {}
            self.breaker.reset()

    def _sync(self) -> httpx.Client:
        self._check_fork()
        if self._client is None:
            self._client = httpx.Client(
                base_url=self._base_url,
                timeout=self._timeout,
                headers=self._headers,
                limits=self._limits,
            )
        return self._client

    def _async(self) -> httpx.AsyncClient:
        self._check_fork()
        loop = asyncio.get_running_loop()
        client = self._aclients.get(loop)
        if client is None:
            self._aclients = {lp: c for lp, c in self._aclients.items() if not lp.is_closed()}
            client = httpx.AsyncClient(
                base_url=self._base_url,
                timeout=self._timeout,
                headers=self._headers,
                limits=self._limits,
            )
            self._aclients[loop] = client
        return client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def aclose(self) -> None:
        self.close()
        loop = asyncio.get_running_loop()
        client = self._aclients.pop(loop, None)
        if client is not None:
            await client.aclose()

    # --- calls -------------------------------------------------------------------------
    def decide_many(
        self, module: AnyModule, batch: Sequence[Features], *, record: bool = True
    ) -> list[Decision]:
        path, body = _decide_request(module, batch, record)
        self._guard()
        with self.breaker:
            response = _send(lambda: self._sync().post(path, json=body))
            return _decisions(module, response, len(batch))

    async def adecide_many(
        self, module: AnyModule, batch: Sequence[Features], *, record: bool = True
    ) -> list[Decision]:
        path, body = _decide_request(module, batch, record)
        self._guard()
        with self.breaker:
            client = self._async()
            response = await _asend(client.post(path, json=body))
            return _decisions(module, response, len(batch))

    def record_outcome(self, module: AnyModule, decision_id: str, outcome: Outcome) -> None:
        path, body = _outcome_request(module, decision_id, outcome)
        self._guard()
        with self.breaker:
            _check(_send(lambda: self._sync().post(path, json=body)))

    async def arecord_outcome(self, module: AnyModule, decision_id: str, outcome: Outcome) -> None:
        path, body = _outcome_request(module, decision_id, outcome)
        self._guard()
        with self.breaker:
            client = self._async()
            _check(await _asend(client.post(path, json=body)))

    def _guard(self) -> None:
        self._check_fork()
        if self.breaker.opened:
            raise ServiceUnavailable("breaker_open")


def _decide_request(
    module: AnyModule, batch: Sequence[Features], record: bool
) -> tuple[str, dict[str, Any]]:
    body: dict[str, Any] = {} if record else {"record": False}
    if len(batch) == 1:
        body["features"] = batch[0].model_dump(mode="json")
    else:
        body["batch"] = [f.model_dump(mode="json") for f in batch]
    return f"/v1/{module.name}/decide", body


def _outcome_request(
    module: AnyModule, decision_id: str, outcome: Outcome
) -> tuple[str, dict[str, Any]]:
    body = {"decision_id": decision_id, "outcome": outcome.model_dump(mode="json")}
    return f"/v1/{module.name}/outcome", body


def _send(call: Any) -> httpx.Response:
    try:
        response: httpx.Response = call()
    except httpx.TimeoutException as exc:
        raise ServiceUnavailable("timeout", type(exc).__name__) from exc
    except httpx.TransportError as exc:
        raise ServiceUnavailable("unreachable", type(exc).__name__) from exc
    return response


async def _asend(call: Any) -> httpx.Response:
    try:
        response: httpx.Response = await call
    except httpx.TimeoutException as exc:
        raise ServiceUnavailable("timeout", type(exc).__name__) from exc
    except httpx.TransportError as exc:
        raise ServiceUnavailable("unreachable", type(exc).__name__) from exc
    return response


def _check(response: httpx.Response) -> None:
    if response.status_code >= 500:
        raise ServiceUnavailable("service_error", f"HTTP {response.status_code}")
    if response.status_code >= 400:
        raise ServiceUnavailable("rejected", f"HTTP {response.status_code}: {response.text[:200]}")


def _decisions(module: AnyModule, response: httpx.Response, expected: int) -> list[Decision]:
    _check(response)
    try:
        if expected == 1:
            return [module.Decision.model_validate_json(response.content)]
        items = response.json()["decisions"]
        decisions = [module.Decision.model_validate(item) for item in items]
    except (ValidationError, ValueError, KeyError, TypeError) as exc:
        raise ServiceUnavailable("bad_response", str(exc)[:200]) from exc
    if len(decisions) != expected:
        raise ServiceUnavailable("bad_response", f"{len(decisions)} decisions for {expected}")
    return decisions
