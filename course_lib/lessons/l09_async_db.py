"""Lesson 09: async database access. AsyncSession on aiosqlite/asyncpg, a sync session blocking the event loop,
MissingGreenlet and its fixes, pools against the database's connection limit. Demo apps, helpers, graders, bench."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import math
import os
import random
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict
from sqlalchemy import create_engine, event, select, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import MissingGreenlet
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import selectinload, sessionmaker
from sqlalchemy.pool import NullPool, QueuePool
from sqlalchemy.util.concurrency import await_, in_greenlet
from starlette.concurrency import run_in_threadpool

from ..bench_rows import BenchRow
from ..client import app_client
from ..db import Comment, DemoDB, Post, User, make_demo_db, require_driver, thread_safe_connect_args
from ..events import listening
from ..grading import Checking, LearnerCodeError, _caused_by, exercise
from ..queries import count_queries, observe_statements

__all__ = [
    "LATENCY_MS", "Burst", "PoolWatch", "RoundTrips", "async_url", "burst", "make_async_engine", "make_profile_app",
    "round_trips", "watch_pools", "hold_load", "connection_limit", "drop_connections", "statement_timeout_demo",
    "thread_pools", "sync_or_async", "first_line",
]

LATENCY_MS = 20  # the simulated round trip of one statement (a database in the same data centre)

# A MissingGreenlet leaves the driver's un-awaited cursor coroutine behind; Python warns when it is collected, at a
# random later moment (in whichever cell runs then). The error itself is what the lesson shows: drop the echo.
warnings.filterwarnings("ignore", message="coroutine 'Connection.cursor' was never awaited", category=RuntimeWarning)
_UNRAISABLE_HOOK = sys.unraisablehook


def _quiet_orphan_cursor(unraisable: Any) -> None:
    """Also drop what the orphan coroutine's finalizer may raise ("Exception ignored in <coroutine
    Connection.cursor>", seen once in an unrelated cell's stderr); everything else goes to the previous hook."""
    if inspect.iscoroutine(unraisable.object) and unraisable.object.__qualname__ == "Connection.cursor":
        return
    _UNRAISABLE_HOOK(unraisable)


if getattr(sys.unraisablehook, "__name__", "") != _quiet_orphan_cursor.__name__:  # once, even when reloaded
    sys.unraisablehook = _quiet_orphan_cursor


# --------------------------------------------------------------------------- engines

def async_url(url: str | URL) -> str:
    """The async driver's URL for a course database: SQLite → `sqlite+aiosqlite`, PostgreSQL → `postgresql+asyncpg`."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    drivers = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
    if backend not in drivers:
        raise ValueError(f"no async driver configured for {backend!r} (the course runs on SQLite or PostgreSQL)")
    async_driver = parsed.set(drivername=drivers[backend])
    require_driver(async_driver)
    return async_driver.render_as_string(hide_password=False)


def make_async_engine(db: DemoDB | str, **kwargs: Any) -> AsyncEngine:
    """An AsyncEngine on a demo database (or URL), through its async driver; `kwargs` go to create_async_engine."""
    url = db.url if isinstance(db, DemoDB) else db
    return create_async_engine(async_url(url), **kwargs)


def _target(engine: Engine) -> tuple[str, str]:
    """Which database an engine talks to: (backend, real file path or database name)."""
    url = engine.url
    backend = url.get_backend_name()
    if backend == "sqlite":
        return backend, os.path.realpath(url.database or "")
    return backend, url.database or ""


def first_line(error: BaseException) -> str:
    """The exception's type and the first line of its message (SQLAlchemy's messages run over many lines)."""
    inner = getattr(error, "orig", None) or error
    return f"{type(inner).__name__}: {str(inner).splitlines()[0] if str(inner) else ''}".strip()


# --------------------------------------------------------------------------- simulated round trips, observed

@dataclass
class RoundTrips:
    """What `round_trips` saw: statements sent, how many blocked the event loop's thread, peak in flight."""

    latency_ms: float
    statements: int = 0
    blocking_on_loop: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    threads: set[int] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _start(self, blocking: bool) -> None:
        with self._lock:
            self.statements += 1
            self.blocking_on_loop += blocking
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            self.threads.add(threading.get_ident())

    def _end(self) -> None:
        with self._lock:
            self.in_flight -= 1


def _loop_of_this_thread() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


