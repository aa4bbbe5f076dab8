"""One Redis client for the course: fakeredis in-process by default, a real server when REDIS_URL is set."""

from __future__ import annotations

import redis.asyncio as aioredis

from .settings import course_settings

__all__ = ["get_redis", "redis_backend"]


def redis_backend() -> str:
    """'fakeredis' or the URL of the real server the course uses."""
    return course_settings().redis_url or "fakeredis"


def get_redis(decode_responses: bool = False) -> aioredis.Redis:
    """A new async Redis client: to `REDIS_URL` when set, else a fresh, private fakeredis server."""
    url = course_settings().redis_url
    if url:
        return aioredis.Redis.from_url(url, decode_responses=decode_responses)
    import fakeredis

    return fakeredis.FakeAsyncRedis(decode_responses=decode_responses)
