"""API keys: `aia_<id>_<secret>`, stored as the SHA-256 of the secret, with scopes.

Keys are 256-bit random secrets, so a fast hash is enough (no password stretching needed).
Verified keys are cached for `cache_seconds`, so the service does not hit the database
on every request; a revocation made in this process takes effect at once, elsewhere
within that time. Creating and revoking a key commit with their audit event.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from aiassist.store.audit import AuditLog, Event
from aiassist.store.models import ApiKey, utcnow

__all__ = ["SCOPES", "KeyStore", "NewKey", "Principal"]

#: Scopes a key can hold. `admin` implies every other scope.
SCOPES: dict[str, str] = {
    "decide": "ask modules for decisions",
    "outcome": "record outcomes of decisions",
    "agent:run": "start agent runs and read them",
    "agent:approve": "approve, edit or reject paused agent tool calls",
    "admin": "everything, including managing models and keys",
}
_PREFIX = "aia"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's public id, its name and its scopes."""

    key_id: str
    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


@dataclass(frozen=True)
class NewKey:
    principal: Principal
    token: str  # shown once, never stored


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _parse(token: str) -> tuple[str, str] | None:
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != _PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


class KeyStore:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        cache_seconds: float = 5.0,
        audit: AuditLog | None = None,
    ) -> None:
        self._sessions = sessions
        self._audit = audit or AuditLog(sessions)
        self._ttl = cache_seconds
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}
        self._lock = threading.Lock()

    def create(self, name: str, scopes: Iterable[str], *, actor: str) -> NewKey:
        wanted = frozenset(scopes)
        unknown = wanted - SCOPES.keys()
        if unknown or not wanted:
            raise ValueError(
                f"unknown scopes {sorted(unknown)}; choose from {sorted(SCOPES)}"
                if unknown
                else f"a key needs at least one scope; choose from {sorted(SCOPES)}"
            )
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)

        def change(session: Session) -> tuple[None, list[Event]]:
            scopes = ",".join(sorted(wanted))
            session.add(ApiKey(id=key_id, name=name, secret_hash=_hash(secret), scopes=scopes))
            return None, [("key.created", key_id, {"scopes": sorted(wanted)})]

        self._audit.record(change, actor=actor)
        return NewKey(Principal(key_id, name, wanted), f"{_PREFIX}_{key_id}_{secret}")

    def list(self) -> list[ApiKey]:
        with self._sessions() as session:
            return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at)))

    def revoke(self, key_id: str, *, actor: str) -> bool:
        """Revoke a key; False if there is no such active key."""

        def change(session: Session) -> tuple[bool, list[Event]]:
            row = session.get(ApiKey, key_id)
            if row is None or row.revoked_at is not None:
                return False, []
            row.revoked_at = utcnow()
            return True, [("key.revoked", key_id, {})]

        if not self._audit.record(change, actor=actor):
            return False
        with self._lock:
            self._cache.pop(key_id, None)
        return True

    def authenticate(self, token: str) -> Principal | None:
        """The principal a token stands for, or None if it is malformed, unknown or revoked."""
        parsed = _parse(token)
        if parsed is None:
            return None
        key_id, secret = parsed
        row = self._lookup(key_id)
        if row is None or row.revoked_at is not None:
            return None
        if not hmac.compare_digest(row.secret_hash, _hash(secret)):
            return None
        return Principal(row.id, row.name, frozenset(row.scopes.split(",")))

    def principal(self, key_id: str) -> Principal | None:
        """The principal of the key `key_id` as it stands now (read from the database, not the
        cache), or None if there is no such key or it was revoked. For work that outlives a
        request, e.g. an agent run resuming: it goes on only with the key's current rights."""
        with self._sessions() as session:
            row = session.get(ApiKey, key_id)
        if row is None or row.revoked_at is not None:
            return None
        return Principal(row.id, row.name, frozenset(row.scopes.split(",")))

    def _lookup(self, key_id: str) -> ApiKey | None:
        now = time.monotonic()
        cached = self._cache.get(key_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        with self._sessions() as session:
            row = session.get(ApiKey, key_id)
        with self._lock:
            if len(self._cache) > 10_000:  # unknown ids are cached too: bound the memory
                self._cache.clear()
            self._cache[key_id] = (now + self._ttl, row)
        return row
