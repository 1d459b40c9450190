"""Each benchmark runs end to end (`--quick`) and writes a complete results file.

Only the shape of the results and the absence of failures are checked: no timing
thresholds (the figures live in bench/results and docs/benchmarks.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    not Path("/proc/stat").exists(), reason="the benchmarks read CPU time from /proc (Linux)"
)


def _latency(stats: dict[str, Any], unit: str) -> None:
    assert stats["n"] > 0, stats
    assert 0 < stats[f"p50_{unit}"] <= stats[f"p99_{unit}"] <= stats[f"p99_9_{unit}"], stats
    assert stats[f"p99_9_{unit}"] <= stats[f"max_{unit}"], stats


def check_latency(result: dict[str, Any]) -> None:
    inproc = result["in_process"]
    assert len(inproc) == 11
    assert {"priority_fallback", "priority_model"} <= inproc.keys()
    for stats in inproc.values():
        _latency(stats, "us")
    for name in ("service_local_fallback_record", "service_local_onnx_record"):
        stats = inproc[name]
        assert stats["stored"] + stats["dropped"] == stats["decided"], stats
    http = result["http"]
    runs = ["sequential_httpx", "remote_sdk", "sequential_lean", "open_loop_lean",
            "closed_loop_lean", "open_loop_lean_noop_server"]  # fmt: skip
    for name in runs:
        _latency(http[name], "ms")
        assert http[name]["errors"] == {}, (name, http[name]["errors"])
        assert http[name]["client_cpu_us_per_request"] > 0, name
    assert http["open_loop_lean"]["achieved_rate_per_s"] > 0
    assert http["open_loop_lean"]["server_cpu_us_per_request"] > 0


def check_swap(result: dict[str, Any]) -> None:
    assert len(result["trained"]) == 2
    for part, unit in ((result["in_process"], "us"), (result["http"], "ms")):
        assert len(part["versions"]) == 2
        for phase in (part["baseline"], part["under_swaps"]):
            _latency(phase, unit)
            assert phase["failed"] == 0, phase["errors"]
            assert phase["decisions"] == phase["n"] == phase["answered_by_model"], phase
            assert set(phase["versions"]) <= set(part["versions"]), phase["versions"]
        swaps = part["under_swaps"]["swaps"]
        assert swaps["requested"] == swaps["applied"] + swaps["not_applied"] > 0, swaps
        _latency(part["under_swaps"]["overlapping_a_swap"], unit)
        assert part["p99_ratio"] > 0
        assert part["memory"]["rss_before_swaps_mb"] > 0
        assert isinstance(part["memory"]["growth_mb"], float)


def check_agent_overhead(result: dict[str, Any]) -> None:
    for database in ("sqlite", "postgres"):
        for kind in ("noop_read", "noop_write"):
            _latency(result[database][kind]["per_call"], "ms")
            _latency(result[database][kind]["per_model_turn"], "ms")
            _latency(result[database][kind]["per_step"], "ms")
        assert result[database]["p99_ratio_to_audit_append"]["noop_write"] > 0
        assert result[database]["audit_events"] > 0
        for durability in ("sync", "async"):  # LangGraph, side by side on the same database
            _latency(result[database][f"langgraph_{durability}"]["per_step"], "ms")
        assert set(result[database]["per_step_ratio_to_langgraph_sync"]) == {"p50", "p99"}


def check_priority(result: dict[str, Any]) -> None:
    policies = result["scenarios"]["main"]["policies"]
    assert {"fifo", "static", "edf", "least_slack", "model", "fallback"} <= set(policies)
    model = policies["model"]["mean"]
    assert model["model_answers"] == model["tasks"] and model["rescued"] > 0
    assert len(policies["model"]["per_seed"]) == len(result["parameters"]["seeds"]) == 1
    assert "model, no rescue" in policies  # the ablations run on the main scenario
    floods = [name for name, run in result["scenarios"].items() if "hours" in run["spec"]]
    assert len(floods) == 2
    for name in floods:
        for policy in result["scenarios"][name]["policies"].values():
            assert 0 <= policy["mean"]["reports_started_in_flood_pct"] <= 100
    assert "starvation" in result["goals"][2]["goal"]


def check_retry(result: dict[str, Any]) -> None:
    expected = {"no_retry", "exponential_backoff", "backoff_budget_20", "grpc_token_throttle",
                "rule", "learned"}  # fmt: skip
    assert set(result["policies"]) == expected
    assert result["policies"]["no_retry"]["amplification"] == 1.0


def check_audit(result: dict[str, Any]) -> None:
    assert [p["runs"] for p in result["phases"]["per run"]] == [1, 2]
    assert result["verified"]["ok"] and result["verified"]["chains"] > 2


def check_faults(result: dict[str, Any]) -> None:
    phases = result["phases"]
    assert phases["baseline"]["sdk_fallbacks"] == 0, phases["baseline"]
    for fault in ("sigkill", "sigstop", "db_unreachable"):
        _latency(phases[fault]["latency"], "ms")
        assert phases[fault]["sdk_fallbacks"] > 0, (fault, phases[fault])
        assert phases[fault]["caller_exceptions"] == {}, (fault, phases[fault])
    assert result["total_calls"] >= sum(p["calls"] for p in phases.values())


def check_bot(result: dict[str, Any]) -> None:
    answerers = {"ua_rule", "rate_rule", "fallback", "model"}
    for family in ("scraper", "headless", "stuffer", "low_and_slow"):
        for split in ("seen", "unseen"):
            judged = result["families"][family][split]
            assert set(judged) == answerers
            assert all(0 <= row["recall_at_1pct_fpr"] <= 1 for row in judged.values())
    assert set(result["overall"]) == answerers
    _latency(result["per_request"], "us")
    _latency(result["middleware"]["memory"], "us")


def check_sql(result: dict[str, Any]) -> None:
    assert len(result["patterns"]) == 12 and set(result["named"]) <= set(result["patterns"])
    for side in ("analyser", "plain_rule"):
        assert set(result[side]) == {"advised", "recovered", "harmful"}
        assert len(result[side]["recovered"]) <= len(result["dropped"])
    assert all(f["evidence"] for f in result["findings"])
    assert result["distinct"]["statements"] > 0 and result["distinct"]["groups"] > 0


def check_cache(result: dict[str, Any]) -> None:
    policies = {"lru", "last_window_top_k", "ewma_top_k", "model", "ceiling_true_rates"}
    for by_trace in result["results"].values():
        assert set(by_trace) == {"rhythms", "shifting", "events"}
        for runs in by_trace.values():
            assert set(runs) == policies and runs["lru"]["loads"] == 0
            assert all(0 <= r["hit_rate"] <= 1 and r["reads"] > 0 for r in runs.values())


def check_anomaly(result: dict[str, Any]) -> None:
    methods = {"novelty", "pca", "invariants", "deeplog", "rule", "model", "bootstrap"}
    assert set(result["results"]) == {"Apache", "HDFS", "Linux", "OpenSSH", "Thunderbird"}
    for source in result["results"].values():
        assert set(source["methods"]) == methods and 0 < source["faults"] < source["windows"]
        assert all(0 <= m["f1"] <= 1 for m in source["methods"].values())
    assert result["speed"]["lines"] == 10_000
    assert set(result["sequence_model"]["deeplog_f1"]) == set(result["results"])
    assert result["http"]["requests"] > 0 and result["http"]["request_p99_ms"] > 0


def check_metrics(result: dict[str, Any]) -> None:
    methods = result["results"]
    assert set(methods) == {"static", "robust_z", "scorer"}
    for m in methods.values():
        assert m["alerts"] >= m["false_alerts"] >= 0 and 0 <= m["f1"] <= 1
        assert set(m["recall_by_kind"]) == {"spike", "dip", "level shift"}
    assert result["data"]["events"] > 0 and result["speed"]["samples_per_s"] > 0


def check_tickets(result: dict[str, Any]) -> None:
    policies = result["scenarios"]["main"]["policies"]
    expected = {"fifo", "static", "deadline_first", "fallback", "model", "oracle_shortest_first"}
    assert set(policies) == expected
    model = policies["model"]["mean"]
    assert model["model_answers"] == model["tickets"] > 0
    assert all(0 <= p["mean"]["sla_breach_pct"] <= 100 for p in policies.values())
    assert [g["goal"].split(",")[0] for g in result["goals"]] == [
        "mean backlog time", "SLA breaches"
    ]  # fmt: skip
    assert result["training"]["heldout_rows"] > 0 and "available" in result["embedding"]


CHECKS = {
    "latency": check_latency,
    "swap": check_swap,
    "agent_overhead": check_agent_overhead,
    "priority": check_priority,
    "retry": check_retry,
    "audit": check_audit,
    "faults": check_faults,
    "bot": check_bot,
    "sql": check_sql,
    "cache": check_cache,
    "anomaly": check_anomaly,
    "tickets": check_tickets,
    "metrics": check_metrics,
}
#: what these measure on PostgreSQL too (a complete results file has those rows)
ON_POSTGRES = {"agent_overhead", "audit", "sql"}


@pytest.mark.parametrize(
    "script",
    [pytest.param(s, marks=pytest.mark.postgres) if s in ON_POSTGRES else s for s in CHECKS],
)
def test_quick_run_writes_complete_results(script: str, tmp_path: Path) -> None:
    out = tmp_path / f"{script}.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"{script}.py"), "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    if script in ("latency", "swap"):  # the output says client and server share the cores
        assert "SHARE the machine's cores" in done.stdout
    result = json.loads(out.read_text())
    assert result["quick"] is True
    assert result["command"] == f"python bench/{script}.py --quick --out {out}"
    assert result["machine"]["cpu_count"] > 0
    assert result["goals"]
    for goal in result["goals"]:
        assert goal["goal"] and goal["target"] and goal["measured"]
        assert isinstance(goal["met"], bool)
    CHECKS[script](result)
