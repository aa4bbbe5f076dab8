"""The performance-checklist auditor: probe a running FastAPI app and report ✓ / ✗ / ? per practice, with evidence.

    report = await audit(app)                 # in a notebook (top-level await)
    python -m course_lib audit module:app     # from a terminal (`audit_main`)

Every item is *measured* on the app, in-process (asgi-lifespan + httpx): status codes, response sizes and
encodings, SQL statements and their query plans, event-loop lag, outbound httpx timeouts, log records.
"""

from __future__ import annotations

import asyncio
import html
import inspect
import json
import logging
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.routing import Match

from . import catalogue
from .client import app_client
from .plans import EXPLAIN_PREFIX, explain_driver_sql, parse_postgresql_plan, parse_sqlite_plan
from .queries import simulated_latency
from .text_table import text_table

__all__ = ["Check", "AuditReport", "AuditItem", "AUDIT_ITEMS", "audit", "audit_main", "sqlite_scanned_tables", "postgres_scanned_tables"]

PASS, FAIL, UNKNOWN = "✓", "✗", "?"
AUDIT_HOST = "audit.lab.test"
LIMIT_NAMES = ("limit", "page_size", "per_page", "size")


@dataclass
class Check:
    """One checklist item: its verdict (✓ ✗ ?), the evidence measured, and the lesson to revisit."""

    key: str
    title: str
    status: str
    evidence: str
    lesson: str


@dataclass
class AuditReport:
    """Every checklist item for one app; `ok` when all are ✓."""

    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when every item passed."""
        return all(c.status == PASS for c in self.checks)

    def __getitem__(self, key: str) -> Check:
        """The item called `key` (KeyError names the known keys)."""
        for check in self.checks:
            if check.key == key:
                return check
        raise KeyError(f"{key!r}: the audit's items are {[c.key for c in self.checks]}")

    def statuses(self) -> dict[str, str]:
        """Item key → ✓ / ✗ / ?."""
        return {c.key: c.status for c in self.checks}

    def failing(self) -> list[str]:
        """Keys of the items that are not ✓."""
        return [c.key for c in self.checks if c.status != PASS]

    def summary(self) -> str:
        """One line: how many items pass."""
        passed = sum(c.status == PASS for c in self.checks)
        return f"{passed}/{len(self.checks)} checks pass (audit took {self.seconds:.1f} s)"

    def __repr__(self) -> str:
        rows = [(c.status, c.title, c.lesson, c.evidence) for c in self.checks]
        return text_table(("", "practice", "revisit", "evidence"), rows, wrap_last=70) + "\n" + self.summary()

    def _repr_html_(self) -> str:
        colour = {PASS: "#e6f4ea", FAIL: "#fdecea", UNKNOWN: "#fff8e1"}
        rows = "".join(
            f"<tr style='background:{colour[c.status]}'><td>{c.status}</td><td style='text-align:left'>"
            f"{html.escape(c.title)}</td><td>{html.escape(c.lesson)}</td><td style='text-align:left'>"
            f"{html.escape(c.evidence)}</td></tr>" for c in self.checks)
        return (f"<table><tr><th></th><th>practice</th><th>revisit</th><th>evidence</th></tr>{rows}</table>"
                f"<p><b>{html.escape(self.summary())}</b></p>")


@dataclass
class Probe:
    """One GET the auditor sent, and what it saw."""

    path: str
    route: Any
    status: int = 0
    size: int = 0
    encoding: str = ""
    seconds: float = 0.0
    body: Any = None
    queries: int = 0
    headers: dict[str, str] = field(default_factory=dict)


class _Recorder:
    """SQL statements with their parameters, httpx timeouts of outbound requests, and log lines, while active."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, Any]] = []
        self.timeouts: list[tuple[str, dict[str, Any]]] = []
        self.logs: list[str] = []


