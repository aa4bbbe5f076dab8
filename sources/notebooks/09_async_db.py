# %% [markdown]
# # 09 · Async database access: AsyncSession, MissingGreenlet, pools against max_connections
#
# **Teaching:** 35 min · **Exercises:** 30 min
#
# **Questions**
# - What happens to every other request when an `async def` endpoint uses a plain (sync) SQLAlchemy session?
# - Why does reading `user.posts` raise `MissingGreenlet` on an `AsyncSession`, and which fixes are N+1 again?
# - How many connections do my workers open, and what does the database allow?
# - When is a sync `def` route the better choice?
#
# **Objectives**
# - Query through `create_async_engine` and `AsyncSession` (aiosqlite on SQLite, asyncpg on PostgreSQL).
# - Measure a sync session inside `async def` blocking the event loop under concurrency, against an
#   `AsyncSession` and a sync `def` route, with a simulated round trip per statement.
# - Trigger `MissingGreenlet` and fix it three ways: eager loading, `AsyncAttrs.awaitable_attrs`, and
#   `expire_on_commit=False`; count the statements of each.
# - Size pools as workers × (pool_size + max_overflow) against `max_connections`; see `pool_timeout`,
#   `pool_pre_ping` and a statement time limit act.

# %%
import os

import anyio.to_thread
from sqlalchemy import select
from sqlalchemy.exc import MissingGreenlet
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import selectinload

from course_lib import *
from course_lib.lessons.l09_async_db import (
    LATENCY_MS, async_url, connection_limit, drop_connections, first_line, hold_load, make_async_engine,
    serve_three_ways, statement_timeout_demo, sync_or_async, thread_pools,
)

# %% [markdown]
# ## An async engine on the demo database
#
# `create_async_engine` takes the same URL with an async driver: `sqlite+aiosqlite://` for SQLite (aiosqlite
# runs sqlite3 in a thread of its own per connection) and `postgresql+asyncpg://` for PostgreSQL (asyncpg
# speaks the protocol on the event loop). `async_url` maps the course's URL; `make_async_engine(db)` builds the
# engine. Sessions come from `async_sessionmaker`, and every statement is awaited.

# %%
db = make_demo_db(users=50, posts_per_user=5, comments_per_post=2)
engine = make_async_engine(db)
Session = async_sessionmaker(engine, expire_on_commit=False)
say(f"This run's database: `{db.engine.url.get_backend_name()}`; the async engine's driver is "
    f"**{engine.dialect.driver}** (`{async_url(db.url).split('://')[0]}://…`).")

# %%
# NBVAL_CHECK_OUTPUT
with count_queries(engine) as log:
    async with Session() as session:
        user = await session.scalar(select(User).options(selectinload(User.posts)).where(User.id == 1))
print(f"{user.name!r} has {len(user.posts)} posts: {log.count} statements")

# %% [markdown]
# `count_queries` and `simulated_latency` take an `AsyncEngine` as they take an `Engine`: the async engine runs
# SQLAlchemy's ordinary (sync) core inside a greenlet, and the driver's waits become awaits on the event loop.
#
# ## A sync session inside `async def`
#
# The lesson's endpoint, `GET /users/{id}`, returns a user and their post titles (2 statements), written three
# ways: a sync `Session` inside `async def`, the same code in a sync `def` route (FastAPI runs it in its thread
# pool), and an `AsyncSession` awaited in `async def`. Each statement pays a simulated round trip of
# `LATENCY_MS` ms, as a database across a network would: a sync driver *sleeps in its thread*, an async
# driver *awaits*. Twenty requests arrive at once.

# %%
ways = await serve_three_ways(db, concurrency=20, latency_ms=LATENCY_MS)
for kind, (result, seen) in ways.items():
    print(f"{kind:<27} {result.wall_ms:>7,.0f} ms  {dict(result.statuses)}  statements on the loop's thread: "
          f"{seen.blocking_on_loop:>2}/{seen.statements}  peak in flight: {seen.peak_in_flight:>2}  "
          f"longest loop stall: {result.longest_stall_ms:,.0f} ms")

