"""Database engines and migrations. SQLite (embedded default) and PostgreSQL share one schema."""

from __future__ import annotations

import sqlite3
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["alembic_config", "checkpoint", "make_engine", "make_sessionmaker", "upgrade"]

_MIGRATIONS = Path(__file__).with_name("migrations")
CHECKPOINT_SECONDS = 0.5
PING_IDLE_SECONDS = 1.0


class _Checkpointer:
    """Checkpoints the WAL of every SQLite file this process's engines write, from one
    thread of its own, so that no commit pays for it.

    Left to SQLite, the commit that crosses 1000 WAL pages copies them into the database
    and waits for the disk (`fsync`): a few milliseconds, every few hundred commits, on
    whichever request made it. A PASSIVE checkpoint here never waits for, nor blocks, a
    reader or a writer; it stops when its engines are gone.
    """

    def __init__(self) -> None:
        self._paths: weakref.WeakKeyDictionary[Engine, str] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, engine: Engine, path: str) -> None:
        with self._lock:
            self._paths[engine] = str(Path(path).resolve())
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="aiassist-sqlite-checkpoint", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(CHECKPOINT_SECONDS)
            with self._lock:
                paths = set(self._paths.values())
                if not paths:
                    self._thread = None
                    return
            for path in paths:
                checkpoint(path)


def checkpoint(path: str, mode: str = "PASSIVE") -> None:
    """Copy the WAL of the SQLite file at `path` into it, as far as no reader needs it."""
    try:  # mode=rw: a file removed meanwhile is not created again
        conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=0)
    except sqlite3.Error:
        return
    try:
        conn.execute(f"PRAGMA wal_checkpoint({mode})")
    except sqlite3.Error:  # busy, or not a database any more: the next turn tries again
        pass
    finally:
        conn.close()


_checkpointer = _Checkpointer()


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine tuned for this workload: on SQLite WAL, a busy timeout and checkpoints off
    the commit path (`_Checkpointer`); elsewhere a check of connections that sat idle
    (psycopg prepares the statements a connection runs often on its own)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        on_disk = bool(parsed.database) and parsed.database != ":memory:"
        if on_disk:
            Path(str(parsed.database)).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn: Any, _record: Any) -> None:
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            if on_disk:
                cur.execute("PRAGMA wal_autocheckpoint=0")
            cur.close()

        if on_disk:
            _checkpointer.add(engine, str(parsed.database))
        return engine
    engine = create_engine(url, **kwargs)
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: Engine) -> None:
    """Check a pooled connection on checkout, as `pool_pre_ping` does, but only when it sat
    unused for `PING_IDLE_SECONDS`: a server restart or an idle timeout is caught before
    use, and a connection in steady use does not pay a round trip per transaction."""

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get("idle_since", 0.0) < PING_IDLE_SECONDS:
            return
        try:
            cursor = dbapi_connection.cursor()
            cursor.execute("SELECT 1")
            cursor.close()
            dbapi_connection.rollback()  # leave no transaction open: the next user begins one
        except engine.dialect.loaded_dbapi.Error as exc:  # the pool connects again
            raise DisconnectionError(str(exc)) from exc


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["url"] = url
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at `url` to `revision` (creating it on SQLite)."""
    make_engine(url).dispose()  # creates the SQLite file's directory
    command.upgrade(alembic_config(url), revision)
