"""`python -m course_lib bench`: every lesson's headline effect and the toolkit's own costs, measured now.

Each row is a teaching claim (a goal the lesson states, held at a named level: "SQL", "endpoint" in-process, "server"
over real HTTP), a toolkit row (the course's own tools) or an informational figure. Every row is measured in several
rounds and shows their median and spread. Only claims decide the exit code: a claim fails when most rounds miss its
goal, or when its median is above the physical limit the row names (e.g. a speed-up above min(workers, cores) is a
measuring error, flagged "suspect", never a finding). Log lines, warnings and stray stderr output while measuring
are captured; errors among them become a row's note under the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import math
import os
import re
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from sqlalchemy import select

from . import catalogue
from .bench_rows import LEVELS, BenchRow
from .text_table import text_table

__all__ = ["BenchRow", "run_bench", "toolkit_bench", "merge_rounds", "exit_code", "quiet", "LEVELS"]

ROUNDS = 3


# ---------------------------------------------------------------- rounds and the exit code


def _shape(effect: str) -> str:
    """An effect's wording without its numbers: the same row of another round may quote other figures."""
    return re.sub(r"[\d.,]+", "#", effect)


def merge_rounds(rounds: Sequence[Sequence[BenchRow]]) -> list[BenchRow]:
    """One row per effect: the round whose value is the median, holding every round's value and verdict."""
    rounds = [list(r) for r in rounds if r]
    if not rounds:
        return []
    if len({len(r) for r in rounds}) == 1:
        groups = [list(g) for g in zip(*rounds, strict=True)]
    else:
        by_shape: dict[tuple[str, str], list[BenchRow]] = {}
        for one in rounds:
            for row in one:
                by_shape.setdefault((row.lesson, _shape(row.effect)), []).append(row)
        groups = list(by_shape.values())
    merged = []
    for group in groups:
        if len(group) == 1:
            merged.append(group[0])
            continue
        conclusive = [row for row in group if not row.inconclusive] or group
        measured = [row for row in conclusive if not math.isnan(row.value)]
        middle = statistics.median_low([row.value for row in measured]) if measured else math.nan
        representative = next((row for row in measured if row.value == middle), conclusive[0])
        verdicts = [row.met for row in conclusive if row.met is not None and not row.inconclusive]
        met = representative.met if not verdicts else sum(verdicts) * 2 > len(verdicts)
        merged.append(replace(representative, met=met, rounds=[row.value for row in group], round_met=verdicts))
    return merged


def exit_code(rows: Sequence[BenchRow], strict: bool = False) -> int:
    """1 if a claim failed (missed its goal in most conclusive rounds, or is suspect); with `strict`, also a fragile
    or inconclusive claim."""
    return 1 if any(r.failed or (strict and r.role == "claim" and (not r.robust or bool(r.inconclusive)))
                    for r in rows) else 0


# ---------------------------------------------------------------- capturing what measuring prints

_BENIGN_STDERR = re.compile(r"without encryption|^\s*$")


@dataclass
class Captured:
    """What a section printed or logged while it was measured."""

    records: list[logging.LogRecord] = field(default_factory=list)
    warnings: list[warnings.WarningMessage] = field(default_factory=list)
    stderr: str = ""
    stdout: str = ""

    def errors(self) -> list[str]:
        """ERROR log records and stderr lines that are not known noise, one line each."""
        found = [f"{r.name}: {r.getMessage()}".splitlines()[0] for r in self.records if r.levelno >= logging.ERROR]
        found += [line for line in self.stderr.splitlines() if not _BENIGN_STDERR.search(line)]
        return found

    def quieted(self) -> list[str]:
        """Warnings (logged or raised) kept out of the table, one line each."""
        lines = [r.getMessage().splitlines()[0] for r in self.records if r.levelno < logging.ERROR]
        lines += [f"{w.category.__name__}: {w.message}".splitlines()[0] for w in self.warnings]
        lines += [line for line in self.stderr.splitlines() if line.strip() and _BENIGN_STDERR.search(line)]
        return lines + [line for line in self.stdout.splitlines() if line.strip()]


