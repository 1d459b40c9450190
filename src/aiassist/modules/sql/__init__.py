"""`sql`: slow queries and indexes of a PostgreSQL database, read from a replica or its
statistics; the database is never changed.

The analyser (`analysis.analyze`) groups statements (from pg_stat_statements, a server log
or a list), explains the expensive groups, names the index-defeating patterns with the plan
as evidence (`patterns`), and costs candidate indexes hypothetically with HypoPG
(`advisor`). The decision this module makes is the last step: whether an index that the
planner says pays off is worth its write cost on this table. Its features are the what-if
figures and the table's traffic; the rule fallback advises when the planner's cost falls by
`AIASSIST_SQL_MIN_COST_FACTOR` and the time saved by the queries it serves exceeds what
maintaining it costs the writes; a model learns, from outcomes (the measured latency before
and after an advised index was created), how far the planner's estimate holds.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from pydantic import Field

from aiassist.modules.base import Decision, Features, Module, Outcome
from aiassist.modules.sql.settings import SqlSettings
from aiassist.settings import module_settings

__all__ = ["IndexDecision", "IndexFeatures", "IndexOutcome", "SqlModule", "SqlSettings", "module"]

log = logging.getLogger("aiassist.sql")

#: What one write costs per index key it maintains, by the rule (a b-tree insert: ~10 µs).
WRITE_MS_PER_KEY = 0.01


class IndexFeatures(Features):
    cost_factor: float = Field(
        ge=0, le=1e9, description="Planner cost of the served queries without / with it."
    )
    calls: int = Field(ge=0, le=10**12, description="Calls of the queries it serves.")
    mean_ms: float = Field(ge=0, le=1e9, description="Their mean time now (0: unknown).")
    table_rows: float = Field(ge=0, le=1e13, description="Rows of the table.")
    table_writes: int = Field(ge=0, le=10**13, description="Writes to it in the same window.")
    keys: int = Field(ge=1, le=32, description="Keys of the index.")
    table_indexes: int = Field(ge=0, le=10_000, description="Indexes the table has already.")
    size_mb: float = Field(0.0, ge=0, le=1e9, description="Estimated size of the index.")


class IndexDecision(Decision):
    advised: bool = Field(description="Create it: it saves more than it costs.")
    expected_ratio: float = Field(description="Expected latency with it / without it.")
    gain_ms: float = Field(description="Time it saves the served queries over the window.")
    write_cost_ms: float = Field(description="Time maintaining it costs the writes.")


class IndexOutcome(Outcome):
    latency_before_ms: float = Field(ge=0, le=1e9, description="Mean latency before it.")
    latency_after_ms: float = Field(ge=0, le=1e9, description="Mean latency after it.")


class SqlModule(Module[IndexFeatures, IndexDecision, IndexOutcome]):
    name = "sql"
    summary = "Is an index the planner says pays off worth its write cost on this table?"
    Features = IndexFeatures
    Decision = IndexDecision
    Outcome = IndexOutcome
    example = {
        "cost_factor": 180.0,
        "calls": 5400,
        "mean_ms": 48.0,
        "table_rows": 1_200_000,
        "table_writes": 30_000,
        "keys": 1,
        "table_indexes": 3,
        "size_mb": 26.0,
    }
    outcome_example = {"latency_before_ms": 48.0, "latency_after_ms": 0.4}
    trainer = "aiassist.modules.sql.training:trainer"
    settings = SqlSettings
    router = "aiassist.modules.sql.api:sql_router"
    cli = "aiassist.modules.sql.cli:app"

    def __init__(self, settings: SqlSettings | None = None) -> None:
        self._settings = settings

    @property
    def config(self) -> SqlSettings:
        """The given settings, else the process's `SqlSettings` (read on first use)."""
        if self._settings is None:
            self._settings = module_settings(SqlSettings, log)
        return self._settings

    def fallback(self, f: IndexFeatures) -> IndexDecision:
        ratio = 1.0 / f.cost_factor if f.cost_factor > 0 else 1.0
        return self._judge(f, ratio, "rule")

    def encode(self, f: IndexFeatures) -> list[float]:
        return [
            math.log(max(f.cost_factor, 1e-6)),
            math.log1p(f.calls),
            math.log1p(f.mean_ms),
            math.log1p(f.table_rows),
            math.log1p(f.table_writes),
            float(f.keys),
            float(f.table_indexes),
            math.log1p(f.size_mb),
        ]

    def decode(self, f: IndexFeatures, output: Sequence[float]) -> IndexDecision:
        return self._judge(f, min(max(float(output[-1]), 0.0), 1.0), "model")

    def _judge(self, f: IndexFeatures, ratio: float, who: str) -> IndexDecision:
        gain = f.calls * f.mean_ms * (1.0 - ratio)
        cost = f.table_writes * f.keys * WRITE_MS_PER_KEY
        pays = f.cost_factor >= self.config.min_cost_factor
        if f.mean_ms == 0:
            why = f"no timings: the planner's cost falls {f.cost_factor:.1f}x"
        else:
            pays = pays and gain >= cost
            why = f"saves {gain:,.0f} ms, writes cost {cost:,.0f} ms"
        return IndexDecision(
            advised=pays,
            expected_ratio=round(ratio, 6),
            gain_ms=round(gain, 3),
            write_cost_ms=round(cost, 3),
            explanation=f"{who}: {why}",
        )


module = SqlModule()
