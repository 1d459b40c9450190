"""Bad input never reaches a 500: every operation of the service's OpenAPI, fuzzed over real
HTTP (schemathesis, valid and invalid data) with no key and with a key of each scope, plus
the JSON Python accepts and the standard does not, bodies that nest too deep, wrong content
types and oversize headers. The service is a child process whose memory is watched."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance
from schemathesis.transport.requests import ManagedCookiesSession

from aiassist.server.app import create_app
from aiassist.settings import Settings

from .conftest import ScopedService, fuzz_schema, scoped_service

EXAMPLES = int(os.environ.get("AIASSIST_FUZZ_EXAMPLES", "10"))
RSS_GROWTH_BOUND = 256 << 20  # what a leak per request would exceed over the run


@dataclass
class Fuzzed:
    service: ScopedService
    keys: dict[str, dict[str, str]]  # "none" and each scope -> its headers
    session: ManagedCookiesSession  # kept-alive connections; cookies dropped after each call
    rss_at_start: int = 0

    @property
    def url(self) -> str:
        return self.service.process.url

    def rss(self) -> int:
        proc = self.service.process.proc
        assert proc is not None and proc.poll() is None, "it died"
        status = Path(f"/proc/{proc.pid}/status").read_text()
        [kib] = [line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")]
        return int(kib) << 10


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    with (
        scoped_service(tmp_path_factory.mktemp("fuzz")) as service,
        ManagedCookiesSession() as http,
    ):
        http.headers.clear()  # what schemathesis's own runner sends: only the case's headers
        http.trust_env = False  # a loopback server: no proxy or .netrc to look up per request
        keys = {"none": {}} | {s: service.headers(s) for s in service.tokens}
        yield Fuzzed(service, keys, http)


def _schema() -> Any:
    """The OpenAPI the service serves, built as `aiassist serve` builds it (no database is
    opened before the lifespan starts)."""
    built = create_app(Settings(data_dir=Path(tempfile.mkdtemp(prefix="aiassist-schema-"))))
    return fuzz_schema(built.openapi())


schema = _schema()


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_reaches_a_server_error(case: Any, fuzzed: Fuzzed) -> None:
    if not fuzzed.rss_at_start:
        fuzzed.rss_at_start = fuzzed.rss()
    for headers in fuzzed.keys.values():
        case.call_and_validate(
            base_url=fuzzed.url,
            session=fuzzed.session,
            headers=headers,
            checks=[not_a_server_error, response_schema_conformance],
            timeout=30,
        )
    assert fuzzed.rss() - fuzzed.rss_at_start < RSS_GROWTH_BOUND


def _post_operations(fuzzed: Fuzzed) -> list[str]:
    paths = httpx.get(f"{fuzzed.url}/openapi.json").json()["paths"]
    return [path for path, ops in paths.items() if "post" in ops]


NOT_JSON_NUMBERS = ["NaN", "Infinity", "-Infinity"]


@pytest.mark.parametrize("number", NOT_JSON_NUMBERS)
def test_nan_and_infinity_are_422_naming_the_field(fuzzed: Fuzzed, number: str) -> None:
    """Python's JSON parser reads them; a decision must not take them, nor the error choke."""
    headers = fuzzed.keys["admin"] | {"content-type": "application/json"}
    bodies = {
        "/v1/priority/decide": '{"features": {"deadline_in_s": %s}}',
        "/v1/reference/decide": '{"features": {"signal": %s}}',
        "/v1/priority/outcome": '{"decision_id": "d1", "outcome": {"waited_s": %s, "ran_s": 1}}',
    }
    for path, body in bodies.items():
        response = httpx.post(f"{fuzzed.url}{path}", content=body % number, headers=headers)
        assert response.status_code == 422, (path, response.text)
        [error] = [e for e in response.json()["detail"] if e["type"] == "finite_number"]
        assert error["input"] == number
        assert error["loc"][-1] in {"deadline_in_s", "signal", "waited_s"}


def test_every_post_answers_bad_bodies_with_a_4xx_and_a_message(fuzzed: Fuzzed) -> None:
    deep = "[" * 5000 + "]" * 5000
    bad = [
        ("application/json", deep),
        ("application/json", '{"features": {"x": NaN}, "batch": [Infinity]}'),
        ("application/json", json.dumps({"task": "x" * 900_000})),
        ("application/json", '{"features": "\udcff\x00\u202e"}'.encode("utf-8", "surrogatepass")),
        ("application/json", b"\xff\xfe{not json"),
        ("application/x-www-form-urlencoded", "features=1"),
        ("text/plain", "hello"),
        ("application/json", json.dumps([1, 2, 3])),
    ]
    with httpx.Client(timeout=30) as http:
        for path in _post_operations(fuzzed):
            url = f"{fuzzed.url}{path.replace('{', '').replace('}', '')}"
            for content_type, body in bad:
                headers = fuzzed.keys["admin"] | {"content-type": content_type}
                response = http.post(url, content=body, headers=headers)
                assert 400 <= response.status_code < 500, (path, content_type, response.text[:300])
                assert response.json()["detail"], (path, content_type)


def test_deep_nesting_says_so(fuzzed: Fuzzed) -> None:
    response = httpx.post(
        f"{fuzzed.url}/v1/reference/decide",
        content="[" * 5000 + "]" * 5000,
        headers=fuzzed.keys["decide"] | {"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert "nests too deeply" in response.json()["detail"]


def test_oversize_headers_are_refused_not_crashed(fuzzed: Fuzzed) -> None:
    response = httpx.get(
        f"{fuzzed.url}/v1/modules",
        headers=fuzzed.keys["decide"] | {"x-filler": "a" * 70_000},
    )
    assert response.status_code == 431
    assert "headers larger than" in response.json()["detail"]
    assert httpx.get(f"{fuzzed.url}/healthz").status_code == 200
