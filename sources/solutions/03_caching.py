# %% [markdown]
# # Exercise 03 · Response caching with Redis
#
# Work through `notebooks/03_caching.ipynb` first. Each exercise asks for a function
# **`make_app(db, redis, prefix, ttl)`** that returns a FastAPI app:
#
# - `db` is a `DemoDB` (`db.dependency()` gives a session per request);
# - `redis` is a `redis.asyncio` client (fakeredis, or your real Redis when `REDIS_URL` is set);
# - `prefix` is a string every one of your keys must start with (apps sharing one Redis must not collide);
# - `ttl` is the time to live of a cached entry, in whole seconds.
#
# The starter code is the *uncached* app, and it works: your job is to add the cache. The graders
# build fresh databases and a fresh Redis namespace, send real requests, and count database queries.
# They grade the way production runs: **two worker processes** share one Redis and one database.
# Your factory is called here *and* in a second process forked from this kernel (as gunicorn forks
# its workers), so a function defined in this notebook works as it is; but anything your app keeps in
# Python memory (a dict, a lock, a counter) exists once per process. Every Redis command of both
# workers is recorded, and every key must start with `prefix`.
# Useful pieces from the lesson: `stats_json(session, min_likes)` (the slow query, as JSON bytes),
# `user_json(session, user_id)`, `create_post(session, new)`, `json_response(body)`,
# `url_key(prefix, request)` (path + sorted query string), and `run_in_threadpool` to run the
# synchronous database code from an `async def` route.

# %%
import asyncio

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from redis.asyncio import Redis
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from course_lib import *
from course_lib.lessons.l03_caching import NewPost, create_post, json_response, stats_json, url_key, user_json


# %% [markdown]
# ## 03.cache-endpoint
#
# Cache **`GET /stats?min_likes=N`** in Redis for `ttl` seconds.
#
# - 50 calls → **1** database query, every response identical to the uncached one;
# - the second worker process serves an answer the first one cached, without a query;
# - a different `min_likes` is a different key (its own miss, its own answer);
# - the entry is stored with its expiry: after `ttl` seconds the next call queries again.

# %%
def make_app(db: DemoDB, redis: Redis, prefix: str, ttl: int) -> FastAPI:
    app = FastAPI()
    get_db = db.dependency()

    @app.get("/stats")
    async def stats(request: Request, min_likes: int = 0, session: Session = Depends(get_db)) -> Response:
        ### BEGIN SOLUTION
        #> body = await run_in_threadpool(stats_json, session, min_likes)
        #> return json_response(body)
        ...  # --8<-- "answers/l03_caching.py:cache-endpoint"
        ### END SOLUTION

    return app


# %%
check("03.cache-endpoint", make_app)


# %% [markdown]
# ## 03.invalidate
#
# Now the app also has **`GET /users/{user_id}`** and **`POST /posts`** (JSON body
# `{"user_id": …, "title": …, "likes": …}`). Cache both GET routes. A new post changes every
# `/stats` answer (any `min_likes`) but no user: after a POST,
#
# - the next `GET /stats?min_likes=…` shows the new data, for **every** `min_likes` cached before,
#   on **both** worker processes (the grader caches some on each, and sends the POST to one);
# - from the moment `POST /posts` has answered, no read returns the old answer, not even a read that arrived
#   while the write was still in flight (the grader holds the commit back and reads meanwhile): invalidate
#   after the write has committed, before the route returns;
# - `GET /users/{id}` entries **survive** (still hits, no query);
# - and no `KEYS` (it blocks Redis), no `FLUSHDB`.

# %%
def make_app_invalidating(db: DemoDB, redis: Redis, prefix: str, ttl: int) -> FastAPI:
    app = FastAPI()
    get_db = db.dependency()
    posts_tag = f"{prefix}:tag:posts"

    @app.get("/stats")
    async def stats(request: Request, min_likes: int = 0, session: Session = Depends(get_db)) -> Response:
        ### BEGIN SOLUTION
        #> return json_response(await run_in_threadpool(stats_json, session, min_likes))
        ...  # --8<-- "answers/l03_caching.py:invalidate-stats"
        ### END SOLUTION

    @app.get("/users/{user_id}")
    async def read_user(request: Request, user_id: int, session: Session = Depends(get_db)) -> Response:
        ### BEGIN SOLUTION
        #> body = await run_in_threadpool(user_json, session, user_id)
        #> if body is None:
        #>     raise HTTPException(status_code=404, detail="user not found")
        #> return json_response(body)
        ...  # --8<-- "answers/l03_caching.py:invalidate-user"
        ### END SOLUTION

    @app.post("/posts", status_code=201)
    async def add_post(new: NewPost, session: Session = Depends(get_db)) -> dict[str, int]:
        post_id = await run_in_threadpool(create_post, session, new)
        ### BEGIN SOLUTION
        #> # the new post is committed: delete the cached answers that depend on posts (not with KEYS)
        ...  # --8<-- "answers/l03_caching.py:invalidate-post"
        ### END SOLUTION
        return {"id": post_id}

    return app


# %%
check("03.invalidate", make_app_invalidating)


# %% [markdown]
# ## 03.stampede
#
# 50 requests for the same `GET /stats?min_likes=N` arrive **at once** on an empty cache, 25 on each
# of **two worker processes** sharing Redis. Make that **exactly 1** database query in all. The grader
# slows every query by 40 ms and holds it until all 50 requests have looked in the cache, so that,
# without a lock, they all miss. It watches every key while the requests are in flight: whatever decides who computes
# must expire on its own (a worker can die holding it) and live under `prefix`. The starter below is a
# correct cache *without* a lock: 50 misses, 50 queries.

# %%
def make_app_single_flight(db: DemoDB, redis: Redis, prefix: str, ttl: int) -> FastAPI:
    app = FastAPI()
    get_db = db.dependency()

    @app.get("/stats")
    async def stats(request: Request, min_likes: int = 0, session: Session = Depends(get_db)) -> Response:
        key = url_key(prefix, request)
        body = await redis.get(key)
        if body is not None:
            return json_response(body)
        ### BEGIN SOLUTION
        #> body = await run_in_threadpool(stats_json, session, min_likes)
        #> await redis.set(key, body, ex=ttl)
        #> return json_response(body)
        ...  # --8<-- "answers/l03_caching.py:stampede"
        ### END SOLUTION

    return app


# %%
check("03.stampede", make_app_single_flight)

# %% [markdown]
# ## Try it yourself
#
# Your apps are ordinary FastAPI apps. Count what 20 concurrent first requests cost on your
# single-flight app (here with a private fakeredis, or your `REDIS_URL`):

# %%
from course_lib.lessons.l03_caching import concurrent_gets, drop_keys, new_prefix

try_db, try_redis, try_prefix = make_demo_db(users=200, posts_per_user=5), get_redis(), new_prefix("try03")
with simulated_latency(try_db.engine, 20), count_queries(try_db.engine) as queries:
    responses = await concurrent_gets([make_app_single_flight(try_db, try_redis, try_prefix, 60)], "/stats", 20)
print(f"20 concurrent first requests → {queries.count} database queries, statuses {sorted({r.status_code for r in responses})}")
await drop_keys(try_redis, try_prefix)
await try_redis.aclose()
try_db.close()

# %% [markdown]
# Done? `python -m course_lib progress` in a terminal shows these exercises ticked.
