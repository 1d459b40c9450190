"""Metric anomalies on generated seasonal series: a static threshold, robust z, the scorer.

    python bench/metrics.py            # about half a minute: bench/results/metrics.json
    python bench/metrics.py --quick    # fewer series, a few seconds

The generator (seeded; every position is known): a sample every 5 minutes for `--days`
days; a level of 50-200; one or two daily peaks (Gaussian bumps of 3-20 noise sigmas, 1-3
hours wide, at random hours), on every other series a weekend at 60% of the weekday's
height, and Gaussian noise. From day 8 on (the first week is history), about one event a
day at random samples, in turn: a *spike* (one sample, +6 to +15 sigmas), a *dip* (one sample,
-6 to -15 sigmas), a *level shift* (from its sample on, +/-3 to +8 sigmas for 6-24 hours, then
back: the return is a shift too).

Methods, each judging every sample of the evaluated days in order:
- *static*: a 3-sigma band around the mean of the first week (what a fixed alert rule does);
- *robust z*: |x - median| / (1.4826 MAD) >= 5 over the last 64 samples (no season, no
  change points);
- *scorer*: `SeriesScorer` as the service runs it (defaults: a daily season of 24 slots,
  robust z 5, CUSUM drift 1, threshold 8), weekly season for the weekend series.

Alerts are runs of consecutive flagged samples, as an alerting system would fire them. An
alert is true when it starts at a spike or dip, or within an hour after a shift began; an
event is found when an alert starts there. Precision, recall and F1 over all series, and the
recall of each kind.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from _common import goal, machine_info, parse_args, write_results
from aiassist.modules.anomaly.series import MetricSample, SeriesScorer
from aiassist.modules.anomaly.settings import AnomalySettings

STEP = 300
PER_DAY = 86_400 // STEP
START = 1_699_920_000  # midnight UTC, Tuesday 2023-11-14
HISTORY_DAYS = 14
#: A shift counts as found by an alert that starts up to this many samples after it began.
SHIFT_TOLERANCE = 12
METHODS = ("static", "robust_z", "scorer")
F1_GOAL = 0.8
SAMPLES_PER_S_GOAL = 20_000


@dataclass
class Event:
    kind: str
    at: int


@dataclass
class Series:
    t: np.ndarray
    v: np.ndarray
    events: list[Event]
    weekly: bool


def generate(days: int, rng: np.random.Generator, weekly: bool) -> Series:
    t = START + np.arange(days * PER_DAY) * STEP
    hour = (t % 86_400) / 3600
    noise = rng.uniform(1, 5)
    shape = np.zeros(len(t))
    for _ in range(int(rng.integers(1, 3))):
        height, width, at = rng.uniform(3, 20) * noise, rng.uniform(1, 3), rng.uniform(6, 20)
        shape += height * np.exp(-((hour - at) ** 2) / (2 * width**2))
    if weekly:
        weekday = ((t // 86_400) + 1) % 7  # 0 Monday ... 6 Sunday (START is a Tuesday)
        shape = np.where(weekday >= 5, 0.6 * shape, shape)
    v = rng.uniform(50, 200) + shape + rng.normal(0, noise, len(t))
    events: list[Event] = []
    kinds = ("spike", "dip", "level shift")
    at = HISTORY_DAYS * PER_DAY + int(rng.integers(PER_DAY))
    while at < len(t) - PER_DAY:
        kind = kinds[len(events) % 3]
        if kind == "spike":
            v[at] += rng.uniform(6, 15) * noise
            events.append(Event(kind, at))
            at += int(rng.integers(PER_DAY // 2, 3 * PER_DAY // 2))
        elif kind == "dip":
            v[at] -= rng.uniform(6, 15) * noise
            events.append(Event(kind, at))
            at += int(rng.integers(PER_DAY // 2, 3 * PER_DAY // 2))
        else:
            length = int(rng.integers(PER_DAY // 4, PER_DAY))
            v[at : at + length] += rng.choice([-1, 1]) * rng.uniform(3, 8) * noise
            events += [Event(kind, at), Event(kind, at + length)]
            at += length + int(rng.integers(PER_DAY // 2, PER_DAY))
    return Series(t.astype(float), v, events, weekly)


def static(series: Series) -> np.ndarray:
    history = series.v[: HISTORY_DAYS * PER_DAY]
    band = 3 * float(history.std())
    return np.asarray(np.abs(series.v - float(history.mean())) > band, dtype=bool)


def robust_z(series: Series, points: int = 64, threshold: float = 5.0) -> np.ndarray:
    flagged = np.zeros(len(series.v), dtype=bool)
    for i in range(points, len(series.v)):
        window = series.v[i - points : i]
        middle = np.median(window)
        scale = 1.4826 * np.median(np.abs(window - middle)) or 1e-9
        flagged[i] = abs(series.v[i] - middle) / scale >= threshold
    return flagged


def scorer(series: Series) -> tuple[np.ndarray, float]:
    """The scorer's flags, and the seconds it took."""
    settings = AnomalySettings()
    if series.weekly:
        settings = AnomalySettings(season_seconds=7 * 86_400, season_slots=7 * 24, season_cycles=4)
    scoring = SeriesScorer(settings)
    flagged = np.zeros(len(series.v), dtype=bool)
    started = time.perf_counter()
    for i, (ts, value) in enumerate(zip(series.t, series.v, strict=True)):
        [scored] = scoring.score([MetricSample(name="m", value=value, timestamp=ts)], 0).scores
        flagged[i] = scored.anomalous
    return flagged, time.perf_counter() - started