# %%
blocked, blocked_seen = ways["sync session in async def"]
awaited, awaited_seen = ways["AsyncSession"]
threaded, _ = ways["sync def"]
say(f"With a sync session inside `async def`, **{blocked_seen.blocking_on_loop} of {blocked_seen.statements}** "
    f"statements waited on the event loop's own thread, one at a time (peak in flight: "
    f"{blocked_seen.peak_in_flight}): the 20 requests took **{blocked.wall_ms:,.0f} ms**, and the loop, which "
    f"serves every request of this worker, froze for up to {blocked.longest_stall_ms:,.0f} ms at a time. "
    f"Awaiting an `AsyncSession`: **{awaited.wall_ms:,.0f} ms** ({blocked.wall_ms / awaited.wall_ms:.1f}× less, "
    f"up to {awaited_seen.peak_in_flight} statements in flight); the same sync code in a `def` route: "
    f"**{threaded.wall_ms:,.0f} ms**.")

# %%
plot_bars({kind: result.wall_ms for kind, (result, _) in ways.items()},
          ylabel="20 concurrent requests, wall time (ms)", title=f"{LATENCY_MS} ms per statement")

# %% [markdown]
# Nothing in the blocking endpoint looks wrong: the code is the same as in the `def` route; only the word
# `async` differs. Inside `async def`, every sync driver call runs on the loop. (On a machine shared with other
# programs, in-process request handling costs CPU too, so the ratio varies from run to run; the count of
# statements that held the loop does not.)
#
# ## `MissingGreenlet`: the async face of N+1
#
# On a sync session, reading a relationship that was not loaded runs a query behind the attribute (lesson 02's
# lazy load). An attribute read cannot be awaited, so on an `AsyncSession` the same read fails:

# %%
# NBVAL_CHECK_OUTPUT
async with Session() as session:
    users = (await session.scalars(select(User).order_by(User.id).limit(10))).all()
    try:
        print(len(users[0].posts))
    except Exception as error:
        print("MissingGreenlet" if isinstance(getattr(error, "orig", error), MissingGreenlet) else error,
              "←", first_line(error)[:70], "…")

# %% [markdown]
# Fix 1, eager loading: say in the query what the code will read. Two statements, whatever the number of users:

# %%
# NBVAL_CHECK_OUTPUT
with count_queries(engine) as eager_log:
    async with Session() as session:
        users = (await session.scalars(
            select(User).options(selectinload(User.posts)).order_by(User.id).limit(10))).all()
        posts = sum(len(u.posts) for u in users)
print(f"selectinload: {len(users)} users, {posts} posts, {eager_log.count} statements")

# %% [markdown]
# Fix 2, `AsyncAttrs`: the course's models inherit `sqlalchemy.ext.asyncio.AsyncAttrs`, so
# `await user.awaitable_attrs.posts` runs the lazy load as an awaitable. Legal, non-blocking, and one statement
# per user again. `session.run_sync(fn)`, which runs sync ORM code (lazy loads included) inside the greenlet,
# is the same trade:

# %%
# NBVAL_CHECK_OUTPUT
with count_queries(engine) as attrs_log:
    async with Session() as session:
        users = (await session.scalars(select(User).order_by(User.id).limit(10))).all()
        posts = sum([len(await u.awaitable_attrs.posts) for u in users])
with count_queries(engine) as run_sync_log:
    async with Session() as session:
        posts_too = await session.run_sync(
            lambda s: sum(len(u.posts) for u in s.scalars(select(User).order_by(User.id).limit(10))))
print(f"awaitable_attrs: {posts} posts, {attrs_log.count} statements")
print(f"run_sync:        {posts_too} posts, {run_sync_log.count} statements")

# %% [markdown]
# Use `awaitable_attrs` for one object's relationship, read once; for a list, load eagerly.
#
# Fix 3, `expire_on_commit=False`. After `commit()` a session expires every object it holds, so the next read
# of any attribute reloads it from the database: on an `AsyncSession` that read is a hidden query too.

# %%
# NBVAL_CHECK_OUTPUT
for expire in (True, False):
    async with async_sessionmaker(engine, expire_on_commit=expire)() as session:
        comment = Comment(post_id=1, author_name="Ada", body="async")
        session.add(comment)
        await session.commit()
        try:
            print(f"expire_on_commit={expire}: comment id {comment.id}")
        except Exception as error:
            print(f"expire_on_commit={expire}: {type(getattr(error, 'orig', error)).__name__}")

# %% [markdown]
# With `expire_on_commit=False` the object keeps the values it had at commit (the id included): right for an
# endpoint that returns what it just wrote. The cost: the object is not refreshed, so anything the database
# changed at commit (a trigger, a default computed by the server) needs `await session.refresh(obj)`.
#
# ## Offloading a sync call: `asyncio.to_thread` is not FastAPI's pool
#
# When a sync call must stay (a library with no async driver), run it in a thread. The two usual ways use
# different pools: `asyncio.to_thread` uses the loop's default executor, `run_in_threadpool` (Starlette;
# what FastAPI uses for `def` routes) AnyIO's limiter. Forty concurrent blocking calls of 50 ms each:

