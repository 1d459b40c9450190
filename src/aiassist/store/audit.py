"""The audit trail: append-only and hash-chained, so an edited or deleted row is detected.

Each event's hash covers its content and the previous event's hash. `prev_hash` is unique,
so concurrent writers cannot fork the chain: the loser of a race re-reads the head and retries.
On PostgreSQL writers also queue on an advisory lock, so they rarely race at all.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from aiassist.store.models import AuditEvent, utcnow

__all__ = ["GENESIS", "AuditLog", "ChainCheck", "append_events"]

GENESIS = "0" * 64
_RACE_RETRIES = 50
_PG_LOCK = 0x61756469  # advisory lock key of the audit chain


def _canonical_time(at: datetime) -> str:
    """One spelling of a timestamp whatever the database gives back (naive or aware)."""
    if at.tzinfo is not None:
        at = at.astimezone(UTC).replace(tzinfo=None)
    return at.isoformat(timespec="microseconds")


def event_hash(
    prev_hash: str, at: datetime, actor: str, kind: str, subject: str, data: dict[str, Any]
) -> str:
    body = json.dumps(
        [prev_hash, _canonical_time(at), actor, kind, subject, data],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass(frozen=True)
class ChainCheck:
    ok: bool
    events: int
    first_bad_id: int | None = None
    reason: str = ""


_HEAD = select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)
_LOCK = text("SELECT pg_advisory_xact_lock(:k)")


def append_events(
    connection: Connection, actor: str, events: Sequence[tuple[str, str, dict[str, Any]]]
) -> None:
    """Chain `events` (kind, subject, JSON-able data) onto the log in the caller's transaction.

    So a change and the events describing it commit together. If another writer appended
    first, the commit fails on the unique `prev_hash` (IntegrityError): retry the transaction.
    """
    if not events:
        return
    if connection.dialect.name == "postgresql":  # writers queue, not race
        connection.execute(_LOCK, {"k": _PG_LOCK})
    prev = connection.scalar(_HEAD) or GENESIS
    actor = actor[:100]
    rows = []
    for kind, long_subject, data in events:
        at, subject = utcnow(), long_subject[:200]  # as the columns hold them
        digest = event_hash(prev, at, actor, kind, subject, data)
        row = {"at": at, "actor": actor, "kind": kind, "subject": subject, "data": data}
        rows.append(row | {"prev_hash": prev, "hash": digest})
        prev = digest
    connection.execute(insert(AuditEvent), rows)  # in order: ids follow the chain


class AuditLog:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._lock = threading.Lock()  # writers of this process take turns

    def append(
        self, kind: str, subject: str, *, actor: str, data: dict[str, Any] | None = None
    ) -> None:
        payload = json.loads(json.dumps(data or {}, default=str))  # what the JSON column returns
        for attempt in range(_RACE_RETRIES):
            with self._lock, self._sessions() as session:
                append_events(session.connection(), actor, [(kind, subject, payload)])
                try:
                    session.commit()
                except IntegrityError:  # another process appended first: re-read the head
                    session.rollback()
                else:
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
