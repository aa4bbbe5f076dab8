"""How the bookshop opens its database: engine arguments per backend, and creating its tables."""

from __future__ import annotations

from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from .models import BookshopBase


def engine_args(database_url: str) -> dict[str, Any]:
    """Keyword arguments for `create_engine(database_url, ...)`: SQLite's connections must cross threads."""
    sqlite = make_url(database_url).get_backend_name() == "sqlite"
    return {"connect_args": {"check_same_thread": False} if sqlite else {}}


def create_tables(database_url: str) -> None:
    """Create the bookshop's tables where missing (a deploy step, never the lifespan)."""
    engine = create_engine(database_url, **engine_args(database_url))
    try:
        BookshopBase.metadata.create_all(engine)
    finally:
        engine.dispose()
