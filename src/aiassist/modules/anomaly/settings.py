"""The anomaly module's settings (`AIASSIST_ANOMALY_*`, or `[anomaly]` in the config file)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from aiassist.settings import ModuleSettings

__all__ = ["AnomalySettings"]


class AnomalySettings(ModuleSettings):
    model_config = SettingsConfigDict(env_prefix="AIASSIST_ANOMALY_")

    window_lines: int = Field(
        100, ge=10, le=100_000, description="Lines in one scored window of a log."
    )
    similarity: float = Field(
        0.4, gt=0, lt=1, description="Drain3's similarity threshold for joining a template."
    )
    state_dir: Path | None = Field(
        None,
        description="Where the templates and baselines are kept across restarts. "
        "Default: data_dir/anomaly.",
    )
    max_line_bytes: int = Field(
        16_384, ge=64, le=1 << 20, description="Longer lines are counted as bad, not mined."
    )
    threshold: float = Field(
        0.5, gt=0, lt=1, description="Anomaly score at and above which a window alerts."
    )
    queue_size: int = Field(
        10_000,
        ge=10,
        le=10_000_000,
        description="Records the logging handler holds before it drops (and counts) them.",
    )
