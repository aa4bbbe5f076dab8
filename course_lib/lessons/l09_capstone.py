"""Lesson 09 (capstone): audit the slow bookshop, fix it practice by practice, prove it under real load."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from ..auditor import AuditReport, audit
from ..db import copy_database, temp_folder
from ..bench import BenchRow
from ..client import app_client
from ..grading import Checking, exercise
from ..load import load_test
from ..servers import serve
from .bookshop import DEMO_API_KEY, BookshopDB, load_factory, make_bookshop_db
from .bookshop.app import ALL_FIXES, FIXES, STEPS, make_app

__all__ = [
    "make_app", "make_bookshop_db", "FIXES", "ALL_FIXES", "STEPS", "corpus", "compare_behaviour", "copy_db",
    "MixResult", "race", "audit_bookshop", "workspace", "GOAL",
]

LESSON = "09_capstone"
GOAL = 10.0  # the bar: fixed throughput ≥ 10× the original, same load, same machine, one run
LATENCY_MS = 1.0  # simulated round trip to the database for the servers under load (a database across a network)
SERVED = "course_lib.lessons.bookshop.served:app"


def workspace() -> Path:
    """A fresh temporary folder for the files this notebook writes (removed when the kernel exits)."""
    return temp_folder("capstone")


def copy_db(db: BookshopDB) -> str:
    """A private copy of the database (so one app's indexes never speed up another); returns its URL.

    `course_lib.db.copy_database`: SQLite, a backup into a new file; PostgreSQL, `CREATE DATABASE … TEMPLATE`
    (data and planner statistics included). Dropped at exit like every database `fresh_engine` makes.
    """
    engine, _ = copy_database(db.engine)
    engine.dispose()
    return engine.url.render_as_string(hide_password=False)


def corpus(db: BookshopDB) -> list[str]:
    """The requests on which a fixed app must answer exactly like the original (status code and body)."""
    last = db.counts["books"]
    return [
        "/books", "/books?limit=50", "/books?skip=100&limit=10", f"/books?skip={last - 3}&limit=10",
        "/books?limit=0", "/books?limit=abc", "/books?skip=-1",
        "/books/1", f"/books/{last}", f"/books/{last + 1}", "/books/abc",
        f"/books/isbn/{db.sample_isbn(42)}", f"/books/isbn/{db.sample_isbn(last)}", "/books/isbn/0000000000000",
        "/stats", "/books/7/price", "/books/7/price?currency=EUR", "/books/7/price?currency=JPY",
        f"/books/{last + 1}/price?currency=EUR", "/books/7/price?currency=XXX", "/health",
    ]


def load_mix(db: BookshopDB) -> list[str]:
    """The paths a load test spreads its clients over: list, detail, lookup, stats, outbound price."""
    return ["/books?limit=20", "/books/42", f"/books/isbn/{db.sample_isbn(42)}", "/stats",
            "/books/7/price?currency=EUR"]


def _normalise(status: int, body: Any) -> Any:
    """422 bodies name the broken constraint (wording differs between equally right fixes): keep the status only."""
    return None if status == 422 else body


async def compare_behaviour(original: Any, candidate: Any, paths: list[str]) -> list[str]:
    """Send `paths` to both apps in-process; return one line per request whose status or JSON body differs."""
    differences = []
    async with app_client(original) as a, app_client(candidate) as b:
        for path in paths:
            ra, rb = await a.get(path), await b.get(path)
            ja = _json(ra)
            jb = _json(rb)
            if ra.status_code != rb.status_code:
                differences.append(f"GET {path}: status {rb.status_code}, the original answers {ra.status_code}")
            elif _normalise(ra.status_code, ja) != _normalise(rb.status_code, jb):
                differences.append(f"GET {path}: body {_short(jb)}, the original answers {_short(ja)}")
    return differences


def _json(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _short(value: Any, width: int = 160) -> str:
    text = json.dumps(value)
    return text if len(text) <= width else text[: width - 1] + "…"


@dataclass
class MixResult:
    """Requests completed by a mixed load against one server, summed over rounds."""

    label: str
    requests: int = 0
    seconds: float = 0.0
    errors: int = 0
    statuses: Counter[int] = field(default_factory=Counter)

    @property
    def throughput(self) -> float:
        """Completed requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0

    def __repr__(self) -> str:
        codes = ", ".join(f"{c}×{n}" for c, n in sorted(self.statuses.items()))
        return f"{self.label}: {self.throughput:,.0f} req/s ({self.requests} requests in {self.seconds:.1f} s; {codes}; errors {self.errors})"


async def _mixed_load(url: str, paths: list[str], seconds: float, concurrency: int) -> tuple[int, float, int, Counter[int]]:
    results = await asyncio.gather(*(load_test(url + p, concurrency=concurrency, requests=50_000, seconds=seconds,
                                               timeout=20, progress=False) for p in paths))
    statuses: Counter[int] = Counter()
    for r in results:
        statuses.update(r.statuses)
    return sum(r.requests for r in results), max(r.duration_s for r in results), sum(r.errors for r in results), statuses


async def race(db: BookshopDB, variants: dict[str, dict[str, str]], *, seconds: float = 1.5, rounds: int = 2,
               concurrency: int = 2, latency_ms: float = LATENCY_MS) -> dict[str, MixResult]:
    """Serve each variant under uvicorn (1 worker, own copy of the database) and load them interleaved, in one run.

    A variant is environment for `bookshop.served`: {"BOOKSHOP_FIXES": "eager,indexes"} or
    {"BOOKSHOP_APP_FILE": "/path/fixed.py"}. Each round loads every variant in turn for `seconds`.
    """
    paths = load_mix(db)
    results = {label: MixResult(label) for label in variants}
    with ExitStack() as stack:
        started = await asyncio.gather(*(asyncio.to_thread(  # start them side by side: imports take seconds
            serve, SERVED, ready_path="/books/1", startup_timeout=60,
            env={"BOOKSHOP_DB_URL": copy_db(db), "BOOKSHOP_DB_LATENCY_MS": str(latency_ms), **env})
            for env in variants.values()), return_exceptions=True)
        for server in started:
            if not isinstance(server, BaseException):
                stack.callback(server.stop)
        for server in started:
            if isinstance(server, BaseException):
                raise server
        servers = dict(zip(variants, started, strict=True))
        for label, server in servers.items():  # warm-up: lifespan work, first connections, caches
            await _mixed_load(server.url, paths, 0.2, 1)
        for _ in range(rounds):
            for label, server in servers.items():
                n, secs, errors, statuses = await _mixed_load(server.url, paths, seconds, concurrency)
                result = results[label]
                result.requests += n
                result.seconds += secs
                result.errors += errors
                result.statuses.update(statuses)
    return results


def fixes_env(fixes: frozenset[str] | set[str] | tuple[str, ...]) -> dict[str, str]:
    """Environment for `race` that serves the bookshop with these fixes."""
    return {"BOOKSHOP_FIXES": ",".join(sorted(fixes))}


async def audit_bookshop(app: Any) -> AuditReport:
    """The auditor with the bookshop's known secret (the exchange-rate API key) to look for."""
    return await audit(app, secrets=[DEMO_API_KEY])


@exercise(
    "09.capstone",
    title="Fix the bookshop: same answers, audit all ✓, ≥ 10× the throughput",
    lesson=LESSON,
    expects="the path of a Python file that defines make_app(database_url) -> FastAPI (written with %%writefile)",
    hints=(
        "Work through the audit table top to bottom, one ✗ at a time, and rerun the audit after each fix. "
        "Keep every response identical: the grader compares your answers with the original's on "
        "21 requests. Keep `app.state.engine = engine` so the auditor can count queries and take the database down.",
        "The fixes, each a few lines: `def` instead of `async def` for routes that use a Session; "
        "`selectinload(Book.author)` + one grouped COUNT of reviews; CREATE INDEX on reviews.book_id and books.isbn "
        "in the lifespan; `limit: int = Query(20, ge=1, le=100)`; `GZipMiddleware`; a pure ASGI middleware for "
        "X-Process-Time; /health that runs SELECT 1 and returns 503 on error; cache /stats and the rates for 60 s; "
        "one shared `httpx.AsyncClient(timeout=…)` with the key in an X-API-Key header, never logged.",
    ),
    timeout=150,
)
async def check_capstone(answer: Any, checking: Checking) -> str:
    """Behaviour identical on the corpus, audit all ✓, then throughput ≥ 10× the original under real load."""
    checking.expect(isinstance(answer, (str, Path)),
                    f"expected the path of your app file (a str or Path), got {type(answer).__name__}")
    path = Path(answer)
    checking.expect(path.is_file() and path.suffix == ".py", f"{path} is not a Python file: write it with "
                    "`%%writefile {APP_FILE}` and pass APP_FILE")
    factory = checking.call(load_factory, str(path))
    with make_bookshop_db() as db:
        candidate = checking.build_app(factory, copy_db(db))
        original = make_app(copy_db(db))
        differences = await compare_behaviour(original, candidate, corpus(db))
        checking.record("corpus_differences", len(differences))
        checking.expect(not differences, f"{len(differences)} of {len(corpus(db))} requests answer differently "
                        "from the original; a performance fix must not change behaviour. First: " + differences[0]
                        if differences else "")
        report = await audit_bookshop(checking.build_app(factory, copy_db(db)))
        failing = [c for c in report.checks if c.status != "✓"]
        checking.record("audit", f"{len(report.checks) - len(failing)}/{len(report.checks)}")
        checking.expect(not failing, "the audit is not all ✓ yet: " + "; ".join(
            f"{c.status} {c.title}: {c.evidence}" for c in failing[:3]))
        results = await race(db, {"original": {}, "yours": {"BOOKSHOP_APP_FILE": str(path.resolve())}})
    slow, fast = results["original"], results["yours"]
    ratio = fast.throughput / slow.throughput if slow.throughput else float("inf")
    checking.record("original_rps", round(slow.throughput, 1))
    checking.record("yours_rps", round(fast.throughput, 1))
    checking.record("ratio", round(ratio, 1))
    bad = fast.errors + sum(n for code, n in fast.statuses.items() if code >= 500)
    checking.expect(bad == 0, f"under load your server answered {bad} requests with errors or 5xx: {fast!r}")
    checking.expect(ratio >= GOAL, f"under the same load (uvicorn, 1 worker, {LATENCY_MS:g} ms per SQL statement) "
                    f"yours served {fast.throughput:,.0f} req/s vs the original's {slow.throughput:,.0f}: "
                    f"{ratio:.1f}×, the goal is ≥ {GOAL:g}×. The audit only finds what it can see: "
                    "profile the slowest endpoint of the mix.")
    return f"same answers on the corpus, audit all ✓, {ratio:.0f}× the original's throughput"


def bench() -> list[BenchRow]:
    """Capstone headline: fixed vs original bookshop throughput under the same real load, one run."""
    with make_bookshop_db() as db:
        results = asyncio.run(race(db, {"original": {}, "fixed": fixes_env(ALL_FIXES)}, seconds=2.0))
        database = db.dialect
    slow, fast = results["original"], results["fixed"]
    ratio = fast.throughput / slow.throughput
    return [
        BenchRow("09", f"bookshop original, mixed load (uvicorn ×1, {LATENCY_MS:g} ms/statement; {database})",
                 slow.throughput, "req/s"),
        BenchRow("09", f"bookshop fixed, same load ({database})", fast.throughput, "req/s"),
        BenchRow("09", f"capstone throughput, fixed vs original ({database})", ratio, "×", f"≥ {GOAL:g}×",
                 ratio >= GOAL),
    ]
