"""Lesson 02 (N+1 queries): loading strategies, a blog app with response models, graders and benchmark rows."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Literal

from fastapi import Depends, FastAPI
from pydantic import BaseModel, ConfigDict, TypeAdapter
from sqlalchemy import ForeignKey, Select, String, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    joinedload,
    mapped_column,
    relationship,
    selectinload,
    subqueryload,
)

from ..bench import BenchRow
from ..client import app_client
from ..db import DemoDB, Post, User, dialect, make_demo_db
from ..grading import Checking, exercise
from ..queries import count_queries
from ..timing import compare, measure_sync

LESSON = "02_n_plus_one"

Strategy = Literal["lazy", "joinedload", "selectinload", "subqueryload"]
STRATEGIES: tuple[Strategy, ...] = ("lazy", "joinedload", "selectinload", "subqueryload")

__all__ = [
    "STRATEGIES",
    "PostOut",
    "CommentOut",
    "PostWithComments",
    "UserWithPosts",
    "UserWithPostsAndComments",
    "users_statement",
    "load_users",
    "render_users",
    "expected_payload",
    "make_blog_app",
    "StrictUser",
    "StrictPost",
    "strategy_table",
    "latency_by_size",
    "markdown_table",
    "strategy_bars",
    "simulated_rtt_ms",
    "round_trip_ms",
    "database_label",
    "bench",
]


# --- response models ---------------------------------------------------------------------------------------

class PostOut(BaseModel):
    """A post as the list endpoint shows it."""

    model_config = ConfigDict(from_attributes=True)
    id: int
    title: str
    likes: int


class CommentOut(BaseModel):
    """A comment as the nested endpoint shows it."""

    model_config = ConfigDict(from_attributes=True)
    id: int
    author_name: str


class PostWithComments(PostOut):
    """A post with its comments (the deeper level)."""

    comments: list[CommentOut]


class UserWithPosts(BaseModel):
    """A user with their posts: the payload of GET /users."""

    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    posts: list[PostOut]


class UserWithPostsAndComments(BaseModel):
    """A user with their posts and each post's comments: the payload of GET /users/with-comments."""

    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    posts: list[PostWithComments]


USERS_ADAPTER = TypeAdapter(list[UserWithPosts])
NESTED_ADAPTER = TypeAdapter(list[UserWithPostsAndComments])


# --- loading strategies ------------------------------------------------------------------------------------

def users_statement(strategy: Strategy, nested: bool = False) -> Select[tuple[User]]:
    """`SELECT users` with posts (and, if nested, their comments) loaded by `strategy`; ordered by id."""
    statement = select(User).order_by(User.id)
    if strategy == "lazy":
        return statement
    loader = {"joinedload": joinedload, "selectinload": selectinload, "subqueryload": subqueryload}[strategy]
    option = loader(User.posts)
    if nested:
        option = option.options(loader(Post.comments))
    return statement.options(option)


def load_users(session: Session, strategy: Strategy, nested: bool = False) -> list[User]:
    """Run `users_statement`; a joined eager load of a collection needs `.unique()` (one row per child)."""
    result = session.scalars(users_statement(strategy, nested))
    if strategy == "joinedload":
        result = result.unique()
    return list(result.all())


def render_users(db: DemoDB, strategy: Strategy, nested: bool = False) -> list[dict[str, Any]]:
    """What the endpoint does without HTTP: one session, load the users, serialize through the response model."""
    adapter = NESTED_ADAPTER if nested else USERS_ADAPTER
    with db.session() as session:
        users = adapter.validate_python(load_users(session, strategy, nested), from_attributes=True)
        return adapter.dump_python(users, mode="json")


def expected_payload(db: DemoDB, nested: bool = False) -> list[dict[str, Any]]:
    """The reference JSON of GET /users (or the nested endpoint) for this database."""
    return render_users(db, "selectinload", nested)


