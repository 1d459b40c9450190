"""API drift guard: replayed traffic with natural variation and injected drifts, judged in
the same run by the guard's Bernoulli CUSUM, a fixed-threshold rule and a Kayenta-style
Mann-Whitney judge; then the middleware's overhead on a real ASGI app, in process.

    python bench/drift.py            # about 7 minutes: bench/results/drift.json
    python bench/drift.py --quick    # a few seconds, for the smoke test

The traffic (`Traffic`): an order endpoint used by 40 clients, each with its own habits
(how often it sends a coupon, a note that is sometimes null, a gift flag; 3 clients omit the
currency, which the server defaults), the same clients on both versions. Each client calls
as real ones do: 45% with a static bearer API key, 20% with OAuth JWTs re-minted every 300
of their requests (same issuer and subject), 10% with an `X-API-Key`, 25% without
credentials, from one to three addresses; every client has its SDK's user agent, one patch
or minor release newer on v2 than on v1 (clients upgraded to call v2). The client mix
follows a slow mean-reverting random walk (log weights, stationary sd 0.5) and, every
few thousand requests, one client bursts to a third of the traffic for a few hundred
requests. Requests arrive as a Poisson process (20 per second on the new version). The
stable version v1 and the new version v2 get the same kind of traffic side by side; v1's
first 5,000 requests are its history. Drifts start after 2,000 clean v2 requests:

- drop: 30% of the clients stop sending `currency`;
- rename: every client sends `currencyCode` instead of `currency`;
- type: `qty` becomes a string ("3") for every client;
- gradual: the share of requests without `currency` rises from 0 to 100% over 10,000 requests.

Judges (all see the same requests):
- cusum: the guard as configured by default: `aiassist.drift.DriftDetector` with its
  defaults, each request's client named from its headers by
  `aiassist.drift.clients.client_identity` and judged against that client's stable history;
- cusum-stream: the same test on the version's whole stream, clients not told apart
  (`DriftConfig(identify_clients=False)`, the default before client identities);
- cusum-client: clients named by the backend (`DriftConfig(client_header="x-client-id")`;
  the client is `customer_id` here);
- fixed: a field's missing (or wrong-type) rate over the last 200 requests exceeds the
  stable rate by 10 points, checked on every request;
- mann-whitney: every 100 requests, per field, the missing (wrong-type) rate in 20 buckets
  of 50 v2 requests against 20 buckets of concurrent v1 requests, one-sided
  `scipy.stats.mannwhitneyu` at 98% confidence, every field a critical metric (as Kayenta's
  NetflixACAJudge with critical metrics: one failing metric fails the canary).
A detection resets the judge (the guard would have rolled back; here traffic goes on), so
clean traffic can show several false rollbacks.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import random
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from scipy.stats import mannwhitneyu

sys.path.insert(0, str(Path(__file__).parent))
from _common import goal, machine_info, parse_args, write_results
from aiassist.drift import DetectorConfig, DriftConfig, DriftDetector, DriftGuard
from aiassist.drift.clients import ClientHints, client_identity
from aiassist.drift.profile import Observation, Profile
from aiassist.drift.shapes import fields_of
from aiassist.integrations.asgi import DriftMiddleware
from aiassist.metrics import Metrics

HISTORY = 5_000
ONSET = 2_000
RATE_PER_S = 20.0
SCENARIOS = ("drop", "rename", "type", "gradual")
PARTS = frozenset({"body", "query"})
SDKS = (
    "acme-python/{}.{}.{} CPython/3.11.7",
    "acme-node/{}.{}.{} node/20.11.0",
    "okhttp/{}.{}.{}",
    "python-requests/{}.{}.{}",
    "Go-http-client/1.1 shopsync/{}.{}.{}",
    "curl/{}.{}.{}",
)
AUTH = (("key", 0.45), ("jwt", 0.2), ("x-api-key", 0.1), ("anonymous", 0.25))


def _jwt(issuer: str, subject: str, minted: int) -> str:
    """An (unsigned, for the bench) JWT: what changes on every refresh is `iat`."""

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    claims = {"iss": issuer, "sub": subject, "iat": 1_700_000_000 + 3600 * minted}
    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


# --- traffic -------------------------------------------------------------------------------
class Traffic:
    """One version's request stream; see the module docstring."""

    def __init__(
        self, seed: int, population: int, clients: int = 40, *, upgraded: bool = False
    ) -> None:
        r = random.Random(population)  # the clients and their habits: shared by v1 and v2
        self.habits = [
            {
                "coupon": r.uniform(0.05, 0.7),
                "note": r.uniform(0.0, 0.25),
                "gift": r.uniform(0.0, 0.3),
                "currency": r.random() > 3 / clients,
            }
            for _ in range(clients)
        ]
        self.dropping = frozenset(r.sample(range(clients), int(0.3 * clients)))
        self.callers = [self._caller(r, i, upgraded) for i in range(clients)]
        self.sent = [0] * clients
        self.rng = r = random.Random(seed)  # this stream's own draws
        self.log_weights = [r.gauss(0, 0.5) for _ in range(clients)]
        self.weights = [math.exp(w) for w in self.log_weights]
        self.burst_client, self.burst_left = 0, 0
        self.n = 0
        self.t = 0.0
        self.drift: str | None = None
        self.onset = math.inf

    @staticmethod
    def _caller(r: random.Random, i: int, upgraded: bool) -> dict[str, Any]:
        """How client `i` shows itself: credentials, user agent, addresses."""
        version = [r.randint(0, 4), r.randint(0, 30), r.randint(0, 12)]
        bumped = 2 if r.random() < 0.5 else 1  # drawn on both versions: the same clients
        if upgraded:
            version[bumped] += 1
        return {
            "auth": r.choices([a for a, _ in AUTH], [w for _, w in AUTH])[0],
            "key": f"sk_live_{r.getrandbits(128):032x}",
            "subject": f"app-{i:03d}",
            "agent": r.choice(SDKS).format(*version),
            "addresses": [f"203.0.{i}.{r.randint(1, 254)}" for _ in range(r.randint(1, 3))],
        }

    def hints(self, client: int) -> ClientHints:
        """The headers of client `client`'s next request, as the middleware reads them."""
        c = self.callers[client]
        self.sent[client] += 1
        auth = key = None
        if c["auth"] == "key":
            auth = f"Bearer {c['key']}"
        elif c["auth"] == "jwt":
            auth = f"Bearer {_jwt('https://auth.example', c['subject'], self.sent[client] // 300)}"
        elif c["auth"] == "x-api-key":
            key = c["key"]
        return ClientHints(auth, key, c["agent"], None, self.rng.choice(c["addresses"]))

    def next(self) -> tuple[float, dict[str, Any], ClientHints]:
        r = self.rng
        self.n += 1
        self.t += r.expovariate(RATE_PER_S)
        if self.n % 50 == 0:  # the mix walks, mean-reverting (stationary sd 0.5 in log)
            self.log_weights = [0.98 * w + r.gauss(0, 0.1) for w in self.log_weights]
            self.weights = [math.exp(w) for w in self.log_weights]
        if self.burst_left == 0 and r.random() < 1 / 3000:
            self.burst_client, self.burst_left = r.randrange(len(self.habits)), r.randint(200, 600)
        if self.burst_left and r.random() < 1 / 3:
            self.burst_left -= 1
            client = self.burst_client
        else:
            client = r.choices(range(len(self.habits)), self.weights)[0]
        h = self.habits[client]
        body: dict[str, Any] = {
            "item": r.choice(("A-1", "B-22", "C-333")),
            "qty": r.randint(1, 20),
            "customer_id": f"c{client:04d}",
            "address": {"city": "Lyon", "zip": f"{r.randint(10000, 99999)}"},
        }
        if h["currency"]:
            body["currency"] = r.choice(("EUR", "USD"))
        if r.random() < h["coupon"]:
            body["coupon"] = "SPRING"
        if r.random() < h["note"]:
            body["note"] = None if r.random() < 0.3 else "leave at the door"
        if r.random() < h["gift"]:
            body["gift"] = r.random() < 0.5
        self._inject(body, client)
        return self.t, body, self.hints(client)

    def _inject(self, body: dict[str, Any], client: int) -> None:
        since = self.n - self.onset
        if since < 0 or self.drift is None:
            return
        if self.drift == "drop" and client in self.dropping:
            body.pop("currency", None)
        elif self.drift == "rename" and "currency" in body:
            body["currencyCode"] = body.pop("currency")
        elif self.drift == "type":
            body["qty"] = str(body["qty"])
        elif self.drift == "gradual" and self.rng.random() < min(1.0, since / 10_000):
            body.pop("currency", None)


