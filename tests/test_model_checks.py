"""The serving checks on real ONNX models: a version is served only after it passed them all,
and a refused version leaves the previous one serving, visibly (readiness, audit, metrics).

Models are built here with `onnx.helper` (so each defect is exactly the one intended) or
trained with the reference module's trainer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from aiassist.decider import Decider
from aiassist.metrics import Metrics
from aiassist.modules.reference import module
from aiassist.registry.serving import ModelRejected, ModelWatcher, load_checked
from aiassist.registry.store import MODEL_FILE, ModelRegistry
from aiassist.server.app import _model_events
from aiassist.settings import Settings
from aiassist.store.audit import AuditLog
from aiassist.store.db import make_engine, make_sessionmaker
from aiassist.store.models import AuditEvent

from .conftest import LiveServer, Tokens, wait_for

NAME = module.name
BUDGET_US = 1000.0  # the default AIASSIST_MODEL_LATENCY_BUDGET_US, used by live_server too
SLOW_MIN_US = 2 * BUDGET_US  # the slow model must be clearly over the budget


# --- models built from scratch ------------------------------------------------------------
def _model(nodes: list, inits: list, n_in: int = 2, name: str = "test") -> bytes:  # type: ignore[type-arg]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", n_in])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return bytes(model.SerializeToString())


def linear_model(weights: tuple[float, ...] = (4.0, -4.0), bias: float = 0.0) -> bytes:
    """P(act) = sigmoid(w . x + b): with the defaults, sigmoid(4 (signal - threshold))."""
    w = np.asarray(weights, dtype=np.float32).reshape(len(weights), 1)
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.asarray([bias], dtype=np.float32), "b"),
    ]
    nodes = [
        helper.make_node("MatMul", ["input", "w"], ["z0"]),
        helper.make_node("Add", ["z0", "b"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["output"]),
    ]
    return _model(nodes, inits, n_in=len(weights))


def slow_model(width: int = 256, layers: int = 16) -> bytes:
    """Valid outputs in (0, 1), but each row costs `layers` [width x width] matrix products
    (the row's outer product pushed through a chain of MatMul + Tanh): milliseconds."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.1, (2, width)).astype(np.float32), "w_in"),
        numpy_helper.from_array(np.asarray([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.asarray([2], dtype=np.int64), "axis2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["input", "w_in"], ["h"]),
        helper.make_node("Unsqueeze", ["h", "axis2"], ["column"]),
        helper.make_node("Unsqueeze", ["h", "axis1"], ["row"]),
        helper.make_node("MatMul", ["column", "row"], ["t_in"]),  # [N, width, width]
    ]
    previous = "t_in"
    for i in range(layers):
        w = rng.normal(0, 1 / math.sqrt(width), (width, width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [previous, f"w{i}"], [f"p{i}"]))
        nodes.append(helper.make_node("Tanh", [f"p{i}"], [f"t{i}"]))
        previous = f"t{i}"
    nodes += [
        helper.make_node("ReduceMean", [previous], ["mean"], axes=[1, 2], keepdims=0),
        helper.make_node("Unsqueeze", ["mean", "axis1"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["output"]),
    ]
    return _model(nodes, inits, name="slow")


@pytest.fixture(scope="module")
def slow_bytes() -> bytes:
    data = slow_model()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # as served: one thread per session
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    row = np.asarray([[0.82, 0.5]], dtype=np.float32)
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        session.run(None, {"input": row})
        timings.append((time.perf_counter() - start) * 1e6)
    assert min(timings) > SLOW_MIN_US, f"the slow model takes only {min(timings):.0f} µs"
    return data


# --- the defects ---------------------------------------------------------------------------
def publish(registry: ModelRegistry, data: bytes, **overrides: object) -> str:
    fields: dict[str, object] = {
        "feature_names": module.feature_names(),
        "input_name": "input",
        "output_name": "output",
        "n_outputs": 1,
        "framework": "onnx",
    } | overrides
    return registry.publish(NAME, data, **fields).version  # type: ignore[arg-type]


def _corrupted(registry: ModelRegistry, slow: bytes) -> str:
    version = publish(registry, linear_model())
    path = registry.version_dir(NAME, version) / MODEL_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte after publishing (bit rot, a bad copy, tampering)
    path.write_bytes(bytes(data))
    return version


def _missing_file(registry: ModelRegistry, slow: bytes) -> str:
    version = publish(registry, linear_model())
    (registry.version_dir(NAME, version) / MODEL_FILE).unlink()
    return version


def _not_onnx(registry: ModelRegistry, slow: bytes) -> str:
    return publish(registry, b"this is not an ONNX model, but its checksum is right")


def _truncated(registry: ModelRegistry, slow: bytes) -> str:
    data = linear_model()
    return publish(registry, data[: len(data) // 2])


def _other_features(registry: ModelRegistry, slow: bytes) -> str:
    return publish(registry, linear_model(), feature_names=["signal", "limit"])


def _three_columns(registry: ModelRegistry, slow: bytes) -> str:
    return publish(registry, linear_model((4.0, -4.0, 1.0)))


def _wrong_input_name(registry: ModelRegistry, slow: bytes) -> str:
    return publish(registry, linear_model(), input_name="features")


def _nan(registry: ModelRegistry, slow: bytes) -> str:
    return publish(registry, linear_model((math.nan, 1.0)))


def _slow(registry: ModelRegistry, slow: bytes) -> str:
    return publish(registry, slow, framework="onnx-slow")


@dataclass(frozen=True)
class Defect:
    make: Callable[[ModelRegistry, bytes], str]
    reason: str
    detail: str  # a piece of the message that says what exactly was wrong


DEFECTS = {
    "corrupt": Defect(_corrupted, "checksum", "does not match its manifest"),
    "missing": Defect(_missing_file, "checksum", "(missing)"),
    "not-onnx": Defect(_not_onnx, "invalid_onnx", "INVALID_PROTOBUF"),
    "truncated": Defect(_truncated, "invalid_onnx", "INVALID_PROTOBUF"),
    "features": Defect(_other_features, "schema", "['signal', 'limit']"),
    "3-columns": Defect(_three_columns, "schema", "[N, 2]"),
    "input-name": Defect(_wrong_input_name, "schema", "'features'"),
    "nan": Defect(_nan, "output", "NaN"),
    "slow": Defect(_slow, "latency", "over the budget of 1000"),
}


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "models")


# --- load_checked ----------------------------------------------------------------------------
def test_a_good_model_loads_and_decides(registry: ModelRegistry) -> None:
    version = publish(registry, linear_model())
    predictor = load_checked(registry, module, version, latency_budget_us=BUDGET_US)
    assert predictor.version == "v0001"
    out = predictor.predict([[2.0, 0.0], [0.0, 2.0], [0.5, 0.5]])
    assert out.shape == (3, 1)
    expected = [1 / (1 + math.exp(-8)), 1 / (1 + math.exp(8)), 0.5]
    assert out[:, 0] == pytest.approx(expected, abs=1e-6)  # float32

    engine = Decider([module], metrics=Metrics(CollectorRegistry()))
    assert engine.decide(NAME, {"signal": 2.0, "threshold": 0.0}).source == "fallback"
    engine.load(NAME, predictor)
    acts = engine.decide(NAME, {"signal": 2.0, "threshold": 0.0})
    waits = engine.decide(NAME, {"signal": -1.0, "threshold": 0.5})
    for decision in (acts, waits):
        assert (decision.source, decision.model_version) == ("model", "v0001")
        assert decision.fallback_reason is None
    assert acts.act and acts.score == pytest.approx(1 / (1 + math.exp(-8)), rel=1e-5)  # type: ignore[attr-defined]
    assert not waits.act and waits.score < 0.01  # type: ignore[attr-defined]


def test_a_trained_reference_model_loads_and_decides(registry: ModelRegistry) -> None:
    from aiassist.modules.reference.training import trainer

    data = trainer.synthetic(600, seed=1)
    exported = trainer.fit(data, seed=1)
    version = publish(
        registry,
        exported.onnx,
        input_name=exported.input_name,
        output_name=exported.output_name,
        n_outputs=exported.n_outputs,
        framework=exported.framework,
    )
    predictor = load_checked(registry, module, version, latency_budget_us=BUDGET_US)
    engine = Decider([module], metrics=Metrics(CollectorRegistry()))
    engine.load(NAME, predictor)
    high = engine.decide(NAME, {"signal": 2.5, "threshold": 0.0})
    low = engine.decide(NAME, {"signal": -2.5, "threshold": 0.0})
    assert (high.source, high.model_version) == ("model", version)
    assert high.act and high.score > 0.9  # type: ignore[attr-defined]
    assert not low.act and low.score < 0.1  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", list(DEFECTS))
def test_a_defective_version_is_refused_with_its_reason(
    registry: ModelRegistry, slow_bytes: bytes, name: str
) -> None:
    defect = DEFECTS[name]
    version = defect.make(registry, slow_bytes)
    with pytest.raises(ModelRejected) as refused:
        load_checked(registry, module, version, latency_budget_us=BUDGET_US)
    assert refused.value.reason == defect.reason
    assert str(refused.value).startswith(f"{defect.reason}: ")
    assert defect.detail in str(refused.value)


def test_the_slow_model_is_valid_under_a_generous_budget(
    registry: ModelRegistry, slow_bytes: bytes
) -> None:
    """Only its speed is wrong: what `latency` refuses is the time, not the model."""
    version = _slow(registry, slow_bytes)
    predictor = load_checked(registry, module, version, latency_budget_us=1e7)
    assert 0 < predictor.predict([[0.82, 0.5]])[0, 0] < 1


def test_an_unreadable_manifest_is_refused(registry: ModelRegistry) -> None:
    version = publish(registry, linear_model())
    (registry.version_dir(NAME, version) / "manifest.json").write_text("{")
    with pytest.raises(ModelRejected) as refused:
        load_checked(registry, module, version, latency_budget_us=BUDGET_US)
    assert refused.value.reason == "unreadable"


def test_a_manifest_of_another_module_is_refused(registry: ModelRegistry) -> None:
    version = registry.publish(
        "other",
        linear_model(),
        feature_names=module.feature_names(),
        input_name="input",
        output_name="output",
        n_outputs=1,
        framework="onnx",
    ).version
    # copied onto the reference module's volume by hand
    target = registry.root / NAME / "versions"
    target.mkdir(parents=True)
    (registry.root / "other" / "versions" / version).rename(target / version)
    with pytest.raises(ModelRejected) as refused:
        load_checked(registry, module, version, latency_budget_us=BUDGET_US)
    assert refused.value.reason == "schema" and "'other'" in str(refused.value)


# --- the watcher over a real engine: the previous version keeps serving ----------------------
@dataclass
class Watched:
    registry: ModelRegistry
    engine: Decider
    watcher: ModelWatcher
    audit: AuditLog
    sessions: sessionmaker[Session]
    metrics: Metrics

    def refusals(self, reason: str) -> float:
        labels = {"module": NAME, "reason": reason}
        return self.metrics.registry.get_sample_value("aiassist_model_refusals_total", labels) or 0

    def events(self, kind: str) -> list[AuditEvent]:
        with self.sessions() as session:
            query = select(AuditEvent).where(AuditEvent.kind == kind).order_by(AuditEvent.id)
            return list(session.scalars(query))


@pytest.fixture
def watched(registry: ModelRegistry, sqlite_url: str) -> Iterator[Watched]:
    db = make_engine(sqlite_url)
    sessions = make_sessionmaker(db)
    audit = AuditLog(sessions)
    metrics = Metrics(CollectorRegistry())
    engine = Decider([module], metrics=metrics)
    watcher = ModelWatcher(
        registry, engine, latency_budget_us=BUDGET_US, on_event=_model_events(audit, metrics)
    )
    yield Watched(registry, engine, watcher, audit, sessions, metrics)
    db.dispose()


@pytest.mark.parametrize("name", list(DEFECTS))
def test_a_refused_version_leaves_the_previous_one_serving(
    watched: Watched, slow_bytes: bytes, name: str
) -> None:
    registry, engine, watcher = watched.registry, watched.engine, watched.watcher
    defect = DEFECTS[name]
    good = publish(registry, linear_model())
    registry.set_tag(NAME, "stable", good, actor="test")
    watcher.sync()
    assert engine.served_version(NAME) == good

    bad = defect.make(registry, slow_bytes)
    registry.set_tag(NAME, "stable", bad, actor="test")
    watcher.sync()
    assert engine.served_version(NAME) == good
    decision = engine.decide(NAME, {"signal": 2.0, "threshold": 0.0})
    assert (decision.source, decision.model_version) == ("model", good)
    served = watcher.served[NAME]
    assert served.version == good and served.refused == bad
    assert served.error is not None and served.error.startswith(f"{defect.reason}: ")

    assert watched.refusals(defect.reason) == 1
    check = watched.audit.verify()
    assert check.ok, check.reason
    [event] = watched.events("model.refused")
    assert event.subject == f"{NAME}/{bad}" and event.actor == "service"
    assert event.data["reason"] == defect.reason and event.data["version"] == bad
    assert [e.data["version"] for e in watched.events("model.swapped")] == [good]

    watcher.sync()  # the refused version is not retried on every pass
    assert watched.refusals(defect.reason) == 1 and len(watched.events("model.refused")) == 1

    fixed = publish(registry, linear_model((3.0, -3.0)))
    registry.set_tag(NAME, "stable", fixed, actor="test")
    watcher.sync()
    assert engine.served_version(NAME) == fixed
    assert (watcher.served[NAME].error, watcher.served[NAME].refused) == (None, None)
    assert [e.data["previous"] for e in watched.events("model.swapped")] == [None, good]


def test_the_watcher_follows_the_tag_by_itself(watched: Watched) -> None:
    registry, engine = watched.registry, watched.engine
    watcher = ModelWatcher(registry, engine, latency_budget_us=BUDGET_US, poll_seconds=0.02)
    watcher.start()
    try:
        first = publish(registry, linear_model())
        registry.set_tag(NAME, "stable", first, actor="test")
        wait_for(lambda: engine.served_version(NAME) == first)
        second = _nan(registry, b"")
        registry.set_tag(NAME, "stable", second, actor="test")
        wait_for(lambda: watcher.served[NAME].refused == second)
        assert engine.served_version(NAME) == first
        registry.set_tag(NAME, "stable", None, actor="test")  # no stable tag: the rule answers
        wait_for(lambda: engine.served_version(NAME) is None)
        decision = engine.decide(NAME, {"signal": 2.0, "threshold": 0.0})
        assert (decision.source, decision.fallback_reason) == ("fallback", "no_model")
    finally:
        watcher.stop()


def test_rolling_back_to_the_serving_version_clears_the_refusal(watched: Watched) -> None:
    registry, watcher = watched.registry, watched.watcher
    good = publish(registry, linear_model())
    registry.set_tag(NAME, "stable", good, actor="test")
    watcher.sync()
    registry.set_tag(NAME, "stable", _nan(registry, b""), actor="test")
    watcher.sync()
    assert watcher.served[NAME].refused is not None
    registry.rollback(NAME, actor="test")
    watcher.sync()
    assert watched.engine.served_version(NAME) == good
    assert watcher.served[NAME].error is None  # the tag names what serves: nothing refused


# --- end to end over HTTP ---------------------------------------------------------------------
def metric(client: httpx.Client, name: str, labels: dict[str, str]) -> float:
    text = client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def test_refusals_over_http(
    live_server: LiveServer, settings: Settings, tokens: Tokens, slow_bytes: bytes
) -> None:
    """Every defect promoted through the admin API: the service keeps serving the good
    version, and says so in the answer, in /readyz, in /metrics and in the audit trail."""
    registry = ModelRegistry(settings.resolved_models_dir)
    client = httpx.Client(base_url=live_server.url, timeout=60)
    admin, decide = tokens.header("admin"), tokens.header("decide")
    features = {"features": {"signal": 2.0, "threshold": 0.0}}

    good = publish(registry, linear_model())
    answer = client.post(f"/v1/admin/models/{NAME}/promote", json={"version": good}, headers=admin)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"module": NAME, "serving": good, "refused": None, "error": None}

    refused: list[tuple[str, str]] = []
    for defect in DEFECTS.values():
        bad = defect.make(registry, slow_bytes)
        answer = client.post(
            f"/v1/admin/models/{NAME}/promote",
            json={"version": bad, "reason": "try it"},
            headers=admin,
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["serving"], body["refused"]) == (good, bad)
        assert body["error"].startswith(f"{defect.reason}: ")
        refused.append((bad, defect.reason))

        ready = client.get("/readyz")
        assert ready.status_code == 200
        state = ready.json()["modules"][NAME]
        assert state["model_version"] == good
        assert state["refused"]["version"] == bad
        assert state["refused"]["error"].startswith(f"{defect.reason}: ")

        decision = client.post(f"/v1/{NAME}/decide", json=features, headers=decide).json()
        assert (decision["source"], decision["model_version"]) == ("model", good)
        labels = {"module": NAME, "reason": defect.reason}
        expected = sum(1 for _, reason in refused if reason == defect.reason)
        assert metric(client, "aiassist_model_refusals_total", labels) == expected

    shown = client.get(f"/v1/admin/models/{NAME}", headers=admin).json()
    assert shown["serving"] == good and shown["tags"]["stable"] == refused[-1][0]

    db = make_engine(settings.resolved_database_url)
    try:
        audit = AuditLog(make_sessionmaker(db))
        check = audit.verify()
        assert check.ok, check.reason
        with make_sessionmaker(db)() as session:
            events = list(session.scalars(select(AuditEvent).order_by(AuditEvent.id)))
    finally:
        db.dispose()
    refusals = [(e.subject, e.data["reason"]) for e in events if e.kind == "model.refused"]
    assert refusals == [(f"{NAME}/{v}", reason) for v, reason in refused]
    moves = [e for e in events if e.kind == "model.tag_moved"]
    assert len(moves) == 1 + len(DEFECTS)
    assert {e.actor for e in moves} == {tokens.admin.split("_")[1]}  # the admin key's id

    fixed = publish(registry, linear_model((3.0, -3.0)))
    answer = client.post(f"/v1/admin/models/{NAME}/promote", json={"version": fixed}, headers=admin)
    assert answer.json() == {"module": NAME, "serving": fixed, "refused": None, "error": None}
    state = client.get("/readyz").json()["modules"][NAME]
    assert state == {"model_version": fixed}
    assert metric(client, "aiassist_model_swaps_total", {"module": NAME}) == 2
    moved = {"module": NAME, "tag": "stable", "kind": "set"}
    assert metric(client, "aiassist_model_tag_moves_total", moved) == len(DEFECTS) + 2
    client.close()
