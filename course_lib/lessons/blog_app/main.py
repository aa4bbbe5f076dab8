"""App factory and lifespan: engine, pool and Redis client are made at startup and closed at shutdown.

Run it from the folder that holds `blog_app/`: `BLOG_DATABASE_URL=sqlite:///blog.sqlite3 uvicorn blog_app.main:app`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import FastAPI

from .config import Settings, get_settings
from .database import make_engine, make_session_factory
from .routers import health, users


def make_redis(url: str | None, timeout: float | None) -> aioredis.Redis:
    """A Redis client for `url` with socket timeouts; no URL: an in-process fakeredis (development and tests)."""
    if url:
        return aioredis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    import fakeredis  # only needed without a Redis server

    return fakeredis.FakeAsyncRedis()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Build the app's resources from its settings at startup; dispose of them at shutdown."""
    settings: Settings = app.state.settings or get_settings()
    app.state.settings = settings
    app.state.engine = make_engine(settings.database_url)
    app.state.session_factory = make_session_factory(app.state.engine)
    timeout = settings.health_timeout_s
    app.state.redis = make_redis(settings.redis_url, timeout)
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
