# %% [markdown]
# # 03 · Response caching with Redis
#
# **Teaching:** 35 min · **Exercise:** 30 min
#
# **Questions**
# - When a response is expensive and changes rarely, how much does caching it save, measured?
# - What goes into a cache key, and what must never go in?
# - How do cached answers expire, get invalidated on a write, and survive 50 simultaneous misses?
# - Why Redis rather than a dict in each worker? And where does HTTP caching fit?
#
# **Objectives**
# - See the article's `fastapi-cache2` recipe miss on every request, and explain why.
# - Cache a slow aggregate endpoint in Redis: key, TTL, serialised JSON; measure hit vs miss.
# - Invalidate by tag on a write (never with `KEYS`), stop a cache stampede with a Redis lock.
# - Answer a conditional request with `ETag` → `304 Not Modified`.
#
# Everything runs against **fakeredis** (a Redis server inside this Python process) unless the
# environment variable `REDIS_URL` points at a real Redis: the same cells then talk to that server.

# %%
from course_lib import *
from course_lib.lessons.l03_caching import *
from course_lib.redis import redis_backend

redis = get_redis()
prefix = new_prefix()  # every key of this run starts with it: runs sharing one Redis never collide
say(f"Redis backend: **{redis_backend()}**; this run's keys start with `{prefix}:`")

# %% [markdown]
# ## A slow endpoint
#
# A dashboard asks `GET /stats?min_likes=N`: per author country, how many posts have at least `N`
# likes, their average and top likes and body length. That is an aggregate over **every post**,
# joined to its author: a real slow query, no `sleep`. Here is the query and the demo database.

# %%
show_source(country_stats)

# %%
db = make_demo_db(users=5_000, posts_per_user=10)
uncached_app = make_uncached_app(db)
async with app_client(uncached_app) as client:
    with count_queries(db.engine) as one_call:
        first = await client.get("/stats")
    uncached = await measure(lambda: client.get("/stats"), n=10, label="GET /stats, uncached")
print(db)
print(first.json()[:2])
print(one_call.summary())
uncached

# %% [markdown]
# ## The article's recipe, run as written
#
# The source article adds `fastapi-cache2` and one decorator, `@cache(expire=300)`, over a route.
# Ours has the usual database-session dependency. `make_article_app` does exactly that (read it):

# %%
show_source(make_article_app)


# %% [markdown]
# Three identical requests. A working cache would query once and then answer from Redis.

# %%
# NBVAL_CHECK_OUTPUT
async with app_client(make_article_app(db, redis, prefix)) as client:
    with count_queries(db.engine) as queries:
        statuses = [(await client.get("/stats")).headers.get("x-fastapi-cache") for _ in range(3)]
article_keys = [k async for k in redis.scan_iter(match=f"{prefix}:fc:*")]
print(f"3 requests → cache status {statuses} → {queries.count} queries, {len(article_keys)} keys in Redis")

# %% [markdown]
# Three misses, three queries, three keys. Why? fastapi-cache2's default key builder hashes the
# **repr of every argument** of the route:

# %%
from fastapi_cache.key_builder import default_key_builder

show_source(default_key_builder)

# %% [markdown]
# One argument is `session`, a new `Session` object per request, whose repr contains its memory address:

# %%
with db.session() as a, db.session() as b:
    print(repr(a))
    print(repr(b))


# %% [markdown]
# So every request hashes to a new key: the cache only ever writes. (Worse, it is luck-dependent: when a
# session is freed, the next request's session may get the same address and the same key, an accidental hit.
# `make_article_app` keeps each request's session alive until the app stops, so the count above is the same
# on every run.) (The article's snippet uses a
# global `db`, which hides this, but a global session shared by all requests is its own bug.) The fix
# is to build the key from what defines the answer, the URL, not from the arguments. With a URL key
# builder the same decorator works:

# %%
# NBVAL_CHECK_OUTPUT
async with app_client(make_article_app(db, redis, prefix, key_builder=url_key_builder)) as client:
    with count_queries(db.engine) as queries:
        statuses = [(await client.get("/stats")).headers.get("x-fastapi-cache") for _ in range(3)]