class _ListHandler(logging.Handler):
    def __init__(self, captured: Captured) -> None:
        super().__init__(logging.WARNING)
        self.captured = captured

    def emit(self, record: logging.LogRecord) -> None:
        self.captured.records.append(record)


@contextlib.contextmanager
def quiet() -> Iterator[Captured]:
    """Capture log records (WARNING and up), Python warnings, what Python prints, and everything written to file
    descriptor 2 (so child processes' stderr too) while the block runs."""
    captured = Captured()
    handler = _ListHandler(captured)
    root = logging.getLogger()
    root.addHandler(handler)
    sys.stderr.flush()
    saved = os.dup(2)
    sink = tempfile.TemporaryFile()
    os.dup2(sink.fileno(), 2)
    printed, printed_err = io.StringIO(), io.StringIO()
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(printed), \
                contextlib.redirect_stderr(printed_err):
            warnings.simplefilter("default")
            try:
                yield captured
            finally:
                captured.warnings = list(caught)
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        root.removeHandler(handler)
        sink.seek(0)
        captured.stderr = printed_err.getvalue() + sink.read().decode(errors="replace")
        captured.stdout = printed.getvalue()
        sink.close()


def _section(lesson: str, measure: Callable[[], list[BenchRow]], quieted: list[str]) -> list[BenchRow]:
    """Run one bench section quietly: an exception becomes a failing row, captured errors the first row's note."""
    with quiet() as captured:
        try:
            rows = list(measure())
        except Exception as error:  # noqa: BLE001 - a bench section must never hide the table
            where = traceback.extract_tb(error.__traceback__)[-1]
            message = " ".join(f"{type(error).__name__}: {error}".split())
            rows = [BenchRow(f"bench failed: {message[:150]}", float("nan"), "",
                             "runs", False, kind="claim",
                             note=f"{type(error).__name__} at {os.path.basename(where.filename)}:{where.lineno}", lesson=lesson)]
    rows = [row if row.lesson else replace(row, lesson=lesson) for row in rows]  # a lesson's rows carry its number
    quieted += captured.quieted()
    errors = captured.errors()
    if errors:
        if not rows:
            rows = [BenchRow("bench printed errors", float("nan"), "", kind="info", lesson=lesson)]
        extra = f" (+{len(errors) - 2} more lines)" if len(errors) > 2 else ""
        rows[0] = replace(rows[0], note="; ".join(filter(None, [rows[0].note, *errors[:2]])) + extra)
    return rows


def counter_overhead_percent() -> float:
    """count_queries' cost in % of 100 bare ORM queries (medians of paired rounds, each order), in this process."""
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

        # each order half the rounds: whichever runs first in a round is a little slower (seen: 1.9–3.5 % one way,
        # 3.8–4.8 % alternating)
        counted_first = compare_sync({"counted": counted, "bare": bare}, n=100, warmup=3).paired_ratio
        bare_first = compare_sync({"bare": bare, "counted": counted}, n=100, warmup=0).paired_ratio
    return ((counted_first / bare_first) ** 0.5 - 1) * 100


def _counter_overhead() -> list[BenchRow]:
    # in a fresh interpreter: a grader's class-wide dispatcher (course_lib.events), once a lesson's bench has
    # installed it, stays for the life of the process and would slow the "bare" baseline too
    import subprocess

    done = subprocess.run([sys.executable, "-c", "from course_lib.bench import counter_overhead_percent as f; "
                           "print(f())"], capture_output=True, text=True, timeout=300, check=True)
    overhead = float(done.stdout.split()[-1])
    return [BenchRow("count_queries overhead vs bare SQLAlchemy (100 queries, a fresh interpreter)", overhead, "%",
                     "≤ 5 %", overhead <= 5, level="SQL", lesson="toolkit")]


