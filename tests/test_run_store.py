"""The run store on the real PostgreSQL server (and SQLite): one round trip per driven
transaction, psycopg's own prepared statements, and a second writer refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.exc import IntegrityError

from aiassist.agent.runs import LeaseLost, RunState, RunStore, Unit
from aiassist.store import db
from aiassist.store.audit import AuditLog, run_chain
from aiassist.store.db import make_engine, make_sessionmaker
from aiassist.store.models import AgentMessage, AgentRun, AuditEvent
from tests.conftest import PG_ADMIN_URL
from tests.test_audit import new_run


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_url, pool_size=1)  # one connection: the same one each time
    yield engine
    engine.dispose()


def write_turn(store: RunStore, state: RunState, text: str) -> None:
    """What a model turn stores (its message, counts and events), as the run's holder."""
    seq = len(state.messages)

    def work(unit: Unit) -> None:
        unit.message(seq, "assistant", text)
        unit.store_turn(state.run.steps + 1, 10, 5, 0.0, 300)
        unit.audit("test.turn", state.run.id, {"text": text})
        unit.audit("test.call", state.run.id, {"text": text})

    store.write(state, work)
    state.messages.append(state.messages[-1])
    state.run.steps += 1


def test_a_driven_transaction_sends_its_statements_in_one_batch(
    pg_engine: Engine, tmp_path: Path
) -> None:
    store = RunStore(make_sessionmaker(pg_engine))
    new_run(store, "r1")
    state = store.load("r1")
    trace = tmp_path / "protocol.txt"
    with pg_engine.connect() as conn:  # the pool's one connection: traced from here
        pgconn = conn.connection.driver_connection.pgconn  # type: ignore[union-attr]
    with trace.open("w") as out:
        pgconn.trace(out.fileno())
        write_turn(store, state, "first")
        pgconn.untrace()
    messages = [line.split("\t") for line in trace.read_text().splitlines()]
    answers = [m[3].strip() for m in messages if m[1] == "B"]
    batches = [m[3].strip() for m in messages if m[1] == "F"]
    # three round trips whatever the number of statements: BEGIN; every statement, sent
    # without waiting for each answer; COMMIT (without the pipeline: one per statement)
    assert answers.count("ReadyForQuery") == 3
    first, second = batches.index("Sync"), batches.index("Sync", batches.index("Sync") + 1)
    assert batches[first:second].count("Execute") == 4  # the turn, its message, 2 events
    with pg_engine.connect() as conn:
        assert conn.scalar(select(AgentRun.steps)) == 1
        assert conn.scalar(select(func.count()).select_from(AgentMessage)) == 2
    assert AuditLog(make_sessionmaker(pg_engine)).verify().events == 3


def test_psycopg_prepares_the_statements_it_sees_often(pg_engine: Engine) -> None:
    store = RunStore(make_sessionmaker(pg_engine))
    new_run(store, "r1")
    state = store.load("r1")
    for i in range(8):
        write_turn(store, state, f"turn {i}")
    with pg_engine.connect() as conn:
        prepared = conn.scalars(text("SELECT statement FROM pg_prepared_statements")).all()
    for statement in (
        "UPDATE agent_runs",
        "INSERT INTO agent_messages",
        "INSERT INTO audit_events",
    ):
        assert any(s.startswith(statement) for s in prepared), statement
    assert AuditLog(make_sessionmaker(pg_engine)).verify().ok


def test_a_second_writer_of_a_run_loses_its_lease(db_url: str) -> None:
    """Two processes that both think they drive a run: the one whose view is stale is
    refused by the run's chain and stops, having written nothing."""
    engine = make_engine(db_url)
    store = RunStore(make_sessionmaker(engine))
    new_run(store, "r1")
    first, second = store.load("r1"), store.load("r1")
    write_turn(store, first, "mine")
    with pytest.raises(LeaseLost) as lost:
        write_turn(store, second, "also mine")
    assert isinstance(lost.value.__cause__, IntegrityError) and lost.value.run_id == "r1"
    with engine.connect() as conn:
        texts = conn.scalars(select(AgentMessage.content).order_by(AgentMessage.seq)).all()
        events = conn.scalar(select(func.count()).where(AuditEvent.chain == run_chain("r1")))
    assert texts == ["hi", "mine"] and events == 3
    write_turn(store, first, "still mine")  # the holder goes on
    assert AuditLog(make_sessionmaker(engine)).verify().ok
    engine.dispose()


def test_a_transaction_whose_connection_died_runs_again_on_a_new_one(
    pg_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "PING_IDLE_SECONDS", 3600.0)  # no check on checkout: the write
    store = RunStore(make_sessionmaker(pg_engine))  # finds out
    new_run(store, "r1")
    state = store.load("r1")
    write_turn(store, state, "before")
    with pg_engine.connect() as conn:
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:  # as a server restart would
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    admin.dispose()
    write_turn(store, state, "after")
    with pg_engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() != pid
        assert conn.scalar(select(AgentRun.steps)) == 2
    check = AuditLog(make_sessionmaker(pg_engine)).verify()
    assert check.ok and check.events == 5
