"""The capstone's bookshop: models, a deterministic seeded database, settings, and the outbound rates service."""

from __future__ import annotations

import asyncio
import importlib.util
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from fastapi import FastAPI, Header, HTTPException, Query
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import ForeignKey, String, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from ...db import drop_fresh_database, fresh_engine, insert_in_batches, thread_safe_connect_args

__all__ = [
    "BookshopBase", "Author", "Book", "Review", "BookshopDB", "make_bookshop_db", "BookshopSettings",
    "rates_app", "RATES", "install_db_latency", "DEMO_API_KEY", "load_answer", "load_factory",
    "engine_args",
]

DEMO_API_KEY = "rk_live_7f3a9c2e51d84b06"  # a fake key: the audit looks for it in responses and logs
RATES = {"USD": 1.0, "EUR": 0.92, "GBP": 0.79, "JPY": 151.2}
RATES_LATENCY_S = 0.03


class BookshopBase(DeclarativeBase):
    """Declarative base of the bookshop (its own metadata, apart from the blog models)."""


class Author(BookshopBase):
    """An author; `name` has no index."""

    __tablename__ = "authors"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80))
    country: Mapped[str] = mapped_column(String(2))
    books: Mapped[list[Book]] = relationship(back_populates="author", order_by="Book.id")


class Book(BookshopBase):
    """A book; as shipped neither `author_id` nor `isbn` is indexed."""

    __tablename__ = "books"

    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("authors.id"))
    title: Mapped[str] = mapped_column(String(200))
    isbn: Mapped[str] = mapped_column(String(13))
    price_cents: Mapped[int]
    year: Mapped[int]
    author: Mapped[Author] = relationship(back_populates="books")
    reviews: Mapped[list[Review]] = relationship(back_populates="book", order_by="Review.id")


class Review(BookshopBase):
    """A reader's review of a book; `book_id` has no index as shipped."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(primary_key=True)
    book_id: Mapped[int] = mapped_column(ForeignKey("books.id"))
    rating: Mapped[int]
    body: Mapped[str] = mapped_column(String(300))
    book: Mapped[Book] = relationship(back_populates="reviews")


_FIRST = ["Ursula", "Terry", "Octavia", "Iain", "Jorge", "Italo", "Toni", "Haruki", "Chimamanda", "Stanislaw"]
_LAST = ["Le Guin", "Pratchett", "Butler", "Banks", "Borges", "Calvino", "Morrison", "Murakami", "Adichie", "Lem"]
_WORDS = "night river glass city winter engine garden silent library machine ocean paper".split()


@dataclass
class BookshopDB:
    """A fresh bookshop database (a SQLite file, or a PostgreSQL database when DATABASE_URL names a server)."""

    engine: Engine
    path: Path | None
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """Its URL (a server subprocess can open it): the SQLite file, or the PostgreSQL database."""
        return f"sqlite:///{self.path}" if self.path is not None else self.engine.url.render_as_string(hide_password=False)

    @property
    def dialect(self) -> str:
        """'sqlite' or 'postgresql'."""
        return self.engine.dialect.name

    def sample_isbn(self, book_id: int = 1) -> str:
        """The ISBN the seeded data gives book `book_id`."""
        return _isbn(book_id)

    def close(self) -> None:
        """Dispose of the engine and delete the database (its file, or its server database)."""
        drop_fresh_database(self.engine, self.path)

    def __enter__(self) -> BookshopDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return "BookshopDB(" + ", ".join(f"{n:,} {t}" for t, n in self.counts.items()) + ")"


def _isbn(book_id: int) -> str:
    return f"978{book_id * 7919 % 10_000_000_000:010d}"


def make_bookshop_db(authors: int = 500, books_per_author: int = 10, reviews_per_book: int = 20,
                     *, seed: int = 0) -> BookshopDB:
    """Build a fresh bookshop database with deterministic data (no secondary indexes), in bulk."""
    if min(authors, books_per_author, reviews_per_book) < 0:
        raise ValueError("make_bookshop_db: sizes must be zero or positive")
    engine, path = fresh_engine()
    BookshopBase.metadata.create_all(engine)
    rng = random.Random(seed)

    def author_rows() -> Iterator[dict[str, Any]]:
        for i in range(1, authors + 1):
            yield {"id": i, "name": f"{rng.choice(_FIRST)} {rng.choice(_LAST)} {i}",
                   "country": rng.choice(["GB", "US", "FR", "JP", "NG", "AR"])}

    def book_rows() -> Iterator[dict[str, Any]]:
        book_id = 0
        for author_id in range(1, authors + 1):
            for _ in range(books_per_author):
                book_id += 1
                yield {"id": book_id, "author_id": author_id, "isbn": _isbn(book_id),
                       "title": " ".join(rng.choice(_WORDS) for _ in range(3)).title(),
                       "price_cents": rng.randrange(500, 5000), "year": rng.randrange(1950, 2025)}

    def review_rows() -> Iterator[dict[str, Any]]:
        review_id = 0
        for book_id in range(1, authors * books_per_author + 1):
            for _ in range(reviews_per_book):
                review_id += 1
                yield {"id": review_id, "book_id": book_id, "rating": rng.randrange(1, 6),
                       "body": " ".join(rng.choice(_WORDS) for _ in range(8))}

    counts = {
        "authors": insert_in_batches(engine, Author.__table__, author_rows()),
        "books": insert_in_batches(engine, Book.__table__, book_rows()),
        "reviews": insert_in_batches(engine, Review.__table__, review_rows()),
    }
    if engine.dialect.name == "postgresql":  # explicit ids: move the sequences on; fresh statistics for the planner
        with engine.begin() as conn:
            for table in ("authors", "books", "reviews"):
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                  f"coalesce(max(id), 0) + 1, false) FROM {table}"))
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
        engine.dispose()  # no idle connection left: the database can serve as a TEMPLATE for copies
    return BookshopDB(engine=engine, path=path, counts=counts)


class BookshopSettings(BaseSettings):
    """The bookshop's configuration, from `BOOKSHOP_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="BOOKSHOP_", extra="ignore")

    rates_api_key: SecretStr = SecretStr(DEMO_API_KEY)
    cache_ttl_s: float = 60.0  # the longest anything may stay cached (the capstone's grader sets it low)


