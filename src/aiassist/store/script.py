"""The agent runtime's hot writes, with as little client and server work per statement as
each database allows.

On PostgreSQL a transaction that only writes (a handful of INSERTs and UPDATEs and their
audit rows) goes as one query, which the server runs as one transaction (all of it or
nothing): one round trip, whatever the number of statements (`Script`). Each statement is
compiled by SQLAlchemy once, prepared on the server the first time a connection sends it
and then executed by name with its values quoted by psycopg: the server parses and plans
it once. Consecutive rows of one INSERT go as one statement. `Script.send` does not wait
for the server: the caller goes on while the server works and takes the outcome when it
needs it (`Sent.wait`). Once sent, the whole transaction, its commit included, is the
server's to run, whatever becomes of the caller.

psycopg's own automatic preparing is off on the engines `aiassist.store.db.make_engine`
makes: after a rollback it runs `DEALLOCATE ALL`, which would drop these statements too.
Where prepared statements are lost anyway (that, a pooler such as PgBouncer in transaction
mode, someone's `DEALLOCATE ALL`), the transaction that finds out fails once, is sent
again, and the engine's statements go whole with their values from then on.

On SQLite, where a statement costs no round trip, each goes straight to the driver inside
the caller's transaction, compiled once (`execute`, `scalar`): SQLAlchemy's work at each
execution is a few times SQLite's own for such small writes.
"""

from __future__ import annotations

import hashlib
import re
import select
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NoReturn, TypeVar

from sqlalchemy import Connection, Engine, Table
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Insert

__all__ = ["NOT_DURABLE", "Script", "Sent", "Statement", "send"]

Statement = tuple[Executable, dict[str, Any]]
#: A transaction's commit that does not wait for the server's disk flush (PostgreSQL).
NOT_DURABLE = "SET LOCAL synchronous_commit TO OFF"
_CACHE_SIZE = 256
_PARAMETER = re.compile(r"%\(([^)]+)\)s")
_SESSION = "aiassist.script.session"
_UNKNOWN_STATEMENT = "26000"  # invalid_sql_statement_name
#: engines whose connections lost statements prepared on them: behind a pooler that hands
#: out any server connection (PgBouncer's transaction mode), or after a DEALLOCATE ALL
_unprepared: weakref.WeakSet[Engine] = weakref.WeakSet()


@dataclass(frozen=True)
class _Template:
    """A compiled statement cut at its parameters: `chunks` around `names`, in order."""

    compiled: SQLCompiler
    chunks: list[bytes]
    names: list[str]
    processors: list[Callable[[Any], Any] | None]
    #: an INSERT of one row, which the next rows of the same statement extend
    extendable: bool
    #: its parameters are the given values themselves (an INSERT of them): no need to ask
    #: SQLAlchemy for them
    direct: bool
    #: by number of rows: the name and the text it is prepared with on the server
    prepared: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)

    def inline(self, arguments: list[bytes]) -> bytes:
        """Its text with `arguments` (literals, row after row) in place of its parameters."""
        if not self.names:
            return self.chunks[0]
        pieces = [self.chunks[0]]
        width = len(self.names)
        for start in range(0, len(arguments), width):
            if start:
                pieces.append(b",\n(")
            row = arguments[start : start + width]
            for argument, chunk in zip(row, self.chunks[1:], strict=True):
                pieces += [argument, chunk]
        return b"".join(pieces)

    def prepared_as(self, rows: int) -> tuple[bytes, bytes]:
        """The server-side prepared statement for `rows` rows: its name and its text."""
        known = self.prepared.get(rows)
        if known is None:
            text = self.inline([b"$%d" % n for n in range(1, len(self.names) * rows + 1)])
            name = b"aiassist_" + hashlib.sha256(text).hexdigest()[:24].encode()
            known = self.prepared[rows] = (name, text)
        return known


V = TypeVar("V")
#: what is made once per statement (and the parameters given), by statement identity
_Cache = dict[tuple[int, tuple[str, ...]], tuple[Executable, V]]