def make_blog_app(db: DemoDB, strategy: Strategy = "lazy") -> FastAPI:
    """The lesson's blog API: GET /users (posts) and GET /users/with-comments, loading with `strategy`."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, not {strategy!r}")
    app = FastAPI(title=f"Blog ({strategy})")
    get_db = db.dependency()

    @app.get("/users", response_model=list[UserWithPosts])
    def list_users(session: Session = Depends(get_db)) -> list[User]:
        return load_users(session, strategy)

    @app.get("/users/with-comments", response_model=list[UserWithPostsAndComments])
    def list_users_with_comments(session: Session = Depends(get_db)) -> list[User]:
        return load_users(session, strategy, nested=True)

    return app


# --- lazy="raise" on the mapping: the same tables, mapped strictly ------------------------------------------

class StrictBase(DeclarativeBase):
    """A second declarative base over the demo tables, whose relationships refuse to lazy-load."""


class StrictUser(StrictBase):
    """`users`, mapped with `lazy="raise"` on `posts`: forgetting an eager load is an error, not N queries."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80))
    posts: Mapped[list[StrictPost]] = relationship(lazy="raise", order_by="StrictPost.id")


class StrictPost(StrictBase):
    """`posts`, mapped strictly too."""

    __tablename__ = "posts"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    title: Mapped[str] = mapped_column(String(200))


# --- the database under the lesson: embedded SQLite, or a server across a socket ---------------------------

def simulated_rtt_ms(default: float = 1.0) -> float:
    """The round trip the lesson *adds* per query: `default` on embedded SQLite, 0 on a database server,
    whose round trips are real (`DATABASE_URL`, e.g. PostgreSQL)."""
    return default if dialect() == "sqlite" else 0.0


def round_trip_ms(engine: Any, n: int = 200) -> float:
    """Median ms of the cheapest statement, `SELECT 1`, on one pooled connection of `engine`: the per-query floor."""
    engine = getattr(engine, "engine", engine)  # a DemoDB or an Engine
    with engine.connect() as conn:
        return measure_sync(lambda: conn.exec_driver_sql("SELECT 1").scalar(), n=n, warmup=10).median_ms


def database_label(engine: Any) -> str:
    """Name the database an engine talks to, for prose and charts: 'SQLite (in-process)' or 'PostgreSQL 15 on 127.0.0.1'."""
    engine = getattr(engine, "engine", engine)  # a DemoDB or an Engine
    if engine.dialect.name == "sqlite":
        return "SQLite (in-process)"
    with engine.connect() as conn:
        major = (conn.dialect.server_version_info or ("?",))[0]
    name = "PostgreSQL" if engine.dialect.name == "postgresql" else engine.dialect.name
    return f"{name} {major} on {engine.url.host}"


# --- measurements the notebook and the benchmark share -----------------------------------------------------

def strategy_table(db: DemoDB, latency_ms: float, *, nested: bool = False, n: int = 5,
                   strategies: Sequence[Strategy] = STRATEGIES) -> list[dict[str, Any]]:
    """For each strategy: queries and median time of `render_users` at a simulated round trip, interleaved."""
    from ..timing import compare_sync

    counts = {}
    for strategy in strategies:
        with count_queries(db.engine) as log:
            render_users(db, strategy, nested)
        counts[strategy] = log.count
    with count_queries(db.engine, latency_ms=latency_ms):
        result = compare_sync({s: (lambda s=s: render_users(db, s, nested)) for s in strategies}, n=n, warmup=1)
    return [{"strategy": s, "queries": counts[s], "median ms": round(result[s].median_ms, 2),
             "simulated round trip ms": latency_ms} for s in strategies]


