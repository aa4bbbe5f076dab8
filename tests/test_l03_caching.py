"""Lesson 03 (caching): the explicit cache, the lesson's apps, and every grader with right and wrong answers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from redis.asyncio import Redis
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from course_lib.client import app_client
from course_lib.db import DemoDB, make_demo_db
from course_lib.grading import grade
from course_lib.lessons.l03_caching import (
    NewPost,
    ResponseCache,
    concurrent_gets,
    create_post,
    drop_keys,
    json_response,
    make_article_app,
    make_cached_app,
    make_http_cached_app,
    make_memory_cached_app,
    make_uncached_app,
    new_prefix,
    stats_json,
    url_key,
    url_key_builder,
    user_json,
)
from course_lib.queries import count_queries, simulated_latency
from course_lib.redis import get_redis, redis_backend

AppFactory = Callable[[DemoDB, Redis, str, int], FastAPI]


# --- answer builders: a learner's app with pluggable caching --------------------------------------------


def _stats_app(get_body: Callable[..., Any]) -> AppFactory:
    """An app whose GET /stats delegates to `get_body(redis, prefix, ttl, request, session, min_likes)`."""

    def make_app(db: DemoDB, redis: Redis, prefix: str, ttl: int) -> FastAPI:
        app = FastAPI()
        get_db = db.dependency()

        @app.get("/stats")
        async def stats(request: Request, min_likes: int = 0, session: Session = Depends(get_db)) -> Response:
            return json_response(await get_body(redis, prefix, ttl, request, session, min_likes))

        return app

    return make_app


async def _reference_body(redis: Redis, prefix: str, ttl: int, request: Request, session: Session,
                          min_likes: int) -> bytes:
    key = url_key(prefix, request)
    body = await redis.get(key)
    if body is None:
        body = await run_in_threadpool(stats_json, session, min_likes)
        await redis.set(key, body, px=int(ttl * 1000))
    return body


async def _ex_seconds_param_key(redis: Redis, prefix: str, ttl: int, request: Request, session: Session,
                                min_likes: int) -> bytes:
    """Right, written another way: key from the parsed parameter, TTL in whole seconds with `ex=`."""
    key = f"{prefix}:stats:min_likes={min_likes}"
    body = await redis.get(key)
    if body is None:
        body = await run_in_threadpool(stats_json, session, min_likes)
        await redis.set(key, body, ex=ttl)
    return body


async def _never_expires(redis: Redis, prefix: str, ttl: int, request: Request, session: Session,
                         min_likes: int) -> bytes:
    key = url_key(prefix, request)
    body = await redis.get(key)
    if body is None:
        body = await run_in_threadpool(stats_json, session, min_likes)
        await redis.set(key, body)
    return body


async def _no_param_in_key(redis: Redis, prefix: str, ttl: int, request: Request, session: Session,
                           min_likes: int) -> bytes:
    key = f"{prefix}:{request.url.path}"
    body = await redis.get(key)
    if body is None:
        body = await run_in_threadpool(stats_json, session, min_likes)
        await redis.set(key, body, ex=ttl)
    return body


async def _uncached(redis: Redis, prefix: str, ttl: int, request: Request, session: Session, min_likes: int) -> bytes:
    return await run_in_threadpool(stats_json, session, min_likes)


async def _no_prefix(redis: Redis, prefix: str, ttl: int, request: Request, session: Session, min_likes: int) -> bytes:
    key = f"stats:{min_likes}"
    body = await redis.get(key)
    if body is None:
        body = await run_in_threadpool(stats_json, session, min_likes)
        await redis.set(key, body, ex=ttl)
    return body


_PROCESS_CACHE: dict[str, tuple[float, bytes]] = {}


async def _dict_in_process(redis: Redis, prefix: str, ttl: int, request: Request, session: Session,
                           min_likes: int) -> bytes:
    """Wrong: right counts and expiry, but the cache is a dict in this process, not Redis."""
    key = url_key(prefix, request)
    expires, body = _PROCESS_CACHE.get(key, (0.0, b""))
    if expires < time.monotonic():
        body = await run_in_threadpool(stats_json, session, min_likes)
        _PROCESS_CACHE[key] = (time.monotonic() + ttl, body)
    return body


def _response_cache_app(lock: bool) -> AppFactory:
    """Right, another way: the lesson's ResponseCache."""

    def make_app(db: DemoDB, redis: Redis, prefix: str, ttl: int) -> FastAPI:
        return make_cached_app(db, ResponseCache(redis, prefix, ttl=ttl), lock=lock)

    return make_app


def _grade(exercise_id: str, answer: Any) -> Any:
    return grade(exercise_id, answer, timeout=60)


# --- 03.cache-endpoint ------------------------------------------------------------------------------------