@contextmanager
def _recording(engine: Engine | None) -> Iterator[_Recorder]:
    recorder = _Recorder()

    def after(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        recorder.statements.append((statement, parameters))

    originals = (httpx.AsyncClient.send, httpx.Client.send)

    def note(request: httpx.Request) -> None:
        if request.url.host != AUDIT_HOST:  # the auditor's own requests to the app are not outbound
            recorder.timeouts.append((str(request.url.copy_with(query=None)), dict(request.extensions.get("timeout", {}))))

    async def async_send(self: httpx.AsyncClient, request: httpx.Request, *args: Any, **kwargs: Any) -> Any:
        note(request)
        return await originals[0](self, request, *args, **kwargs)

    def sync_send(self: httpx.Client, request: httpx.Request, *args: Any, **kwargs: Any) -> Any:
        note(request)
        return originals[1](self, request, *args, **kwargs)

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                recorder.logs.append(record.getMessage())
            except Exception:  # a broken log call must not break the audit
                recorder.logs.append(str(record.msg))

    handler, root = Capture(level=logging.DEBUG), logging.getLogger()
    old_level = root.level
    # the capture needs DEBUG records; handlers already on the root keep showing only what they showed before
    quieted = {h: h.level for h in root.handlers}
    for existing in quieted:
        existing.setLevel(max(existing.level, old_level))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    if engine is not None:
        event.listen(engine, "after_cursor_execute", after)
    httpx.AsyncClient.send, httpx.Client.send = async_send, sync_send  # type: ignore[method-assign]
    try:
        yield recorder
    finally:
        httpx.AsyncClient.send, httpx.Client.send = originals  # type: ignore[method-assign]
        if engine is not None:
            event.remove(engine, "after_cursor_execute", after)
        root.removeHandler(handler)
        root.setLevel(old_level)
        for existing, level in quieted.items():
            existing.setLevel(level)


@contextmanager
def _database_down(engine: Engine) -> Iterator[None]:
    """Every statement on `engine` fails as if the database server were unreachable."""

    def refuse(*_: Any) -> None:
        raise OperationalError("SELECT", {}, ConnectionRefusedError("audit: database made unreachable"))

    event.listen(engine, "before_cursor_execute", refuse)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", refuse)


def _find_engine(app: Any) -> Engine | None:
    engine = getattr(getattr(app, "state", None), "engine", None)
    engine = getattr(engine, "sync_engine", engine)
    return engine if isinstance(engine, Engine) else None


def _secret_values(app: Any, secrets: Sequence[Any]) -> list[str]:
    values = [getattr(s, "get_secret_value", lambda s=s: s)() for s in secrets]
    settings = getattr(getattr(app, "state", None), "settings", None)
    for name in getattr(type(settings), "model_fields", {}) if settings is not None else {}:
        value: Any = getattr(settings, name, None)
        if hasattr(value, "get_secret_value"):
            values.append(value.get_secret_value())
    return sorted({str(v) for v in values if v and len(str(v)) >= 6})


def _get_routes(app: Any) -> list[Any]:
    return [r for r in getattr(getattr(app, "router", None), "routes", [])
            if "GET" in (getattr(r, "methods", None) or set()) and hasattr(r, "dependant")]


def _probe_paths(app: Any, extra: Sequence[str]) -> list[str]:
    """GET paths to probe: each GET route without required query parameters, path parameters set to 1."""
    paths: list[str] = []
    for route in _get_routes(app):
        dependant = route.dependant
        required = [p for p in getattr(dependant, "query_params", []) if getattr(p, "required", False)]
        if required:
            continue
        path = route.path_format
        for name in route.param_convertors:
            path = path.replace("{" + name + "}", "1")
        paths.append(path)
    return list(dict.fromkeys([*paths, *extra]))


def _route_for(app: Any, path: str) -> Any:
    scope = {"type": "http", "path": path.split("?")[0], "method": "GET", "root_path": ""}
    for route in _get_routes(app):
        if route.matches(scope)[0] == Match.FULL:
            return route
    return None


def _limit_param(route: Any) -> str | None:
    for param in getattr(getattr(route, "dependant", None), "query_params", []):
        if param.name in LIMIT_NAMES or getattr(param, "alias", "") in LIMIT_NAMES:
            return str(getattr(param, "alias", None) or param.name)
    return None


def _items(body: Any) -> list[Any] | None:
    if isinstance(body, list):
        return body
    if isinstance(body, dict):
        for key in ("items", "results", "data"):
            if isinstance(body.get(key), list):
                return body[key]
    return None


def _with_query(path: str, **params: Any) -> str:
    url = httpx.URL(path)
    return str(url.copy_merge_params(params))


async def _send(client: httpx.AsyncClient, app: Any, path: str, recorder: _Recorder) -> Probe:
    probe = Probe(path, _route_for(app, path))
    before = len(recorder.statements)
    start = time.perf_counter()
    response = await client.get(path, headers={"Accept-Encoding": "gzip"})
    probe.seconds = time.perf_counter() - start
    probe.status, probe.size = response.status_code, len(response.content)
    probe.encoding = response.headers.get("content-encoding", "")
    probe.queries = len(recorder.statements) - before
    try:
        probe.body = response.json()
    except ValueError:
        probe.body = response.text
    probe.headers = dict(response.headers)
    return probe


async def _loop_lag(client: httpx.AsyncClient, path: str) -> tuple[float, float]:
    """(longest event-loop stall, request time) in ms while one request to `path` runs in this loop.

    Only the part of a stall that falls inside the request counts: a busy machine that pauses the process
    just before or after the request is not the route's doing."""
    gaps: list[tuple[float, float]] = []
    done = False

    async def ticker() -> None:
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append((last, now))
            last = now

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.003)
    start = time.perf_counter()
    try:
        await client.get(path)
    finally:
        end = time.perf_counter()
        done = True
        await task
    inside = [(min(b, end) - max(a, start)) * 1000 - 1 for a, b in gaps if b > start and a < end]
    return max([0.0, *inside]), (end - start) * 1000


