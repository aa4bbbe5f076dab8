# %% [markdown]
# # 05 · Indexes: make the database jump to the row instead of reading them all
#
# **Teaching:** 30 min · **Exercise:** 20 min
#
# **Questions**
# - Why does a lookup by email get slower as the table grows, and what does an index change?
# - How do I *see* whether a query uses an index, instead of guessing?
# - Which columns deserve an index, in what order, and what do indexes cost?
#
# **Objectives**
# - Read a query plan: SQLite's `SCAN` / PostgreSQL's `Seq Scan` (every row) versus `SEARCH … USING INDEX` /
#   `Index Scan` (a jump).
# - Measure a lookup with and without an index, and how both grow with the table.
# - Declare indexes the SQLAlchemy 2.0 way: `mapped_column(..., index=True)` and `Index(...)` in
#   `__table_args__`, including a composite index for *filter + ORDER BY*.
# - Measure what indexes cost on writes, and why a boolean column rarely deserves one.
#
# Every figure below is measured in the cell above it, on your machine, against the course's database: SQLite by
# default, or the PostgreSQL server `DATABASE_URL` names (the same cells run on both; where they differ, the cell
# says so and why).

# %%
from collections.abc import Callable

from sqlalchemy import Select, func, select
from sqlalchemy.orm import selectinload

from course_lib import *
from course_lib.lessons.l05_indexes import (
    add_index, clone_db, driver_name, email_lookup, email_of, emails_to_look_up, explain, index_ddl, insert_batches, lookup_levels,
    make_lookup_app, make_posts_db, make_users_db, verdict,
)
from course_lib.db import dialect

DB = dialect()
say(f"This run measures **{DB}**" + ("" if DB == "sqlite" else " over a socket (`DATABASE_URL`)") + ".")

# %% [markdown]
# ## A table big enough to matter
#
# 200,000 users. `make_users_db` fills the table with one `INSERT … SELECT` that runs inside the database
# (SQLite: over a recursive CTE; PostgreSQL: over `generate_series`), without creating a Python object per
# row. User `i` has the email `email_of(i)`. On PostgreSQL it then runs `ANALYZE` and `VACUUM`, as you would
# after a bulk load: without statistics the planner does not know the table is big and may ignore an index.

# %%
import time

N = 200_000
started = time.perf_counter()
plain = make_users_db(N)
build_s = time.perf_counter() - started
say(f"Built **{plain.counts['users']:,} users** in **{build_s:.2f} s**. User 123,456's email is "
    f"`{email_of(123_456)}`.")

# %% [markdown]
# ## The course's `User` has no index on `email`, on purpose
#
# The primary key is indexed automatically; nothing else is. `User.__table__.indexes` lists the indexes
# SQLAlchemy would create for the model:

# %%
# NBVAL_CHECK_OUTPUT
print(User.__table__.indexes)
print(User.__table__.c.email)

# %% [markdown]
# ## Ask the database how it will run the query
#
# `EXPLAIN QUERY PLAN` (SQLite) or `EXPLAIN (FORMAT JSON)` (PostgreSQL) returns the plan instead of the rows.
# `explain(db, statement)` runs the right one and parses the answer into one small typed `QueryPlan`: its steps
# say which tables are read end to end (`scan`), which are searched through an index (`search`), and whether
# the database sorts. The plan's text is the database's own words:

# %%
lookup = select(User).where(User.email == email_of(123_456))
plan = explain(plain, lookup)
print(plan)

# %%
# NBVAL_CHECK_OUTPUT
print("tables read end to end:", plan.scanned_tables, "| indexes used:", plan.indexes)

# %% [markdown]
# `SCAN users` (SQLite) or `Seq Scan on users` (PostgreSQL; on a big table maybe `Parallel Seq Scan` under a
# `Gather`: several processes share the reading): to find one email the database reads **every** row and
# compares. Now the same data with an index. `clone_db` copies the database (SQLite: the file; PostgreSQL:
# `CREATE DATABASE … TEMPLATE`), and `add_index` runs `CREATE INDEX`:

