"""`python -m course_lib bench`: every lesson's headline effect and the toolkit's own costs, measured now."""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
import time
from dataclasses import dataclass

from sqlalchemy import select

from .text_table import text_table

__all__ = ["BenchRow", "run_bench", "toolkit_bench"]


@dataclass
class BenchRow:
    """One measured effect: what, the figure, its unit, the goal it is held to, and whether it met it."""

    lesson: str
    effect: str
    value: float
    unit: str
    goal: str = ""
    met: bool | None = None

    def cells(self) -> tuple[str, ...]:
        """The row as table cells."""
        value = f"{self.value:,.0f}" if abs(self.value) >= 100 else f"{self.value:.3g}"
        verdict = {True: "✓", False: "✗", None: ""}[self.met]
        return (self.lesson, self.effect, f"{value} {self.unit}".strip(), f"{verdict} {self.goal}".strip())


def _counter_overhead() -> BenchRow:
    from .db import User, make_demo_db
    from .queries import count_queries
    from .timing import compare_sync

    with make_demo_db(users=200, posts_per_user=0) as db, db.session() as session:
        def bare() -> None:
            for i in range(1, 101):
                session.execute(select(User.name).where(User.id == i)).scalar_one()

        def counted() -> None:
            with count_queries(db.engine):
                bare()

        result = compare_sync({"counted": counted, "bare": bare}, n=30, warmup=3)
    overhead = (result.ratio - 1) * 100
    return BenchRow("toolkit", "count_queries overhead vs bare SQLAlchemy", overhead, "%", "≤ 5 %", overhead <= 5)


async def _in_process_latency() -> BenchRow:
    from .client import app_client
    from .lessons.l00_welcome import hello_app
    from .timing import measure

    async with app_client(hello_app) as client:
        timing = await measure(lambda: client.get("/"), n=300, warmup=20)
    return BenchRow("toolkit", "in-process request (app_client), median", timing.median_ms * 1000, "µs")


async def _load_ceiling() -> list[BenchRow]:
    from .load import load_test
    from .servers import serve

    with serve("course_lib.lessons.l00_welcome:hello_app") as server:
        result = await load_test(server.url + "/", concurrency=50, requests=20_000, seconds=3, progress=False)
    return [
        BenchRow("toolkit", "load generator ceiling (trivial endpoint, 1 uvicorn worker)", result.throughput, "req/s"),
        BenchRow("toolkit", "load generator's own CPU at that rate", result.generator_cpu_share * 100, "% of a core"),
    ]


def toolkit_bench() -> list[BenchRow]:
    """The toolkit's own costs: query-counter overhead, in-process request latency, load-generator ceiling."""
    rows = [_counter_overhead(), asyncio.run(_in_process_latency())]
    rows += asyncio.run(_load_ceiling())
    return rows


def lesson_benches(only: str | None = None) -> list[BenchRow]:
    """Rows from each lesson module's `bench()` function, in lesson order."""
    from . import lessons

    rows: list[BenchRow] = []
    for info in sorted(pkgutil.iter_modules(lessons.__path__), key=lambda m: m.name):
        if only and only not in info.name:
            continue
        module = importlib.import_module(f"{lessons.__name__}.{info.name}")
        bench = getattr(module, "bench", None)
        if bench is not None:
            rows += bench()
    return rows


def notebook_times(only: str | None = None) -> list[BenchRow]:
    """Wall time of each lesson and solutions notebook, run end to end in a fresh kernel."""
    from .notebooks import ROOT, execute_notebook

    rows = []
    for folder in ("notebooks", "solutions"):
        for path in sorted((ROOT / folder).glob("*.ipynb")):
            if only and only not in path.stem:
                continue
            start = time.perf_counter()
            execute_notebook(path)
            rows.append(BenchRow(path.stem[:2], f"{folder}/{path.name} wall time", time.perf_counter() - start, "s"))
    return rows


DATA_LESSONS = ("02", "04", "05")


def side_by_side(only: str | None = None) -> list[tuple[str, str, str, str, str]]:
    """The data lessons' rows measured on SQLite and on the PostgreSQL of `DATABASE_URL`, joined by effect."""
    import os
    import re

    from .settings import course_settings

    url = course_settings().database_url
    if not url:
        raise SystemExit("--postgres-column needs DATABASE_URL set to a PostgreSQL server")
    measured: dict[str, dict[str, BenchRow]] = {}
    for database in ("sqlite", "postgresql"):
        if database == "sqlite":
            os.environ.pop("DATABASE_URL", None)
        else:
            os.environ["DATABASE_URL"] = url
        course_settings.cache_clear()
        for lesson in DATA_LESSONS:
            if only and only not in lesson:
                continue
            for row in lesson_benches(lesson):
                effect = re.sub(r"^\[(sqlite|postgresql)\]\s*", "", row.effect)
                measured.setdefault(f"{row.lesson}\0{effect}", {})[database] = row
    os.environ["DATABASE_URL"] = url
    course_settings.cache_clear()
    table = []
    for key, by_db in measured.items():
        lesson, effect = key.split("\0")
        cells = {db: by_db[db].cells()[2] if db in by_db else "—" for db in ("sqlite", "postgresql")}
        goal = next((r.cells()[3] for r in by_db.values() if r.goal), "")
        table.append((lesson, effect, cells["sqlite"], cells["postgresql"], goal))
    return table


def run_bench(notebooks: bool = False, only: str | None = None, postgres_column: bool = False) -> int:
    """Measure, then print one table; returns 1 if any row missed its goal."""
    if postgres_column:
        rows = side_by_side(only)
        print(text_table(("lesson", "effect", "SQLite", "PostgreSQL", "goal"), rows, wrap_last=30))
        return 1 if any("✗" in row[-1] for row in rows) else 0
    rows = [] if only else toolkit_bench()
    rows += lesson_benches(only)
    if notebooks:
        rows += notebook_times(only)
    print(text_table(("lesson", "effect", "measured", "goal"), [r.cells() for r in rows], wrap_last=30))
    return 1 if any(r.met is False for r in rows) else 0