print(f"3 requests → cache status {statuses} → queries: {queries.count}")

# %% [markdown]
# **Why this course does not build on fastapi-cache2.** What the installed package says of itself:

# %%
from importlib.metadata import requires, version

from fastapi_cache import FastAPICache

redis_pin = next(r.split(";")[0].strip() for r in requires("fastapi-cache2") if r.startswith("redis"))
installed_redis = version("redis")
print(f"fastapi-cache2 {version('fastapi-cache2')}: its [redis] extra asks for {redis_pin}; redis {installed_redis} is "
      f"installed here")
print("its backend is one class attribute, set by FastAPICache.init(): "
      f"{'_backend' in vars(FastAPICache)} (one backend for the whole process)")

# %% [markdown]
# So it installs next to a current `redis` only *without* its own extra, as here, and every app in a
# process shares one backend (two apps with two Redis servers cannot). We use a small explicit cache over
# `redis.asyncio` instead: 60 lines you can read, every command it sends visible, the same on fakeredis
# and a real Redis. (Maintained libraries such as `cashews` offer key templates, tags and locks; what this
# lesson measures holds for them too.)

# %%
show_source(ResponseCache)

# %% [markdown]
# The app wires it in explicitly: the key comes from the request URL, the body is the JSON bytes of
# the response model, `X-Cache` says HIT or MISS, and `POST /posts` clears the `posts` tag.

# %%
show_source(make_cached_app)

# %% [markdown]
# ## Miss vs hit, over 100 calls
#
# The pattern every cached endpoint below follows, *cache-aside*: look in Redis first; only on a miss run the
# query, then store the answer with a TTL.
#
# ```mermaid
# sequenceDiagram
#     participant R as request
#     participant C as Redis
#     participant D as database
#     R->>C: GET key
#     alt hit
#         C-->>R: stored JSON bytes
#     else miss
#         C-->>R: nothing
#         R->>D: the slow query
#         D-->>R: rows
#         R->>C: SET key bytes EX ttl
#     end
# ```
#
# 100 calls to the uncached app and 100 to the cached one (empty cache at the start). Queries first:
# they are exact.

# %%
# NBVAL_CHECK_OUTPUT
cache = ResponseCache(redis, prefix, ttl=300)
cached_app = make_cached_app(db, cache)
async with app_client(uncached_app) as plain, app_client(cached_app) as cached:
    with count_queries(db.engine) as plain_q:
        plain_calls = await measure(lambda: plain.get("/stats"), n=100, warmup=0, label="uncached")
    with count_queries(db.engine) as cached_q:
        cached_calls = await measure(lambda: cached.get("/stats"), n=100, warmup=0, label="cached")
print(f"uncached: 100 calls → {plain_q.count} queries")
print(f"cached:   100 calls → {cached_q.count} query, {cache.misses} miss, {cache.hits} hits")

# %% [markdown]
# Each call's time, in order. The cached line's first point is its single miss.

# %%
plot_curve(list(range(1, 101)),
           {"uncached": [s * 1000 for s in plain_calls.samples], "cached (Redis)": [s * 1000 for s in cached_calls.samples]},
           xlabel="call number", ylabel="ms per call (log)", logy=True, title="GET /stats, 100 calls")


# %% [markdown]
# The same comparison timed interleaved (miss, hit, miss, hit …), so machine noise hits both alike:

# %%
async with app_client(uncached_app) as plain, app_client(cached_app) as cached:
    hit_vs_miss = await compare({"miss (runs the query)": lambda: plain.get("/stats"),
                                 "hit (from Redis)": lambda: cached.get("/stats")}, n=20)
miss_t, hit_t = hit_vs_miss["miss (runs the query)"], hit_vs_miss["hit (from Redis)"]
say(f"| | median | p95 | queries in 100 calls (above) |\n|---|---|---|---|\n"
    f"| miss | {miss_t.median_ms:.2f} ms | {miss_t.p95_ms:.2f} ms | {plain_q.count} |\n"
    f"| hit | {hit_t.median_ms:.2f} ms | {hit_t.p95_ms:.2f} ms | {cached_q.count} (the first call's miss) |\n\n"
    f"A hit is **{hit_vs_miss.ratio:.0f}×** faster than a miss here ({redis_backend()}, "
    f"{db.counts['posts']:,} posts). With a real Redis across a network a hit costs a round trip more; "
    "a slower query makes the ratio bigger, a faster one smaller.")


