# %% [markdown]
# # 04 · Pagination and compression: never send more than the client can use
#
# **Teaching:** 30 min · **Exercise:** 25 min
#
# **Questions**
# - What does an unbounded list endpoint cost, in bytes and in time?
# - How do I cap a page size so a client *cannot* ask for everything?
# - Why must a paginated query order by a unique key?
# - Why does `OFFSET` get slower the deeper you page, and what stays flat?
# - When is gzip worth its CPU, and when is it not?
#
# **Objectives**
# - Measure an unbounded list against a page of 20 (bytes, latency).
# - Cap the page size with `Annotated[int, Query(ge=1, le=100)]` and read the 422 it produces.
# - See rows go missing when a cursor is built on a non-unique column, and duplicates appear when rows
#   are inserted while someone pages with `OFFSET`.
# - Plot page latency against page depth for `OFFSET` and for keyset (cursor) pagination.
# - Add `GZipMiddleware`, measure bytes before and after, its CPU cost, and what `minimum_size` is for.
#
# The source article says "use pagination on all list endpoints" and shows `skip`/`limit` with
# `Query(default=20, le=100)`. That advice is right; the code is the older idiom and has a hole we
# measure below. Everything here is measured in the cell above the sentence that quotes it.

# %%
from course_lib import *
from course_lib.lessons.l04_pagination import (
    Item, add_items, depth_profile, depth_prose, explain_page, feed_index, gzip_cost, keyset_levels, limit_prose,
    make_article_app, make_catalog_app, make_feed_app, make_items_db, make_keyset_app, make_offset_app,
    make_serialization_app, make_unbounded_app, page_query_times, sample_items, ties_prose, walk_cursor, walk_offset, wire_bytes, with_gzip,
)

# %% [markdown]
# ## A table worth paginating
#
# This lesson has its own table, `items` (id, title, category, price, created_at), on the course's database:
# SQLite by default, PostgreSQL when `DATABASE_URL` names one. It is loaded in bulk so that even 300,000 rows
# take a few seconds: batches of Core inserts (executemany) on SQLite, `COPY items FROM STDIN` through
# psycopg 3 on PostgreSQL. Ids run 1…N; `created_at` is deliberately *not* unique: five items share each
# second, as they would in any busy shop.

# %%
import time

started = time.perf_counter()
db = make_items_db(10_000)
built_s = time.perf_counter() - started
engine_name = db.engine.dialect.name
loader = "COPY … FROM STDIN" if engine_name == "postgresql" else "executemany batches of INSERT"
say(f"10,000 items on **{engine_name}** in **{built_s:.2f} s** ({loader}).")


# %% [markdown]
# ## 1. The unbounded list
#
# `make_unbounded_app(db)` has the endpoint every tutorial starts with:
# `GET /items` returns `session.scalars(select(Item).order_by(Item.id.desc())).all()`: every row.
# Next to it, the same rows a page of 20 at a time (`make_keyset_app`, explained below).
# Same data, same response model; only the size of the answer differs.

# %%
async with app_client(make_unbounded_app(db)) as everything, app_client(make_keyset_app(db)) as paged:
    size_all = len((await everything.get("/items")).content)
    size_page = len((await paged.get("/items", params={"limit": 20})).content)
    unbounded = await compare({
        "GET /items (all 10,000)": lambda: everything.get("/items"),
        "GET /items?limit=20": lambda: paged.get("/items", params={"limit": 20}),
    }, n=5, warmup=1)
unbounded

# %%
plot_timings(unbounded, title="Every row vs one page of 20, in-process (10,000 items)")

# %%
say(
    f"The unbounded list is **{size_all / 1e6:.2f} MB** and took **{unbounded['GET /items (all 10,000)'].median_ms:,.0f} ms** "
    f"(median) in-process; a page of 20 is **{size_page / 1e3:.1f} KB** and **{unbounded['GET /items?limit=20'].median_ms:.1f} ms**: "
    f"**{size_all / size_page:,.0f}×** fewer bytes and **{unbounded.ratio:,.0f}×** faster, before any network. And the "
    "unbounded one grows with the table: next year it is slower, without anyone touching the code."
)


