"""Real Celery workers for the tests: the brokers, a worker process, its shutdown, cleanup."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import redis
from celery import Celery

__all__ = [
    "BROKERS",
    "ROOT",
    "delete_queue",
    "reachable",
    "start_worker",
    "stop_worker",
    "worker_app",
]

ROOT = Path(__file__).resolve().parent.parent
BROKERS = {
    "rabbitmq": os.environ.get("AIASSIST_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    "redis": os.environ.get("AIASSIST_TEST_REDIS_BROKER_URL", "redis://127.0.0.1:6379/0"),
}


def worker_app(name: str, broker_url: str, queue: str) -> Celery:
    """A Celery app of the tests: one queue, no results, the test's own logging."""
    app = Celery(name, broker=broker_url, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
    )
    return app


def reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), 1):
            return True
    except OSError:
        return False


def start_worker(
    app_module: str,
    queue: str,
    env: Mapping[str, str],
    log: Path,
    *,
    pool: str = "prefork",
    concurrency: int = 1,
    name: str | None = None,
) -> subprocess.Popen[bytes]:
    """`celery -A app_module worker` on `queue`, in its own process group, logging to `log`."""
    env = dict(env)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", app_module, "worker",
                f"--concurrency={concurrency}", f"--pool={pool}", "-Q", queue,
                "--loglevel=WARNING", "--without-gossip", "--without-mingle",
                "--without-heartbeat", "-n", name or f"{queue}@%h",
            ],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    """Warm shutdown of the worker, then kill whatever is left of its process group."""
    try:
        proc.terminate()
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group this test started
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def delete_queue(app: Celery, broker: str, queue: str) -> None:
    """Remove the test's queue (and, on Redis, messages a killed worker left unacked)."""
    if broker == "redis":
        client = redis.Redis.from_url(BROKERS["redis"])
        try:
            keys = list(client.scan_iter(f"*{queue}*"))  # the lists and kombu's bindings
            if keys:
                client.delete(*keys)
            for tag, entry in client.hgetall("unacked").items():
                if json.loads(entry)[-1] == queue:  # [message, exchange, routing key]
                    client.hdel("unacked", tag)
                    client.zrem("unacked_index", tag)
        finally:
            client.close()
        return
    with app.connection_for_write() as conn:
        channel = conn.channel()
        channel.queue_delete(queue)
        channel.exchange_delete(queue)
