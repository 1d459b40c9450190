"""Decision latency: in process (engine, SDK local mode, a small ONNX model) and over HTTP.

    python bench/latency.py            # full run, 1.5 minutes: bench/results/latency.json
    python bench/latency.py --quick    # a few seconds, for the smoke test

In process, each call is timed with time.perf_counter_ns (GC enabled). The ONNX model is a
tiny logistic regression, published to a registry and loaded by `load_checked`, the path the
service serves models through. Over HTTP the real service runs as a child process on
loopback and the rule fallback answers; client and server share this machine's cores. The
same load against a no-op ASGI server (uvicorn, fixed answer) gives this machine's floor.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import numpy as np
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select

from _common import (
    MODULE,
    CpuWindow,
    Service,
    feature_dicts,
    free_port,
    goal,
    machine_info,
    parse_args,
    show,
    spawn,
    stop,
    summarize,
    write_results,
)
from aiassist.decider import Decider
from aiassist.metrics import Metrics
from aiassist.modules.reference import module as reference
from aiassist.registry.serving import OnnxPredictor, load_checked
from aiassist.registry.store import ModelRegistry
from aiassist.sdk import AIAssistService
from aiassist.settings import Settings
from aiassist.store.db import make_engine
from aiassist.store.models import DecisionRecord

PACKAGES = (
    "aiassist", "pydantic", "pydantic-core", "fastapi", "starlette", "uvicorn", "uvloop",
    "httptools", "httpx", "onnxruntime", "onnx", "numpy", "sqlalchemy", "prometheus-client",
)  # fmt: skip
NOOP_SERVER = """
import sys, uvicorn
BODY = b'{"decision": "none"}'
HEAD = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": HEAD})
    await send({"type": "http.response.body", "body": BODY})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""


def time_calls(call: Callable[[Any], Any], inputs: Sequence[Any], n: int) -> list[int]:
    """Nanoseconds of each of `n` calls, cycling through `inputs`."""
    samples = [0] * n
    clock = time.perf_counter_ns
    for i in range(n):
        x = inputs[i % len(inputs)]
        t0 = clock()
        call(x)
        samples[i] = clock() - t0
    return samples


