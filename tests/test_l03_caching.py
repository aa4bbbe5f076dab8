"""Lesson 03 (caching): the explicit cache, the lesson's apps, and every grader with right and wrong answers."""

from __future__ import annotations

import asyncio
import hashlib
import json
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from answers import l03_caching as reference
from fastapi import BackgroundTasks, Depends, FastAPI, Request, Response
from fastapi.routing import APIRoute
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

import course_lib.redis as course_redis
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
)
from course_lib.queries import count_queries, simulated_latency
from course_lib.redis import RecordingProxy, get_redis, serve_redis
from course_lib.servers import running_servers

AppFactory = Callable[[DemoDB, Redis, str, int], FastAPI]


# --- answer builders: a learner's app with pluggable caching --------------------------------------------


def _route(app: FastAPI, path: str) -> APIRoute:
    """The route of `app` at `path` (a reference app's, to build answers on)."""
    return next(route for route in app.routes if isinstance(route, APIRoute) and route.path == path)


def _stats_app(get_body: Callable[..., Any]) -> AppFactory:
    """An app whose GET /stats delegates to `get_body(redis, prefix, ttl, request, session, min_likes)`."""

    def make_app(db: DemoDB, redis: Redis, prefix: str, ttl: int) -> FastAPI:
        app = FastAPI()
        get_db = db.dependency()
        # what the reference (answers/l03_caching.py) answers, for `_reference_body`
        app.state.reference_stats = _route(reference.make_app(db, redis, prefix, ttl), "/stats").endpoint

        @app.get("/stats")
        async def stats(request: Request, min_likes: int = 0, session: Session = Depends(get_db)) -> Response:
            return json_response(await get_body(redis, prefix, ttl, request, session, min_likes))

        return app

    return make_app


async def _compute(session: Session, min_likes: int) -> bytes:
    return await run_in_threadpool(stats_json, session, min_likes)


async def _reference_body(redis: Redis, prefix: str, ttl: int, request: Request, session: Session,
                          min_likes: int) -> bytes:
    """The reference's GET /stats (answers/l03_caching.py) on this request, as a body to build wrong answers on."""
    response = await request.app.state.reference_stats(request=request, min_likes=min_likes, session=session)
    return bytes(response.body)


async def _ex_seconds_param_key(redis: Redis, prefix: str, ttl: int, request: Request, session: Session,
                                min_likes: int) -> bytes:
    """Right, written another way: key from the parsed parameter, TTL in whole seconds with `ex=`."""
    key = f"{prefix}:stats:min_likes={min_likes}"
    body = await redis.get(key)
    if body is None:
        body = await _compute(session, min_likes)
        await redis.set(key, body, ex=ttl)
    return body


async def _setex_hashed_key(redis: Redis, prefix: str, ttl: int, request: Request, session: Session,
                            min_likes: int) -> bytes:
    """Right, another way: a hashed key under the prefix, SETEX."""
    key = f"{prefix}:{hashlib.sha1(str(request.url).encode()).hexdigest()}"
    body = await redis.get(key)
    if body is None:
        body = await _compute(session, min_likes)
        await redis.setex(key, ttl, body)
    return body


def _sync_client_app() -> AppFactory:
    """Right, another way: a synchronous redis-py client to the same server, used from the thread pool."""

    def make_app(db: DemoDB, redis: Redis, prefix: str, ttl: int) -> FastAPI:
        kwargs = redis.connection_pool.connection_kwargs
        client = SyncRedis(host=kwargs["host"], port=kwargs["port"], db=kwargs.get("db", 0))

        def cached(session: Session, min_likes: int) -> bytes:
            key = f"{prefix}:sync:stats:{min_likes}"
            body = client.get(key)
            if body is None:
                body = stats_json(session, min_likes)
                client.set(key, body, ex=ttl)
            return body

        async def body(redis: Redis, prefix: str, ttl: int, request: Request, session: Session, min_likes: int) -> bytes:
            return await run_in_threadpool(cached, session, min_likes)

        return _stats_app(body)(db, redis, prefix, ttl)

    return make_app


async def _never_expires(redis: Redis, prefix: str, ttl: int, request: Request, session: Session,
                         min_likes: int) -> bytes:
    key = url_key(prefix, request)
    body = await redis.get(key)
    if body is None:
        body = await _compute(session, min_likes)
        await redis.set(key, body)
    return body


async def _ttl_in_the_wrong_unit(redis: Redis, prefix: str, ttl: int, request: Request, session: Session,
                                 min_likes: int) -> bytes:
    """Wrong: milliseconds given to `ex=` (seconds): the entry lives 1000 times too long."""
    key = url_key(prefix, request)
    body = await redis.get(key)
    if body is None:
        body = await _compute(session, min_likes)
        await redis.set(key, body, ex=ttl * 1000)
    return body


async def _no_param_in_key(redis: Redis, prefix: str, ttl: int, request: Request, session: Session,
                           min_likes: int) -> bytes:
    key = f"{prefix}:{request.url.path}"
    body = await redis.get(key)
    if body is None:
        body = await _compute(session, min_likes)
        await redis.set(key, body, ex=ttl)
    return body


async def _uncached(redis: Redis, prefix: str, ttl: int, request: Request, session: Session, min_likes: int) -> bytes:
    return await _compute(session, min_likes)


async def _no_prefix(redis: Redis, prefix: str, ttl: int, request: Request, session: Session, min_likes: int) -> bytes:
    key = f"stats:{prefix[-10:]}:{min_likes}"  # unique per run, but not under the prefix
    body = await redis.get(key)
    if body is None:
        body = await _compute(session, min_likes)
        await redis.set(key, body, ex=ttl)
    return body


