# %% [markdown]
# # 02 · N+1 queries: count them, fix them, forbid them
#
# **Teaching:** 30 min · **Exercise:** 25 min
#
# **Questions**
# - Why does a list endpoint that looks like one query run a hundred?
# - `joinedload`, `selectinload`, `subqueryload`: which one, and why does `joinedload` demand `.unique()`?
# - Why is an N+1 that looks harmless on in-process SQLite a problem against a database across a socket?
# - How do I make an accidental N+1 fail loudly in my tests?
#
# **Objectives**
# - Count the 1 + N queries of lazy loading, in plain ORM code and behind a Pydantic response model.
# - Fix them with a loader option and measure queries and latency for each strategy.
# - Measure one query's round trip on this run's database (SQLite in-process, or PostgreSQL across a socket).
# - Plot latency against the number of users, and add a simulated network round trip from 0 to 5 ms.
# - Use `raiseload("*")` and `lazy="raise"` so that a forgotten eager load is an error, not a slowdown.

# %%
from sqlalchemy import func, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import joinedload, raiseload, selectinload

from course_lib import *
from course_lib.lessons.l02_n_plus_one import (
    StrictUser, database_label, latency_by_size, make_blog_app, markdown_table, n_plus_one_levels, queries,
    round_trip_ms, simulated_rtt_ms, size_prose, strategy_bars, strategy_prose, strategy_table, users_statement, wrapped,
)

# %% [markdown]
# ## The data
#
# The demo blog: users → posts → comments (the models are in `course_lib/db.py`, typed SQLAlchemy 2.0
# `Mapped[...]` classes; `User.posts` and `Post.comments` are ordinary `relationship()`s, lazy by default).

# %%
db = make_demo_db(users=100, posts_per_user=10, comments_per_post=3)
db

# %% [markdown]
# ## Where the database is
#
# The course runs on embedded SQLite by default, and on PostgreSQL when `DATABASE_URL` names one (the course's
# own settings, read with pydantic-settings as lesson 07 teaches). The difference that matters for N+1 is the
# price of one query: time the cheapest statement there is, `SELECT 1`, on this run's database.

# %%
label, floor_ms, rtt = database_label(db), round_trip_ms(db), simulated_rtt_ms()
if rtt:
    where_db = (f"This run uses **{label}**: a query is a function call inside the Python process, and `SELECT 1` "
        f"takes **{floor_ms * 1000:.0f} µs** (median of 200). There is no network to pay for, so where it matters "
        f"the lesson *adds* a simulated round trip of **{rtt:g} ms** per query "
        f"(`count_queries(engine, latency_ms={rtt:g})`), a typical figure for a database in the same data centre. "
        "Point `DATABASE_URL` at a PostgreSQL server and the same cells measure real round trips instead.")
else:
    where_db = (f"This run uses **{label}** (`DATABASE_URL`): every query crosses a socket to another process and "
        f"back, and `SELECT 1` takes **{floor_ms * 1000:.0f} µs** (median of 200). Those round trips are real, so "
        "the lesson adds **no** simulated latency to its main measurements. Loopback is the best case a server "
        "database gets; the slider further down adds a simulated delay on top, to play a database in another zone.")
say(where_db)

# %% [markdown]
# ## 1 + N, counted
#
# Load the users with one `select(User)`, then read each user's `posts`. Nothing in this loop looks
# like a query.

# %%
# NBVAL_CHECK_OUTPUT
with db.session() as session, count_queries(db.engine) as lazy_log:
    users = session.scalars(select(User).order_by(User.id)).all()
    posts = sum(len(user.posts) for user in users)
print(f"{len(users)} users, {posts} posts, {queries(lazy_log.count)}")

# %% [markdown]
# The log shows why: one `SELECT … FROM users`, then the *same* `SELECT … FROM posts WHERE ? = posts.user_id`
# once per user, each time `user.posts` is touched for the first time (SQLAlchemy's default `lazy="select"`).

# %%
lazy_log


# %% [markdown]
# ## The same N+1, hidden in an endpoint
#
# `make_blog_app(db, strategy)` is the lesson's API. `GET /users` has a Pydantic response model,
# `list[UserWithPosts]` (`id`, `name`, `posts: list[PostOut]`, with `from_attributes=True`), and its handler
# is one line, `return load_users(session, strategy)`; for `"lazy"` that is
# `session.scalars(select(User).order_by(User.id)).all()`. There is no loop in the
# handler: FastAPI's response validation reads `user.posts` for each user, and each read is a query.