def test_cache_endpoint_reference_passes():
    result = _grade("03.cache-endpoint", _stats_app(_reference_body))
    assert result.passed, result.message
    assert result.figures["queries_for_50_calls"] == 1
    assert result.figures["queries_after_ttl"] == 1


@pytest.mark.parametrize("answer", [_stats_app(_ex_seconds_param_key), _response_cache_app(lock=False)],
                         ids=["param-key-ex", "ResponseCache"])
def test_cache_endpoint_other_right_answers_pass(answer):
    result = _grade("03.cache-endpoint", answer)
    assert result.passed, result.message


@pytest.mark.parametrize(("body", "says"), [
    (_never_expires, "should have expired"),
    (_no_param_in_key, "query parameter is not in your key"),
    (_uncached, "50 calls to GET /stats?min_likes=0 ran 50 database queries"),
    pytest.param(_no_prefix, "outside the prefix", marks=pytest.mark.skipif(
        redis_backend() != "fakeredis", reason="stray keys are only detectable on the private fakeredis")),
    (_dict_in_process, "Redis holds no key"),
], ids=["never-expires", "no-param", "uncached", "no-prefix", "dict-in-process"])
def test_cache_endpoint_wrong_answers_fail_saying_what_was_measured(body, says):
    result = _grade("03.cache-endpoint", _stats_app(body))
    assert not result.passed
    assert says in result.message, result.message
    assert result.hint


@pytest.mark.parametrize("answer", [None, 42, lambda db, redis, prefix, ttl: None, lambda: FastAPI(),
                                    lambda db, redis, prefix, ttl: 1 / 0])
def test_cache_endpoint_odd_answers_fail_clearly(answer):
    result = _grade("03.cache-endpoint", answer)
    assert not result.passed
    assert result.message


# --- 03.invalidate -----------------------------------------------------------------------------------------


def _invalidating_app(invalidate: Callable[[Redis, str], Any], versioned: bool = False) -> AppFactory:
    """A learner's app: cached /stats (tagged) and /users/{id}; POST /posts then `invalidate(redis, prefix)`."""

    def make_app(db: DemoDB, redis: Redis, prefix: str, ttl: int) -> FastAPI:
        app = FastAPI()
        get_db = db.dependency()

        async def stats_key(request: Request) -> str:
            if versioned:
                version = int(await redis.get(f"{prefix}:posts-version") or 0)
                return f"{prefix}:v{version}:{request.url.path}?{request.url.query}"
            return url_key(prefix, request)

        @app.get("/stats")
        async def stats(request: Request, min_likes: int = 0, session: Session = Depends(get_db)) -> Response:
            key = await stats_key(request)
            body = await redis.get(key)
            if body is None:
                body = await run_in_threadpool(stats_json, session, min_likes)
                await redis.set(key, body, ex=ttl)
                await redis.sadd(f"{prefix}:tag:posts", key)
            return json_response(body)

        @app.get("/users/{user_id}")
        async def read_user(request: Request, user_id: int, session: Session = Depends(get_db)) -> Response:
            key = url_key(prefix, request)
            body = await redis.get(key)
            if body is None:
                body = await run_in_threadpool(user_json, session, user_id)
                if body is None:
                    raise HTTPException(404)
                await redis.set(key, body, ex=ttl)
            return json_response(body)

        @app.post("/posts", status_code=201)
        async def add_post(new: NewPost, session: Session = Depends(get_db)) -> dict[str, int]:
            post_id = await run_in_threadpool(create_post, session, new)
            await invalidate(redis, prefix)
            return {"id": post_id}

        return app

    return make_app


async def _clear_tag(redis: Redis, prefix: str) -> None:
    keys = await redis.smembers(f"{prefix}:tag:posts")
    if keys:
        await redis.delete(*keys, f"{prefix}:tag:posts")


async def _bump_version(redis: Redis, prefix: str) -> None:
    await redis.incr(f"{prefix}:posts-version")


async def _clear_everything(redis: Redis, prefix: str) -> None:
    await drop_keys(redis, prefix)


async def _keys_pattern(redis: Redis, prefix: str) -> None:
    keys = await redis.keys(f"{prefix}:/stats*")
    if keys:
        await redis.delete(*keys)


async def _only_default_key(redis: Redis, prefix: str) -> None:
    await redis.delete(f"{prefix}:/stats?min_likes=0")


async def _nothing(redis: Redis, prefix: str) -> None:
    return None


def test_invalidate_reference_passes():
    result = _grade("03.invalidate", _invalidating_app(_clear_tag))
    assert result.passed, result.message
    assert result.figures["unrelated_keys_kept"] == 2


