"""What the analyser reports (plain models: no database library is needed to read them):
query groups, findings (a pattern, its evidence, the advice) and advised
indexes (with the planner's cost before and after, measured hypothetically)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

__all__ = ["PATTERNS", "Analysis", "Finding", "GroupRow", "Pattern", "Recommendation"]

Pattern = Literal[
    "function_on_indexed_column",
    "cast_on_indexed_column",
    "implicit_cast",
    "leading_wildcard_like",
    "or_across_columns",
    "low_selectivity",
    "composite_index_order",
    "stale_statistics",
    "unindexed_foreign_key_join",
    "sort_without_index",
    "unused_index",
    "duplicate_index",
]

#: Each pattern in a few words, for tables and reports.
PATTERNS: dict[Pattern, str] = {
    "function_on_indexed_column": "function on an indexed column",
    "cast_on_indexed_column": "cast on an indexed column",
    "implicit_cast": "implicit type cast",
    "leading_wildcard_like": "leading-wildcard LIKE",
    "or_across_columns": "OR across columns",
    "low_selectivity": "low selectivity",
    "composite_index_order": "wrong column order in a composite index",
    "stale_statistics": "stale statistics",
    "unindexed_foreign_key_join": "foreign key joined without an index",
    "sort_without_index": "sort + limit without a matching index",
    "unused_index": "unused index",
    "duplicate_index": "duplicate index",
}


class Finding(BaseModel):
    pattern: Pattern
    table: str
    columns: list[str] = Field(default_factory=list)
    message: str
    evidence: list[str] = Field(description="Plan lines and catalog facts that show it.")
    advice: str
    groups: list[str] = Field(
        default_factory=list, description="Fingerprints of the query groups it affects."
    )


class Recommendation(BaseModel):
    table: str
    keys: list[str] = Field(description="Index keys: columns, or expressions in parentheses.")
    statement: str = Field(description="The CREATE INDEX CONCURRENTLY statement to run.")
    cost_before: float = Field(description="Planner cost of the query it helps most, now.")
    cost_after: float = Field(description="... with the index in place (hypothetically).")
    factor: float = Field(description="cost_before / cost_after.")
    verified: bool = Field(description="Costed with HypoPG; false: ranked by rule only.")
    size_bytes: int | None = Field(None, description="HypoPG's estimate of its size.")
    groups: list[str] = Field(description="Fingerprints of the query groups it serves.")
    advised: bool = Field(True, description="The decision: worth its write cost.")
    decision_id: str | None = Field(
        None, description="The decision's id: post the measured latencies as its outcome."
    )
    explanation: str = ""


class GroupRow(BaseModel):
    fingerprint: str
    query: str = Field(description="Normalised: constants are $n.")
    calls: int
    total_ms: float
    mean_ms: float
    time_share: float = Field(description="Share of all statements' time.")
    statements: int = Field(description="Distinct texts in the group.")
    cost: float | None = Field(None, description="Planner cost of its example.")
    seq_scans: list[str] = Field(default_factory=list, description="Tables it reads whole.")
    error: str | None = Field(None, description="Why it could not be explained.")


class Analysis(BaseModel):
    database: str
    source: str
    statements: int
    groups: int
    explained: int
    unparsed: int
    hypopg: bool = Field(description="Candidate indexes were costed with HypoPG.")
    analyze: bool = Field(description="Plans are EXPLAIN ANALYZE's.")
    min_cost_factor: float
    elapsed_s: float
    query_groups: list[GroupRow]
    findings: list[Finding]
    recommendations: list[Recommendation]

    def advised(self) -> list[Recommendation]:
        return [r for r in self.recommendations if r.advised]
