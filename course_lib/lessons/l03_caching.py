"""Lesson 03 (caching): a slow aggregate endpoint, an explicit Redis response cache, and the graders."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import random
import time
import uuid
from datetime import datetime
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from pydantic import BaseModel, TypeAdapter
from redis.asyncio import Redis
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from ..bench import BenchRow
from ..client import app_client
from ..db import DemoDB, Post, User, make_demo_db
from ..grading import Checking, exercise
from ..queries import count_queries, simulated_latency
from ..redis import get_redis, redis_backend
from ..timing import compare

LESSON = "03_caching"

__all__ = [
    "CountryStats", "NewPost", "UserOut", "country_stats", "stats_json", "user_json", "create_post",
    "new_prefix", "drop_keys", "ResponseCache", "url_key", "make_uncached_app", "make_article_app",
    "url_key_builder", "make_cached_app", "make_memory_cached_app", "make_http_cached_app",
    "concurrent_gets", "show_source", "bench",
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


def json_response(body: bytes, status: str = "") -> Response:
    """A JSON response from bytes already serialised, with an `X-Cache: HIT/MISS` header when given."""
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
            return cached, True
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
                return cached, True
            if time.monotonic() > deadline:  # the holder is stuck: stop waiting and query ourselves
                return await self._fill(key, compute, ttl, tags), False
        try:
            cached = await self.redis.get(key)  # filled between our miss and our lock?
            if cached is not None:
                self.hits += 1
                return cached, True
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
    @cache(expire=300, key_builder=key_builder)
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


# ---------------------------------------------------------------- graders

_RESOURCE = "a function make_app(db, redis, prefix, ttl) that returns a FastAPI app"


class _Recorder:
    """Wrap a Redis client's `execute_command` to keep the name of every command the learner's app sends."""

    def __init__(self, redis: Redis) -> None:
        self.commands: list[str] = []
        original = redis.execute_command

        async def recording(*args: Any, **options: Any) -> Any:
            if args:
                self.commands.append(str(args[0]).upper())
            return await original(*args, **options)

        redis.execute_command = recording  # type: ignore[method-assign]


async def _redis_for_grading() -> tuple[Redis, str, _Recorder]:
    redis = get_redis()
    return redis, new_prefix("grade03"), _Recorder(redis)


async def _check_prefix(redis: Redis, prefix: str, checking: Checking) -> None:
    """Fail if the answer wrote keys outside its prefix (checked on the private fakeredis only)."""
    if redis_backend() != "fakeredis":
        return
    stray = [k.decode(errors="replace") async for k in redis.scan_iter(match="*") if not k.startswith(prefix.encode())]
    checking.expect(not stray, f"your app wrote keys outside the prefix it was given ({prefix!r}): {stray[:3]}. "
                               "Start every key with `prefix`: apps (and test runs) sharing one Redis must not collide.")


async def _check_stored_in_redis(redis: Redis, prefix: str, checking: Checking) -> None:
    """Fail unless the cached entry is in Redis under `prefix` (a dict in the process also saves queries)."""
    await _check_prefix(redis, prefix, checking)
    checking.expect([k async for k in redis.scan_iter(match=f"{prefix}*")] != [],
                    f"your endpoint served 49 of 50 calls without the database, but Redis holds no key under "
                    f"{prefix!r}: the cache lives inside this process (a dict?). Every worker would keep its own "
                    "copy and a write could not clear them all: store the body in `redis`, under `prefix`.")


async def _cleanup(redis: Redis, prefix: str) -> None:
    """Delete the run's keys and close the client."""
    try:
        await drop_keys(redis, prefix)
    finally:
        await redis.aclose()


def _expected(db: DemoDB, min_likes: int) -> Any:
    with db.session() as session:
        return json.loads(stats_json(session, min_likes))


async def _get(checking: Checking, client: Any, db: DemoDB, path: str) -> tuple[Any, int]:
    """GET `path`, require 200 and JSON; return (parsed body, queries run)."""
    with count_queries(db.engine) as queries:
        response = await client.get(path)
    checking.expect(response.status_code == 200,
                    f"GET {path} answered {response.status_code}, expected 200. Body: {response.text[:200]}")
    try:
        return response.json(), queries.count
    except ValueError:
        checking.fail(f"GET {path} did not return JSON: {response.text[:120]!r}")
        raise


