"""Django middleware of the API drift guard: honours the version switches and profiles
requests. Put it first in MIDDLEWARE and configure it in the Django settings:

    MIDDLEWARE = ["aiassist.integrations.django.drift.DriftMiddleware", ...]
    AIASSIST_DRIFT = {"stable": "v1", "scheme": "path"}   # any DriftConfig field

A request for a switched version is rewritten before URL resolution (`path_info`, or the
version header), so Django's own URLconf serves it with the stable version.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from aiassist.drift.clients import ClientHints
from aiassist.drift.guard import DriftConfig, DriftGuard

__all__ = ["DriftMiddleware", "drift_guard"]

_guard: DriftGuard | None = None
_lock = threading.Lock()


def drift_guard() -> DriftGuard:
    """The process's guard, built once from `settings.AIASSIST_DRIFT`."""
    global _guard
    with _lock:
        if _guard is None:
            options: dict[str, Any] = dict(getattr(settings, "AIASSIST_DRIFT", {}))
            if "stable" not in options:
                raise ValueError("AIASSIST_DRIFT needs 'stable': the version to fall back to")
            _guard = DriftGuard(DriftConfig(**options))
        return _guard


def _meta_key(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


class DriftMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.guard = drift_guard()

    def __call__(self, request: HttpRequest) -> HttpResponse:
        guard = self.guard
        scheme = guard.scheme
        path = request.path_info
        meta = request.META
        version = scheme.version(path, lambda name: meta.get(_meta_key(name)))
        if version is None or not guard.knows(version):
            return self.get_response(request)
        target = guard.route(version)
        if target is not None:
            self._switch(request, path, target)
            guard.metrics.drift_rerouted.labels(version, target).inc()
        if not guard.sampled():
            return self.get_response(request)

        limit = guard.config.max_body_bytes
        body: bytes | None = None
        try:
            length = int(meta.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = limit + 1
        if length <= limit:
            if "json" in (meta.get("CONTENT_TYPE") or ""):
                body = request.body  # read and kept by Django: the view reads it again
            elif length == 0:
                body = b""

        response = self.get_response(request)

        match = getattr(request, "resolver_match", None)
        route = getattr(match, "route", None)
        if not route or response.status_code in (404, 405):
            return response
        content: bytes | None = None
        if (
            target is None
            and 200 <= response.status_code < 300
            and not response.streaming
            and "json" in (response.get("Content-Type") or "")
            and len(response.content) <= limit
        ):
            content = response.content
        client_header = guard.config.client_header
        client = meta.get(_meta_key(client_header)) if client_header else None
        hints = None
        if client is None and guard.config.identify_clients:
            hints = ClientHints(
                meta.get("HTTP_AUTHORIZATION"),
                meta.get("HTTP_X_API_KEY"),
                meta.get("HTTP_USER_AGENT"),
                meta.get("HTTP_X_FORWARDED_FOR"),
                meta.get("REMOTE_ADDR"),
            )
        guard.submit(
            request.method or "GET",
            "/" + str(route).lstrip("^"),
            version,
            body=body,
            query=meta.get("QUERY_STRING", ""),
            response=content,
            rerouted=target is not None,
            client=client,
            hints=hints,
        )
        return response

    def _switch(self, request: HttpRequest, path: str, target: str) -> None:
        scheme = self.guard.scheme
        new_path = scheme.switch(path, target)
        if new_path != path:
            prefix = request.path[: len(request.path) - len(path)]
            request.path_info = new_path
            request.path = prefix + new_path
            request.META["PATH_INFO"] = new_path
        if scheme.header:
            request.META[_meta_key(scheme.header)] = target
            request.__dict__.pop("headers", None)  # a cached view of META