def latency_by_size(sizes: Sequence[int], latency_ms: float, *, posts_per_user: int = 10, n: int = 3,
                    strategies: Sequence[Strategy] = ("lazy", "joinedload", "selectinload"),
                    ) -> dict[str, list[float]]:
    """Median time (ms) of `render_users` per strategy for databases of each size, at a simulated round trip."""
    from ..timing import compare_sync

    series: dict[str, list[float]] = {s: [] for s in strategies}
    for size in sizes:
        with make_demo_db(users=size, posts_per_user=posts_per_user, seed=size) as db, \
                count_queries(db.engine, latency_ms=latency_ms):
            result = compare_sync({s: (lambda s=s: render_users(db, s)) for s in strategies}, n=n, warmup=1)
        for s in strategies:
            series[s].append(result[s].median_ms)
    return series


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows of dicts (same keys) as a Markdown table, for `say(...)`."""
    if not rows:
        return "(no rows)"
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(f"{r[k]:,}" if isinstance(r[k], int) else str(r[k]) for k in keys) + " |"
              for r in rows]
    return "\n".join(lines)


def strategy_bars(db: DemoDB, latency_ms: float, n: int = 3) -> Any:
    """The slider's view: median time per strategy at one simulated round trip, as a bar chart."""
    from ..plots import plot_bars

    rows = strategy_table(db, latency_ms, n=n, strategies=("lazy", "joinedload", "selectinload"))
    users = db.counts.get("users", 0)
    return plot_bars({f"{r['strategy']}\n({r['queries']} queries)": r["median ms"] for r in rows},
                     ylabel="median ms to build the response",
                     title=f"{users} users × posts on {database_label(db)}, "
                           f"+ {latency_ms:g} ms simulated round trip per query")


# --- graders -----------------------------------------------------------------------------------------------

async def _get(checking: Checking, app: Any, path: str, db: DemoDB) -> tuple[Any, int]:
    """GET `path` from the learner's app; return (JSON body, queries run); fail clearly on errors."""
    async with app_client(app) as client:
        try:
            with count_queries(db.engine) as log:
                response = await client.get(path)
        except Exception as error:  # the learner's endpoint raised (ASGITransport re-raises app errors)
            checking.fail(f"GET {path} raised {type(error).__name__}: {str(error).splitlines()[0][:300]}")
    checking.expect(response.status_code == 200,
                    f"GET {path} answered {response.status_code}, expected 200. Body: {response.text[:200]}")
    return response.json(), log.count


def _first_difference(got: Any, expected: list[dict[str, Any]]) -> str:
    """Say where a payload first differs from the expected one (short enough for a failure message)."""
    if not isinstance(got, list):
        return f"the body is a {type(got).__name__}, expected a list of users"
    if len(got) != len(expected):
        return f"it lists {len(got)} users, expected {len(expected)}"
    for index, (mine, theirs) in enumerate(zip(got, expected, strict=True)):
        if mine != theirs:
            return f"user #{index} is {str(mine)[:160]}…, expected {str(theirs)[:160]}…"
    return "it differs"


async def _check_listing(make_app: Any, checking: Checking, *, path: str, nested: bool,
                         sizes: Sequence[tuple[int, int, int]], budget: int, levels: str) -> str:
    """Shared checker: several database sizes, identical payload, at most `budget` queries on each."""
    most = 0
    for users, posts, comments in sizes:
        with make_demo_db(users=users, posts_per_user=posts, comments_per_post=comments, seed=users) as db:
            app = checking.build_app(make_app, db)
            body, queries = await _get(checking, app, path, db)
            expected = expected_payload(db, nested)
            size = f"{users} users × {posts} posts" + (f" × {comments} comments" if nested else "")
            checking.expect(body == expected,
                            f"with {size}, GET {path} returned a different payload: "
                            f"{_first_difference(body, expected)}. Keep the response model and order by id.")
            checking.expect(queries <= budget,
                            f"with {size}, GET {path} ran {queries} queries; expected at most {budget} "
                            f"({levels}) whatever the number of users.")
            checking.record(f"queries@{users}", queries)
            most = max(most, queries)
    checking.record("max_queries", most)
    return f"identical payload and ≤ {budget} queries on {len(sizes)} database sizes"


# Sizes vary users and children so that an answer tuned to one size (or a LIMIT) fails; ≤ 400 users keeps
# selectinload's IN lists in one batch (SQLAlchemy splits them every 500 ids).
FIX_SIZES = ((3, 2, 0), (40, 3, 0), (123, 1, 0), (7, 0, 0))
NESTED_SIZES = ((3, 2, 2), (26, 3, 1), (61, 1, 3))


