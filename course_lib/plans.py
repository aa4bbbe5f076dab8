"""Query plans read one way for every user (lessons, graders, the auditor): SQLite's `EXPLAIN QUERY PLAN` and
PostgreSQL's `EXPLAIN (FORMAT JSON)` parsed into one small typed `QueryPlan`.

One rule for "reads the whole table": a step that walks every entry of a table or of an index, whatever it walks
with. SQLite's `SCAN t USING COVERING INDEX ix` and PostgreSQL's Index Scan or Index Only Scan without an index
condition read every entry, so they are full scans; a search (SEARCH …, an index scan with a condition, a bitmap
heap scan) is not.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session
from sqlalchemy.sql import ClauseElement, Executable

from .db import DemoDB

__all__ = [
    "PlanStep", "QueryPlan", "parse_sqlite_plan", "parse_postgresql_plan", "parse_plan", "postgresql_nodes",
    "EXPLAIN_PREFIX", "EXPLAINERS", "explain", "explain_driver_sql",
]


@dataclass(frozen=True)
class PlanStep:
    """One line of a query plan, normalised across dialects (access: scan, search, sort or other)."""

    detail: str
    # "scan": reads the whole table (or a whole index); "search": jumps to rows through a key;
    # "sort": the database sorts rows itself (SQLite's USE TEMP B-TREE, PostgreSQL's Sort); "other": anything else
    access: str
    table: str | None = None
    index: str | None = None
    covering: bool = False
    automatic: bool = False
    depth: int = 0

    @property
    def full_scan(self) -> bool:
        """True when the step reads every row of a table (or every entry of an index)."""
        return self.access == "scan" and self.table is not None

    @property
    def uses_declared_index(self) -> bool:
        """True when the step searches through an index you declared (or the primary key), not an automatic one."""
        return self.access == "search" and self.index is not None and not self.automatic

    @property
    def headline(self) -> str:
        """The step without its condition or filter: `SCAN users`, `Seq Scan on users`, `Index Only Scan using ix on t`."""
        return re.split(r" \(| \[", self.detail, maxsplit=1)[0]


@dataclass(frozen=True)
class QueryPlan:
    """The database's plan for one statement: its steps, with the questions a lesson asks of them."""

    dialect: str
    sql: str
    steps: tuple[PlanStep, ...]

    def on(self, table: str) -> list[PlanStep]:
        """The steps that read `table`."""
        return [s for s in self.steps if s.table == table]

    @property
    def full_scans(self) -> list[PlanStep]:
        """The steps that read a table (or an index) from end to end."""
        return [s for s in self.steps if s.full_scan]

    @property
    def scanned_tables(self) -> list[str]:
        """Tables read from end to end."""
        return [s.table for s in self.steps if s.full_scan and s.table]

    @property
    def indexes(self) -> list[str]:
        """Indexes the plan uses (declared ones, the primary key included)."""
        return [s.index for s in self.steps if s.index and not s.automatic]

    @property
    def sorts(self) -> bool:
        """True when the database sorts rows itself (the index did not deliver them in order)."""
        return any(s.access == "sort" for s in self.steps)

    def searches_index(self, table: str | None = None) -> bool:
        """True when every read of `table` (of any table if None) goes through a declared index, sorted or not."""
        reads = [s for s in self.steps if s.table is not None and (table is None or s.table == table)]
        return bool(reads) and all(s.uses_declared_index for s in reads)

    def uses_index(self, table: str | None = None) -> bool:
        """True when every read of `table` (default: of any table) is an index search and nothing is sorted."""
        reads = [s for s in self.steps if s.table is not None and (table is None or s.table == table)]
        return bool(reads) and all(s.uses_declared_index for s in reads) and not self.sorts

    def __str__(self) -> str:
        return "\n".join("  " * s.depth + s.detail for s in self.steps)

    def __repr__(self) -> str:
        return f"QueryPlan[{self.dialect}]\n{self}"


_SQLITE_STEP = re.compile(
    r"^(?P<op>SCAN|SEARCH)\s+(?:TABLE\s+)?(?P<table>[\w$]+)(?:\s+AS\s+(?P<alias>[\w$]+))?"
    r"(?:\s+USING\s+(?P<how>.*?)(?P<kind>INTEGER PRIMARY KEY|PRIMARY KEY|INDEX)(?:\s+(?P<index>[\w$]+))?)?"
    r"(?:\s+\((?P<cond>.*)\))?\s*$"
)


