"""The `priority` module: its rule, its simulator, its trainer, and the simulate endpoint
over real HTTP (SQLite only: the simulation touches no table)."""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from aiassist import AIAssistService
from aiassist.metrics import Metrics
from aiassist.modules.priority import (
    PriorityFeatures,
    PriorityModule,
    PrioritySettings,
    Scoring,
    TaskQueue,
    module,
    order_key,
)
from aiassist.modules.priority.simulator import (
    CLUSTER_CLASSES,
    EDF,
    FIFO,
    GeneratorSpec,
    LeastSlack,
    ModulePolicy,
    StaticLevels,
    cluster,
    flood,
    generate,
    simulate,
    summarize,
)
from aiassist.registry.serving import OnnxPredictor, load_checked
from aiassist.registry.store import ModelRegistry
from aiassist.settings import Settings

from .conftest import LiveServer, Tokens, model_daemon, wait_for

BASE: dict[str, Any] = module.example | {"age_s": 0}


def decide(**changes: Any) -> Any:
    return module.fallback(PriorityFeatures(**(BASE | changes)))


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    """SQLite only (overrides conftest's two databases): nothing here is about storage."""
    return sqlite_url


# --- the rule ----------------------------------------------------------------------------
def test_tighter_slack_means_higher_priority() -> None:
    deadlines = [60, 300, 600, 1200, 3600, 86_400]
    decisions = [decide(deadline_in_s=d) for d in deadlines]
    p_miss = [d.p_miss for d in decisions]
    priority = [d.priority for d in decisions]
    assert p_miss == sorted(p_miss, reverse=True) and p_miss[0] > 0.5 > p_miss[-1]
    assert priority == sorted(priority, reverse=True) and priority[0] > priority[-1]
    boost = [d.boost_s for d in decisions]
    assert boost == sorted(boost, reverse=True)
    # Already late ranks above merely close; no deadline ranks last, with deadlines beyond
    # the horizon.
    assert decide(deadline_in_s=-10).priority >= decide(deadline_in_s=60).priority
    assert decide(deadline_in_s=None).priority == priority[-1] < priority[-2]
    assert decide(deadline_in_s=600).latest_start_s == 600 - 240 * 1.6
    assert decide(deadline_in_s=None).latest_start_s is None


def test_weight_gives_a_capped_head_start_that_the_settings_tune() -> None:
    weights = [0, 0.5, 1, 3, 10, 100]
    boosts = [decide(business_weight=w, deadline_in_s=None).boost_s for w in weights]
    scoring = module.scoring
    expected = [min(scoring.weight_s * math.log1p(w), scoring.weight_cap_s) for w in weights]
    assert boosts == pytest.approx(expected)
    assert boosts[-1] == scoring.weight_cap_s < scoring.weight_s * math.log1p(100)
    assert Scoring() == Scoring.from_settings(PrioritySettings())  # the same defaults
    tuned = Scoring.from_settings(PrioritySettings(weight_s=10, rescue_s=5))
    assert (tuned.weight_s, tuned.rescue_s, tuned.horizon_s) == (10, 5, scoring.horizon_s)
    f = PriorityFeatures(**(BASE | {"business_weight": 3, "deadline_in_s": None}))
    assert PriorityModule(tuned).fallback(f).boost_s == pytest.approx(10 * math.log(4))
    assert 0 < decide(age_s=10**6).priority == 1.0


def test_weight_and_age_raise_priority_and_order_key_agrees() -> None:
    assert decide(business_weight=8).priority > decide(business_weight=1).priority
    assert decide(deadline_in_s=None).p_miss == 0.0
    # Aging: a waiting task's priority rises until it passes a fresh, more urgent one ...
    urgent, patient = decide(business_weight=8), decide(business_weight=0.5, deadline_in_s=None)
    waited = urgent.boost_s - patient.boost_s + 1
    old = decide(business_weight=0.5, deadline_in_s=None, age_s=waited)
    assert old.priority > urgent.priority
    # ... exactly when order_key (fixed at enqueue) says it goes first.
    assert order_key(0.0, patient) < order_key(waited, urgent)
    assert 0 <= urgent.broker_priority <= 9 and urgent.explanation.startswith("rule:")


