"""Each exporter on a small seeded model: the ONNX computes what the trained model computes,
`check_parity` notices when it does not, and the bytes serve from the registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from aiassist.decider import Decider
from aiassist.metrics import Metrics
from aiassist.modules.reference import module
from aiassist.registry.serving import load_checked
from aiassist.registry.store import ModelRegistry
from aiassist.training.base import ExportedModel
from aiassist.training.export import (
    check_parity,
    lightgbm_to_onnx,
    sklearn_to_onnx,
    torch_to_onnx,
)

N_FEATURES = 2


def world(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference module's world: acting is right with P = sigmoid(4 (signal - threshold))."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(0.0, 1.0, n)
    threshold = rng.uniform(-0.5, 0.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-4 * (signal - threshold)))).astype(int)
    return np.c_[signal, threshold].astype(np.float32), y


@dataclass
class Trained:
    exported: ExportedModel
    predict: Callable[[np.ndarray], np.ndarray]  # the original model, in its own framework
    framework: str


@cache  # each model is trained and exported once per session
def sklearn_model(seed: int = 0, c: float = 1.0) -> Trained:
    from sklearn.linear_model import LogisticRegression

    X, y = world(400, seed)
    model = LogisticRegression(C=c, random_state=seed).fit(X, y)
    return Trained(sklearn_to_onnx(model, N_FEATURES), model.predict_proba, "scikit-learn")


@cache
def lightgbm_model(seed: int = 0, c: float = 1.0) -> Trained:
    from lightgbm import LGBMClassifier

    X, y = world(400, seed)
    model = LGBMClassifier(
        n_estimators=20,
        num_leaves=7,
        learning_rate=0.2 * c,
        random_state=seed,
        deterministic=True,
        n_jobs=1,
        verbose=-1,
    ).fit(X, y)
    return Trained(
        lightgbm_to_onnx(model, N_FEATURES),
        lambda rows: np.asarray(model.predict_proba(rows)),
        "lightgbm",
    )


@cache
def torch_model(seed: int = 0, c: float = 1.0) -> Trained:
    import torch

    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(N_FEATURES, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1), torch.nn.Sigmoid()
    )
    X, y = world(400, seed)
    inputs, labels = torch.from_numpy(X), torch.from_numpy(y.astype(np.float32)).reshape(-1, 1)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.05 * c)
    for _ in range(60):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy(net(inputs), labels)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()

    def predict(rows: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out: np.ndarray = net(torch.from_numpy(rows)).numpy()
        return out

    return Trained(torch_to_onnx(net, N_FEATURES, 1), predict, "pytorch")


EXPORTERS = [
    pytest.param(sklearn_model, id="sklearn"),
    pytest.param(lightgbm_model, id="lightgbm"),
    pytest.param(torch_model, id="torch"),
]


@pytest.fixture
def eval_rows() -> np.ndarray:
    X, _ = world(300, seed=99)  # rows the model was not trained on
    return X


@pytest.mark.parametrize("train", EXPORTERS)
def test_the_export_computes_what_the_model_does(
    train: Callable[..., Trained], eval_rows: np.ndarray
) -> None:
    trained = train()
    exported = trained.exported
    assert exported.framework == trained.framework
    assert exported.input_name == "input"
    expected = trained.predict(eval_rows)
    assert exported.n_outputs == expected.shape[1]
    error = check_parity(exported, eval_rows, expected)
    assert 0.0 <= error <= 1e-4
    # and the model learned something: P(act) rises with signal - threshold
    assert expected[np.argmax(eval_rows[:, 0] - eval_rows[:, 1]), -1] > 0.8
    assert expected[np.argmin(eval_rows[:, 0] - eval_rows[:, 1]), -1] < 0.2


@pytest.mark.parametrize("train", EXPORTERS)
def test_parity_catches_a_wrong_expectation(
    train: Callable[..., Trained], eval_rows: np.ndarray
) -> None:
    trained = train()
    expected = trained.predict(eval_rows)

    tampered = expected.copy()
    tampered[17, -1] += 0.01
    with pytest.raises(ValueError, match=r"differs from the trained model by 1\.00e-02 > 0\.0001"):
        check_parity(trained.exported, eval_rows, tampered)

    with pytest.raises(ValueError, match="shape"):
        check_parity(trained.exported, eval_rows, np.c_[expected, expected])

    other = train(seed=1, c=3.0)  # another model's export is not this model's
    with pytest.raises(ValueError, match="differs from the trained model"):
        check_parity(other.exported, eval_rows, expected)


@pytest.mark.parametrize("train", EXPORTERS)
def test_the_export_serves_from_the_registry(
    train: Callable[..., Trained], eval_rows: np.ndarray, tmp_path: Path
) -> None:
    trained = train()
    exported = trained.exported
    registry = ModelRegistry(tmp_path / "models")
    manifest = exported.publish(registry, module)
    predictor = load_checked(registry, module, manifest.version, latency_budget_us=1e6)
    assert predictor.manifest.framework == trained.framework
    expected = trained.predict(eval_rows)
    got = predictor.predict(eval_rows.tolist())
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4)

    engine = Decider([module], metrics=Metrics(CollectorRegistry()))
    engine.load(module.name, predictor)
    row = eval_rows[5]
    decision = engine.decide(module.name, {"signal": float(row[0]), "threshold": float(row[1])})
    assert (decision.source, decision.model_version) == ("model", manifest.version)
    assert decision.score == pytest.approx(float(expected[5, -1]), abs=1e-4)  # type: ignore[attr-defined]
