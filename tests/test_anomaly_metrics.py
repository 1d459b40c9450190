"""Metric anomalies: the series scorer on a generated seasonal series, its state, its memory
bound, the text format, `POST /v1/anomaly/metrics` and `aiassist anomaly scrape`.

The generated series (`seasonal`, seeded): a sample every 5 minutes; a level of 100 with a
daily peak of +60 at 14:00 UTC (a Gaussian bump, 1.5 hours wide: a steep rise and fall that a
static threshold or a global level takes for an anomaly) and Gaussian noise of 3.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric

from aiassist.modules.anomaly.exposition import ExpositionError, parse_exposition
from aiassist.modules.anomaly.series import MetricSample, SeriesScore, SeriesScorer, rank
from aiassist.modules.anomaly.settings import AnomalySettings

from .conftest import scoped_service

STEP = 300
PER_DAY = 86_400 // STEP
#: Midnight UTC, 2023-11-14.
START = 1_699_920_000
#: Days the seasonal baseline needs before it judges (MIN_CYCLES past seasons).
LEARNING_DAYS = 2
AIASSIST = str(Path(sys.executable).with_name("aiassist"))


def seasonal(days: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Timestamps and values of the documented series."""
    t = START + np.arange(days * PER_DAY) * STEP
    hour = (t % 86_400) / 3600
    peak = 60 * np.exp(-((hour - 14) ** 2) / (2 * 1.5**2))
    return t.astype(float), 100 + peak + np.random.default_rng(seed).normal(0, 3, len(t))


def feed(
    scorer: SeriesScorer, t: np.ndarray, v: np.ndarray, name: str = "load"
) -> list[SeriesScore | None]:
    """Each sample on its own, as a scrape would send it; None where it was skipped."""
    out: list[SeriesScore | None] = []
    for ts, value in zip(t, v, strict=True):
        sample = MetricSample(name=name, value=float(value), timestamp=float(ts))
        scored = scorer.score([sample], now=0).scores
        out.append(scored[0] if scored else None)
    return out


def anomalies(scores: list[SeriesScore | None], after: int = 0) -> dict[int, SeriesScore]:
    return {i: s for i, s in enumerate(scores) if s is not None and s.anomalous and i >= after}


def test_seasonal_peaks_alone_are_not_anomalies() -> None:
    """Before its season is learned, the series is judged against its global robust level,
    which takes the daily peak for a spike; once learned, ten days of peaks pass."""
    t, v = seasonal(12, seed=1)
    scores = feed(SeriesScorer(AnomalySettings()), t, v)
    early = anomalies(scores[: LEARNING_DAYS * PER_DAY])
    assert early and {s.detector for s in early.values()} == {"robust_z"}
    assert anomalies(scores, after=LEARNING_DAYS * PER_DAY) == {}


def test_a_spike_a_dip_and_level_shifts_are_found_with_their_reason() -> None:
    """Into the same series: a spike of +40 (13 noise sigmas) on day 7 at 08:20, a dip of -40
    on day 8 at 04:10, and from day 9 at 01:40 on, a shift of +25; in a second series, a
    shift of +10 (3.3 sigmas: no single sample of it is a spike) from day 9 at 01:40 on."""
    t, v = seasonal(11, seed=2)
    spike, dip, shift = 7 * PER_DAY + 100, 8 * PER_DAY + 50, 9 * PER_DAY + 20
    v[spike] += 40
    v[dip] -= 40
    big, small = v.copy(), v.copy()
    big[shift:] += 25
    small[shift:] += 10

    scorer = SeriesScorer(AnomalySettings())
    found = anomalies(feed(scorer, t, big), after=LEARNING_DAYS * PER_DAY)
    assert (found[spike].reason, found[spike].detector) == ("spike", "seasonal")
    assert (found[dip].reason, found[dip].detector) == ("dip", "seasonal")
    [confirmed] = [i for i, s in found.items() if s.reason == "level shift"]
    assert shift <= confirmed < shift + 5 and found[confirmed].detector == "cusum"
    # before the change point is confirmed its samples may be spikes; then the new level is
    # normal: nothing else is flagged in the nine days after the season was learned
    assert set(found) - {spike, dip} <= set(range(shift, confirmed + 1))

    found = anomalies(feed(scorer, t, small, name="latency"), after=LEARNING_DAYS * PER_DAY)
    [confirmed] = [i for i, s in found.items() if s.reason == "level shift"]
    assert shift <= confirmed < shift + 12
    assert set(found) - {confirmed} <= {spike, dip}  # those two are still in this copy

    at_spike = [s for s in found.values() if s.reason == "spike"]
    assert all(s.score > 0.5 for s in at_spike)


