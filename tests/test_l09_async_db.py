"""Lesson 09's helpers and graders: the references pass, right answers written other ways pass, wrong answers of
every family fail and say why (sync session in async def, run_sync / awaitable_attrs N+1, MissingGreenlet after
commit, per-request engines, a serialising lock; unbounded, NullPool, one-worker, tiny, impatient, unpinged pools)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from answers.l09_async_db import NewComment, make_app, make_engine
from fastapi import FastAPI
from sqlalchemy import create_engine, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, joinedload, selectinload
from sqlalchemy.pool import NullPool

from course_lib import grade, make_demo_db
from course_lib.db import Comment, Post
from course_lib.lessons import l09_async_db as l10

# --------------------------------------------------------------------------- helpers


def test_async_url_maps_each_course_database_to_its_async_driver():
    assert l10.async_url("sqlite:////tmp/x.sqlite3") == "sqlite+aiosqlite:////tmp/x.sqlite3"
    assert l10.async_url("postgresql+psycopg://lab:pw@127.0.0.1:5432/db") == "postgresql+asyncpg://lab:pw@127.0.0.1:5432/db"
    assert l10.async_url("postgresql://lab@h/db").startswith("postgresql+asyncpg://")
    with pytest.raises(ValueError, match="no async driver"):
        l10.async_url("mysql://u@h/db")


def test_round_trips_count_blocking_statements_only_for_a_sync_session_in_async_def():
    async def run() -> dict[str, Any]:
        db = make_demo_db(users=20, posts_per_user=2)
        try:
            return {kind: seen for kind, (_, seen) in (await l10.serve_three_ways(db, concurrency=6,
                                                                                    latency_ms=30)).items()}
        finally:
            db.close()

    seen = asyncio.run(run())
    assert seen["sync session in async def"].blocking_on_loop == seen["sync session in async def"].statements == 12
    assert seen["sync session in async def"].peak_in_flight == 1
    for kind in ("sync def", "AsyncSession"):
        assert seen[kind].statements == 12 and seen[kind].blocking_on_loop == 0
        assert seen[kind].peak_in_flight >= 2


def test_simulated_latency_on_an_async_engine_awaits_instead_of_blocking_the_loop():
    from course_lib.queries import simulated_latency

    async def run() -> float:
        db = make_demo_db(users=3, posts_per_user=1)
        engine = l10.make_async_engine(db)
        try:
            async def one() -> None:
                async with engine.connect() as conn:
                    await conn.execute(select(1))

            await one()
            with simulated_latency(engine, 100):
                started = asyncio.get_running_loop().time()
                await asyncio.gather(*(one() for _ in range(5)))
                return asyncio.get_running_loop().time() - started
        finally:
            await engine.dispose()
            db.close()

    assert asyncio.run(run()) < 0.4  # 5 × 100 ms one after another would be 0.5 s


def test_hold_load_counts_connections_and_pool_timeouts():
    async def run() -> tuple[l10.LoadOutcome, l10.LoadOutcome]:
        db = make_demo_db(users=3, posts_per_user=1)
        bounded = l10.make_async_engine(db, pool_size=2, max_overflow=0, pool_timeout=0.05)
        unbounded = l10.make_async_engine(db, poolclass=NullPool)
        try:
            return await l10.hold_load([bounded], 6, 150), await l10.hold_load([unbounded], 6, 50)
        finally:
            await bounded.dispose()
            await unbounded.dispose()
            db.close()

    bounded, unbounded = asyncio.run(run())
    assert bounded.pools.peak_open == 2 and bounded.pool_timeouts == 4 and bounded.answered == 2
    assert unbounded.pools.opened == 6 and unbounded.pools.peak_open == 6 and unbounded.pool_timeouts == 0


def test_a_dropped_connection_fails_without_pre_ping_and_recovers_with_it():
    async def run(pre_ping: bool) -> l10.LoadOutcome:
        db = make_demo_db(users=3, posts_per_user=1)
        engine = l10.make_async_engine(db, pool_pre_ping=pre_ping)
        try:
            await l10.hold_load([engine], 3, 10)
            assert await l10.drop_connections(db, engine) >= 1
            return await l10.hold_load([engine], 3, 10)
        finally:
            await engine.dispose()
            db.close()

    assert asyncio.run(run(False)).errors
    assert not asyncio.run(run(True)).errors


def test_the_statement_limit_stops_a_long_statement():
    async def run() -> tuple[str, float]:
        db = make_demo_db(users=1, posts_per_user=1)
        try:
            return await l10.statement_timeout_demo(db, 150)
        finally:
            db.close()

    outcome, elapsed = asyncio.run(run())
    assert "finished" not in outcome and elapsed < 2_000


# --------------------------------------------------------------------------- 09.async-endpoint: right answers


def test_the_reference_endpoint_passes():
    result = grade("09.async-endpoint", make_app, record=False)
    assert result.passed, result
    assert result.figures["statements_on_the_loop"] == 0


def _rows(posts: list[Post]) -> list[dict]:
    return [{"id": p.id, "title": p.title, "likes": p.likes, "author": {"id": p.author.id, "name": p.author.name},
             "comments": [{"author_name": c.author_name, "body": c.body} for c in p.comments]} for p in posts]


def joined_and_refreshed(engine: AsyncEngine) -> FastAPI:
    """Another right answer: joinedload for the author (+ unique), a refresh after commit instead of
    expire_on_commit=False, the session as a dependency."""
    from fastapi import Depends

    Session = async_sessionmaker(engine)
    app = FastAPI()

    async def get_session():
        async with Session() as session:
            yield session

    @app.get("/posts/top")
    async def top(limit: int = 10, session=Depends(get_session)):
        result = await session.scalars(select(Post).options(joinedload(Post.author), selectinload(Post.comments))
                                       .order_by(Post.likes.desc(), Post.id).limit(limit))
        return _rows(list(result.unique()))

    @app.post("/posts/{post_id}/comments", status_code=201)
    async def add(post_id: int, new: NewComment, session=Depends(get_session)):
        comment = Comment(post_id=post_id, author_name=new.author_name, body=new.body)
        session.add(comment)
        await session.commit()
        await session.refresh(comment)
        return {"id": comment.id, "post_id": comment.post_id, "author_name": comment.author_name, "body": comment.body}

    return app


def test_a_right_answer_written_another_way_passes():
    result = grade("09.async-endpoint", joined_and_refreshed, record=False)
    assert result.passed, result


# --------------------------------------------------------------------------- 09.async-endpoint: wrong answers


def _with_post(app: FastAPI, Session: Any) -> FastAPI:
    @app.post("/posts/{post_id}/comments", status_code=201)
    async def add(post_id: int, new: NewComment):
        async with Session() as session:
            comment = Comment(post_id=post_id, author_name=new.author_name, body=new.body)
            session.add(comment)
            await session.commit()
        return {"id": comment.id, "post_id": post_id, "author_name": new.author_name, "body": new.body}

    return app


def sync_session_in_async_def(engine: AsyncEngine) -> FastAPI:
    """Looks right (eager loads, 3 statements): but a sync engine on the same database, inside async def."""
    sync_url = engine.url.set(drivername=engine.url.get_backend_name())
    sync_engine = create_engine(sync_url, connect_args={"check_same_thread": False} if "sqlite" in str(sync_url) else {})
    app = FastAPI()

    @app.get("/posts/top")
    async def top(limit: int = 10):
        with Session(sync_engine) as session:
            return _rows(list(session.scalars(select(Post).options(selectinload(Post.author), selectinload(Post.comments))
                                              .order_by(Post.likes.desc(), Post.id).limit(limit))))

    @app.post("/posts/{post_id}/comments", status_code=201)
    async def add(post_id: int, new: NewComment):
        with Session(sync_engine, expire_on_commit=False) as session:
            comment = Comment(post_id=post_id, author_name=new.author_name, body=new.body)
            session.add(comment)
            session.commit()
            return {"id": comment.id, "post_id": post_id, "author_name": comment.author_name, "body": comment.body}

    return app


def run_sync_lazy_loop(engine: AsyncEngine) -> FastAPI:
    """No MissingGreenlet, nothing blocks: `run_sync` makes the lazy loads legal, one query per post."""
    Session = async_sessionmaker(engine, expire_on_commit=False)
    app = FastAPI()

    @app.get("/posts/top")
    async def top(limit: int = 10):
        async with Session() as session:
            def load(sync_session: Session) -> list[dict]:
                return _rows(list(sync_session.scalars(select(Post).order_by(Post.likes.desc(), Post.id).limit(limit))))
            return await session.run_sync(load)

    return _with_post(app, Session)


def awaitable_attrs_per_post(engine: AsyncEngine) -> FastAPI:
    """AsyncAttrs: legal and non-blocking, and still two statements per post."""
    Session = async_sessionmaker(engine, expire_on_commit=False)
    app = FastAPI()

    @app.get("/posts/top")
    async def top(limit: int = 10):
        async with Session() as session:
            posts = (await session.scalars(select(Post).order_by(Post.likes.desc(), Post.id).limit(limit))).all()
            out = []
            for p in posts:
                author, comments = await p.awaitable_attrs.author, await p.awaitable_attrs.comments
                out.append({"id": p.id, "title": p.title, "likes": p.likes,
                            "author": {"id": author.id, "name": author.name},
                            "comments": [{"author_name": c.author_name, "body": c.body} for c in comments]})
            return out

    return _with_post(app, Session)


def lazy_in_async(engine: AsyncEngine) -> FastAPI:
    """The async face of N+1: reading a relationship that was never loaded."""
    Session = async_sessionmaker(engine, expire_on_commit=False)
    app = FastAPI()

    @app.get("/posts/top")
    async def top(limit: int = 10):
        async with Session() as session:
            posts = (await session.scalars(select(Post).order_by(Post.likes.desc(), Post.id).limit(limit))).all()
            return _rows(list(posts))

    return _with_post(app, Session)


def expired_after_commit(engine: AsyncEngine) -> FastAPI:
    """The GET is right; the POST reads `comment.id` after commit with the default expire_on_commit=True."""
    Session = async_sessionmaker(engine)
    app = make_app(engine)
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", "") != "/posts/{post_id}/comments"]

    @app.post("/posts/{post_id}/comments", status_code=201)
    async def add(post_id: int, new: NewComment):
        async with Session() as session:
            comment = Comment(post_id=post_id, author_name=new.author_name, body=new.body)
            session.add(comment)
            await session.commit()
            return {"id": comment.id, "post_id": comment.post_id, "author_name": comment.author_name,
                    "body": comment.body}

    return app


def engine_per_request(engine: AsyncEngine) -> FastAPI:
    """Right queries, never blocking: a new engine (and pool, and connection) in every request."""
    app = FastAPI()

    @app.get("/posts/top")
    async def top(limit: int = 10):
        own = create_async_engine(engine.url)
        try:
            async with async_sessionmaker(own)() as session:
                posts = (await session.scalars(select(Post).options(selectinload(Post.author), selectinload(Post.comments))
                                               .order_by(Post.likes.desc(), Post.id).limit(limit))).all()
                return _rows(list(posts))
        finally:
            await own.dispose()

    return _with_post(app, async_sessionmaker(engine, expire_on_commit=False))


def sync_session_in_a_thread(engine: AsyncEngine) -> FastAPI:
    """Never blocks the loop (asyncio.to_thread) and eager loads: but a second, sync engine, not the AsyncSession."""
    sync_url = engine.url.set(drivername=engine.url.get_backend_name())
    sync_engine = create_engine(sync_url, connect_args={"check_same_thread": False} if "sqlite" in str(sync_url) else {})
    app = FastAPI()

    def load(limit: int) -> list[dict]:
        with Session(sync_engine) as session:
            return _rows(list(session.scalars(select(Post).options(selectinload(Post.author), selectinload(Post.comments))
                                              .order_by(Post.likes.desc(), Post.id).limit(limit))))

    @app.get("/posts/top")
    async def top(limit: int = 10):
        return await asyncio.to_thread(load, limit)

    return _with_post(app, async_sessionmaker(engine, expire_on_commit=False))


def serialised_by_a_lock(engine: AsyncEngine) -> FastAPI:
    """Right in every single request; one lock around the session makes concurrent requests queue."""
    lock = asyncio.Lock()
    inner = make_app(engine)
    app = FastAPI()
    top_route = next(r for r in inner.router.routes if getattr(r, "path", "") == "/posts/top")

    @app.get("/posts/top")
    async def top(limit: int = 10):
        async with lock:
            return await top_route.endpoint(limit)

    return _with_post(app, async_sessionmaker(engine, expire_on_commit=False))


def cached_front_page(engine: AsyncEngine) -> FastAPI:
    """Right on every first read; the answer per limit kept in the process, so a new comment never shows."""
    Session = async_sessionmaker(engine, expire_on_commit=False)
    app, cache = FastAPI(), {}

    @app.get("/posts/top")
    async def top(limit: int = 10):
        if limit not in cache:
            async with Session() as session:
                cache[limit] = _rows(list(await session.scalars(
                    select(Post).options(selectinload(Post.author), selectinload(Post.comments))
                    .order_by(Post.likes.desc(), Post.id).limit(limit))))
        return cache[limit]

    return _with_post(app, Session)


def sorted_in_python(engine: AsyncEngine) -> FastAPI:
    """Same bodies, 3 statements: but every post (with its author and comments) loaded, sorted and cut in Python."""
    Session = async_sessionmaker(engine, expire_on_commit=False)
    app = FastAPI()

    @app.get("/posts/top")
    async def top(limit: int = 10):
        async with Session() as session:
            posts = list(await session.scalars(select(Post).options(selectinload(Post.author),
                                                                    selectinload(Post.comments))))
        return _rows(sorted(posts, key=lambda p: (-p.likes, p.id))[:limit])

    return _with_post(app, Session)


@pytest.mark.parametrize("wrong, why", [
    (cached_front_page, "A copy of the answer kept in the process goes stale"),
    (sorted_in_python, "Post objects to answer with"),
    (sync_session_in_async_def, "event loop's own thread"),
    (run_sync_lazy_loop, "one more per post"),
    (awaitable_attrs_per_post, "one more per post"),
    (lazy_in_async, "MissingGreenlet"),
    (expired_after_commit, "expire_on_commit"),
    (engine_per_request, "one per request"),
    (serialised_by_a_lock, "never had two statements waiting at once"),
    (sync_session_in_a_thread, "other engine(s) than the AsyncEngine"),
])
def test_wrong_endpoints_fail_and_say_why(wrong, why):
    result = grade("09.async-endpoint", wrong, record=False)
    assert not result.passed, result
    assert why in result.message, result.message


@pytest.mark.parametrize("bad, why", [
    (None, "None"),
    (make_app(create_async_engine("sqlite+aiosqlite://")), "without calling it"),
    (lambda engine: 42, "not a FastAPI app"),
    (lambda engine: 1 / 0, "ZeroDivisionError"),
])
def test_bad_input_to_the_endpoint_grader_is_a_message(bad, why):
    result = grade("09.async-endpoint", bad, record=False)
    assert not result.passed and why in result.message, result.message


# --------------------------------------------------------------------------- 09.pool-budget


def test_the_reference_budget_passes():
    result = grade("09.pool-budget", make_engine, record=False)
    assert result.passed, result


def small_pool_with_overflow(url: str, *, workers: int, max_connections: int, reserved: int) -> AsyncEngine:
    """Another right answer: part of the share pooled, the rest as overflow, still bounded by the share."""
    share = (max_connections - reserved) // workers
    return create_async_engine(url, pool_size=max(1, share - 1), max_overflow=share - max(1, share - 1),
                               pool_timeout=30, pool_pre_ping=True)


def test_a_budget_written_another_way_passes():
    result = grade("09.pool-budget", small_pool_with_overflow, record=False)
    assert result.passed, result


def _share(workers: int, max_connections: int, reserved: int) -> int:
    return (max_connections - reserved) // workers


WRONG_BUDGETS = {
    "default pool (5 + 10 per worker)": (
        lambda url, **kw: create_async_engine(url, pool_pre_ping=True), "over the"),
    "NullPool": (lambda url, **kw: create_async_engine(url, poolclass=NullPool), "stayed open"),
    "sized for one worker": (
        lambda url, *, workers, max_connections, reserved: create_async_engine(
            url, pool_size=max_connections - reserved, max_overflow=0, pool_pre_ping=True), "per worker"),
    "share plus default overflow": (
        lambda url, **kw: create_async_engine(url, pool_size=_share(**kw), pool_pre_ping=True), "over the"),
    "impatient pool_timeout": (
        lambda url, **kw: create_async_engine(url, pool_size=_share(**kw), max_overflow=0, pool_timeout=0.05,
                                              pool_pre_ping=True), "pool timeout"),
    "a pool of one": (
        lambda url, **kw: create_async_engine(url, pool_size=1, max_overflow=0, pool_pre_ping=True), "queue"),
    "no pre-ping": (
        lambda url, **kw: create_async_engine(url, pool_size=_share(**kw), max_overflow=0), "restart"),
    "share rounded up": (
        lambda url, *, workers, max_connections, reserved: create_async_engine(
            url, pool_size=-(-(max_connections - reserved) // workers), max_overflow=0, pool_pre_ping=True),
        "over the"),
    "share rounded to nearest": (
        lambda url, *, workers, max_connections, reserved: create_async_engine(
            url, pool_size=round((max_connections - reserved) / workers), max_overflow=0, pool_pre_ping=True),
        "over the"),
    "reserve forgotten": (
        lambda url, *, workers, max_connections, reserved: create_async_engine(
            url, pool_size=max_connections // workers, max_overflow=0, pool_pre_ping=True), "over the"),
    "a sync engine": (
        lambda url, **kw: create_engine(url.replace("+aiosqlite", "").replace("+asyncpg", "+psycopg")),
        "not an AsyncEngine"),
}


@pytest.mark.parametrize("name", list(WRONG_BUDGETS))
def test_wrong_budgets_fail_and_say_why(name):
    wrong, why = WRONG_BUDGETS[name]
    result = grade("09.pool-budget", wrong, record=False)
    assert not result.passed, result
    assert why in result.message, result.message
    if name != "NullPool":  # a pool that keeps connections is not told it is a NullPool
        assert "NullPool" not in result.message, result.message


def test_bad_input_to_the_budget_grader_is_a_message():
    assert "None" in grade("09.pool-budget", None, record=False).message
    assert "TypeError" in grade("09.pool-budget", lambda url: None, record=False).message


def test_budgets_are_drawn_so_that_no_fixed_pool_size_fits():
    budgets = {l10.draw_budget(random.Random(seed)) for seed in range(200)}
    assert len({b.share for b in budgets}) >= 3 and len({b.workers for b in budgets}) == 3
    assert all(b.share >= 2 and b.workers * b.share <= b.available for b in budgets)
    assert not any(b.share in l10.wrong_shares(b) for b in budgets)  # rounding up or to nearest never fits by luck