@contextmanager
def round_trips(db: DemoDB | Engine | AsyncEngine, latency_ms: float = LATENCY_MS) -> Iterator[RoundTrips]:
    """Every statement any engine sends to `db`'s database waits `latency_ms` first, as across a network: an async
    driver awaits (the event loop serves others), a sync driver sleeps in its thread (the loop's own, when it is
    called from `async def`: counted in `blocking_on_loop`)."""
    engine: Any = db.engine if isinstance(db, DemoDB) else db
    target = _target(getattr(engine, "sync_engine", engine))
    seen = RoundTrips(latency_ms)

    def before(conn: Any, *_: Any) -> None:
        if _target(conn.engine) != target:
            return
        if conn.dialect.is_async and in_greenlet():
            seen._start(False)
            try:
                if latency_ms > 0:
                    await_(asyncio.sleep(latency_ms / 1000))
            finally:
                seen._end()
            return
        seen._start(_loop_of_this_thread() is not None)
        try:
            if latency_ms > 0:
                time.sleep(latency_ms / 1000)
        finally:
            seen._end()

    with listening(Engine, "before_cursor_execute", before):
        yield seen


# --------------------------------------------------------------------------- the lesson's app: a user's profile

class PostTitle(BaseModel):
    """One post, by title."""

    model_config = ConfigDict(from_attributes=True)
    id: int
    title: str


class Profile(BaseModel):
    """A user with the titles of their posts."""

    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    posts: list[PostTitle]


ProfileKind = Literal["sync session in async def", "sync def", "AsyncSession"]
PROFILE_KINDS: tuple[ProfileKind, ...] = ("sync session in async def", "sync def", "AsyncSession")


def _profile_query(user_id: int) -> Any:
    return select(User).options(selectinload(User.posts)).where(User.id == user_id)


def make_profile_app(db: DemoDB, kind: ProfileKind, pool_size: int | None = None) -> FastAPI:
    """GET /users/{user_id} → the user and their post titles (2 statements), served three ways; `pool_size`: an
    engine of the app's own with that many connections (no overflow), else the default pool (5 + 10)."""
    pool = {"pool_size": pool_size, "max_overflow": 0} if pool_size else {}
    if kind == "AsyncSession":
        @asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            engine = make_async_engine(db, **pool)
            app.state.sessions = async_sessionmaker(engine, expire_on_commit=False)
            yield
            await engine.dispose()

        app = FastAPI(lifespan=lifespan)

        @app.get("/users/{user_id}", response_model=Profile)
        async def profile_async(user_id: int) -> Any:
            async with app.state.sessions() as session:
                return await session.scalar(_profile_query(user_id))

        return app

    @asynccontextmanager
    async def sync_lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(db.url, connect_args=thread_safe_connect_args(db.url), **pool) if pool else db.engine
        app.state.sessions = sessionmaker(engine, expire_on_commit=False)
        yield
        if engine is not db.engine:
            engine.dispose()

    app = FastAPI(lifespan=sync_lifespan)
    if kind == "sync def":
        @app.get("/users/{user_id}", response_model=Profile)
        def profile_threaded(user_id: int) -> Any:
            with app.state.sessions() as session:
                return Profile.model_validate(session.scalar(_profile_query(user_id)))
    elif kind == "sync session in async def":
        @app.get("/users/{user_id}", response_model=Profile)
        async def profile_blocking(user_id: int) -> Any:
            with app.state.sessions() as session:
                return Profile.model_validate(session.scalar(_profile_query(user_id)))
    else:
        raise ValueError(f"kind must be one of {PROFILE_KINDS}")
    return app


@dataclass
class Burst:
    """A burst of concurrent requests: wall time, status codes, bodies, and the longest event-loop stall."""

    wall_ms: float
    statuses: Counter[int]
    bodies: list[Any]
    longest_stall_ms: float


async def burst(client: httpx.AsyncClient, paths: Sequence[str]) -> Burst:
    """Send every request in `paths` at once; time the whole; watch the event loop with a 1 ms ticker."""
    stalls = [0.0]
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            stalls[0] = max(stalls[0], (now - last) * 1000)
            last = now

    watcher = asyncio.create_task(ticker())
    started = time.perf_counter()
    responses = await asyncio.gather(*(client.get(path) for path in paths))
    wall = (time.perf_counter() - started) * 1000
    stop.set()
    await watcher
    bodies = []
    for r in responses:
        try:
            bodies.append(r.json())
        except ValueError:
            bodies.append(r.text)
    return Burst(wall, Counter(r.status_code for r in responses), bodies, stalls[0])


async def serve_three_ways(db: DemoDB, concurrency: int = 20, latency_ms: float = LATENCY_MS,
                           ) -> dict[ProfileKind, tuple[Burst, RoundTrips]]:
    """The same burst of `concurrency` profile requests against each kind of app, with simulated round trips."""
    out: dict[ProfileKind, tuple[Burst, RoundTrips]] = {}
    paths = [f"/users/{1 + i % max(1, db.counts['users'])}" for i in range(concurrency)]
    for kind in PROFILE_KINDS:
        async with app_client(make_profile_app(db, kind)) as client:
            await burst(client, paths[:3])  # open the pool's connections first
            with round_trips(db, latency_ms) as seen:
                result = await burst(client, paths)
        out[kind] = (result, seen)
    return out


