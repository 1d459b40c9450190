"""What the agent runtime adds to each tool call: policy, intent record, dispatch, result,
audit events and persistence, with the tool's own time taken out.

    python bench/agent_overhead.py            # about a minute: bench/results/agent_overhead.json
    python bench/agent_overhead.py --quick    # a few seconds, for the smoke test

The test model plays a script of one call per turn against tools that return at once, on
SQLite (a file) and on the PostgreSQL server of AIASSIST_BENCH_POSTGRES_URL. A `read` call
is one transaction (its result, the policy event and the audit events); a `write` call is
two (the intent record before the call, the result after it). `per_model_turn` is the
storing of a model turn (the assistant message, usage, its audit event), the model's own
time taken out. Baselines from the same run: the tool called directly (dispatch floor) and
one `AuditLog.append`, the store's own single-event write, as ratios. Each kind runs twice:
with database work in a worker thread (the default, as in the service) and on the event
loop (`Runtime(db_in_thread=False)`, for a process that only drives runs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from _common import goal, machine_info, parse_args, show, summarize, write_results
from aiassist.agent import Risk, ToolContext, ToolSet, tool
from aiassist.agent.policy import service_identity
from aiassist.agent.providers.base import Message, ModelTurn
from aiassist.agent.providers.test import TestModel, call
from aiassist.agent.runtime import Runtime
from aiassist.store.audit import AuditLog
from aiassist.store.db import make_engine, make_sessionmaker, upgrade

PG_ADMIN = os.environ.get(
    "AIASSIST_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
GOAL_P99_MS = 2.0
TURNS_PER_RUN = 50
_tool_ns: list[int] = []
KINDS = ("noop_read", "noop_write", "noop_read_db_on_loop", "noop_write_db_on_loop")


@tool(risk=Risk.READ)
async def noop_read(n: int) -> dict[str, int]:
    """Return at once (a read)."""
    started = time.perf_counter_ns()
    result = {"n": n}
    _tool_ns.append(time.perf_counter_ns() - started)
    return result


@tool(risk=Risk.WRITE)
async def noop_write(n: int, ctx: ToolContext) -> dict[str, Any]:
    """Return at once (a write)."""
    started = time.perf_counter_ns()
    result = {"n": n, "key": ctx.idempotency_key[:8]}
    _tool_ns.append(time.perf_counter_ns() - started)
    return result


class TimedModel(TestModel):
    """The test model, timing itself so its time is taken out of the model-turn figure."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last_ns = self.last_cpu_ns = 0

    async def complete(
        self, messages: Sequence[Message], tools: Sequence[dict[str, Any]]
    ) -> ModelTurn:
        started, cpu = time.perf_counter_ns(), time.process_time_ns()
        turn = await super().complete(messages, tools)
        self.last_ns = time.perf_counter_ns() - started
        self.last_cpu_ns = time.process_time_ns() - cpu
        return turn


class TimedRuntime(Runtime):
    """The runtime, timing each tool call's handling and each model turn's storing."""

    per_call: list[int]
    per_turn: list[int]
    cpu_call: list[int]
    cpu_turn: list[int]

    async def _resolve(self, *args: Any, **kwargs: Any) -> bool:
        _tool_ns.clear()
        started, cpu = time.perf_counter_ns(), time.process_time_ns()
        done = await super()._resolve(*args, **kwargs)
        self.per_call.append(time.perf_counter_ns() - started - sum(_tool_ns))
        self.cpu_call.append(time.process_time_ns() - cpu)
        return done

    async def _model_turn(self, state: Any, provider: Any, allowed: Any) -> ModelTurn | None:
        started, cpu = time.perf_counter_ns(), time.process_time_ns()
        turn = await super()._model_turn(state, provider, allowed)
        self.per_turn.append(time.perf_counter_ns() - started - provider.last_ns)
        self.cpu_turn.append(time.process_time_ns() - cpu - provider.last_cpu_ns)
        return turn


