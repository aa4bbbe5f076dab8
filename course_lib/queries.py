"""Count, list and time the SQL statements an engine runs (SQLAlchemy's cursor events), and observe every
statement that reaches a database whoever opens the connection (`observe_statements`, at the driver)."""

from __future__ import annotations

import asyncio
import gc
import html
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.util.concurrency import await_, in_greenlet

from .events import listening

__all__ = ["QueryLog", "StatementLog", "count_queries", "is_setup", "observe_statements", "simulated_latency"]


@dataclass
class QueryLog:
    """What ran inside a `count_queries` block: each statement's SQL and time, and the totals."""

    records: list[tuple[str, float]] = field(default_factory=list)
    latency_ms: float = 0.0

    @property
    def statements(self) -> list[str]:
        """The SQL of each statement, in the order they finished."""
        return [sql for sql, _ in self.records]

    @property
    def durations_ms(self) -> list[float]:
        """Each statement's time in the database, in milliseconds."""
        return [ms for _, ms in self.records]

    @property
    def count(self) -> int:
        """How many statements the database executed."""
        return len(self.records)

    @property
    def db_time_ms(self) -> float:
        """Total time spent inside the database driver (including any simulated latency)."""
        return sum(ms for _, ms in self.records)

    def summary(self) -> str:
        """One line: number of queries and time in the database."""
        extra = f", {self.latency_ms:g} ms simulated round trip each" if self.latency_ms else ""
        return f"{self.count} queries, {self.db_time_ms:.1f} ms in the database{extra}"

    def __repr__(self) -> str:
        lines = [self.summary()]
        lines += [f"  {i:>3}. {_short(sql)}" for i, sql in enumerate(self.statements[:10], 1)]
        if self.count > 10:
            lines.append(f"  … and {self.count - 10} more")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{i}</td><td style='text-align:left'><code>{html.escape(_short(sql, 160))}</code></td>"
            f"<td>{ms:.2f}</td></tr>"
            for i, (sql, ms) in enumerate(self.records[:10], 1)
        )
        more = f"<tr><td colspan=3>… and {self.count - 10} more</td></tr>" if self.count > 10 else ""
        return (
            f"<p><b>{html.escape(self.summary())}</b></p>"
            f"<table><tr><th>#</th><th>SQL</th><th>ms</th></tr>{rows}{more}</table>"
        )