def batch(t: np.ndarray, v: np.ndarray, name: str, counter: bool = False) -> list[MetricSample]:
    return [
        MetricSample(name=name, value=float(value), timestamp=float(ts), counter=counter)
        for ts, value in zip(t, v, strict=True)
    ]


def test_the_state_survives_a_restart(tmp_path: Path) -> None:
    """Three days of a gauge and a counter, a restart, then the fourth day to both: the
    restarted scorer says of every sample what the first one says."""
    t, v = seasonal(4, seed=3)
    learned = 3 * PER_DAY
    first = SeriesScorer(AnomalySettings(), state_dir=tmp_path)
    for name, counter, values in (("load", False, v), ("requests_total", True, np.cumsum(v))):
        first.score(batch(t[:learned], values[:learned], name, counter), now=0)
    again = SeriesScorer(AnomalySettings(), state_dir=tmp_path)
    assert len(again) == 2
    for name, counter, values in (("load", False, v), ("requests_total", True, np.cumsum(v))):
        rest = batch(t[learned:], values[learned:], name, counter)
        a, b = first.score(rest, now=0), again.score(rest, now=0)
        assert a.scores == b.scores and a.skipped == b.skipped == 0  # a counter goes on
        assert len(a.scores) == PER_DAY


def test_memory_is_bounded_and_the_least_recently_seen_is_evicted(tmp_path: Path) -> None:
    scorer = SeriesScorer(AnomalySettings(max_series=3), state_dir=tmp_path)
    for i, host in enumerate(["a", "b", "c", "a", "d", "e"]):
        sample = MetricSample(name="up", labels={"host": host}, value=1, timestamp=START + i)
        scorer.score([sample], now=0)
    kept = ['up{host="a"}', 'up{host="d"}', 'up{host="e"}']
    assert len(scorer) == 3 and all(key in scorer for key in kept)
    assert len(list(tmp_path.glob("*.json"))) == 3  # an evicted series' file goes with it
    smaller = SeriesScorer(AnomalySettings(max_series=2), state_dir=tmp_path)
    assert [key in smaller for key in kept] == [False, True, True]
    assert len(list(tmp_path.glob("*.json"))) == 2
    # a state kept under another season would be misread: it is dropped, with a warning
    weekly = SeriesScorer(AnomalySettings(season_seconds=604_800), state_dir=tmp_path)
    assert len(weekly) == 0 and not list(tmp_path.glob("*.json"))


def test_counters_are_scored_by_rate_and_stale_samples_skipped() -> None:
    scorer = SeriesScorer(AnomalySettings())
    samples = [
        MetricSample(name="jobs_total", value=value, timestamp=START + 10 * i, counter=True)
        for i, value in enumerate([100, 150, 200, 20])  # the last is after a reset
    ]
    scored = scorer.score(samples, now=0)
    assert scored.skipped == 1  # the first has no rate
    assert [s.value for s in scored.scores] == [5.0, 5.0, 2.0]
    repeat = scorer.score([samples[-1]], now=0)
    assert repeat.skipped == 1 and repeat.scores == []