# --------------------------------------------------------------------------- sync or async: measured

async def sync_or_async(db: DemoDB, *, latency_ms: float, concurrency: int, rounds: int = 3,
                        pool_size: int | None = None) -> dict[str, float]:
    """Median wall time (ms) of a burst of profile requests, `sync def` vs `AsyncSession`, interleaved rounds."""
    paths = [f"/users/{1 + i % db.counts['users']}" for i in range(concurrency)]
    walls: dict[str, list[float]] = {"sync def": [], "AsyncSession": []}
    async with app_client(make_profile_app(db, "sync def", pool_size)) as sync_client, \
            app_client(make_profile_app(db, "AsyncSession", pool_size)) as async_client:
        clients = {"sync def": sync_client, "AsyncSession": async_client}
        for client in clients.values():
            await burst(client, paths)  # open the pools' connections first
        with round_trips(db, latency_ms):
            for _ in range(rounds):
                for label, client in clients.items():
                    if concurrency == 1:
                        started = time.perf_counter()
                        for path in paths * 20:
                            await client.get(path)
                        walls[label].append((time.perf_counter() - started) * 1000 / 20)
                    else:
                        walls[label].append((await burst(client, paths)).wall_ms)
    return {label: sorted(values)[len(values) // 2] for label, values in walls.items()}


async def thread_pools(calls: int = 40, ms: float = 50) -> dict[str, float]:
    """Wall time (ms) of `calls` concurrent blocking calls of `ms` each, offloaded by asyncio.to_thread (the loop's
    default executor) and by Starlette's run_in_threadpool (AnyIO's pool, 40 tokens)."""
    def blocking() -> None:
        time.sleep(ms / 1000)

    walls: dict[str, float] = {}
    for label, offload in (("asyncio.to_thread", asyncio.to_thread), ("run_in_threadpool", run_in_threadpool)):
        started = time.perf_counter()
        await asyncio.gather(*(offload(blocking) for _ in range(calls)))
        walls[label] = (time.perf_counter() - started) * 1000
    return walls


# --------------------------------------------------------------------------- pools against the database's limit

@dataclass
class PoolWatch:
    """Connections seen through pool events across some engines: opened, closed, peak open at once."""

    opened: int = 0
    closed: int = 0
    peak_open: int = 0
    checkouts: int = 0
    in_use: dict[int, int] = field(default_factory=dict)  # per pool: connections checked out right now
    peak_in_use: dict[int, int] = field(default_factory=dict)  # per pool: the most checked out at once

    @property
    def open(self) -> int:
        """Connections open right now (the database counts each against its limit)."""
        return self.opened - self.closed


@contextmanager
def watch_pools(engines: Sequence[Engine | AsyncEngine]) -> Iterator[PoolWatch]:
    """Watch the pools of `engines` (pool events): DBAPI connections opened and closed, peak open, checkouts."""
    watch = PoolWatch()
    lock = threading.Lock()

    def on_connect(*_: Any) -> None:
        with lock:
            watch.opened += 1
            watch.peak_open = max(watch.peak_open, watch.open)

    def on_close(*_: Any) -> None:
        with lock:
            watch.closed += 1

    def on_checkout(dbapi_conn: Any, record: Any, proxy: Any, pool: Any = None) -> None:
        with lock:
            watch.checkouts += 1
            watch.in_use[id(pool)] = watch.in_use.get(id(pool), 0) + 1
            watch.peak_in_use[id(pool)] = max(watch.peak_in_use.get(id(pool), 0), watch.in_use[id(pool)])

    def on_checkin(dbapi_conn: Any, record: Any, pool: Any = None) -> None:
        with lock:
            watch.in_use[id(pool)] = watch.in_use.get(id(pool), 0) - 1

    pools = list({id(p): p for p in (getattr(e, "sync_engine", e).pool for e in engines)}.values())
    # connections the pools already hold count too (a QueuePool knows them; a NullPool holds none between uses)
    watch.opened = sum(p.checkedin() + p.checkedout() for p in pools if isinstance(p, QueuePool))
    watch.peak_open = watch.opened
    listeners: list[tuple[Any, str, Callable[..., Any]]] = []
    for pool in pools:
        watch.peak_in_use[id(pool)] = 0
        listeners += [(pool, "connect", on_connect), (pool, "close", on_close), (pool, "close_detached", on_close),
                      (pool, "checkout", functools.partial(on_checkout, pool=pool)),
                      (pool, "checkin", functools.partial(on_checkin, pool=pool))]
    for pool, name, fn in listeners:
        event.listen(pool, name, fn)
    try:
        yield watch
    finally:
        for pool, name, fn in listeners:
            event.remove(pool, name, fn)


@contextmanager
def engines_used(db: DemoDB) -> Iterator[dict[int, Engine]]:
    """Every engine (sync, or an AsyncEngine's sync core) that checks out a connection to `db`'s database in the
    block, by id: a per-request `create_engine` shows up as one more entry per request."""
    target = _target(db.engine)
    seen: dict[int, Engine] = {}

    def on_engine_connect(conn: Any) -> None:
        if _target(conn.engine) == target:
            seen.setdefault(id(conn.engine), conn.engine)

    with listening(Engine, "engine_connect", on_engine_connect):
        yield seen


@dataclass
class LoadOutcome:
    """A load on some engines: requests answered, pool timeouts, other errors, wall time, connections seen."""

    requests: int
    answered: int
    pool_timeouts: int
    errors: list[str]
    wall_ms: float
    pools: PoolWatch


async def hold_load(engines: Sequence[AsyncEngine], per_engine: int, hold_ms: float) -> LoadOutcome:
    """Each engine (one worker's) serves `per_engine` concurrent requests; each checks out a connection, runs
    `SELECT 1` and holds the connection for `hold_ms` (a slow query or work inside a transaction)."""
    timeouts = 0
    errors: list[str] = []
    answered = 0

    async def one(engine: AsyncEngine) -> None:
        nonlocal timeouts, answered
        try:
            async with engine.connect() as conn:
                await conn.execute(select(1))
                await asyncio.sleep(hold_ms / 1000)
            answered += 1
        except PoolTimeoutError:
            timeouts += 1
        except Exception as error:  # a dropped connection, a refused connect: report it, keep measuring
            errors.append(first_line(error))

    with watch_pools(engines) as pools:
        started = time.perf_counter()
        await asyncio.gather(*(one(engine) for engine in engines for _ in range(per_engine)))
        wall = (time.perf_counter() - started) * 1000
    return LoadOutcome(len(engines) * per_engine, answered, timeouts, errors, wall, pools)


def connection_limit(db: DemoDB) -> tuple[int, int, str]:
    """(max_connections, reserved for superusers, where the figures come from) of the lesson's database."""
    if db.engine.dialect.name == "postgresql":
        with db.engine.connect() as conn:
            limit = int(conn.exec_driver_sql("SHOW max_connections").scalar_one())
            reserved = int(conn.exec_driver_sql("SHOW superuser_reserved_connections").scalar_one())
        return limit, reserved, "this PostgreSQL server (`SHOW max_connections`)"
    return 100, 3, "PostgreSQL's defaults (SQLite has no connection limit: each connection opens the file)"


async def drop_connections(db: DemoDB, engine: AsyncEngine) -> int:
    """Play a database restart: close every connection to `db` under the pools that hold them; returns how many.

    PostgreSQL: `pg_terminate_backend` on every other session of the database; SQLite: close each pooled driver
    connection of `engine` underneath SQLAlchemy (what a restart does to a server's sockets)."""
    if db.engine.dialect.name == "postgresql":
        admin = create_engine(db.engine.url, poolclass=NullPool)
        try:
            with admin.connect() as conn:
                pids = conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                         "WHERE datname = current_database() AND pid <> pg_backend_pid()")).all()
                conn.commit()
        finally:
            admin.dispose()
        await asyncio.sleep(0.05)
        return len(pids)
    idle = engine.sync_engine.pool.checkedin() if hasattr(engine.sync_engine.pool, "checkedin") else 0
    async with contextlib.AsyncExitStack() as stack:  # take every idle connection out, close its driver underneath
        for _ in range(idle):
            held: Any = await stack.enter_async_context(engine.connect())
            await (await held.get_raw_connection()).driver_connection.close()
    return idle


