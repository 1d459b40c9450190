"""The bot middleware in a real Django project (its own process, as Django settings are
global): a scraper gets the configured action, a browser is untouched, the score is on the
request, and sessions in Redis fall back to memory when Redis cannot be reached."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from .conftest import free_port

PROJECT = """
import json, sys
import django
from django.conf import settings
from django.http import JsonResponse
from django.urls import path

def whoami(request, page):
    bot = request.bot  # the app's own auth reads it
    return JsonResponse({"action": bot.action, "p_bot": bot.p_bot} if bot else {"action": None})

def checkout(request):  # a purchase: the session was a person
    from aiassist.integrations.django.bot import bot_guard
    return JsonResponse({"confirmed": bot_guard().confirm_sync(request.bot_session, is_bot=False)})

settings.configure(
    DEBUG=False, ALLOWED_HOSTS=["testserver"], ROOT_URLCONF=__name__, SECRET_KEY="test",
    INSTALLED_APPS=["aiassist.integrations.django"],
    MIDDLEWARE=["aiassist.integrations.django.bot.BotMiddleware"],
    AIASSIST_BOT=json.loads(sys.argv[1]),
)
urlpatterns = [path("checkout", checkout), path("<path:page>", whoami)]
django.setup()
from django.test import Client
browser = {
    "HTTP_USER_AGENT": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "HTTP_ACCEPT_LANGUAGE": "en", "HTTP_SEC_FETCH_MODE": "navigate", "HTTP_REFERER": "/",
}
out = {"browser": [], "scraper": []}
person, bot = Client(**browser), Client(HTTP_USER_AGENT="python-requests/2.32.3")
for page in ("home", "product/1", "cart"):
    r = person.get("/" + page)
    out["browser"].append([r.status_code, r.json().get("action")])
out["confirmed"] = person.post("/checkout").json()["confirmed"]
for page in ("product/1", "product/2"):
    r = bot.get("/" + page)
    out["scraper"].append([r.status_code, r.get("Retry-After")])
from aiassist.integrations.django.bot import bot_guard
out["degraded"] = getattr(bot_guard().store, "degraded", None)
print(json.dumps(out))
"""


def run_django(tmp_path: Path, options: dict[str, Any]) -> Any:
    script = tmp_path / "project.py"
    script.write_text(textwrap.dedent(PROJECT))
    result = subprocess.run(
        [sys.executable, str(script), json.dumps(options)],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ | {"AIASSIST_DATA_DIR": str(tmp_path)},  # decisions in SQLite there
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.redis
def test_django_blocks_a_scraper_and_leaves_a_browser_alone(tmp_path: Path) -> None:
    out = run_django(tmp_path, {"act": True, "redis_url": "redis://127.0.0.1:6379/0"})
    assert out["browser"] == [[200, "allow"]] * 3
    assert out["scraper"] == [[403, None]] * 2
    assert out["degraded"] is False
    assert out["confirmed"] is True  # the session's decision and outcome are stored


def test_django_rate_limits_by_route_and_survives_redis_away(tmp_path: Path) -> None:
    options = {
        "act": True,
        "redis_url": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        "routes": {"/product": {"challenge_at": 0.0, "rate_limit_at": 0.0, "block_at": 2.0}},
        "retry_after_s": 9,
    }
    out = run_django(tmp_path, options)
    assert out["browser"][0] == [200, "allow"] and out["browser"][1][0] == 429
    assert out["scraper"] == [[429, "9"]] * 2  # the route's band, not the default block
    assert out["degraded"] is True
    assert out["confirmed"] is True  # from the session in memory
