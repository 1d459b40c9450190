"""Where statements come from: pg_stat_statements, a server log written with
`log_min_duration_statement` or auto_explain, or a plain list of queries."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pglast
import psycopg

from aiassist.modules.sql.catalog import has_extension

__all__ = [
    "SourceError",
    "Statement",
    "from_log",
    "from_pg_stat_statements",
    "from_queries",
    "require_pg_stat_statements",
]


class SourceError(Exception):
    """A source cannot be read; the message says what to fix."""


@dataclass(frozen=True)
class Statement:
    text: str
    calls: int = 1
    total_ms: float = 0.0


_PG_STAT_STATEMENTS = """
select query, calls, total_exec_time from pg_stat_statements
where dbid = (select oid from pg_database where datname = current_database())
  and toplevel
order by total_exec_time desc
limit %s
"""


def from_pg_stat_statements(
    conn: psycopg.Connection[tuple[Any, ...]], limit: int = 10_000
) -> list[Statement]:
    """The database's statements, most total time first (normalised, with `$n`)."""
    require_pg_stat_statements(conn)
    try:
        rows = conn.execute(_PG_STAT_STATEMENTS, (limit,)).fetchall()
    except psycopg.Error as exc:
        raise SourceError(f"pg_stat_statements cannot be read: {exc}".strip()) from None
    return [Statement(str(q), int(c), float(t)) for q, c, t in rows]


def require_pg_stat_statements(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
    """A `SourceError` saying how to install it when the database lacks it."""
    if not has_extension(conn, "pg_stat_statements"):
        raise SourceError(
            "pg_stat_statements is not installed in this database: add it to "
            "shared_preload_libraries and run CREATE EXTENSION pg_stat_statements, or "
            "analyse a server log (--log) or a list of queries (--queries)"
        )


# "... LOG:  duration: 12.345 ms  statement: SELECT ..." (log_min_duration_statement),
# "... execute <name>: ..." (extended protocol), "... plan:" then "Query Text: ..." (auto_explain)
_DURATION = re.compile(
    r"duration: (?P<ms>[0-9.]+) ms\s+(?:(?:statement|execute [^:]*): (?P<sql>.*)|plan:.*)$"
)
_QUERY_TEXT = re.compile(r"^\s*Query Text: (?P<sql>.*)$")


def from_log(lines: Iterable[str]) -> list[Statement]:
    """The statements a server log timed, with their durations.

    A line that starts with a tab continues the entry above it (a statement over several
    lines, DETAIL and CONTEXT lines, auto_explain's plan); other entries of the log
    (connections, errors, checkpoints) are skipped.
    """
    out: list[Statement] = []
    for ms, text in _log_entries(lines):
        text = text.strip().rstrip(";").strip()
        if text:
            out.append(Statement(text, 1, ms))
    return out


def _log_entries(lines: Iterable[str]) -> Iterator[tuple[float, str]]:
    ms: float | None = None
    parts: list[str] = []
    state = "skip"  # "statement": continuation lines extend it; "plan": await Query Text
    for raw in lines:
        line = raw.rstrip("\n")
        if not line.startswith("\t"):
            if ms is not None and parts:
                yield ms, " ".join(parts)
            ms, parts, state = None, [], "skip"
            match = _DURATION.search(line)
            if match is not None:
                ms = float(match["ms"])
                state = "plan" if match["sql"] is None else "statement"
                parts = [] if match["sql"] is None else [match["sql"]]
            continue
        body = line.strip()
        if state == "plan" and (found := _QUERY_TEXT.match(line)):
            parts, state = [found["sql"]], "skip"
        elif state == "statement" and body.startswith(("DETAIL:", "CONTEXT:", "HINT:")):
            state = "skip"
        elif state == "statement":
            parts.append(body)
    if ms is not None and parts:
        yield ms, " ".join(parts)


def from_queries(text: str) -> list[Statement]:
    """Statements separated by semicolons (pglast splits them as PostgreSQL would)."""
    try:
        return [Statement(s.strip()) for s in pglast.split(text) if s.strip()]
    except pglast.parser.ParseError as exc:
        raise SourceError(f"the queries do not parse: {exc}") from None
