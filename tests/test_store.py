"""Storage on SQLite and on the real PostgreSQL server: migrations, keys, audit, recorder."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine, delete, event, func, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from aiassist.agent.runs import RunStore, Unit
from aiassist.engine import Engine
from aiassist.metrics import Metrics
from aiassist.store import audit as audit_module
from aiassist.store import db, script
from aiassist.store.audit import AuditLog, chain_heads
from aiassist.store.db import make_engine, make_sessionmaker
from aiassist.store.keys import KeyStore
from aiassist.store.models import AgentMessage, AgentRun, ApiKey, AuditEvent, Base, DecisionRecord
from aiassist.store.recorder import DecisionRecorder
from tests.conftest import PG_ADMIN_URL, wait_for


def test_migrations_match_the_models(db_url: str) -> None:
    engine = make_engine(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_keys_authenticate_by_scope_and_revoke(keys: KeyStore) -> None:
    new = keys.create("backend", ["decide", "outcome"])
    principal = keys.authenticate(new.token)
    assert principal is not None
    assert principal.allows("decide") and principal.allows("outcome")
    assert not principal.allows("admin")
    assert keys.authenticate(new.token + "x") is None
    assert keys.authenticate("aia_nope_secret") is None
    assert keys.authenticate("not-a-key") is None
    assert keys.revoke(principal.key_id)
    assert keys.authenticate(new.token) is None
    assert not keys.revoke(principal.key_id)  # already revoked


def test_admin_implies_every_scope(keys: KeyStore) -> None:
    principal = keys.authenticate(keys.create("ops", ["admin"]).token)
    assert principal is not None and principal.allows("decide") and principal.allows("outcome")


def test_key_secrets_are_not_stored(keys: KeyStore, db_url: str) -> None:
    new = keys.create("backend", ["decide"])
    secret = new.token.split("_", 2)[2]
    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as session:
        row = session.scalars(select(ApiKey)).one()
    engine.dispose()
    assert secret not in (row.secret_hash, row.name, row.scopes)
    assert len(row.secret_hash) == 64


@pytest.mark.parametrize("scopes", [["root"], []])
def test_bad_scopes_are_refused(keys: KeyStore, scopes: list[str]) -> None:
    with pytest.raises(ValueError, match="choose from"):
        keys.create("x", scopes)


def test_revocation_reaches_other_replicas_after_the_cache_time(db_url: str) -> None:
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    here, there = KeyStore(sessions, cache_seconds=0), KeyStore(sessions, cache_seconds=3600)
    new = here.create("backend", ["decide"])
    assert there.authenticate(new.token) is not None  # now cached over there
    here.revoke(new.principal.key_id)
    assert here.authenticate(new.token) is None
    assert there.authenticate(new.token) is not None  # stale until its cache expires
    assert KeyStore(sessions, cache_seconds=0).authenticate(new.token) is None
    engine.dispose()


@pytest.fixture
def audit(db_url: str):  # type: ignore[no-untyped-def]
    engine = make_engine(db_url)
    yield AuditLog(make_sessionmaker(engine)), engine
    engine.dispose()


def test_audit_chain_verifies_and_detects_edits(audit) -> None:  # type: ignore[no-untyped-def]
    log, engine = audit
    for i in range(5):
        log.append("key.created", f"k{i}", actor="test", data={"n": i, "scopes": ["decide"]})
    assert log.verify().ok and log.verify().events == 5
    with engine.begin() as conn:
        conn.execute(update(AuditEvent).where(AuditEvent.subject == "k2").values(actor="mallory"))
    check = log.verify()
    assert not check.ok and check.reason == "content altered"
    assert check.first_bad_id is not None


def test_audit_chain_detects_a_deleted_row(audit) -> None:  # type: ignore[no-untyped-def]
    log, engine = audit
    for i in range(4):
        log.append("key.revoked", f"k{i}", actor="test")
    with engine.begin() as conn:
        conn.execute(delete(AuditEvent).where(AuditEvent.subject == "k1"))
    check = log.verify()
    assert not check.ok and check.reason.startswith("link broken")


def test_concurrent_appends_keep_one_chain(audit) -> None:  # type: ignore[no-untyped-def]
    log, _ = audit
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: log.append("e", str(i), actor="t", data={"i": i}), range(60)))
    check = log.verify()
    assert check.ok and check.events == 60


def test_writers_that_guess_the_head_wrong_retry_and_keep_one_chain(db_url: str) -> None:
    """Two engines play two processes: each appends onto the head it wrote last, which the
    other has moved on from every time; the unique link refuses the fork and it retries."""
    engines = [make_engine(db_url), make_engine(db_url)]
    logs = [AuditLog(make_sessionmaker(e)) for e in engines]
    stores = [RunStore(make_sessionmaker(e)) for e in engines]

    def append_unit(i: int) -> None:
        def work(unit: Unit) -> None:
            unit.audit("test.unit", str(i), {"i": i})

        stores[i % 2].unit(work, actor="test", writes_only=True)

    for i in range(12):
        logs[i % 2].append("test.append", str(i), actor="test", data={"i": i})
        append_unit(i)
    check = logs[0].verify()
    assert check.ok and check.events == 24
    with engines[0].connect() as conn:  # the chain's order is the order of the writes
        subjects = conn.scalars(select(AuditEvent.subject).order_by(AuditEvent.id)).all()
    assert subjects == [str(i) for i in range(12) for _ in range(2)]
    for engine in engines:
        engine.dispose()


def _append_from_a_process(url: str, name: str, count: int, start: Any) -> None:
    engine = make_engine(url)
    store, log = RunStore(make_sessionmaker(engine)), AuditLog(make_sessionmaker(engine))
    start.wait()
    for i in range(count):
        store.unit(
            lambda u, i=i: u.audit("test.unit", f"{name}{i}", {"i": i}),
            actor=name,
            writes_only=True,
        )
        log.append("test.append", f"{name}{i}", actor=name)
    engine.dispose()


def test_writers_in_two_processes_keep_one_chain(db_url: str) -> None:
    spawn = multiprocessing.get_context("spawn")
    start = spawn.Barrier(2)
    workers = [
        spawn.Process(target=_append_from_a_process, args=(db_url, name, 100, start))
        for name in "ab"
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    engine = make_engine(db_url)
    check = AuditLog(make_sessionmaker(engine)).verify()
    assert check.ok and check.events == 400
    if engine.dialect.name == "postgresql":  # queued on the chain's lock, both went on
        with engine.connect() as conn:
            actors = conn.scalars(select(AuditEvent.actor).order_by(AuditEvent.id)).all()
        assert sum(a != b for a, b in pairwise(actors)) >= 2
    engine.dispose()


def test_a_unit_that_only_writes_is_one_round_trip_on_postgres(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(pg_url)
    store = RunStore(make_sessionmaker(engine))
    with engine.begin() as conn:
        conn.execute(
            AgentRun.__table__.insert(),
            {
                "id": "r1",
                "principal": "t",
                "scopes": "",
                "task": "t",
                "tools": [],
                "provider": "test",
                "provider_options": {},
                "status": "running",
                "max_steps": 5,
            },
        )
    AuditLog(make_sessionmaker(engine)).append("test.first", "r1", actor="t")  # head known
    assert chain_heads.get(engine) is not None
    statements: list[str] = []
    queries: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _seen(_c: Any, _cur: Any, statement: str, *_a: Any) -> None:
        statements.append(statement)

    @event.listens_for(engine, "checkout")
    def _count(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        execute = dbapi_connection.execute
        dbapi_connection.execute = lambda q, *a, **k: (queries.append(q), execute(q, *a, **k))[1]

    send = script.Script.send
    monkeypatch.setattr(
        script.Script, "send", lambda self: (queries.append("script"), send(self))[1]
    )

    def work(unit: Unit) -> None:
        unit.message("r1", 0, "user", "hello")
        unit.message("r1", 1, "assistant", {"text": "it's done"})
        unit.execute(update(AgentRun).where(AgentRun.id == "r1").values(steps=1))
        unit.audit("test.turn", "r1", {"step": 1})
        unit.audit("test.call", "r1", {"tool": "x"})

    store.unit(work, actor="t", writes_only=True)
    assert statements == [] and queries == ["script"]  # no statement of its own: one query
    with engine.connect() as conn:
        rows = conn.execute(
            select(AgentMessage.seq, AgentMessage.content, AgentMessage.created_at).order_by(
                AgentMessage.seq
            )
        ).all()
        assert conn.scalar(select(AgentRun.steps)) == 1
    assert [(r.seq, r.content) for r in rows] == [(0, "hello"), (1, {"text": "it's done"})]
    assert all(r.created_at is not None for r in rows)  # the columns' defaults filled in
    assert AuditLog(make_sessionmaker(engine)).verify().events == 3
    engine.dispose()


def test_a_failed_script_commits_nothing_and_its_connection_goes_on(pg_url: str) -> None:
    engine = make_engine(pg_url, pool_size=1)
    row = {
        "id": "r1",
        "principal": "t",
        "scopes": "",
        "task": "refund order 42 with card 4111-1111",
        "tools": [],
        "provider": "test",
        "provider_options": {},
        "status": "running",
        "max_steps": 5,
    }
    insert = AgentRun.__table__.insert()
    with pytest.raises(IntegrityError) as failed:
        script.send(engine, [(insert, row), (insert, row)]).wait()  # the same key twice
    assert "4111" not in str(failed.value)  # the statements, not the values
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(AgentRun)) == 0
    script.send(engine, [(insert, row)], durable=False).wait()  # the one connection goes on
    with engine.connect() as conn:
        assert conn.scalar(select(AgentRun.task)) == row["task"]
    engine.dispose()


def outcomes_of_scripts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The outcome of each transaction sent as a script from now on: "ok" or the error's
    class name."""
    outcomes: list[str] = []
    wait = script.Sent.wait

    def recorded(self: script.Sent) -> None:
        try:
            wait(self)
        except Exception as exc:
            outcomes.append(type(exc).__name__)
            raise
        outcomes.append("ok")

    monkeypatch.setattr(script.Sent, "wait", recorded)
    return outcomes


