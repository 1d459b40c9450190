"""`EXPLAIN (FORMAT JSON)` on a read-only connection, and the plan it returns.

Statements with `$n` parameters (what pg_stat_statements keeps) are explained as a
generic plan: prepared under `plan_cache_mode = force_generic_plan`, then explained as
`EXECUTE` with NULLs, which a generic plan does not look at. ANALYZE, when allowed, runs
only statements without parameters, inside read-only transactions.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg

__all__ = ["ExplainError", "Explainer", "Plan", "PlanNode"]

_PROBE = "aiassist_probe"


class ExplainError(Exception):
    """The database refused to explain a statement (its message says why)."""


@dataclass(frozen=True)
class PlanNode:
    node_type: str
    relation: str | None
    alias: str | None
    index: str | None
    filter: str | None
    index_cond: str | None
    sort_key: tuple[str, ...]
    rows: float
    total_cost: float
    actual_rows: float | None
    depth: int

    @classmethod
    def of(cls, raw: dict[str, Any], depth: int) -> PlanNode:
        cond = raw.get("Index Cond") or raw.get("Recheck Cond") or raw.get("Hash Cond")
        actual = raw.get("Actual Rows")
        return cls(
            node_type=str(raw["Node Type"]),
            relation=raw.get("Relation Name"),
            alias=raw.get("Alias"),
            index=raw.get("Index Name"),
            filter=raw.get("Filter") or raw.get("Join Filter"),
            index_cond=cond,
            sort_key=tuple(raw.get("Sort Key", ())),
            rows=float(raw.get("Plan Rows", 0)),
            total_cost=float(raw.get("Total Cost", 0)),
            actual_rows=None
            if actual is None
            else float(actual) * float(raw.get("Actual Loops", 1)),
            depth=depth,
        )

    @property
    def is_seq_scan(self) -> bool:
        return self.node_type == "Seq Scan"

    def line(self) -> str:
        """The node as EXPLAIN's text format prints it, on one line."""
        target = f" on {self.relation}" if self.relation else ""
        if self.alias and self.alias != self.relation:
            target += f" {self.alias}"
        using = f" using {self.index}" if self.index else ""
        text = f"{self.node_type}{using}{target} (cost={self.total_cost:.2f} rows={self.rows:.0f})"
        if self.actual_rows is not None:
            text += f" (actual rows={self.actual_rows:.0f})"
        for label, value in (("Filter", self.filter), ("Cond", self.index_cond)):
            if value:
                text += f"  {label}: {value}"
        if self.sort_key:
            text += f"  Sort Key: {', '.join(self.sort_key)}"
        return text


@dataclass(frozen=True)
class Plan:
    total_cost: float
    nodes: tuple[PlanNode, ...]
    analyzed: bool

    @classmethod
    def of(cls, document: list[dict[str, Any]]) -> Plan:
        root = document[0]["Plan"]
        return cls(float(root["Total Cost"]), tuple(_walk(root, 0)), "Actual Rows" in root)

    def scans(self, table: str) -> list[PlanNode]:
        """The nodes that read `table` (its name, schema-qualified or not)."""
        name = table.rpartition(".")[2]
        return [n for n in self.nodes if n.relation == name]

    def seq_scanned(self) -> list[str]:
        """The tables the plan reads whole."""
        return sorted({n.relation for n in self.nodes if n.is_seq_scan and n.relation})

    def text(self) -> str:
        return "\n".join("  " * n.depth + ("-> " if n.depth else "") + n.line() for n in self.nodes)


def _walk(raw: dict[str, Any], depth: int) -> Iterator[PlanNode]:
    yield PlanNode.of(raw, depth)
    for child in raw.get("Plans", ()):
        yield from _walk(child, depth + 1)


class Explainer:
    """Explains statements on one connection that never writes."""

    def __init__(
        self, conn: psycopg.Connection[tuple[Any, ...]], *, allow_analyze: bool = False
    ) -> None:
        self.conn = conn
        self.allow_analyze = allow_analyze
        conn.execute("set plan_cache_mode = force_generic_plan")

    def explain(self, statement: str, parameters: int = 0) -> Plan:
        options = "FORMAT JSON"
        if self.allow_analyze and not parameters:
            options += ", ANALYZE, BUFFERS"
        try:
            if not parameters:
                row = self.conn.execute(f"EXPLAIN ({options}) {statement}").fetchone()
            else:
                self.conn.execute(f"PREPARE {_PROBE} AS {statement}")
                try:
                    nulls = ", ".join(["NULL"] * parameters)
                    row = self.conn.execute(
                        f"EXPLAIN ({options}) EXECUTE {_PROBE}({nulls})"
                    ).fetchone()
                finally:
                    self.conn.execute(f"DEALLOCATE {_PROBE}")
        except psycopg.Error as exc:
            raise ExplainError(str(exc).strip().splitlines()[0]) from None
        assert row is not None
        document = row[0] if isinstance(row[0], list) else json.loads(row[0])
        return Plan.of(document)