# %%
# NBVAL_CHECK_OUTPUT
async with app_client(make_blog_app(db, "lazy")) as client:
    with count_queries(db.engine) as endpoint_log:
        response = await client.get("/users")
print(f"GET /users → {response.status_code}, {len(response.json())} users, {queries(endpoint_log.count)}")

# %% [markdown]
# ## `joinedload`: one query, and why it needs `.unique()`
#
# `joinedload(User.posts)` adds a `LEFT OUTER JOIN posts` to the same SELECT. Here is the SQL it sends:

# %%
print(wrapped(users_statement("joinedload")))

# %% [markdown]
# A JOIN returns one row *per post*, so each user comes back once per post. In SQLAlchemy 2.0 the result
# of a joined eager load of a collection refuses to hand out those duplicates silently:

# %%
# NBVAL_CHECK_OUTPUT
with db.session() as session:
    try:
        session.scalars(select(User).options(joinedload(User.posts))).all()
    except sa_exc.InvalidRequestError as error:
        print(wrapped(f"{type(error).__name__}: {error}"))
    joined_rows = session.scalar(select(func.count()).select_from(User).join(User.posts))
print(f"the JOIN returns {joined_rows} rows for {db.counts['users']} users")

# %% [markdown]
# `.unique()` folds the rows back into one object per user. (The legacy `session.query(...)` API, used by the
# source article, uniqued joined results implicitly; `select()` makes you say it.)

# %%
# NBVAL_CHECK_OUTPUT
with db.session() as session, count_queries(db.engine) as joined_log:
    users = session.scalars(select(User).options(joinedload(User.posts)).order_by(User.id)).unique().all()
    posts = sum(len(user.posts) for user in users)
print(f"{len(users)} users, {posts} posts, {queries(joined_log.count)}")

# %% [markdown]
# ## `selectinload`: two queries, no duplicated rows
#
# `selectinload(User.posts)` runs the users query, then **one** more: all their posts at once, with
# `WHERE posts.user_id IN (…the user ids…)`.

# %%
# NBVAL_CHECK_OUTPUT
with db.session() as session, count_queries(db.engine) as selectin_log:
    users = session.scalars(select(User).options(selectinload(User.posts)).order_by(User.id)).all()
    posts = sum(len(user.posts) for user in users)
print(f"{len(users)} users, {posts} posts, {queries(selectin_log.count)}")

# %%
selectin_log

# %% [markdown]
# SQLAlchemy's documentation recommends `selectinload` for collections (one-to-many, many-to-many) and
# `joinedload` for many-to-one. The reason is the shape of the result. The JOIN repeats every user's columns
# once per post; chain a second collection (posts *and* their comments) and it repeats users and posts once per
# comment. `selectinload` fetches each row once. Count the values each way for users → posts → comments:

# %%
# NBVAL_CHECK_OUTPUT
width = {table: len(model.__table__.columns) for table, model in
         (("users", User), ("posts", Post), ("comments", Comment))}
with db.session() as session:
    join_rows = session.scalar(
        select(func.count()).select_from(User).outerjoin(User.posts).outerjoin(Post.comments))
join_values = join_rows * sum(width.values())
selectin_values = sum(db.counts[table] * width[table] for table in width)
print(f"chained joinedload: 1 query, {join_rows} rows × {sum(width.values())} columns = {join_values:,} values")
print(f"chained selectinload: 3 queries, {selectin_values:,} values "
      f"({db.counts['users']} users, {db.counts['posts']} posts, {db.counts['comments']} comments, each once)")

# %% [markdown]
# The other reason: a `LIMIT`. "The first 20 users" is a plain `LIMIT 20` with `selectinload`; with a JOIN
# to a collection, `LIMIT 20` would count joined rows, not users, so SQLAlchemy wraps the users query in a
# subquery and joins the posts to that. The SQL each way, as this run's database would receive it:

