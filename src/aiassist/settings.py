"""Settings, read from `AIASSIST_*` environment variables and an optional TOML file.

Precedence, highest first: keyword arguments, environment, the file named by
`AIASSIST_CONFIG`, defaults. A wrong value raises `SettingsError` naming the setting,
so a misconfigured process stops at start-up instead of misbehaving later.

`Settings` holds what the service, the daemon, the agent and the SDK share. A module's
own knobs are a `ModuleSettings` subclass in its folder, read from `AIASSIST_<MODULE>_*`
and from the file's `[<module>]` table.
"""

from __future__ import annotations

import logging
import os
import tomllib
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

__all__ = ["ModuleSettings", "Settings", "SettingsError", "load_settings"]

ENV_PREFIX = "AIASSIST_"
_SECRET_FIELDS = frozenset({"api_key", "agent_api_key", "webhook_secret"})


class SettingsError(ValueError):
    """A setting has a wrong value; the message names it as an environment variable."""


class _TomlFileSource(PydanticBaseSettingsSource):
    """Values from the TOML file named by AIASSIST_CONFIG: top-level keys for `Settings`;
    for a `ModuleSettings`, its table (`[priority]`) or top-level keys with its prefix."""

    def __init__(self, settings_cls: type[BaseSettings], section: str | None = None) -> None:
        super().__init__(settings_cls)
        data = _read_config_file()
        if section is not None:
            prefixed = {
                k.removeprefix(f"{section}_"): v
                for k, v in data.items()
                if k.startswith(f"{section}_")
            }
            table = data.get(section)
            data = prefixed | (table if isinstance(table, dict) else {})
        self._data = data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in self._data.items() if k in self.settings_cls.model_fields}


def _read_config_file() -> dict[str, Any]:
    path = os.environ.get(f"{ENV_PREFIX}CONFIG")
    if not path:
        return {}
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise SettingsError(f"{ENV_PREFIX}CONFIG: no such file: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{ENV_PREFIX}CONFIG: {path} is not valid TOML: {exc}") from None


class _FromConfig(BaseSettings):
    """Keyword arguments, then the environment, then the config file (its `section`)."""

    @classmethod
    def prefix(cls) -> str:
        """The environment variables' prefix, e.g. AIASSIST_ or AIASSIST_PRIORITY_."""
        return str(cls.model_config.get("env_prefix", ""))

    @classmethod
    def section(cls) -> str | None:
        """The config file's table these settings read; None: its top-level keys."""
        return None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _TomlFileSource(settings_cls, cls.section())


