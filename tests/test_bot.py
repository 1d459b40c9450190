"""The bot module: session features, the rule fallback, training on the generator, and the
ASGI middleware under real uvicorn with sessions in real Redis (and Redis going away)."""

from __future__ import annotations

import math
import os
import secrets
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from aiassist import AIAssistService
from aiassist.integrations.asgi_bot import BotMiddleware
from aiassist.modules.bot import BotFeatures, module
from aiassist.modules.bot.guard import BotGuard
from aiassist.modules.bot.replay import parse_line
from aiassist.modules.bot.session import Hit, Session, session_key
from aiassist.modules.bot.sessions import RedisSessions
from aiassist.modules.bot.settings import Thresholds
from aiassist.modules.bot.simulator import FAMILIES, access_log, generate, snapshots
from aiassist.modules.bot.training import recall_at_fpr, trainer
from aiassist.modules.bot.useragent import classify
from aiassist.settings import Settings
from aiassist.store.db import make_engine, make_sessionmaker
from aiassist.store.models import DecisionRecord, OutcomeRecord

from .conftest import serving
from .test_docs import python_blocks

BROWSER = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
BROWSER_HEADERS = {
    "user-agent": BROWSER,
    "accept-language": "en-GB,en;q=0.9",
    "sec-fetch-mode": "navigate",
    "sec-fetch-site": "same-origin",
    "referer": "https://shop.example/",
    "cookie": "sid=abc",
}


# --- features --------------------------------------------------------------------------------
def test_a_session_folds_into_its_features() -> None:
    session, login = Session(), frozenset({"/login"})
    script = [
        (0.0, "GET", "/robots.txt", 200),
        (1.0, "GET", "/product/1", 200),
        (1.2, "GET", "/static/app.css", 200),
        (3.0, "GET", "/product/2", 200),
        (5.0, "GET", "/product/3", 404),
        (7.0, "POST", "/login", 401),
        (8.0, "POST", "/login", 401),
        (9.0, "POST", "/login", 303),
        (10.0, "POST", "/login", 401),
    ]
    for at, method, path, status in script:
        session.observe(Hit(at, method, path, status, user_agent="curl/8.5.0"), login)
    f = session.features()
    assert f.requests == 9 and f.duration_s == 10.0
    assert f.asset_share == pytest.approx(1 / 9)
    assert f.not_found_share == pytest.approx(1 / 9) and f.error_share == pytest.approx(4 / 9)
    assert f.robots_hit and f.ua_library and not f.ua_browser_like
    assert f.login_attempts == 4 and f.login_fail_streak == 2
    assert f.post_share == pytest.approx(4 / 9)
    pages = ["/robots.txt", "/product/1", "/product/2", "/product/3", *["/login"] * 4]
    shares = [c / len(pages) for c in Counter(pages).values()]
    assert f.path_entropy == pytest.approx(-sum(s * math.log2(s) for s in shares))
    assert f.sibling_share == pytest.approx(2 / 7)  # /product/1 -> 2 -> 3
    assert f.page_gap_mean_s == pytest.approx(10.0 / 7)


def test_a_session_survives_its_json_and_expires() -> None:
    session = Session()
    session.observe(Hit(100.0, "GET", "/", 200, user_agent=BROWSER))
    again = Session.from_json(session.to_json())
    assert again == session
    assert not again.expired(150.0, idle_s=60, window_s=3600)
    assert again.expired(161.0, idle_s=60, window_s=3600)


def test_session_keys_keep_no_address_and_prefer_the_cookie() -> None:
    key = session_key("203.0.113.9", BROWSER)
    assert "203.0.113.9" not in key and len(key) == 24
    assert session_key("203.0.113.9", BROWSER, cookie="s1") == session_key(
        "198.51.100.1", "x", "s1"
    )
    assert session_key("203.0.113.9", BROWSER) != session_key("203.0.113.10", BROWSER)


@pytest.mark.parametrize(
    "agent",
    ["", None, "\x00\xff" * 500, "😀" * 10_000, "Mozilla/5.0 (" * 3000, "A" * 1_000_000],
)
def test_any_user_agent_is_taken(agent: str | None) -> None:
    flags = classify(agent)
    assert flags.missing == (not (agent or "").strip())
    session = Session()
    session.observe(Hit(0.0, "GET", "/" + (agent or "")[:2000], 200, user_agent=agent or ""))
    assert 0 <= module.fallback(session.features()).p_bot <= 1


def test_user_agent_flags() -> None:
    assert classify("Mozilla/5.0 (compatible; AhrefsBot/7.0)").known_bot
    assert classify("python-requests/2.32.3").library
    assert classify("Mozilla/5.0 (X11) AppleWebKit/537.36 HeadlessChrome/131.0").headless
    plain = classify(BROWSER)
    assert plain.browser_like and not (plain.known_bot or plain.library or plain.headless)


