"""Index-defeating patterns, each named with the plan (and the catalog) as evidence.

A statement's pattern needs both halves: the parse tree says what the statement does to a
column (`shape`), the plan says the planner scanned the table anyway (`plan`). Table- and
index-level patterns (stale statistics, unused and duplicate indexes) read the catalog.
"""

from __future__ import annotations

from collections.abc import Iterator

from aiassist.modules.sql.catalog import Catalog, Index, Table
from aiassist.modules.sql.findings import Finding
from aiassist.modules.sql.groups import QueryGroup
from aiassist.modules.sql.plan import Plan, PlanNode
from aiassist.modules.sql.shape import Predicate, Shape

__all__ = ["catalog_findings", "statement_findings"]

#: A predicate matching this share of a table's rows is one an index does not serve.
LOW_SELECTIVITY = 0.2
#: Statistics are stale once this share of the rows changed since the last ANALYZE.
STALE_SHARE = 0.2
#: Tables smaller than this are read whole in no time: no finding about them.
MIN_ROWS = 1000


def statement_findings(
    group: QueryGroup, shape: Shape, plan: Plan, catalog: Catalog
) -> Iterator[Finding]:
    """The patterns one query group shows in its plan."""
    tables = {t.qualified: t for t in shape.tables.values()}
    for predicate in shape.predicates:
        table = tables[predicate.column.table]
        scan = _seq_scan(plan, table) or _by_later_key(plan, table, predicate.column.name)
        if scan is None or table.rows < MIN_ROWS:
            continue
        asked = {p.column.name for p in shape.predicates if p.column.table == table.qualified}
        finding = _predicate_finding(predicate, table, scan, asked)
        if finding is not None:
            finding.groups.append(group.fingerprint)
            yield finding
    for group_or in shape.ors:
        names = sorted({c.table for c in group_or.columns})
        scans = [
            s for t in names if (s := _seq_scan(plan, tables[t])) and " OR " in (s.filter or "")
        ]
        if scans:
            yield Finding(
                pattern="or_across_columns",
                table=names[0],
                columns=sorted(c.name for c in group_or.columns),
                message=f"`{group_or.text}` ORs different columns, so no one index answers it",
                evidence=[s.line() for s in scans],
                advice="index each column of the OR (the planner then combines them with a "
                "BitmapOr), or rewrite the query as a UNION of one query per column",
                groups=[group.fingerprint],
            )
    for join in shape.joins:
        for side in (join.left, join.right):
            table = tables[side.table]
            keys = [fk for fk in table.foreign_keys if fk.columns[0] == side.name]
            scan = _seq_scan(plan, table)
            if keys and scan and not table.indexes_leading_with(side.name):
                yield Finding(
                    pattern="unindexed_foreign_key_join",
                    table=table.qualified,
                    columns=[side.name],
                    message=f"{table.qualified}.{side.name} references {keys[0].references} "
                    f"and is joined on (`{join.text}`), but no index leads with it",
                    evidence=[
                        f"foreign key {keys[0].name}: no index on ({side.name})",
                        scan.line(),
                    ],
                    advice=f"CREATE INDEX CONCURRENTLY ON {table.qualified} ({side.name})",
                    groups=[group.fingerprint],
                )
    yield from _sort_finding(group, shape, plan, tables)


