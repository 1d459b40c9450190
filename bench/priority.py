"""Task priority: the same bursty traffic under FIFO, static four levels, EDF, least slack,
the `priority` module's learned model and its rule fallback, over several seeds.

    python bench/priority.py            # about a minute: bench/results/priority.json
    python bench/priority.py --quick    # a few seconds, for the smoke test

The model is trained by the module's own trainer on simulator traffic of one seed and
served through the registry's checks (`load_checked`) and an `Engine`; the evaluation
traffic comes from other seeds (six per scenario), and every figure is given as the mean
over them and the worst of them. The module's policy is the dispatcher's own `TaskQueue`
(priority order, the rescue and its gap), with the scoring of the default settings. The
generator is documented in `aiassist.modules.priority.simulator`; nothing here changes it.
Classes, the same for every policy: high = business weight >= 3, low = business weight <
0.5 (the truth, not any policy's label); the level-9 column is the type static levels put
first.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from _common import machine_info, train_from_simulator, write_results
from aiassist.engine import Engine
from aiassist.metrics import Metrics
from aiassist.modules.priority import PriorityModule, module
from aiassist.modules.priority.simulator import (
    EDF,
    FIFO,
    HIGH_WEIGHT,
    LOW_WEIGHT,
    GeneratorSpec,
    LeastSlack,
    ModulePolicy,
    Policy,
    StaticLevels,
    generate,
    simulate,
    summarize,
)
from aiassist.modules.priority.training import trainer
from aiassist.registry.runtime import OnnxPredictor

OUT = Path(__file__).parent / "results" / "priority.json"
#: The scenario the goals are judged on, then two others to show how the result moves.
SCENARIOS = {
    "main": {"load": 0.9, "burstiness": 4.0, "anomaly_share": 0.2},
    "lighter": {"load": 0.7, "burstiness": 4.0, "anomaly_share": 0.2},
    "overload": {"load": 1.05, "burstiness": 6.0, "anomaly_share": 0.4},
}
#: On the main scenario, the model with one part of the scoring changed: what each part does.
ABLATIONS = {
    "model, no rescue": {"rescue_s": 0.0},
    "model, no rescue gap": {"rescue_gap_s": math.inf},
    "model, no weight head start": {"weight_s": 0.0},
    "model, weight_s 3000": {"weight_s": 3000.0, "weight_cap_s": 10_800.0, "rescue_gap_s": 3000.0},
}
COLUMNS = (
    ("high_mean_wait_s", "high mean wait s", "{:.1f}"),
    ("high_p95_wait_s", "high p95 wait s", "{:.1f}"),
    ("level9_mean_wait_s", "level-9 mean wait s", "{:.1f}"),
    ("mean_wait_s", "mean wait s", "{:.1f}"),
    ("deadline_miss_pct", "deadline miss %", "{:.2f}"),
    ("high_miss_pct", "high miss %", "{:.2f}"),
    ("weighted_miss_pct", "weighted miss %", "{:.2f}"),
    ("low_max_wait_s", "low max wait s", "{:.0f}"),
    ("max_wait_s", "max wait s", "{:.0f}"),
    ("throughput_per_min", "tasks/min", "{:.1f}"),
)
#: Which way is worse, for the worst-over-seeds figures.
_LOWER_IS_BETTER = {key for key, _, _ in COLUMNS} - {"throughput_per_min"}

PACKAGES = ["aiassist", "numpy", "pydantic", "lightgbm", "onnxmltools", "onnxruntime"]


def train_model(rows: int, seed: int, workdir: Path) -> tuple[OnnxPredictor, dict[str, Any]]:
    """The bootstrap model; held-out quality is 1 - Brier of P(miss), model and rule."""
    trained = train_from_simulator(module, trainer, rows, seed, workdir)
    return trained.predictor, trained.info


def scores(decisions: Sequence[Any]) -> np.ndarray:
    return np.array([trainer.score(d) for d in decisions])


def serving(variant: PriorityModule, predictor: OnnxPredictor) -> Engine:
    engine = Engine([variant], metrics=Metrics(CollectorRegistry()))
    engine.load(variant.name, predictor)
    return engine


def policies(predictor: OnnxPredictor, ablations: bool) -> list[Policy]:
    engine = serving(module, predictor)
    chosen: list[Policy] = [
        FIFO(),
        StaticLevels(),
        EDF(),
        LeastSlack(),
        ModulePolicy(lambda f: engine.decide(module.name, f), name="model"),
        ModulePolicy(module.fallback, name="fallback"),
    ]
    for name, changes in ABLATIONS.items() if ablations else ():
        scoring = replace(module.scoring, **changes)
        variant = serving(PriorityModule(scoring), predictor)
        chosen.append(
            ModulePolicy(partial(variant.decide, module.name), name=name, scoring=scoring)
        )
    return chosen


def run_seed(spec: GeneratorSpec, predictor: OnnxPredictor, ablations: bool) -> dict[str, Any]:
    traffic = generate(spec)
    out: dict[str, Any] = {}
    for policy in policies(predictor, ablations):
        started = time.perf_counter()
        result = simulate(traffic, policy)
        summary = summarize(traffic, result)
        summary["run_s"] = round(time.perf_counter() - started, 2)
        if isinstance(policy, ModulePolicy):
            sources = [d.source for d in policy.decisions.values()]
            summary["model_answers"] = float(sources.count("model"))
            summary["rescued"] = float(policy.rescued)
        out[policy.name] = summary
    return out


def run_scenario(
    spec: GeneratorSpec, seeds: Sequence[int], predictor: OnnxPredictor, ablations: bool
) -> dict[str, Any]:
    """Every policy on the traffic of each seed; per policy the mean and the worst seed."""
    runs = [run_seed(spec.model_copy(update={"seed": s}), predictor, ablations) for s in seeds]
    out: dict[str, Any] = {"spec": spec.model_dump(exclude={"seed"}), "seeds": list(seeds)}
    out["policies"] = {
        name: {
            "mean": {k: float(np.mean([r[name][k] for r in runs])) for k in runs[0][name]},
            "worst": {
                k: (max if k in _LOWER_IS_BETTER else min)(r[name][k] for r in runs)
                for k, _, _ in COLUMNS
            },
            "per_seed": [r[name] for r in runs],
        }
        for name in runs[0]
    }
    return out


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's goals on the main scenario, seed by seed. Starvation: the low class's
    longest wait under the model must stay within twice the longest wait of anyone under
    FIFO (where nobody is favoured)."""
    p = result["policies"]
    seeds = result["seeds"]

    def each(name: str, key: str) -> np.ndarray:
        return np.array([run[key] for run in p[name]["per_seed"]])

    ratio = each("static", "high_mean_wait_s") / np.maximum(each("model", "high_mean_wait_s"), 1e-9)
    miss, edf_miss = each("model", "deadline_miss_pct"), each("edf", "deadline_miss_pct")
    low, bound = each("model", "low_max_wait_s"), 2 * each("fifo", "max_wait_s")
    n = len(seeds)
    return [
        {
            "goal": "high class mean wait, static four levels / model",
            "target": ">= 3x on every seed",
            "measured": f"mean {ratio.mean():.2f}x, worst {ratio.min():.2f}x (seed "
            f"{seeds[int(ratio.argmin())]}); >= 3x on {int((ratio >= 3).sum())} of {n} seeds",
            "per_seed": [round(float(r), 3) for r in ratio],
            "met": bool((ratio >= 3.0).all()),
        },
        {
            "goal": "deadline misses, model vs EDF",
            "target": "<= EDF (mean over seeds)",
            "measured": f"mean {miss.mean():.3f}% vs {edf_miss.mean():.3f}%; worst seed "
            f"{(miss - edf_miss).max():+.3f} points; <= EDF on "
            f"{int((miss <= edf_miss).sum())} of {n} seeds",
            "per_seed": [
                [round(float(a), 3), round(float(b), 3)]
                for a, b in zip(miss, edf_miss, strict=True)
            ],
            "met": bool(miss.mean() <= edf_miss.mean()),
        },
        {
            "goal": "no starvation: low class max wait under the model",
            "target": "<= 2 x FIFO's max wait, every seed",
            "measured": f"worst {float((low / bound).max()) * 2:.2f} x FIFO's max wait; within "
            f"on {int((low <= bound).sum())} of {n} seeds (static four levels: "
            f"{int((each('static', 'low_max_wait_s') <= bound).sum())}, EDF: "
            f"{int((each('edf', 'low_max_wait_s') <= bound).sum())}); worst "
            f"{float((low / each('static', 'low_max_wait_s')).max()):.2f} x static four "
            "levels' low class max wait",
            "per_seed": [
                [round(float(a)), round(float(b))] for a, b in zip(low, bound, strict=True)
            ],
            "met": bool((low <= bound).all()),
        },
    ]