# --- in process ----------------------------------------------------------------------------
def tiny_model(tmp: Path) -> OnnxPredictor:
    """P(act) = sigmoid(8 * (signal - threshold)) as ONNX (MatMul, Add, Sigmoid), published to
    a registry and loaded with every serving check, as the service loads a version."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "W"], ["logit0"]),
            helper.make_node("Add", ["logit0", "B"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], ["output"]),
        ],
        "reference_logreg",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, 1])],
        initializer=[
            helper.make_tensor("W", TensorProto.FLOAT, [2, 1], [8.0, -8.0]),
            helper.make_tensor("B", TensorProto.FLOAT, [1], [0.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime the project supports
    onnx.checker.check_model(model)
    registry = ModelRegistry(tmp / "models")
    manifest = registry.publish(
        MODULE,
        model.SerializeToString(),
        feature_names=reference.feature_names(),
        input_name="input",
        output_name="output",
        n_outputs=1,
        framework="onnx",
    )
    return load_checked(registry, reference, manifest.version, latency_budget_us=1e6)


def priority_features(seed: int, n: int = 1024) -> list[dict[str, float]]:
    """Varied tasks: deadlines from late to none, durations, weights, loads, weather."""
    rng = np.random.default_rng(seed)
    return [
        {
            "deadline_in_s": float(rng.uniform(-60, 3600)) if rng.random() < 0.8 else None,
            "est_duration_s": float(rng.lognormal(3, 1)),
            "business_weight": float(rng.lognormal(0, 1)),
            "queue_length": int(rng.integers(0, 200)),
            "workers": int(rng.integers(1, 32)),
            "handler_load": float(rng.random()),
            "anomaly": float(rng.uniform(1, 2)),
            "age_s": float(rng.uniform(0, 600)),
        }
        for _ in range(n)
    ]


def priority_model(tmp: Path, seed: int) -> Any:
    from aiassist.modules.priority import module as priority
    from aiassist.modules.priority.training import trainer

    registry = ModelRegistry(tmp / "priority-models")
    version = trainer.fit(trainer.synthetic(20_000, seed), seed).publish(registry, priority).version
    return load_checked(registry, priority, version, latency_budget_us=1e6)


def bench_in_process(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    dicts = feature_dicts(args.seed)
    results: dict[str, Any] = {}

    def run(name: str, call: Callable[[Any], Any], inputs: Sequence[Any]) -> None:
        time_calls(call, inputs, args.calls // 10)  # warm-up
        gc.collect()
        results[name] = summarize(time_calls(call, inputs, args.calls), "us")
        show(name, results[name], "us")

    print(f"in process, µs per call ({args.calls} calls after {args.calls // 10} unmeasured):")
    engine = Decider(metrics=Metrics(CollectorRegistry()))
    validated = [engine.features(MODULE, d) for d in dicts]
    run("engine_fallback_dict", lambda f: engine.decide(MODULE, f), dicts)
    run("engine_fallback_features", lambda f: engine.decide(MODULE, f), validated)
    quiet = AIAssistService(
        Settings(data_dir=tmp / "norecord", record_decisions=False),
        metrics=Metrics(CollectorRegistry()),
    )
    run("service_local_fallback_norecord", lambda f: quiet.decide(MODULE, f), dicts)
    quiet.close()

    predictor = tiny_model(tmp)
    session, rows = predictor.session, [[[d["signal"], d["threshold"]]] for d in dicts]
    arrays = [np.asarray(r, dtype=np.float32) for r in rows]
    run("onnx_session_run_only", lambda x: session.run(["output"], {"input": x}), arrays)
    run("predictor_predict_only", predictor.predict, rows)
    engine.load(MODULE, predictor)
    d = engine.decide(MODULE, dicts[0])
    expected = 1 / (1 + math.exp(-8 * (dicts[0]["signal"] - dicts[0]["threshold"])))
    assert d.source == "model" and abs(d.score - expected) < 1e-4, d  # type: ignore[attr-defined]
    run("engine_onnx_dict", lambda f: engine.decide(MODULE, f), dicts)
    run("engine_onnx_features", lambda f: engine.decide(MODULE, f), validated)

    # The `priority` module: its least-slack rule, then the LightGBM model its own trainer
    # makes from the simulator, published and loaded like the service does.
    tasks = priority_features(args.seed)
    run("priority_fallback", lambda f: engine.decide("priority", f), tasks)
    engine.load("priority", priority_model(tmp, args.seed))
    assert engine.decide("priority", tasks[0]).source == "model"
    run("priority_model", lambda f: engine.decide("priority", f), tasks)

    # Recording on: the recorder thread writes the decisions to SQLite beside the calls.
    for name, model in (("service_local_fallback_record", 0), ("service_local_onnx_record", 1)):
        metrics = Metrics(CollectorRegistry())
        url = f"sqlite:///{tmp / name / 'aiassist.db'}"  # never a database named by the env
        settings = Settings(data_dir=tmp / name, database_url=url, record_decisions=True)
        service = AIAssistService(settings, metrics=metrics)
        if model:
            service.decider.load(MODULE, predictor)
        run(name, partial(service.decide, MODULE), dicts)
        service.close()  # drains the recording buffer
        db = make_engine(settings.resolved_database_url)
        with db.connect() as conn:
            stored = conn.execute(select(func.count()).select_from(DecisionRecord)).scalar_one()
        db.dispose()
        dropped = metrics.registry.get_sample_value("aiassist_records_dropped_total") or 0
        decided = args.calls + args.calls // 10
        results[name] |= {"decided": decided, "stored": stored, "dropped": int(dropped)}
    return results


# --- HTTP ----------------------------------------------------------------------------------
class Server(NamedTuple):
    pid: int
    port: int
    token: str


class LeanClient:
    """A minimal HTTP/1.1 keep-alive client (asyncio streams, one write per request), to
    generate load: httpx costs a millisecond of CPU per request on a small VM, more than the
    service, so it cannot offer 1000 req/s from a core it shares with the server. Each of
    `connections` carries one request at a time; they are used in turn (FIFO), so none
    idles into the server's keep-alive timeout."""

    def __init__(self, server: Server, bodies: list[bytes], connections: int) -> None:
        head = (
            f"POST /v1/{MODULE}/decide HTTP/1.1\r\nhost: 127.0.0.1:{server.port}\r\n"
            f"authorization: Bearer {server.token}\r\ncontent-type: application/json\r\n"
        )
        self.requests = [f"{head}content-length: {len(b)}\r\n\r\n".encode() + b for b in bodies]
        self.port, self.connections = server.port, connections
        self.pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None]

    async def __aenter__(self) -> LeanClient:
        self.pool = asyncio.Queue()
        for _ in range(self.connections):
            self.pool.put_nowait(await asyncio.open_connection("127.0.0.1", self.port))
        return self

    async def __aexit__(self, *exc: object) -> None:
        while not self.pool.empty():
            if conn := self.pool.get_nowait():
                conn[1].close()

    async def __call__(self, i: int) -> int:
        """Send request `i` (cycling through the bodies); the answer's status."""
        conn = await self.pool.get() or await asyncio.open_connection("127.0.0.1", self.port)
        try:
            reader, writer = conn
            writer.write(self.requests[i % len(self.requests)])
            head = await reader.readuntil(b"\r\n\r\n")
            length = head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0]
            await reader.readexactly(int(length))
        except BaseException:
            conn[1].close()
            self.pool.put_nowait(None)  # a new connection on next use
            raise
        self.pool.put_nowait(conn)
        return int(head[9:12])


