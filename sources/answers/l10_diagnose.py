"""Reference answers of 10.diagnose and 10.fix: spliced into solutions/10_diagnose.ipynb by the build, imported by
tests."""

from __future__ import annotations

import re

from fastapi import Depends, FastAPI, HTTPException, Query
from pydantic import BaseModel
from sqlalchemy import select, text
from sqlalchemy.orm import Session, selectinload

from course_lib import app_client, count_queries
from course_lib.db import DemoDB, Post, User
from course_lib.lessons.l10_diagnose import (
    Mystery,
    PostDetail,
    PostOut,
    RatedPosts,
    UserOut,
    UserWithPosts,
    count_connections,
    count_encoder_calls,
    fetch_exchange_rate,
    request_cost,
    slow_callbacks,
    statement_plans,
)


async def diagnose(mystery: Mystery) -> tuple[str, str]:
    """Measure one app, exact signals first, and name its bottleneck with the figure that shows it."""
    # --8<-- [start:answer]
    with mystery.database(1) as small, mystery.database(4) as large:
        async with app_client(mystery.make_app(small)) as client:
            small_cost = await request_cost(client, mystery.url(small))
        async with app_client(mystery.make_app(large)) as client:
            url = mystery.url(large)
            await client.get(url)  # warm up: the pool opens its connection, caches fill
            with count_connections() as connections, count_queries(large.engine) as queries:
                cost = await request_cost(client, url)
            if connections.count >= 1:
                return "no_pooling", f"a warm request opened {connections.count} new database connection(s)"
            if queries.count > 5:
                return "n_plus_one", f"one request sent {queries.count} statements"
            if cost.size > 2 * small_cost.size:
                return "unbounded_list", (f"4× the rows gave {cost.size / small_cost.size:.1f}× the bytes "
                                          f"({small_cost.size:,} → {cost.size:,})")
            for sql, plan in await statement_plans(client, large, url):
                if re.search(r"\bWHERE\b", sql, re.I) and plan.full_scans:
                    return "missing_index", f"a filtered SELECT reads the whole table: {plan.full_scans[0].detail}"
            with count_encoder_calls() as encoded:
                await client.get(url)
            if encoded.count >= 100:  # exact, where a profile's share of the encoder moves with the machine's load
                return "slow_serialization", f"one response took {encoded.count:,} calls of jsonable_encoder"
            async with slow_callbacks(0.01) as held:
                cost = await request_cost(client, url)
    longest = max((slow.seconds for slow in held), default=0.0)
    return "blocking_call", (f"the loop was held {longest * 1000:.0f} ms in one step; the CPU worked "
                             f"{cost.cpu_ms:.0f} of {cost.wall_ms:.0f} ms, and no encoding or query explains it")
    # --8<-- [end:answer]


class PostPage(BaseModel):
    """One page of posts and the cursor of the next (None on the last)."""

    items: list[PostOut]
    next_cursor: str | None


async def fix(mystery: Mystery, db: DemoDB) -> FastAPI:
    """Diagnose the mystery, then serve its route on `db` with that one bottleneck fixed and the same answers."""
    # --8<-- [start:fix]
    kind, _ = await diagnose(mystery)
    if kind == "missing_index":  # a migration, run once before the app starts (lesson 06), not in the app
        with db.engine.begin() as conn:
            conn.execute(text("CREATE INDEX IF NOT EXISTS ix_users_email ON users (email)"))
    app = FastAPI(title="mystery, fixed")
    get_db = db.dependency()  # one pooled engine for the app's life
    path, limit = mystery.path, mystery.limit

    if kind == "n_plus_one":
        @app.get(path)
        def users_with_posts(session: Session = Depends(get_db)) -> list[UserWithPosts]:
            query = select(User).options(selectinload(User.posts)).order_by(User.id).limit(limit)
            return [UserWithPosts.model_validate(user) for user in session.scalars(query)]
    elif kind == "missing_index":
        @app.get(path)
        def user_by_email(email: str, session: Session = Depends(get_db)) -> UserOut:
            found = session.scalars(select(User).where(User.email == email)).first()
            if found is None:
                raise HTTPException(404, "no such user")
            return UserOut.model_validate(found)
    elif kind == "blocking_call":
        @app.get(path)
        def rated_posts(session: Session = Depends(get_db)) -> RatedPosts:  # def: runs in the thread pool
            rate = fetch_exchange_rate()
            posts = session.scalars(select(Post).order_by(Post.id).limit(limit)).all()
            return RatedPosts(rate=rate, posts=[PostOut.model_validate(p) for p in posts])
    elif kind == "no_pooling":
        @app.get(path)
        def pooled_posts(session: Session = Depends(get_db)) -> list[PostOut]:
            return [PostOut.model_validate(p) for p in session.scalars(select(Post).order_by(Post.id).limit(limit))]
    elif kind == "slow_serialization":
        @app.get(path)
        def posts_detail(session: Session = Depends(get_db)) -> list[PostDetail]:  # declared: pydantic-core's path
            return [PostDetail.model_validate(p) for p in session.scalars(select(Post).order_by(Post.id).limit(limit))]
    else:  # unbounded_list: keyset pages on the primary key
        @app.get(path)
        def post_pages(cursor: int = 0, size: int = Query(50, ge=1, le=100),
                       session: Session = Depends(get_db)) -> PostPage:
            rows = session.scalars(select(Post).where(Post.id > cursor).order_by(Post.id).limit(size + 1)).all()
            page = [PostOut.model_validate(p) for p in rows[:size]]
            return PostPage(items=page, next_cursor=str(page[-1].id) if len(rows) > size else None)
    return app
    # --8<-- [end:fix]
