"""Reference answers of 09.async-endpoint and 09.pool-budget: spliced into solutions/09_async_db.ipynb by the build,
imported by the tests."""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import selectinload

from course_lib.db import Comment, Post


class NewComment(BaseModel):
    """The body of POST /posts/{post_id}/comments."""

    author_name: str
    body: str


def make_app(engine: AsyncEngine) -> FastAPI:
    """Top posts with authors and comments, and a new comment, on an AsyncSession."""
    # --8<-- [start:endpoint]
    Session = async_sessionmaker(engine, expire_on_commit=False)  # objects stay readable after commit
    app = FastAPI()

    @app.get("/posts/top")
    async def top_posts(limit: int = 10) -> list[dict]:
        async with Session() as session:
            posts = (await session.scalars(
                select(Post)
                .options(selectinload(Post.author), selectinload(Post.comments))  # 3 statements, any limit
                .order_by(Post.likes.desc(), Post.id)
                .limit(limit)
            )).all()
        return [{"id": p.id, "title": p.title, "likes": p.likes,
                 "author": {"id": p.author.id, "name": p.author.name},
                 "comments": [{"author_name": c.author_name, "body": c.body} for c in p.comments]}
                for p in posts]

    @app.post("/posts/{post_id}/comments", status_code=201)
    async def add_comment(post_id: int, new: NewComment) -> dict:
        async with Session() as session:
            comment = Comment(post_id=post_id, author_name=new.author_name, body=new.body)
            session.add(comment)
            await session.commit()
        return {"id": comment.id, "post_id": comment.post_id, "author_name": comment.author_name,
                "body": comment.body}

    return app
    # --8<-- [end:endpoint]


def make_engine(url: str, *, workers: int, max_connections: int, reserved: int) -> AsyncEngine:
    """One worker's engine: its share of the database's connections, waiting long enough, surviving restarts."""
    # --8<-- [start:budget]
    share = (max_connections - reserved) // workers  # every worker has its own pool
    return create_async_engine(
        url,
        pool_size=share,
        max_overflow=0,  # the share is a hard bound: no overflow connections
        pool_timeout=10,  # a queued request waits for a connection instead of failing
        pool_pre_ping=True,  # test a pooled connection before handing it out (the database may have restarted)
    )
    # --8<-- [end:budget]
