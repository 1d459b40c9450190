"""The tickets module's settings (`AIASSIST_TICKETS_*`, or `[tickets]` in the config file)
and `Scoring`, the frozen values the module, its order endpoint and the simulator use."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from aiassist.settings import ModuleSettings

__all__ = ["Scoring", "TicketsSettings"]

_MONTH = 30 * 86_400


@dataclass(frozen=True)
class Scoring:
    """How a ticket's head start is made (see the module docstring)."""

    horizon_s: float = 14_400.0
    severity_s: float = 1800.0
    work_s: float = 3600.0
    value_power: float = 0.5
    cap_s: float = 43_200.0
    risk_s: float = 300.0
    rescue_s: float = 300.0
    rescue_gap_s: float = float(_MONTH)
    wait_scale: float = 8.0

    @classmethod
    def from_settings(cls, settings: TicketsSettings) -> Scoring:
        return cls(**settings.model_dump(include=set(cls.__dataclass_fields__)))

    @property
    def max_boost_s(self) -> float:
        """The largest head start: the aging bound."""
        return self.horizon_s + self.cap_s + self.risk_s


class TicketsSettings(ModuleSettings):
    model_config = SettingsConfigDict(env_prefix="AIASSIST_TICKETS_")

    embed_text: bool = Field(
        True,
        description="Read tickets' texts with the packaged MiniLM (the `text` extra) when it "
        "is installed; false, or not installed: keyword rules.",
    )
    embeddings_dir: Path | None = Field(
        None,
        description="Where the MiniLM is exported to ONNX once. Default: data_dir/embeddings.",
    )
    sla_window_days: float = Field(
        7.0, gt=0, le=90, description="Recorded outcomes the SLA response statistic covers."
    )
    horizon_s: float = Field(
        Scoring.horizon_s,
        ge=0,
        le=_MONTH,
        description="The rule's deadline head start: SLAs further than this count as this "
        "far (seconds).",
    )
    severity_s: float = Field(
        Scoring.severity_s,
        ge=0,
        le=_MONTH,
        description="The rule's head start in seconds per unit of ln(ticket value).",
    )
    work_s: float = Field(
        Scoring.work_s,
        ge=0,
        le=_MONTH,
        description="The model's head start in seconds per doubling of (1 + value^value_power "
        "per half hour of predicted work).",
    )
    value_power: float = Field(
        Scoring.value_power,
        ge=0,
        le=2,
        description="How much value counts against work in the model's order: 1 is Smith's "
        "rule (least weighted wait), 0 shortest work first; 0.5: a ticket worth four times "
        "another's goes first if it takes at most twice as long.",
    )
    cap_s: float = Field(
        Scoring.cap_s,
        ge=0,
        le=_MONTH,
        description="The largest head start severity or value per work can give (seconds).",
    )
    risk_s: float = Field(
        Scoring.risk_s,
        ge=0,
        le=86_400,
        description="Head start for a certain SLA breach, scaled by P(breach).",
    )
    rescue_s: float = Field(
        Scoring.rescue_s,
        ge=0,
        le=86_400,
        description="A ticket whose SLA ends this soon (seconds) is taken before the order, "
        "earliest SLA first, while it can still be met.",
    )
    rescue_gap_s: float = Field(
        Scoring.rescue_gap_s,
        ge=0,
        le=_MONTH,
        description="The rescue does not overtake a ticket whose value head start is more "
        "than this (seconds) above the rescued ticket's (default: a month, no gap: every SLA "
        "that can still be met is kept).",
    )
    wait_scale: float = Field(
        Scoring.wait_scale,
        ge=0,
        le=1000,
        description="Head starts grow with the longest recent wait (see the priority "
        "module's TaskQueue); 0: fixed seconds.",
    )
