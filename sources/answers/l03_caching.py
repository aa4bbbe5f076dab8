"""Reference answers of 03.cache-endpoint, 03.invalidate and 03.stampede: spliced into solutions/03_caching.ipynb by
the build, imported by the tests."""

from __future__ import annotations

import asyncio

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from redis.asyncio import Redis
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from course_lib import DemoDB
from course_lib.lessons.l03_caching import NewPost, create_post, json_response, stats_json, url_key, user_json


def make_app(db: DemoDB, redis: Redis, prefix: str, ttl: int) -> FastAPI:
    """GET /stats cached in Redis under the prefix, for ttl seconds."""
    app = FastAPI()
    get_db = db.dependency()

    @app.get("/stats")
    async def stats(request: Request, min_likes: int = 0, session: Session = Depends(get_db)) -> Response:
        # --8<-- [start:cache-endpoint]
        key = url_key(prefix, request)
        body = await redis.get(key)
        if body is None:
            body = await run_in_threadpool(stats_json, session, min_likes)
            await redis.set(key, body, px=ttl * 1000)
        return json_response(body)
        # --8<-- [end:cache-endpoint]

    return app


def make_app_invalidating(db: DemoDB, redis: Redis, prefix: str, ttl: int) -> FastAPI:
    """Cached GET /stats (tagged) and GET /users/{user_id}; POST /posts deletes the tagged keys after its commit."""
    app = FastAPI()
    get_db = db.dependency()
    posts_tag = f"{prefix}:tag:posts"

    @app.get("/stats")
    async def stats(request: Request, min_likes: int = 0, session: Session = Depends(get_db)) -> Response:
        # --8<-- [start:invalidate-stats]
        key = url_key(prefix, request)
        body = await redis.get(key)
        if body is None:
            body = await run_in_threadpool(stats_json, session, min_likes)
            async with redis.pipeline(transaction=True) as pipe:
                pipe.set(key, body, ex=ttl)
                pipe.sadd(posts_tag, key)  # remember which keys depend on posts
                await pipe.execute()
        return json_response(body)
        # --8<-- [end:invalidate-stats]

    @app.get("/users/{user_id}")
    async def read_user(request: Request, user_id: int, session: Session = Depends(get_db)) -> Response:
        # --8<-- [start:invalidate-user]
        key = url_key(prefix, request)
        body = await redis.get(key)
        if body is None:
            body = await run_in_threadpool(user_json, session, user_id)
            if body is None:
                raise HTTPException(status_code=404, detail="user not found")
            await redis.set(key, body, ex=ttl)
        return json_response(body)
        # --8<-- [end:invalidate-user]

    @app.post("/posts", status_code=201)
    async def add_post(new: NewPost, session: Session = Depends(get_db)) -> dict[str, int]:
        post_id = await run_in_threadpool(create_post, session, new)
        # --8<-- [start:invalidate-post]
        keys = await redis.smembers(posts_tag)
        if keys:
            await redis.delete(*keys, posts_tag)
        # --8<-- [end:invalidate-post]
        return {"id": post_id}

    return app


def make_app_single_flight(db: DemoDB, redis: Redis, prefix: str, ttl: int) -> FastAPI:
    """GET /stats cached, a miss computed once over both workers behind a SET NX PX lock in Redis."""
    app = FastAPI()
    get_db = db.dependency()

    @app.get("/stats")
    async def stats(request: Request, min_likes: int = 0, session: Session = Depends(get_db)) -> Response:
        key = url_key(prefix, request)
        body = await redis.get(key)
        if body is not None:
            return json_response(body)
        # --8<-- [start:stampede]
        lock_key, pause = f"{key}:lock", 0.005
        while not await redis.set(lock_key, "1", nx=True, px=10_000):  # one winner, in any worker
            await asyncio.sleep(pause)  # back off: 49 waiters polling every 5 ms starve the winner
            pause = min(pause * 2, 0.1)
            body = await redis.get(key)
            if body is not None:
                return json_response(body)
        try:
            body = await redis.get(key)  # stored just before we got the lock?
            if body is None:
                body = await run_in_threadpool(stats_json, session, min_likes)
                await redis.set(key, body, ex=ttl)
        finally:
            await redis.delete(lock_key)
        return json_response(body)
        # --8<-- [end:stampede]

    return app