# %% [markdown]
# ### Part of that time is serialization: declare the return type
#
# Turning rows into JSON is work too, and *how* it is done matters. With a declared return type
# (`-> list[ItemOut]`) FastAPI hands the data to pydantic-core, which writes the JSON bytes in Rust. Without
# one, FastAPI's `jsonable_encoder` first walks every value in Python. The same 5,000 items from memory (no
# database), three ways:

# %%
items_5k = sample_items(5_000)
async with app_client(make_serialization_app(items_5k)) as client:
    bodies = {path: (await client.get(path)).json() for path in ("/declared", "/undeclared-dicts", "/undeclared-models")}
    serialization = await compare({
        "-> list[ItemOut]": lambda: client.get("/declared"),
        "no return type, dicts": lambda: client.get("/undeclared-dicts"),
        "no return type, models": lambda: client.get("/undeclared-models"),
    }, n=8, warmup=2)
print("same JSON all three ways:", all(body == bodies["/declared"] for body in bodies.values()))
serialization

# %%
plot_timings(serialization, title="5,000 items to JSON, in-process: declared return type vs jsonable_encoder")

# %%
from fastapi.responses import ORJSONResponse

declared_ms = serialization["-> list[ItemOut]"].median_ms
slowest = max(serialization.timings.values(), key=lambda timing: timing.median_ms)
say(f"Declared: **{declared_ms:.1f} ms**; through `jsonable_encoder`: up to **{slowest.median_ms:.0f} ms**, "
    f"**{slowest.median_ms / declared_ms:.0f}×** slower for the same bytes. That is also why the installed FastAPI "
    f"marks `ORJSONResponse` deprecated: *{ORJSONResponse.__deprecated__.split(', which')[0]}*.")

# %% [markdown]
# ## 2. Cap the page size, and check the cap
#
# The article's version, `skip: int = 0, limit: int = Query(default=20, le=100)`, bounds `limit`
# from above only. `make_article_app` is exactly that (in SQLAlchemy 2.0 style). What happens with
# `limit=1000`, and with `limit=-1`?

# %%
# NBVAL_CHECK_OUTPUT
async with app_client(make_article_app(db), raise_app_exceptions=False) as client:  # a 500 stays a response
    too_big = await client.get("/items", params={"limit": 1000})
    negative = await client.get("/items", params={"limit": -1})
print("limit=1000 →", too_big.status_code)
print("limit=-1   → rejected by validation (422):", negative.status_code == 422)

# %% [markdown]
# `le=100` stops `limit=1000`, but `limit=-1` passes validation and reaches the database as `LIMIT -1`.
# What happens next depends on the engine:

# %%
say(limit_prose(engine_name, negative))

# %% [markdown]
# A negative `skip` is just as unchecked.
#
# The current idiom puts the whole constraint in the type, with `Annotated`, both bounds, and a
# default: `limit: Annotated[int, Query(ge=1, le=100)] = 20` and
# `offset: Annotated[int, Query(ge=0)] = 0` (see `make_offset_app`). FastAPI validates before your
# code runs and answers **422** with a body that says what was wrong:

# %%
# NBVAL_CHECK_OUTPUT
import json

async with app_client(make_offset_app(db)) as client:
    for limit in (1000, 0, -1, 100):
        response = await client.get("/items", params={"limit": limit})
        print(f"limit={limit:>4} → {response.status_code}")
    error = await client.get("/items", params={"limit": 1000})
print(json.dumps(error.json(), indent=1))

# %% [markdown]
# ## 3. Order by a unique key
#
# A page is "the next N rows *in some order*". If the order is not total (two rows can tie), the
# database may return tied rows in any order it likes, and "the next N" stops meaning anything.
#
# The first way it goes wrong is exact and happens on every database. A cursor is "the last value I
# saw"; the next page asks for rows *before* it. Build that cursor on `created_at` alone, and the items
# that share the boundary second with the last item of a page are skipped. `make_feed_app(db,
# tiebreaker=False)` does that; with `tiebreaker=True` it orders and compares on
# `(created_at, id)`, a unique pair.

