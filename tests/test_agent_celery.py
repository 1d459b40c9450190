"""Agent runs driven by Celery workers: a real broker (RabbitMQ, then Redis), two real
worker processes, real PostgreSQL, and a real HTTP backend on loopback that counts side
effects and honours `Idempotency-Key`.

The workers are started exactly as a deployment starts them
(`celery -A aiassist.integrations.celery.agent worker`), configured only by `AIASSIST_*`
variables, with their tools loaded from `AIASSIST_AGENT_TOOLS`. Leases are short (8 s) so
that taking over the run of a killed worker happens within the test.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from aiassist.agent.automation import load_flows
from aiassist.agent.executor import InProcessExecutor, submit_orphaned, wait_settled
from aiassist.agent.policy import service_identity
from aiassist.agent.runs import RunInfo, RunStatus
from aiassist.agent.runtime import Runtime
from aiassist.integrations.celery.agent import (
    DRIVE_TASK,
    RECOVER_TASK,
    CeleryExecutor,
    make_app,
)
from aiassist.server.routers.agent import executor_from_settings
from aiassist.settings import Settings, SettingsError
from aiassist.store.audit import AuditLog, run_chain
from aiassist.store.db import make_engine, make_sessionmaker
from aiassist.store.models import AgentRun, AuditEvent
from tests.agent_backend import effects, serve_backend
from tests.agent_celery_app import OrderDesk, backend, tools
from tests.celery_workers import BROKERS, ROOT, delete_queue, reachable
from tests.conftest import PG_ADMIN_URL, free_port, serving, wait_for

TOOL_TIMEOUT, LEASE = 7.0, 8.0
SALES = service_identity("sales-bot", ["agent:run"])
OPS = service_identity("ops", ["agent:approve"])
LEAD = {"name": "Zhang San", "email": "zhangsan@example.com"}
SETTLE = 90.0  # generous: a loaded machine, a lease to wait out
TWO_ORDERS = """
name: two_orders
steps:
  - id: first
    tool: place_order
    args: {sku: "{{ input.first }}", quantity: 1}
  - id: second
    tool: place_order
    args: {sku: "{{ input.second }}", quantity: 1}
  - id: confirm
    tool: send_email
    args: {to: buyer@example.com, subject: "Orders {{ steps.second.order }}", body: Thanks!}
"""
FLOW = """
name: order_and_confirm
steps:
  - id: order
    tool: place_order
    args: {sku: "{{ input.sku }}", quantity: 1}
  - id: confirm
    tool: send_email
    args: {to: "{{ input.email }}", subject: "Order {{ steps.order.order }}", body: Thanks!}
"""


# --- the cluster: a database, a backend, a broker queue and two workers ----------------------
@pytest.fixture(scope="module")
def database(pg_template: str) -> Iterator[str]:
    """One PostgreSQL database for the module: the workers outlive a single test."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"aiassist_celery_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'))
    yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@dataclass
class Worker:
    name: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def owns(self, pid: int) -> bool:
        """Whether `pid` (a pool process) belongs to this worker: its process group."""
        try:
            return self.proc is not None and os.getpgid(pid) == self.proc.pid
        except ProcessLookupError:
            return False

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""