async def measure(url: str, calls: int) -> dict[str, Any]:
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    principal = service_identity("bench", ["agent:run"])
    out: dict[str, Any] = {}
    for name, in_thread in (
        ("noop_read", True),
        ("noop_write", True),
        ("noop_read", False),
        ("noop_write", False),
    ):
        runtime = TimedRuntime(sessions, ToolSet([noop_read, noop_write]), db_in_thread=in_thread)
        runtime.per_call, runtime.per_turn, runtime.cpu_call, runtime.cpu_turn = [], [], [], []
        warmup = 5
        done = 0
        while done < calls + warmup:
            turns = min(TURNS_PER_RUN, calls + warmup - done)
            script = [[call(name, n=i)] for i in range(turns)]
            run = await runtime.start(
                "bench",
                principal=principal,
                tools=[name],
                provider=TimedModel([*script, "ok"]),
                max_steps=turns + 1,
            )
            assert run.status == "succeeded", run.error
            done += turns
        per_call = runtime.per_call[warmup:]
        per_turn = runtime.per_turn[warmup:]
        label = name if in_thread else f"{name}_db_on_loop"
        out[label] = {
            "per_call": summarize(per_call, "ms"),
            "per_model_turn": summarize(per_turn, "ms"),
            # CPU time of this process (all its threads), the mean: what the work costs,
            # whatever else the machine's cores were busy with meanwhile
            "cpu_ms_per_call": round(sum(runtime.cpu_call[warmup:]) / len(per_call) / 1e6, 3),
            "cpu_ms_per_model_turn": round(sum(runtime.cpu_turn[warmup:]) / len(per_turn) / 1e6, 3),
        }
        show(f"{label}: per call", out[label]["per_call"], "ms")
        show(
            f"{label}: per model turn",
            out[label]["per_model_turn"],
            "ms",
            f"CPU {out[label]['cpu_ms_per_call']} ms a call, "
            f"{out[label]['cpu_ms_per_model_turn']} ms a turn",
        )

    # baselines: the tool called directly, and one audit append on the same database
    context = ToolContext("r", "c", "k", "bench")
    direct = []
    for i in range(calls):
        started = time.perf_counter_ns()
        await noop_write.call({"n": i}, context)
        direct.append(time.perf_counter_ns() - started)
    audit = AuditLog(sessions)
    appends = []
    for i in range(calls):
        started = time.perf_counter_ns()
        audit.append("bench.baseline", str(i), actor="bench", data={"i": i})
        appends.append(time.perf_counter_ns() - started)
    out["baseline_direct_call"] = summarize(direct, "ms")
    out["baseline_audit_append"] = summarize(appends, "ms")
    show("baseline: tool called directly", out["baseline_direct_call"], "ms")
    show("baseline: one AuditLog.append", out["baseline_audit_append"], "ms")
    base = out["baseline_audit_append"]["p99_ms"]
    out["p99_ratio_to_audit_append"] = {
        k: round(out[k]["per_call"]["p99_ms"] / base, 2) for k in KINDS
    }
    check = audit.verify()
    assert check.ok, check
    out["audit_events"] = check.events
    engine.dispose()
    return out


def postgres_database() -> tuple[str, Any] | None:
    try:
        admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        name = f"aiassist_bench_{secrets.token_hex(4)}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        print(f"PostgreSQL unavailable ({type(exc).__name__}): skipped", flush=True)
        return None
    url = make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url, drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, help="measured tool calls per kind and database")
    args = parse_args(parser, "agent_overhead", {"calls": 1000}, {"calls": 40})
    started = datetime.now(UTC)
    machine = machine_info(["sqlalchemy", "psycopg", "anyio", "pydantic"])
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        upgrade(url)
        print("SQLite (file, WAL):", flush=True)
        results["sqlite"] = asyncio.run(measure(url, args.calls))
    pg = postgres_database()
    if pg is not None:
        url, drop = pg
        try:
            upgrade(url)
            print("PostgreSQL:", flush=True)
            results["postgres"] = asyncio.run(measure(url, args.calls))
        finally:
            drop()
    goals = [
        goal(
            f"runtime overhead per tool call, p99, {db}, {kind}",
            f"<= {GOAL_P99_MS} ms",
            f"{results[db][kind]['per_call']['p99_ms']} ms",
            results[db][kind]["per_call"]["p99_ms"] <= GOAL_P99_MS,
        )
        for db in results
        for kind in ("noop_read", "noop_write")  # as the service runs: database in a thread
    ]
    write_results(
        args,
        "agent_overhead",
        started,
        benchmark="agent runtime overhead per tool call",
        machine=machine,
        goals=goals,
        **results,
    )


if __name__ == "__main__":
    main()
