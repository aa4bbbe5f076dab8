"""Settings read from the environment (BLOG_* variables); lesson 07 covers pydantic-settings in depth."""

from __future__ import annotations

from functools import lru_cache

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where the app's dependencies are and how long readiness may wait for each."""

    model_config = SettingsConfigDict(env_prefix="BLOG_", extra="ignore", populate_by_name=True)

    database_url: str
    # BLOG_REDIS_URL, else the conventional REDIS_URL; neither: an in-process fakeredis (development and tests)
    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("BLOG_REDIS_URL", "REDIS_URL"))
    health_timeout_s: float | None = 0.5  # None: wait as long as the dependency takes (the wrong way)


@lru_cache
def get_settings() -> Settings:
    """The settings, read once from the environment (called at startup, never at import)."""
    return Settings()  # database_url comes from BLOG_DATABASE_URL (pydantic-settings reads it)
