"""Every operation the service documents, called with no key, a forged key and a key of each
scope, over real HTTP: the scope an operation needs is the role its OpenAPI security lists,
the operations without one are exactly the public ones, and a key revoked in another process
stops working within AIASSIST_KEY_CACHE_SECONDS. The app's route table is checked against the
document, so a route cannot be served without being in the matrix or named as undocumented."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from aiassist.server.app import create_app
from aiassist.settings import Settings
from aiassist.store.keys import SCOPES

from .conftest import ScopedService, ServiceProcess, free_port, scoped_service

# Public by design: probes, the Prometheus scrape, and the flows' webhooks (HMAC-signed).
PUBLIC = {
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("post", "/v1/hooks/{name}"),
}
# Served but not in the OpenAPI document: the API docs themselves, the catch-all that
# answers an unknown module (it needs `decide`, below), and the MCP endpoint, whose keys
# tests/test_mcp_server.py checks over its own protocol.
UNDOCUMENTED = {
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
    ("POST", "/v1/{module}/decide"),
    ("POST", "/v1/{module}/outcome"),
    ("*", "/mcp"),
}
KEY_CACHE_SECONDS = 1.0


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # with its parameters filled in
    template: str
    scopes: frozenset[str]  # empty: public

    def __str__(self) -> str:
        return f"{self.method.upper()} {self.template}"


def _filled(template: str, parameters: list[dict[str, Any]]) -> str:
    for parameter in parameters:
        if parameter["in"] == "path":
            value = "1" if parameter["schema"].get("type") == "integer" else "x"
            template = template.replace(f"{{{parameter['name']}}}", value)
    return template


def _roles(operation: dict[str, Any]) -> frozenset[str]:
    return frozenset(role for need in operation.get("security", []) for role in need["HTTPBearer"])


def _operations() -> list[Operation]:
    document = create_app(Settings(data_dir=Path(tempfile.mkdtemp(prefix="aiassist-")))).openapi()
    return [
        Operation(
            method,
            _filled(template, operation.get("parameters", [])),
            template,
            _roles(operation),
        )
        for template, methods in document["paths"].items()
        for method, operation in methods.items()
    ]


OPERATIONS = _operations()
MODULES = next(op for op in OPERATIONS if op.template == "/v1/modules")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScopedService]:
    cache = {"AIASSIST_KEY_CACHE_SECONDS": str(KEY_CACHE_SECONDS)}
    with scoped_service(tmp_path_factory.mktemp("auth"), **cache) as service:
        yield service


#: One connection pool for the matrix's calls: a client per call costs more than the call.
HTTP = httpx.Client()


def _call(url: str, operation: Operation, token: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    body = {} if operation.method in ("post", "put", "patch") else None
    return HTTP.request(operation.method, url + operation.path, json=body, headers=headers)


def _route_table(routes: Iterable[Any]) -> Iterator[tuple[str, str, bool]]:
    """Method, path and whether documented, of every route served. FastAPI includes routers
    lazily, as branches whose routes it builds on first use: descend into them."""
    for route in routes:
        if hasattr(route, "effective_candidates"):
            yield from _route_table(route.effective_candidates())
            continue
        route = getattr(route, "starlette_route", None) or route  # a plain Route in a branch
        for method in route.methods or {"*"}:  # no methods: a mounted ASGI app takes all
            if method != "HEAD":
                yield method, route.path, route.include_in_schema


def test_every_route_served_is_in_the_matrix_or_known() -> None:
    """The matrix is built from the OpenAPI document: it must list each route the app
    serves, so a route added cannot escape it."""
    settings = Settings(data_dir=Path(tempfile.mkdtemp(prefix="aiassist-")), mcp_http=True)
    app = create_app(settings)
    document = app.openapi()
    table = set(_route_table(app.routes))
    documented = {(m.upper(), path) for path, ops in document["paths"].items() for m in ops}
    assert {(method, path) for method, path, shown in table if shown} == documented
    assert {(method, path) for method, path, shown in table if not shown} == UNDOCUMENTED


def test_an_unknown_module_asks_for_a_decide_key(service: ScopedService) -> None:
    url = f"{service.process.url}/v1/nope/decide"
    assert httpx.post(url, json={}).status_code == 401
    assert httpx.post(url, json={}, headers=service.headers("outcome")).status_code == 403
    known = httpx.post(url, json={}, headers=service.headers("decide"))
    assert known.status_code == 404 and "nope" in known.json()["detail"]


def test_public_operations_are_exactly_the_listed_ones() -> None:
    assert {(op.method, op.template) for op in OPERATIONS if not op.scopes} == PUBLIC
    assert all(len(op.scopes) == 1 and op.scopes <= set(SCOPES) for op in OPERATIONS if op.scopes)


@pytest.mark.parametrize("operation", [op for op in OPERATIONS if op.scopes], ids=str)
def test_each_scope_gets_what_the_operation_documents(
    service: ScopedService, operation: Operation
) -> None:
    [needed] = operation.scopes
    missing = _call(service.process.url, operation, None)
    assert missing.status_code == 401, missing.text
    assert "missing API key" in missing.json()["detail"]
    assert missing.headers["www-authenticate"] == "Bearer"
    forged = _call(service.process.url, operation, service.tokens[needed][:-4] + "abcd")
    assert forged.status_code == 401, forged.text
    for scope, token in service.tokens.items():
        response = _call(service.process.url, operation, token)
        if scope in (needed, "admin"):
            assert response.status_code not in (401, 403), f"{scope}: {response.text}"
            assert response.status_code < 500, f"{scope}: {response.text}"
        else:
            assert response.status_code == 403, f"{scope}: {response.text}"
            assert f"lacks the scope {needed!r}" in response.json()["detail"]


@pytest.mark.parametrize("operation", [op for op in OPERATIONS if not op.scopes], ids=str)
def test_public_operations_ask_no_key(service: ScopedService, operation: Operation) -> None:
    for token in (None, *service.tokens.values()):
        response = _call(service.process.url, operation, token)
        assert response.status_code not in (403, 500), response.text
        if operation.template == "/v1/hooks/{name}":  # no flow named x: nothing to sign for
            assert response.status_code == 404, response.text
        else:
            assert response.status_code == 200, response.text


def test_a_key_revoked_elsewhere_stops_within_the_cache_window(service: ScopedService) -> None:
    key = service.store.create("soon revoked", ["decide"], actor="test")
    # now cached by the service
    assert _call(service.process.url, MODULES, key.token).status_code == 200
    assert service.store.revoke(key.principal.key_id, actor="test")
    revoked_at = time.monotonic()
    while (response := _call(service.process.url, MODULES, key.token)).status_code == 200:
        assert time.monotonic() - revoked_at < KEY_CACHE_SECONDS + 1.0, "still accepted"
    assert response.status_code == 401
    assert response.json()["detail"] == "invalid or revoked API key"
    assert time.monotonic() - revoked_at <= KEY_CACHE_SECONDS + 1.0


def test_keys_cannot_be_checked_while_the_database_is_away(tmp_path: Path) -> None:
    away = "postgresql+psycopg://postgres@127.0.0.1:9/aiassist?connect_timeout=1"
    process = ServiceProcess(Settings(data_dir=tmp_path, database_url=away), free_port())
    process.start()  # it starts, and says it is not ready
    try:
        assert httpx.get(f"{process.url}/readyz").status_code == 503
        response = _call(process.url, MODULES, "aia_0123456789ab_" + "x" * 43)
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "1"
        assert "database is unreachable" in response.json()["detail"]
    finally:
        process.kill()