async def _hit_counter_outside_prefix(redis: Redis, prefix: str, ttl: int, request: Request, session: Session,
                                      min_likes: int) -> bytes:
    """Wrong: the cache is right, but a statistics key lands outside the prefix."""
    await redis.incr("cache-hits")
    return await _reference_body(redis, prefix, ttl, request, session, min_likes)


_PROCESS_CACHE: dict[str, tuple[float, bytes]] = {}


async def _dict_in_process(redis: Redis, prefix: str, ttl: int, request: Request, session: Session,
                           min_likes: int) -> bytes:
    """Wrong: right counts and expiry, but the cache is a dict in this process, not Redis."""
    key = url_key(prefix, request)
    expires, body = _PROCESS_CACHE.get(key, (0.0, b""))
    if expires < time.monotonic():
        body = await _compute(session, min_likes)
        _PROCESS_CACHE[key] = (time.monotonic() + ttl, body)
    return body


async def _dict_written_through(redis: Redis, prefix: str, ttl: int, request: Request, session: Session,
                                min_likes: int) -> bytes:
    """Wrong: writes every answer to Redis (with its TTL) but reads only its own dict."""
    key = url_key(prefix, request)
    expires, body = _PROCESS_CACHE.get(key, (0.0, b""))
    if expires < time.monotonic():
        body = await _compute(session, min_likes)
        _PROCESS_CACHE[key] = (time.monotonic() + ttl, body)
        await redis.set(key, body, ex=ttl)
    return body


_LOCAL_COPY: dict[str, bytes] = {}


async def _local_copy_in_front(redis: Redis, prefix: str, ttl: int, request: Request, session: Session,
                               min_likes: int) -> bytes:
    """Wrong: Redis with a TTL behind a local copy that never expires."""
    key = url_key(prefix, request)
    if key not in _LOCAL_COPY:
        _LOCAL_COPY[key] = await _reference_body(redis, prefix, ttl, request, session, min_likes)
    return _LOCAL_COPY[key]


async def _flush_on_miss(redis: Redis, prefix: str, ttl: int, request: Request, session: Session,
                         min_likes: int) -> bytes:
    """Wrong: a right cache that wipes the whole Redis (FLUSHDB) before storing, "to keep it small"."""
    key = url_key(prefix, request)
    body = await redis.get(key)
    if body is None:
        body = await _compute(session, min_likes)
        await redis.flushdb()
        await redis.set(key, body, ex=ttl)
    return body


def _response_cache_app(lock: bool) -> AppFactory:
    """Right, another way: the lesson's ResponseCache."""

    def make_app(db: DemoDB, redis: Redis, prefix: str, ttl: int) -> FastAPI:
        return make_cached_app(db, ResponseCache(redis, prefix, ttl=ttl), lock=lock)

    return make_app


def _grade(exercise_id: str, answer: Any) -> Any:
    return grade(exercise_id, answer, timeout=60, record=False)


def _assert_nothing_left_running() -> None:
    """Every process and thread a grading started is gone: the second worker, the Redis server, the proxy."""
    assert multiprocessing.active_children() == []
    assert running_servers() == []
    assert not [t for t in threading.enumerate() if t.name in ("redis-recording-proxy", "redis-key-watch")]


# --- 03.cache-endpoint ------------------------------------------------------------------------------------


def test_cache_endpoint_reference_passes():
    result = _grade("03.cache-endpoint", reference.make_app)
    assert result.passed, result.message
    assert result.figures["queries_for_50_calls"] == 1
    assert result.figures["second_worker_queries"] == 0
    assert result.figures["queries_after_ttl"] == 1
    _assert_nothing_left_running()


@pytest.mark.parametrize("answer", [_stats_app(_ex_seconds_param_key), _stats_app(_setex_hashed_key),
                                    _sync_client_app(), _response_cache_app(lock=False)],
                         ids=["param-key-ex", "setex-hashed-key", "sync-client", "ResponseCache"])
@pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning")
def test_cache_endpoint_other_right_answers_pass(answer):
    result = _grade("03.cache-endpoint", answer)
    assert result.passed, result.message


@pytest.mark.parametrize(("answer", "says"), [
    (_stats_app(_never_expires), "with no expiry (PTTL -1)"),
    (_stats_app(_ttl_in_the_wrong_unit), "s, but the TTL asked for is 3 s"),  # 3,000 s, or 2,999 on a slow run
    (_stats_app(_local_copy_in_front), "the entry should have expired"),
    (_stats_app(_no_param_in_key), "query parameter is not in your key"),
    (_stats_app(_uncached), "50 calls to GET /stats?min_likes=0 ran 50 database queries"),
    (_stats_app(_no_prefix), "outside the prefix"),
    (_stats_app(_hit_counter_outside_prefix), "'cache-hits' (`INCRBY cache-hits 1`), outside the prefix"),
    (_stats_app(_dict_in_process), "the cache lives inside each process"),
    (_stats_app(_dict_written_through), "the cache lives inside each process"),
    (_stats_app(_flush_on_miss), "FLUSHDB"),
], ids=["never-expires", "ttl-unit", "local-copy-never-expires", "no-param", "uncached", "no-prefix",
        "counter-outside-prefix", "dict-in-process", "dict-written-through", "flushdb"])
def test_cache_endpoint_wrong_answers_fail_saying_why(answer, says):
    _PROCESS_CACHE.clear()
    _LOCAL_COPY.clear()
    result = _grade("03.cache-endpoint", answer)
    assert not result.passed
    assert says in result.message, result.message
    assert result.hint
    _assert_nothing_left_running()


def _raises_in_the_second_worker() -> AppFactory:
    parent = os.getpid()

    def make_app(db: DemoDB, redis: Redis, prefix: str, ttl: int) -> FastAPI:
        if os.getpid() != parent:
            raise RuntimeError("only one worker")
        return reference.make_app(db, redis, prefix, ttl)

    return make_app


