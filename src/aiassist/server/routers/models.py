"""Admin endpoints for the model registry: list, show, promote, roll back, tag (scope `admin`).

A tag move is written to the volume and audited; this replica applies it at once, the
others at their next poll (`AIASSIST_MODEL_POLL_SECONDS`). A version that fails a serving
check is refused and the current one keeps serving; the answer says what serves now.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, status
from pydantic import BaseModel, Field

from aiassist.registry.store import Manifest, ModelRegistry, RegistryError, TagMove
from aiassist.server.auth import require
from aiassist.server.routers.decisions import AUTH_RESPONSES
from aiassist.store.keys import Principal

__all__ = ["models_router"]

_VERSION = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class PromoteRequest(BaseModel):
    version: str = _VERSION
    reason: str = Field("", max_length=500)


class RollbackRequest(BaseModel):
    tag: str = Field("stable", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    reason: str = Field("", max_length=500)


class TagRequest(BaseModel):
    version: str | None = Field(None, min_length=1, max_length=64)
    reason: str = Field("", max_length=500)


class Serving(BaseModel):
    module: str
    serving: str | None = Field(description="The version this replica serves now (None: rule).")
    refused: str | None = None
    error: str | None = None


class ModuleModels(BaseModel):
    module: str
    tags: dict[str, str]
    serving: str | None
    versions: list[Manifest]
    verdicts: dict[str, dict[str, Any]]
    history: list[TagMove]


def models_router() -> APIRouter:
    admin = require("admin")  # one callable, so FastAPI resolves it once per request
    router = APIRouter(
        prefix="/v1/admin/models",
        tags=["models"],
        responses=AUTH_RESPONSES,
        dependencies=[Depends(admin)],
    )

    @router.get("", summary="Every module's tags and the version each serves")
    def list_models(request: Request) -> list[Serving]:
        state = request.app.state.aiassist
        return [_serving(state, name) for name in state.decider.modules]

    @router.get("/{module}", summary="A module's versions, tags, verdicts and tag history")
    def show(module: str, request: Request) -> ModuleModels:
        state = request.app.state.aiassist
        registry: ModelRegistry = state.registry
        _known(state, module)
        versions = registry.versions(module)
        return ModuleModels(
            module=module,
            tags=registry.tags(module),
            serving=state.decider.served_version(module),
            versions=[registry.manifest(module, v) for v in versions],
            verdicts={v: d for v in versions if (d := registry.verdict(module, v)) is not None},
            history=registry.history(module),
        )

    @router.post("/{module}/promote", summary="Point `stable` at a version")
    def promote(
        module: str,
        body: PromoteRequest,
        request: Request,
        principal: Principal = Depends(admin),
    ) -> Serving:
        return _move(request, module, principal, "stable", body.version, body.reason)

    @router.post("/{module}/rollback", summary="Move a tag back to its previous version")
    def rollback(
        module: str,
        body: RollbackRequest,
        request: Request,
        principal: Principal = Depends(admin),
    ) -> Serving:
        state = request.app.state.aiassist
        _known(state, module)
        try:
            move = state.registry.rollback(
                module, tag=body.tag, actor=principal.key_id, reason=body.reason
            )
        except RegistryError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        return _applied(state, module, move, principal)

    @router.put("/{module}/tags/{tag}", summary="Point any tag at a version (null removes it)")
    def tag(
        module: str,
        tag: str,
        body: TagRequest,
        request: Request,
        principal: Principal = Depends(admin),
    ) -> Serving:
        return _move(request, module, principal, tag, body.version, body.reason)

    return router


def _known(state: Any, module: str) -> None:
    if module not in state.decider.modules:
        known = ", ".join(state.decider.modules)
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"unknown module {module!r}; available: {known}"
        )


def _move(
    request: Request, module: str, principal: Principal, tag: str, version: str | None, reason: str
) -> Serving:
    state = request.app.state.aiassist
    _known(state, module)
    try:
        move = state.registry.set_tag(module, tag, version, actor=principal.key_id, reason=reason)
    except RegistryError as exc:
        code = status.HTTP_404_NOT_FOUND if "has no version" in str(exc) else 422
        raise HTTPException(code, str(exc)) from None
    return _applied(state, module, move, principal)


def _applied(state: Any, module: str, move: TagMove, principal: Principal) -> Serving:
    state.metrics.model_tag_moves.labels(module, move.tag, move.kind).inc()
    state.audit.append(
        "model.tag_moved" if move.kind == "set" else "model.rolled_back",
        f"{module}/{move.tag}",
        actor=principal.key_id,
        data=move.model_dump(mode="json"),
    )
    state.watcher.sync(retry_refused=True)  # this replica follows at once, re-checking
    return _serving(state, module)


def _serving(state: Any, module: str) -> Serving:
    served = state.watcher.served.get(module)
    return Serving(
        module=module,
        serving=state.decider.served_version(module),
        refused=served.refused if served else None,
        error=served.error if served else None,
    )
