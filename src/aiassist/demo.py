"""What `aiassist up` adds when run from a checkout: the example backend, automated.

The order center in `examples/backend` runs beside the service as its "main backend"
(deciding through the service, in remote mode, with a key of its own); its OpenAPI document
becomes the agent's tools and its flows (`examples/backend/flows`) are loaded with their
triggers: mail to sales@order-center.example on the inbound SMTP port starts `lead_intake`,
the signed webhook `support` starts `ticket_intake`, `daily_report` runs every evening.
What the backend sends goes to a local mail sink that keeps each message as a `.eml` file.
Settings already given in the environment win over the demo's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from email import message_from_bytes
from pathlib import Path
from typing import Any

import httpx
from aiosmtpd.controller import Controller

from aiassist.settings import Settings

__all__ = ["DEMO_APP", "Demo", "DemoPorts", "MailSink", "start_demo"]

DEMO_APP = Path("examples") / "backend" / "app.py"


@dataclass(frozen=True)
class DemoPorts:
    backend: int = 8080
    mail_sink: int = 8025
    inbound_mail: int = 2525


class MailSink:
    """An SMTP server keeping every message it receives as `<n>.eml` in `folder`."""

    def __init__(self, folder: Path, echo: Any = None) -> None:
        self.folder = folder
        self.echo = echo
        folder.mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        count = len(list(self.folder.glob("*.eml")))
        (self.folder / f"{count + 1:05d}.eml").write_bytes(envelope.content)
        if self.echo is not None:
            message = message_from_bytes(envelope.content)
            self.echo(f"  mail sent     to {message['To']}: {message['Subject']}")
        return "250 OK"


@dataclass
class Demo:
    backend_url: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    controllers: list[Controller] = field(default_factory=list)

    def stop(self) -> None:
        for proc in self.processes:
            proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        for controller in self.controllers:
            controller.stop()


def start_demo(
    settings: Settings,
    service_url: str,
    ports: DemoPorts,
    *,
    backend_key_file: Path,
    webhook_secrets_file: Path,
    echo: Any = print,
    preexec_fn: Any = None,
) -> Demo:
    """Start the mail sink and the backend, and point this process's settings at them.

    `backend_key_file` holds the backend's API key (scopes decide, outcome);
    `webhook_secrets_file` the secret of the `support` webhook.
    """
    data = settings.data_dir
    root = DEMO_APP.resolve().parents[2]  # the checkout: every path below is explicit
    sink = Controller(MailSink(data / "mail", echo), hostname="127.0.0.1", port=ports.mail_sink)
    sink.start()
    demo = Demo(f"http://127.0.0.1:{ports.backend}", controllers=[sink])
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIASSIST_")} | {
        "BACKEND_DATABASE_URL": f"sqlite:///{data / 'backend.db'}",
        "BACKEND_SMTP_PORT": str(ports.mail_sink),
        "AIASSIST_MODE": "remote",
        "AIASSIST_SERVICE_URL": service_url,
        "AIASSIST_API_KEY_FILE": str(backend_key_file),
    }
    backend = subprocess.Popen(  # noqa: S603 (our own interpreter, a port number)
        [sys.executable, "-m", "uvicorn", "examples.backend.app:app", "--app-dir", str(root),
         "--host", "127.0.0.1",
         "--port", str(ports.backend), "--log-level", "warning"],
        env=env,
        cwd=root,
        preexec_fn=preexec_fn,
    )  # fmt: skip
    demo.processes.append(backend)
    try:
        _wait_healthy(demo.backend_url, backend)
    except Exception:
        demo.stop()
        raise
    defaults = {
        "BACKEND_URL": demo.backend_url,
        # By file, not by import path: the console script does not have the checkout on
        # sys.path (`python -m` would, by accident of the current directory).
        "AIASSIST_AGENT_TOOLS": f"{root / 'examples' / 'backend' / 'tools.py'}:toolset",
        "AIASSIST_FLOWS_DIR": str(root / "examples" / "backend" / "flows"),
        "AIASSIST_SMTP_LISTEN": f"127.0.0.1:{ports.inbound_mail}",
        "AIASSIST_WEBHOOK_SECRETS_FILE": str(webhook_secrets_file),
    }
    for name, value in defaults.items():
        os.environ.setdefault(name, value)
    return demo


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the example backend exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the example backend did not answer at {url} in {timeout:.0f}s")