@dataclass
class Cluster:
    broker: str
    url: str  # the backend
    desk: OrderDesk
    db_url: str
    flows_dir: Path
    queue: str
    app: Celery  # the producer side
    env: dict[str, str]
    workers: list[Worker] = field(default_factory=list)

    def start(self, worker: Worker) -> None:
        with worker.log_path.open("ab") as log:
            worker.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "celery", "-A", "aiassist.integrations.celery.agent",
                    "worker", "--concurrency=1", "--pool=prefork", "--loglevel=INFO",
                    "--without-gossip", "--without-mingle", "--without-heartbeat",
                    "-n", worker.name,
                ],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def ensure_running(self) -> None:
        """Both workers up and answering (a test may have killed one)."""
        for worker in self.workers:
            if worker.proc is None or worker.proc.poll() is not None:
                self.start(worker)
        names = [w.name for w in self.workers]

        def answering() -> bool:
            replies = self.app.control.ping(destination=names, timeout=0.5)
            return {name for reply in replies for name in reply} == set(names)

        try:
            wait_for(answering, 60, "both workers to answer a ping")
        except TimeoutError:
            pytest.fail("the workers did not start:\n" + self.logs())

    def kill(self, worker: Worker) -> None:
        """SIGKILL the worker and its pool: a lost node, no warm shutdown, no ack."""
        assert worker.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(10)

    def stop(self) -> None:
        """Warm shutdown of every worker at once, then kill whatever is left of them."""
        procs = [w.proc for w in self.workers if w.proc is not None]
        for proc in procs:
            proc.terminate()
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            with contextlib.suppress(ProcessLookupError):  # the group this test started
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def logs(self) -> str:
        return "\n".join(f"--- {w.name}\n{w.log_tail()}" for w in self.workers)

    def returned(self, task_id: str) -> str | None:
        """What the task `task_id` returned, as a worker logged it (results are off)."""
        marker = f"[{task_id}] succeeded in "
        for worker in self.workers:
            text = worker.log_path.read_text(errors="replace") if worker.log_path.exists() else ""
            for line in text.splitlines():
                if marker in line:
                    return line.split(marker, 1)[1].split(": ", 1)[-1].strip()
        return None

    def active_runs(self) -> set[str]:
        """Run ids of the drive tasks the workers are executing or hold reserved now."""
        inspect = self.app.control.inspect(destination=[w.name for w in self.workers], timeout=1)
        found: set[str] = set()
        for listing in (inspect.active() or {}, inspect.reserved() or {}):
            for tasks in listing.values():
                found.update(str(t["args"][0]) for t in tasks if t["name"] == DRIVE_TASK)
        return found


