"""Lesson 03 (caching): a slow aggregate endpoint, an explicit Redis response cache, and the graders."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import multiprocessing
import os
import random
import re
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager, nullcontext, suppress
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from pydantic import BaseModel, TypeAdapter
from redis.asyncio import BlockingConnectionPool, Redis
from sqlalchemy import create_engine, event, func, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from ..bench_rows import BenchRow
from ..client import app_client
from ..db import DemoDB, Post, User, make_demo_db, thread_safe_connect_args
from ..events import listening
from ..grading import Checking, exercise
from ..queries import count_queries, simulated_latency
from ..redis import KeyWatch, RecordingProxy, RedisCommand, get_redis, lock_attempt_key, redis_backend, serve_redis
from ..servers import _die_with_parent
from ..timing import compare

__all__ = [
    "CountryStats", "NewPost", "UserOut", "country_stats", "stats_json", "user_json", "create_post",
    "new_prefix", "drop_keys", "ResponseCache", "url_key", "make_uncached_app", "make_article_app",
    "url_key_builder", "make_cached_app", "make_memory_cached_app", "make_http_cached_app",
    "concurrent_gets", "show_source", "keys_vs_tag", "KeysCost", "orm_objects_in_a_cache", "bench",
]


# ---------------------------------------------------------------- the data and the slow query


class CountryStats(BaseModel):
    """One row of the slow endpoint: posts per author country, with like statistics."""

    country: str
    posts: int
    avg_likes: float
    top_likes: int
    avg_body_chars: float


class UserOut(BaseModel):
    """The public view of a user."""

    id: int
    name: str
    country: str


class NewPost(BaseModel):
    """The body of `POST /posts`."""

    user_id: int
    title: str
    likes: int = 0


_STATS = TypeAdapter(list[CountryStats])


def country_stats(session: Session, min_likes: int = 0) -> list[CountryStats]:
    """The slow part: an aggregate over every post (joined to its author) with at least `min_likes` likes."""
    stmt = (
        select(User.country, func.count(Post.id), func.avg(Post.likes), func.max(Post.likes),
               func.avg(func.length(Post.body)))
        .join(Post.author)
        .where(Post.likes >= min_likes)
        .group_by(User.country)
        .order_by(User.country)
    )
    return [
        CountryStats(country=c, posts=n, avg_likes=round(avg, 2), top_likes=top, avg_body_chars=round(chars, 2))
        for c, n, avg, top, chars in session.execute(stmt)
    ]


def stats_json(session: Session, min_likes: int = 0) -> bytes:
    """The slow query's answer serialised once, as the response's JSON bytes (what a cache should store)."""
    return _STATS.dump_json(country_stats(session, min_likes))


def user_json(session: Session, user_id: int) -> bytes | None:
    """One user's public JSON, or None when there is no such user."""
    user = session.get(User, user_id)
    return None if user is None else UserOut(id=user.id, name=user.name, country=user.country).model_dump_json().encode()


def create_post(session: Session, new: NewPost) -> int:
    """Insert a post and commit; returns its id."""
    if session.get(User, new.user_id) is None:
        raise HTTPException(status_code=404, detail="user not found")
    post_id = session.execute(
        insert(Post).values(user_id=new.user_id, title=new.title, body="", likes=new.likes,
                            created_at=datetime(2025, 1, 1)).returning(Post.id)
    ).scalar_one()
    session.commit()
    return int(post_id)


def json_response(body: bytes | str, status: str = "") -> Response:
    """A JSON response from bytes (or text) already serialised, with an `X-Cache: HIT/MISS` header when given."""
    headers = {"X-Cache": status} if status else None
    return Response(content=body, media_type="application/json", headers=headers)


# ---------------------------------------------------------------- keys and the explicit cache


def new_prefix(name: str = "lab03") -> str:
    """A key prefix private to this run, so runs sharing one real Redis never see each other's keys."""
    return f"{name}:{uuid.uuid4().hex[:10]}"


async def drop_keys(redis: Redis, prefix: str) -> int:
    """Delete every key under `prefix` (clean-up of a finished run, with SCAN: never on a request's path)."""
    dropped = 0
    batch: list[Any] = []
    async for key in redis.scan_iter(match=f"{prefix}:*", count=500):
        batch.append(key)
        if len(batch) >= 500:
            dropped += await redis.delete(*batch)
            batch = []
    if batch:
        dropped += await redis.delete(*batch)
    return dropped


def url_key(prefix: str, request: Request) -> str:
    """The cache key of a GET: prefix + path + the query parameters, sorted (so ?a=1&b=2 equals ?b=2&a=1)."""
    params = "&".join(f"{k}={v}" for k, v in sorted(request.query_params.multi_items()))
    return f"{prefix}:{request.url.path}?{params}"


class ResponseCache:
    """A small explicit response cache over `redis.asyncio`: TTL, tag invalidation and an optional stampede lock."""

    def __init__(self, redis: Redis, prefix: str, ttl: float = 60.0, lock_timeout: float = 10.0,
                 max_wait_step: float = 0.1) -> None:
        self.redis, self.prefix, self.ttl, self.lock_timeout = redis, prefix, ttl, lock_timeout
        self.max_wait_step = max_wait_step
        self.hits = self.misses = 0

    def key(self, request: Request) -> str:
        """The key of this request: path and sorted query parameters, never the session or other objects."""
        return url_key(self.prefix, request)

    def _tag(self, tag: str) -> str:
        return f"{self.prefix}:tag:{tag}"

    async def get_or_compute(self, key: str, compute: Callable[[], Awaitable[bytes]], *, ttl: float | None = None,
                             tags: Iterable[str] = (), lock: bool = False) -> tuple[bytes, bool]:
        """Return (body, was_hit): the cached bytes, or compute, store with a TTL and tag them. `lock`: single-flight."""
        cached = await self.redis.get(key)
        if cached is not None:
            self.hits += 1
            return cast(bytes, cached), True
        if not lock:
            return await self._fill(key, compute, ttl, tags), False
        lock_key, token = f"{key}:lock", uuid.uuid4().hex
        deadline = time.monotonic() + self.lock_timeout
        pause = 0.005
        # SET NX: exactly one request (in any process sharing this Redis) gets the lock and runs the query
        while not await self.redis.set(lock_key, token, nx=True, px=int(self.lock_timeout * 1000)):
            # back off with jitter: 50 waiters polling every 5 ms would keep the event loop (and Redis) busy
            # with their own GETs, starving the one request that is computing the answer
            await asyncio.sleep(pause * random.uniform(0.5, 1.0))
            pause = min(pause * 2, self.max_wait_step)
            cached = await self.redis.get(key)
            if cached is not None:
                self.hits += 1
                return cast(bytes, cached), True
            if time.monotonic() > deadline:  # the holder is stuck: stop waiting and query ourselves
                return await self._fill(key, compute, ttl, tags), False
        try:
            cached = await self.redis.get(key)  # filled between our miss and our lock?
            if cached is not None:
                self.hits += 1
                return cast(bytes, cached), True
            return await self._fill(key, compute, ttl, tags), False
        finally:
            if await self.redis.get(lock_key) == token.encode():  # release only our own lock
                await self.redis.delete(lock_key)

    async def _fill(self, key: str, compute: Callable[[], Awaitable[bytes]], ttl: float | None,
                    tags: Iterable[str]) -> bytes:
        self.misses += 1
        body = await compute()
        ttl_ms = int((self.ttl if ttl is None else ttl) * 1000)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(key, body, px=ttl_ms)
            for tag in tags:  # a set per tag lists the keys to delete when that data changes
                pipe.sadd(self._tag(tag), key)
                pipe.pexpire(self._tag(tag), ttl_ms)
            await pipe.execute()
        return body

    async def invalidate(self, *tags: str) -> int:
        """Delete every key filed under these tags (SMEMBERS + DEL: cost grows with the tag, not with Redis)."""
        deleted = 0
        for tag in tags:
            keys = await self.redis.smembers(self._tag(tag))
            deleted += await self.redis.delete(*keys, self._tag(tag)) if keys else 0
        return deleted


# ---------------------------------------------------------------- the lesson's apps