# %% [markdown]
# ## Key design
#
# The key must contain **everything that changes the answer** and **nothing else**: the path and the
# query parameters (sorted, so `?a=1&b=2` and `?b=2&a=1` share a key). Never the session, the request
# object, a timestamp. If the answer depends on *who* asks (`/me`, permissions), the user id must be in
# the key, or the response must not be shared-cached at all. Here are the keys our requests made:

# %%
# NBVAL_CHECK_OUTPUT
async with app_client(cached_app) as client:
    for url in ["/stats?min_likes=100", "/stats?min_likes=100&sort=asc", "/stats?sort=asc&min_likes=100"]:
        response = await client.get(url)
        print(f"{url:<34} {response.headers['x-cache']}")
keys = sorted([k.decode().removeprefix(prefix + ":") async for k in redis.scan_iter(match=f"{prefix}:/stats*")])
print(keys)

# %% [markdown]
# The reordered query string shares a key. But `sort=asc`, a parameter this endpoint ignores, made a
# second key for the same answer: keying on the raw URL lets clients split your cache (and fill Redis)
# with junk parameters. Key on the parameters the endpoint declares when that matters.
#
# ## TTL: answers expire, and until then they can be stale
#
# Each entry is stored with a time to live (`SET key value PX ms`). Below, a 1-second TTL: miss, hit,
# wait, miss again. Between the write and the expiry, the cache serves **stale** data: a post added
# directly in the database is invisible until the entry expires.

# %%
# NBVAL_CHECK_OUTPUT
import asyncio
from datetime import datetime

from sqlalchemy import insert

short = ResponseCache(redis, f"{prefix}:short", ttl=1)
seen = []
async with app_client(make_cached_app(db, short)) as client:
    async def get_counted(name: str) -> None:
        with count_queries(db.engine) as q:
            r = await client.get("/stats?min_likes=499")
        seen.append((name, r.headers["x-cache"], sum(row["posts"] for row in r.json()), q.count))

    await get_counted("before the write")
    with db.session() as session:  # a write that bypasses the API: nothing invalidates the cache
        session.execute(insert(Post).values(user_id=1, title="new", body="", likes=499, created_at=datetime.now()))
        session.commit()
    await get_counted("within the TTL")
    await asyncio.sleep(1.2)
    await get_counted("after the TTL")
for name, status, posts, count in seen:
    print(f"{name:<17} {status:<4} posts with ≥ 499 likes: {posts}, queries: {count}")

# %% [markdown]
# The TTL is your staleness budget: how old may an answer be? Minutes for a dashboard, never for a
# bank balance. When staleness is not acceptable, **invalidate on write** instead of waiting.
#
# ## Invalidation on write: tags, not `KEYS`
#
# `POST /posts` changes every `/stats` answer (any `min_likes`), but no `/users/{id}` answer. The cache
# files each `/stats` key in a Redis **set** for the tag `posts` (`SADD`) and the write deletes exactly
# the members of that set (`SMEMBERS` + `DEL`). The other good pattern is a **versioned key**: put a
# version number in the key and `INCR` it on a write; old keys just expire. And the tempting
# `KEYS prefix:/stats*`? It finds the same 20 keys, among 1,000 and then 100,000 keys of other users of
# the same Redis, while another client sends a `PING`:

# %%
costs = [await keys_vs_tag(redis, prefix, filler) for filler in (1_000, 100_000)]
for cost in costs:
    print(f"{cost.filler:>7,} other keys: KEYS {cost.keys_ms:6.1f} ms, the tag's SMEMBERS {cost.tag_ms:4.1f} ms, "
          f"a PING due meanwhile waited {cost.ping_waited_ms:6.1f} ms")