class Seen:
    """One request as each configuration of the guard sees it."""

    def __init__(self, body: dict[str, Any], hints: ClientHints) -> None:
        fields = fields_of(body, "body")
        self.derived = Observation(fields, PARTS, client_identity(hints))  # the defaults
        self.stream = Observation(fields, PARTS)  # identify_clients=False
        self.header = Observation(fields, PARTS, body["customer_id"])  # client_header=...


class References:
    """The stable version's profile, with clients named by the defaults and by a header."""

    def __init__(self) -> None:
        self.derived, self.header = Profile(), Profile()

    def add(self, seen: Seen) -> None:
        self.derived.add(seen.derived)
        self.header.add(seen.header)


# --- judges --------------------------------------------------------------------------------
def _indicators(reference: Profile, obs: Observation) -> dict[str, int]:
    """Per monitored metric, 1 when the request shows the bad event (missing / odd type)."""
    out: dict[str, int] = {}
    for name, stats in reference.fields.items():
        got = obs.fields.get(name)
        out[f"{name}:missing"] = int(got is None)
        if got is not None:
            usual = {t for t, k in stats.types.items() if k >= 0.01 * stats.present}
            out[f"{name}:type"] = int(got[0] not in usual)
    return out


class Cusum:
    """The guard's test as configured by default: clients named from their headers."""

    name = "cusum"
    view = "derived"

    def __init__(self, references: References) -> None:
        self.reference = references.header if self.view == "header" else references.derived
        self.detector = DriftDetector(self.reference, DetectorConfig())

    def update(self, seen: Seen, stable: Seen) -> bool:
        if self.detector.update(getattr(seen, self.view)) is not None:
            self.detector = DriftDetector(self.reference, DetectorConfig())
            return True
        return False


