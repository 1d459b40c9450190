"""Admin endpoints of the API drift guard (scope `admin`): incidents, version switches and
profiles. The backends' guards read the switches from the same database and follow a
rollback or a roll forward made here within their `refresh_seconds`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from pydantic import BaseModel, Field

from aiassist.drift.store import DriftError, DriftStore, incident_json, route_json
from aiassist.server.auth import require
from aiassist.server.routers.decisions import AUTH_RESPONSES
from aiassist.store.db import make_sessionmaker
from aiassist.store.keys import Principal

__all__ = ["drift_router"]

_VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Version = Annotated[str, Path(pattern=_VERSION_PATTERN, description="An API version, e.g. v2.")]
_CODES = {
    "not_found": status.HTTP_404_NOT_FOUND,
    "conflict": status.HTTP_409_CONFLICT,
    "invalid": 422,
}


class Incident(BaseModel):
    id: int
    endpoint: str
    version: str
    stable_version: str
    detected_at: datetime
    severity: str
    status: str
    action: str = Field(description="rolled_back: the version was switched; alerted: only told.")
    fields: list[dict[str, Any]] = Field(description="The offending fields and the evidence.")
    explanation: str
    observations: int
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    note: str | None
    resolved_at: datetime | None
    resolved_by: str | None
    accepted: bool


class Route(BaseModel):
    version: str
    target: str = Field(description="The version that serves its requests.")
    incident_id: int | None
    since: datetime
    actor: str
    reason: str


class AckRequest(BaseModel):
    note: str = Field("", max_length=500)


class RollbackRequest(BaseModel):
    to: str = Field(pattern=_VERSION_PATTERN, description="The version to serve it with.")
    reason: str = Field("", max_length=500)


class RollForwardRequest(BaseModel):
    accept: bool = Field(
        False,
        description="Take the fields its incidents named as an intended change of this "
        "version: they are no longer tested on it.",
    )
    reason: str = Field("", max_length=500)


class RollForward(BaseModel):
    version: str
    was_routed_to: str | None
    resolved_incidents: list[int]
    accepted: bool


class ProfileSummary(BaseModel):
    endpoint: str
    version: str
    observations: int
    updated_at: datetime
    fields: dict[str, Any] = Field(description="Per field: presence rate, types, value shapes.")


def drift_router() -> APIRouter:
    admin = require("admin")
    router = APIRouter(
        prefix="/v1/drift",
        tags=["drift"],
        responses=AUTH_RESPONSES,
        dependencies=[Depends(admin)],
    )

    def store(request: Request) -> DriftStore:
        state = request.app.state.aiassist
        cached: DriftStore | None = getattr(request.app.state, "drift_store", None)
        if cached is None:
            cached = DriftStore(make_sessionmaker(state.db), state.audit)
            request.app.state.drift_store = cached
        return cached

    def fail(exc: DriftError) -> HTTPException:
        return HTTPException(_CODES[exc.code], str(exc))

    @router.get("/incidents", summary="Drift incidents, newest first")
    def list_incidents(
        request: Request,
        status_: Annotated[
            Literal["open", "acknowledged", "resolved"] | None, Query(alias="status")
        ] = None,
        version: Annotated[str | None, Query(pattern=_VERSION_PATTERN)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[Incident]:
        rows = store(request).incidents(status_, version, limit)
        return [Incident(**incident_json(r)) for r in rows]

    @router.get("/incidents/{incident_id}", summary="One incident with its evidence")
    def show_incident(
        request: Request, incident_id: Annotated[int, Path(ge=1, le=2**62)]
    ) -> Incident:
        try:
            return Incident(**incident_json(store(request).incident(incident_id)))
        except DriftError as exc:
            raise fail(exc) from None

    @router.post("/incidents/{incident_id}/ack", summary="Acknowledge an open incident")
    def ack(
        request: Request,
        incident_id: Annotated[int, Path(ge=1, le=2**62)],
        body: AckRequest,
        principal: Principal = Depends(admin),
    ) -> Incident:
        try:
            row = store(request).acknowledge(incident_id, actor=principal.key_id, note=body.note)
        except DriftError as exc:
            raise fail(exc) from None
        return Incident(**incident_json(row))

    @router.get("/routes", summary="Versions switched to another version")
    def routes(request: Request) -> list[Route]:
        return [Route(**route_json(r)) for r in store(request).routes()]

    @router.post("/versions/{version}/rollback", summary="Serve a version with another one")
    def rollback(
        request: Request,
        version: Version,
        body: RollbackRequest,
        principal: Principal = Depends(admin),
    ) -> Route:
        try:
            row = store(request).rollback(
                version, body.to, actor=principal.key_id, reason=body.reason
            )
        except DriftError as exc:
            raise fail(exc) from None
        return Route(**route_json(row))

    @router.post(
        "/versions/{version}/roll-forward",
        summary="Serve a version by itself again and resolve its incidents",
    )
    def roll_forward(
        request: Request,
        version: Version,
        body: RollForwardRequest,
        principal: Principal = Depends(admin),
    ) -> RollForward:
        try:
            route, resolved = store(request).roll_forward(
                version, actor=principal.key_id, accept=body.accept, reason=body.reason
            )
        except DriftError as exc:
            raise fail(exc) from None
        return RollForward(
            version=version,
            was_routed_to=route.target if route else None,
            resolved_incidents=resolved,
            accepted=body.accept,
        )

    @router.get("/profiles", summary="Field profiles per endpoint and version")
    def profiles(
        request: Request,
        version: Annotated[str | None, Query(pattern=_VERSION_PATTERN)] = None,
        endpoint: Annotated[str | None, Query(max_length=200)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> list[ProfileSummary]:
        return [ProfileSummary(**p) for p in store(request).profiles(version, endpoint, limit)]

    return router
