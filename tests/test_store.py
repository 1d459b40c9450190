"""Storage on SQLite and on the real PostgreSQL server: migrations, keys, audit, recorder."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from aiassist.decider import Decider
from aiassist.metrics import Metrics
from aiassist.store import db
from aiassist.store.audit import AuditLog
from aiassist.store.db import make_engine, make_sessionmaker
from aiassist.store.keys import KeyStore
from aiassist.store.models import ApiKey, Base, DecisionRecord
from aiassist.store.recorder import DecisionRecorder
from tests.conftest import PG_ADMIN_URL, wait_for


def test_migrations_match_the_models(db_url: str) -> None:
    engine = make_engine(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_keys_authenticate_by_scope_and_revoke(keys: KeyStore) -> None:
    new = keys.create("backend", ["decide", "outcome"], actor="test")
    principal = keys.authenticate(new.token)
    assert principal is not None
    assert principal.allows("decide") and principal.allows("outcome")
    assert not principal.allows("admin")
    assert keys.authenticate(new.token + "x") is None
    assert keys.authenticate("aia_nope_secret") is None
    assert keys.authenticate("not-a-key") is None
    assert keys.revoke(principal.key_id, actor="test")
    assert keys.authenticate(new.token) is None
    assert not keys.revoke(principal.key_id, actor="test")  # already revoked


def test_admin_implies_every_scope(keys: KeyStore) -> None:
    principal = keys.authenticate(keys.create("ops", ["admin"], actor="test").token)
    assert principal is not None and principal.allows("decide") and principal.allows("outcome")


def test_key_secrets_are_not_stored(keys: KeyStore, db_url: str) -> None:
    new = keys.create("backend", ["decide"], actor="test")
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
        keys.create("x", scopes, actor="test")


def test_revocation_reaches_other_replicas_after_the_cache_time(db_url: str) -> None:
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    here, there = KeyStore(sessions, cache_seconds=0), KeyStore(sessions, cache_seconds=3600)
    new = here.create("backend", ["decide"], actor="test")
    assert there.authenticate(new.token) is not None  # now cached over there
    here.revoke(new.principal.key_id, actor="test")
    assert here.authenticate(new.token) is None
    assert there.authenticate(new.token) is not None  # stale until its cache expires
    assert KeyStore(sessions, cache_seconds=0).authenticate(new.token) is None
    engine.dispose()


def test_recorder_stores_decisions_in_batches(db_url: str) -> None:
    db = make_engine(db_url)
    metrics = Metrics(CollectorRegistry())
    recorder = DecisionRecorder(db, metrics, flush_seconds=0.05, batch_size=50)
    engine = Decider(metrics=metrics, on_decision=recorder)
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
    engine = Decider(metrics=metrics, on_decision=recorder)
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