def _kb(size: int) -> str:
    return f"{size / 1024:.1f} KB"


@dataclass
class _Audit:
    """One audit run: the app, its engine, the limits, and what was probed so far (each check reads and adds to it)."""

    app: Any
    engine: Engine | None
    secret_values: list[str]
    huge_limit: int
    max_page: int
    large_response: int
    min_scan_rows: int
    slow_ms: float
    db_latency_ms: float
    health_path: str
    rec: _Recorder = field(default_factory=_Recorder)
    client: httpx.AsyncClient | None = None
    seen: list[Probe] = field(default_factory=list)  # every request sent, in order
    ok: list[Probe] = field(default_factory=list)  # the first probe of each path that answered 200
    lists: list[Probe] = field(default_factory=list)  # of those, the ones that returned a list of items

    async def send(self, path: str) -> Probe:
        """GET `path` on the app, recording what came back and the statements it ran."""
        assert self.client is not None, "requests are sent only while the app is being probed"
        return await _send(self.client, self.app, path, self.rec)


Verdict = tuple[str, str]  # (✓ ✗ ?, evidence)


@dataclass(frozen=True)
class AuditItem:
    """One checklist item: its key, title (may name {health_path} or {large}), lesson to revisit, and its check."""

    key: str
    title: str
    lesson: str
    check: Callable[[_Audit], Awaitable[Verdict]]
    while_probing: bool  # True: runs while the app is up and being recorded; False: after, on what was recorded


AUDIT_ITEMS: list[AuditItem] = []  # in the order they run
REPORT_ORDER = ("pagination", "n_plus_one", "indexes", "blocking", "middleware", "gzip", "health", "timeouts",
                "cache", "secrets")


def _item(key: str, title: str, lesson: tuple[str, str], *,
          while_probing: bool = True) -> Callable[[Callable[[_Audit], Awaitable[Verdict]]], Callable[[_Audit], Awaitable[Verdict]]]:
    """Register a check as a checklist item (refusing a key already taken or a lesson the catalogue lacks)."""
    if key in {item.key for item in AUDIT_ITEMS}:
        raise ValueError(f"audit item {key!r} is registered twice")

    slug, topic = lesson  # the lesson to revisit, by slug (its number comes from the catalogue), and what in it
    found = next((known for known in catalogue.CATALOGUE if known.slug == slug), None)
    if found is None:
        raise ValueError(f"audit item {key!r} names a lesson {slug!r} that the catalogue does not have")

    def register(check: Callable[[_Audit], Awaitable[Verdict]]) -> Callable[[_Audit], Awaitable[Verdict]]:
        AUDIT_ITEMS.append(AuditItem(key, title, f"{found.number} · {topic}", check, while_probing))
        return check

    return register


