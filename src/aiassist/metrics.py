"""Prometheus metrics shared by the SDK, the engine and the inference service."""

from __future__ import annotations

from functools import cache
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics", "default_metrics"]

# Decision latencies are tens of microseconds in-process and about a millisecond over HTTP.
_LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip

# Dispatcher waits range from a millisecond (idle pool) to minutes (an aged backlog).
_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


class Metrics:
    """One set of collectors, bound to one registry (the process default, or an app's own)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.decisions = Counter(
            "aiassist_decisions",
            "Decisions made, by module and by what answered (model or fallback).",
            ["module", "source"],
            registry=registry,
        )
        self.fallbacks = Counter(
            "aiassist_fallbacks",
            "Decisions answered by the rule fallback, by module and reason.",
            ["module", "reason"],
            registry=registry,
        )
        self.outcomes = Counter(
            "aiassist_outcomes", "Outcomes recorded, by module.", ["module"], registry=registry
        )
        self.records_dropped = Counter(
            "aiassist_records_dropped",
            "Decisions not stored because the recording buffer was full.",
            registry=registry,
        )
        self.model_swaps = Counter(
            "aiassist_model_swaps",
            "Model versions swapped in (or unloaded), by module.",
            ["module"],
            registry=registry,
        )
        self.model_refusals = Counter(
            "aiassist_model_refusals",
            "Model versions refused by a serving check, by module and reason.",
            ["module", "reason"],
            registry=registry,
        )
        self.model_tag_moves = Counter(
            "aiassist_model_tag_moves",
            "Tag moves made through this service's admin API, by module, tag and kind "
            "(set or rollback).",
            ["module", "tag", "kind"],
            registry=registry,
        )
        self.dispatch_depth = Gauge(
            "aiassist_dispatch_queue_depth",
            "Tasks waiting in a priority dispatcher's queue.",
            ["dispatcher"],
            registry=registry,
        )
        self.dispatch_waits = Histogram(
            "aiassist_dispatch_wait_seconds",
            "Seconds from submit to start, by dispatcher and broker priority (0-9).",
            ["dispatcher", "priority"],
            buckets=_WAIT_BUCKETS,
            registry=registry,
        )
        self.dispatch_tasks = Counter(
            "aiassist_dispatch_tasks",
            "Tasks a priority dispatcher finished, by status (ok, error, cancelled).",
            ["dispatcher", "status"],
            registry=registry,
        )
        self.retry_verdicts = Counter(
            "aiassist_retry_verdicts",
            "Failed calls by downstream and what the retry policy did: retry, declined "
            "(P(recovery) too low), budget (retry budget spent), attempts, deadline, permanent.",
            ["downstream", "verdict"],
            registry=registry,
        )
        self.request_latency = Histogram(
            "aiassist_http_request_duration_seconds",
            "Inference service request latency, by route and status.",
            ["method", "route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        # --- API drift guard -------------------------------------------------------------
        self.drift_observations = Counter(
            "aiassist_drift_observations",
            "Requests the drift guard profiled (after sampling), by requested API version.",
            ["version"],
            registry=registry,
        )
        self.drift_dropped = Counter(
            "aiassist_drift_dropped",
            "Sampled requests not profiled because the guard's queue was full.",
            registry=registry,
        )
        self.drift_incidents = Counter(
            "aiassist_drift_incidents",
            "Drifts detected, by API version, severity and action (rolled_back or alerted).",
            ["version", "severity", "action"],
            registry=registry,
        )
        self.drift_rerouted = Counter(
            "aiassist_drift_rerouted",
            "Requests served by another API version than they asked for, by version and target.",
            ["version", "target"],
            registry=registry,
        )
        self.drift_routes = Gauge(
            "aiassist_drift_routes",
            "API versions currently switched to another version.",
            registry=registry,
        )
        self.drift_alerts = Counter(
            "aiassist_drift_alerts",
            "Drift webhook alerts, by outcome (sent, failed, dropped).",
            ["outcome"],
            registry=registry,
        )
        self.anomaly_lines = Counter(
            "aiassist_anomaly_lines",
            "Log lines taken by the anomaly detectors, by source and outcome (scored; bad: "
            "not a log line; dropped: the logging handler's queue was full).",
            ["source", "outcome"],
            registry=registry,
        )
        self.anomaly_alerts = Counter(
            "aiassist_anomaly_alerts",
            "Windows of a log that alerted, by source.",
            ["source"],
            registry=registry,
        )

        # --- agent runtime ---------------------------------------------------------------
        self.agent_tool_calls = Counter(
            "aiassist_agent_tool_calls",
            "Agent tool calls settled, by tool and status (succeeded, failed, denied, rejected).",
            ["tool", "status"],
            registry=registry,
        )
        self.agent_runs = Counter(
            "aiassist_agent_runs",
            "Agent runs that ended or paused, by status (succeeded, failed, waiting_approval).",
            ["status"],
            registry=registry,
        )
        self.agent_tokens = Counter(
            "aiassist_agent_tokens",
            "Language-model tokens used by agent runs, by provider and kind (input, output).",
            ["provider", "kind"],
            registry=registry,
        )

        # --- automation (flows) ---------------------------------------------------------
        self.flow_runs = Counter(
            "aiassist_flow_runs",
            "Flow runs that ended (dry runs excluded), by flow and status (succeeded, failed).",
            ["flow", "status"],
            registry=registry,
        )
        self.flow_minutes_saved = Counter(
            "aiassist_flow_minutes_saved",
            "Minutes of manual work saved: each succeeded run adds its flow's minutes_saved.",
            ["flow"],
            registry=registry,
        )

    def count_model_event(self, kind: str, module: str, data: dict[str, Any]) -> None:
        """A `ModelWatcher` event (`on_event`): a refused version, or a swap."""
        if kind == "model.refused":
            self.model_refusals.labels(module, data["reason"]).inc()
        else:
            self.model_swaps.labels(module).inc()


@cache
def default_metrics() -> Metrics:
    """Metrics on the process-wide registry, for the SDK inside the user's backend."""
    return Metrics(REGISTRY)
