"""Webhook secrets by name: the secrets file, then `AIASSIST_WEBHOOK_SECRET_<NAME>`.

Read by the automation (to check a webhook's signature) and by the runtime's redactor (to
keep the secrets out of the audit and the prompts), so it depends on nothing of either.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import yaml
from pydantic import SecretStr

from aiassist.settings import Settings

__all__ = ["SECRET_ENV_PREFIX", "secret_for", "webhook_secrets"]

SECRET_ENV_PREFIX = "AIASSIST_WEBHOOK_SECRET_"  # noqa: S105 - a variable's name


def webhook_secrets(settings: Settings) -> dict[str, SecretStr]:
    """Webhook secrets by name: the secrets file, then `AIASSIST_WEBHOOK_SECRET_<NAME>`."""
    secrets: dict[str, SecretStr] = {}
    if settings.webhook_secrets_file is not None:
        try:
            data = yaml.safe_load(settings.webhook_secrets_file.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            problem = type(exc).__name__  # the text may quote the file: keep secrets out
            raise ValueError(f"AIASSIST_WEBHOOK_SECRETS_FILE: cannot read it ({problem})") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise ValueError("AIASSIST_WEBHOOK_SECRETS_FILE: expected a mapping of name: secret")
        secrets.update({str(k): SecretStr(v) for k, v in data.items()})
    for key, value in os.environ.items():
        if key.startswith(SECRET_ENV_PREFIX) and value:
            secrets[_env_name(key.removeprefix(SECRET_ENV_PREFIX))] = SecretStr(value)
    return secrets


def _env_name(name: str) -> str:
    return name.lower().replace("_", "-")


def secret_for(name: str, secrets: Mapping[str, SecretStr]) -> SecretStr | None:
    """A webhook's secret: by its name, or by the spelling its variable allows (`a_b` = `a-b`)."""
    return secrets.get(name) or secrets.get(_env_name(name.upper().replace("-", "_")))
