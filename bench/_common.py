"""What both benchmarks share: statistics, inputs, the service as a child process, CPU
accounting, the machine's description and the results file.

Linux only: CPU time is read from /proc, as on the machines the service runs on.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import secrets
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import numpy as np

MODULE = "reference"
RESULTS = Path(__file__).with_name("results")
#: The shared real data (../shared/data beside the checkout, or AIASSIST_SHARED_DATA).
SHARED_DATA = Path(
    os.environ.get("AIASSIST_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


# --- statistics and inputs -----------------------------------------------------------------
def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]): always a value that was measured."""
    return sorted_values[max(1, math.ceil(q / 100 * len(sorted_values))) - 1]


def summarize(samples_ns: Iterable[int], unit: str) -> dict[str, Any]:
    """n, p50/p90/p99/p99.9/mean/max of latencies in nanoseconds, converted to `unit` (us|ms).

    The keys carry the unit (`p99_us`, `p99_ms`) so a figure is never read in the wrong one.
    """
    scale = 1e3 if unit == "us" else 1e6
    values = sorted(float(s) / scale for s in samples_ns)
    if not values:
        return {"n": 0}
    stats = {f"p{q}_{unit}".replace(".", "_"): percentile(values, q) for q in (50, 90, 99, 99.9)}
    stats |= {f"mean_{unit}": sum(values) / len(values), f"max_{unit}": values[-1]}
    return {"n": len(values)} | {k: round(v, 3) for k, v in stats.items()}


def feature_dicts(seed: int, n: int = 1024) -> list[dict[str, float]]:
    """Seeded `reference` features, so two runs send the same inputs in the same order."""
    rng = random.Random(seed)
    return [
        {"signal": round(rng.random(), 6), "threshold": round(rng.random(), 6)} for _ in range(n)
    ]


def show(label: str, stats: dict[str, Any], unit: str, extra: str = "") -> None:
    """One line of the console report."""
    figures = "  ".join(
        f"{q.replace('_', '.')} {stats.get(f'{q}_{unit}', math.nan):8.3f}"
        for q in ("p50", "p99", "p99_9", "max")
    )
    print(f"  {label:<44} n {stats.get('n', 0):>6}  {figures} {unit}  {extra}", flush=True)


# --- child processes -----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(argv: list[str], env: dict[str, str], cwd: Path, url: str) -> subprocess.Popen[bytes]:
    """Start a server (its output in cwd/server.log) and return once `url`/healthz answers."""
    with (cwd / "server.log").open("wb") as log:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/healthz", timeout=0.5).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    stop(proc)
    tail = (cwd / "server.log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"{shlex.join(argv)} did not become healthy:\n{tail}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(15)


class Service:
    """The real service (`python -m aiassist serve`, one worker, SQLite) as a child process
    with its own data directory and an API key: started the way an operator starts it, so
    the figures include everything a request goes through."""

    def __init__(self, data_dir: Path, scope: str = "decide", **env: str) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir, self.scope, self.port = data_dir, scope, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AIASSIST_")}
        self.env |= {"AIASSIST_DATA_DIR": str(data_dir), "AIASSIST_LOG_LEVEL": "warning"} | env

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "aiassist", *args],
            env=self.env,
            cwd=self.data_dir,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"aiassist {shlex.join(args)} failed:\n{done.stderr}")
        return done.stdout

    def __enter__(self) -> Service:
        self.cli("db", "upgrade")
        out = self.cli("keys", "create", "--name", "bench", "--scope", self.scope)
        self.token = out.strip().splitlines()[-1]
        argv = [sys.executable, "-m", "aiassist", "serve", "--port", str(self.port)]
        self.proc = spawn(argv, self.env, self.data_dir, self.url)
        return self

    def __exit__(self, *exc: object) -> None:
        stop(self.proc)

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}", "content-type": "application/json"}

    def log_text(self) -> str:
        return (self.data_dir / "server.log").read_text(errors="replace")


