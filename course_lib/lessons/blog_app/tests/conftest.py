"""Fixtures: a fresh seeded SQLite database, and an in-process client to an app whose get_db is overridden to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy.orm import Session, sessionmaker

from ..config import Settings
from ..database import create_tables, make_engine, make_session_factory
from ..dependencies import get_db
from ..main import create_app
from ..models import Post, User

UNREACHABLE = "sqlite:////nonexistent-folder/blog.sqlite3"
USERS, POSTS_PER_USER = 12, 3


@pytest.fixture
def anyio_backend() -> str:
    """Run async tests on asyncio."""
    return "asyncio"


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """A session factory on a fresh database file: 12 users with 3 posts each."""
    engine = make_engine(f"sqlite:///{tmp_path / 'test.sqlite3'}")
    create_tables(engine)
    start = datetime(2024, 1, 1)
    with Session(engine) as session, session.begin():
        for i in range(1, USERS + 1):
            session.add(User(id=i, name=f"User {i}", email=f"user{i}@example.com", country="FR",
                             created_at=start + timedelta(minutes=i),
                             posts=[Post(title=f"Post {j} of {i}", body="…", likes=j, created_at=start)
                                    for j in range(POSTS_PER_USER)]))
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
async def client(sessions: sessionmaker[Session]) -> AsyncIterator[httpx.AsyncClient]:
    """The app configured for an unreachable database, with get_db overridden to the test database."""
    app = create_app(Settings(database_url=UNREACHABLE))

    def test_db() -> Iterator[Session]:
        with sessions() as session:
            yield session

    app.dependency_overrides[get_db] = test_db
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as test_client:
            yield test_client
