"""Per-series anomaly scores for Prometheus-style samples, in bounded memory, kept across restarts.

A series is a metric name and its labels. Each keeps an additive picture of normal:

- a *seasonal* level: the season (`AIASSIST_ANOMALY_SEASON_SECONDS`, a day) is cut into
  `SEASON_SLOTS` slots; each slot remembers the mean of its samples in each of the last
  `SEASON_CYCLES` seasons, and its level is the median of those means (one odd season is
  outvoted), followed inside the slot by the parabola through it and its neighbours. While a
  slot has fewer than `MIN_CYCLES` past seasons, the series' *global* robust level (the
  median of its last `SERIES_POINTS` samples) stands in, judged by robust z alone;
- a robust *scale*: 1.4826 x the MAD of the residuals of its recent normal samples, so one
  outlier moves neither level nor scale, and a biased level does not pass for noise;
- an *offset*, moved by each level shift found and by a small share of every normal
  residual, so a shifted or drifting series is judged at its new level, its seasonal shape
  kept.

A sample's robust z is its residual over the scale: a spike or a dip at `Z_THRESHOLD`. Level
shifts are change points found by a two-sided CUSUM on z clipped to half the decision
interval (Page's test: one spike alone never reads as a shift; online, O(1) state a series,
where `ruptures` searches a whole signal offline). Anomalous samples are not learned, so an
incident never becomes normal; a level shift becomes normal through the offset. A counter is
scored by its rate per second (a reset counts from zero). Past `MAX_SERIES`, the least
recently seen series is evicted; with a state directory, each series is a small JSON file,
written atomically after each batch that touched it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from aiassist.modules.anomaly.settings import AnomalySettings

__all__ = [
    "MetricSample",
    "Scored",
    "SeriesAnomaly",
    "SeriesScore",
    "SeriesScorer",
    "rank",
    "series_key",
]

log = logging.getLogger("aiassist.anomaly")
#: Samples a series needs before it is judged at all.
MIN_POINTS = 8
#: Past seasons a slot needs before its seasonal level is used.
MIN_CYCLES = 2
#: Share of a normal sample's residual the offset takes: a level a shift's estimate missed,
#: or a slow drift, is followed in some 1/LEVEL_RATE samples, too slowly to hide a shift.
LEVEL_RATE = 0.05
#: MAD to the standard deviation of a normal distribution.
MAD_SIGMA = 1.4826
#: Scale floor, relative to the expected level: a flat series still has a finite z.
RELATIVE_FLOOR = 0.01
ABSOLUTE_FLOOR = 1e-9
#: |z| is reported up to this (a flat series that moves has an astronomic z).
MAX_Z = 1e6
#: Latest timestamp accepted, seconds since the epoch (2100-01-01): milliseconds are refused.
MAX_TIMESTAMP = 4_102_444_800.0
METRIC_NAME = r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"
LABEL_NAME = r"^[a-zA-Z_][a-zA-Z0-9_]*$"

Reason = Literal["spike", "dip", "level shift"]
Detector = Literal["seasonal", "robust_z", "cusum"]


class MetricSample(BaseModel):
    """One sample of one series, as pushed or scraped."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(pattern=METRIC_NAME, max_length=200, description="The metric name.")
    labels: dict[
        Annotated[str, Field(pattern=LABEL_NAME, max_length=100)],
        Annotated[str, Field(max_length=500)],
    ] = Field(default_factory=dict, max_length=32, description="The series' labels.")
    value: float = Field(ge=-1e300, le=1e300, description="The sample's value.")
    timestamp: float | None = Field(
        None,
        ge=0,
        le=MAX_TIMESTAMP,
        description="Seconds since the epoch (not milliseconds); none: when it was received.",
    )
    counter: bool = Field(
        False, description="A counter: its rate per second is scored, not its value."
    )


class SeriesScore(BaseModel):
    series: str = Field(description='The series: name{label="value",...}.')
    timestamp: float
    value: float = Field(description="What was scored: the value, or a counter's rate.")
    expected: float = Field(description="The level the series was expected at.")
    z: float = Field(description="Robust z: the residual in robust standard deviations.")
    score: float = Field(ge=0, le=1, description="How anomalous: one half at the threshold.")
    anomalous: bool
    reason: Reason | None = Field(None, description="Spike, dip or level shift, when anomalous.")
    detector: Detector | None = Field(
        None,
        description="What fired: the seasonal level, the global robust level (robust_z), "
        "or the change-point test (cusum).",
    )
    warming_up: bool = Field(description="Too few samples yet: learned, never anomalous.")


