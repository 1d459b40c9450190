"""Deployment: the compose file wires the three processes as designed, and the processes
really work together: the example backend decides through `aiassist serve`, and keeps
answering on rule fallbacks once the service is gone.

The compose file is checked against the Compose Specification's JSON schema
(tests/data/compose_spec.json, from the compose-spec project as shipped in the
docker-compose 1.29.2 wheel, Apache-2.0) with its variables interpolated as compose does,
and with `docker compose config` (or docker-compose 1.29) too where one is installed: no
Docker binary is needed. The processes themselves are proven natively on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml
from sqlalchemy import Engine, select

from aiassist.settings import Settings
from aiassist.store.db import make_engine, make_sessionmaker
from aiassist.store.keys import KeyStore
from aiassist.store.models import DecisionRecord, OutcomeRecord

from .conftest import ServiceProcess, free_port, wait_healthy

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
SERVICES = {
    "postgres", "redis", "migrate", "ai-service", "model-daemon", "agent-worker", "backend", "mail"
}  # fmt: skip


# --- the compose file ----------------------------------------------------------------------
SCHEMA = Path(__file__).parent / "data" / "compose_spec.json"
_VARIABLE = re.compile(r"\$(?:\$|\{(?P<name>\w+)(?P<unset>:?-(?P<default>[^}]*))?\})")


def _compose_command() -> list[str] | None:
    """`docker compose` (v2 plugin) if it works, else docker-compose, else None."""
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def _interpolate(value: Any, env: dict[str, str]) -> Any:
    """`${VAR}`, `${VAR:-default}`, `${VAR-default}` and `$$` as compose substitutes them."""
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        found = env.get(match.group("name"))
        empty_counts = (match.group("unset") or "").startswith(":")
        if found is None or (found == "" and empty_counts):
            return match.group("default") or ""
        return found

    return _VARIABLE.sub(substitute, value)


def _schema_errors(document: Any) -> list[str]:
    validator = jsonschema.Draft201909Validator(json.loads(SCHEMA.read_text()))
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(document)]


def _resolved(env: dict[str, str]) -> dict[str, Any]:
    """The compose file interpolated with `env`, checked against the specification."""
    resolved: dict[str, Any] = _interpolate(yaml.safe_load(COMPOSE_FILE.read_text()), env)
    for service in resolved["services"].values():  # `NAME:` alone passes the caller's value
        variables = service.get("environment")
        if isinstance(variables, dict):
            service["environment"] = {
                k: env.get(k) if v is None else v
                for k, v in variables.items()
                if v is not None or k in env
            }
    errors = _schema_errors(resolved)
    assert not errors, "deploy/docker-compose.yml breaks the Compose Specification:\n" + (
        "\n".join(errors)
    )
    return resolved


def _config(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """`config` (or `config --services`) with a clean environment: no AIASSIST_*, POSTGRES_*
    or COMPOSE_* from the caller, and an empty env file instead of any deploy/.env a
    developer keeps. Without a compose binary, the schema check and interpolation above."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIASSIST_", "POSTGRES_", "COMPOSE_"))
    }
    compose = _compose_command()
    if compose is None:
        resolved = _resolved(clean | (env or {}))
        return "\n".join(resolved["services"]) if "--services" in args else yaml.safe_dump(resolved)
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    cmd = [*compose, "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config"]
    result = subprocess.run(
        [*cmd, *args],
        cwd=DEPLOY,
        env=clean | (env or {}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stderr}"
    return result.stdout


def test_compose_file_follows_the_compose_specification() -> None:
    """Always checked, compose binary or not; and the check does refuse a wrong file."""
    resolved = _resolved({"POSTGRES_PASSWORD": "s3cret"})
    assert "s3cret" in resolved["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"]
    broken = yaml.safe_load(COMPOSE_FILE.read_text())
    broken["services"]["ai-service"]["imgae"] = broken["services"]["ai-service"].pop("image")
    assert any("imgae" in error for error in _schema_errors(broken))


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The compose file as compose itself resolves it, with every default in place."""
    parsed: dict[str, Any] = yaml.safe_load(_config(tmp_path_factory.mktemp("compose")))
    return parsed


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> volume name, from short (1.29) or long (v2) volume syntax."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source", ""), volume["target"]
        mounts[target] = source
    return mounts


def _environment(service: dict[str, Any]) -> dict[str, Any]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return dict(env)


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    return {name: dep["condition"] for name, dep in service.get("depends_on", {}).items()}


def _host_ips(service: dict[str, Any]) -> list[str]:
    ips = []
    for port in service.get("ports", []):
        if isinstance(port, str):  # "127.0.0.1:8000:8000/tcp"
            ips.append(port.split(":")[0] if port.count(":") == 2 else "")
        else:
            ips.append(port.get("host_ip", ""))
    return ips


def _command(service: dict[str, Any]) -> str:
    command = service.get("command", "")
    return command if isinstance(command, str) else " ".join(command)


def test_compose_defines_every_service(tmp_path: Path) -> None:
    assert set(_config(tmp_path, "--services").split()) == SERVICES


def test_models_volume_is_shared_by_service_and_daemon(config: dict[str, Any]) -> None:
    services = config["services"]
    assert {"models", "pgdata"} <= set(config["volumes"])
    assert _mounts(services["ai-service"])["/data/models"] == "models"
    assert _mounts(services["model-daemon"])["/data/models"] == "models"
    assert _mounts(services["postgres"])["/var/lib/postgresql/data"] == "pgdata"
    for name in ("migrate", "ai-service", "model-daemon"):
        assert _environment(services[name])["AIASSIST_DATA_DIR"] == "/data"


def test_startup_order_is_fixed_by_conditions(config: dict[str, Any]) -> None:
    services = config["services"]
    assert services["postgres"]["healthcheck"]["test"]
    assert services["redis"]["healthcheck"]["test"]
    assert _depends_on(services["migrate"]) == {"postgres": "service_healthy"}
    assert _depends_on(services["ai-service"]) == {
        "migrate": "service_completed_successfully",
        "postgres": "service_healthy",
        "redis": "service_healthy",
    }
    assert _depends_on(services["model-daemon"])["migrate"] == "service_completed_successfully"
    backend = _depends_on(services["backend"])
    assert backend["migrate"] == "service_completed_successfully"
    # Order only: the backend must come up and answer (fallbacks) while the service is down.
    assert backend["ai-service"] == "service_started"


def test_each_process_runs_its_command(config: dict[str, Any]) -> None:
    services = config["services"]
    assert "aiassist db upgrade" in _command(services["migrate"])
    assert _command(services["ai-service"]).startswith("aiassist serve --host 0.0.0.0")
    assert _command(services["model-daemon"]) == "aiassist daemon"
    assert _command(services["agent-worker"]).startswith(
        "celery -A aiassist.integrations.celery.agent worker"
    )
    assert services["agent-worker"]["image"] == services["ai-service"]["image"]
    assert _environment(services["ai-service"])["AIASSIST_AGENT_EXECUTOR"] == "celery"
    assert services["migrate"]["image"] == services["ai-service"]["image"]
    assert "train" in services["model-daemon"]["build"]["args"]["EXTRAS"].split(",")
    assert "train" not in services["ai-service"]["build"].get("args", {}).get("EXTRAS", "")
    backend = _environment(services["backend"])
    assert backend["AIASSIST_MODE"] == "remote"
    assert backend["AIASSIST_SERVICE_URL"] == "http://ai-service:8000"
    assert backend["AIASSIST_API_KEY_FILE"].startswith("/run/")
    assert _mounts(services["backend"])[str(Path(backend["AIASSIST_API_KEY_FILE"]).parent)]
    for name, service in services.items():
        assert set(_host_ips(service)) <= {"127.0.0.1"}, f"{name} publishes beyond loopback"


def test_build_targets_exist_in_the_dockerfile(config: dict[str, Any]) -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for name, service in config["services"].items():
        if "build" in service:
            assert f"AS {service['build']['target']}\n" in dockerfile, name
    assert "HEALTHCHECK" in dockerfile and "/healthz" in dockerfile
    assert "ARG EXTRAS=server,postgres,redis,agent,celery\n" in dockerfile  # never `train`
    assert "AIASSIST_DATA_DIR=/data" in dockerfile
    assert "USER aiassist" in dockerfile
    # torch only ever arrives through the package's `torch` extra, where it is pinned.
    assert not re.search(r"pip install[^\n]*\btorch\b", dockerfile)


def test_secrets_come_from_the_environment(tmp_path: Path) -> None:
    password, api_key = secrets.token_hex(8), f"aia_test_{secrets.token_hex(8)}"
    text = COMPOSE_FILE.read_text()
    assert password not in text and "aia_" not in text
    env = {"POSTGRES_PASSWORD": password, "AIASSIST_API_KEY": api_key}
    services = yaml.safe_load(_config(tmp_path, env=env))["services"]
    assert _environment(services["postgres"])["POSTGRES_PASSWORD"] == password
    for name in ("migrate", "ai-service", "model-daemon"):
        url = _environment(services[name])["AIASSIST_DATABASE_URL"]
        assert url == f"postgresql+psycopg://aiassist:{password}@postgres:5432/aiassist"
    assert _environment(services["backend"])["AIASSIST_API_KEY"] == api_key


# --- the processes, natively ---------------------------------------------------------------
class BackendProcess:
    """The example backend under uvicorn, a real child process run from the repository root."""

    def __init__(self, port: int, env: dict[str, str]) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.port = port
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AIASSIST_")} | env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "examples.backend.app:app",
             "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"],
            cwd=ROOT,
            env=self.env,
        )  # fmt: skip
        wait_healthy(self.url, timeout, self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
            self.proc = None


@pytest.fixture
def db(sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()


@pytest.fixture
def service(sqlite_url: str, tmp_path: Path) -> Iterator[ServiceProcess]:
    proc = ServiceProcess(Settings(data_dir=tmp_path, database_url=sqlite_url), free_port())
    yield proc
    proc.kill()


@pytest.fixture
def backend(db: Engine, service: ServiceProcess, tmp_path: Path) -> Iterator[BackendProcess]:
    keys = KeyStore(make_sessionmaker(db))
    token = keys.create("example backend", ["decide", "outcome"], actor="test")
    proc = BackendProcess(
        free_port(),
        {
            "BACKEND_DATABASE_URL": f"sqlite:///{tmp_path / 'backend.db'}",
            "AIASSIST_MODE": "remote",
            "AIASSIST_SERVICE_URL": service.url,
            "AIASSIST_API_KEY": token.token,
            # Generous, so a slow CI machine cannot turn the first call into a fallback;
            # the fallback half of the test does not depend on it (refused connections).
            "AIASSIST_TIMEOUT_MS": "3000",
        },
    )
    yield proc
    proc.stop()


def _stored(db: Engine, table: Any, decision_id: str, wait: float) -> Any:
    """The row for this decision id, polling while the service's recorder flushes."""
    column = table.id if table is DecisionRecord else table.decision_id
    deadline = time.monotonic() + wait
    while True:
        with db.connect() as conn:
            row = conn.execute(select(table).where(column == decision_id)).first()
        if row is not None or time.monotonic() >= deadline:
            return row
        time.sleep(0.05)


def test_backend_decides_through_the_service_and_survives_its_loss(
    db: Engine, service: ServiceProcess, backend: BackendProcess
) -> None:
    service.start()
    backend.start()

    # 1. The service is up: the backend's decision is made and stored by the service.
    response = httpx.post(
        f"{backend.url}/orders", json={"customer_id": "c1", "amount": 400.0}, timeout=10
    )
    assert response.status_code == 201, response.text
    order = response.json()
    assert order["status"] == "held_for_review"  # 400 / 50 = 8x the average: the rule holds it
    decision_id = order["decision"]["decision_id"]
    row = _stored(db, DecisionRecord, decision_id, wait=10)
    assert row is not None, "the service did not store the backend's decision"
    assert row.module == "reference"
    assert row.features == {"signal": 8.0, "threshold": 5.0}
    assert "service unavailable" not in order["decision"]["explanation"]

    response = httpx.post(f"{backend.url}/orders/{order['id']}/review", json={"fraud": True})
    assert response.status_code == 200, response.text
    assert response.json()["outcome_recorded"] is True
    assert response.json()["order"]["status"] == "rejected"
    outcome = _stored(db, OutcomeRecord, decision_id, wait=0)
    assert outcome is not None and outcome.outcome == {"should_have_acted": True}

    # 2. The service is gone: the backend still answers, at once, from the rule fallback.
    service.stop()
    started = time.monotonic()
    response = httpx.post(
        f"{backend.url}/orders", json={"customer_id": "c1", "amount": 30.0}, timeout=10
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 201, response.text
    assert elapsed < 2.0, f"the backend waited {elapsed:.2f}s on a dead service"
    order = response.json()
    assert order["status"] == "accepted"
    assert order["decision"]["source"] == "fallback"
    assert order["decision"]["explanation"].startswith("service unavailable")
    assert _stored(db, DecisionRecord, order["decision"]["decision_id"], wait=0) is None

    response = httpx.post(f"{backend.url}/orders/{order['id']}/review", json={"fraud": False})
    assert response.status_code == 200, response.text
    assert response.json()["outcome_recorded"] is False
    assert httpx.get(f"{backend.url}/orders/{order['id']}").json()["status"] == "accepted"
