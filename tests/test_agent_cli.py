"""`aiassist agent ...`, `aiassist audit verify` and `aiassist eval`, on a real database."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import delete, select
from typer.testing import CliRunner

from aiassist.cli import app
from aiassist.store.db import make_engine, make_sessionmaker
from aiassist.store.models import AuditEvent
from tests.agent_backend import serve_backend
from tests.conftest import free_port

runner = CliRunner()
LEAD = {"name": "Zhang San", "email": "zhangsan@example.com"}


@pytest.fixture(scope="module")
def backend() -> Iterator[str]:
    with serve_backend(free_port()) as url:
        yield url


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str) -> Path:
    monkeypatch.setenv("AIASSIST_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("AIASSIST_DATABASE_URL", raising=False)
    monkeypatch.delenv("AIASSIST_AGENT_PROVIDER", raising=False)
    monkeypatch.setenv("AIASSIST_AGENT_TOOLS", "tests.agent_backend:tools_from_env")
    monkeypatch.setenv("AGENT_TEST_BACKEND", backend)
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    return tmp_path


def script(tmp_path: Path, turns: list[object]) -> str:
    path = tmp_path / "script.json"
    path.write_text(json.dumps(turns))
    return str(path)


def test_run_approve_reject_show_and_verify(env: Path) -> None:
    turns = [{"tool_calls": [{"name": "create_crm_lead", "arguments": LEAD}]}, "Lead created."]
    result = runner.invoke(
        app,
        ["agent", "run", "create a lead", "-t", "create_crm_lead", "--script", script(env, turns)],
    )
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)
    assert run["status"] == "succeeded" and run["output"] == "Lead created."
    lead_id = run["calls"][0]["result"]["id"]

    shown = runner.invoke(app, ["agent", "show", run["id"]])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["id"] == run["id"]
    assert runner.invoke(app, ["agent", "show", "nope"]).exit_code == 1

    deleting = [{"tool_calls": [{"name": "delete_lead", "arguments": {"lead_id": lead_id}}]}, "ok"]
    for decision in ("approve", "reject"):
        result = runner.invoke(
            app,
            ["agent", "run", "delete it", "-t", "delete_lead", "--script", script(env, deleting)],
        )
        paused = json.loads(result.stdout)
        assert paused["status"] == "waiting_approval"
        approval = paused["pending_approvals"][0]
        listed = runner.invoke(app, ["agent", "approvals", "--json"]).stdout.splitlines()
        assert json.loads(listed[0])["id"] == approval and len(listed) == 1
        args = ["agent", decision, approval] + (["--message", "no"] if decision == "reject" else [])
        done = runner.invoke(app, args)
        assert done.exit_code == 0, done.output
        call = json.loads(done.stdout)["calls"][0]
        assert call["status"] == ("succeeded" if decision == "approve" else "rejected")
        again = runner.invoke(app, ["agent", "approve", approval])
        assert again.exit_code == 1 and "already" in again.output

    verified = runner.invoke(app, ["audit", "verify"])
    assert verified.exit_code == 0 and "all intact" in verified.stdout
    engine = make_engine(f"sqlite:///{env / 'aiassist.db'}")
    with make_sessionmaker(engine)() as session:  # someone covers their tracks
        victim = session.scalars(
            select(AuditEvent.id).where(AuditEvent.kind == "agent.approval.approved")
        ).first()
        session.execute(delete(AuditEvent).where(AuditEvent.id == victim))
        session.commit()
    engine.dispose()
    broken = runner.invoke(app, ["audit", "verify"])
    assert broken.exit_code == 1 and "link broken" in broken.output


def test_a_run_without_a_provider_is_refused_with_how_to_configure_one(env: Path) -> None:
    result = runner.invoke(app, ["agent", "run", "email Zhang San", "-t", "send_email"])
    assert result.exit_code == 2 and "AIASSIST_AGENT_PROVIDER" in result.output


SUITE = """
k: 3
tasks:
  - name: lead-and-email
    task: Customer Zhang San wants to learn about the product; create a lead, send an intro.
    tools: [create_crm_lead, send_email]
    script:
      - tool_calls: [{name: create_crm_lead, arguments: {name: Zhang San, email: zs@example.com}}]
      - tool_calls: [{name: send_email, arguments: {to: zs@example.com, subject: Hi, body: Intro}}]
      - Done.
    expect:
      calls: [create_crm_lead, {tool: send_email, arguments: {to: zs@example.com}}]
      end_state:
        - {tool: find_lead, arguments: {email: zs@example.com}, expect: {found: true}}
  - name: forgets-the-email
    task: Create a lead for Li Si and send an intro email.
    tools: [create_crm_lead, send_email]
    script:
      - tool_calls: [{name: create_crm_lead, arguments: {name: Li Si, email: ls@example.com}}]
      - Done.
    expect:
      calls: [create_crm_lead, send_email]
"""


def test_eval_reports_pass_k_accuracy_tokens_and_cost(env: Path) -> None:
    suite = env / "suite.yaml"
    suite.write_text(SUITE)
    out = env / "report.json"
    result = runner.invoke(app, ["eval", str(suite), "--k", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["k"] == 2 and report["pass_k"] == 0.5 and report["pass_1"] == 0.5
    good, bad = report["tasks"]
    assert good["pass_all"] and good["tool_call_accuracy"] == 1.0
    assert not bad["pass_all"] and bad["tool_call_accuracy"] == 0.5
    assert "expected ['create_crm_lead', 'send_email']" in bad["failures"][0]
    assert report["input_tokens"] > 0 and report["cost"] > 0
    assert "pass^2 0.50" in result.stdout

    (env / "bad.yaml").write_text("tasks: []")
    refused = runner.invoke(app, ["eval", str(env / "bad.yaml")])
    assert refused.exit_code == 2 and "tasks" in refused.output


def test_the_docs_example_runs(tmp_path: Path) -> None:
    import re
    import subprocess
    import sys

    doc = (Path(__file__).resolve().parent.parent / "docs" / "agent.md").read_text()
    example = re.findall(r"```python\n(.*?)```", doc, flags=re.S)[0]  # the runtime's example
    done = subprocess.run(
        [sys.executable, "-c", example], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("succeeded ['create_crm_lead', 'send_email']")