class SeriesAnomaly(BaseModel):
    """An anomalous series in a batch: when it first changed and how much at most."""

    series: str
    first: float = Field(description="Timestamp of its first anomalous sample.")
    score: float = Field(ge=0, le=1, description="Its largest score.")
    reason: Reason
    detector: Detector
    z: float = Field(description="The robust z of its largest score.")
    samples: int = Field(ge=1, description="Its anomalous samples in the batch.")


@dataclass
class Scored:
    scores: list[SeriesScore]
    skipped: int = 0


def series_key(name: str, labels: dict[str, str]) -> str:
    """The series' identity as Prometheus writes it, labels sorted."""
    if not labels:
        return name
    escaped = (
        (k, v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n"))
        for k, v in sorted(labels.items())
    )
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in escaped) + "}"


def rank(scores: Iterable[SeriesScore], top: int = 20) -> list[SeriesAnomaly]:
    """The anomalous series, the one that changed first leading; those that changed at the
    same time, by how much."""
    found: dict[str, SeriesAnomaly] = {}
    for s in scores:
        if not s.anomalous or s.reason is None or s.detector is None:
            continue
        seen = found.get(s.series)
        if seen is None:
            found[s.series] = SeriesAnomaly(
                series=s.series, first=s.timestamp, score=s.score, reason=s.reason,
                detector=s.detector, z=s.z, samples=1,
            )  # fmt: skip
            continue
        seen.samples += 1
        seen.first = min(seen.first, s.timestamp)
        if s.score > seen.score:
            seen.score, seen.reason, seen.detector, seen.z = s.score, s.reason, s.detector, s.z
    return sorted(found.values(), key=lambda a: (a.first, -a.score))[:top]


def _mad(values: deque[float]) -> float:
    """The median absolute deviation from the median."""
    middle = median(values)
    return median(abs(v - middle) for v in values)


@dataclass
class _Slot:
    """One slot of the season: the means of its past seasons and the current one's sum."""

    means: deque[float]
    cycle: int = -1
    total: float = 0.0
    count: int = 0

    def add(self, cycle: int, value: float) -> None:
        if cycle != self.cycle:
            if self.count:
                self.means.append(self.total / self.count)
            self.cycle, self.total, self.count = cycle, 0.0, 0
        self.total += value
        self.count += 1

    def level(self, cycle: int) -> float | None:
        """The median of the past seasons' means, once there are MIN_CYCLES of them."""
        past = list(self.means)
        if self.count and self.cycle != cycle:
            past.append(self.total / self.count)  # a finished season not yet rolled over
        if len(past) < MIN_CYCLES:
            return None
        return median(past[-(self.means.maxlen or len(past)) :])


@dataclass
class _Series:
    slots: list[_Slot]
    recent: deque[float]  # adjusted values (minus the offset), for the global level
    residuals: deque[float]  # residuals of recent normal samples, for the scale
    run: deque[float]  # residuals since the CUSUM sums left zero, for a shift's size
    offset: float = 0.0
    up: float = 0.0
    down: float = 0.0
    last_timestamp: float | None = None
    last_value: float | None = None  # a counter's last raw value
    seen: int = 0  # the scorer's clock when last updated: eviction order

    def state(self) -> dict[str, Any]:
        return {
            "slots": [[list(s.means), s.cycle, s.total, s.count] for s in self.slots],
            "recent": list(self.recent),
            "residuals": list(self.residuals),
            "run": list(self.run),
            "offset": self.offset,
            "up": self.up,
            "down": self.down,
            "last_timestamp": self.last_timestamp,
            "last_value": self.last_value,
            "seen": self.seen,
        }