def make_uncached_app(db: DemoDB) -> FastAPI:
    """The blog's read-heavy API without any cache: GET /stats, GET /users/{id}, POST /posts."""
    app = FastAPI(title="Uncached")
    get_db = db.dependency()

    @app.get("/stats")
    async def stats(min_likes: int = 0, session: Session = Depends(get_db)) -> Response:
        return json_response(await run_in_threadpool(stats_json, session, min_likes))

    @app.get("/users/{user_id}")
    async def read_user(user_id: int, session: Session = Depends(get_db)) -> Response:
        body = await run_in_threadpool(user_json, session, user_id)
        if body is None:
            raise HTTPException(status_code=404, detail="user not found")
        return json_response(body)

    @app.post("/posts", status_code=201)
    async def add_post(new: NewPost, session: Session = Depends(get_db)) -> dict[str, int]:
        return {"id": await run_in_threadpool(create_post, session, new)}

    return app


def make_article_app(db: DemoDB, redis: Redis, prefix: str, key_builder: Any = None) -> FastAPI:
    """The article's recipe: fastapi-cache2's `@cache(expire=300)` over a route with a session dependency."""
    from fastapi_cache import FastAPICache
    from fastapi_cache.backends.redis import RedisBackend
    from fastapi_cache.decorator import cache

    FastAPICache.init(RedisBackend(redis), prefix=f"{prefix}:fc")  # fastapi-cache2 keeps one global backend
    app = FastAPI(title="fastapi-cache2")
    open_sessions: list[Session] = []  # see below

    def get_db() -> Iterator[Session]:
        # Each request's session stays referenced until the app is gone, so no two requests' sessions share a
        # memory address. The default key hashes repr(session), which contains that address: a freed address
        # reused by the next request's session would make an accidental hit, and the demo's count would vary.
        with db.session() as session:
            open_sessions.append(session)
            yield session

    @app.get("/stats")
    @cache(expire=300, key_builder=key_builder)  # type: ignore[arg-type]  # its stubs expect async; it wraps def too
    def stats(min_likes: int = 0, session: Session = Depends(get_db)) -> list[CountryStats]:
        return country_stats(session, min_likes)

    return app


def url_key_builder(func: Any, namespace: str = "", *, request: Request | None = None, response: Any = None,
                    args: Any = (), kwargs: Any = None) -> str:
    """A fastapi-cache2 key builder that keys on the URL (path + sorted query), ignoring the session argument."""
    if request is None:
        raise ValueError("url_key_builder needs the request")
    return url_key(f"{namespace}:{func.__name__}", request)


def make_cached_app(db: DemoDB, cache: ResponseCache, *, lock: bool = False) -> FastAPI:
    """The same API with the explicit cache: keyed on the URL, TTL, tag 'posts' cleared by POST /posts."""
    app = FastAPI(title="Redis-cached")
    get_db = db.dependency()

    @app.get("/stats")
    async def stats(request: Request, min_likes: int = 0, session: Session = Depends(get_db)) -> Response:
        async def compute() -> bytes:
            return await run_in_threadpool(stats_json, session, min_likes)

        body, hit = await cache.get_or_compute(cache.key(request), compute, tags=["posts"], lock=lock)
        return json_response(body, "HIT" if hit else "MISS")

    @app.get("/users/{user_id}")
    async def read_user(request: Request, user_id: int, session: Session = Depends(get_db)) -> Response:
        async def compute() -> bytes:
            body = await run_in_threadpool(user_json, session, user_id)
            if body is None:
                raise HTTPException(status_code=404, detail="user not found")  # errors are never cached
            return body

        body, hit = await cache.get_or_compute(cache.key(request), compute, tags=["users"])
        return json_response(body, "HIT" if hit else "MISS")

    @app.post("/posts", status_code=201)
    async def add_post(new: NewPost, session: Session = Depends(get_db)) -> dict[str, int]:
        post_id = await run_in_threadpool(create_post, session, new)
        await cache.invalidate("posts")  # every /stats variant depends on posts; /users/* does not
        return {"id": post_id}

    return app


def make_memory_cached_app(db: DemoDB) -> FastAPI:
    """The API with a per-process dict as cache: each worker process would have its own copy."""
    app = FastAPI(title="In-memory cache")
    get_db = db.dependency()
    memory: dict[str, bytes] = {}

    @app.get("/stats")
    async def stats(request: Request, min_likes: int = 0, session: Session = Depends(get_db)) -> Response:
        key = url_key("mem", request)
        if key not in memory:
            memory[key] = await run_in_threadpool(stats_json, session, min_likes)
            return json_response(memory[key], "MISS")
        return json_response(memory[key], "HIT")

    @app.post("/posts", status_code=201)
    async def add_post(new: NewPost, session: Session = Depends(get_db)) -> dict[str, int]:
        post_id = await run_in_threadpool(create_post, session, new)
        memory.clear()  # clears *this* process's dict only
        return {"id": post_id}

    return app


def make_http_cached_app(db: DemoDB, max_age: int = 60) -> FastAPI:
    """GET /stats with `Cache-Control` and a strong `ETag`; `If-None-Match` with the same tag gets 304, no body."""
    app = FastAPI(title="HTTP caching")
    get_db = db.dependency()

    @app.get("/stats")
    async def stats(request: Request, min_likes: int = 0, session: Session = Depends(get_db)) -> Response:
        body = await run_in_threadpool(stats_json, session, min_likes)
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        headers = {"ETag": etag, "Cache-Control": f"public, max-age={max_age}"}
        if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
            return Response(status_code=304, headers=headers)
        return Response(content=body, media_type="application/json", headers=headers)

    return app


async def concurrent_gets(apps: list[Any], path: str, n: int) -> list[Any]:
    """Send `n` GETs at once, spread round-robin over `apps` (each its own lifespan/client); return the responses."""
    from contextlib import AsyncExitStack

    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(app_client(app)) for app in apps]
        return list(await asyncio.gather(*(clients[i % len(clients)].get(path) for i in range(n))))


def show_source(obj: Any) -> Any:
    """Display a function's or class's source as a highlighted Markdown code block."""
    from IPython.display import Markdown

    return Markdown(f"```python\n{inspect.getsource(obj)}```")


@dataclass
class KeysCost:
    """What `KEYS pattern` cost against a tag set's `SMEMBERS`, with `filler` other keys on the server."""

    filler: int
    keys_ms: float
    tag_ms: float
    ping_waited_ms: float  # how long another client's PING, sent while KEYS ran, waited for its answer


async def keys_vs_tag(redis: Redis, prefix: str, filler: int, tagged: int = 20) -> KeysCost:
    """Time `KEYS prefix:*` and the tag set's `SMEMBERS` with `filler` unrelated keys on the server, and how long
    a PING sent from another task while KEYS runs waits; the filler keys are deleted after."""
    fill = f"{prefix}:other"
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(filler):
            pipe.set(f"{fill}:{i}", b"x", ex=600)
        for i in range(tagged):
            pipe.set(f"{prefix}:kc:/stats?min_likes={i}", b"{}", ex=600)
            pipe.sadd(f"{prefix}:kc:tag", f"{prefix}:kc:/stats?min_likes={i}")
        await pipe.execute()
    try:
        await redis.smembers(f"{prefix}:kc:tag")  # warm: a connection of the pool is open
        start = time.perf_counter()
        await redis.smembers(f"{prefix}:kc:tag")
        tag_ms = (time.perf_counter() - start) * 1000

        async def ping_due_at(due: float) -> float:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            await redis.ping()  # from the moment it was due: waiting for the server and for our own loop both count
            return (time.perf_counter() - due) * 1000

        start = time.perf_counter()
        _, waited = await asyncio.gather(redis.keys(f"{prefix}:kc:/stats*"), ping_due_at(start + 0.002))
        keys_ms = (time.perf_counter() - start) * 1000
    finally:
        await drop_keys(redis, f"{prefix}:kc")
        await drop_keys(redis, fill)
    return KeysCost(filler, keys_ms, tag_ms, waited)


