"""`aiassist sql watch`: a long-running job that reads pg_stat_statements every interval and
alerts, through a signed webhook, when a query group's mean time regresses against its own
baseline, or a new group takes a large share of the time.

Each pass takes the difference with the previous snapshot (calls and time within the
interval), so a query's past does not hide its present. A group regresses when, with at
least `min_calls` calls in the interval, its mean is `factor` times its baseline (an EWMA of
its past intervals) and at least `min_ms` slower; the alert carries the plan's whole-table
reads as the first hint of why. The snapshot and the baselines are kept in a JSON file, so
a restart neither forgets them nor alerts again on what it saw. A reset of
pg_stat_statements (calls going down) starts a new snapshot.

It also follows the indexes an analysis advised (`WatchState.track`, `aiassist sql analyze
--track`): once one exists, the latency of
the queries it serves before (their baseline) and after (the next interval) is recorded as
the outcome of the decision that advised it, which is what the module's model learns from.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pglast
import psycopg

from aiassist.modules.sql.catalog import Catalog
from aiassist.modules.sql.findings import Recommendation
from aiassist.modules.sql.plan import Explainer, ExplainError
from aiassist.modules.sql.shape import parse_shape
from aiassist.modules.sql.sources import require_pg_stat_statements

__all__ = ["Alert", "Tracked", "Watch", "WatchState"]

log = logging.getLogger("aiassist.sql")

_SNAPSHOT = """
select queryid::text, query, calls, total_exec_time from pg_stat_statements
where dbid = (select oid from pg_database where datname = current_database()) and toplevel
"""


class Sender(Protocol):
    def send(self, event: str, payload: dict[str, Any]) -> None: ...


#: Records an outcome of the `sql` module: (decision id, outcome).
Recorder = Callable[[str, dict[str, float]], object]


@dataclass
class Alert:
    event: str  # "sql.regression" or "sql.new_expensive_query"
    queryid: str
    query: str
    calls: int
    mean_ms: float
    baseline_ms: float | None
    time_share: float
    seq_scans: list[str]


@dataclass
class Tracked:
    """An advised index, followed until it is created and its queries are timed again."""

    decision_id: str
    table: str
    keys: list[str]
    fingerprints: list[str]  # of the query groups it serves
    before_ms: float | None = None  # their baseline when the index appeared


@dataclass
class WatchState:
    snapshot: dict[str, tuple[int, float]] = field(default_factory=dict)  # calls, total ms
    baseline_ms: dict[str, float] = field(default_factory=dict)
    tracked: list[Tracked] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> WatchState:
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        snapshot = {k: (int(v[0]), float(v[1])) for k, v in raw["snapshot"].items()}
        tracked = [Tracked(**t) for t in raw.get("tracked", [])]
        return cls(snapshot, {k: float(v) for k, v in raw["baseline_ms"].items()}, tracked)

    def track(self, recommendations: Iterable[Recommendation]) -> int:
        """Follow the advised indexes (by their decision ids) until they are created."""
        known = {t.decision_id for t in self.tracked}
        added = [
            Tracked(r.decision_id, r.table, r.keys, r.groups)
            for r in recommendations
            if r.advised and r.decision_id and r.decision_id not in known
        ]
        self.tracked.extend(added)
        return len(added)

    def save(self, path: Path) -> None:
        """Written to a temporary file and renamed: a crash leaves the old state whole."""
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_suffix(".tmp")
        scratch.write_text(json.dumps(asdict(self)))
        os.replace(scratch, path)


class Watch:
    def __init__(
        self,
        conn: psycopg.Connection[tuple[Any, ...]],
        state_path: Path,
        sender: Sender | None = None,
        *,
        record: Recorder | None = None,
        factor: float = 2.0,
        min_calls: int = 20,
        min_ms: float = 1.0,
        new_share: float = 0.1,
        alpha: float = 0.3,
    ) -> None:
        self.conn, self.state_path, self.sender, self.record = conn, state_path, sender, record
        self.factor, self.min_calls, self.min_ms = factor, min_calls, min_ms
        self.new_share, self.alpha = new_share, alpha
        self.state = WatchState.load(state_path)
        self.explainer = Explainer(conn)

    def check(self) -> list[Alert]:
        """One pass: the interval since the last, its alerts (sent), the state saved."""
        require_pg_stat_statements(self.conn)
        rows = {
            str(q): (str(text), int(c), float(t)) for q, text, c, t in self.conn.execute(_SNAPSHOT)
        }
        before = self.state.snapshot
        if any(rows.get(q, ("", 0, 0.0))[1] < calls for q, (calls, _) in before.items()):
            before = {}  # the statistics were reset: this pass is a new start
        deltas = {
            q: (c - before.get(q, (0, 0.0))[0], t - before.get(q, (0, 0.0))[1])
            for q, (_, c, t) in rows.items()
        }
        interval_ms = sum(max(t, 0.0) for _, t in deltas.values()) or 1.0
        alerts: list[Alert] = []
        first_pass = not self.state.snapshot
        catalog: Catalog | None = None  # read once a pass, and only if an alert or index needs it
        for q, (calls, total) in deltas.items():
            if calls < self.min_calls:
                continue
            mean = total / calls
            base = self.state.baseline_ms.get(q)
            share = total / interval_ms
            regressed = (
                base is not None and mean >= self.factor * base and mean - base >= self.min_ms
            )
            new = base is None and not first_pass and share >= self.new_share
            if regressed or new:
                catalog = catalog or Catalog.read(self.conn)
                alerts.append(Alert(
                    "sql.regression" if regressed else "sql.new_expensive_query", q,
                    rows[q][0][:2000], calls, round(mean, 3),
                    None if base is None else round(base, 3), round(share, 4),
                    self._seq_scans(rows[q][0], catalog),
                ))  # fmt: skip
            if not regressed:  # a regression is not learnt as the new normal
                self.state.baseline_ms[q] = (
                    mean if base is None else base + self.alpha * (mean - base)
                )
        if self.state.tracked:
            self._follow(rows, deltas, catalog or Catalog.read(self.conn))
        self.state.snapshot = {q: (c, t) for q, (_, c, t) in rows.items()}
        self.state.save(self.state_path)
        for alert in alerts:
            log.warning(
                "%s: %s (%.1f ms, baseline %s)",
                alert.event,
                alert.queryid,
                alert.mean_ms,
                alert.baseline_ms,
            )
            if self.sender is not None:
                self.sender.send(alert.event, asdict(alert))
        return alerts

    def _follow(
        self,
        rows: dict[str, tuple[str, int, float]],
        deltas: dict[str, tuple[int, float]],
        catalog: Catalog,
    ) -> None:
        """An advised index that now exists: its queries' baseline is the latency before; the
        first later interval with enough calls gives the latency after, recorded as the
        decision's outcome."""
        by_group: dict[str, list[str]] = {}
        for q, (text, _, _) in rows.items():
            try:
                by_group.setdefault(pglast.parser.fingerprint(text), []).append(q)
            except pglast.parser.ParseError:
                continue
        still: list[Tracked] = []
        for t in self.state.tracked:
            ids = [q for g in t.fingerprints for q in by_group.get(g, [])]
            if t.before_ms is None:
                table = catalog.named(t.table)
                made = table is not None and table.has_index(t.keys)
                base = [self.state.baseline_ms[q] for q in ids if q in self.state.baseline_ms]
                if made and base:
                    t.before_ms = sum(base) / len(base)
                still.append(t)
                continue
            calls = sum(deltas[q][0] for q in ids if q in deltas)
            if calls < self.min_calls:
                still.append(t)
                continue
            after = sum(deltas[q][1] for q in ids if q in deltas) / calls
            outcome = {
                "latency_before_ms": round(t.before_ms, 4),
                "latency_after_ms": round(after, 4),
            }
            if self.record is not None:
                self.record(t.decision_id, outcome)
            log.info("sql: index on %s %s: %s", t.table, t.keys, outcome)
        self.state.tracked = still

    def _seq_scans(self, query: str, catalog: Catalog) -> list[str]:
        shape = parse_shape(query, catalog)
        if shape is None:
            return []
        try:
            return self.explainer.explain(query, shape.parameters).seq_scanned()
        except ExplainError:
            return []
