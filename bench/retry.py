"""Smart retry: the same simulated calls to a failing downstream under six retry policies.

    python bench/retry.py            # about 30 s: bench/results/retry.json
    python bench/retry.py --quick    # a few seconds, for the smoke test

The downstream is the `retry` module's simulator (`aiassist.modules.retry.simulator`, whose
docstring documents the generator): Poisson calls modulated over the day, each with a
per-attempt timeout and a deadline; a healthy downstream (log-normal latency, 0.3% random
failures) interrupted by episodes of four kinds: transient blips (0.3-3 s of 502s and
timeouts), rate limiting (a fixed-window quota answering 429 with Retry-After = the time
until the window ends), overload (capacity below the offered rate, failures rising with
the attempts started in the last second, retries included), and hard outages (30-240 s of
refused connections and 503s). Every random draw of an attempt is fixed per (call, attempt)
by the seed, so all policies meet the same traffic and the same luck.

Policies, in the same run:
- `no_retry`;
- `exponential_backoff`: tenacity's stop_after_attempt(4) + wait_random_exponential(0.1 s,
  max 10 s), any error, Retry-After not read;
- `backoff_budget_20`: the same behind a retry budget of 20% of the calls over 10 s plus 1
  retry/s (Envoy/Finagle style; `aiassist.modules.retry.budget.RetryBudget`);
- `grpc_token_throttle`: the same backoff behind gRPC retry throttling (10 tokens, -1 per
  failure, +0.1 per success, retries only above half);
- `rule`: `aiassist.modules.retry.policy.RetryPolicy` with the module's rule fallback
  (backoff with full jitter honouring Retry-After, behind the same 20% budget);
- `learned`: `RetryPolicy` with the module's LightGBM model (retry only when P(recovery)
  >= 0.7, the shortest worthwhile of a few candidate waits), behind the same budget.

The model is trained by the module's own trainer on simulated worlds of other seeds,
published to a registry and served through `load_checked` and an `Decider`.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from _common import machine_info, train_from_simulator, write_results
from aiassist.decider import Decider
from aiassist.metrics import Metrics
from aiassist.modules.retry import RetryDecision, RetryFeatures, module
from aiassist.modules.retry.budget import RetryBudget
from aiassist.modules.retry.simulator import (
    ExponentialBackoff,
    ModulePolicy,
    NoRetry,
    SimPolicy,
    TokenThrottle,
    WorldSpec,
    generate,
    rule_decider,
    simulate,
    summarize,
)
from aiassist.modules.retry.tracker import DownstreamTracker
from aiassist.modules.retry.training import trainer

OUT = Path(__file__).parent / "results" / "retry.json"
Clock = Callable[[], float]
Factory = Callable[[DownstreamTracker, Clock, Clock], SimPolicy]
COLUMNS = (
    ("success_rate", "success", "{:.2%}"),
    ("retry_precision", "retry precision", "{:.3f}"),
    ("retries", "retries", "{:.0f}"),
    ("amplification", "attempts/call", "{:.3f}"),
    ("outage_amplification", "attempts/call in outages", "{:.3f}"),
    ("overload_amplification", "attempts/call in overload", "{:.3f}"),
    ("blip_success_rate", "success in blips", "{:.1%}"),
    ("rate_limit_success_rate", "success in rate limits", "{:.1%}"),
    ("overload_success_rate", "success in overload", "{:.1%}"),
    ("p50_latency_s", "p50 s", "{:.3f}"),
    ("p99_latency_s", "p99 s", "{:.2f}"),
)

PACKAGES = ["aiassist", "numpy", "lightgbm", "onnxmltools", "onnxruntime"]


def train_engine(rows: int, seed: int, workdir: Path) -> tuple[Decider, dict[str, Any]]:
    """The bootstrap model, and how often a retry it scores P >= 0.7 does succeed."""
    trained = train_from_simulator(module, trainer, rows, seed, workdir)
    chosen = trained.model_scores >= 0.7
    success = float(trained.held.y[chosen].mean()) if chosen.any() else None
    info = trained.info | {"heldout_success_where_p_ge_0_7": success and round(success, 4)}
    return trained.engine, info


def decision_latency(
    engine: Decider, world_features: list[RetryFeatures], n: int
) -> dict[str, Any]:
    """In-process µs per decision: the rule, the model on one row, the model on the four
    candidate waits a policy asks about at once (GC on, after 500 unmeasured calls)."""
    rule = Decider([module], metrics=Metrics(CollectorRegistry()))
    batches = [world_features[i : i + 4] for i in range(0, len(world_features) - 4, 4)]
    runs: dict[str, tuple[Callable[[int], Any], str]] = {
        "rule_one_row": (lambda i: rule.decide(module.name, world_features[i]), "1 row"),
        "model_one_row": (lambda i: engine.decide(module.name, world_features[i]), "1 row"),
        "model_four_waits": (lambda i: engine.decide_many(module.name, batches[i]), "4 rows"),
    }
    out: dict[str, Any] = {}
    for name, (call, rows) in runs.items():
        size = len(batches) if name == "model_four_waits" else len(world_features)
        for i in range(500):
            call(i % size)
        samples = []
        for i in range(n):
            t0 = time.perf_counter_ns()
            call(i % size)
            samples.append(time.perf_counter_ns() - t0)
        us = np.array(samples) / 1000.0
        out[name] = {
            "rows": rows,
            "n": n,
            "p50_us": round(float(np.percentile(us, 50)), 1),
            "p99_us": round(float(np.percentile(us, 99)), 1),
        }
    return out


def policies(engine: Decider, seed: int) -> dict[str, Factory]:
    def model(features: list[RetryFeatures]) -> list[RetryDecision]:
        return engine.decide_many(module.name, features)  # type: ignore[return-value]

    def rng() -> random.Random:
        return random.Random(seed)

    return {
        "no_retry": lambda t, c, h: NoRetry(),
        "exponential_backoff": lambda t, c, h: ExponentialBackoff(rng()),
        "backoff_budget_20": lambda t, c, h: ExponentialBackoff(
            rng(), budget=RetryBudget(0.2, clock=c), name="backoff_budget_20"
        ),
        "grpc_token_throttle": lambda t, c, h: TokenThrottle(rng()),
        "rule": lambda t, c, h: ModulePolicy(rule_decider, t, c, h, rng(), name="rule"),
        "learned": lambda t, c, h: ModulePolicy(model, t, c, h, rng(), name="learned"),
    }


def goals(p: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    learned, backoff = p["learned"], p["exponential_backoff"]
    return [
        {
            "goal": "end-to-end success, learned vs exponential backoff",
            "target": ">= exponential backoff",
            "measured": f"{learned['success_rate']:.4%} vs {backoff['success_rate']:.4%}",
            "met": learned["success_rate"] >= backoff["success_rate"],
        },
        {
            "goal": "retry precision (successful retries / retries), learned",
            "target": ">= 0.7",
            "measured": f"{learned['retry_precision']:.3f} ({learned['retries']:.0f} retries)",
            "met": learned["retry_precision"] >= 0.7,
        },
        {
            "goal": "load amplification during outages (attempts / calls), learned",
            "target": "<= 1.1",
            "measured": f"{learned['outage_amplification']:.3f} "
            f"(exponential backoff {backoff['outage_amplification']:.3f})",
            "met": learned["outage_amplification"] <= 1.1,
        },
    ]


def table(p: dict[str, dict[str, float]]) -> str:
    lines = [
        "| policy | " + " | ".join(c[1] for c in COLUMNS) + " |",
        "| --- |" + " ---: |" * len(COLUMNS),
    ]
    for name, s in p.items():
        lines.append(f"| {name} | " + " | ".join(f.format(s[k]) for k, _, f in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small run, for the smoke test")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--hours", type=float, default=None, help="virtual hours of traffic")
    parser.add_argument("--rate", type=float, default=10.0, help="calls per second")
    parser.add_argument("--train-seed", type=int, default=1)
    parser.add_argument("--eval-seed", type=int, default=2026)
    args = parser.parse_args(argv)
    hours = args.hours or (0.25 if args.quick else 4.0)
    rows = 6000 if args.quick else 40_000
    started = datetime.now(UTC)

    with tempfile.TemporaryDirectory() as tmp:
        engine, training = train_engine(rows, args.train_seed, Path(tmp))
    print(f"model: {rows} simulated retries, seed {args.train_seed}; synthetic "
          f"{training['synthetic_s']} s, fit+export {training['fit_s']} s; held-out 1-Brier "
          f"model {training['heldout_quality_model']} vs rule {training['heldout_quality_rule']}; "
          f"held-out success where P >= 0.7: "
          f"{training['heldout_success_where_p_ge_0_7']}")  # fmt: skip
    spec = WorldSpec(duration_s=hours * 3600.0, rate_per_s=args.rate, seed=args.eval_seed)
    world = generate(spec)
    kinds = [e.kind for e in world.episodes]
    episodes = {k: kinds.count(k) for k in sorted(set(kinds))}
    print(f"traffic: {len(world)} calls over {hours:g} h at {args.rate:g}/s, episodes {episodes}")
    results: dict[str, dict[str, float]] = {}
    asked: list[RetryFeatures] = []
    for name, factory in policies(engine, args.eval_seed).items():
        t0 = time.perf_counter()
        run = simulate(world, factory)
        summary = summarize(world, run)
        if name == "learned":  # the features the policy retried on: latency inputs
            asked = [f for f, _ in run.examples]
        summary["run_s"] = round(time.perf_counter() - t0, 2)
        results[name] = summary
    print(table(results))
    latency = decision_latency(engine, asked or [module.Features(**module.example)],
                               2000 if args.quick else 20_000)  # fmt: skip
    print("\nin-process decision latency (µs): " + ", ".join(
        f"{k} p50 {v['p50_us']} p99 {v['p99_us']}" for k, v in latency.items()))  # fmt: skip
    verdict = goals(results)
    write_results(
        args,
        "retry",
        started,
        argv,
        benchmark="retry",
        parameters={
            "hours": hours,
            "rate_per_s": args.rate,
            "train_rows": rows,
            "train_seed": args.train_seed,
            "eval_seed": args.eval_seed,
            "world": spec.model_dump(),
        },
        machine=machine_info(PACKAGES),
        training=training,
        traffic={"calls": len(world), "episodes": episodes},
        policies=results,
        decision_latency=latency,
        goals=verdict,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
