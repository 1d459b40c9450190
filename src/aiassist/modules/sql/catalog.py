"""What the analyser knows of the database: tables, their columns, indexes, foreign keys
and statistics, read once per analysis from the system catalogs and statistics views
(which a read-only user can read)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

__all__ = ["Catalog", "ForeignKey", "Index", "Table", "bare_key", "has_extension"]


def has_extension(conn: psycopg.Connection[tuple[Any, ...]], name: str) -> bool:
    """Whether the extension is installed in the connection's database."""
    found = conn.execute("select 1 from pg_extension where extname = %s", (name,)).fetchone()
    return found is not None


def bare_key(key: str) -> str:
    """An index key as pg_get_indexdef prints it: an expression without outer parentheses."""
    return key[1:-1] if key.startswith("(") and key.endswith(")") else key


@dataclass(frozen=True)
class Index:
    name: str
    table: str
    keys: tuple[str, ...]  # a column name, or the expression's text
    expression: tuple[bool, ...]  # per key: an expression rather than a column
    unique: bool
    primary: bool
    constraint: bool  # backs a constraint (primary key, unique, exclusion)
    partial: bool
    method: str
    scans: int
    size_bytes: int
    definition: str

    @property
    def columns(self) -> tuple[str, ...]:
        """The leading plain columns, up to the first expression."""
        plain: list[str] = []
        for key, is_expression in zip(self.keys, self.expression, strict=True):
            if is_expression:
                break
            plain.append(key)
        return tuple(plain)


@dataclass(frozen=True)
class ForeignKey:
    name: str
    table: str
    columns: tuple[str, ...]
    references: str


@dataclass
class Table:
    schema: str
    name: str
    estimated_rows: float  # pg_class.reltuples, what the planner believes; -1: never counted
    live_rows: int  # pg_stat_user_tables.n_live_tup: what the statistics collector counted
    modified_since_analyze: int
    analyzed: bool  # ANALYZE (or autovacuum's) ran since the statistics were reset
    writes: int  # inserts + updates + deletes since the statistics were reset
    columns: dict[str, str] = field(default_factory=dict)  # name -> type
    indexes: list[Index] = field(default_factory=list)
    foreign_keys: list[ForeignKey] = field(default_factory=list)

    @property
    def rows(self) -> float:
        """Rows as best known: a statistics reset zeroes n_live_tup, ANALYZE sets reltuples."""
        return max(self.estimated_rows, self.live_rows)

    @property
    def qualified(self) -> str:
        return self.name if self.schema == "public" else f"{self.schema}.{self.name}"

    def has_index(self, keys: Sequence[str]) -> bool:
        """Some full index leads with these keys (columns, or expressions)."""
        wanted = [bare_key(k) for k in keys]
        return any(
            [bare_key(k) for k in index.keys[: len(keys)]] == wanted and not index.partial
            for index in self.indexes
        )

    def indexes_leading_with(self, column: str) -> list[Index]:
        return [i for i in self.indexes if i.keys and i.keys[0] == column and not i.expression[0]]


_TABLES = """
select c.oid, n.nspname, c.relname, c.reltuples::float8,
       coalesce(s.n_live_tup, 0), coalesce(s.n_mod_since_analyze, 0),
       coalesce(s.last_analyze, s.last_autoanalyze) is not null,
       coalesce(s.n_tup_ins + s.n_tup_upd + s.n_tup_del, 0)
from pg_class c
join pg_namespace n on n.oid = c.relnamespace
left join pg_stat_user_tables s on s.relid = c.oid
where c.relkind in ('r', 'p', 'm')
  and n.nspname <> 'information_schema' and n.nspname not like 'pg\\_%'
"""
_COLUMNS = """
select attrelid, attname, format_type(atttypid, atttypmod)
from pg_attribute where attrelid = any(%s) and attnum > 0 and not attisdropped
order by attrelid, attnum
"""
_INDEXES = """
select i.indrelid, c.relname,
       array(select pg_get_indexdef(i.indexrelid, k, true)
             from generate_series(1, i.indnkeyatts) k order by k),
       array(select i.indkey[k - 1] = 0 from generate_series(1, i.indnkeyatts) k order by k),
       i.indisunique, i.indisprimary,
       exists(select 1 from pg_constraint x where x.conindid = i.indexrelid),
       i.indpred is not null, am.amname, coalesce(s.idx_scan, 0),
       pg_relation_size(i.indexrelid), pg_get_indexdef(i.indexrelid)
from pg_index i
join pg_class c on c.oid = i.indexrelid
join pg_am am on am.oid = c.relam
left join pg_stat_user_indexes s on s.indexrelid = i.indexrelid
where i.indrelid = any(%s) and i.indisvalid
order by c.relname
"""
_FOREIGN_KEYS = """
select x.conrelid, x.conname, x.confrelid,
       array(select a.attname from unnest(x.conkey) with ordinality k(n, o)
             join pg_attribute a on a.attrelid = x.conrelid and a.attnum = k.n order by k.o)
from pg_constraint x where x.contype = 'f' and x.conrelid = any(%s)
"""


class Catalog:
    """Tables by name; unqualified names resolve along the connection's search path."""

    def __init__(self, tables: list[Table], search_path: list[str]) -> None:
        self.tables = tables
        self._by_name = {(t.schema, t.name): t for t in tables}
        self._search_path = search_path

    @classmethod
    def read(cls, conn: psycopg.Connection[tuple[Any, ...]]) -> Catalog:
        by_oid: dict[int, Table] = {}
        for oid, schema, name, rows, live, mods, analyzed, writes in conn.execute(_TABLES):
            by_oid[int(oid)] = Table(
                str(schema), str(name), float(rows), int(live), int(mods), bool(analyzed),
                int(writes),
            )  # fmt: skip
        oids = list(by_oid)
        for oid, column, type_ in conn.execute(_COLUMNS, (oids,)):
            by_oid[int(oid)].columns[str(column)] = str(type_)
        for row in conn.execute(_INDEXES, (oids,)):
            oid, name, keys, expression, unique, primary, constraint, partial, *rest = row
            method, scans, size, definition = rest
            table = by_oid[int(oid)]
            table.indexes.append(
                Index(
                    str(name), table.name, tuple(keys), tuple(expression),
                    bool(unique), bool(primary), bool(constraint), bool(partial), str(method),
                    int(scans), int(size), str(definition),
                )
            )  # fmt: skip
        for oid, name, referenced, columns in conn.execute(_FOREIGN_KEYS, (oids,)):
            table = by_oid[int(oid)]
            target = by_oid.get(int(referenced))
            table.foreign_keys.append(
                ForeignKey(
                    str(name), table.name, tuple(columns),
                    target.qualified if target else str(referenced),
                )
            )  # fmt: skip
        path = conn.execute("select current_schemas(false)").fetchone()
        return cls(list(by_oid.values()), list(path[0]) if path else ["public"])

    def named(self, qualified: str) -> Table | None:
        """The table a `Table.qualified` name names (`orders`, `sales.orders`)."""
        schema, _, name = qualified.rpartition(".")
        return self.table(name, schema or None)

    def table(self, name: str, schema: str | None = None) -> Table | None:
        if schema is not None:
            return self._by_name.get((schema, name))
        for candidate in self._search_path:
            if (found := self._by_name.get((candidate, name))) is not None:
                return found
        return None