small, large = costs
say(f"`KEYS` took **{large.keys_ms / max(small.keys_ms, 1e-3):.0f}×** longer with 100× more keys on the server: it "
    f"walks every key, whatever its pattern. The tag set took {large.tag_ms:.1f} ms. And the PING waited "
    f"**{large.ping_waited_ms:.0f} ms**: Redis runs one command at a time, so every client waits for the walk. "
    "On a Redis with millions of keys, that wait is an outage. (`SCAN` walks in small steps between other "
    "clients' commands, but still walks everything.)")

# %% [markdown]
# The tag set, in action:

# %%
# NBVAL_CHECK_OUTPUT
tagged = ResponseCache(redis, f"{prefix}:tags", ttl=300)
async with app_client(make_cached_app(db, tagged)) as client:
    urls = ["/stats?min_likes=0", "/stats?min_likes=100", "/users/1"]
    warm = [(await client.get(u)).headers["x-cache"] for u in urls]
    posted = await client.post("/posts", json={"user_id": 1, "title": "A new post", "likes": 250})
    with count_queries(db.engine) as queries:
        after = [(await client.get(u)).headers["x-cache"] for u in urls]
print(f"warm-up:            {dict(zip(urls, warm))}")
print(f"POST /posts →       {posted.status_code}")
print(f"after the write:    {dict(zip(urls, after))}, queries: {queries.count}")

# %% [markdown]
# ## Serialisation: cache the response's JSON, not ORM objects
#
# What the cache stores is the response body as bytes: the `list[CountryStats]` model dumped to JSON
# once, on the miss. A hit sends those bytes as they are: no query, no ORM objects, no Pydantic
# validation. Why not cache the ORM objects themselves? Try the three ways:

# %%
for attempt, raised in orm_objects_in_a_cache(db).items():
    print(f"{attempt}:\n    {raised}")

# %% [markdown]
# JSON cannot encode them; another request finds them detached from the session that loaded them (closed
# long ago); and a pickle names your class, so a deploy that renames or moves a model breaks every entry
# still in the cache.

# %%
import json

stored = await redis.get(f"{prefix}:/stats?min_likes=100")
print(type(stored).__name__, len(stored), "bytes:", stored[:90])
with db.session() as session:
    user = session.get(User, 1)
    try:
        json.dumps(user)
    except TypeError as error:
        print("json.dumps(ORM object) →", error)

# %% [markdown]
# ## Cache stampede: 50 concurrent misses
#
# An entry expires while 50 requests are in flight: each one misses, and each one runs the slow query.
# That is a stampede (or dog-pile), and it hits exactly when the database is busiest. The fix measured
# below: the first miss takes a short-lived lock (`SET lock NX PX …`); the others wait for the answer it
# stores instead of querying.
#
# ```mermaid
# sequenceDiagram
#     participant A as request 1
#     participant B as requests 2…50
#     participant C as Redis
#     participant D as database
#     A->>C: GET key (miss), SET lock NX PX
#     B->>C: GET key (miss), SET lock NX (refused)
#     A->>D: the slow query, once
#     A->>C: SET key, DEL lock
#     B->>C: GET key (hit, after a short wait)
# ```
#
# Below, 50
# concurrent first requests, each statement delayed by a simulated 20 ms network round trip. First
# without a lock:

# %%
with simulated_latency(db.engine, 20):
    no_lock = make_cached_app(db, ResponseCache(redis, f"{prefix}:nolock", ttl=300))
    with count_queries(db.engine) as stampede:
        responses = await concurrent_gets([no_lock], "/stats?min_likes=1", 50)
say(f"50 concurrent misses, no lock: **{stampede.count} database queries** for one answer "
    f"({len({r.content for r in responses})} distinct bodies).")

# %% [markdown]
# With `lock=True`, the first miss takes a lock in Redis (`SET lock NX PX 10000`: only one client
# can create it); the others wait and re-read the key until the winner has stored the answer. They
# **back off** (5 ms, 10 ms, 20 ms … up to 100 ms, with jitter) rather than polling every few
# milliseconds, so the waiting requests do not fill the event loop and Redis with their own calls while
# the winner works. Because the lock lives in Redis, it also holds across worker processes.