# %%
pools = await thread_pools(calls=40, ms=50)
say(f"`asyncio.to_thread`: **{pools['asyncio.to_thread']:,.0f} ms**; `run_in_threadpool`: "
    f"**{pools['run_in_threadpool']:,.0f} ms**. The default executor has min(32, cores + 4) = "
    f"{min(32, (os.cpu_count() or 1) + 4)} threads here; AnyIO's limiter allows "
    f"{anyio.to_thread.current_default_thread_limiter().total_tokens:.0f} at once.")

# %%
plot_bars(pools, ylabel="40 concurrent 50 ms calls, wall time (ms)")

# %% [markdown]
# ## When is a sync `def` route the better choice? Measure it
#
# Two situations, same endpoint: one request at a time with no added latency (the database is local, queries
# are fast), and 50 concurrent requests with a round trip of `LATENCY_MS` ms per statement.

# %%
quiet = await sync_or_async(db, latency_ms=0, concurrency=1)
busy = await sync_or_async(db, latency_ms=LATENCY_MS, concurrency=50)


def verdict(times: dict[str, float]) -> str:
    fast, slow = sorted(times, key=times.get)
    return f"`{fast}` is {times[slow] / times[fast]:.1f}× faster than `{slow}`"


winners = {min(times, key=times.get) for times in (quiet, busy)}
advice = {
    frozenset({"sync def"}): "`sync def` was faster in both: with waits this short next to each request's own work, "
                             "the simpler sync route is the right default until a measurement of your load says "
                             "otherwise.",
    frozenset({"AsyncSession"}): "`AsyncSession` was faster in both: on this database the async driver pays its way.",
}.get(frozenset(winners), "the winner depends on the load: measure yours before choosing.")
say(f"One at a time, no latency: `sync def` {quiet['sync def']:.1f} ms per request, `AsyncSession` "
    f"{quiet['AsyncSession']:.1f} ms: {verdict(quiet)}. Fifty at once, {LATENCY_MS} ms per statement: "
    f"`sync def` {busy['sync def']:,.0f} ms, `AsyncSession` {busy['AsyncSession']:,.0f} ms: {verdict(busy)}. "
    f"Here {advice}")

# %% [markdown]
# Both are bounded by the same connection pool (SQLAlchemy's default, counted below), and a `def` route by
# FastAPI's thread pool too (AnyIO's limiter, read above). An async driver saves a thread per waiting request;
# each statement costs it some event-loop work instead (aiosqlite also hops to its own thread). What is never right
# is the first bar of the plot above: a sync driver called from `async def`.
#
# ## Pools against the database's connection limit
#
# Every worker process builds its own engine, so the database sees **workers × (pool_size + max_overflow)**
# connections at peak, plus whatever else connects (migrations, a console, monitoring).

# %%
limit, reserved, source = connection_limit(db)
pool_size, overflow = engine.sync_engine.pool.size(), engine.sync_engine.pool._max_overflow  # SQLAlchemy's defaults
too_many = (limit - reserved) // (pool_size + overflow) + 1
say(f"Limit: **max_connections = {limit}**, {reserved} reserved for superusers, from {source}. With SQLAlchemy's "
    f"default pool ({pool_size} + {overflow} overflow per engine), **{too_many} workers** at full load open "
    f"{too_many * (pool_size + overflow)} connections: more than the {limit - reserved} left to the app.")

# %% [markdown]
# Four workers (four engines here, in one process) each get 30 concurrent requests that hold a connection for
# 100 ms; pool events count the connections the database would see. First the defaults, then each worker's
# share of a budget of 20 connections (`pool_size=5, max_overflow=0`), as when the database is a small managed
# plan or is shared with other services:

# %%
outcomes = {}
for label, options in {"default pool": {}, "budget: 5 each, no overflow": {"pool_size": 5, "max_overflow": 0}}.items():
    engines = [make_async_engine(db, **options) for _ in range(4)]
    outcomes[label] = await hold_load(engines, per_engine=30, hold_ms=100)
    for each in engines:
        await each.dispose()
