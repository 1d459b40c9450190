"""A worker process for the agent tests: `python -m tests.agent_worker MODE DB_URL BACKEND`.

`crash`: starts a lead run whose tool kills the process after the downstream call (exit 17),
printing the run id first. `ping KEY`: a run that pings a rate-limited partner three times
and prints how many calls went through. `hang LEASE`: starts a run whose model turn never
ends, with a lease of LEASE seconds the process renews while it lives, printing the run id
once the turn is in flight (the test then kills the process).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence
from typing import Any

from aiassist.agent.policy import service_identity
from aiassist.agent.providers.base import Message, ModelTurn
from aiassist.agent.ratelimit import rate_limiter
from aiassist.agent.runtime import Runtime
from aiassist.store.db import make_engine, make_sessionmaker
from tests.agent_backend import crm_tools


async def main(mode: str, db_url: str, backend: str, *rest: str) -> None:
    sessions = make_sessionmaker(make_engine(db_url))
    principal = service_identity("worker", ["agent:run"])
    if mode == "crash":
        rt = Runtime(sessions, crm_tools(backend, crash_after_lead=True))
        lead = {"name": "Zhang San", "email": "zhangsan@example.com"}
        script = [{"tool_calls": [{"name": "create_crm_lead", "arguments": lead}]}, "done"]
        run_id = await rt.create(
            "create a lead",
            principal=principal,
            tools=["create_crm_lead"],
            provider="test",
            provider_options={"script": script},
        )
        print(run_id, flush=True)
        await rt.drive(run_id)
        raise SystemExit("the tool should have ended the process")
    if mode == "hang":
        run_id = ""

        class Hanging:
            name, input_price_per_mtok, output_price_per_mtok = "held", 0.0, 0.0

            async def complete(
                self, messages: Sequence[Message], tools: Sequence[dict[str, Any]]
            ) -> ModelTurn:
                print(run_id, flush=True)
                await asyncio.Event().wait()  # never set: the turn outlives any lease
                raise AssertionError("unreachable")

        lease = float(rest[0])
        rt = Runtime(
            sessions,
            crm_tools(backend),
            lease_seconds=lease,
            tool_timeout=lease / 2,
            providers={"held": lambda options: Hanging()},
        )
        run_id = await rt.create("think forever", principal=principal, tools=[], provider="held")
        await rt.drive(run_id)
    if mode == "ping":
        rt = Runtime(
            sessions,
            crm_tools(backend, limit_key=rest[0]),
            rate_limiter=rate_limiter(os.environ["AIASSIST_REDIS_URL"]),
            rate_limit_wait=0,
        )
        ping = {"tool_calls": [{"name": "ping_partner", "arguments": {}}]}
        run = await rt.start(
            "ping the partner three times",
            principal=principal,
            tools=["ping_partner"],
            provider="test",
            provider_options={"script": [ping, ping, ping, "done"]},
        )
        print(sum(1 for c in run.calls if c.status == "succeeded"), flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