@exercise(
    "02.fix-n-plus-one",
    title="Fix the N+1 list endpoint",
    lesson=LESSON,
    expects="a function make_app(db) returning a FastAPI app whose GET /users lists users with their posts",
    hints=(
        "Count first: the starter runs 1 query for the users and 1 more per user when the response model "
        "reads `user.posts`. Tell the SELECT to load the posts up front with a loader option.",
        "`select(User).options(selectinload(User.posts)).order_by(User.id)` runs 2 queries for any number "
        "of users. With `joinedload(User.posts)` you need `session.scalars(...).unique().all()`.",
    ),
    timeout=90,
)
async def check_fix_n_plus_one(make_app: Any, checking: Checking) -> str:
    """GET /users on several sizes: same JSON as the reference, ≤ 2 queries each time."""
    return await _check_listing(make_app, checking, path="/users", nested=False, sizes=FIX_SIZES, budget=2,
                                levels="one for the users, one for all their posts")


@exercise(
    "02.nested",
    title="Fix the nested N+1 (users → posts → comments)",
    lesson=LESSON,
    expects="a function make_app(db) returning a FastAPI app whose GET /users/with-comments lists users, "
            "their posts and each post's comments",
    hints=(
        "There are two relationships to load here, `User.posts` and `Post.comments`. Loading only the first "
        "still runs one query per post for its comments.",
        "Chain the loader: `selectinload(User.posts).selectinload(Post.comments)` (3 queries), or "
        "`joinedload(User.posts).joinedload(Post.comments)` with `.unique()` (1 query).",
    ),
    timeout=90,
)
async def check_nested(make_app: Any, checking: Checking) -> str:
    """GET /users/with-comments on several sizes: same JSON as the reference, ≤ 3 queries each time."""
    return await _check_listing(make_app, checking, path="/users/with-comments", nested=True,
                                sizes=NESTED_SIZES, budget=3, levels="one per level: users, posts, comments")


def _raised_lazy(error: BaseException) -> bool:
    """True if `error` is SQLAlchemy refusing a lazy load (lazy='raise' / raiseload)."""
    return isinstance(error, sa_exc.InvalidRequestError) and "lazy='raise'" in str(error)


@exercise(
    "02.raise-on-lazy",
    title="Make an accidental lazy load fail loudly",
    lesson=LESSON,
    expects="a function strict_users(session) returning all users (by id) with posts loaded and every "
            "other relationship set to raise instead of lazy-loading",
    hints=(
        "Two loader options in one `.options(...)`: one loads `User.posts` eagerly, the other makes every "
        "relationship not mentioned raise instead of running SQL.",
        "`select(User).options(selectinload(User.posts), raiseload('*')).order_by(User.id)`, then "
        "`session.scalars(...).all()`.",
    ),
    timeout=60,
)
def check_raise_on_lazy(strict_users: Any, checking: Checking) -> str:
    """Posts read with no extra query; reading post.comments or post.author raises instead of querying."""
    checking.require_callable(strict_users)
    for users, posts in ((5, 3), (33, 2)):
        with make_demo_db(users=users, posts_per_user=posts, comments_per_post=1, seed=users) as db, \
                db.session() as session:
            with count_queries(db.engine) as loading:
                loaded = checking.call(strict_users, session)
            try:
                loaded = list(loaded)
            except TypeError:
                checking.fail(f"strict_users returned {type(loaded).__name__}, expected a list of User objects")
            checking.expect(all(isinstance(u, User) for u in loaded) and [u.id for u in loaded] ==
                            list(range(1, users + 1)),
                            f"with {users} users, strict_users returned {str(loaded)[:120]}; expected all "
                            f"{users} User objects ordered by id")
            with count_queries(db.engine) as reading:
                try:
                    seen = sum(len(u.posts) for u in loaded)
                except sa_exc.InvalidRequestError as error:
                    checking.fail(f"reading user.posts raised {type(error).__name__}: {error}. Posts must be "
                                  "loaded eagerly; only the *other* relationships should raise.")
            checking.expect(reading.count == 0,
                            f"after strict_users returned, reading every user's posts ran {reading.count} more "
                            "queries (expected 0): load User.posts eagerly inside strict_users")
            checking.expect(seen == users * posts,
                            f"the users returned hold {seen} posts in all, expected {users * posts}")
            checking.record(f"queries@{users}", loading.count)
            checking.expect(loading.count <= 2, f"strict_users ran {loading.count} queries for {users} users; "
                                                "expected at most 2")
            for what, touch in (("post.comments", lambda p: p.comments), ("post.author", lambda p: p.author)):
                with count_queries(db.engine) as touching:
                    try:
                        touch(loaded[0].posts[0])
                        raised: BaseException | None = None
                    except Exception as error:  # we want SQLAlchemy's lazy='raise' error here
                        raised = error
                checking.expect(raised is not None and _raised_lazy(raised),
                                f"reading {what} (not loaded) ran {touching.count} query"
                                f"{'' if touching.count == 1 else 'ies'} "
                                + (f"and raised {type(raised).__name__}: {raised}" if raised else "without error")
                                + "; expected it to raise InvalidRequestError (lazy='raise')")
    return "posts loaded in ≤ 2 queries; other relationships raise instead of lazy-loading"