class CusumStream(Cusum):
    """The same test on the whole stream, clients not told apart."""

    name = "cusum-stream"
    view = "stream"


class CusumPerClient(Cusum):
    """The same test, clients named by the backend (`DriftConfig(client_header=...)`)."""

    name = "cusum-client"
    view = "header"


class FixedThreshold:
    name = "fixed"

    def __init__(self, references: References, window: int = 200, margin: float = 0.10) -> None:
        self.reference, self.window, self.margin = references.derived, window, margin
        self.reset()

    def reset(self) -> None:
        self.recent: deque[dict[str, int]] = deque()
        self.events: dict[str, int] = {}
        self.seen: dict[str, int] = {}

    def _ref_rate(self, metric: str) -> float:
        name, kind = metric.rsplit(":", 1)
        stats = self.reference.fields.get(name)
        if stats is None:
            return 0.0
        if kind == "missing":
            return 1 - self.reference.presence(name)
        usual = sum(k for k in stats.types.values() if k >= 0.01 * stats.present)
        return 1 - usual / max(1, stats.present)

    def update(self, seen: Seen, stable: Seen) -> bool:
        ind = _indicators(self.reference, seen.stream)
        self.recent.append(ind)
        for k, v in ind.items():
            self.events[k] = self.events.get(k, 0) + v
            self.seen[k] = self.seen.get(k, 0) + 1
        if len(self.recent) > self.window:
            for k, v in self.recent.popleft().items():
                self.events[k] -= v
                self.seen[k] -= 1
        if len(self.recent) < self.window:
            return False
        for k, v in self.events.items():
            n = self.seen[k]
            if n >= self.window // 2 and v / n > self._ref_rate(k) + self.margin:
                self.reset()
                return True
        return False


