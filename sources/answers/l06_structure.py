"""Reference answer of 06.refactor (service, get_db, routers, health, create_app): spliced into
solutions/06_structure.ipynb by the build, imported by the tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from course_lib.db import Post, User


class UserNotFound(LookupError):
    """No user has this id."""


def list_users(session: Session, limit: int, offset: int) -> list[dict[str, Any]]:
    """One page of users in id order, as {"id", "name"} dicts."""
    # --8<-- [start:list-users]
    rows = session.scalars(select(User).order_by(User.id).limit(limit).offset(offset))
    return [{"id": u.id, "name": u.name} for u in rows]
    # --8<-- [end:list-users]


def user_detail(session: Session, user_id: int) -> dict[str, Any]:
    """One user with their post count; raises UserNotFound."""
    # --8<-- [start:user-detail]
    user = session.get(User, user_id)
    if user is None:
        raise UserNotFound(user_id)
    count = session.scalar(select(func.count()).where(Post.user_id == user_id))
    return {"id": user.id, "name": user.name, "country": user.country, "post_count": count}
    # --8<-- [end:user-detail]


def user_posts(session: Session, user_id: int) -> list[dict[str, Any]]:
    """A user's posts in id order; raises UserNotFound."""
    # --8<-- [start:user-posts]
    if session.get(User, user_id) is None:
        raise UserNotFound(user_id)
    rows = session.scalars(select(Post).where(Post.user_id == user_id).order_by(Post.id))
    return [{"id": p.id, "title": p.title, "likes": p.likes} for p in rows]
    # --8<-- [end:user-posts]


def get_db(request: Request) -> Iterator[Session]:
    """One session per request, from the factory the lifespan put on app.state; closed after the response."""
    # --8<-- [start:get-db]
    with request.app.state.session_factory() as session:
        yield session
    # --8<-- [end:get-db]


SessionDep = Annotated[Session, Depends(get_db)]

router = APIRouter(prefix="/users")


@router.get("")
def read_users(session: SessionDep, limit: Annotated[int, Query(ge=1, le=100)] = 20,
               offset: Annotated[int, Query(ge=0)] = 0) -> list[dict[str, Any]]:
    """GET /users: one page of users."""
    # --8<-- [start:read-users]
    return list_users(session, limit, offset)
    # --8<-- [end:read-users]


@router.get("/{user_id}")
def read_user(user_id: int, session: SessionDep) -> dict[str, Any]:
    """GET /users/{user_id}: the user with their post count, or 404."""
    # --8<-- [start:read-user]
    try:
        return user_detail(session, user_id)
    except UserNotFound:
        raise HTTPException(status_code=404, detail="user not found") from None
    # --8<-- [end:read-user]


@router.get("/{user_id}/posts")
def read_user_posts(user_id: int, session: SessionDep) -> list[dict[str, Any]]:
    """GET /users/{user_id}/posts: the user's posts, or 404."""
    # --8<-- [start:read-user-posts]
    try:
        return user_posts(session, user_id)
    except UserNotFound:
        raise HTTPException(status_code=404, detail="user not found") from None
    # --8<-- [end:read-user-posts]


health = APIRouter(prefix="/health")


def ping(engine: Engine) -> None:
    """SELECT 1 on a fresh connection; raises if the database cannot be reached."""
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


@health.get("/live")
async def live() -> dict[str, str]:
    """GET /health/live: the process answers; nothing else is touched."""
    # --8<-- [start:live]
    return {"status": "ok"}
    # --8<-- [end:live]


@health.get("")
async def ready(request: Request) -> JSONResponse:
    """GET /health: SELECT 1 within 0.5 s, else 503 with no error text."""
    # --8<-- [start:ready]
    try:
        await asyncio.wait_for(asyncio.to_thread(ping, request.app.state.engine), timeout=0.5)
    except Exception:
        return JSONResponse({"status": "unavailable"}, status_code=503)
    return JSONResponse({"status": "ok"})
    # --8<-- [end:ready]


def create_app(database_url: str) -> FastAPI:
    """The refactored app: resources made in the lifespan, routes from the routers."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # --8<-- [start:lifespan]
        engine = create_engine(database_url, connect_args={"check_same_thread": False})
        app.state.engine = engine
        app.state.session_factory = sessionmaker(engine, expire_on_commit=False)
        yield
        engine.dispose()
        # --8<-- [end:lifespan]

    # --8<-- [start:create-app]
    app = FastAPI(lifespan=lifespan)
    app.include_router(router)
    app.include_router(health)
    return app
    # --8<-- [end:create-app]
