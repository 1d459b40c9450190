"""The API drift guard: the sequential test, a real FastAPI backend served by uvicorn that
rolls a drifting version back and alerts a real webhook, persistence across a restart, and
the admin API and CLI that roll it forward again."""

from __future__ import annotations

import base64
import json
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from aiassist.drift import (
    DetectorConfig,
    DriftConfig,
    DriftDetector,
    DriftGuard,
    DriftStore,
    Observation,
    Profile,
    fields_of,
)
from aiassist.drift.clients import ClientHints, client_identity
from aiassist.integrations.asgi import DriftMiddleware
from aiassist.metrics import Metrics
from aiassist.store.audit import AuditLog
from aiassist.store.db import make_engine, make_sessionmaker

from .conftest import LiveServer, Tokens, Webhook, free_port, wait_for

SECRET = "webhook-secret"


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook(SECRET)
    yield hook
    hook.close()


# --- traffic -----------------------------------------------------------------------------------
def order(rng: random.Random, *, currency: bool = True, qty_type: type = int) -> dict[str, Any]:
    """A client's order with natural variation: optional fields come and go."""
    body: dict[str, Any] = {
        "item": rng.choice(["A-1", "B-2", "C-3"]),
        "qty": qty_type(rng.randint(1, 9)),
    }
    if currency:
        body["currency"] = rng.choice(["EUR", "USD"])
    if rng.random() < 0.4:
        body["coupon"] = "SPRING"
    if rng.random() < 0.1:
        body["note"] = None if rng.random() < 0.5 else "leave at the door"
    return body


def obs(body: dict[str, Any]) -> Observation:
    return Observation(fields_of(body, "body"), frozenset({"body", "query"}))


# --- the test itself ---------------------------------------------------------------------------
def test_shapes_are_bounded_and_typed() -> None:
    doc = {"a": 1, "b": 1.5, "c": "0b3c2f7e-1d2a-4c55-9a43-6b1f0c2d9e8f", "d": [{"e": True}]}
    assert fields_of(doc, "body") == {
        "body.a": ("number", "int"),
        "body.b": ("number", "float"),
        "body.c": ("string", "uuid"),
        "body.d": ("array", "1-9"),
        "body.d[].e": ("boolean", "bool"),
    }
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(50):
        node["x"] = {}
        node = node["x"]
    assert len(fields_of(deep, "body")) <= 3
    assert len(fields_of({str(i): i for i in range(10_000)}, "body")) == 64


def reference(rng: random.Random, n: int = 2000) -> Profile:
    profile = Profile()
    for _ in range(n):
        profile.add(obs(order(rng)))
    return profile


def test_clean_traffic_with_natural_variation_raises_no_alarm() -> None:
    rng = random.Random(1)
    detector = DriftDetector(reference(rng), DetectorConfig())
    for i in range(20_000):
        body = order(rng)
        if i % 1000 < 300 and rng.random() < 0.1:  # bursts of a client that never uses coupons
            body.pop("coupon", None)  # (coupon missing 64% instead of 60% of the time)
        body["channel"] = "app"  # a field only the new version has: additive, not a drift
        assert detector.update(obs(body)) is None, i
    assert detector.tests >= 3


@pytest.mark.parametrize(
    ("drift", "field", "kind"),
    [
        ("drop", "body.currency", "missing"),
        ("type", "body.qty", "type"),
        ("rename", "body.currency", "missing"),
    ],
)
def test_drifts_are_found_with_their_fields(drift: str, field: str, kind: str) -> None:
    rng = random.Random(2)
    detector = DriftDetector(reference(rng))
    for _ in range(500):
        assert detector.update(obs(order(rng))) is None
    n = 0
    for n in range(1, 200):  # noqa: B007 (n is the delay)
        body = order(rng, currency=drift == "type", qty_type=str if drift == "type" else int)
        if drift == "rename":
            body["currencyCode"] = "EUR"
        finding = detector.update(obs(body))
        if finding is not None:
            break
    assert finding is not None and n < 60, n
    top = finding.fields[0]
    assert (top.field, top.kind, top.crossed) == (field, kind, True)
    assert finding.severity == "critical" and field in finding.explanation
    if drift == "rename":
        assert ("body.currencyCode", 1.0) in finding.new_fields
        assert "new fields: body.currencyCode" in finding.explanation


