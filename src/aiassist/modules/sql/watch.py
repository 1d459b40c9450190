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
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psycopg

from aiassist.modules.sql.catalog import Catalog
from aiassist.modules.sql.plan import Explainer, ExplainError
from aiassist.modules.sql.shape import parse_shape
from aiassist.modules.sql.sources import SourceError

__all__ = ["Alert", "Watch", "WatchState"]

log = logging.getLogger("aiassist.sql")

_SNAPSHOT = """
select queryid::text, query, calls, total_exec_time from pg_stat_statements
where dbid = (select oid from pg_database where datname = current_database()) and toplevel
"""


class Sender(Protocol):
    def send(self, event: str, payload: dict[str, Any]) -> None: ...


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
class WatchState:
    snapshot: dict[str, tuple[int, float]] = field(default_factory=dict)  # calls, total ms
    baseline_ms: dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> WatchState:
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        snapshot = {k: (int(v[0]), float(v[1])) for k, v in raw["snapshot"].items()}
        return cls(snapshot, {k: float(v) for k, v in raw["baseline_ms"].items()})

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
        factor: float = 2.0,
        min_calls: int = 20,
        min_ms: float = 1.0,
        new_share: float = 0.1,
        alpha: float = 0.3,
    ) -> None:
        self.conn, self.state_path, self.sender = conn, state_path, sender
        self.factor, self.min_calls, self.min_ms = factor, min_calls, min_ms
        self.new_share, self.alpha = new_share, alpha
        self.state = WatchState.load(state_path)
        self.explainer = Explainer(conn)

    def check(self) -> list[Alert]:
        """One pass: the interval since the last, its alerts (sent), the state saved."""
        if not self.conn.execute(
            "select 1 from pg_extension where extname = 'pg_stat_statements'"
        ).fetchone():
            raise SourceError("pg_stat_statements is not installed in this database")
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
                alerts.append(Alert(
                    "sql.regression" if regressed else "sql.new_expensive_query", q,
                    rows[q][0][:2000], calls, round(mean, 3),
                    None if base is None else round(base, 3), round(share, 4),
                    self._seq_scans(rows[q][0]),
                ))  # fmt: skip
            if not regressed:  # a regression is not learnt as the new normal
                self.state.baseline_ms[q] = (
                    mean if base is None else base + self.alpha * (mean - base)
                )
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

    def _seq_scans(self, query: str) -> list[str]:
        shape = parse_shape(query, Catalog.read(self.conn))
        if shape is None:
            return []
        try:
            plan = self.explainer.explain(query, shape.parameters)
        except ExplainError:
            return []
        return sorted({n.relation for n in plan.nodes if n.is_seq_scan and n.relation})