class Settings(_FromConfig):
    """Every knob of aiassist. docs/configuration.md is generated from these descriptions."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # --- where things live -------------------------------------------------------------
    data_dir: Path = Field(
        Path(".aiassist"),
        description="Directory for the embedded database, the model volume and the admin key.",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL. Default: SQLite in data_dir. "
        "PostgreSQL: postgresql+psycopg://user@host:5432/db.",
    )
    models_dir: Path | None = Field(None, description="The model volume. Default: data_dir/models.")

    # --- the inference service ---------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address the inference service binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port the inference service binds.")
    workers: int = Field(1, ge=1, le=64, description="Uvicorn worker processes.")
    auth: bool = Field(
        True, description="Require API keys on non-public endpoints. Turn off only in tests."
    )
    key_cache_seconds: float = Field(
        5.0,
        ge=0,
        le=3600,
        description="How long a replica trusts a cached API key before re-reading it; "
        "bounds how late a revocation made elsewhere takes effect.",
    )
    audit_anchor_seconds: float = Field(
        60.0,
        gt=0,
        le=86400,
        description="How often the service records the head of every audit chain that grew "
        "(an anchor), so a run whose events were deleted whole is detected by `audit verify`.",
    )
    record_decisions: bool = Field(
        True, description="Store every decision so outcomes can be joined to it for training."
    )
    record_queue_size: int = Field(
        10_000, ge=10, le=1_000_000, description="Decisions buffered before new ones are dropped."
    )
    record_flush_seconds: float = Field(
        0.2, gt=0, le=60, description="Longest time a decision waits in memory before it is stored."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level of the service and daemon."
    )

    # --- models ------------------------------------------------------------------------
    model_latency_budget_us: float = Field(
        1000.0,
        gt=0,
        le=10_000_000,
        description="A model version whose single-row median latency is over this is refused.",
    )
    model_poll_seconds: float = Field(
        1.0, gt=0, le=3600, description="How often the service checks the model tags."
    )
    retrain_min_outcomes: int = Field(
        500, ge=1, le=10_000_000, description="New outcomes that make the daemon retrain."
    )
    retrain_interval_seconds: float = Field(
        86_400.0,
        gt=0,
        description="Retrain at least this often when there are any new outcomes.",
    )
    min_train_rows: int = Field(
        50, ge=2, le=10_000_000, description="Fewest examples the daemon trains on."
    )
    bootstrap_rows: int = Field(
        20_000,
        ge=100,
        le=5_000_000,
        description="Simulated examples a module with no model yet is first trained on.",
    )
    holdout_fraction: float = Field(
        0.2, gt=0, lt=1, description="Newest share of the data held out to judge a candidate."
    )
    daemon_poll_seconds: float = Field(
        30.0, gt=0, le=86_400, description="How often the daemon looks for work."
    )
    daemon_metrics_port: int = Field(
        9101, ge=0, le=65535, description="Port of the daemon's /metrics (0: none)."
    )

    # --- the agent runtime -------------------------------------------------------------
    redis_url: str | None = Field(
        None,
        description="Redis for state shared by processes (agent rate limits), e.g. "
        "redis://127.0.0.1:6379/0. Unset: kept in memory, per process.",
    )
    agent_tools: str | None = Field(
        None,
        description="The ToolSet the agent API offers, as 'package.module:name' or "
        "'path/to/file.py:name' "
        "(a ToolSet, or a function returning one). Unset: no tools.",
    )
    agent_policy: Path | None = Field(
        None,
        description="YAML policy for agent runs (docs/agent.md). Unset: reads and writes in "
        "a run's allowlist run, irreversible calls wait for approval.",
    )
    agent_provider: str | None = Field(
        None,
        description="Language model for natural-language agent runs: openai (any "
        "OpenAI-compatible endpoint), anthropic, none, or the import path "
        "'package.module:name' of a function (settings) -> Provider. Unset or none: only "
        "scripted runs of the test model.",
    )
    agent_max_steps: int = Field(
        20, ge=1, le=1000, description="Most model turns an agent run may take."
    )
    agent_tool_timeout_seconds: float = Field(
        30.0, gt=0, le=3600, description="A tool call running longer fails (retryable)."
    )
    agent_rate_limit_wait_seconds: float = Field(
        5.0,
        ge=0,
        le=600,
        description="Longest wait for a rate-limited downstream; past it the model is told "
        "to retry later.",
    )
    agent_lease_seconds: float | None = Field(
        None,
        gt=0,
        le=86_400,
        description="How long a process holds a run it drives before it must renew; a run "
        "whose process died is taken over after this. Must exceed "
        "agent_tool_timeout_seconds. Unset: 300, or twice the tool timeout if longer.",
    )
    agent_recover_seconds: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="How often the service looks for running agent runs nobody drives (their "
        "process died, or a decision was recorded where the run cannot go on, as from the "
        "CLI) and drives them on; a run must have been idle that long.",
    )
    agent_executor: Literal["inprocess", "celery"] = Field(
        "inprocess",
        description="Who drives agent runs and flows: the process that started them "
        "(inprocess), or Celery workers (celery: set celery_broker_url and start "
        "`celery -A aiassist.integrations.celery.agent worker`).",
    )
    agent_queue: str = Field(
        "aiassist-agent",
        pattern=r"^[A-Za-z0-9_.:-]{1,200}$",
        description="Celery queue that agent runs are sent to and workers consume.",
    )
    celery_broker_url: str | None = Field(
        None,
        max_length=2000,
        description="Broker of the Celery workers that drive agent runs, e.g. "
        "amqp://guest:guest@127.0.0.1:5672// (RabbitMQ) or redis://127.0.0.1:6379/1.",
    )

    # --- the agent's language model (used when agent_provider is openai or anthropic) ---
    agent_model: str | None = Field(
        None,
        max_length=200,
        description="Model name sent to the provider, e.g. gpt-4o-mini, claude-sonnet-4-5, "
        "qwen2.5:7b (Ollama).",
    )
    agent_base_url: str | None = Field(
        None,
        max_length=2000,
        description="Endpoint of the provider. Unset: the vendor's own. Any OpenAI-compatible "
        "server works with agent_provider=openai, e.g. vLLM or llama.cpp "
        "(http://127.0.0.1:8080/v1), Ollama (http://127.0.0.1:11434/v1), DeepSeek, Qwen.",
    )
    agent_api_key: SecretStr | None = Field(
        None,
        description="API key of the provider. Unset: OPENAI_API_KEY or ANTHROPIC_API_KEY; "
        "a self-hosted agent_base_url may need none.",
    )
    agent_api_key_file: Path | None = Field(
        None, description="File holding agent_api_key, for secrets mounted as files."
    )
    agent_timeout_seconds: float = Field(
        60.0, gt=0, le=3600, description="Longest wait for one model answer."
    )
    agent_max_retries: int = Field(
        2,
        ge=0,
        le=10,
        description="Retries of a model request that failed with 429, 5xx or a timeout.",
    )
    agent_max_tokens: int = Field(
        4096, ge=1, le=1_000_000, description="Most tokens the model may write in one turn."
    )
    agent_input_price_per_mtok: float = Field(
        0.0, ge=0, le=10_000, description="Price of a million input tokens, for cost reports."
    )
    agent_output_price_per_mtok: float = Field(
        0.0, ge=0, le=10_000, description="Price of a million output tokens, for cost reports."
    )

    # --- automation: flows and their triggers ------------------------------------------
    flows_dir: Path | None = Field(
        None,
        description="Directory of flow files (*.yaml, docs/automation.md), loaded at start-up; "
        "a bad file stops the start-up naming its line. Unset: no flows.",
    )
    smtp_listen: str | None = Field(
        None,
        max_length=300,
        pattern=r"^[^:\s]+:\d{1,5}$",
        description="host:port of the inbound SMTP listener that starts flows with an `email` "
        "trigger, e.g. 127.0.0.1:8025. Unset: no listener.",
    )
    webhook_secrets_file: Path | None = Field(
        None,
        description="YAML or JSON mapping of webhook name to its HMAC secret. A variable "
        "AIASSIST_WEBHOOK_SECRET_<NAME> overrides the file's entry.",
    )
    automation_scopes: str = Field(
        "agent:run",
        max_length=1000,
        description="Comma-separated scopes of the service identity that triggered runs act as.",
    )

    # --- serving tools over MCP ----------------------------------------------------------
    mcp_http: bool = Field(
        False,
        description="Serve the agent's tools to MCP clients (streamable HTTP) at /mcp in the "
        "inference service; each request needs an API key with agent:run.",
    )
    mcp_approval_wait_seconds: float = Field(
        60.0,
        ge=0,
        le=3600,
        description="How long an MCP tools/call that needs approval waits for it; past it the "
        "client gets an error naming the approval, and the run stays paused until decided.",
    )

    # --- the SDK -----------------------------------------------------------------------
    mode: Literal["local", "remote"] = Field(
        "local",
        description="SDK mode: run modules in this process, or call a remote inference service.",
    )
    service_url: str = Field(
        "http://127.0.0.1:8000", description="Base URL of the inference service (remote mode)."
    )
    api_key: SecretStr | None = Field(
        None,
        description="API key the SDK sends in remote mode (scopes decide, outcome); also the "
        "key `aiassist mcp serve --stdio` acts as (scope agent:run).",
    )
    api_key_file: Path | None = Field(
        None, description="File holding the API key, for secrets mounted as files."
    )
    timeout_ms: float = Field(
        50.0, gt=0, le=60_000, description="Remote decision timeout; past it the fallback answers."
    )
    breaker_failures: int = Field(
        5, ge=1, le=1000, description="Consecutive remote failures that open the circuit breaker."
    )
    breaker_recovery_seconds: float = Field(
        5.0, gt=0, le=3600, description="How long the breaker stays open before a trial call."
    )

    @model_validator(mode="after")
    def _read_key_file(self) -> Settings:
        if self.api_key is not None and not self.api_key.get_secret_value().strip():
            object.__setattr__(self, "api_key", None)  # an empty variable means unset
        if self.api_key is None and self.api_key_file is not None:
            try:
                key = self.api_key_file.read_text().strip()
            except OSError as exc:
                raise ValueError(
                    f"{ENV_PREFIX}API_KEY_FILE: cannot read {self.api_key_file}: {exc}"
                ) from exc
            object.__setattr__(self, "api_key", SecretStr(key))
        return self

    @model_validator(mode="after")
    def _read_agent_key_file(self) -> Settings:
        key = self.agent_api_key
        if key is not None and not key.get_secret_value().strip():
            object.__setattr__(self, "agent_api_key", None)  # an empty variable means unset
        if self.agent_api_key is None and self.agent_api_key_file is not None:
            try:
                value = self.agent_api_key_file.read_text().strip()
            except OSError as exc:
                raise ValueError(
                    f"{ENV_PREFIX}AGENT_API_KEY_FILE: cannot read {self.agent_api_key_file}: {exc}"
                ) from exc
            object.__setattr__(self, "agent_api_key", SecretStr(value))
        return self

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'aiassist.db').resolve()}"

    @property
    def resolved_models_dir(self) -> Path:
        return self.models_dir or self.data_dir / "models"


def load_settings(**overrides: Any) -> Settings:
    """Build settings, turning a validation error into one message per wrong setting."""
    return read_settings(Settings, **overrides)


S = TypeVar("S", bound=_FromConfig)


def module_settings(cls: type[S], log: logging.Logger) -> S:
    """A module's settings as this process has them, or their defaults when they cannot be
    read: a decision never fails on them (the service reports them at start)."""
    try:
        return read_settings(cls)
    except SettingsError as exc:
        log.warning("%s: settings unreadable, defaults: %s", cls.prefix(), exc)
        return cls()


def read_settings(cls: type[S], **overrides: Any) -> S:
    """Build `cls` (`Settings` or a module's), naming each wrong value's variable."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        prefix = cls.prefix()
        lines = []
        for err in exc.errors():
            if not err["loc"]:  # a whole-model check: its message names the setting
                lines.append(err["msg"].removeprefix("Value error, "))
                continue
            name = str(err["loc"][0])
            shown = "" if name in _SECRET_FIELDS else f" (got {err.get('input')!r})"
            lines.append(f"{prefix}{name.upper()}: {err['msg']}{shown}")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None


class ModuleSettings(_FromConfig):
    """One module's settings. Subclasses set `env_prefix` to `AIASSIST_<MODULE>_`; the
    TOML section is the part between `AIASSIST_` and the last underscore."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    @classmethod
    def section(cls) -> str | None:
        return cls.prefix().removeprefix(ENV_PREFIX).rstrip("_").lower()