@_item("pagination", "List endpoints cap their page size", ("pagination", "pagination"))
async def _check_pagination(a: _Audit) -> Verdict:
    """A list endpoint answers at most `max_page` items, however many are asked for."""
    problems, notes = [], []
    for p in a.lists:
        name = _limit_param(p.route)
        items = _items(p.body) or []
        if name is None:
            if len(items) > a.max_page:
                problems.append(f"{p.path}: no limit parameter, {len(items)} items, {_kb(p.size)}")
            continue
        over = await a.send(_with_query(p.path, **{name: a.max_page + 1}))
        a.seen.append(over)
        n = len(_items(over.body) or [])
        if over.status < 400 and n > a.max_page:  # no cap: asking for more would only cost more
            problems.append(f"{p.path}?{name}={a.max_page + 1} → {over.status} with {n} items, {_kb(over.size)}")
            continue
        huge = await a.send(_with_query(p.path, **{name: a.huge_limit}))
        a.seen.append(huge)
        n = len(_items(huge.body) or [])
        if huge.status < 400 and n > a.max_page:
            problems.append(f"{p.path}?{name}={a.huge_limit} → {huge.status} with {n} items, {_kb(huge.size)}")
        else:
            notes.append(f"{p.path}?{name}={a.huge_limit} → {huge.status}"
                         + (f" ({n} items)" if huge.status < 400 else ""))
    if problems:
        return FAIL, "; ".join(problems)
    if notes:
        return PASS, "; ".join(notes)
    return (PASS if not a.lists else UNKNOWN,
            "no list endpoints found" if not a.lists else "list endpoints return few items at this size; "
            "none has a limit parameter to probe")


@_item("n_plus_one", "No N+1 queries", ("n_plus_one", "N+1 queries"))
async def _check_n_plus_one(a: _Audit) -> Verdict:
    """The queries a list request runs do not grow with the number of items it returns."""
    if a.engine is None:
        return UNKNOWN, "no SQLAlchemy engine given or on app.state.engine"
    grows: list[str] = []
    flat: list[str] = []
    for p in a.lists:
        name = _limit_param(p.route)
        if name is None:
            n = len(_items(p.body) or [])
            (grows if n >= 5 and p.queries >= n else flat).append(f"{p.path}: {n} items, {p.queries} queries")
            continue
        small = await a.send(_with_query(p.path, **{name: 5}))
        big = await a.send(_with_query(p.path, **{name: 20}))
        n_small, n_big = len(_items(small.body) or []), len(_items(big.body) or [])
        line = f"{p.path} {name}=5 → {small.queries} queries, {name}=20 → {big.queries}"
        if n_big > n_small and big.queries - small.queries >= (n_big - n_small) / 2:
            grows.append(line)
        else:
            flat.append(line)
    return FAIL if grows else PASS, "; ".join(grows or flat) or "no list endpoints to probe"


@_item("cache", "Slow, repeatable GETs are cached (hint)", ("caching", "caching"))
async def _check_cache(a: _Audit) -> Verdict:
    """A GET that stays slow when asked again, without Cache-Control, is a caching candidate."""
    slow = []
    floor = sorted([(await a.send("/__audit_baseline__")).seconds for _ in range(3)])[1] * 1000
    for p in a.ok:
        if p.path == a.health_path:
            continue
        again = [await a.send(p.path) for _ in range(2)]
        repeat_ms = min(r.seconds for r in again) * 1000
        # slow in absolute terms *and* next to a request that does nothing (a 404), measured alongside
        if repeat_ms >= max(a.slow_ms, 8 * floor) and "cache-control" not in again[-1].headers:
            slow.append(f"{p.path} {repeat_ms:.0f} ms on repeat")
    return (UNKNOWN if slow else PASS,
            ("still slow when asked again, not cached: " + "; ".join(slow)) if slow
            else f"every GET answered a repeat in under {max(a.slow_ms, 8 * floor):.0f} ms "
            f"(a 404 takes {floor:.1f} ms here)")


BLOCKING_TRIES = 7


