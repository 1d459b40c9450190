"""A transaction of writes sent to PostgreSQL in one round trip.

The agent runtime's busiest transactions only write: a handful of INSERTs and UPDATEs and
their audit rows. Sent one by one, each statement is a round trip and a pass through the
driver. Here each is compiled by SQLAlchemy (once, then cached), its values bound on the
client with psycopg's own quoting (`ClientCursor.mogrify`) and the lot sent as one query
between BEGIN and COMMIT: one round trip, whatever the number of statements.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, Table
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Insert

__all__ = ["NOT_DURABLE", "Statement", "send"]

Statement = tuple[Executable, dict[str, Any]]
#: A transaction's commit that does not wait for the server's disk flush (PostgreSQL).
NOT_DURABLE = "SET LOCAL synchronous_commit TO OFF"
_CACHE_SIZE = 256
_compiled: dict[tuple[int, tuple[str, ...]], tuple[Executable, SQLCompiler]] = {}


def _with_defaults(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    """`row` with the Python-side defaults of the columns it leaves out, as SQLAlchemy's
    own execution would fill them in."""
    filled = dict(row)
    for column in table.columns:
        default = column.default
        if column.key in filled or default is None:
            continue
        if default.is_scalar:
            filled[column.key] = default.arg  # type: ignore[attr-defined]
        elif default.is_callable:
            filled[column.key] = default.arg(None)  # type: ignore[attr-defined]
    return filled


def _compile(statement: Executable, dialect: Dialect, keys: tuple[str, ...]) -> SQLCompiler:
    cache_key = (id(statement), keys)
    hit = _compiled.get(cache_key)
    if hit is not None and hit[0] is statement:
        return hit[1]
    compiled = statement.compile(dialect=dialect, column_keys=list(keys))  # type: ignore[attr-defined]
    if len(_compiled) >= _CACHE_SIZE:  # statements built per call would only pile up
        _compiled.clear()
    _compiled[cache_key] = (statement, compiled)
    return compiled  # type: ignore[no-any-return]


def send(engine: Engine, statements: Sequence[Statement], *, durable: bool = True) -> None:
    """Run `statements` in one transaction on `engine` (PostgreSQL, psycopg), in one round
    trip. `durable=False`: the commit does not wait for the server's disk flush.

    A failure raises SQLAlchemy's exception for it (`IntegrityError`, `OperationalError`...)
    as `Connection.execute` would, with nothing committed; its message shows the statements
    without their values, which may hold what a tool was called with.
    """
    from psycopg import ClientCursor
    from psycopg import Error as DriverError
    from psycopg.pq import TransactionStatus

    raw = engine.raw_connection()
    driver: Any = raw.driver_connection
    try:
        cursor = ClientCursor(driver)
        parts, templates = ["BEGIN"], []
        if not durable:
            parts.append(NOT_DURABLE)
        for statement, params in statements:
            if isinstance(statement, Insert):
                params = _with_defaults(statement.table, params)  # type: ignore[arg-type]
            compiled = _compile(statement, engine.dialect, tuple(params))
            values = dict(compiled.construct_params(params) or {})
            for name, process in compiled._bind_processors.items():
                if name in values:
                    values[name] = process(values[name])  # type: ignore[operator]
            parts.append(cursor.mogrify(compiled.string, values))
            templates.append(compiled.string)
        parts.append("COMMIT")
        driver.autocommit = True  # BEGIN and COMMIT are the script's own
        try:
            driver.execute(";\n".join(parts))
        except DriverError as exc:
            if driver.info.transaction_status == TransactionStatus.INERROR:
                driver.execute("ROLLBACK")
            raise DBAPIError.instance(
                ";\n".join(templates), None, exc, DriverError, dialect=engine.dialect
            ) from exc
        finally:
            if not driver.broken:
                driver.autocommit = False
    finally:
        if driver.broken:  # the pool must not hand it out again
            raw.invalidate()
        raw.close()