def _once(
    cache: _Cache[V], statement: Executable, keys: tuple[str, ...], make: Callable[[], V]
) -> V:
    """`make()` for `statement` and `keys`, made once while the statement lives."""
    hit = cache.get((id(statement), keys))
    if hit is not None and hit[0] is statement:
        return hit[1]
    value = make()
    if len(cache) >= _CACHE_SIZE:  # statements built per call would only pile up
        cache.clear()
    cache[(id(statement), keys)] = (statement, value)
    return value


_templates: _Cache[_Template] = {}


def _template(statement: Executable, dialect: Dialect, keys: tuple[str, ...]) -> _Template:
    return _once(_templates, statement, keys, lambda: _cut(statement, dialect, keys))


def _cut(statement: Executable, dialect: Dialect, keys: tuple[str, ...]) -> _Template:
    compiled: SQLCompiler = statement.compile(dialect=dialect, column_keys=list(keys))  # type: ignore[attr-defined]
    pieces = _PARAMETER.split(compiled.string)  # text, name, text, name, ..., text
    names = pieces[1::2]
    chunks = [text.replace("%%", "%").encode() for text in pieces[::2]]
    return _Template(
        compiled,
        chunks,
        names,
        [compiled._bind_processors.get(name) for name in names],  # type: ignore[misc]
        isinstance(statement, Insert)
        and chunks[0].endswith(b"VALUES (")
        and chunks[-1].endswith(b")"),
        isinstance(statement, Insert) and sorted(names) == sorted(keys),
    )


_defaults: dict[Table, list[tuple[str, Any]]] = {}


