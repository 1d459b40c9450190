"""The inference service over real HTTP (uvicorn on loopback), on SQLite and PostgreSQL."""

from __future__ import annotations

import time

import httpx
import pytest
from sqlalchemy import select

from aiassist.store.db import make_engine, make_sessionmaker
from aiassist.store.models import DecisionRecord, OutcomeRecord

from .conftest import LiveServer, Tokens

ONE = {"features": {"signal": 0.9, "threshold": 0.5}}


@pytest.fixture
def client(live_server: LiveServer):  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=live_server.url, timeout=5) as c:
        yield c


def test_public_endpoints_need_no_key(client: httpx.Client) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready"
    assert ready["modules"]["reference"] == {"model_version": None}
    assert client.get("/docs").status_code == 200
    assert "/v1/reference/decide" in client.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize(
    ("headers", "status", "message"),
    [
        ({}, 401, "missing API key"),
        ({"authorization": "Bearer aia_0000_nope"}, 401, "invalid or revoked"),
        ({"x-api-key": "garbage"}, 401, "invalid or revoked"),
    ],
)
def test_missing_or_wrong_key_is_401(
    client: httpx.Client, headers: dict[str, str], status: int, message: str
) -> None:
    response = client.post("/v1/reference/decide", json=ONE, headers=headers)
    assert response.status_code == status
    assert message in response.json()["detail"]
    assert response.headers["www-authenticate"] == "Bearer"


def test_scopes_are_enforced(client: httpx.Client, tokens: Tokens) -> None:
    outcome = {"decision_id": "abc", "outcome": {"should_have_acted": True}}
    assert client.post("/v1/reference/decide", json=ONE, headers=tokens.header("decide")).is_success
    refused = client.post("/v1/reference/outcome", json=outcome, headers=tokens.header("decide"))
    assert refused.status_code == 403
    assert "lacks the scope 'outcome'" in refused.json()["detail"]
    refused = client.post("/v1/reference/decide", json=ONE, headers=tokens.header("outcome"))
    assert refused.status_code == 403
    assert client.post("/v1/reference/outcome", json=outcome, headers=tokens.header("outcome"))
    assert client.post("/v1/reference/decide", json=ONE, headers=tokens.header("admin")).is_success
    as_header = {"x-api-key": tokens.decide}
    assert client.post("/v1/reference/decide", json=ONE, headers=as_header).is_success


def test_revoked_key_is_refused(client: httpx.Client, live_server: LiveServer) -> None:
    new = live_server.state.keys.create("temp", ["decide"], actor="test")
    headers = {"authorization": f"Bearer {new.token}"}
    assert client.post("/v1/reference/decide", json=ONE, headers=headers).is_success
    assert live_server.state.keys.revoke(new.principal.key_id, actor="test")
    assert client.post("/v1/reference/decide", json=ONE, headers=headers).status_code == 401


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"features": {"signal": "high"}}, ["body", "features", "signal"]),
        ({"features": {"signal": 1e12}}, ["body", "features", "signal"]),
        ({"features": {"signal": 1, "colour": "red"}}, ["body", "features", "colour"]),
        ({"features": {}}, ["body", "features", "signal"]),
        ({"batch": []}, ["body", "batch"]),
        ({"batch": [{"signal": 1}] * 1001}, ["body", "batch"]),
        ({}, ["body"]),
        ({"features": {"signal": 1}, "batch": [{"signal": 1}]}, ["body"]),
    ],
)
def test_bad_input_is_422_naming_the_field(
    client: httpx.Client, tokens: Tokens, body: dict[str, object], field: list[str]
) -> None:
    response = client.post("/v1/reference/decide", json=body, headers=tokens.header())
    assert response.status_code == 422
    assert any(err["loc"] == field for err in response.json()["detail"]), response.json()


def test_bad_outcome_is_422(client: httpx.Client, tokens: Tokens) -> None:
    bad = {"decision_id": "has spaces", "outcome": {"should_have_acted": True}}
    response = client.post("/v1/reference/outcome", json=bad, headers=tokens.header())
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "decision_id"]
    bad = {"decision_id": "abc", "outcome": {}}
    response = client.post("/v1/reference/outcome", json=bad, headers=tokens.header())
    assert response.json()["detail"][0]["loc"] == ["body", "outcome", "should_have_acted"]


def test_unknown_module_is_404_listing_modules(client: httpx.Client, tokens: Tokens) -> None:
    response = client.post("/v1/weather/decide", json=ONE, headers=tokens.header())
    assert response.status_code == 404
    detail = response.json()["detail"]
    assert detail.startswith("unknown module 'weather'; available: ") and "reference" in detail


