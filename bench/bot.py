"""Bot scoring: the model against the fixed rules, on each bot family, seen and unseen.

    python bench/bot.py            # about 3 minutes: bench/results/bot.json
    python bench/bot.py --quick    # a few seconds, for the smoke test

Traffic is the bot module's generator (`aiassist.modules.bot.simulator`, whose docstring
documents it): people and four bot families (scrapers, headless browsers, credential
stuffers, distributed low-and-slow crawlers). No public access log with labelled sessions
could be shipped, so there is no real-log row yet. Sessions are judged at their end.

Answerers, side by side on the same test sessions:
- `ua_rule`: the user-agent list (a crawler, an HTTP library, headless, none);
- `rate_rule`: pages a minute above `AIASSIST_BOT_RULE_RATE_PER_MIN` (60);
- `fallback`: the module's rule fallback, the two together (today's usual fixed rules);
- `model`: the module's LightGBM model, trained by its own trainer and served from the
  registry through the serving checks and a Decider.

Each bot family is held out in turn: the model is trained on people and the other
families, and tested on people and the held-out family (`unseen`); `all` is the model
trained on every family, tested on all of them. The figures are recall of bot sessions at
a threshold that flags at most 1% of people, and AUC.

Speed, in process: scoring one request (fold it into its session, build the features, ask
the model), and the whole ASGI middleware around a no-op app (building the request's hit,
loading and saving its session, deciding through `AIAssistService`), with sessions in
memory and in Redis (`AIASSIST_BENCH_REDIS_URL`, default the local server): what the
store costs is the difference.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import redis
from prometheus_client import CollectorRegistry
from sklearn.metrics import roc_auc_score

from _common import goal, machine_info, parse_args, show, summarize, write_results
from aiassist import AIAssistService
from aiassist.decider import Decider
from aiassist.integrations.asgi_bot import BotMiddleware
from aiassist.metrics import Metrics
from aiassist.modules.bot import BotFeatures, module
from aiassist.modules.bot.guard import BotGuard
from aiassist.modules.bot.session import Hit, Session
from aiassist.modules.bot.sessions import MemorySessions, RedisSessions
from aiassist.modules.bot.simulator import (
    BOT_FAMILIES,
    FAMILIES,
    GeneratedSession,
    generate,
    snapshots,
)
from aiassist.modules.bot.training import examples, recall_at_fpr, trainer
from aiassist.registry.serving import OnnxPredictor, load_checked
from aiassist.registry.store import ModelRegistry
from aiassist.settings import Settings
from aiassist.training.base import Dataset

RECALL_GOAL = 0.94
LATENCY_GOAL_US = 100.0
REDIS_URL = os.environ.get("AIASSIST_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def _serve(families: tuple[str, ...], sessions: int, seed: int, models: Path) -> Decider:
    """The module's model trained on `families` only, published to `models` as `stable` and
    served as in production."""
    features, labels = examples(generate(sessions, seed, families), seed)
    exported = trainer.fit(Dataset.build(module, features, labels), seed)
    registry = ModelRegistry(models)
    manifest = exported.publish(registry, module)
    registry.set_tag(module.name, "stable", manifest.version, actor="bench", reason="bench")
    decider = Decider([module], metrics=Metrics(CollectorRegistry()))
    decider.load(
        module.name, load_checked(registry, module, manifest.version, latency_budget_us=5000)
    )
    return decider


def _scores(decider: Decider, features: list[BotFeatures]) -> dict[str, np.ndarray]:
    config = module.config
    ua = [f.ua_known_bot or f.ua_library or f.ua_headless or f.ua_missing for f in features]
    rate = [
        f.requests >= config.rule_min_requests and f.rate_per_min > config.rule_rate_per_min
        for f in features
    ]
    return {
        "ua_rule": np.asarray(ua, dtype=float),
        "rate_rule": np.asarray(rate, dtype=float),
        "fallback": np.asarray([module.fallback(f).p_bot for f in features]),
        "model": np.asarray([d.p_bot for d in decider.decide_many(module.name, features)]),
    }


def _judge(y: np.ndarray, scores: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    return {
        name: {
            "recall_at_1pct_fpr": round(recall_at_fpr(y, s), 4),
            "auc": round(float(roc_auc_score(y, s)), 4),
        }
        for name, s in scores.items()
    }


def _ends(sessions: list[GeneratedSession]) -> tuple[list[BotFeatures], np.ndarray]:
    features = [next(snapshots(s)) for s in sessions]
    return features, np.asarray([float(s.is_bot) for s in sessions])


def _per_request_us(decider: Decider, sessions: list[GeneratedSession], n: int) -> dict[str, Any]:
    """Fold a request into its session, build the features and decide, one at a time, over
    the test sessions' requests in order (each session its own state)."""
    samples: list[int] = []
    login = frozenset(module.config.login_paths)
    for generated in sessions:
        state = Session()
        for hit in generated.hits[: n - len(samples)]:
            started = time.perf_counter_ns()
            state.observe(hit, login)
            decider.decide(module.name, state.features())
            samples.append(time.perf_counter_ns() - started)
        if len(samples) >= n:
            break
    return summarize(samples, "us")