def orm_objects_in_a_cache(db: DemoDB) -> dict[str, str]:
    """Try three ways of caching ORM objects and return what each raised: JSON, a closed session, a changed class."""
    import pickle
    import sys
    import types

    seen: dict[str, str] = {}
    with db.session() as session:
        user = session.scalars(select(User).limit(1)).one()
        try:
            json.dumps(user)
        except TypeError as error:
            seen["json.dumps(a User)"] = f"TypeError: {error}"
    try:
        len(user.posts)  # another request reads the cached object: its session has closed
    except Exception as error:  # noqa: BLE001 - shown to the learner
        seen["user.posts after its session closed"] = f"{type(error).__name__}: {str(error).splitlines()[0][:90]}"
    module = types.ModuleType("lab03_models")  # a model module, pickled with version 1 of the class...
    exec("class CachedStats:\n    def __init__(self, likes):\n        self.likes = likes\n", module.__dict__)  # noqa: S102
    sys.modules["lab03_models"] = module
    try:
        stored = pickle.dumps(module.CachedStats(3))
        del module.CachedStats  # ...and the next deploy renames it
        try:
            pickle.loads(stored)
        except AttributeError as error:
            seen["pickle.loads after a deploy renamed the class"] = f"AttributeError: {error}"
    finally:
        sys.modules.pop("lab03_models", None)
    return seen


# ---------------------------------------------------------------- graders

_RESOURCE = "a function make_app(db, redis, prefix, ttl) that returns a FastAPI app"
_SECOND_WORKER_TIMEOUT = 30.0


# ---------------------------------------------------------------- graders: two worker processes, one Redis
#
# Production runs several worker processes (gunicorn, uvicorn --workers) against one Redis, and that is where a cache
# or a lock kept in Python memory fails. So each grader runs the answer twice: in the grader's process, and in a
# second process forked from it (as gunicorn forks its workers: a factory defined in a notebook is inherited, no
# import needed). Both reach one Redis server over TCP (fakeredis served from its own process, or REDIS_URL) through
# a proxy that records every command of both, and the same database.


_IN_REQUEST: ContextVar[list[bool] | None] = ContextVar("lab03_in_request", default=None)


class _Gate:
    """Hold the first queries of a burst so that the two processes' misses overlap however the machine schedules them.

    A query waits until each of the burst's requests (in both processes) has had the answer to its first Redis command
    (its cache lookup), or `timeout` passed: a request that would miss has missed before anyone stores the answer.
    Then it waits until a query of the *other* process is waiting too, or `pair_window` passed: an answer whose guard
    lives in each process (a threading.Lock taken after the lookup) runs one query in each, however late the second
    process is scheduled, while a right answer's one query goes on after the window. The first query to go opens the
    gate for the rest of the burst."""

    def __init__(self, ctx: Any, timeout: float = 2.0, pair_window: float = 1.5) -> None:
        self.looked, self.expected, self.timeout = ctx.Value("i", 0), ctx.Value("i", 0), timeout
        self.querying, self.opened, self.pair_window = ctx.Array("i", 2), ctx.Value("i", 0), pair_window
        self.first_process = os.getpid()  # the grader's; the forked second worker has another pid

    def expect(self, requests: int) -> None:
        """Start a burst of `requests` (0: no burst, queries run at once)."""
        with self.looked.get_lock():
            self.looked.value = 0
            self.expected.value = requests
            self.opened.value = 0
            self.querying[0] = self.querying[1] = 0

    def wrap(self, app: Any) -> Any:
        """The app behind an ASGI wrapper that marks each HTTP request, so its first Redis command can be counted."""

        async def marking(scope: Any, receive: Any, send: Any) -> None:
            token = _IN_REQUEST.set([False]) if scope["type"] == "http" else None
            try:
                await app(scope, receive, send)
            finally:
                if token is not None:
                    _IN_REQUEST.reset(token)

        return marking

    def watch(self, redis: Redis) -> Redis:
        """Count, on `redis` (the client the answer gets), the first command each marked request sends."""
        looked, original = self.looked, redis.execute_command

        async def counting(*args: Any, **options: Any) -> Any:
            try:
                return await original(*args, **options)
            finally:  # counted once answered: a command waiting for a free connection has not looked yet
                mark = _IN_REQUEST.get()
                if mark is not None and not mark[0]:
                    mark[0] = True
                    with looked.get_lock():
                        looked.value += 1

        redis.execute_command = counting  # type: ignore[method-assign]
        return redis

    @contextmanager
    def holding(self, engine: Any) -> Iterator[None]:
        """While the block runs, a statement on `engine` waits (at most `timeout`) for the burst's cache lookups."""

        def wait(*_: Any) -> None:
            if self.expected.value == 0 or self.opened.value:
                return
            me = 0 if os.getpid() == self.first_process else 1
            self.querying[me] = 1
            deadline = time.monotonic() + self.timeout
            while 0 < self.expected.value > self.looked.value and time.monotonic() < deadline:
                time.sleep(0.002)
            deadline = time.monotonic() + self.pair_window
            while not self.opened.value and not self.querying[1 - me] and time.monotonic() < deadline:
                time.sleep(0.002)
            self.opened.value = 1

        event.listen(engine, "before_cursor_execute", wait)
        try:
            yield
        finally:
            event.remove(engine, "before_cursor_execute", wait)


_WRITE_STATEMENT = re.compile(r"\s*(INSERT|UPDATE|DELETE|REPLACE|MERGE|UPSERT)\b", re.IGNORECASE)


