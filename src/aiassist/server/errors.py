"""How the service answers what it cannot take: a 4xx that names the field and the rule,
a 503 while its database is unreachable (the SDK falls back and retries), and a 500 only
for its own faults, logged, never echoing a traceback."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic_core import to_json
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException
from starlette.responses import Response

__all__ = ["install_error_handlers"]

log = logging.getLogger("aiassist.server")


def install_error_handlers(app: FastAPI) -> None:
    """The handlers below, and a 422 documented as the service sends it."""
    app.add_exception_handler(RequestValidationError, _invalid)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _refused)  # type: ignore[arg-type]
    app.add_exception_handler(OperationalError, _database_away)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _internal_error)

    def openapi() -> dict[str, Any]:
        built = app.openapi_schema is not None
        schema = FastAPI.openapi(app)
        if not built:
            _document_checks(schema)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _document_checks(schema: dict[str, Any]) -> None:
    """FastAPI documents a 422 as a list of field errors; the service's own checks of a
    valid-looking body (a flow that does not compile, a run without its script) answer
    422 with a message or a list of problems."""
    error = schema.get("components", {}).get("schemas", {}).get("HTTPValidationError")
    if error is not None:
        fields = error["properties"]["detail"]
        error["properties"]["detail"] = {
            "anyOf": [fields, {"type": "string"}, {"type": "object"}],
            "title": "Detail",
        }


async def _invalid(request: Request, exc: RequestValidationError) -> Response:
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    whole_body = any(tuple(e["loc"]) == ("body",) for e in exc.errors())
    if whole_body and media and media != "application/json" and not media.endswith("+json"):
        # curl -d sends form encoding: name the fix, not a pydantic error about a string
        detail = f"send the body as JSON, with 'content-type: application/json' (not {media[:100]})"
        return JSONResponse({"detail": detail}, status_code=415)
    # strict JSON has no NaN or Infinity, which Python's parser reads: echo them as strings
    body = to_json({"detail": exc.errors()}, inf_nan_mode="strings", fallback=str)
    return Response(body, status_code=422, media_type="application/json")


async def _refused(request: Request, exc: HTTPException) -> Response:
    if isinstance(exc.__cause__, RecursionError):  # FastAPI's "error parsing the body"
        detail = "the JSON body nests too deeply to parse; keep it under a few hundred levels"
        return JSONResponse({"detail": detail}, status_code=400)
    return await http_exception_handler(request, exc)


async def _database_away(request: Request, exc: OperationalError) -> JSONResponse:
    """The driver's OperationalError: connection refused, lost or timed out, or SQLite's
    database busy; not a bug in a statement, so no traceback."""
    log.warning("database unreachable on %s %s: %s", request.method, request.url.path, exc.orig)
    detail = "the service's database is unreachable; try again shortly"
    return JSONResponse({"detail": detail}, status_code=503, headers={"retry-after": "1"})


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse({"detail": "internal error; see the service log"}, status_code=500)