def _stalled(lag: float, total: float) -> bool:
    """True when one request's event-loop stall (ms) is at least 10 ms and half of the request's time."""
    return lag >= 10 and lag >= 0.5 * total


@_item("blocking", "No blocking calls in async def routes", ("workers", "workers, async and blocking"))
async def _check_blocking(a: _Audit) -> Verdict:
    """No `async def` route stalls the event loop for most of its request (the database made `db_latency_ms` away)."""
    blocked, lags = [], []
    for p in a.ok:
        endpoint = getattr(p.route, "endpoint", None)
        if not inspect.iscoroutinefunction(endpoint):
            continue
        assert a.client is not None
        measured: list[tuple[float, float]] = []
        # A blocking route stalls the loop on every request; a busy machine's pause hits some requests only. So up to
        # BLOCKING_TRIES requests, stopping at the first that ran without a stall: the least stall is the verdict.
        for _ in range(BLOCKING_TRIES):
            if a.engine is not None:
                with simulated_latency(a.engine, a.db_latency_ms):
                    measured.append(await _loop_lag(a.client, p.path))
            else:
                measured.append(await _loop_lag(a.client, p.path))
            if not _stalled(*measured[-1]):
                break
        lag = min(m[0] for m in measured)
        total = min(m[1] for m in measured)
        lags.append(lag)
        if all(_stalled(*m) for m in measured):
            blocked.append(f"{p.path} (async def) stalled the event loop {lag:.0f} ms of a {total:.0f} ms request")
    return (FAIL if blocked else PASS,
            "; ".join(blocked) if blocked else
            (f"longest event-loop stall {max(lags):.1f} ms" if lags else "no async def GET routes probed")
            + (f" (each SQL statement made {a.db_latency_ms:g} ms slow)" if a.engine is not None else ""))


@_item("health", "{health_path} says whether the app can serve", ("structure", "structure and /health"))
async def _check_health(a: _Audit) -> Verdict:
    """The health path answers 200, and not 2xx once the database is unreachable."""
    health = await a.send(a.health_path)
    if health.status != 200:
        return FAIL, f"GET {a.health_path} → {health.status}"
    if a.engine is None:
        return UNKNOWN, f"GET {a.health_path} → 200; no engine to take down"
    with _database_down(a.engine):
        a.engine.dispose()  # pooled connections must not hide the outage
        down = await a.send(a.health_path)
    healthy = 200 <= down.status < 300
    return (FAIL if healthy else PASS,
            f"GET {a.health_path} → 200; with the database down → {down.status}"
            + (" (claims healthy while the database is down)" if healthy else ""))


@_item("indexes", "Filtered queries use an index", ("indexes", "indexes"), while_probing=False)
async def _check_indexes(a: _Audit) -> Verdict:
    """No SELECT … WHERE seen while probing reads a large table (or a whole index of it) from end to end."""
    dialect = a.engine.dialect.name if a.engine is not None else None
    if a.engine is None or dialect not in EXPLAIN_PREFIX:
        return (UNKNOWN, "no SQLAlchemy engine to EXPLAIN with" if a.engine is None else
                f"reads the query plans of SQLite and PostgreSQL only, not {dialect}")
    scans, sizes = _full_scans(a.engine, a.rec.statements, a.min_scan_rows)
    return (FAIL if scans else PASS,
            "; ".join(f"{how} ({sizes[t]:,} rows) for: {q}" for t, (how, q) in scans.items()) if scans else
            f"no WHERE query scanned a table of {a.min_scan_rows:,}+ rows ({len(a.rec.statements)} statements seen, "
            f"{dialect} plans)")


@_item("middleware", "No BaseHTTPMiddleware on the hot path", ("logging", "logging middleware"), while_probing=False)
async def _check_middleware(a: _Audit) -> Verdict:
    """No middleware is a BaseHTTPMiddleware (`@app.middleware("http")`), which wraps every request."""
    base_http = [getattr(m.kwargs.get("dispatch"), "__name__", None) or m.cls.__name__
                 for m in getattr(a.app, "user_middleware", [])
                 if isinstance(m.cls, type) and issubclass(m.cls, BaseHTTPMiddleware)]
    return (FAIL if base_http else PASS,
            ("BaseHTTPMiddleware (@app.middleware('http')) wraps every request: " + ", ".join(base_http)) if base_http
            else f"{len(getattr(a.app, 'user_middleware', []))} middleware, none BaseHTTPMiddleware")