# --- the queue -----------------------------------------------------------------------------
def test_the_queue_orders_by_priority_and_rescues_a_deadline_it_can_still_keep() -> None:
    queue: TaskQueue[str] = TaskQueue(rescue_s=10, bound_s=1000)
    queue.push("important", 0.0, boost_s=500, latest_start_s=None)
    queue.push("due-soon", 0.0, boost_s=0, latest_start_s=15)
    queue.push("too-late", 0.0, boost_s=100, latest_start_s=1)
    queue.push("routine", 0.0, boost_s=0, latest_start_s=None)
    assert len(queue) == 4 and set(queue) == {"important", "due-soon", "too-late", "routine"}
    # At t=2: nothing is due within 10 s but "too-late", which is past saving.
    assert queue.pop(2.0) == "important"
    # At t=6 "due-soon" must start within 9 s: rescued ahead of "too-late".
    assert queue.pop(6.0) == "due-soon" and queue.rescued == 1
    assert [queue.pop(7.0), queue.pop(7.0)] == ["too-late", "routine"]
    assert len(queue) == 0
    with pytest.raises(IndexError):
        queue.pop(8.0)


def test_the_rescue_takes_the_earliest_deadline_among_the_tasks_that_need_it() -> None:
    queue: TaskQueue[str] = TaskQueue(rescue_s=60, bound_s=1000)
    queue.push("routine", 0.0, boost_s=10, latest_start_s=None)
    queue.push("long", 0.0, boost_s=0, latest_start_s=20, deadline_s=80)  # 60 s of work
    queue.push("short", 0.0, boost_s=0, latest_start_s=45, deadline_s=50)
    queue.push("later", 0.0, boost_s=0, latest_start_s=90, deadline_s=95)  # not due yet
    # Both "long" and "short" must start within 60 s: the earlier deadline goes first.
    assert [queue.pop(1.0), queue.pop(2.0)] == ["short", "long"] and queue.rescued == 2
    assert [queue.pop(3.0), queue.pop(40.0)] == ["routine", "later"]


def test_the_rescue_yields_to_a_task_far_more_important_than_the_one_it_saves() -> None:
    queue: TaskQueue[str] = TaskQueue(rescue_s=60, bound_s=10_000, gap_s=1000)
    queue.push("vip", 0.0, boost_s=2600, latest_start_s=None, weight_boost_s=2500)
    queue.push("peer", 0.0, boost_s=1300, latest_start_s=None, weight_boost_s=1200)
    queue.push("due", 0.0, boost_s=600, latest_start_s=30, weight_boost_s=500)
    # 2500 - 500 > 1000: "vip" first; 1200 - 500 <= 1000: "due" is rescued before "peer".
    assert [queue.pop(1.0), queue.pop(1.0), queue.pop(1.0)] == ["vip", "due", "peer"]
    # The module's decisions carry the weight head start the gap compares.
    d = decide(business_weight=3, deadline_in_s=600)
    assert d.weight_boost_s == pytest.approx(module.scoring.weight_s * math.log(4))
    assert module.scoring.rescue_gap_s == PrioritySettings().rescue_gap_s == 1500


def test_head_starts_grow_with_the_waits_and_aged_work_keeps_a_share() -> None:
    fixed, scaled = (TaskQueue[str](rescue_s=0, bound_s=1000, wait_scale=w) for w in (0, 8))
    for queue in (fixed, scaled):
        for i in range(64):  # a backlog: starts that waited 2000 s, twice the bound
            queue.push(f"backlog-{i}", 0.0, boost_s=0, latest_start_s=None)
        assert len({queue.pop(2000.0) for _ in range(64)}) == 64
        queue.push("routine", 3000.0, boost_s=0, latest_start_s=None)
        for i in range(8):
            queue.push(f"important-{i}", 3500.0, boost_s=400, latest_start_s=None)
    assert fixed.scale == 1 and scaled.scale == 8 * 2000 / 1000
    # In fixed seconds the routine task, 500 s older, beats a head start of 400 s.
    assert fixed.pop(3600.0) == "routine"
    # Scaled to the waits the head start is 6400 s: the important tasks go first ...
    assert [scaled.pop(3600.0) for _ in range(3)] == [f"important-{i}" for i in range(3)]
    # ... until the routine task has waited out the bound: then one start in four is its.
    started = [scaled.pop(4100.0) for _ in range(4)]
    assert started == ["important-3", "important-4", "important-5", "routine"]
    with pytest.raises(ValueError, match="wait_scale"):
        TaskQueue[str](rescue_s=0, bound_s=1, wait_scale=-1)


