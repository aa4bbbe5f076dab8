"""Engine and session factory, built by the lifespan from the settings (nothing connects at import)."""

from __future__ import annotations

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str) -> Engine:
    """An engine (and its connection pool) for `url`; creating it does not connect yet."""
    connect_args = {"check_same_thread": False} if url.startswith("sqlite") else {}
    return create_engine(url, connect_args=connect_args, pool_pre_ping=True)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """One session factory per app, bound to its engine."""
    return sessionmaker(engine, expire_on_commit=False)


def ping(engine: Engine) -> None:
    """Round-trip `SELECT 1` to the database; raises if it cannot be reached."""
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