# --- CPU -----------------------------------------------------------------------------------
def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_s() -> tuple[float, float]:
    """(busy, stolen by the hypervisor) CPU seconds of all cores since boot."""
    user, nice, system, _, _, irq, softirq, steal = map(
        int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


class CpuWindow:
    """Cores used during a phase by this process, by the server, by anything else, and stolen
    by the hypervisor. Coarse (clock ticks), but it shows when the client starved the server
    it shares the cores with, or when something else disturbed the phase."""

    def __init__(self, server_pid: int | None = None) -> None:
        self.server_pid = server_pid

    def _server_s(self) -> float:
        return _process_cpu_s(self.server_pid) if self.server_pid else 0.0

    def __enter__(self) -> CpuWindow:
        self._start = (time.perf_counter(), time.process_time(), self._server_s(), machine_cpu_s())
        return self

    def __exit__(self, *exc: object) -> None:
        wall0, own0, server0, (busy0, steal0) = self._start
        busy, steal = machine_cpu_s()
        self.wall = time.perf_counter() - wall0
        self.own = time.process_time() - own0
        self.server = self._server_s() - server0
        self.other = max(0.0, busy - busy0 - self.own - self.server)
        self.steal = steal - steal0

    def report(self, requests: int | None = None) -> dict[str, Any]:
        """Cores (CPU seconds per second) and, given a request count, CPU µs per request."""
        out: dict[str, Any] = {
            "wall_s": round(self.wall, 3),
            "this_process_cores": round(self.own / self.wall, 3),
            "other_processes_cores": round(self.other / self.wall, 3),
            "steal_cores": round(self.steal / self.wall, 3),
        }
        if self.server_pid:
            out["server_cores"] = round(self.server / self.wall, 3)
        if requests:
            out["client_cpu_us_per_request"] = round(1e6 * self.own / requests, 1)
            if self.server_pid:
                out["server_cpu_us_per_request"] = round(1e6 * self.server / requests, 1)
        return out


# --- a module's bootstrap model --------------------------------------------------------------
@dataclass
class Trained:
    """A module's model trained from its simulator and served through the registry's checks,
    with its and the rule's scores on held-out simulated data (another seed)."""

    predictor: Any
    engine: Any
    held: Any  # the held-out Dataset
    model_scores: np.ndarray
    rule_scores: np.ndarray
    info: dict[str, Any]


def train_from_simulator(module: Any, trainer: Any, rows: int, seed: int, workdir: Path) -> Trained:
    """Train with the module's trainer, publish, load through the serving checks, judge."""
    from prometheus_client import CollectorRegistry

    from aiassist.decider import Decider
    from aiassist.metrics import Metrics
    from aiassist.registry.serving import load_checked
    from aiassist.registry.store import ModelRegistry

    started = time.perf_counter()
    data = trainer.synthetic(rows, seed)
    synthetic_s = time.perf_counter() - started
    exported = trainer.fit(data, seed)
    fit_s = time.perf_counter() - started - synthetic_s
    registry = ModelRegistry(workdir / "models")
    manifest = exported.publish(registry, module)
    predictor = load_checked(registry, module, manifest.version, latency_budget_us=5000)
    engine = Decider([module], metrics=Metrics(CollectorRegistry()))
    engine.load(module.name, predictor)
    held = trainer.synthetic(max(rows // 4, 2000), seed + 1000)
    model = np.array([trainer.score(d) for d in engine.decide_many(module.name, held.features)])
    rule = np.array([trainer.score(module.fallback(f)) for f in held.features])
    info = {
        "rows": rows,
        "seed": seed,
        "synthetic_s": round(synthetic_s, 2),
        "fit_s": round(fit_s, 2),
        "positive_share": round(float(data.y.mean()), 4),
        "heldout_rows": len(held),
        "heldout_quality_model": round(trainer.quality(held.y, model), 4),
        "heldout_quality_rule": round(trainer.quality(held.y, rule), 4),
    }
    return Trained(predictor, engine, held, model, rule, info)


# --- a simulator's policies over seeds -----------------------------------------------------
def simulator_args(
    argv: Sequence[str] | None, description: str, out: Path, count: str, pool: str
) -> argparse.Namespace:
    """The options of a benchmark of a simulator's policies: `--{count}` (tasks, tickets) a
    run has, unset: the script's default; `--{pool}` (workers, agents) serving them; the
    seeds."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small run, for the smoke test")
    parser.add_argument("--out", type=Path, default=out)
    parser.add_argument(f"--{count}", type=int, default=None, help=f"{count} per run")
    parser.add_argument(f"--{pool}", type=int, default=16)
    parser.add_argument("--train-seed", type=int, default=1)
    parser.add_argument("--eval-seed", type=int, default=2026, help="the first seed")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per scenario")
    return parser.parse_args(argv)


def per_seed(result: dict[str, Any], policy: str, key: str) -> np.ndarray:
    """One figure of one policy in a scenario's result, seed by seed."""
    return np.array([run[key] for run in result["policies"][policy]["per_seed"]])


def policy_table(name: str, result: dict[str, Any], columns: Sequence[tuple[str, str, str]]) -> str:
    """A scenario's result, a row a policy: the mean over seeds and, where the result keeps
    it and there are several seeds, the worst seed in brackets."""
    spec, seeds = result["spec"], result["seeds"]
    worst = all("worst" in s for s in result["policies"].values())
    lines = [
        f"\n{name}: " + ", ".join(f"{k} {v}" for k, v in spec.items()) + f"; mean over seeds "
        f"{seeds[0]}-{seeds[-1]}" + (" (worst seed in brackets)" if worst else ""),
        "| policy | " + " | ".join(c[1] for c in columns) + " |",
        "| --- |" + " ---: |" * len(columns),
    ]
    for policy, s in result["policies"].items():
        cells = [
            f"{fmt.format(s['mean'][key])} ({fmt.format(s['worst'][key])})"
            if worst and len(seeds) > 1
            else fmt.format(s["mean"][key])
            for key, _, fmt in columns
        ]
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- a database of the benchmark's own -----------------------------------------------------
PG_ADMIN = os.environ.get(
    "AIASSIST_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def postgres_database() -> tuple[str, Any] | None:
    """A new database on the PostgreSQL server of AIASSIST_BENCH_POSTGRES_URL and a function
    that drops it; None (said on the console) if the server cannot be reached."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    try:
        admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        name = f"aiassist_bench_{secrets.token_hex(4)}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        print(f"PostgreSQL unavailable ({type(exc).__name__}): skipped", flush=True)
        return None
    url = make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url, drop


# --- arguments, goals and the results file -------------------------------------------------
def parse_args(
    parser: argparse.ArgumentParser, name: str, full: dict[str, Any], quick: dict[str, Any]
) -> argparse.Namespace:
    """Add the options both scripts take; options left unset get the full or quick size."""
    parser.add_argument("--quick", action="store_true", help="a few seconds (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS / f"{name}.json")
    parser.add_argument("--seed", type=int, default=20240601, help="seed of every input")
    parser.add_argument("--no-http", action="store_true", help="in-process figures only")
    args = parser.parse_args()
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def goal(name: str, target: str, measured: str, met: bool) -> dict[str, Any]:
    return {"goal": name, "target": target, "measured": measured, "met": bool(met)}


def machine_info(packages: Sequence[str]) -> dict[str, Any]:
    """What the figures depend on: cores, CPU, Python, package versions, load at the start."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), "")
    versions: dict[str, str | None] = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    info = {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "packages": versions,
    }
    print(
        f"{info['cpu_count']} cores ({model or '?'}), Python {info['python']}, "
        f"load average {info['load_average_at_start']}",
        flush=True,
    )
    return info


def write_results(
    args: argparse.Namespace,
    name: str,
    started: datetime,
    argv: Sequence[str] | None = None,
    **parts: Any,
) -> None:
    """Write the results file (how it was made first) and print the goals."""
    result = {
        "benchmark": parts.pop("benchmark"),
        "command": shlex.join(
            ["python", f"bench/{name}.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "started_at": started.isoformat(timespec="seconds"),
        "total_seconds": round((datetime.now(UTC) - started).total_seconds(), 1),
        "quick": args.quick,
        "seed": getattr(args, "seed", None),
        "parameters": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    } | parts
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print("\ngoals:")
    for g in result["goals"]:
        mark = "met" if g["met"] else "NOT met"
        print(f"  [{mark}] {g['goal']}: {g['measured']} (target {g['target']})")
    print(f"\nwrote {args.out} in {result['total_seconds']} s")