class _CommitHold:
    """In the second worker, hold back the COMMIT of the next transaction that wrote (its INSERT done, nothing visible
    to others yet) until the grader releases it: reads sent meanwhile arrive while the write is in flight."""

    def __init__(self, ctx: Any, timeout: float = 10.0) -> None:
        self.armed, self.held, self.released, self.timeout = ctx.Event(), ctx.Event(), ctx.Event(), timeout

    def arm(self) -> None:
        """Hold the next commit of a transaction that wrote (once)."""
        self.held.clear()
        self.released.clear()
        self.armed.set()

    def release(self) -> None:
        """Let the held commit go on (and hold no further one)."""
        self.armed.clear()
        self.released.set()

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Watch every SQLAlchemy engine of this process (the answer's own ones too) while the block runs."""

        def wrote(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
            if _WRITE_STATEMENT.match(statement):
                conn.info["lab03_wrote"] = True

        def forget(conn: Any) -> None:
            conn.info.pop("lab03_wrote", None)

        def commit(conn: Any) -> None:  # called before the driver's COMMIT
            if conn.info.pop("lab03_wrote", False) and self.armed.is_set():
                self.armed.clear()
                self.held.set()
                self.released.wait(self.timeout)

        with listening(Engine, "before_cursor_execute", wrote), listening(Engine, "rollback", forget), \
                listening(Engine, "commit", commit):
            yield


def _acknowledging(app: Any, conn: Any, acking: list[bool]) -> Any:
    """The app behind an ASGI wrapper that, for a POST sent as 'post-ack', reports the response to the grader the
    moment its last byte is sent, then blocks this process (its event loop too) until the grader says 'continue':
    whatever the answer does after responding (a background task, a dependency's teardown) has not run yet."""

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or not acking[0]:
            await app(scope, receive, send)
            return
        status = [0]

        async def sending(message: Any) -> None:
            await send(message)
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body") and acking[0]:
                acking[0] = False
                conn.send(("ack", [(status[0], b"")], 0))
                if conn.poll(_SECOND_WORKER_TIMEOUT):  # blocking on purpose: this worker stands still meanwhile
                    with suppress(EOFError, OSError):
                        conn.recv()

        await app(scope, receive, sending)

    return wrapped


def _bounded_client(url: str) -> Redis:
    """The client an answer gets: at most 16 connections, a command waits for a free one (as a production pool)."""
    return Redis(connection_pool=BlockingConnectionPool.from_url(url, max_connections=16, timeout=20))


def _worker_main(conn: Any, factory: Any, db_url: str, counts: dict[str, int], redis_url: str, prefix: str, ttl: int,
                 latency_ms: float, gate: _Gate | None, hold: _CommitHold | None = None) -> None:
    """The second worker process (forked): build the answer's app on its own engine and Redis client, then answer the
    grader's requests from the pipe until told to stop."""
    _die_with_parent()
    try:
        asyncio.run(_worker_serve(conn, factory, db_url, counts, redis_url, prefix, ttl, latency_ms, gate, hold))
    except BaseException as error:  # noqa: BLE001 - reported to the grader, whatever it is
        with suppress(Exception):
            conn.send(("error", f"{type(error).__name__}: {error}", 0))
    finally:
        conn.close()


async def _worker_serve(conn: Any, factory: Any, db_url: str, counts: dict[str, int], redis_url: str, prefix: str,
                        ttl: int, latency_ms: float, gate: _Gate | None, hold: _CommitHold | None = None) -> None:
    """The second worker's life: its app, then one reply per request message."""
    engine = create_engine(db_url, connect_args=thread_safe_connect_args(db_url))
    db = DemoDB(engine=engine, Session=sessionmaker(engine, expire_on_commit=False), path=None, counts=counts)
    redis = _bounded_client(redis_url)
    if gate:
        gate.watch(redis)
    acking = [False]  # a 'post-ack' request is in flight: report its response the moment it is sent
    try:
        with simulated_latency(engine, latency_ms), gate.holding(engine) if gate else nullcontext(), \
                hold.installed() if hold else nullcontext():
            try:
                app = factory(db, redis, prefix, ttl)
            except Exception as error:  # noqa: BLE001 - learner code
                conn.send(("error", f"building your app raised {type(error).__name__}: {error}", 0))
                return
            if not hasattr(app, "router"):
                conn.send(("error", f"your factory returned {type(app).__name__}, not a FastAPI app", 0))
                return
            served = gate.wrap(app) if gate else app
            async with app_client(_acknowledging(served, conn, acking) if hold else served) as client:
                conn.send(("ready", [], 0))
                while True:
                    try:
                        kind, path, arg = await asyncio.to_thread(conn.recv)
                    except EOFError:  # the grader is gone
                        return
                    if kind == "stop":
                        return
                    try:
                        with count_queries(engine) as queries:
                            if kind == "get":
                                responses = await asyncio.gather(*(client.get(path) for _ in range(arg)))
                            else:
                                acking[0] = kind == "post-ack"
                                responses = [await client.post(path, json=arg)]
                                acking[0] = False
                    except Exception as error:  # noqa: BLE001 - learner code, raised through the app
                        conn.send(("error", f"your app raised {type(error).__name__}: {error}", 0))
                        continue
                    conn.send(("ok", [(r.status_code, r.content) for r in responses], queries.count))
    finally:
        with suppress(Exception):
            await redis.aclose()
        engine.dispose()


class _SecondWorker:
    """The answer's app in a second process forked from this one, on the same database and Redis."""

    def __init__(self, factory: Any, db: DemoDB, redis_url: str, prefix: str, ttl: int, latency_ms: float,
                 gate: _Gate | None, ctx: Any, hold: _CommitHold | None = None) -> None:
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_worker_main, name="lab03-second-worker", daemon=True,
            args=(child, factory, db.url, dict(db.counts), redis_url, prefix, ttl, latency_ms, gate, hold))
        with warnings.catch_warnings():  # Python 3.12+ warns about fork in a threaded process; we fork on purpose
            warnings.filterwarnings("ignore", message=r".*fork\(\) may lead to deadlocks", category=DeprecationWarning)
            self.process.start()
        child.close()

    def send(self, kind: str, path: str = "", arg: Any = None) -> None:
        """Ask for `arg` concurrent GETs of `path` ('get') or one POST of JSON `arg` ('post'); `reply()` answers."""
        self._conn.send((kind, path, arg))

    async def reply(self, checking: Checking, timeout: float = _SECOND_WORKER_TIMEOUT) -> tuple[list[Any], int]:
        """The worker's answer to the last request: [(status, body bytes)], database queries it ran."""
        _, replies, queries = await self.message(checking, timeout)
        return replies, queries

    async def message(self, checking: Checking, timeout: float = _SECOND_WORKER_TIMEOUT) -> tuple[str, list[Any], int]:
        """The worker's next message: ('ok' or 'ack', [(status, body bytes)], queries); an error fails the check."""
        if not await asyncio.to_thread(self._conn.poll, timeout):
            checking.fail(f"the second worker process (a copy of your app in another process) did not answer within "
                          f"{timeout:g} s: does your app wait for something that never comes?")
        try:
            kind, replies, queries = self._conn.recv()
        except (EOFError, OSError):
            checking.fail(f"the second worker process ended unexpectedly (exit code {self.process.exitcode}).")
            raise
        if kind == "error":
            checking.fail(f"in the second worker process (a copy of your app in another process, sharing the "
                          f"database and Redis), {replies}")
        return kind, replies, queries

    def answered(self) -> bool:
        """Whether a message from the worker is waiting (does not block)."""
        return bool(self._conn.poll())

    async def get(self, checking: Checking, path: str, n: int = 1) -> tuple[list[Any], int]:
        """`n` concurrent GETs of `path` on the second worker."""
        self.send("get", path, n)
        return await self.reply(checking)

    def stop(self) -> None:
        """Ask the worker to stop, then terminate and kill it if it does not. Safe to call twice."""
        with suppress(OSError, ValueError):
            self._conn.send(("stop", "", None))
        self.process.join(3)
        for end in (self.process.terminate, self.process.kill):
            if self.process.is_alive():
                end()
                self.process.join(3)
        self._conn.close()


@dataclass
class _Rig:
    """One grading run: a private prefix, a Redis behind a recording proxy, the answer's app here and in a second
    worker process."""

    prefix: str
    upstream: str
    proxy: RecordingProxy
    redis: Redis
    direct: Redis
    app: Any
    worker: _SecondWorker
    gate: _Gate | None
    hold: _CommitHold | None = None


@asynccontextmanager
async def _two_workers(checking: Checking, make_app: Any, db: DemoDB, ttl: int, *, latency_ms: float = 0.0,
                       gate: bool = False, hold: bool = False) -> AsyncIterator[_Rig]:
    """Build the answer in this process and in a forked second worker; stop everything when the block ends."""
    try:
        ctx = multiprocessing.get_context("fork")
    except ValueError:
        checking.fail("this check runs a second copy of your app in a forked process, which needs Linux or macOS.")
        raise
    prefix = new_prefix("grade03")
    with ExitStack() as stack:
        upstream = stack.enter_context(serve_redis())
        proxy = stack.enter_context(RecordingProxy(upstream, contend_locks=gate))
        redis, direct = _bounded_client(proxy.url), Redis.from_url(upstream)
        worker = None
        try:
            app = checking.build_app(make_app, db, redis, prefix, ttl)
            held = _Gate(ctx) if gate else None
            if held:
                held.watch(redis)
            commit_hold = _CommitHold(ctx) if hold else None
            worker = _SecondWorker(make_app, db, proxy.url, prefix, ttl, latency_ms, held, ctx, commit_hold)
            await worker.reply(checking, timeout=15)  # ready, or why not
            with held.holding(db.engine) if held else nullcontext():
                yield _Rig(prefix, upstream, proxy, redis, direct, held.wrap(app) if held else app, worker, held,
                           commit_hold)
        finally:
            if worker is not None:
                await asyncio.to_thread(worker.stop)
            with suppress(Exception):
                await drop_keys(direct, prefix)
            for client in (redis, direct):
                with suppress(Exception):
                    await client.aclose()


def _check_commands(rig: _Rig, checking: Checking) -> None:
    """Every key any worker named starts with the prefix; no KEYS, FLUSHDB or FLUSHALL."""
    mine = rig.prefix.encode()
    for command in rig.proxy.since():
        stray = [key for key in command.keys() if not key.startswith(mine)]
        checking.expect(not stray, f"your app used the key {stray[0].decode(errors='replace')!r} (`{command}`), "
                                   f"outside the prefix it was given ({rig.prefix!r}). Apps, workers of other "
                                   "versions and test runs sharing one Redis would read and overwrite each other's "
                                   "keys: start every key with `prefix`." if stray else "")
        checking.expect(command.name != "KEYS",
                        f"your app sent `{command}`. KEYS walks every key of the server and blocks all other clients "
                        "meanwhile: fine on a laptop, an outage on a big production Redis. Keep a set of keys per "
                        "tag (SADD / SMEMBERS) or version your keys instead.")
        checking.expect(command.name not in ("FLUSHDB", "FLUSHALL"),
                        f"your app sent {command.name}: that wipes every key of every app sharing this Redis.")


async def _check_no_stray_keys(rig: _Rig, checking: Checking) -> None:
    """On the private fakeredis server: no key outside the prefix (e.g. written by a script)."""
    if redis_backend() != "fakeredis":
        return  # a real Redis is shared: the proxy's record of commands is what tells
    stray = [k.decode(errors="replace") async for k in rig.direct.scan_iter(match="*")
             if not k.startswith(rig.prefix.encode())]
    checking.expect(not stray, f"your app wrote keys outside the prefix it was given ({rig.prefix!r}): {stray[:3]}. "
                               "Start every key with `prefix`: apps (and test runs) sharing one Redis must not collide.")


def _same_json(value: Any, expected: Any) -> bool:
    try:
        return json.loads(value) == expected
    except (TypeError, ValueError):
        return False


async def _check_entries_expire(rig: _Rig, checking: Checking, expected: dict[str, Any], ttl: int) -> int:
    """Every key under the prefix that holds one of the expected answers expires within `ttl`; returns how many."""
    found = 0
    async for key in rig.direct.scan_iter(match=f"{rig.prefix}*", count=1000):
        if await rig.direct.type(key) != b"string":
            continue
        value = await rig.direct.get(key)
        path = next((p for p, body in expected.items() if _same_json(value, body)), None)
        if path is None:
            continue
        found += 1
        pttl, name = await rig.direct.pttl(key), key.decode(errors="replace")
        checking.expect(pttl != -1, f"the cached answer of GET {path} sits in Redis under {name!r} with no expiry "
                                    "(PTTL -1): it would be served for ever, stale after any change the cache is not "
                                    f"told about. Store it with the TTL given (`ttl`, {ttl} s) in the same SET: "
                                    "`ex=ttl` or `px=ttl * 1000`.")
        checking.expect(pttl <= ttl * 1000, f"the cached answer of GET {path} under {name!r} expires in "
                                            f"{pttl / 1000:,.0f} s, but the TTL asked for is {ttl} s (`ex=` takes "
                                            "seconds, `px=` milliseconds).")
    return found


async def _worker_get(checking: Checking, rig: _Rig, path: str, expected: Any) -> int:
    """One GET of `path` on the second worker: require 200 and the expected body; return its query count."""
    replies, queries = await rig.worker.get(checking, path)
    status, content = replies[0]
    checking.expect(status == 200, f"GET {path} on the second worker process answered {status}, expected 200. "
                                   f"Body: {content[:200]!r}")
    checking.expect(_same_json(content, expected), f"GET {path} on the second worker process returned "
                                                   f"{content[:160]!r}, not the uncached answer "
                                                   f"{str(expected)[:160]}")
    return queries


def _expected(db: DemoDB, min_likes: int) -> Any:
    with db.session() as session:
        return json.loads(stats_json(session, min_likes))


async def _get(checking: Checking, client: Any, db: DemoDB, path: str) -> tuple[Any, int]:
    """GET `path`, require 200 and JSON; return (parsed body, queries run)."""
    response, statements = await checking.counted(client, db.engine, "GET", path)
    return checking.json_body(response), len(statements)


_NO_QUERY = ("no database query was observed at all: the grader counts the statements run through the `db` it "
             "gives your factory. Open sessions with `db.dependency()` (or `db.session()`), not an engine of your own.")


@exercise(
    "03.cache-endpoint",
    title="Cache the slow endpoint in Redis",
    expects=_RESOURCE + " whose GET /stats?min_likes=N is cached in `redis` for `ttl` seconds",
    hints=(
        "Measure first: every GET /stats runs the slow query. Keep its answer where every worker process can read "
        "it (Redis, not a dict in your process), under a key that starts with `prefix` and names everything that "
        "changes the answer (the path and `min_likes`), and let Redis forget it after `ttl` seconds.",
        "Two calls do it: `await redis.get(key)` returns the stored bytes or None; `await redis.set(key, body, "
        "ex=ttl)` (or `px=` in milliseconds) stores them with their expiry in one command. `url_key(prefix, "
        "request)` builds a key from the path and the sorted query string.",
        "Shape: `key = …`; `body = await redis.get(key)`; `if body is None:` compute the JSON bytes (the starter's "
        "line) and `await redis.set(key, body, …)`; then `return json_response(body)`. What goes in the gaps: the "
        "key from the request, and the TTL.",
    ),
    timeout=60,
)
async def check_cache_endpoint(make_app: Any, checking: Checking) -> str:
    """50 calls → 1 query, equal bodies; entries expire within the TTL; another worker process hits the same key;
    another min_likes → its own key; after the TTL → 1 query. Keys under the prefix."""
    ttl = 3  # whole seconds, so `ex=ttl` and `px=ttl * 1000` both work
    sure = (ttl - 1) * 0.8  # an entry surely lives this long (fakeredis rounds SETEX's expiry down to a whole second)
    with make_demo_db(users=300, posts_per_user=6, seed=3) as db:
        expected = {m: _expected(db, m) for m in (0, 250)}
        async with _two_workers(checking, make_app, db, ttl) as rig, app_client(rig.app) as client:
            filled: dict[str, tuple[float, float]] = {}  # path → (start, end) of the call that last ran its query

            async def call(path: str) -> tuple[Any, int, bool]:
                """GET `path`: (body, queries, whether a query here is a miss the cache should have served)."""
                began = time.monotonic()
                body, count = await _get(checking, client, db, path)
                alive = path in filled and began - filled[path][0] < sure  # the entry surely had not expired
                if count:
                    filled[path] = (began, time.monotonic())
                return body, count, alive

            total = served_late = 0
            for i in range(50):
                body, count, alive = await call("/stats?min_likes=0")
                total += count
                served_late += count if alive else 0
                checking.expect(body == expected[0],
                                f"call {i + 1} of GET /stats?min_likes=0 returned {str(body)[:160]}, not the "
                                f"uncached answer {str(expected[0])[:160]}")
            checking.record("queries_for_50_calls", total)
            checking.expect(total > 0, _NO_QUERY)
            checking.expect(served_late == 0 and total <= 2,
                            f"50 calls to GET /stats?min_likes=0 ran {total} database queries; a cached endpoint "
                            f"runs 1 (the first miss), then serves Redis for the TTL ({ttl} s).")
            checking.expect(total == 1, f"50 calls took so long that the first entry may have expired (TTL {ttl} s): "
                                        "the machine is too busy to grade this now; run the check again.")
            _check_commands(rig, checking)
            await _check_entries_expire(rig, checking, {"/stats?min_likes=0": expected[0]}, ttl)
            body, count, _ = await call("/stats?min_likes=250")
            checking.expect(body == expected[250],
                            f"GET /stats?min_likes=250 returned {str(body)[:160]}, which is "
                            + ("the cached answer for min_likes=0: the query parameter is not in your key"
                               if body == expected[0] else f"not the uncached answer {str(expected[250])[:160]}"))
            checking.expect(count == 1, f"the first GET /stats?min_likes=250 ran {count} queries, expected 1 "
                                        "(a new parameter is a new key, so one miss).")
            body, count, alive = await call("/stats?min_likes=0")
            checking.expect(count == 0 or not alive,
                            f"GET /stats?min_likes=0 again (within the TTL) ran {count} queries, expected 0: "
                            "min_likes=250 must not evict min_likes=0.")
            theirs = await _worker_get(checking, rig, "/stats?min_likes=250", expected[250])
            waited = time.monotonic() - filled["/stats?min_likes=250"][0]
            checking.record("second_worker_queries", theirs)
            checking.expect(theirs == 0 or waited > sure,
                            f"GET /stats?min_likes=250 was cached by this worker process {waited * 1000:.0f} ms "
                            f"before, yet the same GET on a second worker process ran {theirs} database queries: "
                            "the cache lives inside each process (a dict, lru_cache, a global?). Every worker would "
                            "miss once for itself and keep its own copy, which a write in another process cannot "
                            "clear. Store the body in `redis` (shared by every worker), under `prefix`.")
            checking.expect(theirs == 0, f"the second worker's GET came {waited:.2f} s after the entry was cached, "
                                         f"near the {ttl} s TTL: the machine is too busy to grade this now; run the "
                                         "check again.")
            await asyncio.sleep(max(0.0, filled["/stats?min_likes=0"][1] + ttl + 0.3 - time.monotonic()))
            body, count, _ = await call("/stats?min_likes=0")
            checking.record("queries_after_ttl", count)
            checking.expect(count == 1, f"{ttl + 0.3:.1f} s after GET /stats?min_likes=0 was cached (TTL {ttl} s), "
                                        f"it ran {count} queries, expected 1: the entry should have expired. Set the "
                                        "TTL when you store it (`px=` or `ex=`).")
            checking.expect(body == expected[0], "after the TTL the body differs from the uncached answer")
            _check_commands(rig, checking)
            await _check_no_stray_keys(rig, checking)
    return ("50 calls → 1 query, identical bodies, one key per query string under the prefix, shared with a second "
            "worker process, expired after the TTL")


_REDIS_WRITES = frozenset(
    "DEL UNLINK SET SETEX PSETEX SETNX GETDEL GETEX GETSET INCR INCRBY INCRBYFLOAT DECR DECRBY EXPIRE PEXPIRE "
    "EXPIREAT PEXPIREAT SADD SREM SPOP SMOVE HSET HDEL HINCRBY MSET RENAME COPY EVAL EVALSHA FCALL".split())


def _min_likes(path: str) -> int:
    """The `min_likes` a /stats path asks for (0, the default, when it names none)."""
    return int(path.rsplit("=", 1)[1]) if "=" in path else 0


def _answers(db: DemoDB, paths: list[str]) -> dict[str, Any]:
    """The uncached answer of each /stats or /users path, read from the database now."""
    answers: dict[str, Any] = {}
    with db.session() as session:
        for path in paths:
            if path.startswith("/users/"):
                answers[path] = json.loads(user_json(session, int(path.rsplit("/", 1)[1])) or b"null")
            else:
                answers[path] = json.loads(stats_json(session, _min_likes(path)))
    return answers


async def _stale_reads(checking: Checking, rig: _Rig, client: Any, db: DemoDB, paths: list[str],
                       fresh: dict[str, Any]) -> list[tuple[str, str]]:
    """GET each path on the second worker, then on the first: the (path, worker) pairs whose body is not `fresh`."""
    stale = []
    for path in paths:
        replies, _ = await rig.worker.get(checking, path)
        status, content = replies[0]
        checking.expect(status == 200, f"GET {path} on the second worker process answered {status}: {content[:160]!r}")
        if not _same_json(content, fresh[path]):
            stale.append((path, "second"))
    for path in paths:
        body, _ = await _get(checking, client, db, path)
        if body != fresh[path]:
            stale.append((path, "first"))
    return stale


def _one_scan_page(commands: list[RedisCommand]) -> str:
    """A sentence when the write looked for keys with SCAN but never followed a cursor (empty otherwise)."""
    scans = [command for command in commands if command.name == "SCAN"]
    if not scans or any(len(command.args) > 1 and command.args[1] != b"0" for command in scans):
        return ""
    return (f" Your POST sent `{scans[0]}` and never followed the cursor it returned: one SCAN call reads one page "
            "(about COUNT keys of the whole server), not every match. Call it again with the returned cursor until "
            "it is 0 (`scan_iter` does), or keep the keys in a set.")


def _why_stale(stale: list[tuple[str, str]], paths: list[str], writer: str, when: str, again: bool = False,
               wrote: list[RedisCommand] | None = None) -> str:
    """Why reads after a write still returned old answers, from which variants were stale on which worker and what
    the write sent to Redis (`wrote`: its writing commands, when known)."""
    workers = {path: [which for p, which in stale if p == path] for path, _ in stale}
    where = ", ".join(f"GET {path} on " + ("both workers" if len(on) == 2 else f"the {on[0]} worker")
                      for path, on in workers.items())
    other = "first" if writer == "second" else "second"
    stored = next((c for c in wrote or [] if c.name in ("SET", "SETEX", "PSETEX", "MSET", "GETSET")), None)
    if {which for _, which in stale} == {other}:
        why = ("The worker that handled the write serves fresh answers and the other still serves old ones: what your "
               "write changes lives in that process's memory (a version counter, a local copy of the answers). Keep "
               "it in Redis (INCR a version key, or a set of keys per tag).")
    elif again and len(stale) == 2 * len(paths):
        why = ("The first write cleared them, this one cleared nothing: what a write changes must change again on every "
               "write (INCR a version, never SET it to a fixed value; add every key cached since to the tag set).")
    elif len(stale) == 2 * len(paths) and stored is not None:
        why = (f"Your POST stored answers after its commit (`{stored}`), but old ones: they were read before the commit "
               "(or from the cache). Store only what you read after `create_post` returns, or delete the keys instead.")
    elif len(stale) == 2 * len(paths):
        why = ("Nothing was cleared" + (" (your POST sent Redis no command that deletes or changes a key)"
                                        if wrote is not None and not wrote else "")
               + ". Every /stats variant depends on posts, so once the write has committed it must clear them all.")
    else:
        why = (f"Some /stats variants were cleared, not all (the grader cached {', '.join(paths)}, chosen at random "
               "each run, some by each worker). Every variant depends on posts, whichever worker cached it: a list of "
               "keys kept in Python memory knows only those its own process wrote, and a fixed list or a key pattern "
               "misses the variants nobody thought of (a /stats with no min_likes, say). Keep the list in Redis (SADD "
               "when caching) or version the keys.")
    return f"{when}, {where} still returned the old answer: stale. {why}"


@exercise(
    "03.invalidate",
    title="Invalidate on write",
    expects=_RESOURCE + " with cached GET /stats and GET /users/{id}, and POST /posts that invalidates /stats",
    hints=(
        "Ask which cached answers a new post makes wrong: every /stats variant (any min_likes), whichever worker "
        "process cached it, and no /users one. The write must reach all of them, so what it needs to know (which "
        "keys, or which version is current) must live in Redis, not in a Python variable of one process. And ask "
        "when: a read that arrives after your delete but before the commit caches the old data again.",
        "Two ways with Redis alone: a set per tag (`SADD` the key when you cache a /stats answer; on POST "
        "`SMEMBERS`, then `DEL` those keys), or a version number (`INCR` a version key on POST and put the version "
        "in every /stats key, so old entries are never read again). Not KEYS (it blocks the server), not FLUSHDB. "
        "Either one only once `create_post` has returned (committed), and before the route returns.",
        "Shape of the set way: in stats, after `await redis.set(key, body, ex=ttl)`, `await redis.sadd(…, key)`; "
        "in add_post, after the commit: `keys = await redis.smembers(…)` then `if keys: await redis.delete(…)`. "
        "The gaps: one tag key under `prefix`, and what to delete besides the cached keys.",
    ),
    timeout=60,
)
async def check_invalidate(make_app: Any, checking: Checking) -> str:
    """Warm three /stats variants (random min_likes) and four /users, some on each of two worker processes; POST on the
    second with its commit held while the first reads; every read from the response on is fresh on both workers,
    also after a second POST on the first; /users still hit."""
    rng = random.SystemRandom()
    stats = ["/stats", f"/stats?min_likes={rng.randint(1, 9)}", f"/stats?min_likes={rng.randint(101, 399)}"]
    users = [f"/users/{i}" for i in (1, 2, 3, 4)]
    mine, theirs = stats[:2] + users[:2], stats[2:] + users[2:]  # who caches each one first
    ttl, pause = 60, 0.05
    with make_demo_db(users=200, posts_per_user=5, seed=5) as db:
        async with _two_workers(checking, make_app, db, ttl, hold=True) as rig, app_client(rig.app) as client:
            assert rig.hold is not None
            before = _answers(db, stats + users)
            for path in mine:
                body, _ = await _get(checking, client, db, path)
                checking.expect(body == before[path], f"GET {path} returned {str(body)[:160]}, not the uncached "
                                                      f"answer {str(before[path])[:160]}")
            for path in theirs:
                await _worker_get(checking, rig, path, before[path])
            for path in stats + users:
                _, count = await _get(checking, client, db, path)
                checking.expect(count == 0, f"the second GET {path} ran {count} queries: cache both /stats and "
                                            "/users/{id} first (this exercise checks what a write clears)."
                                + (" This one was cached by the second worker process: each process keeps its "
                                   "own cache. Store entries in `redis`, shared by every worker."
                                   if path in theirs else ""))
                count = await _worker_get(checking, rig, path, before[path])
                checking.expect(count == 0, f"GET {path} was cached, yet on the second worker process it ran "
                                            f"{count} queries: each process keeps its own cache. Store entries in "
                                            "`redis`, shared by every worker.")
            await _check_entries_expire(rig, checking, before, ttl)
            _check_commands(rig, checking)
            async with rig.direct.pipeline(transaction=False) as pipe:  # a Redis also holds other keys of the app's:
                for i in range(300):  # named to sort first (fakeredis's SCAN walks keys in order), so one SCAN page
                    pipe.set(f"{rig.prefix}:!other:{i}", b"1", ex=ttl)  # of COUNT keys is not all the keys
                await pipe.execute()

            # The write, on the second worker. Its COMMIT is held back (the INSERT done, invisible to others) while the
            # first worker reads every variant, as readers do under load; then the response is reported the moment it
            # is sent, and the first worker reads again while the second stands still.
            started = rig.proxy.mark()
            rig.hold.arm()
            rig.worker.send("post-ack", "/posts", {"user_id": 1, "title": "Fresh", "likes": 400})
            deadline = time.monotonic() + 15
            while not rig.hold.held.is_set() and not rig.worker.answered():
                if time.monotonic() > deadline:
                    rig.hold.release()
                    checking.fail("POST /posts on the second worker process neither committed nor answered within "
                                  "15 s: does it wait for something that never comes?")
                await asyncio.sleep(0.005)
            held, window = rig.hold.held.is_set(), 0
            early = [c for c in rig.proxy.since(started) if c.name in _REDIS_WRITES] if held else []
            try:
                if held:
                    with count_queries(db.engine) as queries:
                        await asyncio.gather(*(client.get(path) for path in stats for _ in range(2)),
                                             return_exceptions=True)
                    window = queries.count
            finally:
                rig.hold.release()
                committing = rig.proxy.mark()  # from here until the response only the writer runs
            kind, replies, _ = await rig.worker.message(checking, timeout=15)
            wrote = [c for c in rig.proxy.since(committing if held else started) if c.name in _REDIS_WRITES]
            at_response: list[str] = []
            if kind == "ack":
                try:
                    for path in stats:
                        body, _ = await _get(checking, client, db, path)
                        if body == before[path]:
                            at_response.append(path)
                finally:
                    rig.worker.send("continue")
                kind, replies, _ = await rig.worker.message(checking, timeout=15)
            status, content = replies[0]
            checking.expect(status in (200, 201), f"POST /posts on the second worker process answered {status}: "
                                                  f"{content[:200]!r}")
            await asyncio.sleep(pause)
            fresh = _answers(db, stats)
            checking.expect(all(fresh[path] != before[path] for path in stats),
                            "after POST /posts the /stats answers read from the database are unchanged: the POST must "
                            "still insert the post (`create_post`), then invalidate.")
            later = await _stale_reads(checking, rig, client, db, stats, fresh)
            checking.record("commit_held", int(held))
            checking.record("queries_while_write_in_flight", window)
            checking.record("stale_at_response", len(at_response))
            checking.record("stale_after_write", len(later))
            _check_commands(rig, checking)  # KEYS, FLUSHDB, stray keys: named before what they break
            if window and (at_response or later):
                gone = f" (your POST sent `{early[0]}` before its commit)" if early else ""
                checking.fail(
                    f"while POST /posts was in flight on the second worker process (its INSERT done, its COMMIT held "
                    f"back by the grader), {2 * len(stats)} GETs of /stats on the first worker ran {window} database "
                    f"queries: the cached answers were already gone{gone}. Those reads saw the data as it was before "
                    "the write and cached it again, so after POST /posts had answered, GET "
                    f"{(at_response or [p for p, _ in later])[0]} still returned the old answer, and would until the "
                    f"TTL ({ttl} s). Under load some read always lands in that gap. Clear the cache (or bump the "
                    "version) after the commit, i.e. after `create_post` returns, never before.")
            if at_response and not later:
                checking.fail(
                    f"at the moment POST /posts sent its response (the grader read then, on the other worker), GET "
                    f"{at_response[0]} still returned the old answer; {pause * 1000:.0f} ms later it was fresh. Your "
                    "invalidation runs after the response is sent (BackgroundTasks, asyncio.create_task, a dependency's "
                    "teardown), so a client that reads right after its write sees the old data. Invalidate before "
                    "the route returns.")
            if later:
                checking.fail(_why_stale(later, stats, "second",
                                         "after POST /posts (sent to the second worker process) had answered",
                                         wrote=early + wrote)
                              + _one_scan_page(rig.proxy.since(started)))

            # A second write, on the first worker this time: invalidation must work on every write, from either side.
            response = await client.post("/posts", json={"user_id": 2, "title": "Fresher", "likes": 450})
            checking.expect(response.status_code in (200, 201),
                            f"a second POST /posts answered {response.status_code}: {response.text[:200]}")
            again = _answers(db, stats)
            stale = await _stale_reads(checking, rig, client, db, stats, again)
            checking.record("stale_after_second_write", len(stale))
            if stale:
                checking.fail(_why_stale(stale, stats, "first", "after a second POST /posts (sent to the first worker "
                                                                "process this time) had answered", again=True))
            survivors = 0
            for path in users:
                _, count = await _get(checking, client, db, path)
                theirs_count = await _worker_get(checking, rig, path, before[path])
                survivors += count == 0 and theirs_count == 0
                checking.expect(count == 0 and theirs_count == 0,
                                f"after POST /posts, GET {path} ran {count} queries on the first worker and "
                                f"{theirs_count} on the second: its entry was deleted, but a new post does not change "
                                "a user. Clear only the keys that depend on posts.")
            checking.record("unrelated_keys_kept", survivors)
            await asyncio.sleep(0.2)  # anything the answer started after responding has had time to run
            stale = await _stale_reads(checking, rig, client, db, stats, again)
            checking.expect(not stale, f"{0.2 + pause:.2f} s after the second POST /posts had answered, "
                                       + ", ".join(f"GET {p} on the {w} worker" for p, w in stale)
                                       + " returned an old answer again: something your app runs after responding "
                                       "(a background task, a delayed refresh) stored an answer read before the commit.")
            await _check_entries_expire(rig, checking, again, ttl)
            _check_commands(rig, checking)
            await _check_no_stray_keys(rig, checking)
    return ("reads during a held commit, at the response and after it: every /stats variant fresh on both workers "
            "after each of two writes (one per worker), and the /users keys still cached")


def _lock_expiry_ms(command: RedisCommand) -> int | None:
    """The expiry a `SET … NX EX/PX n` gives its lock, in milliseconds (None for any other command)."""
    if command.name != "SET" or "NX" not in command.options():
        return None
    words = [a.decode(errors="replace").upper() for a in command.args[3:]]
    for unit, scale in (("PX", 1), ("EX", 1000)):
        if unit in words and words.index(unit) + 1 < len(words) and words[words.index(unit) + 1].isdigit():
            return int(words[words.index(unit) + 1]) * scale
    return None


def _why_several(rig: _Rig) -> str:
    """Why a burst ran several queries, from the locks the answer took (if any)."""
    commands = rig.proxy.since()
    expiries = [ms for command in commands if (ms := _lock_expiry_ms(command)) is not None]
    in_redis = any(lock_attempt_key(command) is not None for command in commands)  # SET NX, SETNX, a Lua SETNX
    if expiries and min(expiries) < 1000:
        return (f": your lock (SET NX) expires after {min(expiries)} ms, before the query it guards ends (here 40 ms "
                "plus the wait for the burst; in production the slowest query), so the next waiter takes it and "
                "queries too. Give the lock a TTL longer than the slowest computation.")
    if expiries or in_redis:
        return (": your lock is in Redis, yet several requests queried. After winning the lock, read the cached key "
                "once more before querying (a waiter can win it just after the first winner stored and released), "
                "and store the answer before you release the lock (released first, a waiter can win it and miss).")
    return (": they missed before the first one stored the answer. Let one request compute while the others wait "
            "for its result.")


def _locks_without_expiry(rig: _Rig) -> list[RedisCommand]:
    """Commands that take a lock (NX) that never expires: SETNX, MSETNX, SET … NX with no EX/PX/EXAT/PXAT."""
    found = []
    for command in rig.proxy.since():
        if command.name in ("SETNX", "MSETNX", "HSETNX"):
            found.append(command)
        elif command.name == "SET" and "NX" in (options := command.options()) and not options & {
                "EX", "PX", "EXAT", "PXAT"}:
            found.append(command)
    return found


@exercise(
    "03.stampede",
    title="Stop the cache stampede",
    expects=_RESOURCE + " whose GET /stats?min_likes=N runs the query once for any number of concurrent misses",
    hints=(
        "Look at what the 50 requests do between their miss and the first `set`: each one runs the query. Only one "
        "of them should; the others should wait for its result. Whatever decides who runs it must be shared by "
        "every worker process, so it cannot live in Python memory (an `asyncio.Lock` covers one process).",
        "Redis can be that arbiter: `SET key value NX PX ms` succeeds for exactly one client and expires on its "
        "own if that client dies. The winner computes and stores; the others wait and re-read the cached key, "
        "backing off (5 ms, 10 ms, 20 ms …) so that 49 waiters do not flood the event loop with polls.",
        "Shape: `while not await redis.set(lock_key, …, nx=True, px=…): await asyncio.sleep(pause); pause = …; "
        "body = await redis.get(key); if body is not None: return …`. After winning, read `key` once more before "
        "querying, and release the lock in a `finally`. Keep `lock_key` under `prefix`.",
    ),
    timeout=60,
)
async def check_stampede(make_app: Any, checking: Checking) -> str:
    """50 concurrent misses, 25 on each of two worker processes sharing Redis → 1 query, with the lock's hand-over
    played at its worst by the proxy (a waiter tries the lock just after its release; a store sent right after a
    release waits); every key watched in flight: locks expire, keys under the prefix, the answer cached with its TTL."""
    per_worker, min_likes, ttl = 25, 200, 60
    path = f"/stats?min_likes={min_likes}"
    with make_demo_db(users=200, posts_per_user=5, seed=7) as db:
        expected = _expected(db, min_likes)
        with simulated_latency(db.engine, 40):
            async with _two_workers(checking, make_app, db, ttl, latency_ms=40, gate=True) as rig, \
                    app_client(rig.app) as client:
                assert rig.gate is not None
                with KeyWatch(rig.upstream, rig.prefix) as watch:
                    rig.gate.expect(2 * per_worker)
                    started = time.monotonic()
                    rig.worker.send("get", path, per_worker)
                    with count_queries(db.engine) as queries:
                        mine = await asyncio.gather(*(client.get(path) for _ in range(per_worker)))
                    theirs, their_count = await rig.worker.reply(checking)
                    rig.gate.expect(0)
                    checking.record("burst_seconds", round(time.monotonic() - started, 2))
                replies = [(r.status_code, r.content) for r in mine] + theirs
                bad = [(status, content) for status, content in replies if status != 200]
                checking.expect(not bad, f"{len(bad)} of {len(replies)} concurrent GET {path} failed, e.g. "
                                         f"{bad[0][0] if bad else ''}: {bad[0][1][:160] if bad else ''!r}")
                wrong = [content for _, content in replies if not _same_json(content, expected)]
                checking.expect(not wrong, f"{len(wrong)} of {len(replies)} concurrent GET {path} returned a body "
                                           "different from the uncached answer")
                total = queries.count + their_count
                checking.record("queries_first_worker", queries.count)
                checking.record("queries_second_worker", their_count)
                checking.record("queries_total", total)
                burst = (f"{2 * per_worker} concurrent first GET {path}, {per_worker} on each of two worker processes "
                         f"sharing Redis, ran {total} database queries ({queries.count} in the first, {their_count} "
                         "in the second), expected exactly 1")
                checking.expect(total > 0, _NO_QUERY)
                in_redis = any(_lock_expiry_ms(command) is not None for command in rig.proxy.since())
                checking.expect(total == 1 or in_redis or not (queries.count == their_count == 1),
                                burst + ": one per process. Whatever makes the others wait lives in each process's "
                                "memory (an asyncio.Lock, a threading.Lock, a dict of pending results), so it cannot "
                                "stop the other worker. Take the lock in Redis (SET NX with an expiry), which every "
                                "worker shares.")
                checking.expect(total == 1, burst + _why_several(rig))
                _check_commands(rig, checking)
                never = _locks_without_expiry(rig)
                checking.expect(not never, f"your app took a lock with `{never[0] if never else ''}`, which never "
                                           "expires: if the worker holding it dies (a crash, a deploy, an out-of-memory "
                                           "kill) the key stays for ever and every later miss waits on it. "
                                           + ("SETNX cannot set an expiry, and an EXPIRE after it is a second command "
                                              "that a crash can skip. " if never and never[0].name != "SET" else "")
                                           + "Give the lock its expiry in the same command: SET NX PX (or EX).")
                cached = await _check_entries_expire(rig, checking, {path: expected}, ttl)
                for key in watch.without_expiry():
                    kind = await rig.direct.type(key)
                    if kind == b"set":  # a tag set: not what this exercise is about
                        continue
                    name = key.decode(errors="replace")
                    checking.fail(f"while the requests were in flight, the key {name!r} existed with no expiry (PTTL "
                                  f"-1, seen in {len(watch.samples[key])} polls) — your lock? If the worker holding "
                                  "it dies, it stays for ever and every later miss waits on it. Set the expiry in the "
                                  "command that creates it (SET NX PX), or in the same script.")
                checking.record("keys_polls", watch.polls)
                checking.expect(cached > 0, f"after the burst Redis holds no copy of the answer under {rig.prefix!r}: "
                                            "store the computed body in `redis`, under `prefix`, with the TTL `ttl`.")
                await _check_no_stray_keys(rig, checking)
    return (f"{2 * per_worker} concurrent misses on two worker processes → 1 query; the lock expires and every key "
            "is under the prefix")


# ---------------------------------------------------------------- benchmark


async def _bench_rows() -> list[BenchRow]:
    redis = get_redis()
    prefix = new_prefix("bench03")
    try:
        with make_demo_db(users=5000, posts_per_user=10) as db:
            uncached = make_uncached_app(db)
            cache = ResponseCache(redis, prefix, ttl=300)
            async with app_client(uncached) as plain, app_client(make_cached_app(db, cache)) as cached:
                result = await compare({"miss (query)": lambda: plain.get("/stats"),
                                        "hit (Redis)": lambda: cached.get("/stats")}, n=30, warmup=2)
            with simulated_latency(db.engine, 20):
                counts = {}
                for lock in (False, True):
                    app = make_cached_app(db, ResponseCache(redis, new_prefix(prefix), ttl=300), lock=lock)
                    with count_queries(db.engine) as queries:
                        await concurrent_gets([app], "/stats?min_likes=1", 50)
                    counts[lock] = queries.count
    finally:
        await drop_keys(redis, prefix)
        await redis.aclose()
    ratio = result.ratio
    backend = "fakeredis" if redis_backend() == "fakeredis" else "real Redis"
    return [
        BenchRow(f"GET /stats hit vs miss, 50k posts (miss {result['miss (query)'].median_ms:.1f} ms, "
                       f"hit {result['hit (Redis)'].median_ms:.2f} ms, {backend})", ratio, "×", "≥ 10×",
                 ratio >= 10),
        BenchRow("50 concurrent misses, no lock: database queries", counts[False], "queries"),
        BenchRow("50 concurrent misses, Redis lock: database queries", counts[True], "queries", "= 1",
                 counts[True] == 1),
    ]


def bench() -> list[BenchRow]:
    """Headline figures: hit-vs-miss latency ratio, and the stampede's query count without and with a lock."""
    return asyncio.run(_bench_rows())
