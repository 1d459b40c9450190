"""Building the agent runtime a service or the CLI uses, from `Settings`.

Tools come from a `ToolSet` handed to `create_app` or from `AIASSIST_AGENT_TOOLS`
("package.module:name" or "path/to/file.py:name", a ToolSet or a function returning one);
the policy from `AIASSIST_AGENT_POLICY`; the language model from `AIASSIST_AGENT_PROVIDER`
(see `aiassist.agent.providers.provider_from_settings`); the flows a run may play from
`AIASSIST_FLOWS_DIR` (a bad flow file stops the start-up, naming its line).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from aiassist.agent.flows import Flow, load_flows
from aiassist.agent.policy import Policy
from aiassist.agent.providers import provider_from_settings
from aiassist.agent.ratelimit import rate_limiter
from aiassist.agent.redaction import Redactor
from aiassist.agent.runtime import ProviderFactory, Runtime
from aiassist.agent.tools import ToolSet
from aiassist.metrics import Metrics
from aiassist.settings import Settings
from aiassist.store.keys import KeyStore

__all__ = ["build_runtime", "load_object", "secret_values"]

_SECRET_ENV = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)$", re.IGNORECASE)


def load_object(path: str, *, setting: str) -> Any:
    """The object at 'package.module:name' or '/path/to/file.py:name'; `ValueError` naming
    the setting otherwise.

    A file path loads that file whatever `sys.path` holds, so a console script started from
    any directory finds it (an import path needs its package to be importable)."""
    module_name, _, attribute = path.rpartition(":")
    if not module_name or not attribute:
        raise ValueError(
            f"{setting}: expected 'package.module:name' or 'path/to/file.py:name', got {path!r}"
        )
    try:
        if module_name.endswith(".py"):
            module = _load_file(Path(module_name))
        else:
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{setting}: cannot import {module_name!r}: {exc}") from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"{setting}: {module_name!r} has no {attribute!r}") from None


def _load_file(file: Path) -> ModuleType:
    """The module in `file`, loaded once per process under a name derived from its path."""
    file = file.resolve()
    name = "aiassist_user." + hashlib.sha256(str(file).encode()).hexdigest()[:12] + "_" + file.stem
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, file) if file.is_file() else None
    if spec is None or spec.loader is None:
        raise ImportError(f"no Python file at {file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _tools(settings: Settings) -> ToolSet:
    if settings.agent_tools is None:
        return ToolSet()
    found = load_object(settings.agent_tools, setting="AIASSIST_AGENT_TOOLS")
    tools = found() if callable(found) and not isinstance(found, ToolSet) else found
    if not isinstance(tools, ToolSet):
        raise ValueError(f"AIASSIST_AGENT_TOOLS: {settings.agent_tools} is not a ToolSet")
    return tools


def _provider(settings: Settings) -> tuple[str | None, dict[str, ProviderFactory]]:
    """The configured model, built once now so a misconfiguration stops the start-up."""
    provider = provider_from_settings(settings)
    if provider is None:
        return None, {}
    name = (settings.agent_provider or "").strip()[:64]
    return name, {name: lambda options: provider}


def secret_values(settings: Settings) -> list[str]:
    """Values to keep out of logs, audit and prompts: the service's own API key and every
    environment variable whose name says it holds a secret (OPENAI_API_KEY, CRM_TOKEN...),
    and the webhooks' secrets."""
    values = [
        v
        for k, v in os.environ.items()
        if v and (_SECRET_ENV.search(k) or k.startswith("AIASSIST_WEBHOOK_SECRET_"))
    ]
    if settings.api_key is not None:
        values.append(settings.api_key.get_secret_value())
    if settings.webhook_secrets_file is not None:  # the flows' webhook secrets
        from aiassist.agent.triggers.secrets import webhook_secrets

        values += [s.get_secret_value() for s in webhook_secrets(settings).values()]
    return values


def build_runtime(
    settings: Settings,
    sessions: sessionmaker[Session],
    *,
    tools: ToolSet | None = None,
    metrics: Metrics | None = None,
    flows: Mapping[str, Flow] | None = None,
) -> Runtime:
    """The runtime for this process, configured by `settings` (see the module docstring).

    `flows` are the ones already loaded from `settings.flows_dir`, if the caller has them.
    """
    if flows is None and settings.flows_dir is not None:
        flows = load_flows(settings.flows_dir)
    default, providers = _provider(settings)
    policy = Policy.load(settings.agent_policy) if settings.agent_policy else Policy()
    return Runtime(
        sessions,
        tools if tools is not None else _tools(settings),
        policy=policy,
        providers=providers,
        default_provider=default,
        rate_limiter=rate_limiter(settings.redis_url),
        redactor=Redactor(secret_values(settings)),
        tool_timeout=settings.agent_tool_timeout_seconds,
        rate_limit_wait=settings.agent_rate_limit_wait_seconds,
        lease_seconds=settings.agent_lease_seconds
        or max(300.0, settings.agent_tool_timeout_seconds * 2),
        metrics=metrics,
        flows=flows,
        # runs resume only while their API key is valid (with auth off there are no keys)
        keys=KeyStore(sessions, cache_seconds=0) if settings.auth else None,
    )