def _onnx_run_us(decider: Decider, sessions: list[GeneratedSession], n: int) -> dict[str, Any]:
    """ONNX Runtime's own run on one encoded row, over the same requests: the library's
    floor under every figure above it."""
    predictor = decider.predictor(module.name)
    assert isinstance(predictor, OnnxPredictor)
    session, name = predictor.session, predictor.session.get_inputs()[0].name
    rows, login = [], frozenset(module.config.login_paths)
    for generated in sessions:
        state = Session()
        for hit in generated.hits[: n - len(rows)]:
            state.observe(hit, login)
            rows.append(np.asarray([module.encode(state.features())], dtype=np.float32))
        if len(rows) >= n:
            break
    samples = []
    for row in rows:
        started = time.perf_counter_ns()
        session.run(None, {name: row})
        samples.append(time.perf_counter_ns() - started)
    return summarize(samples, "us")


def _asgi_request(hit: Hit, client: str) -> dict[str, Any]:
    headers = [(b"user-agent", hit.user_agent.encode("latin-1", "replace"))]
    headers += [(b"accept", b"text/html"), (b"accept-encoding", b"gzip, br")]
    if hit.accept_language:
        headers.append((b"accept-language", b"en-GB,en;q=0.9"))
    if hit.sec_fetch:
        headers += [(b"sec-fetch-mode", b"navigate"), (b"sec-fetch-site", b"same-origin")]
    if hit.referer:
        headers.append((b"referer", b"https://shop.example/"))
    path, _, query = hit.path.partition("?")
    return {
        "type": "http",
        "method": hit.method,
        "path": path,
        "query_string": query.encode(),
        "headers": headers,
        "client": (client, 40000),
        "http_version": "2" if hit.http2 else "1.1",
    }