# %%
# NBVAL_CHECK_OUTPUT
with simulated_latency(db.engine, 20):
    with_lock = make_cached_app(db, ResponseCache(redis, f"{prefix}:lock", ttl=300), lock=True)
    with count_queries(db.engine) as single:
        responses = await concurrent_gets([with_lock], "/stats?min_likes=1", 50)
print(f"50 concurrent misses, Redis lock: {single.count} database query, "
      f"{len({r.content for r in responses})} distinct body, statuses {sorted({r.status_code for r in responses})}")

# %% [markdown]
# ## Why Redis and not a dict per process
#
# With several workers (lesson 01), each worker is a separate process. A dict cache is per process:
# each worker misses once, and a write that one worker sees clears only *its* dict: the other keeps
# serving the old answer until it restarts. Below, two app instances stand in for two workers (they share
# nothing but the database, and Redis when they use it).

# %%
# NBVAL_CHECK_OUTPUT
from collections.abc import Callable
from typing import Any


async def two_workers(make: Callable[[], Any]) -> str:
    """Worker A and worker B each read /stats; A takes a write; what does B answer next?"""
    a, b = make(), make()
    async with app_client(a) as worker_a, app_client(b) as worker_b:
        with count_queries(db.engine) as q:
            await worker_a.get("/stats?min_likes=300")
            old = await worker_b.get("/stats?min_likes=300")
        await worker_a.post("/posts", json={"user_id": 2, "title": "Another", "likes": 450})
        new = await worker_b.get("/stats?min_likes=300")
    fresh = "fresh" if new.content != old.content else "STALE"
    return f"queries for 2 reads: {q.count}; after a write on A, B answers {new.headers['x-cache']} → {fresh}"

shared = ResponseCache(redis, f"{prefix}:shared", ttl=300)
print("dict per worker:", await two_workers(lambda: make_memory_cached_app(db)))
print("shared Redis:   ", await two_workers(lambda: make_cached_app(db, shared)))


# %% [markdown]
# ## HTTP caching in one cell: `Cache-Control` and `ETag` → 304
#
# Redis saves the *server* work. HTTP caching saves the *network*: `Cache-Control: max-age=60` lets a
# browser or CDN reuse a response without asking; an `ETag` (a hash of the body) lets a client ask "has
# it changed?" with `If-None-Match`, and the answer `304 Not Modified` has no body. (This endpoint
# still computes the body to hash it: combine both caches to save the query too.)

# %%
# NBVAL_CHECK_OUTPUT
async with app_client(make_http_cached_app(db)) as client:
    full = await client.get("/stats")
    again = await client.get("/stats", headers={"If-None-Match": full.headers["etag"]})
print(f"first:       {full.status_code}, {len(full.content)} bytes, Cache-Control: {full.headers['cache-control']}")
print(f"If-None-Match: {again.status_code}, {len(again.content)} bytes")

# %% [markdown]
# ## Clean up
#
# Delete this run's keys (with `SCAN`: fine for a clean-up script, never on a request's path) and the
# database.

# %%
dropped = await drop_keys(redis, prefix)
await redis.aclose()
db.close()
say(f"Deleted {dropped} keys under `{prefix}:`.")

# %% [markdown]
# Now open **`exercises/03_caching.ipynb`**: cache an endpoint, invalidate on write, stop a stampede.
#
# ## Key points
# - Cache what is slow and read far more often than written; measure hit vs miss, and count queries.
# - A key is the path plus sorted query parameters (plus the user when the answer is per user), never
#   objects such as a session: the article's `@cache` keyed on the session and never hit.
# - A TTL bounds staleness; a write must invalidate what it changes: tag sets or versioned keys, not `KEYS`.
# - Cache the response's JSON bytes, not ORM objects.
# - Concurrent misses stampede the database: a Redis lock (`SET NX`) makes it one query, in every worker.
# - A dict per process goes stale across workers; Redis is shared. `ETag` + `304` saves the network too.