def _predicate_finding(
    predicate: Predicate, table: Table, scan: PlanNode, asked: set[str]
) -> Finding | None:
    """`asked`: the columns of this table the statement filters on."""
    column = predicate.column.name
    if not scan.is_seq_scan:
        return _composite(predicate, table, scan, asked) if not predicate.wrapper else None
    indexes = table.indexes_leading_with(column)
    indexed = f"index {indexes[0].name} on ({', '.join(indexes[0].keys)})" if indexes else ""
    common = {"table": table.qualified, "columns": [column]}
    if predicate.kind == "like" and predicate.leading_wildcard:
        return Finding(
            pattern="leading_wildcard_like",
            message=f"`{predicate.text}` starts with a wildcard (or ignores case): a b-tree "
            "on the column cannot narrow it",
            evidence=[scan.line()],
            advice=f"a pg_trgm GIN index on {table.qualified} ({column} gin_trgm_ops), or "
            "full-text search; or anchor the pattern at its start",
            **common,
        )
    if predicate.in_or:
        return None  # the OR is the pattern; its finding covers the columns
    if predicate.wrapper is not None and indexes and not _has_expression(table, predicate):
        cast = predicate.wrapper == "cast"
        return Finding(
            pattern="cast_on_indexed_column" if cast else "function_on_indexed_column",
            message=f"`{predicate.text}` wraps {column} in "
            f"{'a cast' if cast else predicate.expression}, so {indexes[0].name} is not used",
            evidence=[indexed, scan.line()],
            advice=(
                f"compare the bare column with a value of its type "
                f"({table.columns.get(column, '?')}), e.g. a range instead of a cast"
                if cast
                else f"compare the bare column, or add an expression index: CREATE INDEX "
                f"CONCURRENTLY ON {table.qualified} (({predicate.expression}))"
            ),
            **common,
        )
    if predicate.wrapper is not None or predicate.kind not in ("eq", "range"):
        return None
    if indexes and f"({column})::" in (scan.filter or ""):
        type_ = table.columns.get(column, "?")
        return Finding(
            pattern="implicit_cast",
            message=f"{column} is {type_}, but `{predicate.text}` compares it with another "
            f"type: PostgreSQL casts the column for every row, so {indexes[0].name} is not used",
            evidence=[indexed, scan.line()],
            advice=f"pass the value as {type_} (in the driver or with an explicit cast of "
            "the value, never of the column)",
            **common,
        )
    if indexes:
        rows = max(table.estimated_rows, 1.0)
        share = scan.rows / rows
        if share >= LOW_SELECTIVITY:
            return Finding(
                pattern="low_selectivity",
                message=f"`{predicate.text}` matches about {share:.0%} of {table.qualified}: "
                f"reading {indexes[0].name} would cost more than the sequential scan",
                evidence=[indexed, scan.line(), f"{table.qualified}: {rows:,.0f} rows"],
                advice="no index helps this predicate; a partial index serves the rare "
                "values if those are what is asked, or add a more selective condition",
                **common,
            )
        return None
    return _composite(predicate, table, scan, asked)


def _composite(
    predicate: Predicate, table: Table, scan: PlanNode, asked: set[str]
) -> Finding | None:
    column = predicate.column.name
    later = [
        i for i in _later_key_indexes(table, column)
        if (scan.is_seq_scan or i.name == scan.index)
        and not set(i.keys[: i.keys.index(column)]) <= asked  # the keys before it: not asked
    ]  # fmt: skip
    if not later or table.indexes_leading_with(column):
        return None
    index = later[0]
    return Finding(
        pattern="composite_index_order",
        table=table.qualified,
        columns=[column],
        message=f"`{predicate.text}` filters on {column}, which is key "
        f"{index.keys.index(column) + 1} of {index.name} ({', '.join(index.keys)}): a "
        "b-tree serves a later key only with the ones before it, so "
        + ("the table is read whole" if scan.is_seq_scan else "the whole index is read"),
        evidence=[index.definition, scan.line()],
        advice=f"an index that leads with {column}, or reorder {index.name} if "
        f"{index.keys[0]} is always asked with it",
    )


def _later_key_indexes(table: Table, column: str) -> list[Index]:
    return [i for i in table.indexes if column in i.keys[1:] and not i.partial]


def _by_later_key(plan: Plan, table: Table, column: str) -> PlanNode | None:
    """A scan of an index that holds `column` only as a later key (a full index scan)."""
    names = {i.name for i in _later_key_indexes(table, column)}
    return next((n for n in plan.nodes if n.index in names), None)