# %%
# NBVAL_CHECK_OUTPUT
small = make_items_db(1_000)
for tiebreaker in (False, True):
    async with app_client(make_feed_app(small, tiebreaker=tiebreaker)) as client:
        seen = await walk_cursor(client, limit=12)
    key = "(created_at, id)" if tiebreaker else "created_at only"
    print(f"cursor on {key:<17}: {len(seen):,} items seen, {len(set(seen)):,} distinct, "
          f"{1_000 - len(set(seen)):,} never returned")

# %% [markdown]
# With the cursor on `created_at` alone, every page boundary that falls inside a second loses the
# rest of that second's items; nobody notices, because every page looks full. The fix is to add the
# primary key as a tiebreaker, both in `ORDER BY` and in the comparison
# (`tuple_(Item.created_at, Item.id) < tuple_(ts, last_id)`), and to make the cursor opaque
# (`encode_cursor` packs both values into one URL-safe string).
#
# The second way depends on the engine. With `OFFSET`, ties are harmless only if every page request
# returns them in the same order. Page through the 1,000 items 12 at a time with `OFFSET`, ordered by
# `created_at` alone, then by `(created_at, id)`:

# %%
# NBVAL_CHECK_OUTPUT
orders = {"created_at": [Item.created_at.desc()], "created_at, id": [Item.created_at.desc(), Item.id.desc()]}
offset_walks = {}
for key, order_by in orders.items():
    async with app_client(make_offset_app(small, order_by=order_by)) as client:
        offset_walks[key] = await walk_offset(client, limit=12)
    print(f"OFFSET by ({key}): {len(offset_walks[key]):,} rows received")
exact = offset_walks["created_at, id"]
print(f"with the id tiebreaker: {len(set(exact)):,} distinct, newest first: {exact == list(range(1_000, 0, -1))}")

# %%
loose = offset_walks["created_at"]
say(ties_prose(engine_name, loose, explain_page(small, orders["created_at"], offset=360)))

# %% [markdown]
# Always end `ORDER BY` with a unique column; then the result does not depend on luck, or on the engine.

# %% [markdown]
# ## 4. Pages while the data moves
#
# A newest-first feed gets new rows *at the top*. With `OFFSET`, every insert shifts every row below
# it by one position, so the next page repeats rows the client already has. Below, three new items
# arrive after each page request, while a client walks 120 items, 10 at a time.

# %%
# NBVAL_CHECK_OUTPUT
for name, make_app, walk in (("OFFSET", make_offset_app, walk_offset), ("keyset", make_keyset_app, walk_cursor)):
    with make_items_db(120) as moving:
        async with app_client(make_app(moving)) as client:
            seen = await walk(client, limit=10, between=lambda: add_items(moving, 3))
    repeated = len(seen) - len(set(seen))
    print(f"{name:<6}: {len(seen)} items received, {repeated} of them twice, "
          f"{len(set(range(1, 121)) - set(seen))} of the original 120 missing")

# %% [markdown]
# With `OFFSET` the client shows the same items again and again (and, if rows were deleted instead,
# it would silently skip some). The keyset walk (`WHERE id < :last_id ORDER BY id DESC LIMIT :n`) is
# anchored to a *row*, not to a position, so inserts above it change nothing.

# %% [markdown]
# ## 5. OFFSET cost grows with depth; keyset stays flat
#
# `OFFSET 250000` means "find and throw away 250,000 rows, then return 20". The database cannot jump
# there: it walks them. A keyset query seeks straight to `id < :cursor` in the primary-key index.
# We need a bigger table for this to show (on 10,000 rows both are too quick to tell apart):

# %%
big = make_items_db(300_000)
depths = [0, 50_000, 100_000, 150_000, 200_000, 250_000, 299_980]
profile = await depth_profile(big, depths, n=5)
plot_curve(depths, profile, xlabel="page depth (rows before the page)", ylabel="median ms per request",
           title="GET /items?limit=20 on 300,000 rows: OFFSET vs keyset")

# %%
say(depth_prose(depths, profile))

