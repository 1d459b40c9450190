"""The README's run command, exactly as a new user types it: `make run` in a fresh clone.

`make run` makes its own virtual environment and starts the console script
(`.venv/bin/aiassist up`), which, unlike `python -m aiassist`, does not have the checkout on
`sys.path`. Then the README's tour runs against it: the curl decision, the inbound email
written with smtplib, and the refund that waits for an approval. The clone is of what is
committed (as CI and a new user see it); the ports, and a one-second interval for the service
to pick up a run decided from a shell, come from the environment, so the command stays
`make run`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from .conftest import free_port, wait_for, wait_healthy

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()

pytestmark = pytest.mark.skipif(
    shutil.which("make") is None or shutil.which("git") is None or shutil.which("curl") is None,
    reason="needs make, git and curl, as the README does",
)


#: One client for the polls below: a new one per poll costs a core's worth of CPU at their pace.
POLL = httpx.Client()


@dataclass
class Running:
    checkout: Path
    url: str
    backend: str
    inbound_mail: int

    @property
    def key(self) -> str:
        return (self.checkout / ".aiassist" / "admin.key").read_text().strip()

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.key}"}


@pytest.fixture(scope="module")
def make_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    checkout = tmp_path_factory.mktemp("clone") / "aiassist"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(checkout)], check=True)
    port, backend, sink, inbound = (free_port() for _ in range(4))
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("AIASSIST_") and k != "VIRTUAL_ENV"
    } | {
        "AIASSIST_PORT": str(port),
        "AIASSIST_BACKEND_PORT": str(backend),
        "AIASSIST_MAIL_SINK_PORT": str(sink),
        "AIASSIST_INBOUND_MAIL_PORT": str(inbound),
        # a decision made from a shell is picked up within a second, not the default five
        "AIASSIST_AGENT_RECOVER_SECONDS": "1",
        "COLUMNS": "200",
    }
    log = (checkout.parent / "make-run.log").open("wb")
    proc = subprocess.Popen(
        ["make", "run"], cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,  # make, the service, its daemon and the backend: one group
    )  # fmt: skip
    running = Running(checkout, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{backend}", inbound)
    try:
        try:
            wait_healthy(running.url, timeout=300, proc=proc)  # it installs first
        except (AssertionError, TimeoutError):
            raise AssertionError((checkout.parent / "make-run.log").read_text()[-3000:]) from None
        yield running
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_the_console_script_serves_the_example_backend(make_run: Running) -> None:
    flows = httpx.get(f"{make_run.url}/v1/flows", headers=make_run.headers).json()
    assert {f["name"] for f in flows} == {"lead_intake", "ticket_intake", "refund", "daily_report"}
    assert httpx.get(f"{make_run.backend}/healthz").status_code == 200


def test_the_readme_curl_decision(make_run: Running) -> None:
    key_line = re.search(r"^\$ (KEY=.*)$", README, flags=re.M)
    calls = re.findall(r"^\$ (curl (?:.*\\\n)*.*)$", README, flags=re.M)
    assert key_line and calls
    host = make_run.url.split("//")[1]
    for call in calls:
        script = f"{key_line.group(1)}\n{call.replace('localhost:8000', host)}"
        done = subprocess.run(
            ["bash", "-c", script], cwd=make_run.checkout, capture_output=True, text=True,
            timeout=30, check=True,
        )  # fmt: skip
        answer = json.loads(done.stdout)
        assert answer["source"] in ("model", "fallback") and answer["decision_id"], answer
        assert answer["act"] is True  # signal 0.82 over threshold 0.5, model or rule


def test_the_readme_email_becomes_a_lead(make_run: Running) -> None:
    block = re.search(r"^\$ (\.venv/bin/python - <<'EOF'\n.*?\nEOF)$", README, flags=re.M | re.S)
    assert block, "the README's email snippet"
    script = block.group(1).replace('"127.0.0.1", 2525', f'"127.0.0.1", {make_run.inbound_mail}')
    subprocess.run(["bash", "-c", script], cwd=make_run.checkout, check=True, timeout=60)

    def leads() -> list[tuple[str, bool]]:
        found = POLL.get(f"{make_run.backend}/leads").json()
        return [(lead["status"], lead["follow_up_at"] is not None) for lead in found]

    wait_for(lambda: leads() == [("contacted", True)], 60, "the lead_intake flow")
    sent = list((make_run.checkout / ".aiassist" / "mail").glob("*.eml"))
    assert any("To: zhangsan@example.com" in mail.read_text() for mail in sent)


def start_refund(make_run: Running, name: str, email: str) -> tuple[dict[str, str], str]:
    """An order of a new customer, and the refund flow started for it: (run, approval id)."""
    customer = httpx.post(f"{make_run.backend}/customers", json={"name": name, "email": email})
    order = httpx.post(
        f"{make_run.backend}/orders",
        json={"customer_id": str(customer.json()["id"]), "amount": 120},
    ).json()
    run = httpx.post(
        f"{make_run.url}/v1/flows/refund/runs",
        headers=make_run.headers,
        json={"input": {"order_id": order["id"], "amount": 20, "reason": "damaged",
                        "email": email}},
    ).json()  # fmt: skip
    assert run["status"] == "waiting_approval", run
    [approval] = run["pending_approvals"]
    assert order_status(make_run, order["id"]) != "refunded"
    return {"run": run["id"], "order": order["id"]}, approval


def order_status(make_run: Running, order_id: str) -> str:
    return str(POLL.get(f"{make_run.backend}/orders/{order_id}").json()["status"])


def paid(make_run: Running, refund: dict[str, str]) -> None:
    wait_for(
        lambda: order_status(make_run, refund["order"]) == "refunded",
        30,
        "the approved refund to be paid",
    )
    run = f"{make_run.url}/v1/agent/runs/{refund['run']}"
    status = lambda: POLL.get(run, headers=make_run.headers).json()["status"]  # noqa: E731
    wait_for(lambda: status() == "succeeded", 30, "the refund run to succeed")


def test_the_refund_waits_for_its_approval(make_run: Running) -> None:
    refund, approval = start_refund(make_run, "Li Si", "lisi@example.com")
    decided = httpx.post(
        f"{make_run.url}/v1/approvals/{approval}",
        headers=make_run.headers,
        json={"decision": "approve", "wait_seconds": 10},
    )
    assert decided.status_code == 200, decided.text
    paid(make_run, refund)


def test_the_refund_is_approved_from_a_shell_beside_it(make_run: Running) -> None:
    """`.venv/bin/aiassist agent approve <id>` in the checkout, with nothing set: the CLI
    records the decision and the service, which has the flow, pays the refund."""
    refund, approval = start_refund(make_run, "Wang Wu", "wangwu@example.com")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIASSIST_")}
    decided = subprocess.run(
        [".venv/bin/aiassist", "agent", "approve", approval],
        cwd=make_run.checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert decided.returncode == 0, decided.stdout + decided.stderr
    assert "the run goes on in the service" in decided.stderr
    paid(make_run, refund)