@pytest.mark.parametrize("answer", [None, 42, lambda db, redis, prefix, ttl: None, lambda: FastAPI(),
                                    lambda db, redis, prefix, ttl: 1 / 0, _raises_in_the_second_worker()])
def test_cache_endpoint_odd_answers_fail_clearly(answer):
    result = _grade("03.cache-endpoint", answer)
    assert not result.passed
    assert result.message and "Traceback" not in result.message
    _assert_nothing_left_running()


def test_cache_endpoint_second_worker_failure_is_named():
    result = _grade("03.cache-endpoint", _raises_in_the_second_worker())
    assert "in the second worker process" in result.message and "only one worker" in result.message, result.message


# --- 03.invalidate -----------------------------------------------------------------------------------------


def _invalidating_app(invalidate: Callable[[Redis, str], Any], versioned: bool = False, *, expire: bool = True,
                      tag: str = "{prefix}:tag:posts", post: Callable[..., Any] | None = None) -> AppFactory:
    """A learner's app: cached /stats (tagged), the reference's /users/{id}; POST /posts then `invalidate(redis,
    tag_key)`, or `post(redis, tag_key, session, new, background_tasks)` instead when given (it writes, returns the id)."""

    def make_app(db: DemoDB, redis: Redis, prefix: str, ttl: int) -> FastAPI:
        app = FastAPI()
        get_db = db.dependency()
        tag_key = tag.format(prefix=prefix)
        ex = ttl if expire else None

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
                await redis.set(key, body, ex=ex)
                await redis.sadd(tag_key, key)
            return json_response(body)

        app.router.routes.append(_route(reference.make_app_invalidating(db, redis, prefix, ttl), "/users/{user_id}"))

        @app.post("/posts", status_code=201)
        async def add_post(new: NewPost, background_tasks: BackgroundTasks,
                           session: Session = Depends(get_db)) -> dict[str, int]:
            if post is not None:
                return {"id": await post(redis, tag_key, session, new, background_tasks)}
            post_id = await run_in_threadpool(create_post, session, new)
            await invalidate(redis, tag_key)
            return {"id": post_id}

        return app

    return make_app


async def _clear_tag(redis: Redis, tag_key: str) -> None:
    keys = await redis.smembers(tag_key)
    if keys:
        await redis.delete(*keys, tag_key)


async def _clear_tag_in_a_script(redis: Redis, tag_key: str) -> None:
    """Right, another way: SMEMBERS and DEL in one Lua script (atomic)."""
    await redis.eval("local keys = redis.call('SMEMBERS', KEYS[1]) "
                     "for _, k in ipairs(keys) do redis.call('DEL', k) end "
                     "redis.call('DEL', KEYS[1]) return #keys", 1, tag_key)


async def _bump_version(redis: Redis, tag_key: str) -> None:
    await redis.incr(tag_key.rsplit(":tag:", 1)[0] + ":posts-version")


async def _scan_stats_keys(redis: Redis, tag_key: str) -> None:
    """Right, another way (slower on a big Redis, but not blocking): SCAN the /stats keys under the prefix."""
    prefix = tag_key.rsplit(":tag:", 1)[0]
    keys = [key async for key in redis.scan_iter(match=f"{prefix}:/stats*")]
    if keys:
        await redis.delete(*keys)


async def _clear_everything(redis: Redis, tag_key: str) -> None:
    await drop_keys(redis, tag_key.rsplit(":tag:", 1)[0])


async def _keys_pattern(redis: Redis, tag_key: str) -> None:
    keys = await redis.keys(tag_key.rsplit(":tag:", 1)[0] + ":/stats*")
    if keys:
        await redis.delete(*keys)


async def _only_default_key(redis: Redis, tag_key: str) -> None:
    await redis.delete(tag_key.rsplit(":tag:", 1)[0] + ":/stats?")  # the key of GET /stats (no min_likes)


async def _fixed_list(redis: Redis, tag_key: str) -> None:
    """Wrong: the variants someone thought of (the default and the lesson's values), not the ones cached."""
    prefix = tag_key.rsplit(":tag:", 1)[0]
    await redis.delete(*(f"{prefix}:/stats?{query}" for query in ("", "min_likes=0", "min_likes=100", "min_likes=250")))


async def _pattern_missing_the_default(redis: Redis, tag_key: str) -> None:
    """Wrong: a full SCAN, but its pattern needs `min_likes=`, so GET /stats (no parameter) stays cached."""
    prefix = tag_key.rsplit(":tag:", 1)[0]
    keys = [key async for key in redis.scan_iter(match=f"{prefix}:/stats?min_likes=*")]
    if keys:
        await redis.delete(*keys)


async def _one_scan_call(redis: Redis, tag_key: str) -> None:
    """Wrong: one SCAN call (one page of the keyspace) taken for every match of the pattern."""
    _, keys = await redis.scan(0, match=tag_key.rsplit(":tag:", 1)[0] + ":/stats*")
    if keys:
        await redis.delete(*keys)


async def _version_set_once(redis: Redis, tag_key: str) -> None:
    """Wrong: the version is SET to 1 instead of incremented: the first write moves every key, the second none."""
    await redis.set(tag_key.rsplit(":tag:", 1)[0] + ":posts-version", 1)


async def _delete_then_write(redis: Redis, tag_key: str, session: Session, new: NewPost, _: Any) -> int:
    """Wrong: the cached answers are deleted before the write commits."""
    await _clear_tag(redis, tag_key)
    return await run_in_threadpool(create_post, session, new)


async def _delete_then_write_in_the_loop(redis: Redis, tag_key: str, session: Session, new: NewPost, _: Any) -> int:
    """Wrong: deleted first, then the write run right in the event loop (blocking it)."""
    await _clear_tag(redis, tag_key)
    return create_post(session, new)


