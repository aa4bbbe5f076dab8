"""App factory and lifespan: engine, pool and Redis client are made at startup and closed at shutdown.

Run it: `BLOG_DATABASE_URL=sqlite:///blog.sqlite3 uvicorn course_lib.lessons.blog_app.main:app`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import FastAPI

from course_lib.redis import get_redis as course_redis

from .config import Settings, get_settings
from .database import make_engine, make_session_factory
from .routers import health, users


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Build the app's resources from its settings at startup; dispose of them at shutdown."""
    settings: Settings = app.state.settings or get_settings()
    app.state.settings = settings
    app.state.engine = make_engine(settings.database_url)
    app.state.session_factory = make_session_factory(app.state.engine)
    timeout = settings.health_timeout_s
    app.state.redis = (
        aioredis.Redis.from_url(settings.redis_url, socket_connect_timeout=timeout, socket_timeout=timeout)
        if settings.redis_url else course_redis()
    )
    try:
        yield
    finally:
        await app.state.redis.aclose()
        app.state.engine.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app; `settings=None` reads them from the environment at startup (not now)."""
    app = FastAPI(title="Blog (lesson 06)", lifespan=lifespan)
    app.state.settings = settings
    app.include_router(users.router)
    app.include_router(health.router)
    return app


app = create_app()
