"""Log anomaly detection on real logs with injected faults: baselines, the rule and the model.

    python bench/anomaly.py            # about a minute: bench/results/anomaly.json
    python bench/anomaly.py --quick    # fewer seeds, a few seconds

The logs are the five 2,000-line Loghub samples in ../shared/data/loghub/ (or under
$AIASSIST_SHARED_DATA; Apache, HDFS,
Linux, OpenSSH, Thunderbird; real, unlabelled). Each is cut into windows of `--window`
lines; the first `--history` windows are the normal past every method learns from. In each
later window, with probability one half, one fault of `aiassist.modules.anomaly.faults` is
spliced in (an error burst, a missing heartbeat, lines of unseen templates from another log,
a component crash), kinds in turn; a window is positive when it holds a fault. Per source
and method: precision, recall and F1 over the windows, every seed pooled.

Methods, all on the same Drain3 templates:
- *novelty*: a window is anomalous when it holds a template the past never had;
- *PCA* (loglizer's): window x template counts, TF-IDF weighted and centred; the residual
  beyond 95% of the variance is anomalous above the Q-statistic at alpha = 0.001;
- *invariants*: the linear invariants of the past's count matrix (its null space: the form
  loglizer's Invariants Mining searches, without its integer search), anomalous when a window
  breaks one by more than any past window did;
- *deeplog*: the sequence model the issue suggests, DeepLog's LSTM over template ids
  (PyTorch, exported to ONNX), trained on each log's own past: a candidate for the module's
  model, measured to keep what wins (`sequence_model` in the results);
- *rule*: the module's fallback, the largest surprise (or share of unseen lines);
- *model*: LightGBM on the module's window features, trained on the *other four* sources'
  windows with faults injected (seeds disjoint from the test's), so every source is unseen;
- *bootstrap*: the model the daemon trains before it has any outcome (the module's trainer:
  the same faults spliced into generated logs, `simulator.py`), served by ONNX Runtime.
  Both models' detectors learn the windows they call normal, as the module's detector does.

Root cause: for each detected fault, whether its cause (the injected template or the crashed
component) is among the top 3 hints. Speed: lines a second through `LogDetector.feed` on one
core, and the p99 of judging one window; then the p99 of `POST /v1/anomaly/logs` of the
real service, one window a request (`--no-http` leaves it out).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import lightgbm as lgb
import numpy as np
import onnxruntime as ort
import torch
from scipy.stats import norm
from sklearn.decomposition import PCA

from _common import SHARED_DATA, Service, goal, machine_info, parse_args, write_results
from aiassist.modules.anomaly import AnomalyFeatures, AnomalySettings, module, rule_score
from aiassist.modules.anomaly.baseline import Window
from aiassist.modules.anomaly.detector import LogDetector
from aiassist.modules.anomaly.faults import KINDS, Fault
from aiassist.modules.anomaly.lines import parse_line
from aiassist.modules.anomaly.training import LogHistory, trainer
from aiassist.training.export import torch_to_onnx

DATA = SHARED_DATA / "loghub"
SOURCES = ("Apache", "HDFS", "Linux", "OpenSSH", "Thunderbird")
BASELINES = ("novelty", "pca", "invariants")
METHODS = ("novelty", "pca", "invariants", "deeplog", "rule", "model", "bootstrap")
ROOT_CAUSE_GOAL = 0.8
LINES_PER_S_GOAL = 10_000
P99_MS_GOAL = 50.0


def read(source: str) -> list[str]:
    return (DATA / f"{source}_2k.log").read_text(errors="replace").splitlines()


@dataclass
class Judged:
    """One window of one source and seed: its label, every method's verdict, its features."""

    source: str
    fault: Fault | None
    features: AnomalyFeatures
    verdicts: dict[str, bool]
    root_found: bool | None


