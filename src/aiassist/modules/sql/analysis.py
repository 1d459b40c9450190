"""One analysis: statements in; groups, findings and advised indexes out.

`connect` opens the only kind of connection the analyser uses: every transaction read-only,
a statement timeout, no parallel workers (so a plan's row counts are the table's, not a
worker's share). `analyze` then groups the statements, explains the `top_groups` groups
with the most total time, names the patterns, costs candidate indexes and lets the module's
decision (model or rule) judge each against its write cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from aiassist.modules.sql import IndexDecision, IndexFeatures, module
from aiassist.modules.sql.advisor import Advisor, Explained
from aiassist.modules.sql.catalog import Catalog
from aiassist.modules.sql.findings import Analysis, Finding, GroupRow, Recommendation
from aiassist.modules.sql.groups import group_statements
from aiassist.modules.sql.patterns import catalog_findings, statement_findings
from aiassist.modules.sql.plan import Explainer, ExplainError
from aiassist.modules.sql.settings import SqlSettings
from aiassist.modules.sql.shape import parse_shape
from aiassist.modules.sql.sources import SourceError, Statement

__all__ = ["analyze", "connect"]

Judge = Callable[[IndexFeatures], IndexDecision]
Progress = Callable[[int, int], None]
MAX_QUERY_CHARS = 2000


def connect(dsn: str, settings: SqlSettings) -> psycopg.Connection[tuple[Any, ...]]:
    """A connection that cannot write; a bad DSN is a `SourceError` naming the problem."""
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SourceError(f"cannot connect to the database: {first}") from None
    except Exception as exc:
        raise SourceError(f"not a PostgreSQL URL or DSN: {exc}") from None
    conn.execute("set default_transaction_read_only = on")
    conn.execute(f"set statement_timeout = {int(settings.statement_timeout_ms)}")
    conn.execute("set max_parallel_workers_per_gather = 0")
    return conn


def analyze(
    conn: psycopg.Connection[tuple[Any, ...]],
    statements: Sequence[Statement],
    *,
    settings: SqlSettings,
    source: str,
    judge: Judge = module.fallback,
    progress: Progress | None = None,
) -> Analysis:
    started = time.perf_counter()
    catalog = Catalog.read(conn)
    groups, unparsed = group_statements(statements)
    total_ms = sum(g.total_ms for g in groups) or 1.0
    explainer = Explainer(conn, allow_analyze=settings.allow_analyze)
    rows: list[GroupRow] = []
    explained: list[Explained] = []
    findings: list[Finding] = []
    top = groups[: settings.top_groups]
    for done, group in enumerate(top, 1):
        row = GroupRow(
            fingerprint=group.fingerprint,
            query=group.normalized[:MAX_QUERY_CHARS],
            calls=group.calls,
            total_ms=round(group.total_ms, 3),
            mean_ms=round(group.mean_ms, 3),
            time_share=round(group.total_ms / total_ms, 4),
            statements=group.statements,
        )
        rows.append(row)
        shape = parse_shape(group.example, catalog)
        if shape is None or not shape.tables:
            row.error = "not a statement on a table of this database"
        else:
            try:
                plan = explainer.explain(group.example, shape.parameters)
            except ExplainError as exc:
                row.error = str(exc)
            else:
                row.cost = plan.total_cost
                row.seq_scans = plan.seq_scanned()
                explained.append(Explained(group, shape, plan))
                findings.extend(statement_findings(group, shape, plan, catalog))
        if progress is not None:
            progress(done, len(top))
    findings = _merged([*findings, *catalog_findings(catalog)])
    _scanned_by(findings, explained)
    advisor = Advisor(conn, explainer, min_cost_factor=settings.min_cost_factor)
    recommendations = advisor.advise(explained)
    by_fingerprint = {e.group.fingerprint: e for e in explained}
    for recommendation in recommendations:
        _judge(recommendation, by_fingerprint, catalog, judge)
    name = conn.execute("select current_database(), current_setting('server_version')").fetchone()
    return Analysis(
        database=f"{name[0]} (PostgreSQL {name[1]})" if name else "?",
        source=source,
        statements=len(statements),
        groups=len(groups),
        explained=len(explained),
        unparsed=len(unparsed),
        hypopg=advisor.hypopg,
        analyze=settings.allow_analyze,
        min_cost_factor=settings.min_cost_factor,
        elapsed_s=round(time.perf_counter() - started, 3),
        query_groups=rows,
        findings=findings,
        recommendations=sorted(recommendations, key=lambda r: (not r.advised, -r.factor)),
    )


def _merged(findings: list[Finding]) -> list[Finding]:
    """One finding per pattern, table and columns seen in statements, with the groups of all
    its sightings; the catalog's findings are one per index or table already."""
    merged: dict[tuple[str, str, tuple[str, ...]], Finding] = {}
    out: list[Finding] = []
    for finding in findings:
        key = (finding.pattern, finding.table, tuple(finding.columns))
        if not finding.groups:
            out.append(finding)
        elif key in merged:
            kept = merged[key]
            kept.groups.extend(g for g in finding.groups if g not in kept.groups)
        else:
            merged[key] = finding
            out.append(finding)
    return out


def _scanned_by(findings: list[Finding], explained: list[Explained]) -> None:
    """Stale statistics cite the plans that read the table."""
    for finding in findings:
        if finding.pattern != "stale_statistics":
            continue
        for item in explained:
            scans = item.plan.scans(finding.table)
            if scans:
                if len(finding.evidence) < 3:
                    finding.evidence.append(scans[0].line())
                finding.groups.append(item.group.fingerprint)


def _judge(
    recommendation: Recommendation,
    explained: dict[str, Explained],
    catalog: Catalog,
    judge: Judge,
) -> None:
    served = [explained[g].group for g in recommendation.groups]
    table = catalog.named(recommendation.table)
    calls = sum(g.calls for g in served)
    decision = judge(
        IndexFeatures(
            cost_factor=recommendation.factor,
            calls=calls,
            mean_ms=sum(g.total_ms for g in served) / calls if calls else 0.0,
            table_rows=max(table.estimated_rows, table.live_rows, 0) if table else 0,
            table_writes=table.writes if table else 0,
            keys=len(recommendation.keys),
            table_indexes=len(table.indexes) if table else 0,
            size_mb=(recommendation.size_bytes or 0) / 1e6,
        )
    )
    recommendation.advised = decision.advised and recommendation.verified
    recommendation.decision_id = decision.decision_id
    recommendation.explanation = "; ".join(
        p for p in (recommendation.explanation, decision.explanation) if p
    )
