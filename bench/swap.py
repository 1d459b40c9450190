"""Model hot swap: failures, fallback answers, latency and memory while the tag moves.

    python bench/swap.py            # full run, under a minute: bench/results/swap.json
    python bench/swap.py --quick    # a few seconds, for the smoke test

Two versions of `reference` are trained (its own trainer on its simulator, one seed each)
and published to a registry in a temporary directory. A load thread decides one input after
another, timing each call: first with no swap (baseline), then while the main thread moves
the `stable` tag between the versions N times, spread evenly over the baseline's duration
(back to back if a move takes longer); the load goes on until the last move is done.

In process, an `Decider` serves the versions through a `ModelWatcher`; a move is `set_tag`
then `watcher.sync()`, which loads, checks and swaps in a fresh ONNX Runtime session. Over
HTTP (unless --no-http), the real service runs as a child process (tags polled every
0.05 s), one keep-alive httpx client sends the decisions, and a move is `POST
/v1/admin/models/reference/promote`. Client and server share this machine's cores.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from prometheus_client import CollectorRegistry

from _common import (
    MODULE,
    CpuWindow,
    Service,
    feature_dicts,
    goal,
    machine_info,
    parse_args,
    show,
    summarize,
    write_results,
)
from aiassist.decider import Decider
from aiassist.metrics import Metrics
from aiassist.modules.reference import module as reference
from aiassist.modules.reference.training import trainer
from aiassist.registry.serving import ModelWatcher
from aiassist.registry.store import ModelRegistry, TrainingInfo
from aiassist.settings import Settings
from aiassist.training.base import ExportedModel

PACKAGES = (
    "aiassist", "numpy", "onnxruntime", "onnx", "scikit-learn", "skl2onnx", "pydantic",
    "fastapi", "starlette", "uvicorn", "httpx", "sqlalchemy",
)  # fmt: skip
TAG = "stable"
POLL_SECONDS = 0.05
Decide = Callable[[Any], tuple[str, str | None]]  # input -> (source, model version)
Trained = tuple[int, int, ExportedModel, float]  # seed, rows, model, seconds to train


def rss_mb(pid: int | None = None) -> float:
    """Resident memory of a process (this one by default), in MiB."""
    pages = int(Path(f"/proc/{pid or os.getpid()}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def train(count: int, rows: int, seed: int) -> list[Trained]:
    """`count` real models: the module's own trainer on its simulator, one seed each."""
    out = []
    for s in range(seed, seed + count):
        t0 = time.perf_counter()
        data = trainer.synthetic(rows, s)
        out.append((s, len(data), trainer.fit(data, s), time.perf_counter() - t0))
    return out


def publish(registry: ModelRegistry, models: list[Trained]) -> list[str]:
    """Publish every model as the next version of `reference`; their versions, oldest first."""
    versions = []
    for seed, rows, model, _ in models:
        training = TrainingInfo(rows=rows, seed=seed, source="synthetic")
        versions.append(model.publish(registry, reference, training).version)
    return versions