# --- benchmark ---------------------------------------------------------------------------------------------

async def _endpoint_ratio(db: DemoDB, latency_ms: float, n: int) -> tuple[float, int, int]:
    """Median latency ratio lazy / selectinload of GET /users, interleaved; and each one's query count."""
    lazy_app, eager_app = make_blog_app(db, "lazy"), make_blog_app(db, "selectinload")
    async with app_client(lazy_app) as lazy, app_client(eager_app) as eager:
        with count_queries(db.engine) as lazy_log:
            await lazy.get("/users")
        with count_queries(db.engine) as eager_log:
            await eager.get("/users")
        with count_queries(db.engine, latency_ms=latency_ms):
            result = await compare({"lazy": lambda: lazy.get("/users"),
                                    "selectinload": lambda: eager.get("/users")}, n=n, warmup=2)
    return result.ratio, lazy_log.count, eager_log.count


def bench() -> list[BenchRow]:
    """Headline figures, each row naming its database: queries 101 → 2 for 100 users × 10 posts, the per-query round
    trip, and the endpoint ratio with no simulated latency (real round trips on a server) and at 1 ms simulated."""
    name = dialect()
    rows = []
    with make_demo_db(users=100, posts_per_user=10) as db:
        floor_ms = round_trip_ms(db, n=300)
        ratio_0, lazy_q, eager_q = asyncio.run(_endpoint_ratio(db, 0.0, n=30))
        ratio_1, _, _ = asyncio.run(_endpoint_ratio(db, 1.0, n=10))
    real = "in-process, no round trip" if name == "sqlite" else "real round trips through a socket"
    rows.append(BenchRow("02", f"[{name}] GET /users queries, 100 users × 10 posts: lazy", lazy_q, "queries"))
    rows.append(BenchRow("02", f"[{name}] GET /users queries, same data: selectinload", eager_q, "queries", "≤ 2",
                         eager_q <= 2))
    rows.append(BenchRow("02", f"[{name}] one query's floor (SELECT 1, median)", floor_ms * 1000, "µs"))
    rows.append(BenchRow("02", f"[{name}] N+1 endpoint latency lazy / selectinload, 0 ms simulated ({real})",
                         ratio_0, "×"))
    rows.append(BenchRow("02", f"[{name}] N+1 endpoint latency lazy / selectinload, + 1 ms simulated RTT",
                         ratio_1, "×"))
    with make_demo_db(users=50, posts_per_user=4, comments_per_post=3) as db:
        with count_queries(db.engine) as nested_lazy:
            render_users(db, "lazy", nested=True)
        with count_queries(db.engine) as nested_eager:
            render_users(db, "selectinload", nested=True)
    rows.append(BenchRow("02", f"[{name}] nested queries, 50 users × 4 posts × 3 comments: lazy", nested_lazy.count,
                         "queries"))
    rows.append(BenchRow("02", f"[{name}] nested queries, same data: chained selectinload", nested_eager.count,
                         "queries", "≤ 3", nested_eager.count <= 3))
    return rows