def _sort_finding(
    group: QueryGroup, shape: Shape, plan: Plan, tables: dict[str, Table]
) -> Iterator[Finding]:
    if not (shape.limit and shape.sort):
        return
    sorts = [n for n in plan.nodes if n.node_type in ("Sort", "Incremental Sort")]
    names = {c.table for c in shape.sort}
    if not sorts or len(names) != 1:
        return
    table = tables[names.pop()]
    scan = _seq_scan(plan, table)
    if scan is None or table.rows < MIN_ROWS:
        return
    columns = [c.name for c in shape.sort]
    yield Finding(
        pattern="sort_without_index",
        table=table.qualified,
        columns=columns,
        message=f"ORDER BY {', '.join(columns)} with LIMIT sorts all of {table.qualified} "
        "to return a few rows",
        evidence=[sorts[0].line(), scan.line()],
        advice=f"an index on the filter's equality columns then ({', '.join(columns)}) "
        "returns the first rows in order",
        groups=[group.fingerprint],
    )


def _stale(table: Table) -> Finding | None:
    rows = max(table.estimated_rows, 0.0)
    if table.rows < MIN_ROWS:
        return None
    changed = table.modified_since_analyze
    # a statistics reset zeroes n_live_tup: then only the changes since count
    drift = abs(table.live_rows - rows) / max(table.live_rows, rows) if table.live_rows else 0.0
    if changed < STALE_SHARE * max(rows, table.live_rows) and drift < STALE_SHARE:
        return None
    return Finding(
        pattern="stale_statistics",
        table=table.qualified,
        message=f"the planner believes {table.qualified} has {rows:,.0f} rows; it has about "
        f"{table.live_rows:,} and {changed:,} changed since the last ANALYZE",
        evidence=[
            f"pg_class.reltuples = {table.estimated_rows:,.0f}, n_live_tup = "
            f"{table.live_rows:,}, n_mod_since_analyze = {changed:,}, analyzed since the "
            f"statistics reset: {'yes' if table.analyzed else 'no'}"
        ],
        advice=f"ANALYZE {table.qualified}; and check why autovacuum did not (its "
        "autovacuum_analyze_scale_factor, or autovacuum_enabled off)",
    )


def catalog_findings(catalog: Catalog) -> Iterator[Finding]:
    """Unused and duplicate indexes, and stale statistics, from the catalog alone."""
    for table in catalog.tables:
        stale = _stale(table)
        if stale is not None:
            yield stale
        for index in table.indexes:
            if index.scans == 0 and not (index.unique or index.constraint) and table.rows:
                yield Finding(
                    pattern="unused_index",
                    table=table.qualified,
                    columns=list(index.keys),
                    message=f"{index.name} was never scanned since the statistics were reset, "
                    "yet every write to the table maintains it",
                    evidence=[index.definition, f"idx_scan = 0, size {index.size_bytes:,} bytes"],
                    advice=f"DROP INDEX CONCURRENTLY {index.name}, once the statistics cover "
                    "a full business cycle (and on every replica that serves reads)",
                )
        yield from _duplicates(table)


def _duplicates(table: Table) -> Iterator[Finding]:
    plain = [i for i in table.indexes if not i.partial]
    for index in plain:
        for other in plain:
            if other is index or other.method != index.method or index.constraint:
                continue
            same = other.keys == index.keys
            covered = (
                len(index.keys) < len(other.keys) and other.keys[: len(index.keys)] == index.keys
            )
            if (same and other.name < index.name) or (covered and not index.unique):
                yield Finding(
                    pattern="duplicate_index",
                    table=table.qualified,
                    columns=list(index.keys),
                    message=f"{index.name} ({', '.join(index.keys)}) is "
                    + ("the same as" if same else "a prefix of")
                    + f" {other.name} ({', '.join(other.keys)}), which serves every query it does",
                    evidence=[index.definition, other.definition],
                    advice=f"DROP INDEX CONCURRENTLY {index.name}",
                )
                break


def _seq_scan(plan: Plan, table: Table) -> PlanNode | None:
    return next((n for n in plan.scans(table.name) if n.is_seq_scan), None)


def _has_expression(table: Table, predicate: Predicate) -> bool:
    return table.has_index([f"({predicate.expression})"])
