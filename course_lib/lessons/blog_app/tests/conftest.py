"""Fixtures: a fresh demo database, and an in-process client to an app whose get_db is overridden to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from course_lib.client import app_client
from course_lib.db import DemoDB, make_demo_db

from ..config import Settings
from ..dependencies import get_db
from ..main import create_app

UNREACHABLE = "sqlite:////nonexistent-folder/blog.sqlite3"


@pytest.fixture
def anyio_backend() -> str:
    """Run async tests on asyncio."""
    return "asyncio"


@pytest.fixture
def db() -> Iterator[DemoDB]:
    """A fresh database: 12 users with 3 posts each."""
    with make_demo_db(users=12, posts_per_user=3) as demo:
        yield demo


@pytest.fixture
async def client(db: DemoDB) -> AsyncIterator[httpx.AsyncClient]:
    """The app configured for an unreachable database, with get_db overridden to the test database."""
    app = create_app(Settings(database_url=UNREACHABLE))
    app.dependency_overrides[get_db] = db.dependency()
    async with app_client(app) as test_client:
        yield test_client
