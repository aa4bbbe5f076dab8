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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.routing import Match

from .client import app_client
from .queries import simulated_latency
from .text_table import text_table

__all__ = ["Check", "AuditReport", "audit", "audit_main", "sqlite_scanned_tables", "postgres_scanned_tables"]

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
        value = getattr(settings, name, None)
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
    add = lambda *a: report.checks.append(Check(*a))  # noqa: E731
    paths = _probe_paths(app, probes)
    secret_values = _secret_values(app, secrets)

    with _recording(engine) as rec:
        async with app_client(app, base_url=f"http://{AUDIT_HOST}") as client:
            seen = [await _send(client, app, p, rec) for p in paths]
            ok = [p for p in seen if p.status == 200]
            lists = [p for p in ok if _items(p.body) is not None and p.path != health_path]

            # 1. pagination cap
            problems, notes = [], []
            for p in lists:
                name = _limit_param(p.route)
                items = _items(p.body) or []
                if name is None:
                    if len(items) > max_page:
                        problems.append(f"{p.path}: no limit parameter, {len(items)} items, {_kb(p.size)}")
                    continue
                over = await _send(client, app, _with_query(p.path, **{name: max_page + 1}), rec)
                seen.append(over)
                n = len(_items(over.body) or [])
                if over.status < 400 and n > max_page:  # no cap: asking for more would only cost more
                    problems.append(f"{p.path}?{name}={max_page + 1} → {over.status} with {n} items, {_kb(over.size)}")
                    continue
                huge = await _send(client, app, _with_query(p.path, **{name: huge_limit}), rec)
                seen.append(huge)
                n = len(_items(huge.body) or [])
                if huge.status < 400 and n > max_page:
                    problems.append(f"{p.path}?{name}={huge_limit} → {huge.status} with {n} items, {_kb(huge.size)}")
                else:
                    notes.append(f"{p.path}?{name}={huge_limit} → {huge.status}"
                                 + (f" ({n} items)" if huge.status < 400 else ""))
            if problems:
                add("pagination", "List endpoints cap their page size", FAIL, "; ".join(problems), "04 · pagination")
            elif notes:
                add("pagination", "List endpoints cap their page size", PASS, "; ".join(notes), "04 · pagination")
            else:
                add("pagination", "List endpoints cap their page size", PASS if not lists else UNKNOWN,
                    "no list endpoints found" if not lists else "list endpoints return few items at this size; "
                    "none has a limit parameter to probe", "04 · pagination")

            # 2. N+1: queries per request grow with the number of items returned
            if engine is None:
                add("n_plus_one", "No N+1 queries", UNKNOWN, "no SQLAlchemy engine given or on app.state.engine",
                    "02 · N+1 queries")
            else:
                grows, flat = [], []
                for p in lists:
                    name = _limit_param(p.route)
                    if name is None:
                        n = len(_items(p.body) or [])
                        (grows if n >= 5 and p.queries >= n else flat).append(f"{p.path}: {n} items, {p.queries} queries")
                        continue
                    small = await _send(client, app, _with_query(p.path, **{name: 5}), rec)
                    big = await _send(client, app, _with_query(p.path, **{name: 20}), rec)
                    n_small, n_big = len(_items(small.body) or []), len(_items(big.body) or [])
                    line = f"{p.path} {name}=5 → {small.queries} queries, {name}=20 → {big.queries}"
                    if n_big > n_small and big.queries - small.queries >= (n_big - n_small) / 2:
                        grows.append(line)
                    else:
                        flat.append(line)
                add("n_plus_one", "No N+1 queries", FAIL if grows else PASS,
                    "; ".join(grows or flat) or "no list endpoints to probe", "02 · N+1 queries")

            # 3. the caching hint: a slow GET that stays slow when repeated
            slow = []
            floor = sorted([(await _send(client, app, "/__audit_baseline__", rec)).seconds for _ in range(3)])[1] * 1000
            for p in ok:
                if p.path == health_path:
                    continue
                again = [await _send(client, app, p.path, rec) for _ in range(2)]
                repeat_ms = min(a.seconds for a in again) * 1000
                # slow in absolute terms *and* next to a request that does nothing (a 404), measured alongside
                if repeat_ms >= max(slow_ms, 8 * floor) and "cache-control" not in again[-1].headers:
                    slow.append(f"{p.path} {repeat_ms:.0f} ms on repeat")
            add("cache", "Slow, repeatable GETs are cached (hint)", UNKNOWN if slow else PASS,
                ("still slow when asked again, not cached: " + "; ".join(slow)) if slow
                else f"every GET answered a repeat in under {max(slow_ms, 8 * floor):.0f} ms "
                f"(a 404 takes {floor:.1f} ms here)", "03 · caching")

            # 4. blocking calls in async routes: event-loop lag while the route runs (database made 2 ms away)
            blocked, lags = [], []
            for p in ok:
                endpoint = getattr(p.route, "endpoint", None)
                if not inspect.iscoroutinefunction(endpoint):
                    continue
                measured = []
                for _ in range(3):  # the least of three: one pause of a busy machine is not a blocking route
                    if engine is not None:
                        with simulated_latency(engine, db_latency_ms):
                            measured.append(await _loop_lag(client, p.path))
                    else:
                        measured.append(await _loop_lag(client, p.path))
                lag = min(m[0] for m in measured)
                total = min(m[1] for m in measured)
                lags.append(lag)
                if lag >= 10 and lag >= 0.5 * total:
                    blocked.append(f"{p.path} (async def) stalled the event loop {lag:.0f} ms of a {total:.0f} ms request")
            add("blocking", "No blocking calls in async def routes", FAIL if blocked else PASS,
                "; ".join(blocked) if blocked else
                (f"longest event-loop stall {max(lags):.1f} ms" if lags else "no async def GET routes probed")
                + (f" (each SQL statement made {db_latency_ms:g} ms slow)" if engine is not None else ""),
                "01 · workers, async and blocking")

            # 5. health
            health = await _send(client, app, health_path, rec)
            if health.status != 200:
                add("health", f"{health_path} says whether the app can serve", FAIL,
                    f"GET {health_path} → {health.status}", "06 · structure and /health")
            elif engine is None:
                add("health", f"{health_path} says whether the app can serve", UNKNOWN,
                    f"GET {health_path} → 200; no engine to take down", "06 · structure and /health")
            else:
                with _database_down(engine):
                    engine.dispose()  # pooled connections must not hide the outage
                    down = await _send(client, app, health_path, rec)
                healthy = 200 <= down.status < 300
                add("health", f"{health_path} says whether the app can serve", FAIL if healthy else PASS,
                    f"GET {health_path} → 200; with the database down → {down.status}"
                    + (" (claims healthy while the database is down)" if healthy else ""), "06 · structure and /health")

    # 6. indexes: statements with a WHERE whose plan scans a large table
    dialect = engine.dialect.name if engine is not None else None
    if engine is None or dialect not in _EXPLAIN:
        add("indexes", "Filtered queries use an index", UNKNOWN,
            "no SQLAlchemy engine to EXPLAIN with" if engine is None else
            f"reads the query plans of SQLite and PostgreSQL only, not {dialect}", "05 · indexes")
    else:
        scans, sizes = _full_scans(engine, rec.statements, min_scan_rows)
        word = "SCAN" if dialect == "sqlite" else "Seq Scan on"
        add("indexes", "Filtered queries use an index", FAIL if scans else PASS,
            "; ".join(f"{word} {t} ({sizes[t]:,} rows) for: {q}" for t, q in scans.items()) if scans else
            f"no WHERE query scanned a table of {min_scan_rows:,}+ rows ({len(rec.statements)} statements seen, "
            f"{dialect} plans)", "05 · indexes")

    # 7. middleware: BaseHTTPMiddleware on every request
    base_http = [getattr(m.kwargs.get("dispatch"), "__name__", None) or m.cls.__name__
                 for m in getattr(app, "user_middleware", [])
                 if isinstance(m.cls, type) and issubclass(m.cls, BaseHTTPMiddleware)]
    add("middleware", "No BaseHTTPMiddleware on the hot path", FAIL if base_http else PASS,
        ("BaseHTTPMiddleware (@app.middleware('http')) wraps every request: " + ", ".join(base_http)) if base_http
        else f"{len(getattr(app, 'user_middleware', []))} middleware, none BaseHTTPMiddleware", "08 · logging middleware")

    # 8. GZip for large responses
    large = [p for p in seen if p.size >= large_response and p.status == 200]
    plain = [p for p in large if p.encoding not in ("gzip", "br", "zstd", "deflate")]
    add("gzip", f"Responses over {_kb(large_response)} are compressed", FAIL if plain else PASS,
        "; ".join(f"{p.path} sent {_kb(p.size)} uncompressed to a client accepting gzip" for p in plain[:3]) if plain
        else (f"{len(large)} large responses, all compressed" if large else f"no response over {_kb(large_response)}"),
        "04 · pagination and GZip")

    # 9. outbound timeouts
    no_timeout = sorted({url for url, t in rec.timeouts if not t or any(v is None for v in t.values())})
    add("timeouts", "Outbound HTTP calls have a timeout", FAIL if no_timeout else PASS,
        ("httpx request without a timeout: " + ", ".join(no_timeout)) if no_timeout else
        (f"{len(rec.timeouts)} outbound httpx requests, all with timeouts" if rec.timeouts
         else "no outbound httpx request seen while probing"), "01 · workers: timeouts")

    # 10. secrets in responses or logs
    leaks = []
    for value in secret_values:
        where = [p.path for p in seen if value in json.dumps(p.body) or value in str(p.headers)]
        in_logs = sum(value in line for line in rec.logs)
        if where:
            leaks.append(f"a secret appears in the response of {', '.join(where[:3])}")
        if in_logs:
            leaks.append(f"a secret appears in {in_logs} log record(s)")
    add("secrets", "Secrets stay out of responses and logs",
        FAIL if leaks else (PASS if secret_values else UNKNOWN),
        "; ".join(leaks) if leaks else (f"{len(secret_values)} secret value(s) searched in {len(seen)} responses "
                                        f"and {len(rec.logs)} log records: not found" if secret_values
                                        else "no SecretStr found (pass secrets=… or set app.state.settings)"),
        "07 · settings")

    order = ["pagination", "n_plus_one", "indexes", "blocking", "middleware", "gzip", "health", "timeouts",
             "cache", "secrets"]
    report.checks.sort(key=lambda c: order.index(c.key))
    report.seconds = time.perf_counter() - started
    return report