# %% [markdown]
# ### The SQL alone, and the endpoint around it
#
# A request is more than its SQL: the client, routing, validation, a session, the ORM's objects, the response
# model, JSON. That work is the same for an OFFSET page and a keyset page, so it shrinks the *ratio* without
# changing the *saving*. Time the last page both ways, the SQL alone (the raw driver: `sqlite3`, or `psycopg`) and
# `GET /items` in-process, side by side:

# %%
say(await keyset_levels(big))

# %% [markdown]
# This notebook uses 300,000 rows to stay quick. The benchmark measures the same page on the
# 1,000,000 rows the claim names (about a minute to build here): `.venv/bin/python -m course_lib bench --only 04`.

# %% [markdown]
# Move the slider to choose a depth; the panel times just the two SQL queries (no HTTP), interleaved.

# %%
live_panel(lambda depth: page_query_times(big, int(depth)), description="page depth (rows)",
           min=0, max=290_000, step=10_000, value=200_000)


# %% [markdown]
# Keyset needs an index on exactly the key it orders and compares on. On the primary key you get it
# for free. A feed ordered by `(created_at, id)` needs `Index("ix_items_created_id", "created_at",
# "id")`: without it, even the *first* page sorts the whole table. Measured:

# %%
async with app_client(make_feed_app(big)) as feed:
    before = await measure(lambda: feed.get("/items", params={"limit": 20}), n=3, warmup=1,
                           label="first page by (created_at, id), no index")
    with feed_index(big):  # CREATE INDEX ix_items_created_id ON items (created_at, id), dropped after the block
        after = await measure(lambda: feed.get("/items", params={"limit": 20}), n=5, warmup=1,
                              label="same, with the index")
say(f"Without the index: **{before.median_ms:,.1f} ms**; with it: **{after.median_ms:.1f} ms** "
    f"(**{before.median_ms / after.median_ms:,.0f}×**). Lesson 05 is about indexes.")

# %% [markdown]
# **When OFFSET is still fine:** small tables, admin screens, "jump to page 7" UIs over a few thousand
# rows. Keyset cannot jump to an arbitrary page; it can only go next (and previous, with the reverse
# comparison). Feeds, infinite scroll, exports and API clients that walk everything want keyset.

# %% [markdown]
# ## 6. Compression: GZipMiddleware
#
# JSON is repetitive text; gzip shrinks it several times over. FastAPI re-exports Starlette's
# middleware: `app.add_middleware(GZipMiddleware, minimum_size=..., compresslevel=...)`. It compresses
# only when the request says `Accept-Encoding: gzip` and the body is at least `minimum_size` bytes
# (default 500); the default `compresslevel` is 9, the slowest. `wire_bytes` reads the raw bytes that
# travel, before httpx decompresses them.

# %%
catalog_plain = make_catalog_app(db)
catalog_gzip = with_gzip(make_catalog_app(db), minimum_size=500, compresslevel=9)
sizes = {}
async with app_client(catalog_plain) as plain, app_client(catalog_gzip) as zipped:
    for url in ("/items/export", "/items?limit=100", "/items?limit=8", "/health"):
        raw, _, _ = await wire_bytes(plain, url)
        wire, _, encoding = await wire_bytes(zipped, url)
        sizes[url] = (raw, wire, encoding)
        print(f"{url:<17} {raw:>10,} bytes → {wire:>9,} on the wire ({encoding}, {raw / wire:.1f}×)")


# %%
plot_bars({f"{url}\n{'plain' if i == 0 else 'gzip'}": sizes[url][i] for url in ("/items/export", "/items?limit=100")
           for i in (0, 1)}, ylabel="bytes on the wire", title="Bytes sent: plain vs gzip (level 9)", logy=True)


# %% [markdown]
# Bytes are not free to shrink. The CPU cost, first for the compression alone on the export's body,
# at three levels (interleaved):

# %%
async with app_client(catalog_plain) as plain:
    export_body = (await plain.get("/items/export")).content
levels = gzip_cost(export_body, levels=(1, 6, 9), n=5)
for level, (size, ms) in levels.items():
    print(f"level {level}: {len(export_body):,} → {size:,} bytes ({len(export_body) / size:.1f}×) in {ms:.1f} ms")