@_item("gzip", "Responses over {large} are compressed", ("pagination", "pagination and GZip"), while_probing=False)
async def _check_gzip(a: _Audit) -> Verdict:
    """Every 200 response of `large_response` bytes or more was compressed for a client accepting gzip."""
    large = [p for p in a.seen if p.size >= a.large_response and p.status == 200]
    plain = [p for p in large if p.encoding not in ("gzip", "br", "zstd", "deflate")]
    return (FAIL if plain else PASS,
            "; ".join(f"{p.path} sent {_kb(p.size)} uncompressed to a client accepting gzip" for p in plain[:3])
            if plain else (f"{len(large)} large responses, all compressed" if large
                           else f"no response over {_kb(a.large_response)}"))


@_item("timeouts", "Outbound HTTP calls have a timeout", ("workers", "workers: timeouts"), while_probing=False)
async def _check_timeouts(a: _Audit) -> Verdict:
    """Every outbound httpx request the app sent while probed carried a timeout on each phase."""
    no_timeout = sorted({url for url, t in a.rec.timeouts if not t or any(v is None for v in t.values())})
    return (FAIL if no_timeout else PASS,
            ("httpx request without a timeout: " + ", ".join(no_timeout)) if no_timeout else
            (f"{len(a.rec.timeouts)} outbound httpx requests, all with timeouts" if a.rec.timeouts
             else "no outbound httpx request seen while probing"))


@_item("secrets", "Secrets stay out of responses and logs", ("settings", "settings"), while_probing=False)
async def _check_secrets(a: _Audit) -> Verdict:
    """No secret value appears in a response body, a response header or a log record."""
    leaks = []
    for value in a.secret_values:
        where = [p.path for p in a.seen if value in json.dumps(p.body) or value in str(p.headers)]
        in_logs = sum(value in line for line in a.rec.logs)
        if where:
            leaks.append(f"a secret appears in the response of {', '.join(where[:3])}")
        if in_logs:
            leaks.append(f"a secret appears in {in_logs} log record(s)")
    return (FAIL if leaks else (PASS if a.secret_values else UNKNOWN),
            "; ".join(leaks) if leaks else (f"{len(a.secret_values)} secret value(s) searched in {len(a.seen)} responses "
                                            f"and {len(a.rec.logs)} log records: not found" if a.secret_values
                                            else "no SecretStr found (pass secrets=… or set app.state.settings)"))


async def audit(
    app: Any,
    engine: Any = None,
    *,
    probes: Sequence[str] = (),
    secrets: Sequence[Any] = (),
    huge_limit: int = 1000,
    max_page: int = 100,
    large_response: int = 4096,
    min_scan_rows: int = 1000,
    slow_ms: float = 20.0,
    db_latency_ms: float = 2.0,
    health_path: str = "/health",
) -> AuditReport:
    """Probe `app` in-process and check it against the performance checklist; returns an AuditReport."""
    if not callable(app) or not hasattr(app, "router"):
        raise TypeError(f"audit needs a FastAPI app, got {type(app).__name__}")
    engine = getattr(engine, "sync_engine", engine) or _find_engine(app)
    if engine is not None and not isinstance(engine, Engine):
        raise TypeError(f"engine must be a SQLAlchemy Engine, got {type(engine).__name__}")
    started = time.perf_counter()
    report = AuditReport()
    run = _Audit(app, engine, _secret_values(app, secrets), huge_limit, max_page, large_response, min_scan_rows,
                 slow_ms, db_latency_ms, health_path)
    names = {"health_path": health_path, "large": _kb(large_response)}

    async def judge(item: AuditItem) -> None:
        status, evidence = await item.check(run)
        report.checks.append(Check(item.key, item.title.format(**names), status, evidence, item.lesson))

    paths = _probe_paths(app, probes)
    with _recording(engine) as run.rec:
        async with app_client(app, base_url=f"http://{AUDIT_HOST}") as run.client:
            run.seen = [await run.send(p) for p in paths]
            run.ok = [p for p in run.seen if p.status == 200]
            run.lists = [p for p in run.ok if _items(p.body) is not None and p.path != health_path]
            for item in AUDIT_ITEMS:
                if item.while_probing:
                    await judge(item)
        run.client = None
    for item in AUDIT_ITEMS:
        if not item.while_probing:
            await judge(item)

    report.checks.sort(key=lambda c: REPORT_ORDER.index(c.key))
    report.seconds = time.perf_counter() - started
    return report


