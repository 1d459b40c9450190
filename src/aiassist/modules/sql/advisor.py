"""Index advice with what-if proof (Dexter's method, on HypoPG).

Candidates come from each query group's shape: its equality columns, then a range or the
sort columns, its join and OR columns, and the expressions it wraps columns in. Each
candidate is created hypothetically, the groups that proposed it are explained again, and
it is advised only if the planner, given it, cuts a group's cost by `min_cost_factor` and
actually uses it. Per group the best candidate wins; a candidate whose keys are a prefix of
another advised one on the same table is dropped when the longer one serves its groups too.

Without HypoPG nothing can be costed: candidates on tables the plans scan whole are ranked
by their groups' time, and marked unverified.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from aiassist.modules.sql.catalog import has_extension
from aiassist.modules.sql.findings import Recommendation
from aiassist.modules.sql.groups import QueryGroup
from aiassist.modules.sql.patterns import MIN_ROWS
from aiassist.modules.sql.plan import Explainer, ExplainError, Plan
from aiassist.modules.sql.shape import Shape

__all__ = ["Advisor", "Candidate", "Explained", "candidates"]

MAX_KEYS = 3


@dataclass(frozen=True)
class Explained:
    """A query group with its shape and its plan as the database has it now."""

    group: QueryGroup
    shape: Shape
    plan: Plan


@dataclass(frozen=True)
class Candidate:
    table: str
    keys: tuple[str, ...]  # columns, or expressions in parentheses

    def create(self, *, concurrently: bool = False) -> str:
        how = "CREATE INDEX CONCURRENTLY" if concurrently else "CREATE INDEX"
        return f"{how} ON {self.table} ({', '.join(self.keys)})"


def candidates(shape: Shape) -> list[Candidate]:
    """The indexes that could serve this statement and do not exist yet."""
    found: list[Candidate] = []
    for table in {t.qualified: t for t in shape.tables.values()}.values():
        if table.rows < MIN_ROWS:
            continue
        mine = [p for p in shape.predicates if p.column.table == table.qualified]
        equal = _unique(
            p.column.name for p in mine if p.kind == "eq" and not p.wrapper and not p.in_or
        )
        ranged = _unique(
            p.column.name for p in mine if p.kind == "range" and not p.wrapper and not p.in_or
        )
        either = _unique(p.column.name for p in mine if p.in_or and not p.wrapper)
        joined = _unique(
            c.name for j in shape.joins for c in (j.left, j.right) if c.table == table.qualified
        )
        sort = [c.name for c in shape.sort]
        sort = sort if shape.limit and {c.table for c in shape.sort} == {table.qualified} else []
        wrapped = _unique(
            f"({p.expression})"
            for p in mine
            if p.wrapper and p.kind in ("eq", "range") and not p.in_or
        )
        keysets: list[list[str]] = [[c] for c in (*equal, *ranged, *either, *joined)]
        if len(equal) > 1:
            keysets.append(equal[:MAX_KEYS])
        if equal and ranged:
            keysets.append([*equal[: MAX_KEYS - 1], ranged[0]])
        if sort:
            keysets.append(_unique([*equal, *sort])[:MAX_KEYS])
            keysets.append(sort[:MAX_KEYS])
        keysets.extend([w] for w in wrapped)
        for keys in keysets:
            candidate = Candidate(table.qualified, tuple(keys))
            if candidate not in found and not table.has_index(candidate.keys):
                found.append(candidate)
    return found


def _unique(items: Any) -> list[str]:
    return list(dict.fromkeys(items))


@dataclass
class _Trial:
    candidate: Candidate
    proposed_by: list[Explained] = field(default_factory=list)
    costs: dict[str, float] = field(default_factory=dict)  # fingerprint -> cost with it
    size_bytes: int | None = None


class Advisor:
    def __init__(
        self,
        conn: psycopg.Connection[tuple[Any, ...]],
        explainer: Explainer,
        *,
        min_cost_factor: float = 2.0,
    ) -> None:
        self.conn = conn
        self.explainer = explainer
        self.min_cost_factor = min_cost_factor
        self.hypopg = has_extension(conn, "hypopg")

    def advise(self, explained: Sequence[Explained]) -> list[Recommendation]:
        trials: dict[Candidate, _Trial] = {}
        for item in explained:
            for candidate in candidates(item.shape):
                trials.setdefault(candidate, _Trial(candidate)).proposed_by.append(item)
        if not self.hypopg:
            return self._by_rule(trials)
        for trial in trials.values():
            self._cost(trial, trial.proposed_by)
        chosen = self._choose(explained, trials)
        return [self._recommendation(trials[c], served) for c, served in chosen.items()]

    def _cost(self, trial: _Trial, items: Sequence[Explained]) -> None:
        """The plans' costs of `items` with the candidate in place (when the plan uses it)."""
        todo = [i for i in items if i.group.fingerprint not in trial.costs]
        if not todo:
            return
        try:
            row = self.conn.execute(
                "select indexname, hypopg_relation_size(indexrelid) from hypopg_create_index(%s)",
                (trial.candidate.create(),),
            ).fetchone()
        except psycopg.Error:
            return  # e.g. an expression that is not immutable: it cannot be indexed
        assert row is not None
        name, trial.size_bytes = str(row[0]), int(row[1])
        try:
            for item in todo:
                try:
                    plan = self.explainer.explain(item.group.example, item.shape.parameters)
                except ExplainError:
                    continue
                used = any(n.index == name for n in plan.nodes)
                trial.costs[item.group.fingerprint] = (
                    plan.total_cost if used else item.plan.total_cost
                )
        finally:
            self.conn.execute("select hypopg_reset()")

    def _factor(self, trial: _Trial, item: Explained) -> float:
        after = trial.costs.get(item.group.fingerprint)
        return item.plan.total_cost / after if after else 1.0

    def _choose(
        self, explained: Sequence[Explained], trials: dict[Candidate, _Trial]
    ) -> dict[Candidate, list[Explained]]:
        chosen: dict[Candidate, list[Explained]] = {}
        for item in explained:
            passing = [
                t for t in trials.values()
                if item in t.proposed_by and self._factor(t, item) >= self.min_cost_factor
            ]  # fmt: skip
            if passing:
                best = max(passing, key=lambda t: (self._factor(t, item), -len(t.candidate.keys)))
                chosen.setdefault(best.candidate, []).append(item)
        for short in sorted(chosen, key=lambda c: len(c.keys)):
            longer = [
                c for c in chosen
                if c.table == short.table and len(c.keys) > len(short.keys)
                and c.keys[: len(short.keys)] == short.keys
            ]  # fmt: skip
            for other in longer:
                trial = trials[other]
                self._cost(trial, chosen[short])
                if all(self._factor(trial, i) >= self.min_cost_factor for i in chosen[short]):
                    chosen[other].extend(chosen.pop(short))
                    break
        return chosen

    def _recommendation(self, trial: _Trial, served: list[Explained]) -> Recommendation:
        best = max(served, key=lambda i: i.plan.total_cost - trial.costs[i.group.fingerprint])
        before, after = best.plan.total_cost, trial.costs[best.group.fingerprint]
        return Recommendation(
            table=trial.candidate.table,
            keys=list(trial.candidate.keys),
            statement=trial.candidate.create(concurrently=True),
            cost_before=round(before, 2),
            cost_after=round(after, 2),
            factor=round(before / after, 2) if after else 0.0,
            verified=True,
            size_bytes=trial.size_bytes,
            groups=[i.group.fingerprint for i in served],
        )

    def _by_rule(self, trials: dict[Candidate, _Trial]) -> list[Recommendation]:
        ranked: list[tuple[float, Recommendation]] = []
        for trial in trials.values():
            table = trial.candidate.table
            scanned = [
                i for i in trial.proposed_by if any(n.is_seq_scan for n in i.plan.scans(table))
            ]
            if not scanned:
                continue
            cost = max(i.plan.total_cost for i in scanned)
            ranked.append((
                sum(i.group.total_ms for i in scanned),
                Recommendation(
                    table=trial.candidate.table,
                    keys=list(trial.candidate.keys),
                    statement=trial.candidate.create(concurrently=True),
                    cost_before=round(cost, 2),
                    cost_after=round(cost, 2),
                    factor=1.0,
                    verified=False,
                    groups=[i.group.fingerprint for i in scanned],
                    explanation="not costed: HypoPG is not installed in this database",
                ),
            ))  # fmt: skip
        ranked.sort(key=lambda r: -r[0])
        return [r for _, r in ranked]
