"""What the agent runtime adds to each tool call: policy, intent record, dispatch, result,
audit events and persistence, with the tool's own time taken out.

    python bench/agent_overhead.py            # about a minute: bench/results/agent_overhead.json
    python bench/agent_overhead.py --quick    # a few seconds, for the smoke test

The test model plays a script of one call per turn against tools that return at once, on
SQLite (a file) and on the PostgreSQL server of AIASSIST_BENCH_POSTGRES_URL.

The model turn that asks for a call is stored in that call's first transaction, so
`per_call` (the runtime's handling of the call) includes storing the turn: a `read` call is
one transaction (turn, result, policy and audit events), a `write` call two (turn and intent
record before the call, the result after it). `per_model_turn` is what is left of the turn
(prompt, tool specs, usage), the model's own time taken out; `per_step` is both, the whole
cost of a model turn with one call. Baselines from the same run: the tool called directly
(dispatch floor) and one `AuditLog.append`, the store's own single-event write, as ratios.
Each kind runs twice: database work in a worker thread (the default, as in the service) and
on the event loop (`Runtime(db_in_thread=False)`, for a process that only drives runs).

On SQLite four diagnostic rows run with the WAL's automatic checkpoint off: `*_no_
autocheckpoint` (on the loop) checkpoint only between passes, so their difference to the
`*_db_on_loop` rows is what the checkpoints (an fsync inside the commit that crosses 1000
WAL pages) add to the tail; `*_background_checkpoint` (database in a thread, as the service)
checkpoint from another thread every 250 ms meanwhile, a remedy `make_engine` could adopt.
They are not how the service runs today.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url

from _common import goal, machine_info, parse_args, show, summarize, write_results
from aiassist.agent import Risk, ToolContext, ToolSet, tool
from aiassist.agent.policy import service_identity
from aiassist.agent.providers.base import Message, ModelTurn
from aiassist.agent.providers.test import TestModel, call
from aiassist.agent.runtime import Runtime
from aiassist.store.audit import AuditLog
from aiassist.store.db import make_engine, make_sessionmaker, upgrade
from aiassist.store.keys import Principal

PG_ADMIN = os.environ.get(
    "AIASSIST_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
GOAL_P99_MS = 2.0
TURNS_PER_RUN = 50
_tool_ns: list[int] = []
KINDS = ("noop_read", "noop_write", "noop_read_db_on_loop", "noop_write_db_on_loop")
DIAGNOSTIC = (
    "noop_read_no_autocheckpoint",
    "noop_write_no_autocheckpoint",
    "noop_read_background_checkpoint",
    "noop_write_background_checkpoint",
)


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
    per_step: list[int]
    cpu_call: list[int]
    cpu_turn: list[int]

    async def _resolve(self, *args: Any, **kwargs: Any) -> bool:
        _tool_ns.clear()
        started, cpu = time.perf_counter_ns(), time.process_time_ns()
        done = await super()._resolve(*args, **kwargs)
        self.per_call.append(time.perf_counter_ns() - started - sum(_tool_ns))
        self.per_step.append(self.per_call[-1] + self.per_turn[-1])
        self.cpu_call.append(time.process_time_ns() - cpu)
        return done

    async def _model_turn(self, state: Any, provider: Any, allowed: Any) -> ModelTurn | None:
        started, cpu = time.perf_counter_ns(), time.process_time_ns()
        turn = await super()._model_turn(state, provider, allowed)
        self.per_turn.append(time.perf_counter_ns() - started - provider.last_ns)
        self.cpu_turn.append(time.process_time_ns() - cpu - provider.last_cpu_ns)
        return turn


def no_autocheckpoint(url: str) -> Engine:
    """An engine whose connections leave checkpoints to `checkpoint` (diagnostic rows)."""
    engine = make_engine(url)

    @event.listens_for(engine, "connect")
    def _off(conn: Any, _record: Any) -> None:
        conn.execute("PRAGMA wal_autocheckpoint=0")

    return engine


def checkpoint(engine: Engine, mode: str = "TRUNCATE") -> None:
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            conn.exec_driver_sql(f"PRAGMA wal_checkpoint({mode})")


@contextmanager
def checkpointing(engine: Engine | None, every: float = 0.25) -> Iterator[None]:
    """Checkpoint `engine`'s WAL from a thread of its own meanwhile (PASSIVE: never waits
    for, nor blocks, the writers)."""
    if engine is None:
        yield
        return
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            checkpoint(engine, "PASSIVE")

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


async def drive_all(runtime: Runtime, principal: Principal, name: str, calls: int) -> None:
    """`calls` calls of the tool `name`, one a model turn, in runs of `TURNS_PER_RUN`."""
    done = 0
    while done < calls:
        turns = min(TURNS_PER_RUN, calls - done)
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


async def measure(url: str, calls: int) -> dict[str, Any]:
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    principal = service_identity("bench", ["agent:run"])
    out: dict[str, Any] = {}
    passes = [
        ("noop_read", True, engine, ""),
        ("noop_write", True, engine, ""),
        ("noop_read", False, engine, "_db_on_loop"),
        ("noop_write", False, engine, "_db_on_loop"),
    ]
    quiet = no_autocheckpoint(url) if engine.dialect.name == "sqlite" else None
    if quiet is not None:
        passes += [
            ("noop_read", False, quiet, "_no_autocheckpoint"),
            ("noop_write", False, quiet, "_no_autocheckpoint"),
            ("noop_read", True, quiet, "_background_checkpoint"),
            ("noop_write", True, quiet, "_background_checkpoint"),
        ]
    for name, in_thread, on, suffix in passes:
        checkpoint(engine)  # each pass starts from an empty WAL
        runtime = TimedRuntime(
            make_sessionmaker(on), ToolSet([noop_read, noop_write]), db_in_thread=in_thread
        )
        runtime.per_call, runtime.per_turn, runtime.cpu_call, runtime.cpu_turn = [], [], [], []
        runtime.per_step = []
        warmup = 5
        background = quiet if suffix == "_background_checkpoint" else None
        with checkpointing(background):
            await drive_all(runtime, principal, name, calls + warmup)
        per_call = runtime.per_call[warmup:]
        per_turn = runtime.per_turn[warmup:]
        label = name + suffix
        out[label] = {
            "per_call": summarize(per_call, "ms"),
            "per_model_turn": summarize(per_turn, "ms"),
            "per_step": summarize(runtime.per_step[warmup:], "ms"),
            # CPU time of this process (all its threads), the mean: what the work costs,
            # whatever else the machine's cores were busy with meanwhile
            "cpu_ms_per_call": round(sum(runtime.cpu_call[warmup:]) / len(per_call) / 1e6, 3),
            "cpu_ms_per_model_turn": round(sum(runtime.cpu_turn[warmup:]) / len(per_turn) / 1e6, 3),
        }
        show(f"{label}: per call", out[label]["per_call"], "ms")
        show(f"{label}: per step", out[label]["per_step"], "ms")
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
        k: round(out[k]["per_call"]["p99_ms"] / base, 2) for k in (*KINDS, *DIAGNOSTIC) if k in out
    }
    check = audit.verify()
    assert check.ok, check
    out["audit_events"] = check.events
    engine.dispose()
    if quiet is not None:
        quiet.dispose()
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