def _middleware_us(store: Any, sessions: list[GeneratedSession], n: int) -> dict[str, Any]:
    """The BotMiddleware around a no-op app, one request at a time, sessions in `store`."""

    async def noop(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        return None

    middleware = BotMiddleware(noop, BotGuard(store=store))
    hits = [(i, hit) for i, generated in enumerate(sessions) for hit in generated.hits][:n]
    requests = [_asgi_request(hit, f"10.0.{i >> 8 & 255}.{i & 255}") for i, hit in hits]

    async def run() -> list[int]:
        samples = []
        for scope in requests:
            started = time.perf_counter_ns()
            await middleware(scope, receive, send)
            samples.append(time.perf_counter_ns() - started)
        return samples

    return summarize(asyncio.run(run()), "us")


def _redis(url: str) -> RedisSessions | None:
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        print(f"Redis unavailable at {url} ({exc}): skipped", flush=True)
        return None
    return RedisSessions(url, ttl_s=600, timeout_s=1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, help="training sessions per model")
    parser.add_argument("--test-sessions", type=int, help="test sessions (all families)")
    parser.add_argument("--requests", type=int, help="requests timed one by one")
    args = parse_args(
        parser,
        "bot",
        full={"sessions": 3000, "test_sessions": 3000, "requests": 20_000},
        quick={"sessions": 300, "test_sessions": 400, "requests": 2000},
    )
    started = datetime.now(UTC)
    machine = machine_info(["aiassist", "lightgbm", "onnxruntime", "numpy"])
    test = generate(args.test_sessions, args.seed + 1)
    people = [s for s in test if not s.is_bot]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="aiassist-bench-bot-") as tmp:
        workdir = Path(tmp)
        for held in BOT_FAMILIES:
            began = time.perf_counter()
            seen = tuple(f for f in FAMILIES if f != held)
            decider = _serve(seen, args.sessions, args.seed, workdir / held)
            features, y = _ends(people + [s for s in test if s.family == held])
            results[held] = {
                "bot_sessions": int(y.sum()),
                "unseen": _judge(y, _scores(decider, features)),
            }
            took = time.perf_counter() - began
            print(
                f"  {held:<14} unseen  {_line(results[held]['unseen'])}  ({took:.0f} s)", flush=True
            )
        service = workdir / "service"  # the model trained on all, for AIAssistService too
        decider = _serve(FAMILIES, args.sessions, args.seed, service / "models")
        features, y = _ends(test)
        overall = _judge(y, _scores(decider, features))
        for held in BOT_FAMILIES:
            mine, my_y = _ends(people + [s for s in test if s.family == held])
            results[held]["seen"] = _judge(my_y, _scores(decider, mine))
            print(f"  {held:<14} seen    {_line(results[held]['seen'])}", flush=True)
        print(f"  {'all':<14} seen    {_line(overall)}", flush=True)
        onnx = _onnx_run_us(decider, test, args.requests)
        show("onnxruntime run alone, one row", onnx, "us")
        latency = _per_request_us(decider, test, args.requests)
        show("one request: fold in, features, model", latency, "us")
        AIAssistService.reset()
        AIAssistService.setup(Settings(data_dir=service, record_decisions=False))
        middleware = {"memory": _middleware_us(MemorySessions(), test, args.requests)}
        show("middleware, sessions in memory", middleware["memory"], "us")
        store = _redis(REDIS_URL)
        if store is not None:
            middleware["redis"] = _middleware_us(store, test, args.requests)
            show("middleware, sessions in Redis", middleware["redis"], "us")
        AIAssistService.reset()

    beats = {
        family: all(
            results[family][split]["model"]["recall_at_1pct_fpr"]
            > results[family][split]["fallback"]["recall_at_1pct_fpr"]
            for split in ("seen", "unseen")
        )
        for family in BOT_FAMILIES
    }
    recall = overall["model"]["recall_at_1pct_fpr"]
    goals = [
        goal(
            "recall of bot sessions at <= 1% false positives on people, all families",
            f">= {RECALL_GOAL:.0%}",
            f"{recall:.1%} (fallback {overall['fallback']['recall_at_1pct_fpr']:.1%})",
            recall >= RECALL_GOAL,
        ),
        goal(
            "model ahead of the fixed rules (fallback) on every family, seen and held out",
            "every family",
            ", ".join(
                f"{f} {results[f]['unseen']['model']['recall_at_1pct_fpr']:.0%} vs "
                f"{results[f]['unseen']['fallback']['recall_at_1pct_fpr']:.0%} unseen"
                for f in BOT_FAMILIES
            ),
            all(beats.values()),
        ),
        goal(
            "ASGI middleware per request in process, sessions in memory, p99",
            f"<= {LATENCY_GOAL_US:.0f} us",
            f"{middleware['memory']['p99_us']:.1f} us (fold, features and model "
            f"{latency['p99_us']:.1f} us; onnxruntime's run alone {onnx['p99_us']:.1f} us)",
            middleware["memory"]["p99_us"] <= LATENCY_GOAL_US,
        ),
    ]
    write_results(
        args,
        "bot",
        started,
        benchmark="bot scoring against fixed rules, each family seen and held out",
        machine=machine,
        sessions={
            "train": args.sessions,
            "test": args.test_sessions,
            "people_in_test": len(people),
        },
        families=results,
        overall=overall,
        onnx_run=onnx,
        per_request=latency,
        middleware=middleware,
        goals=goals,
    )


def _line(judged: dict[str, dict[str, float]]) -> str:
    return "  ".join(
        f"{name} {row['recall_at_1pct_fpr']:6.1%} (auc {row['auc']:.3f})"
        for name, row in judged.items()
    )


if __name__ == "__main__":
    main()
