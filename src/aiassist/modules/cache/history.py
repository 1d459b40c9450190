"""A key's recent reads, as the module's features: counts per bucket (from the counter's
Redis hashes, or a simulated trace) turned into `CacheFeatures` for every key at once."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from aiassist.modules.cache.simulator import window_sum

__all__ = ["feature_rows"]

DAY_S = 86_400


def feature_rows(
    counts: np.ndarray,
    now: int,
    *,
    bucket_s: int,
    horizon_s: int,
    start_s: float,
    events: Iterable[int] = (),
) -> list[dict[str, float]]:
    """The features of every key (a row of `counts`, reads per bucket; column `now` is the
    first of the horizon), `start_s` the time of column 0, `events` the rows with a known
    event starting within the horizon."""
    horizon = horizon_s // bucket_s
    per_hour = 3600 // bucket_s
    per_day = DAY_S // bucket_s
    last_1h = window_sum(counts, now - per_hour, now)
    last_2h = window_sum(counts, now - 2 * per_hour, now)
    last_6h = window_sum(counts, now - 6 * per_hour, now)
    last_24h = window_sum(counts, now - per_day, now)
    yesterday = window_sum(counts, now - per_day, now - per_day + horizon)
    last_week = window_sum(counts, now - 7 * per_day, now - 7 * per_day + horizon)
    recent = counts[:, max(now - 12, 0) : now].astype(np.float64)
    weights = 0.7 ** np.arange(recent.shape[1])[::-1]
    ewma = (recent * weights).sum(axis=1) / weights.sum() if recent.shape[1] else last_1h * 0
    at = start_s + now * bucket_s
    hour = (at % DAY_S) / 3600
    weekday = int((at // DAY_S + 3) % 7)  # 1970-01-01 was a Thursday
    flagged = set(events)
    return [
        {
            "reads_1h": float(last_1h[k]),
            "reads_2h": float(last_2h[k]),
            "reads_6h": float(last_6h[k]),
            "reads_24h": float(last_24h[k]),
            "reads_next_yesterday": float(yesterday[k]),
            "reads_next_last_week": float(last_week[k]),
            "ewma_per_bucket": float(ewma[k]),
            "hour": hour,
            "weekday": weekday,
            "horizon_buckets": horizon,
            "known_event": k in flagged,
        }
        for k in range(len(counts))
    ]