def test_the_text_format_is_read_by_prometheus_client() -> None:
    text = (
        "# TYPE http_requests_total counter\n"
        'http_requests_total{route="/orders",code="200"} 1027 1700000000000\n'
        "# TYPE http_requests_created gauge\n"
        'http_requests_created{route="/orders",code="200"} 1.7e9\n'
        "# TYPE latency_seconds summary\n"
        'latency_seconds{quantile="0.99"} NaN\n'
        "latency_seconds_count 12\n"
        "latency_seconds_sum 3.5\n"
        "# TYPE queue_depth gauge\n"
        "queue_depth 4\n"
    )
    samples, left_out = parse_exposition(text, limit=100)
    assert left_out == 1
    assert [(s.name, s.counter) for s in samples] == [
        ("http_requests_total", True),
        ("latency_seconds_count", True),
        ("latency_seconds_sum", True),
        ("queue_depth", False),
    ]
    assert samples[0].timestamp == 1_700_000_000 and samples[0].labels["route"] == "/orders"
    for bad, message in (
        ("queue depth 4\n", "not the Prometheus text format"),
        ("queue_depth 4 1700000000000000\n", "timestamp"),
        ("a 1\nb 2\nc 3\n", "more than 2 samples"),
    ):
        with pytest.raises(ExpositionError, match=message):
            parse_exposition(bad, limit=2)


def test_rank_leads_with_what_changed_first_then_most() -> None:
    def hit(series: str, ts: float, score: float) -> SeriesScore:
        return SeriesScore(
            series=series, timestamp=ts, value=1, expected=0, z=9, score=score, anomalous=True,
            reason="spike", detector="seasonal", warming_up=False,
        )  # fmt: skip

    ranked = rank([hit("b", 20, 0.9), hit("a", 10, 0.6), hit("c", 20, 0.95), hit("a", 30, 0.7)])
    assert [(a.series, a.first, a.score, a.samples) for a in ranked] == [
        ("a", 10, 0.7, 2),
        ("c", 20, 0.95, 1),
        ("b", 20, 0.9, 1),
    ]