def test_cluster_traffic_has_the_load_and_the_classes_it_is_asked_for() -> None:
    traffic = cluster(7, days=4.0, load=0.9)
    again = cluster(7, days=4.0, load=0.9)
    assert np.array_equal(traffic.arrival, again.arrival)  # seeded
    span = 4 * 86_400.0
    assert traffic.arrival.max() < span
    offered = traffic.true_base.sum() / (traffic.workers * span)
    assert offered == pytest.approx(0.9, rel=0.15)  # heavy tails: a few day-long tasks
    assert traffic.true_base.min() >= 1 and traffic.true_base.max() <= 86_400
    for weight, level, share, sla_h in CLUSTER_CLASSES:  # importance constant in a class
        members = traffic.level == level
        assert set(traffic.weight[members]) == {weight}
        assert members.mean() == pytest.approx(share, abs=0.03)
        slack = traffic.deadline[members] - traffic.arrival[members]
        if sla_h is None:
            assert np.isnan(slack).all()
        else:
            assert (slack >= 0.5 * sla_h * 3600).all() and (slack <= 1.5 * sla_h * 3600).all()


def test_the_rescue_cannot_starve_a_task_that_waited_out_the_bound() -> None:
    queue: TaskQueue[str] = TaskQueue(rescue_s=100, bound_s=50)
    queue.push("old", 0.0, boost_s=0, latest_start_s=None)
    for i in range(8):  # urgent tasks keep coming, each due within the rescue window
        queue.push(f"urgent-{i}", 1.0 + i, boost_s=0, latest_start_s=90)
    assert [queue.pop(10.0) for _ in range(2)] == ["urgent-0", "urgent-1"]
    started = [queue.pop(60.0) for _ in range(4)]  # "old" has waited 60 s > 50 s
    assert started == ["urgent-2", "urgent-3", "urgent-4", "old"]  # one start in four
    # Boosts are capped at the bound: a task 50 s younger never overtakes.
    capped: TaskQueue[str] = TaskQueue(rescue_s=0, bound_s=50)
    capped.push("first", 0.0, boost_s=0, latest_start_s=None)
    capped.push("boosted", 51.0, boost_s=10**6, latest_start_s=None)
    assert capped.pop(60.0) == "first"


# --- the simulator -----------------------------------------------------------------------
SPEC = GeneratorSpec(tasks=1500, workers=4, load=0.9, burstiness=4, anomaly_share=0.3, seed=11)


def test_the_simulator_is_deterministic_for_a_seed() -> None:
    a, b = generate(SPEC), generate(SPEC)
    assert np.array_equal(a.arrival, b.arrival) and np.array_equal(a.true_base, b.true_base)
    assert a.storms == b.storms and a.task_type == b.task_type
    assert not np.array_equal(a.arrival, generate(SPEC.model_copy(update={"seed": 12})).arrival)
    for policy in (FIFO(), StaticLevels(), EDF(), LeastSlack(), ModulePolicy()):
        first, again = summarize(a, simulate(a, policy)), summarize(b, simulate(b, policy))
        assert first == again, policy.name
        assert first["tasks"] == 1500 and first["throughput_per_min"] > 0


