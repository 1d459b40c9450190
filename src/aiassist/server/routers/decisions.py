"""`/v1/{module}/decide` and `/v1/{module}/outcome`, generated per module so that every
module's features, decision and outcome appear with their own schema in Swagger."""

# No `from __future__ import annotations`: FastAPI must see the generated body types.

from typing import Annotated, Any, Self

from fastapi import APIRouter, Body, Depends, HTTPException, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model, model_validator
from sqlalchemy import insert

from aiassist.modules import AnyModule, UnknownModuleError, get_module
from aiassist.server.auth import require
from aiassist.store.keys import Principal
from aiassist.store.models import OutcomeRecord

__all__ = [
    "AUTH_RESPONSES",
    "MAX_BATCH",
    "ModuleInfo",
    "list_modules",
    "module_router",
    "unknown_module_router",
]

MAX_BATCH = 1000
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, invalid or revoked API key"},
    403: {"description": "The API key lacks the scope this endpoint needs"},
}
_JSON = "application/json"


class _DecideBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    record: bool = Field(
        True,
        description="False: the decisions are not stored. A point that decides on every "
        "request stores only those it will report an outcome for.",
    )

    @model_validator(mode="after")
    def _one_of(self) -> Self:
        if (getattr(self, "features", None) is None) == (getattr(self, "batch", None) is None):
            raise ValueError("send exactly one of 'features' (one decision) or 'batch' (a list)")
        return self


class ModuleInfo(BaseModel):
    name: str
    summary: str
    serving: str = Field(description="'model' or 'fallback'")
    model_version: str | None
    features_schema: dict[str, Any]


def _pascal(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _decide_body(module: AnyModule) -> type[BaseModel]:
    features = module.Features
    batch_field = Field(None, min_length=1, max_length=MAX_BATCH)
    return create_model(
        f"{_pascal(module.name)}DecideRequest",
        __base__=_DecideBody,
        __doc__=f"One decision (`features`) or up to {MAX_BATCH} (`batch`).",
        features=(features | None, None),  # type: ignore[arg-type]
        batch=(list[features] | None, batch_field),  # type: ignore[arg-type,valid-type]
    )


def _outcome_body(module: AnyModule) -> type[BaseModel]:
    return create_model(
        f"{_pascal(module.name)}OutcomeRequest",
        __config__=ConfigDict(extra="forbid"),
        decision_id=(str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")),
        outcome=(module.Outcome, ...),
    )


def module_router(module: AnyModule) -> APIRouter:
    """The decide and outcome routes of one module."""
    router = APIRouter(prefix=f"/v1/{module.name}", tags=[module.name])
    decide_body = _decide_body(module)
    outcome_body = _outcome_body(module)
    batch_model = create_model(
        f"{_pascal(module.name)}Decisions",
        decisions=(list[module.Decision], ...),  # type: ignore[name-defined]
    )
    many = TypeAdapter(list[module.Decision])  # type: ignore[name-defined]
    examples = (
        {"one": {"summary": "One decision", "value": {"features": module.example}},
         "batch": {"summary": "A batch", "value": {"batch": [module.example, module.example]}}}
        if module.example
        else None
    )  # fmt: skip

    async def decide(
        request: Request,
        body: Annotated[decide_body, Body(openapi_examples=examples)],  # type: ignore[valid-type]
        _: Principal = Depends(require("decide")),
    ) -> Response:
        decider = request.app.state.aiassist.decider
        record = body.record  # type: ignore[attr-defined]
        if body.features is not None:  # type: ignore[attr-defined]
            decision = decider.decide(module.name, body.features, record=record)  # type: ignore[attr-defined]
            return Response(decision.model_dump_json(), media_type=_JSON)
        decisions = decider.decide_many(module.name, body.batch, record=record)  # type: ignore[attr-defined]
        return Response(b'{"decisions":' + many.dump_json(decisions) + b"}", media_type=_JSON)

    outcome_examples = (
        {"outcome": {"summary": "What happened", "value": {
            "decision_id": "6f1c2e0d9b8a4f3e8d7c6b5a49382716", "outcome": module.outcome_example}}}
        if module.outcome_example
        else None
    )  # fmt: skip

    def outcome(
        request: Request,
        body: Annotated[outcome_body, Body(openapi_examples=outcome_examples)],  # type: ignore[valid-type]
        _: Principal = Depends(require("outcome")),
    ) -> dict[str, Any]:
        state = request.app.state.aiassist
        with state.db.begin() as conn:
            conn.execute(
                insert(OutcomeRecord).values(
                    decision_id=body.decision_id,  # type: ignore[attr-defined]
                    module=module.name,
                    outcome=body.outcome.model_dump(mode="json"),  # type: ignore[attr-defined]
                )
            )
        state.metrics.outcomes.labels(module.name).inc()
        return {"recorded": True, "decision_id": body.decision_id}  # type: ignore[attr-defined]

    router.add_api_route(
        "/decide",
        decide,
        methods=["POST"],
        summary=f"Decide: {module.summary}",
        description="Send `features` for one decision or `batch` for several. The answer names "
        "the model version that decided, or says the rule fallback answered.",
        responses={200: {"model": module.Decision | batch_model}, **AUTH_RESPONSES},
        response_class=Response,
    )
    router.add_api_route(
        "/outcome",
        outcome,
        methods=["POST"],
        status_code=status.HTTP_201_CREATED,
        summary=f"Record what happened after a {module.name} decision",
        responses=AUTH_RESPONSES,
    )
    return router


def unknown_module_router() -> APIRouter:
    """Catch-alls after the module routes: an unknown module is a 404 that lists the known."""
    router = APIRouter(include_in_schema=False)

    async def unknown(module: str, _: Principal = Depends(require("decide"))) -> None:
        try:
            get_module(module)
        except UnknownModuleError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"module {module!r} is not enabled here")

    for action in ("decide", "outcome"):
        router.add_api_route(f"/v1/{{module}}/{action}", unknown, methods=["POST"])
    return router


async def list_modules(request: Request) -> list[ModuleInfo]:
    decider = request.app.state.aiassist.decider
    infos = []
    for name, module in decider.modules.items():
        version = decider.served_version(name)
        infos.append(
            ModuleInfo(
                name=name,
                summary=module.summary,
                serving="model" if version else "fallback",
                model_version=version,
                features_schema=module.Features.model_json_schema(),
            )
        )
    return infos
