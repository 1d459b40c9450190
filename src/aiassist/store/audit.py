"""The audit trail: append-only and hash-chained, so an edited or deleted row is detected.

Events live in chains: one per agent run (`run:<id>`), and `main` for everything else (keys,
models, drift). Each event's hash covers its content and the previous event's hash in its
chain, starting from a genesis hash of the chain's name, and `(chain, seq)` is unique: two
writers cannot both append the same link. A run's chain has one writer, the process that
holds the run's lease, so runs append side by side with no lock between them.

Removing a whole chain (all of a run's events) leaves no broken link inside any chain, so a
periodic *anchor* (`anchor`, an event of the `anchor` chain) records the head of every
chain that grew since the last one. `AuditLog.verify` walks every chain, then checks that
each head an anchor recorded is still there: edits, removals inside a chain, a cut tail
and a vanished chain are all detected, up to the last anchor for the last two.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, func, insert, or_, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from aiassist.store.models import AuditEvent, utcnow

__all__ = [
    "ANCHOR_CHAIN",
    "GENESIS",
    "MAIN_CHAIN",
    "AuditLog",
    "ChainCheck",
    "Event",
    "Head",
    "Recorded",
    "append_events",
    "event_hash",
    "genesis",
    "head_of",
    "plain_json",
    "run_chain",
]

#: The chain of events that belong to no run, and the first link of the trail before
#: chains were per run (its rows keep their hashes).
MAIN_CHAIN = "main"
ANCHOR_CHAIN = "anchor"
GENESIS = "0" * 64
_RETRIES = 20

Event = tuple[str, str, dict[str, Any]]  # kind, subject, JSON-able data
T = TypeVar("T")


def run_chain(run_id: str) -> str:
    return f"run:{run_id}"


def genesis(chain: str) -> str:
    """The hash a chain's first event links to: a chain cannot be passed off as another."""
    if chain == MAIN_CHAIN:
        return GENESIS
    return hashlib.sha256(f"aiassist.audit:{chain}".encode()).hexdigest()


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
class Head:
    """Where a chain ends: its last event's number (0: empty) and hash."""

    chain: str
    seq: int
    hash: str

    @classmethod
    def empty(cls, chain: str) -> Head:
        return cls(chain, 0, genesis(chain))


@dataclass(frozen=True)
class Recorded:
    """One event of the trail, as read back."""

    at: datetime
    kind: str
    subject: str
    actor: str
    data: dict[str, Any]


@dataclass(frozen=True)
class ChainCheck:
    ok: bool
    events: int
    first_bad_id: int | None = None
    reason: str = ""
    chains: int = 0


_INSERT = insert(AuditEvent).inline()  # nobody reads the generated ids back


def head_of(connection: Connection, chain: str) -> Head:
    """The chain's head as the caller's transaction sees it."""
    row = connection.execute(
        select(AuditEvent.seq, AuditEvent.hash)
        .where(AuditEvent.chain == chain)
        .order_by(AuditEvent.seq.desc())
        .limit(1)
    ).first()
    return Head.empty(chain) if row is None else Head(chain, row.seq, row.hash)


def append_events(connection: Connection, actor: str, events: Sequence[Event], head: Head) -> Head:
    """Chain `events` onto `head` in the caller's transaction; the chain's new head.

    So a change and the events describing it commit together. If another writer appended
    to the chain after `head`, the insert fails on the unique `(chain, seq)` (IntegrityError).
    """
    if not events:
        return head
    rows = []
    seq, prev = head.seq, head.hash
    actor = actor[:100]
    for kind, long_subject, data in events:
        at, subject = utcnow(), long_subject[:200]  # as the columns hold them
        seq += 1
        digest = event_hash(prev, at, actor, kind, subject, data)
        rows.append(
            {
                "chain": head.chain,
                "seq": seq,
                "at": at,
                "actor": actor,
                "kind": kind,
                "subject": subject,
                "data": data,
                "prev_hash": prev,
                "hash": digest,
            }
        )
        prev = digest
    connection.execute(_INSERT, rows)
    return Head(head.chain, seq, prev)


