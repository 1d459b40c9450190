"""Where a request says which API version it wants, and how to make it ask for another.

A scheme reads the version from the path and headers of a request, rewrites a request to
another version (the switch the drift router makes), and strips the version from a route
template so that `/v1/orders` and `/v2/orders` are one endpoint seen on two versions.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "CallableVersion",
    "HeaderLookup",
    "HeaderVersion",
    "PathVersion",
    "VersionScheme",
    "parse_scheme",
]

#: Looks a request header up by its lower-case name; None when absent.
HeaderLookup = Callable[[str], str | None]

_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class VersionScheme(Protocol):
    @property
    def header(self) -> str | None:
        """The request header set to the version a request is switched to (None: none)."""

    def version(self, path: str, headers: HeaderLookup) -> str | None:
        """The version a request asks for; None when it is not a versioned request."""

    def switch(self, path: str, version: str) -> str:
        """The path of the same request asking for `version`."""

    def endpoint(self, template: str) -> str:
        """A route template without its version."""


@dataclass(frozen=True)
class HeaderVersion:
    """The version is a header, `X-API-Version: v2`; requests without it get `default`."""

    name: str = "x-api-version"
    default: str | None = None

    @property
    def header(self) -> str:
        return self.name.lower()

    def version(self, path: str, headers: HeaderLookup) -> str | None:
        value = headers(self.header)
        if value is None:
            return self.default
        value = value.strip()
        return value if _VERSION.match(value) else None

    def switch(self, path: str, version: str) -> str:
        return path

    def endpoint(self, template: str) -> str:
        return template


@dataclass(frozen=True)
class PathVersion:
    """The version is the first path segment matching `pattern`: `/v2/orders` is `v2`."""

    pattern: str = r"v\d+(?:\.\d+)?"
    header = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "_re", re.compile(rf"^/({self.pattern})(?=/|$)"))

    def version(self, path: str, headers: HeaderLookup) -> str | None:
        m = self._re.match(path)  # type: ignore[attr-defined]
        return m.group(1) if m else None

    def switch(self, path: str, version: str) -> str:
        return self._re.sub(f"/{version}", path, count=1)  # type: ignore[attr-defined,no-any-return]

    def endpoint(self, template: str) -> str:
        stripped: str = self._re.sub("", template, count=1)  # type: ignore[attr-defined]
        return stripped or "/"


@dataclass(frozen=True)
class CallableVersion:
    """Your own rule: `get(path, headers)` names the version; `switch(path, version)` (and/or
    the `header` it sets) moves a request to another one."""

    get: Callable[[str, HeaderLookup], str | None]
    rewrite: Callable[[str, str], str] | None = None
    header: str | None = None
    strip: Callable[[str], str] | None = None

    def version(self, path: str, headers: HeaderLookup) -> str | None:
        return self.get(path, headers)

    def switch(self, path: str, version: str) -> str:
        return self.rewrite(path, version) if self.rewrite else path

    def endpoint(self, template: str) -> str:
        return self.strip(template) if self.strip else template


def parse_scheme(spec: str | VersionScheme) -> VersionScheme:
    """`"header"`, `"header:X-Api-Version"`, `"path"` or `"path:<regex>"`, or a scheme."""
    if not isinstance(spec, str):
        return spec
    kind, _, arg = spec.partition(":")
    if kind == "header":
        return HeaderVersion(arg or "x-api-version")
    if kind == "path":
        return PathVersion(arg) if arg else PathVersion()
    raise ValueError(f"unknown version scheme {spec!r}: use 'header[:name]' or 'path[:regex]'")