def parse_sqlite_plan(rows: Iterable[Sequence[Any]] | None, sql: str = "") -> QueryPlan:
    """Turn SQLite's `EXPLAIN QUERY PLAN` rows (id, parent, notused, detail) into a QueryPlan."""
    depth_of: dict[int, int] = {0: -1}
    steps: list[PlanStep] = []
    for row in rows or ():
        node, parent, detail = int(row[0]), int(row[1]), str(row[-1])
        depth = depth_of.get(parent, -1) + 1
        depth_of[node] = depth
        match = _SQLITE_STEP.match(detail)
        if match is None:
            access = "sort" if detail.startswith("USE TEMP B-TREE") else "other"
            steps.append(PlanStep(detail, access, depth=depth))
            continue
        how = (match["how"] or "").upper()
        kind = match["kind"]
        index = match["index"] if kind == "INDEX" else ("PRIMARY KEY" if kind else None)
        steps.append(PlanStep(
            detail=detail,
            access="search" if match["op"] == "SEARCH" else "scan",
            table=match["table"],
            index=index,
            covering="COVERING" in how,
            automatic="AUTOMATIC" in how,
            depth=depth,
        ))
    return QueryPlan("sqlite", sql, tuple(steps))


_PG_SCANS = {"Seq Scan", "Index Scan", "Index Only Scan", "Bitmap Heap Scan", "Tid Scan", "Tid Range Scan",
             "Sample Scan"}


def _pg_detail(node: Mapping[str, Any]) -> str:
    """One line like PostgreSQL's text EXPLAIN: `Index Scan Backward using ix on posts (user_id = 7)`."""
    kind = str(node.get("Node Type", "?"))
    words = ("Parallel " if node.get("Parallel Aware") else "") + kind
    if node.get("Scan Direction") == "Backward":
        words += " Backward"
    if kind == "Aggregate" and node.get("Strategy") in ("Hashed", "Sorted"):
        words = ("HashAggregate" if node["Strategy"] == "Hashed" else "GroupAggregate")
    if node.get("Index Name") and kind != "Bitmap Index Scan":
        words += f" using {node['Index Name']}"
    elif kind == "Bitmap Index Scan":
        words += f" on {node.get('Index Name')}"
    if node.get("Relation Name"):
        alias = node.get("Alias")
        words += f" on {node['Relation Name']}" + (f" {alias}" if alias and alias != node["Relation Name"] else "")
    for key in ("Index Cond", "Filter"):
        condition = str(node.get(key) or "")
        if condition:
            condition = condition if condition.startswith("(") and condition.endswith(")") else f"({condition})"
            words += f" {condition}" if key == "Index Cond" else f" [Filter: {condition[1:-1]}]"
    if node.get("Sort Key"):
        words += f" ({', '.join(node['Sort Key'])})"
    return words


def _bitmap_indexes(node: Mapping[str, Any]) -> list[str]:
    """The index names under a Bitmap Heap Scan (one Bitmap Index Scan, or several under BitmapAnd/BitmapOr)."""
    if node.get("Node Type") == "Bitmap Index Scan":
        return [str(node.get("Index Name"))]
    return [name for child in node.get("Plans", ()) for name in _bitmap_indexes(child)]


def _pg_document(document: Any) -> Any:
    """The parsed JSON of an `EXPLAIN (FORMAT JSON)` answer (drivers hand back text or the parsed list)."""
    if isinstance(document, (str, bytes)):
        document = json.loads(document)
    return document


def postgresql_nodes(document: Any) -> Iterator[Mapping[str, Any]]:
    """Every node of a PostgreSQL `EXPLAIN (FORMAT JSON)` answer (with or without ANALYZE), breadth-first from the root
    (an answer that is not a plan, such as text that is not JSON, has none)."""
    try:
        document = _pg_document(document)
    except ValueError:
        return
    queue: deque[Any] = deque([document])
    while queue:
        node = queue.popleft()
        if isinstance(node, list):
            queue.extend(node)
        elif isinstance(node, Mapping):
            if "Node Type" in node:
                yield node
            queue.extend(node[key] for key in ("Plan", "Plans") if key in node)


