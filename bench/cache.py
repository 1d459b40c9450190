"""Preloading a cache: LRU alone, last-window top-K, EWMA top-K and the `cache` model.

    python bench/cache.py            # about 2 minutes: bench/results/cache.json
    python bench/cache.py --quick    # smaller traces, a few seconds

Three generated key-access traces (`aiassist.modules.cache.simulator`; no public key-access
trace could be shipped), two weeks of 10-minute buckets each: *rhythms* (keys read in office
hours, evenings or at weekends, slow drift), *shifting* (fast drift and new keys released)
and *events* (scheduled events on a calendar the model sees, and unannounced flash crowds).
The first week is history; over the second, every 2 hours a policy predicts each key's reads
and the cache (LRU, cache-aside, entries expire after 30 min) pins the `budget` keys it
predicts hottest for the horizon, loading those not cached. Measured per policy: the cache's
hit rate, the *preload hit rate* (the share of the keys a plan loaded that were read within
its horizon) and the loads per minute (the Redis writes preloading adds). A last row ranks by
the rates the trace was drawn from, which no predictor knows: the ceiling of ranking by
expected reads, since a key expected to be read once in two hours is not read 37% of the
time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from _common import goal, machine_info, parse_args, train_from_simulator, write_results
from aiassist.modules.cache import module
from aiassist.modules.cache.simulator import Policy, Trace, TraceSpec, generate, replay, window_sum
from aiassist.modules.cache.training import features_at, trainer

PRELOAD_GOAL = 0.83
HORIZON_S = 7200

TRACES = {
    "rhythms": {"drift": 0.1, "new_share": 0.0, "events_per_day": 0, "flash_per_day": 0},
    "shifting": {"drift": 0.4, "new_share": 0.1, "events_per_day": 0, "flash_per_day": 0},
    "events": {"drift": 0.2, "new_share": 0.05, "events_per_day": 10, "flash_per_day": 6},
}


def policies(engine: Any) -> dict[str, Policy | None]:
    def last_window(trace: Trace, b: int) -> np.ndarray:
        return window_sum(trace.counts, b - HORIZON_S // trace.spec.bucket_s, b)

    def ewma(trace: Trace, b: int) -> np.ndarray:
        return np.array(
            [module.fallback(f).predicted_reads for f in features_at(trace, b, HORIZON_S)]
        )

    def model(trace: Trace, b: int) -> np.ndarray:
        decisions = engine.decide_many(module.name, features_at(trace, b, HORIZON_S), record=False)
        assert all(d.source == "model" for d in decisions)
        return np.array([d.predicted_reads for d in decisions])

    def true_rates(trace: Trace, b: int) -> np.ndarray:
        """Not a policy: the reads expected from the rates the trace was drawn from, which
        no predictor can know; the ceiling of what ranking by expected reads can do."""
        return trace.rates[:, b : b + HORIZON_S // trace.spec.bucket_s].sum(axis=1)

    return {"lru": None, "last_window_top_k": last_window, "ewma_top_k": ewma, "model": model,
            "ceiling_true_rates": true_rates}  # fmt: skip


def memoized(policy: Policy | None) -> Policy | None:
    """The same predictions for every budget: each plan's computed once."""
    if policy is None:
        return None
    seen: dict[tuple[int, int], np.ndarray] = {}

    def cached(trace: Trace, b: int) -> np.ndarray:
        key = (id(trace), b)
        if key not in seen:
            seen[key] = policy(trace, b)
        return seen[key]

    return cached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, help="keys per trace")
    parser.add_argument("--reads", type=float, help="reads per 10-minute bucket, on average")
    parser.add_argument("--capacity", type=int, help="cache size, keys")
    parser.add_argument("--budgets", type=int, nargs="+", help="keys one plan pins (each)")
    parser.add_argument("--rows", type=int, help="training examples")
    args = parse_args(
        parser, "cache",
        full={"keys": 3000, "reads": 300.0, "capacity": 600, "budgets": [200, 400],
              "rows": 60_000},
        quick={"keys": 400, "reads": 60.0, "capacity": 80, "budgets": [30, 50], "rows": 4000},
    )  # fmt: skip
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        trained = train_from_simulator(module, trainer, args.rows, args.seed, Path(tmp))
    print(f"  trained on {args.rows:,} simulated examples in {time.perf_counter() - t0:.0f} s")
    results: dict[str, dict[str, dict[str, Any]]] = {str(b): {} for b in args.budgets}
    for i, (name, shape) in enumerate(TRACES.items()):
        spec = TraceSpec(keys=args.keys, days=14, reads_per_bucket=args.reads,
                         seed=args.seed + 1 + i, **shape)  # fmt: skip
        trace = generate(spec)
        start = 7 * trace.buckets_per_day
        for policy, fn in policies(trained.engine).items():
            once = memoized(fn)
            for budget in args.budgets:
                run = replay(trace, once, start=start, capacity=args.capacity, budget=budget,
                             horizon_s=HORIZON_S, seed=args.seed)  # fmt: skip
                results[str(budget)].setdefault(name, {})[policy] = {
                    "hit_rate": round(run.hit_rate, 4),
                    "preload_hit_rate": round(run.preload_hit_rate, 4),
                    "loads": run.loads,
                    "loads_per_min": round(run.loads_per_min, 3),
                    "declined": run.declined,
                    "reads": run.reads,
                    "plans": run.plans,
                }
                print(
                    f"  {name:<9} budget {budget:<4} {policy:<18} hit rate {run.hit_rate:6.1%}  "
                    f"preload hit rate {run.preload_hit_rate:6.1%}  "
                    f"loads/min {run.loads_per_min:5.2f}",
                    flush=True,
                )
    goals = []
    for budget in args.budgets:
        by_trace = results[str(budget)]
        model = {n: r["model"] for n, r in by_trace.items()}
        ewma = {n: r["ewma_top_k"] for n, r in by_trace.items()}
        ceiling = {n: r["ceiling_true_rates"] for n, r in by_trace.items()}
        goals += [
            goal(
                f"preload hit rate of the model on every trace, {budget} keys a plan",
                f">= {PRELOAD_GOAL:.0%}",
                ", ".join(
                    f"{n} {m['preload_hit_rate']:.1%} (ceiling {c['preload_hit_rate']:.1%})"
                    for (n, m), c in zip(model.items(), ceiling.values(), strict=True)
                ),
                min(m["preload_hit_rate"] for m in model.values()) >= PRELOAD_GOAL,
            ),
            goal(
                f"model above EWMA top-K on every trace, {budget} keys a plan (preload hit "
                "rate and cache hit rate)",
                "every trace",
                ", ".join(
                    f"{n} {model[n]['preload_hit_rate']:.1%} vs {ewma[n]['preload_hit_rate']:.1%}"
                    f" preload, {model[n]['hit_rate']:.1%} vs {ewma[n]['hit_rate']:.1%} hits"
                    for n in model
                ),
                all(
                    model[n]["preload_hit_rate"] > ewma[n]["preload_hit_rate"]
                    and model[n]["hit_rate"] > ewma[n]["hit_rate"]
                    for n in model
                ),
            ),
            goal(
                f"Redis load of preloading, {budget} keys a plan: loads a minute",
                f"<= {budget / (HORIZON_S / 60):.2f} (the budget per horizon)",
                ", ".join(f"{n} {m['loads_per_min']:.2f}" for n, m in model.items()),
                all(m["loads_per_min"] <= budget / (HORIZON_S / 60) for m in model.values()),
            ),
        ]
    write_results(
        args,
        "cache",
        started,
        benchmark="cache preloading on generated key-access traces: LRU, top-K rules, model",
        machine=machine_info(["onnxruntime", "lightgbm", "numpy"]),
        training=trained.info,
        traces=TRACES,
        cache={"capacity": args.capacity, "ttl_s": 1800, "horizon_s": HORIZON_S},
        results=results,
        goals=goals,
    )


if __name__ == "__main__":
    main()