# %%
# NBVAL_CHECK_OUTPUT
with db.session() as session, count_queries(db.engine) as limited:
    session.scalars(select(User).options(selectinload(User.posts)).order_by(User.id).limit(20)).all()
    session.scalars(select(User).options(joinedload(User.posts)).order_by(User.id).limit(20)).unique().all()
selectin_first, _, joined = (" ".join(sql.split()) for sql in limited.statements)
for name, sql in (("selectinload, users", selectin_first), ("joinedload", joined)):
    print(f"{name}: {sql.count('SELECT')} SELECT(s), LIMIT {'inside a subquery' if sql.count('SELECT') > 1 else 'on the users query'}")

# %% [markdown]
# One limit to know: `selectinload` sends the ids in batches of 500, so "2 queries" holds up to 500 parents:

# %%
# NBVAL_CHECK_OUTPUT
with make_demo_db(users=1_200, posts_per_user=1) as big, big.session() as session, \
        count_queries(big.engine) as batched:
    session.scalars(select(User).options(selectinload(User.posts))).all()
print(f"1,200 users with selectinload: {batched.count} queries (1 + 3 batches of ≤ 500 ids)")

# %% [markdown]
# ## Counts and time for each strategy
#
# `strategy_table` builds the `GET /users` payload (load + response model) with each strategy, counts the
# queries, and times them interleaved. First on this run's database as it is (SQLite: in-process; PostgreSQL:
# real round trips through its socket), then with a simulated network round trip of 1 ms *added* to every query
# (`count_queries(engine, latency_ms=1)`), a typical figure for a database in the same data centre.

# %%
local = strategy_table(db, 0.0, n=6)
remote = strategy_table(db, 1.0, n=4)
say(markdown_table(local + remote))

# %%
say(strategy_prose(label, floor_ms, local, remote))

# %% [markdown]
# ## Latency against the number of users
#
# The same comparison on fresh databases of 10 to 200 users (3 posts each): on SQLite with 1 ms simulated per
# round trip, on PostgreSQL with its real round trips and nothing added.

# %%
sizes = [10, 50, 100, 200]
series = latency_by_size(sizes, rtt, posts_per_user=3, n=5)
trip_ms = rtt + floor_ms
where = f"{rtt:g} ms simulated round trip per query" if rtt else f"real round trips to {label}"
plot_curve(sizes, series, xlabel="users (3 posts each)", ylabel="median ms to build the response",
           title=f"GET /users payload, {where}",
           reference={f"lazy's floor: (1 + users) round trips × {trip_ms:.2f} ms": [(s + 1) * trip_ms for s in sizes]})

# %%
say(size_prose(sizes, series, trip_ms, server=not rtt))

# %% [markdown]
# ## Move the network
#
# Slide the round trip *added* to every query from 0 ms (this run's database as it is: SQLite in-process, or
# PostgreSQL over loopback) to 5 ms (a managed database in another zone). The chart re-measures the 100-user
# payload for each strategy.

# %%
live_panel(lambda added: strategy_bars(db, added), description="added round trip per query (ms)",
           min=0, max=5, step=1, value=int(rtt))

# %% [markdown]
# ## Two levels: the ORM alone, and the endpoint
#
# The same fix measured end to end: `GET /users` of the lazy app and of the `selectinload` app, requests
# interleaved, with nothing added (SQLite in-process; PostgreSQL's real round trips) and with 1 ms added per query.
# The cell after it times the ORM alone at 1 ms (load the users, read their posts: no response model, no HTTP) and
# puts both levels side by side: the effect lives in the queries, and every request also pays a fixed cost that
# no loading strategy changes.

# %%
lazy_app, eager_app = make_blog_app(db, "lazy"), make_blog_app(db, "selectinload")
async with app_client(lazy_app) as lazy, app_client(eager_app) as eager:
    with count_queries(db.engine) as eager_log:
        await eager.get("/users")
    LAZY, EAGER = f"lazy ({queries(endpoint_log.count)})", f"selectinload ({queries(eager_log.count)})"
    endpoint = {}
    for added, n in ((0.0, 10), (1.0, 6)):
        with count_queries(db.engine, latency_ms=added):
            endpoint[added] = await compare({LAZY: lambda: lazy.get("/users"), EAGER: lambda: eager.get("/users")}, n=n)
endpoint[rtt]

# %%
say(await n_plus_one_levels(db, endpoint[1.0]))

