"""Shared `Depends` functions: one DB session per request (a `yield` dependency), the settings, Redis."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from .config import Settings


def get_db(request: Request) -> Iterator[Session]:
    """Open a session from the app's factory (made in the lifespan), close it after the response."""
    with request.app.state.session_factory() as session:
        yield session


def get_app_settings(request: Request) -> Settings:
    """The settings this app was started with."""
    return request.app.state.settings


def get_redis(request: Request) -> Any:
    """The app's Redis client (made in the lifespan)."""
    return request.app.state.redis


SessionDep = Annotated[Session, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
RedisDep = Annotated[Any, Depends(get_redis)]
