"""`cache`: how often a key will be read over the next horizon (2 h by default), so that the
keys likely hot are loaded into Redis before they are asked for.

Features are one key's recent reads (the last 1, 2, 6 and 24 hours, the same horizon
yesterday and a week ago, an EWMA of the last buckets), the time of day and week, and
whether a known event (a scheduled class, a sale) concerns the key within the horizon.
The decision is the predicted reads; `preload.plan` ranks the keys by it and fills a memory
budget, never evicting a key predicted hotter than the one it loads. The fallback is EWMA
top-K: the reads per bucket lately, projected over the horizon. The outcome is the reads the
key actually had within the horizon.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import Field

from aiassist.modules.base import Decision, Features, Module, Outcome
from aiassist.modules.cache.settings import CacheSettings

__all__ = [
    "CacheDecision",
    "CacheFeatures",
    "CacheModule",
    "CacheOutcome",
    "CacheSettings",
    "module",
]

_READS = 1e12


class CacheFeatures(Features):
    reads_1h: float = Field(ge=0, le=_READS, description="Reads in the last hour.")
    reads_2h: float = Field(ge=0, le=_READS, description="Reads in the last 2 hours.")
    reads_6h: float = Field(ge=0, le=_READS, description="Reads in the last 6 hours.")
    reads_24h: float = Field(ge=0, le=_READS, description="Reads in the last 24 hours.")
    reads_next_yesterday: float = Field(
        ge=0, le=_READS, description="Reads in the coming horizon's hours, yesterday."
    )
    reads_next_last_week: float = Field(
        ge=0, le=_READS, description="Reads in the coming horizon's hours, a week ago."
    )
    ewma_per_bucket: float = Field(ge=0, le=_READS, description="EWMA of reads per bucket.")
    hour: float = Field(ge=0, lt=24, description="Hour of day (UTC) the horizon starts.")
    weekday: int = Field(ge=0, le=6, description="Day of week, Monday 0.")
    horizon_buckets: int = Field(ge=1, le=10_000, description="Buckets in the horizon.")
    known_event: bool = Field(False, description="A known event concerns the key in it.")


class CacheDecision(Decision):
    predicted_reads: float = Field(description="Reads expected over the horizon.")


class CacheOutcome(Outcome):
    reads: int = Field(ge=0, le=10**12, description="Reads the key had within the horizon.")


class CacheModule(Module[CacheFeatures, CacheDecision, CacheOutcome]):
    name = "cache"
    summary = "How often will this key be read over the next horizon (what to preload)?"
    Features = CacheFeatures
    Decision = CacheDecision
    Outcome = CacheOutcome
    example = {
        "reads_1h": 40, "reads_2h": 70, "reads_6h": 150, "reads_24h": 600,
        "reads_next_yesterday": 180, "reads_next_last_week": 160, "ewma_per_bucket": 7.5,
        "hour": 18.0, "weekday": 2, "horizon_buckets": 12, "known_event": False,
    }  # fmt: skip
    outcome_example = {"reads": 150}
    trainer = "aiassist.modules.cache.training:trainer"
    settings = CacheSettings

    def fallback(self, f: CacheFeatures) -> CacheDecision:
        predicted = f.ewma_per_bucket * f.horizon_buckets
        return CacheDecision(predicted_reads=round(predicted, 3), explanation="rule: EWMA")

    def encode(self, f: CacheFeatures) -> list[float]:
        return [
            math.log1p(f.reads_1h),
            math.log1p(f.reads_2h),
            math.log1p(f.reads_6h),
            math.log1p(f.reads_24h),
            math.log1p(f.reads_next_yesterday),
            math.log1p(f.reads_next_last_week),
            math.log1p(f.ewma_per_bucket * f.horizon_buckets),
            math.sin(2 * math.pi * f.hour / 24),
            math.cos(2 * math.pi * f.hour / 24),
            float(f.weekday >= 5),
            float(f.horizon_buckets),
            float(f.known_event),
        ]

    def feature_names(self) -> list[str]:
        return [
            "log_reads_1h", "log_reads_2h", "log_reads_6h", "log_reads_24h",
            "log_reads_next_yesterday", "log_reads_next_last_week", "log_ewma_projection",
            "hour_sin", "hour_cos", "weekend", "horizon_buckets", "known_event",
        ]  # fmt: skip

    def decode(self, f: CacheFeatures, output: Sequence[float]) -> CacheDecision:
        predicted = max(math.expm1(float(output[-1])), 0.0)  # the model predicts log1p(reads)
        return CacheDecision(predicted_reads=round(predicted, 3), explanation="model")


module = CacheModule()
