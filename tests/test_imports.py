"""Serving never loads the training stack; the light SDK needs no server dependencies."""

from __future__ import annotations

import subprocess
import sys

TRAINING = ("torch", "sklearn", "lightgbm", "skl2onnx", "onnxmltools")
SERVER = ("fastapi", "sqlalchemy", "onnxruntime", "uvicorn")


def loaded_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_serving_does_not_import_training() -> None:
    loaded = loaded_after(
        "from aiassist.server import create_app\n"
        "from aiassist.registry.serving import ModelWatcher\n"
        "import aiassist.modules.reference\n"
        "create_app()"
    )
    assert "onnxruntime" in loaded
    assert loaded.isdisjoint(TRAINING), loaded & set(TRAINING)


def test_remote_sdk_is_light() -> None:
    loaded = loaded_after(
        "from aiassist import AIAssistService, Settings\n"
        "AIAssistService(Settings(mode='remote')).decide('reference', {'signal': 1.0})"
    )
    assert loaded.isdisjoint(SERVER + TRAINING), loaded & set(SERVER + TRAINING)