def test_every_task_runs_once_and_policies_differ_where_expected() -> None:
    traffic = generate(SPEC)
    runs = {p.name: simulate(traffic, p) for p in (FIFO(), StaticLevels(), ModulePolicy())}
    for run in runs.values():
        assert not np.isnan(run.start).any() and (run.start >= traffic.arrival).all()
        busy = sorted(zip(run.start, run.finish, run.worker, strict=True), key=lambda r: r[0])
        last_end: dict[int, float] = {}
        for start, finish, w in busy:  # a worker runs one task at a time
            assert start >= last_end.get(int(w), -math.inf) - 1e-9
            last_end[int(w)] = finish
    fifo_wait = runs["fifo"].wait(traffic)
    assert (np.diff(runs["fifo"].start) >= -1e-9).all()  # FIFO starts in arrival order
    high = traffic.high
    assert runs["module"].wait(traffic)[high].mean() < fifo_wait[high].mean()


def test_a_flood_starves_the_reports_under_static_levels_but_not_under_the_module() -> None:
    traffic = flood(4, workers=4, hours=3.0)
    assert (np.diff(traffic.arrival) >= 0).all() and traffic.arrival[-1] < 10_800
    reports = np.isnan(traffic.deadline)
    assert set(np.array(traffic.task_type)[reports]) == {"report_export"}
    work = traffic.true_base.sum() / (4 * 10_800)  # offered load, both parts
    assert 1.05 < work < 1.3, work
    assert flood(4, workers=4, hours=3.0).task_type == traffic.task_type  # seeded
    # A bound of 1,860 s (the default is 10,860 s) so that three hours show it.
    scoring = Scoring(horizon_s=900, weight_s=300, weight_cap_s=900, risk_s=60)
    module_policy = ModulePolicy(PriorityModule(scoring).fallback, scoring=scoring)
    waits = {}
    for policy in (StaticLevels(), EDF(), module_policy):
        run = simulate(traffic, policy)
        started_in_flood = run.start[reports] < 10_800
        waits[policy.name] = run.wait(traffic)[reports].max()
        if policy is module_policy:
            assert started_in_flood.mean() > 0.5
        else:  # deliveries always wait, so reports run only when the flood is over
            assert started_in_flood.mean() < 0.1, policy.name
    assert waits["module"] < 0.5 * min(waits["static"], waits["edf"]), waits


# --- the trainer -------------------------------------------------------------------------
@cache
def trained(seed: int = 5) -> tuple[Any, Any]:
    from aiassist.modules.priority.training import trainer

    return trainer, trainer.fit(trainer.synthetic(8000, seed), seed)


def test_trained_model_passes_the_serving_checks_and_beats_the_rule(tmp_path: Path) -> None:
    trainer, exported = trained()
    registry = ModelRegistry(tmp_path)
    manifest = exported.publish(registry, module)
    predictor = load_checked(registry, module, manifest.version, latency_budget_us=1000)
    held = trainer.synthetic(3000, seed=99)
    features = [PriorityFeatures.model_validate(f.model_dump()) for f in held.features]
    outputs = predictor.predict([module.encode(f) for f in features])
    model_scores = [module.decode(f, o).p_miss for f, o in zip(features, outputs, strict=True)]
    rule_scores = [module.fallback(f).p_miss for f in features]
    q_model = trainer.quality(held.y, np.array(model_scores))
    q_rule = trainer.quality(held.y, np.array(rule_scores))
    assert q_model > q_rule + 0.01, (q_model, q_rule)


def test_the_daemon_bootstraps_priority_from_its_simulator(settings: Settings) -> None:
    daemon = model_daemon(settings, module)
    try:
        result = daemon.train("priority", synthetic=True, rows=5000, reason="test")
    finally:
        daemon.db.dispose()
    assert result.action == "promoted" and result.baseline == "fallback", result.reason
    assert daemon.registry.resolve("priority", "stable") == result.version


