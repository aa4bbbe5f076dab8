"""The bookshop API as shipped: realistic, slow, and wrong in many of the ways the checklist names.

`make_app(database_url)` is the only bookshop the course ships. The capstone is to find what is wrong with it
(profile, audit, measure) and write a fixed app of your own; the course package holds no fixed variant.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import httpx
from fastapi import Depends, FastAPI, HTTPException, Query
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from .database import engine_args
from .models import Book, Review
from .rates import rates_app
from .settings import BookshopSettings

__all__ = ["make_app"]

logger = logging.getLogger("bookshop")


def _book_summary(book: Book, author: str, review_count: int) -> dict[str, Any]:
    return {"id": book.id, "title": book.title, "author": author, "year": book.year,
            "price": book.price_cents / 100, "review_count": review_count}


def _as_async(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The route as its first author wrote it: `async def` around blocking SQLAlchemy calls."""

    async def endpoint(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    endpoint.__signature__ = inspect.signature(fn)  # type: ignore[attr-defined]
    endpoint.__name__ = fn.__name__
    endpoint.__doc__ = fn.__doc__
    return endpoint


def make_app(database_url: str) -> FastAPI:
    """The bookshop API on `database_url`, as shipped."""
    settings = BookshopSettings()
    engine = create_engine(database_url, **engine_args(database_url))
    SessionLocal = sessionmaker(engine, expire_on_commit=False)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        engine.dispose()

    app = FastAPI(title="Bookshop", lifespan=lifespan)
    app.state.engine, app.state.settings = engine, settings

    def get_db() -> Iterator[Session]:
        with SessionLocal() as session:
            yield session

    @app.middleware("http")
    async def process_time(request: Any, call_next: Any) -> Any:
        start = time.perf_counter()
        response = await call_next(request)
        response.headers["X-Process-Time"] = f"{(time.perf_counter() - start) * 1000:.2f}"
        return response

    def list_books(skip: int = Query(0, ge=0), limit: int = Query(20, ge=1),
                   session: Session = Depends(get_db)) -> list[dict[str, Any]]:
        """A page of books with author name and review count."""
        statement = select(Book).order_by(Book.id).offset(skip).limit(limit)
        return [_book_summary(b, b.author.name, len(b.reviews)) for b in session.scalars(statement)]

    def read_book(book_id: int, session: Session = Depends(get_db)) -> dict[str, Any]:
        """One book with its author and reviews."""
        book = session.get(Book, book_id)
        if book is None:
            raise HTTPException(status_code=404, detail="book not found")
        return {"id": book.id, "title": book.title, "isbn": book.isbn, "year": book.year,
                "price": book.price_cents / 100, "author": {"id": book.author.id, "name": book.author.name},
                "reviews": [{"rating": r.rating, "body": r.body} for r in book.reviews]}

    def book_by_isbn(isbn: str, session: Session = Depends(get_db)) -> dict[str, Any]:
        """Look a book up by ISBN."""
        book = session.scalars(select(Book).where(Book.isbn == isbn)).first()
        if book is None:
            raise HTTPException(status_code=404, detail="no book with that ISBN")
        return {"id": book.id, "title": book.title, "isbn": book.isbn}

    def stats(session: Session = Depends(get_db)) -> dict[str, Any]:
        """Catalogue statistics: counts, average rating, the five best-rated books (a full aggregate)."""
        books = session.scalar(select(func.count()).select_from(Book))
        reviews, average = session.execute(select(func.count(), func.avg(Review.rating))).one()
        top = session.execute(
            select(Review.book_id, func.avg(Review.rating).label("avg"), func.count().label("n"))
            .group_by(Review.book_id).order_by(text("avg DESC"), text("n DESC"), Review.book_id).limit(5)).all()
        # float(): PostgreSQL's avg() is NUMERIC (a Decimal in Python, a string in JSON), SQLite's a REAL
        return {"books": books, "reviews": reviews, "average_rating": round(float(average or 0), 3),
                "top_books": [{"id": t.book_id, "average": round(float(t.avg), 3), "reviews": t.n} for t in top]}

    app.get("/books")(_as_async(list_books))
    app.get("/books/isbn/{isbn}")(_as_async(book_by_isbn))
    app.get("/books/{book_id}")(_as_async(read_book))
    app.get("/stats")(_as_async(stats))

    async def fetch_rates() -> dict[str, float]:
        url = f"http://rates.example/rates?base=USD&api_key={settings.rates_api_key.get_secret_value()}"
        logger.info("fetching exchange rates: GET %s", url)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=rates_app), timeout=None) as client:
            response = await client.get(url)
        response.raise_for_status()
        rates: dict[str, float] = response.json()
        return rates

    @app.get("/books/{book_id}/price")
    async def price(book_id: int, currency: Literal["USD", "EUR", "GBP", "JPY"] = "USD") -> dict[str, Any]:
        """A book's price in another currency, from the exchange-rate API."""
        with SessionLocal() as session:
            cents = session.scalar(select(Book.price_cents).where(Book.id == book_id))
        if cents is None:
            raise HTTPException(status_code=404, detail="book not found")
        rates = await fetch_rates()
        return {"book_id": book_id, "currency": currency, "price": round(cents / 100 * rates[currency], 2)}

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Says ok without looking at anything."""
        return {"status": "ok"}

    return app
