"""The priority module's settings (`AIASSIST_PRIORITY_*`, or `[priority]` in the config
file) and `Scoring`, the frozen values the module, its dispatchers and the simulator use."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from aiassist.settings import ModuleSettings

__all__ = ["PrioritySettings", "Scoring"]

_MONTH = 30 * 86_400


@dataclass(frozen=True)
class Scoring:
    """How the combined priority is made (see the module docstring)."""

    horizon_s: float = 5400.0
    weight_s: float = 1500.0
    weight_cap_s: float = 5400.0
    risk_s: float = 60.0
    rescue_s: float = 120.0
    rescue_gap_s: float = 1500.0
    wait_scale: float = 8.0

    @classmethod
    def from_settings(cls, settings: PrioritySettings) -> Scoring:
        return cls(**settings.model_dump())

    @property
    def max_boost_s(self) -> float:
        """The largest head start: the aging bound (see `order_key`)."""
        return self.horizon_s + self.weight_cap_s + self.risk_s


class PrioritySettings(ModuleSettings):
    model_config = SettingsConfigDict(env_prefix="AIASSIST_PRIORITY_")

    horizon_s: float = Field(
        Scoring.horizon_s,
        ge=0,
        le=_MONTH,
        description="Deadlines further than this count as this far (seconds); the sooner a "
        "task's latest start, the larger its head start, up to this.",
    )
    weight_s: float = Field(
        Scoring.weight_s,
        ge=0,
        le=_MONTH,
        description="Head start in seconds per unit of ln(1 + business_weight).",
    )
    weight_cap_s: float = Field(
        Scoring.weight_cap_s,
        ge=0,
        le=_MONTH,
        description="The largest head start business weight can give (seconds).",
    )
    risk_s: float = Field(
        Scoring.risk_s,
        ge=0,
        le=86_400,
        description="Head start for a certain deadline miss, scaled by P(miss).",
    )
    rescue_s: float = Field(
        Scoring.rescue_s,
        ge=0,
        le=86_400,
        description="A queued task whose latest start is this close (seconds) runs before "
        "the priority order, earliest deadline first, so a deadline that can be met is not "
        "lost.",
    )
    rescue_gap_s: float = Field(
        Scoring.rescue_gap_s,
        ge=0,
        le=_MONTH,
        description="The rescue does not overtake a task whose weight head start is more "
        "than this (seconds) above the rescued task's.",
    )
    wait_scale: float = Field(
        Scoring.wait_scale,
        ge=0,
        le=1000,
        description="Head starts grow to this many times the longest recent wait over the "
        "aging bound, so that under waits of hours the order still follows priority; 0: "
        "fixed seconds.",
    )
