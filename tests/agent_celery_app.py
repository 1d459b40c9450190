"""The tools and the order desk of the Celery agent tests.

The workers load the tools through `AIASSIST_AGENT_TOOLS=tests.agent_celery_app:tools_from_env`,
exactly as a deployment loads its own. Besides the CRM tools of `tests.agent_backend` there
is `place_order`, whose downstream (`OrderDesk`, mounted on the same loopback backend) can
hold a request after doing its side effect, until the test lets it answer: the window in
which a worker is killed "mid-step", with the order placed and the result not yet recorded.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import Counter
from typing import Any

import httpx
from fastapi import FastAPI, Header

from aiassist.agent import ToolContext, ToolError, ToolSet, tool
from tests.agent_backend import backend_app, crm_tools

#: Longest a held request waits for the gate; below the workers' tool timeout.
HOLD_SECONDS = 5.0


class OrderDesk:
    """Orders with `Idempotency-Key` semantics, and a gate that holds first deliveries."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.reset(hold=False)

    def reset(self, *, hold: bool, only: str | None = None) -> None:
        """Forget every order; with `hold`, hold first deliveries (of the sku `only`, if
        named) until the gate opens."""
        with self.lock:
            self.only = only
            self.placed: Counter[str] = Counter()  # sku -> side effects done
            self.replies: dict[str, dict[str, Any]] = {}
            self.held: list[str] = []  # worker pids of requests waiting at the gate
            self.workers: set[str] = set()  # every worker pid that placed an order
            self.deliveries = 0
        if hold:
            self.gate.clear()
        else:
            self.gate.set()

    def install(self, app: FastAPI) -> None:
        @app.post("/orders")
        def place(
            body: dict[str, Any],
            idempotency_key: str = Header(),
            x_worker_pid: str = Header("?"),
        ) -> Any:
            with self.lock:
                self.deliveries += 1
                if idempotency_key in self.replies:  # a resent call: the first answer
                    return self.replies[idempotency_key]
                self.placed[body["sku"]] += 1
                reply = {"order": f"O{sum(self.placed.values())}", "sku": body["sku"]}
                self.replies[idempotency_key] = reply
                self.workers.add(x_worker_pid)
                if self.only not in (None, body["sku"]):
                    return reply
                self.held.append(x_worker_pid)
            try:
                self.gate.wait(HOLD_SECONDS)  # done downstream; the caller does not know yet
            finally:
                with self.lock, contextlib.suppress(ValueError):  # unless reset meanwhile
                    self.held.remove(x_worker_pid)
            return reply


def backend() -> tuple[FastAPI, OrderDesk]:
    """The CRM backend of the agent tests plus the order desk."""
    app = backend_app()
    desk = OrderDesk()
    desk.install(app)
    return app, desk


def tools(url: str) -> ToolSet:
    @tool
    async def place_order(sku: str, quantity: int, ctx: ToolContext) -> Any:
        """Place an order for `quantity` of `sku`."""
        headers = {"Idempotency-Key": ctx.idempotency_key, "X-Worker-Pid": str(os.getpid())}
        async with httpx.AsyncClient(base_url=url, timeout=HOLD_SECONDS * 4) as client:
            started = time.monotonic()
            response = await client.post(
                "/orders", json={"sku": sku, "quantity": quantity}, headers=headers
            )
        if response.status_code != 200:
            raise ToolError(f"backend answered {response.status_code}", retryable=True)
        return response.json() | {"waited_s": round(time.monotonic() - started, 3)}

    toolset = crm_tools(url)
    toolset.add(place_order)
    return toolset


def tools_from_env() -> ToolSet:
    """For `AIASSIST_AGENT_TOOLS` in a worker process."""
    return tools(os.environ["AGENT_TEST_BACKEND"])
