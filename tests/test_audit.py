"""The audit trail on SQLite and the real PostgreSQL server: one hash chain per run, the
shared `main` chain, anchors, and what `verify` detects."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, delete, insert, select, text, update
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from aiassist.agent.runs import RunStore, Unit
from aiassist.cli import app
from aiassist.drift.store import DriftStore
from aiassist.store.audit import (
    ANCHOR_CHAIN,
    GENESIS,
    MAIN_CHAIN,
    AuditLog,
    Head,
    event_hash,
    genesis,
    run_chain,
)
from aiassist.store.db import make_engine, make_sessionmaker, upgrade
from aiassist.store.keys import KeyStore
from aiassist.store.models import AgentRun, AuditEvent, utcnow


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def log(engine: Engine) -> AuditLog:
    return AuditLog(make_sessionmaker(engine))


def new_run(store: RunStore, run_id: str) -> str:
    """A run stored as the runtime stores one: its row, first messages and start event."""
    run = AgentRun(
        id=run_id,
        principal="t",
        scopes="agent:run",
        task="t",
        tools=[],
        provider="test",
        provider_options={},
        status="running",
        max_steps=5,
    )
    return store.create(run, [("user", "hi")], ("agent.run.started", run_id, {}))


def turns(store: RunStore, run_id: str, count: int) -> None:
    """`count` transactions of the process driving `run_id`, each with two events."""
    state = store.load(run_id)
    for i in range(count):

        def work(unit: Unit, i: int = i) -> None:
            unit.message(len(state.messages) + i, "assistant", f"turn {i}")
            unit.audit("test.turn", run_id, {"i": i})
            unit.audit("test.call", run_id, {"i": i})

        store.write(state, work)


def test_the_main_chain_verifies_and_detects_edits(log: AuditLog, engine: Engine) -> None:
    for i in range(5):
        log.append("key.created", f"k{i}", actor="test", data={"n": i, "scopes": ["decide"]})
    check = log.verify()
    assert check.ok and check.events == 5 and check.chains == 1
    with engine.begin() as conn:
        conn.execute(update(AuditEvent).where(AuditEvent.subject == "k2").values(actor="mallory"))
    check = log.verify()
    assert not check.ok and check.reason == "content altered"
    assert check.first_bad_id is not None


def test_a_deleted_row_breaks_its_chain(log: AuditLog, engine: Engine) -> None:
    for i in range(4):
        log.append("key.revoked", f"k{i}", actor="test")
    with engine.begin() as conn:
        conn.execute(delete(AuditEvent).where(AuditEvent.subject == "k1"))
    check = log.verify()
    assert not check.ok and check.reason.startswith("link broken in chain 'main'")


def test_concurrent_appends_keep_one_chain(log: AuditLog) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: log.append("e", str(i), actor="t", data={"i": i}), range(60)))
    check = log.verify()
    assert check.ok and check.events == 60


def _append_from_a_process(url: str, name: str, count: int, start: Any) -> None:
    engine = make_engine(url)
    log = AuditLog(make_sessionmaker(engine))
    start.wait()
    for i in range(count):
        log.append("test.append", f"{name}{i}", actor=name)
    engine.dispose()


def test_writers_in_two_processes_keep_one_chain(
    db_url: str, log: AuditLog, engine: Engine
) -> None:
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
    check = log.verify()
    assert check.ok and check.events == 200
    if engine.dialect.name == "postgresql":  # queued on the chain's lock, both went on
        with engine.connect() as conn:
            actors = conn.scalars(select(AuditEvent.actor).order_by(AuditEvent.seq)).all()
        assert sum(a != b for a, b in pairwise(actors)) >= 2


_REFUSE_EVENTS = {
    "sqlite": [
        "CREATE TRIGGER refuse_events BEFORE INSERT ON audit_events "
        "BEGIN SELECT RAISE(ABORT, 'audit refused'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION refuse_events() RETURNS trigger LANGUAGE plpgsql "
        "AS $$ BEGIN RAISE EXCEPTION 'audit refused'; END $$",
        "CREATE TRIGGER refuse_events BEFORE INSERT ON audit_events "
        "FOR EACH ROW EXECUTE FUNCTION refuse_events()",
    ],
}


def test_a_change_is_not_kept_without_its_audit_event(log: AuditLog, engine: Engine) -> None:
    """A key, a version switch: made and audited in one transaction, so an event that cannot
    be written (here refused by a trigger; in life a crash between the two) undoes the change."""
    sessions = make_sessionmaker(engine)
    keys, drift = KeyStore(sessions, audit=log), DriftStore(sessions, audit=log)
    kept = keys.create("kept", ["decide"], actor="test")
    with engine.begin() as conn:
        for statement in _REFUSE_EVENTS[engine.dialect.name]:
            conn.execute(text(statement))
    with pytest.raises(DBAPIError, match="audit refused"):
        keys.create("lost", ["decide"], actor="test")
    with pytest.raises(DBAPIError, match="audit refused"):
        drift.rollback("v2", "v1", actor="test")
    with pytest.raises(DBAPIError, match="audit refused"):
        keys.revoke(kept.principal.key_id, actor="test")

    assert [key.name for key in keys.list()] == ["kept"]
    assert keys.authenticate(kept.token) is not None
    assert drift.routes() == []
    check = log.verify()
    assert check.ok and check.events == 1


def test_changes_racing_for_the_chain_are_all_kept_with_their_events(
    engine: Engine, log: AuditLog
) -> None:
    """Two stores with their own locks (as two processes): a race lost for the chain's head
    reruns the whole change, so every key is stored once with its one event."""
    sessions = make_sessionmaker(engine)
    stores = [KeyStore(sessions, audit=AuditLog(sessions)) for _ in range(2)]
    with ThreadPoolExecutor(4) as pool:
        made = list(
            pool.map(lambda i: stores[i % 2].create(f"k{i}", ["decide"], actor="t"), range(40))
        )
    assert sorted(key.name for key in stores[0].list()) == sorted(f"k{i}" for i in range(40))
    with engine.connect() as conn:
        audited = conn.scalars(select(AuditEvent.subject).where(AuditEvent.kind == "key.created"))
        assert sorted(audited) == sorted(new.principal.key_id for new in made)
    check = log.verify()
    assert check.ok and check.events == 40


def test_each_run_has_its_own_chain(log: AuditLog, engine: Engine) -> None:
    store = RunStore(make_sessionmaker(engine))
    for run_id in ("r1", "r2"):
        new_run(store, run_id)
    turns(store, "r1", 3)
    turns(store, "r2", 2)
    log.append("key.created", "k", actor="t")
    check = log.verify()
    assert check.ok and check.chains == 3 and check.events == 1 + 7 + 5
    with engine.connect() as conn:
        first = conn.execute(
            select(AuditEvent.seq, AuditEvent.prev_hash).where(AuditEvent.chain == run_chain("r1"))
        ).first()
    assert first is not None and tuple(first) == (1, genesis(run_chain("r1")))
    assert genesis(run_chain("r1")) != genesis(run_chain("r2")) != GENESIS == genesis(MAIN_CHAIN)


def test_a_run_moved_to_another_chain_breaks_it(log: AuditLog, engine: Engine) -> None:
    store = RunStore(make_sessionmaker(engine))
    new_run(store, "r1")
    turns(store, "r1", 1)
    with engine.begin() as conn:  # relabel r1's events as a run that never was
        conn.execute(
            update(AuditEvent).where(AuditEvent.chain == run_chain("r1")).values(chain="run:x")
        )
    check = log.verify()
    assert not check.ok and "run:x" in check.reason


def test_anchors_catch_a_whole_run_deleted_and_a_cut_tail(log: AuditLog, engine: Engine) -> None:
    store = RunStore(make_sessionmaker(engine))
    for run_id in ("r1", "r2", "r3"):
        new_run(store, run_id)
        turns(store, run_id, 2)
    assert log.anchor() == 3
    assert log.anchor() == 0  # nothing grew since
    turns(store, "r3", 1)
    assert log.anchor() == 1
    assert log.verify().ok
    with engine.begin() as conn:  # all of r1's events, as if it never ran
        conn.execute(delete(AuditEvent).where(AuditEvent.chain == run_chain("r1")))
    check = log.verify()
    assert not check.ok and check.reason == "chain 'run:r1': all its events are gone"
    with engine.begin() as conn:
        conn.execute(
            update(AuditEvent).where(AuditEvent.kind == "audit.anchor").values(data={})
        )  # hiding the deletion breaks the anchors' own chain instead
    assert log.verify().reason == "content altered"


def test_an_anchor_catches_the_last_events_of_a_run_cut(log: AuditLog, engine: Engine) -> None:
    store = RunStore(make_sessionmaker(engine))
    new_run(store, "r1")
    turns(store, "r1", 3)
    log.anchor()
    with engine.begin() as conn:
        conn.execute(
            delete(AuditEvent).where(AuditEvent.chain == run_chain("r1"), AuditEvent.seq > 4)
        )
    check = log.verify()
    assert not check.ok and check.reason == "chain 'run:r1': its events after 4 are gone"


def test_an_anchor_catches_a_chain_written_again(log: AuditLog, engine: Engine) -> None:
    """Someone who rewrites a whole run's chain consistently, from its genesis, cannot
    match the head an anchor recorded."""
    store = RunStore(make_sessionmaker(engine))
    new_run(store, "r1")
    log.anchor()
    with engine.begin() as conn:
        conn.execute(delete(AuditEvent).where(AuditEvent.chain == run_chain("r1")))
        at = utcnow()
        head = Head.empty(run_chain("r1"))
        digest = event_hash(head.hash, at, "t", "agent.run.started", "r1", {"forged": True})
        conn.execute(
            insert(AuditEvent),
            {
                "chain": head.chain,
                "seq": 1,
                "at": at,
                "actor": "t",
                "kind": "agent.run.started",
                "subject": "r1",
                "data": {"forged": True},
                "prev_hash": head.hash,
                "hash": digest,
            },
        )
    assert log.verify().reason == "content altered"


def test_events_written_before_chains_keep_verifying(tmp_path: Path) -> None:
    """A trail written by 0006 (one global chain) becomes the `main` chain, hashes unchanged."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0006")
    engine = make_engine(url)
    prev = GENESIS
    with engine.begin() as conn:
        for i in range(3):
            at = utcnow()
            digest = event_hash(prev, at, "cli", "key.created", f"k{i}", {"i": i})
            conn.exec_driver_sql(
                "INSERT INTO audit_events (at, actor, kind, subject, data, prev_hash, hash) "
                "VALUES (?, 'cli', 'key.created', ?, ?, ?, ?)",
                (at.isoformat(sep=" "), f"k{i}", f'{{"i": {i}}}', prev, digest),
            )
            prev = digest
    engine.dispose()
    upgrade(url)
    engine = make_engine(url)
    log = AuditLog(make_sessionmaker(engine))
    log.append("key.revoked", "k0", actor="cli")  # the main chain goes on from there
    check = log.verify()
    assert check.ok and check.events == 4 and check.chains == 1
    with engine.connect() as conn:
        assert conn.scalars(select(AuditEvent.seq).order_by(AuditEvent.id)).all() == [1, 2, 3, 4]
    engine.dispose()


def test_audit_commands_anchor_and_verify(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIASSIST_DATABASE_URL", sqlite_url)
    engine = make_engine(sqlite_url)
    store = RunStore(make_sessionmaker(engine))
    new_run(store, "r1")
    runner = CliRunner()
    anchored = runner.invoke(app, ["audit", "anchor"])
    assert anchored.exit_code == 0, anchored.output
    assert "1 chain" in anchored.output
    verified = runner.invoke(app, ["audit", "verify"])
    assert verified.exit_code == 0 and "2 chains" in verified.output, verified.output
    with engine.begin() as conn:
        conn.execute(delete(AuditEvent).where(AuditEvent.chain == run_chain("r1")))
    broken = runner.invoke(app, ["audit", "verify"])
    assert broken.exit_code == 1 and "all its events are gone" in broken.output
    with engine.connect() as conn:
        kinds = conn.scalars(select(AuditEvent.chain).distinct()).all()
    assert kinds == [ANCHOR_CHAIN]
    engine.dispose()
