"""The course's own configuration, read the way lesson 07 teaches: pydantic-settings from the environment."""

from __future__ import annotations

from functools import lru_cache

from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["CourseSettings", "course_settings"]


class CourseSettings(BaseSettings):
    """Where the course finds optional real services; unset means the embedded defaults."""

    model_config = SettingsConfigDict(extra="ignore")

    redis_url: str | None = None
    database_url: str | None = None


@lru_cache
def course_settings() -> CourseSettings:
    """The settings, read once from the environment (`REDIS_URL`, `DATABASE_URL`)."""
    return CourseSettings()