default, budget = outcomes["default pool"], outcomes["budget: 5 each, no overflow"]
say(f"Default pools: **{default.pools.peak_open} connections** at once ({default.pools.opened} opened, "
    f"{default.pools.closed} closed again when returned: the overflow beyond `pool_size`), burst in "
    f"{default.wall_ms:,.0f} ms. Budgeted: "
    f"**{budget.pools.peak_open}**, burst in {budget.wall_ms:,.0f} ms, {budget.pool_timeouts} pool timeouts: "
    "requests queue in the pool instead of being refused by the database.")

# %%
plot_bars({label: o.pools.peak_open for label, o in outcomes.items()},
          ylabel="connections open at once", title="4 workers × 30 concurrent requests")

# %% [markdown]
# ### `pool_timeout`: how long a request may queue for a connection
#
# The queue is bounded in time: after `pool_timeout` seconds (default 30) a checkout raises
# `sqlalchemy.exc.TimeoutError`. Two connections, ten requests holding one for 300 ms, and a timeout of 0.1 s:

# %%
impatient = make_async_engine(db, pool_size=2, max_overflow=0, pool_timeout=0.1)
short = await hold_load([impatient], per_engine=10, hold_ms=300)
await impatient.dispose()
say(f"**{short.pool_timeouts} of {short.requests}** requests failed with a pool timeout; {short.answered} were "
    "answered. Set it above the longest wait you accept, and below the client's own timeout.")

# %% [markdown]
# ### `pool_pre_ping`: connections that died in the pool
#
# A database restart, a failover or an idle timeout closes connections the pool still holds; the next request
# that gets one fails. `pool_pre_ping=True` tests each connection at checkout and replaces a dead one.
# `drop_connections` plays the restart (PostgreSQL: `pg_terminate_backend`; SQLite: each pooled connection
# closed underneath the pool):

# %%
for pre_ping in (False, True):
    pinged = make_async_engine(db, pool_pre_ping=pre_ping)
    await hold_load([pinged], per_engine=3, hold_ms=10)
    dropped = await drop_connections(db, pinged)
    after = await hold_load([pinged], per_engine=3, hold_ms=10)
    await pinged.dispose()
    print(f"pool_pre_ping={pre_ping}: {dropped} connections dropped, then {after.answered}/{after.requests} "
          f"answered {after.errors[:1]}")

# %% [markdown]
# The price is a ping at every checkout; `pool_recycle=seconds` (replace connections older than that)
# is the cheaper complement when the server closes idle connections on a known schedule.
#
# ### A time limit per statement
#
# One runaway query holds its connection, and a worker's share of the budget, until it ends. PostgreSQL stops
# it with `statement_timeout` (asyncpg sets it per connection: `connect_args={"server_settings":
# {"statement_timeout": "200"}}`). SQLite has no such setting: a timer may call the connection's
# `interrupt()`.

# %%
outcome, elapsed_ms = await statement_timeout_demo(db, limit_ms=200)
how = ("`statement_timeout` = 200 ms" if db.engine.dialect.name == "postgresql"
       else "a timer calling `interrupt()` after 200 ms")
say(f"A statement that would run for seconds, with {how}: it ended after **{elapsed_ms:,.0f} ms** with "
    f"`{outcome}`.")

# %%
await engine.dispose()
db.close()

# %% [markdown]
# Now open **`exercises/09_async_db.ipynb`**: convert an endpoint of another shape to an `AsyncSession` that
# never blocks the loop and never lazy loads, and size a pool for a deployment drawn at random.
#
# ## Key points
# - `create_async_engine` + `async_sessionmaker` + `await session.scalars(...)`: aiosqlite for SQLite, asyncpg for
#   PostgreSQL. A sync session inside `async def` runs every round trip on the event loop: every other request
#   of the worker waits (measured above).
# - On an `AsyncSession` a lazy load raises `MissingGreenlet`. Load eagerly (`selectinload`, `joinedload`);
#   `awaitable_attrs` and `run_sync` make the lazy load legal, not cheap (1 + N statements).
# - `expire_on_commit=False` keeps committed objects readable without a hidden reload.
# - `asyncio.to_thread` and `run_in_threadpool` use different pools; FastAPI's `def` routes use the second.
# - A sync `def` route with a sync driver is a sound choice; measure your own load before switching.
# - Connections at peak = workers × (pool_size + max_overflow): keep it under `max_connections` minus what
#   others need; `pool_timeout` bounds the queue, `pool_pre_ping` survives restarts, a statement timeout bounds
#   a runaway query.
