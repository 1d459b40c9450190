"""Shared fixtures: real databases (SQLite and PostgreSQL on 127.0.0.1) and real servers."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from aiassist.modules import AnyModule
from aiassist.registry.store import ModelRegistry
from aiassist.server import create_app
from aiassist.settings import Settings
from aiassist.signing import verify_signature
from aiassist.store.audit import AuditLog
from aiassist.store.db import make_engine, make_sessionmaker, upgrade
from aiassist.store.keys import SCOPES, KeyStore

if TYPE_CHECKING:
    from aiassist.training.daemon import ModelDaemon

#: Maintenance connection to the machine's PostgreSQL (trust auth).
PG_ADMIN_URL = os.environ.get(
    "AIASSIST_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


# --- servers the suite needs, and the markers that say so ------------------------------------
#: Where each server is looked for, and the variable that points the tests elsewhere.
SERVERS = {
    "postgres": (PG_ADMIN_URL, "AIASSIST_TEST_POSTGRES_URL"),
    "redis": (
        os.environ.get("AIASSIST_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
        "AIASSIST_TEST_REDIS_URL",
    ),
    "rabbitmq": (
        os.environ.get("AIASSIST_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
        "AIASSIST_TEST_AMQP_URL",
    ),
}
_PORTS = {"postgres": 5432, "redis": 6379, "rabbitmq": 5672}
_POSTGRES_FIXTURES = frozenset({"pg_url", "pg_template"})


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test by the servers it needs, then `services` if any: from its own
    markers, its fixtures, and parameters that name a server (`db_url` "postgres", a
    broker "redis" or "rabbitmq")."""
    for item in items:
        needs = {m.name for m in item.iter_markers() if m.name in SERVERS}
        if _POSTGRES_FIXTURES & set(getattr(item, "fixturenames", ())):
            needs.add("postgres")
        callspec = getattr(item, "callspec", None)
        if callspec is not None:
            needs |= {v for v in callspec.params.values() if isinstance(v, str) and v in SERVERS}
        for name in sorted(needs):
            item.add_marker(name)
        if needs:
            item.add_marker("services")


def pytest_collection_finish(session: pytest.Session) -> None:
    """Stop at once, naming the server, if a selected test needs one that does not answer."""
    if session.config.option.collectonly:
        return
    wanted = {m.name for item in session.items for m in item.iter_markers() if m.name in SERVERS}
    missing = []
    for name in sorted(wanted):
        url, variable = SERVERS[name]
        parsed = urlsplit(url)
        address = (parsed.hostname or "127.0.0.1", parsed.port or _PORTS[name])
        try:
            socket.create_connection(address, timeout=1).close()
        except OSError:
            missing.append(f"  {name} at {address[0]}:{address[1]} (or set {variable})")
    if missing:
        pytest.exit(
            "these tests need servers that do not answer:\n" + "\n".join(missing) + "\n"
            "start them (bash .ci/run starts them all), or leave those tests out: "
            'pytest -m "not services"',
            returncode=3,
        )


def model_daemon(settings: Settings, module: AnyModule) -> ModelDaemon:
    """A model daemon for `module` on the database and volume of `settings` (migrated);
    dispose of `daemon.db` after."""
    from aiassist.training.daemon import ModelDaemon  # the train extra, for these tests only

    upgrade(settings.resolved_database_url)
    db = make_engine(settings.resolved_database_url)
    registry = ModelRegistry(settings.resolved_models_dir)
    audit = AuditLog(make_sessionmaker(db))
    return ModelDaemon(settings, registry, db, audit, {module.name: module})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- databases ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A migrated PostgreSQL database that per-test databases are cloned from."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"aiassist_tpl_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    yield name
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


class _Clones:
    """Clones of the template, each made for one test and dropped after it. The server copies
    the next one on a thread of its own while a test runs, and drops the used ones there too:
    a test waits for neither (each is a few hundred milliseconds of the server's I/O)."""

    def __init__(self, template: str) -> None:
        self.template = template
        self.admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="pg-clones")
        self.next: Future[str] | None = None
        self.drops: list[Future[None]] = []

    def _execute(self, statement: str) -> None:
        with self.admin.connect() as conn:
            conn.execute(text(statement))

    def _create(self) -> str:
        name = f"aiassist_t_{secrets.token_hex(4)}"
        self._execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        return name

    def take(self) -> str:
        """A database no test has used; the one after it is started at once."""
        name = (self.next or self.worker.submit(self._create)).result()
        self.next = self.worker.submit(self._create)
        return name

    def drop(self, name: str) -> None:
        statement = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
        self.drops.append(self.worker.submit(self._execute, statement))

    def close(self) -> None:
        if self.next is not None:
            self.drop(self.next.result())
        self.worker.shutdown(wait=True)
        self.admin.dispose()
        for dropped in self.drops:
            dropped.result()  # a database that could not be dropped fails the session here


@pytest.fixture(scope="session")
def _pg_clones(pg_template: str) -> Iterator[_Clones]:
    clones = _Clones(pg_template)
    yield clones
    clones.close()


@pytest.fixture
def pg_url(_pg_clones: _Clones) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for one test."""
    name = _pg_clones.take()
    yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    _pg_clones.drop(name)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database file that per-test databases are copied from."""
    path = tmp_path_factory.mktemp("sqlite-template") / "aiassist.db"
    upgrade(f"sqlite:///{path}")
    assert not path.with_name(f"{path.name}-wal").exists(), "the template is not checkpointed"
    return path


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    """A fresh, migrated SQLite database for one test: a copy of the template's file."""
    path = tmp_path / "aiassist.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each test using this runs once on SQLite and once on PostgreSQL."""
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
def sessions(db_url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on `db_url`, for tests that drive the stores directly."""
    engine = make_engine(db_url)
    yield make_sessionmaker(engine)
    engine.dispose()


def daemon_settings(pg_url: str, tmp_path: Path) -> Settings:
    """Small numbers for the model daemon's tests, so a cycle takes a second; PostgreSQL."""
    return Settings(
        data_dir=tmp_path,
        database_url=pg_url,
        record_flush_seconds=0.05,
        model_poll_seconds=0.1,
        retrain_min_outcomes=300,
        min_train_rows=100,
        holdout_fraction=0.25,
    )


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, database_url=db_url, record_flush_seconds=0.05)