def _short(sql: str, width: int = 110) -> str:
    flat = " ".join(sql.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _sync_engine(engine: Any) -> Engine:
    engine = getattr(engine, "sync_engine", engine)  # an AsyncEngine wraps a sync one
    if isinstance(engine, Engine):
        return engine
    raise TypeError(f"count_queries needs a SQLAlchemy Engine or AsyncEngine, got {type(engine).__name__}")


@contextmanager
def count_queries(engine: Any, latency_ms: float = 0.0) -> Iterator[QueryLog]:
    """Record every statement `engine` runs in the block; optionally add a simulated network round trip each."""
    sync_engine = _sync_engine(engine)
    log = QueryLog(latency_ms=latency_ms)
    records, clock = log.records, time.perf_counter
    # each statement's start, by its DB-API cursor (one per execution): a dict per block, so nested blocks keep their
    # own clocks, and threads (a sync endpoint's pool) each touch their own cursor's entry
    started: dict[Any, float] = {}

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
               executemany: bool) -> tuple[str, Any]:
        started[cursor] = clock()
        return statement, parameters  # retval=True: called as is, without SQLAlchemy's wrapper (cheaper)

    def after(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        # list.append is atomic: statements from several threads are all kept
        start = started.pop(cursor, None)
        records.append((statement, 0.0 if start is None else (clock() - start) * 1000))

    event.listen(sync_engine, "before_cursor_execute", before, retval=True)
    event.listen(sync_engine, "after_cursor_execute", after)
    try:
        # registered after `before`, so the simulated round trip counts as time in the database
        with simulated_latency(sync_engine, latency_ms):
            yield log
    finally:
        event.remove(sync_engine, "before_cursor_execute", before)
        event.remove(sync_engine, "after_cursor_execute", after)


@contextmanager
def simulated_latency(engine: Any, latency_ms: float) -> Iterator[None]:
    """Make every statement on `engine` wait `latency_ms` first, as a database across a network would."""
    sync_engine = _sync_engine(engine)
    if latency_ms <= 0:
        yield
        return

    def before(conn: Any, *_: Any) -> None:
        if conn.dialect.is_async and in_greenlet():  # an async driver awaits its socket: the event loop runs on
            await_(asyncio.sleep(latency_ms / 1000))
        else:  # a sync driver blocks its thread (the event loop's own, when called from `async def`)
            time.sleep(latency_ms / 1000)

    event.listen(sync_engine, "before_cursor_execute", before)
    try:
        yield
    finally:
        event.remove(sync_engine, "before_cursor_execute", before)


# --- every statement that reaches one database, whoever opens the connection ---------------------------------

# Not counted: transaction control and connection setup, which read no table (a driver or SQLAlchemy sends them
# when a connection opens or is pinged); the setup SELECTs are matched exactly, so nothing can hide behind them.
_SETUP_KIND = re.compile(r"\s*(BEGIN|COMMIT|ROLLBACK|END|SAVEPOINT|RELEASE|PRAGMA|SHOW|SET|RESET|DISCARD)\b",
                         re.IGNORECASE)
_SETUP_EXACT = {
    "select pg_catalog.version()",
    "select current_schema()",
    "select typname as name, oid, typarray as array_oid, oid::regtype::text as regtype, typdelim as delimiter "
    "from pg_type t where t.oid = to_regtype(%(name)s) order by t.oid",  # psycopg's TypeInfo, at engine start
}


def is_setup(statement: str) -> bool:
    """True for a statement that reads no table: transaction control, PRAGMA/SHOW/SET, a `SELECT 1` ping, or
    one of the fixed statements SQLAlchemy's dialects send when an engine first connects."""
    flat = " ".join(statement.split()).rstrip("; ").strip().lower()
    if ";" in flat:  # several statements in one string (PostgreSQL's simple protocol): something else rides along
        return False
    return bool(_SETUP_KIND.match(flat)) or flat in _SETUP_EXACT or re.fullmatch(r"select \d+", flat) is not None


@dataclass
class StatementLog:
    """What `observe_statements` saw: (driver, SQL) of every statement, in order; `count` and `statements` leave
    out what reads no table (`is_setup`: BEGIN/COMMIT, PRAGMA, pings, an engine's first-connect probes)."""

    records: list[tuple[str, str]] = field(default_factory=list)

    @property
    def statements(self) -> list[str]:
        """The SQL of each counted statement, in order."""
        return [sql for _, sql in self.records if not is_setup(sql)]

    @property
    def count(self) -> int:
        """How many statements that read or write tables reached the database."""
        return len(self.statements)

    def mark(self) -> int:
        """A position in the log: pass it to `since` to get what ran after it (e.g. during one request)."""
        return len(self.records)

    def since(self, mark: int) -> list[str]:
        """The counted statements recorded after `mark`."""
        return [sql for _, sql in self.records[mark:] if not is_setup(sql)]

    def summary(self) -> str:
        """One line: how many statements, and through which drivers."""
        drivers = sorted({driver for driver, sql in self.records if not is_setup(sql)})
        return f"{self.count} statements observed" + (f" ({', '.join(drivers)})" if drivers else "")

    def __repr__(self) -> str:
        lines = [self.summary()] + [f"  {i:>3}. {_short(sql)}" for i, sql in enumerate(self.statements[:10], 1)]
        return "\n".join(lines + ([f"  … and {self.count - 10} more"] if self.count > 10 else []))


@dataclass(eq=False)
class _Observer:
    """One active `observe_statements` block: which database it watches and where it writes."""

    dialect: str
    target: str  # SQLite: the real path of the file; a server: the database name
    log: StatementLog

    def add(self, driver: str, statement: Any) -> None:
        self.log.records.append((driver, statement if isinstance(statement, str) else _sql_text(statement)))


_OBSERVERS: list[_Observer] = []
_HUB_LOCK = threading.RLock()
_PATCHES: list[Callable[[], None]] = []  # undo functions of the driver patches, while any observer is active


def _sql_text(statement: Any) -> str:
    if isinstance(statement, bytes):
        return statement.decode(errors="replace")
    return str(statement)


def _real(path: str) -> str:
    return os.path.realpath(path) if path and path != ":memory:" else ""


# SQLite: every sqlite3 connection opened while observing gets a trace callback (sqlite3's own hook, called by
# SQLite for each statement it runs); a statement counts for an observer if the connection's main file is the
# observed one, or if the connection ever ran ATTACH (counted from then on: the attached file cannot be known).

def _watch_sqlite(conn: Any) -> None:
    try:
        rows = sqlite3.Connection.execute(conn, "PRAGMA database_list").fetchall()
        files = {_real(row[2]) for row in rows}
    except Exception:  # an odd connection: watch it for every SQLite observer
        files = {"*"}
    attached = [False]

    def trace(statement: str) -> None:
        if not attached[0] and statement.lstrip()[:6].upper() == "ATTACH":
            attached[0] = True
        for observer in list(_OBSERVERS):
            if observer.dialect == "sqlite" and (attached[0] or "*" in files or observer.target in files):
                observer.add("sqlite3", statement)

    sqlite3.Connection.set_trace_callback(conn, trace)


def _patch_sqlite_connect() -> Callable[[], None]:
    """Replace `sqlite3.connect` wherever a namespace holds it (`sqlite3`, `sqlite3.dbapi2`, `_sqlite3`, and any
    `from sqlite3 import connect`), so that every connection opened meanwhile is watched."""
    original = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> Any:
        conn = original(*args, **kwargs)
        _watch_sqlite(conn)
        return conn

    swapped = []
    for holder in gc.get_referrers(original):
        if isinstance(holder, dict):
            for key, value in list(holder.items()):
                if value is original:
                    holder[key] = connect
                    swapped.append((holder, key))

    def undo() -> None:
        for holder, key in swapped:
            if holder.get(key) is connect:
                holder[key] = original

    return undo


# psycopg 3: every cursor's execute / executemany (once per parameter set) / stream / copy, on any connection to
# the observed database.

def _patch_psycopg() -> Callable[[], None]:
    try:
        import psycopg
    except ImportError:
        return lambda: None
    undo = []
    for cls in (psycopg.Cursor, psycopg.AsyncCursor, psycopg.ServerCursor, psycopg.AsyncServerCursor):
        for name in ("execute", "executemany", "stream", "copy"):
            if name not in vars(cls):
                continue
            original = vars(cls)[name]

            def wrapper(self: Any, query: Any, *args: Any, __original: Any = original, __name: str = name,
                        **kwargs: Any) -> Any:
                if __name == "executemany":  # the server runs it once per parameter set: count each
                    if args:
                        args = (list(args[0]), *args[1:])
                    elif "params_seq" in kwargs:
                        kwargs["params_seq"] = list(kwargs["params_seq"])
                    for _ in args[0] if args else kwargs.get("params_seq", [None]):
                        _psycopg_seen(self, query)
                else:
                    _psycopg_seen(self, query)
                return __original(self, query, *args, **kwargs)

            wrapper.__name__, wrapper.__doc__, wrapper.__wrapped__ = name, original.__doc__, original  # type: ignore[attr-defined]
            setattr(cls, name, wrapper)
            undo.append((cls, name, original))

    def restore() -> None:
        for cls, name, original in undo:
            setattr(cls, name, original)

    return restore


def _psycopg_seen(cursor: Any, query: Any) -> None:
    try:
        dbname = cursor.connection.info.dbname
    except Exception:  # a closed connection raises at execute anyway
        return
    for observer in list(_OBSERVERS):
        if observer.dialect != "sqlite" and observer.target == dbname:
            try:
                text = query.as_string(cursor.connection) if hasattr(query, "as_string") else _sql_text(query)
            except Exception:
                text = repr(query)
            observer.add("psycopg", text)


# Any SQLAlchemy engine whose driver is neither of the above (e.g. psycopg2, asyncpg, pg8000): its cursor events.

_DRIVER_LEVEL = {"pysqlite", "aiosqlite", "pysqlite_numeric", "pysqlite_dollar", "psycopg", "psycopg_async"}


def _engine_statement(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
                      executemany: bool) -> None:
    url = conn.engine.url
    if url.get_driver_name() in _DRIVER_LEVEL:
        return  # seen at the driver already
    for observer in list(_OBSERVERS):
        backend = url.get_backend_name()
        target = _real(url.database or "") if backend == "sqlite" else url.database
        if (observer.dialect == "sqlite") == (backend == "sqlite") and observer.target == target:
            observer.add(f"sqlalchemy:{url.get_driver_name()}", statement)


def _install() -> None:
    _PATCHES.append(_patch_sqlite_connect())
    _PATCHES.append(_patch_psycopg())
    hooks = ExitStack()
    hooks.enter_context(listening(Engine, "before_cursor_execute", _engine_statement))
    _PATCHES.append(hooks.close)


@contextmanager
def observe_statements(db: Any) -> Iterator[StatementLog]:
    """Record every statement that reaches `db`'s database (a DemoDB or Engine) in the block, whoever opens the
    connection: sqlite3 connections (trace callback), psycopg cursors, and every SQLAlchemy engine.

    The engine's pooled connections are closed first, so they reconnect observed. Not seen: a connection opened
    before the block, a driver used outside SQLAlchemy other than sqlite3 and psycopg (psycopg2, asyncpg),
    psycopg's libpq level (`conn.pgconn.exec_`), and a connection whose trace callback the code replaces. Use a
    fresh database per observation (`make_demo_db`) so that no foreign connection is already open on it."""
    engine = _sync_engine(getattr(db, "engine", db))
    backend = engine.dialect.name
    target = _real(engine.url.database or "") if backend == "sqlite" else (engine.url.database or "")
    if backend == "sqlite" and not target:
        raise ValueError("observe_statements needs a database file or server; an in-memory SQLite is private "
                         "to its one connection (use make_demo_db)")
    observer = _Observer(backend, target, StatementLog())
    engine.dispose()  # connections opened before the block reconnect through the observed drivers
    with _HUB_LOCK:
        if not _OBSERVERS:
            _install()
        _OBSERVERS.append(observer)
    try:
        yield observer.log
    finally:
        with _HUB_LOCK:
            _OBSERVERS.remove(observer)
            if not _OBSERVERS:
                while _PATCHES:
                    _PATCHES.pop()()