async def statement_timeout_demo(db: DemoDB, limit_ms: int = 200) -> tuple[str, float]:
    """A statement that would run for seconds, stopped after `limit_ms`: PostgreSQL's `statement_timeout` (set per
    connection by asyncpg's `server_settings`); SQLite has none, so a timer calls the connection's `interrupt()`.
    Returns (the error it ended with, ms until it ended)."""
    if db.engine.dialect.name == "postgresql":
        engine = make_async_engine(db, connect_args={"server_settings": {"statement_timeout": str(limit_ms)}})
        slow = text("SELECT pg_sleep(5)")
    else:
        engine = make_async_engine(db)
        slow = text("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 50000000) "
                    "SELECT count(*) FROM c")
    try:
        async with engine.connect() as conn:
            timer = None
            if db.engine.dialect.name == "sqlite":
                driver: Any = (await conn.get_raw_connection()).driver_connection
                timer = asyncio.get_running_loop().call_later(limit_ms / 1000, driver._conn.interrupt)
            started = time.perf_counter()
            try:
                await conn.execute(slow)
                outcome = "finished (no limit applied)"
            except Exception as error:  # the limit's own error is the point of the demo
                outcome = first_line(error)
            elapsed = (time.perf_counter() - started) * 1000
            if timer is not None:
                timer.cancel()
    finally:
        await engine.dispose()
    return outcome, elapsed


