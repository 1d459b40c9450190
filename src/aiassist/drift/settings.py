"""The drift guard's settings (`AIASSIST_DRIFT_*`, or `[drift]` in the config file)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from aiassist.settings import ModuleSettings

__all__ = ["DriftSettings"]


class DriftSettings(ModuleSettings):
    model_config = SettingsConfigDict(env_prefix="AIASSIST_DRIFT_")

    webhook_url: str | None = Field(
        None,
        max_length=2000,
        description="URL the API drift guard POSTs its alerts to (none: logs and metrics only).",
    )
    webhook_secret: SecretStr | None = Field(
        None,
        description="HMAC-SHA256 key that signs drift alerts (X-AIAssist-Signature header).",
    )