def _in_process_latency() -> list[BenchRow]:
    from .client import app_client
    from .lessons.l00_welcome import hello_app
    from .timing import measure

    async def run() -> float:
        async with app_client(hello_app) as client:
            timing = await measure(lambda: client.get("/"), n=300, warmup=20)
        return timing.median_ms * 1000

    return [BenchRow("in-process request (app_client), median", asyncio.run(run()), "µs", level="endpoint", lesson="toolkit")]


def _load_ceiling() -> list[BenchRow]:
    from .load import SIGNIFICANT_SHARE, LoadResult, load_test
    from .servers import serve

    async def run(url: str, keep_alive: bool) -> LoadResult:
        return await load_test(url, concurrency=50, requests=20_000, seconds=2, progress=False, keep_alive=keep_alive)

    rows = []
    with serve("course_lib.lessons.l00_welcome:hello_app") as server:
        for keep_alive in (True, False):
            result = asyncio.run(run(server.url + "/", keep_alive))
            mode = "keep-alive" if keep_alive else "Connection: close"
            rows += [
                BenchRow(f"load generator ceiling, {mode} (trivial endpoint, 1 uvicorn worker)",
                         result.throughput, "req/s", level="server", lesson="toolkit"),
                BenchRow(f"load generator's own CPU per request, {mode}", result.cpu_per_request_us, "µs",
                         level="server", lesson="toolkit"),
                BenchRow(f"load generator's share of one core, {mode} (> {SIGNIFICANT_SHARE:.0%}: "
                                    "significant)", result.generator_cpu_share * 100, "%", level="server", lesson="toolkit"),
            ]
    return rows


TOOLKIT_SECTIONS: list[Callable[[], list[BenchRow]]] = [_counter_overhead, _in_process_latency, _load_ceiling]
"""The toolkit's own costs: query-counter overhead, in-process request latency, load-generator ceiling and CPU."""


def toolkit_bench() -> list[BenchRow]:
    """The toolkit's own costs, measured once."""
    return [row for measure in TOOLKIT_SECTIONS for row in measure()]


def _lesson_sections(only: str | None = None) -> list[tuple[str, Callable[[], list[BenchRow]]]]:
    """(lesson number, its `bench` function) of each catalogued lesson that has one, in teaching order."""
    sections: list[tuple[str, Callable[[], list[BenchRow]]]] = []
    for lesson in catalogue.CATALOGUE:
        if only and only not in lesson.name:
            continue
        try:
            with quiet():
                module = lesson.module()
        except Exception as error:  # noqa: BLE001 - reported as a failing row by _section
            def broken(error: Exception = error) -> list[BenchRow]:
                raise error
            sections.append((lesson.number, broken))
            continue
        bench = getattr(module, "bench", None)
        if bench is not None:
            sections.append((lesson.number, bench))
    return sections


def lesson_benches(only: str | None = None, rounds: int = 1) -> list[BenchRow]:
    """Rows from each lesson module's `bench()` function, in lesson order, merged over `rounds` rounds."""
    quieted: list[str] = []
    sections = _lesson_sections(only)
    runs: list[list[list[BenchRow]]] = [[] for _ in sections]
    for _ in range(max(1, rounds)):
        for i, (lesson, measure) in enumerate(sections):
            runs[i].append(_section(lesson, measure, quieted))
    return [row for section in runs for row in merge_rounds(section)]


def notebook_times(only: str | None = None) -> list[BenchRow]:
    """Wall time of each lesson and solutions notebook, run end to end in a fresh kernel (kernel chatter captured)."""
    from .notebooks import ROOT, execute_notebook

    rows: list[BenchRow] = []
    quieted: list[str] = []
    for folder in ("notebooks", "solutions"):
        for path in sorted((ROOT / folder).glob("*.ipynb")):
            if only and only not in path.stem:
                continue

            def run(path: Path = path, folder: str = folder) -> list[BenchRow]:
                start = time.perf_counter()
                execute_notebook(path)
                return [BenchRow(f"{folder}/{path.name} wall time", time.perf_counter() - start, "s",
                                 kind="info", lesson=path.stem[:2])]

            rows += _section(path.stem[:2], run, quieted)
    return rows