def sqlite_scanned_tables(plan: Sequence[Sequence[Any]]) -> list[str]:
    """Tables a SQLite `EXPLAIN QUERY PLAN` reads in full (`course_lib.plans`: a covering-index SCAN is one too)."""
    return parse_sqlite_plan(plan).scanned_tables


def postgres_scanned_tables(plan: Any) -> list[str]:
    """Tables a PostgreSQL `EXPLAIN (FORMAT JSON)` plan reads in full (`course_lib.plans`: a Seq Scan, or an index
    scan without an index condition)."""
    return parse_postgresql_plan(plan).scanned_tables


def _full_scans(engine: Engine, statements: Sequence[tuple[str, Any]],
                min_rows: int) -> tuple[dict[str, tuple[str, str]], dict[str, int]]:
    """Explain each distinct SELECT … WHERE seen; return {large table read in full: (the plan step, the statement)}
    and table sizes."""
    dialect = engine.dialect.name
    scans: dict[str, tuple[str, str]] = {}
    sizes: dict[str, int] = {}
    # AUTOCOMMIT: on PostgreSQL a failed EXPLAIN must not abort the transaction the next ones run in
    options = {"isolation_level": "AUTOCOMMIT"} if dialect == "postgresql" else {}
    with engine.connect().execution_options(**options) as conn:
        for sql, params in dict.fromkeys((s, _hashable(p)) for s, p in statements):
            if not re.search(r"\bWHERE\b", sql, re.IGNORECASE) or not sql.lstrip().upper().startswith("SELECT"):
                continue
            try:
                steps = explain_driver_sql(conn, sql, _unhashable(params)).full_scans
            except Exception:  # noqa: BLE001 - a statement we cannot explain is skipped
                continue
            for step in steps:
                table = step.table or ""
                if table not in sizes:
                    try:
                        sizes[table] = conn.execute(text(f'SELECT count(*) FROM "{table}"')).scalar_one()
                    except Exception:  # noqa: BLE001 - an alias or a subquery, not a table
                        sizes[table] = 0
                if sizes[table] >= min_rows:
                    scans.setdefault(table, (step.headline, " ".join(sql.split())[:90]))
    return scans, sizes


def _hashable(params: Any) -> Any:
    if isinstance(params, dict):
        return ("dict", tuple(sorted(params.items())))
    if isinstance(params, list):
        return ("list", tuple(params))
    return params if params is None else ("tuple", tuple(params))


def _unhashable(params: Any) -> Any:
    if params is None:
        return ()
    kind, value = params
    return dict(value) if kind == "dict" else tuple(value)


def audit_main(argv: list[str]) -> int:
    """`python -m course_lib audit module:app [--probe PATH …]`: print the report; exit 1 unless all ✓."""
    import argparse
    import importlib
    import os

    parser = argparse.ArgumentParser(prog="python -m course_lib audit",
                                     description="Run the performance checklist against a FastAPI app.")
    parser.add_argument("app", help="import string, e.g. mypackage.main:app")
    parser.add_argument("--probe", action="append", default=[], help="an extra GET path to probe (repeatable)")
    args = parser.parse_args(argv)
    module_name, _, attribute = args.app.partition(":")
    if not module_name or not attribute:
        print(f"expected module:attribute, got {args.app!r}", file=sys.stderr)
        return 2
    sys.path.insert(0, os.getcwd())
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        print(f"cannot load {args.app}: {error}", file=sys.stderr)
        return 2
    report = asyncio.run(audit(target, probes=args.probe))
    print(report)
    return 0 if report.ok else 1