class Past(LogHistory):
    """What every method learned from a source's normal past."""

    def __init__(self, lines: list[str], window: int, history: int, epochs: int) -> None:
        super().__init__(lines, window, history)
        self.vocabulary = sorted({t for w in self.past for t in w.templates})
        counts = np.array([self.counts(w) for w in self.past])
        self.pca = _PcaDetector(counts)
        self.invariants = _Invariants(counts)
        self.deeplog = _deeplog(tuple(tuple(w.templates) for w in self.past), epochs)

    def counts(self, window: Window) -> np.ndarray:
        found = Counter(window.templates)
        return np.array([found[t] for t in self.vocabulary], dtype=float)


class _PcaDetector:
    def __init__(self, counts: np.ndarray) -> None:
        df = np.count_nonzero(counts, axis=0)
        self.idf = np.log(len(counts) / np.maximum(df, 1))
        x = counts * self.idf
        self.mean = x.mean(axis=0)
        x = x - self.mean
        pca = PCA().fit(x)
        variance = pca.explained_variance_
        k = int(np.searchsorted(np.cumsum(variance) / max(variance.sum(), 1e-12), 0.95) + 1)
        self.components = pca.components_[:k]
        rest = variance[k:]
        phi = [float(np.sum(rest**i)) for i in (1, 2, 3)]
        if phi[0] <= 1e-12:
            self.threshold = 1e-9
            return
        h0 = 1 - 2 * phi[0] * phi[2] / (3 * phi[1] ** 2)
        c = norm.ppf(1 - 0.001)
        self.threshold = phi[0] * (
            c * np.sqrt(2 * phi[1] * h0**2) / phi[0] + 1 + phi[1] * h0 * (h0 - 1) / phi[0] ** 2
        ) ** (1 / h0)

    def anomalous(self, counts: np.ndarray) -> bool:
        x = counts * self.idf - self.mean
        residual = x - self.components.T @ (self.components @ x)
        return float(residual @ residual) > self.threshold


class _DeepLog:
    """DeepLog (Du et al., CCS 2017): an LSTM over template ids predicts the next template
    from the last `HISTORY` ones; a window is anomalous when some template of it is not
    among the `TOP` predicted. Trained on the past's sequences with PyTorch, served by ONNX
    Runtime. The paper's settings: 2 layers of 64, h = 10, g = 9."""

    HISTORY, TOP = 10, 9

    def __init__(self, past: tuple[tuple[int, ...], ...], epochs: int, seed: int = 0) -> None:
        seen = sorted({t for w in past for t in w})
        self.index = {t: i + 1 for i, t in enumerate(seen)}  # 0: a template the past never had
        x, y = [], []
        for w in past:
            ids = [self.index[t] for t in w]
            for i in range(self.HISTORY, len(ids)):
                x.append(ids[i - self.HISTORY : i])
                y.append(ids[i])
        torch.manual_seed(seed)
        net = _LstmNet(len(seen) + 1)
        optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
        inputs, targets = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
        for _ in range(epochs):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(inputs), targets)
            loss.backward()
            optimizer.step()
        exported = torch_to_onnx(net, self.HISTORY, len(seen) + 1)
        self.session = ort.InferenceSession(exported.onnx, providers=["CPUExecutionProvider"])
        self.input_name = exported.input_name

    def anomalous(self, window: Window) -> bool:
        ids = [self.index.get(t, 0) for t in window.templates]
        if 0 in ids:
            return True
        rows = [ids[i - self.HISTORY : i] for i in range(self.HISTORY, len(ids))]
        if not rows:
            return False
        logits = self.session.run(None, {self.input_name: np.array(rows, dtype=np.float32)})[0]
        top = np.argsort(-logits, axis=1)[:, : self.TOP]
        nexts = np.array(ids[self.HISTORY :])
        return bool((top != nexts[:, None]).all(axis=1).any())


@cache
def _deeplog(past: tuple[tuple[int, ...], ...], epochs: int) -> _DeepLog:
    """One DeepLog a log: the past (the first windows) is the same whatever the seed."""
    return _DeepLog(past, epochs)


class _LstmNet(torch.nn.Module):
    def __init__(self, vocabulary: int) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocabulary, 16)
        self.lstm = torch.nn.LSTM(16, 64, num_layers=2, batch_first=True)
        self.out = torch.nn.Linear(64, vocabulary)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.lstm(self.embed(x.long()))
        return self.out(hidden[:, -1])