def test_the_service_scores_pushed_samples_and_scrapes_itself(tmp_path: Path) -> None:
    """Through the real service: JSON and the text format, keys and scopes, a clear 4xx for
    every bad body, the state under data_dir; then `scrape --once` of its own /metrics."""
    rng = np.random.default_rng(4)
    normal = [
        {"name": "queue_depth", "labels": {"queue": q}, "value": float(10 + rng.normal(0, 1)),
         "timestamp": START + 60 * i}
        for i in range(40) for q in ("orders", "mail")
    ]  # fmt: skip
    incident = [
        {"name": "queue_depth", "labels": {"queue": "mail"}, "value": 60.0,
         "timestamp": START + 60 * 40},
        {"name": "queue_depth", "labels": {"queue": "orders"}, "value": 90.0,
         "timestamp": START + 60 * 41},
    ]  # fmt: skip
    with scoped_service(tmp_path) as service:
        url = f"{service.process.url}/v1/anomaly/metrics"
        headers = service.headers("decide")
        answer = httpx.post(url, json={"samples": normal}, headers=headers, timeout=30)
        assert answer.status_code == 200, answer.text
        result = answer.json()
        assert (result["accepted"], result["skipped"], result["series"]) == (80, 0, 2)
        assert result["anomalies"] == []
        result = httpx.post(url, json={"samples": incident}, headers=headers).json()
        assert [(a["series"], a["reason"]) for a in result["anomalies"]] == [
            ('queue_depth{queue="mail"}', "spike"),  # it changed first
            ('queue_depth{queue="orders"}', "spike"),
        ]
        as_text = headers | {"content-type": "text/plain; version=0.0.4"}
        at_ms = (START + 60 * 42) * 1000
        text = f'# TYPE queue_depth gauge\nqueue_depth{{queue="orders"}} 10.2 {at_ms}\n'
        answer = httpx.post(url, content=text, headers=as_text)
        assert answer.status_code == 200, answer.text
        assert answer.json()["scores"][0]["series"] == 'queue_depth{queue="orders"}'

        assert httpx.post(url, json={"samples": normal}).status_code == 401
        refused = httpx.post(url, json={"samples": normal}, headers=service.headers("outcome"))
        assert refused.status_code == 403
        one = {"name": "queue_depth", "value": 1.0}
        for body, where in (
            ({"samples": []}, "samples"),
            ({"samples": [one | {"name": "queue depth"}]}, "name"),
            ({"samples": [one | {"timestamp": 1.7e12}]}, "timestamp"),
            ({"samples": [one | {"labels": {"1x": "a"}}]}, "labels"),
            ({"samples": [one | {"colour": "red"}]}, "colour"),
        ):
            answer = httpx.post(url, json=body, headers=headers)
            assert answer.status_code == 422, (body, answer.text)
            assert where in str(answer.json()["detail"][0]["loc"]), answer.text
        broken = httpx.post(url, content=b"{not json", headers=headers)
        assert broken.status_code == 422 and broken.json()["detail"][0]["type"] == "json_invalid"
        garbage = httpx.post(url, content="queue depth 4\n", headers=as_text)
        assert garbage.status_code == 422
        assert "not the Prometheus text format" in garbage.json()["detail"]
        form = {"content-type": "application/x-www-form-urlencoded"}
        assert httpx.post(url, content=b"a=1", headers=headers | form).status_code == 415

        done = subprocess.run(
            [AIASSIST, "anomaly", "scrape", f"{service.process.url}/metrics", "--once"],
            capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "scrape 1:" in done.stdout and "series" in done.stdout
    assert len(list((tmp_path / "anomaly" / "@metrics").glob("*.json"))) == 2


class Scripted:
    """A collector whose gauge takes the next scripted value at each scrape."""

    def __init__(self, values: list[float]) -> None:
        self.values = iter(values)
        self.lock = threading.Lock()

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            value = next(self.values, 10.0)
        family = GaugeMetricFamily("jobs_waiting", "Jobs waiting.", labels=["queue"])
        family.add_metric(["orders"], value)
        yield family


def test_scrape_prints_the_anomalous_series_of_an_endpoint() -> None:
    """30 scrapes of a steady gauge, then one of a spike: the last scrape prints it."""
    rng = np.random.default_rng(5)
    values = [float(v) for v in 10 + rng.normal(0, 0.5, 30)] + [40.0]
    registry = CollectorRegistry()
    registry.register(Scripted(values))
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        done = subprocess.run(
            [AIASSIST, "anomaly", "scrape", url, "--every", "10ms", "--count", str(len(values))],
            capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
        )  # fmt: skip
    finally:
        server.shutdown()
        thread.join(10)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert sum("0 anomalous" in line for line in lines) == len(values) - 1
    assert f"scrape {len(values)}: 1 samples scored, 1 series, 1 anomalous" in done.stdout
    assert 'jobs_waiting{queue="orders"}' in done.stdout and "spike" in done.stdout
    assert "robust_z" in done.stdout  # no season learned in a second: the global level


def test_scrape_says_when_the_endpoint_does_not_answer(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens on it once the socket is closed
    done = subprocess.run(
        [AIASSIST, "anomaly", "scrape", f"http://127.0.0.1:{port}/metrics", "--once"],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 1 and "scrape failed" in done.stdout


def test_the_documented_example_runs(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "modules.md").read_text()
    [example] = [
        b for b in re.findall(r"```python\n(.*?)```", doc, flags=re.S) if "SeriesScorer" in b
    ]
    done = subprocess.run(
        [sys.executable, "-c", example], capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "AIASSIST_DATA_DIR": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ['cpu_load{host="web-1"} spike seasonal z +14.1']