def test_oversized_body_is_413(client: httpx.Client, tokens: Tokens) -> None:
    body = b'{"features": {"signal": 1, "pad": "' + b"x" * (2 << 20) + b'"}}'
    response = client.post(
        "/v1/reference/decide",
        content=body,
        headers=tokens.header() | {"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert "larger than" in response.json()["detail"]


def test_not_json_is_422(client: httpx.Client, tokens: Tokens) -> None:
    response = client.post(
        "/v1/reference/decide",
        content=b"{not json",
        headers=tokens.header() | {"content-type": "application/json"},
    )
    assert response.status_code == 422


@pytest.mark.parametrize("media", ["application/x-www-form-urlencoded", "text/plain"])
def test_a_body_not_sent_as_json_is_415_saying_so(
    client: httpx.Client, tokens: Tokens, media: str
) -> None:
    response = client.post(
        "/v1/reference/decide",
        content=b'{"features": {"signal": 1}}',  # what curl -d sends, as form encoding
        headers=tokens.header() | {"content-type": media},
    )
    assert response.status_code == 415
    assert "'content-type: application/json'" in response.json()["detail"]


def test_decisions_and_outcomes_are_persisted(
    client: httpx.Client, tokens: Tokens, db_url: str
) -> None:
    one = client.post("/v1/reference/decide", json=ONE, headers=tokens.header()).json()
    assert one["source"] == "fallback" and one["act"] is True and one["model_version"] is None
    batch = client.post(
        "/v1/reference/decide",
        json={"batch": [{"signal": 0.1}, {"signal": -2.0, "threshold": -3}]},
        headers=tokens.header(),
    ).json()["decisions"]
    assert [d["act"] for d in batch] == [True, True]
    recorded = client.post(
        "/v1/reference/outcome",
        json={"decision_id": one["decision_id"], "outcome": {"should_have_acted": False}},
        headers=tokens.header(),
    )
    assert recorded.status_code == 201

    engine = make_engine(db_url)
    ids = {one["decision_id"], *(d["decision_id"] for d in batch)}
    deadline = time.monotonic() + 5
    with make_sessionmaker(engine)() as session:
        while True:
            rows = session.scalars(select(DecisionRecord).where(DecisionRecord.id.in_(ids))).all()
            if len(rows) == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
            session.expire_all()
        outcome = session.scalars(select(OutcomeRecord)).one()
    engine.dispose()
    assert {r.id for r in rows} == ids
    stored = next(r for r in rows if r.id == one["decision_id"])
    assert stored.features == ONE["features"]
    assert stored.decision["act"] is True and stored.source == "fallback"
    assert outcome.decision_id == one["decision_id"] and outcome.module == "reference"
    assert outcome.outcome == {"should_have_acted": False}


def test_modules_are_listed(client: httpx.Client, tokens: Tokens) -> None:
    assert client.get("/v1/modules").status_code == 401
    modules = client.get("/v1/modules", headers=tokens.header("decide")).json()
    reference = next(m for m in modules if m["name"] == "reference")
    assert reference["serving"] == "fallback"
    assert "signal" in reference["features_schema"]["properties"]


def test_metrics_are_exposed(client: httpx.Client, tokens: Tokens) -> None:
    for _ in range(3):
        client.post("/v1/reference/decide", json=ONE, headers=tokens.header())
    client.post(
        "/v1/reference/decide", json={"batch": [{"signal": 1}] * 4}, headers=tokens.header()
    )
    text = client.get("/metrics").text
    assert 'aiassist_decisions_total{module="reference",source="fallback"} 7.0' in text
    assert 'aiassist_fallbacks_total{module="reference",reason="no_model"} 7.0' in text
    assert (
        'aiassist_http_request_duration_seconds_count{method="POST",'
        'route="/v1/reference/decide",status="200"} 4.0'
    ) in text


def test_openapi_documents_auth_and_examples(live_server: LiveServer) -> None:
    spec = httpx.get(f"{live_server.url}/openapi.json").json()
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            if path.startswith("/v1/hooks/"):  # signed by the sender instead of a key
                assert "401" in operation["responses"] and not operation.get("security"), path
            elif path.startswith("/v1/"):
                assert {"401", "403"} <= operation["responses"].keys(), path
                assert operation["security"], path
    decide = spec["paths"]["/v1/reference/decide"]["post"]
    examples = decide["requestBody"]["content"]["application/json"]["examples"]
    assert examples["one"]["value"] == {"features": {"signal": 0.82, "threshold": 0.5}}
    outcome = spec["paths"]["/v1/reference/outcome"]["post"]
    assert "examples" in outcome["requestBody"]["content"]["application/json"]
