"""A Django app adopts aiassist by adding one entry to INSTALLED_APPS (real Django, own process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import LiveServer, Tokens

PROJECT = """
import json, sys
import django
from django.conf import settings
from django.http import JsonResponse
from django.urls import path

def price_check(request):
    # a view whose business code stays as it was, plus one decision call
    from aiassist import AIAssistService
    d = AIAssistService.instance().decide("reference", {"signal": float(request.GET["s"])})
    return JsonResponse({"act": d.act, "explanation": d.explanation})

settings.configure(
    DEBUG=False, ALLOWED_HOSTS=["testserver"], ROOT_URLCONF=__name__, SECRET_KEY="test",
    INSTALLED_APPS=["aiassist.integrations.django"],
    AIASSIST=json.loads(sys.argv[1]),
)
urlpatterns = [path("check", price_check)]
django.setup()
from django.test import Client
from aiassist import AIAssistService
assert AIAssistService._instance is not None, "set up in AppConfig.ready"
print(json.dumps([Client().get("/check", {"s": s}).json() for s in ("2", "-2")]))
"""


def run_project(tmp_path: Path, overrides: str) -> str:
    script = tmp_path / "project.py"
    script.write_text(textwrap.dedent(PROJECT))
    result = subprocess.run(
        [sys.executable, str(script), overrides],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ | {"AIASSIST_DATA_DIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_django_local_mode(tmp_path: Path, db_url: str) -> None:
    out = run_project(tmp_path, "{}")
    assert '"act": true' in out and '"act": false' in out


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_django_remote_mode(tmp_path: Path, live_server: LiveServer, tokens: Tokens) -> None:
    overrides = {
        "mode": "remote",
        "service_url": live_server.url,
        "api_key": tokens.decide,
        "timeout_ms": 2000,  # this checks adoption, not timeouts: a cold first call may be slow
    }
    out = run_project(tmp_path, json.dumps(overrides))
    assert '"act": true' in out and "service unavailable" not in out
