"""Engine and session factory, built by the lifespan from the settings (nothing connects at import)."""

from __future__ import annotations

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from .models import Base


def make_engine(url: str) -> Engine:
    """An engine (and its connection pool) for `url`; creating it does not connect yet."""
    sqlite = make_url(url).get_backend_name() == "sqlite"
    connect_args = {"check_same_thread": False} if sqlite else {}  # pooled SQLite connections cross threads
    return create_engine(url, connect_args=connect_args, pool_pre_ping=True)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """One session factory per app, bound to its engine."""
    return sessionmaker(engine, expire_on_commit=False)


def create_tables(engine: Engine) -> None:
    """Create the app's tables where missing: a deploy step or a test fixture (never the lifespan); real projects
    use migrations (Alembic) for this."""
    Base.metadata.create_all(engine)


def ping(engine: Engine) -> None:
    """Round-trip `SELECT 1` to the database; raises if it cannot be reached."""
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