async def _bump_then_write(redis: Redis, tag_key: str, session: Session, new: NewPost, _: Any) -> int:
    """Wrong: versioned keys, but the version is bumped before the write commits."""
    await _bump_version(redis, tag_key)
    return await run_in_threadpool(create_post, session, new)


async def _write_then_delete_in_the_loop(redis: Redis, tag_key: str, session: Session, new: NewPost, _: Any) -> int:
    """Right (if blocking): the write run in the event loop, then the tag cleared."""
    post_id = create_post(session, new)
    await _clear_tag(redis, tag_key)
    return post_id


async def _delete_before_and_after(redis: Redis, tag_key: str, session: Session, new: NewPost, _: Any) -> int:
    """Right: a delete before the write (useless) and one after its commit (the one that counts)."""
    await _clear_tag(redis, tag_key)
    post_id = await run_in_threadpool(create_post, session, new)
    await _clear_tag(redis, tag_key)
    return post_id


async def _invalidate_in_background(redis: Redis, tag_key: str, session: Session, new: NewPost,
                                    background_tasks: BackgroundTasks) -> int:
    """Wrong: invalidation as a BackgroundTask, which runs after the response is sent."""
    post_id = await run_in_threadpool(create_post, session, new)
    background_tasks.add_task(_clear_tag, redis, tag_key)
    return post_id


_PENDING: set[Any] = set()


async def _invalidate_a_moment_later(redis: Redis, tag_key: str, session: Session, new: NewPost, _: Any) -> int:
    """Wrong: invalidation fired and forgotten with asyncio.create_task, a few milliseconds after the response."""
    post_id = await run_in_threadpool(create_post, session, new)

    async def later() -> None:
        await asyncio.sleep(0.01)
        await _clear_tag(redis, tag_key)

    task = asyncio.create_task(later())
    _PENDING.add(task)
    task.add_done_callback(_PENDING.discard)
    return post_id


def _stats_query(key: bytes, prefix: str) -> int:
    """The min_likes of a cached /stats key written by `url_key` (0 when it names none)."""
    query = key.decode().removeprefix(f"{prefix}:/stats?")
    return int(dict(part.split("=", 1) for part in query.split("&") if "=" in part).get("min_likes", 0))


async def _write_through(redis: Redis, tag_key: str, session: Session, new: NewPost, _: Any) -> int:
    """Right, another way: after the commit, store each cached variant's new answer (write-through), TTL kept."""
    post_id = await run_in_threadpool(create_post, session, new)
    prefix = tag_key.rsplit(":tag:", 1)[0]
    for key in await redis.smembers(tag_key):
        body = await run_in_threadpool(stats_json, session, _stats_query(key, prefix))
        await redis.set(key, body, ex=60)
    return post_id


async def _write_through_read_before(redis: Redis, tag_key: str, session: Session, new: NewPost, _: Any) -> int:
    """Wrong: write-through whose new answers were computed before the commit (a stale read), stored after it."""
    prefix = tag_key.rsplit(":tag:", 1)[0]
    keys = await redis.smembers(tag_key)
    bodies = {key: await run_in_threadpool(stats_json, session, _stats_query(key, prefix)) for key in keys}
    post_id = await run_in_threadpool(create_post, session, new)
    for key, body in bodies.items():
        await redis.set(key, body, ex=60)
    return post_id


async def _nothing(redis: Redis, tag_key: str) -> None:
    return None


async def _flush(redis: Redis, tag_key: str) -> None:
    await redis.flushdb()


def _keys_remembered_in_process() -> AppFactory:
    """Wrong: the keys to clear are remembered in a Python set of this process, then deleted from Redis."""

    def make_app(db: DemoDB, redis: Redis, prefix: str, ttl: int) -> FastAPI:
        remembered: set[str] = set()

        async def remember_and_read(redis: Redis, prefix: str, ttl: int, request: Request, session: Session,
                                    min_likes: int) -> bytes:
            key = url_key(prefix, request)
            body = await redis.get(key)
            if body is None:
                body = await _compute(session, min_likes)
                await redis.set(key, body, ex=ttl)
                remembered.add(key)
            return body

        app = _stats_app(remember_and_read)(db, redis, prefix, ttl)
        _add_users_and_posts(app, db, redis, prefix, ttl, lambda: redis.delete(*remembered) if remembered else _noop())
        return app

    return make_app


def _version_in_process() -> AppFactory:
    """Wrong: a version number in the keys, but kept in a Python variable of this process."""

    def make_app(db: DemoDB, redis: Redis, prefix: str, ttl: int) -> FastAPI:
        version = [0]

        async def versioned(redis: Redis, prefix: str, ttl: int, request: Request, session: Session,
                            min_likes: int) -> bytes:
            key = f"{prefix}:v{version[0]}:stats:{min_likes}"
            body = await redis.get(key)
            if body is None:
                body = await _compute(session, min_likes)
                await redis.set(key, body, ex=ttl)
            return body

        def bump() -> Any:
            version[0] += 1
            return _noop()

        app = _stats_app(versioned)(db, redis, prefix, ttl)
        _add_users_and_posts(app, db, redis, prefix, ttl, bump)
        return app

    return make_app


def _local_copy_cleared_in_process() -> AppFactory:
    """Wrong: tags in Redis are cleared, but each process also keeps a local copy of the answers it served."""

    def make_app(db: DemoDB, redis: Redis, prefix: str, ttl: int) -> FastAPI:
        local: dict[str, bytes] = {}

        async def body(redis: Redis, prefix: str, ttl: int, request: Request, session: Session, min_likes: int) -> bytes:
            key = url_key(prefix, request)
            if key not in local:
                cached = await redis.get(key)
                if cached is None:
                    cached = await _compute(session, min_likes)
                    await redis.set(key, cached, ex=ttl)
                    await redis.sadd(f"{prefix}:tag:posts", key)
                local[key] = cached
            return local[key]

        async def clear() -> None:
            local.clear()
            await _clear_tag(redis, f"{prefix}:tag:posts")

        app = _stats_app(body)(db, redis, prefix, ttl)
        _add_users_and_posts(app, db, redis, prefix, ttl, clear)
        return app

    return make_app