class _Invariants:
    def __init__(self, counts: np.ndarray) -> None:
        _, s, vt = np.linalg.svd(counts, full_matrices=True)
        rank = int(np.sum(s > 1e-8 * max(s.max(initial=0), 1)))
        self.null = vt[rank:]
        self.limit = float(np.abs(counts @ self.null.T).max(initial=0)) + 1e-6

    def anomalous(self, counts: np.ndarray) -> bool:
        return bool(self.null.size) and float(np.abs(self.null @ counts).max()) > self.limit


def _root_found(fault: Fault, past: Past, window: Window) -> bool:
    hints = past.baseline.hints(window)
    if fault.component is not None:
        return any(h.component == fault.component for h in hints)
    parsed = parse_line(fault.line) if fault.line else None
    if parsed is None:
        return False
    wanted = past.templates.match(parsed.message)
    return any("template" in h.kind and h.name == str(wanted) for h in hints)


def judge_source(
    source: str,
    lines: list[str],
    donor: list[str],
    seed: int,
    args: Any,
    score: Callable[[AnomalyFeatures], float] | None = None,
) -> list[Judged]:
    """Every later window of `source`, half with a fault, judged by every method.

    The module's baseline keeps learning as the detector's does: each window the model
    calls normal is learned (without a model, each window that holds no fault: the
    training runs). The other methods keep what they learned from the past, as loglizer's
    batch-trained detectors do."""
    rng = np.random.default_rng(seed)
    past = Past(lines, args.window, args.history, args.epochs)
    judged = []
    for raw in past.windows[args.history :]:
        fault = past.fault(raw, donor, rng)
        window = past.mine(fault.lines if fault else raw)
        features = past.baseline.features(window)
        counts = past.counts(window)
        verdicts = {
            "novelty": features.new_templates > 0,
            "pca": past.pca.anomalous(counts),
            "invariants": past.invariants.anomalous(counts),
            "deeplog": past.deeplog.anomalous(window),
            "rule": rule_score(features) >= module.config.threshold,
        }
        if score is not None:
            verdicts["model"] = score(features) >= module.config.threshold
        if not verdicts.get("model", fault is not None):
            past.baseline.learn(window)
        root = _root_found(fault, past, window) if fault else None
        judged.append(Judged(source, fault, features, verdicts, root))
    return judged


def prf(labels: list[bool], verdicts: list[bool]) -> dict[str, float]:
    tp = sum(a and b for a, b in zip(labels, verdicts, strict=True))
    fp = sum(b and not a for a, b in zip(labels, verdicts, strict=True))
    fn = sum(a and not b for a, b in zip(labels, verdicts, strict=True))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 3), "recall": round(recall, 3), "f1": round(f1, 3)}


def train_model(judged: list[Judged], seed: int) -> lgb.LGBMClassifier:
    x = np.array([module.encode(j.features) for j in judged])
    y = np.array([j.fault is not None for j in judged], dtype=int)
    model = lgb.LGBMClassifier(
        n_estimators=200, learning_rate=0.05, num_leaves=15, min_child_samples=10,
        subsample=0.8, subsample_freq=1, colsample_bytree=0.8, random_state=seed, verbose=-1,
    )  # fmt: skip
    return model.fit(x, y)


def scorer(model: lgb.LGBMClassifier) -> Callable[[AnomalyFeatures], float]:
    return lambda features: float(model.predict_proba([module.encode(features)])[0, 1])


def bootstrap_model(rows: int, seed: int) -> Callable[[AnomalyFeatures], float]:
    """The daemon's first model: trained on generated logs only, served by ONNX Runtime."""
    exported = trainer.fit(trainer.synthetic(rows, seed), seed)
    session = ort.InferenceSession(exported.onnx, providers=["CPUExecutionProvider"])

    def score(features: AnomalyFeatures) -> float:
        x = np.array([module.encode(features)], dtype=np.float32)
        return float(session.run([exported.output_name], {exported.input_name: x})[0][0, -1])

    return score


