"""Audit appends on PostgreSQL as concurrent agent runs make them: one hash chain per run
against one chain shared by every writer, with 1, 8 and 32 runs at once.

    python bench/audit.py            # about a minute and a half: bench/results/audit.json
    python bench/audit.py --quick    # 1 and 2 runs, a few seconds, for the smoke test

Each run is a process of its own (as runs spread over workers), holding one connection.
It stores transactions as the runtime stores a tool call's result: a message, a run
update and two audit events, through `RunStore.write`, appended to the run's own chain.
The baseline, in the same run, is the shared chain every writer appends to
(`AuditLog.record`, the `main` chain: its writers queue on an advisory lock and read
its head), with the same two events a transaction. Commits are durable in both. The
figure is events appended per second, all runs together, over the same wall time; the
trail is verified after each phase.
"""

from __future__ import annotations

import argparse
import multiprocessing
import secrets
import time
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

from _common import goal, machine_cpu_s, machine_info, parse_args, postgres_database, write_results
from aiassist.agent.runs import RunStore, Unit
from aiassist.store.audit import AuditLog
from aiassist.store.db import make_engine, make_sessionmaker, upgrade
from aiassist.store.models import AgentRun

EVENTS_PER_TRANSACTION = 2


def _writer(url: str, shape: str, run_id: str, seconds: float, start: Any, out: Any) -> None:
    """One run: transactions until `seconds` after the start, then its count."""
    engine = make_engine(url, pool_size=1)
    sessions = make_sessionmaker(engine)
    store, log = RunStore(sessions), AuditLog(sessions)
    run = AgentRun(
        id=run_id,
        principal="bench",
        scopes="agent:run",
        task="bench",
        tools=[],
        provider="test",
        provider_options={},
        status="running",
        max_steps=1000,
    )
    store.create(run, [("user", "bench")], ("agent.run.started", run_id, {}))
    state = store.load(run_id)
    seq = len(state.messages)
    start.wait()
    deadline = time.perf_counter() + seconds
    done = 0
    while time.perf_counter() < deadline:
        if shape == "per run":

            def work(unit: Unit, seq: int = seq + done) -> None:
                unit.message(seq, "tool", {"n": seq})
                unit.renew_lease(300)
                unit.audit("bench.tool.succeeded", run_id, {"n": seq})
                unit.audit("bench.policy", run_id, {"n": seq})

            store.write(state, work)
        else:
            events = [("bench.tool.succeeded", run_id, {"n": done}), ("bench.policy", run_id, {})]
            log.record(lambda _, events=events: (None, events), actor="bench")
        done += 1
    out.put(done * EVENTS_PER_TRANSACTION)
    engine.dispose()


def phase(url: str, shape: str, runs: int, seconds: float) -> dict[str, Any]:
    """`runs` writers at once for `seconds`: events per second, all of them together."""
    spawn = multiprocessing.get_context("spawn")
    start, out = spawn.Barrier(runs + 1), spawn.Queue()
    workers = [
        spawn.Process(
            target=_writer,
            args=(url, shape, f"{shape[:3]}{runs}x{i}{secrets.token_hex(3)}", seconds, start, out),
        )
        for i in range(runs)
    ]
    for worker in workers:
        worker.start()
    start.wait(timeout=120)  # every writer connected and its run stored
    began, (busy, _) = time.perf_counter(), machine_cpu_s()
    events = sum(out.get(timeout=seconds + 120) for _ in workers)
    wall = time.perf_counter() - began
    cores = (machine_cpu_s()[0] - busy) / wall  # writers, server and anything else
    for worker in workers:
        worker.join(60)
    rate = events / max(wall, seconds)
    print(
        f"  {shape:>9}, {runs:>2} runs: {events:>7} events, {rate:>8.0f} events/s, "
        f"{cores:.2f} cores busy",
        flush=True,
    )
    return {
        "runs": runs,
        "events": events,
        "seconds": round(wall, 3),
        "events_per_s": round(rate),
        "cores_busy": round(cores, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, help="measured seconds per phase")
    parser.add_argument("--runs", help="concurrent runs of each phase, e.g. 1,2,8,32")
    args = parse_args(
        parser, "audit", {"seconds": 4.0, "runs": "1,2,8,32"}, {"seconds": 0.5, "runs": "1,2"}
    )
    runs_of = [int(n) for n in args.runs.split(",")]
    started = datetime.now(UTC)
    machine = machine_info(["sqlalchemy", "psycopg"])
    pg = postgres_database()
    if pg is None:
        raise SystemExit("this benchmark needs PostgreSQL (AIASSIST_BENCH_POSTGRES_URL)")
    url, drop = pg
    results: dict[str, list[dict[str, Any]]] = {"per run": [], "shared": []}
    try:
        upgrade(url)
        for runs in runs_of:
            for shape in results:
                results[shape].append(phase(url, shape, runs, args.seconds))
        engine = make_engine(url)
        check = AuditLog(make_sessionmaker(engine)).verify()
        engine.dispose()
    finally:
        drop()
    print(f"  trail verified: {check.ok}, {check.events} events in {check.chains} chains")
    rate = {shape: [p["events_per_s"] for p in phases] for shape, phases in results.items()}
    per_run, shared = rate["per run"], rate["shared"]
    steps = list(pairwise(runs_of))
    goals = [
        goal(
            f"audit appends grow with concurrent runs, {a} -> {b} runs (per-run chains)",
            "ratio > 1.0",
            f"{per_run[i + 1] / per_run[i]:.2f}x ({per_run[i]} -> {per_run[i + 1]} events/s)",
            per_run[i + 1] > per_run[i],
        )
        for i, (a, b) in enumerate(steps)
    ]
    goals += [
        goal(
            f"per-run chains vs one shared chain, {runs} runs",
            "ratio > 1.0",
            f"{per_run[i] / shared[i]:.2f}x",
            per_run[i] > shared[i],
        )
        for i, runs in enumerate(runs_of)
        if runs > 1
    ]
    goals.append(goal("the trail verifies after the phases", "ok", str(check.ok), check.ok))
    write_results(
        args,
        "audit",
        started,
        benchmark="audit appends with concurrent runs (PostgreSQL)",
        machine=machine,
        goals=goals,
        phases=results,
        verified={"ok": check.ok, "events": check.events, "chains": check.chains},
    )


if __name__ == "__main__":
    main()
