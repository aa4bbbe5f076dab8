"""Lesson 10 (diagnose): measure where a request's time goes before fixing it: pyinstrument, asyncio debug mode,
py-spy, and the per-request measurements (queries, connections, plans, sizes, loop blocking) that name a bottleneck;
mystery apps with a hidden bottleneck drawn at random, their grader, and benchmark rows."""

from __future__ import annotations

import asyncio
import html
import inspect
import json
import linecache
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI
from pydantic import BaseModel, ConfigDict
from sqlalchemy import event, select
from sqlalchemy.orm import Session
from sqlalchemy.pool import Pool

from ..bench_rows import BenchRow
from ..client import app_client
from ..db import DemoDB, Post, User, make_demo_db
from ..events import listening
from ..grading import Checking, exercise
from ..plans import QueryPlan, explain_driver_sql
from ..queries import count_queries, observe_statements

__all__ = [
    "KINDS", "KIND_SIGNS", "PostOut", "PostDetail", "UserOut", "UserWithPosts",
    "ConnectionLog", "count_connections", "EncoderLog", "count_encoder_calls", "statement_plans", "SlowCallback", "slow_callbacks",
    "profile_request", "call_tree", "without_header", "head", "loop_lag_during", "ping_while", "FrameRow", "FrameTable", "top_frames", "time_share", "ProfilerMiddleware",
    "RequestCost", "request_cost", "concurrent_seconds",
    "ptrace_status", "py_spy", "py_spy_dump", "thread_stack", "py_spy_record", "speedscope_top",
    "make_report_app", "make_fixed_report_app", "fetch_exchange_rate", "RateCalls", "count_rate_calls", "RatedPosts",
    "Mystery", "draw_mysteries", "mystery_source", "FIX_RULES", "observe_kind_signs", "bench",
]


# --- response models ---------------------------------------------------------------------------------------

class PostOut(BaseModel):
    """A post in a list."""

    model_config = ConfigDict(from_attributes=True)
    id: int
    user_id: int
    title: str
    likes: int
    created_at: datetime


class PostDetail(PostOut):
    """A post with its body: the report's line."""

    body: str


class UserOut(BaseModel):
    """A user."""

    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    email: str


class UserWithPosts(UserOut):
    """A user with their posts."""

    posts: list[PostOut]


class RatedPosts(BaseModel):
    """A page of posts with the exchange rate of the day."""

    rate: float
    posts: list[PostOut]


# --- measuring tools: each answers one question about one request ------------------------------------------

@dataclass
class ConnectionLog:
    """Database connections opened (by any engine's pool) inside a `count_connections` block."""

    count: int = 0


@contextmanager
def count_connections() -> Iterator[ConnectionLog]:
    """Count every new DBAPI connection any SQLAlchemy pool opens in the block (a pooled app opens none once warm)."""
    log = ConnectionLog()

    def opened(*_: Any) -> None:
        log.count += 1

    with listening(Pool, "connect", opened):
        yield log


@dataclass
class EncoderLog:
    """Calls of fastapi's `jsonable_encoder` inside a `count_encoder_calls` block (it calls itself per item)."""

    count: int = 0


@contextmanager
def count_encoder_calls() -> Iterator[EncoderLog]:
    """Count calls of `fastapi.encoders.jsonable_encoder` in the block, from any thread: a response serialized
    through it costs one call per object and field; a declared return type (pydantic-core) makes none."""
    import fastapi.encoders

    log, original = EncoderLog(), fastapi.encoders.jsonable_encoder

    def counting(*args: Any, **kwargs: Any) -> Any:
        log.count += 1
        return original(*args, **kwargs)

    fastapi.encoders.jsonable_encoder = counting  # its recursion looks the name up here, so nested calls count
    try:
        yield log
    finally:
        fastapi.encoders.jsonable_encoder = original


async def statement_plans(client: Any, db: DemoDB, url: str) -> list[tuple[str, QueryPlan]]:
    """GET `url` once; return each statement it sent through `db`'s engine with the database's plan for it."""
    seen: list[tuple[str, Any]] = []

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        seen.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", before)
    try:
        await client.get(url)
    finally:
        event.remove(db.engine, "before_cursor_execute", before)
    plans = []
    with db.engine.connect() as conn:
        for statement, parameters in seen:
            if statement.lstrip()[:6].upper() == "SELECT":
                plans.append((statement, explain_driver_sql(conn, statement, parameters)))
    return plans


@dataclass(frozen=True)
class SlowCallback:
    """One warning of asyncio debug mode, parsed: what held the event loop, for how long, created where."""

    what: str
    seconds: float
    created_at: str = ""

    def __str__(self) -> str:
        where = f" (created at {self.created_at})" if self.created_at else ""
        return f"{self.what} held the loop {self.seconds * 1000:.0f} ms{where}"


_SLOW = re.compile(r"Executing (?P<handle>.*) took (?P<seconds>[\d.]+) seconds", re.S)


def _parse_slow(message: str) -> SlowCallback | None:
    """Turn asyncio's 'Executing <Task ... coro=<f() running at file:line> created at file:line> took 0.123 seconds'
    into a SlowCallback; None for another message."""
    match = _SLOW.search(message)
    if match is None:
        return None
    handle = match["handle"]
    coro = re.search(r"coro=<(?P<name>[\w.<>]+)\(\)", handle)
    callback = re.search(r"<Handle (?P<name>[\w.<>]+)\(", handle)
    what = coro["name"] if coro else callback["name"] if callback else handle[:60]
    created = re.search(r"created at (?P<where>\S+:\d+)", handle)
    return SlowCallback(what, float(match["seconds"]), _short_path(created["where"]) if created else "")


def _short_path(where: str) -> str:
    """'/long/path/site-packages/starlette/routing.py:72' → 'starlette/routing.py:72'."""
    for marker in ("site-packages/", "lib/python3", "course_lib/"):
        if marker in where:
            tail = where.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker == "lib/python3" and "/" in tail else tail
    return where.rsplit("/", 2)[-1] if where.count("/") > 2 else where


class _Collect(logging.Handler):
    """Parses asyncio's slow-callback warnings into a list; once closed, swallows them (the block has ended)."""

    def __init__(self, found: list[SlowCallback]) -> None:
        super().__init__(logging.WARNING)
        self.found = found
        self.closed = False

    def emit(self, record: logging.LogRecord) -> None:
        slow = _parse_slow(record.getMessage())
        if slow is not None and not self.closed:
            self.found.append(slow)


@asynccontextmanager
async def slow_callbacks(threshold_s: float = 0.01) -> AsyncIterator[list[SlowCallback]]:
    """asyncio debug mode on the running loop for the block: every step of a task or callback that kept the loop longer
    than `threshold_s` (`loop.slow_callback_duration`) is logged by asyncio; the block's list collects them, parsed."""
    loop = asyncio.get_running_loop()
    found: list[SlowCallback] = []
    handler = _Collect(found)
    logger = logging.getLogger("asyncio")
    debug, duration, propagate = loop.get_debug(), loop.slow_callback_duration, logger.propagate
    loop.set_debug(True)
    loop.slow_callback_duration = threshold_s
    logger.addHandler(handler)
    logger.propagate = False  # parsed here, not printed as a wall of text
    try:
        await asyncio.sleep(0)  # the block starts in a new step, timed from its start (debug mode is on now)
        yield found
        await asyncio.sleep(0)  # let the last step finish and be timed inside the block
    finally:
        loop.slow_callback_duration = duration
        loop.set_debug(debug)
        handler.closed = True  # the step running this line is still timed: its warning is swallowed, not printed

        def detach() -> None:
            logger.removeHandler(handler)
            logger.propagate = propagate

        loop.call_soon(detach)