class MannWhitney:
    name = "mann-whitney"

    def __init__(
        self, references: References, every: int = 100, buckets: int = 20, size: int = 50
    ) -> None:
        self.reference, self.every = references.derived, every
        self.buckets, self.size = buckets, size
        self.canary: deque[dict[str, int]] = deque(maxlen=buckets * size)
        self.baseline: deque[dict[str, int]] = deque(maxlen=buckets * size)
        self.count = 0

    def _series(self, rows: deque[dict[str, int]], metric: str) -> list[float]:
        rows_ = list(rows)
        out = []
        for i in range(self.buckets):
            chunk = rows_[i * self.size : (i + 1) * self.size]
            values = [r[metric] for r in chunk if metric in r]
            out.append(sum(values) / len(values) if values else 0.0)
        return out

    def update(self, seen: Seen, stable: Seen) -> bool:
        self.canary.append(_indicators(self.reference, seen.stream))
        self.baseline.append(_indicators(self.reference, stable.stream))
        self.count += 1
        if self.count % self.every or len(self.canary) < self.canary.maxlen:  # type: ignore[operator]
            return False
        metrics = {k for row in self.canary for k in row}
        for metric in sorted(metrics):
            canary = self._series(self.canary, metric)
            baseline = self._series(self.baseline, metric)
            if max(canary) == min(canary) == max(baseline) == min(baseline):
                continue
            p = mannwhitneyu(canary, baseline, alternative="greater").pvalue
            if p < 0.02:
                self.canary.clear()
                return True
        return False


JUDGES: tuple[Callable[[References], Any], ...] = (
    Cusum,
    CusumStream,
    CusumPerClient,
    FixedThreshold,
    MannWhitney,
)


# --- one replay ----------------------------------------------------------------------------
def replay(seed: int, drift: str | None, requests: int) -> dict[str, Any]:
    """Run every judge over one v2 stream (and the concurrent v1 stream)."""
    v1 = Traffic(seed, population=seed)
    v2 = Traffic(seed + 1, population=seed, upgraded=True)
    v2.drift, v2.onset = drift, ONSET if drift else math.inf
    references = References()
    for _ in range(HISTORY):
        _, body, hints = v1.next()
        references.add(Seen(body, hints))
    judges = [make(references) for make in JUDGES]
    alarms: dict[str, list[tuple[int, float]]] = {j.name: [] for j in judges}
    onset_t = None
    for i in range(1, requests + 1):
        t, body, hints = v2.next()
        if i == ONSET:
            onset_t = t
        _, stable_body, stable_hints = v1.next()
        stable = Seen(stable_body, stable_hints)
        references.add(stable)
        seen = Seen(body, hints)
        for judge in judges:
            if judge.update(seen, stable):
                alarms[judge.name].append((i, t))
    return {"alarms": alarms, "onset_t": onset_t}