def _with_defaults(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    """`row` with the Python-side defaults of the columns it leaves out, as SQLAlchemy's
    own execution would fill them in."""
    defaults = _defaults.get(table)
    if defaults is None:
        defaults = _defaults[table] = [
            (c.key, c.default) for c in table.columns if c.default is not None
        ]
    filled = dict(row)
    for key, default in defaults:
        if key in filled:
            continue
        if default.is_scalar:
            filled[key] = default.arg
        elif default.is_callable:
            filled[key] = default.arg(None)
    return filled


class Sent:
    """A transaction on its way to the server: `wait` for its outcome.

    It holds its pooled connection until then, so nothing else is sent on it meanwhile.
    """

    def __init__(
        self, engine: Engine, raw: Any, templates: list[str], preparing: list[bytes]
    ) -> None:
        self._engine = engine
        self._raw: Any = raw
        self._templates = templates
        self._preparing = preparing

    def wait(self) -> None:
        """The outcome: None once committed, or SQLAlchemy's exception for the failure
        (`IntegrityError`, `OperationalError`...), as `Connection.execute` raises it, with
        nothing committed. Its message shows the statements without their values, which
        may hold what a tool was called with. A statement no longer prepared on the
        connection (someone ran `DEALLOCATE ALL` on it, or a pooler handed out another
        one) is an `OperationalError`: the engine's statements go unprepared from then on,
        and the transaction can be sent again."""
        from psycopg import Error as DriverError
        from psycopg.errors import error_from_result
        from psycopg.pq import ExecStatus

        raw, self._raw = self._raw, None
        if raw is None:
            return
        driver: Any = raw.driver_connection
        pgconn = driver.pgconn
        failure: DriverError | None = None
        try:
            poller = select.poll()
            poller.register(pgconn.socket, select.POLLIN)
            while True:
                while pgconn.is_busy():
                    poller.poll()  # the GIL is let go meanwhile
                    pgconn.consume_input()
                result = pgconn.get_result()
                if result is None:
                    break
                if result.status == ExecStatus.FATAL_ERROR and failure is None:
                    failure = error_from_result(result, driver.info.encoding)
            session = _Session.of(raw)
            if failure is None:
                session.prepared.update(self._preparing)
            elif not driver.broken:  # rolled back whole: a query is one transaction
                session.recount()
        except DriverError as exc:
            failure = exc
        finally:
            if driver.broken:
                raw.invalidate()  # the pool must not hand it out again
            raw.close()
        if failure is None:
            return
        statements = ";\n".join(self._templates)
        if failure.sqlstate == _UNKNOWN_STATEMENT:  # dropped behind our back: send it again,
            _unprepared.add(self._engine)  # whole (a pooler may hand out any connection)
            raise OperationalError(statements, None, failure) from failure
        raise DBAPIError.instance(
            statements, None, failure, DriverError, dialect=self._engine.dialect
        ) from failure


class Script:
    """A transaction written out as one query for a pooled connection it holds: `send` it,
    or `close` it unsent.

    Writing it out is most of the client's work: done before the caller waits for
    something else (an earlier transaction's answer), it is done meanwhile."""

    def __init__(
        self, engine: Engine, statements: Sequence[Statement], *, durable: bool = True
    ) -> None:
        self._engine = engine
        self._raw: Any = engine.raw_connection()
        try:
            self._query, self._templates, self._preparing = _write(
                self._raw, engine, statements, durable
            )
        except BaseException as exc:
            self._fail(exc)

    def send(self) -> Sent:
        """Send it without waiting for the server (`Sent.wait` does)."""
        raw, self._raw = self._raw, None
        assert raw is not None, "a script is sent once"
        pgconn = raw.driver_connection.pgconn
        try:
            pgconn.send_query(self._query)
            if pgconn.flush():  # what the socket did not take at once
                poller = select.poll()
                poller.register(pgconn.socket, select.POLLOUT)
                while pgconn.flush():
                    poller.poll()
        except BaseException as exc:
            self._raw = raw
            self._fail(exc)
        return Sent(self._engine, raw, self._templates, self._preparing)

    def close(self) -> None:
        raw, self._raw = self._raw, None
        if raw is not None:
            raw.close()

    def _fail(self, exc: BaseException) -> NoReturn:
        from psycopg import Error as DriverError

        raw, self._raw = self._raw, None
        if raw.driver_connection.broken:
            raw.invalidate()
        raw.close()
        if isinstance(exc, DriverError):
            raise DBAPIError.instance(
                "(a transaction written out as one query)",
                None,
                exc,
                DriverError,
                dialect=self._engine.dialect,
            ) from exc
        raise exc


def send(engine: Engine, statements: Sequence[Statement], *, durable: bool = True) -> Sent:
    """Send `statements` to `engine` (PostgreSQL, psycopg) as one transaction in one query,
    without waiting for the server. `durable=False`: the commit does not wait for the
    server's disk flush."""
    return Script(engine, statements, durable=durable).send()


class _Session:
    """What this process keeps about one server connection: its quoting and the statements
    prepared on it."""

    def __init__(self, driver: Any) -> None:
        from psycopg.adapt import Transformer

        self.driver = driver
        self.literal: Callable[[Any], bytes] = Transformer(driver).as_literal
        self.prepared: set[bytes] = set()

    @classmethod
    def of(cls, raw: Any) -> _Session:
        session = raw.info.get(_SESSION)
        if session is None or session.driver is not raw.driver_connection:  # reconnected
            session = raw.info[_SESSION] = cls(raw.driver_connection)
        return session  # type: ignore[no-any-return]

    def recount(self) -> None:
        """After a failure, which may have left a statement prepared or not: ask."""
        rows = self.driver.execute(
            "SELECT name FROM pg_prepared_statements WHERE name LIKE 'aiassist\\_%'"
        )
        self.prepared = {name.encode() for (name,) in rows}


def _write(
    raw: Any, engine: Engine, statements: Sequence[Statement], durable: bool
) -> tuple[bytes, list[str], list[bytes]]:
    """The query for `statements` on the connection `raw`, the statements' templates and
    the names of those it prepares on the server.

    Each statement is prepared on a connection the first time it is sent there (`PREPARE`,
    a row count of an INSERT counting as a statement of its own) and executed by name with
    its values as literals (`EXECUTE`): the server skips parsing and planning it again. On
    an engine whose connections lost their prepared statements once, statements go whole
    with their values in place."""
    session = _Session.of(raw)
    literal = session.literal
    unprepared = engine in _unprepared
    groups: list[tuple[_Template, list[Mapping[str, Any]]]] = []
    for statement, params in statements:
        if isinstance(statement, Insert):
            params = _with_defaults(statement.table, params)  # type: ignore[arg-type]
        template = _template(statement, engine.dialect, tuple(params))
        values = params if template.direct else template.compiled.construct_params(params)
        if groups and groups[-1][0] is template and template.extendable:
            groups[-1][1].append(values)  # one more row of the same INSERT
        else:
            groups.append((template, [values]))
    parts = [] if durable else [NOT_DURABLE.encode() + b";\n"]
    preparing: list[bytes] = []
    for template, rows in groups:
        name, text = template.prepared_as(len(rows))
        if not unprepared and name not in session.prepared and name not in preparing:
            parts.append(b"PREPARE %s AS %s;\n" % (name, text))
            preparing.append(name)
        arguments = []
        for row in rows:
            for key, process in zip(template.names, template.processors, strict=True):
                value = row[key]
                if process is not None:
                    value = process(value)
                if type(value) is datetime:  # the statement casts it; psycopg takes longer
                    arguments.append(b"'%s'" % value.isoformat().encode())
                else:
                    arguments.append(literal(value))
        if unprepared:
            parts.append(template.inline(arguments) + b";\n")
        elif arguments:
            parts.append(b"EXECUTE %s(%s);\n" % (name, b", ".join(arguments)))
        else:
            parts.append(b"EXECUTE %s;\n" % name)
    return b"".join(parts), [t.compiled.string for t, _ in groups], preparing


_queries: _Cache[str] = {}


def scalar(connection: Connection, statement: Executable) -> Any:
    """`connection.scalar(statement)` for a query without parameters; on SQLite straight on
    the driver, as `execute` writes."""
    if connection.dialect.name != "sqlite":
        return connection.scalar(statement)
    query = _once(
        _queries,
        statement,
        (),
        lambda: (
            statement.compile(  # type: ignore[attr-defined]
                dialect=connection.dialect, compile_kwargs={"literal_binds": True}
            ).string
        ),
    )
    row = _on_driver(connection, lambda cursor: cursor.execute(query).fetchone(), query)
    return None if row is None else row[0]


_Positional = tuple[SQLCompiler, list[tuple[str, Callable[[Any], Any] | None]]]
_positional: _Cache[_Positional] = {}


def _positional_form(statement: Executable, dialect: Dialect, keys: tuple[str, ...]) -> _Positional:
    """`statement` compiled for a positional driver, and its parameters in order."""
    compiled: SQLCompiler = statement.compile(dialect=dialect, column_keys=list(keys))  # type: ignore[attr-defined]
    processors: dict[str, Any] = dict(compiled._bind_processors)
    return compiled, [(name, processors.get(name)) for name in compiled.positiontup or []]


def execute(
    connection: Connection, statement: Executable, rows: Sequence[Mapping[str, Any]]
) -> None:
    """`connection.execute(statement, rows)` for a statement that writes and returns
    nothing. On SQLite it goes straight to the driver, compiled once: SQLAlchemy's work at
    each execution is a few times SQLite's own for the runtime's small writes."""
    keys = tuple(rows[0])
    if connection.dialect.name != "sqlite" or any(tuple(row) != keys for row in rows):
        connection.execute(statement, list(rows) if len(rows) > 1 else rows[0])
        return
    if isinstance(statement, Insert):  # the columns' Python-side defaults, as SQLAlchemy would
        rows = [_with_defaults(statement.table, row) for row in rows]  # type: ignore[arg-type]
        keys = tuple(rows[0])
    compiled, binds = _once(
        _positional, statement, keys, lambda: _positional_form(statement, connection.dialect, keys)
    )
    arguments = []
    for row in rows:
        values = compiled.construct_params(dict(row)) if not isinstance(statement, Insert) else row
        arguments.append([values[n] if p is None else p(values[n]) for n, p in binds])
    _on_driver(
        connection, lambda cursor: cursor.executemany(compiled.string, arguments), compiled.string
    )


def _on_driver(connection: Connection, do: Callable[[Any], Any], statement: str) -> Any:
    """`do(cursor)` with a cursor of `connection`'s driver; its errors as SQLAlchemy's."""
    dialect = connection.dialect
    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        return do(cursor)
    except dialect.loaded_dbapi.Error as exc:
        raise DBAPIError.instance(
            statement, None, exc, dialect.loaded_dbapi.Error, dialect=dialect
        ) from exc
    finally:
        cursor.close()