async def profile_request(client: Any, url: str, interval_s: float = 0.001) -> Any:
    """GET `url` once under pyinstrument (async mode: time awaited is charged to the awaiting line); the Session."""
    from pyinstrument import Profiler

    profiler = Profiler(interval=interval_s, async_mode="enabled")
    profiler.start()
    try:
        await client.get(url)
    finally:
        profiler.stop()
    return profiler.last_session


@dataclass(frozen=True)
class FrameRow:
    """One function of a profile: its time in itself (self) and under it (total), in ms."""

    function: str
    where: str
    self_ms: float
    total_ms: float
    library: bool
    code: str = ""  # the source line itself, when the profiler gives the line being run (py-spy)


@dataclass
class FrameTable:
    """The top functions of a profile by their own time, as a short table."""

    rows: list[FrameRow]
    duration_ms: float
    title: str = ""

    def __repr__(self) -> str:
        lines = [f"{self.title or 'profile'}: {self.duration_ms:.1f} ms",
                 f"{'self ms':>8} {'share':>6} {'total ms':>9}  function (where)"]
        for r in self.rows:
            share = r.self_ms / self.duration_ms if self.duration_ms else 0
            lines.append(f"{r.self_ms:8.1f} {share:6.0%} {r.total_ms:9.1f}  {r.function} ({r.where})")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        body = "".join(
            f"<tr><td align='right'>{r.self_ms:.1f}</td>"
            f"<td align='right'>{(r.self_ms / self.duration_ms if self.duration_ms else 0):.0%}</td>"
            f"<td align='right'>{r.total_ms:.1f}</td><td align='left'><code>{html.escape(r.function)}</code></td>"
            f"<td align='left'><code>{html.escape(r.where)}</code>{'' if r.library else ' ← your code'}</td></tr>"
            for r in self.rows)
        return (f"<p><b>{html.escape(self.title or 'profile')}</b>: {self.duration_ms:.1f} ms</p><table><tr>"
                f"<th>self ms</th><th>share</th><th>total ms</th><th>function</th><th>where</th></tr>{body}</table>")


def _frame_key(frame: Any) -> tuple[str, str]:
    path = _short_path(frame.file_path_short or frame.file_path or "?")
    line = f":{frame.line_no}" if frame.line_no else ""
    return frame.function or "?", f"{path}{line}"


def _own_time(frame: Any) -> float:
    """A frame's time not spent in a real (non-synthetic) child: its [self], [await] and the like."""
    return frame.time - sum(child.time for child in frame.children if not _synthetic(child))


def _synthetic(frame: Any) -> bool:
    return (frame.function or "").startswith("[")


def top_frames(session: Any, n: int = 8, title: str = "") -> FrameTable:
    """The `n` functions of a pyinstrument session with the most time of their own (a line's cost, not its callers')."""
    own: dict[tuple[str, str], float] = {}
    total: dict[tuple[str, str], float] = {}
    library: dict[tuple[str, str], bool] = {}

    def walk(frame: Any, above: frozenset[tuple[str, str]]) -> None:
        if _synthetic(frame):
            return
        key = _frame_key(frame)
        own[key] = own.get(key, 0.0) + _own_time(frame)
        if key not in above:  # recursion: count the outermost call's total once
            total[key] = total.get(key, 0.0) + frame.time
        library[key] = not frame.is_application_code
        for child in frame.children:
            walk(child, above | {key})

    root = session.root_frame() if session is not None else None
    if root is not None:
        walk(root, frozenset())
    ranked = sorted(own, key=lambda k: -own[k])[:n]
    rows = [FrameRow(k[0], k[1], own[k] * 1000, total[k] * 1000, library[k]) for k in ranked]
    return FrameTable(rows, (root.time if root is not None else 0.0) * 1000, title)


def time_share(session: Any, *where: str) -> float:
    """Share (0-1) of a profile's time spent inside functions whose file path or name contains any of `where`
    (e.g. "fastapi/encoders.py", "sleep"), counted once at the outermost such frame."""
    root = session.root_frame() if session is not None else None
    if root is None or root.time <= 0:
        return 0.0

    def inside(frame: Any) -> float:
        text = f"{frame.file_path or ''} {frame.function or ''}"
        if not _synthetic(frame) and any(w in text for w in where):
            return frame.time
        return sum(inside(child) for child in frame.children)

    return inside(root) / root.time


def call_tree(session: Any, lines: int = 24) -> str:
    """pyinstrument's own call tree of a session as text (library frames folded), cut to its first `lines` lines."""
    from pyinstrument.renderers import ConsoleRenderer

    return head(without_header(ConsoleRenderer(unicode=True, color=False).render(session)), lines)


def without_header(profile_text: str) -> str:
    """A pyinstrument text profile without its logo and header: from the first line of the call tree."""
    return profile_text.split("Profile at", 1)[-1].split("\n", 1)[-1]


def head(text: str, lines: int = 24) -> str:
    """The first `lines` non-blank lines of `text`, and how many were left out."""
    kept = [line for line in text.splitlines() if line.strip()]
    more = len(kept) - lines
    return "\n".join(kept[:lines] + ([f"… {more} more lines"] if more > 0 else []))


async def loop_lag_during(client: Any, url: str, tick_s: float = 0.001) -> tuple[float, int]:
    """How late the event loop runs a `tick_s` timer, at worst, while one GET `url` is in flight (ms), and how many
    ticks ran: every other request on this loop (worker) waits at least that long."""
    request = asyncio.ensure_future(client.get(url))
    worst, ticks = 0.0, 0
    while not request.done():
        asked = time.perf_counter()
        await asyncio.sleep(tick_s)
        worst = max(worst, (time.perf_counter() - asked - tick_s) * 1000)
        ticks += 1
    await request
    return worst, ticks