def test_a_burst_of_a_client_that_never_sends_a_field_is_no_drift_when_clients_are_named() -> None:
    rng = random.Random(6)
    parts = frozenset({"body", "query"})
    reference = Profile()
    for i in range(3000):
        client = f"c{i % 10}"
        body = order(rng, currency=client != "c0")  # c0, a legacy client, never sends it
        reference.add(Observation(fields_of(body, "body"), parts, client))
    restored = Profile.from_json(reference.observations, reference.to_json())
    assert restored.clients["c0"].presence("body.currency") == 0.0
    whole, per_client = DriftDetector(reference), DriftDetector(restored)
    alarms = {"whole": 0, "per_client": 0}
    for _ in range(600):  # c0 takes 60% of the traffic for a while
        client = "c0" if rng.random() < 0.6 else f"c{rng.randint(1, 9)}"
        fields = fields_of(order(rng, currency=client != "c0"), "body")
        alarms["whole"] += whole.update(Observation(fields, parts)) is not None
        alarms["per_client"] += per_client.update(Observation(fields, parts, client)) is not None
    assert alarms["whole"] > 0 and alarms["per_client"] == 0
    n = 0
    for n in range(1, 300):  # noqa: B007 (n is the delay) - now c1, c2 and c3 drop it
        client = f"c{rng.randint(0, 9)}"
        body = order(rng, currency=client not in ("c0", "c1", "c2", "c3"))
        if per_client.update(Observation(fields_of(body, "body"), parts, client)):
            break
    assert n < 150, n


def _jwt(subject: str, issued: int) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    claims = {"iss": "https://auth.example", "sub": subject, "iat": issued}
    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2ln"


def test_clients_are_named_from_their_requests_without_keeping_credentials() -> None:
    key = "sk_live_0123456789abcdef"
    by_key = client_identity(ClientHints(f"Bearer {key}", user_agent="acme/1.0"))
    assert by_key is not None and key not in by_key and by_key.startswith("key:")
    assert by_key == client_identity(ClientHints(f"Bearer {key}", user_agent="other/2.0"))
    assert by_key != client_identity(ClientHints("Bearer sk_live_other"))
    # a refreshed JWT is the same client; another subject is another one
    first = client_identity(ClientHints(f"Bearer {_jwt('app-1', 1)}"))
    assert first == client_identity(ClientHints(f"Bearer {_jwt('app-1', 2)}"))
    assert first != client_identity(ClientHints(f"Bearer {_jwt('app-2', 1)}"))
    # Basic credentials: the user name only, never the password
    basic = base64.b64encode(b"shop:secret-1").decode()
    changed = base64.b64encode(b"shop:secret-2").decode()
    assert client_identity(ClientHints(f"Basic {basic}")) == client_identity(
        ClientHints(f"Basic {changed}")
    )
    assert client_identity(ClientHints(api_key=key)) == by_key
    # no credentials: the client software (any release) and its address
    agent = client_identity(ClientHints(user_agent="acme-sdk/2.3.1", peer="10.0.0.7"))
    assert agent == client_identity(ClientHints(user_agent="acme-sdk/2.4.0", peer="10.0.0.7"))
    assert agent != client_identity(ClientHints(user_agent="acme-sdk/2.3.1", peer="10.0.0.8"))
    assert agent == client_identity(
        ClientHints(user_agent="acme-sdk/2.3.1", forwarded_for="10.0.0.7, 172.16.0.1", peer="p")
    )
    assert client_identity(ClientHints()) is None
    assert client_identity(ClientHints("Bearer not.a.jwt", user_agent="x")) is not None


def test_idle_clients_make_room_when_the_client_table_is_full() -> None:
    profile = Profile(max_history=100, max_clients=3)
    for i in range(100):  # up to the first halving: everyone is active
        profile.add(Observation({}, frozenset({"body"}), ("a", "b", "c")[i % 3]))
    assert set(profile.clients) == {"a", "b", "c"} and profile.observations == 50
    for _ in range(40):  # only "a" and a newcomer the table has no room for yet
        profile.add(Observation({}, frozenset({"body"}), "a"))
        profile.add(Observation({}, frozenset({"body"}), "d"))
    # at the halving "b" and "c" (idle since the last one) were dropped; "d" then got a place
    assert set(profile.clients) == {"a", "d"}


