"""Webhooks that start flows, authenticated by an HMAC signature over timestamp and body.

The sender signs the body as `aiassist.signing` describes (the scheme of aiassist's own
alerts). A missing or wrong signature, or a timestamp outside the tolerance (a replayed
request), gets 401 and an audit event. The answer comes once the run has been started and
recorded, so a sender that saw an error may resend: the event id is derived from the
signature, so a resend starts one run.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, HTTPException, Path, Request, status
from pydantic import SecretStr

from aiassist.agent.triggers.base import Event, Starter
from aiassist.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from aiassist.store.audit import AuditLog

__all__ = ["Webhook", "webhook_router"]

log = logging.getLogger("aiassist.triggers")


@dataclass(frozen=True)
class Webhook:
    name: str
    target: str
    secret: SecretStr
    tolerance_seconds: int = 300

    def __post_init__(self) -> None:
        if len(self.secret.get_secret_value()) < 16:
            raise ValueError(f"webhook {self.name!r}: the secret needs at least 16 characters")


def webhook_router(
    hooks: Iterable[Webhook],
    start: Starter,
    *,
    audit: AuditLog | Callable[[], AuditLog | None] | None = None,
    clock: Callable[[], float] = time.time,
) -> APIRouter:
    """`POST /v1/hooks/{name}`: public, but only a correctly signed request starts anything.

    `audit` may be a function giving the log, for an app whose database opens at start-up.
    """
    by_name = {h.name: h for h in hooks}
    router = APIRouter(tags=["triggers"])

    async def record(kind: str, name: str, data: dict[str, Any]) -> None:
        log_ = audit() if callable(audit) else audit
        if log_ is not None:
            await anyio.to_thread.run_sync(
                lambda: log_.append(kind, f"webhook/{name}", actor="webhook", data=data)
            )

    async def refuse(name: str, reason: str, request: Request) -> HTTPException:
        client = request.client.host if request.client else "unknown"
        log.warning("webhook %s refused from %s: %s", name, client, reason)
        await record("webhook.refused", name, {"reason": reason, "client": client})
        return HTTPException(status.HTTP_401_UNAUTHORIZED, f"webhook refused: {reason}")

    @router.post(
        "/v1/hooks/{name}",
        status_code=status.HTTP_200_OK,
        summary="Start a flow from a signed webhook",
        responses={401: {"description": "missing, wrong or stale signature"}},
    )
    async def receive(
        request: Request, name: str = Path(max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    ) -> dict[str, Any]:
        hook = by_name.get(name)
        if hook is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no webhook named {name!r}")
        body = await request.body()
        stamp = request.headers.get(TIMESTAMP_HEADER, "")
        given = request.headers.get(SIGNATURE_HEADER, "")
        if not stamp.isdigit() or not given:
            raise await refuse(name, f"missing {TIMESTAMP_HEADER} or {SIGNATURE_HEADER}", request)
        if abs(clock() - int(stamp)) > hook.tolerance_seconds:
            raise await refuse(name, "timestamp outside the tolerance (replayed?)", request)
        expected = sign(hook.secret.get_secret_value(), int(stamp), body)
        if not hmac.compare_digest(expected, given):
            raise await refuse(name, "signature does not match", request)
        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            raise HTTPException(422, "the body must be a JSON object") from None
        if not isinstance(payload, dict):
            raise HTTPException(422, "the body must be a JSON object")
        event_id = expected.removeprefix("sha256=")[:32]  # a resend is the same event
        event = Event(hook.target, "webhook", payload, name, id=event_id)
        await record("webhook.accepted", name, {"event": event.id, "target": hook.target})
        result = await start(event)
        return {"event": event.id, "target": hook.target, "result": result}  # FastAPI encodes it

    return router
