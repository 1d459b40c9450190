"""Statements that differ only in their constants are one query group: pglast's
fingerprint (libpg_query's, the one pg_stat_statements' normalisation mirrors) keys it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pglast

from aiassist.modules.sql.sources import Statement

__all__ = ["QueryGroup", "group_statements"]


@dataclass
class QueryGroup:
    fingerprint: str
    normalized: str  # constants replaced by $n
    example: str  # the first statement seen, with its constants: what is explained
    calls: int = 0
    total_ms: float = 0.0
    statements: int = 0  # distinct texts seen

    @property
    def mean_ms(self) -> float:
        return self.total_ms / self.calls if self.calls else 0.0


def group_statements(statements: Iterable[Statement]) -> tuple[list[QueryGroup], list[str]]:
    """Groups, most total time first (then most calls), and the texts that do not parse."""
    groups: dict[str, QueryGroup] = {}
    seen: set[str] = set()
    unparsed: list[str] = []
    for statement in statements:
        try:
            key = pglast.parser.fingerprint(statement.text)
        except pglast.parser.ParseError:
            unparsed.append(statement.text)
            continue
        group = groups.get(key)
        if group is None:
            normalized = pglast.parser.normalize(statement.text)
            group = groups[key] = QueryGroup(key, normalized, statement.text)
        group.calls += statement.calls
        group.total_ms += statement.total_ms
        if statement.text not in seen:
            seen.add(statement.text)
            group.statements += 1
    ordered = sorted(groups.values(), key=lambda g: (-g.total_ms, -g.calls, g.fingerprint))
    return ordered, unparsed