@exercise(
    "03.cache-endpoint",
    title="Cache the slow endpoint in Redis",
    lesson=LESSON,
    expects=_RESOURCE + " whose GET /stats?min_likes=N is cached in `redis` for `ttl` seconds",
    hints=(
        "Build the key from the request: `f\"{prefix}:{request.url.path}?{request.url.query}\"` (or the "
        "lesson's `url_key(prefix, request)`). `await redis.get(key)`; on a miss compute the JSON bytes and "
        "`await redis.set(key, body, px=int(ttl * 1000))`.",
        "Inside `stats`: `key = url_key(prefix, request)`; `body = await redis.get(key)`; `if body is None: "
        "body = await run_in_threadpool(stats_json, session, min_likes)` then `await redis.set(key, body, "
        "px=int(ttl * 1000))`; `return json_response(body)`. Keep the query parameter in the key and the TTL "
        "on the SET.",
    ),
    timeout=60,
)
async def check_cache_endpoint(make_app: Any, checking: Checking) -> str:
    """50 calls → 1 query with bodies equal to uncached; another min_likes → its own key; after the TTL → 1 query."""
    ttl = 1  # whole seconds, so `ex=ttl` and `px=ttl * 1000` both work
    redis, prefix, _ = await _redis_for_grading()
    try:
        with make_demo_db(users=300, posts_per_user=6, seed=3) as db:
            app = checking.build_app(make_app, db, redis, prefix, ttl)
            expected = {m: _expected(db, m) for m in (0, 250)}
            async with app_client(app) as client:
                started = time.monotonic()
                total = 0
                for i in range(50):
                    body, count = await _get(checking, client, db, "/stats?min_likes=0")
                    total += count
                    checking.expect(body == expected[0],
                                    f"call {i + 1} of GET /stats?min_likes=0 returned {str(body)[:160]}, not the "
                                    f"uncached answer {str(expected[0])[:160]}")
                elapsed = time.monotonic() - started
                checking.record("queries_for_50_calls", total)
                checking.expect(elapsed < ttl or total <= 2,
                                f"50 calls took {elapsed:.2f} s, longer than the {ttl} s TTL: the machine is too busy "
                                "to grade this now; run the check again.")
                checking.expect(total == 1, f"50 calls to GET /stats?min_likes=0 ran {total} database queries; "
                                            "a cached endpoint runs 1 (the first miss), then serves Redis.")
                await _check_stored_in_redis(redis, prefix, checking)
                body, count = await _get(checking, client, db, "/stats?min_likes=250")
                checking.expect(body == expected[250],
                                f"GET /stats?min_likes=250 returned {str(body)[:160]}, which is "
                                + ("the cached answer for min_likes=0: the query parameter is not in your key"
                                   if body == expected[0] else f"not the uncached answer {str(expected[250])[:160]}"))
                checking.expect(count == 1, f"the first GET /stats?min_likes=250 ran {count} queries, expected 1 "
                                            "(a new parameter is a new key, so one miss).")
                body, count = await _get(checking, client, db, "/stats?min_likes=0")
                checking.expect(count == 0, f"GET /stats?min_likes=0 again (within the TTL) ran {count} queries, "
                                            "expected 0: min_likes=250 must not evict min_likes=0.")
                await asyncio.sleep(max(0.0, started + ttl + 0.3 - time.monotonic()))
                body, count = await _get(checking, client, db, "/stats?min_likes=0")
                checking.record("queries_after_ttl", count)
                checking.expect(count == 1, f"{ttl + 0.3:.1f} s after the first call (TTL {ttl} s), GET "
                                            f"/stats?min_likes=0 ran {count} queries, expected 1: the entry should "
                                            "have expired. Set the TTL when you store it (`px=` or `ex=`).")
                checking.expect(body == expected[0], "after the TTL the body differs from the uncached answer")
        await _check_prefix(redis, prefix, checking)
    finally:
        await _cleanup(redis, prefix)
    return "50 calls → 1 query, identical bodies, one key per query string, expired after the TTL"


