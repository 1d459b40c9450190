"""Training: datasets from recorded outcomes, ONNX export, and the model daemon.

Everything here may import the training stack (PyTorch, scikit-learn, LightGBM), installed
by the `train` extra. Serving code never imports this package.
"""

from aiassist.training.base import Dataset, ExportedModel, Trainer, get_trainer

__all__ = ["Dataset", "ExportedModel", "Trainer", "get_trainer"]