async def _noop() -> None:
    return None


def _add_users_and_posts(app: FastAPI, db: DemoDB, redis: Redis, prefix: str, ttl: int,
                         on_write: Callable[[], Any]) -> None:
    """Add the reference's cached GET /users/{id} and a POST /posts that awaits `on_write()` after the commit."""
    get_db = db.dependency()
    app.router.routes.append(_route(reference.make_app_invalidating(db, redis, prefix, ttl), "/users/{user_id}"))

    @app.post("/posts", status_code=201)
    async def add_post(new: NewPost, session: Session = Depends(get_db)) -> dict[str, int]:
        post_id = await run_in_threadpool(create_post, session, new)
        await on_write()
        return {"id": post_id}


def test_invalidate_reference_passes():
    result = _grade("03.invalidate", reference.make_app_invalidating)
    assert result.passed, result.message
    assert result.figures["unrelated_keys_kept"] == 4
    assert result.figures["stale_after_write"] == result.figures["stale_at_response"] == 0
    assert result.figures["commit_held"] == 1  # the reads really arrived while the write was in flight
    assert result.figures["queries_while_write_in_flight"] == 0  # the old answers were still cached then: right
    _assert_nothing_left_running()


@pytest.mark.parametrize("answer", [_invalidating_app(_bump_version, versioned=True),
                                    _invalidating_app(_clear_tag_in_a_script),
                                    _invalidating_app(_scan_stats_keys),
                                    _invalidating_app(_clear_tag, tag="{prefix}:stats-keys"),
                                    _response_cache_app(lock=False),
                                    _invalidating_app(_noop, post=_write_through),
                                    _invalidating_app(_noop, post=_delete_before_and_after),
                                    _invalidating_app(_noop, post=_write_then_delete_in_the_loop)],
                         ids=["versioned-keys", "lua-script", "scan", "other-tag-name", "ResponseCache",
                              "write-through-after-commit", "delete-before-and-after", "write-in-the-loop-then-delete"])
def test_invalidate_other_right_answers_pass(answer):
    result = _grade("03.invalidate", answer)
    assert result.passed, result.message


@pytest.mark.parametrize(("answer", "says"), [
    (_invalidating_app(_clear_everything), "GET /users/1 ran 1 queries on the first worker"),
    (_invalidating_app(_keys_pattern), "your app sent `KEYS"),
    (_invalidating_app(_flush), "your app sent FLUSHDB"),
    (_invalidating_app(_only_default_key), "Some /stats variants were cleared, not all"),
    (_invalidating_app(_fixed_list), "Some /stats variants were cleared, not all"),
    (_invalidating_app(_pattern_missing_the_default), "GET /stats on both workers still returned the old answer"),
    (_invalidating_app(_one_scan_call), "never followed the cursor it returned"),
    (_invalidating_app(_version_set_once, versioned=True), "The first write cleared them, this one cleared nothing"),
    (_invalidating_app(_noop, post=_delete_then_write), "before the write and cached it again"),
    (_invalidating_app(_noop, post=_delete_then_write_in_the_loop), "sent `DEL"),
    (_invalidating_app(_noop, versioned=True, post=_bump_then_write), "sent `INCR"),
    (_invalidating_app(_noop, post=_invalidate_in_background), "runs after the response is sent"),
    (_invalidating_app(_noop, post=_invalidate_a_moment_later), "runs after the response is sent"),
    (_invalidating_app(_noop, post=_write_through_read_before), "Your POST stored answers after its commit (`SET"),
    (_invalidating_app(_nothing), "Nothing was cleared (your POST sent Redis no command"),
    (_keys_remembered_in_process(), "a list of keys kept in Python memory knows only those its own process wrote"),
    (_version_in_process(), "The worker that handled the write serves fresh answers and the other still serves old"),
    (_local_copy_cleared_in_process(), "what your write changes lives in that process's memory"),
    (_invalidating_app(_clear_tag, expire=False), "with no expiry (PTTL -1)"),
    (_invalidating_app(_clear_tag, tag="tags:posts"), "'tags:posts' (`SADD tags:posts"),
], ids=["clears-everything", "KEYS", "FLUSHDB", "one-key-only", "fixed-list", "pattern-missing-a-key", "one-scan-page",
        "version-set-not-incremented", "delete-then-write", "delete-then-write-in-the-loop", "version-bumped-first",
        "background-task", "create-task-later", "write-through-read-before-commit", "no-invalidation",
        "keys-remembered-in-process",
        "version-in-process", "local-copy", "never-expires", "tag-outside-prefix"])
def test_invalidate_wrong_answers_fail_saying_why(answer, says):
    result = _grade("03.invalidate", answer)
    assert not result.passed
    assert says in result.message, result.message
    assert result.hint


async def _raises_on_post(redis: Redis, tag_key: str, session: Session, new: NewPost, _: Any) -> int:
    raise RuntimeError("no writes today")


async def _hangs_after_commit(redis: Redis, tag_key: str, session: Session, new: NewPost, _: Any) -> int:
    post_id = await run_in_threadpool(create_post, session, new)
    await asyncio.sleep(3600)
    return post_id


def _no_post_route() -> AppFactory:
    """Odd: cached GETs, but no POST /posts at all."""

    def make_app(db: DemoDB, redis: Redis, prefix: str, ttl: int) -> FastAPI:
        app = _invalidating_app(_clear_tag)(db, redis, prefix, ttl)
        app.router.routes = [route for route in app.router.routes if getattr(route, "path", "") != "/posts"]
        return app

    return make_app