# %%
indexed = clone_db(plain)
create_s = add_index(indexed, "users", "email")
say(f"`CREATE INDEX` on {N:,} rows took **{create_s * 1000:.0f} ms**: once, not per query.")

# %%
plan_indexed = explain(indexed, lookup)
print(plan_indexed)

# %%
# NBVAL_CHECK_OUTPUT
print(index_ddl(indexed, "users", "email"))
print("uses an index:", plan_indexed.uses_index("users"), "| indexes used:", plan_indexed.indexes)

# %% [markdown]
# `SEARCH users USING INDEX ix_users_email (email=?)` (SQLite) or `Index Scan using ix_users_email on users`
# (PostgreSQL): the index is a sorted B-tree of (email, where the row is); the database descends it in a few
# steps and reads one row.
#
# ## How much faster? Measured, interleaved
#
# `email_lookup(db, emails)` looks a user up the way an endpoint would: a new session, then
# `session.scalars(select(User).where(User.email == email)).one()`, a different email each call.

# %%
emails = emails_to_look_up(N)
orm = compare_sync({"no index": email_lookup(plain, emails), "index on email": email_lookup(indexed, emails)},
                   n=30, warmup=3)
orm

# %%
plot_timings(orm, title=f"One lookup by email, {N:,} users (ORM, log scale)")

# %%
say(f"Without an index a lookup takes **{orm['no index'].median_ms:.2f} ms** (median); with it "
    f"**{orm['index on email'].median_ms:.3f} ms**: **{orm.ratio:,.0f}×** faster on {N:,} rows.")

# %% [markdown]
# What is left with the index is mostly SQLAlchemy's own work (session, statement, row to object). Two more
# levels show where the time goes: the SQL alone (the raw driver, `sqlite3` or `psycopg`, on one connection, as a
# request holds one) and an HTTP endpoint (`GET /users/by-email?email=…`, in-process), whose request machinery adds
# its own fixed cost. Measured side by side:

# %%
say(await lookup_levels(plain, indexed, emails))

# %% [markdown]
# The ORM figure above sits between the two. On PostgreSQL every query also pays a real round trip over a
# socket (SQLite runs inside this process), so its ratios are smaller than SQLite's at the same size; the scan the
# index saves is the same kind of work.

# %% [markdown]
# ## Lookup time against table size
#
# A scan reads every row, so its time grows with the table; an index search grows with the *depth*
# of the B-tree (logarithmic: barely). Set `WITH_1M = True` to add a 1,000,000-row point (about
# 10 s more).

# %%
WITH_1M = False
sizes = [10_000, 50_000, N] + ([1_000_000] if WITH_1M else [])
scan_ms, search_ms = [], []
for size in sizes:
    small = plain if size == N else make_users_db(size)
    small_indexed = indexed if size == N else clone_db(small)
    if size != N:
        add_index(small_indexed, "users", "email")
    picks = emails_to_look_up(size)
    result = compare_sync({"scan": email_lookup(small, picks, raw=True),
                           "search": email_lookup(small_indexed, picks, raw=True)}, n=10, warmup=2)
    scan_ms.append(result["scan"].median_ms)
    search_ms.append(result["search"].median_ms)
    if size != N:
        small.close()
        small_indexed.close()
plot_curve(sizes, {"no index (SCAN)": scan_ms, "index (SEARCH)": search_ms}, xlabel="users in the table",
           ylabel="ms per lookup (raw driver, median)", title="Lookup by email vs table size", logx=True, logy=True)