def judge(series: Series, flagged: np.ndarray, from_index: int) -> dict[str, Any]:
    """Alerts (runs of flags starting in the evaluated days) against the events."""
    starts = [
        i for i in range(from_index, len(flagged)) if flagged[i] and (i == 0 or not flagged[i - 1])
    ]
    windows = {
        e.at: range(e.at, e.at + (SHIFT_TOLERANCE if e.kind == "level shift" else 1))
        for e in series.events
    }
    true_alerts = sum(any(s in w for w in windows.values()) for s in starts)
    found = {e.at for e in series.events if any(s in windows[e.at] for s in starts)}
    by_kind: dict[str, list[int]] = {}
    for e in series.events:
        tally = by_kind.setdefault(e.kind, [0, 0])
        tally[0] += e.at in found
        tally[1] += 1
    return {"alerts": len(starts), "true_alerts": true_alerts, "by_kind": by_kind}


def prf(parts: list[dict[str, Any]]) -> dict[str, Any]:
    alerts = sum(p["alerts"] for p in parts)
    true = sum(p["true_alerts"] for p in parts)
    kinds = ("spike", "dip", "level shift")
    found = {k: sum(p["by_kind"].get(k, [0, 0])[0] for p in parts) for k in kinds}
    events = {k: sum(p["by_kind"].get(k, [0, 0])[1] for p in parts) for k in kinds}
    precision = true / alerts if alerts else 0.0
    recall = sum(found.values()) / max(sum(events.values()), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "alerts": alerts,
        "false_alerts": alerts - true,
        "precision": round(precision, 3),
        "recall": round(recall, 3),
        "f1": round(f1, 3),
        "recall_by_kind": {k: round(found[k] / max(events[k], 1), 3) for k in kinds},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--series", type=int)
    parser.add_argument("--days", type=int)
    args = parse_args(parser, "metrics", {"series": 24, "days": 35}, {"series": 4, "days": 28})
    started = datetime.now(UTC)
    rng = np.random.default_rng(args.seed)
    parts: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
    samples, seconds, events = 0, 0.0, 0
    for i in range(args.series):
        series = generate(args.days, rng, weekly=i % 2 == 1)
        evaluated = HISTORY_DAYS * PER_DAY
        scored, took = scorer(series)
        for method, flagged in (
            ("static", static(series)),
            ("robust_z", robust_z(series)),
            ("scorer", scored),
        ):
            parts[method].append(judge(series, flagged, evaluated))
        samples, seconds, events = (
            samples + len(series.v),
            seconds + took,
            events + len(series.events),
        )
    results = {m: prf(parts[m]) for m in METHODS}
    for m in METHODS:
        r = results[m]
        print(
            f"{m:10s} alerts {r['alerts']:5d}  precision {r['precision']:.3f}  recall "
            f"{r['recall']:.3f}  F1 {r['f1']:.3f}  by kind {r['recall_by_kind']}"
        )
    rate = round(samples / seconds)
    series_days = args.series * (args.days - HISTORY_DAYS)
    false_per_day = results["scorer"]["false_alerts"] / series_days
    print(f"scorer: {rate:,} samples a second; {false_per_day:.3f} false alerts a series-day")
    s = results["scorer"]
    goals = [
        goal(
            "scorer F1 (alerts against injected spikes, dips and level shifts)",
            f">= {F1_GOAL}",
            f"{s['f1']:.3f} (precision {s['precision']:.3f}, recall {s['recall']:.3f})",
            s["f1"] >= F1_GOAL,
        ),
        goal(
            "scorer F1 above the static 3-sigma threshold and robust z alone",
            "above both",
            f"{s['f1']:.3f} vs static {results['static']['f1']:.3f}, "
            f"robust z {results['robust_z']['f1']:.3f}",
            s["f1"] > max(results["static"]["f1"], results["robust_z"]["f1"]),
        ),
        goal(
            "scorer recall of each kind (spike, dip, level shift)",
            f">= {F1_GOAL}",
            ", ".join(f"{k} {v:.2f}" for k, v in s["recall_by_kind"].items()),
            min(s["recall_by_kind"].values()) >= F1_GOAL,
        ),
        goal(
            "samples scored a second on one core (one sample a call)",
            f">= {SAMPLES_PER_S_GOAL:,}",
            f"{rate:,}",
            rate >= SAMPLES_PER_S_GOAL,
        ),
    ]
    write_results(
        args,
        "metrics",
        started,
        benchmark="metric anomalies on generated seasonal series with known spikes, dips "
        "and level shifts",
        machine=machine_info(["numpy", "prometheus-client"]),
        data={
            "series": args.series,
            "days": args.days,
            "history_days": HISTORY_DAYS,
            "samples": samples,
            "events": events,
            "step_seconds": STEP,
        },
        results=results,
        speed={
            "samples": samples,
            "samples_per_s": rate,
            "false_alerts_per_series_day": round(false_per_day, 4),
        },
        goals=goals,
    )


if __name__ == "__main__":
    main()
