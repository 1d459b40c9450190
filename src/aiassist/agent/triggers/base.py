"""What every trigger hands over: an `Event`, to a `Starter`."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = ["Event", "Starter"]


@dataclass(frozen=True)
class Event:
    """Something happened that should start `target` (a flow name) with `payload` as input.

    `id` is unique per event and stable for its lifetime: use it as the run's idempotency
    key, so a trigger delivered twice (a webhook retried by its sender) starts one run.
    """

    target: str
    kind: Literal["cron", "webhook", "email"]
    payload: dict[str, Any]
    trigger: str
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    id: str = field(default_factory=lambda: uuid.uuid4().hex)


#: Starts what the event names; completes when that run ends (or is handed to a worker).
Starter = Callable[[Event], Awaitable[Any]]