def test_the_daemon_retrains_priority_from_recorded_outcomes(settings: Settings) -> None:
    """Tasks that really run 1.8x longer than estimated (a slowdown nobody reports): the
    outcomes recorded through the service (local mode) show more misses than the simulator
    predicts, and the model retrained on them is better calibrated, promoted, and served by
    the same service without a restart."""
    settings = settings.model_copy(
        update={"retrain_min_outcomes": 600, "min_train_rows": 100, "model_poll_seconds": 0.1}
    )
    daemon = model_daemon(settings, module)
    assert daemon.maybe_train("priority").action == "promoted"  # v0001: the simulator
    service = AIAssistService(settings, metrics=Metrics(CollectorRegistry()))
    try:
        traffic = generate(GeneratorSpec(tasks=1500, workers=4, load=0.8, seed=21))
        traffic.true_base *= 1.8
        run = simulate(traffic, FIFO(), record_features=True)
        missed, rows = run.missed(traffic), np.flatnonzero(~np.isnan(traffic.deadline))
        assert 0.05 < missed[rows].mean() < 0.95  # both labels occur
        decisions = service.decide_many("priority", [run.features[i] for i in rows])
        assert {(d.source, d.model_version) for d in decisions} == {("model", "v0001")}
        for i, decision in zip(rows, decisions, strict=True):
            outcome = {"waited_s": float(run.start[i] - traffic.arrival[i]),
                       "ran_s": float(run.finish[i] - run.start[i]),
                       "deadline_met": not missed[i]}  # fmt: skip
            assert service.record_outcome("priority", decision.decision_id, outcome)
        assert service._store is not None
        service._store.flush()
        result = daemon.maybe_train("priority")
        assert (result.action, result.version, result.baseline) == ("promoted", "v0002", "v0001")
        assert result.candidate_quality > result.baseline_quality  # type: ignore[operator]
        training = daemon.registry.manifest("priority", "v0002").training
        assert training is not None and training.source == "outcomes"
        wait_for(lambda: service.decider.served_version("priority") == "v0002")
        assert service.decide("priority", run.features[rows[0]]).model_version == "v0002"
    finally:
        service.close()
        daemon.db.dispose()


# --- over HTTP ---------------------------------------------------------------------------
@pytest.fixture
def client(live_server: LiveServer):  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=live_server.url, timeout=30) as c:
        yield c


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"business_weight": 1000}, "business_weight"),
        ({"anomaly": 0}, "anomaly"),
        ({"workers": 0}, "workers"),
        ({"task_type": "has spaces"}, "task_type"),
        ({"deadline_in_s": 1e12}, "deadline_in_s"),
        ({"priority": 3}, "priority"),
    ],
)
def test_bad_features_are_422_naming_the_field(
    client: httpx.Client, tokens: Tokens, change: dict[str, Any], field: str
) -> None:
    body = {"features": BASE | change}
    response = client.post("/v1/priority/decide", json=body, headers=tokens.header())
    assert response.status_code == 422
    assert any(e["loc"] == ["body", "features", field] for e in response.json()["detail"])


def test_decide_over_http(client: httpx.Client, tokens: Tokens) -> None:
    response = client.post("/v1/priority/decide", json={"features": BASE}, headers=tokens.header())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["source"] == "fallback" and 0 <= body["priority"] <= 1 and body["boost_s"] >= 0


GENERATE = {"generate": {"tasks": 800, "workers": 4, "seed": 3}, "show": 10}