def speed(logs: dict[str, list[str]], window: int) -> dict[str, float]:
    """Lines a second through the detector (rule scoring), and the p99 of a window."""
    settings = AnomalySettings(window_lines=window)
    lines = [line for source in SOURCES for line in logs[source]]
    detector = LogDetector(settings=settings, decide=module.fallback)
    latencies = []
    started = time.perf_counter()
    for line in lines:
        t0 = time.perf_counter()
        if detector.feed(line) is not None:
            latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    return {
        "lines": len(lines),
        "lines_per_s": round(len(lines) / elapsed),
        "window_p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 2),
    }


def http_speed(logs: dict[str, list[str]], window: int, rounds: int) -> dict[str, Any]:
    """`POST /v1/anomaly/logs` of the real service: each request one window's lines of one
    log (so each request mines, scores and records a window), the logs in turn."""
    lines = {source: logs[source] * rounds for source in SOURCES}
    bodies = [
        {"source": source, "lines": lines[source][i : i + window]}
        for i in range(0, len(lines[SOURCES[0]]), window)
        for source in SOURCES
        if len(lines[source][i : i + window]) == window
    ]
    latencies = []
    env = {"AIASSIST_ANOMALY_WINDOW_LINES": str(window)}
    with (
        tempfile.TemporaryDirectory() as tmp,
        Service(Path(tmp), **env) as service,
        httpx.Client(base_url=service.url, headers=service.headers, timeout=30) as client,
    ):
        started = time.perf_counter()
        for body in bodies:
            t0 = time.perf_counter()
            client.post("/v1/anomaly/logs", json=body).raise_for_status()
            latencies.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - started
    return {
        "server": "python -m aiassist serve (1 uvicorn worker, SQLite, decisions recorded)",
        "requests": len(bodies),
        "lines_per_request": window,
        "lines_per_s": round(len(bodies) * window / elapsed),
        "request_p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 2),
        "request_p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--window", type=int, default=40, help="lines a window")
    parser.add_argument("--history", type=int, default=20, help="normal windows learned first")
    parser.add_argument("--bootstrap-rows", type=int, help="generated windows the bootstrap learns")
    parser.add_argument("--epochs", type=int, help="DeepLog's training epochs")
    full = {"seeds": 10, "bootstrap_rows": 20_000, "epochs": 60}
    quick = {"seeds": 2, "bootstrap_rows": 2000, "epochs": 10}
    args = parse_args(parser, "anomaly", full, quick)
    started = datetime.now(UTC)
    logs = {source: read(source) for source in SOURCES}

    def donor(i: int) -> list[str]:
        return logs[SOURCES[(i + 1) % len(SOURCES)]]

    train_seeds = range(args.seed + 1000, args.seed + 1000 + args.seeds)
    train = {
        source: [
            j
            for seed in train_seeds
            for j in judge_source(source, logs[source], donor(i), seed, args)
        ]
        for i, source in enumerate(SOURCES)
    }
    test: dict[str, list[Judged]] = {}
    bootstrap = bootstrap_model(args.bootstrap_rows, args.seed)
    results: dict[str, Any] = {}
    for i, source in enumerate(SOURCES):
        model = train_model([j for s in SOURCES if s != source for j in train[s]], args.seed)
        seeds = range(args.seed, args.seed + args.seeds)
        test[source] = judged = [
            j
            for seed in seeds
            for j in judge_source(source, logs[source], donor(i), seed, args, scorer(model))
        ]
        by_bootstrap = [
            j
            for seed in seeds
            for j in judge_source(source, logs[source], donor(i), seed, args, bootstrap)
        ]
        for j, b in zip(judged, by_bootstrap, strict=True):
            assert j.fault == b.fault  # the same windows and faults, judged by the other model
            j.verdicts["bootstrap"] = b.verdicts["model"]
        labels = [j.fault is not None for j in judged]
        found = [j.root_found for j in judged if j.fault is not None and j.verdicts["model"]]
        results[source] = {
            "windows": len(judged),
            "faults": sum(labels),
            "methods": {m: prf(labels, [j.verdicts[m] for j in judged]) for m in METHODS},
            "root_cause_top3": round(sum(bool(f) for f in found) / max(len(found), 1), 3),
            "by_fault": {
                kind: prf([True] * len(of_kind), [j.verdicts["model"] for j in of_kind])["recall"]
                for kind in KINDS
                if (of_kind := [j for j in judged if j.fault and j.fault.kind == kind])
            },
        }
        shown = "  ".join(f"{m} {results[source]['methods'][m]['f1']:.2f}" for m in METHODS)
        print(
            f"{source:12s} F1: {shown}  root cause top 3 {results[source]['root_cause_top3']:.0%}"
        )
    fast = speed(logs, args.window)
    print(f"speed: {fast}")
    http = None if args.no_http else http_speed(logs, args.window, 1 if args.quick else 3)
    print(f"over HTTP: {http}")

    f1 = {s: {m: results[s]["methods"][m]["f1"] for m in METHODS} for s in SOURCES}
    sequence_wins = [s for s in SOURCES if f1[s]["deeplog"] > f1[s]["bootstrap"]]
    print(f"DeepLog ahead of the served model on: {', '.join(sequence_wins) or 'none'}")

    def best_baseline(source: str) -> tuple[str, float]:
        methods = results[source]["methods"]
        name = max(BASELINES, key=lambda m: methods[m]["f1"])
        return name, methods[name]["f1"]

    all_found = [j.root_found for s in SOURCES for j in test[s] if j.fault and j.verdicts["model"]]
    root_share = sum(bool(f) for f in all_found) / max(len(all_found), 1)
    goals = [
        *(
            goal(
                f"{m} F1 above the best baseline (novelty, PCA, invariants) on every log",
                "every source",
                ", ".join(
                    f"{s} {results[s]['methods'][m]['f1']:.2f} vs {best_baseline(s)[0]} "
                    f"{best_baseline(s)[1]:.2f}"
                    for s in SOURCES
                ),
                all(results[s]["methods"][m]["f1"] > best_baseline(s)[1] for s in SOURCES),
            )
            for m in ("model", "bootstrap")
        ),
        goal(
            "root cause (injected template or component) in the top 3 hints, detected faults",
            f">= {ROOT_CAUSE_GOAL:.0%}",
            f"{root_share:.1%} of {len(all_found)}",
            root_share >= ROOT_CAUSE_GOAL,
        ),
        goal(
            "lines scored a second on one core (parse, Drain3, window features, rule)",
            f">= {LINES_PER_S_GOAL:,}",
            f"{fast['lines_per_s']:,}",
            fast["lines_per_s"] >= LINES_PER_S_GOAL,
        ),
        goal(
            f"p99 of judging one window of {args.window} lines",
            f"< {P99_MS_GOAL:.0f} ms",
            f"{fast['window_p99_ms']} ms",
            fast["window_p99_ms"] < P99_MS_GOAL,
        ),
    ]
    if http is not None:
        goals.append(
            goal(
                f"p99 of POST /v1/anomaly/logs with one window of {args.window} lines, served",
                f"< {P99_MS_GOAL:.0f} ms",
                f"{http['request_p99_ms']} ms ({http['lines_per_s']:,} lines/s)",
                http["request_p99_ms"] < P99_MS_GOAL,
            )
        )
    write_results(
        args,
        "anomaly",
        started,
        benchmark="log anomaly detection on real Loghub samples with injected faults",
        machine=machine_info(["drain3", "lightgbm", "scikit-learn", "numpy"]),
        data={s: f"../shared/data/loghub/{s}_2k.log" for s in SOURCES},
        windows={"lines": args.window, "history": args.history, "seeds": args.seeds},
        results=results,
        speed=fast,
        http=http,
        sequence_model={
            "deeplog_f1": {s: f1[s]["deeplog"] for s in SOURCES},
            "served_model_f1": {s: f1[s]["bootstrap"] for s in SOURCES},
            "deeplog_ahead_on": sequence_wins,
        },
        goals=goals,
    )


if __name__ == "__main__":
    main()