def sqlite_scanned_tables(plan: Sequence[Sequence[Any]]) -> list[str]:
    """Tables a SQLite `EXPLAIN QUERY PLAN` reads in full: rows whose detail is exactly `SCAN <table>`."""
    tables = []
    for row in plan:
        words = str(row[-1]).split()
        if len(words) == 2 and words[0] == "SCAN":
            tables.append(words[1])
    return tables


def postgres_scanned_tables(plan: Any) -> list[str]:
    """Tables a PostgreSQL `EXPLAIN (FORMAT JSON)` plan reads in full: every `Seq Scan` node's relation."""
    if isinstance(plan, str):
        plan = json.loads(plan)
    tables: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            if node.get("Node Type") == "Seq Scan" and node.get("Relation Name"):
                tables.append(str(node["Relation Name"]))
            walk(node.get("Plan"))
            walk(node.get("Plans"))

    walk(plan)
    return tables


def _explain(conn: Any, dialect: str, sql: str, params: Any) -> list[str]:
    """The tables the database's plan for `sql` scans in full."""
    if dialect == "sqlite":
        return sqlite_scanned_tables(conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params).all())
    return postgres_scanned_tables(conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + sql, params).scalar_one())


_EXPLAIN = ("sqlite", "postgresql")


def _full_scans(engine: Engine, statements: Sequence[tuple[str, Any]],
                min_rows: int) -> tuple[dict[str, str], dict[str, int]]:
    """Explain each distinct SELECT … WHERE seen; return {large table scanned in full: the statement} and table sizes."""
    dialect = engine.dialect.name
    scans: dict[str, str] = {}
    sizes: dict[str, int] = {}
    # AUTOCOMMIT: on PostgreSQL a failed EXPLAIN must not abort the transaction the next ones run in
    options = {"isolation_level": "AUTOCOMMIT"} if dialect == "postgresql" else {}
    with engine.connect().execution_options(**options) as conn:
        for sql, params in dict.fromkeys((s, _hashable(p)) for s, p in statements):
            if not re.search(r"\bWHERE\b", sql, re.IGNORECASE) or not sql.lstrip().upper().startswith("SELECT"):
                continue
            try:
                tables = _explain(conn, dialect, sql, _unhashable(params))
            except Exception:  # noqa: BLE001 - a statement we cannot explain is skipped
                continue
            for table in tables:
                if table not in sizes:
                    try:
                        sizes[table] = conn.execute(text(f'SELECT count(*) FROM "{table}"')).scalar_one()
                    except Exception:  # noqa: BLE001 - an alias or a subquery, not a table
                        sizes[table] = 0
                if sizes[table] >= min_rows:
                    scans.setdefault(table, " ".join(sql.split())[:90])
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