def test_simulate_generated_traffic(client: httpx.Client, tokens: Tokens) -> None:
    response = client.post("/v1/priority/simulate", json=GENERATE, headers=tokens.header("decide"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["served_by"], body["model_version"]) == ("fallback", None)
    assert (body["tasks"], body["workers"]) == (800, 4) and body["high_tasks"] > 0
    assert set(body["summary"]) == {"model", "fifo", "static"}
    for summary in body["summary"].values():
        assert summary["mean_wait_s"] >= 0 and 0 <= summary["deadline_miss_pct"] <= 100
    rows = body["allocation"]
    assert [r["index"] for r in rows] == list(range(10))
    for row in rows:
        for policy in ("model", "fifo", "static"):
            slot = row[policy]
            assert 0 <= slot["worker"] < 4 and slot["wait_s"] >= 0
            assert math.isclose(slot["start_s"] - row["arrival_s"], slot["wait_s"], abs_tol=0.01)
    again = client.post("/v1/priority/simulate", json=GENERATE, headers=tokens.header()).json()
    assert again["summary"] == body["summary"]  # seeded


def test_simulate_listed_tasks_under_the_served_model(
    client: httpx.Client, tokens: Tokens, live_server: LiveServer, tmp_path: Path
) -> None:
    tasks = [
        {"arrival_s": 0, "task_type": "report_export", "est_duration_s": 60,
         "business_weight": 0.3},
        {"arrival_s": 1, "task_type": "refund_review", "deadline_in_s": 3000,
         "est_duration_s": 40, "business_weight": 0.8},
        {"arrival_s": 2, "task_type": "dispatch_express", "deadline_in_s": 90,
         "est_duration_s": 20, "business_weight": 5, "static_level": 6},
        {"arrival_s": 3, "task_type": "customer_notify", "deadline_in_s": 200,
         "est_duration_s": 5, "business_weight": 0.5, "true_duration_s": 9},
    ]  # fmt: skip
    _, exported = trained()
    registry = ModelRegistry(tmp_path)
    version = exported.publish(registry, module).version
    engine = live_server.state.decider
    engine.load("priority", OnnxPredictor(registry.version_dir("priority", version) /
                "model.onnx", registry.manifest("priority", version)))  # fmt: skip
    body = {"tasks": tasks, "workers": 1}
    response = client.post("/v1/priority/simulate", json=body, headers=tokens.header())
    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["served_by"], result["model_version"]) == ("model", version)
    rows = {r["index"]: r for r in result["allocation"]}
    assert sorted(rows) == [0, 1, 2, 3] and rows[2]["static_level"] == 6
    assert rows[0]["static_level"] == 0 and rows[3]["static_level"] == 3  # from the type
    # One worker, busy with the report: the express dispatch jumps the queue under the model
    # and meets its deadline; FIFO runs the refund first and the dispatch misses.
    assert (rows[2]["model"]["start_s"], rows[2]["model"]["missed"]) == (60, False)
    assert (rows[2]["fifo"]["start_s"], rows[2]["fifo"]["missed"]) == (100, True)
    assert rows[0]["model"]["missed"] is None  # no deadline
    # The private engine of the simulation recorded nothing as a real decision.
    metrics: Metrics = live_server.state.metrics
    assert (
        metrics.registry.get_sample_value(
            "aiassist_decisions_total", {"module": "priority", "source": "model"}
        )
        is None
    )


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"generate": {"tasks": 100_000}}, ["body", "generate", "tasks"]),
        ({"generate": {"load": 5}}, ["body", "generate", "load"]),
        ({"generate": {"workers": 0}}, ["body", "generate", "workers"]),
        ({"generate": {"seed": -1}}, ["body", "generate", "seed"]),
        ({"generate": {"colour": "red"}}, ["body", "generate", "colour"]),
        ({}, ["body"]),
        ({"generate": {}, "tasks": [{"arrival_s": 0}]}, ["body"]),
        ({"generate": {}, "workers": 3}, ["body"]),
        ({"tasks": []}, ["body", "tasks"]),
        ({"tasks": [{"arrival_s": 0}] * 2001}, ["body", "tasks"]),
        ({"tasks": [{"arrival_s": -1}]}, ["body", "tasks", 0, "arrival_s"]),
        ({"tasks": [{"arrival_s": 0, "queue_length": 3}]}, ["body", "tasks", 0, "queue_length"]),
    ],
)
def test_bad_simulation_specs_are_422(
    client: httpx.Client, tokens: Tokens, body: dict[str, Any], loc: list[Any]
) -> None:
    response = client.post("/v1/priority/simulate", json=body, headers=tokens.header())
    assert response.status_code == 422
    assert any(e["loc"] == loc for e in response.json()["detail"]), response.json()


def test_simulate_needs_a_key_with_the_decide_scope(client: httpx.Client, tokens: Tokens) -> None:
    assert client.post("/v1/priority/simulate", json=GENERATE).status_code == 401
    refused = client.post("/v1/priority/simulate", json=GENERATE, headers=tokens.header("outcome"))
    assert refused.status_code == 403
    assert "/v1/priority/simulate" in client.get("/openapi.json").json()["paths"]