@pytest.fixture
def keys(settings: Settings) -> Iterator[KeyStore]:
    engine = make_engine(settings.resolved_database_url)
    yield KeyStore(make_sessionmaker(engine), cache_seconds=0)
    engine.dispose()


@dataclass
class Tokens:
    decide: str
    outcome: str
    admin: str
    both: str

    def header(self, which: str = "both") -> dict[str, str]:
        return {"authorization": f"Bearer {getattr(self, which)}"}


@pytest.fixture
def tokens(keys: KeyStore) -> Tokens:
    return Tokens(
        decide=keys.create("decider", ["decide"], actor="test").token,
        outcome=keys.create("reporter", ["outcome"], actor="test").token,
        admin=keys.create("operator", ["admin"], actor="test").token,
        both=keys.create("backend", ["decide", "outcome"], actor="test").token,
    )


# --- servers -----------------------------------------------------------------------------
@dataclass
class LiveServer:
    """The inference service on a loopback port, in a thread of this process."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread
    app: object = field(repr=False)

    @property
    def state(self):  # type: ignore[no-untyped-def]
        return self.app.state.aiassist  # type: ignore[attr-defined]


@pytest.fixture
def live_server(settings: Settings) -> Iterator[LiveServer]:
    app = create_app(settings)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url)
    yield LiveServer(url, server, thread, app)
    server.should_exit = True
    thread.join(10)


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Any ASGI app under uvicorn on a loopback port, in a thread of this process."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), 20, "uvicorn to start")
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def wait_for(condition: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    """Poll `condition` until it holds; fail after `timeout` seconds naming `what`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(0.02)


def wait_healthy(
    url: str, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll `url`/healthz until it answers 200; fail at once if `proc` has exited. One client
    for all the polls: a new one per poll costs more CPU than the server's start-up can spare."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=0.5) as client:
        while time.monotonic() < deadline:
            assert proc is None or proc.poll() is None, f"the server exited with {proc.returncode}"
            try:
                if client.get(f"{url}/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not become healthy in {timeout}s")


class ServiceProcess:
    """`aiassist serve` as a real child process that can be stopped and started again."""

    def __init__(self, settings: Settings, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = os.environ | {
            "AIASSIST_DATA_DIR": str(settings.data_dir),
            "AIASSIST_DATABASE_URL": settings.resolved_database_url,
            "AIASSIST_LOG_LEVEL": "warning",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aiassist", "serve", "--port", str(self.port)], env=self.env
        )
        if wait:
            wait_healthy(self.url)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(15)
            self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(15)
            self.proc = None


@dataclass
class ScopedService:
    """A service process on a SQLite database of its own, holding a key of each scope."""

    process: ServiceProcess
    store: KeyStore
    tokens: dict[str, str]  # scope -> a key holding only it

    def headers(self, scope: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.tokens[scope]}"}


@contextmanager
def scoped_service(data: Path, **env: str) -> Iterator[ScopedService]:
    settings = Settings(data_dir=data, database_url=f"sqlite:///{data / 'aiassist.db'}")
    upgrade(settings.resolved_database_url)
    process = ServiceProcess(settings, free_port())
    process.env |= env
    process.start()
    engine = make_engine(settings.resolved_database_url)
    store = KeyStore(make_sessionmaker(engine), cache_seconds=0)
    tokens = {scope: store.create(f"{scope} key", [scope], actor="test").token for scope in SCOPES}
    try:
        yield ScopedService(process, store, tokens)
    finally:
        process.kill()
        engine.dispose()


@pytest.fixture
def service_process(settings: Settings) -> Iterator[ServiceProcess]:
    proc = ServiceProcess(settings, free_port())
    yield proc
    proc.kill()


def fuzz_schema(document: dict[str, Any]) -> Any:
    """A schemathesis schema of an OpenAPI document, generating valid and invalid requests."""
    import schemathesis
    from schemathesis import GenerationMode

    loaded = schemathesis.openapi.from_dict(document)
    loaded.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
    return loaded


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A Redis server of the test's own, so the test can take it away or configure it."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"

    def up() -> bool:
        try:
            import redis

            return bool(redis.Redis.from_url(url).ping())
        except Exception:
            return False

    wait_for(up, 10, "redis-server to start")
    yield url, proc
    proc.kill()
    proc.wait(10)


# --- a real webhook receiver -----------------------------------------------------------------
class Webhook:
    """A local HTTP server that records signed alerts; it answers 503 to the first
    `fail_first` posts, so the sender's retries are exercised."""

    def __init__(self, secret: str, fail_first: int = 1) -> None:
        self.alerts: list[dict[str, Any]] = []
        self.attempts = 0
        self.valid_signatures = True
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                hook.attempts += 1
                if hook.attempts <= fail_first:
                    self.send_response(503)
                    self.end_headers()
                    return
                ok = verify_signature(
                    secret,
                    self.headers["x-aiassist-timestamp"],
                    body,
                    self.headers.get("x-aiassist-signature", ""),
                )
                hook.valid_signatures &= ok
                hook.alerts.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def minilm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory for the packaged MiniLM's ONNX export, so it is made once a session."""
    return tmp_path_factory.mktemp("embeddings")