@exercise(
    "03.invalidate",
    title="Invalidate on write",
    lesson=LESSON,
    expects=_RESOURCE + " with cached GET /stats and GET /users/{id}, and POST /posts that invalidates /stats",
    hints=(
        "When you cache a /stats answer, also remember its key in a set: `await redis.sadd(f\"{prefix}:tag:posts\", "
        "key)`. In POST /posts, after the commit, delete the keys in that set (`smembers`, then `delete`). "
        "Leave /users/* keys alone, and never use KEYS.",
        "Another way: a version number. Key /stats as `f\"{prefix}:v{await redis.get(prefix + ':posts-version')}…\"` "
        "and `await redis.incr(prefix + ':posts-version')` in POST /posts: old keys are never read again and "
        "expire on their own. Either way /users/1 must still be a hit after the POST.",
    ),
    timeout=60,
)
async def check_invalidate(make_app: Any, checking: Checking) -> str:
    """Warm /stats (2 variants) and /users (2 ids); POST a post; /stats fresh for both, /users still hits."""
    redis, prefix, recorder = await _redis_for_grading()
    try:
        with make_demo_db(users=200, posts_per_user=5, seed=5) as db:
            app = checking.build_app(make_app, db, redis, prefix, 60)
            paths = ["/stats?min_likes=0", "/stats?min_likes=100", "/users/1", "/users/2"]
            async with app_client(app) as client:
                for path in paths:
                    await _get(checking, client, db, path)
                for path in paths:
                    _, count = await _get(checking, client, db, path)
                    checking.expect(count == 0, f"the second GET {path} ran {count} queries: cache both /stats and "
                                                "/users/{id} first (this exercise checks what a write clears).")
                response = await client.post("/posts", json={"user_id": 1, "title": "Fresh", "likes": 400})
                checking.expect(response.status_code in (200, 201),
                                f"POST /posts answered {response.status_code}: {response.text[:200]}")
                for min_likes in (0, 100):
                    body, count = await _get(checking, client, db, f"/stats?min_likes={min_likes}")
                    expected = _expected(db, min_likes)
                    checking.expect(body == expected,
                                    f"after POST /posts, GET /stats?min_likes={min_likes} still returned the old "
                                    f"answer ({count} queries): stale. Every /stats variant depends on posts, so "
                                    "the write must clear them all.")
                survivors = 0
                for path in paths[2:]:
                    _, count = await _get(checking, client, db, path)
                    survivors += count == 0
                    checking.expect(count == 0, f"after POST /posts, GET {path} ran {count} queries: its entry was "
                                                "deleted, but a new post does not change a user. Clear only the "
                                                "keys that depend on posts.")
                checking.record("unrelated_keys_kept", survivors)
            checking.expect("KEYS" not in recorder.commands,
                            "your app sent KEYS to Redis. KEYS walks every key of the server and blocks all other "
                            "clients meanwhile: fine on a laptop, an outage on a big production Redis. Keep a set "
                            "of keys per tag (SADD / SMEMBERS) or version your keys instead.")
            for flush in ("FLUSHDB", "FLUSHALL"):
                checking.expect(flush not in recorder.commands, f"your app sent {flush}: that wipes every key of "
                                                                 "every app sharing this Redis.")
        await _check_prefix(redis, prefix, checking)
    finally:
        await _cleanup(redis, prefix)
    return "a write refreshed both /stats variants and left the /users keys cached"


@exercise(
    "03.stampede",
    title="Stop the cache stampede",
    lesson=LESSON,
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
    """50 concurrent misses on one app → 1 query; 50 concurrent misses over two apps (two workers) → 1 query."""
    redis, prefix, _ = await _redis_for_grading()
    try:
        with make_demo_db(users=200, posts_per_user=5, seed=7) as db, simulated_latency(db.engine, 40):
            rounds = ((1, 0, "one app"), (2, 200, "two app instances sharing Redis (two workers)"))
            for workers, min_likes, label in rounds:
                apps = [checking.build_app(make_app, db, redis, prefix, 60) for _ in range(workers)]
                expected = _expected(db, min_likes)
                path = f"/stats?min_likes={min_likes}"
                with count_queries(db.engine) as queries:
                    responses = await concurrent_gets(apps, path, 50)
                bad = [r for r in responses if r.status_code != 200]
                checking.expect(not bad, f"{len(bad)} of 50 concurrent GET {path} failed, e.g. "
                                         f"{bad[0].status_code if bad else ''}: {bad[0].text[:160] if bad else ''}")
                wrong = [r for r in responses if r.json() != expected]
                checking.expect(not wrong, f"{len(wrong)} of 50 concurrent GET {path} returned a body different "
                                           "from the uncached answer")
                checking.record(f"queries_{workers}_app", queries.count)
                checking.expect(queries.count == 1,
                                f"50 concurrent first GET {path} on {label} ran {queries.count} database queries, "
                                "expected exactly 1"
                                + (": all of them missed before the first one stored the answer. Let one request "
                                   "compute while the others wait for its result." if workers == 1 else
                                   ": a lock in one process does not stop the other. Take the lock in Redis "
                                   "(SET NX), which every worker shares."))
        await _check_prefix(redis, prefix, checking)
    finally:
        await _cleanup(redis, prefix)
    return "50 concurrent misses → 1 query, on one app and across two"


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
        BenchRow("03", f"GET /stats hit vs miss, 50k posts (miss {result['miss (query)'].median_ms:.1f} ms, "
                       f"hit {result['hit (Redis)'].median_ms:.2f} ms, {backend})", ratio, "×", "≥ 10×",
                 ratio >= 10),
        BenchRow("03", "50 concurrent misses, no lock: database queries", counts[False], "queries"),
        BenchRow("03", "50 concurrent misses, Redis lock: database queries", counts[True], "queries", "= 1",
                 counts[True] == 1),
    ]


def bench() -> list[BenchRow]:
    """Headline figures: hit-vs-miss latency ratio, and the stampede's query count without and with a lock."""
    return asyncio.run(_bench_rows())
