"""docs/automation.md, followed as a new user would: every file written, every command and
snippet run in order, in an empty directory, against a real service for the webhook."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import free_port, wait_healthy

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "automation.md"
FILE_MARK = re.compile(r"^# ([\w./-]+\.(?:py|yaml))\n")


def blocks() -> list[tuple[str, str]]:
    return re.findall(r"```(python|yaml|bash)\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_tour_runs_as_written(tmp_path: Path) -> None:
    env = os.environ | {
        "AIASSIST_DATA_DIR": str(tmp_path / "data"),
        "AIASSIST_LOG_LEVEL": "warning",
        # The bash snippets call `aiassist`: this interpreter's, whether or not it is on PATH.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    env.pop("AIASSIST_DATABASE_URL", None)
    port = free_port()
    service: subprocess.Popen[bytes] | None = None
    outputs: list[str] = []
    try:
        for kind, code in blocks():
            if (mark := FILE_MARK.match(code)) is not None:
                path = tmp_path / mark[1]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(code)
                continue
            if kind == "bash":
                for line in code.splitlines():
                    if line.startswith("export "):
                        env |= dict(pair.split("=", 1) for pair in line.split()[1:])
                command = ["bash", "-ec", code]
            else:
                assert kind == "python", code
                if "127.0.0.1:8000" in code:
                    if service is None:
                        service = subprocess.Popen(
                            [sys.executable, "-m", "aiassist", "serve", "--port", str(port)],
                            env=env,
                            cwd=tmp_path,
                        )
                        wait_healthy(f"http://127.0.0.1:{port}", 60, service)
                    code = code.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
                command = [sys.executable, "-c", code]
            result = subprocess.run(
                command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
            )
            assert result.returncode == 0, f"{code}\n{result.stdout}\n{result.stderr}"
            outputs.append(result.stdout)
    finally:
        if service is not None:
            service.terminate()
            service.wait(20)
    text = "\n".join(outputs)
    assert "flows/welcome.yaml: ok" in text
    assert '"dry_run": true' in text and "<unknown in a dry run>" in text
    assert "waiting_approval" in text and "delete_lead" in text
    assert re.search(r"welcome\s.*\b3\b.*100%", text), text  # 3 real runs, all succeeded


def test_a_bad_flow_is_shown_with_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nsteps:\n  - id: a\n    tool: t\n    retries: 3\n")
    result = subprocess.run(
        [sys.executable, "-m", "aiassist", "flow", "validate", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"{bad}:5: steps.0.retries: Extra inputs are not permitted" in result.stderr


@pytest.mark.parametrize("flag", ["--input", "-i"])
def test_flow_run_refuses_bad_input(flag: str, tmp_path: Path) -> None:
    (tmp_path / "flows").mkdir()
    env = os.environ | {
        "AIASSIST_DATA_DIR": str(tmp_path),
        "AIASSIST_FLOWS_DIR": str(tmp_path / "flows"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "aiassist", "flow", "run", "x", flag, "[1]"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "expected a JSON object" in result.stderr
