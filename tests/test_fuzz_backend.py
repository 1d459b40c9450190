"""The example backend answers bad input with a 4xx too: every operation of its OpenAPI,
fuzzed over real HTTP (schemathesis, valid and invalid data) against `uvicorn
examples.backend.app:app` as a child process, on its own SQLite, with mail to a real SMTP
server and aiassist in-process."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from examples.backend.app import create_app
from examples.backend.db import BackendSettings
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance
from schemathesis.transport.requests import ManagedCookiesSession

from .conftest import free_port, fuzz_schema, wait_healthy
from .test_example_backend import Inbox

EXAMPLES = int(os.environ.get("AIASSIST_FUZZ_EXAMPLES", "10"))
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("backend")
    smtp = Controller(Inbox(), hostname="127.0.0.1", port=free_port())
    smtp.start()
    port = free_port()
    env = os.environ | {
        "BACKEND_DATABASE_URL": f"sqlite:///{data / 'backend.db'}",
        "BACKEND_SMTP_PORT": str(smtp.port),
        "AIASSIST_DATA_DIR": str(data / "aiassist"),
        "AIASSIST_LOG_LEVEL": "warning",
    }
    command = [sys.executable, "-m", "uvicorn", "examples.backend.app:app", "--port", str(port)]
    proc = subprocess.Popen([*command, "--log-level", "warning"], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc=proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(15)
        smtp.stop()


def _schema() -> Any:
    """The backend's OpenAPI as it serves it (building the app opens only its engine)."""
    scratch = Path(tempfile.mkdtemp(prefix="aiassist-backend-schema-")) / "backend.db"
    return fuzz_schema(create_app(BackendSettings(database_url=f"sqlite:///{scratch}")).openapi())


schema = _schema()


@pytest.fixture(scope="module")
def session() -> Iterator[ManagedCookiesSession]:
    """Kept-alive connections for the generated calls, their cookies dropped after each one,
    as schemathesis's own runner does."""
    with ManagedCookiesSession() as http:
        http.headers.clear()  # only the case's own headers
        http.trust_env = False  # a loopback server: no proxy or .netrc to look up per request
        yield http


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_reaches_a_server_error(
    case: Any, backend: str, session: ManagedCookiesSession
) -> None:
    case.call_and_validate(
        base_url=backend,
        session=session,
        checks=[not_a_server_error, response_schema_conformance],
        timeout=30,
    )


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_422_naming_the_field(backend: str, number: str) -> None:
    response = httpx.post(
        f"{backend}/orders",
        content=f'{{"customer_id": "c1", "amount": {number}}}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "amount"]
