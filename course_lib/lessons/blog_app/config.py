"""Settings read from the environment (BLOG_* variables); lesson 07 covers pydantic-settings in depth."""

from __future__ import annotations

from functools import lru_cache

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where the app's dependencies are and how long readiness may wait for each."""

    model_config = SettingsConfigDict(env_prefix="BLOG_", extra="ignore")

    database_url: str
    redis_url: str | None = None  # None: the course's Redis (fakeredis unless REDIS_URL is set)
    health_timeout_s: float | None = 0.5  # None: wait as long as the dependency takes (the wrong way)


@lru_cache
def get_settings() -> Settings:
    """The settings, read once from the environment (called at startup, never at import)."""
    return Settings()  # type: ignore[call-arg]  # database_url comes from BLOG_DATABASE_URL