class AuditLog:
    """Appends to the shared chains and verifies the whole trail."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._lock = threading.Lock()  # this process's writers of a shared chain take turns

    def append(
        self,
        kind: str,
        subject: str,
        *,
        actor: str,
        data: dict[str, Any] | None = None,
        chain: str = MAIN_CHAIN,
    ) -> None:
        self.record(lambda _: (None, [(kind, subject, data or {})]), actor=actor, chain=chain)

    def record(
        self,
        change: Callable[[Session], tuple[T, Sequence[Event]]],
        *,
        actor: str,
        chain: str = MAIN_CHAIN,
    ) -> T:
        """Run `change` and append the events it returns in one transaction, so a crash
        keeps both or neither. Writers of a chain queue on an advisory lock on PostgreSQL
        (SQLite has one writer at a time anyway); a race lost reruns the whole change."""
        for _ in range(_RETRIES - 1):
            try:
                return self._record_once(change, actor, chain)
            except IntegrityError:
                continue
        return self._record_once(change, actor, chain)

    def _record_once(
        self, change: Callable[[Session], tuple[T, Sequence[Event]]], actor: str, chain: str
    ) -> T:
        with self._lock, self._sessions.begin() as session:
            connection = session.connection()
            if connection.dialect.name == "postgresql":
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(hashtext(:chain))"), {"chain": chain}
                )
            result, events = change(session)
            session.flush()
            plain = [(kind, subject, plain_json(data)) for kind, subject, data in events]
            append_events(connection, actor, plain, head_of(connection, chain))
            return result

    def recent(self, since: datetime, kinds: Sequence[str], limit: int = 20) -> list[Recorded]:
        """Events of the main chain since `since` whose kind starts with one of `kinds`
        ("model.", "drift."), newest first."""
        with self._sessions() as session:
            rows = session.scalars(
                select(AuditEvent)
                .where(
                    AuditEvent.chain == MAIN_CHAIN,
                    AuditEvent.at >= since,
                    or_(*(AuditEvent.kind.startswith(k, autoescape=True) for k in kinds)),
                )
                .order_by(AuditEvent.id.desc())
                .limit(limit)
            ).all()
            return [Recorded(e.at, e.kind, e.subject, e.actor, dict(e.data)) for e in rows]

    def anchor(self) -> int:
        """Record the head of every chain that grew since the last anchor; how many did."""
        with self._sessions() as session:
            last = session.scalar(
                select(AuditEvent.data)
                .where(AuditEvent.chain == ANCHOR_CHAIN)
                .order_by(AuditEvent.seq.desc())
                .limit(1)
            )
            since = int(last["upto"]) if last else 0
            grown = (
                select(AuditEvent.chain, func.max(AuditEvent.seq).label("seq"))
                .where(AuditEvent.id > since, AuditEvent.chain != ANCHOR_CHAIN)
                .group_by(AuditEvent.chain)
                .subquery()
            )
            rows = session.execute(
                select(AuditEvent.chain, AuditEvent.seq, AuditEvent.hash, AuditEvent.id).join(
                    grown, (AuditEvent.chain == grown.c.chain) & (AuditEvent.seq == grown.c.seq)
                )
            ).all()
        if not rows:
            return 0
        heads = {chain: [seq, digest] for chain, seq, digest, _ in rows}
        upto = max(top for *_, top in rows)
        event = ("audit.anchor", f"{len(heads)} chains", {"upto": upto, "heads": heads})
        self.record(lambda _: (None, [event]), actor="audit", chain=ANCHOR_CHAIN)
        return len(heads)

    def verify(self) -> ChainCheck:
        """Walk every chain in order and check the heads the anchors recorded; report the
        first row whose link or content was altered, or the first recorded head gone."""
        count, chains = 0, 0
        anchored: dict[str, tuple[int, str]] = {}  # complete first: "anchor" sorts first
        chain: str | None = None
        prev, seq = "", 0

        def cut(at: int | None) -> ChainCheck | None:
            recorded = anchored.pop(chain, None) if chain is not None else None
            if recorded is None or recorded[0] <= seq:
                return None
            why = f"its events after {seq} are gone" if seq else "all its events are gone"
            return ChainCheck(False, count, at, f"chain {chain!r}: {why}", chains)

        with self._sessions() as session:
            rows = session.scalars(select(AuditEvent).order_by(AuditEvent.chain, AuditEvent.seq))
            for event in rows:
                count += 1
                if event.chain != chain:
                    if (broken := cut(event.id)) is not None:
                        return broken
                    chain, prev, seq, chains = event.chain, genesis(event.chain), 0, chains + 1
                seq += 1
                if event.seq != seq or event.prev_hash != prev:
                    why = f"link broken in chain {chain!r}: an event before it was removed"
                    return ChainCheck(False, count, event.id, why, chains)
                expected = event_hash(
                    prev, event.at, event.actor, event.kind, event.subject, event.data
                )
                recorded = anchored.get(event.chain)
                if event.hash != expected or (
                    recorded is not None and recorded[0] == seq and recorded[1] != event.hash
                ):
                    return ChainCheck(False, count, event.id, "content altered", chains)
                prev = event.hash
                if event.chain == ANCHOR_CHAIN:
                    for name, (head_seq, digest) in event.data.get("heads", {}).items():
                        anchored[name] = (int(head_seq), str(digest))
        if (broken := cut(None)) is not None:
            return broken
        if anchored:  # recorded by an anchor, and not one event of it is left
            name = min(anchored)
            why = f"chain {name!r}: all its events are gone"
            return ChainCheck(False, count, None, why, chains)
        return ChainCheck(True, count, chains=chains)