# The "outbound" service: an exchange-rate API with a 30 ms round trip. The bookshop reaches it through an
# httpx client on an in-process transport, so the course needs no network, but the client code is the real thing.
rates_app = FastAPI(title="Exchange rates (simulated remote API)")


@rates_app.get("/rates")
async def rates(base: str = Query("USD"), api_key: str | None = Query(None),
                x_api_key: str | None = Header(None)) -> dict[str, float]:
    """Exchange rates from `base`; needs the API key (query string or X-API-Key header)."""
    await asyncio.sleep(RATES_LATENCY_S)
    if DEMO_API_KEY not in (api_key, x_api_key):
        raise HTTPException(status_code=401, detail="bad API key")
    if base != "USD":
        raise HTTPException(status_code=400, detail="only USD base")
    return RATES


def engine_args(database_url: str) -> dict[str, Any]:
    """Keyword arguments for `create_engine(database_url, ...)`: SQLite connections must cross threads, psycopg's may."""
    return {"connect_args": thread_safe_connect_args(database_url)}


def install_db_latency(latency_ms: float) -> None:
    """Make every statement of every engine in this process wait `latency_ms` first (a database across a network)."""
    if latency_ms > 0:
        event.listen(Engine, "before_cursor_execute", lambda *_: time.sleep(latency_ms / 1000))




def load_answer(path: str) -> ModuleType:
    """Import a Python file by path (a fresh module each time); it must define `make_app(database_url)`."""
    spec = importlib.util.spec_from_file_location(f"bookshop_user_{abs(hash(path))}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "make_app", None)):
        raise AttributeError(f"{path} defines no make_app(database_url) function")
    migrate = getattr(module, "migrate", None)
    if migrate is not None and not callable(migrate):
        raise TypeError(f"{path}: `migrate` must be a function migrate(database_url), got {type(migrate).__name__}")
    return module


def load_factory(path: str) -> Callable[[str], Any]:
    """The app factory of a file: `factory(url)` runs the file's `migrate(url)` (if any), then `make_app(url)`.

    `migrate` is the deploy step (what `alembic upgrade head` does before the servers start): schema changes
    such as indexes belong there or in a migration, never in the app's lifespan (lesson 06).
    """
    module = load_answer(path)
    make_app, migrate = module.make_app, getattr(module, "migrate", None)

    def factory(database_url: str) -> Any:
        if migrate is not None:
            migrate(database_url)
        return make_app(database_url)

    factory.__name__ = "make_app"
    return factory
