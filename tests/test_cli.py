"""The `aiassist` command, run as a real process where it matters."""

from __future__ import annotations

import os
import smtplib
import stat
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from aiassist.cli import app, settings_markdown

from .conftest import free_port, wait_for, wait_healthy

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()
#: `aiassist up` bootstraps every module's first model; a tenth of the default rows is enough
#: to see the service swap one in.
SMALL_BOOTSTRAP = {"AIASSIST_BOOTSTRAP_ROWS": "2000"}


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("AIASSIST_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("AIASSIST_DATABASE_URL", raising=False)
    return {"AIASSIST_DATA_DIR": str(tmp_path)}


def test_keys_lifecycle(env: dict[str, str]) -> None:
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    created = runner.invoke(app, ["keys", "create", "--name", "shop", "--scope", "decide"])
    assert created.exit_code == 0, created.output
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("aia_")
    key_id = token.split("_")[1]
    listed = runner.invoke(app, ["keys", "list"])
    assert key_id in listed.stdout and "shop" in listed.stdout
    assert token.split("_", 2)[2] not in listed.stdout  # the secret is never shown again
    assert runner.invoke(app, ["keys", "revoke", key_id]).exit_code == 0
    again = runner.invoke(app, ["keys", "revoke", key_id])
    assert again.exit_code == 1 and "no active key" in again.output


def test_bad_scope_is_refused(env: dict[str, str]) -> None:
    runner.invoke(app, ["db", "upgrade"])
    result = runner.invoke(app, ["keys", "create", "--name", "x", "--scope", "root"])
    assert result.exit_code == 2 and "unknown scopes" in result.output


def test_key_events_are_audited(env: dict[str, str], tmp_path: Path) -> None:
    from aiassist.store.audit import AuditLog
    from aiassist.store.db import make_engine, make_sessionmaker

    runner.invoke(app, ["db", "upgrade"])
    token = runner.invoke(app, ["keys", "create", "--name", "a", "--scope", "decide"]).stdout
    runner.invoke(app, ["keys", "revoke", token.strip().split("_")[1]])
    engine = make_engine(f"sqlite:///{tmp_path / 'aiassist.db'}")
    check = AuditLog(make_sessionmaker(engine)).verify()
    engine.dispose()
    assert check.ok and check.events == 2


def test_wrong_setting_stops_start_up_naming_it(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aiassist", "serve"],
        env=os.environ | {"AIASSIST_DATA_DIR": str(tmp_path), "AIASSIST_WORKERS": "lots"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "AIASSIST_WORKERS" in result.stderr and "lots" in result.stderr
    assert "Traceback" not in result.stderr


def test_settings_shows_effective_values_without_secrets(env: dict[str, str]) -> None:
    os.environ["AIASSIST_API_KEY"] = "aia_x_topsecret"
    try:
        shown = runner.invoke(app, ["settings"]).stdout
    finally:
        del os.environ["AIASSIST_API_KEY"]
    assert "AIASSIST_API_KEY" in shown and "topsecret" not in shown


def test_configuration_doc_lists_every_setting() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert settings_markdown() in doc, "regenerate with: aiassist settings --markdown"


def test_up_serves_on_sqlite_with_an_admin_key(tmp_path: Path) -> None:
    """What the README's run command ends in: `aiassist up` on the embedded default."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "aiassist", "up", "--port", str(port), "--no-demo"],
        env=os.environ | {"AIASSIST_DATA_DIR": str(tmp_path), "COLUMNS": "200", **SMALL_BOOTSTRAP},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url)
        key_file = tmp_path / "admin.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        headers = {"authorization": f"Bearer {key_file.read_text().strip()}"}
        assert httpx.get(f"{url}/v1/modules", headers=headers).status_code == 200
        assert httpx.get(f"{url}/docs").status_code == 200
        assert (tmp_path / "aiassist.db").exists()
        # The daemon it started bootstraps a first model, and the service swaps it in.
        deadline = time.monotonic() + 90
        with httpx.Client(base_url=url, headers=headers) as client:  # one client for the polls
            while time.monotonic() < deadline:
                decision = client.post(
                    "/v1/reference/decide", json={"features": {"signal": 1.0}}
                ).json()
                if decision["source"] == "model":
                    break
                time.sleep(0.5)
        assert decision["source"] == "model" and decision["model_version"] == "v0001"
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0  # SIGTERM ended it through its cleanup, daemon stopped
    assert f"{url}/docs" in out and f"{url}/healthz" in out
    assert key_file.read_text().strip() not in out  # the key is in the file, not the console


def test_up_runs_the_example_backend_with_its_flows(tmp_path: Path) -> None:
    """From a checkout, `aiassist up` also runs the order center, automated: mail to sales
    becomes a lead and an intro email, through the backend's own API."""
    port, backend, sink, inbound = (free_port() for _ in range(4))
    proc = subprocess.Popen(
        [sys.executable, "-m", "aiassist", "up", "--port", str(port), "--backend-port",
         str(backend), "--mail-port", str(sink), "--inbound-mail-port", str(inbound)],
        env={k: v for k, v in os.environ.items() if not k.startswith("AIASSIST_")}
        | {"AIASSIST_DATA_DIR": str(tmp_path), "COLUMNS": "200", **SMALL_BOOTSTRAP},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, timeout=60, proc=proc)
        message = EmailMessage()
        message["From"] = "Zhang San <zhangsan@example.com>"
        message["To"] = "sales@order-center.example"
        message["Subject"] = "Product question"
        message.set_content("I would like to learn about your product.")
        with smtplib.SMTP("127.0.0.1", inbound, timeout=30) as smtp:
            smtp.send_message(message)  # answered once the flow's run is recorded

        def leads(client: httpx.Client) -> list[tuple[str, bool]]:
            found = client.get(f"http://127.0.0.1:{backend}/leads").json()
            return [(lead["status"], lead["follow_up_at"] is not None) for lead in found]

        with httpx.Client() as client:  # one client for the polls
            wait_for(lambda: leads(client) == [("contacted", True)], 60, "the lead_intake flow")
        [sent] = (tmp_path / "mail").glob("*.eml")
        assert "To: zhangsan@example.com" in sent.read_text()
        headers = {"authorization": f"Bearer {(tmp_path / 'admin.key').read_text().strip()}"}
        flows = {f["name"]: f for f in httpx.get(f"{url}/v1/flows", headers=headers).json()}
        assert set(flows) == {"lead_intake", "ticket_intake", "refund", "daily_report"}
        assert flows["lead_intake"]["roi"]["succeeded"] == 1
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert f"http://127.0.0.1:{backend}/docs" in out and f"smtp://127.0.0.1:{inbound}" in out


def test_a_module_brings_its_own_command(env: dict[str, str], tmp_path: Path) -> None:
    """`aiassist priority simulate` is found through the module, and prints what the
    service's simulation computes for the same traffic."""
    from prometheus_client import CollectorRegistry

    from aiassist.decider import Decider
    from aiassist.metrics import Metrics
    from aiassist.modules.priority import module
    from aiassist.modules.priority.api import SimulateRequest, SimulationSpec, run_simulation

    shown = runner.invoke(
        app, ["priority", "simulate", "--generate", "300", "--workers", "4", "--seed", "3"]
    )
    assert shown.exit_code == 0, shown.output
    spec = SimulationSpec(tasks=300, workers=4, seed=3)
    expected = run_simulation(
        SimulateRequest(generate=spec, show=0),
        Decider([module], metrics=Metrics(CollectorRegistry())),
    )
    assert "300 tasks on 4 workers; model: the rule fallback" in shown.stdout
    for name, row in expected.summary.items():
        line = next(x for x in shown.stdout.splitlines() if f" {name} " in x)
        assert f"{row.high_mean_wait_s:,.1f} s" in line and f"{row.deadline_miss_pct:.2f}%" in line

    tasks = tmp_path / "tasks.json"
    tasks.write_text('[{"arrival_s": 0, "est_duration_s": 60}, {"arrival_s": "soon"}]')
    bad = runner.invoke(app, ["priority", "simulate", "--tasks", str(tasks)])
    assert bad.exit_code == 2 and "arrival_s" in bad.stderr


def test_the_service_names_no_module() -> None:
    """Routers and settings come from module discovery, not from imports in the app."""
    source = (ROOT / "src" / "aiassist" / "server" / "app.py").read_text()
    assert "aiassist.modules." not in source.replace("aiassist.modules.base", "")
