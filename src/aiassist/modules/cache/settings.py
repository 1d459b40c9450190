"""The cache module's settings (`AIASSIST_CACHE_*`, or `[cache]` in the config file)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from aiassist.settings import ModuleSettings

__all__ = ["CacheSettings"]


class CacheSettings(ModuleSettings):
    model_config = SettingsConfigDict(env_prefix="AIASSIST_CACHE_")

    horizon_s: int = Field(
        7200, ge=600, le=7 * 86_400, description="How far ahead a preload plan looks."
    )
    bucket_s: int = Field(
        600,
        ge=60,
        le=3600,
        description="Width of the counters' time buckets (a divisor of the horizon).",
    )
    sample_rate: float = Field(
        1.0, gt=0, le=1, description="Share of reads the client wrapper counts."
    )
    budget_keys: int = Field(500, ge=1, le=1_000_000, description="Most keys one plan preloads.")
    budget_bytes: int = Field(
        64 << 20,
        ge=1 << 10,
        le=1 << 40,
        description="Most bytes one plan preloads (values' sizes as counted).",
    )
    memory_margin: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Share of Redis' maxmemory the preloader leaves free (it loads only "
        "into the rest, so that loading never makes Redis evict).",
    )
    loads_per_s: float = Field(
        50.0, gt=0, le=100_000, description="Pace of the preloader's calls to the app's loader."
    )
    key_prefix: str = Field(
        "aiassist:cache:",
        min_length=1,
        max_length=64,
        description="Prefix of the counters' Redis keys (they hold counts, never values).",
    )