@pytest.fixture(scope="module", params=["rabbitmq", "redis"])
def cluster(
    request: pytest.FixtureRequest, database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    broker = str(request.param)
    broker_url = BROKERS[broker]
    if not reachable(broker_url):
        pytest.skip(f"{broker} is not reachable")
    queue = f"aiassist-agent-test-{secrets.token_hex(4)}"
    data_dir = tmp_path_factory.mktemp(f"agent-celery-{broker}")
    flows_dir = data_dir / "flows"
    flows_dir.mkdir()
    (flows_dir / "order_and_confirm.yaml").write_text(FLOW)
    (flows_dir / "two_orders.yaml").write_text(TWO_ORDERS)
    app, desk = backend()
    with serving(app) as url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIASSIST_")} | {
            "AIASSIST_DATA_DIR": str(data_dir),
            "AIASSIST_DATABASE_URL": database,
            "AIASSIST_CELERY_BROKER_URL": broker_url,
            "AIASSIST_AGENT_QUEUE": queue,
            "AIASSIST_AGENT_TOOLS": "tests.agent_celery_app:tools_from_env",
            "AIASSIST_FLOWS_DIR": str(flows_dir),
            "AIASSIST_AGENT_TOOL_TIMEOUT_SECONDS": str(TOOL_TIMEOUT),
            "AIASSIST_AGENT_LEASE_SECONDS": str(LEASE),
            "AGENT_TEST_BACKEND": url,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        producer = make_app(
            Settings(data_dir=data_dir, celery_broker_url=broker_url, agent_queue=queue)
        )
        host = socket.gethostname()
        cluster = Cluster(broker, url, desk, database, flows_dir, queue, producer, env)
        cluster.workers = [
            Worker(f"{side}.{queue}@{host}", data_dir / f"worker-{side}.log") for side in "ab"
        ]
        try:
            cluster.ensure_running()
            yield cluster
        finally:
            desk.gate.set()  # free any request still held
            cluster.stop()
            try:
                delete_queue(producer, broker, queue)
            finally:
                producer.close()


@pytest.fixture
def sessions(cluster: Cluster) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(cluster.db_url)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def runtime(cluster: Cluster, sessions: sessionmaker[Session]) -> Runtime:
    """This process's runtime: it creates runs and decides approvals, never drives."""
    cluster.ensure_running()
    return Runtime(
        sessions,
        tools(cluster.url),
        tool_timeout=TOOL_TIMEOUT,
        lease_seconds=LEASE,
        flows=load_flows(cluster.flows_dir),
    )


async def _order_flow(runtime: Runtime, sku: str) -> str:
    """The same order as `_order_run`, as a run of the flow the workers loaded."""
    return await runtime.create_flow_run(
        "order_and_confirm", {"sku": sku, "email": "buyer@example.com"}, SALES
    )


async def _order_run(runtime: Runtime, sku: str) -> str:
    script = [
        {"tool_calls": [{"name": "place_order", "arguments": {"sku": sku, "quantity": 1}}]},
        {
            "tool_calls": [
                {
                    "name": "send_email",
                    "arguments": {"to": "buyer@example.com", "subject": sku, "body": "Thanks!"},
                }
            ]
        },
        "Ordered and confirmed.",
    ]
    return await runtime.create(
        f"order {sku} and confirm by email",
        principal=SALES,
        tools=["place_order", "send_email"],
        provider="test",
        provider_options={"script": script},
    )


async def _settled(runtime: Runtime, cluster: Cluster, run_id: str) -> RunInfo:
    info = await wait_settled(runtime, run_id, SETTLE)
    assert info.status != RunStatus.RUNNING, f"run {run_id} still running:\n{cluster.logs()}"
    return info


async def _recovered(runtime: Runtime, cluster: Cluster, run_id: str) -> RunInfo:
    """The run once it settled, sending the recover task every second as celery beat would
    every minute (it picks the run up once the dead worker's lease has ended)."""
    deadline = time.monotonic() + SETTLE
    while time.monotonic() < deadline:
        cluster.app.send_task(RECOVER_TASK)
        info = await wait_settled(runtime, run_id, 1.0)
        if info.status != RunStatus.RUNNING:
            return info
    pytest.fail(f"run {run_id} was not recovered:\n{cluster.logs()}")


def _lease_owner_pid(sessions: sessionmaker[Session], run_id: str) -> int | None:
    with sessions() as session:
        run = session.get(AgentRun, run_id)
        assert run is not None
        owner = run.lease_owner
    return int(owner.split(":")[-2]) if owner else None


# --- the tests -----------------------------------------------------------------------------
async def test_runs_submitted_to_celery_are_driven_by_both_workers_exactly_once(
    cluster: Cluster, runtime: Runtime
) -> None:
    desk = cluster.desk
    desk.reset(hold=True)  # hold each order until both workers are busy with one
    emails = effects(cluster.url).get("email", 0)
    executor = CeleryExecutor(cluster.app)
    skus = [f"sku-{i}" for i in range(4)]
    run_ids = [await _order_run(runtime, sku) for sku in skus[:2]]
    run_ids += [await _order_flow(runtime, sku) for sku in skus[2:]]
    for run_id in run_ids * 2:  # every run submitted twice: at-least-once delivery
        await executor.submit(run_id)
    with contextlib.suppress(TimeoutError):  # a slow second worker: the hold ends anyway
        wait_for(lambda: len(set(desk.held)) >= 2, 30, "both workers to hold an order")
    desk.gate.set()

    runs = [await _settled(runtime, cluster, run_id) for run_id in run_ids]
    assert [r.status for r in runs] == [RunStatus.SUCCEEDED] * 4, [r.error for r in runs]
    assert [r.output == "Ordered and confirmed." for r in runs] == [True, True, False, False]
    assert [r.flow for r in runs] == [None, None, "order_and_confirm", "order_and_confirm"]
    assert desk.placed == {sku: 1 for sku in skus}  # each side effect once
    assert effects(cluster.url)["email"] == emails + 4
    assert len(desk.workers) == 2, f"one worker did everything: {desk.workers}"
    for run in runs:
        assert [c.status for c in run.calls] == ["succeeded", "succeeded"]


async def test_a_run_waiting_for_approval_holds_no_worker_then_finishes_on_one(
    cluster: Cluster, runtime: Runtime, sessions: sessionmaker[Session]
) -> None:
    cluster.desk.reset(hold=False)
    deletes = effects(cluster.url).get("delete", 0)
    executor = CeleryExecutor(cluster.app)
    script = [
        {"tool_calls": [{"name": "create_crm_lead", "arguments": LEAD}]},
        {"tool_calls": [{"name": "delete_lead", "arguments": {"lead_id": "L-placeholder"}}]},
        "Deleted.",
    ]
    run_id = await runtime.create(
        "create then delete a lead",
        principal=SALES,
        tools=["create_crm_lead", "delete_lead"],
        provider="test",
        provider_options={"script": script},
    )
    await executor.submit(run_id)
    run = await _settled(runtime, cluster, run_id)
    assert run.status == RunStatus.WAITING_APPROVAL, run.error
    [approval_id] = run.pending_approvals
    lead_id = run.calls[0].result["id"]

    # Nothing holds the run while a person decides: no lease, no task on any worker.
    assert _lease_owner_pid(sessions, run_id) is None
    wait_for(lambda: run_id not in cluster.active_runs(), 30, "the workers to let go")
    again = cluster.app.send_task(DRIVE_TASK, args=[run_id])  # a second submit, traced
    wait_for(lambda: cluster.returned(again.id) is not None, 30, "the second submit's task")
    assert cluster.returned(again.id) == "'waiting_approval'"  # looked at, not driven
    await runtime.decide(approval_id, by=OPS, approve=True, arguments={"lead_id": lead_id})
    assert effects(cluster.url).get("delete", 0) == deletes  # decided, not yet done

    await executor.submit(run_id)  # what the API does after a decision
    done = await _settled(runtime, cluster, run_id)
    assert done.status == RunStatus.SUCCEEDED, done.error
    assert done.calls[1].result == {"deleted": True, "id": lead_id}  # the real result
    assert effects(cluster.url)["delete"] == deletes + 1


async def test_the_recover_task_sends_the_runs_nobody_drives(
    cluster: Cluster, runtime: Runtime
) -> None:
    cluster.desk.reset(hold=False)
    run_id = await _order_flow(runtime, "recovered-1")  # stored, never submitted
    cluster.app.send_task(RECOVER_TASK)  # what celery beat sends every minute
    run = await _settled(runtime, cluster, run_id)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert cluster.desk.placed == {"recovered-1": 1}


def _chain(sessions: sessionmaker[Session], run_id: str) -> list[tuple[int, str, str]]:
    """The run's audit chain as stored: seq, kind and hash of each event."""
    with sessions() as session:
        rows = session.execute(
            select(AuditEvent.seq, AuditEvent.kind, AuditEvent.hash)
            .where(AuditEvent.chain == run_chain(run_id))
            .order_by(AuditEvent.seq)
        ).all()
    return [tuple(row) for row in rows]


async def test_a_flow_whose_worker_is_killed_mid_step_keeps_its_steps_and_repeats_none(
    cluster: Cluster, runtime: Runtime, sessions: sessionmaker[Session]
) -> None:
    """Killed inside the second order: the first, acknowledged (stored with its events), is
    kept as it was and not placed again; the second, done downstream but not recorded, is
    resent with its key and answered once; the run's chain still verifies."""
    desk = cluster.desk
    desk.reset(hold=True, only="kill-2")  # placed downstream, then its answer is held
    emails = effects(cluster.url).get("email", 0)
    run_id = await runtime.create_flow_run(
        "two_orders", {"first": "kill-1", "second": "kill-2"}, SALES
    )
    await CeleryExecutor(cluster.app).submit(run_id)
    wait_for(lambda: len(desk.held) == 1, 60, "a worker to be inside the second order")

    pid = _lease_owner_pid(sessions, run_id)
    assert pid is not None, "the run in flight has no lease"
    [victim] = [w for w in cluster.workers if w.owns(pid)]
    [survivor] = [w for w in cluster.workers if w is not victim]
    acknowledged = [c for c in (await runtime.info(run_id)).calls if c.status == "succeeded"]
    assert [c.arguments["sku"] for c in acknowledged] == ["kill-1"]
    chain_before = _chain(sessions, run_id)
    assert desk.placed == {"kill-1": 1, "kill-2": 1}
    cluster.kill(victim)  # mid-step: the side effect done, its result never recorded

    if cluster.broker == "rabbitmq":  # the broker redelivers the message at once
        run = await _settled(runtime, cluster, run_id)
    else:  # Redis only after its visibility timeout: the recover task finds the run first
        run = await _recovered(runtime, cluster, run_id)
    assert run.status == RunStatus.SUCCEEDED, f"{run.error}\n{cluster.logs()}"
    assert run.calls[0] == acknowledged[0]  # the stored step, untouched
    assert _chain(sessions, run_id)[: len(chain_before)] == chain_before
    check = AuditLog(sessions).verify()
    assert check.ok, check.reason
    assert desk.placed == {"kill-1": 1, "kill-2": 1}  # no duplicate order
    assert desk.deliveries == 3  # the first once; the second resent once with its key ...
    second = run.calls[1]
    assert second.status == "succeeded" and second.result["order"] == "O2"  # ... and answered
    assert effects(cluster.url)["email"] == emails + 1
    assert survivor.proc is not None and survivor.proc.poll() is None


# --- no broker needed ----------------------------------------------------------------------
async def test_executor_from_settings(tmp_path: Path, sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        with serve_backend(free_port()) as url:
            runtime = Runtime(make_sessionmaker(engine), tools(url))
            executor = executor_from_settings(Settings(data_dir=tmp_path), runtime)
            assert isinstance(executor, InProcessExecutor)
            run_id = await runtime.create(
                "ping",
                principal=SALES,
                tools=["find_lead"],
                provider="test",
                provider_options={"script": ["nothing to do"]},
            )
            assert await submit_orphaned(runtime, executor) == [run_id]  # never handed over
            run = await wait_settled(runtime, run_id, SETTLE)
            assert run.status == RunStatus.SUCCEEDED and run.output == "nothing to do"
            await executor.aclose()
    finally:
        engine.dispose()

    with pytest.raises(SettingsError, match="AIASSIST_CELERY_BROKER_URL"):
        executor_from_settings(Settings(data_dir=tmp_path, agent_executor="celery"), runtime)
    broker = BROKERS["rabbitmq"]
    settings = Settings(
        data_dir=tmp_path, agent_executor="celery", celery_broker_url=broker, agent_queue="q1"
    )
    celery_executor = executor_from_settings(settings, runtime)
    assert isinstance(celery_executor, CeleryExecutor)
    conf = celery_executor.app.conf
    assert conf.task_default_queue == "q1" and conf.task_acks_late is True
    assert conf.worker_prefetch_multiplier == 1 and conf.task_reject_on_worker_lost is True
    assert DRIVE_TASK in celery_executor.app.tasks
    celery_executor.app.close()


def test_a_worker_whose_tools_cannot_be_loaded_stops_at_start_up(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIASSIST_")} | {
        "AIASSIST_DATA_DIR": str(tmp_path),
        "AIASSIST_CELERY_BROKER_URL": "memory://",
        "AIASSIST_AGENT_TOOLS": "tests.no_such_module:tools",
        "PYTHONPATH": str(ROOT),
    }
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "aiassist.integrations.celery.agent", "worker",
         "--pool=solo", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "AIASSIST_AGENT_TOOLS" in result.stderr + result.stdout
