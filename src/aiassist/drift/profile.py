"""Field profiles: per endpoint and API version, how often each field is present and with
which JSON types and value shapes.

A profile is counts, so it merges, serializes to a JSON column and forgets the distant past
cheaply: when it has seen `max_history` observations every count is halved, which weighs
history exponentially and keeps the reference close to how the stable version is used now.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiassist.drift.shapes import FieldShape

__all__ = ["PARTS", "FieldStats", "Observation", "Profile", "part_of"]

#: Where a field was seen: the JSON request body, the query string, the JSON response body.
PARTS = ("body", "query", "response")
_MAX_FIELDS = 256
_MAX_SHAPES = 16


def part_of(path: str) -> str:
    """`body.items[].sku` -> `body`."""
    return path.partition(".")[0].removesuffix("[]")


@dataclass(frozen=True, slots=True)
class Observation:
    """One request as the guard saw it: its fields, which parts were looked at (a field of a
    part that was not looked at, e.g. the response of a failed request, is not missing), and
    the client that sent it, when the guard is told how to tell clients apart."""

    fields: dict[str, FieldShape]
    parts: frozenset[str]
    client: str | None = None


@dataclass(slots=True)
class FieldStats:
    present: int = 0
    types: dict[str, int] = field(default_factory=dict)
    shapes: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"present": self.present, "types": self.types, "shapes": self.shapes}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FieldStats:
        return cls(int(data["present"]), dict(data["types"]), dict(data["shapes"]))


class Profile:
    """Counts of one (endpoint, version) stream, and the same counts per client (up to
    `max_clients`) when observations name their client. When the client table is full,
    clients that sent nothing since the last halving make room at the next one, so one-off
    callers cannot hold every place. Not thread-safe: one writer (the guard's worker
    thread) updates it."""

    def __init__(self, max_history: int = 50_000, max_clients: int = 200) -> None:
        self.max_history = max_history
        self.max_clients = max_clients
        self.observations = 0
        self.parts: dict[str, int] = dict.fromkeys(PARTS, 0)
        self.fields: dict[str, FieldStats] = {}
        self.clients: dict[str, Profile] = {}
        self._active: set[str] = set()  # clients seen since the last halving

    def add(self, obs: Observation) -> None:
        if obs.client is not None and self.max_clients:
            sub = self.clients.get(obs.client)
            if sub is None and len(self.clients) < self.max_clients:
                sub = self.clients[obs.client] = Profile(self.max_history, max_clients=0)
            if sub is not None:
                sub.add(obs)
                self._active.add(obs.client)
        self.observations += 1
        for part in obs.parts:
            self.parts[part] = self.parts.get(part, 0) + 1
        for name, (jtype, shape) in obs.fields.items():
            stats = self.fields.get(name)
            if stats is None:
                if len(self.fields) >= _MAX_FIELDS:
                    continue
                stats = self.fields[name] = FieldStats()
            stats.present += 1
            stats.types[jtype] = stats.types.get(jtype, 0) + 1
            key = f"{jtype}:{shape}"
            if key in stats.shapes or len(stats.shapes) < _MAX_SHAPES:
                stats.shapes[key] = stats.shapes.get(key, 0) + 1
        if self.observations >= self.max_history:
            self._halve()

    def observed(self, name: str) -> int:
        """How many observations looked at the part this field belongs to."""
        return self.parts.get(part_of(name), 0)

    def presence(self, name: str) -> float:
        seen = self.observed(name)
        stats = self.fields.get(name)
        return 0.0 if not seen or stats is None else min(1.0, stats.present / seen)

    def _halve(self) -> None:
        self.observations //= 2
        self.parts = {k: v // 2 for k, v in self.parts.items()}
        for name in list(self.fields):
            stats = self.fields[name]
            stats.present //= 2
            stats.types = {k: v // 2 for k, v in stats.types.items() if v > 1}
            stats.shapes = {k: v // 2 for k, v in stats.shapes.items() if v > 1}
            if stats.present == 0:
                del self.fields[name]
        if len(self.clients) >= self.max_clients > 0:
            self.clients = {c: sub for c, sub in self.clients.items() if c in self._active}
        self._active = set()

    # --- persistence ---------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "parts": self.parts,
            "fields": {name: stats.to_json() for name, stats in self.fields.items()},
        }
        if self.clients:
            data["clients"] = {
                client: {"observations": sub.observations} | sub.to_json()
                for client, sub in self.clients.items()
            }
        return data

    @classmethod
    def from_json(
        cls, observations: int, data: dict[str, Any], max_history: int = 50_000
    ) -> Profile:
        profile = cls(max_history)
        profile.observations = int(observations)
        for client, sub in list(data.get("clients", {}).items())[: profile.max_clients]:
            loaded = cls.from_json(sub["observations"], sub, max_history)
            loaded.max_clients = 0
            profile.clients[str(client)] = loaded
        profile._active = set(profile.clients)
        profile.parts = {str(k): int(v) for k, v in data.get("parts", {}).items()}
        profile.fields = {
            str(name): FieldStats.from_json(stats)
            for name, stats in list(data.get("fields", {}).items())[:_MAX_FIELDS]
        }
        return profile

    def summary(self) -> dict[str, Any]:
        """Presence rate, types and shapes per field, for people (the CLI and API)."""
        out: dict[str, Any] = {}
        for name in sorted(self.fields):
            stats = self.fields[name]
            out[name] = {
                "presence": round(self.presence(name), 4),
                "types": stats.types,
                "shapes": stats.shapes,
            }
        return out
