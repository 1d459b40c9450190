"""What a statement asks of its tables, read from its parse tree (pglast, PostgreSQL's own
parser): the columns it filters, how (equality, range, LIKE; bare or under a function or a
cast), the columns it joins and sorts on, and the ORs that span columns.

The plan says what the planner did; the shape says why: together they are the evidence
the patterns cite.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal

import pglast
from pglast import ast, enums, visitors
from pglast.stream import RawStream

from aiassist.modules.sql.catalog import Catalog, Table

__all__ = ["Column", "Join", "OrGroup", "Predicate", "Shape", "parse_shape"]

Kind = Literal["eq", "range", "like", "null", "other"]
Wrapper = Literal["function", "cast", "expression"]


@dataclass(frozen=True)
class Column:
    table: str  # the catalog's qualified name
    name: str


@dataclass(frozen=True)
class Predicate:
    column: Column
    kind: Kind
    text: str  # the predicate as written (deparsed)
    wrapper: Wrapper | None = None
    expression: str | None = None  # the wrapped column, unqualified: an index expression
    leading_wildcard: bool = False
    in_or: bool = False


@dataclass(frozen=True)
class Join:
    left: Column
    right: Column
    text: str


@dataclass(frozen=True)
class OrGroup:
    columns: frozenset[Column]
    text: str


@dataclass
class Shape:
    tables: dict[str, Table] = field(default_factory=dict)  # alias or name -> table
    predicates: list[Predicate] = field(default_factory=list)
    joins: list[Join] = field(default_factory=list)
    ors: list[OrGroup] = field(default_factory=list)
    sort: list[Column] = field(default_factory=list)
    limit: bool = False
    parameters: int = 0  # highest $n: the statement needs a generic plan

    def table_names(self) -> set[str]:
        return {t.qualified for t in self.tables.values()}


_RANGE_OPS = {"<", ">", "<=", ">="}
# pglast types every node field as optional; the reader checks node types itself, so the
# nodes it is handed are `Any`.


def _deparse(node: Any) -> str:
    return str(RawStream()(node))  # a stream keeps what it printed: one per call


class _Unqualify(visitors.Visitor):
    def visit_ColumnRef(self, ancestors: Any, node: Any) -> None:
        node.fields = node.fields[-1:]


class _Statements(visitors.Visitor):
    """Collects every statement node and every named relation of a parse tree."""

    def __init__(self) -> None:
        self.statements: list[Any] = []
        self.relations: list[Any] = []
        self.parameters = 0

    def visit_SelectStmt(self, ancestors: Any, node: Any) -> None:
        self.statements.append(node)

    def visit_UpdateStmt(self, ancestors: Any, node: Any) -> None:
        self.statements.append(node)

    def visit_DeleteStmt(self, ancestors: Any, node: Any) -> None:
        self.statements.append(node)

    def visit_RangeVar(self, ancestors: Any, node: Any) -> None:
        self.relations.append(node)

    def visit_ParamRef(self, ancestors: Any, node: Any) -> None:
        self.parameters = max(self.parameters, node.number)


def parse_shape(sql: str, catalog: Catalog) -> Shape | None:
    """The shape of the first statement of `sql`; None when it does not parse."""
    try:
        statements = pglast.parse_sql(sql)
    except pglast.parser.ParseError:
        return None
    if not statements or statements[0].stmt is None:
        return None
    found = _Statements()
    found(statements[0].stmt)
    shape = Shape(parameters=found.parameters)
    for relation in found.relations:
        table = catalog.table(relation.relname, relation.schemaname)
        if table is not None:
            alias = relation.alias.aliasname if relation.alias else relation.relname
            shape.tables[alias] = table
    reader = _Reader(shape)
    for statement in found.statements:
        reader.statement(statement)
    return shape


class _Reader:
    def __init__(self, shape: Shape) -> None:
        self.shape = shape

    def statement(self, node: Any) -> None:
        if isinstance(node, ast.SelectStmt):
            for item in node.fromClause or ():
                self._from_item(item)
            self._where(node.whereClause, in_or=False)
            for sort in node.sortClause or ():
                column = self._column(sort.node)
                if column is not None:
                    self.shape.sort.append(column)
            self.shape.limit = self.shape.limit or node.limitCount is not None
        elif isinstance(node, ast.UpdateStmt | ast.DeleteStmt):
            self._where(node.whereClause, in_or=False)

    def _from_item(self, item: Any) -> None:
        if isinstance(item, ast.JoinExpr):
            self._from_item(item.larg)
            self._from_item(item.rarg)
            self._where(item.quals, in_or=False)

    def _where(self, node: Any, *, in_or: bool) -> None:
        if isinstance(node, ast.BoolExpr):
            is_or = node.boolop == enums.BoolExprType.OR_EXPR
            if is_or:
                columns = frozenset(c for arg in node.args or () for c in self._columns_in(arg))
                if len({(c.table, c.name) for c in columns}) > 1:
                    self.shape.ors.append(OrGroup(columns, _deparse(node)))
            for arg in node.args or ():
                self._where(arg, in_or=in_or or is_or)
        elif isinstance(node, ast.A_Expr):
            self._comparison(node, in_or=in_or)
        elif isinstance(node, ast.NullTest):
            column = self._column(node.arg)
            if column is not None:
                self._add(Predicate(column, "null", _deparse(node), in_or=in_or))

    def _comparison(self, node: Any, *, in_or: bool) -> None:
        kind = node.kind
        op = node.name[-1].sval if node.name else ""
        text = _deparse(node)
        left = self._operand(node.lexpr)
        if kind == enums.A_Expr_Kind.AEXPR_OP and op == "=":
            right = self._operand(node.rexpr)
            if left and right and left[0].table != right[0].table and not left[1] and not right[1]:
                self.shape.joins.append(Join(left[0], right[0], text))
                return
        if left is None:
            right = self._operand(node.rexpr) if kind == enums.A_Expr_Kind.AEXPR_OP else None
            if right is None or self._columns_in(node.lexpr):
                return
            left = right
        elif self._columns_in(node.rexpr) & {left[0]}:
            return  # the same column on both sides: nothing an index answers
        column, wrapper, expression = left
        if kind in (enums.A_Expr_Kind.AEXPR_LIKE, enums.A_Expr_Kind.AEXPR_ILIKE):
            pattern = getattr(getattr(node.rexpr, "val", None), "sval", None)
            leading = isinstance(pattern, str) and pattern[:1] in ("%", "_")
            ilike = kind == enums.A_Expr_Kind.AEXPR_ILIKE
            predicate = Predicate(
                column, "like", text, wrapper, expression, leading or ilike, in_or
            )
        elif kind == enums.A_Expr_Kind.AEXPR_OP and op in ("=", *_RANGE_OPS):
            predicate = Predicate(
                column, "eq" if op == "=" else "range", text, wrapper, expression, in_or=in_or
            )
        elif kind == enums.A_Expr_Kind.AEXPR_IN and op == "=":
            predicate = Predicate(column, "eq", text, wrapper, expression, in_or=in_or)
        elif kind == enums.A_Expr_Kind.AEXPR_BETWEEN:
            predicate = Predicate(column, "range", text, wrapper, expression, in_or=in_or)
        else:
            predicate = Predicate(column, "other", text, wrapper, expression, in_or=in_or)
        self._add(predicate)

    def _add(self, predicate: Predicate) -> None:
        if predicate not in self.shape.predicates:
            self.shape.predicates.append(predicate)

    def _operand(self, node: Any) -> tuple[Column, Wrapper | None, str | None] | None:
        """The one column `node` reads, with what wraps it; None for constants and for
        expressions over several columns."""
        column = self._column(node)
        if column is not None:
            return column, None, None
        columns = self._columns_in(node)
        if len(columns) != 1:
            return None
        wrapper: Wrapper = (
            "function"
            if isinstance(node, ast.FuncCall)
            else "cast"
            if isinstance(node, ast.TypeCast)
            else "expression"
        )
        unqualified = copy.deepcopy(node)
        _Unqualify()(unqualified)
        return next(iter(columns)), wrapper, _deparse(unqualified)

    def _columns_in(self, node: Any) -> set[Column]:
        if node is None:
            return set()
        found: set[Column] = set()
        reader = self

        class Refs(visitors.Visitor):
            def visit_ColumnRef(self, ancestors: Any, ref: Any) -> None:
                column = reader._column(ref)
                if column is not None:
                    found.add(column)

            def visit_SubLink(self, ancestors: Any, link: Any) -> Any:
                return visitors.Skip

        Refs()(node)
        return found

    def _column(self, node: Any) -> Column | None:
        if not isinstance(node, ast.ColumnRef):
            return None
        fields = node.fields or ()
        names = [f.sval for f in fields if isinstance(f, ast.String) and f.sval is not None]
        if len(names) != len(fields) or not names:
            return None  # a star
        name = names[-1]
        if len(names) >= 2:
            table = self.shape.tables.get(names[-2])
            return Column(table.qualified, name) if table and name in table.columns else None
        owners = {t.qualified for t in self.shape.tables.values() if name in t.columns}
        return Column(owners.pop(), name) if len(owners) == 1 else None