# %%
plot_bars({f"level {level}": ms for level, (_, ms) in levels.items()}, ylabel="ms to compress the export",
          title=f"gzip CPU per {len(export_body) / 1e6:.1f} MB response")

# %%
say(
    f"Level 9 (Starlette's default) took **{levels[9][1]:.1f} ms** for {len(export_body) / levels[9][0]:.1f}× smaller; "
    f"level 6 **{levels[6][1]:.1f} ms** for {len(export_body) / levels[6][0]:.1f}×; level 1 **{levels[1][1]:.1f} ms** for "
    f"{len(export_body) / levels[1][0]:.1f}×. The server spends that CPU on every response "
    "(on the event loop for bodies under 128 KiB; this one, larger, in a worker thread: Starlette's "
    "`thread_minimum_size`). Often the reverse proxy or CDN compresses instead; "
    "then leave it to them."
)

# %% [markdown]
# ### `minimum_size`: small responses are not worth it
#
# With the default `minimum_size=500`, the 8-item page above (under 1 KB) was compressed too. A
# network packet carries about 1,400 bytes of payload, so a response that already fits in one packet
# arrives in the same round trip compressed or not: gzip then only costs CPU, on both ends. Measured
# per request, in-process (interleaved):

# %%
catalog_tuned = with_gzip(make_catalog_app(db), minimum_size=1400, compresslevel=6)
async with app_client(catalog_plain) as plain, app_client(catalog_gzip) as zipped, \
        app_client(catalog_tuned) as tuned:
    small_cost = await compare({
        "gzip, minimum_size=500": lambda: zipped.get("/items?limit=8"),
        "gzip, minimum_size=1400": lambda: tuned.get("/items?limit=8"),
        "no gzip": lambda: plain.get("/items?limit=8"),
    }, n=60, warmup=5)
    tuned_small = await wire_bytes(tuned, "/items?limit=8")
    tuned_page = await wire_bytes(tuned, "/items?limit=100")
small_cost

# %%
say(
    f"The {sizes['/items?limit=8'][0]:,}-byte page: {small_cost['gzip, minimum_size=500'].median_ms:.2f} ms compressed "
    f"(to {sizes['/items?limit=8'][1]:,} bytes, still one packet) vs {small_cost['no gzip'].median_ms:.2f} ms plain. "
    f"With `minimum_size=1400` it is sent as is ({tuned_small[2]}, {tuned_small[0]:,} bytes), while the 100-item page "
    f"({tuned_page[1]:,} bytes) still goes out as {tuned_page[2]}, {tuned_page[0]:,} bytes."
)

# %% [markdown]
# ## Your turn
#
# Open **`exercises/04_pagination.ipynb`**:
#
# - **04.keyset**: write a keyset-paginated `GET /items?limit=&cursor=` with a cap, **cheapest first**: a
#   key with ties (many items share a price) and a cursor you design. The grader walks every page on several
#   table sizes (no duplicates, nothing missing), inserts cheaper items *between* page requests, checks 422
#   over the cap, and measures the database's work for the last page of 20,000 items against a page of 1,000.
# - **04.gzip**: add gzip so a large export shrinks at least 5× and a small response is left alone.
#
# ## Key points
# - Never return an unbounded list: its bytes and latency grow with the table (section 1 measured both
#   against a page of 20 on 10,000 rows).
# - Cap page sizes in the type: `Annotated[int, Query(ge=1, le=100)] = 20`. Without `ge=1`, `limit=-1`
#   bypasses the cap on SQLite (the whole table) and is a server error on PostgreSQL.
# - Order by a unique key (add the primary key as a tiebreaker); a cursor on a non-unique column loses rows on
#   every database, and `OFFSET` over ties repeats and skips rows on PostgreSQL (SQLite only hides it).
# - `OFFSET` walks every skipped row and shifts under inserts; keyset (`WHERE key < :cursor ORDER BY key
#   DESC LIMIT n`) stays flat with depth and stable under inserts, given an index on the key.
# - `GZipMiddleware` shrinks large JSON several times over for CPU you can measure; set `minimum_size`
#   above one packet and pick `compresslevel` from a measurement, not the default.