# %%
plot_timings(endpoint[rtt], title=f"GET /users, {db.counts['users']} users × {db.counts['posts'] // db.counts['users']} posts, {where}")

# %% [markdown]
# ## Make an accidental N+1 fail loudly
#
# A query count in a test catches an N+1 after the fact. SQLAlchemy can refuse the lazy load itself:
# `raiseload("*")` as a loader option turns every relationship *not* loaded eagerly into an error, and
# costs no query. Below, posts are loaded; comments are not, so reading them raises instead of querying.

# %%
# NBVAL_CHECK_OUTPUT
with db.session() as session:
    users = session.scalars(
        select(User).options(selectinload(User.posts), raiseload("*")).order_by(User.id)).all()
    with count_queries(db.engine) as touched:
        print(f"posts of user 1: {len(users[0].posts)}")
        try:
            users[0].posts[0].comments
        except sa_exc.InvalidRequestError as error:
            print(f"{type(error).__name__}: {error}")
print(f"queries while reading: {touched.count}")

# %% [markdown]
# Through FastAPI the error surfaces while the response model reads the attribute, as a
# `ResponseValidationError` (a 500 for the client, a failing test for you):

# %%
# NBVAL_CHECK_OUTPUT
from fastapi import Depends, FastAPI
from sqlalchemy.orm import Session

from course_lib.lessons.l02_n_plus_one import UserWithPosts

strict_app = FastAPI()
get_db = db.dependency()


@strict_app.get("/users", response_model=list[UserWithPosts])
def strict_users(session: Session = Depends(get_db)) -> list[User]:
    """Forgot the eager load; raiseload('*') turns the N+1 into an error."""
    return session.scalars(select(User).options(raiseload("*")).order_by(User.id)).all()


async with app_client(strict_app) as client:
    try:
        await client.get("/users")
    except Exception as error:
        print(type(error).__name__, "—", "lazy='raise'" in str(error))


# %% [markdown]
# To make it the rule rather than an option, declare it on the mapping: `relationship(lazy="raise")`. The
# lesson module maps the same tables with `StrictUser.posts = relationship(lazy="raise")`; then every query
# *must* say how it loads posts:

# %%
# NBVAL_CHECK_OUTPUT
with db.session() as session:
    forgot = session.scalars(select(StrictUser).order_by(StrictUser.id)).first()
    try:
        forgot.posts
    except sa_exc.InvalidRequestError as error:
        print(f"{type(error).__name__}: {error}")
    said = session.scalars(select(StrictUser).options(selectinload(StrictUser.posts))).all()
    print(f"with selectinload: {sum(len(u.posts) for u in said)} posts")

# %% [markdown]
# ## What the source article says, and what is current
#
# The article shows `db.query(User).options(joinedload(User.posts)).all()`. The idea is right; the idiom is
# legacy: since SQLAlchemy 2.0 write `session.scalars(select(User).options(...)).all()`, and for a joined
# eager load of a collection add `.unique()` (shown above; the old `Query` did it silently). For a
# one-to-many like `User.posts`, prefer `selectinload`: 2 queries, no duplicated rows, and `LIMIT` works as
# written. Keep `joinedload` for many-to-one (`Post.author`), where the JOIN adds columns, not rows.
#
# Now open **`exercises/02_n_plus_one.ipynb`**: fix an N+1 endpoint (graded on several data sizes), fix a
# nested one, and make lazy loads raise.
#
# ## Key points
# - Lazy relationships cost one query per parent: 1 + N. A response model that reads `user.posts` hides the
#   loop inside FastAPI. Count queries (`count_queries`) to see it.
# - A loader option fixes it: `selectinload` (2 queries; recommended for collections), `joinedload` (1 query;
#   needs `.unique()` for collections; best for many-to-one), `subqueryload`, or an explicit join with
#   `contains_eager`. Nested relationships need chained options, one per level.
# - In-process SQLite hides most of an N+1's cost; against a server every lazy load is a real round trip
#   through a socket (measured above on this run's database), and the network between them multiplies it.
#   Measure against the database you deploy to, or with a simulated round trip, before calling it harmless.
# - `raiseload("*")` or `relationship(lazy="raise")` turns a forgotten eager load into an error in tests.