def run(args: argparse.Namespace) -> dict[str, Any]:
    judges = [j.name for j in JUDGES]  # type: ignore[attr-defined]
    clean_requests = 0
    false_alarms = dict.fromkeys(judges, 0)
    started = time.perf_counter()
    for k in range(args.clean_runs):
        out = replay(args.seed + 100 * k, None, args.clean_requests)
        clean_requests += args.clean_requests
        for name, alarms in out["alarms"].items():
            false_alarms[name] += len(alarms)
    print(f"clean: {clean_requests} requests in {time.perf_counter() - started:.0f} s", flush=True)
    scenarios: dict[str, Any] = {}
    horizon = ONSET + args.horizon
    for drift in SCENARIOS:
        delays: dict[str, list[tuple[int, float]]] = {n: [] for n in judges}
        missed = dict.fromkeys(judges, 0)
        for k in range(args.drift_runs):
            out = replay(args.seed + 1000 + 100 * k, drift, horizon)
            clean_requests += ONSET - 1
            for name, alarms in out["alarms"].items():
                false_alarms[name] += sum(1 for i, _ in alarms if i < ONSET)
                hit = next(((i, t) for i, t in alarms if i >= ONSET), None)
                if hit is None:
                    missed[name] += 1
                else:
                    delays[name].append((hit[0] - ONSET + 1, hit[1] - out["onset_t"]))
        scenarios[drift] = {
            name: _delay_stats(delays[name], missed[name], args.drift_runs) for name in judges
        }
        line = "  ".join(
            f"{n} {scenarios[drift][n].get('median_requests', '-')} req" for n in judges
        )
        print(f"{drift:<8} median delay: {line}", flush=True)
    per_million = {n: round(1e6 * false_alarms[n] / clean_requests, 1) for n in judges}
    print(f"false rollbacks per million clean requests: {per_million}", flush=True)
    return {
        "clean_requests": clean_requests,
        "false_rollbacks": false_alarms,
        "false_rollbacks_per_million": per_million,
        "scenarios": scenarios,
    }