@pytest.mark.parametrize("answer", [_invalidating_app(_bump_version, versioned=True), _response_cache_app(lock=False)],
                         ids=["versioned-keys", "ResponseCache"])
def test_invalidate_other_right_answers_pass(answer):
    result = _grade("03.invalidate", answer)
    assert result.passed, result.message


@pytest.mark.parametrize(("invalidate", "says"), [
    (_clear_everything, "GET /users/1 ran 1 queries: its entry was deleted"),
    (_keys_pattern, "your app sent KEYS"),
    (_only_default_key, "GET /stats?min_likes=100 still returned the old answer"),
    (_nothing, "GET /stats?min_likes=0 still returned the old answer"),
], ids=["clears-everything", "KEYS", "one-key-only", "no-invalidation"])
def test_invalidate_wrong_answers_fail_saying_what_was_measured(invalidate, says):
    result = _grade("03.invalidate", _invalidating_app(invalidate))
    assert not result.passed
    assert says in result.message, result.message


def test_invalidate_uncached_answer_fails_on_the_warm_up():
    result = _grade("03.invalidate", lambda db, redis, prefix, ttl: make_uncached_app(db))
    assert not result.passed
    assert "cache both /stats and /users/{id} first" in result.message


# --- 03.stampede --------------------------------------------------------------------------------------------


async def _lock_body(redis: Redis, prefix: str, ttl: int, request: Request, session: Session, min_likes: int) -> bytes:
    """The reference: SET NX lock in Redis, losers poll, winner double-checks."""
    key = url_key(prefix, request)
    body = await redis.get(key)
    if body is not None:
        return body
    lock_key = key + ":lock"
    while not await redis.set(lock_key, "1", nx=True, px=10_000):
        await asyncio.sleep(0.005)
        body = await redis.get(key)
        if body is not None:
            return body
    try:
        body = await redis.get(key)
        if body is None:
            body = await run_in_threadpool(stats_json, session, min_likes)
            await redis.set(key, body, ex=ttl)
        return body
    finally:
        await redis.delete(lock_key)


async def _redis_py_lock_body(redis: Redis, prefix: str, ttl: int, request: Request, session: Session,
                              min_likes: int) -> bytes:
    """Right, another way: redis-py's own Lock (a Lua-scripted lock), blocking until the holder is done."""
    key = url_key(prefix, request)
    body = await redis.get(key)
    if body is not None:
        return body
    async with redis.lock(key + ":lock", timeout=10, sleep=0.005, blocking_timeout=10):
        body = await redis.get(key)
        if body is None:
            body = await run_in_threadpool(stats_json, session, min_likes)
            await redis.set(key, body, ex=ttl)
    return body


def _process_lock_app() -> AppFactory:
    """Wrong: an asyncio.Lock per app instance; it covers one process, not two workers."""

    def make_app(db: DemoDB, redis: Redis, prefix: str, ttl: int) -> FastAPI:
        lock = asyncio.Lock()

        async def body(redis: Redis, prefix: str, ttl: int, request: Request, session: Session, min_likes: int) -> bytes:
            async with lock:
                return await _reference_body(redis, prefix, ttl, request, session, min_likes)

        return _stats_app(body)(db, redis, prefix, ttl)

    return make_app


def test_stampede_reference_passes():
    result = _grade("03.stampede", _stats_app(_lock_body))
    assert result.passed, result.message
    assert result.figures["queries_1_app"] == 1
    assert result.figures["queries_2_app"] == 1


@pytest.mark.parametrize("answer", [_stats_app(_redis_py_lock_body), _response_cache_app(lock=True)],
                         ids=["redis-py-lock", "ResponseCache"])
def test_stampede_other_right_answers_pass(answer):
    result = _grade("03.stampede", answer)
    assert result.passed, result.message


@pytest.mark.parametrize(("answer", "says"), [
    (_stats_app(_reference_body), "on one app ran"),
    (_process_lock_app(), "on two app instances sharing Redis (two workers) ran 2 database queries"),
    (_stats_app(_uncached), "on one app ran 50 database queries"),
], ids=["no-lock", "process-lock", "uncached"])
def test_stampede_wrong_answers_fail_saying_what_was_measured(answer, says):
    result = _grade("03.stampede", answer)
    assert not result.passed
    assert says in result.message, result.message
    assert result.hint


# --- the lesson's helpers and apps ----------------------------------------------------------------------------


@pytest.fixture
def db():
    with make_demo_db(users=100, posts_per_user=5) as demo:
        yield demo


async def _with_redis(body: Callable[[Redis, str], Any]) -> Any:
    redis, prefix = get_redis(), new_prefix("test03")
    try:
        return await body(redis, prefix)
    finally:
        await drop_keys(redis, prefix)
        await redis.aclose()