# --- the fallback and the model ----------------------------------------------------------------
def _features(**changes: Any) -> BotFeatures:
    return BotFeatures(**(module.example | changes))


def test_the_fallback_is_the_ua_list_plus_a_rate_limit() -> None:
    listed = module.fallback(_features())
    assert (
        listed.p_bot == 1.0 and listed.action == "block" and listed.explanation.startswith("rule")
    )
    assert "user agent is an HTTP library" in listed.signals
    person = _features(ua_library=False, ua_browser_like=True, rate_per_min=4.0)
    assert module.fallback(person).p_bot == 0.0 and module.fallback(person).action == "allow"
    fast = _features(ua_library=False, ua_browser_like=True, rate_per_min=400.0, requests=500)
    assert module.fallback(fast).p_bot == 1.0


def test_thresholds_pick_the_band() -> None:
    bands = Thresholds(challenge_at=0.3, rate_limit_at=0.6, block_at=0.9)
    assert [bands.action(p) for p in (0.1, 0.3, 0.7, 0.95)] == [
        "allow", "challenge", "rate_limit", "block",
    ]  # fmt: skip


def test_the_generator_is_seeded_and_has_every_family() -> None:
    first, again = generate(200, 5), generate(200, 5)
    assert [s.hits for s in first] == [s.hits for s in again]
    assert {s.family for s in generate(400, 6)} == set(FAMILIES)


def test_the_trained_model_catches_more_bots_than_the_rule() -> None:
    data = trainer.synthetic(6000, seed=3)
    exported = trainer.fit(data, seed=3)
    import onnxruntime as ort

    session = ort.InferenceSession(exported.onnx)
    test = generate(600, 4)
    features = [next(snapshots(s)) for s in test]
    X = np.asarray([module.encode(f) for f in features], dtype=np.float32)
    scores = session.run([exported.output_name], {exported.input_name: X})[0][:, -1]
    rule = np.asarray([module.fallback(f).p_bot for f in features])
    y = np.asarray([s.is_bot for s in test], dtype=float)
    assert recall_at_fpr(y, scores) > recall_at_fpr(y, rule) + 0.3
    assert trainer.quality(y, scores) == recall_at_fpr(y, scores)


def test_recall_at_fpr_counts_the_threshold_people_allow() -> None:
    y = np.asarray([0] * 100 + [1] * 10, dtype=float)
    people = np.linspace(0, 0.5, 100)
    bots = np.asarray([0.49, 0.495, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99, 1.0])
    # 1% of 100 people: the top one (0.5) may score above; the threshold is the next (0.4949)
    assert recall_at_fpr(y, np.concatenate([people, bots])) == 0.9
    assert recall_at_fpr(y, np.concatenate([people, bots]), fpr=0.0) == 0.8


# --- the middleware, under uvicorn -------------------------------------------------------------
def _app(guard: BotGuard, tmp_path: Path, **options: Any) -> Starlette:
    async def whoami(request: Request) -> JSONResponse:
        bot = request.state.bot
        return JSONResponse({"action": bot.action, "p_bot": bot.p_bot, "source": bot.source})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        AIAssistService.reset()
        AIAssistService.setup(Settings(data_dir=tmp_path, record_decisions=False))
        yield
        await AIAssistService.areset()

    app = Starlette(routes=[Route("/{path:path}", whoami)], lifespan=lifespan)
    app.add_middleware(BotMiddleware, guard=guard, **options)
    return app


@pytest.mark.redis
def test_a_scraper_gets_the_action_and_a_browser_is_untouched(
    tmp_path: Path, redis_server: tuple[str, subprocess.Popen[bytes]]
) -> None:
    url, _ = redis_server
    store = RedisSessions(url, ttl_s=1800)
    with serving(_app(BotGuard(store=store), tmp_path, act=True)) as base:
        with httpx.Client(base_url=base, headers=BROWSER_HEADERS) as person:
            for page in ("/", "/product/12", "/cart"):
                r = person.get(page)
                assert r.status_code == 200 and r.json()["action"] == "allow", r.text
        with httpx.Client(base_url=base, headers={"user-agent": "python-requests/2.32"}) as bot:
            refused = bot.get("/product/1")
        assert refused.status_code == 403 and "automated" in refused.json()["detail"]
    import redis

    keys = redis.Redis.from_url(url).keys("aiassist:bot:*")
    assert len(keys) == 2  # one session each, no address in the key


@pytest.mark.redis
def test_a_redis_outage_falls_back_to_memory_without_failing_requests(
    tmp_path: Path, redis_server: tuple[str, subprocess.Popen[bytes]]
) -> None:
    url, proc = redis_server
    store = RedisSessions(url, ttl_s=1800)
    with (
        serving(_app(BotGuard(store=store), tmp_path)) as base,
        httpx.Client(base_url=base, headers=BROWSER_HEADERS) as person,
    ):
        assert person.get("/").status_code == 200
        proc.kill()
        proc.wait(10)
        answers = [person.get(f"/product/{i}") for i in range(5)]
    assert [a.status_code for a in answers] == [200] * 5
    assert store.degraded and len(store.fallback) == 1