# --------------------------------------------------------------------------- exercise 09.async-endpoint

ENDPOINT_LATENCY_MS = 100  # long enough that concurrent requests' statements must overlap if nothing blocks
ENDPOINT_CONCURRENCY = 10
MAX_TOP_STATEMENTS = 3  # the posts, their authors, their comments


def expected_top(db: DemoDB, limit: int) -> list[dict[str, Any]]:
    """What GET /posts/top?limit=… must answer, computed with a plain sync session (the grader's truth)."""
    with db.Session() as session:
        posts = session.scalars(select(Post).options(selectinload(Post.author), selectinload(Post.comments))
                                .order_by(Post.likes.desc(), Post.id).limit(limit)).all()
        return [{"id": p.id, "title": p.title, "likes": p.likes, "author": {"id": p.author.id, "name": p.author.name},
                 "comments": [{"author_name": c.author_name, "body": c.body} for c in p.comments]} for p in posts]


async def _send(checking: Checking, client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> Any:
    """One request; a MissingGreenlet anywhere in what the app raised becomes the lesson's explanation."""
    try:
        return await checking.request(client, method, url, status=None, **kwargs)
    except LearnerCodeError as error:
        if _caused_by(error, MissingGreenlet):
            checking.fail(f"{method} {url} raised MissingGreenlet: something read an attribute that was not loaded "
                          "(a lazy relationship, or every attribute after `commit()` with the default "
                          "`expire_on_commit=True`), and an AsyncSession cannot run that query behind an attribute. "
                          "Load what the response needs in the query, and keep objects usable after commit.")
        raise


def _top_shape(body: Any) -> list[dict[str, Any]] | None:
    return body if isinstance(body, list) and all(isinstance(item, dict) for item in body) else None


@exercise(
    "09.async-endpoint",
    title="Top posts on an AsyncSession: never block the loop, never lazy load",
    expects="a function make_app(engine: AsyncEngine) -> FastAPI with GET /posts/top?limit=N and "
            "POST /posts/{post_id}/comments",
    hints=(
        "Look at where each statement runs and how many there are: a sync Session inside `async def` holds the "
        "event loop for every round trip; a relationship read after the query (author, comments) is one more "
        "statement per post, and on an AsyncSession it raises MissingGreenlet; so does any attribute read after "
        "`commit()` unless objects stay loaded.",
        "Tools: `async_sessionmaker(engine, expire_on_commit=False)`, `async with Session() as session`, "
        "`await session.scalars(select(...).options(selectinload(Post.author), selectinload(Post.comments)))`; "
        "for the POST, `session.add(...)` then `await session.commit()`.",
        "Shape: `Session = async_sessionmaker(engine, ...)` once in make_app; GET: `posts = (await "
        "session.scalars(select(Post).options(…, …).order_by(…, Post.id).limit(limit))).all()` then build the "
        "dicts; POST: `comment = Comment(post_id=…, **payload)`, add, commit, return its fields with status 201.",
    ),
    timeout=120,
)
async def check_async_endpoint(make_app: Any, checking: Checking) -> str:
    """Two databases (posts with no comments, posts with several), two limits: bodies equal, statements counted
    at the driver (constant, ≤ 3, all through the given AsyncEngine, no new engine); the POST answers 201 and
    writes the row; 10 concurrent requests with a 100 ms round trip per statement: none on the loop's thread."""
    checking.require_callable(make_app, "a function make_app(engine) that builds the app")
    rng = random.Random()
    for comments_per_post in (0, rng.choice((2, 3))):
        db = make_demo_db(users=rng.randrange(12, 20), posts_per_user=3, comments_per_post=comments_per_post,
                          seed=rng.randrange(1_000_000))
        engine = make_async_engine(db)
        try:
            async with engine.connect() as conn:  # the pool's first connection, before the answer runs
                await conn.execute(select(1))
            app = checking.build_app(make_app, engine)
            await _grade_one_database(checking, db, engine, app, comments_per_post, rng)
        finally:
            await engine.dispose()
            db.close()
    return ("same bodies on both databases, a constant number of statements through your AsyncEngine, no "
            "statement on the event loop's thread")


async def _grade_one_database(checking: Checking, db: DemoDB, engine: AsyncEngine, app: FastAPI,
                              comments_per_post: int, rng: random.Random) -> None:
    data = f"{db.counts['posts']} posts with {comments_per_post} comments each"
    wanted = {limit: expected_top(db, limit) for limit in (3, 11)}
    post_id = rng.choice([post["id"] for post in wanted[3]])  # on the front page: its next GET must show the comment
    payload = {"author_name": f"grader-{rng.randrange(10_000)}", "body": f"note {rng.randrange(10_000)}"}
    async with app_client(app) as client:
        with observe_statements(db) as log, count_queries(engine) as through_engine, engines_used(db) as engines:
            await engine.dispose()  # its pooled connections reconnect observed
            counts: dict[int, int] = {}
            loaded = [0]  # Post objects loaded by the request in flight
            for limit in (3, 11):
                mark = log.mark()
                loaded[0] = 0
                with listening(Post, "load", lambda *_: loaded.__setitem__(0, loaded[0] + 1)):
                    response = await _send(checking, client, "GET", "/posts/top", params={"limit": limit})
                checking.expect(response.status_code == 200, f"GET /posts/top?limit={limit} answered "
                                f"{response.status_code} ({data}): {response.text[:200]}")
                counts[limit] = len(log.since(mark))
                body = _top_shape(checking.json_body(response))
                want = wanted[limit]
                checking.expect(body == want, f"GET /posts/top?limit={limit} ({data}) answered "
                                f"{str(body)[:300]}…; expected the {limit} most-liked posts (ties by id), each with "
                                f"its author and comments, e.g. {str(want[:1])[:300]}")
                checking.expect(loaded[0] <= limit, f"GET /posts/top?limit={limit} ({data}) loaded {loaded[0]} "
                                f"Post objects to answer with {limit}: let the database sort and cut (ORDER BY "
                                "likes DESC, id, LIMIT), not Python, or every request reads the whole table.")
            checking.record(f"statements_{comments_per_post}_comments", counts[11])
            checking.expect(counts[3] == counts[11] and counts[11] <= MAX_TOP_STATEMENTS,
                            f"GET /posts/top ran {counts[3]} statements for 3 posts and {counts[11]} for 11 ({data}): "
                            + ("one more per post, a lazy load (N+1), even if `run_sync` or `awaitable_attrs` "
                               "made it legal on an AsyncSession. " if counts[11] > counts[3] else "")
                            + f"Load authors and comments with the posts: at most {MAX_TOP_STATEMENTS} statements "
                            "whatever the limit.")
            response = await _send(checking, client, "POST", f"/posts/{post_id}/comments", json=payload)
            checking.expect(response.status_code == 201, f"POST /posts/{post_id}/comments answered "
                            f"{response.status_code}, expected 201 Created: {response.text[:200]}")
            created = checking.json_body(response)
            after = await _send(checking, client, "GET", "/posts/top", params={"limit": 3})
            for _ in range(3):  # sequential requests: a pooled engine reuses its connection
                await _send(checking, client, "GET", "/posts/top", params={"limit": 2})
        with db.Session() as session:
            row = session.scalars(select(Comment).where(Comment.post_id == post_id,
                                                        Comment.author_name == payload["author_name"])).first()
        checking.expect(row is not None, f"POST /posts/{post_id}/comments answered 201 but no such comment is "
                        "in the database: was the session committed?")
        fresh = expected_top(db, 3)  # (read here, outside the watch on which engines talk to the database)
        checking.expect(_top_shape(checking.json_body(after)) == fresh,
                        f"after POST /posts/{post_id}/comments (201), GET /posts/top?limit=3 answered "
                        f"{after.text[:300]}…; post {post_id} is on it and now has the new comment: "
                        f"{str([p for p in fresh if p['id'] == post_id])[:300]}. A copy of the answer kept in the "
                        "process goes stale at the first write: read from the database each time.")
        assert row is not None
        want_created = {"id": row.id, "post_id": post_id, **payload}
        checking.expect(isinstance(created, dict) and {k: created.get(k) for k in want_created} == want_created,
                        f"POST /posts/{post_id}/comments answered {str(created)[:200]}; expected the stored "
                        f"comment {want_created}")
        paths = [f"/posts/top?limit={rng.randrange(2, 8)}" for _ in range(ENDPOINT_CONCURRENCY)]
        with round_trips(db, ENDPOINT_LATENCY_MS) as seen:
            result = await burst(client, paths)
    checking.expect(result.statuses == Counter({200: len(paths)}),
                    f"{len(paths)} concurrent GET /posts/top answered {dict(result.statuses)}, expected 200 each")
    checking.record("statements_on_the_loop", seen.blocking_on_loop)
    checking.record("peak_statements_in_flight", seen.peak_in_flight)
    checking.expect(seen.blocking_on_loop == 0,
                    f"{seen.blocking_on_loop} of the {seen.statements} statements of {len(paths)} concurrent requests "
                    "ran on the event loop's own thread through a sync driver: each held every other request for its "
                    f"{ENDPOINT_LATENCY_MS} ms round trip (the burst took {result.wall_ms:,.0f} ms; the loop froze "
                    f"for up to {result.longest_stall_ms:,.0f} ms at a time). Await an AsyncSession instead.")
    checking.expect(seen.peak_in_flight >= 2,
                    f"{len(paths)} concurrent requests never had two statements waiting at once (peak "
                    f"{seen.peak_in_flight}, {result.wall_ms:,.0f} ms in all): something serialises them (a lock, "
                    "one shared connection, a pool of one).")
    foreign = [e for e in engines.values() if e is not engine.sync_engine]
    checking.expect(not foreign, f"{len(foreign)} other engine(s) than the AsyncEngine handed to make_app "
                    f"talked to the database during 7 requests ({data}): "
                    + ("one per request, so every request pays a new connection and nothing is pooled; "
                       if len(foreign) > 1 else "")
                    + "build the app on the engine it is given.")
    checking.expect(through_engine.count == log.count,
                    f"{log.count} statements reached the database but only {through_engine.count} went through "
                    "the AsyncEngine handed to make_app: use it for every statement.")


# --------------------------------------------------------------------------- exercise 09.pool-budget

BUDGET_HOLD_MS = 300  # each request holds its connection this long


@dataclass(frozen=True)
class Budget:
    """One grading run's deployment: workers, the database's limit and reserve, and the load each worker gets."""

    workers: int
    max_connections: int
    reserved: int

    @property
    def available(self) -> int:
        """Connections the application may hold in all: the limit minus the superusers' reserve."""
        return self.max_connections - self.reserved

    @property
    def share(self) -> int:
        """One worker's fair share of the available connections."""
        return self.available // self.workers

    def __str__(self) -> str:
        return (f"{self.workers} workers, max_connections={self.max_connections} with {self.reserved} reserved "
                f"(so {self.available} for the app, {self.share} per worker)")


def draw_budget(rng: random.Random) -> Budget:
    """A deployment drawn at random, so that no fixed pool size fits every run, and drawn again until the usual
    wrong divisions (rounded up, rounded to nearest, the reserve forgotten) give another size than the fair share:
    a grading must not pass them by luck."""
    while True:
        workers = rng.choice((2, 3, 4))
        share = rng.choice((2, 3, 4, 5))
        reserved = rng.choice((2, 3, 5))
        budget = Budget(workers, workers * share + reserved + rng.randrange(workers), reserved)
        if budget.share not in wrong_shares(budget):
            return budget


def wrong_shares(budget: Budget) -> set[int]:
    """The pool sizes of the usual wrong divisions of `budget`: ceil, round, and max_connections // workers."""
    exact = budget.available / budget.workers
    return {math.ceil(exact), round(exact), budget.max_connections // budget.workers}


async def _budget_phase(checking: Checking, engines: list[AsyncEngine], budget: Budget, what: str,
                        full_share: bool = True) -> LoadOutcome:
    outcome = await hold_load(engines, 2 * budget.share, BUDGET_HOLD_MS)
    pools = outcome.pools
    load = (f"{budget.workers} workers × {2 * budget.share} concurrent requests holding a connection "
            f"{BUDGET_HOLD_MS} ms ({what}; {budget})")
    per_worker = max(pools.peak_in_use.values(), default=0)
    checking.expect(pools.peak_open <= budget.available,
                    f"{load}: your engines held {pools.peak_open} connections at once (up to {per_worker} for one "
                    f"worker, whose share is {budget.share}), over the {budget.available} the database leaves to the "
                    "app; the next connection would be refused ('too many clients'). "
                    + (f"None of the {pools.opened} connections opened stayed open for the next request: a pool that "
                       "opens one per checkout and closes it after (NullPool) has no bound and pays a connect per "
                       "request. " if pools.open == 0 else "")
                    + "Every worker has its own pool: pool_size + max_overflow is per worker, and the workers share "
                    "the limit.")
    checking.expect(outcome.pool_timeouts == 0,
                    f"{load}: {outcome.pool_timeouts} of {outcome.requests} requests failed with a pool timeout: "
                    f"a request queued for a connection waits up to one hold ({BUDGET_HOLD_MS} ms) per wave; "
                    "pool_timeout must be longer than that wait.")
    checking.expect(not outcome.errors,
                    f"{load}: {len(outcome.errors)} requests failed, e.g. {outcome.errors[0] if outcome.errors else ''}"
                    + (". The connections in the pool were dropped by the restart and handed out dead: ask the pool "
                       "to test a connection before handing it out." if what.startswith("after") else ""))
    least = min(pools.peak_in_use.values(), default=0)
    checking.record("least_share_used", least)
    checking.expect(not full_share or least >= budget.share,
                    f"{load}: a worker never held more than {least} connection{'s' if least != 1 else ''} at once "
                    f"while its "
                    f"{2 * budget.share} requests waited for one (the burst took {outcome.wall_ms:,.0f} ms): its share "
                    f"is {budget.share}, so a smaller pool makes requests queue for connections the database could "
                    f"have given (with the full share the burst takes 2 waves of {BUDGET_HOLD_MS} ms).")
    return outcome


@exercise(
    "09.pool-budget",
    title="A pool budget: workers × pool against max_connections",
    expects="a function make_engine(url: str, *, workers: int, max_connections: int, reserved: int) -> AsyncEngine",
    hints=(
        "Count the connections: each worker process builds its own engine, so the database sees workers × "
        "(pool_size + max_overflow). Compare it with what the database leaves to the app, and think about what "
        "happens to a pooled connection when the database restarts.",
        "Tools: `create_async_engine(url, pool_size=…, max_overflow=…, pool_timeout=…, pool_pre_ping=…)`; "
        "NullPool has no bound at all; the default pool allows 5 + 10 per worker.",
        "Shape: `share = (max_connections - reserved) // workers`; `return create_async_engine(url, pool_size=…, "
        "max_overflow=…, pool_timeout=<seconds, longer than a queued request waits>, pool_pre_ping=…)`.",
    ),
    timeout=120,
)
async def check_pool_budget(make_engine: Any, checking: Checking) -> str:
    """A deployment drawn at random; one engine per simulated worker from the answer; after a warm-up, a burst of
    2 × share requests per worker (each holding a connection 300 ms): peak open connections (pool events) within
    the budget, no pool timeout, each worker holding its full share at once (pool events); then the database "restarts" (every pooled connection dropped)
    and a second burst must not fail nor exceed the budget."""
    checking.require_callable(make_engine, "a function make_engine(url, *, workers, max_connections, reserved)")
    rng = random.Random()
    budget = draw_budget(rng)
    checking.record("deployment", str(budget))
    db = make_demo_db(users=5, posts_per_user=1)
    url = async_url(db.url)
    engines: list[AsyncEngine] = []
    try:
        for _ in range(budget.workers):
            engine = checking.call(make_engine, url, workers=budget.workers, max_connections=budget.max_connections,
                                   reserved=budget.reserved)
            if not isinstance(engine, AsyncEngine):
                checking.fail(f"make_engine returned {type(engine).__name__}, not an AsyncEngine: build it with "
                              "`create_async_engine(url, ...)` from the URL it is given.")
            engines.append(engine)
        await hold_load(engines, budget.share, 1)  # open the pools' connections first: connecting is not the point
        first = await _budget_phase(checking, engines, budget, "a burst")
        dropped = 0
        for engine in engines:
            dropped += await drop_connections(db, engine)
            if db.engine.dialect.name == "postgresql":
                break  # one terminate drops every session of the database
        checking.record("connections_dropped", dropped)
        # after a restart the pools reconnect as requests come: this burst is held to the budget and must not fail
        second = await _budget_phase(checking, engines, budget, "after the database restarted", full_share=False)
    finally:
        for engine in engines:
            await engine.dispose()
        db.close()
    checking.record("peak_open", max(first.pools.peak_open, second.pools.peak_open))
    checking.record("burst_ms", round(first.wall_ms))
    return (f"{budget}: at most {max(first.pools.peak_open, second.pools.peak_open)} connections open, no timeout, "
            f"bursts in {first.wall_ms:,.0f} and {second.wall_ms:,.0f} ms, a restart survived")


# --------------------------------------------------------------------------- bench

def bench() -> list[BenchRow]:
    """The lesson's headline: a burst of profile requests with a sync session in async def vs an AsyncSession."""
    async def rows() -> list[BenchRow]:
        db = make_demo_db(users=50, posts_per_user=5)
        try:
            ways = await serve_three_ways(db)
        finally:
            db.close()
        blocking, _ = ways["sync session in async def"]
        awaited, _ = ways["AsyncSession"]
        return [BenchRow(f"20 concurrent profiles, {LATENCY_MS} ms per statement: sync session in async def vs "
                         "AsyncSession (wall time ratio)", blocking.wall_ms / awaited.wall_ms, "×", level="endpoint")]

    return asyncio.run(rows())
