"""Faults under load: what an SDK caller sees while the service is killed, frozen, or
started without its database.

    python bench/faults.py            # about 3 minutes: bench/results/faults.json
    python bench/faults.py --quick    # about 20 seconds, for the smoke test

One thread calls `AIAssistService(mode="remote").decide("reference", ...)` at a fixed rate
against the real service (a child process on SQLite), timing every call and counting the
exceptions that reach the caller (goal: none) and the answers the SDK made itself because
the service could not (`fallback_reason` one of the SDK's). After a quiet baseline, three
faults follow each other, each followed by a recovery phase:

- **SIGKILL**: the service is killed and started again at once; the fault ends when the new
  process answers /healthz (what a supervisor does; the restart time is reported too).
- **SIGSTOP**: the process is frozen for the fault's length, then resumed (SIGCONT).
- **database unreachable**: the service is restarted with its database URL pointing at a
  closed port, left so for the fault's length, then restarted with its database.

For each: the caller's p99 from the fault's start to recovery (goal: at most the SDK
timeout + 1 ms) and the time from the fault's end to the first answer the service made
again (goal: at most 2 s, with the breaker's recovery time set to 1 s).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import (
    MODULE,
    Service,
    feature_dicts,
    goal,
    machine_info,
    parse_args,
    show,
    spawn,
    stop,
    summarize,
    write_results,
)
from aiassist import AIAssistService
from aiassist.settings import Settings

PACKAGES = ["aiassist", "httpx", "circuitbreaker", "uvicorn"]
SDK_REASONS = {"breaker_open", "timeout", "unreachable", "service_error", "bad_response"}
UNREACHABLE_DB = "postgresql+psycopg://postgres@127.0.0.1:9/aiassist?connect_timeout=1"


@dataclass
class Call:
    at: float  # monotonic start
    ns: int
    served: bool  # the service answered (not the SDK's own fallback)
    error: str | None = None


@dataclass
class Load:
    """Decisions at a fixed rate until stopped; every call recorded."""

    sdk: AIAssistService
    rate: float
    calls: list[Call] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def run(self, features: list[dict[str, float]]) -> None:
        started, i = time.monotonic(), 0
        while not self.done.is_set():
            wait = started + i / self.rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # pacing the client, not awaiting the server
            at, t0 = time.monotonic(), time.perf_counter_ns()
            try:
                d = self.sdk.decide(MODULE, features[i % len(features)])
                call = Call(at, time.perf_counter_ns() - t0, d.fallback_reason not in SDK_REASONS)
            except Exception as exc:  # what the caller would see: the goal is none
                call = Call(at, time.perf_counter_ns() - t0, False, type(exc).__name__)
            self.calls.append(call)
            i += 1

    def between(self, start: float, end: float) -> list[Call]:
        return [c for c in self.calls if start <= c.at < end]

    def first_served_after(self, moment: float) -> float | None:
        return next((c.at - moment for c in self.calls if c.at >= moment and c.served), None)


def _settle(load: Load, seconds: float) -> None:
    load.done.wait(seconds)  # the load runs meanwhile; nothing to await but time


def _phase(load: Load, name: str, start: float, end: float) -> dict[str, Any]:
    """Figures of one fault: from its start until the load recovered (or until now)."""
    recovered_after = load.first_served_after(end)
    until = end + recovered_after if recovered_after is not None else time.monotonic()
    calls = [c for c in load.calls if start <= c.at <= until]
    stats = summarize((c.ns for c in calls), "ms")
    out = {
        "fault_seconds": round(end - start, 3),
        "calls": len(calls),
        "caller_exceptions": Counter(c.error for c in calls if c.error),
        "sdk_fallbacks": sum(not c.served and not c.error for c in calls),
        "served_during_fault": sum(c.served for c in load.between(start, end)),
        "served": sum(c.served for c in calls),
        "latency": stats,
        "recovered_after_s": None if recovered_after is None else round(recovered_after, 3),
    }
    show(name, stats, "ms", f"fallbacks {out['sdk_fallbacks']}  recovered {recovered_after}")
    return out


def run_faults(args: argparse.Namespace, tmp: Path) -> tuple[dict[str, Any], int]:
    with Service(tmp / "service", scope="decide") as service:
        sdk = AIAssistService(
            Settings(
                mode="remote",
                service_url=service.url,
                api_key=service.token,
                timeout_ms=args.timeout_ms,
                breaker_recovery_seconds=args.breaker_recovery_s,
                data_dir=tmp / "sdk",
            )
        )
        load = Load(sdk, args.rate)
        thread = threading.Thread(target=load.run, args=(feature_dicts(args.seed),), daemon=True)
        argv = [sys.executable, "-m", "aiassist", "serve", "--port", str(service.port)]
        phases: dict[str, Any] = {}
        thread.start()
        try:
            t0 = time.monotonic()
            _settle(load, args.baseline_s)
            phases["baseline"] = _phase(load, "baseline", t0, time.monotonic())

            start = time.monotonic()
            service.proc.send_signal(signal.SIGKILL)
            service.proc.wait()
            service.proc = spawn(argv, service.env, service.data_dir, service.url)
            end = time.monotonic()
            _settle(load, args.recovery_s)
            phases["sigkill"] = _phase(load, "SIGKILL, restarted", start, end)
            phases["sigkill"]["restart_s"] = round(end - start, 3)

            start = time.monotonic()
            service.proc.send_signal(signal.SIGSTOP)
            _settle(load, args.fault_s)
            service.proc.send_signal(signal.SIGCONT)
            end = time.monotonic()
            _settle(load, args.recovery_s)
            phases["sigstop"] = _phase(load, "SIGSTOP, resumed", start, end)

            start = time.monotonic()
            stop(service.proc)
            env = service.env | {"AIASSIST_DATABASE_URL": UNREACHABLE_DB}
            log = (service.data_dir / "server-nodb.log").open("wb")
            broken = subprocess.Popen(argv, env=env, cwd=service.data_dir, stdout=log, stderr=log)
            _settle(load, args.fault_s)
            phases["db_unreachable"] = {"service_exit_code": broken.poll()}
            stop(broken)
            log.close()
            service.proc = spawn(argv, service.env, service.data_dir, service.url)
            end = time.monotonic()
            _settle(load, args.recovery_s)
            phases["db_unreachable"] |= _phase(load, "database unreachable, restored", start, end)
        finally:
            load.done.set()
            thread.join(10)
            sdk.close()
    return phases, len(load.calls)


def goals(args: argparse.Namespace, phases: dict[str, Any]) -> list[dict[str, Any]]:
    bound = args.timeout_ms + 1
    out = []
    raised = sum(sum(p["caller_exceptions"].values()) for p in phases.values())
    out.append(goal("caller-visible exceptions, all faults", "0", str(raised), raised == 0))
    for key, label in (
        ("sigkill", "SIGKILL"),
        ("sigstop", "SIGSTOP 10 s" if not args.quick else "SIGSTOP"),
        ("db_unreachable", "database unreachable"),
    ):
        p99 = phases[key]["latency"].get("p99_ms", float("inf"))
        out.append(
            goal(f"caller p99 during {label}", f"<= {bound:g} ms", f"{p99} ms", p99 <= bound)
        )
        rec = phases[key]["recovered_after_s"]
        out.append(
            goal(
                f"recovery after {label} ends",
                "<= 2 s",
                "never" if rec is None else f"{rec} s",
                rec is not None and rec <= 2.0,
            )
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rate", type=float, help="decisions per second [300; quick 200]")
    p.add_argument("--baseline-s", type=float, help="quiet phase [20; quick 1]")
    p.add_argument("--fault-s", type=float, help="SIGSTOP and no-database length [10; quick 1]")
    p.add_argument("--recovery-s", type=float, help="load after each fault [20; quick 2.5]")
    p.add_argument("--timeout-ms", type=float, default=50.0, help="the SDK's timeout [50]")
    p.add_argument("--breaker-recovery-s", type=float, default=1.0, help="open breaker [1]")
    full = {"rate": 300.0, "baseline_s": 20.0, "fault_s": 10.0, "recovery_s": 20.0}
    quick = {"rate": 200.0, "baseline_s": 1.0, "fault_s": 1.0, "recovery_s": 2.5}
    args = parse_args(p, "faults", full, quick)
    started = datetime.now(UTC)
    info = machine_info(PACKAGES)
    with tempfile.TemporaryDirectory(prefix="aiassist-bench-faults-") as tmp:
        phases, total_calls = run_faults(args, Path(tmp))
    write_results(
        args,
        "faults",
        started,
        benchmark="faults under load",
        machine=info,
        total_calls=total_calls,
        phases=phases,
        goals=goals(args, phases),
    )


if __name__ == "__main__":
    main()