def test_cached_app_hits_keys_on_query_and_invalidates_only_posts(db):
    async def scenario(redis: Redis, prefix: str) -> None:
        cache = ResponseCache(redis, prefix, ttl=60)
        async with app_client(make_cached_app(db, cache)) as client:
            with count_queries(db.engine) as q:
                first = await client.get("/stats?min_likes=0")
                second = await client.get("/stats?min_likes=0")
                reordered = await client.get("/stats?b=1&min_likes=0")
                again = await client.get("/stats?min_likes=0&b=1")
            assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
            assert again.headers["x-cache"] == "HIT" and reordered.headers["x-cache"] == "MISS"
            assert first.content == second.content
            assert q.count == 2
            await client.get("/users/1")
            assert (await client.get("/users/999")).status_code == 404
            assert (await client.get("/users/999")).status_code == 404  # errors are not cached
            posted = await client.post("/posts", json={"user_id": 1, "title": "x", "likes": 1})
            assert posted.status_code == 201
            with count_queries(db.engine) as q:
                stats = await client.get("/stats?min_likes=0")
                user = await client.get("/users/1")
            assert stats.headers["x-cache"] == "MISS" and user.headers["x-cache"] == "HIT"
            assert json.loads(stats.content) != json.loads(first.content)
            assert q.count == 1

    asyncio.run(_with_redis(scenario))


def test_ttl_expires(db):
    async def scenario(redis: Redis, prefix: str) -> None:
        cache = ResponseCache(redis, prefix, ttl=0.3)
        async with app_client(make_cached_app(db, cache)) as client:
            assert (await client.get("/stats")).headers["x-cache"] == "MISS"
            assert (await client.get("/stats")).headers["x-cache"] == "HIT"
            await asyncio.sleep(0.45)
            assert (await client.get("/stats")).headers["x-cache"] == "MISS"

    asyncio.run(_with_redis(scenario))


def test_stampede_counts_without_and_with_lock(db):
    async def scenario(redis: Redis, prefix: str) -> dict[bool, int]:
        counts = {}
        with simulated_latency(db.engine, 30):
            for lock in (False, True):
                app = make_cached_app(db, ResponseCache(redis, new_prefix(prefix), ttl=60), lock=lock)
                with count_queries(db.engine) as q:
                    responses = await concurrent_gets([app], "/stats", 50)
                assert len({r.content for r in responses}) == 1
                counts[lock] = q.count
        return counts

    counts = asyncio.run(_with_redis(scenario))
    assert counts[True] == 1
    assert counts[False] > 10


def test_memory_cache_goes_stale_across_workers(db):
    async def scenario() -> None:
        a, b = make_memory_cached_app(db), make_memory_cached_app(db)
        async with app_client(a) as ca, app_client(b) as cb:
            before = (await cb.get("/stats")).content
            await ca.get("/stats")
            await ca.post("/posts", json={"user_id": 2, "title": "x", "likes": 3})
            assert (await ca.get("/stats")).headers["x-cache"] == "MISS"
            stale = await cb.get("/stats")
            assert stale.headers["x-cache"] == "HIT" and stale.content == before

    asyncio.run(scenario())


def test_http_cache_answers_304_on_matching_etag(db):
    async def scenario() -> None:
        async with app_client(make_http_cached_app(db)) as client:
            first = await client.get("/stats")
            etag = first.headers["etag"]
            assert "max-age=60" in first.headers["cache-control"]
            same = await client.get("/stats", headers={"If-None-Match": etag})
            other = await client.get("/stats", headers={"If-None-Match": '"nope"'})
            assert (same.status_code, same.content) == (304, b"")
            assert other.status_code == 200 and other.content == first.content

    asyncio.run(scenario())


def test_article_recipe_misses_every_time_and_url_key_builder_fixes_it(db):
    async def scenario(redis: Redis, prefix: str) -> tuple[int, int]:
        counts = []
        for builder in (None, url_key_builder):
            app = make_article_app(db, redis, new_prefix(prefix), key_builder=builder)
            async with app_client(app) as client:
                with count_queries(db.engine) as q:
                    bodies = [(await client.get("/stats")).json() for _ in range(3)]
            assert bodies[0] == bodies[1] == bodies[2]
            counts.append(q.count)
        return counts[0], counts[1]

    assert asyncio.run(_with_redis(scenario)) == (3, 1)


def test_uncached_app_serves_the_slow_query(db):
    async def scenario() -> None:
        async with app_client(make_uncached_app(db)) as client:
            with count_queries(db.engine) as q:
                response = await client.get("/stats?min_likes=100")
            assert q.count == 1
            with db.session() as session:
                assert response.json() == json.loads(stats_json(session, 100))

    asyncio.run(scenario())
