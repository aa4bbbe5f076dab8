"""Count, list and time the SQL statements an engine runs, with SQLAlchemy's cursor events."""

from __future__ import annotations

import html
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

__all__ = ["QueryLog", "count_queries", "simulated_latency"]


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
    started = ("lab_query_started", id(log))  # a key per block: nested blocks keep their own clocks

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        conn.info[started] = clock()

    def after(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        # list.append is atomic: statements from several threads (a sync endpoint's pool) are all kept
        records.append((statement, (clock() - conn.info.pop(started, clock())) * 1000))

    event.listen(sync_engine, "before_cursor_execute", before)
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

    def before(*_: Any) -> None:
        time.sleep(latency_ms / 1000)

    event.listen(sync_engine, "before_cursor_execute", before)
    try:
        yield
    finally:
        event.remove(sync_engine, "before_cursor_execute", before)