def _post_that_writes_nothing(redis: Redis, tag_key: str, session: Session, new: NewPost, _: Any) -> Any:
    """Wrong: the POST clears the cache but never inserts the post (so every read is trivially 'fresh')."""
    return _clear_tag(redis, tag_key)


async def _clears_without_writing(redis: Redis, tag_key: str, session: Session, new: NewPost, bg: Any) -> int:
    await _post_that_writes_nothing(redis, tag_key, session, new, bg)
    return 0


@pytest.mark.parametrize(("answer", "says"), [
    (None, ""), (42, ""), (lambda db, redis, prefix, ttl: None, ""),
    (_invalidating_app(_noop, post=_raises_on_post), "RuntimeError: no writes today"),
    (_invalidating_app(_noop, post=_hangs_after_commit), "did not answer within"),
    (_no_post_route(), "POST /posts on the second worker process answered 404"),
    (_invalidating_app(_noop, post=_clears_without_writing), "must still insert the post"),
], ids=["None", "int", "returns-None", "post-raises", "post-hangs", "no-post-route", "post-writes-nothing"])
def test_invalidate_odd_answers_fail_clearly(answer, says):
    started = time.monotonic()
    result = _grade("03.invalidate", answer)
    assert not result.passed
    assert result.message and "Traceback" not in result.message
    assert says in result.message, result.message
    assert time.monotonic() - started < 55
    _assert_nothing_left_running()


def test_invalidate_uncached_answer_fails_on_the_warm_up():
    result = _grade("03.invalidate", lambda db, redis, prefix, ttl: make_uncached_app(db))
    assert not result.passed
    assert "cache both /stats and /users/{id} first" in result.message


# --- 03.stampede --------------------------------------------------------------------------------------------


def _locked(acquire: Callable[[Redis, str], Any], release: Callable[[Redis, str], Any] | None = None,
            lock_name: str = "{key}:lock", store: Callable[..., Any] | None = None) -> AppFactory:
    """A stampede answer: `await acquire(redis, lock_key)` until True (backing off), compute once, release."""

    async def body(redis: Redis, prefix: str, ttl: int, request: Request, session: Session, min_likes: int) -> bytes:
        key = f"{prefix}:stats:{min_likes}"
        lock_key = lock_name.format(key=key, prefix=prefix, min_likes=min_likes)
        pause = 0.005
        while (cached := await redis.get(key)) is None:
            if await acquire(redis, lock_key):
                try:
                    cached = await redis.get(key)
                    if cached is None:
                        cached = await _compute(session, min_likes)
                        await (store or _store_with_ttl)(redis, key, cached, ttl)
                    return cached
                finally:
                    await (release or _release)(redis, lock_key)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.1)
        return cached

    return _stats_app(body)


async def _store_with_ttl(redis: Redis, key: str, body: bytes, ttl: int) -> None:
    await redis.set(key, body, ex=ttl)


async def _store_for_ever(redis: Redis, key: str, body: bytes, ttl: int) -> None:
    await redis.set(key, body)


async def _release(redis: Redis, lock_key: str) -> None:
    await redis.delete(lock_key)


async def _set_nx_ex(redis: Redis, lock_key: str) -> bool:
    return bool(await redis.set(lock_key, "1", nx=True, ex=10))


async def _set_nx_px(redis: Redis, lock_key: str) -> bool:
    return bool(await redis.set(lock_key, "1", nx=True, px=10_000))


async def _set_nx_forever(redis: Redis, lock_key: str) -> bool:
    return bool(await redis.set(lock_key, "1", nx=True))


async def _set_nx_px_too_short(redis: Redis, lock_key: str) -> bool:
    """Wrong: a lock that expires after 5 ms, long before the 40 ms query it guards ends."""
    return bool(await redis.set(lock_key, "1", nx=True, px=5))


def _release_before_store(awaited: float = 0.0) -> AppFactory:
    """Wrong: a Redis lock and a second look, but the winner releases the lock before it stores the answer (with
    `awaited` seconds of something in between: a log call, a metric), so a waiter wins the lock and misses."""

    async def body(redis: Redis, prefix: str, ttl: int, request: Request, session: Session, min_likes: int) -> bytes:
        key = url_key(prefix, request)
        pause = 0.005
        while (cached := await redis.get(key)) is None:
            if await redis.set(key + ":lock", "1", nx=True, px=10_000):
                cached = await redis.get(key)
                if cached is None:
                    cached = await _compute(session, min_likes)
                    await redis.delete(key + ":lock")
                    if awaited:
                        await asyncio.sleep(awaited)
                    await redis.set(key, cached, ex=ttl)
                else:
                    await redis.delete(key + ":lock")
                return cached
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.1)
        return cached

    return _stats_app(body)


def _no_second_look(acquire: Callable[[Redis, str], Any] | None = None) -> AppFactory:
    """Wrong: a Redis lock (SET NX PX, or `acquire`), but the winner queries without reading the cached key again."""

    async def body(redis: Redis, prefix: str, ttl: int, request: Request, session: Session, min_likes: int) -> bytes:
        key = url_key(prefix, request)
        pause = 0.005
        while (cached := await redis.get(key)) is None:
            if await (acquire or _set_nx_px)(redis, key + ":lock"):
                try:
                    cached = await _compute(session, min_likes)
                    await redis.set(key, cached, ex=ttl)
                    return cached
                finally:
                    await redis.delete(key + ":lock")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.1)
        return cached

    return _stats_app(body)


async def _setnx_then_expire(redis: Redis, lock_key: str) -> bool:
    if await redis.setnx(lock_key, "1"):
        await redis.expire(lock_key, 10)
        return True
    return False


