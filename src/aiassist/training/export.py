"""Export trained models to ONNX and prove the export computes what the original does."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort

from aiassist.training.base import Dataset, ExportedModel

__all__ = [
    "check_parity",
    "fit_lightgbm_classifier",
    "fit_lightgbm_regressor",
    "lightgbm_to_onnx",
    "sklearn_to_onnx",
    "torch_to_onnx",
]

INPUT = "input"
_OPSET = 17


def sklearn_to_onnx(model: Any, n_features: int) -> ExportedModel:
    """A fitted scikit-learn classifier or regressor (skl2onnx)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    is_classifier = hasattr(model, "predict_proba")
    options = {id(model): {"zipmap": False}} if is_classifier else None
    onx = convert_sklearn(
        model,
        initial_types=[(INPUT, FloatTensorType([None, n_features]))],
        options=options,
        target_opset={"": _OPSET, "ai.onnx.ml": 3},
    )
    output = "probabilities" if is_classifier else onx.graph.output[0].name
    n_outputs = len(model.classes_) if is_classifier else 1
    return ExportedModel(onx.SerializeToString(), INPUT, output, n_outputs, "scikit-learn")


def lightgbm_to_onnx(model: Any, n_features: int) -> ExportedModel:
    """A fitted LightGBM classifier or regressor (onnxmltools)."""
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType
    from onnxmltools.convert.common.onnx_ex import get_maximum_opset_supported

    is_classifier = hasattr(model, "predict_proba")
    onx = convert_lightgbm(
        model,
        initial_types=[(INPUT, FloatTensorType([None, n_features]))],
        zipmap=False,
        # onnxmltools refuses an opset above the highest it converts to (15 in 1.16)
        target_opset=min(_OPSET, get_maximum_opset_supported()),
    )
    output = onx.graph.output[-1].name if is_classifier else onx.graph.output[0].name
    n_outputs = len(model.classes_) if is_classifier else 1
    return ExportedModel(onx.SerializeToString(), INPUT, output, n_outputs, "lightgbm")


def torch_to_onnx(model: Any, n_features: int, n_outputs: int) -> ExportedModel:
    """A PyTorch module mapping float [N, n_features] to [N, n_outputs] (torch.onnx, dynamo)."""
    import torch

    model.eval()
    program = torch.onnx.export(
        model,
        (torch.zeros(2, n_features),),  # not 1: torch.export would specialise the batch to it
        input_names=[INPUT],
        output_names=["output"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        opset_version=18,
        dynamo=True,
        verbose=False,
    )
    assert program is not None
    return ExportedModel(
        program.model_proto.SerializeToString(), INPUT, "output", n_outputs, "pytorch"
    )


def check_parity(
    exported: ExportedModel, X: np.ndarray, expected: np.ndarray, *, atol: float = 1e-4
) -> float:
    """Run the ONNX model on `X`; raise if it differs from `expected` by more than `atol`."""
    session = ort.InferenceSession(exported.onnx, providers=["CPUExecutionProvider"])
    got = session.run([exported.output_name], {exported.input_name: X.astype(np.float32)})[0]
    got = np.asarray(got, dtype=np.float64).reshape(len(X), -1)
    want = np.asarray(expected, dtype=np.float64).reshape(len(X), -1)
    if got.shape != want.shape:
        raise ValueError(f"ONNX output shape {got.shape} differs from the model's {want.shape}")
    error = float(np.max(np.abs(got - want))) if got.size else 0.0
    if error > atol:
        raise ValueError(f"ONNX output differs from the trained model by {error:.2e} > {atol}")
    return error


#: Small trees, bagging, one thread: seeded runs give the same model.
_LIGHTGBM_DEFAULTS: dict[str, Any] = {
    "n_estimators": 120,
    "num_leaves": 15,
    "learning_rate": 0.08,
    "min_child_samples": 40,
    "subsample": 0.8,
    "subsample_freq": 1,
    "colsample_bytree": 0.9,
    "deterministic": True,
    "force_row_wise": True,
    "n_jobs": 1,
    "verbose": -1,
}


def fit_lightgbm_classifier(data: Dataset, seed: int, **params: Any) -> ExportedModel:
    """A seeded, deterministic LightGBM classifier of `data`, exported and parity-checked;
    `params` override the defaults."""
    from lightgbm import LGBMClassifier

    model = LGBMClassifier(**(_LIGHTGBM_DEFAULTS | {"random_state": seed} | params))
    model.fit(data.X, data.y.astype(int))
    exported = lightgbm_to_onnx(model, data.X.shape[1])
    sample = data.X[:512]
    check_parity(exported, sample, np.asarray(model.predict_proba(sample)))
    return exported


def fit_lightgbm_regressor(data: Dataset, seed: int, **params: Any) -> ExportedModel:
    """The same for a regressor: one output column, the predicted value."""
    from lightgbm import LGBMRegressor

    model = LGBMRegressor(**(_LIGHTGBM_DEFAULTS | {"random_state": seed} | params))
    model.fit(data.X, data.y)
    exported = lightgbm_to_onnx(model, data.X.shape[1])
    sample = data.X[:512]
    check_parity(exported, sample, np.asarray(model.predict(sample)))
    return exported
