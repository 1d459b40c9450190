"""The documentation's examples run as written: its Python, and the README's curl calls."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from aiassist.decider import Decider
from aiassist.metrics import Metrics

from .conftest import LiveServer, Tokens

ROOT = Path(__file__).resolve().parent.parent


def python_blocks(doc: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / doc).read_text(), flags=re.S)


@pytest.mark.parametrize(
    ("doc", "index"), [("README.md", 0), ("docs/modules.md", 0)], ids=["readme", "calling"]
)
def test_snippet_runs_in_local_mode(doc: str, index: int, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", python_blocks(doc)[index]],
        env=os.environ | {"AIASSIST_DATA_DIR": str(tmp_path), "AIASSIST_MODE": "local"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_module_example_is_a_working_module() -> None:
    namespace: dict[str, object] = {}
    exec(python_blocks("docs/modules.md")[1], namespace)
    module = namespace["module"]
    engine = Decider([module], metrics=Metrics(CollectorRegistry()))  # type: ignore[list-item]
    decision = engine.decide("churn", module.example)  # type: ignore[attr-defined]
    assert decision.reach_out is True and decision.source == "fallback"  # type: ignore[attr-defined]


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    """SQLite only (overrides conftest's two databases): nothing here is about storage."""
    return sqlite_url


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_readme_curl_calls_work_as_written(live_server: LiveServer, tokens: Tokens) -> None:
    readme = (ROOT / "README.md").read_text()
    calls = re.findall(r"^\$ (curl (?:.*\\\n)*.*)$", readme, flags=re.M)
    assert calls
    for call in calls:
        done = subprocess.run(
            ["bash", "-c", call.replace("localhost:8000", live_server.url.split("//")[1])],
            env=os.environ | {"KEY": tokens.decide},
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        answer = json.loads(done.stdout)
        assert answer["source"] in ("model", "fallback") and answer["decision_id"], answer