def _data_lessons() -> list[str]:
    """The lessons measured in-process on both databases (CI runs them on PostgreSQL, and none needs the cores)."""
    return [lesson.number for lesson in catalogue.CATALOGUE.needing("postgresql") if not lesson.serial]


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
        for lesson in _data_lessons():
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


class _Progress:
    """One self-erasing status line on an interactive terminal's stderr; nothing otherwise."""

    def __init__(self) -> None:
        self.live = sys.stderr.isatty()

    def __call__(self, text: str) -> None:
        if self.live:
            sys.stderr.write(f"\r\033[Kbench: {text} …")
            sys.stderr.flush()

    def clear(self) -> None:
        if self.live:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def _footer(rows: Sequence[BenchRow], quieted: Sequence[str], strict: bool) -> list[str]:
    """Notes, what was quieted, and how the claims decided the exit code."""
    lines = [f"[{i}] {row.lesson} {row.effect[:60]}: {row.note}" for i, row in
             enumerate((r for r in rows if r.note), start=1)]
    if quieted:
        common = ", ".join(f"{text[:70]!r} ×{n}" for text, n in Counter(quieted).most_common(2))
        lines.append(f"quieted while measuring: {len(quieted)} warning line(s), e.g. {common}")
    claims = [r for r in rows if r.role == "claim"]
    fragile = sum(1 for r in claims if not r.robust and not r.failed and not r.inconclusive)
    lines.append(
        f"claims: {sum(1 for r in claims if not r.failed and not r.inconclusive)} of {len(claims)} met"
        + (f" ({fragile} fragile: rounds disagreed{', failing under --strict' if not strict else ''})" if fragile else "")
        + f", {sum(1 for r in claims if r.met is False and not r.inconclusive)} missed, "
        f"{sum(1 for r in claims if r.suspect and not r.inconclusive)} suspect"
        + (f", {sum(1 for r in claims if r.inconclusive)} inconclusive" if any(r.inconclusive for r in claims) else "")
        + ". "
        "Toolkit and info rows never decide the exit code.")
    return lines


def bench_table(rows: Sequence[BenchRow]) -> str:
    """The table: lesson, level, effect, median, the rounds' range, verdict and goal (notes numbered)."""
    cells = []
    note = 0
    for row in rows:
        goal = row.goal_cell()
        if row.note:
            note += 1
            goal = f"{goal} [{note}]".strip()
        cells.append((row.lesson, row.shown_level, row.effect, row.measured_cell(), row.spread_cell(), goal))
    return text_table(("lesson", "level", "effect", "measured", "rounds", "goal"), cells, wrap_last=34)


def run_bench(notebooks: bool = False, only: str | None = None, postgres_column: bool = False,
              rounds: int = ROUNDS, strict: bool = False) -> int:
    """Measure every section in `rounds` interleaved rounds, print one table; 1 if a claim failed (see exit_code)."""
    if postgres_column:
        table = side_by_side(only)
        print(text_table(("lesson", "effect", "SQLite", "PostgreSQL", "goal"), table, wrap_last=30))
        return 1 if any("✗" in row[-1] for row in table) else 0
    progress = _Progress()
    sections: list[tuple[str, Callable[[], list[BenchRow]]]] = []
    if not only or only == "toolkit":
        sections += [("toolkit", measure) for measure in TOOLKIT_SECTIONS]
    if only != "toolkit":
        sections += _lesson_sections(only)
    quieted: list[str] = []
    runs: list[list[list[BenchRow]]] = [[] for _ in sections]
    rounds = max(1, rounds)
    for round_ in range(rounds):
        for i, (lesson, measure) in enumerate(sections):
            progress(f"round {round_ + 1}/{rounds}, {lesson}")
            runs[i].append(_section(lesson, measure, quieted))
    rows = [row for section in runs for row in merge_rounds(section)]
    if notebooks:
        progress("notebooks")
        rows += notebook_times(only)
    progress.clear()
    print(bench_table(rows))
    print("\n".join(_footer(rows, quieted, strict)))
    return exit_code(rows, strict)