async def ping_while(base_url: str, slow_path: str, fast_path: str = "/ping", rounds: int = 3) -> tuple[float, float]:
    """On a real server: median ms of GET `fast_path` alone, and sent 20 ms after a GET `slow_path` (in flight)."""
    import httpx

    alone, during = [], []
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as fast, \
            httpx.AsyncClient(base_url=base_url, timeout=60) as slow:
        await fast.get(fast_path)
        for _ in range(rounds):
            started = time.perf_counter()
            await fast.get(fast_path)
            alone.append((time.perf_counter() - started) * 1000)
            pending = asyncio.ensure_future(slow.get(slow_path))
            await asyncio.sleep(0.02)
            started = time.perf_counter()
            await fast.get(fast_path)
            during.append((time.perf_counter() - started) * 1000)
            await pending
    return sorted(alone)[len(alone) // 2], sorted(during)[len(during) // 2]


class ProfilerMiddleware:
    """Pure ASGI middleware: a request with `?profile=1` is run under pyinstrument and answered with the profile
    (HTML; `?profile=text` for text) instead of its response; every other request passes through untouched."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        query = dict(p.split("=", 1) if "=" in p else (p, "") for p in scope.get("query_string", b"").decode().split("&"))
        mode = query.get("profile")
        if mode not in ("1", "text"):
            await self.app(scope, receive, send)
            return
        from pyinstrument import Profiler

        async def swallow(message: dict[str, Any]) -> None:  # the profiled response is not sent
            return None

        profiler = Profiler(interval=0.001, async_mode="enabled")
        profiler.start()
        try:
            await self.app(scope, receive, swallow)
        finally:
            profiler.stop()
        if mode == "text":
            body, kind = profiler.output_text(unicode=True, color=False).encode(), b"text/plain; charset=utf-8"
        else:
            body, kind = profiler.output_html().encode(), b"text/html; charset=utf-8"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


@dataclass(frozen=True)
class RequestCost:
    """One request measured from outside: wall time, the process's CPU time, and the response's size."""

    wall_ms: float
    cpu_ms: float
    status: int
    size: int

    @property
    def cpu_share(self) -> float:
        """CPU time / wall time: near 1 when the request computes, near 0 when it waits (sleeps, I/O)."""
        return self.cpu_ms / self.wall_ms if self.wall_ms else 0.0


async def request_cost(client: Any, url: str) -> RequestCost:
    """GET `url` once: wall time, CPU time of this whole process (every thread) and body size."""
    cpu, wall = time.process_time(), time.perf_counter()
    response = await client.get(url)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return RequestCost(wall * 1000, cpu * 1000, response.status_code, len(response.content))


async def concurrent_seconds(client: Any, url: str, concurrency: int = 6) -> float:
    """Wall seconds for `concurrency` simultaneous GETs of `url`."""
    started = time.perf_counter()
    await asyncio.gather(*(client.get(url) for _ in range(concurrency)))
    return time.perf_counter() - started


# --- py-spy: a sampling profiler that reads a running process from outside ---------------------------------

def py_spy() -> str | None:
    """The py-spy executable (next to this Python, else on PATH), or None."""
    here = Path(sys.executable).with_name("py-spy")
    return str(here) if here.exists() else shutil.which("py-spy")


def ptrace_status(pid: int | None = None) -> tuple[bool, str]:
    """Can py-spy read another process here? (allowed, why): it needs ptrace, which containers often forbid."""
    exe = py_spy()
    if exe is None:
        return False, "py-spy is not installed (pip install py-spy)"
    scope_file = Path("/proc/sys/kernel/yama/ptrace_scope")
    scope = scope_file.read_text().strip() if scope_file.exists() else "absent"
    caps = 0
    for line in Path("/proc/self/status").read_text().splitlines() if Path("/proc/self/status").exists() else []:
        if line.startswith("CapEff:"):
            caps = int(line.split()[1], 16)
    has_cap = bool(caps & (1 << 19))  # CAP_SYS_PTRACE
    facts = f"Yama ptrace_scope {scope}, CAP_SYS_PTRACE {'yes' if has_cap else 'no'}, uid {os.getuid()}"
    if pid is not None:
        probe = subprocess.run([exe, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30)
        if probe.returncode != 0:
            return False, f"py-spy dump failed ({facts}): {(probe.stderr or probe.stdout).strip()[:200]}"
        return True, f"py-spy can read process {pid} ({facts})"
    if scope == "3" or (scope == "2" and not has_cap):
        return False, f"ptrace is restricted ({facts})"
    if scope == "1" and not has_cap:
        return False, (f"ptrace is allowed only on a process's own descendants ({facts}): start the server under "
                       "py-spy (`py-spy record -o x.json -- python -m uvicorn ...`) or run py-spy with sudo")
    return True, f"ptrace should be allowed ({facts})"


def py_spy_dump(pid: int) -> str:
    """`py-spy dump --pid PID`: every thread's current Python stack, once."""
    exe = py_spy() or "py-spy"
    done = subprocess.run([exe, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30)
    return re.sub(r"\x1b\[[0-9;]*m", "", done.stdout if done.returncode == 0 else done.stderr)  # no colours


def thread_stack(dump: str, name: str = "MainThread") -> str:
    """The stack of the thread called `name` in a `py-spy dump` (the event loop's thread under uvicorn)."""
    for block in dump.split("\nThread ")[1:]:
        if f'"{name}"' in block.splitlines()[0]:
            return "Thread " + block.strip()
    return dump.strip()


def py_spy_record(pid: int, out: str | Path, seconds: float = 2.0, rate: int = 200,
                  idle: bool = True) -> subprocess.Popen[str]:
    """Start `py-spy record --format speedscope` on PID for `seconds` (returns the running process; wait for it).
    `idle=True` (`--idle`) keeps the samples of threads that wait, so a blocking wait shows, not only CPU."""
    exe = py_spy() or "py-spy"
    command = [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", str(rate),
               "--format", "speedscope", "--output", str(out), "--nonblocking"] + (["--idle"] if idle else [])
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def speedscope_top(path: str | Path, n: int = 8, title: str = "", thread: str = "") -> FrameTable:
    """The top functions of a py-spy speedscope file by samples where they were the running (innermost) frame; only
    the threads whose name contains `thread` (e.g. "MainThread", where uvicorn runs the event loop) if given."""
    document = json.loads(Path(path).read_text())
    frames = document["shared"]["frames"]
    own: dict[int, float] = {}
    total: dict[int, float] = {}
    duration = 0.0
    for profile in document["profiles"]:
        if thread and thread not in str(profile.get("name", "")):
            continue
        for stack, weight in zip(profile["samples"], profile["weights"], strict=False):
            duration += weight
            if stack:
                own[stack[-1]] = own.get(stack[-1], 0.0) + weight
            for index in set(stack):
                total[index] = total.get(index, 0.0) + weight
    ranked = sorted(own, key=lambda i: -own[i])[:n]
    rows = []
    for i in ranked:
        file, line = str(frames[i].get("file", "?")), frames[i].get("line") or 0
        rows.append(FrameRow(frames[i]["name"], f"{_short_path(file)}:{line}", own[i] * 1000, total[i] * 1000,
                             "site-packages" in file or "/lib/python3" in file,
                             linecache.getline(file, int(line)).strip() if line else ""))
    return FrameTable(rows, duration * 1000, title or f"py-spy samples ({thread or 'all threads'})")


# --- the lesson's demo: a report endpoint with two hidden costs ---------------------------------------------

def fetch_exchange_rate(delay_s: float = 0.04) -> float:
    """A call to a rates service through a synchronous HTTP client (simulated: it waits `delay_s`); counted."""
    with _RATE_LOCK:
        _RATES.calls += 1
        _RATES.in_flight += 1
        _RATES.peak = max(_RATES.peak, _RATES.in_flight)
    try:
        time.sleep(delay_s)
    finally:
        with _RATE_LOCK:
            _RATES.in_flight -= 1
    return 1.08


def make_report_app(db: DemoDB, items: int = 1000, delay_s: float = 0.04, lifespan: Any = None) -> FastAPI:
    """GET /report: the latest `items` posts with a price in euros; slow, and the lesson finds out why."""
    app = FastAPI(title="Reports (slow)", lifespan=lifespan)
    get_db = db.dependency()

    @app.get("/report")
    async def report(session: Session = Depends(get_db)):  # no return type: on purpose
        rate = fetch_exchange_rate(delay_s)
        posts = session.scalars(select(Post).order_by(Post.id.desc()).limit(items)).all()
        return [PostDetail.model_validate(p).model_copy(update={"likes": int(p.likes * rate)}) for p in posts]

    @app.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    return app


def make_fixed_report_app(db: DemoDB, items: int = 1000, delay_s: float = 0.04) -> FastAPI:
    """The same report, fixed where the profile pointed: a `def` route (the wait runs in the thread pool) with a
    declared return type (pydantic-core serializes in one pass)."""
    app = FastAPI(title="Reports (fixed)")
    get_db = db.dependency()

    @app.get("/report")
    def report(session: Session = Depends(get_db)) -> list[PostDetail]:
        rate = fetch_exchange_rate(delay_s)
        posts = session.scalars(select(Post).order_by(Post.id.desc()).limit(items)).all()
        return [PostDetail.model_validate(p).model_copy(update={"likes": int(p.likes * rate)}) for p in posts]

    @app.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    return app


_SERVED: dict[str, Any] = {}


_LOOP_AT_STARTUP: dict[str, Any] = {}


@asynccontextmanager
async def _debug_mode_from_environment(app: Any) -> AsyncIterator[None]:
    """At startup: turn asyncio debug mode on when PYTHONASYNCIODEBUG is set, and set the slow-callback threshold from
    LAB_SLOW_CALLBACK_S. uvicorn on Python 3.11 starts its loop with `debug=False`, which overrides the variable
    (its `asyncio_run` backport; Python 3.12's `asyncio.run` leaves it alone): `/loop` reports what startup found."""
    loop = asyncio.get_running_loop()
    _LOOP_AT_STARTUP["debug"] = loop.get_debug()
    if os.environ.get("PYTHONASYNCIODEBUG"):
        loop.set_debug(True)
    loop.slow_callback_duration = float(os.environ.get("LAB_SLOW_CALLBACK_S", "0.1"))
    yield


def __getattr__(name: str) -> Any:
    """`served_app`: the report app behind ProfilerMiddleware on its own demo database, built on first use (so that
    `uvicorn course_lib.lessons.l10_diagnose:served_app` can serve it while importing this module stays cheap)."""
    if name != "served_app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if "app" not in _SERVED:
        db = make_demo_db(users=200, posts_per_user=10, seed=11)
        app = make_report_app(db, lifespan=_debug_mode_from_environment)

        @app.get("/loop")
        async def loop_settings() -> dict[str, Any]:
            loop = asyncio.get_running_loop()
            return {"python": sys.version.split()[0], "debug_at_startup": _LOOP_AT_STARTUP.get("debug"),
                    "debug": loop.get_debug(), "slow_callback_duration": loop.slow_callback_duration}

        _SERVED["db"], _SERVED["app"] = db, ProfilerMiddleware(app)
    return _SERVED["app"]


# --- mystery apps: one hidden bottleneck each, drawn at random ---------------------------------------------

KINDS = ("n_plus_one", "missing_index", "blocking_call", "no_pooling", "slow_serialization", "unbounded_list")

KIND_SIGNS = {
    "n_plus_one": "one request sends 1 + N statements, the same SELECT repeated once per row (count the queries)",
    "missing_index": "one SELECT filtering with WHERE on a column, and its plan reads the whole table (explain it)",
    "blocking_call": "the event loop is held for tens of ms while the process's CPU idles: a blocking wait inside "
                     "`async def` (asyncio debug mode, CPU time vs wall time, concurrent requests queue)",
    "no_pooling": "every request opens a new database connection, even when warm (count connections per request)",
    "slow_serialization": "one query, a bounded response, and most of the time is CPU spent encoding the response "
                          "(a profile shows fastapi/encoders.py: no declared return type)",
    "unbounded_list": "the response grows with the table: four times the rows, four times the bytes (compare sizes "
                      "at two table sizes)",
}

_ROUTE_WORDS = ("feed", "digest", "timeline", "inbox", "board", "stream", "wall", "ledger", "roster", "latest",
                "summary", "highlights", "catalog", "overview", "journal", "bulletin")
BASE_USERS = (150, 300)  # a mystery's users at scale 1 are drawn from this range; 10 posts each, more than any page


_HIDDEN = "(hidden in 10.diagnose: the grader wants what you measure, not what you read)"


@dataclass(frozen=True)
class Mystery:
    """A slow app whose bottleneck is hidden. `make_app(db)` builds it on a database from `database(scale)`;
    `url(db)` is the slow request to examine on that database; `path` its route and `limit` the rows it answers
    (None when a query parameter or the table decides); `source` its code (hidden in 10.diagnose)."""

    make_app: Callable[[DemoDB], FastAPI]
    path: str
    seed: int
    base_users: int = 200
    _email_query: bool = field(default=False, repr=False)
    limit: int | None = None
    source: str = field(default=_HIDDEN, repr=False)

    def database(self, scale: float = 1) -> DemoDB:
        """A fresh demo database of `scale` × base_users users × 10 posts each (1 ≤ scale ≤ 20); close it after use
        (`with mystery.database(4) as db:`)."""
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not 1 <= scale <= 20:
            raise ValueError(f"scale must be a number from 1 to 20, not {scale!r}")
        return make_demo_db(users=round(self.base_users * scale), posts_per_user=10, seed=self.seed)

    def url(self, db: DemoDB) -> str:
        """The slow request on `db` (path and query string)."""
        return self.path if not self._email_query else self.url_for_user(db, None)

    def url_for_user(self, db: DemoDB, user_id: int | None) -> str:
        """For a mystery that looks a user up by `?email=`: the URL of user `user_id` (None: the one `url` uses)."""
        with db.session() as session:
            if user_id is None:
                users = session.scalar(select(User.id).order_by(User.id.desc()).limit(1)) or 1
                user_id = (users * 2) // 3 + 1
            email = session.scalar(select(User.email).where(User.id == user_id))
        return f"{self.path}?email={email}"

    def __repr__(self) -> str:
        return f"Mystery(GET {self.path})"


@dataclass
class RateCalls:
    """Calls of `fetch_exchange_rate`: how many, how many run right now, and the most that ever ran at once."""

    calls: int = 0
    in_flight: int = 0
    peak: int = 0


_RATES = RateCalls()
_RATE_LOCK = threading.Lock()


@contextmanager
def count_rate_calls() -> Iterator[RateCalls]:
    """The calls of `fetch_exchange_rate` made in the block, and the most that ran at the same time (`peak`): 1 when
    the event loop runs them one after the other, more when they wait in threads side by side."""
    with _RATE_LOCK:
        start, _RATES.peak = _RATES.calls, _RATES.in_flight
    seen = RateCalls()
    try:
        yield seen
    finally:
        with _RATE_LOCK:
            seen.calls, seen.peak = _RATES.calls - start, _RATES.peak


# One module per kind, as a developer would have written it; `{route}` and `{limit}` are drawn per mystery.
_HEADER = """\
from typing import Any

from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from course_lib.db import DemoDB, Post, User, thread_safe_connect_args
from course_lib.lessons.l10_diagnose import (
    PostDetail, PostOut, RatedPosts, UserOut, UserWithPosts, fetch_exchange_rate,
)


def make_app(db: DemoDB) -> FastAPI:
    app = FastAPI(title="mystery")
    get_db = db.dependency()
"""

_HANDLERS = {
    "n_plus_one": """
    @app.get("{route}", response_model=list[UserWithPosts])
    def handler(session: Session = Depends(get_db)) -> Any:
        return session.scalars(select(User).order_by(User.id).limit({limit})).all()
""",
    "missing_index": """
    @app.get("{route}")
    def handler(email: str, session: Session = Depends(get_db)) -> UserOut:
        found = session.scalars(select(User).where(User.email == email)).first()
        if found is None:
            raise HTTPException(404, "no such user")
        return UserOut.model_validate(found)
""",
    "blocking_call": """
    @app.get("{route}")
    async def handler(session: Session = Depends(get_db)) -> RatedPosts:
        rate = fetch_exchange_rate()  # the rates service, through a synchronous client
        posts = session.scalars(select(Post).order_by(Post.id).limit({limit})).all()
        return RatedPosts(rate=rate, posts=[PostOut.model_validate(p) for p in posts])
""",
    "no_pooling": """
    @app.get("{route}")
    def handler() -> list[PostOut]:
        engine = create_engine(db.url, poolclass=NullPool, connect_args=thread_safe_connect_args(db.url))
        try:
            with Session(engine) as session:
                return [PostOut.model_validate(p) for p in
                        session.scalars(select(Post).order_by(Post.id).limit({limit})).all()]
        finally:
            engine.dispose()
""",
    "slow_serialization": """
    @app.get("{route}")
    def handler(session: Session = Depends(get_db)):
        posts = session.scalars(select(Post).order_by(Post.id).limit({limit})).all()
        return [PostDetail.model_validate(p) for p in posts]
""",
    "unbounded_list": """
    @app.get("{route}")
    def handler(session: Session = Depends(get_db)) -> list[PostOut]:
        return [PostOut.model_validate(p) for p in session.scalars(select(Post).order_by(Post.id)).all()]
""",
}


def mystery_source(kind: str, route: str, limit: int | None) -> str:
    """The code of a mystery app of `kind` serving `route` (`limit` rows where the kind pages)."""
    if kind not in _HANDLERS:
        raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
    return _HEADER + _HANDLERS[kind].format(route=route, limit=limit) + "\n    return app\n"


def _load_factory(source: str, route: str) -> Callable[[DemoDB], FastAPI]:
    """`make_app` of a mystery's source, compiled under a file name that profiles and tracebacks can show."""
    filename = f"<mystery {route}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    namespace: dict[str, Any] = {"__name__": f"mystery_{route.strip('/').replace('-', '_')}"}
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - the course's own template, not input
    return namespace["make_app"]


def _mystery(kind: str, rng: random.Random, show_source: bool) -> Mystery:
    """A mystery of one kind: route name, sizes and database seed drawn from `rng`."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
    route = "/" + rng.choice(_ROUTE_WORDS) + "-" + "".join(rng.choice("abcdefghjkmnpqrstuvwxyz") for _ in range(4))
    limit = {"n_plus_one": rng.randrange(12, 30), "blocking_call": rng.randrange(15, 40),
             "no_pooling": rng.randrange(15, 40),
             # ≤ the posts of any database (≥ 1,500): the page is bounded
             "slow_serialization": rng.randrange(900, 1400)}.get(kind)
    source = mystery_source(kind, route, limit)
    return Mystery(_load_factory(source, route), route, rng.randrange(1_000_000), rng.randrange(*BASE_USERS),
                   kind == "missing_index", limit, source if show_source else _HIDDEN)


def draw_mysteries(rng: random.Random | None = None, kinds: tuple[str, ...] = KINDS,
                   show_source: bool = True) -> list[tuple[str, Mystery]]:
    """One mystery app per kind in `kinds`, in random order, with random routes, page sizes and databases:
    (kind, app). `show_source=False` hides their code (as 10.diagnose does)."""
    rng = rng or random.Random()
    drawn = list(kinds)
    rng.shuffle(drawn)
    return [(kind, _mystery(kind, rng, show_source)) for kind in drawn]


async def observe_kind_signs(rng: random.Random | None = None) -> dict[str, dict[str, Any]]:
    """For one mystery of each kind: the exact signals that tell the kinds apart (connections and statements of a warm
    request, bytes at scale 4 / scale 1, whether a filtered SELECT reads a whole table). For tests and instructors."""
    signs: dict[str, dict[str, Any]] = {}
    for kind, mystery in draw_mysteries(rng):
        with mystery.database(1) as small, mystery.database(4) as large:
            async with app_client(mystery.make_app(small)) as client:
                small_size = len((await client.get(mystery.url(small))).content)
            async with app_client(mystery.make_app(large)) as client:
                url = mystery.url(large)
                await client.get(url)
                with count_connections() as connections, count_queries(large.engine) as queries:
                    size = len((await client.get(url)).content)
                plans = await statement_plans(client, large, url)
        signs[kind] = {"connections": connections.count, "queries": queries.count, "growth": size / small_size,
                       "filtered_scan": any(re.search(r"\bWHERE\b", sql, re.I) and plan.full_scans
                                            for sql, plan in plans)}
    return signs


# --- the grader ---------------------------------------------------------------------------------------------

def _verdict(value: Any, checking: Checking, mystery: Mystery) -> tuple[str, str]:
    """(kind, evidence) from what diagnose returned: a pair, or a dict with "kind" and "evidence"."""
    if isinstance(value, dict):
        value = (value.get("kind"), value.get("evidence"))
    if isinstance(value, str) or not isinstance(value, tuple | list) or len(value) != 2:
        checking.fail(f"for {mystery!r}, diagnose returned {_shown(value)}; expected a pair (kind, evidence), e.g. "
                      "(\"n_plus_one\", \"41 statements for one request\")")
    kind, evidence = value
    checking.expect(kind in KINDS, f"for {mystery!r}, diagnose named the kind {_shown(kind)}; expected one of "
                                   f"{', '.join(KINDS)}")
    checking.expect(isinstance(evidence, str) and evidence.strip() != "",
                    f"for {mystery!r}, diagnose said {kind!r} with the evidence {_shown(evidence)}: say what you "
                    "measured (a sentence with the figure that shows it)")
    return kind, evidence.strip()


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:79] + "…"


@exercise(
    "10.diagnose",
    title="Name the bottleneck of an app you have never seen",
    expects="a function diagnose(mystery) (async or not) returning (kind, evidence): kind one of " + ", ".join(KINDS)
            + "; evidence a sentence with the figure you measured",
    hints=(
        "Measure before you guess, cheapest and most exact first: for one request (after a warm-up one) count the "
        "statements it sends and the database connections it opens; then compare the response size on two table "
        "sizes (`mystery.database(1)` and `mystery.database(4)`); only then look at where the time goes (plans of "
        "the statements with a WHERE, whether the event loop was held while the CPU idled, what a profile blames). "
        "Wall time alone names nothing: every mystery is slow.",
        "Tools from the lesson, one per question: `count_queries(db.engine)`, `count_connections()`, "
        "`request_cost(client, url)` (wall ms, CPU ms, bytes), `statement_plans(client, db, url)` (each plan's "
        "`.full_scans`), `slow_callbacks()` (asyncio debug mode), `count_encoder_calls()` (a response encoded item by "
        "item), `profile_request` with `time_share(session, \"fastapi/encoders.py\")`. A full scan is only a "
        "missing index when the statement filters (WHERE); a held loop is a blocking call only when the CPU was idle "
        "(CPU ms ≪ wall ms).",
        "Shape: `async def diagnose(mystery):` / `with mystery.database(1) as small, mystery.database(4) as large:` / "
        "`async with app_client(mystery.make_app(large)) as client:` / `url = mystery.url(large)`; "
        "`await client.get(url)` (warm up) / `with count_connections() as conns, count_queries(large.engine) as q: "
        "cost = await request_cost(client, url)` / `if conns.count >= 1: return \"no_pooling\", f\"...\"` / "
        "`if q.count > ____: return \"n_plus_one\", ...` / sizes: `if cost.size > ____ * small_cost.size: ...` / "
        "`plans`: a WHERE with `plan.full_scans` → ____ / `cost.cpu_share < ____` → ____ / else ____.",
    ),
    timeout=180,
)
async def check_diagnose(diagnose: Any, checking: Checking) -> str:
    """One mystery app per kind, shuffled, with random routes, sizes and delays: every verdict must name its kind."""
    checking.require_callable(diagnose, "a function diagnose(mystery)")
    drawn = draw_mysteries(random.Random(), show_source=False)
    wrong: list[str] = []
    said_kinds: list[str] = []
    for kind, mystery in drawn:
        value = diagnose(mystery)
        if inspect.isawaitable(value):
            value = await value
        said, evidence = _verdict(value, checking, mystery)
        said_kinds.append(said)
        if said != kind:
            wrong.append(f"{mystery!r}: you said {said!r} ({evidence[:120]}), but its bottleneck is {kind!r}: "
                         f"{KIND_SIGNS[kind]}.")
            if len(wrong) == 3:  # enough to teach (and to see a fixed verdict); the rest would only cost time
                break
    right = len(said_kinds) - len(wrong)
    checking.record("right", right)
    checking.record("mysteries", len(drawn))
    if wrong:
        same = len(said_kinds) >= 3 and len(set(said_kinds)) == 1
        checking.fail(f"{right} right of the {len(said_kinds)} mystery apps examined (one app of each of the "
                      f"{len(KINDS)} kinds per run, shuffled, with random routes and sizes)"
                      + (f"; every verdict was {said_kinds[0]!r}, whatever the app" if same else "")
                      + ". " + " ".join(wrong[:2]) + (" (and one more)" if len(wrong) > 2 else ""))
    return f"all {len(drawn)} mystery apps diagnosed: " + ", ".join(k for k, _ in drawn)


# --- 10.fix: fix a mystery, graded by what the fixed app measures ------------------------------------------

FIX_SCALE = 4  # the fixed app is measured on a database of 4 × the mystery's base size
FIX_CONCURRENCY = 10  # simultaneous requests for the blocking call: the mystery serializes them, a fix overlaps them
FIX_RULES = {
    "n_plus_one": "one request sends at most 3 statements, whatever the page size",
    "missing_index": "no statement of a lookup reads a whole table (its plan)",
    "blocking_call": "concurrent requests wait for fetch_exchange_rate side by side (at least 2 calls at once), "
                     "and each request still calls it once",
    "no_pooling": "a warm request opens no new database connection",
    "slow_serialization": "the response no longer goes through fastapi's jsonable_encoder item by item (fewer than "
                          "10 calls for one response)",
    "unbounded_list": "a page is at most 100 posts, bounded as the table grows, walked by next_cursor to the last "
                      "post, each page read with a bounded query",
}


async def _answers(client: Any, urls: list[str]) -> dict[str, tuple[int, Any]]:
    """Status and JSON body of each URL (the mystery's contract)."""
    found = {}
    for url in urls:
        response = await client.get(url)
        found[url] = (response.status_code, response.json())
    return found


async def _fixed_app(fix: Callable[..., Any], mystery: Mystery, db: DemoDB, checking: Checking) -> FastAPI:
    """Call the learner's fix(mystery, db) (awaiting it if needed) and check it returned an app."""
    app = checking.call(fix, mystery, db)
    if inspect.isawaitable(app):
        app = await app  # what an async fix raises is explained by `grade`, from the learner's own frames
    if app is None or not callable(app) or not hasattr(app, "router"):
        checking.fail(f"for {mystery!r}, fix returned {_shown(app)}, not a FastAPI app: end it with `return app`")
    return app


async def _walk_pages(client: Any, mystery: Mystery, checking: Checking) -> list[dict[str, Any]]:
    """Every item of a paged answer, following next_cursor from `mystery.path` to the last page."""
    items: list[dict[str, Any]] = []
    url, pages = mystery.path, 0
    while True:
        body = await checking.get_json(client, url)
        checking.expect(isinstance(body, dict) and isinstance(body.get("items"), list) and "next_cursor" in body,
                        f"for {mystery!r}, GET {url} answered {_shown(body)}; a page is "
                        '{"items": [...], "next_cursor": "..." or null}, as in lesson 04')
        checking.expect(len(body["items"]) <= 100, f"for {mystery!r}, GET {url} answered {len(body['items'])} "
                        "posts: a page holds at most 100")
        items += body["items"]
        pages += 1
        if body["next_cursor"] is None:
            return items
        checking.expect(pages < 1000 and body["items"], f"for {mystery!r}, next_cursor never ends (or a page is "
                        "empty but has a next_cursor)")
        from urllib.parse import urlencode

        url = f"{mystery.path}?{urlencode({'cursor': body['next_cursor']})}"


def _edit_data(db: DemoDB) -> None:
    """Change what the answers show (titles, names, likes, user 2's email), as other users' writes would."""
    with db.session() as session:
        for post in session.scalars(select(Post).order_by(Post.id).limit(60)):
            post.title, post.likes = post.title + " (edited)", post.likes + 7
        for user in session.scalars(select(User).order_by(User.id).limit(60)):
            user.name = user.name + " Jr."
        moved = session.get(User, 2)
        if moved is not None:  # its old address now finds no one, its new one finds it
            moved.email = f"moved-{uuid.uuid4().hex[:8]}@example.org"
        session.commit()


async def _same_answers(fix: Any, kind: str, mystery: Mystery, db: DemoDB, checking: Checking) -> str:
    """The fixed app answers as the mystery does, before and after the data changes (so nothing is kept stale)."""
    urls = [mystery.url(db)] + ([mystery.url_for_user(db, i) for i in (1, 2)] if mystery._email_query else [])
    app = await _fixed_app(fix, mystery, db, checking)
    async with app_client(mystery.make_app(db)) as reference, app_client(app) as fixed:
        for round_ in ("", " after the data changed"):
            if round_ and mystery._email_query:  # user 2's old address, and its new one (a lookup kept in the
                urls = [*urls, mystery.url_for_user(db, 2)]  # process answers neither as the database does)
            expected = await _answers(reference, [mystery.path] if kind == "unbounded_list" else urls)
            if kind == "unbounded_list":
                _, everything = expected[mystery.path]
                items = await _walk_pages(fixed, mystery, checking)
                checking.expect(items == everything,
                                f"for {mystery!r}, walking your pages{round_} gave {len(items)} posts"
                                f"{'' if len(items) != len(everything) else ' in another order or with other fields'}"
                                f", the mystery answers {len(everything)}: every post once, in the same order "
                                "and fields")
            else:
                for url, (status, body) in expected.items():
                    response = await checking.request(fixed, "GET", url, status=status)
                    checking.expect(status == 404 or checking.json_body(response) == body,  # (a 404's wording aside)
                                    f"for {mystery!r}, GET {url}{round_} answered "
                                    f"{_shown(checking.json_body(response))}; the mystery answers {_shown(body)}: "
                                    "a fix keeps the answer the same, fresh from the database")
            _edit_data(db)
    return "same answers"


async def _measure_fix(fix: Any, kind: str, mystery: Mystery, db: DemoDB, checking: Checking) -> str:
    """The bottleneck's own signal on the mystery and on the fixed app (on `db`, at FIX_SCALE); fail when the fixed
    app still shows it. Returns the figures that prove the fix."""
    url, before_s, mystery_loads = mystery.url(db), 0.0, 0
    async with app_client(mystery.make_app(db)) as client:  # the mystery first: fix() may change the database
        await client.get(url)
        if kind == "blocking_call":
            with count_rate_calls() as rates:
                before_s = await concurrent_seconds(client, url, FIX_CONCURRENCY)
            before = rates.peak
        elif kind == "slow_serialization":
            with count_encoder_calls() as encoded:
                await client.get(url)
            before = encoded.count
        elif kind == "no_pooling":
            with count_connections() as opened:
                for _ in range(3):
                    await client.get(url)
            before = opened.count
        elif kind == "missing_index":
            before = sum(len(plan.full_scans) for _, plan in await statement_plans(client, db, url))
        else:
            with observe_statements(db) as log, _posts_loaded() as loaded:
                await client.get(url)
            before, mystery_loads = log.count, loaded[0]  # the N+1 loads just the posts it answers with
    with observe_statements(db) as log:  # from the start: every connection the fixed app opens is seen
        return await _measure_fixed(fix, kind, mystery, db, checking, before, log, before_s, mystery_loads)


@contextmanager
def _posts_loaded() -> Iterator[list[int]]:
    """Count the Post objects the ORM loads (from rows) while the block runs, in any session."""
    loaded = [0]

    def one(*_: Any) -> None:
        loaded[0] += 1

    with listening(Post, "load", one):
        yield loaded


async def _measure_fixed(fix: Any, kind: str, mystery: Mystery, db: DemoDB, checking: Checking, before: float,
                         log: Any, before_s: float = 0.0, mystery_loads: int = 0) -> str:
    """`_measure_fix`'s second half: the fixed app, every statement it sends recorded in `log`."""
    url = mystery.url(db)
    app = await _fixed_app(fix, mystery, db, checking)
    rule = FIX_RULES[kind]
    async with app_client(app) as client:
        await checking.request(client, "GET", url, status=None)  # warm up
        _, statements = await checking.counted(client, log, "GET", url)
        checking.expect(len(statements) >= 1, f"for {mystery!r}, a request of your fixed app sent no statement to "
                        "the database it was given: build the app on `db` (`db.dependency()` / `db.engine`), and "
                        "read fresh data on every request (no copy kept in the process)")
        if kind == "n_plus_one":
            checking.expect(len(statements) <= 3, f"for {mystery!r}, one request still sends {len(statements)} "
                            f"statements (the mystery: {before}); the rule: {rule}")
            with _posts_loaded() as loaded:
                await checking.request(client, "GET", url, status=None)
            checking.expect(loaded[0] <= mystery_loads, f"for {mystery!r}, one request loaded {loaded[0]:,} "
                            f"posts where the mystery loads the {mystery_loads:,} it answers with: few statements "
                            "but the whole table read and sorted out in Python is not the fix. Load the related "
                            "rows of the page's own rows (selectinload, or a join with the same WHERE and LIMIT).")
            return f"{before} → {len(statements)} statements"
        if kind == "missing_index":
            scans = []
            for user_id in (1, 2, 3):
                plans = await statement_plans(client, db, mystery.url_for_user(db, user_id))
                checking.expect(bool(plans), f"for {mystery!r}, a lookup sent no SELECT through `db.engine`: build "
                                "the app on the database it was given (`db.dependency()`)")
                for sql, plan in plans:
                    scans += [f"{step.detail} for {' '.join(sql.split())[:90]}" for step in plan.full_scans]
            checking.expect(not scans, f"for {mystery!r}, a lookup still reads a whole table: {scans[0] if scans else ''}"
                            f"; the rule: {rule} (an index on the column it filters; create it in fix, before "
                            "building the app, as a migration runs before a deploy)")
            return f"full table scans per lookup: {before} → 0"
        if kind == "blocking_call":
            with count_rate_calls() as rates:
                after = await concurrent_seconds(client, url, FIX_CONCURRENCY)
            checking.expect(rates.calls == FIX_CONCURRENCY, f"for {mystery!r}, {FIX_CONCURRENCY} requests called "
                            f"fetch_exchange_rate {rates.calls} times: the rate is part of each answer and fresh per "
                            "request; keep the call, move it off the event loop")
            checking.expect(rates.peak >= 2, f"for {mystery!r}, {FIX_CONCURRENCY} concurrent requests ran their "
                            f"fetch_exchange_rate calls one at a time (at most {rates.peak} at once; the mystery: "
                            f"{before:.0f}), in {after * 1000:.0f} ms; the rule: {rule}")
            return (f"{FIX_CONCURRENCY} concurrent requests: rates calls at once {before:.0f} → {rates.peak}, "
                    f"{before_s * 1000:.0f} → {after * 1000:.0f} ms")
        if kind == "no_pooling":
            with count_connections() as opened:
                for _ in range(3):
                    await checking.request(client, "GET", url)
            checking.expect(opened.count == 0, f"for {mystery!r}, 3 warm requests opened {opened.count} new "
                            f"connection(s) (the mystery: {before}); the rule: {rule}")
            return f"3 warm requests: {before} → 0 new connections"
        if kind == "slow_serialization":
            with count_encoder_calls() as encoded:
                await checking.request(client, "GET", url)
            checking.expect(encoded.count < 10, f"for {mystery!r}, one response still took {encoded.count:,} calls "
                            f"of fastapi's jsonable_encoder (the mystery: {before:,}); the rule: {rule}")
            return f"jsonable_encoder calls per request: {before:,} → {encoded.count}"
        return await _measure_pages(client, mystery, log, checking)


_BOUNDED = re.compile(r"\b(LIMIT|FETCH\s+(FIRST|NEXT))\b", re.I)


async def _measure_pages(client: Any, mystery: Mystery, log: Any, checking: Checking) -> str:
    """A bounded list: its first page at FIX_SCALE read with a bounded query (no more posts loaded through the ORM
    than it holds, + 1 to know there is more; every statement reading posts cut by LIMIT, for Core queries too);
    the bytes of the whole list at scale 1 and of that page, as figures."""
    loaded = [0]

    def counted(target: Any, context: Any) -> None:
        loaded[0] += 1

    event.listen(Post, "load", counted)
    try:
        first, statements = await checking.counted(client, log, "GET", mystery.path)
    finally:
        event.remove(Post, "load", counted)
    body = checking.json_body(first)
    items = len(body["items"]) if isinstance(body, dict) and isinstance(body.get("items"), list) else 0
    unbounded = [sql for sql in statements if re.search(r"\bFROM\s+\"?posts\b", sql, re.I) and not _BOUNDED.search(sql)]
    checking.expect(loaded[0] <= items + 1 and not unbounded,
                    f"for {mystery!r}, one page of {items} posts "
                    + (f"loaded {loaded[0]} posts from the database" if loaded[0] > items + 1 else
                       f"read posts with `{' '.join(unbounded[0].split())[:100] if unbounded else ''}`, which has no "
                       "LIMIT")
                    + ": read one page (LIMIT), not the table sliced in Python")
    with mystery.database(1) as small:
        async with app_client(mystery.make_app(small)) as reference:
            everything = len((await reference.get(mystery.path)).content)
    return (f"{everything:,} bytes at scale 1 → {len(first.content):,} bytes a page at scale {FIX_SCALE}, "
            f"{loaded[0]} posts loaded")


@exercise(
    "10.fix",
    title="Fix an app you have never seen, and prove it by measuring",
    expects="a function fix(mystery, db) (async or not) that returns a FastAPI app serving the mystery's route on "
            "db, answering the same, without its bottleneck",
    hints=(
        "Diagnose first (your `diagnose` from 10.diagnose), then fix that bottleneck and nothing else: the answers "
        "must stay the same (same JSON, fresh after the data changes: no copy kept in the process), and the grader "
        "measures the signal that named the kind (statements, plans, connections, a held loop, encoder calls, page "
        "sizes). `print(mystery.source)` shows the app's code; `mystery.path` and `mystery.limit` are its route "
        "and page size.",
        "One fix per kind, each from a lesson: N+1 → eager loading (02); missing index → `CREATE INDEX` on "
        "the filtered column, run in fix before you build the app (05, 06); blocking call → a `def` route, or "
        "`await run_in_threadpool(...)` (01); no pooling → the pooled `db.dependency()` (01); slow serialization → "
        "a declared return type (04); unbounded list → keyset pages `{\"items\": [...], \"next_cursor\": ...}` "
        "read with `?cursor=` (04). `draw_mysteries(kinds=(\"n_plus_one\",))` gives you one kind to try.",
        "Shape: `async def fix(mystery, db):` / `kind, _ = await diagnose(mystery)` / `if kind == "
        "\"missing_index\": with db.engine.begin() as conn: conn.execute(text(\"CREATE INDEX IF NOT EXISTS ____ ON "
        "users (____)\"))` / `app = FastAPI(); get_db = db.dependency()` / one `@app.get(mystery.path)` per kind "
        "(copy the mystery's handler from `mystery.source` and change the one thing) / `return app`.",
    ),
    timeout=300,
)
async def check_fix(fix: Any, checking: Checking) -> str:
    """One mystery per kind, shuffled, random routes and sizes: each fixed app answers the same and measures fixed."""
    checking.require_callable(fix, "a function fix(mystery, db)")
    proofs = []
    for kind, mystery in draw_mysteries(random.Random()):
        with mystery.database(1) as small:
            await _same_answers(fix, kind, mystery, small, checking)
        with mystery.database(FIX_SCALE) as large:
            proofs.append(f"{kind}: {await _measure_fix(fix, kind, mystery, large, checking)}")
        checking.record(kind, proofs[-1].split(": ", 1)[1])
    return f"all {len(proofs)} mystery apps fixed, each answering the same and measured at scale {FIX_SCALE}"


# --- benchmark ----------------------------------------------------------------------------------------------

async def _report_figures() -> dict[str, float]:
    """The lesson's headline: the report slow vs fixed, its median time, the worst loop lag during one request, and
    6 concurrent requests / one on each."""
    from ..timing import compare

    with make_demo_db(users=200, posts_per_user=10, seed=11) as db:
        async with app_client(make_report_app(db)) as slow, app_client(make_fixed_report_app(db)) as fixed:
            result = await compare({"slow": lambda: slow.get("/report"), "fixed": lambda: fixed.get("/report")},
                                   n=7, warmup=1)
            lags: dict[str, list[float]] = {"slow": [], "fixed": []}
            for _ in range(3):
                lags["slow"].append((await loop_lag_during(slow, "/report"))[0])
                lags["fixed"].append((await loop_lag_during(fixed, "/report"))[0])
            slow_one, fixed_one = result["slow"].median_ms / 1000, result["fixed"].median_ms / 1000
            slow_six = await concurrent_seconds(slow, "/report", 6)
            fixed_six = await concurrent_seconds(fixed, "/report", 6)
    lag = sorted(lags["slow"])[1] / max(sorted(lags["fixed"])[1], 1e-3)
    return {"ratio": result.ratio, "lag": lag, "slow_lag": sorted(lags["slow"])[1],
            "fixed_lag": sorted(lags["fixed"])[1], "slow_queue": slow_six / slow_one, "fixed_queue": fixed_six / fixed_one}


def bench() -> list[BenchRow]:
    """The report endpoint before and after the fixes the profile pointed to (in-process)."""
    figures = asyncio.run(_report_figures())
    return [
        BenchRow("worst loop lag during one GET /report, slow / fixed (blocking call + untyped serialization on the "
                 "loop)", figures["lag"], "×", "≥ 3×", figures["lag"] >= 3, level="endpoint"),
        BenchRow("worst loop lag during one GET /report, slow app (median of 3)", figures["slow_lag"], "ms",
                 level="endpoint", kind="info"),
        BenchRow("worst loop lag during one GET /report, fixed app (median of 3)", figures["fixed_lag"], "ms",
                 level="endpoint", kind="info"),
        BenchRow("GET /report slow / fixed, median", figures["ratio"], "×", level="endpoint", kind="info"),
        BenchRow("6 concurrent GET /report / one, slow app (the loop serializes them)", figures["slow_queue"], "×",
                 level="endpoint", kind="info"),
        BenchRow("6 concurrent GET /report / one, fixed app", figures["fixed_queue"], "×", level="endpoint",
                 kind="info"),
    ]