# --- load and swaps ------------------------------------------------------------------------
class Load(threading.Thread):
    """Calls `decide` on one input after another and times each call: `n` calls, then more
    while `swapping` is set. Timings go to arrays allocated and touched beforehand, so the
    measurement allocates nothing that would show as memory growth."""

    def __init__(self, decide: Decide, inputs: Sequence[Any], n: int, capacity: int) -> None:
        super().__init__(name="bench-load", daemon=True)
        self.decide, self.inputs, self.n = decide, inputs, n
        self.swapping = threading.Event()
        self.starts = np.full(capacity, -1, dtype=np.int64)
        self.durations = np.full(capacity, -1, dtype=np.int64)
        self.answers: Counter[tuple[str, str | None]] = Counter()  # (source, version)
        self.errors: Counter[str] = Counter()
        self.count = 0

    def run(self) -> None:
        clock, i, began = time.perf_counter_ns, 0, time.perf_counter_ns()
        while (i < self.n or self.swapping.is_set()) and i < len(self.starts):
            t0 = clock()
            try:
                self.answers[self.decide(self.inputs[i % len(self.inputs)])] += 1
            except Exception as exc:
                self.errors[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1
            self.starts[i], self.durations[i] = t0, clock() - t0
            i += 1
        self.count, self.wall_s = i, (clock() - began) / 1e9
        self.truncated = self.swapping.is_set()  # capacity reached before the last swap

    def report(self, unit: str, published: set[str], windows: Any = None) -> dict[str, Any]:
        by_model = {v: k for (s, v), k in self.answers.items() if s == "model"}
        out: dict[str, Any] = {
            "decisions": self.count,
            "failed": self.errors.total(),
            "errors": dict(self.errors),
            "answered_by_model": sum(by_model.values()),
            "answered_by_fallback": sum(k for (s, _), k in self.answers.items() if s != "model"),
            "versions": dict(sorted(by_model.items())),
            "unpublished_versions": sum(k for v, k in by_model.items() if v not in published),
            "wall_s": round(self.wall_s, 3),
            "throughput_per_s": round(self.count / self.wall_s, 1),
            "truncated": self.truncated,
        }
        durations = self.durations[: self.count]
        out |= summarize(durations, unit)
        if windows is not None:  # calls overlapping one of the (sorted, disjoint) swap windows
            ends = self.starts[: self.count] + durations
            last = np.searchsorted(windows[:, 0], ends, side="left") - 1  # last one begun
            during = (last >= 0) & (windows[last, 1] > self.starts[: self.count])
            out["overlapping_a_swap"] = summarize(durations[during], unit)
        return out


def swap_under_load(
    decide: Decide,
    inputs: Sequence[Any],
    n: int,
    move: Callable[[str], str | None],
    versions: list[str],
    args: argparse.Namespace,
    server_pid: int | None = None,
) -> dict[str, Any]:
    """Baseline, then the same load while the tag moves `args.swaps` times; `move(version)`
    returns None once `version` serves, or why it does not. RSS is this process's, or the
    server's (where no collection is forced) when `server_pid` is given."""
    unit, published = "ms" if server_pid else "us", set(versions)
    for i in range(n // 10):
        decide(inputs[i % len(inputs)])  # warm-up
    baseline = Load(decide, inputs, n, n)
    gc.collect()
    with CpuWindow(server_pid) as cpu:
        baseline.start()
        baseline.join()
    base = baseline.report(unit, published) | {"cpu": cpu.report()}
    show("baseline (no swap)", base, unit, f"failed {base['failed']}")

    loaded = Load(decide, inputs, n, 10 * n)  # runs until the last move is done
    interval = baseline.wall_s / args.swaps if args.interval_ms is None else args.interval_ms / 1e3
    windows: list[tuple[int, int]] = []
    not_applied = []
    gc.collect()
    rss_before = rss_mb(server_pid)
    loaded.swapping.set()
    with CpuWindow(server_pid) as cpu:
        loaded.start()
        start = time.perf_counter()
        for k in range(args.swaps):
            time.sleep(max(0.0, start + k * interval - time.perf_counter()))
            version = versions[(k + 1) % len(versions)]  # versions[0] serves at first
            t0 = time.perf_counter_ns()
            try:
                problem = move(version)
            except Exception as exc:
                problem = f"{type(exc).__name__}: {str(exc)[:160]}"
            windows.append((t0, time.perf_counter_ns()))
            if problem:
                not_applied.append({"swap": k + 1, "version": version, "detail": problem})
        loaded.swapping.clear()
        loaded.join()
    gc.collect()
    rss_after = rss_mb(server_pid)
    under = loaded.report(unit, published, np.asarray(windows)) | {"cpu": cpu.report()}
    under["swaps"] = {
        "requested": args.swaps,
        "applied": args.swaps - len(not_applied),
        "not_applied": len(not_applied),
        "not_applied_first": not_applied[:5],
        "interval_ms": round(interval * 1e3, 3),
        "swap_time": summarize([b - a for a, b in windows], "ms"),
    }
    show(f"during {args.swaps} swaps", under, unit, f"failed {under['failed']}")
    show("  decisions overlapping a swap", under["overlapping_a_swap"], unit)
    s = under["swaps"]
    print(
        f"  {s['applied']}/{args.swaps} swaps applied, one every {s['interval_ms']:.1f} ms, "
        f"each took p50 {s['swap_time']['p50_ms']} ms, max {s['swap_time']['max_ms']} ms; "
        f"RSS {rss_before:.2f} -> {rss_after:.2f} MiB",
        flush=True,
    )
    for refused in not_applied[:5]:
        print(f"    not applied: {refused}", flush=True)
    return {
        "versions": versions,
        "baseline": base,
        "under_swaps": under,
        "p99_ratio": round(under[f"p99_{unit}"] / base[f"p99_{unit}"], 2),
        "p99_9_ratio": round(under[f"p99_9_{unit}"] / base[f"p99_9_{unit}"], 2),
        "memory": {
            "process": "the server (no forced collection)" if server_pid else "this one",
            "rss_before_swaps_mb": round(rss_before, 2),
            "rss_after_swaps_mb": round(rss_after, 2),
            "growth_mb": round(rss_after - rss_before, 2),
        },
    }


# --- in process and over HTTP --------------------------------------------------------------
def bench_in_process(args: argparse.Namespace, tmp: Path, models: list[Trained]) -> dict[str, Any]:
    registry = ModelRegistry(tmp / "inproc")
    versions = publish(registry, models)
    events: Counter[str] = Counter()
    engine = Decider([reference], metrics=Metrics(CollectorRegistry()))
    watcher = ModelWatcher(
        registry,
        engine,
        latency_budget_us=args.latency_budget_us,
        on_event=lambda kind, module, data: events.update([kind]),
    )
    registry.set_tag(MODULE, TAG, versions[0], actor="bench")
    watcher.sync()
    assert engine.served_version(MODULE) == versions[0], watcher.served
    tag_ns: list[int] = []
    sync_ns: list[int] = []

    def decide(features: dict[str, float]) -> tuple[str, str | None]:
        d = engine.decide(MODULE, features)
        return d.source, d.model_version

    def move(version: str) -> str | None:
        t0 = time.perf_counter_ns()
        registry.set_tag(MODULE, TAG, version, actor="bench")
        t1 = time.perf_counter_ns()
        watcher.sync()
        tag_ns.append(t1 - t0)
        sync_ns.append(time.perf_counter_ns() - t1)
        served = watcher.served[MODULE]
        return None if served.version == version else f"serving {served.version}: {served.error}"

    print(
        f"in process, µs per decision: Decider + ModelWatcher (latency budget "
        f"{args.latency_budget_us:g} µs), {args.decisions} decisions per phase",
        flush=True,
    )
    events.clear()
    result = swap_under_load(decide, feature_dicts(args.seed), args.decisions, move, versions, args)
    watcher.stop()
    result["under_swaps"]["swaps"] |= {
        "set_tag_time": summarize(tag_ns, "ms"),
        "sync_time": summarize(sync_ns, "ms"),
        "watcher_events": dict(events),
    }
    return result


def bench_http(args: argparse.Namespace, tmp: Path, models: list[Trained]) -> dict[str, Any]:
    registry = ModelRegistry(tmp / "service" / "models")
    versions = publish(registry, models)
    registry.set_tag(MODULE, TAG, versions[0], actor="bench")
    bodies = [json.dumps({"features": d}).encode() for d in feature_dicts(args.seed + 1)]
    print(
        f"\nHTTP on loopback, ms per request: `aiassist serve` (tags polled every "
        f"{POLL_SECONDS:g} s) and this client SHARE the machine's cores; one request at a time",
        flush=True,
    )
    poll = {"AIASSIST_MODEL_POLL_SECONDS": str(POLL_SECONDS)}
    with (
        Service(tmp / "service", scope="admin", **poll) as service,
        httpx.Client(base_url=service.url, headers=service.headers, timeout=5.0) as client,
        httpx.Client(base_url=service.url, headers=service.headers, timeout=30.0) as admin,
    ):

        def decide(body: bytes) -> tuple[str, str | None]:
            r = client.post(f"/v1/{MODULE}/decide", content=body).raise_for_status().json()
            return r["source"], r.get("model_version")

        def move(version: str) -> str | None:
            r = admin.post(
                f"/v1/admin/models/{MODULE}/promote",
                json={"version": version, "reason": "bench/swap.py"},
            ).raise_for_status()
            return None if r.json()["serving"] == version else r.text[:300]

        result = swap_under_load(
            decide, bodies, args.http_requests, move, versions, args, service.proc.pid
        )
    log = service.log_text()
    result["server_log"] = {
        "refused": log.count(" refused"),
        "tracebacks": log.count("Traceback"),
        "error_lines": sum("ERROR" in line for line in log.splitlines()),
    }
    return result


def goals(args: argparse.Namespace, parts: dict[str, Any]) -> list[dict[str, Any]]:
    n, out = args.swaps, []
    for label, part in parts.items():
        if part is None:
            continue
        r = part["under_swaps"]
        wrong, applied = (
            r["answered_by_fallback"] + r["unpublished_versions"],
            r["swaps"]["applied"],
        )
        for name, target, measured, met in (
            (f"failed decisions during {n} swaps", "0", r["failed"], r["failed"] == 0),
            ("answers by the fallback or an unpublished version", "0", wrong, wrong == 0),
            ("swaps applied", f"{n}/{n}", f"{applied}/{n}", applied == n),
        ):
            out.append(goal(f"{label}: {name}", target, str(measured), met))
    growth, bound = parts["in-process"]["memory"]["growth_mb"], args.rss_bound_mb
    name = f"in-process: RSS growth over {n} swaps"
    return [*out, goal(name, f"<= {bound:g} MiB", f"{growth} MiB", growth <= bound)]


def main() -> None:
    budget = Settings.model_fields["model_latency_budget_us"].default
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--versions", type=int, default=2, help="model versions to train [2]")
    p.add_argument("--rows", type=int, help="training rows per version [20000; quick 2000]")
    p.add_argument("--decisions", type=int, help="in-process decisions per phase [100000; 5000]")
    p.add_argument("--http-requests", type=int, help="HTTP decisions per phase [3000; quick 200]")
    p.add_argument("--swaps", type=int, help="tag moves per phase [100; quick 20]")
    p.add_argument("--interval-ms", type=float, help="between moves [baseline duration / swaps]")
    p.add_argument("--latency-budget-us", type=float, default=budget, help="the watcher's budget")
    p.add_argument("--rss-bound-mb", type=float, default=20.0, help="RSS growth bound [20]")
    full = {"rows": 20_000, "decisions": 100_000, "http_requests": 3000, "swaps": 100}
    quick = {"rows": 2000, "decisions": 5000, "http_requests": 200, "swaps": 20}
    args = parse_args(p, "swap", full, quick)
    started = datetime.now(UTC)
    info = machine_info(PACKAGES)
    models = train(args.versions, args.rows, args.seed)
    print(f"trained {len(models)} versions of `{MODULE}` on {args.rows} rows each\n", flush=True)
    with tempfile.TemporaryDirectory(prefix="aiassist-bench-swap-") as tmp:
        inproc = bench_in_process(args, Path(tmp), models)
        http = None if args.no_http else bench_http(args, Path(tmp), models)
    print(f"\np99 with swaps / without: in process {inproc['p99_ratio']}x", end="")
    print(f", HTTP {http['p99_ratio']}x" if http else "")
    write_results(
        args,
        "swap",
        started,
        benchmark="model hot swap",
        machine=info,
        trained=[
            {"seed": s, "rows": rows, "onnx_bytes": len(m.onnx), "train_seconds": round(t, 2)}
            for s, rows, m, t in models
        ],
        in_process=inproc,
        http=http,
        goals=goals(args, {"in-process": inproc, "HTTP": http}),
    )


if __name__ == "__main__":
    main()