# --- a real FastAPI backend served by uvicorn -----------------------------------------------
def backend(guard: DriftGuard) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/orders")
    async def create_v1(request: Request) -> dict[str, Any]:
        body = await request.json()
        return {"served_by": "v1", "id": 1, "currency": body.get("currency", "EUR")}

    @app.post("/v2/orders")
    async def create_v2(request: Request) -> dict[str, Any]:
        body = await request.json()
        return {"served_by": "v2", "id": 1, "currency": body.get("currency")}

    app.add_middleware(DriftMiddleware, guard=guard)
    return app


class Backend:
    def __init__(self, url: str, webhook: Webhook) -> None:
        self.guard = DriftGuard(
            DriftConfig(
                stable="v1",
                scheme="path",
                versions=("v1", "v2"),
                database_url=url,
                webhook_url=webhook.url,
                webhook_secret=SECRET,
                webhook_backoff_s=0.05,
                refresh_seconds=0.1,
            ),
            metrics=Metrics(CollectorRegistry()),
        )
        port = free_port()
        config = uvicorn.Config(
            backend(self.guard), host="127.0.0.1", port=port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{port}"
        wait_for(lambda: self.server.started, 20, "the backend to start")
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def post(self, version: str, body: dict[str, Any]) -> str:
        response = self.client.post(f"/{version}/orders", json=body)
        assert response.status_code == 200, response.text
        return str(response.json()["served_by"])

    def stop(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(10)
        self.guard.close()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_fastapi_rolls_a_drifting_version_back_alerts_and_rolls_forward(
    db_url: str, webhook: Webhook, live_server: LiveServer, tokens: Tokens
) -> None:
    rng = random.Random(3)
    app = Backend(db_url, webhook)
    try:
        for _ in range(300):
            assert app.post("v1", order(rng)) == "v1"
        for _ in range(200):
            assert app.post("v2", order(rng)) == "v2"  # clean: no rollback, no alert
        assert app.client.post("/v9/orders", json={}).status_code == 404
        assert not app.guard.knows("v9")  # a version the backend does not serve: left alone
        app.guard.flush()
        assert app.guard.findings == [] and webhook.attempts == 0

        served: list[str] = []
        while len(served) < 500 and served[-1:] != ["v1"]:  # drifts until switched
            served.append(app.post("v2", order(rng, currency=False)))
        assert served[0] == "v2" and served[-1] == "v1", served  # switched while it drifted
        wait_for(lambda: len(webhook.alerts) == 1, 20, "the webhook alert")
        alert = webhook.alerts[0]
        assert webhook.valid_signatures and webhook.attempts == 2  # retried after a 503
        assert alert["event"] == "drift.detected" and alert["action"] == "rolled_back"
        assert (alert["endpoint"], alert["version"]) == ("POST /orders", "v2")
        assert {"body.currency", "response.currency"} == {f["field"] for f in alert["fields"]}
        registry = app.guard.metrics.registry
        assert (
            registry.get_sample_value(
                "aiassist_drift_incidents_total",
                {"version": "v2", "severity": "critical", "action": "rolled_back"},
            )
            == 1
        )
        assert registry.get_sample_value("aiassist_drift_routes") == 1
    finally:
        app.stop()

    # a restart keeps the switch: the very first v2 request is served by v1
    app = Backend(db_url, webhook)
    try:
        assert app.post("v2", order(rng)) == "v1"
        auth = tokens.header("admin")
        api = httpx.Client(base_url=live_server.url, headers=auth, timeout=10)
        incidents = api.get("/v1/drift/incidents", params={"status": "open"}).json()
        assert [i["version"] for i in incidents] == ["v2"]
        assert "body.currency missing" in incidents[0]["explanation"]
        assert api.get("/v1/drift/routes").json()[0]["target"] == "v1"
        ack = api.post(f"/v1/drift/incidents/{incidents[0]['id']}/ack", json={"note": "seen"})
        assert ack.status_code == 200 and ack.json()["status"] == "acknowledged"
        profiles = api.get("/v1/drift/profiles", params={"version": "v1"}).json()
        assert profiles[0]["fields"]["body.currency"]["presence"] == 1.0

        done = api.post("/v1/drift/versions/v2/roll-forward", json={"reason": "client fixed"})
        assert done.status_code == 200, done.text
        assert done.json()["was_routed_to"] == "v1"

        def served_by_v2() -> bool:
            return app.post("v2", order(rng)) == "v2"

        wait_for(served_by_v2, 20, "the backend to follow the roll forward")
        api.close()
    finally:
        app.stop()
    kinds = [e.kind for e in _audit_events(db_url)]
    assert kinds[-4:] == ["drift.detected", "drift.rolled_back", "drift.acknowledged",
                          "drift.rolled_forward"]  # fmt: skip


def test_defaults_tell_a_legacy_clients_burst_from_a_drift() -> None:
    """No client header configured: the guard names clients by their API keys, so a burst of
    a legacy client that never sends `currency` raises nothing, while the same traffic fools
    the whole-stream test; four clients dropping `currency` on v2 are still rolled back."""
    guard = DriftGuard(
        DriftConfig(stable="v1", scheme="path", versions=("v1", "v2"), persist=False),
        metrics=Metrics(CollectorRegistry()),
    )
    guard.alerter = None
    app = FastAPI()

    @app.post("/v1/orders")
    @app.post("/v2/orders")
    async def create(request: Request) -> dict[str, Any]:
        body = await request.json()
        return {"served_by": request.url.path[1:3], "currency": body.get("currency", "EUR")}

    app.add_middleware(DriftMiddleware, guard=guard)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 20, "the backend to start")
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    rng = random.Random(7)
    whole_reference = Profile()
    whole = DriftDetector(whole_reference)
    whole_alarms = 0

    def post(version: str, client: int, *, drops: bool = False) -> str:
        nonlocal whole_alarms
        body = order(rng, currency=client != 0 and not drops)  # c0 never sends it
        if version == "v1":
            whole_reference.add(obs(body))
        else:  # the test the guard ran before it told clients apart
            whole_alarms += whole.update(obs(body)) is not None
        headers = {"authorization": f"Bearer sk_test_{client:02d}_4f9a1c", "user-agent": "shop"}
        response = http.post(f"/{version}/orders", json=body, headers=headers)
        assert response.status_code == 200, response.text
        return str(response.json()["served_by"])

    try:
        for i in range(800):  # the stable version's history: 80 requests of each client
            post("v1", i % 10)
        guard.flush()
        for _ in range(500):  # c0 bursts to 60% of v2's traffic
            assert post("v2", 0 if rng.random() < 0.6 else rng.randint(1, 9)) == "v2"
        guard.flush()
        assert guard.findings == [] and guard.route("v2") is None
        assert whole_alarms > 0  # the same traffic, clients not told apart: a false alarm

        served: list[str] = []
        while len(served) < 800 and served[-1:] != ["v1"]:  # c1-c4 stop sending it
            client = rng.randint(0, 9)
            served.append(post("v2", client, drops=client in (1, 2, 3, 4)))
        assert served[-1] == "v1", len(served)
        (endpoint, version, finding) = guard.findings[0]
        assert (endpoint, version) == ("POST /orders", "v2")
        assert finding.fields[0].field == "body.currency" and finding.fields[0].crossed
    finally:
        http.close()
        server.should_exit = True
        thread.join(10)
        guard.close()


def _audit_events(url: str) -> list[Any]:
    from sqlalchemy import select

    from aiassist.store.models import AuditEvent

    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    assert AuditLog(sessions).verify().ok
    with sessions() as session:
        events = list(session.scalars(select(AuditEvent).order_by(AuditEvent.id)))
    engine.dispose()
    return events


# --- the admin API refuses bad input with 4xx ---------------------------------------------------
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_drift_api_rejects_bad_input(live_server: LiveServer, tokens: Tokens) -> None:
    url = live_server.url
    admin = tokens.header("admin")
    assert httpx.get(f"{url}/v1/drift/incidents").status_code == 401
    assert (
        httpx.get(f"{url}/v1/drift/incidents", headers=tokens.header("decide")).status_code == 403
    )
    cases = [
        ("GET", "/v1/drift/incidents?status=bogus", None, 422),
        ("GET", "/v1/drift/incidents?limit=0", None, 422),
        ("GET", "/v1/drift/incidents/0", None, 422),
        ("GET", "/v1/drift/incidents/999", None, 404),
        ("POST", "/v1/drift/incidents/999/ack", {}, 404),
        ("POST", "/v1/drift/versions/v2/roll-forward", {}, 409),
        ("POST", "/v1/drift/versions/v2/rollback", {"to": "v2"}, 422),
        ("POST", "/v1/drift/versions/v2/rollback", {"to": "../etc"}, 422),
        ("POST", "/v1/drift/versions/v2/rollback", {}, 422),
        ("POST", "/v1/drift/versions/v2/rollback", {"to": "v1", "reason": "x" * 501}, 422),
        ("POST", "/v1/drift/versions/bad%20version/rollback", {"to": "v1"}, 422),
    ]
    for method, path, body, expected in cases:
        response = httpx.request(method, f"{url}{path}", headers=admin, json=body)
        assert response.status_code == expected, (path, response.text)
        assert "detail" in response.json()
    ok = httpx.post(f"{url}/v1/drift/versions/v3/rollback", headers=admin, json={"to": "v1"})
    assert ok.status_code == 200 and ok.json()["target"] == "v1"
    again = httpx.post(f"{url}/v1/drift/versions/v3/rollback", headers=admin, json={"to": "v1"})
    assert again.status_code == 409 and "roll it forward" in again.json()["detail"]


# --- the CLI -----------------------------------------------------------------------------------
def test_cli_rolls_back_acknowledges_and_rolls_forward(
    db_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from aiassist.cli import app

    monkeypatch.setenv("AIASSIST_DATABASE_URL", db_url)
    monkeypatch.setenv("AIASSIST_DATA_DIR", str(tmp_path))
    engine = make_engine(db_url)
    store = DriftStore(make_sessionmaker(engine))
    opened = store.open_incident(
        endpoint="POST /orders", version="v2", stable_version="v1", severity="critical",
        fields=[{"field": "body.currency", "kind": "missing"}], explanation="critical: test",
        observations=40, rollback=True,
    )  # fmt: skip
    assert opened is not None and opened[1] is not None
    incident = opened[0].id
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(app, ["drift", *args])
        assert result.exit_code == 0, result.output
        return result.output

    assert "v2" in run("list") and '"severity": "critical"' in run("show", str(incident))
    run("ack", str(incident), "--note", "on it")
    assert runner.invoke(app, ["drift", "ack", str(incident)]).exit_code == 1  # already acked
    assert runner.invoke(app, ["drift", "show", "999"]).exit_code == 1
    run("rollback", "v3", "--to", "v1")
    assert runner.invoke(app, ["drift", "rollback", "v4", "--to", "v4"]).exit_code == 2
    assert "was served by v1" in run("roll-forward", "v2", "--accept")
    assert "was served by v1" in run("roll-forward", "v3")
    state = store.state()
    assert state.routes == {} and state.on_hold == frozenset()
    assert state.accepted == {("POST /orders", "v2"): frozenset({"body.currency"})}
    assert runner.invoke(app, ["drift", "roll-forward", "v2"]).exit_code == 1  # nothing to do
    engine.dispose()


def test_a_second_detection_of_the_same_stream_is_not_a_second_incident(db_url: str) -> None:
    engine = make_engine(db_url)
    store = DriftStore(make_sessionmaker(engine))
    args: dict[str, Any] = dict(
        endpoint="GET /items", version="v2", stable_version="v1", severity="major",
        fields=[], explanation="major", observations=10, rollback=True,
    )  # fmt: skip
    assert store.open_incident(**args) is not None
    assert store.open_incident(**args) is None  # another process of the backend found it too
    assert len(store.incidents()) == 1 and store.state().routes == {"v2": "v1"}
    engine.dispose()


def test_guard_without_a_database_switches_in_memory() -> None:
    guard = DriftGuard(
        DriftConfig(stable="v1", persist=False, webhook_url=None),
        metrics=Metrics(CollectorRegistry()),
    )
    guard.alerter = None
    rng = random.Random(4)
    for _ in range(300):
        guard.submit("POST", "/orders", "v1", body=json.dumps(order(rng)).encode(), query="",
                     response=None, rerouted=False)  # fmt: skip
    for _ in range(60):
        body = json.dumps(order(rng, currency=False)).encode()
        guard.submit("POST", "/orders", "v2", body=body, query="", response=None, rerouted=False)
    guard.flush()
    assert guard.route("v2") == "v1" and guard.route("v1") is None
    assert guard.knows("v9")  # no list of versions: every version is watched
    guard.close()
    time.sleep(0)


def test_bench_quick_run_writes_complete_results(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "drift.json"
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, str(root / "bench" / "drift.py"), "--quick", "--out", str(out)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert result["quick"] is True and result["goals"]
    detection = result["detection"]
    assert set(detection["false_rollbacks_per_million"]) == {
        "cusum",
        "cusum-stream",
        "cusum-client",
        "fixed",
        "mann-whitney",
    }
    assert set(detection["scenarios"]) == {"drop", "rename", "type", "gradual"}
    for label in ("guard_sample_1.0", "guard_sample_0.1"):
        assert result["overhead"][label]["n"] > 0
