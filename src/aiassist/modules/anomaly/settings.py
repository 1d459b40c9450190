"""The anomaly module's settings (`AIASSIST_ANOMALY_*`, or `[anomaly]` in the config file)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
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
    embed_templates: bool = Field(
        False,
        description="Name the known template nearest to each new one (hint `like`), by the "
        "packaged MiniLM (the text extra; exported to ONNX once, under data_dir/embeddings).",
    )
    # --- alerts (alerts.py) ------------------------------------------------------------------
    webhook_url: str | None = Field(
        None,
        max_length=2000,
        description="URL an alerting window is POSTed to, signed (none: logs and metrics only).",
    )
    webhook_secret: SecretStr | None = Field(
        None, description="HMAC-SHA256 key that signs anomaly alerts (X-AIAssist-Signature)."
    )
    changes_lookback_s: float = Field(
        1800,
        ge=0,
        le=7 * 86_400,
        description="How far back an alert looks for deploys and version switches (model "
        "swaps, drift rollbacks) recorded in the audit trail, to name as possible causes.",
    )
    # --- metrics (series.py) ---------------------------------------------------------------
    season_seconds: int = Field(
        86_400,
        ge=60,
        le=31_622_400,
        description="A metric's season in seconds: 86400 a day, 604800 a week (UTC).",
    )
    season_slots: int = Field(
        24,
        ge=1,
        le=2_016,
        description="Slots a season is cut into, each with its own seasonal level "
        "(24 a day: hours; 168 a week: hours of the week).",
    )
    season_cycles: int = Field(
        7,
        ge=2,
        le=64,
        description="Past seasons a slot remembers; its level is the median of their means.",
    )
    series_points: int = Field(
        64,
        ge=16,
        le=4_096,
        description="Recent samples a series keeps for its global level and its noise scale.",
    )
    z_threshold: float = Field(
        5.0,
        ge=1,
        le=100,
        description="Robust z (median/MAD) at and above which a sample is a spike or a dip.",
    )
    cusum_drift: float = Field(
        1.0,
        gt=0,
        le=5,
        description="CUSUM's allowance in robust standard deviations: it finds level shifts "
        "of about twice this and more.",
    )
    cusum_threshold: float = Field(
        8.0,
        ge=2,
        le=100,
        description="CUSUM's decision interval: a level shift when a sum of z reaches it.",
    )
    max_series: int = Field(
        2_000,
        ge=1,
        le=1_000_000,
        description="Metric series kept; past it the least recently seen is forgotten.",
    )
