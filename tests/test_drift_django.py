"""The drift guard in a real Django project (its own process, as Django settings are global):
a drifting client gets its version switched to the stable one and a webhook alert is sent;
the switch survives a restart; a roll forward lifts it."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from aiassist.drift import DriftStore
from aiassist.store.db import make_engine, make_sessionmaker
from aiassist.store.models import DriftIncident

from .conftest import Webhook
from .test_drift import SECRET, order

PROJECT = """
import json, sys
import django
from django.conf import settings
from django.http import JsonResponse
from django.urls import path

def orders(version):
    def view(request):
        body = json.loads(request.body)
        return JsonResponse({"served_by": version, "currency": body.get("currency")})
    return view

config = json.loads(sys.argv[1])
settings.configure(
    DEBUG=False, ALLOWED_HOSTS=["testserver"], ROOT_URLCONF=__name__, SECRET_KEY="test",
    MIDDLEWARE=["aiassist.integrations.django.drift.DriftMiddleware"],
    AIASSIST_DRIFT=config["drift"],
)
urlpatterns = [path("v1/orders", orders("v1")), path("v2/orders", orders("v2"))]
django.setup()
from django.test import Client
from aiassist.integrations.django.drift import drift_guard
client = Client()
guard = drift_guard()
served = []
for i, request in enumerate(config["requests"]):
    version, body = request[0], request[1]
    who = request[2] if len(request) > 2 else f"c{i % 7}"
    response = client.post(
        f"/{version}/orders", body, content_type="application/json", HTTP_X_CLIENT_ID=who,
        HTTP_AUTHORIZATION=f"Bearer key-{who}-5d1e",
    )
    assert response.status_code == 200, response.content
    served.append(response.json()["served_by"])
    guard.flush()  # the test client is far faster than real traffic: let the guard keep up

if guard.alerter is not None:
    guard.alerter.flush()
guard.close()
print(json.dumps({"served": served, "findings": [f.explanation for _, _, f in guard.findings]}))
"""


def run_django(tmp_path: Path, drift: dict[str, Any], requests: list[tuple[str, Any]]) -> Any:
    script = tmp_path / "project.py"
    script.write_text(textwrap.dedent(PROJECT))
    result = subprocess.run(
        [sys.executable, str(script), json.dumps({"drift": drift, "requests": requests})],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ | {"AIASSIST_DATA_DIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_django_rolls_a_drifting_version_back_and_alerts(tmp_path: Path, db_url: str) -> None:
    webhook = Webhook(SECRET, fail_first=0)
    drift = {
        "stable": "v1",
        "scheme": "path",
        "database_url": db_url,
        "webhook_url": webhook.url,
        "webhook_secret": SECRET,
        "refresh_seconds": 0.1,
        "client_header": "X-Client-Id",  # each client judged against its own history
    }
    rng = random.Random(5)
    clean = [("v1", order(rng)) for _ in range(300)] + [("v2", order(rng)) for _ in range(150)]
    out = run_django(tmp_path, drift, clean)
    assert out["findings"] == [] and set(out["served"][300:]) == {"v2"}
    assert webhook.alerts == []

    drifting = [("v2", order(rng, currency=False)) for _ in range(60)]
    out = run_django(tmp_path, drift, drifting)
    assert out["served"][0] == "v2" and out["served"][-1] == "v1", out["served"]
    assert "body.currency missing" in out["findings"][0]
    assert len(webhook.alerts) == 1 and webhook.valid_signatures
    assert webhook.alerts[0]["action"] == "rolled_back"

    # restarted: the switch holds from the first request
    out = run_django(tmp_path, drift, [("v2", order(rng))])
    assert out["served"] == ["v1"]

    engine = make_engine(db_url)
    store = DriftStore(make_sessionmaker(engine))
    with make_sessionmaker(engine)() as session:
        incident = session.scalars(select(DriftIncident)).one()
    assert incident.endpoint == "POST /orders" and incident.action == "rolled_back"
    store.roll_forward("v2", actor="test", reason="client fixed")
    engine.dispose()
    out = run_django(tmp_path, drift, [("v2", order(rng))])
    assert out["served"] == ["v2"]
    webhook.close()


def test_django_names_clients_by_default_so_a_legacy_burst_is_no_drift(tmp_path: Path) -> None:
    """No client header configured: clients are told apart by their bearer keys."""
    drift = {"stable": "v1", "scheme": "path", "persist": False, "webhook_url": None}
    rng = random.Random(8)

    def request(version: str, who: int, drops: bool = False) -> tuple[str, Any, str]:
        return (version, order(rng, currency=who != 0 and not drops), f"c{who}")  # c0: legacy

    history = [request("v1", i % 7) for i in range(280)]
    burst = [request("v2", 0 if rng.random() < 0.6 else rng.randint(1, 6)) for _ in range(300)]
    drifting = []
    for _ in range(300):  # c1, c2 and c3 stop sending the currency
        who = rng.randint(0, 6)
        drifting.append(request("v2", who, drops=who in (1, 2, 3)))
    out = run_django(tmp_path, drift, history + burst + drifting)
    served = out["served"]
    assert set(served[280:580]) == {"v2"}  # the burst: no rollback
    assert served[-1] == "v1" and len(out["findings"]) == 1, out["findings"]
    assert "body.currency missing" in out["findings"][0]
