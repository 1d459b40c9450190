"""The drift guard's state in the database: profiles, incidents and version routes.

Every switch of a version (automatic rollback, manual rollback, roll forward) and every
acknowledgement is an event of the hash-chained audit log. The guard in the backend, the
admin API of the service and the `aiassist drift` command all go through this class, so
they agree on what a rollback is wherever it is made.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from aiassist.drift.profile import Profile
from aiassist.store.audit import AuditLog, Event
from aiassist.store.models import DriftIncident, DriftProfile, DriftRoute, utcnow

__all__ = ["DriftError", "DriftState", "DriftStore", "incident_json", "route_json"]

Status = Literal["open", "acknowledged", "resolved"]
UNRESOLVED = ("open", "acknowledged")


class DriftError(Exception):
    """A request the state does not allow; `code` maps to an HTTP status."""

    def __init__(self, message: str, code: Literal["not_found", "conflict", "invalid"]) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class DriftState:
    """What a guard needs to honour: the routes, the streams on hold, the accepted fields."""

    routes: dict[str, str]
    on_hold: frozenset[tuple[str, str]]
    accepted: dict[tuple[str, str], frozenset[str]]


def incident_json(row: DriftIncident) -> dict[str, Any]:
    return {
        "id": row.id,
        "endpoint": row.endpoint,
        "version": row.version,
        "stable_version": row.stable_version,
        "detected_at": row.detected_at,
        "severity": row.severity,
        "status": row.status,
        "action": row.action,
        "fields": row.fields,
        "explanation": row.explanation,
        "observations": row.observations,
        "acknowledged_at": row.acknowledged_at,
        "acknowledged_by": row.acknowledged_by,
        "note": row.note,
        "resolved_at": row.resolved_at,
        "resolved_by": row.resolved_by,
        "accepted": row.accepted,
    }


def route_json(row: DriftRoute) -> dict[str, Any]:
    return {
        "version": row.version,
        "target": row.target,
        "incident_id": row.incident_id,
        "since": row.since,
        "actor": row.actor,
        "reason": row.reason,
    }


class DriftStore:
    def __init__(self, sessions: sessionmaker[Session], audit: AuditLog | None = None) -> None:
        self._sessions = sessions
        self._audit = audit or AuditLog(sessions)

    # --- profiles ------------------------------------------------------------------------
    def save_profiles(self, profiles: Iterable[tuple[str, str, Profile]]) -> None:
        with self._sessions() as session:
            for endpoint, version, profile in profiles:
                session.merge(
                    DriftProfile(
                        endpoint=endpoint,
                        version=version,
                        observations=profile.observations,
                        fields=profile.to_json(),
                        updated_at=utcnow(),
                    )
                )
            session.commit()

    def load_profiles(self, max_history: int = 50_000) -> dict[tuple[str, str], Profile]:
        with self._sessions() as session:
            rows = session.scalars(select(DriftProfile)).all()
        return {
            (r.endpoint, r.version): Profile.from_json(r.observations, r.fields, max_history)
            for r in rows
        }

    def profiles(
        self, version: str | None = None, endpoint: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        query = select(DriftProfile).order_by(DriftProfile.endpoint, DriftProfile.version)
        if version is not None:
            query = query.where(DriftProfile.version == version)
        if endpoint is not None:
            query = query.where(DriftProfile.endpoint == endpoint)
        with self._sessions() as session:
            rows = session.scalars(query.limit(limit)).all()
        return [
            {
                "endpoint": r.endpoint,
                "version": r.version,
                "observations": r.observations,
                "updated_at": r.updated_at,
                "fields": Profile.from_json(r.observations, r.fields).summary(),
            }
            for r in rows
        ]

    # --- incidents -----------------------------------------------------------------------
    def open_incident(
        self,
        *,
        endpoint: str,
        version: str,
        stable_version: str,
        severity: str,
        fields: list[dict[str, Any]],
        explanation: str,
        observations: int,
        rollback: bool,
        actor: str = "drift-guard",
    ) -> tuple[DriftIncident, DriftRoute | None] | None:
        """Record a detection and, with `rollback`, switch the version to the stable one.
        None when the stream already has an unresolved incident (another process found it)."""

        def change(
            session: Session,
        ) -> tuple[tuple[DriftIncident, DriftRoute | None] | None, list[Event]]:
            existing = session.scalar(
                select(DriftIncident.id).where(
                    DriftIncident.endpoint == endpoint,
                    DriftIncident.version == version,
                    DriftIncident.status.in_(UNRESOLVED),
                )
            )
            if existing is not None:
                return None, []
            switch = (
                rollback and version != stable_version and session.get(DriftRoute, version) is None
            )
            incident = DriftIncident(
                endpoint=endpoint,
                version=version,
                stable_version=stable_version,
                severity=severity,
                status="open",
                action="rolled_back" if switch else "alerted",
                fields=fields,
                explanation=explanation[:1000],
                observations=observations,
                accepted=False,
            )
            session.add(incident)
            session.flush()
            data = {
                "endpoint": endpoint,
                "severity": severity,
                "fields": fields,
                "incident": incident.id,
            }
            events: list[Event] = [("drift.detected", f"{endpoint} {version}", data)]
            if not switch:
                return (incident, None), events
            route = DriftRoute(
                version=version,
                target=stable_version,
                incident_id=incident.id,
                actor=actor,
                reason=f"incident {incident.id}: {explanation}"[:500],
            )
            session.add(route)
            events.append(
                (
                    "drift.rolled_back",
                    f"{version}->{stable_version}",
                    {"incident": incident.id, "endpoint": endpoint},
                )
            )
            return (incident, route), events

        return self._audit.record(change, actor=actor)

    def incidents(
        self, status: Status | None = None, version: str | None = None, limit: int = 100
    ) -> list[DriftIncident]:
        query = select(DriftIncident).order_by(DriftIncident.id.desc())
        if status is not None:
            query = query.where(DriftIncident.status == status)
        if version is not None:
            query = query.where(DriftIncident.version == version)
        with self._sessions() as session:
            return list(session.scalars(query.limit(limit)).all())

    def incident(self, incident_id: int) -> DriftIncident:
        with self._sessions() as session:
            row = session.get(DriftIncident, incident_id)
        if row is None:
            raise DriftError(f"no drift incident {incident_id}", "not_found")
        return row

    def acknowledge(self, incident_id: int, *, actor: str, note: str = "") -> DriftIncident:
        """An operator has seen it: alerts about it stop, the switch stays."""

        def change(session: Session) -> tuple[DriftIncident, list[Event]]:
            row = session.get(DriftIncident, incident_id)
            if row is None:
                raise DriftError(f"no drift incident {incident_id}", "not_found")
            if row.status != "open":
                raise DriftError(f"incident {incident_id} is already {row.status}", "conflict")
            row.status, row.acknowledged_at, row.acknowledged_by = "acknowledged", utcnow(), actor
            row.note = note[:500] or None
            return row, [("drift.acknowledged", f"incident {incident_id}", {"note": note})]

        return self._audit.record(change, actor=actor)

    # --- routes --------------------------------------------------------------------------
    def routes(self) -> list[DriftRoute]:
        with self._sessions() as session:
            return list(session.scalars(select(DriftRoute).order_by(DriftRoute.version)).all())

    def rollback(self, version: str, to: str, *, actor: str, reason: str = "") -> DriftRoute:
        """Send `version`'s requests to `to` by hand."""
        if version == to:
            raise DriftError(f"cannot route {version} to itself", "invalid")

        def change(session: Session) -> tuple[DriftRoute, list[Event]]:
            existing = session.get(DriftRoute, version)
            if existing is not None:
                raise DriftError(
                    f"{version} is already routed to {existing.target}; roll it forward first",
                    "conflict",
                )
            if session.get(DriftRoute, to) is not None:
                raise DriftError(f"{to} is itself rolled back: choose its target", "conflict")
            route = DriftRoute(version=version, target=to, actor=actor, reason=reason[:500])
            session.add(route)
            return route, [("drift.rolled_back", f"{version}->{to}", {"reason": reason})]

        return self._audit.record(change, actor=actor)

    def roll_forward(
        self, version: str, *, actor: str, accept: bool = False, reason: str = ""
    ) -> tuple[DriftRoute | None, list[int]]:
        """Serve `version` by itself again and resolve its incidents. With `accept`, the
        fields those incidents named are taken as the version's intended change and are no
        longer tested on it."""

        def change(session: Session) -> tuple[tuple[DriftRoute | None, list[int]], list[Event]]:
            route = session.get(DriftRoute, version)
            rows = session.scalars(
                select(DriftIncident).where(
                    DriftIncident.version == version, DriftIncident.status.in_(UNRESOLVED)
                )
            ).all()
            if route is None and not rows:
                raise DriftError(
                    f"{version} is not rolled back and has no open incident", "conflict"
                )
            now = utcnow()
            for row in rows:
                row.status, row.resolved_at, row.resolved_by = "resolved", now, actor
                row.accepted = accept
            if route is not None:
                session.delete(route)
            resolved = [row.id for row in rows]
            data = {
                "was_routed_to": route.target if route else None,
                "resolved": resolved,
                "accepted": accept,
                "reason": reason,
            }
            return (route, resolved), [("drift.rolled_forward", version, data)]

        return self._audit.record(change, actor=actor)

    # --- what a guard honours ------------------------------------------------------------
    def state(self) -> DriftState:
        with self._sessions() as session:
            routes = {r.version: r.target for r in session.scalars(select(DriftRoute))}
            hold = session.execute(
                select(DriftIncident.endpoint, DriftIncident.version).where(
                    DriftIncident.status.in_(UNRESOLVED)
                )
            ).all()
            accepted_rows = session.execute(
                select(DriftIncident.endpoint, DriftIncident.version, DriftIncident.fields)
                .where(DriftIncident.accepted.is_(True))
                .order_by(DriftIncident.id.desc())
                .limit(1000)
            ).all()
        accepted: dict[tuple[str, str], set[str]] = {}
        for endpoint, version, fields in accepted_rows:
            names = {f["field"] for f in fields if isinstance(f, dict) and "field" in f}
            accepted.setdefault((endpoint, version), set()).update(names)
        return DriftState(
            routes=routes,
            on_hold=frozenset((e, v) for e, v in hold),
            accepted={k: frozenset(v) for k, v in accepted.items()},
        )
