"""Fixtures: a small seeded SQLite database made with the bookshop's own models, and a client to the app on it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from ..app import make_app
from ..database import create_tables, engine_args
from ..models import Author, Book, Review

AUTHORS, BOOKS_PER_AUTHOR, REVIEWS_PER_BOOK = 3, 4, 2


@pytest.fixture
def anyio_backend() -> str:
    """Run async tests on asyncio."""
    return "asyncio"


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """A fresh database file: 3 authors, 4 books each, 2 reviews per book (ratings 1 to 5, ISBN 978000000000N)."""
    url = f"sqlite:///{tmp_path / 'shop.sqlite3'}"
    create_tables(url)
    engine = create_engine(url, **engine_args(url))
    with Session(engine) as session, session.begin():
        book_id = 0
        for a in range(1, AUTHORS + 1):
            books = []
            for _ in range(BOOKS_PER_AUTHOR):
                book_id += 1
                books.append(Book(id=book_id, title=f"Book {book_id}", isbn=f"978{book_id:010d}",
                                  price_cents=1000 + book_id, year=2000 + book_id,
                                  reviews=[Review(rating=(book_id + r) % 5 + 1, body="fine")
                                           for r in range(REVIEWS_PER_BOOK)]))
            session.add(Author(id=a, name=f"Author {a}", country="FR", books=books))
    engine.dispose()
    return url


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client to the bookshop on the test database (lifespan run, as under a server)."""
    app = make_app(database_url)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as test_client:
            yield test_client