# %%
say(f"From {sizes[0]:,} to {sizes[-1]:,} rows ({sizes[-1] // sizes[0]}× more), the scan went from "
    f"{scan_ms[0]:.2f} to {scan_ms[-1]:.2f} ms (**{scan_ms[-1] / scan_ms[0]:.0f}×**) and the indexed "
    f"search from {search_ms[0] * 1000:.0f} to {search_ms[-1] * 1000:.0f} µs "
    f"(**{search_ms[-1] / search_ms[0]:.1f}×**).")

# %% [markdown]
# ## Declaring indexes in the model (SQLAlchemy 2.0)
#
# The source article writes `email = Column(String, index=True)`. That still works, but it is the 1.x
# style. Today a model declares typed columns with `Mapped[...]` and `mapped_column(...)`: the same
# `index=True` goes there, and multi-column indexes go in `__table_args__`. SQLAlchemy names them
# `ix_<table>_<column>` and `create_all` creates them. (A separate declarative base keeps this
# example away from the course's models.)

# %%
# NBVAL_CHECK_OUTPUT
from datetime import datetime

from sqlalchemy import Index, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.schema import CreateIndex


class ExampleBase(DeclarativeBase):
    """A throwaway base: rerunning this cell starts over."""


class IndexedUser(ExampleBase):
    """The user model with its indexes declared."""

    __tablename__ = "users"
    __table_args__ = (Index("ix_users_country_created_at", "country", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(120), index=True)
    country: Mapped[str] = mapped_column(String(2))
    created_at: Mapped[datetime]


for index in sorted(IndexedUser.__table__.indexes, key=lambda ix: ix.name):
    print(CreateIndex(index).compile(plain.engine))

# %% [markdown]
# ## A composite index for *filter + ORDER BY*
#
# "A user's 10 latest posts": `WHERE user_id = ? ORDER BY created_at DESC LIMIT 10`. Three copies of
# the same 100,000 posts (500 authors × 200 posts): no index, an index on `user_id`, and one on
# `(user_id, created_at)`.

# %%
posts = make_posts_db(500, 200)
posts_user = clone_db(posts)
add_index(posts_user, "posts", "user_id")
posts_both = clone_db(posts)
add_index(posts_both, "posts", ("user_id", "created_at"))
latest = select(Post).where(Post.user_id == 7).order_by(Post.created_at.desc()).limit(10)
variants = {"no index": posts, "(user_id)": posts_user, "(user_id, created_at)": posts_both}

# %%
for label, db in variants.items():
    print(f"{label}:\n  " + str(explain(db, latest)).replace("\n", "\n  "))

# %%
# NBVAL_CHECK_OUTPUT
for label, db in variants.items():
    p = explain(db, latest)
    print(f"{label:>22}: reads posts end to end: {p.scanned_tables == ['posts']!s:5} | sorts: {p.sorts!s:5} "
          f"| indexes: {p.indexes}")


# %% [markdown]
# With `(user_id)` alone the database finds the author's 200 posts fast, then sorts them (SQLite: `USE TEMP
# B-TREE FOR ORDER BY`; PostgreSQL: a `Sort` node over a `Bitmap Heap Scan`) to keep 10. With `(user_id, created_at)` the index already holds each author's posts in date
# order: read 10 entries (backwards, for `DESC`) and stop. Column order matters: the equality column
# first, then the sort column. Timed:

# %%
def latest_posts(db: DemoDB) -> Callable[[], None]:
    """Load one author's 10 latest posts in a fresh session."""
    def call() -> None:
        with db.session() as session:
            session.scalars(latest).all()
    return call


feed = compare_sync({label: latest_posts(db) for label, db in variants.items()}, n=30, warmup=3)
plot_bars({label: t.median_ms for label, t in feed.timings.items()}, ylabel="ms per query (median)",
          title="10 latest posts of one author, 100k posts", logy=True)

# %%
say(f"No index **{feed['no index'].median_ms:.2f} ms**, `(user_id)` **{feed['(user_id)'].median_ms:.3f} ms**, "
    f"`(user_id, created_at)` **{feed['(user_id, created_at)'].median_ms:.3f} ms**: the composite index is "
    f"**{verdict(feed['(user_id)'].median_ms / feed['(user_id, created_at)'].median_ms)}** than the "
    f"single-column one here, where each author has 200 posts to sort; it reads 10 index entries however "
    f"many posts an author has.")

# %% [markdown]
# ## Foreign keys that `selectinload` filters on
#
# Lesson 02's `selectinload(User.posts)` sends a second query, `… WHERE posts.user_id IN (…)`.
# Neither SQLite nor PostgreSQL indexes a foreign key column for you (only primary keys and unique
# constraints get one). A blog with 10,000 users × 10 posts, without and with an index on
# `posts.user_id`; here is the SQL `selectinload` sends, then the plan of that shape of query:

# %%
# NBVAL_CHECK_OUTPUT
blog = make_posts_db(10_000, 10)
blog_fk = clone_db(blog)
add_index(blog_fk, "posts", "user_id")
authors = select(User).where(User.id <= 20).options(selectinload(User.posts))
with blog.session() as session, count_queries(blog.engine) as log:
    loaded = session.scalars(authors).all()
print(len(loaded), "users,", sum(len(u.posts) for u in loaded), "posts,", log.count, "queries")
same_shape = select(Post).where(Post.user_id.in_(range(1, 21))).order_by(Post.id)
for label, db in {"no index": blog, "(user_id) index": blog_fk}.items():
    p = explain(db, same_shape)
    print(f"{label:>15}: reads posts end to end: {p.scanned_tables == ['posts']} | indexes: {p.indexes}")

# %%
print(" ".join(log.statements[1].split())[:100], "…")
print("no index:       ", explain(blog, same_shape))
print("(user_id) index:", str(explain(blog_fk, same_shape)).replace("\n", " + "))


# %%
def load_authors(db: DemoDB) -> Callable[[], None]:
    """Load 20 users with their posts, selectin-style."""
    def call() -> None:
        with db.session() as session:
            session.scalars(authors).all()
    return call


fk = compare_sync({"no index on posts.user_id": load_authors(blog),
                   "index on posts.user_id": load_authors(blog_fk)}, n=15, warmup=2)
say(f"`selectinload` of 20 users and their {blog.counts['posts'] // 10_000 * 20} posts: "
    f"**{fk['no index on posts.user_id'].median_ms:.1f} ms** without an index on the foreign key, "
    f"**{fk['index on posts.user_id'].median_ms:.1f} ms** with: **{fk.ratio:.1f}×**. Two queries either way; "
    f"without the index the second one reads all {blog.counts['posts']:,} posts.")

# %% [markdown]
# ## What indexes cost: writes
#
# Every index is a second sorted copy of its columns that each `INSERT` must update. Three copies of
# a 50,000-user table with 0, 1 and 4 indexes; each timed call inserts the next 5,000 users.

# %%
base = make_users_db(50_000)
with_indexes = {"0 indexes": base, "1 index": clone_db(base), "4 indexes": clone_db(base)}
add_index(with_indexes["1 index"], "users", "email")
for columns in ("email", "name", ("country", "created_at"), "created_at"):
    add_index(with_indexes["4 indexes"], "users", columns)
BATCH = 5_000
writes = compare_sync({label: insert_batches(db, BATCH) for label, db in with_indexes.items()}, n=6, warmup=1)
rows_per_s = {label: BATCH / (t.median_ms / 1000) for label, t in writes.timings.items()}
plot_bars(rows_per_s, ylabel="rows inserted per second (median)", title="Insert throughput vs number of indexes")

# %%
say(f"Insert throughput: **{rows_per_s['0 indexes']:,.0f}** rows/s with no index, "
    f"**{rows_per_s['1 index']:,.0f}** with one, **{rows_per_s['4 indexes']:,.0f}** with four "
    f"(inserting is **{verdict(writes.ratio)}** than with none). Index what you query, not every column.")

# %% [markdown]
# ## Why a boolean column rarely deserves an index
#
# `is_active` is true for 90% of users. Here the two databases differ: SQLite (without `ANALYZE`) uses the
# index for the common value too: it has no better idea. PostgreSQL's planner has statistics from `ANALYZE`,
# knows that 90% of rows match, and reads the table instead.

# %%
flagged = clone_db(plain)
add_index(flagged, "users", "is_active")
active = select(func.max(User.name)).where(User.is_active.is_(True))
inactive = select(func.max(User.name)).where(User.is_active.is_(False))
plan_active, plan_inactive = explain(flagged, active), explain(flagged, inactive)
print(f"common value (90%):\n{plan_active}\n\nrare value (10%):\n{plan_inactive}")
say(f"On {DB} the common value is read " + ("through the index" if plan_active.indexes else "from the table, end to "
    "end: the planner chose not to use the index") + "; the rare value " +
    ("through the index." if plan_inactive.indexes else "from the table."))


# %%
def run_on(db: DemoDB, statement: Select) -> Callable[[], None]:
    """Run one statement in a fresh session."""
    def call() -> None:
        with db.session() as session:
            session.execute(statement).all()
    return call


common = compare_sync({"no index": run_on(plain, active), "index on is_active": run_on(flagged, active)}, n=7)
rare = compare_sync({"no index": run_on(plain, inactive), "index on is_active": run_on(flagged, inactive)}, n=7)
if not plan_active.indexes:
    why_common = "the planner ignored the index, so both sides read the whole table"
elif common.ratio < 1:
    why_common = "one index entry plus one jump to the row, for most of the table, instead of one sequential read"
else:
    why_common = "the plan used the index, but with most of the table matching there is little to skip"
say(f"For the common value (90% of rows) the index makes the query **{verdict(common.ratio)}** "
    f"({common['no index'].median_ms:.1f} → {common['index on is_active'].median_ms:.1f} ms): {why_common}. "
    f"For the rare "
    f"value (10%) it is **{verdict(rare.ratio)}**"
    + (f": nothing like the {orm.ratio:,.0f}× of the email index, because a column with two values cannot "
       "narrow a search much." if rare.ratio < orm.ratio / 2 else ".")
    + f" Where the rare value matters, a *partial* index (`Index(..., sqlite_where=...)`, "
    f"`postgresql_where=...`) or a composite index that starts with a selective column is the tool.")

# %%
for db in (plain, indexed, posts, posts_user, posts_both, blog, blog_fk, flagged, *with_indexes.values()):
    db.close()

# %% [markdown]
# ## Exercise
#
# Open **`exercises/05_indexes.ipynb`**: a shop's `Order` model and the three queries its endpoints
# run. Declare the indexes that make every query search an index, faster by a measured ratio, with no
# useless index on the low-cardinality column.
#
# ## Key points
# - The plan tells you, instead of guessing: SQLite's `SCAN` / PostgreSQL's `Seq Scan` reads every row,
#   `SEARCH … USING INDEX` / `Index Scan` (or `Bitmap Heap Scan`) jumps; `USE TEMP B-TREE FOR ORDER BY` / `Sort`
#   means the database sorts after finding the rows. On PostgreSQL, `ANALYZE` after a bulk load.
# - A scan grows with the table, an index search barely does. The ratio is largest at the database
#   itself and smaller through the ORM and HTTP, whose fixed costs an index cannot remove.
# - Declare indexes with `mapped_column(..., index=True)` or `Index(...)` in `__table_args__`
#   (`Column(String, index=True)` is the 1.x spelling). Composite: equality columns first, then the
#   sort column.
# - Index foreign keys you filter on (`selectinload`'s `IN (…)`): nobody does it for you.
# - Each index slows every write; a column with few distinct values rarely narrows a search.
