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
cost of a model turn with one call. `db_wait` is the part of `per_call` spent waiting for
the database: inside the driver's COMMIT (SQLite) or, on PostgreSQL, for the server's
answers to each transaction's batch of statements (the end of psycopg's pipeline) and to
its COMMIT, during which the server runs the statements and flushes its log. `own` is what
is left of each call without it.

The rows `noop_read`/`noop_write` run the runtime as the service does
(`Runtime(db_in_thread=None)`: on SQLite all database work on the event loop; on PostgreSQL
a call's writes on the loop, the rest in a worker thread); the `_db_in_thread` rows put all
of it in a worker thread, and on SQLite the `_checkpoint_in_commit` rows turn SQLite's own
WAL checkpoint back on beside the background one (the commit that crosses 1000 pages runs
one), as `make_engine` had it before. Baselines from the same run: the tool called directly
(dispatch floor), one `AuditLog.append` (the store's own single-event write), and through
the bare driver one round trip (`SELECT 1`) and one durable commit (a one-row INSERT and
COMMIT): the floor any crash-safe write pays.

Side by side, in the same run and on the same databases: LangGraph doing the same steps
(one tool call per model turn, runs of the same length) with its own PostgreSQL and SQLite
checkpointers (`_langgraph.py`), with `durability="sync"` (each step stored before the next,
as here) and its default `"async"`. Needs the `bench` extra (`pip install -e '.[bench]'`);
without it those rows are skipped, and said so.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Engine, event

from _common import (
    goal,
    machine_info,
    parse_args,
    postgres_database,
    show,
    summarize,
    write_results,
)
from aiassist.agent import Risk, ToolContext, ToolSet, tool
from aiassist.agent.policy import service_identity
from aiassist.agent.providers.base import Message, ModelTurn
from aiassist.agent.providers.test import TestModel, call
from aiassist.agent.runtime import Runtime
from aiassist.store.audit import AuditLog
from aiassist.store.db import checkpoint, make_engine, make_sessionmaker, upgrade
from aiassist.store.keys import Principal

GOAL_P99_MS = 5.0
TURNS_PER_RUN = 50
_tool_ns: list[int] = []
_wait_ns: list[int] = []
KINDS = ("noop_read", "noop_write")


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
    """The runtime, timing each tool call's handling, each model turn's storing and the
    time each call spent waiting for the database."""

    per_call: list[int]
    per_turn: list[int]
    per_step: list[int]
    cpu_call: list[int]
    cpu_turn: list[int]
    wait_call: list[int]

    def reset(self) -> None:
        self.per_call, self.per_turn, self.per_step = [], [], []
        self.cpu_call, self.cpu_turn, self.wait_call = [], [], []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reset()
        resolve = self.calls.resolve

        async def timed(*args: Any, **kwargs: Any) -> bool:  # one call, from request to result
            _tool_ns.clear()
            _wait_ns.clear()
            started, cpu = time.perf_counter_ns(), time.process_time_ns()
            done = await resolve(*args, **kwargs)
            self.per_call.append(time.perf_counter_ns() - started - sum(_tool_ns))
            self.per_step.append(self.per_call[-1] + self.per_turn[-1])
            self.cpu_call.append(time.process_time_ns() - cpu)
            self.wait_call.append(sum(_wait_ns))
            return done

        self.calls.resolve = timed  # type: ignore[method-assign]

    async def _model_turn(self, state: Any, provider: Any, allowed: Any) -> ModelTurn | None:
        started, cpu = time.perf_counter_ns(), time.process_time_ns()
        turn = await super()._model_turn(state, provider, allowed)
        self.per_turn.append(time.perf_counter_ns() - started - provider.last_ns)
        self.cpu_turn.append(time.process_time_ns() - cpu - provider.last_cpu_ns)
        return turn


def timed_as_wait(owner: Any, name: str) -> None:
    """Time every call of `owner.name` into `_wait_ns`: the database wait."""
    inner = getattr(owner, name)

    def timed(*args: Any) -> Any:
        started = time.perf_counter_ns()
        try:
            return inner(*args)
        finally:
            _wait_ns.append(time.perf_counter_ns() - started)

    setattr(owner, name, timed)


def timing_waits(engine: Engine) -> Engine:
    """`engine`, its dialect's COMMIT timed as a wait (what SQLite's commits wait for)."""
    timed_as_wait(engine.dialect, "do_commit")
    return engine


def checkpoint_in_commit(url: str) -> Engine:
    """An engine whose commits run SQLite's own WAL checkpoints (the diagnostic rows)."""
    engine = make_engine(url)

    @event.listens_for(engine, "connect")
    def _on(conn: Any, _record: Any) -> None:
        conn.execute("PRAGMA wal_autocheckpoint=1000")

    return engine


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
    engine = timing_waits(make_engine(url))
    sessions = make_sessionmaker(engine)
    principal = service_identity("bench", ["agent:run"])
    sqlite = engine.dialect.name == "sqlite"
    out: dict[str, Any] = {}
    passes: list[tuple[str, bool | None, Engine, str]] = [
        ("noop_read", None, engine, ""),
        ("noop_write", None, engine, ""),
        ("noop_read", True, engine, "_db_in_thread"),
        ("noop_write", True, engine, "_db_in_thread"),
    ]
    own_checkpoints = timing_waits(checkpoint_in_commit(url)) if sqlite else None
    if own_checkpoints is not None:
        passes += [
            ("noop_read", None, own_checkpoints, "_checkpoint_in_commit"),
            ("noop_write", None, own_checkpoints, "_checkpoint_in_commit"),
        ]
    for name, in_thread, on, suffix in passes:
        if sqlite:  # each pass starts from an empty WAL
            checkpoint(str(engine.url.database), "TRUNCATE")
        runtime = TimedRuntime(
            make_sessionmaker(on), ToolSet([noop_read, noop_write]), db_in_thread=in_thread
        )
        runtime.reset()
        warmup = 5
        await drive_all(runtime, principal, name, calls + warmup)
        per_call = runtime.per_call[warmup:]
        waits = runtime.wait_call[warmup:]
        label = name + suffix
        out[label] = {
            "db_in_thread": runtime.db_in_thread,
            "per_call": summarize(per_call, "ms"),
            "db_wait": summarize(waits, "ms"),
            "own": summarize([c - w for c, w in zip(per_call, waits, strict=True)], "ms"),
            "per_model_turn": summarize(runtime.per_turn[warmup:], "ms"),
            "per_step": summarize(runtime.per_step[warmup:], "ms"),
            # CPU time of this process (all its threads), the mean: what the work costs,
            # whatever else the machine's cores were busy with meanwhile
            "cpu_ms_per_call": round(sum(runtime.cpu_call[warmup:]) / len(per_call) / 1e6, 3),
            "cpu_ms_per_model_turn": round(sum(runtime.cpu_turn[warmup:]) / len(per_call) / 1e6, 3),
        }
        show(f"{label}: per call", out[label]["per_call"], "ms")
        show(f"{label}: database wait", out[label]["db_wait"], "ms")
        show(f"{label}: own (database wait out)", out[label]["own"], "ms")
        show(
            f"{label}: per step",
            out[label]["per_step"],
            "ms",
            f"CPU {out[label]['cpu_ms_per_call']} ms a call, "
            f"{out[label]['cpu_ms_per_model_turn']} ms a turn",
        )
    out |= await baselines(engine, sessions, calls)
    base = out["baseline_audit_append"]["p99_ms"]
    out["p99_ratio_to_audit_append"] = {
        k: round(v["per_call"]["p99_ms"] / base, 2)
        for k, v in out.items()
        if isinstance(v, dict) and "per_call" in v
    }
    check = AuditLog(sessions).verify()
    assert check.ok, check
    out["audit_events"] = check.events
    engine.dispose()
    if own_checkpoints is not None:
        own_checkpoints.dispose()
    return out


async def langgraph_rows(database: str, target: str, calls: int) -> dict[str, Any]:
    """LangGraph's per-step cost on the same database, both durability modes."""
    from _langgraph import measure_langgraph, saver

    out: dict[str, Any] = {}
    async with saver(database, target) as checkpointer:
        for durability in ("sync", "async"):
            steps = await measure_langgraph(checkpointer, calls, TURNS_PER_RUN, durability)
            out[f"langgraph_{durability}"] = {"per_step": summarize(steps, "ms")}
            show(
                f"LangGraph, durability={durability}: per step",
                out[f"langgraph_{durability}"]["per_step"],
                "ms",
            )
    return out


def langgraph_available() -> bool:
    if importlib.util.find_spec("langgraph") is None:
        print("LangGraph not installed (pip install -e '.[bench]'): its rows are skipped")
        return False
    return True


async def baselines(engine: Engine, sessions: Any, calls: int) -> dict[str, Any]:
    """The tool called directly, one audit append, and the bare driver's round trip and
    durable commit on the same database."""
    context = ToolContext("r", "c", "k", "bench")
    direct, appends, trips, commits = [], [], [], []
    for i in range(calls):
        started = time.perf_counter_ns()
        await noop_write.call({"n": i}, context)
        direct.append(time.perf_counter_ns() - started)
    audit = AuditLog(sessions)
    for i in range(calls):
        started = time.perf_counter_ns()
        audit.append("bench.baseline", str(i), actor="bench", data={"i": i})
        appends.append(time.perf_counter_ns() - started)
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("CREATE TABLE bench_floor (id INTEGER PRIMARY KEY, v TEXT)")
        raw.commit()
        for i in range(calls):
            started = time.perf_counter_ns()
            cursor.execute("SELECT 1")
            cursor.fetchall()
            trips.append(time.perf_counter_ns() - started)
            started = time.perf_counter_ns()
            cursor.execute(f"INSERT INTO bench_floor (id, v) VALUES ({i}, 'x')")
            raw.commit()
            commits.append(time.perf_counter_ns() - started)
        cursor.execute("DROP TABLE bench_floor")
        raw.commit()
    finally:
        raw.close()
    out = {
        "baseline_direct_call": summarize(direct, "ms"),
        "baseline_audit_append": summarize(appends, "ms"),
        "baseline_round_trip": summarize(trips, "ms"),
        "baseline_durable_commit": summarize(commits, "ms"),
    }
    for key, label in [
        ("baseline_direct_call", "tool called directly"),
        ("baseline_audit_append", "one AuditLog.append"),
        ("baseline_round_trip", "driver: one round trip"),
        ("baseline_durable_commit", "driver: one-row INSERT + COMMIT"),
    ]:
        show(f"baseline: {label}", out[key], "ms")
    return out


def against_langgraph(db: str, rows: dict[str, Any]) -> dict[str, Any]:
    """A write call's whole step (two durable writes) against LangGraph's step with its two
    checkpoints written before going on: p50 and p99 both no worse."""
    ours, theirs = rows["noop_write"]["per_step"], rows["langgraph_sync"]["per_step"]
    ratios = {q: round(ours[f"{q}_ms"] / theirs[f"{q}_ms"], 2) for q in ("p50", "p99")}
    rows["per_step_ratio_to_langgraph_sync"] = ratios
    measured = ", ".join(
        f"{q} {ours[f'{q}_ms']} vs {theirs[f'{q}_ms']} ms ({r}x)" for q, r in ratios.items()
    )
    return goal(
        f"per step (model turn + write call), {db}, vs LangGraph's checkpointer (sync)",
        "<= 1x at p50 and p99",
        measured,
        all(r <= 1 for r in ratios.values()),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, help="measured tool calls per kind and database")
    args = parse_args(parser, "agent_overhead", {"calls": 1000}, {"calls": 40})
    started = datetime.now(UTC)
    timed_as_wait(psycopg.Pipeline, "__exit__")  # a transaction's batch, answered
    with_langgraph = langgraph_available()
    packages = ["sqlalchemy", "psycopg", "anyio", "pydantic"]
    machine = machine_info(packages + (["langgraph", "aiosqlite"] if with_langgraph else []))
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        upgrade(url)
        print("SQLite (file, WAL):", flush=True)
        results["sqlite"] = asyncio.run(measure(url, args.calls))
        if with_langgraph:
            lite = str(Path(tmp) / "langgraph.db")
            results["sqlite"] |= asyncio.run(langgraph_rows("sqlite", lite, args.calls))
    pg = postgres_database()
    if pg is not None:
        url, drop = pg
        try:
            upgrade(url)
            print("PostgreSQL:", flush=True)
            results["postgres"] = asyncio.run(measure(url, args.calls))
            if with_langgraph:
                libpq = url.replace("postgresql+psycopg://", "postgresql://", 1)
                results["postgres"] |= asyncio.run(langgraph_rows("postgres", libpq, args.calls))
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
        for kind in KINDS  # as the service runs
    ]
    goals += [
        against_langgraph(db, results[db]) for db in results if "langgraph_sync" in results[db]
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