def parse_postgresql_plan(document: Any, sql: str = "") -> QueryPlan:
    """Turn PostgreSQL's `EXPLAIN (FORMAT JSON)` answer (the parsed JSON or its text) into a QueryPlan.

    Seq Scan → scan; Index Scan, Index Only Scan (covering) and Bitmap Heap Scan → search when the index has
    a condition (an Index Scan without one reads the whole index in order: a scan); Sort → sort."""
    document = _pg_document(document)
    if isinstance(document, Sequence) and not isinstance(document, Mapping):
        document = document[0] if document else None
    if not isinstance(document, Mapping):  # nothing to read (an empty answer)
        return QueryPlan("postgresql", sql, ())
    root = document.get("Plan", document)
    steps: list[PlanStep] = []

    def walk(node: Mapping[str, Any], depth: int) -> None:
        kind = str(node.get("Node Type", ""))
        detail = _pg_detail(node)
        if kind in _PG_SCANS:
            table = node.get("Relation Name")
            if kind == "Bitmap Heap Scan":
                names = _bitmap_indexes(node)
                index: str | None = ", ".join(names) if names else None
                access = "search"
            elif kind in ("Index Scan", "Index Only Scan"):
                index = node.get("Index Name")
                access = "search" if node.get("Index Cond") else "scan"
            else:
                index, access = None, "scan"
            steps.append(PlanStep(detail, access, table=table, index=index,
                                  covering=kind == "Index Only Scan", depth=depth))
        elif kind in ("Sort", "Incremental Sort"):
            steps.append(PlanStep(detail, "sort", depth=depth))
        else:  # Limit, Aggregate, Gather, Bitmap Index Scan (its index is on the heap scan above), joins…
            steps.append(PlanStep(detail, "other", depth=depth))
        for child in node.get("Plans", ()):
            walk(child, depth + 1)

    walk(root, 0)
    return QueryPlan("postgresql", sql, tuple(steps))


# dialect name → the prefix that asks for the plan instead of the rows
EXPLAIN_PREFIX = {"sqlite": "EXPLAIN QUERY PLAN ", "postgresql": "EXPLAIN (FORMAT JSON) "}


def parse_plan(dialect: str, answer: Any, sql: str = "") -> QueryPlan:
    """Parse what `EXPLAIN_PREFIX[dialect] + sql` returned: SQLite's rows, or PostgreSQL's one JSON value."""
    if dialect == "sqlite":
        return parse_sqlite_plan(answer, sql)
    if dialect == "postgresql":
        return parse_postgresql_plan(answer, sql)
    raise NotImplementedError(f"no query-plan parser for {dialect!r} yet (known: {', '.join(EXPLAIN_PREFIX)})")


def _explain_sqlite(conn: Connection, sql: str, params: Mapping[str, Any] | None) -> QueryPlan:
    rows = conn.execute(text(EXPLAIN_PREFIX["sqlite"] + sql), dict(params or {})).all()
    return parse_sqlite_plan(rows, sql)


def _explain_postgresql(conn: Connection, sql: str, params: Mapping[str, Any] | None) -> QueryPlan:
    document = conn.execute(text(EXPLAIN_PREFIX["postgresql"] + sql), dict(params or {})).scalar_one()
    return parse_postgresql_plan(document, sql)


# dialect name → explainer: SQLite's EXPLAIN QUERY PLAN rows, PostgreSQL's EXPLAIN (FORMAT JSON) tree
EXPLAINERS: dict[str, Callable[[Connection, str, Mapping[str, Any] | None], QueryPlan]] = {
    "sqlite": _explain_sqlite,
    "postgresql": _explain_postgresql,
}


def _connection_source(bind: Any) -> Engine | Connection:
    if isinstance(bind, DemoDB):
        return bind.engine
    if isinstance(bind, Session):
        return bind.connection()
    if isinstance(bind, (Engine, Connection)):
        return bind
    raise TypeError(f"explain needs an Engine, Connection, Session or DemoDB, got {type(bind).__name__}")


def explain(bind: Any, statement: str | Executable, params: Mapping[str, Any] | None = None) -> QueryPlan:
    """Ask the database how it would run `statement` (a `select(...)` or SQL text) and parse the answer."""
    source = _connection_source(bind)
    dialect = source.dialect
    explainer = EXPLAINERS.get(dialect.name)
    if explainer is None:
        raise NotImplementedError(f"no query-plan parser for {dialect.name!r} yet (known: {', '.join(EXPLAINERS)})")
    if isinstance(statement, str):
        sql = statement
    elif isinstance(statement, ClauseElement):
        sql = str(statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    else:
        raise TypeError(f"explain needs a statement (`select(...)`) or SQL text, got {type(statement).__name__}")
    if isinstance(source, Connection):
        return explainer(source, sql, params)
    with source.connect() as conn:
        return explainer(conn, sql, params)


def explain_driver_sql(conn: Connection, sql: str, params: Any = None) -> QueryPlan:
    """The plan of a statement as the driver saw it (its own parameter style, e.g. one caught by a cursor event)."""
    dialect = conn.dialect.name
    if dialect not in EXPLAIN_PREFIX:
        raise NotImplementedError(f"no query-plan parser for {dialect!r} yet (known: {', '.join(EXPLAIN_PREFIX)})")
    result = conn.exec_driver_sql(EXPLAIN_PREFIX[dialect] + sql, params if params is not None else ())
    return parse_plan(dialect, result.all() if dialect == "sqlite" else result.scalar_one(), sql)