def audited(name: str) -> Callable[[Unit], None]:
    """A unit's work that appends one audit event named `name`."""
    return lambda unit: unit.audit("test.unit", name, {"n": name})


def test_a_unit_whose_connection_died_is_sent_again_on_a_new_one(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "PING_IDLE_SECONDS", 3600.0)  # no check on checkout: the script
    engine = make_engine(pg_url, pool_size=1)  # finds out
    store = RunStore(make_sessionmaker(engine))
    sent = outcomes_of_scripts(monkeypatch)
    store.unit(audited("first"), actor="t", writes_only=True)  # the head is known from here
    store.unit(audited("second"), actor="t", writes_only=True)
    with engine.connect() as conn:
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:  # as a server restart would
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    admin.dispose()
    store.unit(audited("third"), actor="t", writes_only=True)
    assert sent == ["ok", "OperationalError", "ok"]  # the first unit read the head
    log = AuditLog(make_sessionmaker(engine))
    assert log.verify().ok and log.verify().events == 3
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() != pid
    engine.dispose()


def test_statements_are_prepared_once_and_sent_whole_once_dropped(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(pg_url, pool_size=1)  # one connection: the same one each time
    store = RunStore(make_sessionmaker(engine))
    outcomes = outcomes_of_scripts(monkeypatch)

    def prepared() -> list[str]:
        with engine.connect() as conn:
            return list(conn.scalars(text("SELECT name FROM pg_prepared_statements")))

    store.unit(audited("first"), actor="t", writes_only=True)  # reads the head
    store.unit(audited("second"), actor="t", writes_only=True)
    first = prepared()
    assert first and all(name.startswith("aiassist_") for name in first)  # none of psycopg's
    store.unit(audited("third"), actor="t", writes_only=True)
    assert prepared() == first  # executed by name, not prepared again
    with engine.connect() as conn:
        conn.execute(text("DEALLOCATE ALL"))
    store.unit(audited("fourth"), actor="t", writes_only=True)
    store.unit(audited("fifth"), actor="t", writes_only=True)
    # failed once, then sent whole: a pooler may have handed out another connection
    assert outcomes == ["ok", "ok", "OperationalError", "ok", "ok"]
    assert prepared() == []
    log = AuditLog(make_sessionmaker(engine))
    assert log.verify().ok and log.verify().events == 5
    engine.dispose()


def test_a_unit_sent_without_waiting_is_confirmed_or_run_again(pg_url: str) -> None:
    engine = make_engine(pg_url)
    store = RunStore(make_sessionmaker(engine))
    log = AuditLog(make_sessionmaker(engine))
    log.append("test.first", "r", actor="t")  # this process knows the head from here
    other = make_engine(pg_url)  # another writer, which holds the chain's lock a while
    with other.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": audit_module._LOCK_KEY})
        conn.commit()
        store.unit(
            lambda unit: unit.audit("test.sent", "r", {}), actor="t", writes_only=True, wait=False
        )  # back at once: the server is waiting for the lock
        assert log.verify().events == 1
        audit_module.append_events(conn, "other", [("test.other", "r", {})])  # first in
        conn.commit()
        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": audit_module._LOCK_KEY})
        conn.commit()
    # the unit sent lost the race on the chain's head: confirming it runs it again
    store.unit(lambda unit: unit.audit("test.next", "r", {}), actor="t", writes_only=True)
    with engine.connect() as conn:
        kinds = conn.scalars(select(AuditEvent.kind).order_by(AuditEvent.id)).all()
    assert kinds == ["test.first", "test.other", "test.sent", "test.next"]
    assert log.verify().ok
    store.unit(
        lambda unit: unit.audit("test.last", "r", {}), actor="t", writes_only=True, wait=False
    )
    store.confirm()  # the answer taken: it is in
    assert log.verify().events == 5
    other.dispose()
    engine.dispose()


def test_recorder_stores_decisions_in_batches(db_url: str) -> None:
    db = make_engine(db_url)
    metrics = Metrics(CollectorRegistry())
    recorder = DecisionRecorder(db, metrics, flush_seconds=0.05, batch_size=50)
    engine = Engine(metrics=metrics, on_decision=recorder)
    decisions = engine.decide_many("reference", [{"signal": i / 10} for i in range(120)])
    recorder.flush()
    with make_sessionmaker(db)() as session:
        stored = session.scalar(select(func.count()).select_from(DecisionRecord))
        first = session.get(DecisionRecord, decisions[0].decision_id)
    assert stored == 120
    assert first is not None and first.module == "reference" and first.source == "fallback"
    assert first.features == {"signal": 0.0, "threshold": 0.0}
    assert first.decision["act"] is True
    recorder.close()
    db.dispose()


def test_recorder_drops_and_counts_when_full(sqlite_url: str) -> None:
    db = make_engine(sqlite_url)
    metrics = Metrics(CollectorRegistry())
    recorder = DecisionRecorder(db, metrics, max_queue=10, flush_seconds=0.01, batch_size=1)
    engine = Engine(metrics=metrics, on_decision=recorder)
    blocker = make_engine(sqlite_url).raw_connection()
    blocker.execute("BEGIN EXCLUSIVE")  # the database is stuck: the recorder cannot write
    try:
        engine.decide_many("reference", [{"signal": 1.0}] * 500)
    finally:
        blocker.rollback()
        blocker.close()
    dropped = metrics.registry.get_sample_value("aiassist_records_dropped_total")
    assert dropped is not None and dropped >= 500 - 10 - 1
    recorder.close()  # drains what was kept
    with make_sessionmaker(db)() as session:
        kept = session.scalar(select(func.count()).select_from(DecisionRecord))
    assert kept is not None and kept + dropped == 500
    db.dispose()


def test_sqlite_commits_leave_checkpoints_to_a_background_thread(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No commit copies the WAL into the database file (and waits for the disk): the
    process's checkpointer does. With the pool's connections open, nothing else would."""
    monkeypatch.setattr(db, "CHECKPOINT_SECONDS", 0.05)
    path = Path(make_url(sqlite_url).database or "")
    engine = make_engine(sqlite_url)
    audit = AuditLog(make_sessionmaker(engine))
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
    before = path.stat().st_size
    for i in range(300):
        audit.append("test.event", str(i), actor="test", data={"text": "x" * 2000})
    wait_for(lambda: path.stat().st_size > before + 300 * 2000, 10)
    assert audit.verify().ok
    engine.dispose()


def test_a_connection_that_sat_idle_is_checked_and_replaced_if_dead(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "PING_IDLE_SECONDS", 0.0)
    engine = make_engine(pg_url)
    with engine.connect() as conn:
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:  # as a server restart or an idle timeout would
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    admin.dispose()
    with engine.connect() as conn:  # the pool noticed on checkout and connected again
        assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() != pid
    engine.dispose()