async def _incr_lock(redis: Redis, lock_key: str) -> bool:
    """Wrong: INCR as a lock (1 wins), never given an expiry."""
    if await redis.incr(lock_key) == 1:
        return True
    await redis.decr(lock_key)
    return False


async def _lua_lock(redis: Redis, lock_key: str) -> bool:
    """Right, another way: SETNX and PEXPIRE inside one Lua script (atomic)."""
    return bool(await redis.eval("if redis.call('SETNX', KEYS[1], ARGV[1]) == 1 then "
                                 "redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end return 0",
                                 1, lock_key, "1", 10_000))


async def _redis_py_lock_body(redis: Redis, prefix: str, ttl: int, request: Request, session: Session,
                              min_likes: int) -> bytes:
    """Right, another way: redis-py's own Lock (SET NX PX, released by a Lua script), blocking until the holder is done."""
    key = url_key(prefix, request)
    body = await redis.get(key)
    if body is not None:
        return body
    async with redis.lock(key + ":lock", timeout=10, sleep=0.01, blocking_timeout=10):
        body = await redis.get(key)
        if body is None:
            body = await _compute(session, min_likes)
            await redis.set(key, body, ex=ttl)
    return body


async def _redis_py_lock_no_timeout(redis: Redis, prefix: str, ttl: int, request: Request, session: Session,
                                    min_likes: int) -> bytes:
    """Wrong: redis-py's Lock without `timeout`: the lock never expires."""
    key = url_key(prefix, request)
    body = await redis.get(key)
    if body is not None:
        return body
    async with redis.lock(key + ":lock", sleep=0.01, blocking_timeout=10):
        body = await redis.get(key)
        if body is None:
            body = await _compute(session, min_likes)
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


_THREAD_LOCK = threading.Lock()


async def _module_thread_lock(redis: Redis, prefix: str, ttl: int, request: Request, session: Session,
                              min_likes: int) -> bytes:
    """Wrong: a module-level threading.Lock around the miss (in the thread pool): one per process."""
    key = url_key(prefix, request)
    body = await redis.get(key)
    if body is not None:
        return body

    def fill() -> bytes:
        with _THREAD_LOCK:
            return asyncio.run(_fill_once(key, session, min_likes, ttl, redis.connection_pool.connection_kwargs))

    return await run_in_threadpool(fill)


_GRADER_PID = os.getpid()  # the grader's process; the second worker is forked from it


async def _thread_lock_late_second_worker(redis: Redis, prefix: str, ttl: int, request: Request, session: Session,
                                          min_likes: int) -> bytes:
    """Wrong: the per-process threading.Lock, on a machine that schedules the second worker 0.3 s late after its
    lookup (a busy machine): the first process has stored the answer long before the second one looks again."""
    key = url_key(prefix, request)
    body = await redis.get(key)
    if body is not None:
        return body

    def fill() -> bytes:
        if os.getpid() != _GRADER_PID:
            time.sleep(0.3)
        with _THREAD_LOCK:
            return asyncio.run(_fill_once(key, session, min_likes, ttl, redis.connection_pool.connection_kwargs))

    return await run_in_threadpool(fill)


async def _fill_once(key: str, session: Session, min_likes: int, ttl: int, kwargs: dict[str, Any]) -> bytes:
    client = SyncRedis(host=kwargs["host"], port=kwargs["port"], db=kwargs.get("db", 0))
    try:
        body = client.get(key)
        if body is None:
            body = stats_json(session, min_likes)
            client.set(key, body, ex=ttl)
        return body
    finally:
        client.close()


def _pending_futures_app() -> AppFactory:
    """Wrong: single-flight with a dict of pending futures: it coalesces requests of one process only."""

    def make_app(db: DemoDB, redis: Redis, prefix: str, ttl: int) -> FastAPI:
        pending: dict[str, asyncio.Future[bytes]] = {}

        async def body(redis: Redis, prefix: str, ttl: int, request: Request, session: Session, min_likes: int) -> bytes:
            key = url_key(prefix, request)
            if key in pending:
                return await pending[key]
            pending[key] = asyncio.get_running_loop().create_future()
            try:
                result = await _reference_body(redis, prefix, ttl, request, session, min_likes)
                pending[key].set_result(result)
                return result
            finally:
                del pending[key]

        return _stats_app(body)(db, redis, prefix, ttl)

    return make_app


def test_stampede_reference_passes():
    result = _grade("03.stampede", reference.make_app_single_flight)
    assert result.passed, result.message
    assert result.figures["queries_total"] == 1
    assert result.figures["keys_polls"] >= 2
    _assert_nothing_left_running()


@pytest.mark.parametrize("answer", [_stats_app(_redis_py_lock_body), _response_cache_app(lock=True),
                                    _locked(_set_nx_ex), _locked(_lua_lock),
                                    _locked(_set_nx_ex, lock_name="{prefix}:locks:stats:{min_likes}")],
                         ids=["redis-py-lock", "ResponseCache", "set-nx-ex", "lua-lock", "other-lock-name"])
def test_stampede_other_right_answers_pass(answer):
    result = _grade("03.stampede", answer)
    assert result.passed, result.message