@dataclass
class SeriesScorer:
    """Scores samples of any number of series; thread-safe (one lock, scoring is cheap)."""

    settings: AnomalySettings = field(default_factory=AnomalySettings)
    state_dir: Path | None = None

    def __post_init__(self) -> None:
        self._series: OrderedDict[str, _Series] = OrderedDict()
        self._dirty: set[str] = set()
        self._clock = 0
        self._lock = threading.Lock()
        if self.state_dir is not None:
            self._load(self.state_dir)

    def __len__(self) -> int:
        return len(self._series)

    def __contains__(self, key: object) -> bool:
        return key in self._series

    def score(self, samples: Sequence[MetricSample], now: float) -> Scored:
        """Score each sample (`now` stands in for a missing timestamp), learn the normal ones,
        and write the series that changed."""
        with self._lock:
            out = Scored([])
            for sample in samples:
                scored = self._one(sample, now)
                if scored is None:
                    out.skipped += 1
                else:
                    out.scores.append(scored)
            self._save()
            return out

    # --- one sample ------------------------------------------------------------------------
    def _one(self, sample: MetricSample, now: float) -> SeriesScore | None:
        key = series_key(sample.name, sample.labels)
        ts = now if sample.timestamp is None else sample.timestamp
        series = self._touch(key)
        if series.last_timestamp is not None and ts <= series.last_timestamp:
            return None  # a sample not newer than the last: a repeat, or out of order
        value = sample.value
        if sample.counter:
            last, last_ts = series.last_value, series.last_timestamp
            series.last_value, series.last_timestamp = sample.value, ts
            if last is None or last_ts is None:
                return None  # a counter's first sample has no rate yet
            value = (sample.value - last if sample.value >= last else sample.value) / (ts - last_ts)
            if not math.isfinite(value):
                return None  # counters a nanosecond apart: a rate too large to say
        series.last_timestamp = ts
        return self._judge(key, series, ts, value)

    def _judge(self, key: str, series: _Series, ts: float, value: float) -> SeriesScore:
        cfg = self.settings
        cycle, position = divmod(ts, cfg.season_seconds)
        slot_width = cfg.season_seconds / cfg.season_slots
        own = int(position // slot_width) % cfg.season_slots
        seasonal = self._seasonal(series, int(cycle), position / slot_width, own)
        if len(series.recent) < MIN_POINTS:
            self._learn(series, int(cycle), own, value, None)
            return SeriesScore(
                series=key, timestamp=ts, value=value, expected=value, z=0.0, score=0.0,
                anomalous=False, warming_up=True,
            )  # fmt: skip
        base = seasonal if seasonal is not None else median(series.recent)
        expected = series.offset + base
        residual = value - expected
        # the MAD: of the residuals (about their own median, so that a bias of the level
        # does not pass for noise), else of the global level, wide for a seasonal series
        seasonal_noise = seasonal is not None and len(series.residuals) >= MIN_POINTS
        spread = _mad(series.residuals if seasonal_noise else series.recent)
        scale = max(MAD_SIGMA * spread, RELATIVE_FLOOR * abs(expected), ABSOLUTE_FLOOR)
        z = max(min(residual / scale, MAX_Z), -MAX_Z)
        point = abs(z) >= cfg.z_threshold
        reason: Reason | None = None
        detector: Detector | None = None
        if seasonal is None:
            # the season is still being learned: every sample goes into it (a slot's median
            # over seasons outvotes one bad one), judged against the global robust level
            score = abs(z) / (abs(z) + cfg.z_threshold)
            if point:
                reason, detector = ("spike" if z > 0 else "dip"), "robust_z"
            self._learn(series, int(cycle), own, value, None)
            return self._scored(key, ts, value, expected, z, score, reason, detector)

        # Page's two-sided CUSUM on z clipped to half the decision interval
        clip = cfg.cusum_threshold / 2
        zc = max(min(z, clip), -clip)
        series.up = max(0.0, series.up + zc - cfg.cusum_drift)
        series.down = max(0.0, series.down - zc - cfg.cusum_drift)
        if series.up > 0 or series.down > 0:
            series.run.append(residual)
        else:
            series.run.clear()
        sums = max(series.up, series.down)
        score = max(abs(z) / (abs(z) + cfg.z_threshold), sums / (sums + cfg.cusum_threshold))
        if sums >= cfg.cusum_threshold:
            reason, detector = "level shift", "cusum"
            # the run's later half: its start may be noise from before the shift
            run = list(series.run)
            series.offset += median(run[-max(3, len(run) // 2) :])
            series.up = series.down = 0.0
            series.run.clear()
        elif point:
            reason, detector = ("spike" if z > 0 else "dip"), "seasonal"
        else:
            self._learn(series, int(cycle), own, value, residual)
            series.offset += LEVEL_RATE * residual
        return self._scored(key, ts, value, expected, z, score, reason, detector)

    @staticmethod
    def _scored(
        key: str,
        ts: float,
        value: float,
        expected: float,
        z: float,
        score: float,
        reason: Reason | None,
        detector: Detector | None,
    ) -> SeriesScore:
        return SeriesScore(
            series=key, timestamp=ts, value=value, expected=expected, z=round(z, 3),
            score=round(score, 4), anomalous=reason is not None, reason=reason,
            detector=detector, warming_up=False,
        )  # fmt: skip

    def _seasonal(self, series: _Series, cycle: int, at: float, own: int) -> float | None:
        """The slot's level at this point of it: the parabola through the levels of it and
        its neighbours that keeps each slot's mean (exact for any quadratic shape), so a
        steep daily peak is followed inside a slot, not as a staircase."""
        level = series.slots[own].level(cycle)
        if level is None:
            return None
        slots = len(series.slots)
        before = series.slots[(own - 1) % slots].level(cycle)
        after = series.slots[(own + 1) % slots].level(cycle)
        if before is None or after is None or slots < 3:
            return level
        u = at - own - 0.5  # -1/2 .. 1/2 across the slot
        slope, bend = (after - before) / 2, after - 2 * level + before
        return level - bend / 24 + slope * u + bend * u * u / 2

    def _learn(
        self, series: _Series, cycle: int, slot: int, value: float, residual: float | None
    ) -> None:
        adjusted = value - series.offset
        series.slots[slot].add(cycle, adjusted)
        series.recent.append(adjusted)
        if residual is not None:
            series.residuals.append(residual)

    # --- memory bound ----------------------------------------------------------------------
    def _touch(self, key: str) -> _Series:
        self._clock += 1
        series = self._series.get(key)
        if series is None:
            series = self._new()
            self._series[key] = series
            while len(self._series) > self.settings.max_series:
                evicted, _ = self._series.popitem(last=False)
                self._dirty.discard(evicted)
                if self.state_dir is not None:
                    self._path(evicted).unlink(missing_ok=True)
        else:
            self._series.move_to_end(key)
        series.seen = self._clock
        self._dirty.add(key)
        return series

    def _new(self) -> _Series:
        cfg = self.settings
        return _Series(
            slots=[_Slot(deque(maxlen=cfg.season_cycles)) for _ in range(cfg.season_slots)],
            recent=deque(maxlen=cfg.series_points),
            residuals=deque(maxlen=cfg.series_points),
            run=deque(maxlen=cfg.series_points),
        )

    # --- kept across restarts --------------------------------------------------------------
    def _path(self, key: str) -> Path:
        assert self.state_dir is not None
        return self.state_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"

    def _season(self) -> list[int]:
        return [self.settings.season_seconds, self.settings.season_slots]

    def _save(self) -> None:
        if self.state_dir is None:
            self._dirty.clear()
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for key in self._dirty:
            path = self._path(key)
            tmp = path.with_suffix(".tmp")
            saved = {"key": key, "season": self._season()} | self._series[key].state()
            tmp.write_text(json.dumps(saved))
            tmp.replace(path)
        self._dirty.clear()

    def _load(self, root: Path) -> None:
        """The saved series, most recently seen last; a file that does not fit the current
        season settings (or is damaged) is dropped with a warning rather than misread."""
        loaded: list[tuple[int, str, _Series]] = []
        for path in root.glob("*.json") if root.exists() else ():
            try:
                state = json.loads(path.read_text())
                loaded.append((int(state["seen"]), str(state["key"]), self._restore(state)))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("dropped the series state %s: %s", path.name, exc)
                path.unlink(missing_ok=True)
        loaded.sort(key=lambda item: item[0])
        for seen, key, series in loaded[-self.settings.max_series :]:
            self._series[key] = series
            self._clock = max(self._clock, seen)
        for _, key, _ in loaded[: -self.settings.max_series]:
            self._path(key).unlink(missing_ok=True)

    def _restore(self, state: dict[str, Any]) -> _Series:
        if state["season"] != self._season():
            raise ValueError("saved with another AIASSIST_ANOMALY_SEASON_SECONDS or _SLOTS")
        series = self._new()
        for slot, (means, cycle, total, count) in zip(series.slots, state["slots"], strict=True):
            slot.means.extend(float(m) for m in means)
            slot.cycle, slot.total, slot.count = int(cycle), float(total), int(count)
        series.recent.extend(float(v) for v in state["recent"])
        series.residuals.extend(float(v) for v in state["residuals"])
        series.run.extend(float(v) for v in state["run"])
        series.offset, series.up, series.down = state["offset"], state["up"], state["down"]
        series.last_timestamp, series.last_value = state["last_timestamp"], state["last_value"]
        series.seen = int(state["seen"])
        return series
