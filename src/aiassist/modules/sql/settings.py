"""The sql module's settings (`AIASSIST_SQL_*`, or `[sql]` in the config file)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from aiassist.settings import ModuleSettings

__all__ = ["SqlSettings"]


class SqlSettings(ModuleSettings):
    model_config = SettingsConfigDict(env_prefix="AIASSIST_SQL_")

    dsn: SecretStr | None = Field(
        None,
        description="PostgreSQL URL the analyser reads (a replica; a read-only user is "
        "enough), for `POST /v1/sql/analyze` and as `aiassist sql analyze`'s default.",
    )
    min_cost_factor: float = Field(
        2.0,
        ge=1.1,
        le=1000,
        description="An index is advised only if, with it in place hypothetically, the "
        "planner's cost of a query it serves falls by at least this factor.",
    )
    top_groups: int = Field(
        200, ge=1, le=10_000, description="Query groups explained, most total time first."
    )
    statement_timeout_ms: int = Field(
        5000, ge=100, le=600_000, description="Longest any one statement of the analyser runs."
    )
    allow_analyze: bool = Field(
        False,
        description="Run EXPLAIN ANALYZE (executes the queries; read-only transactions "
        "only). Off: plain EXPLAIN, which runs nothing.",
    )
    watch_interval_s: float = Field(
        300.0, ge=5, le=86_400, description="`aiassist sql watch`: seconds between passes."
    )
    watch_factor: float = Field(
        2.0,
        ge=1.1,
        le=1000,
        description="A group regresses when its mean is this times its baseline.",
    )
    watch_min_calls: int = Field(
        20, ge=1, le=10**9, description="Calls a group needs in an interval to be judged."
    )
    webhook_url: str | None = Field(
        None, max_length=2000, description="Where `aiassist sql watch` posts its alerts (signed)."
    )
    webhook_secret: SecretStr | None = Field(
        None, description="HMAC secret that signs the alerts (see docs/modules.md, drift guard)."
    )