def test_per_route_thresholds_and_rate_limit(tmp_path: Path) -> None:
    guard = BotGuard(routes={"/login": Thresholds(0.0, 0.0, 2.0)})  # every login: rate-limited
    with serving(_app(guard, tmp_path, act=True, retry_after_s=7)) as base:
        r = httpx.get(f"{base}/login", headers=BROWSER_HEADERS)
        assert r.status_code == 429 and r.headers["retry-after"] == "7"
        assert httpx.get(f"{base}/product/1", headers=BROWSER_HEADERS).status_code == 200


def test_bad_requests_are_scored_not_failed(tmp_path: Path) -> None:
    with serving(_app(BotGuard(), tmp_path)) as base:
        odd: list[dict[str, str | bytes]] = [
            {"user-agent": b"\xff\xfe" * 100},
            {"user-agent": "x" * 20_000, "x-filler": "y" * 20_000},
            {"user-agent": "", "cookie": "=;;==; a"},
        ]
        for headers in odd:
            r = httpx.get(f"{base}/%F0%9F%98%80/%00?q=%ff", headers=headers)
            assert r.status_code == 200 and 0 <= r.json()["p_bot"] <= 1, r.text


# --- replaying an access log ---------------------------------------------------------------
def test_replay_scores_a_combined_log_and_writes_the_report(tmp_path: Path) -> None:
    sessions = generate(120, 8)
    log = tmp_path / "access.log"
    log.write_text("\n".join([*access_log(sessions, 9), "not a log line", ""]))
    report = tmp_path / "report.md"
    aiassist = Path(sys.executable).with_name("aiassist")  # the console script, as a user runs it
    done = subprocess.run(
        [str(aiassist), "bot", "replay", str(log), "--report", str(report), "--top", "5"],
        env=os.environ | {"AIASSIST_DATA_DIR": str(tmp_path / "data")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "1 skipped" in done.stdout and "rule fallback" in done.stdout
    text = report.read_text()
    assert "# Bot replay of `access.log`" in text and "## What each threshold would flag" in text
    assert f"{len(sessions)} sessions" in text  # one address each, none idle long enough to split
    assert text.count("| block |") + text.count("| allow |") >= 5  # the top sessions listed


def test_parse_line_takes_combined_lines_and_refuses_the_rest() -> None:
    line = (
        '203.0.113.7 - - [07/Dec/2026:10:00:00 +0000] "GET /product/1?x=1 HTTP/2.0" 404 12 '
        '"https://shop.example/" "curl/8.5.0"'
    )
    parsed = parse_line(line)
    assert parsed is not None and parsed.client == "203.0.113.7"
    hit = parsed.hit
    assert (hit.method, hit.path, hit.status, hit.http2, hit.referer) == (
        "GET", "/product/1?x=1", 404, True, True,
    )  # fmt: skip
    assert not hit.headers_known and hit.user_agent == "curl/8.5.0"
    for bad in ("", "garbage", '1.2.3.4 - - [not a time] "GET / HTTP/1.1" 200 1 "-" "-"'):
        assert parse_line(bad) is None


@pytest.mark.redis
def test_the_docs_example_wires_the_score_into_the_apps_auth(tmp_path: Path) -> None:
    [block] = [b for b in python_blocks("docs/modules.md") if "BotMiddleware" in b]
    namespace: dict[str, Any] = {}
    exec(block, namespace)
    AIAssistService.reset()
    AIAssistService.setup(Settings(data_dir=tmp_path))
    try:
        with serving(namespace["app"]) as base:
            scraper = httpx.post(f"{base}/login", headers={"user-agent": "curl/8.5.0"})
            visitor = BROWSER_HEADERS | {"cookie": f"sid={secrets.token_hex(8)}"}  # new session
            person = httpx.post(f"{base}/login", headers=visitor)
            paid = httpx.post(f"{base}/checkout", headers=visitor)
    finally:
        AIAssistService.reset()  # drains the decision recorder
    assert scraper.status_code == 401 and "challenge" in scraper.json()["detail"]
    assert person.status_code == 200, person.text
    assert paid.status_code == 200, paid.text
    db = make_engine(Settings(data_dir=tmp_path).resolved_database_url)
    with make_sessionmaker(db)() as session:  # the confirmation alone, not each request
        [(features, outcome)] = session.execute(
            select(DecisionRecord.features, OutcomeRecord.outcome).join(
                OutcomeRecord, OutcomeRecord.decision_id == DecisionRecord.id
            )
        ).all()
    db.dispose()
    # the session as stored: its login (the checkout is stored once it has been answered)
    assert outcome == {"is_bot": False} and features["requests"] == 1