@pytest.mark.parametrize(("answer", "says"), [
    (reference.make_app, "they missed before the first one stored the answer"),
    (_stats_app(_uncached), "ran 50 database queries"),
    (_process_lock_app(), "(1 in the first, 1 in the second), expected exactly 1: one per process"),
    (_stats_app(_module_thread_lock), "one per process"),
    (_stats_app(_thread_lock_late_second_worker), "one per process"),
    (_pending_futures_app(), "one per process"),
    (_release_before_store(), "store the answer before you release the lock"),
    (_release_before_store(awaited=0.02), "store the answer before you release the lock"),
    (_no_second_look(), "read the cached key once more before querying"),
    (_no_second_look(_lua_lock), "read the cached key once more before querying"),
    (_locked(_set_nx_forever), "NX`, which never expires"),
    (_locked(_set_nx_px_too_short), "your lock (SET NX) expires after 5 ms"),
    (_locked(_setnx_then_expire), "SETNX cannot set an expiry"),
    (_stats_app(_redis_py_lock_no_timeout), "which never expires"),
    (_locked(_incr_lock), "existed with no expiry"),
    (_locked(_set_nx_ex, lock_name="lock:{key}"), "outside the prefix"),
    (_locked(_set_nx_ex, store=_store_for_ever), "with no expiry (PTTL -1)"),
], ids=["no-lock", "uncached", "asyncio-lock", "thread-lock", "thread-lock-late-second-worker",
        "pending-futures", "release-before-store", "release-before-store-awaiting", "no-second-look",
        "no-second-look-lua-lock",
        "set-nx-no-expiry",
        "lock-expires-too-soon", "setnx-then-expire", "redis-py-lock-no-timeout", "incr-lock", "lock-outside-prefix", "cache-never-expires"])
def test_stampede_wrong_answers_fail_saying_why(answer, says):
    result = _grade("03.stampede", answer)
    assert not result.passed
    assert says in result.message, result.message
    assert result.hint
    _assert_nothing_left_running()


# --- the same graders on fakeredis served over TCP (when no redis-server is installed) -------------------------


@pytest.fixture
def fakeredis_server(monkeypatch):
    monkeypatch.setattr(course_redis, "REDIS_SERVER", None)


@pytest.mark.skipif(bool(os.environ.get("REDIS_URL")), reason="REDIS_URL names the server the graders use")
@pytest.mark.parametrize(("exercise_id", "answer", "passes", "says"), [
    ("03.cache-endpoint", reference.make_app, True, ""),
    ("03.cache-endpoint", _stats_app(_dict_in_process), False, "the cache lives inside each process"),
    ("03.invalidate", reference.make_app_invalidating, True, ""),
    ("03.invalidate", _version_in_process(), False, "what your write changes lives in that process's memory"),
    ("03.stampede", reference.make_app_single_flight, True, ""),
    ("03.stampede", _process_lock_app(), False, "one per process"),
    ("03.stampede", _locked(_set_nx_forever), False, "which never expires"),
], ids=["cache-endpoint", "cache-endpoint-dict", "invalidate", "invalidate-version-in-process", "stampede",
        "stampede-asyncio-lock", "stampede-lock-no-expiry"])
def test_graders_on_fakeredis_over_tcp(fakeredis_server, exercise_id, answer, passes, says):
    _PROCESS_CACHE.clear()
    result = _grade(exercise_id, answer)
    assert result.passed == passes, result.message
    assert says in result.message, result.message
    _assert_nothing_left_running()


def test_recording_proxy_sees_every_command_and_passes_no_flush_on():
    async def scenario() -> None:
        prefix = new_prefix("proxy03")
        with serve_redis() as url, RecordingProxy(url) as proxy:
            client, direct = Redis.from_url(proxy.url), Redis.from_url(url)
            try:
                await client.set(f"{prefix}:big", b"x" * 200_000, px=5000)  # arrives in several reads
                async with client.pipeline(transaction=True) as pipe:
                    pipe.set(f"{prefix}:b", 1)
                    pipe.sadd(f"{prefix}:tag", "k")
                    await pipe.execute()
                await client.flushdb()
                assert await direct.get(f"{prefix}:b") == b"1"  # recorded, not passed on
                assert await client.get(f"{prefix}:b") == b"1"  # the connection still answers in order
                seen = proxy.since()
                assert [c.name for c in seen if c.keys()] == ["SET", "SET", "SADD", "GET"]
                big = seen[[c.name for c in seen].index("SET")]
                assert len(big.args[2]) == 200_000 and {"PX"} <= big.options()
                assert "FLUSHDB" in [c.name for c in seen]
            finally:
                await drop_keys(direct, prefix)
                await client.aclose()
                await direct.aclose()

    asyncio.run(scenario())
    _assert_nothing_left_running()


@pytest.mark.parametrize("contend", [False, True], ids=["plain", "contend-locks"])
def test_recording_proxy_plays_a_lock_hand_over_when_asked(contend):
    """With `contend_locks`, a lock attempt on a taken key waits for its release and a store right after a release
    waits: the waiter wins the lock and finds no answer yet. Without it, the attempt fails at once."""

    async def scenario() -> None:
        prefix = new_prefix("proxy03")
        lock, key = f"{prefix}:stats:lock", f"{prefix}:stats"
        with serve_redis() as url, RecordingProxy(url, contend_locks=contend) as proxy:
            winner, waiter, direct = Redis.from_url(proxy.url), Redis.from_url(proxy.url), Redis.from_url(url)
            try:
                assert await winner.set(lock, "1", nx=True, px=10_000)
                attempt = asyncio.ensure_future(waiter.set(lock, "2", nx=True, px=10_000))
                await asyncio.sleep(0.1)
                assert attempt.done() is not contend  # parked at the proxy while the lock is taken
                await winner.delete(lock)
                store = asyncio.ensure_future(winner.set(key, "answer", ex=60))
                assert bool(await attempt) is contend  # tried again just after the release: it wins
                if not contend:
                    await store
                assert (await waiter.get(key) is None) is contend  # the winner's store has not gone through yet
                await store
                assert await direct.get(key) == b"answer"
                assert proxy.parked == int(contend)
            finally:
                await drop_keys(direct, prefix)
                for client in (winner, waiter, direct):
                    await client.aclose()

    asyncio.run(scenario())
    _assert_nothing_left_running()


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