def table(name: str, result: dict[str, Any]) -> str:
    spec, seeds = result["spec"], result["seeds"]
    lines = [
        f"\n{name}: {spec['tasks']} tasks, {spec['workers']} workers, load {spec['load']}, "
        f"burstiness {spec['burstiness']}, anomaly share {spec['anomaly_share']}; mean over "
        f"seeds {seeds[0]}-{seeds[-1]} (worst seed in brackets)",
        "| policy | " + " | ".join(c[1] for c in COLUMNS) + " |",
        "| --- |" + " ---: |" * len(COLUMNS),
    ]
    for policy, s in result["policies"].items():
        cells = [
            f"{fmt.format(s['mean'][key])} ({fmt.format(s['worst'][key])})"
            if len(seeds) > 1
            else fmt.format(s["mean"][key])
            for key, _, fmt in COLUMNS
        ]
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small run, for the smoke test")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--tasks", type=int, default=None, help="tasks per run")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--train-seed", type=int, default=1)
    parser.add_argument("--eval-seed", type=int, default=2026, help="the first seed")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per scenario")
    args = parser.parse_args(argv)
    tasks = args.tasks or (2000 if args.quick else 20_000)
    n_seeds = args.seeds or (1 if args.quick else 6)
    seeds = list(range(args.eval_seed, args.eval_seed + n_seeds))
    rows = 4000 if args.quick else 20_000
    scenarios = {"main": SCENARIOS["main"]} if args.quick else SCENARIOS
    started = datetime.now(UTC)

    with tempfile.TemporaryDirectory() as tmp:
        predictor, training = train_model(rows, args.train_seed, Path(tmp))
    print(
        f"classes: high = business weight >= {HIGH_WEIGHT:g}, low = < {LOW_WEIGHT:g}; "
        "level-9 = the type static levels put first"
    )
    print(f"model: {rows} simulated rows, seed {args.train_seed}; synthetic "
          f"{training['synthetic_s']} s, fit+export {training['fit_s']} s; held-out 1-Brier "
          f"model {training['heldout_quality_model']} vs rule "
          f"{training['heldout_quality_rule']}")  # fmt: skip
    print(f"scoring: {asdict(module.scoring)}")
    results = {}
    for name, knobs in scenarios.items():
        spec = GeneratorSpec(tasks=tasks, workers=args.workers, **knobs)
        results[name] = run_scenario(spec, seeds, predictor, ablations=name == "main")
        print(table(name, results[name]), flush=True)
    verdict = goals(results["main"])
    write_results(
        args,
        "priority",
        started,
        argv,
        benchmark="priority",
        parameters={
            "tasks": tasks,
            "workers": args.workers,
            "train_rows": rows,
            "train_seed": args.train_seed,
            "seeds": seeds,
            "scoring": asdict(module.scoring),
        },
        machine=machine_info(PACKAGES),
        training=training,
        scenarios=results,
        goals=verdict,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