def _delay_stats(delays: list[tuple[int, float]], missed: int, runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {"detected": runs - missed, "runs": runs}
    if delays:
        reqs = sorted(d[0] for d in delays)
        secs = sorted(d[1] for d in delays)
        out |= {
            "median_requests": int(statistics.median(reqs)),
            "max_requests": reqs[-1],
            "median_seconds": round(statistics.median(secs), 1),
            "max_seconds": round(secs[-1], 1),
        }
    return out


# --- middleware overhead -------------------------------------------------------------------
def overhead(args: argparse.Namespace) -> dict[str, Any]:
    """µs per call of a FastAPI app called in process (no network), with and without the
    middleware; the guard's worker thread runs meanwhile, as in production."""
    from fastapi import FastAPI, Request

    def build(sample_rate: float | None) -> tuple[Any, DriftGuard | None]:
        app = FastAPI()

        @app.post("/v2/orders")
        async def create(request: Request) -> dict[str, Any]:
            body = await request.json()
            return {"id": 1, "qty": body["qty"], "currency": body.get("currency")}

        if sample_rate is None:
            return app, None
        guard = DriftGuard(
            DriftConfig(stable="v1", scheme="path", persist=False, sample_rate=sample_rate),
            metrics=Metrics(CollectorRegistry()),
        )
        app.add_middleware(DriftMiddleware, guard=guard)
        return app, guard

    traffic = Traffic(args.seed, population=args.seed)
    requests = []
    for _ in range(512):  # bodies and the headers clients are named by
        _, body, hints = traffic.next()
        headers = [(b"user-agent", (hints.user_agent or "").encode())]
        if hints.authorization:
            headers.append((b"authorization", hints.authorization.encode()))
        if hints.api_key:
            headers.append((b"x-api-key", hints.api_key.encode()))
        requests.append((json.dumps(body).encode(), headers))

    async def call(app: Any, request: tuple[bytes, list[tuple[bytes, bytes]]]) -> None:
        body, extra = request
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": "/v2/orders", "raw_path": b"/v2/orders",
            "root_path": "", "query_string": b"", "server": ("127.0.0.1", 80),
            "client": ("127.0.0.1", 5000),
            "headers": [(b"host", b"api.example"), (b"accept", b"*/*"),
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()), *extra],
        }  # fmt: skip
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            return None

        await app(scope, receive, send)

    async def measure(app: Any, guard: DriftGuard | None, n: int) -> dict[str, Any]:
        for i in range(min(n, 2000)):  # warm up
            await call(app, requests[i % len(requests)])
        if guard is not None:
            guard.flush()
        samples = []
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for i in range(n):
            t0 = time.perf_counter_ns()
            await call(app, requests[i % len(requests)])
            samples.append(time.perf_counter_ns() - t0)
        if guard is not None:
            guard.flush()  # the profiling the calls queued is part of their cost
        cpu = time.process_time() - cpu0
        samples.sort()
        return {
            "n": n,
            "p50_us": round(samples[n // 2] / 1e3, 2),
            "p99_us": round(samples[int(n * 0.99)] / 1e3, 2),
            "mean_us": round(sum(samples) / n / 1e3, 2),
            "cpu_us_per_request_incl_profiling": round(1e6 * cpu / n, 2),
            "wall_s": round(time.perf_counter() - wall0, 2),
        }

    results: dict[str, Any] = {}
    for label, rate in (("bare", None), ("guard_sample_1.0", 1.0), ("guard_sample_0.1", 0.1)):
        app, guard = build(rate)
        results[label] = asyncio.run(measure(app, guard, args.overhead_calls))
        if guard is not None:
            guard.close()
        print(f"  {label:<18} {results[label]}", flush=True)
    bare = results["bare"]
    for label in ("guard_sample_1.0", "guard_sample_0.1"):
        results[label]["added_p50_us"] = round(results[label]["p50_us"] - bare["p50_us"], 2)
        results[label]["added_cpu_us_per_request"] = round(
            results[label]["cpu_us_per_request_incl_profiling"]
            - bare["cpu_us_per_request_incl_profiling"],
            2,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clean-runs", type=int)
    parser.add_argument("--clean-requests", type=int)
    parser.add_argument("--drift-runs", type=int)
    parser.add_argument("--horizon", type=int, help="requests after the onset before a miss")
    parser.add_argument("--overhead-calls", type=int)
    full = {"clean_runs": 10, "clean_requests": 100_000, "drift_runs": 8, "horizon": 15_000,
            "overhead_calls": 20_000}  # fmt: skip
    quick = {"clean_runs": 1, "clean_requests": 3_000, "drift_runs": 1, "horizon": 2_000,
             "overhead_calls": 1_000}  # fmt: skip
    args = parse_args(parser, "drift", full, quick)
    started = datetime.now(UTC)
    machine = machine_info(["scipy", "starlette", "fastapi"])
    detection = run(args)
    print("middleware overhead (in process, FastAPI app):", flush=True)
    cost = overhead(args)
    per_million = detection["false_rollbacks_per_million"]
    drop = detection["scenarios"]["drop"]["cusum"]
    added = cost["guard_sample_1.0"]["added_cpu_us_per_request"]
    found = detection["scenarios"]
    clean = detection["clean_requests"]
    goals = [
        goal("false rollbacks on clean traffic (cusum: the defaults)", "≤ 1 per million requests",
             f"{per_million['cusum']} per million ({detection['false_rollbacks']['cusum']} "
             f"in {clean})", per_million["cusum"] <= 1),
        goal("false rollbacks on clean traffic (cusum-client: client header)",
             "≤ 1 per million requests",
             f"{per_million['cusum-client']} per million "
             f"({detection['false_rollbacks']['cusum-client']} in {clean})",
             per_million["cusum-client"] <= 1),
        goal("every injected drift found (cusum: the defaults)", "all runs",
             ", ".join(f"{s} {found[s]['cusum']['detected']}/{found[s]['cusum']['runs']}"
                       for s in SCENARIOS),
             all(found[s]["cusum"]["detected"] == found[s]["cusum"]["runs"] for s in SCENARIOS)),
        goal("field dropped by 30% of clients found (cusum: the defaults, median)",
             "≤ 500 requests", f"{drop.get('median_requests')} requests",
             drop.get("median_requests", 1e9) <= 500),
        goal("middleware CPU per request, profiling every request", "≤ 100 µs",
             f"{added} µs", added <= 100),
    ]  # fmt: skip
    write_results(
        args,
        "drift",
        started,
        benchmark="API drift guard: detection delay, false rollbacks, middleware overhead",
        machine=machine,
        goals=goals,
        detection=detection,
        overhead=cost,
    )


if __name__ == "__main__":
    main()
