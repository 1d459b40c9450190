"""The audit trail: append-only and hash-chained, so an edited or deleted row is detected.

Each event's hash covers its content and the previous event's hash. `prev_hash` is unique,
so concurrent writers cannot fork the chain: the loser of a race re-reads the head and retries.
A process that writes alone appends onto the head it wrote last (`ChainHeads`), without
reading it again; once writers contend, they read it. Writers queue on a lock (an advisory
lock on PostgreSQL, SQLite's write lock), so they rarely race at all.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.base import Executable

from aiassist.store import script
from aiassist.store.models import AuditEvent, utcnow

__all__ = [
    "GENESIS",
    "AuditLog",
    "ChainCheck",
    "ChainHeads",
    "append_events",
    "append_statements",
    "chain_heads",
    "event_hash",
    "plain_json",
]

GENESIS = "0" * 64
_RACE_RETRIES = 50
_LOCK_KEY = 0x61756469  # advisory lock key of the audit chain
CONTENDED_SECONDS = 1.0


def _canonical_time(at: datetime) -> str:
    """One spelling of a timestamp whatever the database gives back (naive or aware)."""
    if at.tzinfo is not None:
        at = at.astimezone(UTC).replace(tzinfo=None)
    return at.isoformat(timespec="microseconds")


_canonical = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
).encode
_plain = json.JSONEncoder(default=str).encode


def plain_json(value: Any) -> Any:
    """`value` as a JSON column gives it back (tuples as lists, keys as strings, anything
    else JSON lacks as its `str`): what is hashed is then what is read back."""
    return json.loads(_plain(value))


def event_hash(
    prev_hash: str, at: datetime, actor: str, kind: str, subject: str, data: dict[str, Any]
) -> str:
    body = _canonical([prev_hash, _canonical_time(at), actor, kind, subject, data])
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass(frozen=True)
class ChainCheck:
    ok: bool
    events: int
    first_bad_id: int | None = None
    reason: str = ""


_HEAD = select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)
#: On PostgreSQL every append holds this lock to its commit, guessing the head or not: a
#: writer that reads the head under it then never loses the race to one that guessed.
_LOCK = text("SELECT pg_advisory_xact_lock(:k)")
_INSERT = insert(AuditEvent).inline()  # nobody reads the generated ids back


class ChainHeads:
    """The last hash this process committed to each PostgreSQL database's chain, while it is
    the only writer there: the next append chains onto it without reading it.

    The guess is safe because `prev_hash` is unique: if another writer appended meanwhile,
    the commit is refused (IntegrityError), `contended` forgets the guess and, for
    `CONTENDED_SECONDS`, appends read the head under the lock again.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._heads: weakref.WeakKeyDictionary[Engine, tuple[str | None, float]] = (
            weakref.WeakKeyDictionary()
        )

    def get(self, engine: Engine) -> str | None:
        """The head to chain onto without reading it, or None: read it under the lock.

        Always None on SQLite: there reading the head costs no round trip, and a writer
        that never reads would starve one that does (its snapshot goes stale at every
        commit of the other, which has to start again)."""
        if not _guesses(engine):
            return None
        with self._lock:
            head, contended_until = self._heads.get(engine, (None, 0.0))
        return head if time.monotonic() >= contended_until else None

    def committed(self, engine: Engine, head: str | None) -> None:
        """`head` is the chain's last hash as of a commit this process just made."""
        if head is None or not _guesses(engine):
            return
        with self._lock:
            _, contended_until = self._heads.get(engine, (None, 0.0))
            self._heads[engine] = (head, contended_until)

    def contended(self, engine: Engine) -> None:
        with self._lock:
            self._heads[engine] = (None, time.monotonic() + CONTENDED_SECONDS)


def _guesses(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


chain_heads = ChainHeads()


def append_events(
    connection: Connection,
    actor: str,
    events: Sequence[tuple[str, str, dict[str, Any]]],
    head: str | None = None,
) -> str | None:
    """Chain `events` (kind, subject, JSON-able data) onto the log in the caller's transaction
    and return the new head (None when there was nothing to append).

    So a change and the events describing it commit together. `head`, the chain's last hash
    if the caller knows it (`ChainHeads`), saves reading it. If another writer appended
    first, the insert or the commit fails on the unique `prev_hash` (IntegrityError): retry
    the transaction.
    """
    if not events:
        return None
    if connection.dialect.name == "postgresql":  # writers queue, not race
        connection.execute(_LOCK, {"k": _LOCK_KEY})
    if head is None:
        head = script.scalar(connection, _HEAD) or GENESIS
    rows = _chain_rows(head, actor, events)
    script.execute(connection, _INSERT, rows)  # in order: ids follow the chain
    return str(rows[-1]["hash"])


def append_statements(
    head: str, actor: str, events: Sequence[tuple[str, str, dict[str, Any]]]
) -> tuple[list[tuple[Executable, dict[str, Any]]], str]:
    """What `append_events` does onto a known `head` on PostgreSQL, as statements to send
    later (`aiassist.store.script`), and the new head."""
    rows = _chain_rows(head, actor, events)
    statements: list[tuple[Executable, dict[str, Any]]] = [(_LOCK, {"k": _LOCK_KEY})]
    return statements + [(_INSERT, row) for row in rows], str(rows[-1]["hash"])


def _chain_rows(
    head: str, actor: str, events: Sequence[tuple[str, str, dict[str, Any]]]
) -> list[dict[str, Any]]:
    """The audit rows of `events` chained onto `head`, in order."""
    prev = head
    actor = actor[:100]
    rows = []
    for kind, long_subject, data in events:
        at, subject = utcnow(), long_subject[:200]  # as the columns hold them
        digest = event_hash(prev, at, actor, kind, subject, data)
        row = {"at": at, "actor": actor, "kind": kind, "subject": subject, "data": data}
        rows.append(row | {"prev_hash": prev, "hash": digest})
        prev = digest
    return rows


class AuditLog:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._lock = threading.Lock()  # writers of this process take turns

    def append(
        self, kind: str, subject: str, *, actor: str, data: dict[str, Any] | None = None
    ) -> None:
        payload = plain_json(data or {})
        engine = self._sessions.kw["bind"]
        for attempt in range(_RACE_RETRIES):
            with self._lock, self._sessions() as session:
                try:
                    head = append_events(
                        session.connection(),
                        actor,
                        [(kind, subject, payload)],
                        chain_heads.get(engine),
                    )
                    session.commit()
                except IntegrityError:  # another writer appended first: read the head
                    session.rollback()
                    chain_heads.contended(engine)
                else:
                    chain_heads.committed(engine, head)
                    return
            time.sleep(random.uniform(0, 0.005 * (attempt + 1)))
        raise RuntimeError("audit log: could not append after repeated write races")

    def verify(self) -> ChainCheck:
        """Walk the chain in order; report the first row whose link or content was altered."""
        prev = GENESIS
        count = 0
        with self._sessions() as session:
            for event in session.scalars(select(AuditEvent).order_by(AuditEvent.id)):
                count += 1
                if event.prev_hash != prev:
                    return ChainCheck(
                        False,
                        count,
                        event.id,
                        "link broken: a row before it was removed or altered",
                    )
                expected = event_hash(
                    prev, event.at, event.actor, event.kind, event.subject, event.data
                )
                if event.hash != expected:
                    return ChainCheck(False, count, event.id, "content altered")
                prev = event.hash
        return ChainCheck(True, count)