def sequential(
    pid: int, call: Callable[[Any], Any], inputs: Sequence[Any], n: int
) -> dict[str, Any]:
    """One request at a time through a blocking client; exceptions counted as errors."""
    errors: Counter[str] = Counter()

    def guarded(x: Any) -> None:
        try:
            call(x)
        except Exception as exc:
            errors[type(exc).__name__] += 1

    time_calls(guarded, inputs, n // 10)  # warm-up
    with CpuWindow(pid) as cpu:
        samples = time_calls(guarded, inputs, n)
    return summarize(samples, "ms") | {"errors": dict(errors)} | cpu.report(n)


async def open_loop(
    server: Server, bodies: list[bytes], rate: float, duration: float, inflight: int
) -> dict[str, Any]:
    """Requests sent on a fixed schedule whatever the answers' latency (open loop).

    Latency counts from dispatch, including any wait for one of the `inflight` connections;
    `from_schedule` from the planned send time, so it adds the client's own timer lag.
    Requests unanswered 2 s after the schedule's end are cancelled and counted `unfinished`.
    """
    total, interval = int(rate * duration), int(1e9 / rate)
    clock = time.perf_counter_ns
    latency: list[int] = []
    from_schedule: list[int] = []
    errors: Counter[str] = Counter()

    async def one(i: int, planned: int) -> None:
        sent = clock()
        try:
            status = await client(i)
        except (OSError, asyncio.IncompleteReadError) as exc:
            errors[type(exc).__name__] += 1
            return
        if status != 200:
            errors[f"HTTP {status}"] += 1
            return
        latency.append(clock() - sent)
        from_schedule.append(clock() - planned)

    async with LeanClient(server, bodies, inflight) as client:
        await asyncio.gather(*(one(i, clock()) for i in range(inflight)))  # warm-up
        latency.clear()
        from_schedule.clear()
        errors.clear()
        tasks = []
        with CpuWindow(server.pid) as cpu:
            start = clock() + 5_000_000
            for i in range(total):
                planned = start + i * interval
                if (wait := planned - clock()) > 0:
                    await asyncio.sleep(wait / 1e9)
                tasks.append(asyncio.create_task(one(i, planned)))
            _, pending = await asyncio.wait(tasks, timeout=(start - clock()) / 1e9 + duration + 2)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
    out = {
        "target_rate_per_s": rate,
        "duration_s": duration,
        "max_inflight": inflight,
        "scheduled": total,
        "ok": len(latency),
        "unfinished": len(pending),
        "achieved_rate_per_s": round(len(latency) / cpu.wall, 1),
        "errors": dict(errors),
    }
    out |= summarize(latency, "ms") | {"from_schedule": summarize(from_schedule, "ms")}
    return out | cpu.report(total)


async def closed_loop(
    server: Server, bodies: list[bytes], clients: int, duration: float
) -> dict[str, Any]:
    """`clients` connections, each sending its next request as soon as the last is answered."""
    clock = time.perf_counter_ns
    latency: list[int] = []
    errors: Counter[str] = Counter()

    async def worker(i: int, until: int) -> None:
        while clock() < until:
            t0 = clock()
            try:
                status = await client(i)
            except (OSError, asyncio.IncompleteReadError) as exc:
                errors[type(exc).__name__] += 1
                continue
            finally:
                i += clients
            if status == 200:
                latency.append(clock() - t0)
            else:
                errors[f"HTTP {status}"] += 1

    async with LeanClient(server, bodies, clients) as client:
        await asyncio.gather(*(worker(k, clock() + 200_000_000) for k in range(clients)))
        latency.clear()
        errors.clear()
        with CpuWindow(server.pid) as cpu:
            until = clock() + int(duration * 1e9)
            await asyncio.gather(*(worker(k, until) for k in range(clients)))
    out = {"clients": clients, "duration_s": duration, "ok": len(latency), "errors": dict(errors)}
    out["throughput_per_s"] = round(len(latency) / cpu.wall, 1)
    return out | summarize(latency, "ms") | cpu.report(len(latency) + errors.total())


def bench_http(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    dicts = feature_dicts(args.seed + 1)
    bodies = [json.dumps({"features": d}).encode() for d in dicts]
    n, d, rate = args.http_requests, args.duration, args.rate
    results: dict[str, Any] = {
        "server": "python -m aiassist serve (1 uvicorn worker, SQLite, record_decisions on)",
        "clients": {
            "httpx": f"httpx {httpx.__version__}, keep-alive",
            "lean": "LeanClient in bench/latency.py: raw HTTP/1.1 keep-alive, asyncio streams",
        },
    }

    def record(key: str, label: str, r: dict[str, Any]) -> None:
        results[key] = r
        per_s = r.get("achieved_rate_per_s") or r.get("throughput_per_s") or 1e3 / r["mean_ms"]
        cpu = f"server {r['server_cpu_us_per_request']}, client {r['client_cpu_us_per_request']}"
        show(label, r, "ms", f"{per_s:.0f}/s, errors {r['errors'] or 0}, CPU µs/req {cpu}")

    print("\nHTTP on loopback, ms per request; client and server SHARE the machine's cores:")
    with Service(tmp / "service") as service:
        server = Server(service.proc.pid, service.port, service.token)
        with httpx.Client(base_url=service.url, headers=service.headers, timeout=5.0) as client:

            def post(body: bytes) -> None:
                client.post(f"/v1/{MODULE}/decide", content=body).raise_for_status()

            r = sequential(server.pid, post, bodies, n)
        record("sequential_httpx", "sequential, httpx.Client", r)
        settings = Settings(mode="remote", service_url=service.url, api_key=service.token)
        sdk = AIAssistService(settings, metrics=Metrics(CollectorRegistry()))
        decide = lambda f: sdk.decide(MODULE, f, raise_errors=True)  # noqa: E731
        r = sequential(server.pid, decide, dicts, n)
        record("remote_sdk", "sequential, AIAssistService(mode='remote')", r)
        sdk.close()
        r = asyncio.run(closed_loop(server, bodies, 1, d / 3))
        record("sequential_lean", "sequential, lean client", r)
        r = asyncio.run(open_loop(server, bodies, rate, d, args.max_inflight))
        record("open_loop_lean", f"open loop {rate:g} req/s, {d:g} s, lean client", r)
        r = asyncio.run(closed_loop(server, bodies, args.clients, d))
        record("closed_loop_lean", f"closed loop, {args.clients} connections, {d:g} s", r)

    (tmp / "noop").mkdir()
    port = free_port()
    argv = [sys.executable, "-c", NOOP_SERVER, str(port)]
    noop = spawn(argv, dict(os.environ), tmp / "noop", f"http://127.0.0.1:{port}")
    try:
        r = asyncio.run(open_loop(Server(noop.pid, port, ""), bodies, rate, d, args.max_inflight))
    finally:
        stop(noop)
    record("open_loop_lean_noop_server", "the same open loop, no-op ASGI server", r)
    return results


# --- goals ---------------------------------------------------------------------------------
def goals(inproc: dict[str, Any], http: dict[str, Any] | None) -> list[dict[str, Any]]:
    out = []
    for key, name in (
        ("engine_onnx_dict", "in-process p99, small ONNX model (Decider.decide, dict)"),
        ("priority_model", "in-process p99, priority module with its LightGBM model"),
    ):
        p99 = inproc[key]["p99_us"]
        out.append(goal(name, "<= 100 us", f"{p99} us", p99 <= 100))
    if http is None:
        return out
    r = http["open_loop_lean"]
    rate, cpu = r["achieved_rate_per_s"], r["server_cpu_us_per_request"]
    sustained = rate >= 0.95 * r["target_rate_per_s"] and not r["errors"] and not r["unfinished"]
    at = f"at {r['target_rate_per_s']:g} req/s (open loop, lean client)"
    for q, ms in (("p50", 1.0), ("p99", 3.0)):
        measured, met = f"{r[f'{q}_ms']} ms at {rate:g} req/s", sustained and r[f"{q}_ms"] <= ms
        out.append(goal(f"HTTP {q} {at}", f"<= {ms:g} ms, rate sustained", measured, met))
    per_core = f"{cpu} us (about {1e6 / cpu:.0f} req/s per core)"
    return [
        *out,
        goal("1000 req/s per core: server CPU per request", "<= 1000 us", per_core, cpu <= 1000),
    ]


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--calls", type=int, help="in-process calls per series [20000; quick 1000]")
    p.add_argument("--http-requests", type=int, help="sequential HTTP requests [3000; quick 100]")
    p.add_argument("--duration", type=float, help="seconds of each load run [10; quick 1]")
    p.add_argument("--rate", type=float, default=1000.0, help="open-loop rate, req/s [1000]")
    p.add_argument("--max-inflight", type=int, default=32, help="open-loop connections [32]")
    p.add_argument("--clients", type=int, default=8, help="closed-loop connections [8]")
    full = {"calls": 20_000, "http_requests": 3000, "duration": 10.0}
    quick = {"calls": 1000, "http_requests": 100, "duration": 1.0}
    args = parse_args(p, "latency", full, quick)
    started = datetime.now(UTC)
    info = machine_info(PACKAGES)
    with tempfile.TemporaryDirectory(prefix="aiassist-bench-") as tmp:
        inproc = bench_in_process(args, Path(tmp))
        http = None if args.no_http else bench_http(args, Path(tmp))
    write_results(
        args,
        "latency",
        started,
        benchmark="decision latency",
        machine=info,
        in_process=inproc,
        http=http,
        goals=goals(inproc, http),
    )


if __name__ == "__main__":
    main()
